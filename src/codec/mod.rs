//! Turning payloads into tensor bytes and results into JSON.
//!
//! - `quant`: float <-> int8/uint8 affine quantization, the one place the
//!   rounding rule lives.
//! - `decode`: JSON or raw payload -> the model's input buffers, numbers
//!   parsed straight into the buffers (no intermediate tree).
//! - `encode`: result and error messages.
//! - `peek`: a message's id, found without decoding it (for answers refused
//!   before decoding).
//! - `readings`: named fields of readings (`[models.window]`) and of one
//!   object (`[models.input] fields`).
//! - `normalize`: `(x - mean) / std` before quantization.
//! - `image`: a JPEG or PNG payload -> an image model's input (decode,
//!   resize as Pillow does, normalize, quantize).

pub mod decode;
pub mod encode;
mod fast;
pub mod image;
pub mod normalize;
mod peek;
pub mod quant;
pub mod readings;
#[cfg(test)]
mod robustness;

use std::fmt;

use serde::Serialize;
use serde_json::value::RawValue;

pub use peek::peek_id;

/// Stable error codes published on the errors topic. Fleet tools key on
/// these strings; never rename one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The payload is not valid JSON, or not the expected object.
    BadJson,
    /// Wrong number of values, inputs, or raw bytes for the model.
    BadShape,
    /// A value that is not a finite number in the tensor's range.
    BadValue,
    /// Payload above limits.max_payload_bytes.
    TooLarge,
    /// The model's queue was full (see overflow policy).
    Overloaded,
    /// The runtime failed to run the model on this input.
    InferenceFailed,
    /// No configured model listens on the message's topic.
    NoModel,
    /// The daemon stopped before this message could be served.
    ShuttingDown,
    /// A reload (SIGHUP) failed; the running configuration was kept. Not
    /// about a message: no source_topic.
    ReloadFailed,
    /// An image payload that is corrupt, truncated, too many pixels or not
    /// a supported format (JPEG, PNG).
    BadImage,
    /// A reading of a stream (windowed model) without a required field, or
    /// with a field or timestamp that is not a finite number.
    BadReading,
    /// The gap between two readings of one stream exceeded `max_gap_ms`:
    /// the window restarted.
    StreamGap,
    /// A reading older than the last reading of its stream: the window
    /// restarted.
    OutOfOrder,
    /// An MQTT 5 request whose `response_topic` the daemon must not
    /// publish to: not a topic name, one of its own device topics, or a
    /// topic its own input filters match (it would answer its answer).
    /// Sent on the errors topic, never to the response topic.
    BadResponseTopic,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 14] = [
        ErrorCode::BadJson,
        ErrorCode::BadShape,
        ErrorCode::BadValue,
        ErrorCode::TooLarge,
        ErrorCode::Overloaded,
        ErrorCode::InferenceFailed,
        ErrorCode::NoModel,
        ErrorCode::ShuttingDown,
        ErrorCode::ReloadFailed,
        ErrorCode::BadImage,
        ErrorCode::BadReading,
        ErrorCode::StreamGap,
        ErrorCode::OutOfOrder,
        ErrorCode::BadResponseTopic,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadJson => "bad_json",
            ErrorCode::BadShape => "bad_shape",
            ErrorCode::BadValue => "bad_value",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::InferenceFailed => "inference_failed",
            ErrorCode::NoModel => "no_model",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::ReloadFailed => "reload_failed",
            ErrorCode::BadImage => "bad_image",
            ErrorCode::BadReading => "bad_reading",
            ErrorCode::StreamGap => "stream_gap",
            ErrorCode::OutOfOrder => "out_of_order",
            ErrorCode::BadResponseTopic => "bad_response_topic",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// Why one message could not be served: a code and a sentence saying what
/// was expected and what came.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub code: ErrorCode,
    pub message: String,
}

impl Failure {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
        }
    }
}

/// The `id` a sender attached to its message, echoed in the answer exactly
/// as it was written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum MessageId {
    Text(String),
    Number(NumberId),
}

/// As the log's `MSG_ID` field shows it: a string's text, a number as
/// written.
impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MessageId::Text(s) => f.write_str(s),
            MessageId::Number(n) => n.fmt(f),
        }
    }
}

/// Ids longer than this are refused rather than echoed: a string's decoded
/// bytes, a number's text.
pub const MAX_ID_LEN: usize = 256;

/// A numeric id as its sender wrote it: the text of one JSON number, at
/// most [`MAX_ID_LEN`] bytes, serialized back verbatim. Kept as text because
/// any number type changes some ids: as an f64, `1000000000000000000000000000000`
/// would come back as `1e+30`; `1.50` as `1.5`.
#[derive(Clone)]
pub struct NumberId(Box<RawValue>);

impl NumberId {
    /// `text` if it is exactly one JSON number (no whitespace around it) of
    /// at most [`MAX_ID_LEN`] bytes.
    pub fn parse(text: &str) -> Option<NumberId> {
        if text.len() > MAX_ID_LEN || number_end(text.as_bytes(), 0) != Some(text.len()) {
            return None;
        }
        RawValue::from_string(text.to_owned()).ok().map(NumberId)
    }

    /// The number as written, e.g. `"1.50"`.
    pub fn as_str(&self) -> &str {
        self.0.get()
    }
}

impl fmt::Display for NumberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for NumberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NumberId({})", self.as_str())
    }
}

impl PartialEq for NumberId {
    fn eq(&self, other: &NumberId) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for NumberId {}

impl Serialize for NumberId {
    /// Verbatim, as a JSON number (serde_json's raw value).
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

/// Payload text quoted in an error message (a number token, an unknown
/// input name, a reading's keys): whole when short, else its start and
/// its length. Without this one message of 1 MiB of digits (or a 1 MiB
/// key) made an error message as large, published and logged.
pub(crate) fn clip(text: &str) -> std::borrow::Cow<'_, str> {
    clip_to(text, 64)
}

/// [`clip`] at `shown` bytes (cut at a character boundary).
pub(crate) fn clip_to(text: &str, shown: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= shown {
        return text.into();
    }
    let mut end = shown;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &text[..end], text.len()).into()
}

/// Where the JSON number that starts at `text[at]` ends, by the grammar
/// alone (`-? (0 | [1-9][0-9]*) (.[0-9]+)? ([eE][+-]?[0-9]+)?`, the value is
/// not computed); None if no number starts there.
pub(crate) fn number_end(text: &[u8], mut at: usize) -> Option<usize> {
    let digits = |at: usize| {
        at + text
            .get(at..)
            .unwrap_or_default()
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count()
    };
    if text.get(at) == Some(&b'-') {
        at += 1;
    }
    match text.get(at)? {
        b'0' => at += 1,
        b'1'..=b'9' => at = digits(at),
        _ => return None,
    }
    if text.get(at) == Some(&b'.') {
        let end = digits(at + 1);
        if end == at + 1 {
            return None;
        }
        at = end;
    }
    if let Some(b'e' | b'E') = text.get(at) {
        at += 1;
        if let Some(b'+' | b'-') = text.get(at) {
            at += 1;
        }
        let end = digits(at);
        if end == at {
            return None;
        }
        at = end;
    }
    Some(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn number_ids_keep_their_text() {
        for text in [
            "1000000000000000000000000000000",
            "1.50",
            "-0",
            "7",
            "1e309",
            "2.5E-3",
        ] {
            let n = NumberId::parse(text).unwrap();
            assert_eq!(n.to_string(), text);
            let json = serde_json::to_string(&MessageId::Number(n)).unwrap();
            assert_eq!(json, text);
        }
        assert_eq!(
            serde_json::to_string(&MessageId::Text("a\"b".into())).unwrap(),
            r#""a\"b""#
        );
    }

    #[test]
    fn number_ids_must_be_one_json_number_within_the_limit() {
        for text in [
            "", "-", "01", "1.", ".5", "1e", "1e+", "+1", " 1", "1 ", "1x", "0x10", "NaN", "1,2",
        ] {
            assert_eq!(NumberId::parse(text), None, "{text:?}");
        }
        let longest = "9".repeat(MAX_ID_LEN);
        assert!(NumberId::parse(&longest).is_some());
        assert_eq!(NumberId::parse(&format!("{longest}9")), None);
    }

    #[test]
    fn number_end_follows_the_json_grammar() {
        assert_eq!(number_end(b"12,", 0), Some(2));
        assert_eq!(number_end(b"[-0.5e+3]", 1), Some(8));
        assert_eq!(number_end(b"0123", 0), Some(1));
        assert_eq!(number_end(b"-a", 0), None);
        assert_eq!(number_end(b"", 0), None);
        assert_eq!(number_end(b"1", 5), None);
    }
}
