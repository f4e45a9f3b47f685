//! The typed settings of a model's preprocessing: `[models.window]`
//! (readings assembled into windows), `[models.input]` (named fields and
//! normalization) and `[models.image]` (image payloads).

use std::time::Duration;

use super::check::Check;
use super::raw::{OneOrMany, RawImage, RawInput, RawWindow};
use crate::topic::{TopicFilter, TopicTemplate};

/// `[models.window]`: the input is assembled from a stream of readings.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowSettings {
    /// Per reading, in this order: the innermost dimension of the input.
    pub fields: Vec<FieldPath>,
    /// Readings per window; None: what the input's shape implies.
    pub size: Option<usize>,
    /// Readings between the starts of two windows; None: `size`.
    pub stride: Option<usize>,
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

impl FieldPath {
    /// `ax` (a top-level key) or `/accel/x` (a JSON Pointer, RFC 6901).
    pub fn parse(text: &str) -> Result<FieldPath, String> {
        if text.is_empty() {
            return Err("a field name must not be empty".into());
        }
        let Some(pointer) = text.strip_prefix('/') else {
            return Ok(FieldPath {
                text: text.into(),
                steps: vec![text.into()],
            });
        };
        let mut steps = Vec::new();
        for token in pointer.split('/') {
            let mut step = String::with_capacity(token.len());
            let mut chars = token.chars();
            while let Some(ch) = chars.next() {
                if ch != '~' {
                    step.push(ch);
                    continue;
                }
                match chars.next() {
                    Some('0') => step.push('~'),
                    Some('1') => step.push('/'),
                    other => {
                        return Err(format!(
                        "\"{text}\" is not a JSON Pointer: '~' must be followed by 0 or 1, got {}",
                        other.map_or("the end".to_string(), |c| format!("'{c}'"))
                    ))
                    }
                }
            }
            steps.push(step);
        }
        Ok(FieldPath {
            text: text.into(),
            steps,
        })
    }
}

/// Longest window: 65,536 readings (over 20 minutes at 50 Hz).
pub const MAX_WINDOW_SIZE: i64 = 65_536;

pub(super) fn window_settings(
    c: &mut Check,
    key: &str,
    raw: &RawWindow,
    filter: Option<&TopicFilter>,
) -> Option<WindowSettings> {
    let before = c.problems.len();
    let k = |field: &str| format!("{key}.{field}");
    let fields = field_paths(c, &k("fields"), &raw.fields);
    if raw.fields.is_empty() {
        c.add(
            k("fields"),
            "must name at least one field of a reading, e.g. [\"ax\", \"ay\", \"az\"]",
        );
    }
    let size = raw
        .size
        .map(|n| c.range(&k("size"), n, 1, MAX_WINDOW_SIZE) as usize);
    let stride = raw.stride.map(|n| {
        let n = c.range(&k("stride"), n, 1, MAX_WINDOW_SIZE) as usize;
        if let Some(size) = size.filter(|&size| n > size) {
            c.add(
                k("stride"),
                format!("is {n}, above size {size}: every reading must be in a window (stride at most size)"),
            );
        }
        n
    });
    let key_template = match (&raw.key, filter) {
        (Some(text), Some(filter)) => match TopicTemplate::parse(text, filter) {
            Ok(t) => Some(t),
            Err(e) => {
                c.add(k("key"), e.replace("output topic", "stream key"));
                None
            }
        },
        _ => None,
    };
    let timestamp = raw.timestamp.as_deref().and_then(|t| {
        FieldPath::parse(t)
            .map_err(|e| c.add(k("timestamp"), e))
            .ok()
    });
    let max_gap = raw
        .max_gap_ms
        .map(|ms| Duration::from_millis(c.range(&k("max_gap_ms"), ms, 1, 86_400_000) as u64));
    let idle_timeout = c.seconds(
        &k("idle_timeout_secs"),
        raw.idle_timeout_secs,
        1.0,
        7.0 * 86_400.0,
    );
    let max_streams = c.range(&k("max_streams"), raw.max_streams, 1, 1_000_000) as usize;
    if c.problems.len() != before {
        return None;
    }
    Some(WindowSettings {
        fields,
        size,
        stride,
        key: key_template,
        timestamp,
        max_gap,
        idle_timeout,
        max_streams,
    })
}

pub(super) fn input_settings(c: &mut Check, key: &str, raw: &RawInput) -> InputSettings {
    let fields = field_paths(c, &format!("{key}.fields"), &raw.fields);
    let normalize = match (&raw.mean, &raw.std) {
        (None, None) => None,
        (mean, std) => {
            let mean = mean.as_ref().map_or(vec![0.0], |m| {
                finite_values(c, &format!("{key}.mean"), m, false)
            });
            let std = std.as_ref().map_or(vec![1.0], |s| {
                finite_values(c, &format!("{key}.std"), s, true)
            });
            Some(Normalize { mean, std })
        }
    };
    InputSettings { fields, normalize }
}

pub(super) fn image_settings(c: &mut Check, key: &str, raw: &RawImage) -> ImageSettings {
    let resize = match raw.resize.as_str() {
        "stretch" => Resize::Stretch,
        "crop" => Resize::Crop,
        "letterbox" => Resize::Letterbox,
        other => {
            c.add(
                format!("{key}.resize"),
                format!("expected \"stretch\", \"crop\" or \"letterbox\", got \"{other}\""),
            );
            Resize::Stretch
        }
    };
    ImageSettings {
        resize,
        mean: finite_values(c, &format!("{key}.mean"), &raw.mean, false),
        std: finite_values(c, &format!("{key}.std"), &raw.std, true),
        pad: c.range(&format!("{key}.pad"), raw.pad, 0, 255) as u8,
        max_pixels: c.range(&format!("{key}.max_pixels"), raw.max_pixels, 1, 1 << 32) as u64,
    }
}

fn field_paths(c: &mut Check, key: &str, raw: &[String]) -> Vec<FieldPath> {
    let mut out = Vec::with_capacity(raw.len());
    for (i, text) in raw.iter().enumerate() {
        match FieldPath::parse(text) {
            Ok(f) if out.contains(&f) => {
                c.add(format!("{key}[{i}]"), format!("\"{text}\" is listed twice"))
            }
            Ok(f) => out.push(f),
            Err(e) => c.add(format!("{key}[{i}]"), e),
        }
    }
    out
}

/// The values of `mean`/`std` as f32: finite, within f32, and for `std`
/// not zero (it divides).
fn finite_values(c: &mut Check, key: &str, raw: &OneOrMany, divisor: bool) -> Vec<f32> {
    let values = raw.values();
    if values.is_empty() {
        c.add(key, "must be a number or a non-empty list of numbers");
        return vec![if divisor { 1.0 } else { 0.0 }];
    }
    let mut out = Vec::with_capacity(values.len());
    for (i, v) in values.iter().enumerate() {
        let at = if values.len() == 1 {
            key.to_string()
        } else {
            format!("{key}[{i}]")
        };
        let f = *v as f32;
        if !f.is_finite() {
            c.add(
                at,
                format!("must be a finite number within float32, got {v}"),
            );
            out.push(1.0);
        } else if divisor && f == 0.0 {
            c.add(at, "must not be 0 (values are divided by it)");
            out.push(1.0);
        } else {
            out.push(f);
        }
    }
    out
}
