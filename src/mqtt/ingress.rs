//! The input link: subscribes (again on every ConnAck), hands each
//! incoming publish to routing and acknowledges it once routing has taken
//! it. It never waits on anything but the network and the publisher:
//! routing does not block, acknowledgements are sent before the next poll
//! (never waiting behind the messages still arriving, and in the order
//! the messages came as far as [`super::arrivals`] holds them to it, see
//! [`Acker`]; those of a failed connection are dropped, and a resumed
//! session redelivers the messages), and while the publisher is behind it
//! stops reading, so the broker holds what comes instead of the daemon
//! taking messages it cannot answer.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::arrivals::Arrivals;
use super::client::{Client, Event, EventLoop, QoS, Received};
use super::link::{Side, Which};
use crate::config::AckPolicy;
use crate::delivery::{AckHandle, Acknowledge, InputAck};
use crate::job::Job;
use crate::replies::{Pressure, PressureGauge};
use crate::routing::Switch;
use crate::telemetry::DaemonStats;
use crate::time::unix_now;

/// How long the broker may take to accept our acknowledgements before the
/// write counts as failed: rumqttc's own limit for its flushes (the
/// connection timeout set in `client`).
const ACK_FLUSH_LIMIT: Duration = Duration::from_secs(10);

/// The session number while the link is down (connections count from 1).
const NO_CONNECTION: u64 = 0;

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
    /// The input task writes acknowledgements itself (3.1.1).
    writes: bool,
    queue: Mutex<AckQueue>,
    stats: Arc<DaemonStats>,
}

struct AckQueue {
    /// The current connection's number, or `NO_CONNECTION`: the
    /// acknowledgement of a message from another is never sent (the broker
    /// redelivers it). Kept under the same lock as the rest, so a message
    /// is never settled in the next connection's `arrivals`.
    session: u64,
    /// Not yet sent: (connection number, packet id), in the order they go.
    waiting: Vec<(u64, u16)>,
    /// An acknowledgement is in the request channel, so the event loop
    /// wakes; until rumqttc reports it written, others wait here.
    waking: bool,
    /// The current connection's messages acknowledged once answered.
    arrivals: Arrivals,
}

impl Acker {
    pub fn new(
        client: Client,
        writes: bool,
        overtake_limit: usize,
        stats: Arc<DaemonStats>,
    ) -> Acker {
        Acker {
            client,
            writes,
            queue: Mutex::new(AckQueue {
                session: NO_CONNECTION,
                waiting: Vec::new(),
                waking: false,
                arrivals: Arrivals::new(overtake_limit),
            }),
            stats,
        }
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, AckQueue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues an acknowledgement from the input task itself, which sends
    /// it before its next poll (no wake-up needed).
    fn defer(&self, packet_id: u16) {
        let mut queue = self.queue();
        let session = queue.session;
        queue.waiting.push((session, packet_id));
    }

    /// A new connection: nothing is in its request channel for it yet, and
    /// what came on the last one is the broker's to redeliver.
    fn connected(&self, n: u64) {
        let mut queue = self.queue();
        queue.session = n;
        queue.waking = false;
        queue.arrivals.reset();
    }

    /// The connection failed: no acknowledgement goes anywhere until the
    /// next one (see `Ingress::on_down`).
    fn disconnected(&self) {
        self.queue().session = NO_CONNECTION;
    }

    /// A message to acknowledge once answered came: its `InputAck`.
    fn arrived(self: &Arc<Self>, packet_id: u16) -> AckHandle {
        let (session, number) = {
            let mut queue = self.queue();
            match queue.session {
                // Read before the link failed: never acknowledged.
                NO_CONNECTION => (NO_CONNECTION, 0),
                session => (session, queue.arrivals.arrived(packet_id)),
            }
        };
        let by: Arc<dyn Acknowledge> = self.clone();
        InputAck::new(by, session, number)
    }

    /// The message numbered `number` on connection `session` is answered
    /// or withheld: sends what that lets go, in the order it came.
    fn settle(&self, session: u64, number: u64, answered: bool) {
        let mut queue = self.queue();
        if session != queue.session || session == NO_CONNECTION {
            drop(queue);
            if answered {
                // Taken on an earlier connection: the broker redelivers it
                // (its answer may then be published twice, never lost).
                self.stats.acks_stale.fetch_add(1, Ordering::Relaxed);
            }
            return;
        }
        let AckQueue {
            waiting,
            waking,
            arrivals,
            ..
        } = &mut *queue;
        // Sent under the lock: a failure's `disconnected` waits for the
        // send, so the `drop_stale_requests` after it finds it
        // (`Ingress::on_down`).
        arrivals.settle(number, answered, &mut |packet_id| {
            if waiting.is_empty()
                && !(self.writes && *waking)
                && self.client.try_ack(packet_id).is_ok()
            {
                *waking = self.writes;
            } else {
                // The input task is awake for those waiting (it queued them
                // itself, or rumqttc will report the one in its channel
                // written, or the channel was full) and writes them in
                // order; the one in the channel may go after them, one
                // step more for the broker's walk, not thousands.
                waiting.push((session, packet_id));
            }
        });
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
        let session = {
            let mut queue = self.queue();
            std::mem::swap(batch, &mut queue.waiting);
            queue.session
        };
        if batch.is_empty() {
            return;
        }
        let before = batch.len();
        batch.retain(|&(s, _)| s == session && s != NO_CONNECTION);
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
    fn acknowledge(&self, session: u64, number: u64) {
        self.settle(session, number, true);
    }

    fn withheld(&self, session: u64, number: u64) {
        self.stats.acks_withheld.fetch_add(1, Ordering::Relaxed);
        self.settle(session, number, false);
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
        // and the event loop must not wait. (One still waiting when the
        // link fails reaches the channel after `on_down` has emptied it,
        // so the next connection subscribes twice: its retained inputs are
        // answered once more, never lost.)
        let client = self.client.clone();
        let qos = self.qos;
        tokio::spawn(async move {
            if let Err(e) = client.subscribe_many(filters, qos).await {
                log::error!("could not request subscriptions: {e}");
            }
        });
    }

    fn on_down(&mut self, eventloop: &mut EventLoop) {
        self.acker.disconnected();
        // An answer may have completed between the failure and now.
        eventloop.drop_stale_requests();
        // Messages rumqttc read before the failure (it returns them one
        // per poll, and keeps them across a reconnect): taken now, as no
        // connection's, so they are answered but never acknowledged on
        // the next connection, where a new session may have given their
        // packet ids to other messages. A resumed session (the default)
        // redelivers them: answered twice, never lost.
        for event in eventloop.take_buffered() {
            self.on_event(event);
        }
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
        let ack = (p.at_least_once && self.ack_policy == AckPolicy::Answered)
            .then(|| self.acker.arrived(p.pkid));
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

#[cfg(test)]
mod tests {
    use super::super::arrivals::OVERTAKE_LIMIT;
    use super::super::client;
    use super::*;

    fn acker(writes: bool, channel: usize) -> (Arc<Acker>, EventLoop) {
        let (client, eventloop) = client::unconnected(channel);
        let stats = Arc::new(DaemonStats::default());
        let acker = Arc::new(Acker::new(client, writes, OVERTAKE_LIMIT, stats));
        acker.connected(1);
        (acker, eventloop)
    }

    fn acks_queued(eventloop: &EventLoop) -> usize {
        let queued = eventloop.queued_requests();
        queued.iter().filter(|&&kind| kind == "puback").count()
    }

    fn waiting(acker: &Acker) -> Vec<u16> {
        acker.queue().waiting.iter().map(|&(_, id)| id).collect()
    }

    #[test]
    fn acknowledgements_leave_in_arrival_order_behind_a_backlog() {
        let (acker, _eventloop) = acker(true, 16);
        let newest = OVERTAKE_LIMIT as u16 + 8;
        let mut acks: Vec<AckHandle> = (1..=newest).map(|id| acker.arrived(id)).collect();
        // The newest, answered first, waits behind the unanswered ones.
        drop(acks.pop());
        assert!(waiting(&acker).is_empty());
        assert!(!acker.queue().waking);
        // The oldest wakes the event loop through the channel; the next
        // ones wait for the input task, and once fewer than the limit are
        // unanswered ahead of the newest, it follows them.
        let rest = acks.split_off(8);
        drop(acks);
        assert!(acker.queue().waking);
        let mut want: Vec<u16> = (2..=8).collect();
        want.push(newest);
        assert_eq!(waiting(&acker), want);
        // The link fails: answers that complete now are not sent, not even
        // once it is back.
        acker.disconnected();
        drop(rest);
        acker.connected(2);
        assert_eq!(waiting(&acker), want);
        assert_eq!(
            acker.stats.acks_stale.load(Ordering::Relaxed),
            newest as u64 - 9
        );
    }

    #[test]
    fn a_message_read_while_down_is_never_acknowledged() {
        let (acker, _eventloop) = acker(false, 16);
        let before = acker.arrived(6);
        // More than the limit left unanswered: the next connection's ledger
        // starts empty, or nothing below would go out.
        let _unanswered: Vec<AckHandle> = (100..140).map(|id| acker.arrived(id)).collect();
        acker.disconnected();
        // Answered before the link is back, and after.
        let read_before_the_failure = [acker.arrived(7), acker.arrived(8)];
        let [answered_while_down, answered_after] = read_before_the_failure;
        drop(answered_while_down);
        drop(before);
        assert_eq!(acker.stats.acks_stale.load(Ordering::Relaxed), 2);
        acker.connected(2);
        let current = acker.arrived(7);
        drop(answered_after);
        assert_eq!(acker.stats.acks_stale.load(Ordering::Relaxed), 3);
        assert!(waiting(&acker).is_empty());
        // MQTT 5: the current one goes through the channel at once.
        drop(current);
        assert!(waiting(&acker).is_empty());
        // The channel full: the next ones wait, in order.
        let more: Vec<AckHandle> = (10..30).map(|id| acker.arrived(id)).collect();
        drop(more);
        assert_eq!(waiting(&acker), (25..30).collect::<Vec<u16>>());
    }

    #[test]
    fn a_failed_connection_s_acknowledgements_are_dropped_not_sent_on_the_next() {
        let (acker, mut eventloop) = acker(false, 4);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let mut batch = Vec::new();
        let mut send_waiting = |acker: &Acker, eventloop: &mut EventLoop| {
            let sent = acker.send_waiting(eventloop, &mut batch, Duration::from_secs(1));
            runtime.block_on(sent);
        };
        let mut acks: Vec<AckHandle> = (1..=6).map(|id| acker.arrived(id)).collect();
        let last = acks.pop();
        // Four in rumqttc's channel, the fifth waiting for the input task,
        // which queues it in rumqttc (MQTT 5); the sixth finds the channel
        // still full and waits.
        drop(acks);
        assert_eq!(waiting(&acker), vec![5]);
        send_waiting(&acker, &mut eventloop);
        assert_eq!(acks_queued(&eventloop), 1);
        drop(last);
        assert_eq!(waiting(&acker), vec![6]);
        acker.disconnected();
        eventloop.drop_stale_requests();
        assert_eq!(acks_queued(&eventloop), 0);
        acker.connected(2);
        send_waiting(&acker, &mut eventloop);
        assert_eq!(acks_queued(&eventloop), 0);
        assert_eq!(acker.stats.acks_stale.load(Ordering::Relaxed), 1);
        // The channel was emptied: the next connection's four go in at once.
        let acks: Vec<AckHandle> = (1..=4).map(|id| acker.arrived(id)).collect();
        drop(acks);
        assert!(waiting(&acker).is_empty());
    }
}
