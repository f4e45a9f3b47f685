//! Everything that touches rumqttc. [`Connection`] is the daemon's link to
//! its broker: two MQTT connections, `ingress` (subscriptions and inputs:
//! receive, hand to routing, acknowledge, pause while the publisher is
//! behind) and `egress` (everything the daemon publishes, with the Last
//! Will), each driven by `link` (reconnect with backoff); `inflight`
//! holds what the output link published until the broker confirms it.
//! `status` is the `edge-infer status` client and `publish` the broker
//! side of `edge-infer publish-model`; `tool` is what both share. No other
//! module imports rumqttc.

mod arrivals;
mod client;
mod egress;
mod inflight;
mod ingress;
mod link;
pub mod publish;
pub mod status;
pub mod tool;

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{AckPolicy, MqttSettings};
use crate::outbox::OutboxService;
use crate::replies::{self, Outgoing, PressureGauge, ReplyReceiver};
use crate::routing::Switch;
use crate::telemetry::DaemonStats;
use client::{Client, QoS};
use egress::Backlog;
use inflight::{Entry, Inflight, Offer, Origin};
use ingress::Acker;
use link::{Endpoint, Links, Which};

/// The client id of the output connection without `[uplink]`: the
/// configured one with this suffix (a broker allows one connection per
/// client id); `[uplink]`'s client id defaults to the same.
const OUTPUT_CLIENT_SUFFIX: &str = crate::config::UPLINK_CLIENT_SUFFIX;

/// The running broker link: its two connections' event loops and the
/// publisher task. Lives for the whole process (a reload never touches it).
pub struct Connection {
    input: Client,
    output: Client,
    /// Of the subscriptions (`[mqtt]`).
    qos: QoS,
    links: Arc<Links>,
    inflight: Arc<Inflight>,
    backlog: Arc<Backlog>,
    online: Arc<Mutex<Vec<u8>>>,
    status_topic: String,
    input_task: JoinHandle<()>,
    output_task: JoinHandle<()>,
    /// Taken when the drain waits for it to finish.
    publisher: Option<JoinHandle<()>>,
    replayer: JoinHandle<()>,
    stop_tx: watch::Sender<bool>,
    subscribed_rx: watch::Receiver<bool>,
    unsubscribed_rx: watch::Receiver<u64>,
    /// The output link's latest connection number (0 before the first).
    output_connects: watch::Receiver<u64>,
}

impl Connection {
    /// Starts connecting (in the background, with retries) as
    /// `settings.client_id` for inputs and, for outputs, to `uplink` when
    /// set, else to the same broker with the same id + `-out`, routing
    /// publishes through `switch` and publishing what arrives on
    /// `replies`. `online` is the retained status record sent
    /// on every connect of the output link, `last_will` the one the broker
    /// sends when that connection dies. Answers that cannot be published
    /// go to `outbox` (or, without one, wait in memory); QoS 1 inputs are
    /// acknowledged as `ack_policy` says. Must run inside tokio.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        settings: &MqttSettings,
        uplink: Option<&MqttSettings>,
        device_id: &str,
        online: Vec<u8>,
        last_will: Vec<u8>,
        switch: Arc<Switch>,
        replies: ReplyReceiver,
        gauge: PressureGauge,
        stats: Arc<DaemonStats>,
        ack_policy: AckPolicy,
        outbox: Option<OutboxService>,
    ) -> Connection {
        let status_topic = replies::status_topic(device_id);
        let qos = QoS::of(settings.qos);
        let (input, input_loop) = client::connect(
            settings,
            client::Options {
                client_id: &settings.client_id,
                last_will: None,
                channel_capacity: INPUT_REQUEST_CHANNEL_CAPACITY,
                // It publishes nothing; its subscriptions take ids too.
                max_inflight: 16,
            },
        );
        let (out, output_id) = output_link(settings, uplink);
        let output_qos = QoS::of(out.qos);
        let (output, output_loop) = client::connect(
            out,
            client::Options {
                client_id: &output_id,
                last_will: Some((&status_topic, last_will)),
                channel_capacity: REQUEST_CHANNEL_CAPACITY,
                max_inflight: inflight::PACKET_IDS,
            },
        );
        let links = Arc::new(Links {
            stats: Arc::clone(&stats),
            input_up: AtomicBool::new(false),
            output_up: AtomicBool::new(false),
            input: Endpoint::of(settings),
            output: Endpoint::of(out),
        });
        let inflight = Arc::new(Inflight::new(
            output.clone(),
            output_qos,
            out.max_packet_bytes,
            Arc::clone(&stats),
        ));
        let backlog = Arc::new(Backlog {
            outbox,
            memory: Mutex::default(),
        });
        let online = Arc::new(Mutex::new(online));
        let publisher = tokio::spawn(egress::publish(
            replies,
            Arc::clone(&inflight),
            Arc::clone(&backlog),
        ));
        let replayer = tokio::spawn(egress::replay(
            Arc::clone(&inflight),
            Arc::clone(&backlog),
            Arc::clone(&stats),
        ));
        let (subscribed, subscribed_rx) = watch::channel(false);
        let (unsubscribed, unsubscribed_rx) = watch::channel(0);
        let (stop_tx, stop_rx) = watch::channel(false);
        let (connects, output_connects) = watch::channel(0);
        let input_task = tokio::spawn(link::drive(
            ingress::Ingress {
                client: input.clone(),
                acker: Arc::new(Acker::new(
                    input.clone(),
                    input_loop.writes_acks(),
                    arrivals::overtake_limit(&settings.protocol),
                    Arc::clone(&stats),
                )),
                ack_batch: Vec::new(),
                ack_policy,
                switch,
                qos,
                gauge,
                stats: Arc::clone(&stats),
                subscribed,
                unsubscribed,
            },
            input_loop,
            Arc::clone(&links),
            stop_rx.clone(),
        ));
        let output_task = tokio::spawn(link::drive(
            egress::Egress {
                inflight: Arc::clone(&inflight),
                backlog: Arc::clone(&backlog),
                status_topic: status_topic.clone(),
                online: Arc::clone(&online),
                connects,
            },
            output_loop,
            Arc::clone(&links),
            stop_rx,
        ));
        log_connecting(settings, uplink, &output_id);
        Connection {
            input,
            output,
            qos,
            links,
            inflight,
            backlog,
            online,
            status_topic,
            input_task,
            output_task,
            publisher: Some(publisher),
            replayer,
            stop_tx,
            subscribed_rx,
            unsubscribed_rx,
            output_connects,
        }
    }

    /// Changes on every connect of the output link (retained records that
    /// found it down were dropped and are due again).
    pub fn output_connects(&self) -> watch::Receiver<u64> {
        self.output_connects.clone()
    }

    /// Turns true once the first subscriptions are acknowledged.
    pub fn subscribed(&self) -> watch::Receiver<bool> {
        self.subscribed_rx.clone()
    }

    /// Both links are up.
    pub fn connected(&self) -> bool {
        self.links.is_up(Which::Input) && self.links.is_up(Which::Output)
    }

    /// Why the connection cannot make progress, if it cannot.
    pub fn trouble(&self) -> Option<&'static str> {
        if self.input_task.is_finished() {
            return Some("the MQTT input event loop has stopped");
        }
        if self.output_task.is_finished() {
            return Some("the MQTT output event loop has stopped");
        }
        if self.publisher.as_ref().is_none_or(|p| p.is_finished()) {
            return Some("the publisher task has stopped");
        }
        if self.replayer.is_finished() {
            return Some("the outbox replay task has stopped");
        }
        None
    }

    /// The online record to republish on every later connect.
    pub fn set_online(&self, record: Vec<u8>) {
        match self.online.lock() {
            Ok(mut g) => *g = record,
            Err(p) => *p.into_inner() = record,
        }
    }

    /// Subscribes to the filters in `new` but not in `old` and unsubscribes
    /// from those in `old` but not in `new`, in a task: requests can wait
    /// for room in the client's channel, and the caller must not.
    pub fn resubscribe(&self, old: &[String], new: &[String]) {
        let subscribe: Vec<String> = new.iter().filter(|f| !old.contains(f)).cloned().collect();
        let unsubscribe: Vec<String> = old.iter().filter(|f| !new.contains(f)).cloned().collect();
        let client = self.input.clone();
        let qos = self.qos;
        tokio::spawn(async move {
            if !subscribe.is_empty() {
                if let Err(e) = client.subscribe_many(subscribe, qos).await {
                    log::error!("reload: could not subscribe: {e}");
                }
            }
            for f in unsubscribe {
                if let Err(e) = client.unsubscribe(f.clone()).await {
                    log::error!("reload: could not unsubscribe from {f}: {e}");
                }
            }
        });
    }

    /// Unsubscribes from `filters` and waits (up to `limit`) until the
    /// broker has acknowledged it; false if the input link is down or the
    /// broker did not answer in time. Messages delivered until then are
    /// served as usual.
    pub async fn leave(&self, filters: &[String], limit: Duration) -> bool {
        if filters.is_empty() || !self.links.is_up(Which::Input) {
            return false;
        }
        let mut acks = self.unsubscribed_rx.clone();
        let want = *acks.borrow_and_update() + filters.len() as u64;
        for f in filters {
            if self.input.try_unsubscribe(f.clone()).is_err() {
                return false;
            }
        }
        let acknowledged = tokio::time::timeout(limit, acks.wait_for(|n| *n >= want))
            .await
            .is_ok_and(|r| r.is_ok());
        acknowledged
    }

    /// The end of a drain, once nothing more will be produced: waits (up
    /// to `grace`) for the publisher to hand over every reply (it finishes
    /// when every `Replies` handle is gone), publishes `offline` (the
    /// retained status record, last of all), waits for the broker to
    /// confirm everything; what it has not confirmed by then goes to the
    /// outbox, so its inputs can still be acknowledged; then disconnects
    /// both links.
    pub async fn close(mut self, grace: Instant, offline: Vec<u8>) {
        if let Some(p) = self.publisher.take() {
            let _ = tokio::time::timeout_at(grace.into(), p).await;
        }
        self.replayer.abort();
        let offline = Outgoing {
            topic: self.status_topic.clone(),
            payload: offline.into(),
            retain: true,
            ack: None,
            properties: None,
        };
        let origin = Origin::Record;
        if !matches!(
            self.inflight.offer(Entry {
                msg: offline,
                origin
            }),
            Offer::Sent
        ) {
            log::warn!("could not publish the offline status: the output link is down");
        }
        let left = self.inflight.settle(grace).await;
        self.inflight.flush_log();
        let mut answers = self.inflight.take_answers();
        answers.extend(
            self.backlog
                .memory
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .drain(..),
        );
        let n = answers.len();
        match &self.backlog.outbox {
            Some(outbox) => {
                outbox.keep(answers);
                // Everything handed over (during the drain too) committed,
                // so the acknowledgements go out before the input link
                // disconnects.
                let committed = outbox.flush(OUTBOX_FLUSH_LIMIT).await;
                match (n, committed) {
                    (0, true) => {}
                    (_, true) => log::info!(
                        "{n} answer(s) not confirmed by the broker at shutdown are in the outbox"
                    ),
                    (_, false) => log::warn!(
                        "the outbox did not commit within {OUTBOX_FLUSH_LIMIT:?} at shutdown; answers not yet written stay unacknowledged for redelivery"
                    ),
                }
            }
            None if n > 0 => {
                for a in &answers {
                    a.lost();
                }
                log::warn!("{n} answer(s) not confirmed by the broker at shutdown (no outbox); their inputs stay unacknowledged for redelivery");
            }
            None => {}
        }
        if left > 0 && n == 0 {
            log::warn!("the offline status was not confirmed by the broker at shutdown");
        }
        let _ = self.input.try_disconnect();
        let _ = self.output.try_disconnect();
        self.stop_tx.send_replace(true);
        for task in [self.input_task, self.output_task] {
            let _ = tokio::time::timeout(Duration::from_secs(3), task).await;
        }
    }
}

/// How long a shutdown waits for the outbox to commit what it was given.
const OUTBOX_FLUSH_LIMIT: Duration = Duration::from_secs(5);

/// Capacity of rumqttc's request channel (publishes, subscribes waiting
/// for the event loop) of the output link; `inflight::WINDOW` keeps it
/// from filling.
const REQUEST_CHANNEL_CAPACITY: usize = 4096;

/// The input link's. With 3.1.1 it holds at most one acknowledgement (the
/// input task writes the others itself, `ingress::Acker`); with 5 at most
/// the Receive Maximum (65,535 at most) the broker may leave
/// unacknowledged, so an acknowledgement never finds it full. The channel
/// allocates only as it fills.
const INPUT_REQUEST_CHANNEL_CAPACITY: usize = 70_000;

/// Where the output link connects and as whom: `[uplink]` when set, else
/// the `[mqtt]` broker as its client id + `-out`.
fn output_link<'a>(
    settings: &'a MqttSettings,
    uplink: Option<&'a MqttSettings>,
) -> (&'a MqttSettings, String) {
    match uplink {
        Some(u) => (u, u.client_id.clone()),
        None => (
            settings,
            format!("{}{OUTPUT_CLIENT_SUFFIX}", settings.client_id),
        ),
    }
}

fn log_connecting(settings: &MqttSettings, uplink: Option<&MqttSettings>, output_id: &str) {
    match uplink {
        None => log::info!(
            "connecting to {} as {} (inputs) and {output_id} (outputs){}",
            settings.url(),
            settings.client_id,
            tls_note(settings)
        ),
        Some(u) => {
            log::info!(
                "connecting to {} as {} (inputs){}",
                settings.url(),
                settings.client_id,
                tls_note(settings)
            );
            log::info!(
                "connecting to the uplink {} as {output_id} (results, errors, status, health){}",
                u.url(),
                tls_note(u)
            );
        }
    }
}

/// ", MQTT 5, TLS verified against ..." for the connect log line (the
/// protocol only when it is not the default).
fn tls_note(s: &MqttSettings) -> String {
    let mut note = String::new();
    if s.protocol.is_v5() {
        note.push_str(", MQTT 5");
    }
    if let Some(t) = &s.tls {
        note.push_str(&format!(", TLS {}", t.describe()));
    }
    note
}
