//! The input link: subscribes (again on every ConnAck), hands each
//! incoming publish to routing and acknowledges it once routing has taken
//! it. It never waits on anything but the network and the publisher:
//! routing does not block, acknowledgements are queued straight into the
//! event loop (never dropped, never waiting for channel room), and while
//! the publisher is behind it stops reading, so the broker holds what
//! comes instead of the daemon taking messages it cannot answer.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{
    AsyncClient, ClientError, Event, EventLoop, Incoming, Publish, QoS, SubscribeReasonCode,
};
use tokio::sync::watch;

use super::link::{Side, Which};
use crate::job::Job;
use crate::replies::{Pressure, PressureGauge};
use crate::routing::Switch;
use crate::telemetry::DaemonStats;
use crate::time::unix_now;

pub struct Ingress {
    pub client: AsyncClient,
    /// Where publishes go; none while draining.
    pub switch: Arc<Switch>,
    pub qos: QoS,
    pub gauge: PressureGauge,
    pub stats: Arc<DaemonStats>,
    /// Becomes true once the first subscriptions are acknowledged.
    pub subscribed: watch::Sender<bool>,
}

impl Side for Ingress {
    const WHICH: Which = Which::Input;

    async fn before_poll(&mut self, keep_alive: Duration) {
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
        }
        let paused = started.elapsed();
        self.stats
            .input_paused_us
            .fetch_add(paused.as_micros() as u64, Ordering::Relaxed);
    }

    fn on_connect(&mut self, n: u64, session_present: bool) {
        let Some(filters) = self.switch.filters() else {
            return;
        };
        log::info!(
            "connected to the MQTT broker (connection {n}, session present: {session_present}); subscribing to {}",
            filters.join(", ")
        );
        // In a task: a request can wait for room in the client's channel,
        // and the event loop must not wait.
        let client = self.client.clone();
        let qos = self.qos;
        tokio::spawn(async move {
            let subs: Vec<rumqttc::SubscribeFilter> = filters
                .into_iter()
                .map(|f| rumqttc::SubscribeFilter::new(f, qos))
                .collect();
            if let Err(e) = client.subscribe_many(subs).await {
                log::error!("could not request subscriptions: {e}");
            }
        });
    }

    fn on_event(&mut self, event: Event, eventloop: &mut EventLoop) {
        match event {
            Event::Incoming(Incoming::Publish(p)) => self.on_publish(p, eventloop),
            Event::Incoming(Incoming::SubAck(ack)) => {
                let refused = ack
                    .return_codes
                    .iter()
                    .filter(|c| matches!(c, SubscribeReasonCode::Failure))
                    .count();
                if refused == 0 {
                    log::info!("subscribed to {} topic filter(s)", ack.return_codes.len());
                    self.subscribed.send_replace(true);
                } else {
                    log::error!(
                        "the broker refused {refused} of {} subscription(s) (check its ACLs)",
                        ack.return_codes.len()
                    );
                }
            }
            Event::Incoming(Incoming::UnsubAck(_)) => {
                log::info!("unsubscribed from a topic filter no model uses any more");
            }
            _ => {}
        }
    }
}

impl Ingress {
    fn on_publish(&self, p: Publish, eventloop: &mut EventLoop) {
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
        // Through the request channel, which on this link carries only
        // acknowledgements and subscriptions; should it ever be full, into
        // the event loop's own queue, which it serves before anything new
        // (but one timer tick per request, so only as the fallback): an
        // acknowledgement is never dropped and never waits.
        if let Err(e) = self.client.try_ack(&p) {
            let request = match e {
                ClientError::TryRequest(r) | ClientError::Request(r) => r,
            };
            eventloop.pending.push_back(request);
        }
    }
}
