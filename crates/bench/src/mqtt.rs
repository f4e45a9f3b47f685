//! MQTT helpers shared by the echo client, the load generator and the
//! outage run: a connection with Nagle off and large packets allowed,
//! waiting for CONNACK/SUBACK, and topic filter matching.

use std::time::{Duration, Instant};

use rumqttc::{Client, Connection, Event, Incoming, MqttOptions, QoS, RecvTimeoutError};

/// Requests (publishes) that may wait for the connection's event loop.
pub const REQUEST_CAPACITY: usize = 100_000;
/// Large enough for 870 KB MobileNet JSON payloads with room to spare.
pub const MAX_PACKET: usize = 64 * 1024 * 1024;
const SETUP_TIMEOUT: Duration = Duration::from_secs(15);

pub fn connect(client_id: &str, port: u16) -> (Client, Connection) {
    connect_session(client_id, port, true)
}

/// A connection that keeps its broker session (subscriptions, and QoS 1
/// messages while away) unless `clean_session`.
pub fn connect_session(client_id: &str, port: u16, clean_session: bool) -> (Client, Connection) {
    let mut opts = MqttOptions::new(client_id, "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(60))
        .set_clean_session(clean_session)
        .set_max_packet_size(MAX_PACKET, MAX_PACKET)
        .set_request_channel_capacity(REQUEST_CAPACITY)
        // rumqttc's default (100 QoS 1 publishes awaiting PUBACK) would
        // throttle the generator when the target acknowledges an input
        // only once it is answered: at 30,000 msg/s that is 3 ms of
        // answers. The daemon uses the same window.
        .set_inflight(u16::MAX / 2);
    let (client, mut connection) = Client::new(opts, REQUEST_CAPACITY);
    let mut net = connection.eventloop.network_options();
    net.set_tcp_nodelay(true);
    net.set_connection_timeout(10);
    connection.eventloop.set_network_options(net);
    (client, connection)
}

/// Drives `connection` until the CONNACK and `subacks` SUBACKs arrived.
pub fn wait_ready(connection: &mut Connection, subacks: usize, what: &str) -> Result<(), String> {
    let start = Instant::now();
    let mut connected = false;
    let mut acked = 0;
    while !(connected && acked >= subacks) {
        let left = SETUP_TIMEOUT.checked_sub(start.elapsed()).ok_or_else(|| {
            format!("{what}: no CONNACK/SUBACK from the broker within {SETUP_TIMEOUT:?}")
        })?;
        match connection.recv_timeout(left) {
            Ok(Ok(Event::Incoming(Incoming::ConnAck(_)))) => connected = true,
            Ok(Ok(Event::Incoming(Incoming::SubAck(_)))) => acked += 1,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(format!("{what}: MQTT connection failed: {e}")),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                return Err(format!("{what}: MQTT client closed during setup"))
            }
        }
    }
    Ok(())
}

pub fn subscribe(client: &Client, filter: &str, what: &str) -> Result<(), String> {
    subscribe_qos(client, filter, QoS::AtMostOnce, what)
}

pub fn subscribe_qos(client: &Client, filter: &str, qos: QoS, what: &str) -> Result<(), String> {
    client
        .subscribe(filter, qos)
        .map_err(|e| format!("{what}: cannot subscribe to {filter}: {e}"))
}

/// MQTT filter match (`+` one level, `#` the rest). Returns what the first
/// `+` matched (for `{1}` templates), or `Some("")` if the filter has none.
pub fn matches<'a>(filter: &str, topic: &'a str) -> Option<&'a str> {
    let mut first_plus: Option<&'a str> = None;
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (None, None) => return Some(first_plus.unwrap_or("")),
            (Some("#"), _) => return Some(first_plus.unwrap_or("")),
            (Some("+"), Some(level)) => {
                first_plus.get_or_insert(level);
            }
            (Some(fl), Some(tl)) if fl == tl => {}
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn filters() {
        assert_eq!(matches("a/b", "a/b"), Some(""));
        assert_eq!(matches("a/+/c", "a/x/c"), Some("x"));
        assert_eq!(matches("a/+", "a/x/c"), None);
        assert_eq!(matches("a/#", "a/x/c"), Some(""));
        assert_eq!(matches("a/b", "a/c"), None);
    }
}
