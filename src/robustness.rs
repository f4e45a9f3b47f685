//! The harness of the randomized robustness tests (issue 10): a seeded
//! PRNG, the case count, panics caught per input and reported with the
//! input that caused them, and the outcome counts each test prints.
//! The tests themselves are `codec::robustness` (every payload decoder,
//! readings and named fields included), `codec::image::robustness`
//! (mutated JPEG and PNG files through the whole image preparation) and
//! `config::robustness` (the config loader).
//!
//! Nightly Rust (and so cargo-fuzz) is not available here: inputs come
//! from structure-aware generators and from byte-level mutation of valid
//! inputs, driven by [`Rng`].
//!
//! Environment (read, never set, by the tests):
//!
//! - `EDGE_INFER_ROBUSTNESS_CASES`: inputs per decoder. Unset, each test
//!   runs a CI-sized count (the whole robustness run takes well under 20 s
//!   in a debug build). The full run is a million per decoder, in release:
//!   `EDGE_INFER_ROBUSTNESS_CASES=1000000 cargo test --release --bin edge-infer robustness -- --nocapture`
//! - `EDGE_INFER_ROBUSTNESS_SEED`: the seed (decimal or `0x` hex); unset,
//!   one is drawn from the clock and printed, so every run explores new
//!   inputs and a failure names the seed that reproduces it.
//! - `EDGE_INFER_ROBUSTNESS_CASE`: with the seed, runs only this case
//!   (each case draws from its own generator, so one case replays alone).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub const CASES_VAR: &str = "EDGE_INFER_ROBUSTNESS_CASES";
pub const SEED_VAR: &str = "EDGE_INFER_ROBUSTNESS_SEED";
pub const CASE_VAR: &str = "EDGE_INFER_ROBUSTNESS_CASE";

/// splitmix64: tiny, fast, and every seed (0 included) gives a good stream;
/// no dev-dependency for a few lines.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The generator of one case: independent of every other case, so a
    /// failing case replays alone from (seed, case).
    pub fn for_case(seed: u64, salt: &str, case: u64) -> Rng {
        let salt = salt.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        let mut mix = Rng(seed ^ salt);
        let a = mix.next_u64();
        Rng(a ^ Rng(case.wrapping_mul(0x9e37_79b9_7f4a_7c15)).next_u64())
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0; the modulo bias is irrelevant here).
    pub fn below(&mut self, n: usize) -> usize {
        assert!(n > 0, "Rng::below(0)");
        (self.next_u64() % n as u64) as usize
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: i64, hi: i64) -> i64 {
        assert!(lo <= hi, "Rng::range({lo}, {hi})");
        let span = hi.wrapping_sub(lo) as u64;
        if span == u64::MAX {
            return self.next_u64() as i64;
        }
        lo.wrapping_add((self.next_u64() % (span + 1)) as i64)
    }

    /// True once in `n` times.
    pub fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    pub fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }
}

/// One robustness test's run: which cases, under which seed, and what
/// came out of them.
pub struct Run {
    pub name: &'static str,
    pub seed: u64,
    cases: Range<u64>,
    started: Instant,
    outcomes: BTreeMap<String, u64>,
    /// Time spent inside each decoder (the rest is generating inputs and
    /// checking answers).
    timers: BTreeMap<&'static str, Duration>,
}

impl Run {
    /// `default_cases`: the CI-sized count, used when
    /// `EDGE_INFER_ROBUSTNESS_CASES` is not set.
    pub fn new(name: &'static str, default_cases: u64) -> Run {
        let count = match std::env::var(CASES_VAR) {
            Ok(v) => {
                parse_u64(&v).unwrap_or_else(|| panic!("{CASES_VAR}={v:?} is not a whole number"))
            }
            Err(_) => default_cases,
        };
        let seed = match std::env::var(SEED_VAR) {
            Ok(v) => parse_u64(&v).unwrap_or_else(|| panic!("{SEED_VAR}={v:?} is not a u64")),
            Err(_) => {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64);
                Rng(now ^ u64::from(std::process::id()).rotate_left(32)).next_u64()
            }
        };
        let cases = match std::env::var(CASE_VAR) {
            Ok(v) => {
                let case = parse_u64(&v).unwrap_or_else(|| panic!("{CASE_VAR}={v:?} is not a u64"));
                case..case + 1
            }
            Err(_) => 0..count,
        };
        println!(
            "robustness {name}: seed {seed:#x}, cases {}..{} (replay: {SEED_VAR}={seed:#x})",
            cases.start, cases.end
        );
        Run {
            name,
            seed,
            cases,
            started: Instant::now(),
            outcomes: BTreeMap::new(),
            timers: BTreeMap::new(),
        }
    }

    pub fn cases(&self) -> Range<u64> {
        self.cases.clone()
    }

    /// How many cases this run has.
    pub fn len(&self) -> u64 {
        self.cases.end - self.cases.start
    }

    pub fn rng(&self, case: u64) -> Rng {
        Rng::for_case(self.seed, self.name, case)
    }

    /// Counts one outcome under `label` (printed by [`Run::finish`]).
    pub fn count(&mut self, label: impl Into<String>) {
        *self.outcomes.entry(label.into()).or_default() += 1;
    }

    /// Adds `spent` to the time inside `decoder`.
    pub fn add_time(&mut self, decoder: &'static str, spent: Duration) {
        *self.timers.entry(decoder).or_default() += spent;
    }

    /// Runs `f` (one decoder on one input); a panic fails the test with
    /// the seed, the case and the input, not only the panic's text.
    pub fn guarded<T>(&self, case: u64, what: &str, input: &[u8], f: impl FnOnce() -> T) -> T {
        match catch_unwind(AssertUnwindSafe(f)) {
            Ok(v) => v,
            Err(panic) => {
                let text = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "(no message)".into());
                self.fail(case, input, &format!("{what} panicked: {text}"))
            }
        }
    }

    /// Fails the test: what was wrong, the replay settings, the input.
    pub fn fail(&self, case: u64, input: &[u8], why: &str) -> ! {
        panic!(
            "robustness {}: case {case}: {why}\n  replay: {SEED_VAR}={:#x} {CASE_VAR}={case} cargo test --bin edge-infer robustness\n  input ({} bytes): {}\n  hex: {}",
            self.name,
            self.seed,
            input.len(),
            escaped(input),
            hex(input)
        )
    }

    /// Prints the outcome counts and the wall time; returns them.
    pub fn finish(self) -> BTreeMap<String, u64> {
        let elapsed = self.started.elapsed();
        let mut line = format!(
            "robustness {}: {} inputs in {:.2} s (seed {:#x}):",
            self.name,
            self.len(),
            elapsed.as_secs_f64(),
            self.seed
        );
        for (label, n) in &self.outcomes {
            let _ = write!(line, "\n  {label}: {n}");
        }
        for (decoder, spent) in &self.timers {
            let _ = write!(line, "\n  time in {decoder}: {:.2} s", spent.as_secs_f64());
        }
        println!("{line}");
        self.outcomes
    }
}

fn parse_u64(text: &str) -> Option<u64> {
    let t = text.trim().replace('_', "");
    match t.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => t.parse().ok(),
    }
}

/// The input as Rust would escape it, byte by byte (valid or not).
pub fn escaped(input: &[u8]) -> String {
    input.escape_ascii().to_string()
}

pub fn hex(input: &[u8]) -> String {
    input.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn robustness_harness_cases_replay_alone_and_differ() {
        let a: Vec<u64> = (0..4)
            .map(|_| Rng::for_case(7, "x", 3).next_u64())
            .collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        let b = Rng::for_case(7, "x", 4).next_u64();
        let c = Rng::for_case(7, "y", 3).next_u64();
        assert!(a[0] != b && a[0] != c && b != c);
        let mut r = Rng::new(0);
        for _ in 0..1000 {
            assert!((-3..=5).contains(&r.range(-3, 5)));
            assert!(r.below(10) < 10);
        }
        assert_eq!(parse_u64("0x1f"), Some(31));
        assert_eq!(parse_u64("1_000_000"), Some(1_000_000));
        assert_eq!(escaped(b"a\"\xff\n"), "a\\\"\\xff\\n");
        assert_eq!(hex(b"\x00\xab"), "00ab");
    }
}
