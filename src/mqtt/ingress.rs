//! The MQTT event loop: connects (and reconnects with capped exponential
//! backoff), subscribes on every ConnAck, and routes each incoming publish
//! to the queues of the models that listen on its topic. It never waits on
//! anything but the network: queue offers and replies are non-blocking.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
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

/// What the event loop needs to accept messages. Taken away (set to None)
/// when the daemon starts draining: from then on messages are left unacked
/// for the broker to redeliver after restart.
pub struct Accepting {
    pub queues: Vec<ModelQueue>,
    pub egress: Egress,
}

pub struct Ingress {
    pub router: Router,
    pub model_names: Vec<String>,
    pub model_stats: Vec<Arc<ModelStats>>,
    pub device_id: String,
    pub errors_topic: String,
    pub max_payload_bytes: usize,
    pub qos: QoS,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    pub stats: Arc<DaemonStats>,
    pub accepting: Mutex<Option<Accepting>>,
    /// Signalled on every acknowledged publish, so a drain can wait for the
    /// last result to reach the broker.
    pub progress: Notify,
    /// Becomes true on the first successful connection.
    pub connected_once: watch::Sender<bool>,
}

impl Ingress {
    /// Stops accepting: drops the queue senders (workers finish and exit)
    /// and returns the queues so leftovers can be collected after a timeout.
    pub fn stop_accepting(&self) -> Option<Accepting> {
        match self.accepting.lock() {
            Ok(mut guard) => guard.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        }
    }

    fn on_publish(&self, client: &AsyncClient, p: Publish) {
        let guard = match self.accepting.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
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
        if let Err(e) = client.try_ack(&p) {
            // Not lost: an unacked QoS 1 message is redelivered.
            log::warn!("could not acknowledge a message on {}: {e}", p.topic);
        }
    }

    fn dispatch(&self, acc: &Accepting, job: Job) {
        let mut routed = false;
        for i in self.router.route(&job.topic) {
            routed = true;
            let stats = &self.model_stats[i];
            stats.received.fetch_add(1, Ordering::Relaxed);
            if job.payload.len() > self.max_payload_bytes {
                let f = Failure::new(
                    ErrorCode::TooLarge,
                    format!(
                        "payload is {} bytes, the limit (limits.max_payload_bytes) is {}",
                        job.payload.len(),
                        self.max_payload_bytes
                    ),
                );
                self.reject(acc, i, &job, &f);
                continue;
            }
            match acc.queues[i].offer(job.clone()) {
                Offer::Queued => {
                    log::debug!("queued {} for model {}", job.topic, self.model_names[i])
                }
                Offer::Rejected(j) => {
                    let f = self
                        .overloaded(i, "the new message was refused (overflow = \"reject_new\")");
                    self.reject(acc, i, &j, &f);
                }
                Offer::Evicted(old) => {
                    let f = self.overloaded(i, "this message was the oldest queued and was dropped for a newer one (overflow = \"drop_oldest\")");
                    self.reject(acc, i, &old, &f);
                }
            }
        }
        if !routed {
            self.stats.unrouted.fetch_add(1, Ordering::Relaxed);
            let f = Failure::new(
                ErrorCode::NoModel,
                format!("no configured model listens on topic \"{}\" (a subscription left in the broker session?)", job.topic),
            );
            log::warn!("{}", f.message);
            self.send_error(acc, None, &job, &f);
        }
    }

    fn overloaded(&self, i: usize, what: &str) -> Failure {
        Failure::new(
            ErrorCode::Overloaded,
            format!("model '{}' queue is full: {what}", self.model_names[i]),
        )
    }

    fn reject(&self, acc: &Accepting, i: usize, job: &Job, f: &Failure) {
        self.model_stats[i].error(f.code);
        log::warn!(
            "model {} topic {}: {} {}",
            self.model_names[i],
            job.topic,
            f.code.as_str(),
            f.message
        );
        // The id is inside the payload; parsing it here would put JSON work
        // on the event loop, so overload errors carry the topic only.
        self.send_error(acc, Some(&self.model_names[i]), job, f);
    }

    fn send_error(&self, acc: &Accepting, model: Option<&str>, job: &Job, f: &Failure) {
        if let Some(payload) =
            error_json(&self.device_id, model, &job.topic, job.received_at, None, f)
        {
            acc.egress.try_send(Outgoing {
                topic: self.errors_topic.clone(),
                payload,
            });
        }
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
    let filters = ing.router.filters();
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
                log::info!(
                    "connected to the MQTT broker (connection {n}, session present: {}); subscribing to {}",
                    ack.session_present,
                    filters.join(", ")
                );
                // Subscribing can wait for room in the request channel, so it
                // is not done on the event loop itself.
                let client = client.clone();
                let subs: Vec<rumqttc::SubscribeFilter> = filters
                    .iter()
                    .map(|f| rumqttc::SubscribeFilter::new(f.clone(), ing.qos))
                    .collect();
                tokio::spawn(async move {
                    if let Err(e) = client.subscribe_many(subs).await {
                        log::error!("could not request subscriptions: {e}");
                    }
                });
            }
            Ok(Event::Incoming(Incoming::SubAck(ack))) => {
                let failed: Vec<&str> = ack
                    .return_codes
                    .iter()
                    .zip(filters.iter())
                    .filter(|(c, _)| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                    .map(|(_, f)| f.as_str())
                    .collect();
                if failed.is_empty() {
                    ing.connected_once.send_replace(true);
                    log::info!("subscribed to {} topic filter(s)", filters.len());
                } else {
                    log::error!("the broker refused subscriptions to: {}", failed.join(", "));
                }
            }
            Ok(Event::Incoming(Incoming::Publish(p))) => ing.on_publish(&client, p),
            Ok(Event::Incoming(Incoming::PubAck(_))) => {
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
                    log::warn!("cannot reach the MQTT broker ({msg}); retry {failures_in_row} in {backoff:?}");
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
