//! Pub/sub as a wake-up hint: one subscriber connection per fleet listens on the
//! namespace's channel, and wakes the local waiter of the flight whose token it hears.
//!
//! A hint only: Redis drops messages while a subscriber reconnects (at-most-once), so a
//! waiter never trusts it alone and polls at the poll interval as well. After each
//! (re)subscription every waiter is woken once, to check what it may have missed.
//!
//! An announcement is the flight's token, followed by a space and the value's payload
//! when the value is small: the waiter then has the value without asking Redis again.

use event_listener::{Event, EventListener};
use futures_util::StreamExt;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use crate::runtime;

/// The waiters of this fleet, by the token of the flight they wait on.
#[derive(Debug)]
pub(crate) struct Notifier {
    client: redis::Client,
    channel: String,
    command_timeout: Duration,
    retry_after: Duration,
    /// Waiting flights: token → (event, number of registrations).
    waiting: Mutex<HashMap<String, (Arc<Hint>, usize)>>,
    /// Whether the subscriber task was started.
    started: AtomicBool,
}

/// What the announcement of a flight's end brings its waiters.
#[derive(Debug, Default)]
struct Hint {
    /// Notified when the end is announced.
    event: Event,
    /// The value's payload, when the announcement carried it (a small value).
    payload: Mutex<Option<Vec<u8>>>,
}

/// One waiter's registration; unregisters on drop.
#[derive(Debug)]
pub(crate) struct Registration {
    notifier: Arc<Notifier>,
    token: String,
    hint: Arc<Hint>,
}

impl Notifier {
    pub(crate) fn new(
        client: redis::Client,
        channel: String,
        command_timeout: Duration,
        retry_after: Duration,
    ) -> Self {
        Notifier {
            client,
            channel,
            command_timeout,
            retry_after,
            waiting: Mutex::new(HashMap::new()),
            started: AtomicBool::new(false),
        }
    }

    /// Registers a waiter of the flight `token`, starting the subscriber on first use.
    pub(crate) fn register(self: &Arc<Self>, token: &str) -> Registration {
        if !self.started.swap(true, Ordering::AcqRel) {
            let weak = Arc::downgrade(self);
            if !runtime::spawn(subscribe(weak)) {
                self.started.store(false, Ordering::Release);
            }
        }
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        let (hint, count) = waiting.entry(token.to_owned()).or_default();
        *count += 1;
        Registration {
            notifier: self.clone(),
            token: token.to_owned(),
            hint: hint.clone(),
        }
    }

    /// Handles an announcement: `token`, or `token payload`.
    fn wake(&self, message: &[u8]) {
        let (token, payload) = match message.iter().position(|&b| b == b' ') {
            Some(at) => (&message[..at], Some(&message[at + 1..])),
            None => (message, None),
        };
        let waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        let token = std::str::from_utf8(token).ok();
        if let Some((hint, _)) = token.and_then(|token| waiting.get(token)) {
            if let Some(payload) = payload {
                *hint.payload.lock().unwrap_or_else(PoisonError::into_inner) =
                    Some(payload.to_vec());
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
}

impl Registration {
    /// A listener for the next announcement of this flight's end. Create it before
    /// checking Redis, so that an announcement after the check is not missed.
    pub(crate) fn listen(&self) -> EventListener {
        self.hint.event.listen()
    }

    /// The payload that the announcement of this flight's end carried, if any.
    pub(crate) fn take_payload(&self) -> Option<Vec<u8>> {
        self.hint
            .payload
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut waiting = self
            .notifier
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some((_, count)) = waiting.get_mut(&self.token) {
            *count -= 1;
            if *count == 0 {
                waiting.remove(&self.token);
            }
        }
    }
}

/// The subscriber task: subscribes, wakes waiters by token, resubscribes after a lost
/// connection. Ends once the fleet is gone (checked at least once a second).
async fn subscribe(notifier: Weak<Notifier>) {
    const CHECK_EVERY: Duration = Duration::from_secs(1);
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
            Ok::<_, redis::RedisError>(pubsub.into_on_message())
        };
        if let Some(Ok(mut messages)) = runtime::timeout(command_timeout, connect).await {
            match notifier.upgrade() {
                Some(notifier) => notifier.wake_all(),
                None => return,
            }
            loop {
                match runtime::timeout(CHECK_EVERY, messages.next()).await {
                    Some(Some(message)) => match notifier.upgrade() {
                        Some(notifier) => notifier.wake(message.get_payload_bytes()),
                        None => return,
                    },
                    Some(None) => break, // connection lost: resubscribe
                    None if notifier.strong_count() == 0 => return,
                    None => {}
                }
            }
        }
        runtime::sleep(retry_after).await;
    }
}
