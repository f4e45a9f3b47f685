//! Converting raw fields into checked ones while collecting every problem
//! with its key, so one run of `check-config` lists them all.

use std::time::Duration;

use super::Problem;

/// Collects problems while fields are converted.
pub(super) struct Check {
    pub(super) problems: Vec<Problem>,
}

impl Check {
    pub(super) fn add(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            key: key.into(),
            message: message.into(),
        });
    }

    pub(super) fn seconds(&mut self, key: &str, value: f64, min: f64, max: f64) -> Duration {
        if !(min..=max).contains(&value) {
            self.add(
                key,
                format!("must be between {min} and {max} seconds, got {value}"),
            );
            return Duration::from_secs_f64(min);
        }
        Duration::from_secs_f64(value)
    }

    pub(super) fn range(&mut self, key: &str, value: i64, min: i64, max: i64) -> i64 {
        if value < min || value > max {
            self.add(key, format!("must be between {min} and {max}, got {value}"));
            min
        } else {
            value
        }
    }
}
