//! The transport: the Redis keys of a flight, the Lua scripts that change them, and the
//! one multiplexed connection every command goes through. Every command has a timeout.
//!
//! Keys of one flight of `key` in namespace `ns` share the hash tag `{ns:key}`, so a
//! Redis Cluster keeps them on one slot:
//!
//! - `oneflight:{ns:key}:lease`: the holder's token, with the lease as its TTL;
//! - `oneflight:{ns:key}:value:TOKEN`: the value published by the flight `TOKEN`, kept
//!   for one lease so that polling waiters find it, then gone;
//! - `oneflight:{ns:key}:fence`: the last fencing number handed out for the key, kept for
//!   a day; only keys loaded with `work_fenced` have one (see [`ACQUIRE`]).
//!
//! Ends of flights (published or released) are announced on the namespace's channel
//! `oneflight:ns:done`, the message being the flight's token: a hint only.

use futures_util::future::BoxFuture;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, RedisError, Script};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use crate::runtime;

/// Takes the lease, or says who holds it, or (for a waiter) hands over the value of the
/// flight it waited on. One script, so that a waiter's check and its takeover are one
/// round trip and atomic: a lease that expires between a `GET` and a `SET NX` cannot let
/// two waiters both believe they took over.
///
/// A fenced flight's token starts with its fencing number, which grows with each fenced
/// flight of a key: the larger of the last one plus one and the server's clock in
/// microseconds, so that it keeps growing even after the fence key expired (a day after
/// the key's last fenced flight). An unfenced flight's token is the random part alone: it
/// neither reads nor writes the fence key, so callers who do not fence pay for neither.
///
/// KEYS: lease, fence, value of the waited flight (or any key when `ARGV[3]` is empty).
/// ARGV: lease ms, random part of the token, waited token or "", fence memory ms, '1' for
/// a fenced flight.
/// Returns `{"value", payload}`, `{"wait", holder's token}` or `{"hold", our token}`.
pub const ACQUIRE: &str = r"
if ARGV[3] ~= '' then
  local value = redis.call('GET', KEYS[3])
  if value then return {'value', value} end
end
local holder = redis.call('GET', KEYS[1])
if holder then return {'wait', holder} end
local token = ARGV[2]
if ARGV[5] == '1' then
  local time = redis.call('TIME')
  local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
  local last = tonumber(redis.call('GET', KEYS[2]) or '0')
  local fence = string.format('%.0f', math.max(now, last + 1))
  redis.call('SET', KEYS[2], fence, 'PX', ARGV[4])
  token = fence .. '-' .. token
end
redis.call('SET', KEYS[1], token, 'PX', ARGV[1])
return {'hold', token}
";

/// Publishes a value only while the lease is still ours: compare-and-set, so that a holder
/// paused past its lease cannot overwrite or announce over the flight that replaced it.
///
/// The announcement carries the payload too when `ARGV[5]` is '1' (a small value), so that
/// a waiter that hears it needs no second round trip.
///
/// KEYS: lease, value of this flight. ARGV: token, payload, value retention ms, channel,
/// '1' to announce the payload. Returns 1 when published, 0 when the lease was no longer
/// ours.
pub const PUBLISH: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
redis.call('DEL', KEYS[1])
local message = ARGV[1]
if ARGV[5] == '1' then message = message .. ' ' .. ARGV[2] end
redis.call('PUBLISH', ARGV[4], message)
return 1
";

/// Values up to this size ride along with the announcement of their flight's end; larger
/// ones are fetched by each waiting process. Every subscriber of a namespace receives
/// every announcement, so this bounds what a process may receive for flights it does not
/// wait on.
const ANNOUNCED_PAYLOAD: usize = 1024;

/// Extends the lease only while it is ours (compare-and-expire): a late holder must not
/// extend the lease of the flight that replaced it.
///
/// KEYS: lease. ARGV: token, lease ms. Returns 1 when renewed, 0 when lost.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
";

/// Gives the lease up without a value (local callers gone, a panic, an error), only if it
/// is still ours (compare-and-delete), and wakes the waiters so that one takes over now.
///
/// KEYS: lease. ARGV: token, channel. Returns 1 when released, 0 when not ours.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[2], ARGV[1])
return 1
";

/// How long a fence number is remembered after a key's last flight.
const FENCE_MEMORY: Duration = Duration::from_secs(24 * 60 * 60);

/// The answer of [`Store::acquire`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Acquired {
    /// This process holds the lease of a new flight with this token.
    Hold(String),
    /// Another flight holds the lease, with this token.
    Wait(String),
    /// The flight waited on published this payload.
    Value(Vec<u8>),
}

/// The Redis keys of one key's flights.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    /// `oneflight:{ns:key}:`, the prefix of every key below.
    prefix: String,
}

impl Names {
    pub(crate) fn new(namespace: &str, key: &str) -> Self {
        Names {
            prefix: format!("oneflight:{{{namespace}:{key}}}:"),
        }
    }

    pub(crate) fn lease(&self) -> String {
        format!("{}lease", self.prefix)
    }
    pub(crate) fn fence(&self) -> String {
        format!("{}fence", self.prefix)
    }
    pub(crate) fn value(&self, token: &str) -> String {
        format!("{}value:{token}", self.prefix)
    }
}

/// A Redis error or timeout, as text for [`FleetError`](crate::FleetError).
pub(crate) type Failure = String;

/// The protocol's four operations: on Redis ([`Store`]), or in memory for the model test
/// of the protocol. Each has the meaning of the script of the same name above.
pub(crate) trait Transport: Send + Sync + std::fmt::Debug + 'static {
    /// Takes the lease of a new flight (with a fencing number when `fenced`), or learns
    /// who holds it; a waiter names the token it waited on and gets that flight's value
    /// when it is there.
    fn acquire<'a>(
        &'a self,
        names: &'a Names,
        waited: Option<&'a str>,
        lease: Duration,
        fenced: bool,
    ) -> BoxFuture<'a, Result<Acquired, Failure>>;
    /// Publishes `payload` as the value of the flight `token`; `Ok(false)` when the lease
    /// is no longer this flight's.
    fn publish<'a>(
        &'a self,
        names: &'a Names,
        token: &'a str,
        payload: Vec<u8>,
        retention: Duration,
    ) -> BoxFuture<'a, Result<bool, Failure>>;
    /// Extends the lease of the flight `token`; `Ok(false)` when it was lost.
    fn renew<'a>(
        &'a self,
        names: &'a Names,
        token: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<bool, Failure>>;
    /// Gives up the lease of the flight `token` and wakes its waiters.
    fn release<'a>(
        &'a self,
        names: &'a Names,
        token: &'a str,
    ) -> BoxFuture<'a, Result<bool, Failure>>;
}

/// The connection to Redis and the scripts, shared by a fleet's clones and its tasks.
#[derive(Debug)]
pub(crate) struct Store {
    client: Client,
    /// `oneflight:ns:done`: where ends of flights are announced.
    pub(crate) channel: String,
    command_timeout: Duration,
    /// The connection in use; `None` until the first command, and again after a failure
    /// so that the next command reconnects.
    connection: Mutex<Option<MultiplexedConnection>>,
    scripts: Scripts,
}

#[derive(Debug)]
struct Scripts {
    acquire: Script,
    publish: Script,
    renew: Script,
    release: Script,
}

impl Store {
    pub(crate) fn new(client: Client, namespace: &str, command_timeout: Duration) -> Self {
        Store {
            client,
            channel: format!("oneflight:{namespace}:done"),
            command_timeout,
            connection: Mutex::new(None),
            scripts: Scripts {
                acquire: Script::new(ACQUIRE),
                publish: Script::new(PUBLISH),
                renew: Script::new(RENEW),
                release: Script::new(RELEASE),
            },
        }
    }

    /// Runs one command on the shared connection, connecting first if needed, all within
    /// the command timeout. After any failure the connection is dropped, so that a
    /// stalled or restarted server gets a fresh one next time.
    ///
    /// On a live connection the timeout is redis-rs's own response timeout, set on the
    /// connection to the command timeout: a second timer of ours would cost every command
    /// a timer registration (on Tokio, often a wake-up of the timer's thread) for nothing.
    async fn run<T, F, Fut>(&self, command: F) -> Result<T, Failure>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        let live = self
            .connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let outcome = match live {
            Some(connection) => command(connection).await.map_err(|error| error.to_string()),
            None => {
                let connected = async {
                    let connection = self.connect().await?;
                    command(connection).await
                };
                match runtime::timeout(self.command_timeout, connected).await {
                    Some(outcome) => outcome.map_err(|error| error.to_string()),
                    None => Err(format!("no answer within {:?}", self.command_timeout)),
                }
            }
        };
        if outcome.is_err() {
            *self
                .connection
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = None;
        }
        outcome
    }

    /// A new connection, kept for the next commands.
    async fn connect(&self) -> Result<MultiplexedConnection, RedisError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.command_timeout))
            .set_response_timeout(Some(self.command_timeout));
        let connection = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        *self
            .connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(connection.clone());
        Ok(connection)
    }
}

/// The fencing number of a fenced flight's token (`FENCE-RANDOM`); `None` for an unfenced
/// flight's token (`RANDOM`, no dash).
pub(crate) fn fence_of(token: &str) -> Option<u64> {
    let (fence, _) = token.split_once('-')?;
    fence.parse().ok()
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// A random number for tokens, from the standard library's randomly keyed hasher (no
/// extra dependency): tokens must differ between processes and flights, not be secret.
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    RandomState::new().hash_one((COUNTER.fetch_add(1, Ordering::Relaxed), std::process::id()))
}

impl Transport for Store {
    fn acquire<'a>(
        &'a self,
        names: &'a Names,
        waited: Option<&'a str>,
        lease: Duration,
        fenced: bool,
    ) -> BoxFuture<'a, Result<Acquired, Failure>> {
        Box::pin(async move {
            let nonce = format!("{:016x}", random_u64());
            let waited = waited.unwrap_or("");
            let mut call = self.scripts.acquire.key(names.lease());
            call.key(names.fence()).key(names.value(waited));
            call.arg(millis(lease))
                .arg(nonce)
                .arg(waited)
                .arg(millis(FENCE_MEMORY))
                .arg(if fenced { "1" } else { "0" });
            let reply: Vec<Vec<u8>> = self
                .run(|mut c| async move { call.invoke_async(&mut c).await })
                .await?;
            match <[Vec<u8>; 2]>::try_from(reply) {
                Ok([kind, body]) => match kind.as_slice() {
                    b"value" => Ok(Acquired::Value(body)),
                    b"wait" => Ok(Acquired::Wait(String::from_utf8_lossy(&body).into_owned())),
                    b"hold" => Ok(Acquired::Hold(String::from_utf8_lossy(&body).into_owned())),
                    _ => Err("unexpected reply from the acquire script".to_owned()),
                },
                Err(_) => Err("unexpected reply from the acquire script".to_owned()),
            }
        })
    }

    fn publish<'a>(
        &'a self,
        names: &'a Names,
        token: &'a str,
        payload: Vec<u8>,
        retention: Duration,
    ) -> BoxFuture<'a, Result<bool, Failure>> {
        Box::pin(async move {
            let mut call = self.scripts.publish.key(names.lease());
            call.key(names.value(token));
            let announce = if payload.len() <= ANNOUNCED_PAYLOAD {
                "1"
            } else {
                "0"
            };
            call.arg(token)
                .arg(payload)
                .arg(millis(retention))
                .arg(&self.channel)
                .arg(announce);
            self.run(|mut c| async move { call.invoke_async(&mut c).await })
                .await
        })
    }

    fn renew<'a>(
        &'a self,
        names: &'a Names,
        token: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<bool, Failure>> {
        Box::pin(async move {
            let mut call = self.scripts.renew.key(names.lease());
            call.arg(token).arg(millis(lease));
            self.run(|mut c| async move { call.invoke_async(&mut c).await })
                .await
        })
    }

    fn release<'a>(
        &'a self,
        names: &'a Names,
        token: &'a str,
    ) -> BoxFuture<'a, Result<bool, Failure>> {
        Box::pin(async move {
            let mut call = self.scripts.release.key(names.lease());
            call.arg(token).arg(&self.channel);
            self.run(|mut c| async move { call.invoke_async(&mut c).await })
                .await
        })
    }
}
