//! The typed settings of a model's preprocessing: `[models.window]`
//! (readings assembled into windows), `[models.input]` (named fields and
//! normalization) and `[models.image]` (image payloads).

use std::time::Duration;

use crate::topic::TopicTemplate;

/// `[models.window]`: the input is assembled from a stream of readings.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowSettings {
    /// Per reading, in this order: the innermost dimension of the input.
    pub fields: Vec<FieldPath>,
    /// Readings per window.
    pub size: usize,
    /// Readings between the starts of two windows.
    pub stride: usize,
    /// Which stream a reading belongs to; None: the whole topic.
    pub key: Option<TopicTemplate>,
    /// The reading's time (Unix seconds); None: its message's arrival time.
    pub timestamp: Option<FieldPath>,
    /// A larger gap between two readings of a stream restarts its window.
    pub max_gap: Option<Duration>,
    /// A stream silent this long is forgotten.
    pub idle_timeout: Duration,
    /// Open streams per model at most.
    pub max_streams: usize,
}

/// `[models.input]`: named fields of one message, and normalization.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct InputSettings {
    /// Fields of one object stacked in order into the input; empty: the
    /// usual `data`/`inputs` message.
    pub fields: Vec<FieldPath>,
    /// `(x - mean) / std` per innermost element before quantization.
    pub normalize: Option<Normalize>,
}

/// One value for every element, or one per innermost element.
#[derive(Debug, Clone, PartialEq)]
pub struct Normalize {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

/// How a field of a reading is found: a top-level key, or a JSON Pointer
/// (RFC 6901) when it starts with `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldPath {
    /// As written in the config, for messages.
    pub text: String,
    /// The object keys to follow (unescaped `~1` and `~0`), or array
    /// indices written as keys.
    pub steps: Vec<String>,
}

/// `[models.image]`: how an image payload becomes the input tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageSettings {
    pub resize: Resize,
    /// One value, or one per channel of the input.
    pub mean: Vec<f32>,
    /// One value, or one per channel of the input; never 0.
    pub std: Vec<f32>,
    /// The pixel value of letterbox padding.
    pub pad: u8,
    /// Images with more pixels (from the header) are refused.
    pub max_pixels: u64,
}

impl Default for ImageSettings {
    fn default() -> Self {
        ImageSettings {
            resize: Resize::Stretch,
            mean: vec![0.0],
            std: vec![1.0],
            pad: 0,
            max_pixels: DEFAULT_MAX_PIXELS,
        }
    }
}

/// 16 megapixels: above any camera frame an edge model is fed (a 4K frame
/// is 8.3), far below what a hostile header can claim.
pub const DEFAULT_MAX_PIXELS: u64 = 16_000_000;

/// How an image is fitted to the input's height x width.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resize {
    /// Scaled to exactly height x width; the aspect ratio may change.
    Stretch,
    /// The largest centred region with the input's aspect ratio, scaled.
    Crop,
    /// Scaled to fit inside, centred, the rest filled with `pad`.
    Letterbox,
}

impl Resize {
    pub fn as_str(self) -> &'static str {
        match self {
            Resize::Stretch => "stretch",
            Resize::Crop => "crop",
            Resize::Letterbox => "letterbox",
        }
    }
}
