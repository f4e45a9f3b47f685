//! The supervisor of a running daemon. It owns the running model set and
//! one loop of events: signals (SIGTERM/SIGINT drain and stop, SIGHUP
//! reloads), the health tick, the watchdog tick, and readiness. Reload works
//! from a diff: new and changed models are loaded and warmed first, then the
//! routing table is swapped in one step; a reload that fails changes nothing.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rumqttc::AsyncClient;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{watch, Notify};

use crate::codec::encode::error_json;
use crate::codec::{ErrorCode, Failure};
use crate::config::{self, ModelSettings, Problem, Settings};
use crate::health::{self, HealthReporter, ModelView, StatusModel, TensorInfo};
use crate::models::{self, LoadedModel};
use crate::mqtt::egress::{self, Egress, Outgoing};
use crate::mqtt::ingress::{self, Accepting, Ingress};
use crate::router::Router;
use crate::systemd::Notifier;
use crate::telemetry::{DaemonStats, ModelStats};
use crate::time::unix_now;
use crate::worker::{
    spawn_workers, Batching, JobReceiver, ModelContext, ModelQueue, Queued, Worker,
};
use model_runtime::Runtime;

pub fn errors_topic(device_id: &str) -> String {
    format!("edge-infer/{device_id}/errors")
}

/// One model being served (or, once retired, finishing its queue).
struct Running {
    settings: ModelSettings,
    ctx: Arc<ModelContext>,
    status: StatusModel,
    accelerator: String,
    /// A consumer handle on the model's queue: its depth for health, and
    /// what is left in it when a drain times out. Holding it does not keep
    /// workers alive; only senders do.
    queue: JobReceiver,
    workers: Vec<Worker>,
}

impl Running {
    fn stalled_workers(&self, limit: Duration) -> usize {
        self.workers
            .iter()
            .filter(|w| w.beat.busy_for().is_some_and(|d| d > limit))
            .count()
    }

    fn finished(&self) -> bool {
        self.workers.iter().all(|w| w.handle.is_finished())
    }
}

/// Runs the daemon until SIGTERM/SIGINT. Models are already loaded and
/// warmed.
pub fn run(
    config_path: PathBuf,
    settings: Settings,
    runtime: Runtime,
    models: Vec<LoadedModel>,
) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = rt.block_on(async move {
        let mut sup = Supervisor::start(config_path, settings, runtime, models)?;
        sup.serve().await
    });
    // A wedged worker never returns from its join task; do not wait for
    // it (the default drop would), the drain has already answered for it.
    rt.shutdown_timeout(Duration::from_secs(1));
    result
}

struct Supervisor {
    config_path: PathBuf,
    settings: Settings,
    runtime: Arc<Runtime>,
    stats: Arc<DaemonStats>,
    client: AsyncClient,
    egress: Option<Egress>,
    publisher: Option<tokio::task::JoinHandle<()>>,
    events: Option<tokio::task::JoinHandle<()>>,
    stop_tx: watch::Sender<bool>,
    ingress: Arc<Ingress>,
    subscribed_rx: watch::Receiver<bool>,
    models: Vec<Running>,
    /// Replaced models finishing the messages they had already taken.
    retired: Vec<Running>,
    notifier: Notifier,
    health: HealthReporter,
    started_at: f64,
    epoch: Instant,
}

impl Supervisor {
    fn start(
        config_path: PathBuf,
        settings: Settings,
        runtime: Runtime,
        loaded: Vec<LoadedModel>,
    ) -> anyhow::Result<Supervisor> {
        let stats = Arc::new(DaemonStats::default());
        let device = settings.device_id.clone();
        let status_topic = health::status_topic(&device);
        let will = health::offline(&device, "connection lost", None);
        let (client, eventloop) = crate::mqtt::connect(&settings.mqtt, &status_topic, will);
        let qos = crate::mqtt::qos(settings.mqtt.qos);
        let (egress, egress_rx) = Egress::channel(Arc::clone(&stats));
        let publisher = tokio::spawn(egress::run(
            egress_rx,
            client.clone(),
            qos,
            Arc::clone(&stats),
        ));
        let (subscribed_tx, subscribed_rx) = watch::channel(false);
        let ingress = Arc::new(Ingress {
            device_id: device.clone(),
            errors_topic: errors_topic(&device),
            status_topic,
            qos,
            reconnect_min: settings.mqtt.reconnect_min,
            reconnect_max: settings.mqtt.reconnect_max,
            stats: Arc::clone(&stats),
            accepting: std::sync::Mutex::new(None),
            progress: Notify::new(),
            subscribed: subscribed_tx,
        });
        let health = HealthReporter::new(&device, &settings.state_dir);
        let (stop_tx, _) = watch::channel(false);
        let mut sup = Supervisor {
            config_path,
            settings,
            runtime: Arc::new(runtime),
            stats,
            client,
            egress: Some(egress),
            publisher: Some(publisher),
            events: None,
            stop_tx,
            ingress,
            subscribed_rx,
            models: Vec::new(),
            retired: Vec::new(),
            notifier: Notifier::from_env(),
            health,
            started_at: unix_now(),
            epoch: Instant::now(),
        };
        let mut queues = Vec::new();
        let mut stats_by_name = HashMap::new();
        for model in loaded {
            let (running, queue) = sup.launch(model, &mut stats_by_name)?;
            sup.models.push(running);
            queues.push(queue);
        }
        let accepting = sup.accepting(queues, sup.egress.clone().context("publisher missing")?);
        *sup.ingress.lock() = Some(accepting);
        sup.events = Some(tokio::spawn(ingress::run(
            eventloop,
            sup.client.clone(),
            Arc::clone(&sup.ingress),
            sup.stop_tx.subscribe(),
        )));
        log::info!(
            "connecting to mqtt://{}:{} as {}",
            sup.settings.mqtt.host,
            sup.settings.mqtt.port,
            sup.settings.mqtt.client_id
        );
        Ok(sup)
    }

    /// Starts the workers of one loaded model behind a new queue. Counters
    /// carry over from a model of the same name (`stats_by_name`).
    fn launch(
        &self,
        model: LoadedModel,
        stats_by_name: &mut HashMap<String, Arc<ModelStats>>,
    ) -> anyhow::Result<(Running, ModelQueue)> {
        let ms = model.checked.settings.clone();
        let (queue, rx) = ModelQueue::bounded(ms.queue_capacity, ms.queue_max_bytes, ms.overflow);
        let stats = stats_by_name.remove(&ms.name).unwrap_or_default();
        let ctx = Arc::new(ModelContext {
            name: ms.name.clone(),
            sha256: model.checked.sha256.clone(),
            device_id: self.settings.device_id.clone(),
            errors_topic: self.ingress.errors_topic.clone(),
            input_topic: ms.input_topic.clone(),
            output_topic: ms.output_topic.clone(),
            payload: ms.payload,
            message_inputs: model.checked.inputs.clone(),
            message_outputs: model.checked.outputs.clone(),
            batching: Batching {
                max_batch: ms.max_batch,
                max_delay: ms.max_delay,
            },
            labels: model.checked.labels.clone(),
            top_k: model.checked.top_k,
            stats,
        });
        let status = StatusModel {
            name: ms.name.clone(),
            path: ms.path.display().to_string(),
            sha256: model.checked.sha256.clone(),
            input_topic: ms.input_topic.to_string(),
            output_topic: ms.output_topic.as_str().to_string(),
            accelerator: model.accelerator.clone(),
            workers: model.engines.len(),
            inputs: model
                .checked
                .inputs
                .iter()
                .map(TensorInfo::from_spec)
                .collect(),
            outputs: model
                .checked
                .outputs
                .iter()
                .map(TensorInfo::from_spec)
                .collect(),
        };
        let egress = self
            .egress
            .as_ref()
            .context("the publisher is already stopped")?;
        let workers = spawn_workers(model.engines, &ctx, &rx, egress, self.epoch)
            .context("cannot start worker threads")?;
        Ok((
            Running {
                settings: ms,
                ctx,
                status,
                accelerator: model.accelerator,
                queue: rx,
                workers,
            },
            queue,
        ))
    }

    /// The routing state for the current model set, given its queues in the
    /// same order.
    fn accepting(&self, queues: Vec<ModelQueue>, egress: Egress) -> Accepting {
        let settings: Vec<ModelSettings> = self.models.iter().map(|m| m.settings.clone()).collect();
        let status: Vec<StatusModel> = self.models.iter().map(|m| m.status.clone()).collect();
        Accepting {
            router: Router::new(&settings),
            queues,
            names: self.models.iter().map(|m| m.ctx.name.clone()).collect(),
            stats: self
                .models
                .iter()
                .map(|m| Arc::clone(&m.ctx.stats))
                .collect(),
            egress,
            max_payload_bytes: self.settings.max_payload_bytes,
            online_status: health::online(&self.settings.device_id, self.started_at, &status),
        }
    }

    async fn serve(&mut self) -> anyhow::Result<()> {
        let mut sigterm =
            signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
        let mut sigint =
            signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
        let mut sighup =
            signal(SignalKind::hangup()).context("cannot install the SIGHUP handler")?;
        let mut health_tick = tokio::time::interval(self.settings.health_interval);
        health_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Checked every second (or faster if systemd asks for pings more
        // often); pings go out only while the pipeline is healthy.
        let watchdog_every = self
            .notifier
            .watchdog
            .map(|w| (w / 2).min(Duration::from_secs(1)))
            .unwrap_or(Duration::from_secs(1));
        let mut watchdog_tick = tokio::time::interval(watchdog_every);
        let mut ready = false;
        let mut last_status = String::new();
        let mut unhealthy_reported = false;
        let signal_name = loop {
            tokio::select! {
                _ = sigterm.recv() => break "SIGTERM",
                _ = sigint.recv() => break "SIGINT",
                _ = sighup.recv() => {
                    self.reload().await;
                    health_tick = tokio::time::interval(self.settings.health_interval);
                    health_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                }
                changed = self.subscribed_rx.changed(), if !ready => {
                    if changed.is_err() || *self.subscribed_rx.borrow() {
                        ready = true;
                        let names: Vec<&str> = self.models.iter().map(|m| m.ctx.name.as_str()).collect();
                        log::info!("ready: serving {} model(s): {}", names.len(), names.join(", "));
                        self.notifier.ready(&self.status_line());
                    }
                }
                _ = health_tick.tick() => self.publish_health(),
                _ = watchdog_tick.tick() => {
                    self.reap_retired();
                    match self.unhealthy() {
                        None => {
                            unhealthy_reported = false;
                            self.notifier.watchdog_ping();
                            let line = self.status_line();
                            if ready && line != last_status {
                                self.notifier.status(&line);
                                last_status = line;
                            }
                        }
                        Some(why) => {
                            if !unhealthy_reported {
                                log::error!("watchdog: {why}; no longer telling systemd we are alive");
                                self.notifier.status(&format!("unhealthy: {why}"));
                                unhealthy_reported = true;
                            }
                        }
                    }
                }
            }
        };
        self.shutdown(signal_name).await;
        Ok(())
    }

    /// Why the pipeline cannot make progress, if it cannot.
    fn unhealthy(&self) -> Option<String> {
        if self.events.as_ref().is_none_or(|e| e.is_finished()) {
            return Some("the MQTT event loop has stopped".into());
        }
        if self.publisher.as_ref().is_none_or(|p| p.is_finished()) {
            return Some("the publisher task has stopped".into());
        }
        for m in &self.models {
            if let Some(i) = m.workers.iter().position(|w| w.handle.is_finished()) {
                return Some(format!("worker {i} of model '{}' has exited", m.ctx.name));
            }
        }
        let limit = self.settings.stall_timeout;
        // Retired versions count too: a wedged one never frees its model.
        for m in self.models.iter().chain(self.retired.iter()) {
            for (i, w) in m.workers.iter().enumerate() {
                if let Some(busy) = w.beat.busy_for().filter(|d| *d > limit) {
                    return Some(format!(
                        "worker {i} of model '{}' has been running one message for {:.1} s (health.stall_timeout_secs = {})",
                        m.ctx.name,
                        busy.as_secs_f64(),
                        limit.as_secs_f64()
                    ));
                }
            }
        }
        None
    }

    fn status_line(&self) -> String {
        let answered: u64 = self.models.iter().map(|m| m.ctx.stats.succeeded()).sum();
        let errors: u64 = self
            .models
            .iter()
            .map(|m| {
                ErrorCode::ALL
                    .iter()
                    .map(|c| m.ctx.stats.errors(*c))
                    .sum::<u64>()
            })
            .sum();
        format!(
            "serving {} model(s); broker {}; {answered} results, {errors} errors",
            self.models.len(),
            if self.stats.connected.load(Ordering::Relaxed) {
                "connected"
            } else {
                "disconnected"
            }
        )
    }

    fn publish_health(&mut self) {
        let limit = self.settings.stall_timeout;
        let views: Vec<ModelView<'_>> = self
            .models
            .iter()
            .map(|m| ModelView {
                name: &m.ctx.name,
                sha256: &m.ctx.sha256,
                accelerator: &m.accelerator,
                workers: m.workers.len(),
                stalled_workers: m.stalled_workers(limit),
                stats: &m.ctx.stats,
                queue_depth: m.queue.len(),
                queue_capacity: m.settings.queue_capacity,
            })
            .collect();
        let payload = self.health.tick(&self.stats, &views);
        if let Some(egress) = &self.egress {
            egress.try_send(Outgoing::retained(
                health::health_topic(&self.settings.device_id),
                payload,
            ));
        }
    }

    fn reap_retired(&mut self) {
        self.retired.retain(|r| {
            let done = r.finished();
            if done {
                log::info!(
                    "model {} (sha256 {}): previous version finished its queue and was freed",
                    r.ctx.name,
                    &r.ctx.sha256[..12]
                );
            }
            !done
        });
    }

    /// SIGHUP: re-read config and models, apply the difference, or keep
    /// everything as it is and say why.
    async fn reload(&mut self) {
        self.notifier.reloading();
        log::info!("SIGHUP: reloading {}", self.config_path.display());
        match self.try_reload().await {
            Ok(summary) => {
                log::info!("reload: {summary}");
                self.publish_status();
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
                if let (Some(payload), Some(egress)) = (
                    error_json(&self.settings.device_id, None, None, unix_now(), None, &f),
                    &self.egress,
                ) {
                    egress.try_send(Outgoing::message(
                        self.ingress.errors_topic.clone(),
                        payload,
                    ));
                }
            }
        }
        self.notifier.ready(&self.status_line());
    }

    async fn try_reload(&mut self) -> Result<String, Vec<Problem>> {
        let new = config::load(&self.config_path).map_err(|e| e.problems)?;
        let mut problems = Vec::new();
        let fixed = |key: &str, message: String| Problem {
            key: key.to_string(),
            message,
        };
        if new.device_id != self.settings.device_id {
            problems.push(fixed(
                "device_id",
                "cannot change on reload; restart the service".into(),
            ));
        }
        if new.mqtt != self.settings.mqtt {
            problems.push(fixed(
                "mqtt",
                "broker settings cannot change on reload; restart the service".into(),
            ));
        }
        if new.runtime_library != self.settings.runtime_library {
            problems.push(fixed(
                "runtime.library",
                "cannot change on reload; restart the service".into(),
            ));
        }
        if new.state_dir != self.settings.state_dir {
            problems.push(fixed(
                "state_dir",
                "cannot change on reload; restart the service".into(),
            ));
        }
        if !problems.is_empty() {
            return Err(problems);
        }

        // Load and warm every new or changed model before touching anything.
        // This reads files and runs warm-up inferences, so it happens on a
        // blocking thread, not on the event loop's.
        let running: Vec<(ModelSettings, String)> = self
            .models
            .iter()
            .map(|m| (m.settings.clone(), m.ctx.sha256.clone()))
            .collect();
        let wanted = new.models.clone();
        let runtime = Arc::clone(&self.runtime);
        let plan = tokio::task::spawn_blocking(move || plan_reload(&runtime, &running, &wanted))
            .await
            .map_err(|e| vec![fixed("(daemon)", format!("the model loader failed: {e}"))])??;

        // Swap: everything below only moves already-working pieces.
        let mut guard = self.ingress.lock();
        let Some(old) = guard.take() else {
            return Err(vec![fixed("(daemon)", "draining; reload ignored".into())]);
        };
        let old_filters = old.router.filters();
        let mut old_queues: Vec<Option<ModelQueue>> = old.queues.into_iter().map(Some).collect();
        let mut old_models: Vec<Option<Running>> = std::mem::take(&mut self.models)
            .into_iter()
            .map(Some)
            .collect();
        let mut stats_by_name: HashMap<String, Arc<ModelStats>> = old_models
            .iter()
            .flatten()
            .map(|m| (m.ctx.name.clone(), Arc::clone(&m.ctx.stats)))
            .collect();
        let (mut kept, mut loaded) = (Vec::new(), Vec::new());
        let mut queues = Vec::new();
        for step in plan {
            match step {
                Plan::Keep(i) => {
                    if let (Some(m), Some(q)) = (old_models[i].take(), old_queues[i].take()) {
                        kept.push(m.ctx.name.clone());
                        stats_by_name.remove(&m.ctx.name);
                        self.models.push(m);
                        queues.push(q);
                    }
                }
                Plan::Load(m) => {
                    let name = m.checked.settings.name.clone();
                    match self.launch(*m, &mut stats_by_name) {
                        Ok((running, q)) => {
                            loaded.push(name);
                            self.models.push(running);
                            queues.push(q);
                        }
                        Err(e) => log::error!("reload: cannot start model {name}: {e:#}"),
                    }
                }
            }
        }
        let removed: Vec<String> = old_models
            .iter()
            .flatten()
            .filter(|m| !self.models.iter().any(|n| n.ctx.name == m.ctx.name))
            .map(|m| m.ctx.name.clone())
            .collect();
        // Replaced and removed models keep running until their queues are
        // empty: the messages they took finish on the version they started on.
        self.retired.extend(old_models.into_iter().flatten());
        self.settings = new;
        crate::logging::set_level(self.settings.log_level.to_filter());
        self.health.set_state_dir(&self.settings.state_dir);
        let accepting = self.accepting(queues, old.egress);
        let new_filters = accepting.router.filters();
        *guard = Some(accepting);
        drop(guard);
        // Dropping the old queues' senders (here) lets retired workers exit.
        drop(old_queues);

        let subscribe: Vec<String> = new_filters
            .iter()
            .filter(|f| !old_filters.contains(f))
            .cloned()
            .collect();
        let unsubscribe: Vec<String> = old_filters
            .iter()
            .filter(|f| !new_filters.contains(f))
            .cloned()
            .collect();
        let client = self.client.clone();
        let qos = self.ingress.qos;
        tokio::spawn(async move {
            if !subscribe.is_empty() {
                let subs = subscribe
                    .into_iter()
                    .map(|f| rumqttc::SubscribeFilter::new(f, qos));
                if let Err(e) = client.subscribe_many(subs).await {
                    log::error!("reload: could not subscribe: {e}");
                }
            }
            for f in unsubscribe {
                if let Err(e) = client.unsubscribe(f.clone()).await {
                    log::error!("reload: could not unsubscribe from {f}: {e}");
                }
            }
        });
        Ok(format!(
            "{} model(s) kept ({}), {} loaded ({}), {} removed ({})",
            kept.len(),
            kept.join(", "),
            loaded.len(),
            loaded.join(", "),
            removed.len(),
            removed.join(", ")
        ))
    }

    fn publish_status(&self) {
        let status: Vec<StatusModel> = self.models.iter().map(|m| m.status.clone()).collect();
        let payload = health::online(&self.settings.device_id, self.started_at, &status);
        if let Some(egress) = &self.egress {
            egress.try_send(Outgoing::retained(
                self.ingress.status_topic.clone(),
                payload,
            ));
        }
    }

    /// Drain: stop taking messages, let workers finish what they took (up
    /// to the drain timeout, then answer the rest with `shutting_down`),
    /// wait for the broker to confirm every reply, publish offline,
    /// disconnect.
    async fn shutdown(&mut self, signal_name: &str) {
        self.notifier.stopping();
        let drain_timeout = self.settings.drain_timeout;
        let deadline = Instant::now() + drain_timeout;
        log::info!(
            "{signal_name}: draining (up to {drain_timeout:?}); new messages stay with the broker"
        );
        drop(self.ingress.stop_accepting());
        let mut all: Vec<Running> = std::mem::take(&mut self.models);
        all.append(&mut self.retired);
        let handles: Vec<_> = all
            .iter_mut()
            .flat_map(|m| m.workers.drain(..).map(|w| w.handle))
            .collect();
        let joiner = tokio::task::spawn_blocking(move || {
            for h in handles {
                let _ = h.join();
            }
        });
        if tokio::time::timeout_at(deadline.into(), joiner)
            .await
            .is_err()
        {
            let mut abandoned = 0;
            for m in &all {
                for Queued { job, .. } in m.queue.take_all() {
                    abandoned += 1;
                    m.ctx.stats.error(ErrorCode::ShuttingDown);
                    let f = Failure::new(
                        ErrorCode::ShuttingDown,
                        format!(
                            "the daemon stopped before model '{}' got to this message",
                            m.ctx.name
                        ),
                    );
                    let payload = error_json(
                        &self.settings.device_id,
                        Some(&m.ctx.name),
                        Some(&job.topic),
                        job.received_at,
                        None,
                        &f,
                    );
                    if let (Some(payload), Some(egress)) = (payload, &self.egress) {
                        egress.try_send(Outgoing::message(
                            self.ingress.errors_topic.clone(),
                            payload,
                        ));
                    }
                }
            }
            log::warn!(
                "drain timed out: {abandoned} queued message(s) answered with shutting_down"
            );
        }
        // The offline record goes last, after every reply.
        if let Some(egress) = &self.egress {
            let offline = health::offline(&self.settings.device_id, "shutdown", Some(unix_now()));
            egress.try_send(Outgoing::retained(
                self.ingress.status_topic.clone(),
                offline,
            ));
        }
        self.egress = None;
        let grace = deadline.max(Instant::now() + Duration::from_secs(2));
        if let Some(p) = self.publisher.take() {
            let _ = tokio::time::timeout_at(grace.into(), p).await;
        }
        self.wait_for_acks(grace).await;
        let _ = self.client.try_disconnect();
        self.stop_tx.send_replace(true);
        if let Some(events) = self.events.take() {
            let _ = tokio::time::timeout(Duration::from_secs(3), events).await;
        }
        // Summaries: one line per model name, counters carried over reloads.
        let mut seen = Vec::new();
        for m in &all {
            if !seen.contains(&m.ctx.name) {
                seen.push(m.ctx.name.clone());
                log::info!("model {}: {}", m.ctx.name, m.ctx.stats.summary());
            }
        }
        log::info!("stopped");
    }

    async fn wait_for_acks(&self, until: Instant) {
        loop {
            let notified = self.ingress.progress.notified();
            let requested = self.stats.publishes_requested.load(Ordering::Relaxed);
            let done = self.stats.publishes_done.load(Ordering::Relaxed);
            if done >= requested {
                return;
            }
            if !self.stats.connected.load(Ordering::Relaxed)
                || tokio::time::timeout_at(until.into(), notified)
                    .await
                    .is_err()
            {
                log::warn!(
                    "{} reply(ies) not confirmed by the broker at shutdown",
                    requested - done
                );
                return;
            }
        }
    }
}

/// Decides, per wanted model, whether the running one stays or a new one is
/// loaded (and warmed); collects every problem.
fn plan_reload(
    runtime: &Runtime,
    running: &[(ModelSettings, String)],
    wanted: &[ModelSettings],
) -> Result<Vec<Plan>, Vec<Problem>> {
    let mut plan = Vec::with_capacity(wanted.len());
    let mut problems = Vec::new();
    for ms in wanted {
        // Unchanged means the same settings and the same file contents.
        let unchanged = running.iter().position(|(settings, sha)| {
            settings == ms && std::fs::read(&ms.path).is_ok_and(|b| models::sha256_hex(&b) == *sha)
        });
        match unchanged {
            Some(i) => plan.push(Plan::Keep(i)),
            None => match models::load_one(ms, runtime) {
                Ok(m) => plan.push(Plan::Load(Box::new(m))),
                Err(p) => problems.push(p),
            },
        }
    }
    if problems.is_empty() {
        Ok(plan)
    } else {
        Err(problems)
    }
}

enum Plan {
    /// Index into the running models: unchanged, keeps serving.
    Keep(usize),
    /// New or changed: loaded and warmed, not yet serving.
    Load(Box<LoadedModel>),
}
