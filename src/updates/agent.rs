//! The updates thread: one state machine per configured model.
//!
//! idle ─manifest─▶ (checks: version, signature) ─▶ downloading ─all chunks─▶
//! verifying (size, sha256) ─▶ staged (loaded, checked, warmed, golden) ─▶
//! swap (store says probation first) ─▶ active on probation ─time─▶ confirmed
//!                                                └─worse─▶ rolled back
//!
//! The store is written before each step that a crash could interrupt, so
//! a restart finds either the old version or a new one still on probation,
//! which it rolls back (`store::ModelStore::open`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use model_runtime::Runtime;
use tokio::sync::mpsc::UnboundedSender;

use super::download::{Download, Geometry};
use super::manifest::{statement, Manifest, Source};
use super::probation::{self, Sample, Thresholds, Verdict, Window};
use super::state::{Phase, Progress, Report, Target};
use super::store::{Installed, ModelStore, Recovery};
use super::{verify, FileVersion, Input, Request, Startup, Watch};
use crate::config::{FileLimits, ModelSettings, UpdateSettings, Version};
use crate::job::Job;
use crate::models;
use crate::time::unix_now;
use crate::topic;

/// How often downloads and probation are looked at.
const TICK: Duration = Duration::from_secs(1);
/// Progress records while downloading: at most one per this.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// The running thread and the way in.
pub struct Agent {
    pub input: Sender<Input>,
    pub handle: JoinHandle<()>,
}

/// Starts the updates thread. It ends when every `input` sender is gone.
pub fn spawn(
    settings: UpdateSettings,
    device_id: String,
    limits: FileLimits,
    models: Vec<ModelSettings>,
    startup: Startup,
    runtime: Arc<Runtime>,
    requests: UnboundedSender<Request>,
) -> std::io::Result<Agent> {
    let (input, rx) = std::sync::mpsc::channel();
    let mut state = Updater {
        settings,
        device_id,
        limits,
        runtime,
        requests,
        models: BTreeMap::new(),
    };
    for ms in models {
        state.add_model(ms, &startup);
    }
    let recoveries = startup.recoveries;
    let mut stores = startup.stores;
    for (name, m) in &mut state.models {
        if let Some(s) = stores.remove(name) {
            m.store = Some(s);
        }
    }
    let builder = std::thread::Builder::new().name("updates".into());
    let handle = crate::cores::spawn(builder, move || state.run(rx, recoveries))?;
    Ok(Agent { input, handle })
}

/// A manifest this device follows, and the topic it came on.
struct Desired {
    manifest: Manifest,
    topic: String,
}

enum Work {
    Idle,
    Downloading {
        target: Target,
        manifest: Manifest,
        chunks_topic: String,
        download: Download,
        started: Instant,
        reported: Instant,
    },
    Probation {
        target: Target,
        watch: Watch,
        at_swap: Sample,
        switches: u64,
        since: Instant,
        until_unix: f64,
    },
}

struct Model {
    /// As configured (the path of its own file).
    settings: ModelSettings,
    store: Option<ModelStore>,
    own: Option<Desired>,
    fleet: Option<Desired>,
    work: Work,
    /// The last state published, so an unchanged manifest re-delivered on
    /// a reconnect does not re-publish or re-log. With the version it is
    /// about: the next version failing for the same reason is news.
    last: Option<(Phase, Option<String>, Option<Target>)>,
}

struct Updater {
    settings: UpdateSettings,
    device_id: String,
    limits: FileLimits,
    runtime: Arc<Runtime>,
    requests: UnboundedSender<Request>,
    models: BTreeMap<String, Model>,
}

impl Updater {
    fn add_model(&mut self, mut ms: ModelSettings, startup: &Startup) {
        // The configured file, not the override `open` put in.
        super::restore(&mut ms, &startup.configured);
        self.models.insert(
            ms.name.clone(),
            Model {
                settings: ms,
                store: None,
                own: None,
                fleet: None,
                work: Work::Idle,
                last: None,
            },
        );
    }

    fn run(mut self, rx: Receiver<Input>, recoveries: Vec<(String, Recovery)>) {
        for (name, r) in &recoveries {
            log::warn!("model {name}: update store: {r}");
        }
        let names: Vec<String> = self.models.keys().cloned().collect();
        for name in &names {
            // Any of the model's recoveries may be the rollback: leftovers
            // of a cut write come first.
            let rollback = recoveries
                .iter()
                .filter(|(n, _)| n == name)
                .find_map(|(_, r)| rolled_back(r).map(|t| (t, r.to_string())));
            match rollback {
                Some((target, reason)) => {
                    self.report(name, Phase::RolledBack, Some(&target), Some(&reason), None)
                }
                None => self.report_active(name),
            }
        }
        loop {
            match rx.recv_timeout(TICK) {
                Ok(Input::Message(job)) => self.on_message(job),
                Ok(Input::Models(models)) => self.on_models(models),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            self.tick();
        }
        log::debug!("updates: stopped");
    }

    fn on_models(&mut self, models: Vec<ModelSettings>) {
        for ms in models {
            match self.models.get_mut(&ms.name) {
                // The supervisor sends the settings as configured.
                Some(m) => m.settings = ms,
                None => log::warn!(
                    "updates: model {} was added by a reload; it takes updates after a restart",
                    ms.name
                ),
            }
        }
    }

    fn on_message(&mut self, job: Job) {
        let Some(t) = topic::update_topic(&self.device_id, &job.topic) else {
            return;
        };
        let name = t.model.to_string();
        if !self.models.contains_key(&name) {
            if t.chunk.is_none() && !job.payload.is_empty() {
                log::warn!(
                    "updates: a manifest on {} names model \"{name}\", which is not configured here; ignored",
                    job.topic
                );
            }
            return;
        }
        match t.chunk {
            None => self.on_manifest(&name, t.fleet, &job.topic, &job.payload),
            Some(n) => self.on_chunk(&name, &job.topic, n, &job.payload),
        }
        // The job drops here: its acknowledgement goes out once the chunk
        // is written.
    }

    fn on_manifest(&mut self, name: &str, fleet: bool, topic: &str, payload: &[u8]) {
        let max = self.limits.max_model_bytes;
        let Some(m) = self.models.get_mut(name) else {
            return;
        };
        let parsed = if payload.is_empty() {
            None
        } else {
            match Manifest::parse(payload, max) {
                Ok(manifest) => Some(Desired {
                    manifest,
                    topic: topic.to_string(),
                }),
                Err(why) => {
                    let followed = !fleet || m.own.is_none();
                    if fleet {
                        m.fleet = None;
                    } else {
                        m.own = None;
                    }
                    if followed {
                        let reason = format!("the manifest on {topic} is refused: {why}");
                        self.fail(name, None, &reason);
                    }
                    return;
                }
            }
        };
        if fleet {
            m.fleet = parsed;
        } else {
            m.own = parsed;
        }
        self.consider(name);
    }

    /// Acts on the manifest the model follows now (its own, else the
    /// fleet's), unless it is already served, refused or under way.
    fn consider(&mut self, name: &str) {
        let allow_downgrade = self.settings.allow_downgrade;
        let Some(m) = self.models.get_mut(name) else {
            return;
        };
        let Some(d) = m.own.as_ref().or(m.fleet.as_ref()) else {
            return;
        };
        let target = Target {
            version: d.manifest.version.to_string(),
            sha256: d.manifest.sha256.clone(),
        };
        match &m.work {
            // One change at a time: a new manifest waits for the verdict.
            Work::Probation { .. } => return,
            Work::Downloading { target: t, .. } if *t == target => return,
            Work::Downloading { chunks_topic, .. } => {
                let filter = topic::chunk_filter(chunks_topic);
                let _ = self.requests.send(Request::Unsubscribe(filter));
                m.work = Work::Idle;
            }
            Work::Idle => {}
        }
        let Some(store) = m.store.as_ref() else {
            return;
        };
        let record = store.record();
        if record.active.as_ref().map(|a| &a.sha256) == Some(&target.sha256) {
            self.report_active(name);
            return;
        }
        if let Some(r) = record
            .refused
            .as_ref()
            .filter(|r| r.sha256 == target.sha256)
        {
            if r.rolled_back {
                let reason = r.reason.clone();
                self.report(name, Phase::RolledBack, Some(&target), Some(&reason), None);
                return;
            }
            let reason = format!(
                "version {} (sha256 {}) was refused before and is not tried again: {}",
                r.version,
                short(&r.sha256),
                r.reason
            );
            self.fail(name, Some(&target), &reason);
            return;
        }
        let current = record
            .active
            .as_ref()
            .map(|a| a.version.clone())
            .or_else(|| m.settings.version.clone());
        let manifest = d.manifest.clone();
        let desired_topic = d.topic.clone();
        if let Some(current) = current.as_deref().and_then(|c| Version::parse(c).ok()) {
            if manifest.version == current {
                let reason = format!(
                    "version {current} is already active with another build; a different model needs a new version"
                );
                self.fail(name, Some(&target), &reason);
                return;
            }
            if manifest.version < current && !allow_downgrade {
                let reason = format!(
                    "version {} is older than the active {current}: a downgrade (set [updates] allow_downgrade = true to allow it)",
                    manifest.version
                );
                self.fail(name, Some(&target), &reason);
                return;
            }
        }
        let signed = statement(name, target.version.as_str(), &target.sha256, manifest.size);
        match verify::verify(&self.settings.public_keys, &signed, &manifest.signature) {
            Ok(key) => log::info!(
                "model {name}: update to version {} (sha256 {}) from {desired_topic}, signed by key {key}",
                target.version,
                short(&target.sha256)
            ),
            Err(why) => {
                self.fail(name, Some(&target), &format!("bad signature: {why}"));
                return;
            }
        }
        match &manifest.source {
            Source::File(path) => self.stage_file(name, target, manifest.clone(), path.clone()),
            Source::Chunks { chunks, chunk_size } => {
                let Some(m) = self.models.get_mut(name) else {
                    return;
                };
                let Some(store) = m.store.as_ref() else {
                    return;
                };
                let geometry = match Geometry::new(manifest.size, *chunk_size, *chunks) {
                    Ok(g) => g,
                    Err(e) => {
                        self.fail(name, Some(&target), &e.to_string());
                        return;
                    }
                };
                match store.begin_download(&target.sha256, geometry) {
                    Ok(download) => {
                        let filter = topic::chunk_filter(&desired_topic);
                        let now = Instant::now();
                        m.work = Work::Downloading {
                            target: target.clone(),
                            manifest,
                            chunks_topic: desired_topic,
                            download,
                            started: now,
                            reported: now,
                        };
                        let _ = self.requests.send(Request::Subscribe(filter));
                        self.report_progress(name);
                    }
                    Err(e) => self.fail(name, Some(&target), &e.to_string()),
                }
            }
        }
    }

    fn on_chunk(&mut self, name: &str, topic: &str, n: u32, payload: &[u8]) {
        let Some(m) = self.models.get_mut(name) else {
            return;
        };
        let Work::Downloading {
            chunks_topic,
            download,
            ..
        } = &mut m.work
        else {
            return;
        };
        if topic != topic::chunk_topic(chunks_topic, n) {
            return;
        }
        let progress = match download.write_chunk(n, payload) {
            Ok(p) => p,
            Err(e) => {
                self.abort_download(name, &e.to_string());
                return;
            }
        };
        pause_point("download");
        if progress.complete() {
            self.finish_download(name);
        } else {
            self.report_progress(name);
        }
    }

    fn abort_download(&mut self, name: &str, reason: &str) {
        let Some(m) = self.models.get_mut(name) else {
            return;
        };
        if let Work::Downloading {
            target,
            chunks_topic,
            ..
        } = std::mem::replace(&mut m.work, Work::Idle)
        {
            let _ = self
                .requests
                .send(Request::Unsubscribe(topic::chunk_filter(&chunks_topic)));
            self.fail(name, Some(&target), reason);
        }
    }

    fn finish_download(&mut self, name: &str) {
        let Some(m) = self.models.get_mut(name) else {
            return;
        };
        let Work::Downloading {
            target,
            manifest,
            chunks_topic,
            download,
            ..
        } = std::mem::replace(&mut m.work, Work::Idle)
        else {
            return;
        };
        let _ = self
            .requests
            .send(Request::Unsubscribe(topic::chunk_filter(&chunks_topic)));
        self.report(name, Phase::Verifying, Some(&target), None, None);
        let Some(store) = self.models.get_mut(name).and_then(|m| m.store.as_mut()) else {
            return;
        };
        match store.finish_download(download) {
            Ok(path) => self.validate_and_swap(name, target, manifest, path),
            Err(e) => self.fail(name, Some(&target), &e.to_string()),
        }
    }

    fn stage_file(&mut self, name: &str, target: Target, manifest: Manifest, src: PathBuf) {
        self.report(name, Phase::Verifying, Some(&target), None, None);
        let Some(store) = self.models.get_mut(name).and_then(|m| m.store.as_mut()) else {
            return;
        };
        match store.stage_file(&src, &target.sha256, manifest.size) {
            Ok(path) => self.validate_and_swap(name, target, manifest, path),
            Err(e) => self.fail(name, Some(&target), &e.to_string()),
        }
    }

    /// Loads the staged file with the model's settings (which checks its
    /// tensors against the configured payload, labels and window, and
    /// warms it), runs the golden inputs, then swaps it in.
    fn validate_and_swap(&mut self, name: &str, target: Target, manifest: Manifest, path: PathBuf) {
        let Some(m) = self.models.get(name) else {
            return;
        };
        let mut ms = m.settings.clone();
        ms.path = path.clone();
        ms.version = Some(target.version.clone());
        let checked = models::load_one(&ms, &self.limits, &self.runtime)
            .map_err(|p| format!("the new version does not fit this model's settings: {p}"))
            .and_then(|mut loaded| golden(&mut loaded, &manifest));
        if let Err(why) = checked {
            self.refuse(name, &target, &why);
            return;
        }
        self.report(name, Phase::Staged, Some(&target), None, None);
        pause_point("staged");

        let now = unix_now();
        let Some(store) = self.models.get_mut(name).and_then(|m| m.store.as_mut()) else {
            return;
        };
        // The store says "probation" before the swap: a crash from here on
        // comes back on the previous version.
        let installed = Installed {
            version: target.version.clone(),
            sha256: target.sha256.clone(),
        };
        if let Err(e) = store.activate(installed, now) {
            self.fail(name, Some(&target), &e.to_string());
            return;
        }
        pause_point("swap");
        let to = FileVersion {
            path,
            version: target.version.clone(),
        };
        match self.swap(name, Some(to)) {
            Ok(watch) => {
                log::info!(
                    "model {name}: now serving version {} (sha256 {}); on probation for {:.0} s",
                    target.version,
                    short(&target.sha256),
                    self.settings.probation.as_secs_f64()
                );
                let at_swap = Sample::take(&watch.stats);
                let switches = watch.chain.report().switches;
                let until_unix = now + self.settings.probation.as_secs_f64();
                if let Some(m) = self.models.get_mut(name) {
                    m.work = Work::Probation {
                        target: target.clone(),
                        watch,
                        at_swap,
                        switches,
                        since: Instant::now(),
                        until_unix,
                    };
                }
                self.report(name, Phase::Active, Some(&target), None, None);
            }
            Err(why) => {
                // Nothing changed in the pipeline; the store goes back.
                self.rollback_store(name, &format!("the swap failed: {why}"));
                self.fail(name, Some(&target), &format!("the swap failed: {why}"));
            }
        }
    }

    /// Asks the supervisor to serve `name` from `to` and waits.
    fn swap(&self, name: &str, to: Option<FileVersion>) -> Result<Watch, String> {
        let (done, answer) = tokio::sync::oneshot::channel();
        self.requests
            .send(Request::Swap {
                model: name.to_string(),
                to,
                done,
            })
            .map_err(|_| "the daemon is stopping".to_string())?;
        answer
            .blocking_recv()
            .map_err(|_| "the daemon is stopping".to_string())?
    }

    fn rollback_store(&mut self, name: &str, reason: &str) -> Option<Option<FileVersion>> {
        let store = self.models.get_mut(name)?.store.as_mut()?;
        match store.rollback(reason) {
            Ok(back) => Some(back.map(|i| FileVersion {
                path: store.file_path(&i.sha256),
                version: i.version,
            })),
            Err(e) => {
                log::error!("model {name}: cannot record the rollback: {e}");
                None
            }
        }
    }

    fn tick(&mut self) {
        let names: Vec<String> = self.models.keys().cloned().collect();
        for name in names {
            self.tick_model(&name);
        }
    }

    fn tick_model(&mut self, name: &str) {
        let timeout = self.settings.download_timeout;
        let thresholds = Thresholds {
            min_messages: self.settings.min_probation_messages,
            max_error_rate_increase_percent: self.settings.max_error_rate_increase_percent,
            max_p99_ratio: self.settings.max_p99_ratio,
        };
        let probation = self.settings.probation;
        let Some(m) = self.models.get_mut(name) else {
            return;
        };
        match &m.work {
            Work::Idle => {}
            Work::Downloading {
                started, download, ..
            } => {
                if started.elapsed() > timeout {
                    let reason = format!(
                        "{} ([updates] download_timeout_secs)",
                        download.timed_out(started.elapsed())
                    );
                    self.abort_download(name, &reason);
                }
            }
            Work::Probation {
                watch,
                at_swap,
                switches,
                since,
                ..
            } => {
                let now = Sample::take(&watch.stats);
                // The counters are the model's since the daemon started,
                // carried over by the swap: the old version's window ends
                // at the swap.
                let old = Window::between(&Sample::default(), at_swap);
                let new = Window::between(at_swap, &now);
                let report = watch.chain.report();
                let verdict = if report.switches > *switches {
                    Verdict::Worse {
                        reason: format!(
                            "its accelerator failed after the swap (now serving on {})",
                            report.serving
                        ),
                    }
                } else {
                    probation::judge(&old, &new, &thresholds)
                };
                match verdict {
                    Verdict::Worse { reason } => self.roll_back(name, &reason),
                    // Too few messages to compare when the time is up: a
                    // model nobody sends to cannot do worse.
                    Verdict::Healthy { .. } | Verdict::Undecided { .. }
                        if since.elapsed() >= probation =>
                    {
                        self.confirm(name, &verdict)
                    }
                    _ => {}
                }
            }
        }
    }

    fn confirm(&mut self, name: &str, verdict: &Verdict) {
        let Some(m) = self.models.get_mut(name) else {
            return;
        };
        let Work::Probation { target, .. } = std::mem::replace(&mut m.work, Work::Idle) else {
            return;
        };
        if let Some(store) = m.store.as_mut() {
            if let Err(e) = store.confirm() {
                log::error!("model {name}: cannot record the confirmation: {e}");
            }
        }
        // The record published at the swap was "active" too, with
        // probation_until: the confirmed one must go out, not be taken for
        // a repeat of it.
        m.last = None;
        let how = match verdict {
            Verdict::Healthy { summary } => summary.clone(),
            Verdict::Undecided { messages, needed } => {
                format!("{messages} message(s), fewer than the {needed} needed to compare")
            }
            Verdict::Worse { reason } => reason.clone(),
        };
        log::info!(
            "model {name}: version {} confirmed after probation ({how})",
            target.version
        );
        self.report(name, Phase::Active, Some(&target), None, None);
        // A manifest that came during probation.
        self.consider(name);
    }

    fn roll_back(&mut self, name: &str, why: &str) {
        let Some(m) = self.models.get_mut(name) else {
            return;
        };
        let Work::Probation { target, .. } = std::mem::replace(&mut m.work, Work::Idle) else {
            return;
        };
        let reason = format!(
            "version {} was rolled back during probation: {why}",
            target.version
        );
        log::error!("model {name}: {reason}");
        let back = self.rollback_store(name, &reason).flatten();
        if let Err(e) = self.swap(name, back) {
            log::error!("model {name}: the rollback swap failed: {e}");
        }
        self.report(name, Phase::RolledBack, Some(&target), Some(&reason), None);
    }

    /// A refusal that is remembered: this build is not tried again.
    fn refuse(&mut self, name: &str, target: &Target, why: &str) {
        if let Some(store) = self.models.get_mut(name).and_then(|m| m.store.as_mut()) {
            if let Err(e) = store.refuse(&target.version, &target.sha256, why) {
                log::error!("model {name}: cannot record the refusal: {e}");
            }
        }
        self.fail(name, Some(target), why);
    }

    fn fail(&mut self, name: &str, target: Option<&Target>, reason: &str) {
        self.report(name, Phase::Failed, target, Some(reason), None);
    }

    fn report_active(&mut self, name: &str) {
        let target = self.models.get(name).and_then(|m| {
            let update = m.store.as_ref().and_then(|s| s.record().active.clone());
            match update {
                Some(a) => Some(Target {
                    version: a.version,
                    sha256: a.sha256,
                }),
                // The configured file, when the config gives its version.
                None => {
                    let version = m.settings.version.clone()?;
                    let (_, sha256) = super::download::sha256_file(&m.settings.path).ok()?;
                    Some(Target { version, sha256 })
                }
            }
        });
        self.report(name, Phase::Active, target.as_ref(), None, None);
    }

    fn report_progress(&mut self, name: &str) {
        let Some(m) = self.models.get_mut(name) else {
            return;
        };
        let Work::Downloading {
            target,
            download,
            reported,
            ..
        } = &mut m.work
        else {
            return;
        };
        let first = download.received() == 0;
        if !first && reported.elapsed() < PROGRESS_EVERY {
            return;
        }
        *reported = Instant::now();
        let geometry = download.geometry();
        let progress = Progress {
            chunks_received: download.received(),
            chunks: geometry.chunks(),
            bytes: geometry.size(),
        };
        let target = target.clone();
        self.report(
            name,
            Phase::Downloading,
            Some(&target),
            None,
            Some(&progress),
        );
    }

    fn report(
        &mut self,
        name: &str,
        phase: Phase,
        target: Option<&Target>,
        reason: Option<&str>,
        progress: Option<&Progress>,
    ) {
        let Some(m) = self.models.get_mut(name) else {
            return;
        };
        let key = (phase, reason.map(str::to_string), target.cloned());
        if progress.is_none() && m.last.as_ref() == Some(&key) {
            return;
        }
        if phase == Phase::Failed {
            if let Some(r) = reason {
                log::error!("model {name}: update refused: {r}");
            }
        }
        m.last = Some(key);
        let empty = super::store::Record::default();
        let record = m.store.as_ref().map(|s| s.record()).unwrap_or(&empty);
        let probation_until = match &m.work {
            Work::Probation { until_unix, .. } => Some(*until_unix),
            _ => None,
        };
        let payload = Report {
            device_id: &self.device_id,
            model: name,
            phase,
            target,
            reason,
            progress,
            probation_until,
            record,
            now: unix_now(),
        }
        .to_json();
        let _ = self.requests.send(Request::State {
            model: name.to_string(),
            payload,
        });
    }
}

/// The version a recovery at open took out, if it was a rollback.
fn rolled_back(r: &Recovery) -> Option<Target> {
    let (version, sha256) = match r {
        Recovery::CrashLoop { refused, .. } => (&refused.version, &refused.sha256),
        Recovery::ActiveUnusable { installed, .. } => (&installed.version, &installed.sha256),
        _ => return None,
    };
    Some(Target {
        version: version.clone(),
        sha256: sha256.clone(),
    })
}

/// Runs the manifest's golden inputs on the loaded model: every named
/// output within the tolerance.
fn golden(loaded: &mut models::LoadedModel, manifest: &Manifest) -> Result<(), String> {
    if manifest.golden.is_empty() {
        return Ok(());
    }
    if loaded.checked.settings.window.is_some() {
        return Err("golden inputs are single messages; this model is windowed".into());
    }
    let ctx = models::ModelContext::new(&loaded.checked, Arc::default());
    let Some(engines) = loaded.engines.first_mut() else {
        return Err("the model loaded without an engine".into());
    };
    let engine = engines.single.as_mut().unwrap_or(&mut engines.main);
    for (i, g) in manifest.golden.iter().enumerate() {
        let outputs = crate::worker::outputs_for(engine.as_mut(), &ctx, &g.payload)
            .map_err(|f| format!("golden[{i}]: the payload was refused: {}", f.message))?;
        for want in &g.outputs {
            let Some((_, got)) = outputs.iter().find(|(n, _)| *n == want.name) else {
                let names: Vec<&str> = outputs.iter().map(|(n, _)| n.as_str()).collect();
                return Err(format!(
                    "golden[{i}]: the model has no output \"{}\" (it has {})",
                    want.name,
                    names.join(", ")
                ));
            };
            if got.len() != want.values.len() {
                return Err(format!(
                    "golden[{i}]: output \"{}\" has {} values, expected {}",
                    want.name,
                    got.len(),
                    want.values.len()
                ));
            }
            if let Some((k, (g_, w))) = got
                .iter()
                .zip(&want.values)
                .enumerate()
                // NaN is outside every tolerance.
                .find(|(_, (g_, w))| {
                    let off = (f64::from(**g_) - **w).abs();
                    off.is_nan() || off > g.tolerance
                })
            {
                return Err(format!(
                    "golden[{i}]: output \"{}\"[{k}] is {g_}, expected {w} within {}",
                    want.name, g.tolerance
                ));
            }
        }
    }
    Ok(())
}

/// Debug builds only: the updates thread stops for good at the step named
/// by `EDGE_INFER_TEST_UPDATE_PAUSE`, so the restart tests can SIGKILL the
/// daemon exactly there (`download`: a chunk is on disk; `staged`: the
/// new version passed its checks; `swap`: the store says probation, the
/// pipeline still runs the old version).
fn pause_point(step: &str) {
    #[cfg(debug_assertions)]
    if std::env::var("EDGE_INFER_TEST_UPDATE_PAUSE").as_deref() == Ok(step) {
        log::warn!("updates: test pause at {step}");
        loop {
            std::thread::park();
        }
    }
    #[cfg(not(debug_assertions))]
    let _ = step;
}

fn short(sha: &str) -> &str {
    sha.get(..12).unwrap_or(sha)
}
