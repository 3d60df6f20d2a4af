//! Duplicate suppression at work: a burst of 1,000 concurrent requests for 5 keys reaches
//! a slow backend 5 times, not 1,000.
//!
//! Run with `cargo run --example burst`.

use oneflight::Group;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const CALLERS: usize = 1_000;
const KEYS: usize = 5;

fn main() {
    smol::block_on(async {
        let group: Group<String, String> = Group::new();
        let executions = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let callers: Vec<_> = (0..CALLERS)
            .map(|i| {
                let (group, executions) = (group.clone(), executions.clone());
                smol::spawn(async move {
                    let key = format!("product:{}", i % KEYS);
                    let query = async {
                        executions.fetch_add(1, Ordering::SeqCst);
                        smol::Timer::after(Duration::from_millis(100)).await; // the slow backend
                        format!("details of {key}")
                    };
                    group.work(&key, query).await
                })
            })
            .collect();
        let mut answered = 0;
        for caller in callers {
            let value = caller.await;
            assert!(value.starts_with("details of product:"));
            answered += 1;
        }
        let executions = executions.load(Ordering::SeqCst);
        println!("callers:    {CALLERS} over {KEYS} keys");
        println!("answered:   {answered}");
        println!("executions: {executions} (without oneflight: {CALLERS})");
        println!("took:       {:?}", started.elapsed());
        println!("in flight:  {}", group.in_flight());
        assert_eq!(executions, KEYS, "one execution per key");
        assert_eq!(group.in_flight(), 0);
    });
}
