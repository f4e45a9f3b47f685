//! The broker side of `edge-infer publish-model`: one connection that
//! reads what is retained on a few topics, publishes retained QoS 1
//! messages in order with every PUBACK awaited, and watches the broker
//! deliver them back.
//!
//! Why watch: a 3.1.1 broker has no way to refuse a publish. Most brokers
//! (EMQX, HiveMQ, AWS IoT Core, Mosquitto's `max_packet_size`) close the
//! connection on a packet over their limit, which shows here as a lost
//! connection with that message unconfirmed; but Mosquitto's
//! `message_size_limit`, and an ACL that denies the topic, confirm the
//! publish and drop it. A subscriber of the topic tells the two apart: a
//! live copy (RETAIN 0, MQTT 3.1.1 section 3.3.1.3) comes only if the
//! broker took it.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttc::{
    Client, Connection, Event, Outgoing, Packet, QoS, RecvTimeoutError, SubscribeFilter,
    SubscribeReasonCode,
};

use super::tool::Broker;

/// Largest packet either way: a chunk (at most 1 MiB) with its topic, or
/// a manifest (at most 256 KiB).
const MAX_PACKET_BYTES: usize = 2 * 1024 * 1024;

/// Payload bytes handed over but not yet confirmed, at most (one message
/// always goes, however big): enough to keep a slow link busy, little
/// memory.
const WINDOW_BYTES: usize = 4 * 1024 * 1024;

/// Messages handed over but not yet confirmed, at most: below rumqttc's
/// own limit of 100 in flight, so what it takes from its channel it sends.
const WINDOW_MESSAGES: usize = 64;

/// With the subscriptions acknowledged, how long nothing more must come
/// before what is retained counts as all there is (as `status` does).
const SETTLE: Duration = super::status::SETTLE;

/// One message to publish, retained, at QoS 1.
pub struct Message {
    pub topic: String,
    /// A chunk shares the model's buffer; it is copied only while it waits
    /// for its confirmation.
    pub payload: Bytes,
    /// What it is, for errors ("chunk 3 of 12").
    pub what: String,
}

/// What is retained on a topic, as read by [`Session::retained`].
#[derive(Debug, Clone, PartialEq)]
pub enum Retained {
    Nothing,
    Payload(Vec<u8>),
    /// The broker refused the subscription (access control).
    Unreadable,
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("cannot reach the MQTT broker at {url}: {why}")]
    Unreachable { url: String, why: String },
    /// The connection ended with `what` (the oldest unconfirmed message,
    /// of `bytes` payload bytes) not confirmed.
    #[error("the connection to the MQTT broker at {url} ended while {what} ({bytes} bytes) waited for its confirmation: {why}")]
    Lost {
        url: String,
        what: String,
        bytes: usize,
        why: String,
    },
    #[error("the connection to the MQTT broker at {url} ended {doing}: {why}")]
    Dropped {
        url: String,
        doing: String,
        why: String,
    },
    #[error("the MQTT broker at {url} did not {doing} within {secs:.1} s")]
    Timeout {
        url: String,
        doing: String,
        secs: f64,
    },
}

/// A connection to the broker for the life of one command.
pub struct Session<'b> {
    broker: &'b Broker,
    client: Client,
    connection: Connection,
    url: String,
    /// How long any one step may take: connecting, a confirmation, the
    /// retained messages after a subscription, a message coming back.
    wait: Duration,
    /// Topics subscribed to, whose live deliveries are noted.
    watched: Vec<String>,
    /// The latest payload the broker delivered live on each watched topic.
    live: HashMap<String, Vec<u8>>,
}

impl<'b> Session<'b> {
    /// Connects (a clean session), waiting at most `wait` for the ConnAck.
    pub fn open(broker: &'b Broker, wait: Duration) -> Result<Session<'b>, SessionError> {
        let (client, connection) = broker.client(
            "edge-infer-publish",
            MAX_PACKET_BYTES,
            wait,
            WINDOW_MESSAGES + 8,
        );
        let mut session = Session {
            broker,
            client,
            connection,
            url: broker.url(),
            wait,
            watched: Vec::new(),
            live: HashMap::new(),
        };
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let why = match session.connection.recv_timeout(left) {
                Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => return Ok(session),
                Ok(Ok(_)) => continue,
                Ok(Err(e)) => broker.describe(e, true),
                Err(RecvTimeoutError::Timeout) => {
                    format!("no answer within {:.1} s", wait.as_secs_f64())
                }
                Err(RecvTimeoutError::Disconnected) => "the MQTT client stopped".into(),
            };
            return Err(SessionError::Unreachable {
                url: session.url,
                why,
            });
        }
    }

    /// The next event before `deadline` (None if none came); live
    /// publishes on watched topics are noted on the way. Err: the
    /// connection is gone, in words.
    fn next(&mut self, deadline: Instant) -> Result<Option<Event>, String> {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.connection.recv_timeout(left) {
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => Err("the MQTT client stopped".into()),
            Ok(Err(e)) => Err(self.broker.describe(e, false)),
            Ok(Ok(event)) => {
                if let Event::Incoming(Packet::Publish(p)) = &event {
                    if !p.retain && self.watched.contains(&p.topic) {
                        self.live.insert(p.topic.clone(), p.payload.to_vec());
                    }
                }
                Ok(Some(event))
            }
        }
    }

    /// Subscribes to `topics` and returns what is retained on each, in
    /// order: the broker sends it after the SUBACK, so this waits until
    /// every granted topic has its message or nothing has come for
    /// [`SETTLE`]. From then on, what the broker delivers live on them is
    /// noted for [`Session::delivered`].
    pub fn retained(&mut self, topics: &[String]) -> Result<Vec<Retained>, SessionError> {
        let doing = || format!("while reading what is retained on {}", topics.join(" and "));
        self.client
            .try_subscribe_many(
                topics
                    .iter()
                    .map(|t| SubscribeFilter::new(t.clone(), QoS::AtLeastOnce)),
            )
            .map_err(|e| SessionError::Dropped {
                url: self.url.clone(),
                doing: doing(),
                why: e.to_string(),
            })?;
        let deadline = Instant::now() + self.wait;
        let mut granted: Option<Vec<bool>> = None;
        let mut found: HashMap<String, Vec<u8>> = HashMap::new();
        let mut quiet_since = Instant::now();
        loop {
            let now = Instant::now();
            let until = match &granted {
                Some(g) => {
                    let complete = topics
                        .iter()
                        .zip(g)
                        .all(|(t, ok)| !ok || found.contains_key(t));
                    if complete || now >= quiet_since + SETTLE || now >= deadline {
                        break;
                    }
                    (quiet_since + SETTLE).min(deadline)
                }
                None if now >= deadline => {
                    return Err(SessionError::Timeout {
                        url: self.url.clone(),
                        doing: format!("acknowledge the subscription to {}", topics.join(" and ")),
                        secs: self.wait.as_secs_f64(),
                    })
                }
                None => deadline,
            };
            match self.next(until) {
                Ok(Some(Event::Incoming(Packet::SubAck(ack)))) => {
                    let mut g: Vec<bool> = ack
                        .return_codes
                        .iter()
                        .map(|c| !matches!(c, SubscribeReasonCode::Failure))
                        .collect();
                    g.resize(topics.len(), false);
                    granted = Some(g);
                    quiet_since = Instant::now();
                }
                Ok(Some(Event::Incoming(Packet::Publish(p))))
                    if p.retain && topics.contains(&p.topic) =>
                {
                    found.insert(p.topic.clone(), p.payload.to_vec());
                    quiet_since = Instant::now();
                }
                Ok(_) => {}
                Err(why) => {
                    return Err(SessionError::Dropped {
                        url: self.url.clone(),
                        doing: doing(),
                        why,
                    })
                }
            }
        }
        let granted = granted.unwrap_or_default();
        Ok(topics
            .iter()
            .zip(granted)
            .map(|(t, ok)| {
                if !ok {
                    return Retained::Unreadable;
                }
                self.watched.push(t.clone());
                match found.remove(t) {
                    Some(p) if !p.is_empty() => Retained::Payload(p),
                    _ => Retained::Nothing,
                }
            })
            .collect())
    }

    /// Publishes `messages` retained at QoS 1, in order, and returns once
    /// the broker has confirmed every one; `progress` hears how many are
    /// confirmed so far. At most [`WINDOW_BYTES`] (and [`WINDOW_MESSAGES`])
    /// wait for their confirmation at a time, at least one message.
    pub fn publish(
        &mut self,
        messages: &[Message],
        mut progress: impl FnMut(usize),
    ) -> Result<(), SessionError> {
        let mut next = 0;
        // Handed to the client, not yet written (rumqttc numbers them
        // when it writes them, in this order).
        let mut queued: VecDeque<usize> = VecDeque::new();
        // Written, waiting for their PUBACK, by packet id.
        let mut inflight: HashMap<u16, usize> = HashMap::new();
        let mut unconfirmed_bytes = 0;
        let mut confirmed = 0;
        let mut deadline = Instant::now() + self.wait;
        while confirmed < messages.len() {
            while let Some(m) = messages.get(next) {
                let waiting = queued.len() + inflight.len();
                if waiting > 0
                    && (waiting >= WINDOW_MESSAGES
                        || unconfirmed_bytes + m.payload.len() > WINDOW_BYTES)
                {
                    break;
                }
                self.client
                    .try_publish(m.topic.clone(), QoS::AtLeastOnce, true, m.payload.to_vec())
                    .map_err(|e| SessionError::Dropped {
                        url: self.url.clone(),
                        doing: format!("before {} could be sent", m.what),
                        why: e.to_string(),
                    })?;
                queued.push_back(next);
                unconfirmed_bytes += m.payload.len();
                next += 1;
            }
            let oldest = || {
                let i = inflight
                    .values()
                    .chain(queued.iter())
                    .min()
                    .copied()
                    .unwrap_or(confirmed.min(messages.len() - 1));
                &messages[i]
            };
            match self.next(deadline) {
                Ok(None) => {
                    if Instant::now() >= deadline {
                        return Err(SessionError::Timeout {
                            url: self.url.clone(),
                            doing: format!("confirm {}", oldest().what),
                            secs: self.wait.as_secs_f64(),
                        });
                    }
                }
                Ok(Some(Event::Outgoing(Outgoing::Publish(pkid)))) => {
                    if let Some(i) = queued.pop_front() {
                        inflight.insert(pkid, i);
                    }
                }
                Ok(Some(Event::Incoming(Packet::PubAck(ack)))) => {
                    if let Some(i) = inflight.remove(&ack.pkid) {
                        confirmed += 1;
                        unconfirmed_bytes -= messages[i].payload.len();
                        deadline = Instant::now() + self.wait;
                        progress(confirmed);
                    }
                }
                Ok(Some(_)) => {}
                Err(why) => {
                    let m = oldest();
                    return Err(SessionError::Lost {
                        url: self.url.clone(),
                        what: m.what.clone(),
                        bytes: m.payload.len(),
                        why,
                    });
                }
            }
        }
        Ok(())
    }

    /// Waits (at most the session's wait) until the broker has delivered
    /// `payload` live on `topic`, a topic [`Session::retained`] subscribed
    /// to: the proof that it took a publish it confirmed. False if it did
    /// not come.
    pub fn delivered(&mut self, topic: &str, payload: &[u8]) -> Result<bool, SessionError> {
        let deadline = Instant::now() + self.wait;
        loop {
            if self.live.get(topic).is_some_and(|p| p == payload) {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            if let Err(why) = self.next(deadline) {
                return Err(SessionError::Dropped {
                    url: self.url.clone(),
                    doing: format!("while waiting for the broker to deliver {topic}"),
                    why,
                });
            }
        }
    }

    /// Disconnects, so the broker does not log a dropped connection.
    pub fn close(mut self) {
        if self.client.disconnect().is_err() {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(1);
        while let Ok(Some(event)) = self.next(deadline) {
            if matches!(event, Event::Outgoing(Outgoing::Disconnect)) {
                break;
            }
        }
    }
}
