//! Pub/sub as a wake-up hint, heard only by the processes that wait: the end of a flight
//! is announced on the key's own channel (see [`crate::names`]), and a process subscribes
//! to a key's channel while it waits on one of that key's flights in another process.
//! Redis's work per flight is then one publish plus one delivery per waiting process,
//! whatever the size of the fleet; a process that never waits subscribes to nothing.
//!
//! A hint only: Redis drops messages while a subscriber reconnects (at-most-once), so a
//! waiter never trusts it alone and polls at the poll interval as well.
//!
//! - Waiters register by the flight's tag before their first acquire. A registration
//!   made while the key's channel is already subscribed hears every end announced after
//!   the acquire. Otherwise the waiter subscribes once Redis says it must wait, and then
//!   asks Redis once more at once: an end announced before the subscription took effect
//!   was not heard.
//! - A channel stays subscribed while the key has waiters here, and for one more
//!   [`TICK`] after the last one left, so that a hot key's next flight finds it
//!   subscribed.
//! - One connection per fleet carries the subscriptions: a pub/sub connection on one
//!   node (`SUBSCRIBE`); on a cluster, redis-rs's cluster connection over RESP3
//!   (`SSUBSCRIBE`, sharded: each channel lives on the shard of its key's slot, and
//!   redis-rs resubscribes after a failover). It starts when the process first waits.
//! - The connection is watched: it is pinged every [`TICK`], and one that does not answer
//!   within the command timeout is replaced (a half-open connection would otherwise stop
//!   hints for good); after each (re)connection every waiting key is subscribed again and
//!   its waiters woken once, to check what they may have missed. The task marks itself
//!   gone when it is dropped (its runtime shut down), and the next wait starts a new one.
//! - An announcement names the token of the flight that ended, and brings the value's
//!   payload when it is small; the waiter uses the payload only if the token is the one
//!   it waits on.

use event_listener::{Event, EventListener};
use futures_util::StreamExt;
use futures_util::future::{Either, select, try_join_all};
use futures_util::stream::BoxStream;
use std::collections::{HashMap, HashSet};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use crate::backend::{Backend, Kind};
use crate::health::Health;
use crate::names::{channel_of, parse_announcement};
use crate::observe;
use crate::stats::Counters;
use crate::{FleetError, runtime};

/// How often the subscriber pings its connection, unsubscribes the keys no longer
/// waited on, and checks that the fleet is still there.
const TICK: Duration = Duration::from_secs(1);

/// The waiters of this fleet, by the tag of the flight they wait on, and the connection
/// that subscribes to their keys' channels.
#[derive(Debug)]
pub(crate) struct Notifier {
    backend: Backend,
    address: String,
    command_timeout: Duration,
    retry_after: Duration,
    counters: Arc<Counters>,
    health: Arc<Health>,
    /// Waiting flights: tag → (hint, number of registrations).
    waiting: Mutex<HashMap<String, (Arc<Hint>, usize)>>,
    live: Mutex<Live>,
    /// Whether a subscriber task is alive: set when one is spawned, cleared when it is
    /// dropped.
    running: Arc<AtomicBool>,
    /// Whether the need for RESP3 on a cluster was said (once).
    said_resp3: AtomicBool,
}

/// The subscriber's connection, when one is up, and the tags whose channels it is
/// subscribed to. Invariant: `subscribed` is empty while `channel` is `None`.
#[derive(Debug, Default)]
struct Live {
    channel: Option<Subscriptions>,
    subscribed: HashSet<String>,
    /// Tags whose `UNSUBSCRIBE` the subscriber is sending: a `SUBSCRIBE` sent meanwhile
    /// could be undone by it, so none is (those waiters poll).
    unsubscribing: HashSet<String>,
    /// Counts connections, so that a subscription confirmed on a connection since
    /// replaced is not recorded as live.
    generation: u64,
}

/// The half of a connection that (un)subscribes; cheap to clone.
#[derive(Clone)]
enum Subscriptions {
    Node(redis::aio::PubSubSink),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl std::fmt::Debug for Subscriptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Subscriptions")
    }
}

impl Subscriptions {
    async fn subscribe(&mut self, channels: Vec<String>) -> redis::RedisResult<()> {
        match self {
            Subscriptions::Node(sink) => sink.subscribe(channels).await,
            Subscriptions::Cluster(connection) => one_per_channel(connection, true, channels).await,
        }
    }

    async fn unsubscribe(&mut self, channels: Vec<String>) -> redis::RedisResult<()> {
        match self {
            Subscriptions::Node(sink) => sink.unsubscribe(channels).await,
            Subscriptions::Cluster(connection) => {
                one_per_channel(connection, false, channels).await
            }
        }
    }

    async fn ping(&mut self) -> redis::RedisResult<()> {
        match self {
            Subscriptions::Node(sink) => sink.ping::<redis::Value>().await.map(drop),
            Subscriptions::Cluster(connection) => redis::cmd("PING")
                .query_async::<redis::Value>(connection)
                .await
                .map(drop),
        }
    }
}

/// Subscribes to (or unsubscribes from) each of `channels` with its own command, all at
/// once: the channels of different keys live on different slots (one command for several
/// would be refused with `CROSSSLOT`). Through redis-rs's own methods, which refuse RESP2
/// (a sharded subscription would turn the shared connection into a subscriber) and track
/// the subscriptions to renew them after a reconnection.
async fn one_per_channel(
    connection: &redis::cluster_async::ClusterConnection,
    subscribe: bool,
    channels: Vec<String>,
) -> redis::RedisResult<()> {
    let each = channels.into_iter().map(|channel| {
        let mut connection = connection.clone();
        async move {
            if subscribe {
                connection.ssubscribe(channel).await
            } else {
                connection.sunsubscribe(channel).await
            }
        }
    });
    try_join_all(each).await.map(drop)
}

/// What the announcements of a flight's ends bring its waiters.
#[derive(Debug, Default)]
struct Hint {
    /// Notified when an end is announced.
    event: Event,
    /// The last announced end that carried a payload: its token and payload.
    payload: Mutex<Option<(String, Vec<u8>)>>,
}

/// One waiter's registration; unregisters on drop.
#[derive(Debug)]
pub(crate) struct Registration {
    notifier: Arc<Notifier>,
    tag: String,
    hint: Arc<Hint>,
    /// Whether every end announced after this waiter's next acquire will be heard: the
    /// channel was subscribed when it registered, or it has subscribed since.
    hears: bool,
}

/// Clears `running` when the subscriber task ends or is dropped with its runtime.
struct Running(Arc<AtomicBool>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl Notifier {
    pub(crate) fn new(
        backend: Backend,
        command_timeout: Duration,
        retry_after: Duration,
        counters: Arc<Counters>,
        health: Arc<Health>,
    ) -> Self {
        Notifier {
            address: backend.address(),
            backend,
            command_timeout,
            retry_after,
            counters,
            health,
            waiting: Mutex::new(HashMap::new()),
            live: Mutex::new(Live::default()),
            running: Arc::new(AtomicBool::new(false)),
            said_resp3: AtomicBool::new(false),
        }
    }

    /// Registers a waiter of the flights of `tag`.
    pub(crate) fn register(self: &Arc<Self>, tag: &str) -> Registration {
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        let (hint, count) = waiting.entry(tag.to_owned()).or_default();
        *count += 1;
        let hears = self.lock_live().subscribed.contains(tag);
        Registration {
            notifier: self.clone(),
            tag: tag.to_owned(),
            hint: hint.clone(),
            hears,
        }
    }

    fn lock_live(&self) -> std::sync::MutexGuard<'_, Live> {
        self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts a subscriber if none runs.
    fn start(self: &Arc<Self>) {
        if !self.running.load(Ordering::Acquire) && !self.running.swap(true, Ordering::AcqRel) {
            let running = Running(self.running.clone());
            // Without a runtime to run it, the task is dropped here, clearing `running`:
            // waiters poll.
            let _ = runtime::spawn(subscriber(Arc::downgrade(self), running));
        }
    }

    /// Subscribes to the channel of `tag` on the live connection; whether it is
    /// subscribed now. Without a connection it starts the subscriber, which subscribes
    /// every waiting key once it is connected.
    async fn subscribe(self: &Arc<Self>, tag: &str) -> bool {
        self.start();
        let (mut channel, generation) = {
            let live = self.lock_live();
            if live.subscribed.contains(tag) {
                return true;
            }
            if live.unsubscribing.contains(tag) {
                return false;
            }
            match &live.channel {
                Some(channel) => (channel.clone(), live.generation),
                None => return false,
            }
        };
        let subscribe = channel.subscribe(vec![channel_of(tag)]);
        match runtime::timeout(self.command_timeout, subscribe).await {
            Some(Ok(())) => {
                let mut live = self.lock_live();
                if live.generation == generation && live.channel.is_some() {
                    live.subscribed.insert(tag.to_owned());
                }
                true
            }
            Some(Err(error)) => {
                self.failed(error);
                false
            }
            None => {
                self.failed(timed_out("subscribe"));
                false
            }
        }
    }

    /// Handles an announcement.
    pub(crate) fn wake(&self, message: &[u8]) {
        let Some((token, tag, payload)) = parse_announcement(message) else {
            return;
        };
        let waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((hint, _)) = waiting.get(tag) {
            if let Some(payload) = payload {
                *hint.payload.lock().unwrap_or_else(PoisonError::into_inner) =
                    Some((token.to_owned(), payload.to_vec()));
            }
            hint.event.notify(usize::MAX);
        }
    }

    fn waiting_tags(&self) -> Vec<String> {
        let waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        waiting.keys().cloned().collect()
    }

    fn wake_all(&self) {
        for (hint, _) in self
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
        {
            hint.event.notify(usize::MAX);
        }
    }

    fn failed(&self, error: redis::RedisError) {
        if matches!(self.backend.kind, Kind::Cluster(_))
            && error.to_string().contains("RESP3")
            && !self.said_resp3.swap(true, Ordering::Relaxed)
        {
            eprintln!(
                "oneflight-redis: hints on a Redis Cluster need a RESP3 client \
                 (ClusterClient::builder(..).use_protocol(redis::ProtocolVersion::RESP3)); \
                 until then, processes that wait poll every poll interval"
            );
        }
        let error = FleetError::from_redis(&self.address, "subscribe", error);
        self.health.noted(&error, &self.counters);
    }

    /// Connects, and subscribes to the channels of every waiting key.
    async fn connect(&self) -> redis::RedisResult<(Subscriptions, BoxStream<'static, Vec<u8>>)> {
        let (mut channel, messages) = match &self.backend.kind {
            Kind::Node(client) => {
                let (sink, stream) = client.get_async_pubsub().await?.split();
                let messages = stream.map(|message| message.get_payload_bytes().to_vec());
                (Subscriptions::Node(sink), messages.boxed())
            }
            Kind::Cluster(client) => {
                // redis-rs hands pushes to a callback on its connection's task: forward
                // the messages to this task's stream.
                let (sender, receiver) = async_channel::unbounded();
                let forward = move |push: redis::PushInfo| {
                    if push.kind == redis::PushKind::SMessage
                        && let Some(redis::Value::BulkString(payload)) =
                            push.data.into_iter().nth(1)
                    {
                        let _ = sender.try_send(payload);
                    }
                    Ok::<(), std::convert::Infallible>(())
                };
                let config = redis::cluster::ClusterConfig::new()
                    .set_connection_timeout(self.command_timeout)
                    .set_response_timeout(self.command_timeout)
                    .set_push_sender(forward);
                let connection = client.get_async_connection_with_config(config).await?;
                (Subscriptions::Cluster(connection), receiver.boxed())
            }
        };
        let tags = self.waiting_tags();
        if !tags.is_empty() {
            channel
                .subscribe(tags.iter().map(|tag| channel_of(tag)).collect())
                .await?;
        }
        let mut live = self.lock_live();
        live.generation += 1;
        live.channel = Some(channel.clone());
        live.subscribed = tags.into_iter().collect();
        Ok((channel, messages))
    }

    /// The connection is gone: nothing is subscribed any more.
    fn disconnected(&self) {
        let mut live = self.lock_live();
        live.channel = None;
        live.subscribed.clear();
        live.unsubscribing.clear();
    }

    /// The subscribed channels of keys without waiters now and at the last tick
    /// (`idle`); `idle` becomes the subscribed keys without waiters now.
    fn no_longer_waited(&self, idle: &mut HashSet<String>) -> Vec<String> {
        let waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        let mut live = self.lock_live();
        let now_idle: HashSet<String> = live
            .subscribed
            .iter()
            .filter(|tag| !waiting.contains_key(*tag))
            .cloned()
            .collect();
        let leaving: Vec<String> = now_idle.intersection(idle).cloned().collect();
        for tag in &leaving {
            live.subscribed.remove(tag);
            live.unsubscribing.insert(tag.clone());
        }
        *idle = &now_idle - &leaving.iter().cloned().collect();
        leaving
    }

    /// The `UNSUBSCRIBE` of `no_longer_waited` is done.
    fn unsubscribed(&self) {
        self.lock_live().unsubscribing.clear();
    }
}

impl Registration {
    /// A listener for the next announcement of an end of this key's flights. Create it
    /// before checking Redis, so that an announcement after the check is not missed.
    pub(crate) fn listen(&self) -> EventListener {
        self.hint.event.listen()
    }

    /// Called when Redis said to wait: subscribes to the key's channel if this waiter
    /// does not hear it yet. `true` when the waiter must ask Redis again at once (it has
    /// just subscribed: an end announced before then was not heard).
    pub(crate) async fn hear(&mut self) -> bool {
        if self.hears {
            return false;
        }
        // Tried once per flight: a waiter that cannot subscribe polls.
        self.hears = true;
        self.notifier.subscribe(&self.tag).await
    }

    /// The payload that the announcement of the end of the flight `token` carried, if
    /// it was the last one heard with a payload.
    pub(crate) fn take_payload(&self, token: &str) -> Option<Vec<u8>> {
        let mut payload = self
            .hint
            .payload
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match payload.take() {
            Some((heard, payload)) if heard == token => Some(payload),
            other => {
                *payload = other;
                None
            }
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut waiting = self
            .notifier
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some((_, count)) = waiting.get_mut(&self.tag) {
            *count -= 1;
            if *count == 0 {
                waiting.remove(&self.tag);
            }
        }
    }
}

/// The subscriber task: connects, wakes waiters, pings, unsubscribes keys no longer
/// waited on, reconnects after a lost or silent connection. Ends once the fleet is gone
/// (checked at every tick).
async fn subscriber(notifier: Weak<Notifier>, _running: Running) {
    // Whether a connection was lost or went silent: the next one replaces it.
    let mut replacing = false;
    loop {
        let Some(strong) = notifier.upgrade() else {
            return;
        };
        let (command_timeout, retry_after) = (strong.command_timeout, strong.retry_after);
        let connected = match runtime::timeout(command_timeout, strong.connect()).await {
            Some(Ok(connected)) => Some(connected),
            Some(Err(error)) => {
                strong.failed(error);
                None
            }
            None => {
                strong.failed(timed_out("subscribe"));
                None
            }
        };
        if let Some((mut channel, mut messages)) = connected {
            if replacing {
                observe::event!(strong.health.name, "replaced the pub/sub connection");
            }
            strong.wake_all();
            drop(strong);
            replacing = true;
            let mut idle = HashSet::new();
            loop {
                let heard = {
                    let next = pin!(messages.next());
                    let tick = pin!(runtime::sleep(TICK));
                    match select(next, tick).await {
                        Either::Left((message, _)) => Some(message),
                        Either::Right(((), _)) => None,
                    }
                };
                let Some(notifier) = notifier.upgrade() else {
                    return;
                };
                match heard {
                    Some(Some(message)) => notifier.wake(&message),
                    Some(None) => break, // connection lost: reconnect
                    None => {
                        let leaving = notifier.no_longer_waited(&mut idle);
                        // Quiet for a while: is the connection still there?
                        let check = async {
                            if !leaving.is_empty() {
                                channel.unsubscribe(leaving).await?;
                                notifier.unsubscribed();
                            }
                            channel.ping().await
                        };
                        match runtime::timeout(command_timeout, check).await {
                            Some(Ok(())) => {}
                            Some(Err(error)) => {
                                notifier.failed(error);
                                break;
                            }
                            None => {
                                notifier.failed(timed_out("ping"));
                                break;
                            }
                        }
                    }
                }
            }
            match notifier.upgrade() {
                Some(notifier) => notifier.disconnected(),
                None => return,
            }
        } else {
            drop(strong);
        }
        runtime::sleep(retry_after).await;
    }
}

/// A timeout of the subscriber's `what`, as the `redis` crate would report it.
fn timed_out(what: &str) -> redis::RedisError {
    std::io::Error::new(std::io::ErrorKind::TimedOut, format!("{what} timed out")).into()
}
