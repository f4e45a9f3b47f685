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

/// "2026-11-28T21:30:05.123Z" without a date crate.
fn utc_timestamp() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
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
        now.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn timestamp_has_iso_shape() {
        let t = super::utc_timestamp();
        assert_eq!(t.len(), 24, "{t}");
        assert!(t.ends_with('Z') && t.as_bytes()[10] == b'T', "{t}");
    }
}
