//! Whether a worker shares the home core with the event loop
//! (`crate::cores` says why that pays): refitted every window of messages
//! from what they took.
//!
//! A worker joins while its messages are short (under a millisecond at
//! the 90th percentile, as `sched` counts sensor models) and it
//! and the event loop together keep the core at most [`JOIN_AT`] busy; it
//! leaves when they take more than [`LEAVE_AT`] (one core is then a
//! ceiling: the sustained rate needs both), when its messages grow long or
//! it moves to the background, and when over its last [`CROWDED_WINDOWS`]
//! windows there the two waited for the core behind other threads longer
//! than [`MAX_WAITED`] times what they ran (a core crowded by others):
//! then it stays apart for [`SETTLE`]. (Not a share of the wall time: at a
//! sensor's rate of a few messages a second the waits are a sliver of it,
//! and each still delays a message.)
//!
//! No worker shares the core while a model of long messages (an image
//! model) is at work, nor for [`HEAVY_QUIET`] after its last answer: beside
//! it the event loop needs whichever core is free. Measured (HAR JSON at
//! 1,000 msg/s beside MobileNetV2 raw at 230 msg/s, three interleaved runs
//! each): with the two pinned regardless, HAR's p99 was 1.08 to 1.73 ms
//! against 0.84 to 1.13 with both free.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::cores;

/// The share of the window's wall time the worker's messages and the event
/// loop's CPU may take for the worker to join. Apart, both cost more per
/// message than together (the wake-ups this saves), so a pair that joins
/// at half a core runs together at about a third.
const JOIN_AT: f64 = 0.5;

/// The share past which a joined worker leaves: the core is nearly full.
const LEAVE_AT: f64 = 0.8;

/// How long the two may wait for the core behind other threads, as a
/// multiple of what they ran, before the worker leaves. A broker on the
/// same core costs a fraction of it.
const MAX_WAITED: f64 = 1.0;

/// Over how many windows shared in a row the waits are summed. One window
/// says little: the broker and the load generator beside the pair (the
/// benchmark at 100 and 1,000 msg/s) made them wait 0.25 to 0.77 times
/// what they ran, and one window reached 1.31 with `perf record` sampling
/// the daemon as well. Nor may one calm window wipe out the rest: with two
/// threads spinning on the core (Linux 6.18, EEVDF), single windows ran
/// from 0.86 to 2.25, a dip under 1.0 every few windows, so "three in a
/// row" could miss such a core for minutes. (One spinning thread cost
/// them 0.22 to 0.91, about what the broker does: the scheduler favours
/// threads that run briefly and sleep; staying is then right.)
const CROWDED_WINDOWS: usize = 3;

/// How long a worker that left because its core was busy stays apart.
const SETTLE: Duration = Duration::from_secs(60);

/// How long after a long message's answer no worker shares the core.
const HEAVY_QUIET: Duration = Duration::from_secs(10);

/// When a worker of long messages last answered one: milliseconds since
/// [`EPOCH`], plus one (0: never).
static HEAVY_ANSWERED: AtomicU64 = AtomicU64::new(0);
static EPOCH: OnceLock<Instant> = OnceLock::new();

fn since_epoch_ms(t: Instant) -> u64 {
    let epoch = *EPOCH.get_or_init(Instant::now);
    t.saturating_duration_since(epoch).as_millis() as u64 + 1
}

/// A worker of long messages answered one at `now`.
pub fn heavy_answered(now: Instant) {
    HEAVY_ANSWERED.store(since_epoch_ms(now), Ordering::Relaxed);
}

/// Whether a worker of long messages answered one within [`HEAVY_QUIET`]
/// before `now`.
fn heavy_at_work(now: Instant) -> bool {
    let at = HEAVY_ANSWERED.load(Ordering::Relaxed);
    at != 0 && since_epoch_ms(now).saturating_sub(at) < HEAVY_QUIET.as_millis() as u64
}

/// One window of a worker's messages, as `sched` saw it.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// From the first message's start to the last one's answer.
    pub span: Duration,
    /// What the messages took, dequeue to answer, summed.
    pub busy: Duration,
    /// Their 90th percentile.
    pub p90: Duration,
    /// Whether that is short: a sensor model's messages.
    pub short: bool,
    /// Whether the worker is in the background class now.
    pub in_background: bool,
}

/// A worker's place, and what it read at its last window's end.
#[derive(Debug)]
pub struct Colocation {
    place: Place,
    /// The event loop's CPU time, and the two threads' waits for a core
    /// (None without schedstats), at the last window's end.
    seen: Option<(Duration, Option<Waits>)>,
    /// What the two waited behind other threads and what they ran, in
    /// each of the last (at most [`CROWDED_WINDOWS`]) windows they shared
    /// the core in a row, the newest last.
    shared: VecDeque<Shared>,
}

#[derive(Debug, Clone, Copy)]
struct Shared {
    waited: Duration,
    ran: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// On the process's cores; may join from `settled` on (None: at once).
    Apart {
        settled: Option<Instant>,
    },
    Joined,
    /// No home core, or the kernel refused the pin: never tried again.
    Off,
}

#[derive(Debug, Clone, Copy)]
struct Waits {
    own: Duration,
    event_loop: Duration,
}

/// One window's figures, with the event loop's over the same time.
#[derive(Debug, Clone, Copy)]
struct Figures {
    window: Window,
    event_loop_cpu: Duration,
    /// What the two waited for the core beyond waiting for each other.
    waited_behind_others: Option<Duration>,
    /// Whether a model of long messages is at work.
    heavy_at_work: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Move {
    Stay,
    Join,
    /// Leave; `settle` if the core was busy with others.
    Leave {
        settle: bool,
    },
}

impl Colocation {
    pub fn new() -> Colocation {
        Colocation {
            place: if cores::has_home() {
                Place::Apart { settled: None }
            } else {
                Place::Off
            },
            seen: None,
            shared: VecDeque::with_capacity(CROWDED_WINDOWS),
        }
    }

    /// Refits after `window`, which ended at `now`.
    pub fn fit(&mut self, window: Window, now: Instant) {
        if self.place == Place::Off {
            return;
        }
        let Some(event_loop_cpu) = cores::event_loop_cpu_time() else {
            self.place = Place::Off;
            return;
        };
        let waits = cores::waits().map(|(own, event_loop)| Waits { own, event_loop });
        let Some((cpu_before, waits_before)) = self.seen.replace((event_loop_cpu, waits)) else {
            // The first window: nothing to compare the event loop with.
            return;
        };
        let event_loop_cpu = event_loop_cpu.saturating_sub(cpu_before);
        let waited_behind_others = match (waits, waits_before) {
            (Some(now), Some(before)) => Some(
                // Each may wait for the other; beyond that, for others.
                (now.own.saturating_sub(before.own)).saturating_sub(event_loop_cpu)
                    + (now.event_loop.saturating_sub(before.event_loop))
                        .saturating_sub(window.busy),
            ),
            _ => None,
        };
        let figures = Figures {
            window,
            event_loop_cpu,
            waited_behind_others,
            heavy_at_work: heavy_at_work(now),
        };
        let joined = self.place == Place::Joined;
        record(&mut self.shared, joined, &figures);
        let crowded = crowded(&self.shared);
        match decide(joined, crowded.is_some(), &figures) {
            Move::Stay => {}
            Move::Join => {
                if let Place::Apart { settled: Some(t) } = self.place {
                    if now < t {
                        return;
                    }
                }
                match cores::join() {
                    Ok(()) => {
                        log::debug!(
                            "{}: shares core {} with the event loop (its messages {:.0} us at the 90th percentile, the two {:.0}% busy)",
                            thread_name(),
                            cores::home_core().unwrap_or(0),
                            window.p90.as_secs_f64() * 1e6,
                            figures.load() * 100.0
                        );
                        self.place = Place::Joined;
                    }
                    Err(e) => {
                        log::debug!(
                            "{}: cannot share a core with the event loop ({e}); it runs on any",
                            thread_name()
                        );
                        self.place = Place::Off;
                    }
                }
            }
            Move::Leave { settle } => {
                cores::leave();
                if settle {
                    log::info!(
                        "{}: leaves core {} it shared with the event loop: the two waited for it behind other threads {:.1} times as long as they ran over the last {} windows; back in {} s at the earliest",
                        thread_name(),
                        cores::home_core().unwrap_or(0),
                        crowded.unwrap_or(0.0),
                        CROWDED_WINDOWS,
                        SETTLE.as_secs()
                    );
                } else {
                    log::debug!(
                        "{}: leaves the event loop's core (its messages {:.0} us at the 90th percentile, the two {:.0}% busy, a model of long messages {})",
                        thread_name(),
                        window.p90.as_secs_f64() * 1e6,
                        figures.load() * 100.0,
                        if figures.heavy_at_work { "at work" } else { "idle" }
                    );
                }
                // `shared` empties at the next window's `record`: apart.
                self.place = Place::Apart {
                    settled: settle.then(|| now + SETTLE),
                };
            }
        }
    }
}

fn thread_name() -> String {
    std::thread::current()
        .name()
        .unwrap_or("worker")
        .to_string()
}

impl Drop for Colocation {
    fn drop(&mut self) {
        if self.place == Place::Joined {
            cores::leave();
        }
    }
}

impl Figures {
    /// The share of the window the worker's messages and the event loop
    /// took.
    fn load(&self) -> f64 {
        let span = self.window.span.as_secs_f64().max(1e-9);
        self.ran().as_secs_f64() / span
    }

    /// What the two ran.
    fn ran(&self) -> Duration {
        self.window.busy + self.event_loop_cpu
    }
}

/// Adds a window with figures `f` to `shared`, the windows the two shared
/// the core in a row: the waits are about that core, so a window apart
/// (or without schedstats) starts the count again.
fn record(shared: &mut VecDeque<Shared>, joined: bool, f: &Figures) {
    match f.waited_behind_others {
        Some(waited) if joined => {
            if shared.len() == CROWDED_WINDOWS {
                shared.pop_front();
            }
            shared.push_back(Shared {
                waited,
                ran: f.ran(),
            });
        }
        _ => shared.clear(),
    }
}

/// What the two waited behind other threads over `shared`, per unit of
/// what they ran, if that is too long over [`CROWDED_WINDOWS`] windows.
fn crowded(shared: &VecDeque<Shared>) -> Option<f64> {
    if shared.len() < CROWDED_WINDOWS {
        return None;
    }
    let (waited, ran) = shared.iter().fold((0.0, 0.0), |(w, r), s| {
        (w + s.waited.as_secs_f64(), r + s.ran.as_secs_f64())
    });
    let share = waited / ran.max(1e-9);
    (share > MAX_WAITED).then_some(share)
}

/// Where the worker goes after a window with figures `f`; `crowded`: the
/// two waited behind others too long over the last windows.
fn decide(joined: bool, crowded: bool, f: &Figures) -> Move {
    let short = f.window.short && !f.window.in_background && !f.heavy_at_work;
    if joined {
        if crowded {
            Move::Leave { settle: true }
        } else if !short || f.load() > LEAVE_AT {
            Move::Leave { settle: false }
        } else {
            Move::Stay
        }
    } else if short && f.load() <= JOIN_AT {
        Move::Join
    } else {
        Move::Stay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    /// 64 messages, one a millisecond, each taking `took_us` in the worker
    /// and `event_loop_us` of the event loop's CPU; `waited_us` behind
    /// others in all.
    fn figures(took_us: u64, every_us: u64, event_loop_us: u64, waited_us: u64) -> Figures {
        Figures {
            window: Window {
                span: us(64 * every_us),
                busy: us(64 * took_us),
                p90: us(took_us),
                short: took_us < 1000,
                in_background: false,
            },
            event_loop_cpu: us(64 * event_loop_us),
            waited_behind_others: Some(us(waited_us)),
            heavy_at_work: false,
        }
    }

    #[test]
    fn a_sensor_model_at_sensor_rates_joins_and_stays() {
        // HAR at 1,000 msg/s: about 40 us in the worker, 55 in the event loop.
        let har = figures(40, 1000, 55, 0);
        assert_eq!(decide(false, false, &har), Move::Join);
        assert_eq!(decide(true, false, &har), Move::Stay);
    }

    #[test]
    fn a_pair_that_fills_the_core_stays_apart_or_leaves() {
        // At 10,000 msg/s: 100 us of every 100.
        let flood = figures(40, 100, 60, 0);
        assert_eq!(decide(false, false, &flood), Move::Stay);
        assert_eq!(decide(true, false, &flood), Move::Leave { settle: false });
        // Between the two thresholds it keeps its place.
        let between = figures(30, 100, 35, 0);
        assert_eq!(decide(false, false, &between), Move::Stay);
        assert_eq!(decide(true, false, &between), Move::Stay);
    }

    #[test]
    fn long_messages_and_background_workers_stay_apart() {
        let image = figures(1500, 20_000, 100, 0);
        assert_eq!(decide(false, false, &image), Move::Stay);
        assert_eq!(decide(true, false, &image), Move::Leave { settle: false });
        let mut background = figures(40, 1000, 55, 0);
        background.window.in_background = true;
        assert_eq!(decide(false, false, &background), Move::Stay);
        assert_eq!(
            decide(true, false, &background),
            Move::Leave { settle: false }
        );
    }

    #[test]
    fn no_worker_shares_the_core_while_an_image_model_is_at_work() {
        let mut har = figures(40, 1000, 55, 0);
        har.heavy_at_work = true;
        assert_eq!(decide(false, false, &har), Move::Stay);
        assert_eq!(decide(true, false, &har), Move::Leave { settle: false });
    }

    #[test]
    fn an_image_model_counts_as_at_work_for_a_while_after_its_answer() {
        let t = Instant::now() + Duration::from_secs(3600);
        heavy_answered(t);
        assert!(heavy_at_work(t + Duration::from_secs(1)));
        assert!(!heavy_at_work(t + HEAVY_QUIET + Duration::from_millis(1)));
    }

    /// The worker's moves over windows with these figures, from joined.
    fn moves(windows: &[Figures]) -> Vec<Move> {
        let mut shared = VecDeque::new();
        windows
            .iter()
            .map(|f| {
                record(&mut shared, true, f);
                decide(true, crowded(&shared).is_some(), f)
            })
            .collect()
    }

    /// HAR at 1,000 msg/s, the two waiting `share` times what they ran.
    fn waiting(share: f64) -> Figures {
        let mut f = figures(40, 1000, 55, 0);
        f.waited_behind_others = Some(f.ran().mul_f64(share));
        f
    }

    #[test]
    fn a_core_busy_with_others_is_left_for_a_while() {
        // 12.8 ms behind other threads, against 6.1 ms of running, in
        // every window.
        let busy_core = figures(40, 1000, 55, 12_800);
        let leave = Move::Leave { settle: true };
        assert_eq!(moves(&[busy_core; 3]), [Move::Stay, Move::Stay, leave]);
        // 1.3 ms: a broker's wake-up now and then.
        let broker = figures(40, 1000, 55, 1_300);
        assert_eq!(moves(&[broker; 5]), [Move::Stay; 5]);
        // At a few messages a second the waits are a sliver of the wall
        // time, and still longer than the work: 17 ms against 11 in a
        // window of 5.5 s (measured, two spinning threads on the core).
        let slow = figures(45, 86_000, 125, 17_000);
        assert_eq!(moves(&[slow; 3])[2], leave);
    }

    #[test]
    fn a_calm_window_between_crowded_ones_does_not_hide_them() {
        // Two threads spinning on the core, three windows in a row as
        // measured: two of them under the limit.
        let windows = [waiting(0.93), waiting(1.94), waiting(0.86)];
        assert!(windows[0].ran() > windows[0].waited_behind_others.unwrap());
        assert_eq!(
            moves(&windows),
            [Move::Stay, Move::Stay, Move::Leave { settle: true }]
        );
    }

    #[test]
    fn one_crowded_window_among_calm_ones_is_not_a_busy_core() {
        // The benchmark's broker and load generator beside the pair: 0.25
        // to 0.77 times what the two ran; 1.31 in one window with `perf
        // record` sampling as well.
        let (calm, blip) = (waiting(0.77), waiting(1.31));
        assert_eq!(
            moves(&[calm, blip, calm, calm, blip, calm, calm]),
            [Move::Stay; 7]
        );
        // Waits while apart do not count towards leaving once joined.
        let mut shared = VecDeque::new();
        record(&mut shared, true, &waiting(3.0));
        record(&mut shared, true, &waiting(3.0));
        record(&mut shared, false, &waiting(3.0));
        record(&mut shared, true, &waiting(3.0));
        assert_eq!(shared.len(), 1);
        assert_eq!(crowded(&shared), None);
    }

    #[test]
    fn without_a_home_core_nothing_moves() {
        // The unit tests never start an event loop: no home core.
        let mut c = Colocation::new();
        assert_eq!(c.place, Place::Off);
        let w = figures(40, 1000, 55, 0).window;
        c.fit(w, Instant::now());
        assert_eq!(c.place, Place::Off);
    }
}
