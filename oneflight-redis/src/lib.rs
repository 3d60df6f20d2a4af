//! One load per key across a fleet of processes, on Redis.
//!
//! (Crate docs: see below; written after the code.)

#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub
)]

#[cfg(not(any(feature = "tokio", feature = "smol")))]
compile_error!("oneflight-redis needs the `tokio` or the `smol` feature (or both)");

mod builder;
mod codec;
mod error;
mod fleet;
mod notify;
mod runtime;
mod stats;
mod store;

pub use builder::{FleetBuilder, OnRedisError};
pub use codec::Codec;
pub use error::FleetError;
pub use fleet::Fleet;
pub use redis;
pub use stats::FleetStats;
