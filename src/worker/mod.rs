//! Per-model inference workers: a bounded queue per model (`queue`) feeding
//! dedicated OS threads (`run`) that decode, quantize, invoke, dequantize and
//! encode. Inference never runs on the async runtime's threads.

pub mod queue;
mod run;

pub use queue::{Job, JobReceiver, ModelQueue, Offer, Queued};
pub use run::{spawn_workers, ModelContext, Worker};
