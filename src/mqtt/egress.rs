//! The output link: a connection of its own for everything the daemon
//! publishes, so replies never queue behind inputs in one event loop (a
//! rumqttc poll reads up to ten packets but writes one, so one shared
//! connection under load reads far faster than it can answer). The
//! publisher task feeds what `replies` produced to it, in order; the link
//! republishes the online record on every connect and books the broker's
//! confirmations in the ledger.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use rumqttc::{AsyncClient, Event, EventLoop, Incoming, Outgoing, QoS};

use super::ledger::AckLedger;
use super::link::{Side, Which};
use crate::replies::ReplyReceiver;
use crate::telemetry::DaemonStats;

/// Runs until every `Replies` handle is gone and both channels are empty.
pub async fn publish(
    mut rx: ReplyReceiver,
    client: AsyncClient,
    qos: QoS,
    stats: Arc<DaemonStats>,
    ledger: Arc<AckLedger>,
) {
    while let Some(msg) = rx.recv().await {
        let what = "a reply";
        publish_booked(
            &client,
            msg.topic,
            qos,
            msg.retain,
            msg.payload,
            &stats,
            &ledger,
            what,
        )
        .await;
    }
}

/// Hands one publish to the client and books it in the ledger, or counts
/// and logs the failure: every publish of the output link goes through
/// here, so the drain's "every reply confirmed" arithmetic stays exact.
#[allow(clippy::too_many_arguments)]
async fn publish_booked(
    client: &AsyncClient,
    topic: String,
    qos: QoS,
    retain: bool,
    payload: Vec<u8>,
    stats: &DaemonStats,
    ledger: &AckLedger,
    what: &str,
) {
    match client.publish(topic, qos, retain, payload).await {
        Ok(()) => ledger.requested(),
        Err(e) => {
            stats.publish_failures.fetch_add(1, Ordering::Relaxed);
            log::error!("the MQTT client refused {what}: {e}");
        }
    }
}

pub struct Egress {
    pub client: AsyncClient,
    pub qos: QoS,
    pub status_topic: String,
    /// The retained "online" record of the current model set.
    pub online: Arc<Mutex<Vec<u8>>>,
    pub stats: Arc<DaemonStats>,
    pub ledger: Arc<AckLedger>,
}

impl Side for Egress {
    const WHICH: Which = Which::Output;

    /// Republishes the online record (the Last Will may have replaced it).
    fn on_connect(&mut self, n: u64, session_present: bool) {
        log::debug!("output link connected (connection {n}, session present: {session_present})");
        let online = match self.online.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        };
        let client = self.client.clone();
        let (qos, topic) = (self.qos, self.status_topic.clone());
        let (stats, ledger) = (Arc::clone(&self.stats), Arc::clone(&self.ledger));
        // In a task: the request can wait for room in the client's channel.
        tokio::spawn(async move {
            let what = "the online status";
            publish_booked(&client, topic, qos, true, online, &stats, &ledger, what).await;
        });
    }

    fn on_event(&mut self, event: Event, _: &mut EventLoop) {
        match event {
            Event::Incoming(Incoming::PubAck(_)) if self.qos == QoS::AtLeastOnce => {
                self.ledger.confirmed();
            }
            Event::Outgoing(Outgoing::Publish(_)) if self.qos == QoS::AtMostOnce => {
                self.ledger.confirmed();
            }
            _ => {}
        }
    }
}
