//! The publishes of the output link that the broker has not confirmed
//! yet, each with what it carries: the acknowledgement of the input it
//! answers, or the outbox record it replays. Nothing is acknowledged and
//! no outbox record released before the broker's PUBACK (QoS 1) or the
//! write to the socket (QoS 0).
//!
//! rumqttc assigns packet ids itself, in the order publishes leave its
//! request channel, and reports each as `Outgoing::Publish(pkid)`; so the
//! publishes handed over wait here in that order until their id is known.
//! Both sides run on the one tokio thread, under one lock, and the window
//! of unconfirmed publishes is far below the request channel's capacity,
//! so a hand-over never fails for lack of room and the order holds.
//!
//! When the link drops, rumqttc would keep what it had (and drop it all
//! if the next session is not resumed); instead everything unconfirmed is
//! taken back here ([`Inflight::link_down`]) and rumqttc's copy cleared,
//! so each answer lives in exactly one place: here, the outbox, or the
//! memory backlog until the link returns.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::Notify;

use super::client::{Client, EventLoop, QoS};
use crate::log_limit::RepeatLimiter;
use crate::replies::Outgoing;
use crate::telemetry::DaemonStats;

/// At most this many publishes unconfirmed at once (far below the
/// request channel's capacity, see `mqtt::REQUEST_CHANNEL_CAPACITY`).
pub const WINDOW: usize = 1024;

/// The packet ids the output link cycles through (rumqttc's inflight
/// limit, above the window so the window is what limits; with MQTT 5 a
/// broker's lower Receive Maximum takes its place). An id comes round
/// again only after every other one was used, and rumqttc holds a publish
/// back while its id is still unconfirmed (its "collision"), so no two
/// unconfirmed publishes share one. A larger space costs memory at
/// connect and buys nothing: 32,767 ids took 2 MiB per link with 3.1.1
/// and about 6 MiB with 5.
pub const PACKET_IDS: u16 = 4 * WINDOW as u16;

/// Of the window, at most this many replays of the outbox, so fresh
/// answers always find room while a backlog drains.
pub const REPLAY_WINDOW: usize = 256;

/// Why a publish is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A result or an error, possibly holding its input's acknowledgement.
    Answer,
    /// A retained status or health record: superseded by the next one, so
    /// never kept once the link drops.
    Record,
    /// The outbox record with this sequence number.
    Replay(u64),
}

#[derive(Debug)]
pub struct Entry {
    pub msg: Outgoing,
    pub origin: Origin,
}

/// What became of an offered publish.
pub enum Offer {
    /// Handed to the client.
    Sent,
    /// The window is full; wait for [`Inflight::progress`] and offer again.
    Full(Entry),
    /// The link is down.
    Down(Entry),
}

#[derive(Default)]
struct State {
    up: bool,
    /// Handed to the client, not yet written (no packet id yet).
    unsent: VecDeque<Entry>,
    /// Written, waiting for the broker's PUBACK.
    sent: HashMap<u16, Entry>,
    replays: usize,
    /// Outbox records confirmed, for the replayer to release.
    replayed: Vec<u64>,
    /// Outbox records too large to send, released unsent (counted lost).
    unsendable: Vec<u64>,
}

impl State {
    fn len(&self) -> usize {
        self.unsent.len() + self.sent.len()
    }
}

pub struct Inflight {
    client: Client,
    qos: QoS,
    /// The largest packet the link may send: a bigger one would make
    /// rumqttc drop the connection, again at every retry.
    max_packet: usize,
    state: Mutex<State>,
    /// Signalled on every confirmation and whenever the link comes or goes.
    progress: Notify,
    /// Signalled only when the link comes or goes.
    link: Notify,
    stats: Arc<DaemonStats>,
    /// Refusals come at the rate of the answers when an ACL or a quota
    /// refuses them all. What it holds back is summarized at the next
    /// refusal past its interval, or at shutdown; not flushed per PUBACK,
    /// which is every answer's path.
    log_limit: RepeatLimiter,
}

impl Inflight {
    pub fn new(client: Client, qos: QoS, max_packet: usize, stats: Arc<DaemonStats>) -> Inflight {
        Inflight {
            client,
            qos,
            max_packet,
            state: Mutex::new(State::default()),
            progress: Notify::new(),
            link: Notify::new(),
            stats,
            log_limit: RepeatLimiter::default(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Nothing under this lock can panic halfway through a change.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands `entry` to the client, unless the link is down or the window
    /// is full.
    pub fn offer(&self, entry: Entry) -> Offer {
        let mut s = self.state();
        if !s.up {
            return Offer::Down(entry);
        }
        let replay = matches!(entry.origin, Origin::Replay(_));
        if s.len() >= WINDOW || (replay && s.replays >= REPLAY_WINDOW) {
            return Offer::Full(entry);
        }
        let m = &entry.msg;
        let size = m.packet_size();
        if size > self.max_packet {
            // `replies` answers too-large results with an error, so this
            // is a status or health record (many models) or a replay
            // written under a larger limit. Dropped, not retried forever.
            self.stats.publish_failures.fetch_add(1, Ordering::Relaxed);
            let what = match entry.origin {
                Origin::Replay(_) => "an outbox record",
                Origin::Answer => "an answer",
                Origin::Record => "a status record",
            };
            let why = format!(
                "not publishing {what} of {size} bytes on {}: more than the output link's max_packet_bytes ({}); dropped (health: broker.publish_failures)",
                m.topic, self.max_packet
            );
            if self.log_limit.admit("", "unsendable") {
                log::error!("{why}");
            }
            entry.msg.lost();
            if let Origin::Replay(seq) = entry.origin {
                // Its input was acknowledged when it was committed: a
                // loss, which the outbox's figures say (the replayer
                // counts it, once), not a replay.
                s.unsendable.push(seq);
                let outbox = &self.stats.outbox;
                *outbox.last_loss.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
            }
            return Offer::Sent;
        }
        match self.client.try_publish(
            m.topic.as_str(),
            self.qos,
            m.retain,
            &m.payload,
            m.properties.as_deref(),
        ) {
            Ok(()) => {
                if replay {
                    s.replays += 1;
                }
                s.unsent.push_back(entry);
                Offer::Sent
            }
            Err(e) => {
                // The event loop is gone (the window keeps the channel
                // from filling): nothing more goes out on this link.
                log::error!("the MQTT client refused a publish on {}: {e}", m.topic);
                Offer::Down(entry)
            }
        }
    }

    /// Resolves at the next confirmation or link change. Create it before
    /// looking at the state, so a change in between is not missed.
    pub fn progress(&self) -> tokio::sync::futures::Notified<'_> {
        self.progress.notified()
    }

    /// Resolves when the link next comes or goes.
    pub fn link_change(&self) -> tokio::sync::futures::Notified<'_> {
        self.link.notified()
    }

    pub fn is_up(&self) -> bool {
        self.state().up
    }

    /// Unconfirmed answers and records (not replays, which the outbox
    /// still holds).
    pub fn pending(&self) -> usize {
        let s = self.state();
        s.len() - s.replays
    }

    /// Outbox records confirmed since the last call, and those released
    /// unsent (too large for the link).
    pub fn take_released(&self) -> (Vec<u64>, Vec<u64>) {
        let mut s = self.state();
        (
            std::mem::take(&mut s.replayed),
            std::mem::take(&mut s.unsendable),
        )
    }

    /// The link is up (ConnAck).
    pub fn link_up(&self) {
        self.state().up = true;
        self.progress.notify_waiters();
        self.link.notify_waiters();
    }

    /// rumqttc wrote the next publish with packet id `pkid` (0 at QoS 0).
    pub fn written(&self, pkid: u16) {
        let mut s = self.state();
        let Some(entry) = s.unsent.pop_front() else {
            // Only this module publishes on the output link.
            log::warn!("output link: a publish (packet id {pkid}) that was not handed over here");
            return;
        };
        if self.qos == QoS::AtMostOnce || pkid == 0 {
            self.confirm(&mut s, entry);
        } else if let Some(old) = s.sent.insert(pkid, entry) {
            // rumqttc holds a publish back while its id is in use, so this
            // should not happen; if it does, the old one's confirmation
            // can no longer be told apart: not confirmed.
            log::warn!("output link: packet id {pkid} reused before it was confirmed");
            self.unconfirmed(&mut s, old);
        }
    }

    /// The broker confirmed packet id `pkid`.
    pub fn acknowledged(&self, pkid: u16) {
        let mut s = self.state();
        match s.sent.remove(&pkid) {
            Some(entry) => self.confirm(&mut s, entry),
            None => log::debug!("output link: PUBACK for packet id {pkid}, not ours"),
        }
    }

    /// The broker refused packet id `pkid` (MQTT 5: an ACL, a quota, its
    /// message size limit): not a confirmation. Whether a later try can
    /// pass (a quota) or not before an operator acts (an ACL), nothing is
    /// given up: an answer's input stays unacknowledged, so the broker
    /// delivers it again after a reconnect, and a replayed record stays in
    /// the outbox, sent again after a reconnect.
    pub fn refused(&self, pkid: u16, reason: &str) {
        let mut s = self.state();
        let Some(entry) = s.sent.remove(&pkid) else {
            log::debug!("output link: refusal of packet id {pkid}, not ours");
            return;
        };
        if self.log_limit.admit("", "publish_refused") {
            let (what, then) = match entry.origin {
                Origin::Answer => (
                    "an answer",
                    "its input stays unacknowledged, so the broker delivers it again after a reconnect",
                ),
                Origin::Replay(_) => (
                    "an outbox record",
                    "it stays in the outbox and is sent again after a reconnect",
                ),
                Origin::Record => ("a status record", "the next one replaces it"),
            };
            log::error!(
                "output link: the broker refused {what} on {}: {reason}; {then} (health: broker.publish_failures)",
                entry.msg.topic
            );
        }
        self.unconfirmed(&mut s, entry);
    }

    /// Gives up on a written publish the broker will not confirm, without
    /// letting anything go: an answer's input is withheld, and a replayed
    /// record is not released (the replay starts again from it after the
    /// next reconnect).
    fn unconfirmed(&self, s: &mut State, entry: Entry) {
        self.stats.publish_failures.fetch_add(1, Ordering::Relaxed);
        entry.msg.lost();
        if let Origin::Replay(_) = entry.origin {
            s.replays -= 1;
        }
        self.progress.notify_waiters();
    }

    /// Logs what the refusals' limiter still holds back (at shutdown).
    pub fn flush_log(&self) {
        self.log_limit.flush_all();
    }

    fn confirm(&self, s: &mut State, entry: Entry) {
        match entry.origin {
            Origin::Answer => {
                self.stats.answers_confirmed.fetch_add(1, Ordering::Relaxed);
            }
            Origin::Record => {}
            Origin::Replay(seq) => {
                s.replays -= 1;
                s.replayed.push(seq);
            }
        }
        // Dropping the answer releases its input's acknowledgement.
        drop(entry);
        self.progress.notify_waiters();
    }

    /// The link dropped: takes back every unconfirmed answer (the caller
    /// keeps them in the outbox or in memory), forgets records and
    /// replays (the outbox still has those), and clears rumqttc's own
    /// copies, which it would otherwise publish again after reconnecting.
    pub fn link_down(&self, eventloop: &mut EventLoop) -> Vec<Outgoing> {
        let mut s = self.state();
        s.up = false;
        // rumqttc has already moved what it had into `pending`; clean()
        // again collects anything that reached its channel since.
        eventloop.forget_requests();
        let mut answers = Vec::new();
        let sent = std::mem::take(&mut s.sent);
        let mut all: Vec<(u16, Entry)> = sent.into_iter().collect();
        // The written ones first, in packet id order (ids increase with
        // time, wrapping rarely), then those never written.
        all.sort_by_key(|(pkid, _)| *pkid);
        let unsent = std::mem::take(&mut s.unsent);
        for entry in all.into_iter().map(|(_, e)| e).chain(unsent) {
            if entry.origin == Origin::Answer {
                answers.push(entry.msg);
            }
        }
        s.replays = 0;
        drop(s);
        self.progress.notify_waiters();
        self.link.notify_waiters();
        answers
    }

    /// Waits until every answer and record is confirmed, `until` passes,
    /// or the link is down. Returns how many are left.
    pub async fn settle(&self, until: Instant) -> usize {
        loop {
            let notified = self.progress();
            let left = self.pending();
            if left == 0 || !self.is_up() {
                return left;
            }
            if tokio::time::timeout_at(until.into(), notified)
                .await
                .is_err()
            {
                return self.pending();
            }
        }
    }

    /// At shutdown: every answer still unconfirmed, for the outbox.
    pub fn take_answers(&self) -> Vec<Outgoing> {
        let mut s = self.state();
        let sent = std::mem::take(&mut s.sent);
        let unsent = std::mem::take(&mut s.unsent);
        s.replays = 0;
        sent.into_values()
            .chain(unsent)
            .filter(|e| e.origin == Origin::Answer)
            .map(|e| e.msg)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex as StdMutex;

    use super::*;
    use crate::delivery::{Acknowledge, InputAck};

    #[derive(Default)]
    struct Acks(StdMutex<Vec<u64>>);

    impl Acknowledge for Acks {
        fn acknowledge(&self, _session: u64, number: u64) {
            self.0.lock().unwrap().push(number);
        }
    }

    fn inflight(max_packet: usize) -> (Inflight, EventLoop) {
        let (client, eventloop) = super::super::client::unconnected(4096);
        let stats = Arc::new(DaemonStats::default());
        (
            Inflight::new(client, QoS::AtLeastOnce, max_packet, stats),
            eventloop,
        )
    }

    fn answer(acks: &Arc<Acks>, input: u64) -> Entry {
        let by: Arc<dyn Acknowledge> = acks.clone();
        Entry {
            msg: Outgoing {
                topic: "out/x".into(),
                payload: format!("answer to {input}").into_bytes().into(),
                retain: false,
                ack: Some(InputAck::new(by, 0, input)),
                properties: None,
            },
            origin: Origin::Answer,
        }
    }

    #[test]
    fn an_input_is_acknowledged_when_its_answer_is_confirmed() {
        let (f, _el) = inflight(1 << 20);
        let acks = Arc::new(Acks::default());
        let Offer::Down(first) = f.offer(answer(&acks, 10)) else {
            panic!("offered while down")
        };
        f.link_up();
        assert!(matches!(f.offer(first), Offer::Sent));
        for input in [11, 12] {
            assert!(matches!(f.offer(answer(&acks, input)), Offer::Sent));
        }
        // rumqttc numbers them in order; the broker confirms out of order.
        f.written(1);
        f.written(2);
        f.written(3);
        f.acknowledged(2);
        assert_eq!(*acks.0.lock().unwrap(), vec![11]);
        f.acknowledged(3);
        f.acknowledged(1);
        assert_eq!(*acks.0.lock().unwrap(), vec![11, 12, 10]);
        assert_eq!(f.pending(), 0);
        assert_eq!(f.stats.answers_confirmed.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn a_dropped_link_gives_back_every_unconfirmed_answer_oldest_first() {
        let (f, mut el) = inflight(1 << 20);
        let acks = Arc::new(Acks::default());
        f.link_up();
        for input in [1, 2, 3, 4] {
            assert!(matches!(f.offer(answer(&acks, input)), Offer::Sent));
        }
        let record = Entry {
            msg: Outgoing {
                topic: "edge-infer/d/health".into(),
                payload: b"{}".to_vec().into(),
                retain: true,
                ack: None,
                properties: None,
            },
            origin: Origin::Record,
        };
        assert!(matches!(f.offer(record), Offer::Sent));
        f.written(7);
        f.written(8);
        f.acknowledged(7);
        let back = f.link_down(&mut el);
        // Confirmed: 1. Written, unconfirmed: 2. Never written: 3, 4. The
        // health record is not kept: the next one supersedes it.
        let payloads: Vec<_> = back.iter().map(|m| m.payload.clone()).collect();
        assert_eq!(
            payloads,
            ["answer to 2", "answer to 3", "answer to 4"].map(bytes::Bytes::from)
        );
        assert_eq!(*acks.0.lock().unwrap(), vec![1]);
        let Offer::Down(refused) = f.offer(answer(&acks, 5)) else {
            panic!("offered while down")
        };
        refused.msg.lost();
        assert_eq!(f.pending(), 0);
        // Kept elsewhere, the answers still hold their inputs' acks.
        drop((back, refused));
        assert_eq!(*acks.0.lock().unwrap(), vec![1, 2, 3, 4]);
    }

    #[test]
    fn the_window_bounds_what_is_unconfirmed() {
        let (f, _el) = inflight(1 << 20);
        let acks = Arc::new(Acks::default());
        f.link_up();
        for i in 0..WINDOW {
            assert!(matches!(f.offer(answer(&acks, i as u64)), Offer::Sent));
        }
        assert!(matches!(f.offer(answer(&acks, 0)), Offer::Full(_)));
        f.written(1);
        f.acknowledged(1);
        assert!(matches!(f.offer(answer(&acks, 0)), Offer::Sent));
    }

    #[test]
    fn a_publish_larger_than_a_packet_is_not_sent_and_its_input_not_acknowledged() {
        let (f, _el) = inflight(64);
        let acks = Arc::new(Acks::default());
        f.link_up();
        let mut big = answer(&acks, 9);
        big.msg.payload = vec![b'x'; 100].into();
        assert!(matches!(f.offer(big), Offer::Sent));
        assert_eq!(f.pending(), 0);
        assert!(acks.0.lock().unwrap().is_empty());
        assert_eq!(f.stats.publish_failures.load(Ordering::Relaxed), 1);
    }

    /// A record written under a larger limit: released so the replay goes
    /// on, but as a loss the outbox's figures say, not as replayed.
    #[test]
    fn an_outbox_record_larger_than_a_packet_is_released_as_lost() {
        let (f, _el) = inflight(64);
        f.link_up();
        let mut record = answer(&Arc::default(), 1);
        record.msg.ack = None;
        record.msg.payload = vec![b'x'; 100].into();
        record.origin = Origin::Replay(41);
        assert!(matches!(f.offer(record), Offer::Sent));
        assert_eq!(f.take_released(), (vec![], vec![41]));
        assert_eq!(f.stats.publish_failures.load(Ordering::Relaxed), 1);
        let why = f.stats.outbox.last_loss.lock().unwrap().clone();
        assert!(
            why.as_deref().is_some_and(|w| w.contains(
                "not publishing an outbox record of 114 bytes on out/x: more than the output link's max_packet_bytes (64)"
            )),
            "{why:?}"
        );
    }
}
