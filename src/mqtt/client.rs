//! The protocol layer: one client and one event loop type over rumqttc's
//! MQTT 3.1.1 (`rumqttc::AsyncClient`) and MQTT 5 (`rumqttc::v5`) APIs,
//! with only the operations the links use, their events in one type of
//! our own, and one error type `link` words. The rest of `mqtt` never
//! names a rumqttc type of either protocol (the `status` client aside,
//! which stays on 3.1.1).
//!
//! rumqttc's two APIs are parallel but not shared (separate packet,
//! options, state and error types), so each operation is a `match` with
//! one arm per protocol; a generic over a trait would need as much code
//! and leak rumqttc's associated types into every link.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5;

use crate::config::{MqttSettings, Protocol};
use crate::job::Properties;

/// QoS of a subscription or publish: the daemon uses only 0 and 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QoS {
    AtMostOnce,
    AtLeastOnce,
}

impl QoS {
    pub fn of(level: u8) -> QoS {
        if level == 0 {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        }
    }

    fn v4(self) -> rumqttc::QoS {
        match self {
            QoS::AtMostOnce => rumqttc::QoS::AtMostOnce,
            QoS::AtLeastOnce => rumqttc::QoS::AtLeastOnce,
        }
    }

    fn v5(self) -> v5::mqttbytes::QoS {
        match self {
            QoS::AtMostOnce => v5::mqttbytes::QoS::AtMostOnce,
            QoS::AtLeastOnce => v5::mqttbytes::QoS::AtLeastOnce,
        }
    }
}

/// A publish the broker sent us.
#[derive(Debug)]
pub struct Received {
    pub topic: String,
    pub payload: Bytes,
    /// Whether it needs a PUBACK (QoS 1; QoS 2 is never subscribed).
    pub at_least_once: bool,
    pub pkid: u16,
    /// MQTT 5 only: the request metadata, when it carries any.
    pub properties: Option<Properties>,
}

/// What a link's event loop reports, reduced to what the links act on.
#[derive(Debug)]
pub enum Event {
    /// The broker accepted the connection.
    ConnAck {
        session_present: bool,
    },
    Publish(Received),
    /// The broker confirmed our publish with this packet id.
    PubAck(u16),
    /// The broker refused our publish with this packet id (MQTT 5 only: a
    /// PUBACK whose reason code is an error), and why, in words.
    PubRefused {
        pkid: u16,
        reason: String,
    },
    /// The broker answered a SUBSCRIBE: how many filters it granted and
    /// how many it refused.
    SubAck {
        granted: usize,
        refused: usize,
    },
    UnsubAck,
    /// Our next publish left with this packet id (0 at QoS 0).
    PublishWritten(u16),
    /// A PUBACK from the request channel went out.
    AckWritten,
    /// Our DISCONNECT went out.
    Disconnected,
    /// A keep-alive PINGREQ went out.
    PingSent,
    /// The broker answered a ping.
    PingAnswered,
    /// The rest: nothing to do.
    Other,
}

impl Event {
    /// Whether the broker sent it (rather than rumqttc reporting a write).
    pub fn is_from_broker(&self) -> bool {
        match self {
            Event::ConnAck { .. }
            | Event::Publish(_)
            | Event::PubAck(_)
            | Event::PubRefused { .. }
            | Event::SubAck { .. }
            | Event::UnsubAck
            | Event::PingAnswered => true,
            // `Other` mixes both directions (QoS 2 packets the daemon
            // never uses): never taken as the broker's.
            Event::PublishWritten(_)
            | Event::AckWritten
            | Event::Disconnected
            | Event::PingSent
            | Event::Other => false,
        }
    }
}

/// A client handle: cheap to clone, usable from any thread.
#[derive(Clone)]
pub enum Client {
    V4(rumqttc::AsyncClient),
    V5(v5::AsyncClient),
}

/// The request channel is full or the event loop is gone.
#[derive(Debug)]
pub struct Refused(pub String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Client {
    /// Hands a publish to the event loop without waiting. `properties`
    /// are sent only with MQTT 5 (3.1.1 has nowhere to carry them).
    pub fn try_publish(
        &self,
        topic: &str,
        qos: QoS,
        retain: bool,
        payload: &Bytes,
        properties: Option<&Properties>,
    ) -> Result<(), Refused> {
        match self {
            Client::V4(c) => c
                .try_publish(topic, qos.v4(), retain, payload.to_vec())
                .map_err(|e| Refused(e.to_string())),
            Client::V5(c) => {
                let result = match properties {
                    Some(p) => c.try_publish_with_properties(
                        topic,
                        qos.v5(),
                        retain,
                        payload.clone(),
                        publish_properties(p),
                    ),
                    None => c.try_publish(topic, qos.v5(), retain, payload.clone()),
                };
                result.map_err(|e| Refused(e.to_string()))
            }
        }
    }

    /// Queues the PUBACK of packet `pkid` without waiting; Err when the
    /// request channel has no room (the caller queues it in the event
    /// loop instead, see [`EventLoop::queue_ack`]).
    pub fn try_ack(&self, pkid: u16) -> Result<(), Refused> {
        match self {
            Client::V4(c) => {
                let mut p = rumqttc::Publish::new("", rumqttc::QoS::AtLeastOnce, Vec::new());
                p.pkid = pkid;
                c.try_ack(&p).map_err(|e| Refused(e.to_string()))
            }
            Client::V5(c) => {
                let mut p =
                    v5::mqttbytes::v5::Publish::new("", v5::mqttbytes::QoS::AtLeastOnce, "", None);
                p.pkid = pkid;
                c.try_ack(&p).map_err(|e| Refused(e.to_string()))
            }
        }
    }

    /// One SUBSCRIBE with every filter, waiting for channel room.
    pub async fn subscribe_many(&self, filters: Vec<String>, qos: QoS) -> Result<(), Refused> {
        match self {
            Client::V4(c) => c
                .subscribe_many(
                    filters
                        .into_iter()
                        .map(|f| rumqttc::SubscribeFilter::new(f, qos.v4())),
                )
                .await
                .map_err(|e| Refused(e.to_string())),
            Client::V5(c) => c
                .subscribe_many(
                    filters
                        .into_iter()
                        .map(|f| v5::mqttbytes::v5::Filter::new(f, qos.v5())),
                )
                .await
                .map_err(|e| Refused(e.to_string())),
        }
    }

    pub async fn unsubscribe(&self, filter: String) -> Result<(), Refused> {
        match self {
            Client::V4(c) => c
                .unsubscribe(filter)
                .await
                .map_err(|e| Refused(e.to_string())),
            Client::V5(c) => c
                .unsubscribe(filter)
                .await
                .map_err(|e| Refused(e.to_string())),
        }
    }

    /// Queues an UNSUBSCRIBE without waiting.
    pub fn try_unsubscribe(&self, filter: String) -> Result<(), Refused> {
        match self {
            Client::V4(c) => c
                .try_unsubscribe(filter)
                .map_err(|e| Refused(e.to_string())),
            Client::V5(c) => c
                .try_unsubscribe(filter)
                .map_err(|e| Refused(e.to_string())),
        }
    }

    pub fn try_disconnect(&self) -> Result<(), Refused> {
        match self {
            Client::V4(c) => c.try_disconnect().map_err(|e| Refused(e.to_string())),
            Client::V5(c) => c.try_disconnect().map_err(|e| Refused(e.to_string())),
        }
    }
}

/// The v5 properties of a publish we send (an answer to a v5 request).
fn publish_properties(p: &Properties) -> v5::mqttbytes::v5::PublishProperties {
    v5::mqttbytes::v5::PublishProperties {
        response_topic: p.response_topic.clone(),
        correlation_data: p.correlation_data.clone(),
        user_properties: p.user_properties.clone(),
        content_type: p.content_type.clone(),
        ..Default::default()
    }
}

/// The request metadata of a v5 publish; None when it has none.
fn request_properties(p: Option<v5::mqttbytes::v5::PublishProperties>) -> Option<Properties> {
    let p = p?;
    let props = Properties {
        response_topic: p.response_topic,
        correlation_data: p.correlation_data,
        user_properties: p.user_properties,
        content_type: p.content_type,
    };
    (props != Properties::default()).then_some(props)
}

/// One connection's event loop. Both boxed: one lives per link, and
/// the two differ by hundreds of bytes.
pub enum EventLoop {
    V4(Box<rumqttc::EventLoop>),
    V5(Box<v5::EventLoop>),
}

impl EventLoop {
    /// The next event; on an error the connection is down, and the next
    /// call reconnects.
    pub async fn poll(&mut self) -> Result<Event, LinkError> {
        match self {
            EventLoop::V4(el) => el.poll().await.map(v4_event).map_err(LinkError::V4),
            EventLoop::V5(el) => el.poll().await.map(v5_event).map_err(LinkError::V5),
        }
    }

    pub fn keep_alive(&self) -> Duration {
        match self {
            EventLoop::V4(el) => el.mqtt_options.keep_alive(),
            EventLoop::V5(el) => el.options.keep_alive(),
        }
    }

    /// Takes a packet the broker sent as the answer to an unanswered ping.
    /// Called for every packet from the broker as the link takes it.
    ///
    /// rumqttc ends the connection at the next keep-alive tick when the
    /// last PINGREQ has had no PINGRESP, whatever else came meanwhile.
    /// Newer Mosquitto releases (2.0.21, Debian 13's, for one; 2.0.11
    /// queues it) drop every packet they would add to a full queue for a
    /// client (`max_queued_messages`, which a flood fills), PINGRESP
    /// included (eclipse-mosquitto/mosquitto#3542), and every version
    /// queues the answer behind what it already holds for the client:
    /// either way a link that read all the time was dropped and
    /// reconnected. A packet read after the PINGREQ went out shows what its
    /// answer would: the connection carries the broker's data. rumqttc
    /// writes a PINGREQ only when it holds no unreturned events, so every
    /// event it returns while a ping is awaited was read after it. A
    /// connection that dies with data in flight is still found, one
    /// keep-alive later than rumqttc alone would.
    pub fn take_as_ping_answer(&mut self) {
        match self {
            EventLoop::V4(el) => el.state.await_pingresp = false,
            EventLoop::V5(el) => el.state.await_pingresp = false,
        }
    }

    /// Whether [`EventLoop::write_acks`] can write to this protocol's
    /// connection: rumqttc exposes it for 3.1.1 only.
    pub fn writes_acks(&self) -> bool {
        matches!(self, EventLoop::V4(_))
    }

    /// Writes the PUBACKs of these packets into the connection's write
    /// buffer and sends them, all in one flush; false if there is no
    /// connection to write to (or the protocol's is not reachable, see
    /// [`EventLoop::writes_acks`]). Only between polls: it writes where
    /// rumqttc writes, as rumqttc would (a PUBACK changes no state of its
    /// own besides the event it reports).
    pub async fn write_acks(
        &mut self,
        pkids: impl Iterator<Item = u16>,
        timeout: Duration,
    ) -> Result<bool, Refused> {
        let EventLoop::V4(el) = self else {
            return Ok(false);
        };
        let Some(network) = el.network.as_mut() else {
            return Ok(false);
        };
        for pkid in pkids {
            network
                .write(rumqttc::Packet::PubAck(rumqttc::PubAck::new(pkid)))
                .await
                .map_err(|e| Refused(e.to_string()))?;
        }
        match tokio::time::timeout(timeout, network.flush()).await {
            Ok(flushed) => flushed.map(|()| true).map_err(|e| Refused(e.to_string())),
            Err(_) => Err(Refused(format!(
                "the broker took no data for {} s",
                timeout.as_secs()
            ))),
        }
    }

    /// Queues the PUBACK of packet `pkid` in the event loop's own queue,
    /// which it serves before its request channel (one request per timer
    /// tick, so only as the fallback of [`Client::try_ack`]).
    pub fn queue_ack(&mut self, pkid: u16) {
        match self {
            EventLoop::V4(el) => el
                .pending
                .push_back(rumqttc::Request::PubAck(rumqttc::PubAck::new(pkid))),
            EventLoop::V5(el) => {
                el.pending
                    .push_back(v5::Request::PubAck(v5::mqttbytes::v5::PubAck::new(
                        pkid, None,
                    )))
            }
        }
    }

    /// Drops what rumqttc holds for a connection that failed, in its
    /// request channel or queued to be sent on the next one:
    /// acknowledgements, which written there could acknowledge other
    /// messages (a broker reuses packet ids), and subscriptions, which the
    /// next ConnAck requests again as they then stand (a resumed session
    /// would otherwise get both, and a second SUBSCRIBE makes the broker
    /// send the filter's retained messages again; after a reload the stale
    /// one may name a filter no model takes any more). Unsubscriptions
    /// stay: with a resumed session the broker still has what they leave.
    pub fn drop_stale_requests(&mut self) {
        match self {
            EventLoop::V4(el) => {
                el.clean();
                el.pending.retain(|r| {
                    !matches!(
                        r,
                        rumqttc::Request::PubAck(_) | rumqttc::Request::Subscribe(_)
                    )
                });
            }
            EventLoop::V5(el) => {
                el.clean();
                el.pending
                    .retain(|r| !matches!(r, v5::Request::PubAck(_) | v5::Request::Subscribe(_)));
            }
        }
    }

    /// What rumqttc has queued in `pending`, by kind, in order.
    #[cfg(test)]
    pub fn queued_requests(&self) -> Vec<&'static str> {
        match self {
            EventLoop::V4(el) => el
                .pending
                .iter()
                .map(|r| match r {
                    rumqttc::Request::PubAck(_) => "puback",
                    rumqttc::Request::Subscribe(_) => "subscribe",
                    rumqttc::Request::Unsubscribe(_) => "unsubscribe",
                    rumqttc::Request::Publish(_) => "publish",
                    _ => "other",
                })
                .collect(),
            EventLoop::V5(el) => el
                .pending
                .iter()
                .map(|r| match r {
                    v5::Request::PubAck(_) => "puback",
                    v5::Request::Subscribe(_) => "subscribe",
                    v5::Request::Unsubscribe(_) => "unsubscribe",
                    v5::Request::Publish(_) => "publish",
                    _ => "other",
                })
                .collect(),
        }
    }

    /// Events rumqttc read before a failure and still holds (it returns
    /// them one per poll, and keeps them across a reconnect).
    pub fn take_buffered(&mut self) -> Vec<Event> {
        match self {
            EventLoop::V4(el) => std::mem::take(&mut el.state.events)
                .into_iter()
                .map(v4_event)
                .collect(),
            EventLoop::V5(el) => std::mem::take(&mut el.state.events)
                .into_iter()
                .map(v5_event)
                .collect(),
        }
    }

    /// Forgets every request rumqttc holds (unconfirmed publishes it would
    /// resend, and what waits in its channel): after a dropped link the
    /// output side keeps its own copies.
    pub fn forget_requests(&mut self) {
        match self {
            EventLoop::V4(el) => {
                el.clean();
                el.pending.clear();
            }
            EventLoop::V5(el) => {
                el.clean();
                el.pending.clear();
            }
        }
    }
}

fn v4_event(e: rumqttc::Event) -> Event {
    use rumqttc::{Event as E, Incoming as I, Outgoing as O};
    match e {
        E::Incoming(I::ConnAck(ack)) => Event::ConnAck {
            session_present: ack.session_present,
        },
        E::Incoming(I::Publish(p)) => Event::Publish(Received {
            topic: p.topic,
            payload: p.payload,
            at_least_once: p.qos == rumqttc::QoS::AtLeastOnce,
            pkid: p.pkid,
            properties: None,
        }),
        E::Incoming(I::PubAck(ack)) => Event::PubAck(ack.pkid),
        E::Incoming(I::SubAck(ack)) => {
            let refused = ack
                .return_codes
                .iter()
                .filter(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                .count();
            Event::SubAck {
                granted: ack.return_codes.len() - refused,
                refused,
            }
        }
        E::Incoming(I::UnsubAck(_)) => Event::UnsubAck,
        E::Outgoing(O::Publish(pkid)) => Event::PublishWritten(pkid),
        E::Outgoing(O::PubAck(_)) => Event::AckWritten,
        E::Outgoing(O::Disconnect) => Event::Disconnected,
        E::Outgoing(O::PingReq) => Event::PingSent,
        E::Incoming(I::PingResp) => Event::PingAnswered,
        _ => Event::Other,
    }
}

fn v5_event(e: v5::Event) -> Event {
    use rumqttc::Outgoing as O;
    use v5::{Event as E, Incoming as I};
    match e {
        E::Incoming(I::ConnAck(ack)) => Event::ConnAck {
            session_present: ack.session_present,
        },
        E::Incoming(I::Publish(p)) => Event::Publish(Received {
            // Topic aliases are off (no topic_alias_max is sent), so the
            // topic is always there; a broker sending bytes that are not
            // UTF-8 broke the protocol, and its topic matches no filter.
            topic: String::from_utf8_lossy(&p.topic).into_owned(),
            payload: p.payload,
            at_least_once: p.qos == v5::mqttbytes::QoS::AtLeastOnce,
            pkid: p.pkid,
            properties: request_properties(p.properties),
        }),
        E::Incoming(I::PubAck(ack)) => match refusal(&ack) {
            None => Event::PubAck(ack.pkid),
            Some(reason) => Event::PubRefused {
                pkid: ack.pkid,
                reason,
            },
        },
        E::Incoming(I::SubAck(ack)) => {
            let refused = ack
                .return_codes
                .iter()
                .filter(|c| !matches!(c, v5::mqttbytes::v5::SubscribeReasonCode::Success(_)))
                .count();
            Event::SubAck {
                granted: ack.return_codes.len() - refused,
                refused,
            }
        }
        E::Incoming(I::UnsubAck(_)) => Event::UnsubAck,
        E::Outgoing(O::Publish(pkid)) => Event::PublishWritten(pkid),
        E::Outgoing(O::PubAck(_)) => Event::AckWritten,
        E::Outgoing(O::Disconnect) => Event::Disconnected,
        E::Outgoing(O::PingReq) => Event::PingSent,
        E::Incoming(I::PingResp(_)) => Event::PingAnswered,
        _ => Event::Other,
    }
}

/// Why an MQTT 5 broker refused a publish, if its PUBACK says it did
/// ("no matching subscribers" is a success: the broker took it).
/// rumqttc only logs these, and reports the PUBACK like any other.
fn refusal(ack: &v5::mqttbytes::v5::PubAck) -> Option<String> {
    use v5::mqttbytes::v5::PubAckReason as R;
    let (code, words) = match ack.reason {
        R::Success | R::NoMatchingSubscribers => return None,
        R::UnspecifiedError => (0x80, "unspecified error"),
        R::ImplementationSpecificError => (0x83, "implementation specific error"),
        R::NotAuthorized => (0x87, "not authorized"),
        R::TopicNameInvalid => (0x90, "topic name invalid"),
        R::PacketIdentifierInUse => (0x91, "packet identifier in use"),
        R::QuotaExceeded => (0x97, "quota exceeded"),
        R::PayloadFormatInvalid => (0x99, "payload format invalid"),
    };
    let said = ack
        .properties
        .as_ref()
        .and_then(|p| p.reason_string.as_deref())
        .map(|r| format!(": {r}"))
        .unwrap_or_default();
    Some(format!("{words} (reason code 0x{code:02x}){said}"))
}

/// Why a connection failed, from either protocol's event loop.
#[derive(Debug)]
pub enum LinkError {
    V4(rumqttc::ConnectionError),
    V5(v5::ConnectionError),
}

impl std::fmt::Display for LinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkError::V4(e) => e.fmt(f),
            LinkError::V5(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for LinkError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            LinkError::V4(e) => Some(e),
            LinkError::V5(e) => Some(e),
        }
    }
}

impl LinkError {
    /// The broker answered CONNECT with a refusal: its reason in words.
    pub fn refusal(&self) -> Option<String> {
        match self {
            LinkError::V4(rumqttc::ConnectionError::ConnectionRefused(code)) => {
                Some(format!("{code:?}"))
            }
            LinkError::V5(v5::ConnectionError::ConnectionRefused(code)) => Some(format!(
                "{code:?} (MQTT 5 reason code 0x{:02X})",
                connack_code(*code)
            )),
            _ => None,
        }
    }

    /// The failure happened in the TLS layer (handshake or its I/O).
    pub fn is_tls(&self) -> bool {
        matches!(
            self,
            LinkError::V4(rumqttc::ConnectionError::Tls(_))
                | LinkError::V5(v5::ConnectionError::Tls(_))
        )
    }
}

/// The reason code byte of a v5 CONNACK, as the specification numbers
/// it (rumqttc keeps only the enum; its decoder never yields the three
/// 3.1.1-era variants, given here their v5 equivalents).
fn connack_code(code: v5::mqttbytes::v5::ConnectReturnCode) -> u8 {
    use v5::mqttbytes::v5::ConnectReturnCode as C;
    match code {
        C::Success => 0x00,
        C::RefusedProtocolVersion => 0x84,
        C::BadClientId => 0x85,
        C::ServiceUnavailable => 0x88,
        C::UnspecifiedError => 0x80,
        C::MalformedPacket => 0x81,
        C::ProtocolError => 0x82,
        C::ImplementationSpecificError => 0x83,
        C::UnsupportedProtocolVersion => 0x84,
        C::ClientIdentifierNotValid => 0x85,
        C::BadUserNamePassword => 0x86,
        C::NotAuthorized => 0x87,
        C::ServerUnavailable => 0x88,
        C::ServerBusy => 0x89,
        C::Banned => 0x8A,
        C::BadAuthenticationMethod => 0x8C,
        C::TopicNameInvalid => 0x90,
        C::PacketTooLarge => 0x95,
        C::QuotaExceeded => 0x97,
        C::PayloadFormatInvalid => 0x99,
        C::RetainNotSupported => 0x9A,
        C::QoSNotSupported => 0x9B,
        C::UseAnotherServer => 0x9C,
        C::ServerMoved => 0x9D,
        C::ConnectionRateExceeded => 0x9F,
    }
}

/// Where a link connects and as whom, beyond the `[mqtt]`-style settings.
pub struct Options<'a> {
    pub client_id: &'a str,
    /// Topic and retained record the broker publishes when this
    /// connection dies.
    pub last_will: Option<(&'a str, Vec<u8>)>,
    pub channel_capacity: usize,
    /// The most publishes of ours unconfirmed at once, which is also the
    /// packet id space rumqttc cycles through: it keeps a slot per id,
    /// allocated at connect (64 bytes each with 3.1.1, about 200 with 5).
    pub max_inflight: u16,
}

/// How long a TCP (and TLS) connect may take before it counts as failed
/// and the link retries.
const CONNECTION_TIMEOUT_SECS: u64 = 10;

/// The client and event loop of one link, in the protocol `settings` name.
pub fn connect(settings: &MqttSettings, o: Options<'_>) -> (Client, EventLoop) {
    match settings.protocol {
        Protocol::V311 => connect_v4(settings, o),
        Protocol::V5 { .. } => connect_v5(settings, o),
    }
}

fn connect_v4(settings: &MqttSettings, o: Options<'_>) -> (Client, EventLoop) {
    use rumqttc::{LastWill, MqttOptions, TlsConfiguration, Transport};
    let mut opts = MqttOptions::new(o.client_id, &settings.host, settings.port);
    if let Some((topic, record)) = o.last_will {
        opts.set_last_will(LastWill::new(
            topic,
            record,
            rumqttc::QoS::AtLeastOnce,
            true,
        ));
    }
    opts.set_keep_alive(settings.keep_alive)
        .set_clean_session(settings.clean_session)
        .set_max_packet_size(settings.max_packet_bytes, settings.max_packet_bytes)
        .set_request_channel_capacity(o.channel_capacity)
        .set_inflight(o.max_inflight)
        // Acks are sent once a message is answered (`delivery`), so one
        // the daemon never answered is redelivered by the broker.
        .set_manual_acks(true);
    if let Some((user, pass)) = &settings.credentials {
        opts.set_credentials(user, pass);
    }
    if let Some(tls) = &settings.tls {
        opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::clone(&tls.client_config),
        )));
    }
    let (client, mut eventloop) = rumqttc::AsyncClient::new(opts, o.channel_capacity);
    eventloop.set_network_options(socket_options(eventloop.network_options(), settings));
    (Client::V4(client), EventLoop::V4(Box::new(eventloop)))
}

fn connect_v5(settings: &MqttSettings, o: Options<'_>) -> (Client, EventLoop) {
    use rumqttc::{TlsConfiguration, Transport};
    use v5::mqttbytes::v5::LastWill;
    let Protocol::V5 {
        session_expiry_secs,
        receive_maximum,
    } = settings.protocol
    else {
        return connect_v4(settings, o);
    };
    let mut opts = v5::MqttOptions::new(o.client_id, &settings.host, settings.port);
    if let Some((topic, record)) = o.last_will {
        opts.set_last_will(LastWill::new(
            topic,
            record,
            v5::mqttbytes::QoS::AtLeastOnce,
            true,
            None,
        ));
    }
    opts.set_keep_alive(settings.keep_alive)
        // 3.1.1's clean session is v5's clean start plus a session that
        // outlives the connection by session_expiry_secs (0: it ends with
        // the connection).
        .set_clean_start(settings.clean_session)
        .set_session_expiry_interval(Some(session_expiry_secs))
        .set_receive_maximum(Some(receive_maximum))
        .set_max_packet_size(Some(
            u32::try_from(settings.max_packet_bytes).unwrap_or(u32::MAX),
        ))
        .set_request_channel_capacity(o.channel_capacity)
        .set_outgoing_inflight_upper_limit(o.max_inflight)
        .set_connection_timeout(CONNECTION_TIMEOUT_SECS)
        // As with 3.1.1: acknowledged once answered (`delivery`).
        .set_manual_acks(true);
    if let Some((user, pass)) = &settings.credentials {
        opts.set_credentials(user, pass);
    }
    if let Some(tls) = &settings.tls {
        opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::clone(&tls.client_config),
        )));
    }
    let net = socket_options(opts.network_options(), settings);
    opts.set_network_options(net);
    let (client, eventloop) = v5::AsyncClient::new(opts, o.channel_capacity);
    (Client::V5(client), EventLoop::V5(Box::new(eventloop)))
}

/// The socket options both protocols share. 3.1.1 takes its connection
/// timeout from here, 5 from its `MqttOptions` (set there too).
fn socket_options(
    mut net: rumqttc::NetworkOptions,
    settings: &MqttSettings,
) -> rumqttc::NetworkOptions {
    // Nagle would hold small results back for up to ~40 ms.
    net.set_tcp_nodelay(true);
    net.set_connection_timeout(CONNECTION_TIMEOUT_SECS);
    if let Some(bytes) = settings.receive_buffer_bytes {
        net.set_tcp_recv_buffer_size(bytes);
    }
    net
}

/// A client and event loop that never connect (nothing polls them), for
/// unit tests of the links' bookkeeping.
#[cfg(test)]
pub fn unconnected(capacity: usize) -> (Client, EventLoop) {
    let (c, el) =
        rumqttc::AsyncClient::new(rumqttc::MqttOptions::new("t", "127.0.0.1", 1), capacity);
    (Client::V4(c), EventLoop::V4(Box::new(el)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_connection_s_acknowledgements_and_subscriptions_are_dropped() {
        let (client, mut eventloop) = unconnected(8);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        // What the input link may leave when its connection fails: queued
        // acknowledgements (3.1.1), and requests in the channel, which
        // rumqttc moves to `pending` for the next connection.
        eventloop.queue_ack(2);
        client.try_ack(3).unwrap();
        runtime
            .block_on(client.subscribe_many(vec!["in/#".into()], QoS::AtLeastOnce))
            .unwrap();
        client.try_unsubscribe("gone/#".into()).unwrap();
        client
            .try_publish(
                "out/a",
                QoS::AtLeastOnce,
                false,
                &Bytes::from_static(b"{}"),
                None,
            )
            .unwrap();
        eventloop.drop_stale_requests();
        assert_eq!(eventloop.queued_requests(), ["unsubscribe", "publish"]);
    }
}
