//! [`Stats`]: what a group counts, kept per shard under the shard's lock.

/// Counters of a [`Group`](crate::Group) since it was created, shared by its clones.
///
/// They are kept under the locks that every call takes anyway, so counting costs no
/// atomic operation. Once no flight runs, each call that reached the map was counted
/// once: `flights + joined` equals the number of `work` and `try_work` calls that were
/// polled plus the `do_chan` and `do_chan_with` calls made.
///
/// # Examples
///
/// ```
/// # futures_executor::block_on(async {
/// let group: oneflight::Group<String, u32> = oneflight::Group::new();
/// let slow = || async { smol::future::yield_now().await; 7 };
/// futures_util::join!(group.work("k", slow()), group.work("k", slow()), group.work("k", slow()));
/// let stats = group.stats();
/// assert_eq!((stats.flights, stats.joined), (1, 2)); // two loads saved
/// # });
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Stats {
    /// Flights started: calls that found no flight of their key in the air.
    pub flights: u64,
    /// Callers that joined a flight another caller started: the work saved.
    pub joined: u64,
    /// Runs started by a waiting caller after the flight's runner went away.
    pub takeovers: u64,
    /// Flights whose future panicked.
    pub panics: u64,
    /// Flights removed from the map by `forget` or `forget_unshared`.
    pub forgotten: u64,
}

impl Stats {
    /// The sum of two shards' counts.
    pub(crate) fn add(self, other: Stats) -> Stats {
        Stats {
            flights: self.flights + other.flights,
            joined: self.joined + other.joined,
            takeovers: self.takeovers + other.takeovers,
            panics: self.panics + other.panics,
            forgotten: self.forgotten + other.forgotten,
        }
    }
}
