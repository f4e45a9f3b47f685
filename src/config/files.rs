//! Reading the files a config names (model and label files) without ever
//! reading more than a configured cap: only regular files (after following
//! symlinks), their size checked from metadata before reading and again
//! while reading. A model path of `/dev/zero` once read until memory ran out
//! (4 GiB in 7 s), at startup and on SIGHUP while serving.

use std::fs::{File, FileType, Metadata, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// A path from the config: relative ones are relative to `base`, the
/// config file's folder.
pub fn resolve(base: &Path, p: &str) -> PathBuf {
    let path = PathBuf::from(p);
    if path.is_absolute() {
        path
    } else {
        base.join(path)
    }
}

/// Caps on the files the config names (`[limits]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileLimits {
    /// `limits.max_model_bytes`: a model file may be at most this big.
    pub max_model_bytes: u64,
    /// `limits.max_labels_bytes`: a labels file may be at most this big.
    pub max_labels_bytes: u64,
}

impl Default for FileLimits {
    fn default() -> Self {
        FileLimits {
            max_model_bytes: DEFAULT_MAX_MODEL_BYTES,
            max_labels_bytes: DEFAULT_MAX_LABELS_BYTES,
        }
    }
}

/// 512 MiB. Models for edge CPUs are far smaller: the shipped ones are under
/// 2 MB, int8 vision models 3-70 MB, the largest float32 detectors people run
/// on a board (YOLOv8x) about 270 MB. The cap is not a memory budget but a
/// guard against a wrong path (a device, a disk image, a log file): reading
/// stops there instead of at the end of memory.
pub const DEFAULT_MAX_MODEL_BYTES: u64 = 512 * 1024 * 1024;
/// The smallest `limits.max_model_bytes`: no TFLite model is smaller than
/// 1 KiB (the smallest shipped one, a lookup table, is 1056 bytes).
pub const MIN_MAX_MODEL_BYTES: u64 = 1024;
/// The largest `limits.max_model_bytes`, 2 GiB: the whole file is held in
/// memory (and compiled once per worker), beyond any edge device's budget
/// and beyond what a 32-bit (armv7) process can address next to the runtime.
pub const MAX_MAX_MODEL_BYTES: u64 = 2 * 1024 * 1024 * 1024;
/// 1 MiB: 1000 ImageNet class names take 10 KB, the 21,843 of ImageNet-21k
/// about 400 KB.
pub const DEFAULT_MAX_LABELS_BYTES: u64 = 1024 * 1024;
/// The largest `limits.max_labels_bytes`, 64 MiB: labels are held in memory
/// and copied into every result's top_k.
pub const MAX_MAX_LABELS_BYTES: u64 = 64 * 1024 * 1024;

/// Why a file the config names was not read. The messages name the file
/// and the limit; the caller adds the key (`models[0].path`).
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot read {what} {}: {source}", .path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} {} is {kind}, not a regular file (symlinks are followed); only regular files are read", .path.display())]
    NotRegular {
        what: &'static str,
        path: PathBuf,
        kind: &'static str,
    },
    #[error("{what} {} is {size} bytes, above {limit} ({max} bytes)", .path.display())]
    TooLarge {
        what: &'static str,
        path: PathBuf,
        size: u64,
        limit: &'static str,
        max: u64,
    },
    #[error("{what} {} gave more than {limit} ({max} bytes) while it was read, although its size was {size} bytes (it grew, or its size is not what it holds)", .path.display())]
    Grew {
        what: &'static str,
        path: PathBuf,
        size: u64,
        limit: &'static str,
        max: u64,
    },
}

/// Which file a read is for, so messages say what it is and which limit
/// applies.
#[derive(Debug, Clone, Copy)]
pub struct FileRole {
    /// "model file", "labels file".
    pub what: &'static str,
    /// The config key of its cap, e.g. "limits.max_model_bytes".
    pub limit: &'static str,
}

pub const MODEL_FILE: FileRole = FileRole {
    what: "model file",
    limit: "limits.max_model_bytes",
};

pub const LABELS_FILE: FileRole = FileRole {
    what: "labels file",
    limit: "limits.max_labels_bytes",
};

/// What a non-regular file is, for messages.
fn kind(t: &FileType) -> &'static str {
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO (named pipe)"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// Regular and at most `max` bytes, from `meta`; its size if so.
fn check_metadata(
    meta: &Metadata,
    path: &Path,
    role: FileRole,
    max: u64,
) -> Result<u64, FileError> {
    if !meta.file_type().is_file() {
        return Err(FileError::NotRegular {
            what: role.what,
            path: path.to_path_buf(),
            kind: kind(&meta.file_type()),
        });
    }
    if meta.len() > max {
        return Err(FileError::TooLarge {
            what: role.what,
            path: path.to_path_buf(),
            size: meta.len(),
            limit: role.limit,
            max,
        });
    }
    Ok(meta.len())
}

/// Checks from metadata alone (following symlinks) that `path` is a regular
/// file of at most `max` bytes; its size if so. Reads nothing.
pub fn check_file(path: &Path, role: FileRole, max: u64) -> Result<u64, FileError> {
    let io = |source| FileError::Io {
        what: role.what,
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    check_metadata(&meta, path, role, max)
}

/// Reads `path` whole, if it is a regular file (after following symlinks) of
/// at most `max` bytes, and never reads more than `max` bytes in any case:
/// the size is checked from the path's metadata, again from the file that
/// was opened (the path may have changed in between), and the read itself
/// stops after `max + 1` bytes, so a file that grows, or whose size is not
/// what it holds (`/proc`), cannot exceed the cap either.
pub fn read_file(path: &Path, role: FileRole, max: u64) -> Result<Vec<u8>, FileError> {
    let io = |source| FileError::Io {
        what: role.what,
        path: path.to_path_buf(),
        source,
    };
    // Checked before opening: opening a FIFO for reading waits for a
    // writer, forever if none comes.
    check_file(path, role, max)?;
    // Non-blocking, in case the path became a FIFO since the check: the
    // open then returns at once and the check below refuses it. No effect
    // on regular files.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(io)?;
    let size = check_metadata(&file.metadata().map_err(io)?, path, role, max)?;
    read_at_most(file, path, role, max, size)
}

/// Reads `file` to its end, failing once it gives more than `max` bytes.
fn read_at_most(
    file: File,
    path: &Path,
    role: FileRole,
    max: u64,
    size: u64,
) -> Result<Vec<u8>, FileError> {
    // Sized from the metadata, but never beyond the cap.
    let mut bytes = Vec::with_capacity(usize::try_from(size.min(max)).unwrap_or(0));
    file.take(max.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|source| FileError::Io {
            what: role.what,
            path: path.to_path_buf(),
            source,
        })?;
    if bytes.len() as u64 > max {
        return Err(FileError::Grew {
            what: role.what,
            path: path.to_path_buf(),
            size,
            limit: role.limit,
            max,
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_regular_file_within_the_cap_is_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.tflite");
        std::fs::write(&p, b"0123456789").unwrap();
        assert_eq!(read_file(&p, MODEL_FILE, 10).unwrap(), b"0123456789");
        assert_eq!(check_file(&p, MODEL_FILE, 10).unwrap(), 10);
    }

    #[test]
    fn a_file_above_the_cap_is_refused_from_its_size() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big.tflite");
        let f = File::create(&p).unwrap();
        // Sparse: nothing is written, the size alone must refuse it.
        f.set_len(1 << 40).unwrap();
        let e = read_file(&p, MODEL_FILE, 1024).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "model file {} is 1099511627776 bytes, above limits.max_model_bytes (1024 bytes)",
                p.display()
            )
        );
    }

    #[test]
    fn devices_directories_and_fifos_are_refused_without_reading() {
        let dir = tempfile::tempdir().unwrap();
        let e = read_file(Path::new("/dev/zero"), MODEL_FILE, 1024)
            .unwrap_err()
            .to_string();
        assert!(e.contains("/dev/zero is a character device"), "{e}");
        let e = read_file(dir.path(), LABELS_FILE, 1024)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("labels file ") && e.contains("is a directory"),
            "{e}"
        );
        let fifo = dir.path().join("fifo");
        let status = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(status.success());
        let e = read_file(&fifo, MODEL_FILE, 1024).unwrap_err().to_string();
        assert!(e.contains("is a FIFO (named pipe)"), "{e}");
        // Through a symlink: what it points to counts.
        let link = dir.path().join("link.tflite");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        let e = read_file(&link, MODEL_FILE, 1024).unwrap_err().to_string();
        assert!(e.contains("is a character device"), "{e}");
    }

    #[test]
    fn a_file_that_holds_more_than_its_size_says_stops_at_the_cap() {
        // /proc files are regular with size 0, whatever they hold.
        let e = read_file(Path::new("/proc/self/maps"), MODEL_FILE, 16)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("gave more than limits.max_model_bytes (16 bytes)")
                && e.contains("its size was 0 bytes"),
            "{e}"
        );
    }

    #[test]
    fn a_missing_file_says_it_cannot_be_read() {
        let e = read_file(Path::new("/nonexistent/m.tflite"), MODEL_FILE, 16)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("cannot read model file /nonexistent/m.tflite: "),
            "{e}"
        );
    }
}
