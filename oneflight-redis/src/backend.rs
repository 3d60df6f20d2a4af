//! Where the fleet's Redis is ([`Backend`]: one node or a Redis Cluster), and the
//! connections to it that the store and the keeper send their commands on.
//!
//! Every key of one flight shares a hash tag (see [`crate::names`]), so on a cluster each
//! script runs on the node that owns the flight's slot: redis-rs routes a command by its
//! first key and follows `MOVED`/`ASK` after a failover or a resharding.

use redis::cluster::{ClusterClient, ClusterConfig};
use redis::{AsyncConnectionConfig, Client, Cmd, FromRedisValue, RedisResult};
use std::time::Duration;

/// Where the fleet's Redis is: one node ([`redis::Client`]) or a Redis Cluster
/// ([`redis::cluster::ClusterClient`]). [`Fleet::new`](crate::Fleet::new) and
/// [`Fleet::builder`](crate::Fleet::builder) take either, through `Into<Backend>`.
///
/// On a cluster, build the client with RESP3
/// (`.use_protocol(redis::ProtocolVersion::RESP3)`): the hints that wake waiting
/// processes ride on sharded pub/sub, which redis-rs's cluster client delivers over
/// RESP3 only. With RESP2 everything works, and waiting processes poll (said once on
/// stderr).
///
/// ```
/// use oneflight_redis::{Backend, Fleet, redis};
///
/// let one_node = redis::Client::open("redis://127.0.0.1/").unwrap();
/// let fleet: Fleet<String> = Fleet::new(one_node, "users");
///
/// let cluster = redis::cluster::ClusterClient::builder(["redis://127.0.0.1:7001/"])
///     .use_protocol(redis::ProtocolVersion::RESP3)
///     .build()
///     .unwrap();
/// let backend = Backend::from(cluster);
/// let fleet_on_cluster: Fleet<String> = Fleet::new(backend.clone(), "users");
/// # drop((fleet, fleet_on_cluster));
/// ```
#[derive(Clone)]
pub struct Backend {
    pub(crate) kind: Kind,
}

#[derive(Clone)]
pub(crate) enum Kind {
    Node(Client),
    Cluster(ClusterClient),
}

impl From<Client> for Backend {
    fn from(client: Client) -> Self {
        Backend {
            kind: Kind::Node(client),
        }
    }
}

impl From<ClusterClient> for Backend {
    fn from(client: ClusterClient) -> Self {
        Backend {
            kind: Kind::Cluster(client),
        }
    }
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            Kind::Node(client) => f
                .debug_tuple("Backend::Node")
                .field(&client.get_connection_info().addr().to_string())
                .finish(),
            // redis-rs's cluster client shows nothing of itself.
            Kind::Cluster(_) => f.write_str("Backend::Cluster"),
        }
    }
}

impl Backend {
    /// Where errors say they happened: `host:port` of the node, or `cluster` (redis-rs
    /// does not tell which node of a cluster answered).
    pub(crate) fn address(&self) -> String {
        match &self.kind {
            Kind::Node(client) => client.get_connection_info().addr().to_string(),
            Kind::Cluster(_) => "cluster".to_owned(),
        }
    }

    /// A connection for commands, multiplexed (one node) or routed by key (cluster),
    /// connecting within `timeout`, each reply awaited at most `response_timeout`.
    pub(crate) async fn connect(
        &self,
        timeout: Duration,
        response_timeout: Option<Duration>,
    ) -> RedisResult<Commands> {
        match &self.kind {
            Kind::Node(client) => {
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(response_timeout);
                let connection = client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?;
                Ok(Commands::Node(connection))
            }
            Kind::Cluster(client) => {
                let mut config = ClusterConfig::new().set_connection_timeout(timeout);
                if let Some(response_timeout) = response_timeout {
                    config = config.set_response_timeout(response_timeout);
                }
                let connection = client.get_async_connection_with_config(config).await?;
                Ok(Commands::Cluster(connection))
            }
        }
    }

    /// A blocking connection, for the keeper's thread, every step bounded by `timeout`.
    pub(crate) fn connect_blocking(&self, timeout: Duration) -> RedisResult<Blocking> {
        match &self.kind {
            Kind::Node(client) => {
                let connection = client.get_connection_with_timeout(timeout)?;
                connection.set_read_timeout(Some(timeout))?;
                connection.set_write_timeout(Some(timeout))?;
                Ok(Blocking::Node(connection))
            }
            Kind::Cluster(client) => {
                let config = ClusterConfig::new()
                    .set_connection_timeout(timeout)
                    .set_response_timeout(timeout);
                Ok(Blocking::Cluster(Box::new(
                    client.get_connection_with_config(config)?,
                )))
            }
        }
    }
}

/// How a cluster command that met a replica is retried (see [`answered_readonly`]): the
/// first pause, the longest, and the attempts in all (about 9 s of pauses; the store's
/// command timeout usually ends the wait sooner).
const READONLY_FIRST_PAUSE: Duration = Duration::from_millis(25);
const READONLY_MAX_PAUSE: Duration = Duration::from_millis(250);
const READONLY_ATTEMPTS: usize = 40;

/// Whether a script met a replica: while a master is unreachable, redis-rs's cluster
/// connection sends the slot's commands to a random node, and its replica (every
/// connection is put in `READONLY` mode) runs a script's reads and refuses its first write
/// with `READONLY`. Nothing was written, so the command is safe to send again, and the
/// answer ends once the replica is promoted or the connection follows a `MOVED`:
/// redis-rs does not retry it (it retries `TRYAGAIN`, `CLUSTERDOWN`, `MOVED`), so the
/// cluster path does, instead of degrading every call that meets a failover.
fn answered_readonly(error: &redis::RedisError) -> bool {
    error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
}

/// An async connection for commands (cheap to clone: clones share it).
#[derive(Clone)]
pub(crate) enum Commands {
    Node(redis::aio::MultiplexedConnection),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl Commands {
    pub(crate) async fn query<T: FromRedisValue>(&mut self, command: &Cmd) -> RedisResult<T> {
        match self {
            Commands::Node(connection) => command.query_async(connection).await,
            Commands::Cluster(connection) => {
                let mut pause = READONLY_FIRST_PAUSE;
                for _ in 1..READONLY_ATTEMPTS {
                    match command.query_async(connection).await {
                        Err(error) if answered_readonly(&error) => {
                            crate::runtime::sleep(pause).await;
                            pause = (pause * 2).min(READONLY_MAX_PAUSE);
                        }
                        outcome => return outcome,
                    }
                }
                command.query_async(connection).await
            }
        }
    }

    pub(crate) async fn query_pipeline<T: FromRedisValue>(
        &mut self,
        pipeline: &redis::Pipeline,
    ) -> RedisResult<T> {
        match self {
            Commands::Node(connection) => pipeline.query_async(connection).await,
            Commands::Cluster(connection) => pipeline.query_async(connection).await,
        }
    }

    /// Whether redis-rs's own response timeout bounds each command (one node): then the
    /// store needs no timer of its own. A cluster connection retries and follows
    /// redirections within one command, so the store bounds the whole.
    pub(crate) fn times_itself(&self) -> bool {
        matches!(self, Commands::Node(_))
    }
}

/// A blocking connection (redis-rs's have no `Debug`).
pub(crate) enum Blocking {
    Node(redis::Connection),
    /// Boxed: it is four times the size of the other.
    Cluster(Box<redis::cluster::ClusterConnection>),
}

impl Blocking {
    pub(crate) fn query<T: FromRedisValue>(&mut self, command: &Cmd) -> RedisResult<T> {
        match self {
            Blocking::Node(connection) => command.query(connection),
            Blocking::Cluster(connection) => command.query(&mut **connection),
        }
    }
}

impl std::fmt::Debug for Blocking {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Blocking")
    }
}

impl std::fmt::Debug for Commands {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Commands")
    }
}
