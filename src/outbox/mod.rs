//! The disk outbox: results and errors that cannot be published wait here,
//! crash-safe, until the output link takes them. A segmented append-only
//! log with one owner: synchronous, no threads, no locks.
//!
//! Layout: `state_dir/outbox/` (mode 0700) holds segment files named by the
//! sequence number of their first record (`00000000000000000042.seg`);
//! records are framed as `frame.rs` says (length, CRC-32, body). A record's
//! sequence number is its segment's name plus its position in it.
//!
//! - `append` writes a whole batch, then makes it durable with one
//!   `fdatasync` of the segment (plus one `fsync` of the directory when a
//!   segment file was created): group commit.
//! - `release(up_to)` deletes every segment whose records are all below
//!   `up_to`. A partly released segment is never rewritten, so after a
//!   crash its released records are replayed again: duplicates, never loss.
//! - `open` truncates a torn tail (a crash mid-write) of the last segment at
//!   its first incomplete or bad frame; a bad frame elsewhere loses the rest
//!   of that segment only. A corrupt outbox never stops the daemon.
//! - Sequence numbers keep rising across restarts: when every record is
//!   released, an empty segment named by the next sequence number replaces
//!   the last one, so the name carries the number (no separate file).
//!
//! Why not redb, sled or a queue file: each byte here is written once, a
//! batch costs one sync, and space comes back by deleting whole files,
//! never by rewriting, which is what an SD card wears least under. A
//! copy-on-write B-tree (redb) writes every page a commit touches anew
//! (leaf, branches, allocator state, header; a second sync per commit with
//! two-phase commit), and removing records is a write too. Measured once
//! on this machine (ext4 on a virtual disk, 600-byte records, bytes the
//! process sent to the disk per byte stored), this log vs redb 2.6 with
//! `Durability::Immediate`: one record per commit 7.8 vs 40.9 (a sync
//! writes the whole 4 KiB page holding the tail), batches of 64 1.10 vs
//! 2.42; removing them again, 64 at a time, wrote another 0.69 in redb and
//! nothing here. Throughput: one record per append 4,300-5,100/s, batches
//! of 64 about 210,000/s (the sync dominates; on an SD card, whose syncs
//! take milliseconds, the gap is wider). Reading back: about 900,000
//! records/s; reopening 64,000 records (38 MB) takes 21 ms. sled's stable
//! line (0.34) is no longer developed; a ring-buffer queue file
//! (queue-file) rewrites its header in place on every add and remove.

mod frame;
mod ranges;
mod segment;
mod service;
#[cfg(test)]
mod tests;

pub use frame::Record;
pub use service::OutboxService;

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::config::{OnFull, OutboxSettings};
use ranges::SeqRanges;
use segment::{Next, Reader};

/// Smallest and largest segment: `max_bytes / 16` within these. 16
/// segments bound what one `drop_oldest` step deletes to 1/16 of the
/// outbox; 64 KiB keeps small outboxes from churning files, 16 MiB keeps a
/// rescan after a replay restarts short.
const MIN_SEGMENT_BYTES: u64 = 64 * 1024;
const MAX_SEGMENT_BYTES: u64 = 16 * 1024 * 1024;
/// An append flushes its buffer to the file past this many bytes, so a huge
/// batch does not sit in memory twice.
const WRITE_BUFFER_BYTES: usize = 1024 * 1024;
/// Held while a process has the outbox open.
const LOCK_FILE: &str = "lock";

/// Takes the outbox's lock, or says who may hold it.
fn lock(dir: &Path) -> Result<File, OutboxError> {
    use std::os::fd::AsRawFd;
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(io_error("create", &path))?;
    // SAFETY: flock on a descriptor this function owns; no memory involved.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = io::Error::last_os_error();
        return Err(if e.kind() == io::ErrorKind::WouldBlock {
            OutboxError::InUse {
                dir: dir.to_path_buf(),
                lock: path,
            }
        } else {
            io_error("lock", &path)(e)
        });
    }
    Ok(file)
}

/// The first sequence number of a new outbox.
const FIRST_SEQ: u64 = 1;

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    // `error`, not `source`: the message already says it, and a source
    // would be said again by every error chain that prints causes.
    #[error("cannot {action} {}: {error}", .path.display())]
    Io {
        /// e.g. "write", "create", "read", "delete", "sync".
        action: &'static str,
        path: PathBuf,
        error: io::Error,
    },
    #[error("{} is not a directory; the outbox needs one there", .path.display())]
    NotADirectory { path: PathBuf },
    #[error("{} is in use by another edge-infer process (its lock file {} is held): two daemons must not share a state_dir", .dir.display(), .lock.display())]
    InUse { dir: PathBuf, lock: PathBuf },
}

fn io_error<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> OutboxError + 'a {
    move |error| OutboxError::Io {
        action,
        path: path.to_path_buf(),
        error,
    }
}

/// What one `append` did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Appended {
    /// Per record given, in order: its sequence number, committed, or None
    /// when it was not stored (rejected, or pushed out again by a later
    /// record of the same call under `drop_oldest`).
    pub seqs: Vec<Option<u64>>,
    /// How many were stored (the `Some`s of `seqs`). `stored + rejected`
    /// falls short of the records given only when later records of the
    /// same call pushed earlier ones out again (counted in `dropped`).
    pub stored: usize,
    /// New records refused: no room with `on_full = reject_new`, or too
    /// large for the outbox (above `max_bytes` alone, or above the format's
    /// limits) in either mode.
    pub rejected: usize,
    /// Records deleted to make room (`drop_oldest`): all the records not
    /// yet released of whole oldest segments.
    pub dropped: u64,
}

/// What `open` found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Recovered {
    pub segments: usize,
    pub records: u64,
    /// Bytes of all segment files after recovery.
    pub bytes: u64,
    /// Cut from the end of the last segment: a write torn by a crash (the
    /// records in it were never reported committed).
    pub torn_bytes_truncated: u64,
    /// Segments with a bad frame other than a torn tail of the last one
    /// (or a torn tail that could not be cut): their records before it are
    /// kept, the rest is skipped.
    pub corrupt: Vec<Corrupt>,
    /// Files in the directory that are not segments; left alone.
    pub ignored: Vec<PathBuf>,
    /// Segment files that could not be read, with the reason; left alone.
    pub unreadable: Vec<(PathBuf, String)>,
}

/// A segment whose records stop before its end.
#[derive(Debug, Clone, PartialEq)]
pub struct Corrupt {
    pub path: PathBuf,
    /// Where the bad frame starts.
    pub offset: u64,
    /// Bytes after it, skipped.
    pub skipped_bytes: u64,
    pub reason: &'static str,
}

/// Counts since `open`, plus what is stored now.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OutboxStats {
    /// Records stored and neither released nor known expired.
    pub records: u64,
    /// Bytes of all segment files (what `max_bytes` bounds).
    pub bytes: u64,
    /// Creation time of the oldest record not yet released, to the
    /// segment: after a partial release it may be a released record's.
    pub oldest_created: Option<f64>,
    /// Written (including any a later record of the same append pushed out
    /// again): `appended = records + delivered + dropped_full + expired`
    /// short of what bad frames lost.
    pub appended: u64,
    /// Released: confirmed delivered.
    pub delivered: u64,
    /// Deleted unsent to make room (`drop_oldest`).
    pub dropped_full: u64,
    /// Refused for lack of room (`reject_new`).
    pub rejected_full: u64,
    /// Refused as larger than the whole outbox or the format allows.
    pub rejected_too_large: u64,
    /// Dropped unsent for being older than `max_age`.
    pub expired: u64,
    /// Cut from a torn last segment at open.
    pub torn_recovered_bytes: u64,
    /// Skipped after a bad frame, at open or when reading.
    pub corrupt_skipped_bytes: u64,
}

/// One segment file, as known in memory.
#[derive(Debug, Clone)]
struct Segment {
    /// Sequence number of its first record (its name).
    first_seq: u64,
    path: PathBuf,
    /// Good records, all before `end`.
    records: u64,
    /// End of the last good record: reads stop here.
    end: u64,
    /// Size on disk, counted against `max_bytes`; above `end` only when a
    /// bad tail was skipped.
    disk_bytes: u64,
    /// Creation times of its records (infinite when it has none).
    oldest: f64,
    newest: f64,
}

impl Segment {
    fn empty(dir: &Path, first_seq: u64) -> Segment {
        Segment {
            first_seq,
            path: dir.join(segment::file_name(first_seq)),
            records: 0,
            end: 0,
            disk_bytes: 0,
            oldest: f64::INFINITY,
            newest: f64::NEG_INFINITY,
        }
    }

    /// One past its last record's sequence number.
    fn end_seq(&self) -> u64 {
        self.first_seq + self.records
    }
}

/// Where sequential reads continue: the segment, and the offset of the
/// record with sequence number `seq`.
struct Cursor {
    segment_first_seq: u64,
    reader: Reader,
    offset: u64,
    seq: u64,
}

/// What a read found at the cursor.
enum Got {
    Record(Record, u64),
    Expired(u64),
    /// The record would take the batch past its byte limit.
    Full,
    Bad,
}

/// The outbox. One owner; every call is synchronous and does its own I/O.
pub struct Outbox {
    dir: PathBuf,
    /// Held (flock) for as long as the outbox is open: a second daemon on
    /// the same state_dir would interleave its writes with ours.
    _lock: File,
    settings: OutboxSettings,
    /// `max_bytes / 16` within [64 KiB, 16 MiB]: a segment is closed when
    /// the next record would take it past this.
    segment_bytes: u64,
    /// Oldest first; the last is the one appended to. Never empty once an
    /// append or a release has run (the last may hold no records).
    segments: VecDeque<Segment>,
    /// The last segment, open for writing; None until needed.
    writer: Option<File>,
    /// The last segment as last made durable, for undoing a failed append.
    committed: Option<Segment>,
    /// Frames of the running append not yet written to `writer`.
    wbuf: Vec<u8>,
    /// The next append must start a new segment: the last one may hold
    /// garbage after its `end` that could not be cut.
    must_roll: bool,
    next_seq: u64,
    /// Everything below is released, dropped or expired.
    first_seq: u64,
    /// Sum of `disk_bytes`.
    total_bytes: u64,
    cursor: Option<Cursor>,
    /// Skipped by reads as expired, still on disk.
    expired_unreleased: SeqRanges,
    stats: OutboxStats,
    /// Tests: the how-manieth write from now fails (`flush`).
    #[cfg(test)]
    fail_write: Option<u32>,
    /// Tests: how often a read had to open a segment and start at its
    /// beginning.
    #[cfg(test)]
    cursor_opens: u64,
}

impl Outbox {
    /// Opens (creating it if missing) the outbox in `dir` and recovers what
    /// it holds. Only a directory that cannot be created or listed is an
    /// error; bad segments are reported in `Recovered` and the rest used.
    pub fn open(dir: &Path, settings: OutboxSettings) -> Result<(Outbox, Recovered), OutboxError> {
        match fs::metadata(dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(OutboxError::NotADirectory {
                    path: dir.to_path_buf(),
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io_error("create", dir))?,
            Err(e) => return Err(io_error("read", dir)(e)),
        }
        let lock = lock(dir)?;
        let mut recovered = Recovered::default();
        let mut found = Vec::new();
        for entry in fs::read_dir(dir).map_err(io_error("read", dir))? {
            let entry = entry.map_err(io_error("read", dir))?;
            let is_file = entry.file_type().is_ok_and(|t| t.is_file());
            match segment::parse_name(&entry.file_name()) {
                Some(seq) if is_file => found.push((seq, entry.path())),
                _ if entry.file_name() == LOCK_FILE => {}
                _ => recovered.ignored.push(entry.path()),
            }
        }
        found.sort();
        recovered.ignored.sort();

        let mut scanned = Vec::new();
        let mut next_seq = FIRST_SEQ;
        for (first_seq, path) in found {
            match segment::scan(&path) {
                Ok(scan) => scanned.push((first_seq, path, scan)),
                Err(e) => {
                    // Past its name, so no new segment ever takes it.
                    next_seq = next_seq.max(first_seq.saturating_add(1));
                    recovered.unreadable.push((path, e.to_string()));
                }
            }
        }

        let mut outbox = Outbox {
            dir: dir.to_path_buf(),
            _lock: lock,
            segment_bytes: (settings.max_bytes / 16).clamp(MIN_SEGMENT_BYTES, MAX_SEGMENT_BYTES),
            settings,
            segments: VecDeque::new(),
            writer: None,
            committed: None,
            wbuf: Vec::new(),
            must_roll: false,
            next_seq,
            first_seq: FIRST_SEQ,
            total_bytes: 0,
            cursor: None,
            expired_unreleased: SeqRanges::default(),
            stats: OutboxStats::default(),
            #[cfg(test)]
            fail_write: None,
            #[cfg(test)]
            cursor_opens: 0,
        };
        let count = scanned.len();
        for (i, (first_seq, path, mut scan)) in scanned.into_iter().enumerate() {
            let last = i + 1 == count;
            if let Some(problem) = scan.problem {
                let cut = last
                    && OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .and_then(|f| {
                            f.set_len(scan.valid_end)?;
                            f.sync_data()
                        })
                        .is_ok();
                let skipped = scan.file_len - scan.valid_end;
                if cut {
                    recovered.torn_bytes_truncated += skipped;
                    scan.file_len = scan.valid_end;
                } else {
                    // A bad tail that stays: never append after it.
                    outbox.must_roll |= last;
                    outbox.stats.corrupt_skipped_bytes += skipped;
                    recovered.corrupt.push(Corrupt {
                        path: path.clone(),
                        offset: scan.valid_end,
                        skipped_bytes: skipped,
                        reason: problem,
                    });
                }
            }
            outbox.segments.push_back(Segment {
                first_seq,
                path,
                records: scan.records,
                end: scan.valid_end,
                disk_bytes: scan.file_len,
                oldest: scan.oldest,
                newest: scan.newest,
            });
        }
        outbox.clamp_overlaps();
        if let Some(last) = outbox.segments.back() {
            outbox.next_seq = outbox.next_seq.max(last.end_seq());
        }
        if let Some(first) = outbox.segments.front() {
            outbox.first_seq = first.first_seq;
        } else {
            outbox.first_seq = outbox.next_seq;
        }
        outbox.total_bytes = outbox.segments.iter().map(|s| s.disk_bytes).sum();
        outbox.stats.torn_recovered_bytes = recovered.torn_bytes_truncated;
        recovered.segments = outbox.segments.len();
        recovered.records = outbox.segments.iter().map(|s| s.records).sum();
        recovered.bytes = outbox.total_bytes;
        Ok((outbox, recovered))
    }

    /// A segment whose records would run into the next segment's numbers
    /// keeps only those below it: the next segment was started after this
    /// one was made durable, so the overlap can only come from a disk that
    /// lost writes, and the later segment is the one written since.
    fn clamp_overlaps(&mut self) {
        for i in 1..self.segments.len() {
            let next_first = self.segments[i].first_seq;
            let seg = &self.segments[i - 1];
            if seg.end_seq() <= next_first {
                continue;
            }
            let keep = next_first - seg.first_seq;
            let mut kept = (0, 0);
            if let Ok(mut r) = Reader::open(&seg.path) {
                while kept.0 < keep {
                    match r.skip(kept.1, seg.end) {
                        Ok(Next::Frame { next, .. }) => kept = (kept.0 + 1, next),
                        _ => break,
                    }
                }
            }
            let seg = &mut self.segments[i - 1];
            self.stats.corrupt_skipped_bytes += seg.end - kept.1;
            (seg.records, seg.end) = kept;
        }
    }

    /// Stores `records` and makes them durable (one `fdatasync`). A record
    /// that does not fit is rejected (`reject_new`), or whole oldest
    /// segments are deleted until it does (`drop_oldest`); one larger than
    /// `max_bytes` is rejected either way.
    ///
    /// On an error none of the records is known stored; some may be, and
    /// will then be read again (at least once, never lost).
    pub fn append(&mut self, records: &[Record]) -> Result<Appended, OutboxError> {
        let mut done = Appended {
            seqs: Vec::with_capacity(records.len()),
            ..Appended::default()
        };
        self.wbuf.clear();
        self.committed = self.segments.back().cloned();
        match self.append_all(records, &mut done) {
            Ok(()) => {}
            Err(e) => {
                self.undo_append();
                return Err(e);
            }
        }
        self.stats.appended += done.seqs.iter().flatten().count() as u64;
        // Records of this call pushed out by later ones of it.
        for seq in &mut done.seqs {
            if seq.is_some_and(|s| s < self.first_seq) {
                *seq = None;
            }
        }
        done.stored = done.seqs.iter().flatten().count();
        Ok(done)
    }

    fn append_all(&mut self, records: &[Record], done: &mut Appended) -> Result<(), OutboxError> {
        let cutoff = crate::time::unix_now() - self.settings.max_age.as_secs_f64();
        let mut created_file = false;
        for record in records {
            let len = match record.frame_len() {
                Some(len) if len as u64 <= self.settings.max_bytes => len as u64,
                _ => {
                    done.seqs.push(None);
                    done.rejected += 1;
                    self.stats.rejected_too_large += 1;
                    continue;
                }
            };
            if !self.make_room(len, cutoff, done)? {
                done.seqs.push(None);
                done.rejected += 1;
                self.stats.rejected_full += 1;
                continue;
            }
            created_file |= self.prepare_segment(len)?;
            frame::encode(record, &mut self.wbuf);
            let seg = self
                .segments
                .back_mut()
                .expect("prepare_segment leaves one");
            seg.records += 1;
            seg.end += len;
            seg.disk_bytes += len;
            seg.oldest = seg.oldest.min(record.created);
            seg.newest = seg.newest.max(record.created);
            self.total_bytes += len;
            done.seqs.push(Some(self.next_seq));
            self.next_seq += 1;
            if self.wbuf.len() >= WRITE_BUFFER_BYTES {
                self.flush()?;
            }
        }
        self.sync()?;
        if created_file {
            self.sync_dir()?;
        }
        Ok(())
    }

    /// Deletes what must go for `len` more bytes to fit: expired segments
    /// first, then (`drop_oldest`) the oldest. False when it cannot fit.
    fn make_room(
        &mut self,
        len: u64,
        cutoff: f64,
        done: &mut Appended,
    ) -> Result<bool, OutboxError> {
        while self.total_bytes + len > self.settings.max_bytes {
            let Some(front) = self.segments.front() else {
                return Ok(false);
            };
            if front.newest < cutoff || front.end_seq() <= self.first_seq {
                let gone = self.delete_front()?;
                self.stats.expired += gone;
            } else if self.settings.on_full == OnFull::DropOldest {
                // Counted at once: gone even if this append fails later.
                let gone = self.delete_front()?;
                done.dropped += gone;
                self.stats.dropped_full += gone;
            } else {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Makes the last segment the place for a frame of `len` bytes: opens
    /// it, or starts a new one when it is full. True when a file was
    /// created.
    fn prepare_segment(&mut self, len: u64) -> Result<bool, OutboxError> {
        let roll = match self.segments.back() {
            None => true,
            Some(last) => {
                self.must_roll
                    // Numbers were skipped (records lost to a bad frame, or
                    // an unreadable file's name): positions would lie.
                    || last.end_seq() != self.next_seq
                    || (last.records > 0 && last.end + len > self.segment_bytes)
            }
        };
        if roll {
            // The full segment is made durable before the next one exists,
            // so only the last segment can ever be torn.
            self.sync()?;
            self.create_last()?;
            self.committed = self.segments.back().cloned();
            return Ok(true);
        }
        if self.writer.is_none() {
            let last = self.segments.back().expect("checked above");
            let file = OpenOptions::new()
                .write(true)
                .open(&last.path)
                .map_err(io_error("open", &last.path))?;
            self.writer = Some(file);
        }
        Ok(false)
    }

    /// Starts a new, empty last segment named `next_seq`. A last segment
    /// of that name holds no records (only garbage that could not be cut):
    /// it is emptied and takes its place.
    fn create_last(&mut self) -> Result<(), OutboxError> {
        if self
            .segments
            .back()
            .is_some_and(|s| s.first_seq == self.next_seq)
        {
            let old = self.segments.pop_back().expect("checked");
            self.total_bytes -= old.disk_bytes;
            self.cursor = None;
        }
        let seg = Segment::empty(&self.dir, self.next_seq);
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&seg.path)
            .map_err(io_error("create", &seg.path))?;
        self.writer = Some(file);
        self.wbuf.clear();
        self.must_roll = false;
        self.segments.push_back(seg);
        Ok(())
    }

    /// Writes the buffered frames to the last segment.
    fn flush(&mut self) -> Result<(), OutboxError> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let (Some(seg), Some(file)) = (self.segments.back(), &self.writer) else {
            return Ok(());
        };
        let at = seg.end - self.wbuf.len() as u64;
        #[cfg(test)]
        if let Some(n) = self.fail_write {
            self.fail_write = n.checked_sub(1).filter(|&n| n > 0);
            if n <= 1 {
                // Half written, as a full disk leaves it.
                let _ = file.write_all_at(&self.wbuf[..self.wbuf.len() / 2], at);
                return Err(io_error("write", &seg.path)(io::Error::from_raw_os_error(
                    libc::ENOSPC,
                )));
            }
        }
        file.write_all_at(&self.wbuf, at)
            .map_err(io_error("write", &seg.path))?;
        self.wbuf.clear();
        Ok(())
    }

    /// Flushes and makes the last segment durable, if anything was written.
    fn sync(&mut self) -> Result<(), OutboxError> {
        self.flush()?;
        let (Some(seg), Some(file)) = (self.segments.back(), &self.writer) else {
            return Ok(());
        };
        let unsynced = self
            .committed
            .as_ref()
            .is_none_or(|c| c.first_seq != seg.first_seq || c.end != seg.end);
        if unsynced {
            file.sync_data().map_err(io_error("sync", &seg.path))?;
            self.committed = Some(seg.clone());
        }
        Ok(())
    }

    fn sync_dir(&self) -> Result<(), OutboxError> {
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_error("sync", &self.dir))
    }

    /// After a failed append: the last segment goes back to what was last
    /// made durable, on disk and in memory.
    fn undo_append(&mut self) {
        self.wbuf.clear();
        let Some(last) = self.segments.back_mut() else {
            return;
        };
        let committed = match self.committed.take() {
            Some(c) if c.first_seq == last.first_seq => c,
            // Created in this call and never made durable.
            _ => Segment::empty(&self.dir, last.first_seq),
        };
        let cut = self
            .writer
            .as_ref()
            .is_some_and(|f| f.set_len(committed.end).is_ok());
        // Whatever the cut left there stays out of reads and out of the
        // next appends' way.
        let on_disk = if cut {
            committed.end
        } else {
            self.must_roll = true;
            fs::metadata(&last.path).map_or(last.disk_bytes, |m| m.len())
        };
        self.total_bytes = self.total_bytes - last.disk_bytes + on_disk;
        *last = Segment {
            disk_bytes: on_disk,
            ..committed
        };
        self.next_seq = last.end_seq();
        self.writer = None;
        self.cursor = None;
    }

    /// Up to `max_records` records with sequence numbers from `from` on,
    /// oldest first, together at most `max_bytes` bytes on disk (but at
    /// least one record when there is one). Records older than `max_age`
    /// are skipped and counted as expired; the oldest segments, once all
    /// their records are that old, are deleted.
    ///
    /// Sequential calls (`from` one past the last record returned) continue
    /// where the last stopped; an earlier `from` rescans its segment.
    pub fn read(
        &mut self,
        from: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<(u64, Record)>, OutboxError> {
        let cutoff = crate::time::unix_now() - self.settings.max_age.as_secs_f64();
        self.expire_front(cutoff)?;
        let mut out = Vec::new();
        let mut bytes = 0u64;
        let mut seq = from.max(self.first_seq);
        while out.len() < max_records {
            // The segment holding `seq`, or the next one after a gap.
            let i = self.segments.partition_point(|s| s.end_seq() <= seq);
            let Some(seg) = self.segments.get(i) else {
                break;
            };
            seq = seq.max(seg.first_seq);
            let end = seg.end;
            let mut cursor = self.cursor_at(i, seq)?;
            let offset = cursor.offset;
            let got = match cursor.reader.frame(offset, end) {
                Ok(Next::Frame { body, crc, next }) => {
                    if !out.is_empty() && bytes + (next - offset) > max_bytes as u64 {
                        Got::Full
                    } else {
                        match frame::check(body, crc) {
                            Ok(body) if body.created < cutoff => Got::Expired(next),
                            Ok(body) => Got::Record(body.to_record(), next),
                            Err(_) => Got::Bad,
                        }
                    }
                }
                // `seq` is below the segment's end, so a frame must be there.
                Ok(_) => Got::Bad,
                Err(e) => return Err(io_error("read", &self.segments[i].path)(e)),
            };
            let at_seq = cursor.seq;
            match got {
                Got::Full => {
                    self.cursor = Some(cursor);
                    break;
                }
                Got::Bad => {
                    self.cut_segment(i, offset, at_seq);
                    continue;
                }
                Got::Expired(next) => {
                    if self.expired_unreleased.insert(at_seq) {
                        self.stats.expired += 1;
                    }
                    (cursor.offset, cursor.seq) = (next, at_seq + 1);
                }
                Got::Record(record, next) => {
                    bytes += next - offset;
                    out.push((at_seq, record));
                    (cursor.offset, cursor.seq) = (next, at_seq + 1);
                }
            }
            seq = at_seq + 1;
            self.cursor = Some(cursor);
        }
        Ok(out)
    }

    /// The cursor, taken out, at record `seq` of segment `i`: moved forward
    /// from where it was when it can, else from the segment's start.
    fn cursor_at(&mut self, i: usize, seq: u64) -> Result<Cursor, OutboxError> {
        let seg = &self.segments[i];
        let mut cursor = match self.cursor.take() {
            Some(c) if c.segment_first_seq == seg.first_seq && c.seq <= seq => c,
            _ => {
                #[cfg(test)]
                {
                    self.cursor_opens += 1;
                }
                Cursor {
                    segment_first_seq: seg.first_seq,
                    reader: Reader::open(&seg.path).map_err(io_error("read", &seg.path))?,
                    offset: 0,
                    seq: seg.first_seq,
                }
            }
        };
        while cursor.seq < seq {
            match cursor
                .reader
                .skip(cursor.offset, seg.end)
                .map_err(io_error("read", &seg.path))?
            {
                Next::Frame { next, .. } => {
                    cursor.offset = next;
                    cursor.seq += 1;
                }
                // Checked at open or written since: cannot happen unless
                // the file changed under us; the read that follows sees it.
                _ => break,
            }
        }
        Ok(cursor)
    }

    /// A bad frame found by a read at `offset` (record `seq`) of segment
    /// `i`: the rest of that segment is lost, the rest of the outbox kept.
    fn cut_segment(&mut self, i: usize, offset: u64, seq: u64) {
        let last = i + 1 == self.segments.len();
        let seg = &mut self.segments[i];
        self.stats.corrupt_skipped_bytes += seg.end - offset;
        seg.end = offset;
        seg.records = seq - seg.first_seq;
        if last {
            self.must_roll = true;
            // The numbers of the lost records are not given out again.
        }
        self.cursor = None;
    }

    /// Deletes the oldest segments while all their records are older than
    /// `cutoff` (or released).
    fn expire_front(&mut self, cutoff: f64) -> Result<(), OutboxError> {
        while let Some(front) = self.segments.front() {
            let spent = front.end_seq() <= self.first_seq;
            let expired = front.records > 0 && front.newest < cutoff;
            let marker = self.segments.len() == 1 && front.records == 0;
            if marker || !(spent || expired) {
                break;
            }
            let gone = self.delete_front()?;
            self.stats.expired += gone;
        }
        Ok(())
    }

    /// Deletes the oldest segment and returns how many of its records were
    /// neither released nor already counted as expired. The last segment
    /// is first replaced by an empty one named `next_seq`, made durable
    /// before the old one goes, so the number survives a crash.
    fn delete_front(&mut self) -> Result<u64, OutboxError> {
        let Some(front) = self.segments.front().cloned() else {
            return Ok(0);
        };
        if self.segments.len() == 1 {
            // Its unwritten frames go with it.
            self.wbuf.clear();
            self.create_last()?;
            self.sync_dir()?;
            if self.segments.len() == 1 {
                // It held no records and was emptied in place.
                self.committed = self.segments.back().cloned();
                return Ok(0);
            }
        }
        fs::remove_file(&front.path).or_else(|e| match e.kind() {
            io::ErrorKind::NotFound => Ok(()),
            _ => Err(io_error("delete", &front.path)(e)),
        })?;
        self.segments.pop_front();
        self.total_bytes -= front.disk_bytes;
        let unreleased = front
            .end_seq()
            .saturating_sub(self.first_seq.max(front.first_seq));
        let counted = self.expired_unreleased.remove_below(front.end_seq());
        self.first_seq = self.first_seq.max(front.end_seq());
        if self
            .cursor
            .as_ref()
            .is_some_and(|c| c.segment_first_seq == front.first_seq)
        {
            self.cursor = None;
        }
        if self
            .committed
            .as_ref()
            .is_some_and(|c| c.first_seq == front.first_seq)
        {
            self.committed = self.segments.back().cloned();
        }
        Ok(unreleased.saturating_sub(counted))
    }

    /// Everything below `up_to` is delivered: deletes every segment whose
    /// records all are. Returns how many records this released.
    pub fn release(&mut self, up_to: u64) -> Result<u64, OutboxError> {
        let up_to = up_to.min(self.next_seq);
        if up_to <= self.first_seq {
            return Ok(0);
        }
        let present: u64 = self
            .segments
            .iter()
            .map(|s| {
                let lo = s.first_seq.max(self.first_seq);
                let hi = s.end_seq().min(up_to);
                hi.saturating_sub(lo)
            })
            .sum();
        let delivered = present.saturating_sub(self.expired_unreleased.remove_below(up_to));
        self.first_seq = up_to;
        self.stats.delivered += delivered;
        while let Some(front) = self.segments.front() {
            let marker = self.segments.len() == 1 && front.records == 0;
            if marker || front.end_seq() > self.first_seq {
                break;
            }
            self.delete_front()?;
        }
        Ok(delivered)
    }

    pub fn stats(&self) -> OutboxStats {
        let mut records = 0;
        let mut oldest = None::<f64>;
        for s in &self.segments {
            let waiting = s.end_seq().saturating_sub(s.first_seq.max(self.first_seq));
            if waiting > 0 {
                records += waiting;
                oldest = Some(oldest.map_or(s.oldest, |o| o.min(s.oldest)));
            }
        }
        OutboxStats {
            records: records.saturating_sub(self.expired_unreleased.len()),
            bytes: self.total_bytes,
            oldest_created: oldest,
            ..self.stats.clone()
        }
    }

    /// The sequence number the next stored record gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The lowest sequence number not yet released, dropped or expired;
    /// where a replay starts.
    #[cfg(test)]
    pub fn first_seq(&self) -> u64 {
        self.first_seq
    }
}
