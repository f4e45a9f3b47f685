//! Stopping without losing a message (mini-redis's drain): stop taking
//! messages (from then on they stay unacknowledged with the broker), let
//! the workers finish what they took (up to the drain timeout, then answer
//! the rest with `shutting_down`), publish the offline record after every
//! reply, wait for the broker to confirm them all, disconnect.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{Running, Supervisor};
use crate::codec::{peek_id, ErrorCode, Failure};
use crate::health;
use crate::time::unix_now;

/// How long a stopping daemon waits for the broker to confirm it left its
/// shared subscription groups.
const LEAVE_LIMIT: Duration = Duration::from_secs(2);

/// How often the drain looks whether every worker has finished.
const DRAIN_POLL: Duration = Duration::from_millis(5);

/// What the drain still gives after its timeout to hand the messages it
/// answers with `shutting_down` to the publisher; the broker's
/// confirmations then get at least as long again.
const AFTER_TIMEOUT: Duration = Duration::from_secs(2);

impl Supervisor {
    pub(super) async fn drain(&mut self, signal_name: &str) {
        self.notifier.stopping();
        let drain_timeout = self.settings.drain_timeout;
        let deadline = Instant::now() + drain_timeout;
        log::info!(
            "{signal_name}: draining (up to {drain_timeout:?}); new messages stay with the broker"
        );
        self.leave_groups().await;
        // Dropping the routes closes every queue: workers finish and exit.
        drop(self.switch.take());
        // The updates thread ends once routing's handle and ours are gone;
        // a swap it waits for is answered "stopping" (its store is safe
        // at every step).
        self.updates = None;
        let mut all: Vec<Running> = std::mem::take(&mut self.models);
        all.append(&mut self.retired);
        // Polled rather than joined on a blocking thread: a drain must work
        // even when no thread can be started.
        while !all.iter().all(Running::finished) {
            if Instant::now() >= deadline {
                self.abandon(&all, Instant::now() + AFTER_TIMEOUT).await;
                break;
            }
            // A worker starving in the background would hold the drain.
            for m in &mut all {
                m.watch_starving();
            }
            tokio::time::sleep(DRAIN_POLL).await;
        }
        // This handle goes, so the publisher can finish; the connection
        // publishes the offline record after every reply.
        if let Some(replies) = self.replies.take() {
            replies.flush_log(true);
        }
        let grace = deadline.max(Instant::now() + AFTER_TIMEOUT);
        if let Some(connection) = self.connection.take() {
            let offline = health::offline(&self.settings.device_id, "shutdown", Some(unix_now()));
            connection.close(grace, offline).await;
        }
        // Summaries: one line per model name, counters carried over reloads.
        let mut seen = Vec::new();
        for m in &all {
            if !seen.contains(&m.ctx.name) {
                seen.push(m.ctx.name.clone());
                log::info!("model {}: {}", m.ctx.name, m.ctx.stats.summary());
            }
        }
        let paused = self.stats.input_paused_us.load(Ordering::Relaxed);
        if paused > 0 {
            log::info!(
                "overload: the input link stopped reading for {:.1} s in total while the publisher caught up",
                paused as f64 / 1e6
            );
        }
        log::info!("stopped");
    }

    /// Leaves every shared subscription group first, while messages are
    /// still served: the broker then sends the rest of the group's stream
    /// to its other members. A member that stopped without leaving (or a
    /// broker that keeps its session) would have its share queued for it
    /// until it returns (Mosquitto, VerneMQ; EMQX until the session
    /// expires). It joins again when it starts.
    async fn leave_groups(&self) {
        let shared = self.switch.shared_filters();
        let Some(connection) = self.connection.as_ref().filter(|_| !shared.is_empty()) else {
            return;
        };
        if connection.leave(&shared, LEAVE_LIMIT).await {
            log::info!(
                "left shared subscription(s) {}: the broker sends their stream to the group's other members",
                shared.join(", ")
            );
        } else {
            log::warn!(
                "could not leave shared subscription(s) {} within {LEAVE_LIMIT:?} (input link down or no answer): what the broker assigns to this daemon waits in its session until it is back",
                shared.join(", ")
            );
        }
    }

    /// The drain timed out: answers what is still queued with
    /// `shutting_down`. More than the reply channel holds at once can be
    /// queued (4,096 per model by default), so each answer waits for room
    /// while the publisher takes the ones before it, up to `until`.
    async fn abandon(&self, all: &[Running], until: Instant) {
        let Some(replies) = &self.replies else {
            return;
        };
        let (mut answered, mut not_handed) = (0, 0);
        for m in all {
            let f = Failure::new(
                ErrorCode::ShuttingDown,
                format!(
                    "the daemon stopped before model '{}' got to this message",
                    m.ctx.name
                ),
            );
            for queued in m.queue.take_all() {
                let id = peek_id(&queued.job.payload);
                if let Some(reply) = replies.error(Some(&m.ctx), &queued.job, id.as_ref(), &f) {
                    if replies.send_before(reply, until).await {
                        answered += 1;
                    } else {
                        not_handed += 1;
                    }
                }
            }
        }
        log::warn!("drain timed out: {answered} queued message(s) answered with shutting_down");
        if not_handed > 0 {
            log::warn!(
                "drain: {not_handed} more could not be handed to the publisher within {AFTER_TIMEOUT:?} of the timeout (output link stuck?); their inputs stay unacknowledged for the broker to deliver again"
            );
        }
    }
}
