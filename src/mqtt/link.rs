//! One broker connection's event loop, shared by the input and the output
//! link: poll, reconnect with capped exponential backoff, log what happens
//! without flooding, stop on request. What each link does with its events
//! is its [`Side`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::client::{Event, EventLoop, LinkError};

use crate::config::MqttSettings;
use crate::telemetry::{DaemonStats, LinkStats};

/// What both links share: the daemon's broker counters, whether each link
/// is up (the daemon counts as connected only while both are), and where
/// each one connects.
pub struct Links {
    pub stats: Arc<DaemonStats>,
    pub input_up: AtomicBool,
    pub output_up: AtomicBool,
    pub input: Endpoint,
    pub output: Endpoint,
}

/// Where one link connects, its backoff, and what its errors are said
/// against.
pub struct Endpoint {
    /// `mqtt://host:port` or `mqtts://host:port`.
    pub url: String,
    pub port: u16,
    /// With TLS: what the broker's certificate must chain to, in words
    /// ("ca_file /etc/edge-infer/ca.pem").
    pub trust: Option<String>,
    /// With TLS: whether a client certificate is configured.
    pub client_cert: bool,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
}

impl Endpoint {
    pub fn of(s: &MqttSettings) -> Endpoint {
        Endpoint {
            url: s.url(),
            port: s.port,
            trust: s.tls.as_ref().map(|t| t.trust.to_string()),
            client_cert: s.tls.as_ref().is_some_and(|t| t.client_auth.is_some()),
            reconnect_min: s.reconnect_min,
            reconnect_max: s.reconnect_max,
        }
    }
}

impl Links {
    fn set_up(&self, which: Which, up: bool) -> bool {
        let was = self.flag(which).swap(up, Ordering::Relaxed);
        self.link_stats(which)
            .connected
            .store(up, Ordering::Relaxed);
        let both = self.input_up.load(Ordering::Relaxed) && self.output_up.load(Ordering::Relaxed);
        self.stats.connected.store(both, Ordering::Relaxed);
        was
    }

    fn endpoint(&self, which: Which) -> &Endpoint {
        match which {
            Which::Input => &self.input,
            Which::Output => &self.output,
        }
    }

    fn link_stats(&self, which: Which) -> &LinkStats {
        match which {
            Which::Input => &self.stats.input_link,
            Which::Output => &self.stats.output_link,
        }
    }

    fn flag(&self, which: Which) -> &AtomicBool {
        match which {
            Which::Input => &self.input_up,
            Which::Output => &self.output_up,
        }
    }

    pub fn is_up(&self, which: Which) -> bool {
        self.flag(which).load(Ordering::Relaxed)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    /// Subscriptions and inputs.
    Input,
    /// Results, errors, status and health.
    Output,
}

impl Which {
    fn name(self) -> &'static str {
        match self {
            Which::Input => "input",
            Which::Output => "output",
        }
    }
}

/// What a link does with its connection's events.
pub trait Side {
    const WHICH: Which;

    /// Called before every poll while connected; the input link writes
    /// its acknowledgements here, and waits while the publisher is behind.
    /// `keep_alive` bounds the wait, so the link still polls (and pings)
    /// in time.
    async fn before_poll(&mut self, _keep_alive: Duration, _eventloop: &mut EventLoop) {}

    /// A ConnAck: the `n`th successful connection of this link.
    fn on_connect(&mut self, n: u64, session_present: bool);

    /// Every other event.
    fn on_event(&mut self, event: Event);

    /// The connection failed; called before the next reconnect attempt,
    /// with nothing in between (one tokio thread), so a side can take back
    /// or drop what rumqttc was holding.
    fn on_down(&mut self, _eventloop: &mut EventLoop) {}
}

/// Runs until the client has sent DISCONNECT or `stop` turns true while
/// the broker is unreachable.
pub async fn drive<S: Side>(
    mut side: S,
    mut eventloop: EventLoop,
    links: Arc<Links>,
    mut stop: watch::Receiver<bool>,
) {
    let which = S::WHICH;
    let endpoint = links.endpoint(which);
    links.link_stats(which).set_broker(endpoint.url.clone());
    let keep_alive = eventloop.keep_alive();
    let mut backoff = endpoint.reconnect_min;
    let mut failures_in_row = 0u32;
    let mut connections = 0u64;
    let mut down_since: Option<Instant> = None;
    let mut heard = Heard::new();
    loop {
        if links.is_up(which) {
            side.before_poll(keep_alive, &mut eventloop).await;
        }
        let event = tokio::select! {
            ev = eventloop.poll() => ev,
            _ = stopped(&mut stop) => {
                if !links.is_up(which) {
                    return;
                }
                // Connected: keep polling so the DISCONNECT goes out.
                eventloop.poll().await
            }
        };
        match event {
            Ok(Event::ConnAck { session_present }) => {
                connections += 1;
                if which == Which::Input {
                    links.stats.connections.fetch_add(1, Ordering::Relaxed);
                }
                links.set_up(which, true);
                links.link_stats(which).set_last_error(None);
                if let Some(since) = down_since.take() {
                    if which == Which::Input {
                        links
                            .stats
                            .offline_us
                            .fetch_add(since.elapsed().as_micros() as u64, Ordering::Relaxed);
                    }
                    log::info!(
                        "{} link: back after {:.1} s offline",
                        which.name(),
                        since.elapsed().as_secs_f64()
                    );
                }
                backoff = endpoint.reconnect_min;
                failures_in_row = 0;
                heard = Heard::new();
                side.on_connect(connections, session_present);
            }
            Ok(Event::Disconnected) => {
                links.set_up(which, false);
                log::info!("{} link: disconnected from the MQTT broker", which.name());
                return;
            }
            Ok(event) => {
                if event.is_from_broker() {
                    eventloop.take_as_ping_answer();
                    heard.last = Instant::now();
                }
                heard.see_ping(&event, which, keep_alive, links.link_stats(which));
                side.on_event(event)
            }
            Err(e) => {
                side.on_down(&mut eventloop);
                let was_up = links.set_up(which, false);
                links
                    .stats
                    .connection_errors
                    .fetch_add(1, Ordering::Relaxed);
                if *stop.borrow() {
                    return;
                }
                down_since.get_or_insert_with(Instant::now);
                failures_in_row += 1;
                let msg = describe(&e, endpoint, !was_up);
                links.link_stats(which).set_last_error(Some(msg.clone()));
                if was_up {
                    log::warn!(
                        "{} link: lost the MQTT broker connection to {}: {msg} (the broker's last packet came {:.1} s before); reconnecting in {backoff:?}",
                        which.name(),
                        endpoint.url,
                        heard.last.elapsed().as_secs_f64()
                    );
                } else if failures_in_row <= 3 || failures_in_row.is_multiple_of(10) {
                    log::warn!(
                        "{} link: cannot reach the MQTT broker at {} ({msg}); retry {failures_in_row} in {backoff:?}",
                        which.name(),
                        endpoint.url
                    );
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stopped(&mut stop) => return,
                }
                backoff = (backoff * 2).min(endpoint.reconnect_max);
            }
        }
    }
}

/// What the link heard from the broker on the current connection: when it
/// last sent anything (worded into a lost connection, which tells a dead
/// path from a busy broker), and whether a keep-alive interval passed with
/// its data but no answer to our ping (see
/// [`EventLoop::take_as_ping_answer`], which keeps the connection up then).
/// The latter is counted each time and said once per connection: the
/// broker's queue for this client is long or full, and a full one drops
/// messages too.
struct Heard {
    /// Set by the caller for every packet from the broker.
    last: Instant,
    /// The last ping has had no answer yet.
    ping_unanswered: bool,
    told: bool,
}

impl Heard {
    fn new() -> Heard {
        Heard {
            last: Instant::now(),
            ping_unanswered: false,
            told: false,
        }
    }

    fn see_ping(&mut self, event: &Event, which: Which, keep_alive: Duration, stats: &LinkStats) {
        match event {
            Event::PingAnswered => self.ping_unanswered = false,
            Event::PingSent => {
                if self.ping_unanswered {
                    stats.pings_unanswered.fetch_add(1, Ordering::Relaxed);
                    if !self.told {
                        self.told = true;
                        log::info!(
                            "{} link: the broker sent data but no answer to a keep-alive ping for {} s: its queue for this client is long or full (Mosquitto drops what would exceed `max_queued_messages`, QoS 0 messages and ping answers alike); the connection stays up (said once per connection)",
                            which.name(),
                            keep_alive.as_secs()
                        );
                    }
                }
                self.ping_unanswered = true;
            }
            _ => {}
        }
    }
}

/// Resolves once `stop` is true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Why a connection failed, in words an operator can act on. TLS failures
/// are read from rustls's typed errors wherever rumqttc wrapped them (see
/// [`rustls_error`]); the rest is rumqttc's own text.
pub(super) fn describe(e: &LinkError, to: &Endpoint, connecting: bool) -> String {
    if let Some(reason) = e.refusal() {
        return format!("broker refused the connection: {reason}");
    }
    if let Some(tls) = rustls_error(e) {
        return describe_tls(tls, to);
    }
    let closed = io_error(e).is_some_and(|io| {
        matches!(
            io.kind(),
            std::io::ErrorKind::UnexpectedEof
                | std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::ConnectionAborted
        )
    });
    // A closed connection is no proof, so these are questions; but they
    // are what a wrong port looks like. Mosquitto resets a plaintext
    // CONNECT on a TLS listener, and closes on a TLS ClientHello on a
    // plaintext one.
    match (closed, connecting, to.trust.is_some(), e.is_tls()) {
        (true, _, true, true) => format!(
            "no TLS handshake: the broker closed the connection during it ({e}); is port {} a plaintext MQTT listener?",
            to.port
        ),
        (true, true, false, _) => format!(
            "the broker closed the connection before answering CONNECT ({e}); is port {} a TLS listener? set tls = true",
            to.port
        ),
        _ => e.to_string(),
    }
}

/// The first I/O error in a connection error's chain.
fn io_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a std::io::Error> {
    let mut next = Some(e);
    while let Some(err) = next {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return Some(io);
        }
        next = err.source();
    }
    None
}

/// A certificate's subject name as webpki shows it (`DnsName("a.b")`,
/// `IpAddress(10.0.0.1)`), as written in a config (`a.b`, `10.0.0.1`).
fn plain_name(shown: &str) -> &str {
    for (open, close) in [
        ("DnsName(\"", "\")"),
        ("IpAddress(", ")"),
        ("UniformResourceIdentifier(\"", "\")"),
    ] {
        if let Some(inner) = shown.strip_prefix(open).and_then(|s| s.strip_suffix(close)) {
            return inner;
        }
    }
    shown
}

/// The rustls error behind a connection error, if any: rumqttc returns
/// it inside `Tls(Io(io::Error))` when the handshake fails, and inside an
/// I/O error of the first read when the broker's verdict on the client's
/// certificate arrives after the client's side of the handshake is done
/// (TLS 1.3). `io::Error::source` skips the error it wraps, so each I/O
/// error is opened with `get_ref`.
fn rustls_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut next = Some(e);
    while let Some(err) = next {
        if let Some(r) = err.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        if let Some(inner) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            return rustls_error(inner);
        }
        next = err.source();
    }
    None
}

/// A rustls failure in words, with what to check.
fn describe_tls(e: &rustls::Error, to: &Endpoint) -> String {
    use rustls::{AlertDescription as Alert, CertificateError as Cert, Error};
    let trust = to.trust.as_deref().unwrap_or("the configured CA");
    match e {
        Error::InvalidCertificate(cert) => match cert {
            Cert::Expired => "the broker's certificate has expired (is this device's clock right?)".into(),
            Cert::ExpiredContext { time, not_after } => format!(
                "the broker's certificate expired {} ago, at {} (this device's clock reads {})",
                crate::time::human_secs(time.as_secs().saturating_sub(not_after.as_secs())),
                crate::time::utc(not_after.as_secs()),
                crate::time::utc(time.as_secs())
            ),
            Cert::NotValidYet => "the broker's certificate is not valid yet: is this device's clock right?".into(),
            Cert::NotValidYetContext { time, not_before } => format!(
                "the broker's certificate is valid only from {}, and this device's clock reads {}: is the clock right?",
                crate::time::utc(not_before.as_secs()),
                crate::time::utc(time.as_secs())
            ),
            Cert::UnknownIssuer => format!(
                "the broker's certificate is not signed by {trust} (unknown issuer): give ca_file the CA that issued the broker's certificate"
            ),
            Cert::BadSignature => format!(
                "the broker's certificate chain has a bad signature (checked against {trust})"
            ),
            Cert::NotValidForName => {
                "the broker's certificate is not for this host name or address (host)".into()
            }
            Cert::NotValidForNameContext { expected, presented } => format!(
                "the broker's certificate is for {}, not host {}: set host to a name the certificate holds, or reissue it with this one",
                if presented.is_empty() {
                    "no name at all".to_string()
                } else {
                    presented
                        .iter()
                        .map(|n| plain_name(n))
                        .collect::<Vec<_>>()
                        .join(", ")
                },
                expected.to_str()
            ),
            other => format!("the broker's certificate was refused: {other}"),
        },
        Error::AlertReceived(alert) => match (alert, to.client_cert) {
            (Alert::CertificateRequired, false)
            | (Alert::HandshakeFailure, false)
            | (Alert::BadCertificate, false) => format!(
                "the broker asked for a client certificate and none is configured (TLS alert {alert:?}): set client_cert_file and client_key_file"
            ),
            (
                Alert::BadCertificate
                | Alert::UnknownCA
                | Alert::CertificateUnknown
                | Alert::CertificateExpired
                | Alert::CertificateRevoked
                | Alert::UnsupportedCertificate
                | Alert::DecryptError
                | Alert::AccessDenied
                | Alert::CertificateRequired,
                true,
            ) => format!(
                "the broker refused our client certificate (TLS alert {alert:?}): is client_cert_file signed by a CA the broker trusts, and still valid?"
            ),
            (Alert::ProtocolVersion, _) => {
                "the broker speaks neither TLS 1.2 nor TLS 1.3 (TLS alert ProtocolVersion)".into()
            }
            _ => format!("the broker ended the TLS handshake (TLS alert {alert:?})"),
        },
        Error::InvalidMessage(_) | Error::InappropriateMessage { .. } | Error::PeerSentOversizedRecord => {
            format!(
                "no TLS handshake: what came back is not TLS ({e}); is port {} a plaintext MQTT listener?",
                to.port
            )
        }
        other => format!("TLS: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(trust: Option<&str>, client_cert: bool) -> Endpoint {
        Endpoint {
            url: "mqtts://broker:8883".into(),
            port: 8883,
            trust: trust.map(str::to_string),
            client_cert,
            reconnect_min: Duration::from_millis(10),
            reconnect_max: Duration::from_secs(1),
        }
    }

    /// As rumqttc returns a failed handshake: the rustls error inside an
    /// I/O error inside its TLS error.
    fn handshake(e: rustls::Error) -> LinkError {
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, e);
        LinkError::V4(rumqttc::ConnectionError::Tls(rumqttc::TlsError::Io(io)))
    }

    #[test]
    fn tls_failures_are_read_from_rustls_errors_wherever_they_are_wrapped() {
        use rustls::{AlertDescription, CertificateError};
        let to = endpoint(Some("ca_file /etc/edge-infer/ca.pem"), false);
        let e = handshake(CertificateError::UnknownIssuer.into());
        assert_eq!(
            describe(&e, &to, true),
            "the broker's certificate is not signed by ca_file /etc/edge-infer/ca.pem (unknown issuer): give ca_file the CA that issued the broker's certificate"
        );
        // The broker's verdict on the client arrives with the first read
        // (TLS 1.3): an I/O error of the MQTT layer.
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(AlertDescription::CertificateRequired),
        );
        let e = LinkError::V4(rumqttc::ConnectionError::MqttState(
            rumqttc::StateError::Io(io),
        ));
        assert!(
            describe(&e, &to, true)
                .starts_with("the broker asked for a client certificate and none is configured"),
            "{}",
            describe(&e, &to, true)
        );
        let with_cert = endpoint(Some("ca_file x"), true);
        let e = handshake(rustls::Error::AlertReceived(AlertDescription::UnknownCA));
        assert!(describe(&e, &with_cert, true)
            .starts_with("the broker refused our client certificate (TLS alert UnknownCA)"));
    }

    #[test]
    fn names_read_as_written_in_a_config() {
        assert_eq!(plain_name("DnsName(\"broker.example\")"), "broker.example");
        assert_eq!(plain_name("IpAddress(10.0.0.1)"), "10.0.0.1");
        assert_eq!(plain_name("DirectoryName"), "DirectoryName");
    }

    #[test]
    fn a_refused_v5_connect_is_worded_with_its_reason_code() {
        use rumqttc::v5::mqttbytes::v5::ConnectReturnCode;
        let e = LinkError::V5(rumqttc::v5::ConnectionError::ConnectionRefused(
            ConnectReturnCode::NotAuthorized,
        ));
        assert_eq!(
            describe(&e, &endpoint(None, false), true),
            "broker refused the connection: NotAuthorized (MQTT 5 reason code 0x87)"
        );
        let e = LinkError::V4(rumqttc::ConnectionError::ConnectionRefused(
            rumqttc::ConnectReturnCode::NotAuthorized,
        ));
        assert_eq!(
            describe(&e, &endpoint(None, false), true),
            "broker refused the connection: NotAuthorized"
        );
    }

    #[test]
    fn other_errors_keep_rumqttc_s_words() {
        let e = LinkError::V4(rumqttc::ConnectionError::NetworkTimeout);
        assert_eq!(
            describe(&e, &endpoint(None, false), true),
            "Network timeout"
        );
    }
}
