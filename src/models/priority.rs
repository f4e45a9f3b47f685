//! A model's `worker_priority`: the kernel scheduling class of its threads.
//!
//! `background` is `SCHED_IDLE`, not a nice value: on the EEVDF scheduler
//! (Linux 6.6 and later) a niced thread still runs its slice before a
//! thread that wakes up, so a sensor model's invoke, the broker and the
//! event loop waited behind an image model's 2 ms invokes whatever its
//! nice (measured: no change at nice 10). A thread that wakes up preempts a
//! `SCHED_IDLE` one at once. The price: while normal threads keep every
//! core busy, a background model gets almost no CPU, its queue fills and
//! its messages are refused with `overloaded` errors.
//!
//! A background thread that is preempted while it holds a lock a normal
//! thread needs delays that thread until it runs again: the allocator's
//! arena (one, `memory`), a lock inside the runtime. While any core has a
//! moment free that is microseconds (the waiting thread's core is free
//! for it); while other processes keep every core busy it can be far
//! longer. The daemon's own locks are kept out of it: a background model
//! never shares an engine with a normal one (`shared::EngineKey`), and
//! its load holds only its own key's slot in the engine registry, not the
//! registry that health reads on the event loop (`shared::engine`). Two
//! `auto` models of one file do share an engine, and one's worker may
//! have moved while the other's has not: then the normal one can wait
//! for an invoke of the moved one, which returns if it starves
//! (`worker::sched`).
//!
//! `auto` (the default) starts normal; a worker whose messages turn out
//! to hold a core for a millisecond or more beside sensor models moves
//! itself to `SCHED_IDLE`, and back when it starves there
//! (`worker::sched`). It moves only where this process can bring a thread
//! back ([`can_leave_background`]): with CAP_SYS_NICE, or with
//! RLIMIT_NICE 20 (nice 0 and no better, `LimitNICE=20` in the shipped
//! unit). Only the worker thread moves: with `threads` > 1 the runtime's
//! intra-op threads, started at load, stay normal, so such a model is
//! best set to `background` outright.
//!
//! The class is per thread and inherited by the threads a thread starts:
//! the load enters it on a thread of its own, so the intra-op threads the
//! runtime starts while compiling (`threads` > 1) have it too, and each
//! worker thread enters it as it starts. A `background` thread never
//! leaves it (without RLIMIT_NICE an unprivileged thread could not), so
//! threads that changed class are never reused for other work.

use std::io;
use std::sync::OnceLock;

use crate::config::WorkerPriority;

/// Puts the calling thread in `priority`'s class. `Normal` and `Auto` do
/// nothing: a thread starts in the class of the thread that started it,
/// the daemon's own threads are normal, and an `auto` model's workers
/// start normal (`worker::sched` moves them later, if ever).
pub fn enter(priority: WorkerPriority) -> io::Result<()> {
    match priority {
        WorkerPriority::Auto | WorkerPriority::Normal => Ok(()),
        WorkerPriority::Background => set_policy(libc::SCHED_IDLE),
    }
}

/// Returns the calling thread from `SCHED_IDLE` to the normal class. An
/// unprivileged thread may only if its RLIMIT_NICE allows nice 0 (20,
/// `LimitNICE=20` in the shipped unit) or it has CAP_SYS_NICE.
pub fn leave_background() -> io::Result<()> {
    set_policy(libc::SCHED_OTHER)
}

/// As [`leave_background`], for the thread `tid` of this process (the
/// kernel's thread id): the watchdog returns a worker that starves in the
/// middle of a message (`worker::sched::StarveWatch`).
pub fn leave_background_of(tid: libc::pid_t) -> io::Result<()> {
    set_policy_of(tid, libc::SCHED_OTHER)
}

fn set_policy(policy: libc::c_int) -> io::Result<()> {
    // pid 0 is the calling thread.
    set_policy_of(0, policy)
}

fn set_policy_of(tid: libc::pid_t, policy: libc::c_int) -> io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param for the call's duration.
    let rc = unsafe { libc::sched_setscheduler(tid, policy, &param) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether a thread of this process can enter `SCHED_IDLE` and leave it
/// again, found once by a thread that tries; Err says why not.
pub fn can_leave_background() -> Result<(), String> {
    static PROBE: OnceLock<Result<(), String>> = OnceLock::new();
    PROBE
        .get_or_init(|| {
            let builder = std::thread::Builder::new().name("priority-probe".into());
            let tried = crate::cores::spawn(builder, || {
                    enter(WorkerPriority::Background)
                        .map_err(|e| format!("the kernel refused SCHED_IDLE: {e}"))?;
                    leave_background().map_err(|e| {
                        format!("the kernel refused the return from SCHED_IDLE ({e}): it needs RLIMIT_NICE 20 (LimitNICE=20, as in the shipped unit) or CAP_SYS_NICE")
                    })
                })
                .map_err(|e| format!("cannot start a thread to try: {e}"))?;
            tried
                .join()
                .unwrap_or_else(|_| Err("the thread that tried panicked".into()))
        })
        .clone()
}

/// The calling thread's scheduling class, as `worker_priority` names it;
/// None for any other class (a real-time one an operator set).
#[cfg(test)]
fn current() -> Option<WorkerPriority> {
    // SAFETY: no arguments; pid 0 is the calling thread.
    match unsafe { libc::sched_getscheduler(0) } {
        libc::SCHED_OTHER | libc::SCHED_BATCH => Some(WorkerPriority::Normal),
        libc::SCHED_IDLE => Some(WorkerPriority::Background),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn background_is_sched_idle_and_stays_on_its_thread() {
        let outside = current();
        let inside = std::thread::spawn(|| {
            enter(WorkerPriority::Background).map(|()| {
                // A thread it starts inherits the class.
                let child = std::thread::spawn(current).join().unwrap();
                (current(), child)
            })
        })
        .join()
        .unwrap();
        // Linux lets any thread lower itself to SCHED_IDLE; a seccomp
        // filter without the scheduling calls would refuse it, and this
        // test's environment has none.
        assert_eq!(
            inside.unwrap(),
            (
                Some(WorkerPriority::Background),
                Some(WorkerPriority::Background)
            )
        );
        assert_eq!(current(), outside);
        assert_eq!(enter(WorkerPriority::Normal).ok(), Some(()));
    }
}
