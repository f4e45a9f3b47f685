//! What the operator's commands (`status`, `publish-model`) share: the
//! broker they talk to (the daemon's, from its config) and a client of it.
//!
//! MQTT 3.1.1 over rumqttc's blocking client: a command holds one short
//! conversation and exits, so it needs no tokio runtime, and every MQTT 5
//! broker takes 3.1.1 too. Connection errors are worded by `link`, as the
//! daemon's are.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{Client, Connection, MqttOptions, TlsConfiguration, Transport};

use super::client::LinkError;
use super::link::{describe, Endpoint};
use crate::config::TlsSettings;

/// The broker an operator's command talks to.
pub struct Broker {
    pub host: String,
    pub port: u16,
    /// The TLS of the daemon's output link, when the config loads.
    pub tls: Option<TlsSettings>,
    /// Its username and password, likewise.
    pub credentials: Option<(String, String)>,
}

impl Broker {
    /// `mqtt://host:port`, or `mqtts://` with TLS.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "mqtts" } else { "mqtt" };
        format!("{scheme}://{}:{}", self.host, self.port)
    }

    /// What connection errors are said against.
    fn endpoint(&self) -> Endpoint {
        Endpoint {
            url: self.url(),
            port: self.port,
            trust: self.tls.as_ref().map(|t| t.trust.to_string()),
            client_cert: self.tls.as_ref().is_some_and(|t| t.client_auth.is_some()),
            reconnect_min: Duration::ZERO,
            reconnect_max: Duration::ZERO,
        }
    }

    /// A client of this broker with a clean session, as
    /// `{name}-{pid}` (two commands at once must not take each other's
    /// connection), taking packets up to `max_packet` bytes each way.
    /// The connection attempt, made on the first poll, gives up after
    /// `timeout` (1 to 30 s); `capacity` bounds the request channel.
    pub(super) fn client(
        &self,
        name: &str,
        max_packet: usize,
        timeout: Duration,
        capacity: usize,
    ) -> (Client, Connection) {
        let mut opts = MqttOptions::new(
            format!("{name}-{}", std::process::id()),
            &self.host,
            self.port,
        );
        opts.set_keep_alive(Duration::from_secs(30))
            .set_clean_session(true)
            .set_max_packet_size(max_packet, max_packet);
        if let Some((user, pass)) = &self.credentials {
            opts.set_credentials(user, pass);
        }
        if let Some(tls) = &self.tls {
            opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                Arc::clone(&tls.client_config),
            )));
        }
        let (client, mut connection) = Client::new(opts, capacity);
        let mut net = connection.eventloop.network_options();
        net.set_connection_timeout(timeout.as_secs().clamp(1, 30));
        connection.eventloop.set_network_options(net);
        (client, connection)
    }

    /// A connection error in words an operator can act on; `connecting`:
    /// no ConnAck came yet.
    pub(super) fn describe(&self, e: rumqttc::ConnectionError, connecting: bool) -> String {
        describe(&LinkError::V4(e), &self.endpoint(), connecting)
    }
}
