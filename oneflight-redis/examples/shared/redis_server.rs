//! A `redis-server` of a program's own, on a free loopback port: for the fleet stampede,
//! the fleet soak and the fleet bench, included with `#[path]`.

use oneflight_redis::redis;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` on a free loopback port, killed on drop.
pub struct RedisServer {
    child: Child,
    port: u16,
}

impl RedisServer {
    pub fn start(dir: &Path) -> Result<RedisServer, String> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        Self::start_on(dir, port)
    }

    /// A server on `port`, as after a restart.
    pub fn start_on(dir: &Path, port: u16) -> Result<RedisServer, String> {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .current_dir(dir)
            .stdout(Stdio::null())
            .spawn()
            .map_err(|_| {
                "no redis-server found: install it (`apt-get install -y redis-server` on Debian and \
                 Ubuntu, `brew install redis` on macOS), or pass --redis redis://HOST:PORT/"
                    .to_owned()
            })?;
        let server = RedisServer { child, port };
        let client = redis::Client::open(server.url()).map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while client
            .get_connection_with_timeout(Duration::from_millis(100))
            .is_err()
        {
            if Instant::now() > deadline {
                return Err("redis-server did not start within 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(server)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    #[allow(dead_code)] // not every program that includes this file needs these
    pub fn port(&self) -> u16 {
        self.port
    }

    #[allow(dead_code)]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
