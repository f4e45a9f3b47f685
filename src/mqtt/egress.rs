//! The output link: a connection of its own for everything the daemon
//! publishes, so replies never queue behind inputs in one event loop (a
//! rumqttc poll reads up to ten packets but writes one, so one shared
//! connection under load reads far faster than it can answer). The
//! publisher task feeds what `replies` produced to it through
//! [`Inflight`]; while the link is down, answers go to the outbox (or,
//! without one, wait in memory), and the replayer publishes the outbox's
//! records, oldest first, once it is back. The link republishes the
//! online record on every connect.

use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use super::client::{Event, EventLoop};
use super::inflight::{Entry, Inflight, Offer, Origin};
use super::link::{Side, Which};
use crate::outbox::OutboxService;
use crate::replies::{Outgoing, ReplyReceiver};
use crate::telemetry::DaemonStats;

/// Records read from the outbox per batch, and their bytes at most.
const REPLAY_BATCH: usize = 128;
const REPLAY_BATCH_BYTES: usize = 1 << 20;

/// Where answers wait while the output link is down.
pub struct Backlog {
    /// The disk outbox, if configured.
    pub outbox: Option<OutboxService>,
    /// Without an outbox: answers taken back from a dropped link, to be
    /// published first once it is back (their inputs stay unacknowledged
    /// until then).
    pub memory: Mutex<VecDeque<Outgoing>>,
}

impl Backlog {
    /// Keeps answers the link could not deliver.
    fn keep(&self, answers: Vec<Outgoing>) {
        match &self.outbox {
            Some(o) => o.keep(answers),
            None => self
                .memory
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(answers),
        }
    }
}

/// Runs until every `Replies` handle is gone and both channels are empty.
pub async fn publish(mut rx: ReplyReceiver, inflight: Arc<Inflight>, backlog: Arc<Backlog>) {
    while let Some(msg) = rx.recv().await {
        let origin = if msg.retain {
            Origin::Record
        } else {
            Origin::Answer
        };
        let mut entry = Entry { msg, origin };
        loop {
            let progress = inflight.progress();
            match inflight.offer(entry) {
                Offer::Sent => break,
                Offer::Full(e) => entry = e,
                // A status or health record is superseded by the next one
                // (and the online record is republished on connect).
                Offer::Down(e) if e.origin == Origin::Record => break,
                Offer::Down(e) => match &backlog.outbox {
                    Some(outbox) => {
                        outbox.room().await;
                        outbox.keep(vec![e.msg]);
                        break;
                    }
                    // No outbox: wait for the link; workers then wait for
                    // room and the input link pauses, so the broker holds
                    // the rest.
                    None => entry = e,
                },
            }
            progress.await;
        }
    }
}

/// Publishes the backlog whenever the link is up: first what a dropped
/// link left in memory, then the outbox, oldest first. An outbox record is
/// released only once the broker confirmed it and every one before it;
/// if the link drops mid-way, the replay starts again from the first
/// unconfirmed one, which may be one the broker refused (so some may be
/// published twice, none lost).
pub async fn replay(inflight: Arc<Inflight>, backlog: Arc<Backlog>, stats: Arc<DaemonStats>) {
    // Sequence numbers handed to the link and not yet confirmed.
    let mut outstanding: BTreeSet<u64> = BTreeSet::new();
    let mut next_read = 0u64;
    let mut released = 0u64;
    // Records below this one already counted as too large to send: one
    // can be read again after a reconnect while an earlier one holds the
    // release back.
    let mut too_large_below = 0u64;
    loop {
        // Created before looking, so a change in between is not missed.
        let link_change = inflight.link_change();
        let progress = inflight.progress();
        if !inflight.is_up() {
            outstanding.clear();
            next_read = released;
            link_change.await;
            continue;
        }
        let retry = backlog
            .memory
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop_front();
        if let Some(msg) = retry {
            // Offered once and never held across an await: when `close`
            // stops this task, every answer must be back in memory, where
            // its input is withheld; dropped here, it would be
            // acknowledged unanswered.
            let put_back = |msg| {
                backlog
                    .memory
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push_front(msg)
            };
            match inflight.offer(Entry {
                msg,
                origin: Origin::Answer,
            }) {
                Offer::Sent => {}
                Offer::Full(e) => {
                    put_back(e.msg);
                    progress.await;
                }
                Offer::Down(e) => {
                    put_back(e.msg);
                    // Refused while up means the event loop is gone;
                    // waiting keeps this from spinning.
                    if inflight.is_up() {
                        link_change.await;
                    }
                }
            }
            continue;
        }
        let Some(outbox) = &backlog.outbox else {
            // Memory fills only when the link drops.
            link_change.await;
            continue;
        };
        let (replayed, unsendable) = inflight.take_released();
        for seq in replayed {
            outstanding.remove(&seq);
            stats.outbox.replayed.fetch_add(1, Ordering::Relaxed);
        }
        for seq in unsendable {
            outstanding.remove(&seq);
            if seq >= too_large_below {
                too_large_below = seq + 1;
                stats.outbox.too_large.fetch_add(1, Ordering::Relaxed);
            }
        }
        let release_to = outstanding.first().copied().unwrap_or(next_read);
        if release_to > released {
            released = release_to;
            outbox.release(released);
        }
        let stored = outbox.stored.notified();
        if next_read >= outbox.end() {
            // Nothing to read (the usual case, with the link up): wait for
            // a commit, or for confirmations to release, or the link.
            if outstanding.is_empty() {
                tokio::select! {
                    _ = stored => {}
                    _ = link_change => {}
                }
            } else {
                progress.await;
            }
            continue;
        }
        let batch = outbox
            .read(next_read, REPLAY_BATCH, REPLAY_BATCH_BYTES)
            .await;
        if batch.is_empty() {
            // Everything left had expired.
            next_read = outbox.end();
            continue;
        }
        for (seq, record) in batch {
            let msg = Outgoing {
                topic: record.topic,
                payload: record.payload.into(),
                retain: record.retain,
                ack: None,
                properties: record.properties.map(std::sync::Arc::new),
            };
            let change = inflight.link_change();
            if offer_until_sent(&inflight, msg, Origin::Replay(seq))
                .await
                .is_some()
            {
                // The link dropped: start again from the first unconfirmed,
                // once it is back. (Refused while up means the event loop
                // is gone; waiting keeps this from spinning.)
                if inflight.is_up() {
                    change.await;
                }
                break;
            }
            outstanding.insert(seq);
            next_read = seq + 1;
        }
    }
}

/// Offers `msg` until the window has room; gives it back if the link is
/// down.
async fn offer_until_sent(inflight: &Inflight, msg: Outgoing, origin: Origin) -> Option<Outgoing> {
    let mut entry = Entry { msg, origin };
    loop {
        let progress = inflight.progress();
        match inflight.offer(entry) {
            Offer::Sent => return None,
            Offer::Down(e) => return Some(e.msg),
            Offer::Full(e) => entry = e,
        }
        progress.await;
    }
}

pub struct Egress {
    pub inflight: Arc<Inflight>,
    pub backlog: Arc<Backlog>,
    pub status_topic: String,
    /// The retained "online" record of the current model set.
    pub online: Arc<Mutex<Vec<u8>>>,
    /// The number of the latest connection, for whoever re-publishes
    /// retained records on connect (Home Assistant discovery): records
    /// offered while the link is down are dropped, not kept.
    pub connects: tokio::sync::watch::Sender<u64>,
}

impl Side for Egress {
    const WHICH: Which = Which::Output;

    /// Republishes the online record (the Last Will may have replaced it).
    fn on_connect(&mut self, n: u64, session_present: bool) {
        log::debug!("output link connected (connection {n}, session present: {session_present})");
        self.inflight.link_up();
        let online = match self.online.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        };
        let msg = Outgoing {
            topic: self.status_topic.clone(),
            payload: online.into(),
            retain: true,
            ack: None,
            properties: None,
        };
        // The window is empty on a fresh connection.
        if !matches!(
            self.inflight.offer(Entry {
                msg,
                origin: Origin::Record
            }),
            Offer::Sent
        ) {
            log::warn!("output link: could not republish the online status");
        }
        self.connects.send_replace(n);
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::PublishWritten(pkid) => self.inflight.written(pkid),
            Event::PubAck(pkid) => self.inflight.acknowledged(pkid),
            Event::PubRefused { pkid, reason } => self.inflight.refused(pkid, &reason),
            _ => {}
        }
    }

    fn on_down(&mut self, eventloop: &mut EventLoop) {
        // Events rumqttc had buffered before the failure (it returns them
        // one per poll, and keeps them across a reconnect): confirmations
        // among them count, and a stale packet id must not meet the next
        // connection's publishes.
        for event in eventloop.take_buffered() {
            self.on_event(event);
        }
        let answers = self.inflight.link_down(eventloop);
        if !answers.is_empty() {
            log::info!(
                "output link down: {} unconfirmed answer(s) kept for when it is back",
                answers.len()
            );
            self.backlog.keep(answers);
        }
    }
}
