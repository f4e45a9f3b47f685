//! The MQTT event loop: connects (and reconnects with capped exponential
//! backoff), subscribes and announces itself on every ConnAck, hands each
//! incoming publish to routing and acknowledges it once routing has taken
//! it. It never waits on anything but the network: routing does not block.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, Incoming, Outgoing as Out, Publish, QoS,
};
use tokio::sync::watch;

use super::ledger::AckLedger;
use crate::job::Job;
use crate::routing::Switch;
use crate::telemetry::DaemonStats;
use crate::time::unix_now;

/// What the event loop shares with the rest of the connection.
pub struct Ingress {
    /// Where publishes go; none while draining.
    pub switch: Arc<Switch>,
    /// The retained "online" record of the current model set, republished
    /// on every connect.
    pub online: Mutex<Vec<u8>>,
    pub status_topic: String,
    pub qos: QoS,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    pub stats: Arc<DaemonStats>,
    pub ledger: Arc<AckLedger>,
    /// Becomes true once the first subscriptions are acknowledged.
    pub subscribed: watch::Sender<bool>,
}

impl Ingress {
    fn on_publish(&self, client: &AsyncClient, p: Publish) {
        let job = Job {
            topic: p.topic.clone(),
            payload: p.payload.clone(),
            received_at: unix_now(),
            received: Instant::now(),
        };
        if !self.switch.dispatch(job) {
            // Draining: not acked, so the broker keeps it for next time.
            log::debug!("draining: left {} unacknowledged for redelivery", p.topic);
            return;
        }
        if let Err(e) = client.try_ack(&p) {
            // Not lost: an unacked QoS 1 message is redelivered.
            log::warn!("could not acknowledge a message on {}: {e}", p.topic);
        }
    }

    fn online_record(&self) -> Vec<u8> {
        self.online
            .lock()
            .map(|g| g.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }
}

/// Runs until the client has sent DISCONNECT (after `client.disconnect()`)
/// or `stop` turns true while the broker is unreachable.
pub async fn run(
    mut eventloop: EventLoop,
    client: AsyncClient,
    ing: Arc<Ingress>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = ing.reconnect_min;
    let mut failures_in_row = 0u32;
    loop {
        let event = tokio::select! {
            ev = eventloop.poll() => ev,
            _ = stopped(&mut stop) => {
                if !ing.stats.connected.load(Ordering::Relaxed) {
                    return;
                }
                // Connected: keep polling so the DISCONNECT goes out.
                eventloop.poll().await
            }
        };
        match event {
            Ok(Event::Incoming(Incoming::ConnAck(ack))) => {
                let n = ing.stats.connections.fetch_add(1, Ordering::Relaxed) + 1;
                ing.stats.connected.store(true, Ordering::Relaxed);
                backoff = ing.reconnect_min;
                failures_in_row = 0;
                on_connect(&ing, &client, n, ack.session_present);
            }
            Ok(Event::Incoming(Incoming::SubAck(ack))) => {
                let refused = ack
                    .return_codes
                    .iter()
                    .filter(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                    .count();
                if refused == 0 {
                    log::info!("subscribed to {} topic filter(s)", ack.return_codes.len());
                    ing.subscribed.send_replace(true);
                } else {
                    log::error!(
                        "the broker refused {refused} of {} subscription(s) (check its ACLs)",
                        ack.return_codes.len()
                    );
                }
            }
            Ok(Event::Incoming(Incoming::UnsubAck(_))) => {
                log::info!("unsubscribed from a topic filter no model uses any more");
            }
            Ok(Event::Incoming(Incoming::Publish(p))) => ing.on_publish(&client, p),
            Ok(Event::Incoming(Incoming::PubAck(_))) if ing.qos == QoS::AtLeastOnce => {
                ing.ledger.confirmed();
            }
            Ok(Event::Outgoing(Out::Publish(_))) if ing.qos == QoS::AtMostOnce => {
                ing.ledger.confirmed();
            }
            Ok(Event::Outgoing(Out::Disconnect)) => {
                ing.stats.connected.store(false, Ordering::Relaxed);
                log::info!("disconnected from the MQTT broker");
                return;
            }
            Ok(_) => {}
            Err(e) => {
                let was_connected = ing.stats.connected.swap(false, Ordering::Relaxed);
                ing.stats.connection_errors.fetch_add(1, Ordering::Relaxed);
                if *stop.borrow() {
                    return;
                }
                failures_in_row += 1;
                let msg = describe(&e);
                if was_connected {
                    log::warn!(
                        "lost the MQTT broker connection: {msg}; reconnecting in {backoff:?}"
                    );
                } else if failures_in_row <= 3 || failures_in_row.is_multiple_of(10) {
                    log::warn!(
                        "cannot reach the MQTT broker ({msg}); retry {failures_in_row} in {backoff:?}"
                    );
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stopped(&mut stop) => return,
                }
                backoff = (backoff * 2).min(ing.reconnect_max);
            }
        }
    }
}

/// On every (re)connect: subscribe to the current filters and republish the
/// retained online record. Done in a task because requests can wait for
/// room in the client's channel, and the event loop must not wait.
fn on_connect(ing: &Arc<Ingress>, client: &AsyncClient, n: u64, session_present: bool) {
    let Some(filters) = ing.switch.filters() else {
        return;
    };
    let online = ing.online_record();
    log::info!(
        "connected to the MQTT broker (connection {n}, session present: {session_present}); subscribing to {}",
        filters.join(", ")
    );
    let client = client.clone();
    let qos = ing.qos;
    let status_topic = ing.status_topic.clone();
    let stats = Arc::clone(&ing.stats);
    let ledger = Arc::clone(&ing.ledger);
    tokio::spawn(async move {
        let subs: Vec<rumqttc::SubscribeFilter> = filters
            .into_iter()
            .map(|f| rumqttc::SubscribeFilter::new(f, qos))
            .collect();
        if let Err(e) = client.subscribe_many(subs).await {
            log::error!("could not request subscriptions: {e}");
        }
        // Same QoS as every other publish, and counted like them, so the
        // drain's "every reply confirmed" arithmetic stays exact.
        match client.publish(status_topic, qos, true, online).await {
            Ok(()) => ledger.requested(),
            Err(e) => {
                stats.publish_failures.fetch_add(1, Ordering::Relaxed);
                log::error!("could not publish the online status: {e}");
            }
        }
    });
}

/// Resolves once `stop` is true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

fn describe(e: &ConnectionError) -> String {
    match e {
        ConnectionError::ConnectionRefused(code) => {
            format!("broker refused the connection: {code:?}")
        }
        other => other.to_string(),
    }
}
