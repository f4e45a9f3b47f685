//! Turning payloads into tensor bytes and results into JSON.
//!
//! - `quant`: float <-> int8/uint8 affine quantization, the one place the
//!   rounding rule lives.
//! - `decode`: JSON or raw payload -> the model's input buffers, numbers
//!   parsed straight into the buffers (no intermediate tree).
//! - `encode`: result and error messages.

pub mod decode;
pub mod encode;
mod fast;
pub mod quant;

use serde::Serialize;

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
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 9] = [
        ErrorCode::BadJson,
        ErrorCode::BadShape,
        ErrorCode::BadValue,
        ErrorCode::TooLarge,
        ErrorCode::Overloaded,
        ErrorCode::InferenceFailed,
        ErrorCode::NoModel,
        ErrorCode::ShuttingDown,
        ErrorCode::ReloadFailed,
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

/// The `id` a sender attached to its message, echoed in the answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum MessageId {
    Text(String),
    Number(serde_json::Number),
}

/// Ids longer than this are refused rather than echoed.
pub const MAX_ID_LEN: usize = 256;

/// TEMPORARY until the id scanner lands.
pub fn peek_id(_payload: &[u8]) -> Option<MessageId> {
    None
}
