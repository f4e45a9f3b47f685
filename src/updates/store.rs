//! The updates of one model on disk, in `state_dir/models/{name}/` (mode
//! 0700):
//!
//! - `{sha256}.tflite`: model files named by their content, the active one
//!   and the previous one only (plus, in memory only, the one just staged
//!   and waiting to be activated); any other is deleted.
//! - `{sha256}.part`: a download in progress; deleted at open (the chunks
//!   are retained on the broker and come again).
//! - `record.json`: which version is active, which was before, which is on
//!   probation, which was refused and why. Replaced atomically (written to
//!   `record.json.tmp`, fsynced, renamed, directory fsynced), so a crash
//!   leaves the old record or the new one, never a mix.
//!
//! Every change writes the record before anything it makes obsolete is
//! deleted, so after a crash at any point the record names files that
//! exist; `open` checks that anyway (a file may be lost or damaged by
//! other means) and falls back: active, then previous, then the config's
//! own file. Synchronous, one owner (the updates agent), no tokio or MQTT.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::download::{self, Download, DownloadError, Geometry};

const RECORD: &str = "record.json";
const RECORD_TMP: &str = "record.json.tmp";
/// Largest record.json read: a real one is a few hundred bytes; anything
/// far larger is not ours.
const MAX_RECORD_BYTES: u64 = 64 * 1024;

/// A model version installed here: its version as the manifest gave it
/// and the sha256 that names its file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Installed {
    pub version: String,
    pub sha256: String,
}

/// The active version since its swap, until confirmed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Probation {
    pub version: String,
    pub sha256: String,
    /// Unix seconds of the swap.
    pub since: f64,
}

/// A version that must not be tried again until a different manifest
/// comes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refused {
    pub version: String,
    pub sha256: String,
    pub reason: String,
    /// It served and was taken out (probation, a restart before it was
    /// confirmed), rather than refused before it ever served: the state
    /// topic keeps saying `rolled_back` while its manifest stays retained.
    #[serde(default)]
    pub rolled_back: bool,
}

/// `record.json`. `active: None` means the model runs its configured file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Record {
    pub active: Option<Installed>,
    pub previous: Option<Installed>,
    pub probation: Option<Probation>,
    pub refused: Option<Refused>,
}

impl Record {
    /// Why a parsed record cannot be used: a sha256 names a file, so one
    /// that is not 64 lowercase hex digits (`../x`) is never followed.
    fn check(&self) -> Result<(), String> {
        let shas = [
            ("active", self.active.as_ref().map(|i| &i.sha256)),
            ("previous", self.previous.as_ref().map(|i| &i.sha256)),
            ("probation", self.probation.as_ref().map(|p| &p.sha256)),
            ("refused", self.refused.as_ref().map(|r| &r.sha256)),
        ];
        for (field, sha) in shas {
            if let Some(sha) = sha.filter(|s| !is_sha256(s)) {
                return Err(format!(
                    "{field}.sha256 \"{}\" is not 64 lowercase hex digits",
                    sha.chars().take(80).collect::<String>()
                ));
            }
        }
        Ok(())
    }
}

/// 64 lowercase hex digits.
pub fn is_sha256(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    // `error`, not `source`, as in the outbox: the message already says it.
    #[error("cannot {action} {}: {error}", .path.display())]
    Io {
        /// e.g. "create the directory", "write", "sync", "read".
        action: &'static str,
        path: PathBuf,
        error: io::Error,
    },
    #[error("cannot rename {} to {}: {error}", .from.display(), .to.display())]
    Rename {
        from: PathBuf,
        to: PathBuf,
        error: io::Error,
    },
    #[error("model name \"{0}\" cannot name a directory under state_dir/models (empty, \".\", \"..\", or with '/' or NUL)")]
    BadName(String),
    #[error("\"{0}\" is not a sha256 (64 lowercase hex digits)")]
    BadSha256(String),
    #[error("{} is not a regular file", .0.display())]
    NotAFile(PathBuf),
    #[error("cannot activate version {version}: its file {} is not there (stage it first)", .path.display())]
    NotStaged { version: String, path: PathBuf },
    #[error("cannot write {}: {error}", .path.display())]
    Serialize {
        path: PathBuf,
        error: serde_json::Error,
    },
    #[error(transparent)]
    Download(#[from] DownloadError),
}

fn io_error<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |error| StoreError::Io {
        action,
        path: path.to_path_buf(),
        error,
    }
}

/// What `open` found and did about it, one sentence each, for the log and
/// the state topic.
#[derive(Debug, Clone, PartialEq)]
pub enum Recovery {
    /// A download was cut short (`{sha}.part`, deleted; its chunks are
    /// fetched again).
    UnfinishedDownload { path: PathBuf, bytes: u64 },
    /// `record.json.tmp`: a record write was cut short; the record before
    /// it holds.
    UnfinishedRecord { path: PathBuf },
    /// record.json could not be read or parsed: treated as empty (the
    /// configured file runs).
    CorruptRecord { path: PathBuf, why: String },
    /// The daemon stopped while `version` was on probation: it is refused
    /// and `now_active` runs (None: the configured file).
    CrashLoop {
        refused: Refused,
        now_active: Option<Installed>,
    },
    /// The active version's file is missing or damaged; `now_active` runs
    /// instead (None: the configured file).
    ActiveUnusable {
        installed: Installed,
        why: String,
        now_active: Option<Installed>,
    },
    /// The previous version's file is missing or damaged: no rollback
    /// target any more.
    PreviousUnusable { installed: Installed, why: String },
    /// A model file that is neither active nor previous, deleted.
    Removed { path: PathBuf },
    /// A file that should be deleted and could not be.
    CannotRemove { path: PathBuf, why: String },
}

/// "version 1.2 (sha256 ab12cd34…)" or "the configured file".
fn runs(i: &Option<Installed>) -> String {
    match i {
        Some(i) => format!("version {} ({})", i.version, short(&i.sha256)),
        None => "the configured model file".into(),
    }
}

fn short(sha: &str) -> String {
    format!("sha256 {}…", &sha[..sha.len().min(12)])
}

impl std::fmt::Display for Recovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Recovery::UnfinishedDownload { path, bytes } => write!(
                f,
                "deleted the unfinished download {} ({bytes} bytes); its chunks are fetched again",
                path.display()
            ),
            Recovery::UnfinishedRecord { path } => write!(
                f,
                "deleted {}: a write of the record was cut short, the record before it holds",
                path.display()
            ),
            Recovery::CorruptRecord { path, why } => write!(
                f,
                "{} is unusable ({why}); starting without update history on the configured model file",
                path.display()
            ),
            Recovery::CrashLoop {
                refused,
                now_active,
            } => write!(
                f,
                "{}: rolled back to {}; version {} is refused",
                refused.reason,
                runs(now_active),
                refused.version
            ),
            Recovery::ActiveUnusable {
                installed,
                why,
                now_active,
            } => write!(
                f,
                "the file of active version {} {why}; running {} instead",
                installed.version,
                runs(now_active)
            ),
            Recovery::PreviousUnusable { installed, why } => write!(
                f,
                "the file of previous version {} {why}; it is forgotten, so a rollback goes to the configured model file",
                installed.version
            ),
            Recovery::Removed { path } => write!(
                f,
                "deleted {}, neither the active nor the previous version",
                path.display()
            ),
            Recovery::CannotRemove { path, why } => {
                write!(f, "cannot delete {}: {why}", path.display())
            }
        }
    }
}

/// The update state of one model, on disk and in memory (always the same
/// after each call returns Ok).
#[derive(Debug)]
pub struct ModelStore {
    dir: PathBuf,
    record: Record,
    /// The sha256 of a file staged (downloaded or copied and verified) and
    /// not yet activated or refused: kept by the cleanups that delete
    /// every file but the active and the previous one.
    staged: Option<String>,
}

impl ModelStore {
    /// Opens `state_dir/models/{name}/`, creating it, and brings it to a
    /// state that can be served: leftovers of a crash deleted, a version
    /// caught on probation rolled back and refused, an active file that is
    /// missing or damaged replaced by the previous one or the configured
    /// file, files of no use deleted. What was done comes back as
    /// `Recovery` values. Only a directory that cannot be created or read,
    /// or a record that cannot be rewritten, is an error.
    pub fn open(state_dir: &Path, name: &str) -> Result<(ModelStore, Vec<Recovery>), StoreError> {
        if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
            return Err(StoreError::BadName(name.to_string()));
        }
        let dir = state_dir.join("models").join(name);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io_error("create the directory", &dir))?;
        let mut recoveries = Vec::new();
        remove_leftovers(&dir, &mut recoveries)?;

        let path = dir.join(RECORD);
        let read = read_record(&path);
        let mut record = match read {
            Ok(r) => r.unwrap_or_default(),
            Err(why) => {
                recoveries.push(Recovery::CorruptRecord {
                    path: path.clone(),
                    why,
                });
                Record::default()
            }
        };
        let before = record.clone();

        if let Some(p) = record.probation.take() {
            let refused = Refused {
                rolled_back: true,
                reason: format!(
                    "the daemon restarted before version {} was confirmed",
                    p.version
                ),
                version: p.version,
                sha256: p.sha256,
            };
            if record.active.as_ref().map(|a| &a.sha256) == Some(&refused.sha256) {
                record.active = record.previous.take();
            }
            record.refused = Some(refused.clone());
            recoveries.push(Recovery::CrashLoop {
                refused,
                now_active: record.active.clone(),
            });
        }

        let mut store = ModelStore {
            dir,
            record,
            staged: None,
        };
        // The previous one first: if the active one is unusable, the
        // previous one takes its place only if it is sound.
        if let Some(prev) = store.record.previous.clone() {
            if let Err(why) = store.check_file(&prev) {
                store.record.previous = None;
                recoveries.push(Recovery::PreviousUnusable {
                    installed: prev,
                    why,
                });
            }
        }
        if let Some(active) = store.record.active.clone() {
            if let Err(why) = store.check_file(&active) {
                store.record.active = store.record.previous.take();
                recoveries.push(Recovery::ActiveUnusable {
                    installed: active,
                    why,
                    now_active: store.record.active.clone(),
                });
            }
        }
        // A corrupt record is rewritten too, so it is reported once.
        let corrupt = recoveries
            .iter()
            .any(|r| matches!(r, Recovery::CorruptRecord { .. }));
        if store.record != before || corrupt {
            write_record(&store.dir, &store.record)?;
        }
        for path in store.unused_files()? {
            match fs::remove_file(&path) {
                Ok(()) => recoveries.push(Recovery::Removed { path }),
                Err(e) => recoveries.push(Recovery::CannotRemove {
                    path,
                    why: e.to_string(),
                }),
            }
        }
        Ok((store, recoveries))
    }

    /// `state_dir/models/{name}`.
    #[cfg(test)]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn record(&self) -> &Record {
        &self.record
    }

    /// The file the model should run, or None for its configured file.
    pub fn active_path(&self) -> Option<PathBuf> {
        self.record
            .active
            .as_ref()
            .map(|i| self.file_path(&i.sha256))
    }

    /// `{dir}/{sha256}.tflite`; `sha256` must be one the store accepted.
    pub fn file_path(&self, sha256: &str) -> PathBuf {
        self.dir.join(format!("{sha256}.tflite"))
    }

    /// Starts receiving `{sha256}.part`, at its full size, empty. Chunks go
    /// to `Download::write_chunk`; once complete, to `finish_download`.
    pub fn begin_download(&self, sha256: &str, geometry: Geometry) -> Result<Download, StoreError> {
        check_sha(sha256)?;
        Ok(Download::create(&self.dir, sha256, geometry)?)
    }

    /// Checks a complete download (size, sha256), makes it durable and
    /// names it `{sha256}.tflite`: the path to load and validate before
    /// `activate`. On failure its part file is gone.
    pub fn finish_download(&mut self, download: Download) -> Result<PathBuf, StoreError> {
        let sha = download.sha256().to_string();
        let path = download.finish()?;
        self.staged = Some(sha);
        Ok(path)
    }

    /// Stages a file already on the device (a manifest's `path`): copied
    /// into `{sha256}.part` (at most `size + 1` bytes, so a file that grows
    /// is still refused), then checked and renamed like a download.
    pub fn stage_file(
        &mut self,
        src: &Path,
        sha256: &str,
        size: u64,
    ) -> Result<PathBuf, StoreError> {
        check_sha(sha256)?;
        let meta = fs::metadata(src).map_err(io_error("read", src))?;
        if !meta.is_file() {
            return Err(StoreError::NotAFile(src.to_path_buf()));
        }
        if meta.len() != size {
            return Err(DownloadError::Size {
                path: src.to_path_buf(),
                got: meta.len(),
                expected: size,
            }
            .into());
        }
        let part = self.dir.join(format!("{sha256}.part"));
        let staged = copy_to_part(src, &part, size).and_then(|()| {
            let what = format!("copied from {}", src.display());
            Ok(download::seal(&part, &self.dir, sha256, size, &what)?)
        });
        match staged {
            Ok(path) => {
                self.staged = Some(sha256.to_string());
                Ok(path)
            }
            Err(e) => {
                let _ = fs::remove_file(&part);
                Err(e)
            }
        }
    }

    /// After the swap to `new` (staged, loaded, validated): it becomes the
    /// active version on probation since `now_unix`, the active one
    /// becomes the previous one (unless it is the same file), and the file
    /// before that is deleted.
    pub fn activate(&mut self, new: Installed, now_unix: f64) -> Result<(), StoreError> {
        check_sha(&new.sha256)?;
        let path = self.file_path(&new.sha256);
        if !path.is_file() {
            return Err(StoreError::NotStaged {
                version: new.version,
                path,
            });
        }
        let mut next = self.record.clone();
        let old = next.active.take();
        if old.as_ref().is_some_and(|o| o.sha256 != new.sha256) {
            next.previous = old;
        }
        next.probation = Some(Probation {
            version: new.version.clone(),
            sha256: new.sha256.clone(),
            since: now_unix,
        });
        let was_staged = self.staged.as_deref() == Some(new.sha256.as_str());
        next.active = Some(new);
        self.commit(next)?;
        if was_staged {
            self.staged = None;
        }
        self.remove_unused();
        Ok(())
    }

    /// The version on probation did well: it stays.
    pub fn confirm(&mut self) -> Result<(), StoreError> {
        if self.record.probation.is_none() {
            return Ok(());
        }
        let mut next = self.record.clone();
        next.probation = None;
        self.commit(next)
    }

    /// The active version goes (refused with `reason`), the previous one
    /// comes back: the version now active, or None for the configured
    /// file. With no active version there is nothing to roll back: the
    /// record stays and None comes back. The rolled back file is deleted.
    pub fn rollback(&mut self, reason: &str) -> Result<Option<Installed>, StoreError> {
        let Some(gone) = self.record.active.clone() else {
            return Ok(None);
        };
        let mut next = self.record.clone();
        next.active = next.previous.take();
        next.probation = None;
        next.refused = Some(Refused {
            version: gone.version,
            sha256: gone.sha256,
            reason: reason.to_string(),
            rolled_back: true,
        });
        self.commit(next)?;
        self.remove_unused();
        Ok(self.record.active.clone())
    }

    /// `version` must not be tried again until a different manifest comes
    /// (bad signature, failed golden check, ...). A staged file of it is
    /// deleted.
    pub fn refuse(&mut self, version: &str, sha256: &str, reason: &str) -> Result<(), StoreError> {
        check_sha(sha256)?;
        let mut next = self.record.clone();
        next.refused = Some(Refused {
            version: version.to_string(),
            sha256: sha256.to_string(),
            reason: reason.to_string(),
            rolled_back: false,
        });
        self.commit(next)?;
        if self.staged.as_deref() == Some(sha256) {
            self.staged = None;
        }
        self.remove_unused();
        Ok(())
    }

    /// Writes `next` as the record, then holds it in memory; on error
    /// neither changes (as far as the file system allows).
    fn commit(&mut self, next: Record) -> Result<(), StoreError> {
        write_record(&self.dir, &next)?;
        self.record = next;
        Ok(())
    }

    /// Whether the file of `i` is there and hashes to its name.
    fn check_file(&self, i: &Installed) -> Result<(), String> {
        let path = self.file_path(&i.sha256);
        match fs::metadata(&path) {
            Ok(m) if m.is_file() => {}
            Ok(_) => return Err(format!("({}) is not a regular file", path.display())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(format!("({}) is missing", path.display()))
            }
            Err(e) => return Err(format!("({}) cannot be read: {e}", path.display())),
        }
        match download::sha256_file(&path) {
            Ok((_, sha)) if sha == i.sha256 => Ok(()),
            Ok((len, sha)) => Err(format!(
                "({}) is damaged: its {len} bytes hash to {sha}",
                path.display()
            )),
            Err(e) => Err(format!("({}) cannot be read: {e}", path.display())),
        }
    }

    /// `*.tflite` files here that are neither active, previous nor staged.
    fn unused_files(&self) -> Result<Vec<PathBuf>, StoreError> {
        let keep: Vec<String> = [&self.record.active, &self.record.previous]
            .into_iter()
            .flatten()
            .map(|i| format!("{}.tflite", i.sha256))
            .chain(self.staged.iter().map(|s| format!("{s}.tflite")))
            .collect();
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io_error("read", &self.dir))? {
            let entry = entry.map_err(io_error("read", &self.dir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.ends_with(".tflite") && !keep.iter().any(|k| k == name) {
                out.push(entry.path());
            }
        }
        out.sort();
        Ok(out)
    }

    /// After a change: deletes what it made obsolete. A failure costs disk
    /// space only (the next open deletes it), so it is logged, not
    /// returned.
    fn remove_unused(&self) {
        let unused = match self.unused_files() {
            Ok(u) => u,
            Err(e) => {
                log::warn!("{e}");
                return;
            }
        };
        for path in unused {
            if let Err(e) = fs::remove_file(&path) {
                log::warn!("cannot delete {}: {e}", path.display());
            }
        }
        if let Err(e) = download::sync_dir(&self.dir) {
            log::warn!("cannot sync the directory {}: {e}", self.dir.display());
        }
    }
}

fn check_sha(sha256: &str) -> Result<(), StoreError> {
    if is_sha256(sha256) {
        Ok(())
    } else {
        Err(StoreError::BadSha256(
            sha256.chars().take(80).collect::<String>(),
        ))
    }
}

/// Deletes `*.part` and `*.tmp` files: what a crash cut short.
fn remove_leftovers(dir: &Path, recoveries: &mut Vec<Recovery>) -> Result<(), StoreError> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_error("read", dir))? {
        let entry = entry.map_err(io_error("read", dir))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.ends_with(".part") || name.ends_with(".tmp") {
            let bytes = entry.metadata().map(|m| m.len()).unwrap_or(0);
            found.push((entry.path(), name.ends_with(".part"), bytes));
        }
    }
    found.sort();
    for (path, is_part, bytes) in found {
        match fs::remove_file(&path) {
            Ok(()) if is_part => recoveries.push(Recovery::UnfinishedDownload { path, bytes }),
            Ok(()) => recoveries.push(Recovery::UnfinishedRecord { path }),
            Err(e) => recoveries.push(Recovery::CannotRemove {
                path,
                why: e.to_string(),
            }),
        }
    }
    Ok(())
}

/// The record at `path`: None if there is none yet (first start), Err with
/// why it cannot be used.
fn read_record(path: &Path) -> Result<Option<Record>, String> {
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read it: {e}")),
    };
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if meta.len() > MAX_RECORD_BYTES {
        return Err(format!(
            "{} bytes, more than a record ever takes ({MAX_RECORD_BYTES})",
            meta.len()
        ));
    }
    let bytes = fs::read(path).map_err(|e| format!("cannot read it: {e}"))?;
    let record: Record =
        serde_json::from_slice(&bytes).map_err(|e| format!("not a record: {e}"))?;
    record.check()?;
    Ok(Some(record))
}

/// Replaces `{dir}/record.json` atomically and durably.
fn write_record(dir: &Path, record: &Record) -> Result<(), StoreError> {
    let path = dir.join(RECORD);
    let tmp = dir.join(RECORD_TMP);
    let mut json = serde_json::to_vec_pretty(record).map_err(|error| StoreError::Serialize {
        path: path.clone(),
        error,
    })?;
    json.push(b'\n');
    let written = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_error("create", &tmp))
        .and_then(|mut f| {
            f.write_all(&json).map_err(io_error("write", &tmp))?;
            f.sync_all().map_err(io_error("sync", &tmp))
        })
        .and_then(|()| {
            fs::rename(&tmp, &path).map_err(|error| StoreError::Rename {
                from: tmp.clone(),
                to: path.clone(),
                error,
            })
        });
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    download::sync_dir(dir).map_err(io_error("sync the directory", dir))
}

/// Copies at most `size + 1` bytes of `src` into a new `part` and syncs it.
fn copy_to_part(src: &Path, part: &Path, size: u64) -> Result<(), StoreError> {
    let from = fs::File::open(src).map_err(io_error("open", src))?;
    let mut to = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(part)
        .map_err(io_error("create", part))?;
    io::copy(&mut io::Read::take(from, size.saturating_add(1)), &mut to).map_err(|error| {
        StoreError::Io {
            action: "copy into",
            path: part.to_path_buf(),
            error,
        }
    })?;
    to.sync_all().map_err(io_error("sync", part))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::sha256_hex;

    fn bytes(tag: u8, len: usize) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(31) ^ tag).collect()
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    fn open(state: &Path) -> (ModelStore, Vec<Recovery>) {
        ModelStore::open(state, "har").unwrap()
    }

    /// Downloads `content` in 1 KiB chunks, last chunk first.
    fn download(store: &mut ModelStore, content: &[u8]) -> Installed {
        let sha = sha256_hex(content);
        let chunks = content.len().div_ceil(1024) as u32;
        let g = Geometry::new(content.len() as u64, 1024, chunks).unwrap();
        let mut d = store.begin_download(&sha, g).unwrap();
        for n in (0..chunks).rev() {
            let from = g.offset(n) as usize;
            let to = from + g.chunk_len(n) as usize;
            d.write_chunk(n, &content[from..to]).unwrap();
        }
        let path = store.finish_download(d).unwrap();
        assert_eq!(fs::read(&path).unwrap(), content);
        Installed {
            version: String::new(),
            sha256: sha,
        }
    }

    /// `content` downloaded and activated as `version`.
    fn install(store: &mut ModelStore, version: &str, content: &[u8]) -> Installed {
        let mut i = download(store, content);
        i.version = version.into();
        store.activate(i.clone(), 1000.0).unwrap();
        i
    }

    fn on_disk(store: &ModelStore) -> Record {
        serde_json::from_slice(&fs::read(store.dir().join(RECORD)).unwrap()).unwrap()
    }

    #[test]
    fn a_new_store_is_empty_private_and_runs_the_configured_file() {
        let state = tempfile::tempdir().unwrap();
        let (store, rec) = open(state.path());
        assert!(rec.is_empty(), "{rec:?}");
        assert_eq!(store.record(), &Record::default());
        assert_eq!(store.active_path(), None);
        assert_eq!(store.dir(), state.path().join("models/har"));
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(store.dir()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        // Nothing written until something changes.
        assert!(names(store.dir()).is_empty());
    }

    #[test]
    fn names_that_would_leave_the_models_directory_are_refused() {
        let state = tempfile::tempdir().unwrap();
        for name in ["", ".", "..", "a/b", "a\0b"] {
            let e = ModelStore::open(state.path(), name).unwrap_err();
            assert!(matches!(e, StoreError::BadName(_)), "{name:?}: {e}");
        }
    }

    #[test]
    fn activate_confirm_and_a_second_version_keep_two_files() {
        let state = tempfile::tempdir().unwrap();
        let (mut store, _) = open(state.path());
        let v1 = install(&mut store, "1", &bytes(1, 3000));
        assert_eq!(store.record().active.as_ref(), Some(&v1));
        assert_eq!(store.record().previous, None);
        assert_eq!(
            store.record().probation,
            Some(Probation {
                version: "1".into(),
                sha256: v1.sha256.clone(),
                since: 1000.0
            })
        );
        assert_eq!(on_disk(&store), *store.record());
        store.confirm().unwrap();
        assert_eq!(store.record().probation, None);
        assert_eq!(on_disk(&store), *store.record());

        let v2 = install(&mut store, "2", &bytes(2, 2000));
        store.confirm().unwrap();
        let v3 = install(&mut store, "3", &bytes(3, 1500));
        assert_eq!(store.record().active.as_ref(), Some(&v3));
        assert_eq!(store.record().previous.as_ref(), Some(&v2));
        assert_eq!(store.active_path(), Some(store.file_path(&v3.sha256)));
        // v1's file is gone: current and previous only.
        assert_eq!(
            names(store.dir()),
            [
                format!("{}.tflite", v2.sha256),
                format!("{}.tflite", v3.sha256),
                RECORD.to_string()
            ]
            .into_iter()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>()
        );
    }

    #[test]
    fn activating_the_same_file_again_keeps_the_real_previous_version() {
        let state = tempfile::tempdir().unwrap();
        let (mut store, _) = open(state.path());
        let v1 = install(&mut store, "1", &bytes(1, 3000));
        let v2 = install(&mut store, "2", &bytes(2, 3000));
        let mut again = v2.clone();
        again.version = "2.0.1".into();
        store.activate(again.clone(), 2000.0).unwrap();
        assert_eq!(store.record().active.as_ref(), Some(&again));
        assert_eq!(store.record().previous.as_ref(), Some(&v1));
    }

    #[test]
    fn activating_a_file_that_was_never_staged_is_refused() {
        let state = tempfile::tempdir().unwrap();
        let (mut store, _) = open(state.path());
        let sha = sha256_hex(b"nothing");
        let e = store
            .activate(
                Installed {
                    version: "4".into(),
                    sha256: sha.clone(),
                },
                1.0,
            )
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "cannot activate version 4: its file {} is not there (stage it first)",
                store.file_path(&sha).display()
            )
        );
        assert_eq!(store.record(), &Record::default());
    }

    #[test]
    fn rollback_brings_the_previous_version_back_and_refuses_the_new_one() {
        let state = tempfile::tempdir().unwrap();
        let (mut store, _) = open(state.path());
        let v1 = install(&mut store, "1", &bytes(1, 3000));
        store.confirm().unwrap();
        let v2 = install(&mut store, "2", &bytes(2, 3000));
        let back = store.rollback("error rate 12.0 % ...").unwrap();
        assert_eq!(back.as_ref(), Some(&v1));
        let r = store.record();
        assert_eq!(r.active.as_ref(), Some(&v1));
        assert_eq!((&r.previous, &r.probation), (&None, &None));
        assert_eq!(
            r.refused,
            Some(Refused {
                version: "2".into(),
                sha256: v2.sha256.clone(),
                reason: "error rate 12.0 % ...".into(),
                rolled_back: true,
            })
        );
        assert_eq!(on_disk(&store), *store.record());
        assert!(!store.file_path(&v2.sha256).exists());
        assert!(store.file_path(&v1.sha256).exists());

        // Once more: back to the configured file.
        assert_eq!(store.rollback("again").unwrap(), None);
        assert_eq!(store.record().active, None);
        assert_eq!(store.active_path(), None);
        assert_eq!(names(store.dir()), [RECORD]);
        // Nothing left to roll back: nothing changes.
        let before = store.record().clone();
        assert_eq!(store.rollback("and again").unwrap(), None);
        assert_eq!(store.record(), &before);
    }

    #[test]
    fn refuse_is_recorded_and_deletes_the_staged_file() {
        let state = tempfile::tempdir().unwrap();
        let (mut store, _) = open(state.path());
        let v1 = install(&mut store, "1", &bytes(1, 3000));
        let staged = download(&mut store, &bytes(2, 3000));
        store
            .refuse("2", &staged.sha256, "golden input 0: output differs")
            .unwrap();
        assert_eq!(
            store.record().refused,
            Some(Refused {
                version: "2".into(),
                sha256: staged.sha256.clone(),
                reason: "golden input 0: output differs".into(),
                rolled_back: false,
            })
        );
        assert_eq!(store.record().active.as_ref(), Some(&v1));
        assert!(!store.file_path(&staged.sha256).exists());
        assert_eq!(on_disk(&store), *store.record());
        assert!(matches!(
            store.refuse("2", "../etc", "x").unwrap_err(),
            StoreError::BadSha256(_)
        ));
    }

    #[test]
    fn a_staged_file_survives_a_rollback_until_it_is_activated() {
        let state = tempfile::tempdir().unwrap();
        let (mut store, _) = open(state.path());
        install(&mut store, "1", &bytes(1, 3000));
        install(&mut store, "2", &bytes(2, 3000));
        let mut v3 = download(&mut store, &bytes(3, 3000));
        store.rollback("worse").unwrap();
        assert!(store.file_path(&v3.sha256).exists());
        v3.version = "3".into();
        store.activate(v3.clone(), 5.0).unwrap();
        assert_eq!(store.record().active, Some(v3));
    }

    #[test]
    fn a_restart_during_probation_rolls_back_and_refuses_that_version() {
        let state = tempfile::tempdir().unwrap();
        let (mut store, _) = open(state.path());
        let v1 = install(&mut store, "1", &bytes(1, 3000));
        store.confirm().unwrap();
        let v2 = install(&mut store, "2", &bytes(2, 3000));
        drop(store); // kill -9 before the verdict.

        let (store, rec) = open(state.path());
        let refused = Refused {
            version: "2".into(),
            sha256: v2.sha256.clone(),
            reason: "the daemon restarted before version 2 was confirmed".into(),
            rolled_back: true,
        };
        assert_eq!(
            rec,
            [
                Recovery::CrashLoop {
                    refused: refused.clone(),
                    now_active: Some(v1.clone()),
                },
                Recovery::Removed {
                    path: store.file_path(&v2.sha256)
                }
            ]
        );
        assert_eq!(
            rec[0].to_string(),
            format!(
                "the daemon restarted before version 2 was confirmed: rolled back to version 1 (sha256 {}…); version 2 is refused",
                &v1.sha256[..12]
            )
        );
        let want = Record {
            active: Some(v1.clone()),
            previous: None,
            probation: None,
            refused: Some(refused),
        };
        assert_eq!(store.record(), &want);
        assert_eq!(on_disk(&store), want);
        // And it stays that way.
        let (again, rec) = open(state.path());
        assert!(rec.is_empty(), "{rec:?}");
        assert_eq!(again.record(), &want);
    }

    #[test]
    fn a_restart_during_the_first_probation_goes_back_to_the_configured_file() {
        let state = tempfile::tempdir().unwrap();
        let (mut store, _) = open(state.path());
        install(&mut store, "1", &bytes(1, 3000));
        drop(store);
        let (store, rec) = open(state.path());
        assert!(
            matches!(
                &rec[0],
                Recovery::CrashLoop {
                    now_active: None,
                    ..
                }
            ),
            "{rec:?}"
        );
        assert!(rec[0]
            .to_string()
            .contains("rolled back to the configured model file"));
        assert_eq!(store.active_path(), None);
        assert_eq!(names(store.dir()), [RECORD]);
    }

    #[test]
    fn leftover_part_and_tmp_files_are_deleted_at_open() {
        let state = tempfile::tempdir().unwrap();
        let (mut store, _) = open(state.path());
        let v1 = install(&mut store, "1", &bytes(1, 3000));
        store.confirm().unwrap();
        // kill -9 mid-download and mid-record-write.
        let part = store.dir().join(format!("{}.part", sha256_hex(b"x")));
        fs::write(&part, vec![0; 2048]).unwrap();
        let tmp = store.dir().join(RECORD_TMP);
        fs::write(&tmp, b"{\"active\": nu").unwrap();
        drop(store);
        let (store, rec) = open(state.path());
        assert_eq!(
            rec,
            [
                Recovery::UnfinishedDownload {
                    path: part.clone(),
                    bytes: 2048
                },
                Recovery::UnfinishedRecord { path: tmp.clone() }
            ]
        );
        assert!(rec[0].to_string().contains("its chunks are fetched again"));
        assert_eq!(store.record().active.as_ref(), Some(&v1));
        assert!(!part.exists() && !tmp.exists());
    }

    #[test]
    fn a_file_staged_but_never_activated_is_deleted_at_open() {
        // kill -9 after staging: the record never named it.
        let state = tempfile::tempdir().unwrap();
        let (mut store, _) = open(state.path());
        let staged = download(&mut store, &bytes(5, 3000));
        drop(store);
        let (store, rec) = open(state.path());
        let path = store.file_path(&staged.sha256);
        assert_eq!(rec, [Recovery::Removed { path: path.clone() }]);
        assert!(!path.exists());
        assert_eq!(store.record(), &Record::default());
    }

    #[test]
    fn a_damaged_active_file_falls_back_to_the_previous_version() {
        let state = tempfile::tempdir().unwrap();
        let (mut store, _) = open(state.path());
        let v1 = install(&mut store, "1", &bytes(1, 3000));
        store.confirm().unwrap();
        let v2 = install(&mut store, "2", &bytes(2, 3000));
        store.confirm().unwrap();
        let damaged = bytes(9, 3000);
        fs::write(store.file_path(&v2.sha256), &damaged).unwrap();
        drop(store);
        let (store, rec) = open(state.path());
        let path = store.file_path(&v2.sha256);
        assert_eq!(
            rec[0],
            Recovery::ActiveUnusable {
                installed: v2.clone(),
                why: format!(
                    "({}) is damaged: its 3000 bytes hash to {}",
                    path.display(),
                    sha256_hex(&damaged)
                ),
                now_active: Some(v1.clone()),
            }
        );
        assert!(
            rec[0]
                .to_string()
                .starts_with("the file of active version 2 ("),
            "{}",
            rec[0]
        );
        assert_eq!(rec[1], Recovery::Removed { path });
        assert_eq!(store.record().active.as_ref(), Some(&v1));
        assert_eq!(store.record().previous, None);
        assert_eq!(on_disk(&store), *store.record());
    }

    #[test]
    fn a_missing_active_file_with_no_sound_previous_runs_the_configured_file() {
        let state = tempfile::tempdir().unwrap();
        let (mut store, _) = open(state.path());
        let v1 = install(&mut store, "1", &bytes(1, 3000));
        store.confirm().unwrap();
        let v2 = install(&mut store, "2", &bytes(2, 3000));
        store.confirm().unwrap();
        fs::remove_file(store.file_path(&v2.sha256)).unwrap();
        fs::write(store.file_path(&v1.sha256), b"truncated").unwrap();
        drop(store);
        let (store, rec) = open(state.path());
        assert!(
            matches!(&rec[0], Recovery::PreviousUnusable { installed, why }
                if *installed == v1 && why.ends_with(&format!("is damaged: its 9 bytes hash to {}", sha256_hex(b"truncated")))),
            "{rec:?}"
        );
        assert!(
            matches!(&rec[1], Recovery::ActiveUnusable { installed, why, now_active: None }
                if *installed == v2 && why.ends_with("is missing")),
            "{rec:?}"
        );
        assert_eq!(store.active_path(), None);
        assert_eq!(store.record().previous, None);
        assert_eq!(on_disk(&store), *store.record());
        assert_eq!(names(store.dir()), [RECORD]);
    }

    #[test]
    fn a_missing_previous_file_only_forgets_the_rollback_target() {
        let state = tempfile::tempdir().unwrap();
        let (mut store, _) = open(state.path());
        let v1 = install(&mut store, "1", &bytes(1, 3000));
        store.confirm().unwrap();
        let v2 = install(&mut store, "2", &bytes(2, 3000));
        store.confirm().unwrap();
        fs::remove_file(store.file_path(&v1.sha256)).unwrap();
        drop(store);
        let (store, rec) = open(state.path());
        assert_eq!(rec.len(), 1, "{rec:?}");
        assert!(matches!(&rec[0], Recovery::PreviousUnusable { .. }));
        assert_eq!(store.record().active.as_ref(), Some(&v2));
        assert_eq!(store.record().previous, None);
    }

    #[test]
    fn a_corrupt_record_is_reported_and_treated_as_empty() {
        let state = tempfile::tempdir().unwrap();
        let (mut store, _) = open(state.path());
        let v1 = install(&mut store, "1", &bytes(1, 3000));
        let dir = store.dir().to_path_buf();
        drop(store);
        for (content, why) in [
            (&b"{\"active\": {\"version\": 1"[..], "not a record: "),
            (b"\xff\xfe", "not a record: "),
            (b"42", "not a record: "),
            (
                br#"{"active": {"version": "1", "sha256": "../../../etc/passwd"}}"#,
                "active.sha256 \"../../../etc/passwd\" is not 64 lowercase hex digits",
            ),
        ] {
            // The model file is deleted at the first of these; put it back.
            fs::write(dir.join(format!("{}.tflite", v1.sha256)), bytes(1, 3000)).unwrap();
            fs::write(dir.join(RECORD), content).unwrap();
            let (store, rec) = open(state.path());
            assert!(
                matches!(&rec[0], Recovery::CorruptRecord { why: w, .. } if w.contains(why)),
                "{rec:?}"
            );
            assert!(rec[0]
                .to_string()
                .contains("starting without update history"));
            assert_eq!(store.record(), &Record::default());
            assert_eq!(store.active_path(), None);
            // Rewritten, so the next open is quiet.
            assert_eq!(on_disk(&store), Record::default());
            assert!(open(state.path()).1.is_empty());
        }
    }

    #[test]
    fn an_oversized_record_is_not_read() {
        let state = tempfile::tempdir().unwrap();
        let dir = state.path().join("models/har");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(RECORD), vec![b' '; MAX_RECORD_BYTES as usize + 1]).unwrap();
        let (_, rec) = open(state.path());
        assert!(
            matches!(&rec[0], Recovery::CorruptRecord { why, .. } if why.contains("more than a record ever takes")),
            "{rec:?}"
        );
    }

    #[test]
    fn a_record_with_missing_fields_reads_as_empty_ones() {
        let state = tempfile::tempdir().unwrap();
        let dir = state.path().join("models/har");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(RECORD), b"{}").unwrap();
        let (store, rec) = open(state.path());
        assert!(rec.is_empty(), "{rec:?}");
        assert_eq!(store.record(), &Record::default());
    }

    #[test]
    fn the_record_is_readable_json_with_every_field() {
        let state = tempfile::tempdir().unwrap();
        let (mut store, _) = open(state.path());
        let v1 = install(&mut store, "1.2.0", &bytes(1, 3000));
        let text = fs::read_to_string(store.dir().join(RECORD)).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["active"]["version"], "1.2.0");
        assert_eq!(v["active"]["sha256"], v1.sha256.as_str());
        assert_eq!(v["previous"], serde_json::Value::Null);
        assert_eq!(v["probation"]["since"], 1000.0);
        assert_eq!(v["refused"], serde_json::Value::Null);
        assert!(!store.dir().join(RECORD_TMP).exists());
    }

    #[test]
    fn a_record_that_cannot_be_written_names_the_file_and_changes_nothing() {
        let state = tempfile::tempdir().unwrap();
        let (mut store, _) = open(state.path());
        let v1 = install(&mut store, "1", &bytes(1, 3000));
        // A directory where the temporary file goes: its creation fails
        // (permissions cannot be relied on: tests may run as root).
        let tmp = store.dir().join(RECORD_TMP);
        fs::create_dir(&tmp).unwrap();
        let e = store.confirm().unwrap_err();
        assert!(
            e.to_string()
                .starts_with(&format!("cannot create {}: ", tmp.display())),
            "{e}"
        );
        assert!(store.record().probation.is_some());
        assert_eq!(on_disk(&store).active, Some(v1));
        fs::remove_dir(&tmp).unwrap();
        store.confirm().unwrap();
        assert!(on_disk(&store).probation.is_none());
    }

    #[test]
    fn a_failed_rename_is_worded_with_both_paths() {
        let state = tempfile::tempdir().unwrap();
        let (mut store, _) = open(state.path());
        install(&mut store, "1", &bytes(1, 3000));
        // record.json as a non-empty directory: rename over it fails.
        let record = store.dir().join(RECORD);
        fs::remove_file(&record).unwrap();
        fs::create_dir(&record).unwrap();
        fs::write(record.join("x"), b"").unwrap();
        let e = store.confirm().unwrap_err();
        let s = e.to_string();
        assert!(
            s.starts_with(&format!(
                "cannot rename {} to {}: ",
                store.dir().join(RECORD_TMP).display(),
                record.display()
            )),
            "{s}"
        );
        assert!(!store.dir().join(RECORD_TMP).exists());
    }

    #[test]
    fn stage_file_copies_checks_and_names_a_local_file() {
        let state = tempfile::tempdir().unwrap();
        let (mut store, _) = open(state.path());
        let content = bytes(7, 5000);
        let src = state.path().join("shipped.tflite");
        fs::write(&src, &content).unwrap();
        let sha = sha256_hex(&content);
        let path = store.stage_file(&src, &sha, 5000).unwrap();
        assert_eq!(path, store.file_path(&sha));
        assert_eq!(fs::read(&path).unwrap(), content);
        assert!(src.exists(), "the source stays");
        store
            .activate(
                Installed {
                    version: "7".into(),
                    sha256: sha.clone(),
                },
                1.0,
            )
            .unwrap();
        assert_eq!(store.active_path(), Some(path));
    }

    #[test]
    fn stage_file_refuses_wrong_size_wrong_hash_and_non_files() {
        let state = tempfile::tempdir().unwrap();
        let (mut store, _) = open(state.path());
        let content = bytes(7, 5000);
        let src = state.path().join("shipped.tflite");
        fs::write(&src, &content).unwrap();
        let sha = sha256_hex(&content);

        let e = store.stage_file(&src, &sha, 4999).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("{} is 5000 bytes; the manifest says 4999", src.display())
        );
        let other = sha256_hex(b"other");
        let e = store.stage_file(&src, &other, 5000).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "sha256 mismatch: the manifest says {other}, the 5000 bytes copied from {} hash to {sha}",
                src.display()
            )
        );
        let e = store.stage_file(state.path(), &sha, 5000).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("{} is not a regular file", state.path().display())
        );
        let gone = state.path().join("gone.tflite");
        let e = store.stage_file(&gone, &sha, 5000).unwrap_err();
        assert!(
            e.to_string()
                .starts_with(&format!("cannot read {}: ", gone.display())),
            "{e}"
        );
        assert!(matches!(
            store.stage_file(&src, "ABC", 5000).unwrap_err(),
            StoreError::BadSha256(_)
        ));
        // Nothing left behind.
        assert!(names(store.dir()).is_empty(), "{:?}", names(store.dir()));
    }

    #[test]
    fn a_download_with_a_bad_hash_leaves_nothing_and_changes_nothing() {
        let state = tempfile::tempdir().unwrap();
        let (mut store, _) = open(state.path());
        let content = bytes(1, 2048);
        let claimed = sha256_hex(b"something else");
        let g = Geometry::new(2048, 1024, 2).unwrap();
        let mut d = store.begin_download(&claimed, g).unwrap();
        d.write_chunk(0, &content[..1024]).unwrap();
        d.write_chunk(1, &content[1024..]).unwrap();
        let e = store.finish_download(d).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("sha256 mismatch: the manifest says "),
            "{e}"
        );
        assert!(names(store.dir()).is_empty(), "{:?}", names(store.dir()));
        assert!(matches!(
            store.begin_download("../../x", g).unwrap_err(),
            StoreError::BadSha256(_)
        ));
    }
}
