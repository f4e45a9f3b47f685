//! The messaging floor: a client that does nothing but echo each message's
//! id back through the same broker. JSON payloads get `{"id":...}` (only the
//! id is parsed); raw payloads get an empty reply, and the load generator
//! matches those by topic (`{1}` in the output template).
//!
//! With `--window FILTER=SIZE:STRIDE` the messages of that filter are
//! counted per stream (the level `{1}` names) and only those that complete
//! a window are answered, with `{"window":{"key":..,"seq":..}}` as a
//! windowing target would: the same messages in and out of the broker as
//! edge-infer's windowed model, with nothing done in between.
//!
//! `--qos 1` subscribes and answers at QoS 1, as the daemon does by
//! default: every input then costs a PUBACK to the broker and every answer
//! one from it, the packets the daemon exchanges. rumqttc acknowledges an
//! input as it reads it, where the daemon waits for its answer's PUBACK
//! (`ack = "answered"`): the same packets, sent earlier.

use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

use rumqttc::{Event, Incoming, QoS, RecvTimeoutError};

use crate::mqtt;

#[derive(Debug, clap::Args)]
pub struct EchoArgs {
    /// MQTT broker port on 127.0.0.1
    #[arg(long, value_name = "P", default_value_t = 1883)]
    pub port: u16,
    /// A topic filter to answer (repeat for more; each with its --out)
    #[arg(long = "in", value_name = "FILTER", required = true)]
    pub ins: Vec<String>,
    /// Where to answer the --in of the same position; `{1}` is the last
    /// level of the incoming topic
    #[arg(long = "out", value_name = "TEMPLATE", required = true)]
    pub outs: Vec<String>,
    /// MQTT client id [default: bench-echo-<pid>]
    #[arg(long, value_name = "ID")]
    pub client_id: Option<String>,
    /// Answer only the messages of this --in FILTER that complete a window
    /// of SIZE messages every STRIDE messages, per stream (repeatable)
    #[arg(long = "window", value_name = "FILTER=SIZE:STRIDE", value_parser = parse_window)]
    pub windows: Vec<WindowArg>,
    /// QoS of the subscriptions and of the answers (0 or 1)
    #[arg(long, value_name = "0|1", default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub qos: u8,
}

/// `--window FILTER=SIZE:STRIDE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowArg {
    filter: String,
    size: u64,
    stride: u64,
}

fn parse_window(s: &str) -> Result<WindowArg, String> {
    let expected = "expected FILTER=SIZE:STRIDE with SIZE and STRIDE 1 or more";
    let (filter, rest) = s.rsplit_once('=').ok_or(expected)?;
    let (size, stride) = rest.split_once(':').ok_or(expected)?;
    let n = |v: &str| v.parse::<u64>().ok().filter(|&n| n > 0).ok_or(expected);
    Ok(WindowArg {
        filter: filter.to_string(),
        size: n(size)?,
        stride: n(stride)?,
    })
}

struct Route {
    filter: String,
    out: String,
    /// (size, stride) when only completed windows are answered.
    window: Option<(u64, u64)>,
}

pub fn main(args: &EchoArgs) -> Result<(), String> {
    let port = args.port;
    let (ins, outs) = (&args.ins, &args.outs);
    if ins.is_empty() || ins.len() != outs.len() {
        return Err("echo needs one --out TEMPLATE per --in FILTER (at least one pair)".into());
    }
    let routes: Vec<Route> = ins
        .iter()
        .zip(outs)
        .map(|(i, o)| Route {
            filter: i.to_string(),
            out: o.to_string(),
            window: args
                .windows
                .iter()
                .find(|w| &w.filter == i)
                .map(|w| (w.size, w.stride)),
        })
        .collect();
    if let Some(w) = args.windows.iter().find(|w| !ins.contains(&w.filter)) {
        return Err(format!(
            "echo: --window {}: no --in {} to apply it to",
            w.filter, w.filter
        ));
    }
    let client_id = args
        .client_id
        .clone()
        .unwrap_or_else(|| format!("bench-echo-{}", std::process::id()));
    let qos = if args.qos == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    };
    let (client, mut connection) = mqtt::connect(&client_id, port);
    for r in &routes {
        mqtt::subscribe_qos(&client, &r.filter, qos, "echo")?;
    }
    mqtt::wait_ready(&mut connection, routes.len(), "echo")?;
    // The harness waits for this line (cold start, readiness).
    println!("READY");
    let _ = std::io::stdout().flush();

    let mut dropped: u64 = 0;
    // Messages seen per (route, stream) of the windowed routes.
    let mut counts: HashMap<(usize, String), u64> = HashMap::new();
    loop {
        let p = match connection.recv_timeout(Duration::from_secs(1)) {
            Ok(Ok(Event::Incoming(Incoming::Publish(p)))) => p,
            Ok(Ok(Event::Incoming(Incoming::Disconnect))) => return Ok(()),
            Ok(Ok(_)) | Err(RecvTimeoutError::Timeout) => continue,
            Ok(Err(e)) => return Err(format!("echo: MQTT connection failed: {e}")),
            Err(RecvTimeoutError::Disconnected) => return Ok(()),
        };
        let topic = p.topic.as_str();
        let Some((index, route, level)) = routes
            .iter()
            .enumerate()
            .find_map(|(i, r)| mqtt::matches(&r.filter, topic).map(|l| (i, r, l)))
        else {
            continue;
        };
        let out_topic = route.out.replace("{1}", level);
        let reply = if let Some((size, stride)) = route.window {
            let count = counts.entry((index, level.to_string())).or_insert(0);
            *count += 1;
            match window_completed(*count, size, stride) {
                Some(seq) => window_reply(level, seq),
                None => continue,
            }
        } else {
            match json_id(&p.payload) {
                Some(id) => {
                    let mut v = Vec::with_capacity(id.len() + 8);
                    v.extend_from_slice(b"{\"id\":");
                    v.extend_from_slice(id);
                    v.push(b'}');
                    v
                }
                None => Vec::new(),
            }
        };
        if client.try_publish(out_topic, qos, false, reply).is_err() {
            dropped += 1;
            if dropped.is_power_of_two() {
                eprintln!("echo: request queue full, {dropped} replies dropped so far");
            }
        }
    }
}

/// The window (from 1) that the `count`-th message of a stream completes,
/// if it completes one: the `size`-th, then every `stride`-th after it.
fn window_completed(count: u64, size: u64, stride: u64) -> Option<u64> {
    let past = count.checked_sub(size)?;
    (past % stride == 0).then(|| past / stride + 1)
}

fn window_reply(key: &str, seq: u64) -> Vec<u8> {
    serde_json::json!({"window": {"key": key, "seq": seq}})
        .to_string()
        .into_bytes()
}

/// The raw JSON text of the top-level `"id"` value (a number or a string),
/// found by scanning, not by parsing the whole payload.
pub fn json_id(payload: &[u8]) -> Option<&[u8]> {
    let pos = find(payload, b"\"id\"")?;
    let mut i = pos + 4;
    while i < payload.len() && matches!(payload[i], b' ' | b'\t' | b'\n' | b'\r') {
        i += 1;
    }
    if payload.get(i) != Some(&b':') {
        return None;
    }
    i += 1;
    while i < payload.len() && matches!(payload[i], b' ' | b'\t' | b'\n' | b'\r') {
        i += 1;
    }
    let start = i;
    if payload.get(i) == Some(&b'"') {
        i += 1;
        while i < payload.len() && payload[i] != b'"' {
            i += 1;
        }
        return payload.get(start..=i);
    }
    while i < payload.len() && matches!(payload[i], b'0'..=b'9' | b'-' | b'.' | b'e' | b'E' | b'+')
    {
        i += 1;
    }
    (i > start).then(|| &payload[start..i])
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::{json_id, parse_window, window_completed, window_reply, WindowArg};

    #[test]
    fn windows_complete_at_size_then_every_stride() {
        let done: Vec<(u64, u64)> = (1..=300)
            .filter_map(|c| window_completed(c, 128, 64).map(|s| (c, s)))
            .collect();
        assert_eq!(done, [(128, 1), (192, 2), (256, 3)]);
        assert_eq!(window_completed(5, 5, 5), Some(1));
        assert_eq!(window_completed(4, 5, 5), None);
        assert_eq!(
            String::from_utf8(window_reply("12-s3", 2)).unwrap(),
            r#"{"window":{"key":"12-s3","seq":2}}"#
        );
    }

    #[test]
    fn window_args() {
        assert_eq!(
            parse_window("bench/imu/+=128:64"),
            Ok(WindowArg {
                filter: "bench/imu/+".into(),
                size: 128,
                stride: 64
            })
        );
        for bad in ["a", "a=1", "a=0:1", "a=1:0", "a=x:1", "a=1:-1"] {
            assert!(parse_window(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ids() {
        assert_eq!(json_id(br#"{"id":12,"data":[1]}"#), Some(&b"12"[..]));
        assert_eq!(json_id(br#"{"id": 12, "x": 1}"#), Some(&b"12"[..]));
        assert_eq!(json_id(br#"{"id":"a-1"}"#), Some(&br#""a-1""#[..]));
        assert_eq!(json_id(b"\x01\x02"), None);
    }
}
