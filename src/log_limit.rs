//! Keeps repeated warnings readable. A sensor that sends garbage, or an
//! overload that refuses thousands of messages a second, would otherwise
//! write one log line per message (390,000 lines in 10 s were measured).
//! Per model and error code, the first error of each interval is logged
//! in full and the rest are counted; when the interval is over, one line
//! says how many more there were. Counters in the health record still
//! count every one.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long one summary covers.
pub const INTERVAL: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
pub struct RepeatLimiter {
    /// Code -> model ("" for none) -> the current interval.
    kinds: Mutex<HashMap<&'static str, HashMap<String, Window>>>,
}

#[derive(Debug)]
struct Window {
    started: Instant,
    /// Errors of this kind not logged one by one in this interval.
    suppressed: u64,
}

impl RepeatLimiter {
    /// Whether this error should be logged in full; otherwise it is
    /// counted for the summary.
    pub fn admit(&self, model: &str, code: &'static str) -> bool {
        self.admit_at(model, code, Instant::now())
    }

    fn admit_at(&self, model: &str, code: &'static str, now: Instant) -> bool {
        let mut kinds = self.kinds.lock().unwrap_or_else(|p| p.into_inner());
        let models = kinds.entry(code).or_default();
        match models.get_mut(model) {
            Some(w) if now.duration_since(w.started) < INTERVAL => {
                w.suppressed += 1;
                false
            }
            Some(w) => {
                // A new interval: say what the last one held back first.
                summarize(model, code, w);
                w.started = now;
                w.suppressed = 0;
                true
            }
            None => {
                models.insert(
                    model.to_string(),
                    Window {
                        started: now,
                        suppressed: 0,
                    },
                );
                true
            }
        }
    }

    /// Logs the summary of every interval that is over, and forgets the
    /// kinds that have gone quiet. Called about once a second.
    pub fn flush(&self) {
        self.flush_at(Instant::now(), false);
    }

    /// Logs every pending summary now (at shutdown).
    pub fn flush_all(&self) {
        self.flush_at(Instant::now(), true);
    }

    fn flush_at(&self, now: Instant, all: bool) -> Vec<String> {
        let mut lines = Vec::new();
        let mut kinds = self.kinds.lock().unwrap_or_else(|p| p.into_inner());
        for (code, models) in kinds.iter_mut() {
            models.retain(|model, w| {
                if !all && now.duration_since(w.started) < INTERVAL {
                    return true;
                }
                lines.extend(summarize(model, code, w));
                false
            });
        }
        kinds.retain(|_, models| !models.is_empty());
        lines
    }
}

/// Logs (and returns, for tests) the summary line of a window, if it held
/// anything back.
fn summarize(model: &str, code: &str, w: &Window) -> Option<String> {
    if w.suppressed == 0 {
        return None;
    }
    let who = if model.is_empty() {
        String::new()
    } else {
        format!("model {model}: ")
    };
    let line = format!(
        "{who}{} more {code} error(s) in {:.0} s, not logged one by one (the health record counts every one)",
        w.suppressed,
        INTERVAL.as_secs_f64()
    );
    // A held-back panic is a bug in the daemon, as the first one logged is.
    let level = if code == "panic" {
        log::Level::Error
    } else {
        log::Level::Warn
    };
    log::log!(level, model = model, error_code = code; "{line}");
    Some(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_of_each_kind_is_logged_and_the_rest_summarized() {
        let l = RepeatLimiter::default();
        let t0 = Instant::now();
        assert!(l.admit_at("har", "overloaded", t0));
        assert!(!l.admit_at("har", "overloaded", t0));
        assert!(!l.admit_at("har", "overloaded", t0 + Duration::from_secs(1)));
        // Other kinds have their own interval.
        assert!(l.admit_at("har", "bad_json", t0));
        assert!(l.admit_at("img", "overloaded", t0));
        assert!(l.flush_at(t0 + Duration::from_secs(2), false).is_empty());
        let lines = l.flush_at(t0 + INTERVAL, false);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].starts_with("model har: 2 more overloaded error(s)"),
            "{lines:?}"
        );
        // Flushed kinds start over.
        assert!(l.admit_at("har", "overloaded", t0 + INTERVAL));
    }

    #[test]
    fn a_new_interval_summarizes_the_last_and_shutdown_flushes_all() {
        let l = RepeatLimiter::default();
        let t0 = Instant::now();
        assert!(l.admit_at("", "no_model", t0));
        assert!(!l.admit_at("", "no_model", t0));
        assert!(l.admit_at("", "no_model", t0 + INTERVAL));
        assert!(!l.admit_at("", "no_model", t0 + INTERVAL));
        let lines = l.flush_at(t0 + INTERVAL, true);
        assert_eq!(lines.len(), 1);
        assert!(lines[0].starts_with("1 more no_model"), "{lines:?}");
    }
}
