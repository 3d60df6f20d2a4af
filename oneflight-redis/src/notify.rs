//! Pub/sub as a wake-up hint: one subscriber connection per fleet listens on the
//! namespace's channel, and wakes this process's waiter of the flight whose end it hears.
//!
//! A hint only: Redis drops messages while a subscriber reconnects (at-most-once), so a
//! waiter never trusts it alone and polls at the poll interval as well. After each
//! (re)subscription every waiter is woken once, to check what it may have missed.
//!
//! - Waiters register by the flight's tag (its key), before their first acquire, so that
//!   an end announced between the acquire's reply and the wait is heard. The subscriber
//!   starts when the process first waits.
//! - An announcement names the token of the flight that ended, and brings the value's
//!   payload when it is small; the waiter uses the payload only if the token is the one
//!   it waits on.
//! - The subscriber is watched: it pings Redis every [`PING_EVERY`], and a connection
//!   that does not answer within the command timeout is replaced (a half-open connection
//!   would otherwise stop hints for good). The task marks itself gone when it is dropped
//!   (its runtime shut down), and the next registration starts a new one.

use event_listener::{Event, EventListener};
use futures_util::StreamExt;
use futures_util::future::{Either, select};
use std::collections::HashMap;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use crate::health::Health;
use crate::names::parse_announcement;
use crate::observe;
use crate::stats::Counters;
use crate::{FleetError, runtime};

/// How often the subscriber checks its connection with a `PING`, and whether the fleet
/// is still there.
const PING_EVERY: Duration = Duration::from_secs(1);

/// The waiters of this fleet, by the tag of the flight they wait on.
#[derive(Debug)]
pub(crate) struct Notifier {
    client: redis::Client,
    address: String,
    channel: String,
    command_timeout: Duration,
    retry_after: Duration,
    counters: Arc<Counters>,
    health: Arc<Health>,
    /// Waiting flights: tag → (hint, number of registrations).
    waiting: Mutex<HashMap<String, (Arc<Hint>, usize)>>,
    /// Whether a subscriber task is alive: set when one is spawned, cleared when it is
    /// dropped.
    running: Arc<AtomicBool>,
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
        client: redis::Client,
        channel: String,
        command_timeout: Duration,
        retry_after: Duration,
        counters: Arc<Counters>,
        health: Arc<Health>,
    ) -> Self {
        Notifier {
            address: client.get_connection_info().addr().to_string(),
            client,
            channel,
            command_timeout,
            retry_after,
            counters,
            health,
            waiting: Mutex::new(HashMap::new()),
            running: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Registers a waiter of the flights of `tag`. Hints reach it once a subscriber runs:
    /// see [`Notifier::subscribe`].
    pub(crate) fn register(self: &Arc<Self>, tag: &str) -> Registration {
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        let (hint, count) = waiting.entry(tag.to_owned()).or_default();
        *count += 1;
        Registration {
            notifier: self.clone(),
            tag: tag.to_owned(),
            hint: hint.clone(),
        }
    }

    /// Starts a subscriber if none runs. Called when this process first waits on another
    /// one, not when it holds: a process that only ever holds would otherwise receive,
    /// and parse, the announcement of every flight of the namespace, its own included.
    pub(crate) fn subscribe(self: &Arc<Self>) {
        if !self.running.load(Ordering::Acquire) && !self.running.swap(true, Ordering::AcqRel) {
            let running = Running(self.running.clone());
            // Without a runtime to run it, the task is dropped here, clearing `running`:
            // waiters poll.
            let _ = runtime::spawn(subscriber(Arc::downgrade(self), running));
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
        let error = FleetError::from_redis(&self.address, "subscribe", error);
        self.health.noted(&error, &self.counters);
    }
}

impl Registration {
    /// A listener for the next announcement of an end of this key's flights. Create it
    /// before checking Redis, so that an announcement after the check is not missed.
    pub(crate) fn listen(&self) -> EventListener {
        self.hint.event.listen()
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

/// The subscriber task: subscribes, wakes waiters, pings, resubscribes after a lost or
/// silent connection. Ends once the fleet is gone (checked at every ping).
async fn subscriber(notifier: Weak<Notifier>, _running: Running) {
    // Whether a connection was lost or went silent: the next one replaces it.
    let mut replacing = false;
    loop {
        let Some((client, channel, command_timeout, retry_after)) = notifier.upgrade().map(|n| {
            (
                n.client.clone(),
                n.channel.clone(),
                n.command_timeout,
                n.retry_after,
            )
        }) else {
            return;
        };
        let connect = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(pubsub.split())
        };
        let subscribed = match runtime::timeout(command_timeout, connect).await {
            Some(Ok(halves)) => Ok(halves),
            Some(Err(error)) => Err(error),
            None => Err(timed_out("subscribe")),
        };
        let subscribed = match (subscribed, notifier.upgrade()) {
            (Ok(halves), _) => Some(halves),
            (Err(error), Some(notifier)) => {
                notifier.failed(error);
                None
            }
            (Err(_), None) => return,
        };
        if let Some((mut sink, mut messages)) = subscribed {
            match notifier.upgrade() {
                Some(notifier) => {
                    if replacing {
                        observe::event!(notifier.health.name, "replaced the pub/sub connection");
                    }
                    notifier.wake_all();
                }
                None => return,
            }
            replacing = true;
            loop {
                let heard = {
                    let next = pin!(messages.next());
                    let tick = pin!(runtime::sleep(PING_EVERY));
                    match select(next, tick).await {
                        Either::Left((message, _)) => Some(message),
                        Either::Right(((), _)) => None,
                    }
                };
                let Some(notifier) = notifier.upgrade() else {
                    return;
                };
                match heard {
                    Some(Some(message)) => notifier.wake(message.get_payload_bytes()),
                    Some(None) => break, // connection lost: resubscribe
                    None => {
                        // Quiet for a while: is the connection still there?
                        let ping = sink.ping::<redis::Value>();
                        match runtime::timeout(command_timeout, ping).await {
                            Some(Ok(_)) => {}
                            Some(Err(error)) => {
                                notifier.failed(error);
                                break;
                            }
                            None => {
                                let timeout = std::io::Error::new(
                                    std::io::ErrorKind::TimedOut,
                                    "ping timed out",
                                );
                                notifier.failed(timeout.into());
                                break;
                            }
                        }
                    }
                }
            }
        }
        runtime::sleep(retry_after).await;
    }
}

/// A timeout of the subscriber's `what`, as the `redis` crate would report it.
fn timed_out(what: &str) -> redis::RedisError {
    std::io::Error::new(std::io::ErrorKind::TimedOut, format!("{what} timed out")).into()
}
