//! SIGHUP: re-read the config and models and apply the difference, or
//! keep everything as it is and say why. Every step that can fail happens
//! before the swap: load and warm the new models (on a blocking thread),
//! then start their workers. The swap itself only moves working pieces:
//! the routing state is replaced in one step under its lock, kept models
//! carry their queue and workers over, replaced and removed ones are
//! retired and finish what they had taken.

use std::collections::HashMap;
use std::sync::Arc;

use super::diff::{Diff, Facts};
use super::{launch, Running, Supervisor};
use crate::codec::{ErrorCode, Failure};
use crate::config::{self, FileLimits, ModelSettings, Problem, Settings};
use crate::cores;
use crate::memory;
use crate::models::{self, LoadedModel};
use crate::routing::{Route, Routes};

fn problem(key: &str, message: impl Into<String>) -> Problem {
    Problem {
        key: key.to_string(),
        message: message.into(),
    }
}

impl Supervisor {
    pub(super) async fn reload(&mut self) {
        self.notifier.reloading();
        log::info!("SIGHUP: reloading {}", self.config_path.display());
        match self.try_reload().await {
            Ok(summary) => {
                log::info!("reload: {summary}");
                self.publish_status();
                self.publish_discovery();
            }
            Err(problems) => {
                let text = problems
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join("; ");
                log::error!("reload failed, keeping the running configuration: {text}");
                let f = Failure::new(
                    ErrorCode::ReloadFailed,
                    format!(
                        "reload of {} failed, the running configuration is kept: {text}",
                        self.config_path.display()
                    ),
                );
                if let Some(replies) = &self.replies {
                    if let Some(notice) = replies.notice(&f) {
                        replies.try_send(notice);
                    }
                }
            }
        }
        self.notifier.ready(&self.status_line());
    }

    async fn try_reload(&mut self) -> Result<String, Vec<Problem>> {
        let mut new = config::load(&self.config_path).map_err(|e| e.problems)?;
        self.check_fixed(&new)?;
        self.override_models(&mut new, true);
        let summary = self.apply(new).await?;
        self.tell_updates_models();
        Ok(summary)
    }

    /// Moves the daemon to `new` (checked settings): every step that can
    /// fail first, then the swap. A reload and a model update both come
    /// through here.
    pub(super) async fn apply(&mut self, new: Settings) -> Result<String, Vec<Problem>> {
        // Decide, then load and warm every new or changed model. This reads
        // files and runs warm-up inferences, so it happens on a blocking
        // thread, not on the event loop's.
        let running: Vec<(ModelSettings, String)> = self
            .models
            .iter()
            .map(|m| (m.settings.clone(), m.ctx.sha256.clone()))
            .collect();
        let wanted = new.models.clone();
        let limits = new.file_limits;
        let runtime = Arc::clone(&self.runtime);
        // A thread of its own rather than tokio's blocking pool, whose spawn
        // panics when the system is out of threads.
        let (tx, rx) = tokio::sync::oneshot::channel();
        cores::spawn(
            std::thread::Builder::new().name("reload".into()),
            move || {
                let _ = tx.send(plan(&runtime, &limits, &running, &wanted));
            },
        )
        .map_err(|e| {
            vec![problem(
                "(daemon)",
                format!("cannot start the model loader thread: {e}"),
            )]
        })?;
        let (diff, loaded) = rx.await.map_err(|_| {
            vec![problem(
                "(daemon)",
                "the model loader stopped without an answer (it panicked; see the log)",
            )]
        })??;

        // Start the new models' workers. A failure drops what was started
        // (their queues close, their threads exit) and changes nothing.
        let Some(replies) = self.replies.clone() else {
            return Err(vec![problem("(daemon)", "draining; reload ignored")]);
        };
        let mut stats = self.stats_by_name();
        let mut started: HashMap<String, (Running, Route)> = HashMap::new();
        for model in loaded {
            let ms = model.checked.settings.clone();
            let model_stats = stats.remove(&ms.name).unwrap_or_default();
            match launch(model, model_stats, &replies, self.epoch) {
                Ok(pair) => {
                    started.insert(ms.name.clone(), pair);
                }
                Err(e) => {
                    return Err(vec![problem(
                        &format!("{}.workers", ms.key),
                        format!("cannot start the worker threads of model {}: {e}", ms.name),
                    )])
                }
            }
        }

        // The swap: nothing below can fail.
        let mut guard = self.switch.lock();
        let Some(old) = guard.take() else {
            return Err(vec![problem("(daemon)", "draining; reload ignored")]);
        };
        let old_filters = old.filters();
        let mut old_routes: HashMap<String, Route> = old
            .into_routes()
            .into_iter()
            .map(|r| (r.model.name.clone(), r))
            .collect();
        let mut old_models: HashMap<String, Running> = std::mem::take(&mut self.models)
            .into_iter()
            .map(|m| (m.ctx.name.clone(), m))
            .collect();
        let mut routes = Vec::with_capacity(new.models.len());
        for ms in &new.models {
            let kept = if diff.keeps(&ms.name) {
                match (old_models.remove(&ms.name), old_routes.remove(&ms.name)) {
                    (Some(m), Some(r)) => Some((m, r)),
                    _ => None,
                }
            } else {
                None
            };
            // `plan` loaded every model it did not keep, and the running
            // models and their routes are made and swapped together, so
            // one of the two always holds the model.
            match kept.or_else(|| started.remove(&ms.name)) {
                Some((m, r)) => {
                    self.models.push(m);
                    routes.push(r);
                }
                None => log::error!(
                    "reload: model {} is neither running nor loaded; it is not served (a bug)",
                    ms.name
                ),
            }
        }
        let routes = Routes::new(routes, new.max_payload_bytes, replies)
            .with_announcements(super::announcements(&new, &self.ha_online))
            .with_updates(self.updates.as_ref().and_then(|u| u.intake.clone()));
        let new_filters = routes.filters();
        *guard = Some(routes);
        drop(guard);
        if new.max_payload_bytes != self.settings.max_payload_bytes {
            memory::fit_to_payloads(new.max_payload_bytes);
        }
        // Dropping the old routes closes the retired queues: their workers
        // finish the messages they took, on the version they started on.
        drop(old_routes);
        self.retired.extend(old_models.into_values());
        self.publish_metrics_models();

        self.settings = new;
        crate::logging::set_level(self.settings.log_level.to_filter());
        self.health.set_state_dir(&self.settings.state_dir);
        if let Some(c) = &self.connection {
            c.resubscribe(&old_filters, &new_filters);
        }
        Ok(format!(
            "{} model(s) kept ({}), {} loaded ({}), {} removed ({})",
            diff.keep.len(),
            diff.keep.join(", "),
            diff.load.len(),
            diff.load.join(", "),
            diff.remove.len(),
            diff.remove.join(", ")
        ))
    }

    /// Settings only a restart can change.
    fn check_fixed(&self, new: &Settings) -> Result<(), Vec<Problem>> {
        let restart = "cannot change on reload; restart the service";
        let mut problems = Vec::new();
        if new.device_id != self.settings.device_id {
            problems.push(problem("device_id", restart));
        }
        if new.mqtt != self.settings.mqtt {
            problems.push(problem(
                "mqtt",
                "broker settings cannot change on reload; restart the service",
            ));
        }
        if new.uplink != self.settings.uplink {
            problems.push(problem(
                "uplink",
                "broker settings cannot change on reload; restart the service",
            ));
        }
        if new.runtime_library != self.settings.runtime_library {
            problems.push(problem("runtime.library", restart));
        }
        if new.state_dir != self.settings.state_dir {
            problems.push(problem("state_dir", restart));
        }
        // The outbox's thread and the acknowledgement policy belong to the
        // broker connection, which lives as long as the process.
        if new.outbox != self.settings.outbox {
            problems.push(problem("outbox", restart));
        }
        if new.ack != self.settings.ack {
            problems.push(problem("delivery.ack", restart));
        }
        // The endpoint's socket is bound once, before the broker hears of
        // the daemon; rebinding on reload could fail after models swapped.
        if new.metrics != self.settings.metrics {
            problems.push(problem("metrics", restart));
        }
        // The updates thread holds the keys and the stores it opened at
        // start.
        if new.updates != self.settings.updates {
            problems.push(problem("updates", restart));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

/// The diff between the running models (settings, sha256) and the wanted
/// ones, and every model it does not keep, loaded and warmed; or every
/// problem found.
fn plan(
    runtime: &Arc<model_runtime::Runtime>,
    limits: &FileLimits,
    running: &[(ModelSettings, String)],
    wanted: &[ModelSettings],
) -> Result<(Diff, Vec<LoadedModel>), Vec<Problem>> {
    let running_facts: Vec<Facts<'_>> = running
        .iter()
        .map(|(settings, sha)| Facts {
            settings,
            sha256: Some(sha),
        })
        .collect();
    let shas: Vec<Option<String>> = wanted
        .iter()
        .map(|ms| {
            models::read_model_file(&ms.path, limits.max_model_bytes)
                .ok()
                .map(|b| models::sha256_hex(&b))
        })
        .collect();
    let wanted_facts: Vec<Facts<'_>> = wanted
        .iter()
        .zip(&shas)
        .map(|(settings, sha)| Facts {
            settings,
            sha256: sha.as_deref(),
        })
        .collect();
    let diff = Diff::between(&running_facts, &wanted_facts);
    let mut loaded = Vec::new();
    let mut problems = Vec::new();
    for ms in wanted.iter().filter(|ms| !diff.keeps(&ms.name)) {
        match models::load_one(ms, limits, runtime) {
            Ok(m) => loaded.push(m),
            Err(p) => problems.push(p),
        }
    }
    if problems.is_empty() {
        Ok((diff, loaded))
    } else {
        Err(problems)
    }
}
