//! Hands the allocator's free memory back to the system once a burst is
//! over.
//!
//! glibc keeps what is freed in its arenas (one per thread that
//! allocates, so the event loop's and each worker's) and returns to the
//! system only what sits at the top of the main heap. After an overload
//! (full queues, answers waiting for the broker) the freed payloads stay
//! in the daemon's RSS until a later burst reuses them: 10 MB and more
//! after a HAR flood. `malloc_trim` releases every whole free page of
//! every arena. It walks the arenas under their locks, so it runs only
//! once per burst, after a second without answers, never while messages
//! flow.

/// Decides when to trim, from the count of answers so far.
#[derive(Debug, Default)]
pub struct Trimmer {
    /// The count at the previous tick.
    seen: u64,
    /// The count at the last trim.
    trimmed: u64,
}

impl Trimmer {
    /// Called about once a second with the number of answers so far; true
    /// (and the memory released) when answers came since the last trim and
    /// none since the previous tick.
    pub fn tick(&mut self, answers: u64) -> bool {
        let quiet = answers == self.seen;
        self.seen = answers;
        if !quiet || answers == self.trimmed {
            return false;
        }
        self.trimmed = answers;
        release_free_memory();
        true
    }
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

    #[test]
    fn trims_once_per_burst_after_a_quiet_tick() {
        let mut t = Trimmer::default();
        // Idle from the start: nothing to give back.
        assert!(!t.tick(0));
        assert!(!t.tick(0));
        // A burst: no trim while answers keep coming.
        assert!(!t.tick(500));
        assert!(!t.tick(1500));
        // The first quiet tick trims, the next ones do not.
        assert!(t.tick(1500));
        assert!(!t.tick(1500));
        assert!(!t.tick(1500));
        // A steady stream never trims; its end does.
        for n in 1..=5 {
            assert!(!t.tick(1500 + n * 1000));
        }
        assert!(t.tick(6500));
    }
}
