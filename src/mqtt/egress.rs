//! Publishing results and errors. Workers hand messages over through a
//! bounded channel; one task feeds them to the MQTT client in order.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use rumqttc::{AsyncClient, QoS};
use tokio::sync::mpsc;

use crate::telemetry::DaemonStats;

/// Capacity of the worker -> publisher channel. When the broker is slow
/// this fills, workers wait, model queues fill, and new messages get
/// `overloaded` errors: backpressure ends in a visible answer.
pub const EGRESS_CAPACITY: usize = 4096;

#[derive(Debug)]
pub struct Outgoing {
    pub topic: String,
    pub payload: Vec<u8>,
    /// Status and health records are retained so a fleet tool that
    /// subscribes later still sees the latest.
    pub retain: bool,
}

impl Outgoing {
    pub fn message(topic: String, payload: Vec<u8>) -> Outgoing {
        Outgoing {
            topic,
            payload,
            retain: false,
        }
    }

    pub fn retained(topic: String, payload: Vec<u8>) -> Outgoing {
        Outgoing {
            topic,
            payload,
            retain: true,
        }
    }
}

/// Sending half; cloned into every worker. The publisher task ends when the
/// last clone is dropped and everything sent has been handed to the client.
#[derive(Clone)]
pub struct Egress {
    tx: mpsc::Sender<Outgoing>,
    stats: Arc<DaemonStats>,
}

impl Egress {
    pub fn channel(stats: Arc<DaemonStats>) -> (Egress, mpsc::Receiver<Outgoing>) {
        let (tx, rx) = mpsc::channel(EGRESS_CAPACITY);
        (Egress { tx, stats }, rx)
    }

    /// For worker threads: waits for room.
    pub fn send_blocking(&self, msg: Outgoing) {
        if self.tx.blocking_send(msg).is_err() {
            self.lost("publisher stopped");
        }
    }

    /// For the MQTT task, which must never wait.
    pub fn try_send(&self, msg: Outgoing) {
        if let Err(e) = self.tx.try_send(msg) {
            let why = match e {
                mpsc::error::TrySendError::Full(_) => "publish queue full",
                mpsc::error::TrySendError::Closed(_) => "publisher stopped",
            };
            self.lost(why);
        }
    }

    fn lost(&self, why: &str) {
        self.stats.publish_failures.fetch_add(1, Ordering::Relaxed);
        log::error!("a reply could not be published: {why}");
    }
}

/// The publisher task.
pub async fn run(
    mut rx: mpsc::Receiver<Outgoing>,
    client: AsyncClient,
    qos: QoS,
    stats: Arc<DaemonStats>,
) {
    while let Some(msg) = rx.recv().await {
        match client
            .publish(msg.topic, qos, msg.retain, msg.payload)
            .await
        {
            Ok(()) => {
                stats.publishes_requested.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                stats.publish_failures.fetch_add(1, Ordering::Relaxed);
                log::error!("MQTT client refused a publish: {e}");
            }
        }
    }
}
