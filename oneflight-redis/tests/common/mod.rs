//! Helpers for the fleet tests: a real `redis-server` that the test starts itself on a
//! free loopback port, and the replica processes (this test binary, re-executed).
#![allow(dead_code, unreachable_pub)]

#[path = "../../examples/shared/redis_cluster.rs"]
pub mod redis_cluster;
pub mod replica;
pub mod scenarios;

use redis_test::server::RedisServer;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The environment variable that makes a missing `redis-server` a failure (CI sets it).
const REQUIRED: &str = "ONEFLIGHT_REDIS_REQUIRED";

/// A `redis-server` of this test's own on 127.0.0.1, killed on drop.
pub struct Server {
    server: RedisServer,
    pub port: u16,
}

/// Starts a server, or returns `None` after saying once why the test is skipped: no
/// `redis-server` on this machine, and `ONEFLIGHT_REDIS_REQUIRED` not set.
pub fn server() -> Option<Server> {
    let found = Command::new("redis-server")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        if std::env::var_os(REQUIRED).is_some_and(|v| v == "1") {
            panic!(
                "{REQUIRED}=1 but no redis-server on PATH; install it: apt-get install -y redis-server"
            );
        }
        println!(
            "oneflight-redis fleet test skipped: no redis-server on PATH \
             (install it with `apt-get install -y redis-server`; CI sets {REQUIRED}=1)"
        );
        return None;
    }
    let server = RedisServer::new();
    let port = server.host_and_port().expect("a TCP server").1;
    let server = Server { server, port };
    server.wait_ready();
    Some(server)
}

/// Starts a local cluster (3 masters, 3 replicas) in `dir`, or returns `None` after saying
/// why the test is skipped: no `redis-server`/`redis-cli`, and `ONEFLIGHT_REDIS_REQUIRED`
/// not set.
pub fn cluster(dir: &Path) -> Option<redis_cluster::RedisCluster> {
    if !redis_cluster::cluster_tools_found() {
        if std::env::var_os(REQUIRED).is_some_and(|v| v == "1") {
            panic!(
                "{REQUIRED}=1 but no redis-server and redis-cli on PATH: apt-get install -y redis-server"
            );
        }
        println!(
            "oneflight-redis cluster test skipped: no redis-server and redis-cli on PATH \
             (install them with `apt-get install -y redis-server`; CI sets {REQUIRED}=1)"
        );
        return None;
    }
    Some(redis_cluster::RedisCluster::start(dir).unwrap_or_else(|e| panic!("local cluster: {e}")))
}

impl Server {
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).unwrap()
    }

    pub fn connection(&self) -> redis::Connection {
        self.client()
            .get_connection_with_timeout(Duration::from_secs(5))
            .unwrap()
    }

    pub fn pid(&self) -> u32 {
        self.server.process.id()
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let connection = self
                .client()
                .get_connection_with_timeout(Duration::from_millis(200));
            if connection.is_ok_and(|mut c| redis::cmd("PING").query::<String>(&mut c).is_ok()) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not start in 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server (SIGKILL).
    pub fn kill(&mut self) {
        self.server.stop();
    }

    /// Starts a new server on the same port, empty.
    pub fn restart(&mut self) {
        let addr = self.server.client_addr().clone();
        self.server = RedisServer::new_with_addr_and_modules(addr, &[], false);
        self.wait_ready();
    }

    /// The keys the fleet left in Redis, with their TTL in ms (-1: none).
    pub fn fleet_keys(&self) -> Vec<(String, i64)> {
        let mut c = self.connection();
        let keys: Vec<String> = redis::cmd("KEYS").arg("oneflight:*").query(&mut c).unwrap();
        keys.into_iter()
            .map(|k| {
                let ttl: i64 = redis::cmd("PTTL").arg(&k).query(&mut c).unwrap();
                (k, ttl)
            })
            .collect()
    }

    /// Asserts that no flight is left: no lease, and every other fleet key expires
    /// within `within` (values are kept one lease and one poll interval for late pollers,
    /// void marks of released nonces one lease; fence numbers a day).
    pub fn assert_no_flight_left(&self, within: Duration) {
        for (key, ttl) in self.fleet_keys() {
            assert!(!key.ends_with(":lease"), "a lease was left in Redis: {key}");
            if key.contains(":value:") || key.contains(":void:") {
                assert!(
                    ttl > 0 && ttl as u128 <= within.as_millis(),
                    "{key} lives {ttl} ms"
                );
            } else {
                assert!(
                    key.ends_with(":fence") && ttl > 0,
                    "unexpected key {key} (ttl {ttl})"
                );
            }
        }
    }

    /// How many times `command` ran, from `INFO commandstats` (`evalsha`: the fleet's
    /// scripts).
    pub fn calls(&self, command: &str) -> u64 {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query(&mut self.connection())
            .unwrap();
        let prefix = format!("cmdstat_{command}:");
        let Some(line) = info.lines().find(|l| l.starts_with(&prefix)) else {
            return 0;
        };
        line.split(['=', ',']).nth(1).unwrap().parse().unwrap()
    }

    /// Commands processed so far, from `INFO stats`.
    pub fn commands_processed(&self) -> u64 {
        let info: String = redis::cmd("INFO")
            .arg("stats")
            .query(&mut self.connection())
            .unwrap();
        info.lines()
            .find_map(|l| l.strip_prefix("total_commands_processed:"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }
}

pub fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} {pid}");
}

pub fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

/// Waits, bounded, until `ready` holds.
pub fn wait_until(what: &str, limit: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ready() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A scratch directory for one test: the load log and the replicas' reports.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!(
            "oneflight-redis-{name}-{}-{}",
            std::process::id(),
            now_ms()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    /// The loads recorded so far: one line each, `label pid phase start_ms fence`.
    pub fn loads(&self) -> Vec<Load> {
        match std::fs::read_to_string(self.0.join("loads.log")) {
            Ok(text) => text.lines().map(Load::parse).collect(),
            Err(_) => vec![],
        }
    }

    pub fn go(&self) {
        std::fs::write(self.0.join("go"), b"go").unwrap();
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[derive(Debug, Clone)]
pub struct Load {
    pub key: String,
    pub pid: u32,
    pub phase: u32,
    pub start_ms: u128,
    /// The flight's fencing number, 0 for an unfenced flight.
    pub fence: u64,
}

impl Load {
    fn parse(line: &str) -> Load {
        let f: Vec<&str> = line.split(' ').collect();
        Load {
            key: f[0].to_owned(),
            pid: f[1].parse().unwrap(),
            phase: f[2].parse().unwrap(),
            start_ms: f[3].parse().unwrap(),
            fence: f[4].parse().unwrap(),
        }
    }
}

/// Appends one load to the log (one small `O_APPEND` write, atomic between processes).
pub fn record_load(dir: &Path, key: &str, phase: u32, fence: u64) {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("loads.log"))
        .unwrap();
    let line = format!(
        "{key} {} {phase} {} {fence}\n",
        std::process::id(),
        now_ms()
    );
    file.write_all(line.as_bytes()).unwrap();
}

/// A replica: this test binary re-executed to run only `test_name` with `env`. Killed on
/// drop, so that a failing test leaves no process behind.
pub struct Replica {
    child: Child,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Replica {
    pub fn start(test_name: &str, env: &[(&str, String)]) -> Replica {
        let mut command = Command::new(std::env::current_exe().unwrap());
        command.args([test_name, "--exact", "--nocapture", "--test-threads=1"]);
        command.env("ONEFLIGHT_REPLICA", "1");
        for (name, value) in env {
            command.env(name, value);
        }
        command.stdout(Stdio::piped()).stderr(Stdio::inherit());
        Replica {
            child: command.spawn().unwrap(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the replica to exit (bounded) and returns its report line's fields.
    pub fn finish(&mut self, limit: Duration) -> Report {
        let deadline = Instant::now() + limit;
        loop {
            match self.child.try_wait().unwrap() {
                Some(_) => break,
                None if Instant::now() > deadline => {
                    let _ = self.child.kill();
                    panic!("replica {} did not finish in {limit:?}", self.child.id());
                }
                None => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        let mut stdout = String::new();
        std::io::Read::read_to_string(self.child.stdout.as_mut().unwrap(), &mut stdout).unwrap();
        // libtest prints `test replica ... ` on the line that the report then starts.
        let line = stdout
            .lines()
            .find_map(|l| l.find("report pid=").map(|at| &l[at..]));
        let line = line.unwrap_or_else(|| panic!("no report in:\n{stdout}"));
        Report::parse(line)
    }
}

/// What a replica says at its end: `report name=value ...`.
#[derive(Debug)]
pub struct Report(pub Vec<(String, String)>);

impl Report {
    fn parse(line: &str) -> Report {
        Report(
            line.split(' ')
                .skip(1)
                .filter_map(|f| f.split_once('='))
                .map(|(a, b)| (a.to_owned(), b.to_owned()))
                .collect(),
        )
    }

    pub fn get(&self, name: &str) -> &str {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("no {name} in {self:?}"))
    }

    pub fn num(&self, name: &str) -> u64 {
        self.get(name).parse().unwrap()
    }
}

/// Whether this process runs as a replica (re-executed by a test).
pub fn is_replica() -> bool {
    std::env::var_os("ONEFLIGHT_REPLICA").is_some()
}

pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| v.parse().unwrap())
        .unwrap_or(default)
}

pub fn env_str(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("replica needs {name}"))
}
