//! The retained `edge-infer/{device_id}/models/{name}/state` record: where
//! a model's update stands, in one JSON object (schemas/model-state.schema.json).
//! Pure.

use serde::Serialize;

use super::store::{Installed, Record};

/// The phases an update goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Downloading,
    Verifying,
    Staged,
    Active,
    Failed,
    RolledBack,
}

/// The update a record is about: the desired version, when one is known.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Target {
    pub version: String,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Progress {
    pub chunks_received: u32,
    pub chunks: u32,
    pub bytes: u64,
}

#[derive(Debug, Serialize)]
struct Body<'a> {
    device_id: &'a str,
    model: &'a str,
    state: Phase,
    /// The version this state is about (the desired one; for `active` the
    /// one serving).
    version: Option<&'a str>,
    sha256: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    progress: Option<&'a Progress>,
    /// Unix time until which the active version is on probation.
    #[serde(skip_serializing_if = "Option::is_none")]
    probation_until: Option<f64>,
    /// What serves now (None: the configured file) and what a rollback
    /// would return to.
    active: Option<&'a Installed>,
    previous: Option<&'a Installed>,
    at: f64,
}

/// One state record.
pub struct Report<'a> {
    pub device_id: &'a str,
    pub model: &'a str,
    pub phase: Phase,
    pub target: Option<&'a Target>,
    pub reason: Option<&'a str>,
    pub progress: Option<&'a Progress>,
    pub probation_until: Option<f64>,
    pub record: &'a Record,
    pub now: f64,
}

impl Report<'_> {
    pub fn to_json(&self) -> Vec<u8> {
        let body = Body {
            device_id: self.device_id,
            model: self.model,
            state: self.phase,
            version: self.target.map(|t| t.version.as_str()),
            sha256: self.target.map(|t| t.sha256.as_str()),
            reason: self.reason,
            progress: self.progress,
            probation_until: self.probation_until,
            active: self.record.active.as_ref(),
            previous: self.record.previous.as_ref(),
            at: self.now,
        };
        // Plain strings and numbers: serialization cannot fail.
        serde_json::to_vec(&body).unwrap_or_default()
    }
}
