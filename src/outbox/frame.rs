//! One record as stored: `[u32 len][u32 crc][body]`, little-endian, where
//! `crc` is the CRC-32 (IEEE, `crc32fast`) of the body and the body is
//! `[u8 version][f64 created][u8 retain][u16 topic length][topic][payload]`
//! (version 1). An answer with MQTT 5 properties is version 2, with the
//! properties between topic and payload: `[u32 properties length]`, then
//! `[u8 flags: 1 correlation data, 2 content type]`, each present one as
//! `[u16 length][bytes]`, `[u16 count]` and per user property
//! `[u16 length][name][u16 length][value]`. Version 1 is still written for
//! everything else, so an outbox of a 3.1.1 daemon is the same bytes as
//! before and an older daemon reads it; a version-2 record is a bad frame
//! to an older daemon (skipped and counted, never published wrong).
//! Pure: encoding and checking bytes, no I/O.

use bytes::Bytes;

use crate::job::Properties;

/// Bytes before the body: length and CRC.
pub const HEADER: usize = 8;
/// Format of the body without properties; anything else but
/// [`VERSION_PROPERTIES`] is a bad frame.
const VERSION: u8 = 1;
/// Format of the body with MQTT 5 properties.
const VERSION_PROPERTIES: u8 = 2;
/// Version, created, retain flag, topic length.
const FIXED: usize = 1 + 8 + 1 + 2;
/// MQTT's own limit on a topic.
pub const MAX_TOPIC_BYTES: usize = u16::MAX as usize;
/// MQTT's largest packet: no bigger message could be published anyway. It
/// also bounds what a corrupted length field can make a reader allocate.
pub const MAX_BODY_BYTES: usize = 268_435_455;

/// One message waiting to be published.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// When the message was built, Unix seconds; `max_age` counts from it.
    pub created: f64,
    pub retain: bool,
    pub topic: String,
    pub payload: Vec<u8>,
    /// MQTT 5: the answer's correlation data, content type and user
    /// properties (never a response topic).
    pub properties: Option<Properties>,
}

impl Record {
    /// Bytes the record takes on disk, header included; None when its topic
    /// or body is above the limits of the format.
    pub fn frame_len(&self) -> Option<usize> {
        let props = match &self.properties {
            Some(p) => 4 + properties_len(p)?,
            None => 0,
        };
        let body = FIXED + self.topic.len() + props + self.payload.len();
        (self.topic.len() <= MAX_TOPIC_BYTES && body <= MAX_BODY_BYTES).then_some(HEADER + body)
    }
}

/// Bytes of the encoded properties; None when a field is longer than its
/// u16 length (MQTT's own limit on each, so none can be).
fn properties_len(p: &Properties) -> Option<usize> {
    let short = |n: usize| (n <= u16::MAX as usize).then_some(2 + n);
    let mut n = 1 + 2;
    if let Some(c) = &p.correlation_data {
        n += short(c.len())?;
    }
    if let Some(c) = &p.content_type {
        n += short(c.len())?;
    }
    if p.user_properties.len() > u16::MAX as usize {
        return None;
    }
    for (k, v) in &p.user_properties {
        n += short(k.len())? + short(v.len())?;
    }
    Some(n)
}

fn put_short(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
    out.extend_from_slice(bytes);
}

fn encode_properties(p: &Properties, out: &mut Vec<u8>) {
    let flags = u8::from(p.correlation_data.is_some()) | (u8::from(p.content_type.is_some()) << 1);
    out.push(flags);
    if let Some(c) = &p.correlation_data {
        put_short(out, c);
    }
    if let Some(c) = &p.content_type {
        put_short(out, c.as_bytes());
    }
    out.extend_from_slice(&(p.user_properties.len() as u16).to_le_bytes());
    for (k, v) in &p.user_properties {
        put_short(out, k.as_bytes());
        put_short(out, v.as_bytes());
    }
}

/// Reads what [`encode_properties`] wrote, all of it.
fn decode_properties(mut b: &[u8]) -> Result<Properties, &'static str> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], &'static str> {
        if b.len() < n {
            return Err("properties shorter than announced");
        }
        let (head, rest) = b.split_at(n);
        *b = rest;
        Ok(head)
    }
    fn short<'a>(b: &mut &'a [u8]) -> Result<&'a [u8], &'static str> {
        let len = take(b, 2)?;
        let len = u16::from_le_bytes([len[0], len[1]]) as usize;
        take(b, len)
    }
    fn text(b: &mut &[u8]) -> Result<String, &'static str> {
        std::str::from_utf8(short(b)?)
            .map(str::to_string)
            .map_err(|_| "property is not UTF-8")
    }
    let flags = take(&mut b, 1)?[0];
    if flags & !3 != 0 {
        return Err("unknown property flags");
    }
    let mut p = Properties::default();
    if flags & 1 != 0 {
        p.correlation_data = Some(Bytes::copy_from_slice(short(&mut b)?));
    }
    if flags & 2 != 0 {
        p.content_type = Some(text(&mut b)?);
    }
    let count = take(&mut b, 2)?;
    let count = u16::from_le_bytes([count[0], count[1]]);
    for _ in 0..count {
        let k = text(&mut b)?;
        let v = text(&mut b)?;
        p.user_properties.push((k, v));
    }
    if !b.is_empty() {
        return Err("properties longer than their fields");
    }
    Ok(p)
}

/// Appends the frame of `record` to `out`. The caller has checked
/// `frame_len`.
pub fn encode(record: &Record, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER]);
    out.push(if record.properties.is_some() {
        VERSION_PROPERTIES
    } else {
        VERSION
    });
    out.extend_from_slice(&record.created.to_le_bytes());
    out.push(u8::from(record.retain));
    out.extend_from_slice(&(record.topic.len() as u16).to_le_bytes());
    out.extend_from_slice(record.topic.as_bytes());
    if let Some(p) = &record.properties {
        let at = out.len();
        out.extend_from_slice(&[0; 4]);
        encode_properties(p, out);
        let len = (out.len() - at - 4) as u32;
        out[at..at + 4].copy_from_slice(&len.to_le_bytes());
    }
    out.extend_from_slice(&record.payload);
    let body_len = (out.len() - start - HEADER) as u32;
    out[start..start + 4].copy_from_slice(&body_len.to_le_bytes());
    let crc = crc32fast::hash(&out[start + HEADER..]);
    out[start + 4..start + HEADER].copy_from_slice(&crc.to_le_bytes());
}

/// The body length and CRC a header announces; Err when the length is
/// impossible.
pub fn header(bytes: &[u8; HEADER]) -> Result<(usize, u32), &'static str> {
    let len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
    let crc = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    if !(FIXED..=MAX_BODY_BYTES).contains(&len) {
        return Err("impossible record length");
    }
    Ok((len, crc))
}

/// A checked body, borrowed.
pub struct Body<'a> {
    pub created: f64,
    pub retain: bool,
    pub topic: &'a str,
    pub payload: &'a [u8],
    pub properties: Option<Properties>,
}

impl Body<'_> {
    pub fn to_record(&self) -> Record {
        Record {
            created: self.created,
            retain: self.retain,
            topic: self.topic.to_string(),
            payload: self.payload.to_vec(),
            properties: self.properties.clone(),
        }
    }
}

/// Checks a body against its CRC and its own structure.
pub fn check(body: &[u8], crc: u32) -> Result<Body<'_>, &'static str> {
    if crc32fast::hash(body) != crc {
        return Err("CRC mismatch");
    }
    if body.len() < FIXED {
        return Err("record shorter than its fixed fields");
    }
    let with_properties = match body[0] {
        VERSION => false,
        VERSION_PROPERTIES => true,
        _ => return Err("unknown record version"),
    };
    let mut created = [0; 8];
    created.copy_from_slice(&body[1..9]);
    let created = f64::from_le_bytes(created);
    let retain = match body[9] {
        0 => false,
        1 => true,
        _ => return Err("bad retain flag"),
    };
    let topic_len = u16::from_le_bytes([body[10], body[11]]) as usize;
    let rest = &body[FIXED..];
    if topic_len > rest.len() {
        return Err("topic longer than the record");
    }
    let topic = std::str::from_utf8(&rest[..topic_len]).map_err(|_| "topic is not UTF-8")?;
    let mut payload = &rest[topic_len..];
    let properties = if with_properties {
        if payload.len() < 4 {
            return Err("properties length past the record");
        }
        let len = u32::from_le_bytes([payload[0], payload[1], payload[2], payload[3]]) as usize;
        let props = payload
            .get(4..4 + len)
            .ok_or("properties longer than the record")?;
        let p = decode_properties(props)?;
        payload = &payload[4 + len..];
        Some(p)
    } else {
        None
    };
    Ok(Body {
        created,
        retain,
        topic,
        payload,
        properties,
    })
}
