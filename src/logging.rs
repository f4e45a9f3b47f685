//! Log output: the systemd journal when started by systemd (JOURNAL_STREAM
//! is set), readable lines on stderr otherwise. Our own crates log at the
//! configured level; dependencies only warnings and errors.

use std::io::Write;

use log::{Level, LevelFilter, Log, Metadata, Record};

struct StderrLogger;

static STDERR_LOGGER: StderrLogger = StderrLogger;

fn ours(target: &str) -> bool {
    target.starts_with("edge_infer") || target.starts_with("model_runtime")
}

impl Log for StderrLogger {
    fn enabled(&self, m: &Metadata) -> bool {
        m.level() <= log::max_level() && (ours(m.target()) || m.level() <= Level::Warn)
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let mut line = format!("{} {:5} {}", utc_timestamp(), record.level(), record.args());
        // Structured fields (the journal gets them as MODEL=, TOPIC=, ...)
        // follow the message as key=value.
        let _ = record.key_values().visit(&mut FieldWriter(&mut line));
        line.push('\n');
        // A closed stderr must not take the daemon down.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

struct FieldWriter<'a>(&'a mut String);

impl<'kvs> log::kv::VisitSource<'kvs> for FieldWriter<'_> {
    fn visit_pair(
        &mut self,
        key: log::kv::Key<'kvs>,
        value: log::kv::Value<'kvs>,
    ) -> Result<(), log::kv::Error> {
        use std::fmt::Write;
        let _ = write!(self.0, " {key}={value}");
        Ok(())
    }
}

/// Installs the logger at `info`; `set_level` adjusts it once the config is
/// read.
pub fn init() {
    let journal = std::env::var_os("JOURNAL_STREAM").is_some()
        && systemd_journal_logger::connected_to_journal();
    if journal {
        match systemd_journal_logger::JournalLog::new() {
            Ok(j) => {
                let j = j.with_syslog_identifier("edge-infer".to_string());
                if j.install().is_ok() {
                    log::set_max_level(LevelFilter::Info);
                    return;
                }
            }
            Err(e) => eprintln!("cannot open the systemd journal ({e}); logging to stderr"),
        }
    }
    if log::set_logger(&STDERR_LOGGER).is_ok() {
        log::set_max_level(LevelFilter::Info);
    }
}

pub fn set_level(level: LevelFilter) {
    log::set_max_level(level);
}

/// The current UTC time as "2026-11-28T21:30:05.123Z".
fn utc_timestamp() -> String {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format_utc(since_epoch)
}

/// RFC 3339 UTC with milliseconds, for a time given as its distance from
/// the Unix epoch. Written out (no date crate in the dependency tree for a
/// dozen lines): Howard Hinnant's `civil_from_days`.
fn format_utc(since_epoch: std::time::Duration) -> String {
    let secs = since_epoch.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since_epoch.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::format_utc;

    #[test]
    fn known_instants_format_exactly() {
        for (secs, millis, want) in [
            (0, 0, "1970-01-01T00:00:00.000Z"),
            (951_782_400, 0, "2000-02-29T00:00:00.000Z"),
            (951_868_800, 0, "2000-03-01T00:00:00.000Z"),
            (1_709_208_000, 0, "2024-02-29T12:00:00.000Z"),
            (1_795_993_805, 123, "2026-11-29T23:10:05.123Z"),
            (4_102_444_799, 999, "2099-12-31T23:59:59.999Z"),
            (253_402_300_799, 1, "9999-12-31T23:59:59.001Z"),
        ] {
            let t = Duration::from_secs(secs) + Duration::from_millis(millis);
            assert_eq!(format_utc(t), want, "{secs}");
        }
    }

    /// Every day from 1970 through 2400 (three century rules, 2000 a leap year,
    /// 2100, 2200, 2300 not) against a calendar counted day by day.
    #[test]
    fn every_midnight_matches_a_day_by_day_calendar() {
        let leap = |y: i64| (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
        let (mut year, mut month, mut day) = (1970i64, 1i64, 1i64);
        let mut days = 0;
        while year <= 2400 {
            let want = format!("{year:04}-{month:02}-{day:02}T00:00:00.000Z");
            assert_eq!(format_utc(Duration::from_secs(days * 86_400)), want);
            let month_len = match month {
                2 if leap(year) => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
            days += 1;
            day += 1;
            if day > month_len {
                (day, month) = (1, month + 1);
                if month > 12 {
                    (month, year) = (1, year + 1);
                }
            }
        }
        assert_eq!(days, 157_420, "days from 1970-01-01 to 2401-01-01");
    }

    #[test]
    fn the_time_of_day_is_exact_to_the_millisecond() {
        let t = Duration::from_secs(951_782_400 + 13 * 3600 + 7 * 60 + 9)
            + Duration::from_micros(45_999);
        assert_eq!(format_utc(t), "2000-02-29T13:07:09.045Z");
        let last = Duration::from_secs(951_868_800) - Duration::from_nanos(1);
        assert_eq!(format_utc(last), "2000-02-29T23:59:59.999Z");
    }
}
