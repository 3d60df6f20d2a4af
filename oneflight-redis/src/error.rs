//! [`FleetError`]: what Redis trouble is, for callers that ask to be told; and
//! [`WorkError`], what [`Fleet::try_work_or_fail`](crate::Fleet::try_work_or_fail)
//! returns.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// What kind of trouble a [`FleetError`] is.
///
/// ```
/// use oneflight_redis::FleetErrorKind;
///
/// let kind = FleetErrorKind::Timeout;
/// assert!(kind.is_unreachable());
/// assert!(!FleetErrorKind::Answered.is_unreachable());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FleetErrorKind {
    /// Redis did not answer within the command timeout (stalled, overloaded, a half-open
    /// connection).
    Timeout,
    /// The connection was refused, reset or closed (Redis down or restarting).
    Disconnected,
    /// Redis answered with an error: `MOVED`, `CROSSSLOT`, `READONLY`, `OOM`,
    /// `WRONGTYPE`, `NOSCRIPT`, `NOPERM`, a script error. [`FleetError::code`] names it.
    Answered,
    /// A payload in Redis that does not decode as this fleet's value (garbage, another
    /// envelope version, codec or type).
    Undecodable,
    /// The client cannot talk to that server as configured (bad URL, authentication,
    /// protocol): no retry will help.
    Configuration,
}

impl FleetErrorKind {
    /// Whether Redis did not answer at all (a timeout or a lost connection), as opposed to
    /// an answer the fleet could not use. Only these make a process rest from Redis.
    ///
    /// ```
    /// assert!(oneflight_redis::FleetErrorKind::Disconnected.is_unreachable());
    /// ```
    pub fn is_unreachable(self) -> bool {
        matches!(self, FleetErrorKind::Timeout | FleetErrorKind::Disconnected)
    }
}

/// Redis could not help a flight: returned by
/// [`Fleet::try_work_or_fail`](crate::Fleet::try_work_or_fail), and what the fleet counts
/// in [`FleetStats`](crate::FleetStats).
///
/// `Display` names the server's address, the operation and what failed; `source()` is the
/// `redis` crate's error when there is one.
///
/// ```
/// use oneflight_redis::{FleetError, FleetErrorKind};
///
/// let error = FleetError::timeout("127.0.0.1:6379", "acquire", std::time::Duration::from_secs(1));
/// assert_eq!(error.kind(), FleetErrorKind::Timeout);
/// assert_eq!(error.address(), "127.0.0.1:6379");
/// assert_eq!(error.to_string(), "redis at 127.0.0.1:6379: acquire: no answer within 1s");
/// ```
#[derive(Debug, Clone)]
pub struct FleetError {
    kind: FleetErrorKind,
    address: Arc<str>,
    operation: &'static str,
    detail: String,
    source: Option<redis::RedisError>,
}

impl FleetError {
    /// A command that got no answer within `after`.
    ///
    /// ```
    /// let error = oneflight_redis::FleetError::timeout("127.0.0.1:6379", "renew", std::time::Duration::from_millis(300));
    /// assert!(error.to_string().ends_with("no answer within 300ms"));
    /// ```
    pub fn timeout(address: &str, operation: &'static str, after: Duration) -> Self {
        FleetError {
            kind: FleetErrorKind::Timeout,
            address: address.into(),
            operation,
            detail: format!("no answer within {after:?}"),
            source: None,
        }
    }

    /// The `redis` crate's error for `operation`, classified.
    pub(crate) fn from_redis(
        address: &str,
        operation: &'static str,
        error: redis::RedisError,
    ) -> Self {
        use redis::ErrorKind as Redis;
        let kind = if error.is_timeout() {
            FleetErrorKind::Timeout
        } else if error.is_connection_refusal()
            || error.is_connection_dropped()
            || error.is_io_error()
        {
            FleetErrorKind::Disconnected
        } else {
            match error.kind() {
                Redis::Server(_) | Redis::Extension => FleetErrorKind::Answered,
                Redis::AuthenticationFailed
                | Redis::InvalidClientConfig
                | Redis::RESP3NotSupported => FleetErrorKind::Configuration,
                Redis::Parse | Redis::UnexpectedReturnType => FleetErrorKind::Answered,
                _ => FleetErrorKind::Disconnected,
            }
        };
        // An answered error reads as Redis wrote it (`MOVED 14520 10.0.0.3:6379`).
        let detail = match (kind, error.code(), error.detail()) {
            (FleetErrorKind::Answered, Some(code), Some(detail)) => {
                format!("Redis answered {code} {detail}")
            }
            (FleetErrorKind::Answered, Some(code), None) => format!("Redis answered {code}"),
            _ => error.to_string(),
        };
        FleetError {
            kind,
            address: address.into(),
            operation,
            detail,
            source: Some(error),
        }
    }

    /// An error of `kind` described by `detail`, with no `source`.
    pub(crate) fn other(
        kind: FleetErrorKind,
        address: &str,
        operation: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        FleetError {
            kind,
            address: address.into(),
            operation,
            detail: detail.into(),
            source: None,
        }
    }

    /// What kind of trouble this is.
    ///
    /// ```
    /// # use oneflight_redis::{FleetError, FleetErrorKind};
    /// let error = FleetError::timeout("127.0.0.1:6379", "acquire", std::time::Duration::from_secs(1));
    /// assert_eq!(error.kind(), FleetErrorKind::Timeout);
    /// ```
    pub fn kind(&self) -> FleetErrorKind {
        self.kind
    }

    /// The address of the Redis server, as the client was given it (`host:port`).
    ///
    /// ```
    /// # use oneflight_redis::FleetError;
    /// let error = FleetError::timeout("10.0.0.5:6379", "acquire", std::time::Duration::from_secs(1));
    /// assert_eq!(error.address(), "10.0.0.5:6379");
    /// ```
    pub fn address(&self) -> &str {
        &self.address
    }

    /// What the fleet was doing: `acquire`, `publish`, `renew`, `release`, `fetch`,
    /// `subscribe`, `decode`.
    ///
    /// ```
    /// # use oneflight_redis::FleetError;
    /// let error = FleetError::timeout("127.0.0.1:6379", "publish", std::time::Duration::from_secs(1));
    /// assert_eq!(error.operation(), "publish");
    /// ```
    pub fn operation(&self) -> &'static str {
        self.operation
    }

    /// The error code Redis answered (`MOVED`, `OOM`, `NOSCRIPT`, ...), for
    /// [`FleetErrorKind::Answered`].
    ///
    /// ```
    /// # use oneflight_redis::FleetError;
    /// let error = FleetError::timeout("127.0.0.1:6379", "acquire", std::time::Duration::from_secs(1));
    /// assert_eq!(error.code(), None);
    /// ```
    pub fn code(&self) -> Option<&str> {
        match self.kind {
            FleetErrorKind::Answered => self.source.as_ref().and_then(redis::RedisError::code),
            _ => None,
        }
    }

    /// Whether the failed command may have reached Redis and taken effect: not when the
    /// connection was refused, nor when Redis answered with an error (the fleet's scripts
    /// fail before their last write).
    pub(crate) fn may_have_taken_effect(&self) -> bool {
        let refused = self
            .source
            .as_ref()
            .is_some_and(redis::RedisError::is_connection_refusal);
        self.kind.is_unreachable() && !refused
    }

    /// What an operator should do about an error that no retry fixes, if this is one.
    pub(crate) fn advice(&self) -> Option<&'static str> {
        if self.kind == FleetErrorKind::Configuration {
            return Some("check the Redis URL, credentials and protocol given to the client");
        }
        Some(match self.code()? {
            "MOVED" | "ASK" | "CROSSSLOT" => {
                "this server is a Redis Cluster node: give the fleet a \
                 `redis::cluster::ClusterClient` (see `Backend`) instead of a `redis::Client`"
            }
            "CLUSTERDOWN" | "TRYAGAIN" => {
                "the cluster does not serve this key's slot now (a failover, or slots \
                 uncovered): calls degrade until it does"
            }
            "READONLY" => "this server is a replica: point the fleet at the master",
            "OOM" => {
                "Redis is out of memory: raise maxmemory, or use a volatile-* eviction policy \
                 (the fleet's keys all have TTLs)"
            }
            "WRONGTYPE" => "another program writes keys under the fleet's `oneflight:` prefix",
            "NOSCRIPT" => "the server refused the fleet's scripts (is EVAL allowed?)",
            "NOPERM" => {
                "the ACL user may not run the fleet's commands: allow EVALSHA, EVAL, GET, \
                 PUBLISH, SUBSCRIBE, UNSUBSCRIBE, PING (on a cluster: SPUBLISH, SSUBSCRIBE, \
                 SUNSUBSCRIBE) on keys and channels `oneflight:*`"
            }
            _ => return None,
        })
    }
}

impl fmt::Display for FleetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "redis at {}: {}: {}",
            self.address, self.operation, self.detail
        )
    }
}

impl std::error::Error for FleetError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_ref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// What [`Fleet::try_work_or_fail`](crate::Fleet::try_work_or_fail) returns instead of a
/// value: the load's own error, shared by this process's callers of the flight, or Redis
/// trouble, which the other `Fleet` methods degrade around.
///
/// ```
/// use oneflight_redis::{FleetError, WorkError};
///
/// let error: WorkError<std::io::Error> =
///     WorkError::Redis(FleetError::timeout("127.0.0.1:6379", "acquire", std::time::Duration::from_secs(1)));
/// assert!(error.to_string().contains("no answer within 1s"));
/// ```
pub enum WorkError<E> {
    /// The load failed: the same `Arc` for every caller of the flight in this process.
    Load(Arc<E>),
    /// Redis could not help, and the load did not run.
    Redis(FleetError),
}

impl<E> Clone for WorkError<E> {
    fn clone(&self) -> Self {
        match self {
            WorkError::Load(error) => WorkError::Load(error.clone()),
            WorkError::Redis(error) => WorkError::Redis(error.clone()),
        }
    }
}

impl<E: fmt::Debug> fmt::Debug for WorkError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WorkError::Load(error) => f.debug_tuple("Load").field(error).finish(),
            WorkError::Redis(error) => f.debug_tuple("Redis").field(error).finish(),
        }
    }
}

impl<E: fmt::Display> fmt::Display for WorkError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WorkError::Load(error) => error.fmt(f),
            WorkError::Redis(error) => error.fmt(f),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for WorkError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        // Display already shows the error itself: its source is the next link.
        match self {
            WorkError::Load(error) => error.source(),
            WorkError::Redis(error) => error.source(),
        }
    }
}
