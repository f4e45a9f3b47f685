//! The kernel time slice a worker thread asks for, fitted to how long its
//! messages take.
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
//! [`WINDOW`] messages. Nothing is asked of kernels without custom slices (they
//! report a slice of 0) or of threads outside the normal class (a
//! `background` worker, or a class an operator set).

use std::io;
use std::time::{Duration, Instant};

/// Messages per fit: enough for a percentile, few enough to follow a
/// change within a second at sensor rates. The fit costs a sort of this
/// many durations and, only when the slice changes, one system call.
pub const WINDOW: usize = 64;

/// The shortest slice the kernel grants (`SCHED_SLICE_MIN`, 0.1 ms).
const KERNEL_MIN_NS: u64 = 100_000;

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

/// The slice of one worker thread, refitted from its messages.
#[derive(Debug)]
pub struct SliceFit {
    /// The thread's scheduling attributes as found at start; `runtime_ns`
    /// is the kernel's default slice for it.
    found: SchedAttr,
    /// What the thread asked for last (the default until it asks).
    current_ns: u64,
    took: [u32; WINDOW],
    seen: usize,
    /// When the window's first message started.
    window_start: Option<Instant>,
}

impl SliceFit {
    /// For the calling thread; None where the kernel has no custom slices,
    /// the thread is not in the normal class, or the call is refused.
    pub fn for_this_thread() -> Option<SliceFit> {
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
        Some(SliceFit {
            current_ns: found.runtime_ns,
            found,
            took: [0; WINDOW],
            seen: 0,
            window_start: None,
        })
    }

    /// The slice the thread runs with, in nanoseconds.
    #[cfg(test)]
    pub fn current_ns(&self) -> u64 {
        self.current_ns
    }

    /// Records one message's time; every [`WINDOW`] messages, refits.
    /// Returns false once the kernel refused a change (the caller drops
    /// the fit: it would only be refused again).
    pub fn observe(&mut self, took: Duration) -> bool {
        self.observe_at(took, Instant::now())
    }

    fn observe_at(&mut self, took: Duration, now: Instant) -> bool {
        let start = *self
            .window_start
            .get_or_insert_with(|| now.checked_sub(took).unwrap_or(now));
        self.took[self.seen] = u32::try_from(took.as_nanos()).unwrap_or(u32::MAX);
        self.seen += 1;
        if self.seen < WINDOW {
            return true;
        }
        self.seen = 0;
        self.window_start = None;
        let span = now.saturating_duration_since(start);
        let want = fitted_ns(&mut self.took, span, self.found.runtime_ns);
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

fn thread_name() -> String {
    std::thread::current()
        .name()
        .unwrap_or("worker")
        .to_string()
}

/// Feeds `fit` one message's time, dropping it once the kernel refused.
pub fn observe(fit: &mut Option<SliceFit>, took: Duration) {
    if let Some(f) = fit {
        if !f.observe(took) {
            *fit = None;
        }
    }
}

/// Twice the 90th percentile of `took`, at least the kernel's minimum, at
/// most `default_ns`; `default_ns` if the messages took more than
/// [`MAX_BUSY_SHARE`] of `span`.
fn fitted_ns(took: &mut [u32], span: Duration, default_ns: u64) -> u64 {
    let busy: u64 = took.iter().map(|t| u64::from(*t)).sum();
    if busy as f64 > span.as_nanos() as f64 * MAX_BUSY_SHARE {
        return default_ns;
    }
    took.sort_unstable();
    let p90 = took[(took.len() * 9 / 10).min(took.len() - 1)];
    (u64::from(p90) * 2).clamp(KERNEL_MIN_NS, default_ns.max(KERNEL_MIN_NS))
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

    /// The fit of messages taking `us` microseconds, one every 5 ms.
    fn fit_of(us: &[u64]) -> u64 {
        let mut took: Vec<u32> = us.iter().map(|u| (*u * 1000) as u32).collect();
        let span = Duration::from_millis(5 * us.len() as u64);
        fitted_ns(&mut took, span, DEFAULT)
    }

    #[test]
    fn the_fit_is_twice_the_90th_percentile_within_the_kernels_bounds() {
        // Short messages: the kernel's minimum, not 50 µs.
        assert_eq!(fit_of(&[25; 64]), KERNEL_MIN_NS);
        // 150 µs messages with a few slow ones above the 90th percentile.
        let mut mixed = vec![150; 60];
        mixed.extend([500; 4]);
        assert_eq!(fit_of(&mixed), 300_000);
        // Below it they count.
        let mut slow = vec![150; 50];
        slow.extend([500; 14]);
        assert_eq!(fit_of(&slow), 1_000_000);
        // An image model's milliseconds: the default.
        assert_eq!(fit_of(&[900; 64]), DEFAULT);
    }

    #[test]
    fn a_busy_worker_keeps_the_default() {
        // 25 µs messages at 10,000 a second: 25% busy.
        let mut took = [25_000_u32; WINDOW];
        let span = Duration::from_micros(100 * WINDOW as u64);
        assert_eq!(fitted_ns(&mut took, span, DEFAULT), DEFAULT);
        // At 2,000 a second: 5%.
        let span = Duration::from_micros(500 * WINDOW as u64);
        assert_eq!(fitted_ns(&mut took, span, DEFAULT), KERNEL_MIN_NS);
    }

    #[test]
    fn a_wobbling_fit_keeps_the_slice() {
        assert!(keeps(100_000, 100_000));
        assert!(keeps(600_000, 500_000));
        assert!(!keeps(1_400_000, 100_000));
        assert!(!keeps(100_000, 600_000));
    }

    /// Runs on the kernel: a worker with short messages gets the minimum
    /// slice, on its own thread only; long ones bring the default back.
    #[test]
    fn a_thread_with_short_messages_asks_for_the_shortest_slice() {
        let outside = get_attr().map(|a| a.runtime_ns).ok();
        let (short, long, default) = std::thread::spawn(|| {
            let Some(mut fit) = SliceFit::for_this_thread() else {
                panic!(
                    "this kernel has no custom time slices for normal threads (Linux 6.12 or later has them): {:?}",
                    get_attr()
                );
            };
            let default = fit.current_ns();
            // One message a millisecond, as a sensor model's worker sees them.
            let mut now = Instant::now();
            let mut feed = |fit: &mut SliceFit, took: Duration| {
                for _ in 0..WINDOW {
                    now += Duration::from_millis(1);
                    assert!(fit.observe_at(took, now));
                }
            };
            feed(&mut fit, Duration::from_micros(25));
            let short = get_attr().map(|a| a.runtime_ns).ok();
            assert_eq!(fit.current_ns(), KERNEL_MIN_NS);
            feed(&mut fit, Duration::from_micros(900));
            let long = get_attr().map(|a| a.runtime_ns).ok();
            (short, long, default)
        })
        .join()
        .unwrap();
        assert_eq!(short, Some(KERNEL_MIN_NS));
        assert_eq!(long, Some(default));
        assert_eq!(get_attr().map(|a| a.runtime_ns).ok(), outside);
    }
}
