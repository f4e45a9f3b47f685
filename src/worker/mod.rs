//! Per-model inference workers: a bounded queue per model (`queue`) feeding
//! dedicated OS threads (`run`) that decode, quantize, invoke, dequantize and
//! encode, one message per invoke or, with micro-batching (`batch`), up to
//! `max_batch` messages per invoke. Inference never runs on the async
//! runtime's threads.

mod batch;
pub mod queue;
mod run;

pub use batch::Batching;
pub use queue::{Job, JobReceiver, ModelQueue, Offer, Queued};
pub use run::{spawn_workers, ModelContext, Worker, WorkerEngines};
