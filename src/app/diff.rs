//! What a reload changes, decided from the running and the wanted model
//! sets alone (vector's `ConfigDiff`): keyed by model name, with the
//! settings compared without their position in the file, so inserting or
//! reordering models changes nothing for the others. Pure: the file
//! hashes are read by the caller.

use crate::config::ModelSettings;

/// A model as the diff sees it: its settings and its file's sha256 (None
/// when the file could not be read, which never matches and leaves the
/// loader to report why).
pub struct Facts<'a> {
    pub settings: &'a ModelSettings,
    pub sha256: Option<&'a str>,
}

/// Model names, each list in config order (`remove` in running order).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Diff {
    /// Same name, settings and file: keeps its queue, workers and engines.
    pub keep: Vec<String>,
    /// New, renamed, or changed (file or settings): loaded and warmed,
    /// then swapped in; a running model of that name is retired.
    pub load: Vec<String>,
    /// Running names that are no longer configured: retired.
    pub remove: Vec<String>,
}

impl Diff {
    pub fn between(running: &[Facts<'_>], wanted: &[Facts<'_>]) -> Diff {
        let mut diff = Diff::default();
        for w in wanted {
            let name = &w.settings.name;
            let unchanged = running.iter().any(|r| {
                r.settings.name == *name
                    && r.sha256.is_some()
                    && r.sha256 == w.sha256
                    && same_but_position(r.settings, w.settings)
            });
            if unchanged {
                diff.keep.push(name.clone());
            } else {
                diff.load.push(name.clone());
            }
        }
        diff.remove = running
            .iter()
            .map(|r| &r.settings.name)
            .filter(|name| !wanted.iter().any(|w| w.settings.name == **name))
            .cloned()
            .collect();
        diff
    }

    pub fn keeps(&self, name: &str) -> bool {
        self.keep.iter().any(|k| k == name)
    }
}

/// Equal settings, ignoring `key` (`models[i]`, the place in the file).
fn same_but_position(a: &ModelSettings, b: &ModelSettings) -> bool {
    let ModelSettings {
        key: _,
        name,
        path,
        input_topic,
        output_topic,
        labels,
        top_k,
        payload,
        queue_capacity,
        queue_max_bytes,
        overflow,
        workers,
        threads,
        share_engine,
        worker_priority,
        batch,
        max_batch,
        max_delay,
        window,
        input,
        image,
        accel,
        version,
    } = a;
    // Destructured, so a new setting cannot be forgotten here.
    *name == b.name
        && *path == b.path
        && *input_topic == b.input_topic
        && *output_topic == b.output_topic
        && *labels == b.labels
        && *top_k == b.top_k
        && *payload == b.payload
        && *queue_capacity == b.queue_capacity
        && *queue_max_bytes == b.queue_max_bytes
        && *overflow == b.overflow
        && *workers == b.workers
        && *threads == b.threads
        && *share_engine == b.share_engine
        && *worker_priority == b.worker_priority
        && *batch == b.batch
        && *max_batch == b.max_batch
        && *max_delay == b.max_delay
        && *window == b.window
        && *input == b.input
        && *image == b.image
        && *accel == b.accel
        && *version == b.version
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::{RawConfig, Settings};

    /// Settings from a config text with one `[[models]]` per (name, file,
    /// topic, extra lines).
    fn settings(models: &[(&str, &str, &str, &str)]) -> Settings {
        let mut text = String::from("device_id = \"d\"\n");
        for (name, file, topic, extra) in models {
            text.push_str(&format!(
                "[[models]]\nname = \"{name}\"\npath = \"{file}\"\ninput_topic = \"{topic}\"\n{extra}\n"
            ));
        }
        let raw: RawConfig = ::config::Config::builder()
            .add_source(::config::File::from_str(&text, ::config::FileFormat::Toml))
            .build()
            .and_then(|c| c.try_deserialize())
            .unwrap();
        Settings::from_raw(raw, Path::new("/models")).unwrap()
    }

    /// Every model with a sha made from its file name (so "a.tflite" has
    /// the same sha wherever it stands) or an explicit one.
    fn facts<'a>(s: &'a Settings, shas: &'a [(&str, &str)]) -> Vec<Facts<'a>> {
        s.models
            .iter()
            .map(|m| Facts {
                settings: m,
                sha256: shas
                    .iter()
                    .find(|(name, _)| *name == m.name)
                    .map(|(_, sha)| *sha)
                    .or(Some(m.path.to_str().unwrap())),
            })
            .collect()
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn inserting_removing_renaming_and_changing_touch_only_those_models() {
        let before = settings(&[
            ("a", "a.tflite", "in/a", ""),
            ("b", "b.tflite", "in/b", ""),
            ("old", "o.tflite", "in/o", ""),
            ("r", "r.tflite", "in/r", ""),
            ("f", "f.tflite", "in/f", ""),
            ("s", "s.tflite", "in/s", ""),
            ("gone", "g.tflite", "in/g", ""),
        ]);
        // "new" inserted first, "gone" removed, "old" renamed to "renamed",
        // f's file changed, s's queue changed, the rest reordered.
        let after = settings(&[
            ("new", "n.tflite", "in/n", ""),
            ("renamed", "o.tflite", "in/o", ""),
            ("s", "s.tflite", "in/s", "queue_capacity = 7"),
            ("r", "r.tflite", "in/r", ""),
            ("f", "f.tflite", "in/f", ""),
            ("b", "b.tflite", "in/b", ""),
            ("a", "a.tflite", "in/a", ""),
        ]);
        let running = facts(&before, &[]);
        let wanted = facts(&after, &[("f", "new contents")]);
        let diff = Diff::between(&running, &wanted);
        assert_eq!(
            diff,
            Diff {
                keep: names(&["r", "b", "a"]),
                load: names(&["new", "renamed", "s", "f"]),
                remove: names(&["old", "gone"]),
            }
        );
        assert!(diff.keeps("a") && !diff.keeps("f"));
    }

    #[test]
    fn the_same_set_keeps_everything_and_an_unreadable_file_reloads() {
        let s = settings(&[("a", "a.tflite", "in/a", ""), ("b", "b.tflite", "in/b", "")]);
        let running = facts(&s, &[]);
        let same = facts(&s, &[]);
        assert_eq!(
            Diff::between(&running, &same),
            Diff {
                keep: names(&["a", "b"]),
                ..Diff::default()
            }
        );
        let mut unreadable = facts(&s, &[]);
        unreadable[1].sha256 = None;
        assert_eq!(Diff::between(&running, &unreadable).load, names(&["b"]));
    }

    #[test]
    fn every_setting_but_the_position_counts() {
        let base = settings(&[("a", "a.tflite", "in/a", "")]);
        for extra in [
            "output_topic = \"x/{model}\"",
            "payload = \"raw\"",
            "workers = 2",
            "threads = 2",
            "queue_max_bytes = 4096",
            "overflow = \"drop_oldest\"",
        ] {
            let changed = settings(&[("a", "a.tflite", "in/a", extra)]);
            let diff = Diff::between(&facts(&base, &[]), &facts(&changed, &[]));
            assert_eq!(diff.load, names(&["a"]), "{extra}");
        }
        let moved_topic = settings(&[("a", "a.tflite", "in/other", "")]);
        let diff = Diff::between(&facts(&base, &[]), &facts(&moved_topic, &[]));
        assert_eq!(diff.load, names(&["a"]));
    }
}
