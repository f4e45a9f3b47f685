//! Remote model updates (`[updates]`): signed manifests and chunks over
//! MQTT, staged in the state dir, validated, swapped in through the reload
//! path, watched on probation and rolled back on trouble.
//!
//! One thread (`agent`) owns every model's store and does all the file
//! work, hashing, signature checks and validation loads, so none of it
//! runs on the event loop. It hears manifests and chunks from routing and
//! asks the supervisor for what only the supervisor can do: (un)subscribe
//! chunk filters, swap a model's file, publish a state record.
//!
//! - `manifest`: the manifest and the statement its signature covers;
//! - `verify`: the signature against `[updates] public_keys`;
//! - `store`: `state_dir/models/{name}/`, what survives a crash;
//! - `download`: chunks into a staged file;
//! - `probation`: whether the new version does worse than the old one;
//! - `state`: the retained state record.

mod agent;
pub mod download;
pub mod manifest;
pub mod probation;
pub mod state;
pub mod store;
pub mod verify;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use crate::config::{Problem, Settings};
use crate::job::Job;
use crate::models::Chain;
use crate::telemetry::ModelStats;

pub use agent::spawn;

/// What routing and the supervisor hand the agent.
pub enum Input {
    /// A manifest or chunk, with its acknowledgement: a chunk is
    /// acknowledged once it is on disk.
    Message(Job),
    /// The configured models after a reload.
    Models(Vec<crate::config::ModelSettings>),
}

/// What the agent asks the supervisor.
pub enum Request {
    Subscribe(String),
    Unsubscribe(String),
    /// Serve `model` from `to` (None: the configured file), through the
    /// reload path; the answer is what probation watches, or why not.
    Swap {
        model: String,
        to: Option<FileVersion>,
        done: tokio::sync::oneshot::Sender<Result<Watch, String>>,
    },
    /// Publish a model's state record (retained); kept for re-sending on
    /// every connect of the output link.
    State {
        model: String,
        payload: Vec<u8>,
    },
}

/// A model file an update put in place, and its version.
#[derive(Debug, Clone, PartialEq)]
pub struct FileVersion {
    pub path: PathBuf,
    pub version: String,
}

/// What probation reads of the model serving after a swap.
#[derive(Clone)]
pub struct Watch {
    pub stats: Arc<ModelStats>,
    pub chain: Arc<Chain>,
}

/// The stores opened at startup, before the models load, with what their
/// recovery did (for the log and the first state records).
pub struct Startup {
    pub stores: BTreeMap<String, store::ModelStore>,
    pub recoveries: Vec<(String, store::Recovery)>,
    /// Per model, the update file it serves instead of its configured one.
    pub overrides: BTreeMap<String, FileVersion>,
    /// Per model, its configured file and version, which a rollback past
    /// every update returns to.
    pub configured: Configured,
}

/// Opens every configured model's store (recovering from a crash) and
/// points the model's settings at its active update. Errors name the
/// directory; they stop the start, like an unwritable outbox.
pub fn open(settings: &mut Settings) -> Result<Startup, store::StoreError> {
    let mut out = Startup {
        stores: BTreeMap::new(),
        recoveries: Vec::new(),
        overrides: BTreeMap::new(),
        configured: BTreeMap::new(),
    };
    if settings.updates.is_none() {
        return Ok(out);
    }
    for ms in &mut settings.models {
        out.configured
            .insert(ms.name.clone(), (ms.path.clone(), ms.version.clone()));
        let (store, recoveries) = store::ModelStore::open(&settings.state_dir, &ms.name)?;
        out.recoveries
            .extend(recoveries.into_iter().map(|r| (ms.name.clone(), r)));
        if let (Some(path), Some(active)) = (store.active_path(), &store.record().active) {
            let fv = FileVersion {
                path,
                version: active.version.clone(),
            };
            apply(ms, &fv);
            out.overrides.insert(ms.name.clone(), fv);
        }
        out.stores.insert(ms.name.clone(), store);
    }
    Ok(out)
}

/// Per model, its configured file and version.
pub type Configured = BTreeMap<String, (PathBuf, Option<String>)>;

/// Points a model's settings back at its configured file, when known.
pub fn restore(ms: &mut crate::config::ModelSettings, configured: &Configured) {
    if let Some((path, version)) = configured.get(&ms.name) {
        ms.path = path.clone();
        ms.version = version.clone();
    }
}

/// Points a model's settings at an update's file.
pub fn apply(ms: &mut crate::config::ModelSettings, fv: &FileVersion) {
    ms.path = fv.path.clone();
    ms.version = Some(fv.version.clone());
}

impl Startup {
    /// Rolls back every model whose active update is among the models that
    /// did not load (`problems`): an update that passed every check once
    /// but does not load now (a changed config, another runtime library)
    /// must not keep the daemon down. True when one was rolled back, so
    /// the models are worth loading again.
    pub fn fall_back_unloadable(&mut self, settings: &mut Settings, problems: &[Problem]) -> bool {
        let mut rolled_back = false;
        for p in problems {
            let Some(ms) = settings.models.iter().find(|m| p.key.starts_with(&m.key)) else {
                continue;
            };
            let name = ms.name.clone();
            if self.overrides.contains_key(&name) {
                self.fall_back(settings, &name, &format!("it does not load at start: {p}"));
                rolled_back = true;
            }
        }
        rolled_back
    }

    /// Rolls `model` back from the update it was to start on, to the
    /// previous version or its configured file.
    fn fall_back(&mut self, settings: &mut Settings, model: &str, why: &str) {
        let Some(store) = self.stores.get_mut(model) else {
            return;
        };
        let reason = format!("the active update was rolled back: {why}");
        log::error!("model {model}: {reason}");
        let was = store.record().active.clone();
        let back = match store.rollback(&reason) {
            Ok(back) => back,
            Err(e) => {
                log::error!("model {model}: cannot record the rollback: {e}");
                None
            }
        };
        self.overrides.remove(model);
        let Some(ms) = settings.models.iter_mut().find(|m| m.name == model) else {
            return;
        };
        if let Some(installed) = was {
            self.recoveries.push((
                model.to_string(),
                store::Recovery::ActiveUnusable {
                    installed,
                    why: why.to_string(),
                    now_active: back.clone(),
                },
            ));
        }
        match back {
            Some(i) => {
                let fv = FileVersion {
                    path: store.file_path(&i.sha256),
                    version: i.version,
                };
                apply(ms, &fv);
                self.overrides.insert(model.to_string(), fv);
            }
            None => restore(ms, &self.configured),
        }
    }
}
