//! Serving one message on one engine, and the pieces the one-at-a-time
//! loop and micro-batching share: decoding a payload into input buffers,
//! the wording of an invoke failure, the text of a caught panic.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

use model_runtime::Engine;

use crate::codec::decode::{decode_json, decode_raw, Decoded};
use crate::codec::{ErrorCode, Failure, MessageId};
use crate::config::PayloadFormat;
use crate::job::Job;
use crate::models::ModelContext;
use crate::replies::{Outgoing, Replies, Stages};

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
) -> Option<Outgoing> {
    // A panic while serving one message must not take the model down: the
    // message gets an error and the worker goes on.
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        serve(engine, ctx, replies, job, dequeued, batch_size)
    }));
    match outcome {
        Ok(out) => out,
        Err(panic) => {
            let what = panic_message(panic.as_ref());
            log::error!(
                "model {}: internal error serving {}: {what}",
                ctx.name,
                job.topic
            );
            replies.error(Some(ctx), job, None, &internal_error(&what))
        }
    }
}

fn serve(
    engine: &mut dyn Engine,
    ctx: &ModelContext,
    replies: &Replies,
    job: &Job,
    dequeued: Instant,
    batch_size: Option<usize>,
) -> Option<Outgoing> {
    let id = match decode(ctx, &job.payload, engine.input_buffers_mut()) {
        Ok(d) => d.id,
        Err((id, failure)) => return replies.error(Some(ctx), job, id.as_ref(), &failure),
    };
    let decoded_at = Instant::now();
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
        outputs,
        &buffers,
        Stages {
            decode_from: dequeued,
            decoded_at,
            invoke_from: decoded_at,
            invoked_at,
            post_from: invoked_at,
            batch_size,
        },
    )
}

/// Decodes `payload` into `buffers`, one per spec of
/// `ctx.message_inputs`.
pub fn decode(
    ctx: &ModelContext,
    payload: &[u8],
    buffers: &mut [Vec<u8>],
) -> Result<Decoded, (Option<MessageId>, Failure)> {
    match ctx.payload {
        PayloadFormat::Json => decode_json(payload, &ctx.message_inputs, buffers),
        PayloadFormat::Raw => decode_raw(payload, &ctx.message_inputs, buffers)
            .map(|()| Decoded::default())
            .map_err(|f| (None, f)),
    }
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
