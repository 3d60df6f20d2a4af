//! What callers of a flight receive: [`Outcome`] on a channel, [`Panicked`] on a panic.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

/// The result that each [`do_chan`](crate::Group::do_chan) receiver gets: Go's
/// `singleflight.Result`.
///
/// # Examples
///
/// ```
/// use oneflight::Outcome;
///
/// let outcome = Outcome { value: 42, shared: false };
/// assert_eq!(outcome.clone(), Outcome { value: 42, shared: false });
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Outcome<V> {
    /// The flight's value, cloned for this receiver.
    pub value: V,
    /// Whether more than one caller joined the flight (`work` and `do_chan` callers
    /// alike, counting those that went away since): Go's `dups > 0`.
    pub shared: bool,
}

/// The panic payload of `work` callers that waited on a flight whose future panicked.
///
/// The caller that ran the future sees the original panic unchanged; every other waiting
/// `work` caller panics with a `Panicked` carrying the original message, raised with
/// [`std::panic::resume_unwind`] so that the panic hook runs only once, for the original
/// panic. Catch it with [`std::panic::catch_unwind`] (or `FutureExt::catch_unwind`) and
/// downcast the payload.
///
/// # Examples
///
/// ```
/// use futures_util::FutureExt;
/// use oneflight::{Group, Panicked};
/// use std::panic::AssertUnwindSafe;
///
/// # futures_executor::block_on(async {
/// let group: Group<String, u32> = Group::new();
/// let leader = group.work("key", async {
///     smol::future::yield_now().await; // stands for real work
///     panic!("database is down")
/// });
/// let follower = group.work("key", async { 7 });
/// let (leader, follower) = futures_util::join!(
///     AssertUnwindSafe(leader).catch_unwind(),
///     AssertUnwindSafe(follower).catch_unwind(),
/// );
/// // The leader sees its own panic; the follower, a `Panicked` with the same message.
/// assert_eq!(leader.unwrap_err().downcast_ref::<&str>(), Some(&"database is down"));
/// let payload = follower.unwrap_err();
/// let panicked = payload.downcast_ref::<Panicked>().unwrap();
/// assert_eq!(panicked.message(), "database is down");
/// # });
/// ```
#[derive(Clone)]
pub struct Panicked {
    message: Arc<str>,
}

impl Panicked {
    /// The text of the original panic: its `&str` or `String` payload, or a fixed text
    /// for any other payload.
    ///
    /// # Examples
    ///
    /// See [`Panicked`].
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Reads the message out of a caught panic payload. A payload that is itself a
    /// `Panicked` (a flight that waited on another flight) keeps the original message.
    pub(crate) fn from_payload(payload: &(dyn Any + Send)) -> Self {
        if let Some(panicked) = payload.downcast_ref::<Panicked>() {
            return panicked.clone();
        }
        let message: Arc<str> = if let Some(text) = payload.downcast_ref::<&'static str>() {
            Arc::from(*text)
        } else if let Some(text) = payload.downcast_ref::<String>() {
            Arc::from(text.as_str())
        } else {
            Arc::from("panic payload of a type other than &str or String")
        };
        Panicked { message }
    }
}

impl fmt::Debug for Panicked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Panicked")
            .field("message", &self.message())
            .finish()
    }
}

impl fmt::Display for Panicked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the shared work panicked: {}", self.message)
    }
}

impl std::error::Error for Panicked {}
