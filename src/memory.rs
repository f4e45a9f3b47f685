//! Hands the allocator's free memory back to the system once a burst is
//! over, and keeps it between the messages of one
//! ([`fit_to_payloads`]).
//!
//! glibc keeps what is freed in its arenas (one since
//! [`configure_allocator`]; one per allocating thread by default) and
//! returns to the system only what sits at the top of the heap. After an
//! overload (full queues, answers waiting for the broker) the freed
//! payloads stay in the daemon's RSS until a later burst reuses them:
//! 10 MB and more after a HAR flood. `malloc_trim` releases every whole free page of
//! every arena. It walks the arenas under their locks, so it runs once per
//! burst, after the burst, never while a backlog is being worked off.
//!
//! A burst is over when a second passes without answers, or, since a
//! trickle of messages may well go on (a burst on one model, a sensor at
//! 10 msg/s on another), when the queues are empty and the answers of the
//! last second are at most half of the busiest second since the last
//! trim, and the process has grown by [`GROWTH_BYTES`] since then (so a
//! stream whose rate wobbles does not trim every few seconds).

/// Sets glibc's allocator up for a daemon whose payloads are allocated on
/// one thread and freed on another. Called first thing in `main`, before
/// any thread exists (glibc gives every new thread an arena of its own,
/// up to eight per core, and an arena once made is kept).
///
/// One arena: a payload is read on the event-loop thread, queued, and
/// freed by a worker, and answers go the other way, so with an arena per
/// thread each arena's free space is scattered between chunks the other
/// threads still hold, and no arena can reuse what another freed.
/// Measured with the default config and the benchmark's models, a 10 s
/// QoS 1 HAR flood at 20,000 msg/s, three runs each: peak RSS 26.5-27.5
/// MB against 27.5-31.3 MB with glibc's default (16 arenas on 2 cores);
/// at 30,000 msg/s (queue full, refusals answered) 36.2 against 37.1-37.4
/// MB. Throughput and CPU per message did not move beyond the noise: a
/// message takes a handful of allocations, so the one lock is not
/// contended.
///
/// An operator who tunes glibc's allocator (`GLIBC_TUNABLES` naming a
/// `glibc.malloc.` tunable, or one of the older `MALLOC_*` variables) keeps what
/// they chose.
pub fn configure_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        if !environment_tunes_malloc() {
            // SAFETY: mallopt takes plain integers; with no other thread
            // yet, nothing allocates concurrently.
            unsafe {
                libc::mallopt(libc::M_ARENA_MAX, 1);
            }
        }
    }
}

/// Keeps the heap's top for the next message instead of giving it back to
/// the system on every free. Called at start, and again when a reload
/// changes the largest payload the daemon takes (`limits.max_payload_bytes`).
///
/// By default glibc hands the top of the heap back (`brk`) once more than
/// its trim threshold is free there, a threshold it adapts to twice the
/// largest block it has unmapped: about two messages. A payload read on
/// the event loop and freed by its worker therefore grew the heap and
/// shrank it again for every message, and its pages came back as faults.
/// Measured on the AMD EPYC VM host (2.8 us a fault, `bench/notes.md`):
/// MobileNetV2 raw frames (150 KB) took 40 faults and three `brk` calls
/// each, and the event loop's CPU per frame went from about 380 to 225 us
/// without them; its 958 KB JSON messages about 400 faults each, and 1.6
/// to 0.5 ms. So blocks up to twice the largest payload plus its framing
/// (the read buffer holds the next packet's start too) stay on the heap,
/// and its top is given back only beyond twice that, glibc's own rule.
/// What a burst leaves is still returned after it: [`Trimmer`] calls
/// `malloc_trim`, which releases every free page whatever the threshold.
/// Bigger blocks (a model's packed weights above the threshold) keep their
/// own mappings, so an unloaded model's memory goes back to the system at
/// once; smaller ones go back with the next `malloc_trim`.
pub fn fit_to_payloads(max_payload_bytes: usize) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        if environment_tunes_malloc() {
            return;
        }
        let (mmap, trim) = heap_thresholds(max_payload_bytes);
        // SAFETY: mallopt takes plain integers and takes the arena's lock
        // itself. It returns 0 for a value out of its range (glibc before
        // 2.35, above `MMAP_THRESHOLD_MAX`); the trim threshold is set only
        // once the mmap one is, since setting either ends glibc's adapting
        // of both.
        let set = unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, mmap) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, trim) == 1
        };
        if !set {
            log::debug!("glibc refused the heap thresholds (mmap {mmap}, trim {trim} bytes); it keeps its own");
        }
    }
}

/// The ceiling of glibc's own adapting of the mmap threshold
/// (`DEFAULT_MMAP_THRESHOLD_MAX`), which glibc before 2.35 also enforces in
/// `mallopt`: 32 MiB on 64-bit targets, 512 KiB on 32-bit ones, where
/// bigger messages keep a mapping each, as glibc's own rule gives them.
#[cfg(target_pointer_width = "64")]
const MMAP_THRESHOLD_MAX: usize = 32 << 20;
#[cfg(not(target_pointer_width = "64"))]
const MMAP_THRESHOLD_MAX: usize = 512 << 10;

/// glibc's default mmap threshold, the least it is set to here.
const MMAP_THRESHOLD_MIN: usize = 128 * 1024;

/// The mmap and trim thresholds for payloads of up to `max_payload_bytes`:
/// room for two messages plus the framing, within what glibc accepts.
fn heap_thresholds(max_payload_bytes: usize) -> (i32, i32) {
    let mmap = max_payload_bytes
        .saturating_mul(2)
        .saturating_add(64 * 1024)
        .clamp(MMAP_THRESHOLD_MIN, MMAP_THRESHOLD_MAX);
    let trim = mmap.saturating_mul(2);
    let int = |v: usize| i32::try_from(v).unwrap_or(i32::MAX);
    (int(mmap), int(trim))
}

/// Whether the environment already tunes glibc's allocator.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn environment_tunes_malloc() -> bool {
    operator_tuned(
        |name| std::env::var_os(name).is_some(),
        std::env::var("GLIBC_TUNABLES").ok().as_deref(),
    )
}

/// The environment variables glibc reads for its allocator besides
/// `GLIBC_TUNABLES` (`elf/dl-tunables.list`).
const MALLOC_VARIABLES: [&str; 6] = [
    "MALLOC_ARENA_MAX",
    "MALLOC_ARENA_TEST",
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_TOP_PAD_",
    "MALLOC_MMAP_MAX_",
];

/// Whether an operator tunes glibc's allocator: `is_set` tells which
/// environment variables are present.
fn operator_tuned(is_set: impl Fn(&str) -> bool, glibc_tunables: Option<&str>) -> bool {
    MALLOC_VARIABLES.iter().any(|name| is_set(name))
        || glibc_tunables.is_some_and(|t| t.contains("glibc.malloc."))
}

/// How much the resident set must have grown since the last trim for a
/// slowing stream to trim: below this, a trim gives back too little to
/// pay for the page faults that take the memory again.
const GROWTH_BYTES: u64 = 2 << 20;

/// What the supervisor sees at one tick.
#[derive(Debug, Clone, Copy)]
pub struct Tick {
    /// Answers so far (confirmed by the broker, or written at QoS 0).
    pub answers: u64,
    /// Messages in the models' queues.
    pub queued: usize,
    /// The resident set, None where it cannot be read.
    pub resident: Option<u64>,
}

/// Decides when to trim.
#[derive(Debug, Default)]
pub struct Trimmer {
    /// The answer count at the previous tick.
    seen: u64,
    /// The answer count at the last trim.
    trimmed: u64,
    /// The most answers in one tick since the last trim.
    busiest: u64,
    /// The resident set after the last trim (at the first tick before any).
    resident_base: Option<u64>,
}

impl Trimmer {
    /// Called about once a second; true (and the memory released) when a
    /// burst is over (see the module's doc).
    pub fn tick(&mut self, answers: u64, queued: usize) -> bool {
        let now = Tick {
            answers,
            queued,
            resident: resident_bytes(),
        };
        if !self.due(now) {
            return false;
        }
        release_free_memory();
        self.trimmed(resident_bytes().or(now.resident));
        true
    }

    fn due(&mut self, now: Tick) -> bool {
        let in_tick = now.answers.saturating_sub(self.seen);
        self.seen = now.answers;
        if self.resident_base.is_none() {
            self.resident_base = now.resident;
        }
        if now.answers == self.trimmed {
            return false;
        }
        if in_tick == 0 {
            return true;
        }
        self.busiest = self.busiest.max(in_tick);
        let grown = match (now.resident, self.resident_base) {
            (Some(now), Some(base)) => now >= base.saturating_add(GROWTH_BYTES),
            _ => false,
        };
        grown && now.queued == 0 && in_tick.saturating_mul(2) <= self.busiest
    }

    fn trimmed(&mut self, resident: Option<u64>) {
        self.trimmed = self.seen;
        self.busiest = 0;
        self.resident_base = resident;
    }
}

/// The resident set from `/proc/self/statm` (its second field, in pages):
/// one small read, cheap enough for every tick.
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf reads a constant of the system.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages.saturating_mul(u64::try_from(page).ok().filter(|&p| p > 0)?))
}

fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers; glibc serializes it with
    // every other allocator call through the arenas' locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1 << 20;

    /// Ticks the decision only (no trim), as `tick` would, with the
    /// resident set going down to `after` when it trims.
    fn step(t: &mut Trimmer, answers: u64, queued: usize, resident: u64, after: u64) -> bool {
        let due = t.due(Tick {
            answers,
            queued,
            resident: Some(resident),
        });
        if due {
            t.trimmed(Some(after));
        }
        due
    }

    #[test]
    fn heap_thresholds_cover_two_messages_within_glibcs_range() {
        // The default limit, 1 MiB: two messages and the framing (where
        // glibc allows that much).
        let mmap = ((2 << 20) + 65536).min(MMAP_THRESHOLD_MAX) as i32;
        assert_eq!(heap_thresholds(1 << 20), (mmap, 2 * mmap));
        assert_eq!(
            heap_thresholds(100 << 10).0,
            (264 << 10).min(MMAP_THRESHOLD_MAX) as i32
        );
        // Small limits keep glibc's default; huge ones its maximum.
        assert_eq!(heap_thresholds(1000).0, 128 * 1024);
        assert_eq!(heap_thresholds(usize::MAX).0 as usize, MMAP_THRESHOLD_MAX);
        assert_eq!(
            heap_thresholds(usize::MAX).1 as usize,
            2 * MMAP_THRESHOLD_MAX
        );
    }

    #[test]
    fn an_operators_allocator_tuning_is_kept() {
        let none = |_: &str| false;
        assert!(!operator_tuned(none, None));
        assert!(!operator_tuned(none, Some("glibc.pthread.rseq=0")));
        assert!(!operator_tuned(|name| name == "MALLOC_CHECK", None));
        for variable in [
            "MALLOC_ARENA_MAX",
            "MALLOC_TRIM_THRESHOLD_",
            "MALLOC_MMAP_THRESHOLD_",
        ] {
            assert!(operator_tuned(|name| name == variable, None), "{variable}");
        }
        assert!(operator_tuned(
            none,
            Some("glibc.pthread.rseq=0:glibc.malloc.arena_max=4")
        ));
    }

    #[test]
    fn trims_once_per_burst_after_a_quiet_tick() {
        let mut t = Trimmer::default();
        // Idle from the start: nothing to give back.
        assert!(!step(&mut t, 0, 0, 24 * MB, 24 * MB));
        assert!(!step(&mut t, 0, 0, 24 * MB, 24 * MB));
        // A burst: no trim while answers keep coming.
        assert!(!step(&mut t, 500, 0, 24 * MB, 24 * MB));
        assert!(!step(&mut t, 1500, 0, 24 * MB, 24 * MB));
        // The first quiet tick trims, the next ones do not.
        assert!(step(&mut t, 1500, 0, 24 * MB, 24 * MB));
        assert!(!step(&mut t, 1500, 0, 24 * MB, 24 * MB));
        assert!(!step(&mut t, 1500, 0, 24 * MB, 24 * MB));
        // A steady stream never trims; its end does.
        for n in 1..=5 {
            assert!(!step(&mut t, 1500 + n * 1000, 0, 24 * MB, 24 * MB));
        }
        assert!(step(&mut t, 6500, 0, 24 * MB, 24 * MB));
    }

    #[test]
    fn a_burst_that_grew_the_process_trims_once_drained_though_a_trickle_goes_on() {
        let mut t = Trimmer::default();
        assert!(!step(&mut t, 0, 0, 24 * MB, 24 * MB));
        // A flood grows the process by 10 MB; its backlog is worked off at
        // full speed (queues not empty, or answers as fast as ever).
        assert!(!step(&mut t, 10_000, 900, 30 * MB, 24 * MB));
        assert!(!step(&mut t, 20_000, 900, 34 * MB, 24 * MB));
        assert!(!step(&mut t, 30_000, 0, 34 * MB, 24 * MB));
        // Drained; another model's 10 msg/s go on: the burst is over.
        assert!(step(&mut t, 30_010, 0, 34 * MB, 25 * MB));
        // The trickle alone never trims again.
        for n in 2..=10 {
            assert!(!step(&mut t, 30_000 + n * 10, 0, 25 * MB, 25 * MB));
        }
    }

    #[test]
    fn a_slowing_stream_does_not_trim_while_its_queue_holds_messages_or_it_has_not_grown() {
        let mut t = Trimmer::default();
        assert!(!step(&mut t, 0, 0, 24 * MB, 24 * MB));
        assert!(!step(&mut t, 1000, 0, 24 * MB, 24 * MB));
        // Half the rate, but the process has not grown by 2 MB.
        assert!(!step(&mut t, 1400, 0, 25 * MB, 24 * MB));
        // Grown and slower, but messages still queued.
        assert!(!step(&mut t, 1800, 40, 30 * MB, 24 * MB));
        // Queue empty: now.
        assert!(step(&mut t, 2200, 0, 30 * MB, 26 * MB));
    }

    #[test]
    fn the_resident_set_of_this_process_is_read() {
        let rss = resident_bytes().unwrap_or(0);
        // A test binary is more than a megabyte resident and less than a
        // terabyte.
        assert!(rss > MB && rss < (1 << 40), "{rss}");
    }
}
