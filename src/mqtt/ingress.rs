//! The input link: subscribes (again on every ConnAck), hands each
//! incoming publish to routing and acknowledges it once routing has taken
//! it. It never waits on anything but the network and the publisher:
//! routing does not block, acknowledgements are queued straight into the
//! event loop (never dropped, never waiting for channel room), and while
//! the publisher is behind it stops reading, so the broker holds what
//! comes instead of the daemon taking messages it cannot answer.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
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

/// Sends the input link's acknowledgements, from whichever thread the
/// last holder of one drops it on (a worker, the publisher, the outbox).
pub struct Acker {
    client: Client,
    /// The current connection's number; acknowledgements of messages from
    /// an earlier one are not sent (the broker redelivers those).
    session: AtomicU64,
    /// Acknowledgements that found the request channel full, moved into
    /// the event loop's own queue on its next turn.
    overflow: Mutex<VecDeque<u16>>,
    stats: Arc<DaemonStats>,
}

impl Acker {
    pub fn new(client: Client, stats: Arc<DaemonStats>) -> Acker {
        Acker {
            client,
            session: AtomicU64::new(0),
            overflow: Mutex::default(),
            stats,
        }
    }

    /// Moves acknowledgements that found no room into the event loop's
    /// queue, which it serves before anything new.
    fn flush(&self, eventloop: &mut EventLoop) {
        let mut overflow = self.overflow.lock().unwrap_or_else(|p| p.into_inner());
        for pkid in overflow.drain(..) {
            eventloop.queue_ack(pkid);
        }
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
        if self.client.try_ack(packet_id).is_err() {
            self.overflow
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push_back(packet_id);
        }
    }

    fn withheld(&self) {
        self.stats.acks_withheld.fetch_add(1, Ordering::Relaxed);
    }
}

pub struct Ingress {
    pub client: Client,
    pub acker: Arc<Acker>,
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

    async fn before_poll(&mut self, keep_alive: Duration) {
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
        }
        let paused = started.elapsed();
        self.stats
            .input_paused_us
            .fetch_add(paused.as_micros() as u64, Ordering::Relaxed);
    }

    fn on_connect(&mut self, n: u64, session_present: bool) {
        self.acker.session.store(n, Ordering::Relaxed);
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

    fn on_event(&mut self, event: Event, eventloop: &mut EventLoop) {
        self.acker.flush(eventloop);
        match event {
            Event::Publish(p) => self.on_publish(p, eventloop),
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
    fn on_publish(&self, p: Received, eventloop: &mut EventLoop) {
        // At-least-once: the acknowledgement travels with the job and goes
        // out once every answer is safe (`delivery`).
        let ack = (p.at_least_once && self.ack_policy == AckPolicy::Answered).then(|| {
            let by: Arc<dyn Acknowledge> = self.acker.clone();
            InputAck::new(by, self.acker.session.load(Ordering::Relaxed), p.pkid)
        });
        let job = Job {
            topic: p.topic.clone(),
            // rumqttc hands out the payload as a slice of its read buffer
            // (one allocation that every packet read into it shares, grown
            // to twice the largest one), so a queued message would keep the
            // whole buffer alive: under overload that was several times the
            // bytes the queue's budget counts. A copy of its own costs a
            // memcpy and makes the budget the memory held.
            payload: Bytes::copy_from_slice(&p.payload),
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
        // Through the request channel, which on this link carries only
        // acknowledgements and subscriptions and is larger than the packet
        // id space (see `INPUT_REQUEST_CHANNEL_CAPACITY`); were it ever full,
        // into the event loop's own queue (one request per timer tick, so
        // only as the fallback): an acknowledgement is never dropped and
        // never waits.
        if self.client.try_ack(p.pkid).is_err() {
            eventloop.queue_ack(p.pkid);
        }
    }
}
