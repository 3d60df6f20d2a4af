//! The Lua scripts of the protocol, each atomic on one flight's keys (one slot), each
//! with the race it closes, and how they are called ([`Call`]).

use crate::backend::{Blocking, Commands};

/// Takes the lease, or says who holds it, or (for a waiter) hands over the value of the
/// flight it waited on. One script, so that a waiter's check and its takeover are one
/// round trip and atomic: a lease that expires between a `GET` and a `SET NX` cannot let
/// two waiters both believe they took over.
///
/// A value larger than `ARGV[6]` bytes is not returned inline: the reply says its size,
/// and the waiter fetches it on the connection for large transfers.
///
/// A nonce that the release script has voided takes no lease: an acquire whose caller gave up
/// (its reply lost to a timeout) may still run later, when a stalled Redis resumes, and
/// possibly after the release that was meant for it.
///
/// A fenced flight's token starts with its fencing number, which grows with each fenced
/// flight of a key: the larger of the last one plus one and the server's clock in
/// microseconds, so that it keeps growing even after the fence key expired (a day after
/// the key's last fenced flight). An unfenced flight's token is the nonce alone: it
/// neither reads nor writes the fence key, so callers who do not fence pay for neither.
///
/// KEYS: lease, fence, value of the waited flight (or any key when `ARGV[3]` is empty),
/// the nonce's void mark.
/// ARGV: lease ms, the caller's nonce, waited token or "", fence memory ms, '1' for a
/// fenced flight, the largest value returned inline.
/// Returns `{"value", payload}`, `{"large", size}`, `{"wait", holder's token}`,
/// `{"hold", our token}` or `{"void", ""}`.
pub const ACQUIRE: &str = r"
if ARGV[3] ~= '' then
  local size = redis.call('STRLEN', KEYS[3])
  if size > tonumber(ARGV[6]) then return {'large', tostring(size)} end
  if size > 0 then return {'value', redis.call('GET', KEYS[3])} end
end
local holder = redis.call('GET', KEYS[1])
if holder then return {'wait', holder} end
if redis.call('EXISTS', KEYS[4]) == 1 then return {'void', ''} end
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
/// a waiter that hears it needs no second round trip. It goes to the flight's own channel
/// with `ARGV[7]`: `PUBLISH` on one node, `SPUBLISH` on a cluster (delivered by the
/// flight's shard only, not copied to every node over the cluster bus).
///
/// KEYS: lease, value of this flight. ARGV: token, payload, value retention ms, channel,
/// '1' to announce the payload, the flight's `TAG_LEN:TAG`, the publish command. Returns
/// 1 when published, 0 when the lease was no longer ours.
pub const PUBLISH: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
redis.call('DEL', KEYS[1])
local message = ARGV[1] .. ' ' .. ARGV[6]
if ARGV[5] == '1' then message = message .. ' ' .. ARGV[2] end
redis.call(ARGV[7], ARGV[4], message)
return 1
";

/// Extends the lease only while it is ours (compare-and-expire): a late holder must not
/// extend the lease of the flight that replaced it.
///
/// KEYS: lease. ARGV: token, lease ms. Returns 1 when renewed, 0 when lost.
pub(crate) const RENEW: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
";

/// Gives the lease up without a value (local callers gone, a panic, an error, a lost
/// reply), only if it is still the one taken with this nonce (compare-and-delete), and
/// wakes the waiters so that one takes over now. By nonce, not token: a caller whose
/// acquire reply was lost knows its nonce but not the fencing number in its token.
///
/// It also voids the nonce for a lease: an acquire with this nonce that Redis has not run
/// yet (queued while Redis stalled) will take no lease when it runs ([`ACQUIRE`]).
///
/// KEYS: lease, the nonce's void mark. ARGV: nonce, channel, the flight's `TAG_LEN:TAG`,
/// lease ms, the publish command (see [`PUBLISH`]). Returns 1 when released, 0 when not
/// ours.
pub(crate) const RELEASE: &str = r"
redis.call('SET', KEYS[2], '1', 'PX', ARGV[4])
local holder = redis.call('GET', KEYS[1])
if not holder then return 0 end
if holder ~= ARGV[1] and string.sub(holder, -(#ARGV[1] + 1)) ~= '-' .. ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call(ARGV[5], ARGV[2], holder .. ' ' .. ARGV[3])
return 1
";

/// A cache's invalidation: removes the cached value and revokes the lease of the flight
/// in the air, if any, so that its publish (a compare-and-set on the lease, [`PUBLISH`])
/// stores nothing: a load that began before the invalidation can never write its value
/// back afterwards (the "stale set" of memcache's leases, Nishtala et al., NSDI 2013).
/// The lease is the key's generation: every load runs under one, and this script ends
/// it. The flight's waiters are told, so that one of them takes over at once and loads
/// anew.
///
/// KEYS: lease, cached value. ARGV: channel, the flight's `TAG_LEN:TAG`, the publish
/// command (see [`PUBLISH`]). Returns 1 when a lease was revoked, else 0.
pub(crate) const INVALIDATE: &str = r"
redis.call('DEL', KEYS[2])
local holder = redis.call('GET', KEYS[1])
if not holder then return 0 end
redis.call('DEL', KEYS[1])
redis.call(ARGV[3], ARGV[1], holder .. ' ' .. ARGV[2])
return 1
";

/// One of the scripts above, with its SHA1.
#[derive(Debug)]
pub(crate) struct Lua {
    body: &'static str,
    sha1: String,
}

impl Lua {
    pub(crate) fn new(body: &'static str) -> Self {
        Lua {
            body,
            sha1: redis::Script::new(body).get_hash().to_owned(),
        }
    }

    /// A call of this script on `keys` (the first one routes it on a cluster).
    pub(crate) fn call(&self) -> Call<'_> {
        Call {
            lua: self,
            keys: Vec::new(),
            args: Vec::new(),
        }
    }
}

/// A call of a script: sent as `EVALSHA`, then as `EVAL` when the node answers
/// `NOSCRIPT` (a restarted node, or a replica promoted by a failover: Redis replicates a
/// script's effects, not its cache). `EVAL` goes to the flight's node only, unlike the
/// `SCRIPT LOAD` that redis-rs's own retry sends to every node of a cluster, which fails
/// while one of them is down.
#[derive(Debug)]
pub(crate) struct Call<'a> {
    lua: &'a Lua,
    keys: Vec<Vec<u8>>,
    args: Vec<Vec<u8>>,
}

impl Call<'_> {
    pub(crate) fn key(&mut self, key: impl redis::ToRedisArgs) -> &mut Self {
        key.write_redis_args(&mut self.keys);
        self
    }

    pub(crate) fn arg(&mut self, arg: impl redis::ToRedisArgs) -> &mut Self {
        arg.write_redis_args(&mut self.args);
        self
    }

    fn command(&self, by_body: bool) -> redis::Cmd {
        let (name, script) = if by_body {
            ("EVAL", self.lua.body)
        } else {
            ("EVALSHA", self.lua.sha1.as_str())
        };
        let mut command = redis::cmd(name);
        command
            .arg(script)
            .arg(self.keys.len())
            .arg(&self.keys)
            .arg(&self.args);
        command
    }

    pub(crate) async fn invoke<T: redis::FromRedisValue>(
        &self,
        connection: &mut Commands,
    ) -> redis::RedisResult<T> {
        match connection.query(&self.command(false)).await {
            Err(error) if unknown_script(&error) => connection.query(&self.command(true)).await,
            outcome => outcome,
        }
    }

    pub(crate) fn invoke_blocking<T: redis::FromRedisValue>(
        &self,
        connection: &mut Blocking,
    ) -> redis::RedisResult<T> {
        match connection.query(&self.command(false)) {
            Err(error) if unknown_script(&error) => connection.query(&self.command(true)),
            outcome => outcome,
        }
    }
}

fn unknown_script(error: &redis::RedisError) -> bool {
    error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
}
