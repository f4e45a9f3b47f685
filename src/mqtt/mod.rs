//! Everything that touches rumqttc. `ingress` owns the event loop (connect,
//! subscribe, receive, route, reconnect); `egress` publishes what workers
//! produce; `status` is the `edge-infer status` client. No other module
//! imports rumqttc.

pub mod egress;
pub mod ingress;
pub mod status;

use rumqttc::{AsyncClient, EventLoop, LastWill, MqttOptions, QoS};

use crate::config::MqttSettings;

/// Capacity of rumqttc's request channel (publishes, acks, subscribes
/// waiting for the event loop).
const REQUEST_CHANNEL_CAPACITY: usize = 4096;

pub fn qos(level: u8) -> QoS {
    if level == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    }
}

/// `last_will` is the retained record the broker publishes on
/// `status_topic` when it finds the connection dead.
pub fn connect(
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
