//! A Redis Cluster of a program's own on loopback: 3 masters and 3 replicas of
//! `redis-server`, each in its own folder, joined with `redis-cli --cluster create`, with
//! a node timeout of 1 s so that a killed master's replica takes over within seconds.
//! For the cluster tests, the fleet stampede and the fleet bench, included with `#[path]`.
#![allow(dead_code)] // not every program that includes this file needs all of it

use oneflight_redis::redis;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Masters, and one replica each.
const MASTERS: usize = 3;

/// A local cluster, its nodes killed on drop.
pub struct RedisCluster {
    nodes: Vec<Node>,
}

struct Node {
    /// `None` once killed.
    child: Option<Child>,
    port: u16,
}

/// Whether `redis-server` and `redis-cli` are on this machine.
pub fn cluster_tools_found() -> bool {
    ["redis-server", "redis-cli"].iter().all(|tool| {
        Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// `count` free loopback ports whose cluster bus ports (+10000) are free too.
fn free_ports(count: usize) -> Result<Vec<u16>, String> {
    let mut ports = Vec::new();
    for _ in 0..1000 {
        if ports.len() == count {
            break;
        }
        let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        let bus_free =
            port < 55_000 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok();
        if bus_free && !ports.contains(&port) {
            ports.push(port);
        }
    }
    if ports.len() < count {
        return Err("no free loopback ports for a cluster".into());
    }
    Ok(ports)
}

fn connection(port: u16) -> redis::RedisResult<redis::Connection> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/"))?;
    let connection = client.get_connection_with_timeout(Duration::from_millis(500))?;
    connection.set_read_timeout(Some(Duration::from_secs(2)))?;
    Ok(connection)
}

fn info(port: u16, section: &str) -> Option<String> {
    let mut c = connection(port).ok()?;
    redis::cmd("INFO").arg(section).query(&mut c).ok()
}

fn wait(what: &str, limit: Duration, mut ready: impl FnMut() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    while !ready() {
        if Instant::now() > deadline {
            return Err(format!("timed out after {limit:?} waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

impl RedisCluster {
    /// Starts the nodes in folders under `dir`, joins them, and waits until every slot
    /// is served and every replica is in sync with its master.
    pub fn start(dir: &Path) -> Result<RedisCluster, String> {
        if !cluster_tools_found() {
            return Err(
                "no redis-server or redis-cli found: install them (`apt-get install -y \
                        redis-server` on Debian and Ubuntu, `brew install redis` on macOS)"
                    .into(),
            );
        }
        let ports = free_ports(2 * MASTERS)?;
        let mut nodes = Vec::new();
        for &port in &ports {
            let folder = dir.join(format!("node-{port}"));
            std::fs::create_dir_all(&folder).map_err(|e| e.to_string())?;
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args([
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                ])
                .args(["--cluster-node-timeout", "1000"])
                .args(["--cluster-replica-validity-factor", "0"])
                .args(["--save", "", "--appendonly", "no"])
                .current_dir(&folder)
                .stdout(Stdio::null())
                .spawn()
                .map_err(|e| format!("redis-server: {e}"))?;
            nodes.push(Node {
                child: Some(child),
                port,
            });
        }
        let cluster = RedisCluster { nodes };
        for &port in &ports {
            wait("a cluster node to start", Duration::from_secs(10), || {
                connection(port).is_ok()
            })?;
        }
        let created = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(ports.iter().map(|p| format!("127.0.0.1:{p}")))
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|e| format!("redis-cli: {e}"))?;
        if !created.success() {
            return Err("redis-cli --cluster create failed".into());
        }
        cluster.wait_healthy(Duration::from_secs(30))?;
        Ok(cluster)
    }

    /// Waits until every live node says the cluster is ok and every live replica's link
    /// to its master is up.
    pub fn wait_healthy(&self, limit: Duration) -> Result<(), String> {
        wait("the cluster to be healthy", limit, || {
            self.live_ports().into_iter().all(|port| {
                let ok = cluster_info(port).is_some_and(|i| i.contains("cluster_state:ok"));
                let replication = info(port, "replication").unwrap_or_default();
                let synced = replication.contains("role:master")
                    || replication.contains("master_link_status:up");
                ok && synced
            })
        })
    }

    fn live_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.port)
            .collect()
    }

    /// The nodes' URLs, for a `ClusterClient`.
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}/", n.port))
            .collect()
    }

    /// A cluster client over RESP3 (which the fleet's hints need on a cluster).
    pub fn client(&self) -> redis::cluster::ClusterClient {
        client_for(&self.urls())
    }

    /// The port of the live master that serves `key`'s slot.
    pub fn master_of(&self, key: &str) -> Option<u16> {
        let port = *self.live_ports().first()?;
        let mut c = connection(port).ok()?;
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query(&mut c)
            .ok()?;
        let nodes: String = redis::cmd("CLUSTER").arg("NODES").query(&mut c).ok()?;
        nodes.lines().find_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let flags = fields.get(2)?;
            if !flags.contains("master") || flags.contains("fail") {
                return None;
            }
            let serves = fields[8..].iter().any(|range| {
                let (start, end) = range.split_once('-').unwrap_or((range, range));
                match (start.parse::<u16>(), end.parse::<u16>()) {
                    (Ok(start), Ok(end)) => (start..=end).contains(&slot),
                    _ => false,
                }
            });
            let address = fields.get(1)?.split('@').next()?;
            serves
                .then(|| address.rsplit(':').next()?.parse().ok())
                .flatten()
        })
    }

    /// The masters' ports.
    pub fn masters(&self) -> Vec<u16> {
        self.live_ports()
            .into_iter()
            .filter(|&port| info(port, "replication").is_some_and(|i| i.contains("role:master")))
            .collect()
    }

    /// The pid of the node on `port`.
    pub fn pid(&self, port: u16) -> u32 {
        let node = self
            .nodes
            .iter()
            .find(|n| n.port == port)
            .expect("a node of this cluster");
        node.child.as_ref().expect("a live node").id()
    }

    /// Kills the node on `port` (SIGKILL).
    pub fn kill(&mut self, port: u16) {
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("a node of this cluster");
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the master of `key`'s slot once its replica is in sync, and waits until the
    /// replica has taken over; returns the old and the new master's ports.
    pub fn fail_over(&mut self, key: &str, limit: Duration) -> Result<(u16, u16), String> {
        let old = self.master_of(key).ok_or("no master for the key")?;
        self.kill(old);
        let mut new = None;
        wait("a replica to take over", limit, || {
            new = self.master_of(key).filter(|&port| port != old);
            new.is_some()
        })?;
        Ok((old, new.expect("set above")))
    }
}

fn cluster_info(port: u16) -> Option<String> {
    let mut c = connection(port).ok()?;
    redis::cmd("CLUSTER").arg("INFO").query(&mut c).ok()
}

/// A RESP3 cluster client on `urls`.
pub fn client_for(urls: &[String]) -> redis::cluster::ClusterClient {
    redis::cluster::ClusterClient::builder(urls.iter().map(String::as_str))
        .use_protocol(redis::ProtocolVersion::RESP3)
        .build()
        .expect("valid node URLs")
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
