//! The one error type of this crate. Messages carry the value that was
//! wrong; callers add which model or config key it belongs to.

use std::path::PathBuf;

use crate::locate::LibraryCandidate;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("no TFLite/LiteRT runtime library could be loaded; tried:\n{}\n{hint}", format_tried(.tried))]
    LibraryNotFound {
        tried: Vec<(LibraryCandidate, String)>,
        hint: String,
    },
    #[error("cannot load runtime library {}: {reason}", .path.display())]
    LibraryLoad { path: PathBuf, reason: String },
    #[error("model {origin}: {reason}")]
    BadModel { origin: String, reason: String },
    #[error("model {origin}: unsupported: {reason}")]
    Unsupported { origin: String, reason: String },
    /// The model is fine, but this accelerator cannot run it here (no
    /// device, no driver, a delegate that declined, a compile failure).
    /// The daemon moves on to the next accelerator in the model's list.
    #[error("{accelerator}: {reason}")]
    Accelerator { accelerator: String, reason: String },
    #[error("{call} failed: {status}")]
    Call { call: &'static str, status: String },
}

fn format_tried(tried: &[(LibraryCandidate, String)]) -> String {
    tried
        .iter()
        .map(|(c, why)| format!("  - {} ({}): {why}", c.path.display(), c.source))
        .collect::<Vec<_>>()
        .join("\n")
}
