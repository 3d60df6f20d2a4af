//! Timers and spawning on the runtime the caller runs on: Tokio when a Tokio runtime is
//! current (the `tokio` feature), else smol's reactor (the `smol` feature), as the `redis`
//! crate itself chooses. async-std programs are served by smol's reactor.

use std::future::Future;
use std::time::Duration;

/// Waits for `duration`.
///
/// # Panics
///
/// With only the `tokio` feature on, outside a Tokio runtime.
pub(crate) async fn sleep(duration: Duration) {
    #[cfg(feature = "tokio")]
    if tokio::runtime::Handle::try_current().is_ok() {
        return tokio::time::sleep(duration).await;
    }
    #[cfg(feature = "smol")]
    {
        async_io::Timer::after(duration).await;
    }
    #[cfg(not(feature = "smol"))]
    no_runtime()
}

/// Runs `fut` for at most `duration`; `None` when the time ran out first.
pub(crate) async fn timeout<F: Future>(duration: Duration, fut: F) -> Option<F::Output> {
    use futures_util::future::{Either, select};
    let fut = std::pin::pin!(fut);
    let timer = std::pin::pin!(sleep(duration));
    match select(fut, timer).await {
        Either::Left((output, _)) => Some(output),
        Either::Right(((), _)) => None,
    }
}

/// Spawns `task`, detached. Gives it back when no runtime can take it (only `tokio` on,
/// called outside a Tokio runtime); the caller then runs it another way or does without.
pub(crate) fn spawn<F>(task: F) -> Result<(), F>
where
    F: Future<Output = ()> + Send + 'static,
{
    #[cfg(feature = "tokio")]
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        drop(handle.spawn(task));
        return Ok(());
    }
    #[cfg(feature = "smol")]
    {
        smol::spawn(task).detach();
        Ok(())
    }
    #[cfg(not(feature = "smol"))]
    Err(task)
}

#[cfg(not(feature = "smol"))]
fn no_runtime() -> ! {
    panic!(
        "oneflight-redis: a Fleet was used outside a Tokio runtime with only the `tokio` \
         feature on; run it inside a Tokio runtime (with timers enabled) or enable the \
         `smol` feature"
    )
}
