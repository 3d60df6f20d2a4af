//! The floors: the same Redis work as a fleet's, done bare, with nothing of this crate.

use futures_util::StreamExt;
use oneflight_redis::{bench_support, redis};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

use crate::{PAYLOAD, next_key};

/// The floor of an uncontended flight: its two round trips with plain commands.
pub(crate) async fn bare_flight(
    connection: &mut redis::aio::MultiplexedConnection,
    script: &redis::Script,
) {
    let key = next_key();
    let (lease, value) = (
        format!("bare:{{{key}}}:lease"),
        format!("bare:{{{key}}}:value"),
    );
    let _: Option<String> = redis::cmd("SET")
        .arg(&lease)
        .arg("token")
        .arg("NX")
        .arg("PX")
        .arg(1000)
        .query_async(connection)
        .await
        .unwrap();
    let _: i64 = script
        .key(&lease)
        .key(&value)
        .arg("token")
        .arg(&PAYLOAD[..])
        .arg(1000)
        .arg("bare:done")
        .invoke_async(connection)
        .await
        .unwrap();
}

/// The fleet's two scripts, with the arguments the fleet gives them.
pub(crate) struct Protocol {
    acquire: redis::Script,
    publish: redis::Script,
}

impl Protocol {
    pub(crate) fn new() -> Self {
        Protocol {
            acquire: redis::Script::new(bench_support::ACQUIRE),
            publish: redis::Script::new(bench_support::PUBLISH),
        }
    }

    /// The protocol floor of an uncontended flight: acquire, then publish, bare.
    pub(crate) async fn flight(&self, connection: &mut redis::aio::MultiplexedConnection) {
        let key = next_key();
        self.flight_named(connection, |part| format!("proto:{{{key}}}:{part}"))
            .await
    }

    /// The same, on keys in the slot of the hash tag `tag` (a cluster node that owns it
    /// takes them all).
    pub(crate) async fn flight_in_slot(
        &self,
        connection: &mut redis::aio::MultiplexedConnection,
        tag: &str,
    ) {
        let key = next_key();
        self.flight_named(connection, |part| format!("proto:{{{tag}}}:{key}:{part}"))
            .await
    }

    async fn flight_named(
        &self,
        connection: &mut redis::aio::MultiplexedConnection,
        names: impl Fn(&str) -> String,
    ) {
        let nonce = "0123456789abcdef";
        let (kind, token): (String, String) = self
            .acquire
            .key(names("lease"))
            .key(names("fence"))
            .key(names("value:"))
            .key(names(&format!("void:{nonce}")))
            .arg(1000)
            .arg(nonce)
            .arg("")
            .arg(86_400_000)
            .arg("0") // unfenced, as `work`
            .arg(64 * 1024)
            .invoke_async(connection)
            .await
            .unwrap();
        assert_eq!(kind, "hold");
        self.publish(connection, &names("lease"), &token, &names("done"))
            .await;
    }

    /// The publish script of the flight `token` on `lease`, announcing a small value.
    pub(crate) async fn publish(
        &self,
        connection: &mut redis::aio::MultiplexedConnection,
        lease: &str,
        token: &str,
        channel: &str,
    ) {
        let published: i64 = self
            .publish
            .key(lease)
            .key(format!("{lease}:value:{token}"))
            .arg(token)
            .arg(&PAYLOAD[..])
            .arg(1000)
            .arg(channel)
            .arg("1")
            .arg("11:{1:p3:key}")
            .arg("PUBLISH")
            .invoke_async(connection)
            .await
            .unwrap();
        assert_eq!(published, 1);
    }
}

/// A bare `PUBLISH` of a token on `channel`.
pub(crate) async fn bare_publish(publisher: &mut redis::aio::MultiplexedConnection, channel: &str) {
    let _: i64 = redis::cmd("PUBLISH")
        .arg(channel)
        .arg("token")
        .query_async(publisher)
        .await
        .unwrap();
}

/// The floor of a waiting process: a bare pub/sub round trip in one task.
pub(crate) async fn bare_wait(
    publisher: &mut redis::aio::MultiplexedConnection,
    messages: &mut (impl futures_util::Stream<Item = redis::Msg> + Unpin),
) -> Duration {
    let sent = Instant::now();
    bare_publish(publisher, "bare:wait").await;
    messages.next().await.unwrap();
    sent.elapsed()
}

/// The worker floor of a waiting process: a bare `PUBLISH`, heard by a task on a runtime
/// worker, as every waiting caller of a Tokio program is; `messages` is lent to it.
pub(crate) async fn worker_wait(
    publisher: &mut redis::aio::MultiplexedConnection,
    messages: &mut Option<redis::aio::PubSubStream>,
) -> Duration {
    let mut stream = messages.take().unwrap();
    let waiting = tokio::spawn(async move {
        stream.next().await.unwrap();
        (stream, Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(1)).await; // the waiting task waits
    let sent = Instant::now();
    bare_publish(publisher, "worker:wait").await;
    let (stream, heard) = waiting.await.unwrap();
    *messages = Some(stream);
    heard - sent
}

/// The protocol floor of a waiting process: the fleet's publish script, heard in one
/// task.
pub(crate) async fn scripted_wait(
    publisher: &mut redis::aio::MultiplexedConnection,
    protocol: &Protocol,
    messages: &mut (impl futures_util::Stream<Item = redis::Msg> + Unpin),
) -> Duration {
    let lease = take_lease(publisher).await;
    let sent = Instant::now();
    protocol
        .publish(publisher, &lease, "token", "scripted:wait")
        .await;
    messages.next().await.unwrap();
    sent.elapsed()
}

/// The relay floor of a waiting process: the fleet's publish script, heard by the
/// subscriber task of [`relay`], which wakes a task waiting on it.
pub(crate) async fn relayed_wait(
    publisher: &mut redis::aio::MultiplexedConnection,
    protocol: &Protocol,
    heard: &Arc<Notify>,
) -> Duration {
    let lease = take_lease(publisher).await;
    let waiting = tokio::spawn({
        let heard = heard.clone();
        async move {
            heard.notified().await;
            Instant::now()
        }
    });
    tokio::time::sleep(Duration::from_millis(1)).await; // the waiting task waits
    let sent = Instant::now();
    protocol
        .publish(publisher, &lease, "token", "relay:done")
        .await;
    waiting.await.unwrap() - sent
}

/// A new lease key, held by the token `token`, for the publish script to find.
pub(crate) async fn take_lease(connection: &mut redis::aio::MultiplexedConnection) -> String {
    let lease = format!("wait:{{{}}}:lease", next_key());
    let _: () = redis::cmd("SET")
        .arg(&lease)
        .arg("token")
        .query_async(connection)
        .await
        .unwrap();
    lease
}

/// The subscriber task of the relay floor: wakes the waiting task for each message.
pub(crate) async fn relay(client: &redis::Client) -> Arc<Notify> {
    let mut subscriber = client.get_async_pubsub().await.unwrap();
    subscriber.subscribe("relay:done").await.unwrap();
    let mut messages = subscriber.into_on_message();
    let heard = Arc::new(Notify::new());
    tokio::spawn({
        let heard = heard.clone();
        async move {
            while messages.next().await.is_some() {
                heard.notify_one();
            }
        }
    });
    heard
}
