//! The transport: the protocol's operations ([`Transport`]), and on Redis ([`Store`]) the
//! connections every command goes through, the scripts of [`crate::scripts`] sent on
//! them. Every command has a timeout.
use futures_util::future::BoxFuture;
use redis::RedisError;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::backend::{Backend, Blocking, Commands, Kind};
use crate::names::Names;
use crate::runtime;
use crate::scripts::{ACQUIRE, INVALIDATE, Lua, PUBLISH, RELEASE, RENEW};
use crate::{FleetError, FleetErrorKind};

/// Values up to this size ride along with the announcement of their flight's end; larger
/// ones are fetched by each waiting process. Only processes that wait on the key (or did
/// within the last second) subscribe to its channel, so this is what saves a waiter its
/// second round trip, and what a process that just stopped waiting may still receive.
const ANNOUNCED_PAYLOAD: usize = 16 * 1024;

/// Values up to this size travel inline, on the shared connection, under the command
/// timeout; larger ones on the connection for large transfers, under a timeout that
/// grows with their size ([`transfer_timeout`]), so that neither a big transfer is cut
/// off nor do the small commands of other flights queue behind it.
const INLINE_PAYLOAD: usize = 64 * 1024;

/// The slowest transfer rate a large value is given time for, on top of the command
/// timeout: 16 MiB get 2 s more.
const SLOWEST_BYTES_PER_SECOND: u64 = 8 * 1024 * 1024;

/// How long a fence number is remembered after a key's last flight.
const FENCE_MEMORY: Duration = Duration::from_secs(24 * 60 * 60);

/// The longest expiry sent to Redis (about 2,000 years): `SET ... PX` rejects what
/// overflows its clock, and a `Duration::MAX` setting means "no limit".
const LONGEST_EXPIRY_MS: u64 = 1 << 46;

/// A cache's stored payload of a key and the time it has left in Redis; `None` when
/// there is none.
pub(crate) type Stored = Option<(Vec<u8>, Duration)>;

/// The answer of [`Transport::acquire`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Acquired {
    /// This process holds the lease of a new flight with this token.
    Hold(String),
    /// Another flight holds the lease, with this token.
    Wait(String),
    /// The flight waited on published this payload.
    Value(Vec<u8>),
}

/// The protocol's operations: on Redis ([`Store`]), or in memory for the model test of
/// the protocol. Each has the meaning of the script of the same name above.
pub(crate) trait Transport: Send + Sync + std::fmt::Debug + 'static {
    /// Takes the lease of a new flight with `nonce` (with a fencing number when
    /// `fenced`), or learns who holds it; a waiter names the token it waited on and gets
    /// that flight's value when it is there.
    fn acquire<'a>(
        &'a self,
        names: &'a Names,
        waited: Option<&'a str>,
        nonce: &'a str,
        lease: Duration,
        fenced: bool,
    ) -> BoxFuture<'a, Result<Acquired, FleetError>>;
    /// Publishes `payload` as the value of the flight `token`; `Ok(false)` when the lease
    /// is no longer this flight's.
    fn publish<'a>(
        &'a self,
        names: &'a Names,
        token: &'a str,
        payload: Vec<u8>,
        retention: Duration,
    ) -> BoxFuture<'a, Result<bool, FleetError>>;
    /// Extends the lease of the flight `token`; `Ok(false)` when it was lost. Blocks the
    /// calling thread (the keeper's).
    fn renew(&self, names: &Names, token: &str, lease: Duration) -> Result<bool, FleetError>;
    /// Gives up the lease taken with `nonce` and wakes its waiters; voids the nonce for
    /// `lease`. Blocks the calling thread (the keeper's): it works without a runtime, so
    /// that leases are released while a runtime shuts down.
    fn release(&self, names: &Names, nonce: &str, lease: Duration) -> Result<bool, FleetError>;
    /// A cache's cached payload of the key and how long it has left; `None` when there is
    /// none. Its age is read from the TTL the store gave it, so that the processes'
    /// clocks never matter.
    fn lookup<'a>(&'a self, names: &'a Names) -> BoxFuture<'a, Result<Stored, FleetError>>;
    /// A cache's invalidation of the key: its value removed, its flight's lease revoked
    /// ([`INVALIDATE`]); `Ok(true)` when a lease was revoked.
    fn invalidate<'a>(&'a self, names: &'a Names) -> BoxFuture<'a, Result<bool, FleetError>>;
}

/// The connections to Redis and the scripts, shared by a fleet's clones and its tasks.
#[derive(Debug)]
pub(crate) struct Store {
    backend: Backend,
    /// `host:port`, for errors.
    address: Arc<str>,
    /// How ends of flights are announced: `PUBLISH` on one node; `SPUBLISH` on a cluster,
    /// so that the flight's shard alone delivers it (a `PUBLISH` is copied to every node).
    announce_with: &'static str,
    command_timeout: Duration,
    /// The connection for commands with small payloads, its response timeout the command
    /// timeout; `None` until the first command, and again after the server did not
    /// answer, so that the next command reconnects.
    quick: Mutex<Option<Commands>>,
    /// The connection for values over [`INLINE_PAYLOAD`], without a response timeout of
    /// its own: each transfer is timed by its size.
    bulk: Mutex<Option<Commands>>,
    /// The keeper thread's blocking connection, and its timeout (a sixth of the lease at
    /// most, so that a renewal attempt ends in time for the next).
    blocking: Mutex<Option<Blocking>>,
    blocking_timeout: Duration,
    scripts: Scripts,
    /// A cache's store: flights publish to the key's cached value (see
    /// [`Names::published`]).
    cache: bool,
}

#[derive(Debug)]
struct Scripts {
    acquire: Lua,
    publish: Lua,
    renew: Lua,
    release: Lua,
    invalidate: Lua,
}

/// Which of the store's async connections a command goes through.
#[derive(Debug, Clone, Copy)]
enum Lane {
    Quick,
    /// A transfer of this many bytes.
    Bulk(usize),
}

/// The time a transfer of `bytes` is given: the command timeout, and more for a large
/// value.
fn transfer_timeout(command_timeout: Duration, bytes: usize) -> Duration {
    let extra = Duration::from_millis(bytes as u64 * 1000 / SLOWEST_BYTES_PER_SECOND);
    command_timeout.saturating_add(extra)
}

impl Store {
    pub(crate) fn new(
        backend: Backend,
        command_timeout: Duration,
        lease: Duration,
        cache: bool,
    ) -> Self {
        Store {
            address: backend.address().into(),
            announce_with: match backend.kind {
                Kind::Node(_) => "PUBLISH",
                Kind::Cluster(_) => "SPUBLISH",
            },
            backend,
            command_timeout,
            quick: Mutex::new(None),
            bulk: Mutex::new(None),
            blocking: Mutex::new(None),
            blocking_timeout: command_timeout.min(lease / 6),
            scripts: Scripts {
                acquire: Lua::new(ACQUIRE),
                publish: Lua::new(PUBLISH),
                renew: Lua::new(RENEW),
                release: Lua::new(RELEASE),
                invalidate: Lua::new(INVALIDATE),
            },
            cache,
        }
    }

    fn slot(&self, lane: Lane) -> &Mutex<Option<Commands>> {
        match lane {
            Lane::Quick => &self.quick,
            Lane::Bulk(_) => &self.bulk,
        }
    }

    /// Runs one command of `operation` on the lane's connection, connecting first if
    /// needed, all within the lane's timeout. A server that did not answer (a timeout, a
    /// lost connection) loses the connection, so that a stalled or restarted server gets
    /// a fresh one next time; an error the server answered keeps it.
    ///
    /// On a live quick connection to one node the timeout is redis-rs's own response
    /// timeout, set on the connection to the command timeout: a second timer of ours would
    /// cost every command a timer registration (on Tokio, often a wake-up of the timer's
    /// thread) for nothing. A cluster connection may retry within one command (to follow
    /// a failover), so there the store's timer bounds the whole.
    async fn run<T, F, Fut>(
        &self,
        operation: &'static str,
        lane: Lane,
        command: F,
    ) -> Result<T, FleetError>
    where
        F: FnOnce(Commands) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        let slot = self.slot(lane);
        let live = slot.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let limit = match lane {
            Lane::Quick => self.command_timeout,
            Lane::Bulk(bytes) => transfer_timeout(self.command_timeout, bytes),
        };
        let outcome = match (live, lane) {
            (Some(connection), Lane::Quick) if connection.times_itself() => {
                command(connection).await
            }
            (live, _) => {
                let connected = async {
                    let connection = match live {
                        Some(connection) => connection,
                        None => self.connect(lane).await?,
                    };
                    command(connection).await
                };
                match runtime::timeout(limit, connected).await {
                    Some(outcome) => outcome,
                    None => {
                        *slot.lock().unwrap_or_else(PoisonError::into_inner) = None;
                        return Err(FleetError::timeout(&self.address, operation, limit));
                    }
                }
            }
        };
        outcome.map_err(|error| {
            let error = FleetError::from_redis(&self.address, operation, error);
            if error.kind().is_unreachable() {
                *slot.lock().unwrap_or_else(PoisonError::into_inner) = None;
            }
            error
        })
    }

    /// A new connection for `lane`, kept for the next commands.
    async fn connect(&self, lane: Lane) -> Result<Commands, RedisError> {
        let response_timeout = match lane {
            Lane::Quick => Some(self.command_timeout),
            Lane::Bulk(_) => None,
        };
        let connection = self
            .backend
            .connect(self.command_timeout, response_timeout)
            .await?;
        *self
            .slot(lane)
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(connection.clone());
        Ok(connection)
    }

    /// Fetches a large value of `size` bytes at `key` on the bulk connection; `None` if it
    /// expired since the script that saw it.
    async fn fetch(&self, key: String, size: usize) -> Result<Option<Vec<u8>>, FleetError> {
        self.run("fetch", Lane::Bulk(size), |mut c| async move {
            c.query(redis::cmd("GET").arg(key)).await
        })
        .await
    }

    fn acquire_reply(&self, reply: Vec<Vec<u8>>) -> Result<Reply, FleetError> {
        let unexpected = || {
            FleetError::other(
                FleetErrorKind::Answered,
                &self.address,
                "acquire",
                "unexpected reply from the acquire script",
            )
        };
        let [kind, body] = <[Vec<u8>; 2]>::try_from(reply).map_err(|_| unexpected())?;
        let text = || String::from_utf8_lossy(&body).into_owned();
        Ok(match kind.as_slice() {
            b"value" => Reply::Done(Acquired::Value(body)),
            b"wait" => Reply::Done(Acquired::Wait(text())),
            b"hold" => Reply::Done(Acquired::Hold(text())),
            b"large" => Reply::Large(text().parse().map_err(|_| unexpected())?),
            // Only an acquire whose caller is gone meets its nonce voided.
            b"void" => return Err(unexpected()),
            _ => return Err(unexpected()),
        })
    }
}

impl Store {
    /// Runs `command` on the keeper's blocking connection, connecting first if needed. A
    /// kept connection that fails unanswered (dead since a restart of the server) is
    /// replaced and the command tried once more at once: the keeper's commands (renew,
    /// release) are compare-and-set, so running one twice is harmless.
    fn blocking<T>(
        &self,
        operation: &'static str,
        command: impl Fn(&mut Blocking) -> Result<T, RedisError>,
    ) -> Result<T, FleetError> {
        let fail = |error| FleetError::from_redis(&self.address, operation, error);
        let mut blocking = self.blocking.lock().unwrap_or_else(PoisonError::into_inner);
        let kept = blocking.is_some();
        for attempt in [kept, false] {
            if blocking.is_none() {
                let connection = self
                    .backend
                    .connect_blocking(self.blocking_timeout)
                    .map_err(fail)?;
                *blocking = Some(connection);
            }
            let connection = blocking.as_mut().expect("connected above");
            match command(connection).map_err(fail) {
                Err(error) if error.kind().is_unreachable() => {
                    *blocking = None;
                    if !attempt {
                        return Err(error);
                    }
                }
                outcome => return outcome,
            }
        }
        unreachable!("the second attempt returns")
    }
}

/// The acquire script's reply, before a large value is fetched.
enum Reply {
    Done(Acquired),
    /// The waited flight's value, too large to travel inline, has this many bytes.
    Large(usize),
}

/// A duration as Redis expiry milliseconds: at least 1, at most [`LONGEST_EXPIRY_MS`].
pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .clamp(1, LONGEST_EXPIRY_MS)
}

impl Transport for Store {
    fn acquire<'a>(
        &'a self,
        names: &'a Names,
        waited: Option<&'a str>,
        nonce: &'a str,
        lease: Duration,
        fenced: bool,
    ) -> BoxFuture<'a, Result<Acquired, FleetError>> {
        Box::pin(async move {
            // Twice at most: a large value that expired between the script and its fetch
            // sends the waiter to the script again, as a newcomer.
            let mut waited = waited.unwrap_or("");
            loop {
                let mut call = self.scripts.acquire.call();
                call.key(names.lease())
                    .key(names.fence())
                    .key(names.published(waited, self.cache))
                    .key(names.void(nonce));
                call.arg(millis(lease))
                    .arg(nonce)
                    .arg(waited)
                    .arg(millis(FENCE_MEMORY))
                    .arg(if fenced { "1" } else { "0" })
                    .arg(INLINE_PAYLOAD);
                let reply: Vec<Vec<u8>> = self
                    .run("acquire", Lane::Quick, |mut c| async move {
                        call.invoke(&mut c).await
                    })
                    .await?;
                match self.acquire_reply(reply)? {
                    Reply::Done(acquired) => return Ok(acquired),
                    Reply::Large(size) => {
                        let key = names.published(waited, self.cache);
                        match self.fetch(key, size).await? {
                            Some(payload) => return Ok(Acquired::Value(payload)),
                            None => waited = "",
                        }
                    }
                }
            }
        })
    }

    fn publish<'a>(
        &'a self,
        names: &'a Names,
        token: &'a str,
        payload: Vec<u8>,
        retention: Duration,
    ) -> BoxFuture<'a, Result<bool, FleetError>> {
        Box::pin(async move {
            let size = payload.len();
            let mut call = self.scripts.publish.call();
            call.key(names.lease())
                .key(names.published(token, self.cache));
            let announce = if size <= ANNOUNCED_PAYLOAD { "1" } else { "0" };
            call.arg(token)
                .arg(payload)
                .arg(millis(retention))
                .arg(names.channel())
                .arg(announce)
                .arg(names.announced())
                .arg(self.announce_with);
            let lane = if size <= INLINE_PAYLOAD {
                Lane::Quick
            } else {
                Lane::Bulk(size)
            };
            self.run(
                "publish",
                lane,
                |mut c| async move { call.invoke(&mut c).await },
            )
            .await
        })
    }

    fn renew(&self, names: &Names, token: &str, lease: Duration) -> Result<bool, FleetError> {
        self.blocking("renew", |connection| {
            self.scripts
                .renew
                .call()
                .key(names.lease())
                .arg(token)
                .arg(millis(lease))
                .invoke_blocking(connection)
        })
    }

    fn release(&self, names: &Names, nonce: &str, lease: Duration) -> Result<bool, FleetError> {
        self.blocking("release", |connection| {
            self.scripts
                .release
                .call()
                .key(names.lease())
                .key(names.void(nonce))
                .arg(nonce)
                .arg(names.channel())
                .arg(names.announced())
                .arg(millis(lease))
                .arg(self.announce_with)
                .invoke_blocking(connection)
        })
    }

    fn lookup<'a>(&'a self, names: &'a Names) -> BoxFuture<'a, Result<Stored, FleetError>> {
        Box::pin(async move {
            let key = names.cached();
            // Three plain commands in one round trip (cheaper for Redis than a script, and
            // atomic enough: a value replaced in between only shifts its judged age). Up
            // to `INLINE_PAYLOAD` bytes come along; a larger value is fetched on the
            // connection for large transfers.
            let mut lookup = redis::pipe();
            lookup
                .cmd("STRLEN")
                .arg(&key)
                .cmd("PTTL")
                .arg(&key)
                .cmd("GETRANGE")
                .arg(&key)
                .arg(0)
                .arg(INLINE_PAYLOAD - 1);
            let (size, ttl, head): (usize, i64, Vec<u8>) = self
                .run("lookup", Lane::Quick, |mut c| async move {
                    c.query_pipeline(&lookup).await
                })
                .await?;
            // No value, or one without a TTL (-1: not one of ours): a miss.
            let Ok(left) = u64::try_from(ttl) else {
                return Ok(None);
            };
            let payload = if size == 0 {
                return Ok(None);
            } else if size <= INLINE_PAYLOAD && head.len() == size {
                head
            } else {
                match self.fetch(key, size).await? {
                    Some(payload) => payload,
                    None => return Ok(None),
                }
            };
            Ok(Some((payload, Duration::from_millis(left))))
        })
    }

    fn invalidate<'a>(&'a self, names: &'a Names) -> BoxFuture<'a, Result<bool, FleetError>> {
        Box::pin(async move {
            let mut call = self.scripts.invalidate.call();
            call.key(names.lease())
                .key(names.cached())
                .arg(names.channel())
                .arg(names.announced())
                .arg(self.announce_with);
            let revoked: i64 = self
                .run("invalidate", Lane::Quick, |mut c| async move {
                    call.invoke(&mut c).await
                })
                .await?;
            Ok(revoked == 1)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiries_are_clamped_for_redis() {
        assert_eq!(millis(Duration::MAX), LONGEST_EXPIRY_MS);
        assert_eq!(millis(Duration::ZERO), 1);
    }
}
