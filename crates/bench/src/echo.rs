//! The messaging floor: a client that does nothing but echo each message's
//! id back through the same broker. JSON payloads get `{"id":...}` (only the
//! id is parsed); raw payloads get an empty reply, and the load generator
//! matches those by topic (`{1}` in the output template).

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
}

struct Route {
    filter: String,
    out: String,
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
        })
        .collect();
    let client_id = args
        .client_id
        .clone()
        .unwrap_or_else(|| format!("bench-echo-{}", std::process::id()));
    let (client, mut connection) = mqtt::connect(&client_id, port);
    for r in &routes {
        mqtt::subscribe(&client, &r.filter, "echo")?;
    }
    mqtt::wait_ready(&mut connection, routes.len(), "echo")?;
    // The harness waits for this line (cold start, readiness).
    println!("READY");
    let _ = std::io::stdout().flush();

    let mut dropped: u64 = 0;
    loop {
        let p = match connection.recv_timeout(Duration::from_secs(1)) {
            Ok(Ok(Event::Incoming(Incoming::Publish(p)))) => p,
            Ok(Ok(Event::Incoming(Incoming::Disconnect))) => return Ok(()),
            Ok(Ok(_)) | Err(RecvTimeoutError::Timeout) => continue,
            Ok(Err(e)) => return Err(format!("echo: MQTT connection failed: {e}")),
            Err(RecvTimeoutError::Disconnected) => return Ok(()),
        };
        let topic = p.topic.as_str();
        let Some((route, level)) = routes
            .iter()
            .find_map(|r| mqtt::matches(&r.filter, topic).map(|l| (r, l)))
        else {
            continue;
        };
        let out_topic = route.out.replace("{1}", level);
        let reply = match json_id(&p.payload) {
            Some(id) => {
                let mut v = Vec::with_capacity(id.len() + 8);
                v.extend_from_slice(b"{\"id\":");
                v.extend_from_slice(id);
                v.push(b'}');
                v
            }
            None => Vec::new(),
        };
        if client
            .try_publish(out_topic, QoS::AtMostOnce, false, reply)
            .is_err()
        {
            dropped += 1;
            if dropped.is_power_of_two() {
                eprintln!("echo: request queue full, {dropped} replies dropped so far");
            }
        }
    }
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
    use super::json_id;

    #[test]
    fn ids() {
        assert_eq!(json_id(br#"{"id":12,"data":[1]}"#), Some(&b"12"[..]));
        assert_eq!(json_id(br#"{"id": 12, "x": 1}"#), Some(&b"12"[..]));
        assert_eq!(json_id(br#"{"id":"a-1"}"#), Some(&br#""a-1""#[..]));
        assert_eq!(json_id(b"\x01\x02"), None);
    }
}
