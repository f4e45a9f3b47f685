//! One record as stored: `[u32 len][u32 crc][body]`, little-endian, where
//! `crc` is the CRC-32 (IEEE, `crc32fast`) of the body and the body is
//! `[u8 version][f64 created][u8 retain][u16 topic length][topic][payload]`.
//! Pure: encoding and checking bytes, no I/O.

/// Bytes before the body: length and CRC.
pub const HEADER: usize = 8;
/// Format of the body; anything else is a bad frame.
const VERSION: u8 = 1;
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
}

impl Record {
    /// Bytes the record takes on disk, header included; None when its topic
    /// or body is above the limits of the format.
    pub fn frame_len(&self) -> Option<usize> {
        let body = FIXED + self.topic.len() + self.payload.len();
        (self.topic.len() <= MAX_TOPIC_BYTES && body <= MAX_BODY_BYTES).then_some(HEADER + body)
    }
}

/// Appends the frame of `record` to `out`. The caller has checked
/// `frame_len`.
pub fn encode(record: &Record, out: &mut Vec<u8>) {
    let start = out.len();
    let body_len = FIXED + record.topic.len() + record.payload.len();
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.push(VERSION);
    out.extend_from_slice(&record.created.to_le_bytes());
    out.push(u8::from(record.retain));
    out.extend_from_slice(&(record.topic.len() as u16).to_le_bytes());
    out.extend_from_slice(record.topic.as_bytes());
    out.extend_from_slice(&record.payload);
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
}

impl Body<'_> {
    pub fn to_record(&self) -> Record {
        Record {
            created: self.created,
            retain: self.retain,
            topic: self.topic.to_string(),
            payload: self.payload.to_vec(),
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
    if body[0] != VERSION {
        return Err("unknown record version");
    }
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
    Ok(Body {
        created,
        retain,
        topic,
        payload: &rest[topic_len..],
    })
}
