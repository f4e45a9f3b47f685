//! Which cores the daemon's threads run on: the event loop and the
//! workers of light models share one, the *home core*, while that pays.
//!
//! A sensor message crosses two threads: the event loop hands it to its
//! model's worker and takes the answer back. On a 2-core VM, with both
//! threads free to run anywhere, the scheduler put each wake-up on
//! whichever core was idle, and a wake-up on an idle core (an
//! inter-processor interrupt, the core leaving its idle state, a cold
//! cache) costs far more than a switch on a busy one: measured, HAR JSON
//! at 1,000 msg/s took 93 to 97 us of CPU per message with both threads
//! free, 79 to 87 with only the worker pinned, 92 to 102 with only the
//! event loop pinned, and 53 to 67 with both on one core (p99 latency
//! 0.36 to 0.43 ms against 0.47 to 0.54). The worker then preempts the
//! event loop right where it handed the message over, and the answer is
//! there when the event loop resumes.
//!
//! One core is a ceiling, so sharing it is a fit the workers make from
//! their messages (`worker::sched`): a worker joins the event loop while
//! its messages are short and the two together keep the core less than
//! half busy, and leaves when they fill it or when they wait for it (another
//! process busy there). The event loop is pinned while at least one
//! worker has joined. Threads started while it is pinned would inherit
//! its core, so every thread the daemon starts goes through [`spawn`],
//! which gives it the process's cores back first.
//!
//! The home core is the highest-numbered of the cores the process may use
//! (systemd's `CPUAffinity=`, a cpuset, `taskset`): core 0 takes most of
//! the interrupts and housekeeping on small boards, and on big.LITTLE
//! boards the big cores come last. With one core allowed nothing moves.

use std::io;
use std::sync::{Mutex, OnceLock};
use std::thread::{Builder, JoinHandle};
use std::time::Duration;

/// The event loop's thread and the cores, found when it starts.
struct Home {
    /// The cores the process may use, as found at start.
    allowed: libc::cpu_set_t,
    /// The home core, one of `allowed`.
    core: usize,
    /// The event loop's thread, for pinning it from a worker.
    event_loop: libc::pid_t,
    /// The event loop thread's CPU-time clock.
    event_loop_clock: libc::clockid_t,
}

// SAFETY (Send/Sync): plain data; cpu_set_t is a bit array.
unsafe impl Send for Home {}
unsafe impl Sync for Home {}

static HOME: OnceLock<Option<Home>> = OnceLock::new();

/// Workers sharing the home core now; the event loop is pinned there
/// while this is above zero. Under the lock, so a join and a leave of two
/// workers cannot leave the event loop pinned with nobody beside it.
static JOINED: Mutex<usize> = Mutex::new(0);

/// Called on the event loop's thread before it runs: finds the home core.
/// Nothing is pinned yet (the workers decide, `join`).
pub fn start_event_loop() {
    HOME.get_or_init(|| {
        let allowed = match this_thread_cores() {
            Ok(set) => set,
            Err(e) => {
                log::debug!("no home core: sched_getaffinity: {e}");
                return None;
            }
        };
        let cores: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
            // SAFETY: `allowed` is an initialized cpu_set_t; `c` is within it.
            .filter(|&c| unsafe { libc::CPU_ISSET(c, &allowed) })
            .collect();
        let &core = cores.last()?;
        if cores.len() < 2 {
            log::debug!("no home core: the process may use core {core} only");
            return None;
        }
        let mut clock: libc::clockid_t = 0;
        // SAFETY: `clock` is writable; pthread_self is this thread.
        let rc = unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut clock) };
        if rc != 0 {
            log::debug!("no home core: pthread_getcpuclockid: error {rc}");
            return None;
        }
        // SAFETY: no arguments.
        let event_loop = unsafe { libc::gettid() };
        log::debug!(
            "home core {core} of {} allowed: the event loop and the workers of light models share it while that pays",
            cores.len()
        );
        Some(Home {
            allowed,
            core,
            event_loop,
            event_loop_clock: clock,
        })
    });
}

fn home() -> Option<&'static Home> {
    HOME.get().and_then(Option::as_ref)
}

/// Starts a thread as `builder` says, with the process's cores (not the
/// home core its starter may be pinned to).
pub fn spawn<F, T>(builder: Builder, f: F) -> io::Result<JoinHandle<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    builder.spawn(move || {
        release();
        f()
    })
}

/// Gives the calling thread the process's cores (for a thread started
/// otherwise than by [`spawn`]). A refusal leaves it where it started: on
/// a core it may use, only fewer of them.
pub fn release() {
    if let Some(home) = home() {
        let _ = set_cores(0, &home.allowed);
    }
}

/// Pins the calling worker thread to the home core, and the event loop
/// with it if it is the first. Err if there is no home core or the kernel
/// refused (a seccomp filter without `sched_setaffinity`).
pub fn join() -> io::Result<()> {
    let home = home().ok_or_else(|| io::Error::other("no home core"))?;
    let mut joined = JOINED.lock().unwrap_or_else(|p| p.into_inner());
    let one = one_core(home.core);
    set_cores(0, &one)?;
    if *joined == 0 {
        if let Err(e) = set_cores(home.event_loop, &one) {
            let _ = set_cores(0, &home.allowed);
            return Err(e);
        }
    }
    *joined += 1;
    Ok(())
}

/// Gives the calling worker thread the process's cores back, and the
/// event loop too if it was the last one beside it.
pub fn leave() {
    let Some(home) = home() else { return };
    let mut joined = JOINED.lock().unwrap_or_else(|p| p.into_inner());
    let _ = set_cores(0, &home.allowed);
    *joined = joined.saturating_sub(1);
    if *joined == 0 {
        let _ = set_cores(home.event_loop, &home.allowed);
    }
}

/// Whether there is a home core to share.
pub fn has_home() -> bool {
    home().is_some()
}

/// The home core, for messages.
pub fn home_core() -> Option<usize> {
    home().map(|h| h.core)
}

/// The event loop thread's CPU time so far.
pub fn event_loop_cpu_time() -> Option<Duration> {
    let home = home()?;
    clock_time(home.event_loop_clock)
}

/// How long the calling thread and the event loop's thread have waited,
/// runnable, for a core so far (`run_delay` in `/proc/.../schedstat`);
/// None without schedstats.
pub fn waits() -> Option<(Duration, Duration)> {
    let home = home()?;
    let own = run_delay("/proc/thread-self/schedstat")?;
    let event_loop = run_delay(&format!("/proc/self/task/{}/schedstat", home.event_loop))?;
    Some((own, event_loop))
}

/// The second field of a schedstat file: nanoseconds spent runnable on a
/// run queue, not running.
fn run_delay(path: &str) -> Option<Duration> {
    let text = std::fs::read_to_string(path).ok()?;
    let ns: u64 = text.split_ascii_whitespace().nth(1)?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

fn clock_time(clock: libc::clockid_t) -> Option<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a writable timespec for the call's duration.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    (rc == 0).then(|| Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}

fn one_core(core: usize) -> libc::cpu_set_t {
    // SAFETY: an all-zero cpu_set_t is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `core` came from a cpu_set_t, so it is within one.
    unsafe { libc::CPU_SET(core, &mut set) };
    set
}

fn this_thread_cores() -> io::Result<libc::cpu_set_t> {
    // SAFETY: an all-zero cpu_set_t is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is writable for its size; pid 0 is the calling thread.
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc == 0 {
        Ok(set)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sets the cores of thread `tid` (0: the calling thread).
fn set_cores(tid: libc::pid_t, set: &libc::cpu_set_t) -> io::Result<()> {
    // SAFETY: `set` is a valid cpu_set_t for its size.
    let rc = unsafe { libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), set) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
