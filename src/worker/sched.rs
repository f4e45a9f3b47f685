//! How the kernel schedules a worker thread, fitted to how long its
//! messages take: the time slice it asks for and, for `auto` models,
//! whether it moves to the background.
//!
//! On the EEVDF scheduler a thread that wakes up runs at once only if its
//! deadline (its slice past its virtual runtime) comes before the running
//! thread's; otherwise it waits up to a whole slice (1.4 ms on 2 cores,
//! more on more). Next to an image model whose invokes take milliseconds,
//! a sensor model's worker woke for a 25 µs message and waited for the
//! image worker's slice: measured, HAR at 1,000 msg/s beside MobileNetV2
//! at 400 msg/s spent p99 1.2 ms in its queue (the daemon's own `queue`
//! stage), against 0.1 ms with a 100 µs slice. Since Linux 6.12 a thread
//! may ask for its own slice (`sched_setattr`'s `sched_runtime`, 0.1 to
//! 100 ms, no privilege needed): a short one wins the wake-up race, and
//! the kernel preempts it the sooner if it runs longer than it asked.
//!
//! So each worker asks for twice what its messages take (the 90th
//! percentile of the last [`WINDOW`] messages, wall time from dequeue to
//! answer), never less than the kernel's minimum and never more than the
//! default, and keeps the default while it is busy more than
//! [`MAX_BUSY_SHARE`] of the time. An image model's worker keeps the
//! default; a model whose messages change size is refitted every
//! [`WINDOW`] messages. Nothing is asked of kernels without custom slices
//! (they report a slice of 0) or of threads outside the normal class.
//!
//! The slice helps the sensor model's worker, not the threads it depends
//! on: the broker and the publishers still waited behind the image
//! worker's invokes, and end to end HAR kept p99 1.2 to 1.4 ms over its
//! figure alone. Neither a nice value (10 or 19), `SCHED_BATCH`, nor a
//! short slice for the image worker changed that (measured, with and
//! without the others); only `SCHED_IDLE` did, which any waking thread
//! preempts at once. So a worker of an `auto` model (the default) whose
//! messages take [`AUTO_BACKGROUND_AT`] or more (the same 90th
//! percentile) moves itself there while a worker of short messages runs
//! beside it and it is not busy most of the time.
//!
//! In `SCHED_IDLE` a worker gets only what normal threads leave. A model
//! moved there and then flooded starved: its own flood kept the event loop
//! and the broker on every core (tests/overload.rs, with `auto` as the
//! default and no way back: a 550 µs model flooded at 2.4x its rate
//! answered 313 msg/s instead of about 2,700, and none of 300 messages
//! after the flood in time). So a moved worker compares its CPU time with
//! its messages' wall time every [`STARVE_CHECK`] messages and returns to
//! the normal class when it got less than half, and may move again after
//! [`SETTLE_AFTER_STARVING`]; a thread of it that waits for a core without
//! finishing a message is returned from outside, by the watchdog's
//! [`StarveWatch`]; one that held a core most of a window's time
//! (flooded) returns too, and may move again after
//! [`SETTLE_AFTER_FLOOD`], doubled for each further flood return. It
//! moves only where it can return
//! (`models::priority::can_leave_background`).

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::colocate::{self, Colocation};
use crate::config::WorkerPriority;
use crate::models::priority;
use crate::telemetry::{WorkerBeat, WorkerClass};

/// Messages per fit: enough for a percentile, few enough to follow a
/// change within a second at sensor rates. The fit costs a sort of this
/// many durations and, only when something changes, one system call.
pub const WINDOW: usize = 64;

/// The shortest slice the kernel grants (`SCHED_SLICE_MIN`, 0.1 ms).
const KERNEL_MIN_NS: u64 = 100_000;

/// An `auto` worker whose messages take this long or longer (90th
/// percentile) moves to the background: a thread that wakes on its core
/// would wait for such a message, and a millisecond is all a sensor model
/// may lose beside another model (issue 16's target). MobileNetV2 takes
/// 1.2 ms on this repository's x86 benchmark host and tens of
/// milliseconds on a Raspberry Pi; a sensor model's window tens of
/// microseconds.
pub const AUTO_BACKGROUND_AT: Duration = Duration::from_millis(1);

/// An `auto` worker busier than this share of its window's wall time
/// stays normal: it wants about a core, and in the background it would get
/// only what the others leave (a model flooded at twice its rate moved
/// there answered a tenth of its rate: `SCHED_IDLE` under a flood).
const MAX_BUSY_TO_MOVE: f64 = 0.75;

/// After a flood returned it, an `auto` worker moves again only at the end
/// of a window whose messages held a core at most this share of its time,
/// and not early ([`EARLY_CHECK`]): the margin below [`MAX_BUSY_TO_MOVE`]
/// keeps a load near a core's worth from moving it back and forth.
/// MobileNetV2 at the benchmark's 230 msg/s beside HAR is about half a
/// core.
const CALM_TO_MOVE_AFTER_FLOOD: f64 = 0.6;

/// A background worker is checked for starving every this many messages:
/// few enough to notice within seconds, starved as it is.
const STARVE_CHECK: usize = 8;

/// ...or as soon as its messages since the last check took this long by
/// the wall clock: starved beside normal threads that keep every core, a
/// camera's frames (decoded and invoked in `SCHED_IDLE`) took seconds
/// each, and eight of them over two minutes (tests/serving.rs on a slowed
/// host). A thread that waits for a core without finishing a message is
/// returned by the watchdog ([`StarveWatch`]).
const STARVE_CHECK_WALL: Duration = Duration::from_secs(1);

/// An `auto` worker in the normal class checks every this many messages
/// whether all of its window's messages so far held a core for
/// [`AUTO_BACKGROUND_AT`] or more, and then moves without waiting for the
/// window's end: MobileNetV2 at 230 msg/s fills a window in 0.28 s, and
/// a sensor model's messages waiting behind it for that long are more
/// than the 1% its p99 may lose in a 10 s phase. Eight long messages in a
/// row are not a cold start's one slow invoke.
const EARLY_CHECK: usize = 8;

/// After a flood returned it from the background, an `auto` worker stays
/// normal this long, twice as long after each further flood return (up
/// to [`SETTLE_AFTER_STARVING`]) until it stays in the background that
/// long. Once the flood is over it should give way to the sensor models
/// again within seconds: with a minute, the benchmark's mixed phase, 15 s
/// after its MobileNetV2 flood, ran with that worker normal throughout,
/// and HAR's p99 there was 2.1 ms over its figure alone. The doubling is
/// for a load near a core's worth: 8 messages with a gap among them look
/// calm enough to move, the next window is a flood again, and with a
/// fixed 5 s a benchmark run logged a return every 5.5 s for as long as
/// such a load lasted.
const SETTLE_AFTER_FLOOD: Duration = Duration::from_secs(5);

/// After it returned from the background starving (other threads keep the
/// cores, which lasts), an `auto` worker stays normal this long: no
/// flapping, no log flood.
const SETTLE_AFTER_STARVING: Duration = Duration::from_secs(60);

/// A worker busier than this share of the window's wall time keeps the
/// default. Busy, it is throughput work: it rarely sleeps, so it rarely
/// wins anything by waking first, and a short slice would put it ahead of
/// the event loop that feeds it whenever both wait for one core. (HAR at
/// 10,000 msg/s, about 25% busy, was too noisy to tell: p99 1.9 to 17 ms
/// in three runs with the short slice, 2.6 to 38 ms in five without.)
const MAX_BUSY_SHARE: f64 = 0.2;

/// A refit within this factor of the current slice keeps it: no system
/// call for a percentile that wobbles.
const KEEP_WITHIN: f64 = 1.5;

/// The workers in the normal class whose last window of messages took less
/// than [`AUTO_BACKGROUND_AT`]: the sensor models' workers that an `auto`
/// worker of long messages gives way to. With none (an image model alone,
/// or beside models that got no window of messages yet), the `auto` worker
/// stays normal: moving it would protect nothing of the daemon's and risk
/// its starving under other processes' load. Process-wide: the daemon's
/// workers are all its models' workers.
pub static SHORT_WORKERS: AtomicUsize = AtomicUsize::new(0);

/// The scheduling of one worker thread, refitted from its messages.
#[derive(Debug)]
pub struct SchedFit {
    /// None where the kernel has no custom slices or refused one.
    slice: Option<Slice>,
    /// The thread's attributes as found at start, for the slice fit after a
    /// return from the background (the kernel keeps a custom slice across
    /// class changes, so a later read would take the last fit for the
    /// default).
    found: Option<SchedAttr>,
    /// Where an `auto` worker is; None for the other priorities.
    auto: Option<Auto>,
    /// Flood returns in a row, each within [`SETTLE_AFTER_STARVING`] of
    /// its move to the background: each doubles the next settle.
    flood_returns: u32,
    /// Whether it shares the event loop's core.
    colocation: Colocation,
    /// Whether its last window's messages were long (90th percentile at
    /// [`AUTO_BACKGROUND_AT`] or more): then each answer keeps the sensor
    /// models' workers off the event loop's core (`colocate`).
    long: bool,
    /// Where this worker counts itself while its messages are short.
    short_workers: &'static AtomicUsize,
    /// Whether it is counted there now.
    counted: bool,
    /// Each message's wall time from dequeue to answer, in nanoseconds.
    took: [u32; WINDOW],
    /// An `auto` worker's CPU time per message (since the one before: what
    /// it did between them counts too), in nanoseconds: what it holds a
    /// core for. An invoke on an accelerator takes wall time, not CPU.
    cpu_took: [u32; WINDOW],
    /// An `auto` worker's CPU time after its last message.
    cpu_seen: Option<Duration>,
    seen: usize,
    /// When the window's first message started.
    window_start: Option<Instant>,
}

/// An `auto` worker's class.
#[derive(Debug)]
enum Auto {
    /// Normal; it may move once `settled` has passed (None: at once), and
    /// after a flood return only at the end of a calm window
    /// ([`CALM_TO_MOVE_AFTER_FLOOD`]).
    Normal {
        settled: Option<Instant>,
        after_flood: bool,
    },
    /// In `SCHED_IDLE` since `since`, watched for starving: the wall and
    /// CPU time of its messages since the last check.
    Background {
        since: Instant,
        wall: Duration,
        cpu: Duration,
        messages: usize,
    },
    /// In `SCHED_IDLE` for good: the kernel refused its return.
    Stuck,
}

/// Why a background worker returns to the normal class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Return {
    Starving,
    Busy,
}

#[derive(Debug)]
struct Slice {
    /// The thread's scheduling attributes as found at start; `runtime_ns`
    /// is the kernel's default slice for it.
    found: SchedAttr,
    /// What the thread asked for last (the default until it asks).
    current_ns: u64,
}

impl SchedFit {
    /// For the calling thread, a worker of a model of `priority`; None
    /// outside the normal class (a `background` worker, or a class an
    /// operator set): there is nothing to fit.
    pub fn for_this_thread(priority: WorkerPriority) -> Option<SchedFit> {
        SchedFit::counted_in(priority, &SHORT_WORKERS)
    }

    fn counted_in(
        priority: WorkerPriority,
        short_workers: &'static AtomicUsize,
    ) -> Option<SchedFit> {
        // SAFETY: no arguments; pid 0 is the calling thread.
        let policy = unsafe { libc::sched_getscheduler(0) };
        if policy != libc::SCHED_OTHER && policy != libc::SCHED_BATCH {
            return None;
        }
        let slice = Slice::for_this_thread();
        let auto = priority == WorkerPriority::Auto;
        Some(SchedFit {
            found: slice.as_ref().map(|s| s.found),
            slice,
            auto: auto.then_some(Auto::Normal {
                settled: None,
                after_flood: false,
            }),
            flood_returns: 0,
            colocation: Colocation::new(),
            long: false,
            short_workers,
            counted: false,
            took: [0; WINDOW],
            cpu_took: [0; WINDOW],
            cpu_seen: if auto { thread_cpu_time() } else { None },
            seen: 0,
            window_start: None,
        })
    }

    /// The slice the thread runs with, in nanoseconds.
    #[cfg(test)]
    fn current_ns(&self) -> Option<u64> {
        self.slice.as_ref().map(|s| s.current_ns)
    }

    /// Whether this message's CPU time is read: always in the background,
    /// where preemption stretches the wall time (the flood and starving
    /// checks compare the two); in the normal class only for a message of
    /// [`AUTO_BACKGROUND_AT`] or more in wall time, the only kind whose CPU
    /// time can move it. The read is a system call: once per message it
    /// was 2.5% of the daemon's CPU samples in a HAR flood.
    fn reads_cpu(&self, took: Duration) -> bool {
        match self.auto {
            Some(Auto::Background { .. }) => true,
            Some(Auto::Normal { .. }) => took >= AUTO_BACKGROUND_AT,
            Some(Auto::Stuck) | None => false,
        }
    }

    /// Records one message that started at `started` (after `before` on
    /// its decoder) and was answered at `now`; every [`WINDOW`] messages,
    /// refits.
    fn observe_at(&mut self, started: Instant, before: Before, now: Instant, beat: &WorkerBeat) {
        self.observe_with(started, before, now, thread_cpu_time, beat)
    }

    /// As `observe_at`, with `read_cpu` reading the thread's CPU time when
    /// it is needed (see [`SchedFit::reads_cpu`]).
    fn observe_with(
        &mut self,
        started: Instant,
        before: Before,
        now: Instant,
        read_cpu: impl FnOnce() -> Option<Duration>,
        beat: &WorkerBeat,
    ) {
        if matches!(self.auto, Some(Auto::Background { .. } | Auto::Stuck))
            && beat.class() == WorkerClass::Normal
        {
            // The watchdog returned it while this message ran
            // (`StarveWatch`).
            self.returned(Return::Starving, now);
        }
        let took = now.saturating_duration_since(started) + before.wall;
        if self.long {
            colocate::heavy_answered(now);
        }
        let cpu_now = if self.reads_cpu(took) {
            read_cpu()
        } else {
            None
        };
        // Without the last read (skipped or failed) this message's CPU
        // time is unknown, and its wall time stands in: a message of less
        // than AUTO_BACKGROUND_AT in wall time held a core for less.
        let cpu = match (cpu_now, self.cpu_seen) {
            (Some(now), Some(seen)) => now.saturating_sub(seen) + before.cpu,
            _ => took,
        };
        self.cpu_seen = cpu_now;
        if let Some(auto) = &mut self.auto {
            if auto.starving(took, cpu) {
                self.back_to_normal(Return::Starving, now, beat);
            }
        }
        let window_start = *self.window_start.get_or_insert(started);
        self.took[self.seen] = u32::try_from(took.as_nanos()).unwrap_or(u32::MAX);
        if self.auto.is_some() {
            self.cpu_took[self.seen] = u32::try_from(cpu.as_nanos()).unwrap_or(u32::MAX);
        }
        self.seen += 1;
        if self.seen < WINDOW {
            if self.seen.is_multiple_of(EARLY_CHECK) && cpu >= AUTO_BACKGROUND_AT {
                self.move_early(now, beat);
            }
            return;
        }
        self.seen = 0;
        self.window_start = None;
        let span = now.saturating_duration_since(window_start);
        let busy: u64 = self.took.iter().map(|t| u64::from(*t)).sum();
        let busy_share = busy as f64 / span.as_nanos().max(1) as f64;
        let p90 = p90_ns(&mut self.took);
        let at = AUTO_BACKGROUND_AT.as_nanos() as u64;
        let in_background = matches!(self.auto, Some(Auto::Background { .. } | Auto::Stuck));
        self.count(p90 < at && !in_background);
        self.long = p90 >= at;
        match self.auto {
            Some(Auto::Normal { after_flood, .. }) => {
                // After a flood, calm as the flood return measures it: by
                // CPU time, which waiting for a core beside the sensor
                // models it gives way to does not stretch.
                let share = if after_flood {
                    share_of(&self.cpu_took, span)
                } else {
                    busy_share
                };
                let cpu_p90 = p90_ns(&mut self.cpu_took);
                if cpu_p90 >= at {
                    let held = || {
                        format!(
                            "its last {WINDOW} messages held a core for {:.2} ms at the 90th percentile",
                            cpu_p90 as f64 / 1e6
                        )
                    };
                    self.move_if_due(held, share, now, beat);
                }
            }
            // Its CPU time, not its wall time, which grows in the
            // background as normal threads preempt it: a load it bears in
            // the normal class does not return it.
            Some(Auto::Background { .. }) if share_of(&self.cpu_took, span) > MAX_BUSY_TO_MOVE => {
                self.back_to_normal(Return::Busy, now, beat);
            }
            _ => {}
        }
        self.colocation.fit(
            colocate::Window {
                span,
                busy: Duration::from_nanos(busy),
                p90: Duration::from_nanos(p90),
                short: p90 < at,
                in_background: matches!(self.auto, Some(Auto::Background { .. } | Auto::Stuck)),
            },
            now,
        );
        if let Some(slice) = &mut self.slice {
            if !slice.refit(p90, busy_share) {
                self.slice = None;
            }
        }
    }

    /// Between two windows' ends, every [`EARLY_CHECK`] messages: an `auto`
    /// worker in the normal class whose messages so far in this window all
    /// held a core for [`AUTO_BACKGROUND_AT`] or more counts as long now,
    /// and moves if it may.
    fn move_early(&mut self, now: Instant, beat: &WorkerBeat) {
        if !matches!(
            self.auto,
            Some(Auto::Normal {
                after_flood: false,
                ..
            })
        ) {
            return;
        }
        let so_far = &self.cpu_took[..self.seen];
        let shortest = so_far.iter().copied().min().unwrap_or(0);
        if u64::from(shortest) < AUTO_BACKGROUND_AT.as_nanos() as u64 {
            return;
        }
        // As at a window's end: it is no sensor model's worker now (it
        // must not count itself as the one it gives way to).
        self.count(false);
        self.long = true;
        let span = self
            .window_start
            .map_or(Duration::ZERO, |start| now.saturating_duration_since(start));
        let busy_share = share_of(&self.took[..self.seen], span);
        let seen = self.seen;
        let held = || {
            format!(
                "each of its last {seen} messages held a core for {:.2} ms or more",
                f64::from(shortest) / 1e6
            )
        };
        self.move_if_due(held, busy_share, now, beat);
    }

    /// A normal `auto` worker whose messages `held` a core for
    /// [`AUTO_BACKGROUND_AT`] or more (said in its log line) moves to the
    /// background if a sensor model's worker runs beside it, it is not
    /// flooded and it has settled since its last return.
    fn move_if_due(
        &mut self,
        held: impl FnOnce() -> String,
        busy_share: f64,
        now: Instant,
        beat: &WorkerBeat,
    ) {
        let Some(Auto::Normal {
            settled,
            after_flood,
        }) = self.auto
        else {
            return;
        };
        let short_workers = self.short_workers.load(Ordering::Relaxed);
        let busy_limit = if after_flood {
            CALM_TO_MOVE_AFTER_FLOOD
        } else {
            MAX_BUSY_TO_MOVE
        };
        let due = short_workers > 0 && busy_share <= busy_limit && settled.is_none_or(|t| now >= t);
        if !due {
            return;
        }
        self.auto = match move_to_background(&held(), short_workers, beat) {
            // The slice was fitted to the normal class; SCHED_IDLE has
            // none.
            Ok(()) => {
                self.slice = None;
                Some(Auto::Background {
                    since: now,
                    wall: Duration::ZERO,
                    cpu: Duration::ZERO,
                    messages: 0,
                })
            }
            Err(()) => None,
        };
    }

    /// A background worker returns to the normal class, where it stays for
    /// [`SETTLE_AFTER_STARVING`], or after a flood [`SETTLE_AFTER_FLOOD`]
    /// doubled for each flood return before it, before it may move again.
    fn back_to_normal(&mut self, why: Return, now: Instant, beat: &WorkerBeat) {
        if !beat.claim_return() {
            // The watchdog returned it a moment ago (`StarveWatch`).
            self.returned(Return::Starving, now);
            return;
        }
        let why_text = match why {
            Return::Starving => format!(
                "in the background it got less than half of the time its last messages took on a core (checked every {STARVE_CHECK} messages or {} s of them), the cores being busy with normal threads", STARVE_CHECK_WALL.as_secs()
            ),
            Return::Busy => format!(
                "it held a core over {:.0}% of its last {WINDOW} messages' time (a flood): it wants about a core, and in the background it gets one only when no normal thread does",
                MAX_BUSY_TO_MOVE * 100.0
            ),
        };
        match priority::leave_background() {
            Ok(()) => {
                // Its decoder too, now: it would follow only at its next
                // message, and starved it may not take one for long.
                // Refused, it says so as it follows (`ahead`).
                // SAFETY: no arguments.
                let own = unsafe { libc::gettid() };
                for tid in beat.tids().filter(|&t| t != own) {
                    let _ = priority::leave_background_of(tid);
                }
                let settle = self.returned(why, now);
                log::warn!(
                    "{}: back to the normal class (worker_priority = \"auto\"): {why_text}; it may move again in {} s",
                    thread_name(),
                    settle.as_secs()
                );
            }
            Err(e) => {
                beat.entered(WorkerClass::Background);
                // The probe said it could (`priority::can_leave_background`).
                log::warn!(
                    "{}: stays in the background for good: {why_text}, and the kernel refused its return to the normal class ({e})",
                    thread_name()
                );
                self.auto = Some(Auto::Stuck);
            }
        }
    }

    /// Its thread is back in the normal class (returned by itself or by
    /// the watchdog): the time it stays there before it may move again,
    /// which this returns.
    fn returned(&mut self, why: Return, now: Instant) -> Duration {
        if let Some(Auto::Background { since, .. }) = self.auto {
            if now.saturating_duration_since(since) >= SETTLE_AFTER_STARVING {
                self.flood_returns = 0;
            }
        }
        let settle = match why {
            Return::Starving => SETTLE_AFTER_STARVING,
            Return::Busy => {
                let settle = SETTLE_AFTER_FLOOD
                    .saturating_mul(1 << self.flood_returns.min(8))
                    .min(SETTLE_AFTER_STARVING);
                self.flood_returns = self.flood_returns.saturating_add(1);
                settle
            }
        };
        self.auto = Some(Auto::Normal {
            settled: Some(now + settle),
            after_flood: why == Return::Busy,
        });
        // The kernel kept the slice last asked for.
        self.slice = self.found.map(|found| Slice {
            found,
            current_ns: get_attr().map_or(found.runtime_ns, |a| a.runtime_ns),
        });
        settle
    }

    /// Counts this worker among the short ones, or not.
    fn count(&mut self, short: bool) {
        if short != self.counted {
            if short {
                self.short_workers.fetch_add(1, Ordering::Relaxed);
            } else {
                self.short_workers.fetch_sub(1, Ordering::Relaxed);
            }
            self.counted = short;
        }
    }
}

/// The share of `span` that the durations `ns` (in nanoseconds) add up to.
fn share_of(ns: &[u32], span: Duration) -> f64 {
    let sum: u64 = ns.iter().map(|t| u64::from(*t)).sum();
    sum as f64 / span.as_nanos().max(1) as f64
}

/// The 90th percentile of `ns` (sorts it).
fn p90_ns(ns: &mut [u32; WINDOW]) -> u64 {
    ns.sort_unstable();
    u64::from(ns[WINDOW * 9 / 10])
}

impl Auto {
    /// Adds one message in the background that took `took` by the wall
    /// clock and `cpu` on a core; every [`STARVE_CHECK`] messages (or
    /// [`STARVE_CHECK_WALL`] of their wall time), whether
    /// the thread got less than half of their wall time on a core. A
    /// message waiting for a shared engine's lock looks alike; returning
    /// then costs nothing but the protection, for a while.
    fn starving(&mut self, took: Duration, cpu_took: Duration) -> bool {
        let Auto::Background {
            wall,
            cpu,
            messages,
            ..
        } = self
        else {
            return false;
        };
        *wall += took;
        *cpu += cpu_took;
        *messages += 1;
        if *messages < STARVE_CHECK && *wall < STARVE_CHECK_WALL {
            return false;
        }
        let starving = *cpu * 2 < *wall;
        (*wall, *cpu, *messages) = (Duration::ZERO, Duration::ZERO, 0);
        starving
    }
}

impl Drop for SchedFit {
    fn drop(&mut self) {
        self.count(false);
    }
}

impl Slice {
    fn for_this_thread() -> Option<Slice> {
        let found = match get_attr() {
            Ok(a) => a,
            Err(e) => {
                log::debug!(
                    "{}: no time slice fitting: sched_getattr: {e}",
                    thread_name()
                );
                return None;
            }
        };
        // Before 6.12 a normal thread's sched_runtime reads 0.
        if found.policy != libc::SCHED_OTHER as u32 || found.runtime_ns == 0 {
            return None;
        }
        Some(Slice {
            current_ns: found.runtime_ns,
            found,
        })
    }

    /// Asks for the slice `p90` and `busy_share` call for; false if the
    /// kernel refused (the caller drops the fit: it would only be refused
    /// again).
    fn refit(&mut self, p90: u64, busy_share: f64) -> bool {
        let want = fitted_ns(p90, busy_share, self.found.runtime_ns);
        if keeps(self.current_ns, want) {
            return true;
        }
        let mut attr = self.found;
        attr.runtime_ns = want;
        match set_attr(&attr) {
            Ok(()) => {
                log::debug!(
                    "{}: time slice {} -> {want} ns (twice what 90% of its last {WINDOW} messages took, within the kernel's {KERNEL_MIN_NS} ns and its default {} ns; the default while busy over {:.0}% of the time)",
                    thread_name(),
                    self.current_ns,
                    self.found.runtime_ns,
                    MAX_BUSY_SHARE * 100.0
                );
                self.current_ns = want;
                true
            }
            Err(e) => {
                log::debug!(
                    "{}: time slice of {want} ns refused ({e}): it keeps the kernel's",
                    thread_name()
                );
                false
            }
        }
    }
}

/// An `auto` worker whose messages `held` a core long enters `SCHED_IDLE`,
/// if this process can bring it back (`priority::can_leave_background`);
/// one line per move. Err if it stays normal for good.
fn move_to_background(held: &str, short_workers: usize, beat: &WorkerBeat) -> Result<(), ()> {
    if let Err(why) = priority::can_leave_background() {
        log::warn!(
            "{}: stays in the normal class: {held}, so worker_priority = \"auto\" would move it to the background, but it could not come back when starving there ({why}); worker_priority = \"background\" puts the model there from the start, \"normal\" keeps it normal without this warning",
            thread_name()
        );
        return Err(());
    }
    match priority::enter(WorkerPriority::Background) {
        Ok(()) => {
            // Before the log line: starved in it, the thread is watched
            // (`StarveWatch`).
            beat.entered(WorkerClass::Background);
            log::info!(
                "{}: moves to the background (SCHED_IDLE, worker_priority = \"auto\"): {held}, and {short_workers} worker(s) of models whose messages take under {} ms (sensor models), like the broker, would wait behind them on its core; it now computes on cores no normal thread wants, and returns to the normal class if it starves there (worker_priority = \"normal\" keeps it normal)",
                thread_name(),
                AUTO_BACKGROUND_AT.as_millis()
            );
            Ok(())
        }
        Err(e) => {
            log::warn!(
                "{}: stays in the normal class: {held}, so worker_priority = \"auto\" would move it to the background, but the kernel refused SCHED_IDLE ({e}; a seccomp filter without the @resources calls?)",
                thread_name()
            );
            beat.entered(WorkerClass::Refused);
            Err(())
        }
    }
}

/// Watches one `auto` worker from the daemon's watchdog tick (a normal
/// thread, every second): when one of its threads in the background has
/// wanted a core for [`STARVE_CHECK_WALL`] or more (runnable at each
/// look, and not asleep in between, the kernel says) and got less than
/// half of that time on one, it returns the worker and its decoder to
/// the normal class at once.
/// The worker's own check counts finished messages only, and a starved
/// thread may not finish one, or even take one, for long: beside two
/// spinning threads per core, on a loaded CI host, a camera model's
/// worker finished no frame in two minutes; beside eight per core its
/// decoder, woken for a frame, waited 15 to 35 s for a core
/// (tests/serving.rs). A thread that sleeps while it waits for something
/// else (a lock, a device) is not watched meanwhile; one that spins or
/// yields looks as if it wanted a core. The worker learns of its return
/// at its next message ([`SchedFit::returned`]).
#[derive(Debug)]
pub struct StarveWatch {
    /// The worker thread's name, for the log.
    name: String,
    /// Only `auto` workers are watched, and only until the kernel refuses
    /// a return.
    watching: bool,
    /// The worker's thread, then its decoder's: since when it has wanted
    /// a core, and what the look then found.
    seen: [Option<(Instant, Look)>; 2],
}

/// What a look at one thread finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Look {
    /// Running or waiting for a core (not asleep).
    runnable: bool,
    /// How often it has gone to sleep (its voluntary context switches).
    slept: u64,
    cpu: Duration,
}

impl StarveWatch {
    pub fn new(name: String, priority: WorkerPriority) -> StarveWatch {
        StarveWatch {
            name,
            watching: priority == WorkerPriority::Auto,
            seen: [None, None],
        }
    }

    /// One look at the worker of `beat`, taken every second or so.
    pub fn check(&mut self, beat: &WorkerBeat) {
        self.check_at(beat, Instant::now(), look_at);
    }

    /// As `check`, at `now`, looking at a thread with `look`.
    fn check_at(
        &mut self,
        beat: &WorkerBeat,
        now: Instant,
        look: impl Fn(libc::pid_t) -> Option<Look>,
    ) {
        if !self.watching || beat.class() != WorkerClass::Background {
            self.seen = [None, None];
            return;
        }
        for (i, tid) in beat.threads().into_iter().enumerate() {
            let now_look = (tid != 0).then(|| look(tid)).flatten();
            let Some(now_look) = now_look.filter(|l| l.runnable) else {
                self.seen[i] = None;
                continue;
            };
            let (since, then) = match self.seen[i] {
                // Runnable then and now, and never asleep in between.
                Some((since, then)) if then.slept == now_look.slept => (since, then),
                _ => {
                    self.seen[i] = Some((now, now_look));
                    continue;
                }
            };
            let wall = now.saturating_duration_since(since);
            if wall < STARVE_CHECK_WALL {
                continue;
            }
            let got = now_look.cpu.saturating_sub(then.cpu);
            if got * 2 < wall {
                let thread = if i == 1 { "its decoder" } else { "it" };
                self.rescue(beat, thread, wall, got);
                return;
            }
            // Fed: the next second is judged afresh.
            self.seen[i] = Some((now, now_look));
        }
    }

    /// Returns the worker of `beat`, whose `thread` got `got` of `wall`
    /// on a core, to the normal class.
    fn rescue(&mut self, beat: &WorkerBeat, thread: &str, wall: Duration, got: Duration) {
        self.seen = [None, None];
        if !beat.claim_return() {
            // It returned by itself a moment ago.
            return;
        }
        let (mut moved, mut refused) = (false, None);
        for tid in beat.tids() {
            match priority::leave_background_of(tid) {
                Ok(()) => moved = true,
                // A decoder that ended meanwhile (its worker goes next).
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                Err(e) => refused = Some(e),
            }
        }
        let seen = format!(
            "in the background {thread} wanted a core for {:.1} s and got one for {:.2} s, the cores being busy with normal threads",
            wall.as_secs_f64(),
            got.as_secs_f64()
        );
        let settle = SETTLE_AFTER_STARVING.as_secs();
        match (moved, refused) {
            (true, None) => log::warn!(
                "{}: back to the normal class (worker_priority = \"auto\"): {seen}; it may move again {settle} s after its next message",
                self.name
            ),
            // The worker is back, or its decoder (which follows the
            // worker's class at its next message, and says so if refused).
            (true, Some(e)) => log::warn!(
                "{}: back to the normal class (worker_priority = \"auto\"), one of its threads only: {seen}, and the kernel refused the other's return ({e}); it may move again {settle} s after its next message",
                self.name
            ),
            (false, e) => {
                beat.entered(WorkerClass::Background);
                self.watching = false;
                let e = e.map_or_else(|| "its threads have ended".to_string(), |e| e.to_string());
                // The probe said it could (`priority::can_leave_background`).
                log::warn!(
                    "{}: stays in the background: {seen}, and the kernel refused its return to the normal class ({e}); the watchdog no longer watches it",
                    self.name
                );
            }
        }
    }
}

/// Whether the thread `tid` of this process is runnable ("R": running or
/// waiting for a core), how often it has gone to sleep, and its CPU time;
/// None if any cannot be read (the thread has ended).
fn look_at(tid: libc::pid_t) -> Option<Look> {
    let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
    };
    Some(Look {
        runnable: field("State")?.starts_with('R'),
        slept: field("voluntary_ctxt_switches")?.parse().ok()?,
        cpu: thread_cpu_time_of(tid)?,
    })
}

/// The calling thread's CPU time; None if the clock cannot be read.
pub fn thread_cpu_time() -> Option<Duration> {
    read_cpu_clock(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// The CPU time of the thread `tid` of this process; None if the clock
/// cannot be read (the thread has ended).
fn thread_cpu_time_of(tid: libc::pid_t) -> Option<Duration> {
    // The kernel's clock of one thread's CPU time: the id inverted and
    // shifted past three bits that say "per thread" (4) and "as the
    // scheduler counts it" (2), `MAKE_THREAD_CPUCLOCK` in
    // linux/posix-timers.h, as glibc's pthread_getcpuclockid builds it.
    // The kernel accepts it for the calling process's threads only.
    read_cpu_clock((!tid << 3) | 6)
}

fn read_cpu_clock(clock: libc::clockid_t) -> Option<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a writable timespec for the call's duration.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    (rc == 0).then(|| Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}

fn thread_name() -> String {
    std::thread::current()
        .name()
        .unwrap_or("worker")
        .to_string()
}

/// What a message cost on another thread before its worker took it: its
/// decoder's (`ahead`). A message's cost is the decode and the invoke
/// together, wherever each ran: the decoder keeps its worker's class, so
/// an `auto` worker moves, returns and starves on the two.
#[derive(Debug, Clone, Copy, Default)]
pub struct Before {
    pub wall: Duration,
    pub cpu: Duration,
}

/// Feeds `fit` one message that started at `started`. A worker without a
/// fit (in the background from the start, or in a class an operator set)
/// still says when it answered a long message (`colocate`).
pub fn observe(fit: &mut Option<SchedFit>, started: Instant, beat: &WorkerBeat) {
    observe_after(fit, started, Before::default(), beat)
}

/// As [`observe`], for a message whose decode ran before, on its decoder.
pub fn observe_after(
    fit: &mut Option<SchedFit>,
    started: Instant,
    before: Before,
    beat: &WorkerBeat,
) {
    let now = Instant::now();
    match fit {
        Some(f) => f.observe_at(started, before, now, beat),
        None if now.saturating_duration_since(started) + before.wall >= AUTO_BACKGROUND_AT => {
            colocate::heavy_answered(now)
        }
        None => {}
    }
}

/// Twice `p90`, at least the kernel's minimum, at most `default_ns`;
/// `default_ns` if the messages took more than [`MAX_BUSY_SHARE`] of the
/// window's wall time.
fn fitted_ns(p90: u64, busy_share: f64, default_ns: u64) -> u64 {
    if busy_share > MAX_BUSY_SHARE {
        return default_ns;
    }
    (p90 * 2).clamp(KERNEL_MIN_NS, default_ns.max(KERNEL_MIN_NS))
}

fn keeps(current_ns: u64, want_ns: u64) -> bool {
    let (lo, hi) = (current_ns.min(want_ns), current_ns.max(want_ns));
    (hi as f64) < (lo as f64) * KEEP_WITHIN
}

/// `struct sched_attr` (linux/sched/types.h), the first version's 48
/// bytes plus the utilization clamps (56); the libc crate has no binding.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct SchedAttr {
    size: u32,
    policy: u32,
    flags: u64,
    nice: i32,
    priority: u32,
    runtime_ns: u64,
    deadline_ns: u64,
    period_ns: u64,
    util_min: u32,
    util_max: u32,
}

const ATTR_SIZE: u32 = std::mem::size_of::<SchedAttr>() as u32;
/// The one flag the kernel reports back that a set must repeat to keep.
const SCHED_FLAG_RESET_ON_FORK: u64 = 0x01;

fn get_attr() -> io::Result<SchedAttr> {
    let mut attr = SchedAttr::default();
    // SAFETY: `attr` is a writable sched_attr of ATTR_SIZE bytes for the
    // call's duration; pid 0 is the calling thread; flags must be 0.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_sched_getattr,
            0,
            &mut attr as *mut SchedAttr,
            ATTR_SIZE,
            0,
        )
    };
    if rc == 0 {
        Ok(attr)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sets `attr` (its policy, nice and flags as found, so an operator's nice
/// survives) with its slice.
fn set_attr(attr: &SchedAttr) -> io::Result<()> {
    let attr = SchedAttr {
        size: ATTR_SIZE,
        flags: attr.flags & SCHED_FLAG_RESET_ON_FORK,
        ..*attr
    };
    // SAFETY: `attr` is a valid sched_attr whose size field is its size,
    // alive for the call; pid 0 is the calling thread; flags must be 0.
    let rc = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT: u64 = 1_400_000;

    /// Feeds `fit` a window of messages taking `took`, one every `every`
    /// (a millisecond: as a sensor model's worker sees them), from `now` on;
    /// on a core all their wall time (the thread's CPU time, which only an
    /// `auto` worker reads, is made up to match).
    fn feed_every(
        fit: &mut SchedFit,
        took: Duration,
        every: Duration,
        now: &mut Instant,
        beat: &WorkerBeat,
    ) {
        for _ in 0..WINDOW {
            *now += every;
            fit.observe_with(
                *now - took,
                Before::default(),
                *now,
                || Some(on_core(took)),
                beat,
            );
        }
    }

    thread_local!(static CPU: std::cell::Cell<Duration> = const { std::cell::Cell::new(Duration::ZERO) });

    /// The test thread's made-up CPU time after `took` more on a core.
    fn on_core(took: Duration) -> Duration {
        let cpu = CPU.get() + took;
        CPU.set(cpu);
        cpu
    }

    fn feed(fit: &mut SchedFit, took: Duration, now: &mut Instant, beat: &WorkerBeat) {
        feed_every(fit, took, Duration::from_millis(1), now, beat);
    }

    /// The 90th percentile of messages taking `us` microseconds.
    fn p90_of(us: &[u64]) -> u64 {
        let mut v = us.to_vec();
        v.sort_unstable();
        v[v.len() * 9 / 10] * 1000
    }

    /// Starving is checked every [`STARVE_CHECK`] messages, or sooner once
    /// they took [`STARVE_CHECK_WALL`] by the wall clock: a camera's frames
    /// starved beside normal threads take seconds each.
    #[test]
    fn a_background_worker_is_checked_for_starving_every_few_messages_or_each_second_of_them() {
        let background = || Auto::Background {
            since: Instant::now(),
            wall: Duration::ZERO,
            cpu: Duration::ZERO,
            messages: 0,
        };
        let ms = Duration::from_millis;
        // Short messages, starving: checked at the 8th, not before.
        let mut auto = background();
        for _ in 1..STARVE_CHECK {
            assert!(!auto.starving(ms(10), ms(2)));
        }
        assert!(auto.starving(ms(10), ms(2)), "the 8th message");
        // Fed: checked, not starving, and counted afresh.
        for _ in 0..STARVE_CHECK {
            assert!(!auto.starving(ms(10), ms(9)));
        }
        // One message of a second and a half on a core for a tenth of it:
        // checked at once.
        let mut auto = background();
        assert!(
            auto.starving(ms(1_500), ms(150)),
            "one long starved message"
        );
        // Below a second, not yet; the message that reaches it, checked
        // over both.
        assert!(!auto.starving(ms(600), ms(60)));
        assert!(auto.starving(ms(600), ms(60)), "1.2 s over two messages");
        // A second of them, fed: not starving.
        assert!(!auto.starving(ms(1_200), ms(1_100)));
        // Normal workers are never starving.
        let mut normal = Auto::Normal {
            settled: None,
            after_flood: false,
        };
        assert!(!normal.starving(ms(5_000), Duration::ZERO));
    }

    #[test]
    fn the_fit_is_twice_the_90th_percentile_within_the_kernels_bounds() {
        let fit = |us: &[u64]| fitted_ns(p90_of(us), 0.05, DEFAULT);
        // Short messages: the kernel's minimum, not 50 µs.
        assert_eq!(fit(&[25; 64]), KERNEL_MIN_NS);
        // 150 µs messages with a few slow ones above the 90th percentile.
        let mut mixed = vec![150; 60];
        mixed.extend([500; 4]);
        assert_eq!(fit(&mixed), 300_000);
        // Below it they count.
        let mut slow = vec![150; 50];
        slow.extend([500; 14]);
        assert_eq!(fit(&slow), 1_000_000);
        // An image model's milliseconds: the default.
        assert_eq!(fit(&[900; 64]), DEFAULT);
    }

    #[test]
    fn a_busy_worker_keeps_the_default() {
        // 25 µs messages at 10,000 a second: 25% busy.
        assert_eq!(fitted_ns(25_000, 0.25, DEFAULT), DEFAULT);
        // At 2,000 a second: 5%.
        assert_eq!(fitted_ns(25_000, 0.05, DEFAULT), KERNEL_MIN_NS);
    }

    #[test]
    fn a_wobbling_fit_keeps_the_slice() {
        assert!(keeps(100_000, 100_000));
        assert!(keeps(600_000, 500_000));
        assert!(!keeps(1_400_000, 100_000));
        assert!(!keeps(100_000, 600_000));
    }

    fn slice_now() -> Option<u64> {
        get_attr().map(|a| a.runtime_ns).ok()
    }

    /// A message decoded ahead costs its decode and its invoke: 50 µs
    /// invokes after 300 µs decodes fit a slice for 350 µs, not the
    /// kernel's minimum.
    #[test]
    fn a_message_decoded_ahead_counts_its_decode() {
        std::thread::spawn(|| {
            let beat = WorkerBeat::new(Instant::now());
            let Some(mut fit) = SchedFit::for_this_thread(WorkerPriority::Normal) else {
                panic!("no custom time slices here: {:?}", get_attr());
            };
            let (invoke, decode) = (Duration::from_micros(50), Duration::from_micros(300));
            let before = Before {
                wall: decode,
                cpu: decode,
            };
            let mut now = Instant::now();
            for _ in 0..WINDOW {
                now += Duration::from_millis(10);
                fit.observe_with(now - invoke, before, now, || Some(on_core(invoke)), &beat);
            }
            assert_eq!(fit.current_ns(), Some(700_000));
        })
        .join()
        .unwrap();
    }

    /// Runs on the kernel: a worker with short messages gets the minimum
    /// slice, on its own thread only; long ones bring the default back.
    #[test]
    fn a_thread_with_short_messages_asks_for_the_shortest_slice() {
        let outside = slice_now();
        let (short, long, default) = std::thread::spawn(|| {
            let beat = WorkerBeat::new(Instant::now());
            let Some(mut fit) = SchedFit::for_this_thread(WorkerPriority::Normal) else {
                panic!(
                    "this kernel has no custom time slices for normal threads (Linux 6.12 or later has them): {:?}",
                    get_attr()
                );
            };
            let default = fit.current_ns();
            let mut now = Instant::now();
            feed(&mut fit, Duration::from_micros(25), &mut now, &beat);
            let short = slice_now();
            assert_eq!(fit.current_ns(), Some(KERNEL_MIN_NS));
            feed(&mut fit, Duration::from_micros(900), &mut now, &beat);
            let long = slice_now();
            // A normal model's worker stays normal whatever its messages take.
            let slow = Duration::from_millis(5);
            feed_every(&mut fit, slow, slow * 4, &mut now, &beat);
            assert_eq!(get_attr().map(|a| a.policy).ok(), Some(libc::SCHED_OTHER as u32));
            (short, long, default)
        })
        .join()
        .unwrap();
        assert_eq!(short, Some(KERNEL_MIN_NS));
        assert_eq!(long, default);
        assert_eq!(slice_now(), outside);
    }

    fn policy() -> Option<u32> {
        get_attr().map(|a| a.policy).ok()
    }

    const NORMAL: Option<u32> = Some(libc::SCHED_OTHER as u32);
    const IDLE: Option<u32> = Some(libc::SCHED_IDLE as u32);

    /// A normal `auto` worker reads its CPU time only after a message of
    /// a millisecond or more, and then takes that message's wall time (it
    /// has no read before it); in the background it reads after each.
    #[test]
    fn an_auto_worker_reads_its_cpu_time_only_where_it_decides_something() {
        static SHORT: AtomicUsize = AtomicUsize::new(0);
        let beat = WorkerBeat::new(Instant::now());
        let mut fit =
            SchedFit::counted_in(WorkerPriority::Auto, &SHORT).expect("a normal thread has a fit");
        let reads = std::cell::Cell::new(0);
        let clock = std::cell::Cell::new(Duration::from_secs(7));
        let now = std::cell::Cell::new(Instant::now());
        let message = |fit: &mut SchedFit, took: Duration, on_core: Duration| {
            now.set(now.get() + Duration::from_millis(5));
            let now = now.get();
            clock.set(clock.get() + on_core);
            fit.observe_with(
                now - took,
                Before::default(),
                now,
                || {
                    reads.set(reads.get() + 1);
                    Some(clock.get())
                },
                &beat,
            );
        };
        let short = Duration::from_micros(300);
        let long = Duration::from_micros(1_500);
        for _ in 0..5 {
            message(&mut fit, short, short);
        }
        assert_eq!(reads.get(), 0, "short messages");
        message(&mut fit, long, long / 2);
        message(&mut fit, long, long / 2);
        assert_eq!(reads.get(), 2, "long messages");
        assert_eq!(
            &fit.cpu_took[5..7],
            &[1_500_000, 750_000],
            "the first long message by its wall time, the next by its CPU time"
        );
        fit.auto = Some(Auto::Background {
            since: now.get(),
            wall: Duration::ZERO,
            cpu: Duration::ZERO,
            messages: 0,
        });
        message(&mut fit, short, short);
        assert_eq!(reads.get(), 3, "in the background, every message");
    }

    /// Runs on the kernel: an `auto` worker of long messages stays normal
    /// while no worker of short messages runs beside it, or while its
    /// messages are short, or while it is busy most of the time (a flood);
    /// beside a short one it moves to SCHED_IDLE, on its own thread only,
    /// once a tenth of a window hold a core a millisecond or more. Starving there (less
    /// than half its messages' wall time on a core), it comes back, and
    /// stays normal for [`SETTLE`]. Where this process cannot bring a thread
    /// back from SCHED_IDLE (unprivileged, RLIMIT_NICE below 20), it never
    /// moves. Busy in the background it comes back too, and messages long
    /// by the wall clock but short on a core do not move it.
    #[test]
    fn an_auto_worker_with_long_messages_moves_to_the_background_beside_short_ones() {
        static SHORT: AtomicUsize = AtomicUsize::new(0);
        let outside = policy();
        let can_come_back = priority::can_leave_background();
        std::thread::spawn(move || {
            let beat = WorkerBeat::new(Instant::now());
            beat.entered(WorkerClass::Normal);
            let mut now = Instant::now();
            let mut fit = SchedFit::counted_in(WorkerPriority::Auto, &SHORT)
                .expect("a normal thread has a fit");
            let long = Duration::from_micros(1_200);
            let calm = Duration::from_millis(3);
            feed_every(&mut fit, long, calm, &mut now, &beat);
            assert_eq!(policy(), NORMAL, "alone");
            // A sensor model's worker: counted once its window is short.
            let mut sensor = SchedFit::counted_in(WorkerPriority::Auto, &SHORT)
                .expect("a normal thread has a fit");
            feed(&mut sensor, Duration::from_micros(25), &mut now, &beat);
            assert_eq!(SHORT.load(Ordering::Relaxed), 1);
            feed(&mut fit, Duration::from_micros(25), &mut now, &beat);
            assert_eq!(policy(), NORMAL, "short messages");
            assert_eq!(SHORT.load(Ordering::Relaxed), 2);
            // 58 of 64 at 0.9 ms: the 90th percentile is below the line.
            for i in 0..WINDOW {
                now += calm;
                let took = if i < 58 { 900 } else { 1_500 };
                fit.observe_at(
                    now - Duration::from_micros(took),
                    Before::default(),
                    now,
                    &beat,
                );
            }
            assert_eq!(policy(), NORMAL, "the 90th percentile below 1 ms");
            // Flooded: one message right after the other.
            feed_every(&mut fit, long, long, &mut now, &beat);
            assert_eq!(policy(), NORMAL, "busy all the time");
            assert_eq!(SHORT.load(Ordering::Relaxed), 1);
            feed_every(&mut fit, long, calm, &mut now, &beat);
            if let Err(why) = &can_come_back {
                assert_eq!(policy(), NORMAL, "cannot come back ({why}), so never moves");
                assert_eq!(beat.class(), WorkerClass::Normal);
                return;
            }
            assert_eq!(policy(), IDLE, "beside a sensor model, calm, long messages");
            assert_eq!(beat.class(), WorkerClass::Background);
            // Fed, it stays: its CPU time keeps up with the wall clock.
            let message = |fit: &mut SchedFit, now: &mut Instant, cpu: Duration| {
                *now += Duration::from_millis(30);
                let started = *now - Duration::from_millis(10);
                fit.observe_with(
                    started,
                    Before::default(),
                    *now,
                    || Some(on_core(cpu)),
                    &beat,
                );
            };
            for _ in 0..3 * STARVE_CHECK {
                message(&mut fit, &mut now, Duration::from_millis(9));
            }
            assert_eq!(policy(), IDLE, "fed");
            // Starving: 2 ms on a core of every 10.
            for _ in 0..STARVE_CHECK {
                message(&mut fit, &mut now, Duration::from_millis(2));
            }
            assert_eq!(policy(), NORMAL, "starving");
            assert_eq!(beat.class(), WorkerClass::Normal);
            // It settles before it may move again.
            feed_every(&mut fit, long, calm, &mut now, &beat);
            assert_eq!(policy(), NORMAL, "settling");
            now += SETTLE_AFTER_STARVING;
            feed_every(&mut fit, long, calm, &mut now, &beat);
            assert_eq!(policy(), IDLE, "settled");
            // Flooded in the background, fed or not, it wants a core: the
            // first window of the flood may still hold calm messages.
            feed_every(&mut fit, long, long, &mut now, &beat);
            feed_every(&mut fit, long, long, &mut now, &beat);
            assert_eq!(policy(), NORMAL, "busy in the background");
            // Long by the wall clock, but hardly on a core (an invoke on
            // an accelerator): it stays normal, settled or not. The window
            // the flood began ends first.
            let accelerated = |fit: &mut SchedFit, now: &mut Instant, n: usize| {
                for _ in 0..n {
                    *now += calm;
                    fit.observe_with(
                        *now - long,
                        Before::default(),
                        *now,
                        || Some(on_core(long / 10)),
                        &beat,
                    );
                }
            };
            let rest = (WINDOW - fit.seen) % WINDOW;
            accelerated(&mut fit, &mut now, rest);
            now += SETTLE_AFTER_STARVING;
            accelerated(&mut fit, &mut now, WINDOW);
            assert_eq!(policy(), NORMAL, "an accelerator's wall time");
            drop(sensor);
            assert_eq!(SHORT.load(Ordering::Relaxed), 0);
        })
        .join()
        .unwrap();
        assert_eq!(policy(), outside);
    }
    /// Beside a sensor model, a worker whose messages all hold a core a
    /// millisecond or more moves after [`EARLY_CHECK`] of them, not at its
    /// window's end. Preempted in the background (its messages' wall time
    /// most of the window's, their CPU time not) it stays; flooded (their
    /// CPU time most of the window's) it returns, and may move again after
    /// [`SETTLE_AFTER_FLOOD`], only at the end of a calm window
    /// ([`CALM_TO_MOVE_AFTER_FLOOD`]), after twice that after a second
    /// flood return, and after [`SETTLE_AFTER_FLOOD`] again once it stayed
    /// in the background [`SETTLE_AFTER_STARVING`].
    #[test]
    fn a_worker_of_long_messages_moves_after_a_few_and_returns_only_when_flooded_settling_longer_each_time(
    ) {
        static SHORT: AtomicUsize = AtomicUsize::new(0);
        let can_come_back = priority::can_leave_background();
        std::thread::spawn(move || {
            let beat = WorkerBeat::new(Instant::now());
            beat.entered(WorkerClass::Normal);
            let mut now = Instant::now();
            let mut sensor = SchedFit::counted_in(WorkerPriority::Auto, &SHORT)
                .expect("a normal thread has a fit");
            feed(&mut sensor, Duration::from_micros(25), &mut now, &beat);
            assert_eq!(SHORT.load(Ordering::Relaxed), 1);
            let mut fit = SchedFit::counted_in(WorkerPriority::Auto, &SHORT)
                .expect("a normal thread has a fit");
            let long = Duration::from_micros(1_200);
            let calm = Duration::from_millis(3);
            // `n` messages, one every `every`, each `wall` by the clock and
            // `long` on a core.
            let messages = |fit: &mut SchedFit,
                            now: &mut Instant,
                            n: usize,
                            every: Duration,
                            wall: Duration| {
                for _ in 0..n {
                    *now += every;
                    fit.observe_with(
                        *now - wall,
                        Before::default(),
                        *now,
                        || Some(on_core(long)),
                        &beat,
                    );
                }
            };
            // To the window's end, then a whole window.
            let windows =
                |fit: &mut SchedFit, now: &mut Instant, every: Duration, wall: Duration| {
                    let rest = WINDOW - fit.seen;
                    messages(fit, now, rest + WINDOW, every, wall);
                };
            messages(&mut fit, &mut now, EARLY_CHECK - 1, calm, long);
            assert_eq!(policy(), NORMAL, "fewer than {EARLY_CHECK} messages");
            messages(&mut fit, &mut now, 1, calm, long);
            if let Err(why) = &can_come_back {
                assert_eq!(policy(), NORMAL, "cannot come back ({why}), so never moves");
                return;
            }
            assert_eq!(policy(), IDLE, "after {EARLY_CHECK} long messages");
            assert_eq!(fit.seen, EARLY_CHECK, "before the window's end");
            assert_eq!(SHORT.load(Ordering::Relaxed), 1, "the sensor model's only");
            // 2.3 ms of every 3 by the clock, 1.2 on a core.
            windows(&mut fit, &mut now, calm, Duration::from_micros(2_300));
            assert_eq!(policy(), IDLE, "preempted, not flooded");
            windows(&mut fit, &mut now, long, long);
            assert_eq!(policy(), NORMAL, "flooded");
            now += SETTLE_AFTER_FLOOD / 2;
            let rest = WINDOW - fit.seen;
            messages(&mut fit, &mut now, rest, calm, long);
            assert_eq!(policy(), NORMAL, "settling");
            now += SETTLE_AFTER_FLOOD / 2;
            // Settled: 1.2 ms of every 1.8 on a core, two thirds.
            windows(&mut fit, &mut now, Duration::from_micros(1_800), long);
            assert_eq!(policy(), NORMAL, "near a core's worth after a flood");
            messages(&mut fit, &mut now, EARLY_CHECK, calm, long);
            assert_eq!(policy(), NORMAL, "no early move after a flood");
            let rest = WINDOW - fit.seen;
            messages(&mut fit, &mut now, rest, calm, long);
            assert_eq!(policy(), IDLE, "a calm window after the flood");
            windows(&mut fit, &mut now, long, long);
            assert_eq!(policy(), NORMAL, "flooded again");
            now += SETTLE_AFTER_FLOOD;
            windows(&mut fit, &mut now, calm, long);
            assert_eq!(
                policy(),
                NORMAL,
                "a second flood return settles twice as long"
            );
            now += SETTLE_AFTER_FLOOD;
            windows(&mut fit, &mut now, calm, long);
            assert_eq!(policy(), IDLE, "settled after the second flood");
            now += SETTLE_AFTER_STARVING;
            windows(&mut fit, &mut now, long, long);
            assert_eq!(policy(), NORMAL, "flooded after a minute in the background");
            now += SETTLE_AFTER_FLOOD;
            windows(&mut fit, &mut now, calm, long);
            assert_eq!(
                policy(),
                IDLE,
                "a minute in the background starts the doubling over"
            );
            drop(fit);
            drop(sensor);
            assert_eq!(SHORT.load(Ordering::Relaxed), 0);
        })
        .join()
        .unwrap();
    }

    /// A thread marked in `beat` as its worker's decoder, in `SCHED_IDLE`,
    /// asleep until the sender returned is used or dropped; its id.
    fn idle_decoder(
        beat: &std::sync::Arc<WorkerBeat>,
    ) -> (
        libc::pid_t,
        std::sync::mpsc::Sender<()>,
        std::thread::JoinHandle<()>,
    ) {
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let (end_tx, end_rx) = std::sync::mpsc::channel::<()>();
        let beat = std::sync::Arc::clone(beat);
        let handle = std::thread::spawn(move || {
            let _on = beat.on_this_thread(true);
            priority::enter(WorkerPriority::Background).expect("SCHED_IDLE needs no privilege");
            // SAFETY: no arguments.
            tid_tx.send(unsafe { libc::gettid() }).unwrap();
            let _ = end_rx.recv();
        });
        (tid_rx.recv().unwrap(), end_tx, handle)
    }

    /// An `auto` worker's state just after it moved at `since`.
    fn moved_at(since: Instant) -> Auto {
        Auto::Background {
            since,
            wall: Duration::ZERO,
            cpu: Duration::ZERO,
            messages: 0,
        }
    }

    /// The policy of the thread `tid` of this process.
    fn policy_of(tid: libc::pid_t) -> libc::c_int {
        // SAFETY: no pointers; a thread id of this process.
        unsafe { libc::sched_getscheduler(tid) }
    }

    /// The watchdog returns an `auto` worker whose thread in the
    /// background was runnable at every look for [`STARVE_CHECK_WALL`] and
    /// got less than half of it on a core; it leaves a fed one, one that
    /// slept between looks, a worker that returned by itself, and a worker
    /// of `background`.
    #[test]
    fn the_watchdog_returns_a_worker_that_waits_for_a_core_in_the_background() {
        let can_come_back = priority::can_leave_background();
        let beat = std::sync::Arc::new(WorkerBeat::new(Instant::now()));
        let (tid, end_tx, worker) = idle_decoder(&beat);
        beat.entered(WorkerClass::Background);
        assert_eq!(policy_of(tid), libc::SCHED_IDLE);
        assert_eq!(beat.threads(), [0, tid]);
        // A real look: asleep on its channel. This thread runs.
        let asleep = wait_for_look(tid, false);
        assert!(asleep.cpu < Duration::from_secs(1), "{asleep:?}");
        // SAFETY: no arguments.
        let me = look_at(unsafe { libc::gettid() }).unwrap();
        assert!(me.runnable);
        assert!(me.cpu <= thread_cpu_time().unwrap());

        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        let t0 = Instant::now();
        // A look at `at`: runnable or not, gone to sleep `slept` times, `cpu`
        // on a core.
        let check =
            |watch: &mut StarveWatch, at: Duration, runnable: bool, slept: u64, cpu: Duration| {
                watch.check_at(&beat, t0 + at, |t| {
                    (t == tid).then_some(Look {
                        runnable,
                        slept,
                        cpu,
                    })
                });
            };

        // A `background` model's worker is never returned.
        let mut fixed = StarveWatch::new("infer-fixed-0".into(), WorkerPriority::Background);
        check(&mut fixed, s(0), true, 1, s(0));
        check(&mut fixed, s(5), true, 1, s(0));
        assert_eq!(beat.class(), WorkerClass::Background);

        let mut watch = StarveWatch::new("infer-camera-0".into(), WorkerPriority::Auto);
        check(&mut watch, s(10), true, 1, s(3));
        // Under a second: not yet, however starved.
        check(&mut watch, s(10) + ms(999), true, 1, s(3));
        assert_eq!(beat.class(), WorkerClass::Background);
        // Fed: 0.8 s of 1.5 s on a core; the next second starts there.
        check(&mut watch, s(10) + ms(1_500), true, 1, s(3) + ms(800));
        assert_eq!(beat.class(), WorkerClass::Background);
        // Asleep at a look: the wait starts over.
        check(&mut watch, s(12), false, 2, s(3) + ms(800));
        check(&mut watch, s(13), true, 3, s(3) + ms(800));
        check(&mut watch, s(13) + ms(900), true, 3, s(3) + ms(800));
        assert_eq!(beat.class(), WorkerClass::Background);
        // Runnable at both looks, but asleep in between: likewise.
        check(&mut watch, s(15), true, 4, s(3) + ms(800));
        check(&mut watch, s(15) + ms(900), true, 4, s(3) + ms(800));
        assert_eq!(beat.class(), WorkerClass::Background);
        // Returned by itself meanwhile: the watchdog leaves it.
        beat.entered(WorkerClass::Normal);
        check(&mut watch, s(20), true, 4, s(3) + ms(800));
        beat.entered(WorkerClass::Background);
        assert_eq!(policy_of(tid), libc::SCHED_IDLE);
        // Seen afresh, then starving: 0.9 s of 2 s on a core.
        check(&mut watch, s(30), true, 4, s(4));
        check(&mut watch, s(32), true, 4, s(4) + ms(900));
        match &can_come_back {
            Ok(()) => {
                assert_eq!(beat.class(), WorkerClass::Normal);
                assert_eq!(policy_of(tid), libc::SCHED_OTHER);
            }
            Err(why) => {
                assert_eq!(beat.class(), WorkerClass::Background, "{why}");
                assert!(!watch.watching, "tried once: {why}");
            }
        }
        end_tx.send(()).unwrap();
        worker.join().unwrap();
        assert_eq!(beat.threads(), [0, 0], "the ended thread is forgotten");
        assert_eq!(look_at(tid), None, "an ended thread");
    }

    /// A real look at `tid`, once it finds it `runnable` or not.
    fn wait_for_look(tid: libc::pid_t, runnable: bool) -> Look {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let look = look_at(tid).expect("a live thread");
            if look.runnable == runnable {
                return look;
            }
            assert!(Instant::now() < deadline, "{tid}: {look:?}");
            std::thread::yield_now();
        }
    }

    /// A worker the watchdog returned learns it at its next message and
    /// settles as after its own starving return, without moving itself
    /// (its class is the beat's); so does one whose own return the
    /// watchdog took a moment before it.
    #[test]
    fn a_worker_returned_by_the_watchdog_settles_at_its_next_message() {
        static SHORT: AtomicUsize = AtomicUsize::new(0);
        let beat = WorkerBeat::new(Instant::now());
        let mut fit =
            SchedFit::counted_in(WorkerPriority::Auto, &SHORT).expect("a normal thread has a fit");
        let start = Instant::now();
        fit.auto = Some(moved_at(start));
        fit.flood_returns = 2;
        beat.entered(WorkerClass::Normal);
        let now = start + Duration::from_secs(3);
        fit.observe_with(
            now - Duration::from_millis(2),
            Before::default(),
            now,
            || None,
            &beat,
        );
        assert!(
            matches!(fit.auto, Some(Auto::Normal { settled: Some(t), after_flood: false }) if t == now + SETTLE_AFTER_STARVING),
            "{:?}",
            fit.auto
        );
        assert_eq!(fit.flood_returns, 2, "a starving return");
        assert_eq!(policy(), NORMAL);
        // Its own return, taken by the watchdog first.
        fit.auto = Some(moved_at(start));
        fit.back_to_normal(Return::Busy, now, &beat);
        assert!(
            matches!(fit.auto, Some(Auto::Normal { settled: Some(t), after_flood: false }) if t == now + SETTLE_AFTER_STARVING),
            "{:?}",
            fit.auto
        );
        assert_eq!(beat.class(), WorkerClass::Normal);
    }

    /// A worker that returns by itself takes its decoder along at once:
    /// the decoder would follow only at its next message, which starved
    /// it may not take for long.
    #[test]
    fn a_workers_own_return_takes_its_decoder_along() {
        static SHORT: AtomicUsize = AtomicUsize::new(0);
        let can_come_back = priority::can_leave_background();
        let beat = std::sync::Arc::new(WorkerBeat::new(Instant::now()));
        let (decoder_tid, end_tx, decoder) = idle_decoder(&beat);
        let worker_beat = std::sync::Arc::clone(&beat);
        std::thread::spawn(move || {
            let beat = worker_beat;
            let _on = beat.on_this_thread(false);
            let mut fit = SchedFit::counted_in(WorkerPriority::Auto, &SHORT)
                .expect("a normal thread has a fit");
            priority::enter(WorkerPriority::Background).expect("SCHED_IDLE needs no privilege");
            beat.entered(WorkerClass::Background);
            let now = Instant::now();
            fit.auto = Some(moved_at(now));
            fit.back_to_normal(Return::Starving, now, &beat);
            match &can_come_back {
                Ok(()) => {
                    assert_eq!(policy(), NORMAL);
                    assert_eq!(policy_of(decoder_tid), libc::SCHED_OTHER);
                    assert_eq!(beat.class(), WorkerClass::Normal);
                }
                Err(why) => {
                    assert!(matches!(fit.auto, Some(Auto::Stuck)), "{why}");
                    assert_eq!(beat.class(), WorkerClass::Background);
                }
            }
        })
        .join()
        .unwrap();
        end_tx.send(()).unwrap();
        decoder.join().unwrap();
    }
}
