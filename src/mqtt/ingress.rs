//! The input link: subscribes (again on every ConnAck), hands each
//! incoming publish to routing and acknowledges it once routing has taken
//! it. It never waits on anything but the network and the publisher:
//! routing does not block, acknowledgements are sent before the next poll
//! (never dropped, never waiting behind the messages still arriving, see
//! [`Acker`]), and while the publisher is behind it stops reading, so the
//! broker holds what comes instead of the daemon taking messages it cannot
//! answer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::client::{Client, Event, EventLoop, QoS, Received};
use super::link::{Side, Which};
use crate::config::AckPolicy;
use crate::delivery::{Acknowledge, InputAck};
use crate::job::Job;
use crate::replies::{Pressure, PressureGauge};
use crate::routing::Switch;
use crate::telemetry::DaemonStats;
use crate::time::unix_now;

/// How long the broker may take to accept our acknowledgements before the
/// write counts as failed: rumqttc's own limit for its flushes (the
/// connection timeout set in `client`).
const ACK_FLUSH_LIMIT: Duration = Duration::from_secs(10);

/// Sends the input link's acknowledgements, from whichever thread the
/// last holder of one drops it on (a worker, the publisher, the outbox).
///
/// With 3.1.1 the input task writes them itself, between polls, all that
/// came since the last poll in one flush; one at a time goes through
/// rumqttc's request channel, only to wake the event loop. rumqttc serves
/// that channel one request per turn, and a turn reads up to ten packets:
/// under a flood, acknowledgements sent that way fell behind the messages
/// they acknowledge, and the backlog (its channel, then its `pending`
/// queue, served one per timer tick) held 42 MB of requests after ten
/// seconds of 20,000 msg/s and trickled out for half a minute after. With
/// 5, whose connection rumqttc keeps private, they go through the channel;
/// there the broker may send no more unacknowledged messages than the
/// Receive Maximum the daemon asks for, which bounds that backlog.
pub struct Acker {
    client: Client,
    /// The current connection's number; acknowledgements of messages from
    /// an earlier one are not sent (the broker redelivers those).
    session: AtomicU64,
    /// The input task writes acknowledgements itself (3.1.1).
    writes: bool,
    queue: Mutex<AckQueue>,
    stats: Arc<DaemonStats>,
}

#[derive(Default)]
struct AckQueue {
    /// Not yet sent: (connection number, packet id).
    waiting: Vec<(u64, u16)>,
    /// An acknowledgement is in the request channel, so the event loop
    /// wakes; until rumqttc reports it written, others wait here.
    waking: bool,
}

impl Acker {
    pub fn new(client: Client, writes: bool, stats: Arc<DaemonStats>) -> Acker {
        Acker {
            client,
            session: AtomicU64::new(0),
            writes,
            queue: Mutex::default(),
            stats,
        }
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, AckQueue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues an acknowledgement from the input task itself, which sends
    /// it before its next poll (no wake-up needed).
    fn defer(&self, packet_id: u16) {
        let session = self.session.load(Ordering::Relaxed);
        self.queue().waiting.push((session, packet_id));
    }

    /// A new connection: nothing is in its request channel for it yet.
    fn connected(&self, n: u64) {
        self.session.store(n, Ordering::Relaxed);
        self.queue().waking = false;
    }

    /// rumqttc wrote an acknowledgement from its channel.
    fn woken(&self) {
        self.queue().waking = false;
    }

    /// Sends what waits: written straight to the connection (3.1.1), or
    /// queued in the event loop (5: only those that found the channel
    /// full, which the Receive Maximum makes rare). `batch` is scratch
    /// space, kept between calls so the hot path allocates nothing.
    async fn send_waiting(
        &self,
        eventloop: &mut EventLoop,
        batch: &mut Vec<(u64, u16)>,
        timeout: Duration,
    ) {
        std::mem::swap(batch, &mut self.queue().waiting);
        if batch.is_empty() {
            return;
        }
        let session = self.session.load(Ordering::Relaxed);
        let before = batch.len();
        batch.retain(|&(s, _)| s == session);
        let stale = before - batch.len();
        if stale > 0 {
            // Taken on an earlier connection: the broker redelivers them.
            self.stats
                .acks_stale
                .fetch_add(stale as u64, Ordering::Relaxed);
        }
        let pkids = batch.iter().map(|&(_, pkid)| pkid);
        if !self.writes {
            for pkid in pkids {
                eventloop.queue_ack(pkid);
            }
        } else if let Err(e) = eventloop.write_acks(pkids, timeout).await {
            // The connection failed; the next poll sees it too and
            // reconnects, and the broker redelivers what was not
            // acknowledged.
            log::debug!("could not send {} acknowledgement(s): {e}", batch.len());
        }
        batch.clear();
    }
}

impl Acknowledge for Acker {
    fn acknowledge(&self, session: u64, packet_id: u16) {
        if session != self.session.load(Ordering::Relaxed) {
            // Taken on an earlier connection: the broker redelivers it
            // (its answer may then be published twice, never lost).
            self.stats.acks_stale.fetch_add(1, Ordering::Relaxed);
            return;
        }
        {
            let mut queue = self.queue();
            if self.writes && queue.waking {
                queue.waiting.push((session, packet_id));
                return;
            }
            queue.waking = true;
        }
        if self.client.try_ack(packet_id).is_err() {
            // Full: the event loop is busy with it, so it polls again soon.
            self.queue().waiting.push((session, packet_id));
        }
    }

    fn withheld(&self) {
        self.stats.acks_withheld.fetch_add(1, Ordering::Relaxed);
    }
}

pub struct Ingress {
    pub client: Client,
    pub acker: Arc<Acker>,
    /// Scratch space of [`Acker::send_waiting`].
    pub ack_batch: Vec<(u64, u16)>,
    /// When QoS 1 inputs are acknowledged.
    pub ack_policy: AckPolicy,
    /// Where publishes go; none while draining.
    pub switch: Arc<Switch>,
    pub qos: QoS,
    pub gauge: PressureGauge,
    pub stats: Arc<DaemonStats>,
    /// Becomes true once the first subscriptions are acknowledged.
    pub subscribed: watch::Sender<bool>,
    /// UNSUBACKs received, for a drain that waits for its own.
    pub unsubscribed: watch::Sender<u64>,
}

impl Side for Ingress {
    const WHICH: Which = Which::Input;

    async fn before_poll(&mut self, keep_alive: Duration, eventloop: &mut EventLoop) {
        self.acker
            .send_waiting(eventloop, &mut self.ack_batch, ACK_FLUSH_LIMIT)
            .await;
        if self.gauge.pressure() == Pressure::Normal {
            return;
        }
        // Paused: nothing is read, so the broker keeps what comes. The
        // pause ends when the publisher has caught up, or in time for the
        // next keep-alive ping (one poll then reads at most a few
        // messages, which the reserve of the refusal channel absorbs).
        let started = Instant::now();
        let limit = keep_alive / 2;
        while self.gauge.pressure() == Pressure::High && started.elapsed() < limit {
            let _ = tokio::time::timeout(Duration::from_millis(20), self.gauge.drained()).await;
            // Answers still complete while paused: their acknowledgements
            // go out now, not after the pause.
            self.acker
                .send_waiting(eventloop, &mut self.ack_batch, ACK_FLUSH_LIMIT)
                .await;
        }
        let paused = started.elapsed();
        self.stats
            .input_paused_us
            .fetch_add(paused.as_micros() as u64, Ordering::Relaxed);
    }

    fn on_connect(&mut self, n: u64, session_present: bool) {
        self.acker.connected(n);
        let Some(filters) = self.switch.filters() else {
            return;
        };
        log::info!(
            "connected to the MQTT broker (connection {n}, session present: {session_present}); subscribing to {}",
            filters.join(", ")
        );
        // In a task: a request can wait for room in the client's channel,
        // and the event loop must not wait.
        let client = self.client.clone();
        let qos = self.qos;
        tokio::spawn(async move {
            if let Err(e) = client.subscribe_many(filters, qos).await {
                log::error!("could not request subscriptions: {e}");
            }
        });
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Publish(p) => self.on_publish(p),
            Event::AckWritten => self.acker.woken(),
            Event::SubAck { granted, refused } => {
                if refused == 0 {
                    log::info!("subscribed to {granted} topic filter(s)");
                    self.subscribed.send_replace(true);
                } else {
                    log::error!(
                        "the broker refused {refused} of {} subscription(s) (check its ACLs)",
                        granted + refused
                    );
                }
            }
            Event::UnsubAck => {
                log::info!("unsubscribed from a topic filter");
                self.unsubscribed.send_modify(|n| *n += 1);
            }
            _ => {}
        }
    }
}

impl Ingress {
    fn on_publish(&self, p: Received) {
        // At-least-once: the acknowledgement travels with the job and goes
        // out once every answer is safe (`delivery`).
        let ack = (p.at_least_once && self.ack_policy == AckPolicy::Answered).then(|| {
            let by: Arc<dyn Acknowledge> = self.acker.clone();
            InputAck::new(by, self.acker.session.load(Ordering::Relaxed), p.pkid)
        });
        let job = Job {
            topic: p.topic.clone(),
            // A slice of rumqttc's read buffer: a model's queue copies what
            // it takes (`ModelQueue::offer`), a refusal needs no copy.
            payload: p.payload,
            received_at: unix_now(),
            received: Instant::now(),
            ack: ack.clone(),
            properties: p.properties.map(Arc::new),
        };
        if !self.switch.dispatch(job) {
            // Draining: not acked, so the broker keeps it for next time.
            if let Some(ack) = &ack {
                ack.withhold();
            }
            log::debug!("draining: left {} unacknowledged for redelivery", p.topic);
            return;
        }
        if ack.is_some() || !p.at_least_once {
            return;
        }
        // Sent before the next poll, with any others (see `Acker`).
        self.acker.defer(p.pkid);
    }
}
