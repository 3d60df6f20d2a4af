//! Where [`Group::do_chan`](crate::Group::do_chan) spawns a flight: the runtime is chosen
//! when the caller calls, so that a later takeover spawns on the same one.

use futures_util::future::BoxFuture;

/// A runtime that can spawn a flight's task.
pub(crate) enum Spawner {
    /// The Tokio runtime that was current when the caller called.
    #[cfg(feature = "tokio")]
    Tokio(tokio::runtime::Handle),
    /// smol's global executor.
    #[cfg(feature = "smol")]
    Smol,
    /// async-std's executor, used only when `smol` is off.
    #[cfg(all(feature = "async-std", not(feature = "smol")))]
    AsyncStd,
}

impl Spawner {
    /// The runtime for a caller calling now: the current Tokio runtime if any, else smol,
    /// else async-std.
    ///
    /// # Panics
    ///
    /// With only the `tokio` feature on, outside a Tokio runtime.
    #[track_caller]
    pub(crate) fn current() -> Self {
        #[cfg(feature = "tokio")]
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            return Spawner::Tokio(handle);
        }
        Self::fallback()
    }

    #[cfg(feature = "smol")]
    #[track_caller]
    fn fallback() -> Self {
        Spawner::Smol
    }

    #[cfg(all(feature = "async-std", not(feature = "smol")))]
    #[track_caller]
    fn fallback() -> Self {
        Spawner::AsyncStd
    }

    #[cfg(not(any(feature = "smol", feature = "async-std")))]
    #[track_caller]
    fn fallback() -> Self {
        panic!(
            "oneflight: `do_chan` was called outside a Tokio runtime, and no other runtime \
             feature is enabled; call it inside a Tokio runtime, enable the `smol` feature, \
             or use `do_chan_with` with a spawner of your own"
        )
    }

    /// Spawns `task`, detached: dropping a receiver never cancels it.
    pub(crate) fn spawn(self, task: BoxFuture<'static, ()>) {
        match self {
            #[cfg(feature = "tokio")]
            Spawner::Tokio(handle) => drop(handle.spawn(task)),
            #[cfg(feature = "smol")]
            Spawner::Smol => smol::spawn(task).detach(),
            #[cfg(all(feature = "async-std", not(feature = "smol")))]
            Spawner::AsyncStd => drop(async_std::task::spawn(task)),
        }
    }
}
