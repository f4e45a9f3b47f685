//! The supervisor of a running daemon: wires the pipeline together, then
//! runs one loop of events (signals, the health tick, the watchdog tick,
//! readiness). Its other jobs live beside it: `diff` decides what a reload
//! changes (pure), `reload` applies it, `drain` stops the daemon without
//! losing a message.

mod diff;
mod drain;
mod reload;
mod updates;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::signal::unix::{signal, SignalKind};

use crate::codec::ErrorCode;
use crate::config::{ModelSettings, OutboxSettings, Settings};
use crate::cores;
use crate::health::{self, HealthReporter, ModelView, StatusModel};
use crate::homeassistant::{self, ModelFacts};
use crate::memory;
use crate::metrics::{Endpoint, ModelGauges, ModelSource};
use crate::models::{self, Chain, LoadedModel, ModelContext};
use crate::mqtt::Connection;
use crate::outbox::OutboxService;
use crate::replies::Replies;
use crate::routing::{Announcements, Route, Routes, Switch, UpdateIntake};
use crate::systemd::Notifier;
use crate::telemetry::{self, DaemonStats, ModelStats, WorkerBeat, WorkerClass};
use crate::time::unix_now;
use crate::updates as update;
use crate::worker::{spawn_workers, JobReceiver, ModelQueue, Worker};
use model_runtime::Runtime;

/// One model being served (or, once retired, finishing its queue): the
/// consumer side of its queue and its workers. Routing holds the producer
/// side ([`Route`]); both share the model's [`ModelContext`].
struct Running {
    settings: ModelSettings,
    ctx: Arc<ModelContext>,
    status: StatusModel,
    /// The model's accelerators, shared with its engines.
    chain: Arc<Chain>,
    /// A consumer handle on the model's queue: its depth for health, and
    /// what is left in it when a drain times out. Holding it does not keep
    /// workers alive; only the route's sender does.
    queue: JobReceiver,
    workers: Vec<Worker>,
}

/// What the metrics endpoint reads of a running model: its queue depth, its
/// accelerators and its workers' classes, through the same handles health
/// uses.
struct Probe {
    queue: JobReceiver,
    chain: Arc<Chain>,
    beats: Vec<Arc<WorkerBeat>>,
}

impl ModelGauges for Probe {
    fn queue_depth(&self) -> usize {
        self.queue.len()
    }

    fn accelerator(&self) -> (String, u64) {
        let r = self.chain.report();
        (r.serving, r.switches)
    }

    fn workers_in(&self, class: WorkerClass) -> usize {
        telemetry::count_in(self.beats.iter().map(|b| &**b), class)
    }
}

impl Running {
    fn metrics_source(&self) -> ModelSource {
        ModelSource {
            name: self.ctx.name.clone(),
            stats: Arc::clone(&self.ctx.stats),
            queue_capacity: self.settings.queue_capacity,
            windowed: self.settings.window.is_some(),
            gauges: Box::new(Probe {
                queue: self.queue.clone(),
                chain: Arc::clone(&self.chain),
                beats: self.workers.iter().map(|w| Arc::clone(&w.beat)).collect(),
            }),
        }
    }

    /// A look at each worker in the background, for starving
    /// (`worker::sched::StarveWatch`).
    fn watch_starving(&mut self) {
        for w in &mut self.workers {
            w.starving.check(&w.beat);
        }
    }

    fn stalled_workers(&self, limit: Duration) -> usize {
        self.workers
            .iter()
            .filter(|w| w.beat.busy_for().is_some_and(|d| d > limit))
            .count()
    }

    fn workers_in(&self, class: WorkerClass) -> usize {
        telemetry::count_in(self.workers.iter().map(|w| &*w.beat), class)
    }

    fn finished(&self) -> bool {
        self.workers.iter().all(|w| w.handle.is_finished())
    }
}

/// Starts the workers of a loaded model behind a new queue. If a worker
/// thread cannot be started, the queue is dropped with the error, so the
/// threads already started exit at once.
fn launch(
    model: LoadedModel,
    stats: Arc<ModelStats>,
    replies: &Replies,
    epoch: Instant,
) -> std::io::Result<(Running, Route)> {
    let ms = model.checked.settings.clone();
    let ctx = Arc::new(ModelContext::new(&model.checked, stats));
    let (queue, rx) =
        ModelQueue::bounded(ms.queue_capacity, model.checked.queue_budget(), ms.overflow);
    let status = StatusModel::new(&model);
    let workers = spawn_workers(
        model.engines,
        &ctx,
        ms.threads as usize,
        &rx,
        replies,
        epoch,
    )?;
    let running = Running {
        settings: ms,
        ctx: Arc::clone(&ctx),
        status,
        chain: Arc::clone(&model.chain),
        queue: rx,
        workers,
    };
    Ok((running, Route { model: ctx, queue }))
}

/// Opens the outbox in the state dir (recovering what a crash left) and
/// starts its thread; none with `[outbox] max_bytes = 0`.
fn open_outbox(
    settings: &Settings,
    stats: &Arc<DaemonStats>,
) -> anyhow::Result<Option<OutboxService>> {
    let o = &settings.outbox;
    if !o.enabled() {
        log::info!(
            "no outbox (outbox.max_bytes = 0): answers that cannot be published wait in memory"
        );
        return Ok(None);
    }
    let dir = OutboxSettings::dir(&settings.state_dir);
    let service = OutboxService::start(&dir, o, Arc::clone(stats)).with_context(|| {
        format!(
            "cannot open the outbox in {} (set state_dir to a writable directory, or [outbox] max_bytes = 0 to run without one)",
            dir.display()
        )
    })?;
    Ok(Some(service))
}

/// Runs the daemon until SIGTERM/SIGINT. Models are already loaded and
/// warmed.
pub fn run(
    config_path: PathBuf,
    settings: Settings,
    runtime: Arc<Runtime>,
    models: Vec<LoadedModel>,
    updates: update::Startup,
) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    // The runtime runs on this thread (current_thread): the event loop.
    cores::start_event_loop();
    let result = rt.block_on(async move {
        let mut sup = Supervisor::start(config_path, settings, runtime, models, updates)?;
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
    /// Dropped by the drain: the publisher ends once every handle is gone.
    replies: Option<Replies>,
    switch: Arc<Switch>,
    /// Taken by the drain to close it.
    connection: Option<Connection>,
    /// In config order.
    models: Vec<Running>,
    /// Replaced models finishing the messages they had already taken.
    retired: Vec<Running>,
    notifier: Notifier,
    health: HealthReporter,
    /// The Prometheus endpoint (`[metrics]`), for the life of the process.
    metrics: Option<Endpoint>,
    started_at: f64,
    epoch: Instant,
    /// Home Assistant discovery: what is out, when it is due again, and
    /// the wake-up routing gives when Home Assistant announces itself.
    ha_published: homeassistant::Published,
    ha_schedule: homeassistant::Schedule,
    ha_online: Arc<tokio::sync::Notify>,
    /// Remote model updates (`[updates]`), when on.
    updates: Option<Updates>,
    /// Gives freed memory back after a burst.
    trimmer: memory::Trimmer,
}

/// The supervisor's side of remote model updates.
struct Updates {
    /// What routing hands manifests and chunks to; carried into every new
    /// routing state, dropped at drain (which ends the updates thread).
    intake: Option<UpdateIntake>,
    requests: tokio::sync::mpsc::UnboundedReceiver<update::Request>,
    /// Taken once its end has been logged.
    thread: Option<std::thread::JoinHandle<()>>,
    /// Per model, the update file served instead of the configured one: a
    /// reload keeps it.
    overrides: BTreeMap<String, update::FileVersion>,
    /// Per model, the configured file and version, from the last config
    /// read.
    configured: update::Configured,
    /// The last state record of each model, sent again on every connect
    /// of the output link (retained records offered while it was down
    /// were dropped).
    states: BTreeMap<String, Vec<u8>>,
}

/// Starts the updates thread when `[updates]` is on.
fn start_updates(
    settings: &Settings,
    runtime: &Arc<Runtime>,
    startup: update::Startup,
) -> anyhow::Result<Option<Updates>> {
    let Some(u) = &settings.updates else {
        return Ok(None);
    };
    let (tx, requests) = tokio::sync::mpsc::unbounded_channel();
    let overrides = startup.overrides.clone();
    let configured = startup.configured.clone();
    let agent = update::spawn(
        u.clone(),
        settings.device_id.clone(),
        settings.file_limits,
        settings.models.clone(),
        startup,
        Arc::clone(runtime),
        tx,
    )
    .context("cannot start the updates thread")?;
    Ok(Some(Updates {
        intake: Some(UpdateIntake {
            device_id: settings.device_id.clone(),
            chunk_filters: Arc::default(),
            to_agent: agent.input,
        }),
        requests,
        thread: Some(agent.handle),
        overrides,
        configured,
        states: BTreeMap::new(),
    }))
}

/// The next request of the updates thread; pending forever without one.
async fn next_request(updates: &mut Option<Updates>) -> Option<update::Request> {
    match updates {
        Some(u) => u.requests.recv().await,
        None => std::future::pending().await,
    }
}

/// What routing listens for on behalf of Home Assistant discovery, when it
/// is on.
fn announcements(settings: &Settings, online: &Arc<tokio::sync::Notify>) -> Option<Announcements> {
    settings.homeassistant.as_ref().map(|ha| Announcements {
        topic: crate::topic::homeassistant_status_topic(&ha.prefix),
        online: Arc::clone(online),
    })
}

impl Supervisor {
    fn start(
        config_path: PathBuf,
        settings: Settings,
        runtime: Arc<Runtime>,
        loaded: Vec<LoadedModel>,
        startup: update::Startup,
    ) -> anyhow::Result<Supervisor> {
        let stats = Arc::new(DaemonStats::default());
        // First, so a port in use stops the start before the broker hears
        // of this daemon.
        let metrics = settings
            .metrics
            .map(|m| Endpoint::start(m.listen, Arc::clone(&stats)))
            .transpose()?;
        let device = settings.device_id.clone();
        memory::fit_to_payloads(settings.max_payload_bytes);
        let max_packet = match &settings.uplink {
            Some(u) => (u.max_packet_bytes, "uplink.max_packet_bytes"),
            None => (settings.mqtt.max_packet_bytes, "mqtt.max_packet_bytes"),
        };
        let (replies, replies_rx) = Replies::channel(&device, Arc::clone(&stats), max_packet);
        let epoch = Instant::now();
        let mut models = Vec::new();
        let mut routes = Vec::new();
        for model in loaded {
            let name = model.checked.settings.name.clone();
            let (running, route) = launch(model, Arc::default(), &replies, epoch)
                .with_context(|| format!("cannot start the worker threads of model {name}"))?;
            models.push(running);
            routes.push(route);
        }
        let ha_online = Arc::new(tokio::sync::Notify::new());
        let updates = start_updates(&settings, &runtime, startup)?;
        let switch = Arc::new(Switch::new(
            Routes::new(routes, settings.max_payload_bytes, replies.clone())
                .with_announcements(announcements(&settings, &ha_online))
                .with_updates(updates.as_ref().and_then(|u| u.intake.clone())),
        ));
        let started_at = unix_now();
        let status: Vec<StatusModel> = models.iter().map(|m| m.status.clone()).collect();
        let outbox = open_outbox(&settings, &stats)?;
        let connection = Connection::start(
            &settings.mqtt,
            settings.uplink.as_ref(),
            &device,
            health::online(&device, started_at, &status),
            health::offline(&device, "connection lost", None),
            Arc::clone(&switch),
            replies_rx,
            replies.gauge(),
            Arc::clone(&stats),
            settings.ack,
            outbox,
        );
        let mut health = HealthReporter::new(&device, &settings.state_dir);
        health.ack_policy = settings.ack.as_str();
        if let Some(m) = &metrics {
            m.set_models(models.iter().map(Running::metrics_source).collect());
        }
        Ok(Supervisor {
            config_path,
            health,
            settings,
            runtime,
            stats,
            replies: Some(replies),
            switch,
            connection: Some(connection),
            models,
            retired: Vec::new(),
            notifier: Notifier::from_env(),
            metrics,
            started_at,
            epoch,
            ha_published: homeassistant::Published::default(),
            ha_schedule: homeassistant::Schedule::default(),
            ha_online,
            updates,
            trimmer: memory::Trimmer::default(),
        })
    }

    async fn serve(&mut self) -> anyhow::Result<()> {
        let mut sigterm =
            signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
        let mut sigint =
            signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
        let mut sighup =
            signal(SignalKind::hangup()).context("cannot install the SIGHUP handler")?;
        let connection = self
            .connection
            .as_ref()
            .context("the broker connection is gone")?;
        let mut subscribed = connection.subscribed();
        let mut output_connects = connection.output_connects();
        let ha_online = Arc::clone(&self.ha_online);
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
            let ha_due = self.ha_schedule.due();
            tokio::select! {
                _ = sigterm.recv() => break "SIGTERM",
                _ = sigint.recv() => break "SIGINT",
                _ = sighup.recv() => {
                    self.reload().await;
                    health_tick = tokio::time::interval(self.settings.health_interval);
                    health_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                }
                changed = subscribed.changed(), if !ready => {
                    if changed.is_err() || *subscribed.borrow() {
                        ready = true;
                        let names: Vec<&str> = self.models.iter().map(|m| m.ctx.name.as_str()).collect();
                        log::info!("ready: serving {} model(s): {}", names.len(), names.join(", "));
                        self.notifier.ready(&self.status_line());
                    }
                }
                _ = health_tick.tick() => self.publish_health(),
                // Retained records offered while the output link was down
                // were dropped: the discovery configs are due again.
                changed = output_connects.changed() => {
                    if changed.is_ok() && self.settings.homeassistant.is_some() {
                        self.ha_schedule.request(Instant::now(), Duration::ZERO);
                    }
                    if changed.is_ok() {
                        self.resend_update_states();
                    }
                }
                Some(request) = next_request(&mut self.updates) => self.on_update_request(request).await,
                _ = ha_online.notified() => {
                    if self.ha_schedule.due().is_none() {
                        let on = self.settings.homeassistant.as_ref().map_or_else(String::new, |ha| {
                            format!(" on {}", crate::topic::homeassistant_status_topic(&ha.prefix))
                        });
                        log::info!("Home Assistant announced itself{on}: discovery configs go out again");
                    }
                    self.ha_schedule.request(Instant::now(), homeassistant::ANNOUNCE_DELAY);
                }
                _ = tokio::time::sleep_until(ha_due.unwrap_or_else(Instant::now).into()), if ha_due.is_some() => {
                    self.publish_discovery();
                }
                _ = watchdog_tick.tick() => {
                    self.reap_retired();
                    for m in self.models.iter_mut().chain(self.retired.iter_mut()) {
                        m.watch_starving();
                    }
                    let queued = self.models.iter().map(|m| m.queue.len()).sum();
                    self.trimmer
                        .tick(self.stats.answers_confirmed.load(Ordering::Relaxed), queued);
                    self.check_updates_thread();
                    if let Some(replies) = &self.replies {
                        replies.flush_log(false);
                    }
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
        self.drain(signal_name).await;
        Ok(())
    }

    /// Why the pipeline cannot make progress, if it cannot.
    fn unhealthy(&self) -> Option<String> {
        match &self.connection {
            None => return Some("the broker connection is closed".into()),
            Some(c) => {
                if let Some(why) = c.trouble() {
                    return Some(why.into());
                }
            }
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
        let connected = self.connection.as_ref().is_some_and(Connection::connected);
        format!(
            "serving {} model(s); broker {}; {answered} results, {errors} errors",
            self.models.len(),
            if connected {
                "connected"
            } else {
                "disconnected"
            }
        )
    }

    fn publish_health(&mut self) {
        let limit = self.settings.stall_timeout;
        let running: BTreeSet<&str> = self.models.iter().map(|m| m.ctx.name.as_str()).collect();
        let views: Vec<ModelView<'_>> = self
            .models
            .iter()
            .map(|m| ModelView {
                name: &m.ctx.name,
                sha256: &m.ctx.sha256,
                version: m.settings.version.as_deref(),
                acceleration: m.chain.report(),
                workers: m.workers.len(),
                stalled_workers: m.stalled_workers(limit),
                worker_priority: m.settings.worker_priority.as_str(),
                background_workers: m.workers_in(WorkerClass::Background),
                priority_refused_workers: m.workers_in(WorkerClass::Refused),
                // A model a reload removed may hold its engines until its
                // workers have answered what they took.
                shares_engine_with: models::engine_sharers(&m.ctx.name)
                    .into_iter()
                    .filter(|other| running.contains(other.as_str()))
                    .collect(),
                stats: &m.ctx.stats,
                queue_depth: m.queue.len(),
                queue_capacity: m.settings.queue_capacity,
                windowed: m.settings.window.is_some(),
            })
            .collect();
        let payload = self.health.tick(&self.stats, &views);
        if let Some(replies) = &self.replies {
            replies.try_send(replies.health(payload));
        }
    }

    /// The online record of the current model set: published now and on
    /// every later connect.
    fn publish_status(&self) {
        let status: Vec<StatusModel> = self.models.iter().map(|m| m.status.clone()).collect();
        let payload = health::online(&self.settings.device_id, self.started_at, &status);
        if let Some(c) = &self.connection {
            c.set_online(payload.clone());
        }
        if let Some(replies) = &self.replies {
            replies.try_send(replies.status(payload));
        }
    }

    /// Publishes the discovery configs of the current model set and
    /// removes those of entities that are gone (all of them once
    /// `[homeassistant]` is off); none of this while it stays off.
    fn publish_discovery(&mut self) {
        let now = Instant::now();
        self.ha_schedule.sent(now);
        let device = &self.settings.device_id;
        let wanted = self.settings.homeassistant.as_ref().map(|ha| {
            let facts: Vec<ModelFacts<'_>> = self
                .models
                .iter()
                .map(|m| ModelFacts {
                    name: &m.ctx.name,
                    results: m.ctx.output_topic.subscription(device, &m.ctx.name),
                    labels: m.ctx.labels.as_deref(),
                    top_k: m.ctx.top_k.is_some(),
                })
                .collect();
            homeassistant::configs(&ha.prefix, device, &facts, self.health.has_temperature())
        });
        let messages = self.ha_published.update(wanted);
        if messages.is_empty() {
            return;
        }
        let removed = messages.iter().filter(|c| c.payload.is_empty()).count();
        log::info!(
            "Home Assistant discovery: {} config(s) published, {removed} removed",
            messages.len() - removed
        );
        if let Some(replies) = &self.replies {
            for c in messages {
                replies.try_send(replies.discovery(c.topic, c.payload));
            }
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

    /// Tells the metrics endpoint which models are served now.
    fn publish_metrics_models(&self) {
        if let Some(m) = &self.metrics {
            m.set_models(self.models.iter().map(Running::metrics_source).collect());
        }
    }

    /// The counters of every model by name, to carry over to a new version.
    fn stats_by_name(&self) -> HashMap<String, Arc<ModelStats>> {
        self.models
            .iter()
            .map(|m| (m.ctx.name.clone(), Arc::clone(&m.ctx.stats)))
            .collect()
    }
}
