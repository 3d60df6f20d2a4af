//! The fleet's `tracing` spans and events (feature `tracing`); with the feature off,
//! these macros expand to nothing, so the rest of the crate is the same code either way.
//! Its metrics live with its counters, in [`crate::stats`].
//!
//! - **Spans**: one `oneflight.flight` span (level `debug`) per flight of this process
//!   (its in-process runner's exchange with Redis; the core's span of each caller is its
//!   parent), with the fleet's `fleet` name, the `key` (unless the builder's
//!   `record_keys(false)`), and the `role`: `holder`, `waiter` (then `holder` if it took
//!   the flight over), or `degraded` (loaded without the fleet).
//! - **Events** (`debug`): a takeover, `max_wait` reached, an undecodable payload, a late
//!   publish rejected (for a cache: "stale set prevented"), a lease lost while loading,
//!   Redis failing and answering again, the pub/sub connection replaced.

/// Runs the async block `$body` in a new `oneflight.flight` span of the fleet whose
/// [`Config`](crate::builder::Config) is `$config`, for `$key`; without `tracing`, the
/// block's statements as they are.
#[cfg(feature = "tracing")]
macro_rules! in_flight_span {
    ($config:expr, $key:expr, $body:block) => {{
        let span = tracing::debug_span!(
            "oneflight.flight",
            fleet = $config.name.as_str(),
            key = tracing::field::Empty,
            role = tracing::field::Empty
        );
        if $config.record_keys {
            span.record("key", $key);
        }
        tracing::Instrument::instrument(async move $body, span).await
    }};
}
#[cfg(not(feature = "tracing"))]
macro_rules! in_flight_span {
    ($config:expr, $key:expr, $body:block) => {
        $body
    };
}

/// Records this flight's role in its span.
#[cfg(feature = "tracing")]
macro_rules! role {
    ($role:literal) => {
        tracing::Span::current().record("role", $role)
    };
}
#[cfg(not(feature = "tracing"))]
macro_rules! role {
    ($role:literal) => {};
}

/// A `debug` event of the fleet named `$name`.
#[cfg(feature = "tracing")]
macro_rules! event {
    ($name:expr, $($field:tt)*) => {
        tracing::debug!(fleet = &*$name, $($field)*)
    };
}
#[cfg(not(feature = "tracing"))]
macro_rules! event {
    ($name:expr, $($field:tt)*) => {};
}

pub(crate) use {event, in_flight_span, role};
