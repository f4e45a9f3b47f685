//! MQTT 5 request/response (`[mqtt] protocol = "5"`): a request with a
//! `response_topic` gets its answer (result or error) there, with the same
//! `correlation_data` and user properties and a JSON content type, for
//! JSON, raw and image payloads (raw and image ones have nowhere to carry
//! an id); a request without one is answered on the output topic as with
//! 3.1.1; a response topic the daemon would consume itself is refused on
//! the errors topic. A real v5 client against real Mosquitto.

mod common;

use std::sync::mpsc::{channel, Receiver};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{Client, Event, MqttOptions};
use serde_json::Value;

/// One answer as a v5 client sees it.
#[derive(Debug)]
struct Answer {
    topic: String,
    payload: Vec<u8>,
    props: PublishProperties,
}

impl Answer {
    /// The payload, validated against the schema of its kind (an error
    /// has a `code`).
    fn json(&self) -> Value {
        let v: Value = serde_json::from_slice(&self.payload).expect("JSON answer");
        let kind = if v.get("code").is_some() {
            "error"
        } else {
            "result"
        };
        if let Err(e) = validate(kind, &v) {
            panic!("answer on {} is not a valid {kind}: {e}\n{v}", self.topic);
        }
        v
    }
}

struct V5Client {
    client: Client,
    rx: Receiver<Answer>,
    subacks: Receiver<()>,
}

impl V5Client {
    fn connect(port: u16) -> V5Client {
        let id = format!("v5-test-{}-{}", std::process::id(), free_port());
        let mut opts = MqttOptions::new(id, "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_max_packet_size(Some(64 << 20));
        // As the common test client: Nagle would hold PUBACKs back.
        let mut net = opts.network_options();
        net.set_tcp_nodelay(true);
        opts.set_network_options(net);
        let (client, mut conn) = Client::new(opts, 256);
        let (tx, rx) = channel();
        let (sub_tx, subacks) = channel();
        std::thread::spawn(move || {
            for ev in conn.iter() {
                match ev {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = tx.send(Answer {
                            topic: String::from_utf8_lossy(&p.topic).into_owned(),
                            payload: p.payload.to_vec(),
                            props: p.properties.unwrap_or_default(),
                        });
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = sub_tx.send(());
                    }
                    Ok(_) => {}
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        });
        V5Client {
            client,
            rx,
            subacks,
        }
    }

    fn subscribe(&self, filter: &str) {
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .expect("subscribe");
        self.subacks.recv_timeout(WAIT).expect("SUBACK");
    }

    /// Publishes a request; `reply` is (response topic, correlation data).
    fn request(&self, topic: &str, payload: Vec<u8>, reply: Option<(&str, &[u8])>) {
        let props = PublishProperties {
            response_topic: reply.map(|(t, _)| t.to_string()),
            correlation_data: reply.map(|(_, c)| Bytes::copy_from_slice(c)),
            user_properties: vec![
                ("site".into(), "north".into()),
                ("trace".into(), "t-1".into()),
            ],
            ..Default::default()
        };
        self.client
            .publish_with_properties(topic, QoS::AtLeastOnce, false, payload, props)
            .expect("publish");
    }

    fn recv(&self) -> Answer {
        self.rx
            .recv_timeout(WAIT)
            .expect("an answer within the deadline")
    }
}

fn assert_echoes(a: &Answer, topic: &str, correlation: &[u8]) {
    assert_eq!(a.topic, topic, "{a:?}");
    assert_eq!(
        a.props.correlation_data.as_deref(),
        Some(correlation),
        "{a:?}"
    );
    assert_eq!(
        a.props.user_properties,
        vec![
            ("site".to_string(), "north".to_string()),
            ("trace".to_string(), "t-1".to_string())
        ],
        "{a:?}"
    );
    assert_eq!(
        a.props.content_type.as_deref(),
        Some("application/json"),
        "{a:?}"
    );
    assert!(a.props.response_topic.is_none(), "{a:?}");
}

/// DYN (JSON), MobileNet on raw bytes, MobileNet on an image file.
fn v5_config(port: u16) -> String {
    let models = format!(
        "{DYN}\n[[models]]\nname = \"raw\"\npath = \"{{models}}/mobilenet_v2_int8.tflite\"\ninput_topic = \"in/raw\"\noutput_topic = \"out/{{device_id}}/{{model}}\"\npayload = \"raw\"\n\n[[models]]\nname = \"img\"\npath = \"{{models}}/mobilenet_v2_int8.tflite\"\ninput_topic = \"in/img\"\noutput_topic = \"out/{{device_id}}/{{model}}\"\npayload = \"image\"\n[models.image]\nmean = 127.5\nstd = 127.5\n"
    );
    config(
        port,
        "dev5",
        "[limits]\nmax_payload_bytes = 160000\n",
        &models,
    )
    .replace(
        "[mqtt]\n",
        "[mqtt]\nprotocol = \"5\"\nreceive_maximum = 50\n",
    )
}

#[test]
fn requests_with_a_response_topic_are_answered_there_with_their_correlation_data() {
    let broker = Broker::start();
    let d = Daemon::start(&v5_config(broker.port));
    assert!(
        d.log_text().contains("MQTT 5"),
        "the connect line names the protocol:\n{}",
        d.log_text()
    );
    let c = V5Client::connect(broker.port);
    c.subscribe("reply/#");
    c.subscribe("out/#");
    c.subscribe("edge-infer/dev5/errors");

    // JSON, without an id: the correlation data is the only link.
    let json = serde_json::json!({"data": [1.0, 1, 2, 3, 4, 5, 6, 7]}).to_string();
    c.request(
        "in/dyn",
        json.into_bytes(),
        Some(("reply/a", b"\x00json-1")),
    );
    let a = c.recv();
    assert_echoes(&a, "reply/a", b"\x00json-1");
    let r = a.json();
    assert_eq!(r["model"], "dyn");
    assert!(r.get("id").is_none(), "{r}");

    // Raw bytes.
    c.request(
        "in/raw",
        vec![0u8; 224 * 224 * 3],
        Some(("reply/b", b"raw-2")),
    );
    let a = c.recv();
    assert_echoes(&a, "reply/b", b"raw-2");
    assert_eq!(a.json()["model"], "raw");

    // An image file.
    let png = std::fs::read(repo().join("tests/fixtures/preprocess/scene_224x224.png"))
        .expect("fixture image");
    c.request("in/img", png, Some(("reply/c", b"img-3")));
    let a = c.recv();
    assert_echoes(&a, "reply/c", b"img-3");
    let r = a.json();
    assert_eq!(r["model"], "img");
    assert_eq!(r["image"]["width"], 224, "{r}");

    // An error (bad payload) comes back on the response topic too.
    c.request("in/dyn", b"{not json".to_vec(), Some(("reply/d", b"bad-4")));
    let a = c.recv();
    assert_echoes(&a, "reply/d", b"bad-4");
    let e = a.json();
    assert_eq!(e["code"], "bad_json", "{e}");
    // So does an error decided before decoding.
    c.request("in/raw", vec![0u8; 3], Some(("reply/e", b"short-5")));
    let a = c.recv();
    assert_echoes(&a, "reply/e", b"short-5");
    assert_eq!(a.json()["code"], "bad_shape");
    // And a refusal on the input link, before any decoding.
    c.request("in/raw", vec![0u8; 170_000], Some(("reply/f", b"big-6")));
    let a = c.recv();
    assert_echoes(&a, "reply/f", b"big-6");
    assert_eq!(a.json()["code"], "too_large");

    // Without a response topic: the output topic, as with 3.1.1.
    c.request("in/dyn", features(7).into_bytes(), None);
    let a = c.recv();
    assert_eq!(a.topic, "out/dev5/dyn", "{a:?}");
    assert!(a.props.correlation_data.is_none(), "{a:?}");
    assert_eq!(a.json()["id"], 7);

    // A response topic the daemon consumes: refused on the errors topic.
    c.request(
        "in/dyn",
        features(8).into_bytes(),
        Some(("in/raw", b"loop-6")),
    );
    let a = c.recv();
    assert_eq!(a.topic, "edge-infer/dev5/errors", "{a:?}");
    assert!(a.props.correlation_data.is_none(), "{a:?}");
    let e = a.json();
    assert_eq!(e["code"], "bad_response_topic", "{e}");
    assert_eq!(e["id"], 8, "{e}");
    assert!(
        e["message"].as_str().unwrap_or("").contains("in/raw"),
        "{e}"
    );
    // Nothing else arrives: the refused answer went nowhere else.
    assert!(
        c.rx.recv_timeout(Duration::from_millis(500)).is_err(),
        "one answer per request"
    );
    let (code, log) = d.terminate();
    assert_eq!(code, Some(0), "{log}");
}

/// A request whose correlation data fills most of a packet: its answer
/// cannot go back with it. The error (a bad payload, or a result too
/// large to send with it) comes on the errors topic without the request's
/// properties, saying why, instead of being dropped with its input left
/// for the broker to deliver again, to the same fate.
#[test]
fn an_error_too_large_to_carry_its_correlation_data_comes_on_the_errors_topic() {
    let broker = Broker::start();
    let text = config(
        broker.port,
        "dev5",
        "[limits]\nmax_payload_bytes = 2048\n",
        DYN,
    )
    .replace(
        "[mqtt]\n",
        "[mqtt]\nprotocol = \"5\"\nmax_packet_bytes = 4096\n",
    );
    let d = Daemon::start(&text);
    let c = V5Client::connect(broker.port);
    c.subscribe("reply/#");
    c.subscribe("out/#");
    c.subscribe("edge-infer/dev5/errors");
    // The request fits in 4,096 bytes; any answer with these 3,900 bytes
    // (over 200 bytes of JSON) does not.
    let correlation = vec![b'c'; 3900];
    let errors = |code: &str| {
        let a = c.recv();
        assert_eq!(a.topic, "edge-infer/dev5/errors");
        assert!(a.props.correlation_data.is_none());
        let e = a.json();
        assert_eq!(e["code"], code, "{e}");
        assert_eq!(e["source_topic"], "in/dyn", "{e}");
        let message = e["message"].as_str().unwrap_or("");
        assert!(message.contains("mqtt.max_packet_bytes = 4096"), "{e}");
        e
    };
    c.request(
        "in/dyn",
        b"{not json".to_vec(),
        Some(("reply/a", &correlation)),
    );
    errors("bad_json");
    c.request(
        "in/dyn",
        features(9).into_bytes(),
        Some(("reply/b", &correlation)),
    );
    let e = errors("too_large");
    assert_eq!(e["id"], 9, "{e}");
    let message = e["message"].as_str().unwrap_or("");
    assert!(message.contains("send smaller correlation data"), "{e}");
    assert!(
        c.rx.recv_timeout(Duration::from_millis(500)).is_err(),
        "one answer per request"
    );
    let (code, log) = d.terminate();
    assert_eq!(code, Some(0), "{log}");
    assert!(!log.contains("not publishing"), "{log}");
}

#[test]
fn mqtt5_keys_need_protocol_5_and_protocol_5_refuses_an_uplink() {
    let port = free_port();
    let check = |text: &str| {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text).expect("write config");
        run_cli(
            &[
                "check-config",
                "--config",
                path.to_str().expect("utf-8 path"),
            ],
            &[],
        )
    };
    let base = config(port, "dev5", "", DYN);
    let (code, out, err) = check(&base.replace("[mqtt]\n", "[mqtt]\nreceive_maximum = 10\n"));
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(
        err.contains("mqtt.receive_maximum: is an MQTT 5 setting"),
        "{out}{err}"
    );
    let (code, out, err) = check(&base.replace("[mqtt]\n", "[mqtt]\nprotocol = \"4\"\n"));
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(
        err.contains("mqtt.protocol: must be \"3.1.1\" or \"5\""),
        "{out}{err}"
    );
    let with_uplink = format!("{}\n[uplink]\nhost = \"127.0.0.1\"\n", v5_config(port));
    let (code, out, err) = check(&with_uplink);
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(
        err.contains("mqtt.protocol: \"5\" cannot be combined with [uplink]"),
        "{out}{err}"
    );
    let (code, out, err) = check(&v5_config(port).replace(
        "receive_maximum = 50\n",
        "receive_maximum = 0\nsession_expiry_secs = 60\n",
    ));
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(
        err.contains("mqtt.receive_maximum: must be between 1 and 65535, got 0"),
        "{out}{err}"
    );
}

/// The default session expiry keeps at-least-once across a restart: the
/// broker keeps the session (subscriptions, QoS 1 requests) of a daemon
/// that is away, and the next run under the same client id answers what
/// came meanwhile, on each request's response topic.
#[test]
fn requests_sent_while_the_daemon_is_away_are_answered_by_the_next_run() {
    let broker = Broker::start();
    let text =
        config(broker.port, "dev5", "", DYN).replace("[mqtt]\n", "[mqtt]\nprotocol = \"5\"\n");
    let d = Daemon::start(&text);
    let (code, log) = d.terminate();
    assert_eq!(code, Some(0), "{log}");
    let c = V5Client::connect(broker.port);
    c.subscribe("reply/#");
    for i in 0..5u8 {
        c.request(
            "in/dyn",
            features(usize::from(i)).into_bytes(),
            Some((&format!("reply/{i}"), &[b'c', i])),
        );
    }
    let again = Daemon::start(&text);
    let mut seen: Vec<u8> = (0..5)
        .map(|_| {
            let a = c.recv();
            let i = a
                .props
                .correlation_data
                .as_deref()
                .expect("correlation data")[1];
            assert_echoes(&a, &format!("reply/{i}"), &[b'c', i]);
            assert_eq!(a.json()["id"], u64::from(i));
            i
        })
        .collect();
    seen.sort_unstable();
    assert_eq!(seen, [0, 1, 2, 3, 4]);
    let (code, log) = again.terminate();
    assert_eq!(code, Some(0), "{log}");
}

/// The retained status and its Last Will work as with 3.1.1: online once
/// connected, offline from the broker when the daemon is killed.
#[test]
fn status_is_retained_and_the_last_will_marks_a_killed_daemon_offline() {
    let broker = Broker::start();
    let text =
        config(broker.port, "dev5", "", DYN).replace("[mqtt]\n", "[mqtt]\nprotocol = \"5\"\n");
    let d = Daemon::start(&text);
    // A 3.1.1 subscriber: the broker translates, as for any fleet tool.
    let c = TestClient::connect(broker.port);
    c.subscribe("edge-infer/dev5/status");
    let online = c.recv().json();
    assert_eq!(online["state"], "online", "{online}");
    assert_eq!(online["pid"], d.pid());
    d.signal("KILL");
    let will = c.recv().json();
    assert_eq!(will["state"], "offline", "{will}");
    assert_eq!(will["reason"], "connection lost");
}

/// `text` (a 3.1.1 `[mqtt]` config) with an `[uplink]` on `port` that
/// speaks MQTT 5.
fn with_v5_uplink(text: String, port: u16) -> String {
    text.replace(
        "[mqtt]\n",
        &format!(
            "[uplink]\nhost = \"127.0.0.1\"\nport = {port}\nprotocol = \"5\"\nreconnect_min_ms = 50\nreconnect_max_secs = 1\n\n[mqtt]\n"
        ),
    )
}

/// An `[uplink]` of its own may speak MQTT 5 while inputs stay on a 3.1.1
/// `[mqtt]` broker: results and the status record go there as usual.
#[test]
fn an_uplink_may_use_protocol_5_on_its_own() {
    let inputs = Broker::start();
    let uplink = Broker::start();
    let text = with_v5_uplink(config(inputs.port, "dev5", "", DYN), uplink.port);
    let d = Daemon::start(&text);
    let up = TestClient::connect(uplink.port);
    up.subscribe("edge-infer/dev5/status");
    assert_eq!(up.recv().json()["state"], "online");
    up.subscribe("out/#");
    let c = TestClient::connect(inputs.port);
    c.publish("in/dyn", features(3));
    let r = up.recv();
    assert_eq!(r.topic, "out/dev5/dyn");
    assert_eq!(r.json()["id"], 3);
    let (code, log) = d.terminate();
    assert_eq!(code, Some(0), "{log}");
    // Each link's connect line names its protocol when it is not 3.1.1.
    let line = |needle: &str| {
        log.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?}:\n{log}"))
    };
    assert!(
        line("connecting to the uplink mqtt://127.0.0.1:").contains(", MQTT 5"),
        "{log}"
    );
    assert!(!line("(inputs)").contains("MQTT 5"), "{log}");
}

/// An MQTT 5 broker that refuses a publish says so in its PUBACK (here
/// its ACL: reason code 0x87). That is no confirmation: the answer is
/// counted as a publish failure and logged, and its input is left
/// unacknowledged for the broker to deliver again, while answers the
/// broker takes are confirmed as before.
#[test]
fn an_uplink_publish_the_broker_refuses_is_a_failure_not_a_confirmation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let acl = dir.path().join("acl");
    std::fs::write(
        &acl,
        "topic readwrite out/#\ntopic readwrite edge-infer/#\n",
    )
    .expect("acl");
    let inputs = Broker::start();
    let uplink = Broker::start_configured(&format!("acl_file {}", acl.display()));
    let models = format!(
        "{DYN}\n[[models]]\nname = \"denied\"\npath = \"{{models}}/dynamic_batch_f32.tflite\"\ninput_topic = \"in/denied\"\noutput_topic = \"forbidden/{{device_id}}/{{model}}\"\n"
    );
    let text = with_v5_uplink(config(inputs.port, "dev5", "", &models), uplink.port)
        .replace("[mqtt]\n", "[health]\ninterval_secs = 0.2\n\n[mqtt]\n");
    let d = Daemon::start(&text);
    let up = TestClient::connect(uplink.port);
    up.subscribe("out/#");
    up.subscribe("edge-infer/dev5/health");
    let c = TestClient::connect(inputs.port);
    c.publish("in/denied", features(1));
    c.publish("in/dyn", features(2));
    let deadline = std::time::Instant::now() + WAIT;
    let mut answered = false;
    let delivery = loop {
        let m = up.recv_before(
            deadline,
            "the result and a health record counting the refusal",
        );
        let v = m.json();
        if m.topic == "out/dev5/dyn" {
            assert_eq!(v["id"], 2);
            answered = true;
        } else if m.topic == "edge-infer/dev5/health"
            && answered
            && v["broker"]["publish_failures"] == 1
        {
            break v["delivery"].clone();
        }
    };
    // The refused answer's input is held back; the accepted one's is not.
    assert_eq!(delivery["acks_withheld"], 1, "{delivery}");
    assert!(
        delivery["answers_confirmed"].as_u64() >= Some(1),
        "{delivery}"
    );
    let (code, log) = d.terminate();
    assert_eq!(code, Some(0), "{log}");
    assert!(
        log.contains(
            "output link: the broker refused an answer on forbidden/dev5/denied: not authorized (reason code 0x87); its input stays unacknowledged"
        ),
        "{log}"
    );
}
