//! Serving one message on one engine, and the pieces the one-at-a-time
//! loop, micro-batching and windows share: decoding a payload into input
//! buffers as the model's intake says (tensors, named fields, an image),
//! the wording of an invoke failure, the text of a caught panic.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

use model_runtime::Engine;

use base64::Engine as _;
use model_runtime::TensorSpec;

use crate::codec::decode::{decode_json, decode_raw};
use crate::codec::encode::{Extras, ImageMeta, Outputs};
use crate::codec::image::{ImagePlan, ImageScratch};
use crate::codec::normalize::normalize;
use crate::codec::readings::decode_fields;
use crate::codec::{peek_id, quant, ErrorCode, Failure, MessageId};
use crate::config::{Normalize, PayloadFormat};
use crate::job::Job;
use crate::models::{IntakeKind, ModelContext};
use crate::replies::{Outgoing, Replies, Stages};

/// A worker's reusable decoding buffers.
#[derive(Default)]
pub struct Scratch {
    image: ImageScratch,
    /// Values before normalization and quantization.
    floats: Vec<f32>,
    /// A JSON input decoded as float32 bytes, before normalization.
    float_bytes: Vec<Vec<u8>>,
    /// A base64 image's bytes.
    image_bytes: Vec<u8>,
}

/// What a decoded message brings besides its input buffers.
#[derive(Debug, Default)]
pub struct Intook {
    pub id: Option<MessageId>,
    pub image: Option<ImageMeta>,
}

impl Intook {
    pub fn extras(&self) -> Extras<'static> {
        Extras {
            window: None,
            image: self.image,
        }
    }
}

/// Serves one job on `engine`: its result or error (None only if that
/// could not be serialized, which is logged). `batch_size` is reported in
/// the result (micro-batching models say 1 for a message served alone).
pub fn serve_one(
    engine: &mut dyn Engine,
    ctx: &ModelContext,
    replies: &Replies,
    job: &Job,
    dequeued: Instant,
    batch_size: Option<usize>,
    scratch: &mut Scratch,
) -> Option<Outgoing> {
    // A panic while serving one message must not take the model down: the
    // message gets an error (with its id once decoded) and the worker goes on.
    let intook = match decode_caught(ctx, replies, job, engine.input_buffers_mut(), scratch) {
        Ok(d) => d,
        Err((id, failure)) => return replies.error(Some(ctx), job, id.as_ref(), &failure),
    };
    let decoded_at = Instant::now();
    let id = intook.id.clone();
    let decoded = Decoded {
        intook,
        decode_from: dequeued,
        decoded_at,
    };
    caught(ctx, replies, job, id.as_ref(), || {
        answer(engine, ctx, replies, job, decoded, decoded_at, batch_size)
    })
}

/// A message decoded into the engine's input buffers, and when.
pub struct Decoded {
    pub intook: Intook,
    pub decode_from: Instant,
    pub decoded_at: Instant,
}

/// Invokes `engine` on a message already decoded into its input buffers
/// (`worker::ahead`), and answers it.
pub fn serve_decoded(
    engine: &mut dyn Engine,
    ctx: &ModelContext,
    replies: &Replies,
    job: &Job,
    decoded: Decoded,
) -> Option<Outgoing> {
    let id = decoded.intook.id.clone();
    caught(ctx, replies, job, id.as_ref(), || {
        answer(engine, ctx, replies, job, decoded, Instant::now(), None)
    })
}

/// `serve`'s answer, or an error (with the message's `id`, when known) if
/// it panicked.
fn caught(
    ctx: &ModelContext,
    replies: &Replies,
    job: &Job,
    id: Option<&MessageId>,
    serve: impl FnOnce() -> Option<Outgoing>,
) -> Option<Outgoing> {
    match catch_unwind(AssertUnwindSafe(serve)) {
        Ok(out) => out,
        Err(panic) => {
            let failure = logged_panic(ctx, replies, panic.as_ref(), || {
                format!("serving {}", job.topic)
            });
            replies.error(Some(ctx), job, id, &failure)
        }
    }
}

/// [`decode`] of `job`'s payload, a panic caught as [`caught`] does (for
/// [`serve_one`] and for a decoder thread: `worker::ahead`).
pub fn decode_caught(
    ctx: &ModelContext,
    replies: &Replies,
    job: &Job,
    buffers: &mut [Vec<u8>],
    scratch: &mut Scratch,
) -> Result<Intook, (Option<MessageId>, Failure)> {
    catch_unwind(AssertUnwindSafe(|| {
        decode(ctx, &job.payload, buffers, scratch)
    }))
    .unwrap_or_else(|panic| {
        let failure = logged_panic(ctx, replies, panic.as_ref(), || {
            format!("serving {}", job.topic)
        });
        // The decoder did not get to say: the id at the top, if any.
        Err((peek_id(&job.payload), failure))
    })
}

/// Logs a panic caught while `doing` something ("serving <topic>"), as
/// [`Replies::log_panic`] does; the error its message (or messages) get.
pub fn logged_panic(
    ctx: &ModelContext,
    replies: &Replies,
    panic: &(dyn std::any::Any + Send),
    doing: impl FnOnce() -> String,
) -> Failure {
    let what = panic_message(panic);
    replies.log_panic(&ctx.name, || {
        format!("model {}: internal error {}: {what}", ctx.name, doing())
    });
    internal_error(&what)
}

/// Runs the engine on its input buffers (`decoded` is the message in
/// them) and builds the result, or the invoke's error.
fn answer(
    engine: &mut dyn Engine,
    ctx: &ModelContext,
    replies: &Replies,
    job: &Job,
    decoded: Decoded,
    invoke_from: Instant,
    batch_size: Option<usize>,
) -> Option<Outgoing> {
    let Decoded {
        intook,
        decode_from,
        decoded_at,
    } = decoded;
    let id = intook.id.clone();
    if let Err(e) = engine.invoke() {
        return replies.error(Some(ctx), job, id.as_ref(), &invoke_failure(&e));
    }
    let invoked_at = Instant::now();
    let outputs = engine.outputs();
    let buffers: Vec<&[u8]> = (0..outputs.len()).map(|i| engine.output(i)).collect();
    replies.result(
        ctx,
        job,
        id.as_ref(),
        Outputs {
            specs: outputs,
            buffers: &buffers,
            accelerator: engine.accelerator_name(),
        },
        Stages {
            decode_from,
            decoded_at,
            invoke_from,
            invoked_at,
            post_from: invoked_at,
            batch_size,
        },
        intook.extras(),
    )
}

/// Decodes `payload` into `buffers`, one per spec of
/// `ctx.message_inputs`, as the model's intake says. (Windowed models
/// assemble their input from readings instead: `windowed`.)
pub fn decode(
    ctx: &ModelContext,
    payload: &[u8],
    buffers: &mut [Vec<u8>],
    scratch: &mut Scratch,
) -> Result<Intook, (Option<MessageId>, Failure)> {
    match &ctx.intake.kind {
        IntakeKind::Tensors => tensors(ctx, payload, buffers, scratch),
        IntakeKind::Fields(fields) => {
            let spec = &ctx.message_inputs[0];
            scratch.floats.clear();
            scratch.floats.resize(spec.element_count(), 0.0);
            let id = decode_fields(payload, fields, &mut scratch.floats)?;
            store_floats(
                &mut scratch.floats,
                ctx.intake.normalize.as_ref(),
                spec,
                &mut buffers[0],
            )
            .map_err(|f| (id.clone(), f))?;
            Ok(Intook { id, image: None })
        }
        IntakeKind::Image {
            plan,
            payload: PayloadFormat::Image,
        } => {
            let image = prepare(plan, payload, &mut buffers[0], &mut scratch.image)
                .map_err(|f| (None, f))?;
            Ok(Intook {
                id: None,
                image: Some(image),
            })
        }
        IntakeKind::Image { plan, .. } => {
            if !has_image_key(payload) {
                return tensors(ctx, payload, buffers, scratch);
            }
            let id = peek_id(payload);
            base64_image(payload, &mut scratch.image_bytes).map_err(|f| (id.clone(), f))?;
            let image = prepare(
                plan,
                &scratch.image_bytes,
                &mut buffers[0],
                &mut scratch.image,
            )
            .map_err(|f| (id.clone(), f))?;
            Ok(Intook {
                id,
                image: Some(image),
            })
        }
        IntakeKind::Window(_) => Err((
            None,
            internal_error("a windowed model's message reached the single-message decoder"),
        )),
    }
}

/// `data`/`inputs` JSON or raw bytes; with normalization, JSON is decoded
/// as float32 first, then normalized and quantized.
fn tensors(
    ctx: &ModelContext,
    payload: &[u8],
    buffers: &mut [Vec<u8>],
    scratch: &mut Scratch,
) -> Result<Intook, (Option<MessageId>, Failure)> {
    let id = match (ctx.payload, &ctx.intake.float_input, &ctx.intake.normalize) {
        (PayloadFormat::Raw, _, _) => {
            decode_raw(payload, &ctx.message_inputs, buffers).map_err(|f| (None, f))?;
            None
        }
        (_, Some(float), Some(n)) => {
            let floats = &mut scratch.float_bytes;
            floats.resize_with(1, Vec::new);
            floats[0].resize(float.byte_len(), 0);
            let id = decode_json(payload, std::slice::from_ref(float), floats)?.id;
            scratch.floats.clear();
            scratch.floats.extend(
                floats[0]
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            );
            store_floats(
                &mut scratch.floats,
                Some(n),
                &ctx.message_inputs[0],
                &mut buffers[0],
            )
            .map_err(|f| (id.clone(), f))?;
            id
        }
        _ => decode_json(payload, &ctx.message_inputs, buffers)?.id,
    };
    Ok(Intook { id, image: None })
}

/// Normalizes `values` (when configured) and stores them into `buf` in the
/// tensor's dtype. A value that normalization takes out of float32 is
/// refused, as a decoded one would be.
pub fn store_floats(
    values: &mut [f32],
    n: Option<&Normalize>,
    spec: &TensorSpec,
    buf: &mut [u8],
) -> Result<(), Failure> {
    if let Some(n) = n {
        normalize(values, n);
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(Failure::new(
                ErrorCode::BadValue,
                format!(
                    "value {i} of input '{}' is not a finite float32 after normalization ((x - mean) / std)",
                    spec.name
                ),
            ));
        }
    }
    let q = spec.quantization;
    for (i, &v) in values.iter().enumerate() {
        quant::store(spec.dtype, q, buf, i, v);
    }
    Ok(())
}

fn prepare(
    plan: &ImagePlan,
    bytes: &[u8],
    out: &mut [u8],
    scratch: &mut ImageScratch,
) -> Result<ImageMeta, Failure> {
    let info = plan.prepare(bytes, out, scratch)?;
    Ok(ImageMeta {
        format: info.format,
        width: info.width,
        height: info.height,
    })
}

/// Whether a JSON message carries an `"image"` key (checked on the text:
/// a tensor message of a megabyte is not parsed twice).
fn has_image_key(payload: &[u8]) -> bool {
    payload.windows(7).any(|w| w == b"\"image\"")
}

/// `{"id": .., "image": "<base64>"}` (a `data:image/...;base64,` prefix
/// is allowed): the image file's bytes into `out`.
fn base64_image(payload: &[u8], out: &mut Vec<u8>) -> Result<(), Failure> {
    #[derive(serde::Deserialize)]
    struct ImageMessage<'a> {
        #[serde(borrow)]
        image: std::borrow::Cow<'a, str>,
    }
    let msg: ImageMessage = serde_json::from_slice(payload).map_err(|e| {
        Failure::new(
            ErrorCode::BadJson,
            format!("expected {{\"id\": .., \"image\": \"<base64 JPEG or PNG>\"}}: {e}"),
        )
    })?;
    let text = msg.image.trim();
    let text = match text.strip_prefix("data:") {
        Some(url) => url.split_once(',').map_or(url, |(_, data)| data),
        None => text,
    };
    out.clear();
    base64::engine::general_purpose::STANDARD
        .decode_vec(text.as_bytes(), out)
        .map_err(|e| {
            Failure::new(
                ErrorCode::BadImage,
                format!(
                    "\"image\" must be a base64 (RFC 4648, with padding) JPEG or PNG file: {e}"
                ),
            )
        })
}

pub fn invoke_failure(e: &model_runtime::RuntimeError) -> Failure {
    Failure::new(
        ErrorCode::InferenceFailed,
        format!("the runtime failed to run the model: {e}"),
    )
}

/// The answer to a message whose serving panicked.
pub fn internal_error(what: &str) -> Failure {
    Failure::new(
        ErrorCode::InferenceFailed,
        format!("internal error: {what}"),
    )
}

/// What a caught panic says, for the log and the error message.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Runs one payload through `engine` as a worker would (decode, invoke)
/// and reads every output back as real values, by output name: the golden
/// check of a model update. Windowed models have no single-message input.
pub fn outputs_for(
    engine: &mut dyn Engine,
    ctx: &ModelContext,
    payload: &[u8],
) -> Result<Vec<(String, Vec<f32>)>, Failure> {
    let mut scratch = Scratch::default();
    decode(ctx, payload, engine.input_buffers_mut(), &mut scratch).map_err(|(_, f)| f)?;
    engine.invoke().map_err(|e| invoke_failure(&e))?;
    let specs = engine.outputs().to_vec();
    Ok(specs
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            let buf = engine.output(i);
            let values = (0..spec.element_count())
                .map(|k| quant::load(spec.dtype, spec.quantization, buf, k))
                .collect();
            (spec.name.clone(), values)
        })
        .collect())
}
