//! Everything that touches rumqttc. [`Connection`] is the daemon's one
//! broker connection: `ingress` owns its event loop (connect, subscribe,
//! receive, hand to routing, acknowledge, reconnect), `egress` publishes
//! what `replies` produce, `ledger` accounts for the broker's
//! confirmations. `status` is the `edge-infer status` client. No other
//! module imports rumqttc.

mod egress;
mod ingress;
mod ledger;
pub mod status;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, EventLoop, LastWill, MqttOptions, QoS};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::MqttSettings;
use crate::replies::{self, ReplyReceiver};
use crate::routing::Switch;
use crate::telemetry::DaemonStats;
use ingress::Ingress;
use ledger::AckLedger;

/// The running broker connection: its event loop and publisher tasks.
/// Lives for the whole process (a reload never touches it).
pub struct Connection {
    client: AsyncClient,
    ingress: Arc<Ingress>,
    events: JoinHandle<()>,
    /// Taken when the drain waits for it to finish.
    publisher: Option<JoinHandle<()>>,
    stop_tx: watch::Sender<bool>,
    subscribed_rx: watch::Receiver<bool>,
}

impl Connection {
    /// Starts connecting (in the background, with retries) as
    /// `settings.client_id`, routing publishes through `switch` and
    /// publishing what arrives on `replies`. `online` is the retained
    /// status record sent on every connect, `last_will` the one the
    /// broker sends when the connection dies. Must run inside tokio.
    pub fn start(
        settings: &MqttSettings,
        device_id: &str,
        online: Vec<u8>,
        last_will: Vec<u8>,
        switch: Arc<Switch>,
        replies: ReplyReceiver,
        stats: Arc<DaemonStats>,
    ) -> Connection {
        let status_topic = replies::status_topic(device_id);
        let (client, eventloop) = connect(settings, &status_topic, last_will);
        let qos = qos(settings.qos);
        let ledger = Arc::new(AckLedger::default());
        let publisher = tokio::spawn(egress::run(
            replies,
            client.clone(),
            qos,
            Arc::clone(&stats),
            Arc::clone(&ledger),
        ));
        let (subscribed, subscribed_rx) = watch::channel(false);
        let ingress = Arc::new(Ingress {
            switch,
            online: Mutex::new(online),
            status_topic,
            qos,
            reconnect_min: settings.reconnect_min,
            reconnect_max: settings.reconnect_max,
            stats,
            ledger,
            subscribed,
        });
        let (stop_tx, stop_rx) = watch::channel(false);
        let events = tokio::spawn(ingress::run(
            eventloop,
            client.clone(),
            Arc::clone(&ingress),
            stop_rx,
        ));
        log::info!(
            "connecting to mqtt://{}:{} as {}",
            settings.host,
            settings.port,
            settings.client_id
        );
        Connection {
            client,
            ingress,
            events,
            publisher: Some(publisher),
            stop_tx,
            subscribed_rx,
        }
    }

    /// Turns true once the first subscriptions are acknowledged.
    pub fn subscribed(&self) -> watch::Receiver<bool> {
        self.subscribed_rx.clone()
    }

    pub fn connected(&self) -> bool {
        self.ingress.stats.connected.load(Ordering::Relaxed)
    }

    /// Why the connection cannot make progress, if it cannot.
    pub fn trouble(&self) -> Option<&'static str> {
        if self.events.is_finished() {
            return Some("the MQTT event loop has stopped");
        }
        if self.publisher.as_ref().is_none_or(|p| p.is_finished()) {
            return Some("the publisher task has stopped");
        }
        None
    }

    /// The online record to republish on every later connect.
    pub fn set_online(&self, record: Vec<u8>) {
        match self.ingress.online.lock() {
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
        let client = self.client.clone();
        let qos = self.ingress.qos;
        tokio::spawn(async move {
            if !subscribe.is_empty() {
                let subs = subscribe
                    .into_iter()
                    .map(|f| rumqttc::SubscribeFilter::new(f, qos));
                if let Err(e) = client.subscribe_many(subs).await {
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

    /// The end of a drain, once nothing more will be produced: waits (up
    /// to `grace`) for the publisher to hand over every reply and for the
    /// broker to confirm them, then disconnects and stops the event loop.
    /// The publisher finishes only when every `Replies` handle is gone.
    pub async fn close(mut self, grace: Instant) {
        if let Some(p) = self.publisher.take() {
            let _ = tokio::time::timeout_at(grace.into(), p).await;
        }
        let stats = Arc::clone(&self.ingress.stats);
        let left = self
            .ingress
            .ledger
            .settle(grace, || stats.connected.load(Ordering::Relaxed))
            .await;
        if left > 0 {
            log::warn!("{left} reply(ies) not confirmed by the broker at shutdown");
        }
        let _ = self.client.try_disconnect();
        self.stop_tx.send_replace(true);
        let _ = tokio::time::timeout(Duration::from_secs(3), self.events).await;
    }
}

/// Capacity of rumqttc's request channel (publishes, acks, subscribes
/// waiting for the event loop).
const REQUEST_CHANNEL_CAPACITY: usize = 4096;

fn qos(level: u8) -> QoS {
    if level == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    }
}

/// `last_will` is the retained record the broker publishes on
/// `status_topic` when it finds the connection dead.
fn connect(
    settings: &MqttSettings,
    status_topic: &str,
    last_will: Vec<u8>,
) -> (AsyncClient, EventLoop) {
    let mut opts = MqttOptions::new(&settings.client_id, &settings.host, settings.port);
    opts.set_last_will(LastWill::new(
        status_topic,
        last_will,
        QoS::AtLeastOnce,
        true,
    ));
    opts.set_keep_alive(settings.keep_alive)
        .set_clean_session(settings.clean_session)
        .set_max_packet_size(settings.max_packet_bytes, settings.max_packet_bytes)
        .set_request_channel_capacity(REQUEST_CHANNEL_CAPACITY)
        .set_inflight(u16::MAX / 2)
        // Acks are sent once a message is queued for a model, so a message
        // the daemon never took (shutdown) is redelivered by the broker.
        .set_manual_acks(true);
    if let Some((user, pass)) = &settings.credentials {
        opts.set_credentials(user, pass);
    }
    let (client, mut eventloop) = AsyncClient::new(opts, REQUEST_CHANNEL_CAPACITY);
    let mut net = eventloop.network_options();
    // Nagle would hold small results back for up to ~40 ms.
    net.set_tcp_nodelay(true);
    net.set_connection_timeout(10);
    eventloop.set_network_options(net);
    (client, eventloop)
}
