//! The publisher task: feeds what `replies` produced to the MQTT client,
//! in order, and books each publish in the ledger.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use rumqttc::{AsyncClient, QoS};

use super::ledger::AckLedger;
use crate::replies::ReplyReceiver;
use crate::telemetry::DaemonStats;

/// Runs until every `Replies` handle is gone and the channel is empty.
pub async fn run(
    mut rx: ReplyReceiver,
    client: AsyncClient,
    qos: QoS,
    stats: Arc<DaemonStats>,
    ledger: Arc<AckLedger>,
) {
    while let Some(msg) = rx.recv().await {
        match client
            .publish(msg.topic, qos, msg.retain, msg.payload)
            .await
        {
            Ok(()) => ledger.requested(),
            Err(e) => {
                stats.publish_failures.fetch_add(1, Ordering::Relaxed);
                log::error!("MQTT client refused a publish: {e}");
            }
        }
    }
}
