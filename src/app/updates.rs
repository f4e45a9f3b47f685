//! The supervisor's part of remote model updates: what the updates thread
//! asks for. A swap is a reload with one model's file changed, through the
//! same steps (`reload::apply`), so it has the same guarantees: the new
//! version is loaded and its workers started before routing switches, and
//! the old one finishes what it took.

use super::Supervisor;
use crate::updates::{self as update, FileVersion, Request, Watch};

impl Supervisor {
    pub(super) async fn on_update_request(&mut self, request: Request) {
        match request {
            Request::Subscribe(filter) => self.chunk_filters(filter, true),
            Request::Unsubscribe(filter) => self.chunk_filters(filter, false),
            Request::State { model, payload } => {
                if let Some(replies) = &self.replies {
                    replies.try_send(replies.model_state(&model, payload.clone()));
                }
                if let Some(u) = &mut self.updates {
                    u.states.insert(model, payload);
                }
            }
            Request::Swap { model, to, done } => {
                let outcome = self.swap_model(&model, to).await;
                let _ = done.send(outcome);
            }
        }
    }

    fn chunk_filters(&mut self, filter: String, on: bool) {
        let Some(intake) = self.updates.as_ref().and_then(|u| u.intake.as_ref()) else {
            return;
        };
        if let Ok(mut filters) = intake.chunk_filters.lock() {
            let had = filters.contains(&filter);
            if on && !had {
                filters.push(filter.clone());
            } else if !on && had {
                filters.retain(|f| *f != filter);
            } else {
                return;
            }
        }
        if let Some(c) = &self.connection {
            let (old, new) = if on {
                (Vec::new(), vec![filter])
            } else {
                (vec![filter], Vec::new())
            };
            c.resubscribe(&old, &new);
        }
    }

    /// Serves `model` from `to` (None: its configured file).
    async fn swap_model(&mut self, model: &str, to: Option<FileVersion>) -> Result<Watch, String> {
        let Some(u) = &mut self.updates else {
            return Err("updates are off".into());
        };
        match &to {
            Some(fv) => u.overrides.insert(model.to_string(), fv.clone()),
            None => u.overrides.remove(model),
        };
        let mut new = self.settings.clone();
        self.override_models(&mut new, false);
        if let Err(problems) = self.apply(new).await {
            let text = problems
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join("; ");
            return Err(text);
        }
        log::info!("update: model {model} swapped");
        self.publish_status();
        self.publish_discovery();
        let running = self
            .models
            .iter()
            .find(|m| m.ctx.name == model)
            .ok_or_else(|| format!("model {model} is not served after the swap"))?;
        Ok(Watch {
            stats: std::sync::Arc::clone(&running.ctx.stats),
            chain: std::sync::Arc::clone(&running.chain),
        })
    }

    /// Points each model at its update file, or at its configured one.
    /// `fresh`: the settings were just read from the config file, which
    /// then says what "configured" is.
    pub(super) fn override_models(&mut self, settings: &mut crate::config::Settings, fresh: bool) {
        let Some(u) = &mut self.updates else {
            return;
        };
        for ms in &mut settings.models {
            if fresh {
                u.configured
                    .insert(ms.name.clone(), (ms.path.clone(), ms.version.clone()));
            }
            match u.overrides.get(&ms.name) {
                Some(fv) => update::apply(ms, fv),
                None => update::restore(ms, &u.configured),
            }
        }
    }

    /// Every model's last state record again (a new output-link session).
    pub(super) fn resend_update_states(&self) {
        let (Some(u), Some(replies)) = (&self.updates, &self.replies) else {
            return;
        };
        for (model, payload) in &u.states {
            replies.try_send(replies.model_state(model, payload.clone()));
        }
    }

    /// The updates thread only ends with the daemon; if it ends before
    /// (a panic), serving goes on and the operator is told once.
    pub(super) fn check_updates_thread(&mut self) {
        let Some(u) = &mut self.updates else {
            return;
        };
        if u.thread.as_ref().is_some_and(|t| t.is_finished()) {
            u.thread = None;
            log::error!("the updates thread stopped (a bug; see the lines before); models are served as they are, remote updates resume after a restart");
        }
    }

    /// The updates thread hears of the configured models after a reload.
    pub(super) fn tell_updates_models(&self) {
        let Some(u) = &self.updates else {
            return;
        };
        let Some(intake) = &u.intake else {
            return;
        };
        let configured: Vec<crate::config::ModelSettings> = self
            .settings
            .models
            .iter()
            .map(|ms| {
                let mut ms = ms.clone();
                update::restore(&mut ms, &u.configured);
                ms
            })
            .collect();
        let _ = intake.to_agent.send(update::Input::Models(configured));
    }
}
