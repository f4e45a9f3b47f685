//! One model file arriving in chunks: written straight into
//! `{sha256}.part` at each chunk's offset, in whatever order and as often
//! as the broker delivers them (retained chunks come again after every
//! reconnect), then checked whole (size, sha256), made durable and renamed
//! to `{sha256}.tflite`. No tokio, no MQTT: the updates agent feeds it.
//!
//! Chunk `n` holds bytes `[n * chunk_size, min(size, (n + 1) * chunk_size))`,
//! so every chunk has a known length and a known place: a chunk cannot
//! overlap another or reach past `size`, and a wrong one is refused before
//! anything is written.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

/// Smallest and largest `chunk_size` a manifest may give: 1 KiB keeps the
/// chunk count (one retained message each) sane for any model, 1 MiB fits
/// the default packet limits of common brokers (Mosquitto allows 256 MiB,
/// but AWS IoT Core 128 KiB and many managed brokers 256 KiB to 1 MiB).
pub const MIN_CHUNK_SIZE: u64 = 1024;
/// The largest chunk fits every common broker's default packet limit with
/// room for the topic (AWS IoT Core 128 KB... up to EMQX's 1 MB; Mosquitto
/// has none by default); `publish-model` sends 64 KiB unless told.
pub const MAX_CHUNK_SIZE: u64 = 1024 * 1024;

/// How many missing chunk numbers a message lists before "and N more".
const MISSING_LISTED: usize = 10;

/// Bytes read at a time while hashing a file.
const HASH_BUFFER: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// The manifest's size, chunk_size and chunks do not agree; the
    /// manifest parser adds the key.
    #[error("{0}")]
    Geometry(String),
    #[error("chunk {chunk} is out of range: the manifest announces {chunks} chunks, numbered 0 to {}", .chunks - 1)]
    OutOfRange { chunk: u32, chunks: u32 },
    #[error("chunk {chunk} is {got} bytes; the manifest implies {expected} (size {size} in chunks of {chunk_size} bytes)")]
    Length {
        chunk: u32,
        got: usize,
        expected: u64,
        size: u64,
        chunk_size: u64,
    },
    #[error("received {received} of {chunks} chunks, missing {missing}")]
    Incomplete {
        received: u32,
        chunks: u32,
        /// The first missing numbers, as [`list_missing`] words them.
        missing: String,
    },
    #[error("{} is {got} bytes; the manifest says {expected}", .path.display())]
    Size {
        path: PathBuf,
        got: u64,
        expected: u64,
    },
    #[error(
        "sha256 mismatch: the manifest says {expected}, the {size} bytes {what} hash to {got}"
    )]
    Sha256 {
        expected: String,
        got: String,
        size: u64,
        /// "received", or "copied from /abs/file.tflite".
        what: String,
    },
    // `error`, not `source`, as in the outbox: the message already says it.
    #[error("cannot {action} {}: {error}", .path.display())]
    Io {
        /// e.g. "create", "write chunk 3 at offset 196608 of", "sync".
        action: String,
        path: PathBuf,
        error: io::Error,
    },
    #[error("cannot rename {} to {}: {error}", .from.display(), .to.display())]
    Rename {
        from: PathBuf,
        to: PathBuf,
        error: io::Error,
    },
}

fn io_error<'a>(
    action: impl Into<String>,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> DownloadError + 'a {
    let action = action.into();
    move |error| DownloadError::Io {
        action,
        path: path.to_path_buf(),
        error,
    }
}

/// A manifest's size split into chunks, checked: `chunks` is exactly
/// `ceil(size / chunk_size)` and `chunk_size` within
/// [`MIN_CHUNK_SIZE`]..=[`MAX_CHUNK_SIZE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    size: u64,
    chunk_size: u64,
    chunks: u32,
}

impl Geometry {
    /// The error says which number is off and what would fit; the caller
    /// adds the manifest's key.
    pub fn new(size: u64, chunk_size: u64, chunks: u32) -> Result<Geometry, DownloadError> {
        if size == 0 {
            return Err(DownloadError::Geometry(
                "size is 0: a model file has at least one byte".into(),
            ));
        }
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size) {
            return Err(DownloadError::Geometry(format!(
                "chunk_size {chunk_size} is outside {MIN_CHUNK_SIZE}..={MAX_CHUNK_SIZE} bytes (1 KiB to 1 MiB)"
            )));
        }
        let needed = size.div_ceil(chunk_size);
        if needed != u64::from(chunks) {
            return Err(DownloadError::Geometry(format!(
                "chunks is {chunks}, but {size} bytes in chunks of {chunk_size} bytes make {needed} (chunks = ceil(size / chunk_size))"
            )));
        }
        Ok(Geometry {
            size,
            chunk_size,
            chunks,
        })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn chunks(&self) -> u32 {
        self.chunks
    }

    /// Where chunk `n` starts in the file.
    pub fn offset(&self, n: u32) -> u64 {
        u64::from(n) * self.chunk_size
    }

    /// The length chunk `n` must have: `chunk_size`, except the last, which
    /// holds the rest (`size - (chunks - 1) * chunk_size`). 0 past the end.
    pub fn chunk_len(&self, n: u32) -> u64 {
        if n >= self.chunks {
            return 0;
        }
        (self.size - self.offset(n)).min(self.chunk_size)
    }
}

/// Where a download stands after a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Distinct chunks received so far, of `chunks`.
    pub received: u32,
    pub chunks: u32,
    /// Their bytes, of `size`.
    pub received_bytes: u64,
    pub size: u64,
    /// The chunk had come before (a retained chunk again after a
    /// reconnect): nothing was written.
    pub duplicate: bool,
}

impl Progress {
    /// Every chunk is in: time for `ModelStore::finish_download`.
    pub fn complete(&self) -> bool {
        self.received == self.chunks
    }

    /// 0.0..=100.0, by bytes.
    #[cfg(test)]
    pub fn percent(&self) -> f64 {
        if self.size == 0 {
            return 100.0;
        }
        self.received_bytes as f64 * 100.0 / self.size as f64
    }
}

/// A download in progress into `{sha256}.part`. Dropped unfinished (a
/// timeout, a newer manifest, a failed check) it deletes its part file; a
/// part file left by a crash is deleted when the store opens.
#[derive(Debug)]
pub struct Download {
    /// `{dir}/{sha256}.part`, open for writing.
    file: File,
    part: PathBuf,
    dir: PathBuf,
    sha256: String,
    geometry: Geometry,
    /// Bit `n` is set once chunk `n` is written.
    have: Vec<u64>,
    received: u32,
    received_bytes: u64,
}

impl Download {
    /// Creates (or truncates) `{dir}/{sha256}.part` at its full size. The
    /// store checks `sha256` is 64 lowercase hex digits first: it names
    /// the file.
    pub(super) fn create(
        dir: &Path,
        sha256: &str,
        geometry: Geometry,
    ) -> Result<Download, DownloadError> {
        let part = dir.join(format!("{sha256}.part"));
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&part)
            .map_err(io_error("create", &part))?;
        // Sparse: blocks are taken as chunks land, so a full disk shows up
        // at the chunk that does not fit, with its name.
        if let Err(e) = file.set_len(geometry.size) {
            let _ = fs::remove_file(&part);
            return Err(io_error(
                format!("set the length to {} bytes of", geometry.size),
                &part,
            )(e));
        }
        Ok(Download {
            file,
            part,
            dir: dir.to_path_buf(),
            sha256: sha256.to_string(),
            geometry,
            have: vec![0; (geometry.chunks as usize).div_ceil(64)],
            received: 0,
            received_bytes: 0,
        })
    }

    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    #[cfg(test)]
    pub fn part_path(&self) -> &Path {
        &self.part
    }

    fn has(&self, n: u32) -> bool {
        self.have[n as usize / 64] & (1 << (n % 64)) != 0
    }

    /// Writes chunk `n` at its offset, unless it came before. Refused
    /// before anything is written: a number past the last chunk, a length
    /// other than the manifest implies.
    pub fn write_chunk(&mut self, n: u32, bytes: &[u8]) -> Result<Progress, DownloadError> {
        let g = self.geometry;
        if n >= g.chunks {
            return Err(DownloadError::OutOfRange {
                chunk: n,
                chunks: g.chunks,
            });
        }
        let expected = g.chunk_len(n);
        if bytes.len() as u64 != expected {
            return Err(DownloadError::Length {
                chunk: n,
                got: bytes.len(),
                expected,
                size: g.size,
                chunk_size: g.chunk_size,
            });
        }
        if self.has(n) {
            return Ok(self.progress(true));
        }
        let offset = g.offset(n);
        self.file.write_all_at(bytes, offset).map_err(io_error(
            format!("write chunk {n} at offset {offset} of"),
            &self.part,
        ))?;
        self.have[n as usize / 64] |= 1 << (n % 64);
        self.received += 1;
        self.received_bytes += expected;
        Ok(self.progress(false))
    }

    fn progress(&self, duplicate: bool) -> Progress {
        Progress {
            received: self.received,
            chunks: self.geometry.chunks,
            received_bytes: self.received_bytes,
            size: self.geometry.size,
            duplicate,
        }
    }

    /// Distinct chunks received.
    pub fn received(&self) -> u32 {
        self.received
    }

    /// The chunk numbers not received yet, in order.
    pub fn missing(&self) -> Vec<u32> {
        (0..self.geometry.chunks)
            .filter(|&n| !self.has(n))
            .collect()
    }

    /// Why a download that waited `waited` without completing is given up:
    /// "received 3 of 5 chunks in 600 s, missing 2, 4".
    pub fn timed_out(&self, waited: Duration) -> String {
        format!(
            "received {} of {} chunks in {} s, missing {}",
            self.received,
            self.geometry.chunks,
            waited.as_secs(),
            list_missing(&self.missing())
        )
    }

    /// With every chunk in: fsync, hash the file as it is on disk, compare
    /// size and sha256 with the manifest, rename to `{sha256}.tflite` and
    /// fsync the directory. The part file is deleted on any failure. The
    /// store's `finish_download` is the way in (it keeps the staged file
    /// from being cleaned up before it is activated).
    pub(super) fn finish(mut self) -> Result<PathBuf, DownloadError> {
        if self.received < self.geometry.chunks {
            return Err(DownloadError::Incomplete {
                received: self.received,
                chunks: self.geometry.chunks,
                missing: list_missing(&self.missing()),
            });
        }
        // On any error `Drop` deletes the part file.
        self.file.sync_all().map_err(io_error("sync", &self.part))?;
        let sealed = seal(
            &self.part,
            &self.dir,
            &self.sha256,
            self.geometry.size,
            "received",
        );
        if sealed.is_ok() {
            // Renamed away: nothing for `Drop` to delete.
            self.part = PathBuf::new();
        }
        sealed
    }
}

impl Drop for Download {
    fn drop(&mut self) {
        if self.part.as_os_str().is_empty() {
            return;
        }
        match fs::remove_file(&self.part) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            // Deleted at the next start at the latest.
            Err(e) => log::warn!("cannot delete {}: {e}", self.part.display()),
        }
    }
}

/// "2, 4", or the first ten and "and 7 more".
pub fn list_missing(missing: &[u32]) -> String {
    let mut s = missing
        .iter()
        .take(MISSING_LISTED)
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    if missing.len() > MISSING_LISTED {
        s.push_str(&format!(" and {} more", missing.len() - MISSING_LISTED));
    }
    if s.is_empty() {
        s.push_str("none");
    }
    s
}

/// The size and lowercase-hex sha256 of a file, read through a fixed
/// buffer (a model may be far larger than the memory to spare).
pub fn sha256_file(path: &Path) -> io::Result<(u64, String)> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; HASH_BUFFER];
    let mut len = 0u64;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        len += n as u64;
    }
    let hex = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok((len, hex))
}

/// The end of every staging: `part` (already synced) is hashed as it is on
/// disk, checked against the manifest's `size` and `sha256`, renamed to
/// `{dir}/{sha256}.tflite` and the rename made durable. `what` says where
/// the bytes came from, for the mismatch message. The caller deletes
/// `part` on failure.
pub(super) fn seal(
    part: &Path,
    dir: &Path,
    sha256: &str,
    size: u64,
    what: &str,
) -> Result<PathBuf, DownloadError> {
    let (got_size, got_sha) = sha256_file(part).map_err(io_error("read", part))?;
    if got_size != size {
        return Err(DownloadError::Size {
            path: part.to_path_buf(),
            got: got_size,
            expected: size,
        });
    }
    if got_sha != sha256 {
        return Err(DownloadError::Sha256 {
            expected: sha256.to_string(),
            got: got_sha,
            size,
            what: what.to_string(),
        });
    }
    let target = dir.join(format!("{sha256}.tflite"));
    fs::rename(part, &target).map_err(|error| DownloadError::Rename {
        from: part.to_path_buf(),
        to: target.clone(),
        error,
    })?;
    sync_dir(dir).map_err(io_error("sync the directory", dir))?;
    Ok(target)
}

/// Makes the directory's entries (a rename, a new or deleted file) durable.
pub(super) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(bytes: &[u8]) -> String {
        crate::models::sha256_hex(bytes)
    }

    /// Bytes that differ at every offset, so a chunk at the wrong place
    /// changes the hash.
    fn model(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    fn chunk(bytes: &[u8], g: Geometry, n: u32) -> &[u8] {
        let from = g.offset(n) as usize;
        &bytes[from..from + g.chunk_len(n) as usize]
    }

    fn start(dir: &Path, bytes: &[u8], chunk_size: u64) -> Download {
        let chunks = (bytes.len() as u64).div_ceil(chunk_size) as u32;
        let g = Geometry::new(bytes.len() as u64, chunk_size, chunks).unwrap();
        Download::create(dir, &sha(bytes), g).unwrap()
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn geometry_accepts_exactly_ceil_of_size_over_chunk_size() {
        let g = Geometry::new(5000, 1024, 5).unwrap();
        assert_eq!(g.chunk_len(0), 1024);
        assert_eq!(g.chunk_len(3), 1024);
        assert_eq!(g.chunk_len(4), 5000 - 4 * 1024);
        assert_eq!(g.chunk_len(5), 0);
        assert_eq!(g.offset(4), 4096);
        // A size that is a multiple: the last chunk is full.
        let g = Geometry::new(4096, 1024, 4).unwrap();
        assert_eq!(g.chunk_len(3), 1024);
        // One byte, one chunk.
        assert_eq!(Geometry::new(1, 1024, 1).unwrap().chunk_len(0), 1);
        // The largest chunk size.
        assert!(Geometry::new(3 << 20, MAX_CHUNK_SIZE, 3).is_ok());
    }

    #[test]
    fn geometry_refuses_counts_sizes_and_chunk_sizes_that_disagree() {
        for (size, chunk_size, chunks, says) in [
            (
                5000,
                1024,
                4,
                "chunks is 4, but 5000 bytes in chunks of 1024 bytes make 5",
            ),
            (
                5000,
                1024,
                6,
                "chunks is 6, but 5000 bytes in chunks of 1024 bytes make 5",
            ),
            (4096, 1024, 5, "make 4"),
            (0, 1024, 0, "size is 0"),
            (5000, 1023, 5, "chunk_size 1023 is outside 1024..=1048576"),
            (
                5 << 20,
                MAX_CHUNK_SIZE + 1,
                5,
                "chunk_size 1048577 is outside",
            ),
            (5000, 0, 0, "chunk_size 0 is outside"),
        ] {
            let e = Geometry::new(size, chunk_size, chunks).unwrap_err();
            assert!(
                matches!(e, DownloadError::Geometry(_)) && e.to_string().contains(says),
                "{size} {chunk_size} {chunks}: {e}"
            );
        }
    }

    #[test]
    fn chunks_in_any_order_with_repeats_make_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = model(5000);
        let mut d = start(dir.path(), &bytes, 1024);
        let g = d.geometry();
        assert_eq!(names(dir.path()), [format!("{}.part", sha(&bytes))]);
        assert_eq!(fs::metadata(d.part_path()).unwrap().len(), 5000);
        let mut last = None;
        for n in [4, 1, 1, 0, 4, 3, 2, 0] {
            last = Some(d.write_chunk(n, chunk(&bytes, g, n)).unwrap());
        }
        let p = last.unwrap();
        assert!(p.complete() && p.duplicate, "{p:?}");
        assert_eq!((p.received, p.chunks, p.received_bytes), (5, 5, 5000));
        assert!(d.missing().is_empty());
        let path = d.finish().unwrap();
        assert_eq!(path, dir.path().join(format!("{}.tflite", sha(&bytes))));
        assert_eq!(fs::read(&path).unwrap(), bytes);
        assert_eq!(names(dir.path()), [format!("{}.tflite", sha(&bytes))]);
    }

    #[test]
    fn progress_counts_distinct_chunks_and_their_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = model(2500);
        let mut d = start(dir.path(), &bytes, 1024);
        let g = d.geometry();
        let p = d.write_chunk(2, chunk(&bytes, g, 2)).unwrap();
        assert_eq!((p.received, p.received_bytes, p.duplicate), (1, 452, false));
        assert!((p.percent() - 452.0 * 100.0 / 2500.0).abs() < 1e-9);
        let p = d.write_chunk(2, chunk(&bytes, g, 2)).unwrap();
        assert_eq!((p.received, p.received_bytes, p.duplicate), (1, 452, true));
        assert!(!p.complete());
        assert_eq!(d.received(), 1);
        assert_eq!(d.missing(), [0, 1]);
    }

    #[test]
    fn a_chunk_past_the_last_is_refused_with_the_range() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = model(3000);
        let mut d = start(dir.path(), &bytes, 1024);
        let e = d.write_chunk(3, &bytes[..1024]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "chunk 3 is out of range: the manifest announces 3 chunks, numbered 0 to 2"
        );
        assert_eq!(d.received(), 0);
    }

    #[test]
    fn a_chunk_of_the_wrong_length_is_refused_before_it_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = model(3000);
        let mut d = start(dir.path(), &bytes, 1024);
        let e = d.write_chunk(0, &bytes[..1000]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "chunk 0 is 1000 bytes; the manifest implies 1024 (size 3000 in chunks of 1024 bytes)"
        );
        // The last chunk is the rest, not a full chunk.
        let e = d.write_chunk(2, &bytes[..1024]).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("chunk 2 is 1024 bytes; the manifest implies 952"),
            "{e}"
        );
        assert_eq!(d.received(), 0);
        assert_eq!(d.missing(), [0, 1, 2]);
    }

    #[test]
    fn finishing_with_chunks_missing_names_them_and_deletes_the_part() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = model(5000);
        let mut d = start(dir.path(), &bytes, 1024);
        let g = d.geometry();
        for n in [0, 1, 3] {
            d.write_chunk(n, chunk(&bytes, g, n)).unwrap();
        }
        assert_eq!(
            d.timed_out(Duration::from_secs(600)),
            "received 3 of 5 chunks in 600 s, missing 2, 4"
        );
        let e = d.finish().unwrap_err();
        assert_eq!(e.to_string(), "received 3 of 5 chunks, missing 2, 4");
        assert!(names(dir.path()).is_empty(), "{:?}", names(dir.path()));
    }

    #[test]
    fn the_missing_list_stops_after_ten_numbers() {
        assert_eq!(list_missing(&[]), "none");
        assert_eq!(list_missing(&[7]), "7");
        let many: Vec<u32> = (0..25).collect();
        assert_eq!(
            list_missing(&many),
            "0, 1, 2, 3, 4, 5, 6, 7, 8, 9 and 15 more"
        );
        let ten: Vec<u32> = (0..10).collect();
        assert_eq!(list_missing(&ten), "0, 1, 2, 3, 4, 5, 6, 7, 8, 9");
    }

    #[test]
    fn bytes_that_hash_otherwise_are_refused_and_the_part_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = model(3000);
        let mut d = start(dir.path(), &bytes, 1024);
        let g = d.geometry();
        let mut tampered = bytes.clone();
        tampered[1500] ^= 1;
        for n in 0..3 {
            d.write_chunk(n, chunk(&tampered, g, n)).unwrap();
        }
        let e = d.finish().unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "sha256 mismatch: the manifest says {}, the 3000 bytes received hash to {}",
                sha(&bytes),
                sha(&tampered)
            )
        );
        assert!(names(dir.path()).is_empty(), "{:?}", names(dir.path()));
    }

    #[test]
    fn chunks_swapped_in_place_do_not_pass_the_hash() {
        // Same bytes, two chunks exchanged: lengths fit, the hash does not.
        let dir = tempfile::tempdir().unwrap();
        let bytes = model(3072);
        let mut d = start(dir.path(), &bytes, 1024);
        let g = d.geometry();
        d.write_chunk(0, chunk(&bytes, g, 1)).unwrap();
        d.write_chunk(1, chunk(&bytes, g, 0)).unwrap();
        d.write_chunk(2, chunk(&bytes, g, 2)).unwrap();
        assert!(matches!(
            d.finish().unwrap_err(),
            DownloadError::Sha256 { .. }
        ));
    }

    #[test]
    fn a_download_dropped_unfinished_deletes_its_part() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = model(3000);
        let mut d = start(dir.path(), &bytes, 1024);
        let g = d.geometry();
        d.write_chunk(1, chunk(&bytes, g, 1)).unwrap();
        drop(d);
        assert!(names(dir.path()).is_empty(), "{:?}", names(dir.path()));
    }

    #[test]
    fn a_new_download_of_the_same_file_starts_from_nothing() {
        // A part file left over (a crash) is truncated: its stale bytes
        // must not count, and the length is the manifest's.
        let dir = tempfile::tempdir().unwrap();
        let bytes = model(3000);
        let part = dir.path().join(format!("{}.part", sha(&bytes)));
        fs::write(&part, vec![0xAA; 9000]).unwrap();
        let mut d = start(dir.path(), &bytes, 1024);
        assert_eq!(fs::metadata(&part).unwrap().len(), 3000);
        assert_eq!(d.received(), 0);
        let g = d.geometry();
        for n in 0..3 {
            d.write_chunk(n, chunk(&bytes, g, n)).unwrap();
        }
        assert_eq!(fs::read(d.finish().unwrap()).unwrap(), bytes);
    }

    #[test]
    fn a_part_that_changed_size_on_disk_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = model(2048);
        let mut d = start(dir.path(), &bytes, 1024);
        let g = d.geometry();
        for n in 0..2 {
            d.write_chunk(n, chunk(&bytes, g, n)).unwrap();
        }
        // Something else appended to it.
        fs::OpenOptions::new()
            .append(true)
            .open(d.part_path())
            .and_then(|mut f| io::Write::write_all(&mut f, b"x"))
            .unwrap();
        let part = d.part_path().to_path_buf();
        let e = d.finish().unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("{} is 2049 bytes; the manifest says 2048", part.display())
        );
    }

    #[test]
    fn a_part_that_cannot_be_created_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("gone");
        let g = Geometry::new(10, 1024, 1).unwrap();
        let e = Download::create(&missing, &"a".repeat(64), g).unwrap_err();
        let s = e.to_string();
        assert!(
            s.starts_with(&format!(
                "cannot create {}/{}.part: ",
                missing.display(),
                "a".repeat(64)
            )),
            "{s}"
        );
    }

    #[test]
    fn sha256_of_a_file_is_streamed_and_matches_the_whole_buffer_hash() {
        let dir = tempfile::tempdir().unwrap();
        // Several buffers and a partial one.
        let bytes = model(HASH_BUFFER * 3 + 17);
        let path = dir.path().join("m");
        fs::write(&path, &bytes).unwrap();
        assert_eq!(
            sha256_file(&path).unwrap(),
            (bytes.len() as u64, sha(&bytes))
        );
        assert_eq!(
            sha256_file(&dir.path().join("none")).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
    }
}
