//! The MQTT event loop: connects (and reconnects with capped exponential
//! backoff), subscribes and announces itself on every ConnAck, and routes
//! each incoming publish to the queues of the models that listen on its
//! topic. It never waits on anything but the network: queue offers and
//! replies are non-blocking.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, Incoming, Outgoing as Out, Publish, QoS,
};
use tokio::sync::{watch, Notify};

use super::egress::{Egress, Outgoing};
use crate::codec::encode::error_json;
use crate::codec::{ErrorCode, Failure};
use crate::router::Router;
use crate::telemetry::{DaemonStats, ModelStats};
use crate::time::unix_now;
use crate::worker::{Job, ModelQueue, Offer};

/// The model set the event loop routes to. Replaced as a whole on reload;
/// taken away (None) when the daemon drains, from which point messages are
/// left unacknowledged for the broker to redeliver after restart.
pub struct Accepting {
    pub router: Router,
    /// Per model, in router order: queue, name, counters.
    pub queues: Vec<ModelQueue>,
    pub names: Vec<String>,
    pub stats: Vec<Arc<ModelStats>>,
    pub egress: Egress,
    pub max_payload_bytes: usize,
    /// The retained "online" record, republished on every connect.
    pub online_status: Vec<u8>,
}

pub struct Ingress {
    pub device_id: String,
    pub errors_topic: String,
    pub status_topic: String,
    pub qos: QoS,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    pub stats: Arc<DaemonStats>,
    pub accepting: Mutex<Option<Accepting>>,
    /// Signalled on every acknowledged publish, so a drain can wait for the
    /// last reply to reach the broker.
    pub progress: Notify,
    /// Becomes true once the first subscriptions are acknowledged.
    pub subscribed: watch::Sender<bool>,
}

impl Ingress {
    pub fn lock(&self) -> MutexGuard<'_, Option<Accepting>> {
        // A panic while holding the lock leaves consistent data (every
        // field is replaced whole), so poisoning is ignored.
        match self.accepting.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Stops accepting: drops the queue senders (workers finish and exit).
    pub fn stop_accepting(&self) -> Option<Accepting> {
        self.lock().take()
    }

    fn on_publish(&self, client: &AsyncClient, p: Publish) {
        let guard = self.lock();
        let Some(acc) = guard.as_ref() else {
            // Draining: not acked, so the broker keeps it for next time.
            log::debug!("draining: left {} unacknowledged for redelivery", p.topic);
            return;
        };
        let job = Job {
            topic: p.topic.clone(),
            payload: p.payload.clone(),
            received_at: unix_now(),
            received: Instant::now(),
        };
        self.dispatch(acc, job);
        drop(guard);
        if let Err(e) = client.try_ack(&p) {
            // Not lost: an unacked QoS 1 message is redelivered.
            log::warn!("could not acknowledge a message on {}: {e}", p.topic);
        }
    }

    fn dispatch(&self, acc: &Accepting, job: Job) {
        let mut routed = false;
        for i in acc.router.route(&job.topic) {
            routed = true;
            acc.stats[i].received.fetch_add(1, Ordering::Relaxed);
            if job.payload.len() > acc.max_payload_bytes {
                let f = Failure::new(
                    ErrorCode::TooLarge,
                    format!(
                        "payload is {} bytes, the limit (limits.max_payload_bytes) is {}",
                        job.payload.len(),
                        acc.max_payload_bytes
                    ),
                );
                self.reject(acc, i, &job, &f);
                continue;
            }
            match acc.queues[i].offer(job.clone()) {
                Offer::Queued => log::debug!("queued {} for model {}", job.topic, acc.names[i]),
                Offer::Rejected(j) => {
                    let f = overloaded(
                        acc,
                        i,
                        "the new message was refused (overflow = \"reject_new\")",
                    );
                    self.reject(acc, i, &j, &f);
                }
                Offer::Evicted(old) => {
                    let f = overloaded(
                        acc,
                        i,
                        "this message was the oldest queued and was dropped for a newer one (overflow = \"drop_oldest\")",
                    );
                    for j in &old {
                        self.reject(acc, i, j, &f);
                    }
                }
            }
        }
        if !routed {
            self.stats.unrouted.fetch_add(1, Ordering::Relaxed);
            let f = Failure::new(
                ErrorCode::NoModel,
                format!(
                    "no configured model listens on topic \"{}\" (a subscription left in the broker session?)",
                    job.topic
                ),
            );
            log::warn!(topic = job.topic.as_str(), error_code = "no_model"; "{}", f.message);
            self.send_error(acc, None, &job, &f);
        }
    }

    fn reject(&self, acc: &Accepting, i: usize, job: &Job, f: &Failure) {
        acc.stats[i].error(f.code);
        log::warn!(
            model = acc.names[i].as_str(), topic = job.topic.as_str(), error_code = f.code.as_str();
            "model {} topic {}: {} {}", acc.names[i], job.topic, f.code.as_str(), f.message
        );
        // The id is inside the payload; parsing it here would put JSON work
        // on the event loop, so these errors carry the topic only.
        self.send_error(acc, Some(&acc.names[i]), job, f);
    }

    fn send_error(&self, acc: &Accepting, model: Option<&str>, job: &Job, f: &Failure) {
        if let Some(payload) = error_json(
            &self.device_id,
            model,
            Some(&job.topic),
            job.received_at,
            None,
            f,
        ) {
            acc.egress
                .try_send(Outgoing::message(self.errors_topic.clone(), payload));
        }
    }
}

fn overloaded(acc: &Accepting, i: usize, what: &str) -> Failure {
    Failure::new(
        ErrorCode::Overloaded,
        format!("model '{}' queue is full: {what}", acc.names[i]),
    )
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
                ing.stats.publishes_done.fetch_add(1, Ordering::Relaxed);
                ing.progress.notify_waiters();
            }
            Ok(Event::Outgoing(Out::Publish(_))) if ing.qos == QoS::AtMostOnce => {
                ing.stats.publishes_done.fetch_add(1, Ordering::Relaxed);
                ing.progress.notify_waiters();
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
    let (filters, online) = match ing.lock().as_ref() {
        Some(acc) => (acc.router.filters(), acc.online_status.clone()),
        None => return,
    };
    log::info!(
        "connected to the MQTT broker (connection {n}, session present: {session_present}); subscribing to {}",
        filters.join(", ")
    );
    let client = client.clone();
    let qos = ing.qos;
    let status_topic = ing.status_topic.clone();
    let stats = Arc::clone(&ing.stats);
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
        stats.publishes_requested.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = client.publish(status_topic, qos, true, online).await {
            stats.publish_failures.fetch_add(1, Ordering::Relaxed);
            log::error!("could not publish the online status: {e}");
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
