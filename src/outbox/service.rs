//! The outbox's own thread: the store does blocking file I/O and fsyncs,
//! which must never run on the event loop's thread. Answers handed to it
//! are committed in groups (everything that arrived while the previous
//! group was being written, one fsync for all of it); only then are their
//! inputs acknowledged, by dropping them. Reads and releases for the
//! replay go through the same thread, in order.

use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Notify};

use super::{Outbox, OutboxError, Record, Recovered};
use crate::config::OutboxSettings;
use crate::log_limit::RepeatLimiter;
use crate::replies::Outgoing;
use crate::telemetry::DaemonStats;
use crate::time::unix_now;

/// At most this many answers handed over and not yet committed; the
/// publisher waits for room beyond it, so a slow disk slows the pipeline
/// instead of filling memory.
const MAX_QUEUED: usize = 8192;

/// At most this many records per group commit.
const GROUP_MAX: usize = 1024;

enum Command {
    Keep(Vec<Outgoing>),
    Read {
        from: u64,
        max_records: usize,
        max_bytes: usize,
        reply: oneshot::Sender<Vec<(u64, Record)>>,
    },
    Release(u64),
    /// Answered once everything handed over before it is committed.
    Flush(oneshot::Sender<()>),
}

/// The handle the output link holds.
pub struct OutboxService {
    tx: mpsc::UnboundedSender<Command>,
    queued: Arc<AtomicUsize>,
    /// The sequence number the next record will get.
    end: Arc<AtomicU64>,
    /// Signalled after every commit.
    committed: Arc<Notify>,
    /// A permit whenever records were committed: the replayer's wake-up.
    pub stored: Arc<Notify>,
}

impl OutboxService {
    /// Opens (and recovers) the outbox in `dir` and starts its thread.
    pub fn start(
        dir: &Path,
        settings: &OutboxSettings,
        stats: Arc<DaemonStats>,
    ) -> Result<OutboxService, OutboxError> {
        let (store, recovered) = Outbox::open(dir, settings.clone())?;
        report(dir, &recovered);
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let end = Arc::new(AtomicU64::new(store.next_seq()));
        let committed = Arc::new(Notify::new());
        let stored = Arc::new(Notify::new());
        let worker = Worker {
            store,
            rx,
            queued: Arc::clone(&queued),
            end: Arc::clone(&end),
            committed: Arc::clone(&committed),
            stored: Arc::clone(&stored),
            stats,
            log_limit: RepeatLimiter::default(),
        };
        worker.publish_stats();
        crate::cores::spawn(
            std::thread::Builder::new().name("outbox".into()),
            move || worker.run(),
        )
        .map_err(|error| OutboxError::Io {
            action: "start the thread of",
            path: dir.to_path_buf(),
            error,
        })?;
        // Whatever the last run left is there to replay.
        stored.notify_one();
        Ok(OutboxService {
            tx,
            queued,
            end,
            committed,
            stored,
        })
    }

    /// The sequence number the next committed record will get: the
    /// replay has read everything below it.
    pub fn end(&self) -> u64 {
        self.end.load(Ordering::Acquire)
    }

    /// Waits until the outbox can take more (see [`MAX_QUEUED`]).
    pub async fn room(&self) {
        loop {
            let notified = self.committed.notified();
            if self.queued.load(Ordering::Relaxed) < MAX_QUEUED {
                return;
            }
            // A commit can come from the other thread between the check
            // and the wait only after `notified` exists, so none is missed;
            // the timeout is a second guard.
            let _ = tokio::time::timeout(Duration::from_millis(100), notified).await;
        }
    }

    /// Hands answers over for a commit; their inputs are acknowledged once
    /// it is done. Never waits.
    pub fn keep(&self, answers: Vec<Outgoing>) {
        if answers.is_empty() {
            return;
        }
        let n = answers.len();
        self.queued.fetch_add(n, Ordering::Relaxed);
        if let Err(mpsc::error::SendError(Command::Keep(lost))) =
            self.tx.send(Command::Keep(answers))
        {
            self.queued.fetch_sub(n, Ordering::Relaxed);
            log::error!(
                "the outbox thread has stopped: {} answer(s) not kept; their inputs stay unacknowledged",
                lost.len()
            );
            for a in &lost {
                a.lost();
            }
        }
    }

    /// Up to `max_records` records from sequence number `from` on, oldest
    /// first; empty when there are none (or the store failed, which its
    /// thread logs).
    pub async fn read(
        &self,
        from: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Vec<(u64, Record)> {
        let (reply, rx) = oneshot::channel();
        let cmd = Command::Read {
            from,
            max_records,
            max_bytes,
            reply,
        };
        if self.tx.send(cmd).is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    /// Everything below `up_to` is confirmed by the broker.
    pub fn release(&self, up_to: u64) {
        let _ = self.tx.send(Command::Release(up_to));
    }

    /// Waits (up to `limit`) until everything handed over is committed.
    pub async fn flush(&self, limit: Duration) -> bool {
        let (done, rx) = oneshot::channel();
        if self.tx.send(Command::Flush(done)).is_err() {
            return false;
        }
        matches!(tokio::time::timeout(limit, rx).await, Ok(Ok(())))
    }
}

/// What opening the outbox found, in the log.
fn report(dir: &Path, r: &Recovered) {
    let dir = dir.display();
    if r.records > 0 {
        log::info!(
            "outbox {dir}: {} record(s) ({} bytes) from an earlier run, to replay once the output link is up",
            r.records,
            r.bytes
        );
    } else {
        log::info!("outbox {dir}: empty");
    }
    if r.torn_bytes_truncated > 0 {
        log::warn!(
            "outbox {dir}: truncated {} torn byte(s) at the end of the last segment (a write cut short by a crash; nothing in them had been acknowledged)",
            r.torn_bytes_truncated
        );
    }
    for c in &r.corrupt {
        log::warn!(
            "outbox {dir}: {} at byte {} of {}: skipped the {} byte(s) after it",
            c.reason,
            c.offset,
            c.path.display(),
            c.skipped_bytes
        );
    }
    for p in &r.ignored {
        log::warn!(
            "outbox {dir}: ignored {}, which is not a segment file",
            p.display()
        );
    }
    for (p, why) in &r.unreadable {
        log::error!(
            "outbox {dir}: cannot read {}: {why}; left alone",
            p.display()
        );
    }
}

struct Worker {
    store: Outbox,
    rx: mpsc::UnboundedReceiver<Command>,
    queued: Arc<AtomicUsize>,
    end: Arc<AtomicU64>,
    committed: Arc<Notify>,
    stored: Arc<Notify>,
    stats: Arc<DaemonStats>,
    log_limit: RepeatLimiter,
}

impl Worker {
    /// Ends when the handle is gone and everything handed over is done.
    fn run(mut self) {
        let mut next = self.rx.blocking_recv();
        while let Some(cmd) = next.take() {
            match cmd {
                Command::Keep(mut group) => {
                    // Group commit: take every answer already waiting.
                    while group.len() < GROUP_MAX {
                        match self.rx.try_recv() {
                            Ok(Command::Keep(more)) => group.extend(more),
                            Ok(other) => {
                                next = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    self.commit(group);
                }
                Command::Read {
                    from,
                    max_records,
                    max_bytes,
                    reply,
                } => {
                    let records = match self.store.read(from, max_records, max_bytes) {
                        Ok(r) => r,
                        Err(e) => {
                            self.failed("read", &e);
                            Vec::new()
                        }
                    };
                    let _ = reply.send(records);
                }
                Command::Release(up_to) => {
                    if let Err(e) = self.store.release(up_to) {
                        self.failed("release", &e);
                    }
                }
                Command::Flush(done) => {
                    let _ = done.send(());
                }
            }
            self.publish_stats();
            self.log_limit.flush();
            if next.is_none() {
                next = self.rx.blocking_recv();
            }
        }
    }

    fn commit(&mut self, group: Vec<Outgoing>) {
        let n = group.len();
        let now = unix_now();
        let records: Vec<Record> = group
            .iter()
            .map(|m| Record {
                topic: m.topic.clone(),
                payload: m.payload.to_vec(),
                retain: m.retain,
                created: now,
                properties: m.properties.as_deref().cloned(),
            })
            .collect();
        match self.store.append(&records) {
            Ok(appended) => {
                if appended.dropped > 0 || appended.rejected > 0 {
                    self.lost_for_room(appended.dropped, appended.rejected as u64);
                }
                // Committed (or deliberately dropped under the configured
                // policy, and counted): the inputs may be acknowledged.
                drop(group);
            }
            Err(e) => {
                self.stats
                    .outbox
                    .write_errors
                    .fetch_add(n as u64, Ordering::Relaxed);
                self.failed("write", &e);
                for m in &group {
                    m.lost();
                }
                self.set_last_loss(format!(
                    "{n} answer(s) could not be written ({e}); their inputs stay unacknowledged for redelivery"
                ));
            }
        }
        self.end.store(self.store.next_seq(), Ordering::Release);
        self.queued.fetch_sub(n, Ordering::Relaxed);
        self.committed.notify_waiters();
        self.stored.notify_one();
    }

    fn lost_for_room(&mut self, dropped_oldest: u64, rejected: u64) {
        let why = if dropped_oldest > 0 {
            format!("the outbox was full (outbox.max_bytes): dropped the {dropped_oldest} oldest record(s) for new ones (on_full = \"drop_oldest\")")
        } else {
            format!("the outbox was full (outbox.max_bytes): refused {rejected} new record(s) (on_full = \"reject_new\")")
        };
        if self.log_limit.admit("outbox", "full") {
            log::warn!("{why}");
        }
        self.set_last_loss(why);
    }

    fn set_last_loss(&self, why: String) {
        let mut g = self
            .stats
            .outbox
            .last_loss
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *g = Some(why);
    }

    fn failed(&mut self, what: &'static str, e: &OutboxError) {
        if self.log_limit.admit("outbox", what) {
            log::error!("outbox: {what} failed: {e}");
        }
    }

    fn publish_stats(&self) {
        let s = self.store.stats();
        let g = &self.stats.outbox;
        g.enabled.store(true, Ordering::Relaxed);
        g.records.store(s.records, Ordering::Relaxed);
        g.bytes.store(s.bytes, Ordering::Relaxed);
        g.oldest_ms.store(
            s.oldest_created.map_or(0, |t| (t * 1000.0) as u64),
            Ordering::Relaxed,
        );
        g.stored.store(s.appended, Ordering::Relaxed);
        g.dropped_full.store(s.dropped_full, Ordering::Relaxed);
        g.rejected_full
            .store(s.rejected_full + s.rejected_too_large, Ordering::Relaxed);
        g.expired.store(s.expired, Ordering::Relaxed);
    }
}
