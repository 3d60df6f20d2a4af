//! The sharded map of a group's flights: the shards and their locks, the table of flights
//! by key, and the three ways callers change it (join, update, forget), each in one
//! critical section that keeps the invariants of [`crate::flight`].

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};

use hashbrown::HashTable;
use hashbrown::hash_table::Entry as Slot;

use crate::flight::{Flight, FlightId, Phase};
use crate::observe::{self, Observer};
use crate::reentrance;
use crate::stats::Stats;
use crate::sync::{Mutex, MutexGuard};

/// What the handles of a group share.
pub(crate) struct Inner<K, V, S> {
    /// Hashes each key once, outside the lock.
    pub(crate) hasher: S,
    /// Every flight and its state, split by key hash over a power of two of shards, so
    /// that callers of different keys on different threads rarely wait for each other.
    shards: Box<[Shard<K, V>]>,
    /// `64 - log2(shards.len())`: selects a shard from a hash.
    shift: u32,
    /// The group's name, and what it reports with the `tracing` and `metrics` features.
    pub(crate) observer: Observer,
}

/// One shard's lock, alone on its cache lines so that shards don't contend by sharing.
/// A short lock: never held across an `.await`, while a caller's future runs, or while
/// user code runs, but for the caller's own key's `Eq`, `Borrow` and `ToOwned`.
#[repr(align(128))]
struct Shard<K, V>(Mutex<Flights<K, V>>);

/// The flights of a group, guarded by its lock.
pub(crate) struct Flights<K, V> {
    /// The flights a new caller would join, one per key. Each entry keeps its key's hash,
    /// so growing the table runs no user code.
    table: HashTable<Entry<K, V>>,
    /// Forgotten flights that still run, by id: their callers still reach them.
    forgotten: HashMap<u64, Flight<V>>,
    /// The id of the next flight.
    next_id: u64,
    /// What happened to this shard's flights.
    pub(crate) counts: Stats,
}

/// A flight in the map.
struct Entry<K, V> {
    /// `hasher.hash_one(key)`, computed once by the caller that started the flight.
    hash: u64,
    /// The key, owned.
    key: K,
    /// The flight's state.
    flight: Flight<V>,
}

impl<K, V, S> Inner<K, V, S> {
    /// An empty map of flights whose keys `hasher` hashes, reported as `observer` says.
    pub(crate) fn new(hasher: S, observer: Observer) -> Self {
        let shards = shard_count();
        Inner {
            hasher,
            shards: (0..shards)
                .map(|_| {
                    Shard(Mutex::new(Flights {
                        table: HashTable::new(),
                        forgotten: HashMap::new(),
                        next_id: 0,
                        counts: Stats::default(),
                    }))
                })
                .collect(),
            shift: 64 - shards.trailing_zeros(),
            observer,
        }
    }

    /// How many keys have a flight that a new caller would join.
    pub(crate) fn in_flight(&self) -> usize {
        let shards = self.shards.iter();
        shards.map(|shard| lock(&shard.0).table.len()).sum()
    }

    /// The counters of every shard, summed.
    pub(crate) fn stats(&self) -> Stats {
        let shards = self.shards.iter();
        shards.fold(Stats::default(), |sum, shard| {
            sum.add(lock(&shard.0).counts)
        })
    }
}

impl<K, V, S> Inner<K, V, S> {
    /// Locks the shard of the flights whose keys hash to `hash`. The shard is chosen by
    /// the bits right below the top seven, which the tables use neither for their tags
    /// (the top seven) nor for their buckets (the low bits).
    pub(crate) fn lock(&self, hash: u64) -> MutexGuard<'_, Flights<K, V>> {
        lock(&self.shards[((hash << 7) >> self.shift) as usize].0)
    }

    /// Finds the flight for `key` or starts one, under the lock, and lets `join` record
    /// the caller in it (`fresh` if the caller starts it).
    ///
    /// # Panics
    ///
    /// If the caller is inside the poll of the flight it would join (re-entrance), after
    /// releasing the lock and before joining.
    #[track_caller]
    pub(crate) fn join<Q, R>(
        &self,
        hash: u64,
        key: &Q,
        join: impl FnOnce(&mut Flight<V>, bool) -> R,
    ) -> (FlightId, R)
    where
        Q: ?Sized + Eq + ToOwned,
        Q::Owned: Into<K>,
        K: Borrow<Q>,
    {
        let mut flights = self.lock(hash);
        let Flights {
            table,
            next_id,
            counts,
            ..
        } = &mut *flights;
        // The only user code under the lock is the caller's own key: `Eq` and `Borrow`
        // here, `ToOwned` and `Into` below. A panic in either leaves the table unchanged.
        match table.entry(hash, |entry| entry.key.borrow() == key, |entry| entry.hash) {
            Slot::Occupied(mut entry) => {
                let flight = &mut entry.get_mut().flight;
                let id = FlightId {
                    hash,
                    id: flight.id,
                };
                if reentrance::is_running(reentrance::frame(self, id)) {
                    drop(flights);
                    observe::event!(self.observer, "refused a re-entrant call");
                    reentrance::refuse();
                }
                let runs = flight.runs;
                let joined = join(flight, false);
                counts.joined += 1;
                counts.takeovers += flight.runs - runs;
                self.observer.joined();
                self.observer.takeovers(flight.runs - runs);
                (id, joined)
            }
            Slot::Vacant(slot) => {
                let key = key.to_owned().into();
                let id = *next_id;
                *next_id += 1;
                let mut flight = Flight::new(id);
                let joined = join(&mut flight, true);
                slot.insert(Entry { hash, key, flight });
                counts.flights += 1;
                self.observer.flight();
                (FlightId { hash, id }, joined)
            }
        }
    }

    /// Applies `update` to a flight under the lock, and if that ends the flight, removes
    /// it in the same critical section: only that flight, found by its id, never a newer
    /// flight of the same key. `None` if the flight has already ended.
    pub(crate) fn update<R>(
        &self,
        id: FlightId,
        update: impl FnOnce(&mut Flight<V>) -> R,
    ) -> Option<R> {
        let mut flights = self.lock(id.hash);
        let Flights {
            table,
            forgotten,
            counts,
            ..
        } = &mut *flights;
        match table.find_entry(id.hash, |entry| entry.flight.id == id.id) {
            Ok(mut entry) => {
                let flight = &mut entry.get_mut().flight;
                let runs = flight.runs;
                let result = update(flight);
                counts.takeovers += flight.runs - runs;
                self.observer.takeovers(flight.runs - runs);
                if entry.get().flight.phase == Phase::Ended {
                    let (Entry { key, .. }, _) = entry.remove();
                    // The key is dropped after unlocking: its `Drop` is user code.
                    drop(flights);
                    drop(key);
                }
                Some(result)
            }
            Err(_) => {
                let flight = forgotten.get_mut(&id.id)?;
                let runs = flight.runs;
                let result = update(flight);
                counts.takeovers += flight.runs - runs;
                self.observer.takeovers(flight.runs - runs);
                if flight.phase == Phase::Ended {
                    forgotten.remove(&id.id);
                }
                Some(result)
            }
        }
    }

    /// Forgets the flight for `key` if `when` agrees on its state: moves it out of the
    /// map, to run on for the callers that have it.
    pub(crate) fn forget<Q>(&self, key: &Q, when: impl FnOnce(&Flight<V>) -> bool) -> bool
    where
        Q: ?Sized + Hash + Eq,
        K: Borrow<Q>,
        S: BuildHasher,
    {
        let hash = self.hasher.hash_one(key);
        let mut flights = self.lock(hash);
        let Flights {
            table,
            forgotten,
            counts,
            ..
        } = &mut *flights;
        match table.find_entry(hash, |entry| entry.key.borrow() == key) {
            Ok(entry) if when(&entry.get().flight) => {
                let (Entry { key, flight, .. }, _) = entry.remove();
                counts.forgotten += 1;
                self.observer.forgotten();
                forgotten.insert(flight.id, flight);
                drop(flights);
                drop(key);
                true
            }
            _ => false,
        }
    }
}

/// How many shards a group has: four per thread that can run at once, as dashmap does,
/// enough that two callers of different keys rarely meet on one lock. Asked of the system
/// once per process (it reads files on Linux), not once per group.
fn shard_count() -> usize {
    static SHARDS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *SHARDS.get_or_init(|| {
        let threads = std::thread::available_parallelism().map_or(4, |n| n.get());
        (threads * 4).next_power_of_two().clamp(4, 256)
    })
}

/// Locks a shard. A panic under the lock (in a key's `Eq` or `ToOwned`) leaves the
/// flights as they were, so a poisoned lock is used as is.
fn lock<K, V>(shard: &Mutex<Flights<K, V>>) -> MutexGuard<'_, Flights<K, V>> {
    shard
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl<K, V> Flights<K, V> {
    /// Takes the flight named by `id` out of the map, with its key, or out of the
    /// forgotten flights.
    pub(crate) fn remove(&mut self, id: FlightId) -> Option<(Flight<V>, Option<K>)> {
        match self
            .table
            .find_entry(id.hash, |entry| entry.flight.id == id.id)
        {
            Ok(entry) => {
                let (Entry { key, flight, .. }, _) = entry.remove();
                Some((flight, Some(key)))
            }
            Err(_) => Some((self.forgotten.remove(&id.id)?, None)),
        }
    }

    /// The flight named by `id`, in the map or among the forgotten ones.
    pub(crate) fn get_mut(&mut self, id: FlightId) -> Option<&mut Flight<V>> {
        let Flights {
            table, forgotten, ..
        } = self;
        match table.find_mut(id.hash, |entry| entry.flight.id == id.id) {
            Some(entry) => Some(&mut entry.flight),
            None => forgotten.get_mut(&id.id),
        }
    }
}
