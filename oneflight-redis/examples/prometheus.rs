//! The fleet's metrics in Prometheus text format: two "processes" (fleets) share flights
//! on a Redis of this program's own, one of them with a short `max_wait`, then the
//! recorder's scrape page is printed (no listener needed).
//!
//! ```sh
//! cargo run -p oneflight-redis --example prometheus --features metrics
//! ```

#[path = "shared/redis_server.rs"]
mod redis_server;

use metrics_exporter_prometheus::PrometheusBuilder;
use oneflight_redis::{Fleet, redis};
use std::time::Duration;

fn main() {
    // Install the recorder first: fleets register their metrics at first use.
    let recorder = PrometheusBuilder::new().build_recorder();
    let scrape = recorder.handle();
    metrics::set_global_recorder(recorder).expect("no other recorder");

    let dir = std::env::temp_dir().join(format!("oneflight-prometheus-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let server = redis_server::RedisServer::start(&dir).unwrap_or_else(|e| panic!("{e}"));
    let client = redis::Client::open(server.url()).unwrap();
    let fleet = |name: &str, max_wait_ms| -> Fleet<String> {
        Fleet::builder(client.clone(), "profiles")
            .name(name)
            .max_wait(Duration::from_millis(max_wait_ms))
            .build()
    };
    let (api, worker) = (fleet("api", 30_000), fleet("worker", 150));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        for (key, load_ms) in [("user:1", 50), ("user:2", 50), ("user:3", 400)] {
            let load = |who: &'static str| async move {
                tokio::time::sleep(Duration::from_millis(load_ms)).await;
                format!("{key} loaded by {who}")
            };
            // 100 callers on each side; the api process starts first and holds the key.
            let api_calls =
                futures_util::future::join_all((0..100).map(|_| api.work(key, load("api"))));
            let worker_calls = async {
                tokio::time::sleep(Duration::from_millis(10)).await;
                futures_util::future::join_all((0..100).map(|_| worker.work(key, load("worker"))))
                    .await
            };
            let (a, w) = tokio::join!(api_calls, worker_calls);
            println!("# {key}: api got {:?}, worker got {:?}", a[0], w[0]);
        }
    });
    drop(runtime);
    print!("{}", scrape.render());
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
