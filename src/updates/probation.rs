//! Whether a model version on probation does worse than the one it
//! replaced, from the model's own counters: its error rate and its p99
//! latency since the swap against the same before it. Pure: the agent
//! takes a [`Sample`] at the swap and one every second, and asks
//! [`judge`].
//!
//! Latency comes from the cumulative total-latency histogram Prometheus
//! reads (`telemetry::LATENCY_BOUNDS_NS`, 1-2.5-5 steps): it is never reset,
//! so the difference of two samples is exactly the window between them
//! (the health topic's HDR histogram is reset every interval and cannot
//! serve). The price is resolution: a p99 is known only as the bucket it
//! falls in. A rollback must be certain, because it takes out a version
//! that may be fine: the new p99 counts as worse only when its bucket's
//! *lower* bound exceeds `max_p99_ratio` times the old bucket's *upper*
//! bound. Neighbouring bounds differ by 2x or 2.5x, so reading both as
//! upper bounds would roll back a model whose p99 merely wobbled from
//! 0.95 ms to 1.05 ms (read as 1 ms against 2.5 ms). The certain rule
//! misses rises it cannot prove (1 ms to 2.4 ms), and catches those that
//! matter most at the edge: an accelerator lost to the CPU, a model ten
//! times the size.

use crate::codec::ErrorCode;
use crate::telemetry::{ModelStats, LATENCY_BOUNDS_NS, LATENCY_BUCKETS};

/// What an error answer says about the model that gave it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Blame {
    /// Counts against the model: a new version can cause it.
    Model,
    /// The message was refused before the model had it (load, limits,
    /// shutdown): not a message the model handled, so not in the rate's
    /// denominator either.
    Capacity,
    /// The sender's doing whatever model runs: a message the model
    /// handled, but not an error against it.
    Sender,
    /// Never counted per model, or not about a message.
    None,
}

/// Exhaustive, so a new error code has to be placed here.
fn blame(code: ErrorCode) -> Blame {
    match code {
        // What a payload must hold comes from the model's tensors: their
        // count and names (`inputs` keyed by name; a wrong kind of value
        // for a named input is `bad_json`), their shapes, their dtype's
        // range. A new version whose inputs differ turns answers into
        // these. A sender's steady share of malformed payloads is in
        // both windows and cancels out in the comparison.
        ErrorCode::BadJson | ErrorCode::BadShape | ErrorCode::BadValue => Blame::Model,
        // The runtime failed on this model.
        ErrorCode::InferenceFailed => Blame::Model,
        // `too_large`: mostly a payload above limits.max_payload_bytes,
        // refused in routing before any model sees it (a result above the
        // broker's packet limit is the other case: top_k and the
        // configured labels, checked at staging, bound that). `overloaded`:
        // a full queue, which depends on the senders' bursts as much as on
        // the model; a slower model shows in the latency test instead.
        // `shutting_down`: the daemon stopping.
        ErrorCode::TooLarge | ErrorCode::Overloaded | ErrorCode::ShuttingDown => Blame::Capacity,
        // Decoding a picture (corrupt, truncated, too many pixels for
        // [limits]) happens before the model's input shape is involved;
        // the fields a reading must carry come from the config; gaps and
        // order are the sender's timing.
        ErrorCode::BadImage
        | ErrorCode::BadReading
        | ErrorCode::StreamGap
        | ErrorCode::OutOfOrder => Blame::Sender,
        // `no_model` and `bad_response_topic` are answered with no model
        // (routing counts them as unrouted); `reload_failed` is about the
        // daemon, not a message.
        ErrorCode::NoModel | ErrorCode::ReloadFailed | ErrorCode::BadResponseTopic => Blame::None,
    }
}

/// A model's counters at one moment, as far as probation needs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// Messages routed to the model (`ModelStats::received`).
    pub received: u64,
    /// Of those, refused before the model had them (capacity codes).
    pub refused: u64,
    /// Errors that count against the model.
    pub errors: u64,
    /// Results per bucket of the cumulative total-latency histogram (not
    /// cumulative across buckets), as `telemetry::CumulativeCounts`.
    pub latency: [u64; LATENCY_BUCKETS],
}

impl Default for Sample {
    /// All zero: the counters of a model that has just been loaded.
    fn default() -> Sample {
        Sample {
            received: 0,
            refused: 0,
            errors: 0,
            latency: [0; LATENCY_BUCKETS],
        }
    }
}

impl Sample {
    pub fn take(stats: &ModelStats) -> Sample {
        // Errors and results first, `received` last: routing counts a
        // message as received before anything answers it, so every answer
        // read here has its message in `received`, and a window never
        // holds more errors than messages.
        let mut refused = 0;
        let mut errors = 0;
        for code in ErrorCode::ALL {
            match blame(code) {
                Blame::Model => errors += stats.errors(code),
                Blame::Capacity => refused += stats.errors(code),
                Blame::Sender | Blame::None => {}
            }
        }
        let latency = stats.stages.total.counts().buckets;
        let received = stats.received.load(std::sync::atomic::Ordering::Relaxed);
        Sample {
            received,
            refused,
            errors,
            latency,
        }
    }
}

/// What happened between two samples of the same counters: before the
/// swap (daemon start or the previous swap, to the swap) or since it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Messages the model handled: received, less those refused for
    /// capacity. Messages still queued count (as answered without error):
    /// at most a queue's worth.
    pub messages: u64,
    /// Errors against the model among them.
    pub errors: u64,
    /// Results per latency bucket.
    pub latency: [u64; LATENCY_BUCKETS],
}

impl Window {
    /// `later - earlier`, saturating: counters only grow, but a model
    /// whose counters started again (a new record after a reload) must not
    /// make a window of wrapped numbers; take `Sample::default()` as the
    /// earlier sample then.
    pub fn between(earlier: &Sample, later: &Sample) -> Window {
        let received = later.received.saturating_sub(earlier.received);
        let refused = later.refused.saturating_sub(earlier.refused);
        Window {
            messages: received.saturating_sub(refused),
            errors: later.errors.saturating_sub(earlier.errors),
            latency: std::array::from_fn(|i| later.latency[i].saturating_sub(earlier.latency[i])),
        }
    }

    /// Results with a latency.
    pub fn results(&self) -> u64 {
        self.latency.iter().sum()
    }

    /// Errors per 100 messages; 0 without messages.
    pub fn error_rate_percent(&self) -> f64 {
        if self.messages == 0 {
            return 0.0;
        }
        (self.errors as f64 * 100.0 / self.messages as f64).min(100.0)
    }

    /// The bucket holding the 99th percentile result: the first whose
    /// running count reaches ceil(0.99 * results). None without results.
    pub fn p99_bucket(&self) -> Option<usize> {
        let n = self.results();
        if n == 0 {
            return None;
        }
        let rank = (n.saturating_mul(99)).div_ceil(100).max(1);
        let mut seen = 0u64;
        self.latency.iter().position(|&c| {
            seen += c;
            seen >= rank
        })
    }
}

/// When a version on probation counts as worse (`[updates]`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    /// No verdict before the window since the swap has this many messages;
    /// a window before it with fewer is no baseline (see [`judge`]).
    pub min_messages: u64,
    /// Percentage points the error rate may rise by.
    pub max_error_rate_increase_percent: f64,
    /// How many times the p99 latency before the swap the p99 since may be.
    pub max_p99_ratio: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Too few messages since the swap to tell.
    Undecided { messages: u64, needed: u64 },
    /// Within the thresholds; `summary` says what was compared.
    Healthy { summary: String },
    /// Past a threshold; `reason` is the sentence for the state record and
    /// the log.
    Worse { reason: String },
}

/// Whether the window since the swap (`new`) does worse than the one
/// before it (`old`):
/// - no verdict until `new` has `min_messages` messages;
/// - worse if its error rate exceeds the old one by more than
///   `max_error_rate_increase_percent` points; with fewer than
///   `min_messages` messages before the swap there is no baseline, and the
///   new rate is held against 0 %;
/// - worse if its p99 latency is in a higher bucket than the old one and
///   that bucket's lower bound exceeds `max_p99_ratio` times the old
///   one's upper bound (see the module doc). Compared only with `min_messages` results on each side (a p99
///   of fewer is the maximum of a handful).
pub fn judge(old: &Window, new: &Window, t: &Thresholds) -> Verdict {
    if new.messages < t.min_messages || new.messages == 0 {
        return Verdict::Undecided {
            messages: new.messages,
            needed: t.min_messages.max(1),
        };
    }
    let new_rate = new.error_rate_percent();
    let baseline = old.messages >= t.min_messages && old.messages > 0;
    let old_rate = if baseline {
        old.error_rate_percent()
    } else {
        0.0
    };
    let before = if baseline {
        format!("against {old_rate:.1} % before")
    } else {
        format!(
            "against 0 % assumed before it (only {} messages before the swap, fewer than {})",
            old.messages, t.min_messages
        )
    };
    let errors = format!(
        "error rate {new_rate:.1} % over {} messages since the swap, {before}",
        new.messages
    );
    if new_rate - old_rate > t.max_error_rate_increase_percent {
        return Verdict::Worse {
            reason: format!(
                "{errors} (limit: +{} points)",
                t.max_error_rate_increase_percent
            ),
        };
    }

    let enough = |w: &Window| w.results() >= t.min_messages.max(1);
    let latency = match (old.p99_bucket(), new.p99_bucket()) {
        (Some(o), Some(n)) if baseline && enough(old) && enough(new) => {
            let said = format!(
                "p99 latency {} over {} results since the swap, against {} before",
                bound_text(n),
                new.results(),
                bound_text(o)
            );
            if n > o && lower_ns(n) > t.max_p99_ratio * bound_ns(o) {
                return Verdict::Worse {
                    reason: format!("{said} (limit: {}x)", t.max_p99_ratio),
                };
            }
            said
        }
        _ => format!(
            "p99 latency not compared ({} results before the swap, {} since; {} needed on each side)",
            old.results(),
            new.results(),
            t.min_messages.max(1)
        ),
    };
    Verdict::Healthy {
        summary: format!("{errors}; {latency}"),
    }
}

/// The upper bound of bucket `i` in nanoseconds; infinite for the last.
fn bound_ns(i: usize) -> f64 {
    LATENCY_BOUNDS_NS
        .get(i)
        .map_or(f64::INFINITY, |&ns| ns as f64)
}

/// The lower bound of bucket `i` in nanoseconds (0 for the first).
fn lower_ns(i: usize) -> f64 {
    i.checked_sub(1)
        .and_then(|j| LATENCY_BOUNDS_NS.get(j))
        .map_or(0.0, |&ns| ns as f64)
}

/// "up to 2.5 ms", or "above 10 s" for the last bucket.
fn bound_text(i: usize) -> String {
    match LATENCY_BOUNDS_NS.get(i) {
        Some(&ns) => format!("up to {}", duration_text(ns)),
        None => format!(
            "above {}",
            duration_text(LATENCY_BOUNDS_NS[LATENCY_BOUNDS_NS.len() - 1])
        ),
    }
}

/// 50 µs, 2.5 ms, 10 s: the bounds are round in their unit.
fn duration_text(ns: u64) -> String {
    if ns < 1_000_000 {
        format!("{} µs", ns as f64 / 1e3)
    } else if ns < 1_000_000_000 {
        format!("{} ms", ns as f64 / 1e6)
    } else {
        format!("{} s", ns as f64 / 1e9)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    const T: Thresholds = Thresholds {
        min_messages: 50,
        max_error_rate_increase_percent: 5.0,
        max_p99_ratio: 2.0,
    };

    /// The bucket of a bound, by value.
    fn bucket(ns: u64) -> usize {
        LATENCY_BOUNDS_NS.iter().position(|&b| b == ns).unwrap()
    }

    /// `messages` handled, `errors` of them against the model, every other
    /// one a result in the bucket bounded by `bucket_ns` (so that is the
    /// p99's bucket).
    fn window(messages: u64, errors: u64, bucket_ns: u64) -> Window {
        let mut latency = [0; LATENCY_BUCKETS];
        latency[bucket(bucket_ns)] = messages - errors;
        Window {
            messages,
            errors,
            latency,
        }
    }

    fn worse(v: Verdict) -> String {
        match v {
            Verdict::Worse { reason } => reason,
            other => panic!("expected Worse, got {other:?}"),
        }
    }

    fn healthy(v: Verdict) -> String {
        match v {
            Verdict::Healthy { summary } => summary,
            other => panic!("expected Healthy, got {other:?}"),
        }
    }

    #[test]
    fn every_error_code_is_placed_and_only_capacity_ones_leave_the_denominator() {
        let model: Vec<_> = ErrorCode::ALL
            .into_iter()
            .filter(|&c| blame(c) == Blame::Model)
            .map(ErrorCode::as_str)
            .collect();
        assert_eq!(
            model,
            ["bad_json", "bad_shape", "bad_value", "inference_failed"]
        );
        let capacity: Vec<_> = ErrorCode::ALL
            .into_iter()
            .filter(|&c| blame(c) == Blame::Capacity)
            .map(ErrorCode::as_str)
            .collect();
        assert_eq!(capacity, ["too_large", "overloaded", "shutting_down"]);
    }

    #[test]
    fn a_sample_reads_the_model_counters() {
        let s = ModelStats::default();
        s.received.fetch_add(20, Ordering::Relaxed);
        s.error(ErrorCode::InferenceFailed);
        s.error(ErrorCode::BadShape);
        s.error(ErrorCode::Overloaded);
        s.error(ErrorCode::Overloaded);
        s.error(ErrorCode::TooLarge);
        s.error(ErrorCode::StreamGap);
        s.error(ErrorCode::BadImage);
        s.stages.total.record(Duration::from_micros(800));
        s.stages.total.record(Duration::from_millis(3));
        let a = Sample::take(&s);
        assert_eq!((a.received, a.refused, a.errors), (20, 3, 2));
        assert_eq!(a.latency[bucket(1_000_000)], 1);
        assert_eq!(a.latency[bucket(5_000_000)], 1);

        s.received.fetch_add(10, Ordering::Relaxed);
        s.error(ErrorCode::BadJson);
        s.error(ErrorCode::ShuttingDown);
        s.stages.total.record(Duration::from_millis(3));
        let b = Sample::take(&s);
        let w = Window::between(&a, &b);
        assert_eq!((w.messages, w.errors, w.results()), (9, 1, 1));
        assert_eq!(w.p99_bucket(), Some(bucket(5_000_000)));
        // Since load: the whole history.
        let all = Window::between(&Sample::default(), &b);
        assert_eq!((all.messages, all.errors, all.results()), (26, 3, 3));
        // Counters that started again do not wrap.
        let back = Window::between(&b, &a);
        assert_eq!((back.messages, back.errors, back.results()), (0, 0, 0));
    }

    #[test]
    fn no_verdict_before_min_messages_since_the_swap() {
        let old = window(1000, 0, 1_000_000);
        let bad = window(49, 49, 10_000_000_000);
        assert_eq!(
            judge(&old, &bad, &T),
            Verdict::Undecided {
                messages: 49,
                needed: 50
            }
        );
        assert!(matches!(
            judge(&old, &window(50, 49, 1_000_000), &T),
            Verdict::Worse { .. }
        ));
        // min_messages = 0 still waits for one message.
        let t0 = Thresholds {
            min_messages: 0,
            ..T
        };
        assert_eq!(
            judge(&old, &window(0, 0, 1_000_000), &t0),
            Verdict::Undecided {
                messages: 0,
                needed: 1
            }
        );
    }

    #[test]
    fn an_error_rate_rise_past_the_limit_fails_with_both_rates() {
        let old = window(1000, 5, 1_000_000);
        let new = window(400, 48, 1_000_000);
        assert_eq!(
            worse(judge(&old, &new, &T)),
            "error rate 12.0 % over 400 messages since the swap, against 0.5 % before (limit: +5 points)"
        );
    }

    #[test]
    fn a_rise_of_exactly_the_limit_passes_and_one_error_more_fails() {
        // 2.5 % before, 7.5 % since: +5.0 points exactly.
        let old = window(400, 10, 1_000_000);
        let summary = healthy(judge(&old, &window(400, 30, 1_000_000), &T));
        assert!(
            summary.starts_with(
                "error rate 7.5 % over 400 messages since the swap, against 2.5 % before; "
            ),
            "{summary}"
        );
        worse(judge(&old, &window(400, 31, 1_000_000), &T));
    }

    #[test]
    fn a_high_error_rate_that_was_as_high_before_passes() {
        // A sender whose payloads are often malformed: both windows.
        let old = window(1000, 300, 1_000_000);
        let new = window(500, 160, 1_000_000);
        healthy(judge(&old, &new, &T));
    }

    #[test]
    fn a_lower_error_rate_passes() {
        healthy(judge(
            &window(1000, 300, 1_000_000),
            &window(500, 0, 1_000_000),
            &T,
        ));
    }

    #[test]
    fn with_too_few_messages_before_the_rate_is_held_against_zero_and_latency_skipped() {
        let old = window(12, 0, 50_000);
        // 4 % errors: within +5 of 0 %; latency 200x worse but not compared.
        let summary = healthy(judge(&old, &window(100, 4, 10_000_000), &T));
        assert_eq!(
            summary,
            "error rate 4.0 % over 100 messages since the swap, against 0 % assumed before it (only 12 messages before the swap, fewer than 50); p99 latency not compared (12 results before the swap, 96 since; 50 needed on each side)"
        );
        assert_eq!(
            worse(judge(&old, &window(100, 6, 1_000_000), &T)),
            "error rate 6.0 % over 100 messages since the swap, against 0 % assumed before it (only 12 messages before the swap, fewer than 50) (limit: +5 points)"
        );
        // A daemon started just before the swap: nothing before at all.
        let none = Window::between(&Sample::default(), &Sample::default());
        worse(judge(&none, &window(100, 6, 1_000_000), &T));
        healthy(judge(&none, &window(100, 5, 1_000_000), &T));
    }

    #[test]
    fn a_p99_past_the_ratio_in_a_higher_bucket_fails() {
        let old = window(1000, 0, 1_000_000);
        let new = window(400, 0, 5_000_000);
        assert_eq!(
            worse(judge(&old, &new, &T)),
            "p99 latency up to 5 ms over 400 results since the swap, against up to 1 ms before (limit: 2x)"
        );
    }

    #[test]
    fn a_p99_fails_only_when_its_bucket_proves_the_ratio() {
        // One bucket up proves nothing: (0.5, 1] ms -> (1, 2.5] ms may be
        // 0.95 -> 1.05 ms.
        healthy(judge(
            &window(1000, 0, 1_000_000),
            &window(400, 0, 2_500_000),
            &T,
        ));
        // (0.5, 1] ms -> (2.5, 5] ms is more than 2.5x: fails at 2x,
        // passes at 3x.
        worse(judge(
            &window(1000, 0, 1_000_000),
            &window(400, 0, 5_000_000),
            &T,
        ));
        let lax = Thresholds {
            max_p99_ratio: 3.0,
            ..T
        };
        healthy(judge(
            &window(1000, 0, 1_000_000),
            &window(400, 0, 5_000_000),
            &lax,
        ));
    }

    #[test]
    fn the_same_bucket_never_fails_whatever_the_ratio() {
        let tight = Thresholds {
            max_p99_ratio: 0.5,
            ..T
        };
        let summary = healthy(judge(
            &window(1000, 0, 25_000_000),
            &window(400, 0, 25_000_000),
            &tight,
        ));
        assert!(
            summary.ends_with(
                "p99 latency up to 25 ms over 400 results since the swap, against up to 25 ms before"
            ),
            "{summary}"
        );
        // Above every bound on both sides: the same (open) bucket.
        let mut old = window(1000, 0, 10_000_000_000);
        old.latency.swap(LATENCY_BUCKETS - 2, LATENCY_BUCKETS - 1);
        let mut new = window(400, 0, 10_000_000_000);
        new.latency.swap(LATENCY_BUCKETS - 2, LATENCY_BUCKETS - 1);
        healthy(judge(&old, &new, &tight));
    }

    #[test]
    fn a_p99_above_every_bound_fails_against_a_far_lower_one() {
        let old = window(1000, 0, 1_000_000_000);
        let mut new = window(400, 0, 10_000_000_000);
        new.latency.swap(LATENCY_BUCKETS - 2, LATENCY_BUCKETS - 1);
        assert_eq!(
            worse(judge(&old, &new, &T)),
            "p99 latency above 10 s over 400 results since the swap, against up to 1 s before (limit: 2x)"
        );
    }

    #[test]
    fn the_p99_is_the_bucket_of_the_99th_percentile_result() {
        let mut w = window(0, 0, 1_000_000);
        // 99 fast results and one slow: the 99th is fast.
        w.latency[bucket(1_000_000)] = 99;
        w.latency[bucket(1_000_000_000)] = 1;
        assert_eq!(w.p99_bucket(), Some(bucket(1_000_000)));
        // 98 fast and two slow: the 99th is slow.
        w.latency[bucket(1_000_000)] = 98;
        w.latency[bucket(1_000_000_000)] = 2;
        assert_eq!(w.p99_bucket(), Some(bucket(1_000_000_000)));
        // One result is its own p99.
        let mut one = window(0, 0, 1_000_000);
        one.latency[bucket(50_000)] = 1;
        assert_eq!(one.p99_bucket(), Some(0));
        assert_eq!(window(0, 0, 1_000_000).p99_bucket(), None);
    }

    #[test]
    fn a_slow_tail_of_one_percent_does_not_move_the_p99() {
        let old = window(1000, 0, 1_000_000);
        let mut new = window(1000, 0, 1_000_000);
        new.latency[bucket(1_000_000)] = 990;
        new.latency[bucket(5_000_000_000)] = 10;
        healthy(judge(&old, &new, &T));
        new.latency[bucket(1_000_000)] = 989;
        new.latency[bucket(5_000_000_000)] = 11;
        worse(judge(&old, &new, &T));
    }

    #[test]
    fn latency_is_not_compared_with_too_few_results_on_either_side() {
        // Enough messages, but most were errors with no latency (the
        // error rate is the same on both sides, within limits).
        let old = window(1000, 960, 1_000_000);
        let new = window(400, 380, 5_000_000_000);
        let summary = healthy(judge(&old, &new, &T));
        assert!(
            summary.ends_with(
                "p99 latency not compared (40 results before the swap, 20 since; 50 needed on each side)"
            ),
            "{summary}"
        );
    }

    #[test]
    fn the_error_test_comes_first_when_both_fail() {
        let old = window(1000, 0, 1_000_000);
        let new = window(400, 100, 5_000_000_000);
        assert!(worse(judge(&old, &new, &T)).starts_with("error rate 25.0 %"));
    }

    #[test]
    fn durations_read_in_their_unit() {
        assert_eq!(duration_text(50_000), "50 µs");
        assert_eq!(duration_text(250_000), "250 µs");
        assert_eq!(duration_text(2_500_000), "2.5 ms");
        assert_eq!(duration_text(500_000_000), "500 ms");
        assert_eq!(duration_text(2_500_000_000), "2.5 s");
        assert_eq!(bound_text(LATENCY_BUCKETS - 1), "above 10 s");
    }
}
