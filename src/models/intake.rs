//! How a message becomes a model's input, decided once per model from its
//! settings and its input tensors: whole tensors (`data`/`inputs` JSON or
//! raw bytes), named fields, windows over readings, or an image. Every
//! mismatch with the tensors is found here, with its key, so `check-config`
//! reports it before anything runs.

use std::sync::Arc;
use std::time::Duration;

use model_runtime::{DType, TensorSpec};

use crate::codec::image::{ImagePlan, PlanSetting};
use crate::config::{FieldPath, ModelSettings, Normalize, PayloadFormat};
use crate::topic::TopicTemplate;

/// A model's intake (shared by its workers).
pub struct Intake {
    pub kind: IntakeKind,
    /// `[models.input] mean`/`std`, checked against the innermost
    /// dimension.
    pub normalize: Option<Normalize>,
    /// With `normalize`: the input as float32, which JSON is decoded into
    /// before it is normalized and quantized.
    pub float_input: Option<TensorSpec>,
}

pub enum IntakeKind {
    /// `data`/`inputs` JSON, or raw bytes, as `payload` says.
    Tensors,
    /// One object whose fields, in order, fill the input.
    Fields(Vec<FieldPath>),
    /// Readings assembled into windows.
    Window(WindowIntake),
    /// A JPEG or PNG file (`payload = "image"`), or with `json` a base64
    /// `image` field (other JSON messages are decoded as tensors).
    Image {
        plan: Arc<ImagePlan>,
        payload: PayloadFormat,
    },
}

pub struct WindowIntake {
    pub fields: Vec<FieldPath>,
    pub timestamp: Option<FieldPath>,
    /// None: the stream is the whole topic.
    pub key: Option<TopicTemplate>,
    pub shape: WindowShape,
}

/// The shape of a model's windows, resolved against its input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WindowShape {
    pub fields: usize,
    pub size: usize,
    pub stride: usize,
    pub max_gap: Option<Duration>,
    pub idle_timeout: Duration,
    pub max_streams: usize,
}

/// A problem with one setting: the field under `models[i]` and what is wrong.
pub type FieldProblem = (String, String);

pub fn plan(ms: &ModelSettings, inputs: &[TensorSpec]) -> Result<Intake, FieldProblem> {
    let single = || -> Result<&TensorSpec, FieldProblem> {
        match inputs {
            [one] => Ok(one),
            _ => Err((
                what_needs_one_input(ms).into(),
                format!(
                    "needs a model with one input; {} has {}: {}",
                    ms.path.display(),
                    inputs.len(),
                    inputs
                        .iter()
                        .map(|s| format!("'{}' {}", s.name, s.shape_string()))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
        }
    };
    if let Some(image) = ms.image_settings() {
        let input = single()?;
        let plan = ImagePlan::new(&image, input).map_err(|e| {
            let key = match e.setting {
                // Not an image model: what asked for images is at fault.
                PlanSetting::Input if ms.image.is_none() => "payload".to_string(),
                PlanSetting::Input => "image".to_string(),
                setting => format!("image.{}", setting.as_str()),
            };
            (key, e.message)
        })?;
        return Ok(Intake {
            kind: IntakeKind::Image {
                plan: Arc::new(plan),
                payload: ms.payload,
            },
            normalize: None,
            float_input: None,
        });
    }
    let needs_input =
        ms.window.is_some() || !ms.input.fields.is_empty() || ms.input.normalize.is_some();
    if !needs_input {
        return Ok(Intake {
            kind: IntakeKind::Tensors,
            normalize: None,
            float_input: None,
        });
    }
    let input = single()?;
    if !matches!(input.dtype, DType::F32 | DType::I8 | DType::U8 | DType::I16) {
        return Err((
            what_needs_one_input(ms).into(),
            format!(
                "input '{}' is {}; named fields, windows and normalization fill float32 or quantized int8/uint8/int16 inputs",
                input.name, input.dtype
            ),
        ));
    }
    let (kind, inner) = match &ms.window {
        Some(w) => {
            let fields = w.fields.len();
            let count = input.element_count();
            let inner = innermost(input);
            if inner != fields && !is_flat(input) {
                return Err((
                    "window.fields".into(),
                    format!(
                        "lists {fields} field(s) per reading, but the innermost dimension of input '{}' ({}) is {inner}; list {inner} fields (one per element of the innermost dimension, in order)",
                        input.name,
                        input.shape_string()
                    ),
                ));
            }
            let size = match w.size {
                Some(size) => size,
                None if count % fields == 0 => count / fields,
                None => {
                    return Err((
                        "window.fields".into(),
                        format!(
                            "input '{}' ({}) holds {count} values, not a whole number of readings of {fields} field(s)",
                            input.name,
                            input.shape_string()
                        ),
                    ))
                }
            };
            if size * fields != count {
                return Err((
                    "window.size".into(),
                    format!(
                        "is {size}: {size} readings x {fields} field(s) = {} values, but input '{}' ({}) holds {count}; use size = {}",
                        size * fields,
                        input.name,
                        input.shape_string(),
                        if count % fields == 0 { (count / fields).to_string() } else { "(none fits)".into() }
                    ),
                ));
            }
            let stride = w.stride.unwrap_or(size);
            if stride > size {
                return Err((
                    "window.stride".into(),
                    format!("is {stride}, above the window's size {size}: every reading must be in a window (stride at most size)"),
                ));
            }
            let kind = IntakeKind::Window(WindowIntake {
                fields: w.fields.clone(),
                timestamp: w.timestamp.clone(),
                key: w.key.clone(),
                shape: WindowShape {
                    fields,
                    size,
                    stride,
                    max_gap: w.max_gap,
                    idle_timeout: w.idle_timeout,
                    max_streams: w.max_streams,
                },
            });
            (kind, fields)
        }
        None if !ms.input.fields.is_empty() => (
            IntakeKind::Fields(ms.input.fields.clone()),
            innermost(input),
        ),
        None => (IntakeKind::Tensors, innermost(input)),
    };
    if let Some(n) = &ms.input.normalize {
        for (name, values) in [("mean", &n.mean), ("std", &n.std)] {
            if values.len() != 1 && values.len() != inner {
                return Err((
                    format!("input.{name}"),
                    format!(
                        "has {} values; give one value, or one per element of the innermost dimension ({inner} for input '{}' {})",
                        values.len(),
                        input.name,
                        input.shape_string()
                    ),
                ));
            }
        }
    }
    let float_input = ms.input.normalize.as_ref().map(|_| TensorSpec {
        dtype: DType::F32,
        quantization: None,
        ..input.clone()
    });
    Ok(Intake {
        kind,
        normalize: ms.input.normalize.clone(),
        float_input,
    })
}

impl Intake {
    /// Lines of the `check-config` summary (none for plain tensors).
    pub fn describe(&self, ms: &ModelSettings) -> Vec<String> {
        let names = |fields: &[FieldPath]| {
            fields
                .iter()
                .map(|f| f.text.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut lines = Vec::new();
        match &self.kind {
            IntakeKind::Tensors => {}
            IntakeKind::Fields(fields) => lines.push(format!("fields {}", names(fields))),
            IntakeKind::Window(w) => {
                let s = &w.shape;
                lines.push(format!(
                    "window of {} readings x {} field(s) ({}), stride {}, stream key {}, time {}",
                    s.size,
                    s.fields,
                    names(&w.fields),
                    s.stride,
                    w.key.as_ref().map_or("the topic", |k| k.as_str()),
                    w.timestamp.as_ref().map_or("arrival", |t| t.text.as_str()),
                ));
                lines.push(format!(
                    "streams: max_gap_ms={} idle_timeout_secs={} max_streams={}",
                    s.max_gap
                        .map_or("off".into(), |g| g.as_millis().to_string()),
                    s.idle_timeout.as_secs_f64(),
                    s.max_streams
                ));
            }
            IntakeKind::Image { .. } => {
                if let Some(i) = ms.image_settings() {
                    lines.push(format!(
                        "image (JPEG, PNG{}): resize={} mean={:?} std={:?} pad={} max_pixels={}",
                        if ms.payload == PayloadFormat::Json {
                            "; base64 in JSON \"image\""
                        } else {
                            ""
                        },
                        i.resize.as_str(),
                        i.mean,
                        i.std,
                        i.pad,
                        i.max_pixels
                    ));
                }
            }
        }
        if let Some(n) = &self.normalize {
            lines.push(format!(
                "normalize (x - mean) / std: mean={:?} std={:?}",
                n.mean, n.std
            ));
        }
        lines
    }
}

/// The setting that asked for a single-input model, for the problem's key.
fn what_needs_one_input(ms: &ModelSettings) -> &'static str {
    if ms.window.is_some() {
        "window"
    } else if !ms.input.fields.is_empty() {
        "input.fields"
    } else {
        "input.mean"
    }
}

fn innermost(spec: &TensorSpec) -> usize {
    spec.shape.last().copied().unwrap_or(1)
}

/// One dimension besides leading 1s (`[1, 384]`): rows of readings are
/// simply concatenated.
fn is_flat(spec: &TensorSpec) -> bool {
    spec.shape.iter().filter(|&&d| d != 1).count() <= 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{RawConfig, Settings};

    fn settings(extra: &str) -> ModelSettings {
        let text = format!(
            "device_id = \"d\"\n[[models]]\nname = \"m\"\npath = \"m.tflite\"\ninput_topic = \"s/+/imu\"\n{extra}"
        );
        let raw: RawConfig = toml_config(&text);
        Settings::from_raw(raw, std::path::Path::new("/"))
            .unwrap()
            .models
            .remove(0)
    }

    fn toml_config(text: &str) -> RawConfig {
        config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml))
            .build()
            .unwrap()
            .try_deserialize()
            .unwrap()
    }

    fn input(shape: &[usize], dtype: DType) -> TensorSpec {
        TensorSpec {
            name: "accel".into(),
            shape: shape.to_vec(),
            dtype,
            quantization: None,
            shape_signature: shape.iter().map(|&d| d as i64).collect(),
        }
    }

    fn window_of(extra: &str, shape: &[usize]) -> Result<WindowShape, FieldProblem> {
        match plan(&settings(extra), &[input(shape, DType::F32)])?.kind {
            IntakeKind::Window(w) => Ok(w.shape),
            _ => panic!("not a window"),
        }
    }

    #[test]
    fn a_window_takes_its_size_from_the_input() {
        let w = window_of(
            "[models.window]\nfields = [\"ax\", \"ay\", \"az\"]",
            &[1, 128, 3],
        )
        .unwrap();
        assert_eq!((w.fields, w.size, w.stride), (3, 128, 128));
        let w = window_of(
            "[models.window]\nfields = [\"ax\", \"ay\", \"az\"]\nstride = 32",
            &[1, 384],
        )
        .unwrap();
        assert_eq!((w.size, w.stride), (128, 32));
    }

    #[test]
    fn a_window_that_does_not_fit_names_its_key() {
        let e = window_of("[models.window]\nfields = [\"ax\", \"ay\"]", &[1, 128, 3]).unwrap_err();
        assert_eq!(e.0, "window.fields");
        assert!(
            e.1.contains("innermost dimension of input 'accel' ([1, 128, 3]) is 3")
                || e.1.contains("is 3"),
            "{}",
            e.1
        );
        let e = window_of(
            "[models.window]\nfields = [\"ax\", \"ay\", \"az\"]\nsize = 100",
            &[1, 128, 3],
        )
        .unwrap_err();
        assert_eq!(e.0, "window.size");
        assert!(e.1.contains("use size = 128"), "{}", e.1);
        let e = window_of(
            "[models.window]\nfields = [\"ax\", \"ay\", \"az\"]\nstride = 200",
            &[1, 128, 3],
        )
        .unwrap_err();
        assert_eq!(e.0, "window.stride");
    }

    #[test]
    fn normalization_has_one_value_or_one_per_innermost_element() {
        let ms = settings("[models.input]\nmean = [1, 2, 3]\nstd = 2");
        let intake = plan(&ms, &[input(&[1, 16, 3], DType::I8)]).unwrap();
        assert!(intake.float_input.is_some());
        let ms = settings("[models.input]\nmean = [1, 2]");
        let e = plan(&ms, &[input(&[1, 16, 3], DType::I8)]).err().unwrap();
        assert_eq!(e.0, "input.mean");
        assert!(e.1.contains("has 2 values"), "{}", e.1);
    }

    #[test]
    fn fields_and_windows_need_one_input() {
        let ms = settings("[models.input]\nfields = [\"t\"]");
        let two = [input(&[1, 4], DType::F32), input(&[1, 2], DType::F32)];
        let e = plan(&ms, &two).err().unwrap();
        assert_eq!(e.0, "input.fields");
        assert!(e.1.contains("has 2"), "{}", e.1);
    }
}
