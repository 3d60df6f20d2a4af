//! The fleet on a Redis Cluster that each test starts itself on loopback (3 masters, 3
//! replicas): what the backend could change, run against a real cluster.

mod common;

use common::*;
use oneflight_redis::Fleet;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_smoke_two_fleets_share_one_load_per_key() {
    let scratch = Scratch::new("cluster-smoke");
    let Some(cluster) = cluster(&scratch.0) else {
        return;
    };
    let build = || {
        Fleet::<String>::builder(cluster.client(), "smoke")
            .lease(Duration::from_secs(20))
            .poll_interval(Duration::from_secs(10))
            .build()
    };
    let (a, b) = (build(), build());
    for key in ["k0", "k1", "k2", "k3"] {
        let started = std::time::Instant::now();
        let (x, y) = tokio::join!(
            a.work(key, async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                format!("{key} from a")
            }),
            async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                b.work(key, async { "from b".to_owned() }).await
            }
        );
        assert_eq!(
            (x.as_str(), y.as_str()),
            (
                format!("{key} from a").as_str(),
                format!("{key} from a").as_str()
            )
        );
        println!("{key}: {:?}", started.elapsed());
    }
    println!("{:?} {:?}", a.stats(), b.stats());
}
