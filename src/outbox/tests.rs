//! The outbox against real files in a temporary directory: round trips,
//! group commit, segments, release, the two full policies, expiry, torn and
//! corrupt segments, and the directory's own failures.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;
use crate::time::unix_now;

/// Every test record takes exactly this many bytes on disk.
const FRAME: u64 = 600;
/// Frame bytes besides topic and payload.
const OVERHEAD: usize = 8 + 12;

fn settings(max_bytes: u64, on_full: OnFull) -> OutboxSettings {
    OutboxSettings {
        max_bytes,
        max_age: Duration::from_secs(7 * 24 * 3600),
        on_full,
    }
}

/// Record `i`: topic `r/00042`, a payload telling its number, 600 bytes
/// framed.
fn rec(i: u64) -> Record {
    rec_at(i, unix_now())
}

fn rec_at(i: u64, created: f64) -> Record {
    let topic = format!("r/{i:05}");
    let mut payload = format!("record {i} ").into_bytes();
    payload.resize(FRAME as usize - OVERHEAD - topic.len(), b'.');
    Record {
        created,
        retain: i.is_multiple_of(2),
        topic,
        payload,
        properties: None,
    }
}

fn recs(range: std::ops::Range<u64>) -> Vec<Record> {
    range.map(rec).collect()
}

fn open(dir: &Path, s: &OutboxSettings) -> (Outbox, Recovered) {
    Outbox::open(dir, s.clone()).expect("open the outbox")
}

/// Everything readable from `first_seq` on, in batches of 7 records.
fn read_all(ob: &mut Outbox) -> Vec<(u64, Record)> {
    let mut out: Vec<(u64, Record)> = Vec::new();
    let mut from = ob.first_seq();
    loop {
        let batch = ob.read(from, 7, usize::MAX).expect("read");
        let Some((last, _)) = batch.last() else {
            return out;
        };
        from = last + 1;
        out.extend(batch);
    }
}

/// The segment files, oldest first, with their sizes.
fn segment_files(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut files: Vec<(PathBuf, u64)> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .map(|p| {
            let len = fs::metadata(&p).unwrap().len();
            (p, len)
        })
        .collect();
    files.sort();
    files
}

fn disk_bytes(dir: &Path) -> u64 {
    segment_files(dir).iter().map(|(_, len)| len).sum()
}

fn seqs(got: &[(u64, Record)]) -> Vec<u64> {
    got.iter().map(|(s, _)| *s).collect()
}

fn stored(a: &Appended) -> Vec<u64> {
    a.seqs.iter().flatten().copied().collect()
}

/// The daemon moves the outbox into the thread that owns it.
const _: fn() = || {
    fn send<T: Send>() {}
    send::<Outbox>();
};

#[test]
fn records_survive_a_reopen_unchanged_and_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("outbox");
    let s = settings(1 << 20, OnFull::DropOldest);
    let (mut ob, recovered) = open(&dir, &s);
    assert_eq!(recovered, Recovered::default());
    let mut odd = rec(3);
    odd.topic = "edge-infer/gw/ü/result".into();
    odd.payload = Vec::new();
    let want: Vec<Record> = vec![rec(1), rec(2), odd, rec(4)];
    assert_eq!(stored(&ob.append(&want[..2]).unwrap()), [1, 2]);
    assert_eq!(stored(&ob.append(&want[2..]).unwrap()), [3, 4]);
    drop(ob);

    let (mut ob, recovered) = open(&dir, &s);
    assert_eq!(recovered.segments, 1);
    assert_eq!(recovered.records, 4);
    assert_eq!(recovered.torn_bytes_truncated, 0);
    assert_eq!(recovered.bytes, disk_bytes(&dir));
    let got = read_all(&mut ob);
    assert_eq!(seqs(&got), [1, 2, 3, 4]);
    let records: Vec<Record> = got.into_iter().map(|(_, r)| r).collect();
    assert_eq!(records, want);
    assert_eq!(ob.next_seq(), 5);
    assert_eq!(stored(&ob.append(&[rec(5)]).unwrap()), [5]);
}

#[test]
fn one_append_of_many_records_commits_them_together() {
    let tmp = tempfile::tempdir().unwrap();
    let s = settings(1 << 30, OnFull::DropOldest);
    let (mut ob, _) = open(tmp.path(), &s);
    let done = ob.append(&recs(0..1000)).unwrap();
    assert_eq!(done.stored, 1000);
    assert_eq!((done.rejected, done.dropped), (0, 0));
    assert_eq!(stored(&done), (1..=1000).collect::<Vec<_>>());
    let stats = ob.stats();
    assert_eq!((stats.records, stats.appended), (1000, 1000));
    assert_eq!(stats.bytes, 1000 * FRAME);
    drop(ob);
    let (mut ob, recovered) = open(tmp.path(), &s);
    assert_eq!(recovered.records, 1000);
    assert_eq!(read_all(&mut ob).len(), 1000);
}

#[test]
fn segments_roll_over_at_a_sixteenth_of_max_bytes_and_are_named_by_their_first_record() {
    let tmp = tempfile::tempdir().unwrap();
    // 1 MiB: 64 KiB segments, 109 records of 600 bytes each.
    let s = settings(1 << 20, OnFull::DropOldest);
    let (mut ob, _) = open(tmp.path(), &s);
    for i in 0..30 {
        ob.append(&recs(i * 10..i * 10 + 10)).unwrap();
    }
    // One append across a segment boundary too.
    ob.append(&recs(300..400)).unwrap();
    let files = segment_files(tmp.path());
    assert_eq!(files.len(), 4, "{files:?}");
    for (path, len) in &files {
        assert!(*len <= 64 * 1024, "{path:?} has {len} bytes");
    }
    drop(ob);
    let (mut ob, recovered) = open(tmp.path(), &s);
    assert_eq!(recovered.segments, 4);
    let got = read_all(&mut ob);
    assert_eq!(seqs(&got), (1..=400).collect::<Vec<_>>());
    // Each file's name is the sequence number of its first record.
    let mut first = 1;
    for (path, len) in &files {
        let name = path.file_name().unwrap().to_str().unwrap();
        assert_eq!(name, format!("{first:020}.seg"));
        let (_, r) = &got[(first - 1) as usize];
        assert_eq!(r.topic, format!("r/{:05}", first - 1));
        first += len / FRAME;
    }
}

#[test]
fn release_deletes_only_segments_whose_records_are_all_released() {
    let tmp = tempfile::tempdir().unwrap();
    let s = settings(1 << 20, OnFull::DropOldest);
    let (mut ob, _) = open(tmp.path(), &s);
    ob.append(&recs(0..250)).unwrap();
    // 109 records a segment: 1..=109, 110..=218, 219..=250.
    let names = |dir: &Path| -> Vec<String> {
        segment_files(dir)
            .iter()
            .map(|(p, _)| p.file_name().unwrap().to_str().unwrap()[..20].to_string())
            .map(|n| n.trim_start_matches('0').to_string())
            .collect()
    };
    assert_eq!(names(tmp.path()), ["1", "110", "219"]);
    assert_eq!(ob.release(109).unwrap(), 108);
    assert_eq!(names(tmp.path()), ["1", "110", "219"]);
    assert_eq!(ob.release(110).unwrap(), 1);
    assert_eq!(names(tmp.path()), ["110", "219"]);
    assert_eq!(ob.release(150).unwrap(), 40);
    assert_eq!(names(tmp.path()), ["110", "219"]);
    assert_eq!(ob.first_seq(), 150);
    let stats = ob.stats();
    assert_eq!((stats.records, stats.delivered), (101, 149));
    assert_eq!(stats.bytes, disk_bytes(tmp.path()));
    assert_eq!(seqs(&read_all(&mut ob))[0], 150);
    // Releasing again, or below, changes nothing.
    assert_eq!(ob.release(120).unwrap(), 0);
    drop(ob);
    // A partly released segment is replayed whole: duplicates, no loss.
    let (mut ob, recovered) = open(tmp.path(), &s);
    assert_eq!(recovered.records, 141);
    assert_eq!(seqs(&read_all(&mut ob)), (110..=250).collect::<Vec<_>>());
}

#[test]
fn sequence_numbers_continue_after_everything_was_released_and_reopened() {
    let tmp = tempfile::tempdir().unwrap();
    let s = settings(1 << 20, OnFull::DropOldest);
    let (mut ob, _) = open(tmp.path(), &s);
    ob.append(&recs(0..150)).unwrap();
    assert_eq!(ob.release(u64::MAX).unwrap(), 150);
    // Released up to the next number, which an empty segment keeps.
    let files = segment_files(tmp.path());
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].0.file_name().unwrap(), "00000000000000000151.seg");
    assert_eq!(files[0].1, 0);
    assert_eq!(ob.stats().records, 0);
    assert_eq!(ob.stats().bytes, 0);
    drop(ob);
    let (mut ob, recovered) = open(tmp.path(), &s);
    assert_eq!((recovered.segments, recovered.records), (1, 0));
    assert_eq!((ob.first_seq(), ob.next_seq()), (151, 151));
    assert!(read_all(&mut ob).is_empty());
    assert_eq!(stored(&ob.append(&[rec(0)]).unwrap()), [151]);
    // Released twice over, with nothing stored in between.
    assert_eq!(ob.release(152).unwrap(), 1);
    assert_eq!(ob.release(152).unwrap(), 0);
    drop(ob);
    let (mut ob, _) = open(tmp.path(), &s);
    assert_eq!(stored(&ob.append(&[rec(0)]).unwrap()), [152]);
    assert_eq!(segment_files(tmp.path()).len(), 1);
}

#[test]
fn drop_oldest_keeps_the_disk_within_max_bytes_and_counts_what_it_drops() {
    let tmp = tempfile::tempdir().unwrap();
    let max = 1 << 20;
    let s = settings(max, OnFull::DropOldest);
    let (mut ob, _) = open(tmp.path(), &s);
    let mut dropped = 0;
    for i in 0..60 {
        let done = ob.append(&recs(i * 100..i * 100 + 100)).unwrap();
        assert_eq!((done.stored, done.rejected), (100, 0));
        dropped += done.dropped;
        let on_disk = disk_bytes(tmp.path());
        assert!(on_disk <= max, "{on_disk} bytes on disk after append {i}");
        assert_eq!(ob.stats().bytes, on_disk);
    }
    let stats = ob.stats();
    assert!(dropped > 0);
    assert_eq!(stats.dropped_full, dropped);
    assert_eq!(stats.appended, 6000);
    assert_eq!(stats.records + dropped, 6000);
    // Whole segments went: 1 MiB / 64 KiB of them, minus the one started.
    assert!(stats.records >= 15 * 109, "{stats:?}");
    // What is left are the newest, without a gap.
    let got = read_all(&mut ob);
    assert_eq!(got.len() as u64, stats.records);
    assert_eq!(got[0].0, ob.first_seq());
    assert_eq!(got.last().unwrap().0, 6000);
    assert_eq!(got.last().unwrap().1.topic, "r/05999");
}

#[test]
fn reject_new_keeps_what_is_stored_and_refuses_what_does_not_fit() {
    let tmp = tempfile::tempdir().unwrap();
    let max = 1 << 20;
    let s = settings(max, OnFull::RejectNew);
    let (mut ob, _) = open(tmp.path(), &s);
    let fit = max / FRAME;
    let done = ob.append(&recs(0..fit + 10)).unwrap();
    assert_eq!(done.stored as u64, fit);
    assert_eq!((done.rejected, done.dropped), (10, 0));
    assert_eq!(&done.seqs[fit as usize..], [None; 10]);
    assert!(disk_bytes(tmp.path()) <= max);
    let done = ob.append(&recs(0..5)).unwrap();
    assert_eq!((done.stored, done.rejected), (0, 5));
    // Room again once something is released and its segment deleted.
    ob.release(110).unwrap();
    let done = ob.append(&recs(0..5)).unwrap();
    assert_eq!(done.stored, 5);
    let stats = ob.stats();
    assert_eq!((stats.rejected_full, stats.dropped_full), (15, 0));
    assert!(stats.bytes <= max);
    assert_eq!(read_all(&mut ob)[0].0, 110);
}

#[test]
fn a_record_larger_than_the_outbox_or_the_format_is_rejected_in_both_modes() {
    for on_full in [OnFull::DropOldest, OnFull::RejectNew] {
        let tmp = tempfile::tempdir().unwrap();
        let max = 1 << 20;
        let (mut ob, _) = open(tmp.path(), &settings(max, on_full));
        ob.append(&recs(0..10)).unwrap();
        let mut huge = rec(10);
        huge.payload = vec![0; max as usize];
        let mut long_topic = rec(11);
        long_topic.topic = "t".repeat(70_000);
        let done = ob.append(&[huge, rec(12), long_topic]).unwrap();
        assert_eq!(done.seqs, [None, Some(11), None], "{on_full:?}");
        assert_eq!((done.rejected, done.dropped), (2, 0));
        let stats = ob.stats();
        assert_eq!((stats.rejected_too_large, stats.rejected_full), (2, 0));
        assert_eq!(stats.records, 11);
    }
}

#[test]
fn records_older_than_max_age_are_skipped_and_their_segments_deleted() {
    let tmp = tempfile::tempdir().unwrap();
    let s = OutboxSettings {
        max_age: Duration::from_secs(3600),
        ..settings(1 << 20, OnFull::DropOldest)
    };
    let (mut ob, _) = open(tmp.path(), &s);
    let old = unix_now() - 7200.0;
    // Segment 1 (1..=109) all old; segment 2 (110..) old and new mixed.
    let mut batch: Vec<Record> = (0..109).map(|i| rec_at(i, old)).collect();
    batch.extend((109..150u64).map(|i| {
        if i.is_multiple_of(2) {
            rec_at(i, old)
        } else {
            rec(i)
        }
    }));
    ob.append(&batch).unwrap();
    assert_eq!(segment_files(tmp.path()).len(), 2);

    let got = ob.read(1, 1000, usize::MAX).unwrap();
    assert_eq!(
        segment_files(tmp.path()).len(),
        1,
        "the old segment is gone"
    );
    let want: Vec<u64> = (109..150u64)
        .filter(|i| !i.is_multiple_of(2))
        .map(|i| i + 1)
        .collect();
    assert_eq!(seqs(&got), want);
    let stats = ob.stats();
    assert_eq!(stats.expired, 109 + 20);
    assert_eq!(stats.records, 21);
    // Read again from the start (a replay that restarts): counted once.
    assert_eq!(seqs(&ob.read(0, 1000, usize::MAX).unwrap()), want);
    assert_eq!(ob.stats().expired, 129);
    // Releasing past them delivers only those that were read.
    assert_eq!(ob.release(151).unwrap(), 21);
    let stats = ob.stats();
    assert_eq!(
        (stats.delivered, stats.expired, stats.records),
        (21, 129, 0)
    );
}

#[test]
fn expired_segments_make_room_before_anything_is_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let s = OutboxSettings {
        max_age: Duration::from_secs(3600),
        ..settings(1 << 20, OnFull::RejectNew)
    };
    let (mut ob, _) = open(tmp.path(), &s);
    let old = unix_now() - 7200.0;
    let fit = (1 << 20) / FRAME;
    let done = ob
        .append(&(0..fit).map(|i| rec_at(i, old)).collect::<Vec<_>>())
        .unwrap();
    assert_eq!(done.stored as u64, fit);
    let done = ob.append(&recs(0..200)).unwrap();
    assert_eq!((done.stored, done.rejected, done.dropped), (200, 0, 0));
    let stats = ob.stats();
    assert!(stats.expired >= 200, "{stats:?}");
    assert_eq!(stats.rejected_full, 0);
}

/// A last segment cut short or with garbage after its records (a crash
/// mid-write) is cut back to its last whole record at open; every record
/// before it survives and appends continue after it.
#[test]
fn a_torn_tail_is_truncated_at_open_without_losing_committed_records() {
    for torn in ["cut", "garbage"] {
        let tmp = tempfile::tempdir().unwrap();
        let s = settings(1 << 20, OnFull::DropOldest);
        let (mut ob, _) = open(tmp.path(), &s);
        ob.append(&recs(0..150)).unwrap();
        drop(ob);
        let (last, len) = segment_files(tmp.path()).pop().unwrap();
        let (kept, torn_bytes) = if torn == "cut" {
            fs::OpenOptions::new()
                .write(true)
                .open(&last)
                .unwrap()
                .set_len(len - 3)
                .unwrap();
            (149, FRAME - 3)
        } else {
            let mut bytes = fs::read(&last).unwrap();
            bytes.extend_from_slice(&[0x5a; 100]);
            fs::write(&last, bytes).unwrap();
            (150, 100)
        };
        let (mut ob, recovered) = open(tmp.path(), &s);
        assert_eq!(recovered.torn_bytes_truncated, torn_bytes, "{torn}");
        assert_eq!(recovered.records, kept, "{torn}");
        assert!(recovered.corrupt.is_empty(), "{torn}");
        assert_eq!(fs::metadata(&last).unwrap().len(), (kept - 109) * FRAME);
        assert_eq!(ob.stats().torn_recovered_bytes, torn_bytes);
        assert_eq!(stored(&ob.append(&[rec(999)]).unwrap()), [kept + 1]);
        drop(ob);
        let (mut ob, recovered) = open(tmp.path(), &s);
        assert_eq!(recovered.torn_bytes_truncated, 0);
        let got = read_all(&mut ob);
        assert_eq!(seqs(&got), (1..=kept + 1).collect::<Vec<_>>(), "{torn}");
        assert_eq!(got.last().unwrap().1.topic, "r/00999");
    }
}

#[test]
fn a_corrupt_byte_inside_an_older_segment_loses_only_the_rest_of_that_segment() {
    let tmp = tempfile::tempdir().unwrap();
    let s = settings(1 << 20, OnFull::DropOldest);
    let (mut ob, _) = open(tmp.path(), &s);
    ob.append(&recs(0..250)).unwrap();
    drop(ob);
    let files = segment_files(tmp.path());
    let first = &files[0].0;
    let mut bytes = fs::read(first).unwrap();
    // Inside the payload of record 51 (sequence number 51).
    bytes[50 * FRAME as usize + 300] ^= 0x40;
    fs::write(first, bytes).unwrap();

    let (mut ob, recovered) = open(tmp.path(), &s);
    assert_eq!(
        recovered.corrupt,
        [Corrupt {
            path: first.clone(),
            offset: 50 * FRAME,
            skipped_bytes: 59 * FRAME,
            reason: "CRC mismatch",
        }]
    );
    assert_eq!(recovered.torn_bytes_truncated, 0);
    assert_eq!(recovered.records, 250 - 59);
    // The file keeps its bytes (they count against max_bytes until the
    // segment is released).
    assert_eq!(fs::metadata(first).unwrap().len(), 109 * FRAME);
    let got = read_all(&mut ob);
    let want: Vec<u64> = (1..=50).chain(110..=250).collect();
    assert_eq!(seqs(&got), want);
    assert_eq!(ob.stats().corrupt_skipped_bytes, 59 * FRAME);
    assert_eq!(ob.release(110).unwrap(), 50);
    assert_eq!(segment_files(tmp.path()).len(), 2);
}

#[test]
fn a_record_corrupted_after_open_is_skipped_when_read() {
    let tmp = tempfile::tempdir().unwrap();
    let s = settings(1 << 20, OnFull::DropOldest);
    let (mut ob, _) = open(tmp.path(), &s);
    ob.append(&recs(0..250)).unwrap();
    let first = segment_files(tmp.path())[0].0.clone();
    let mut bytes = fs::read(&first).unwrap();
    bytes[20 * FRAME as usize + 100] ^= 1;
    fs::write(&first, bytes).unwrap();
    let got = read_all(&mut ob);
    let want: Vec<u64> = (1..=20).chain(110..=250).collect();
    assert_eq!(seqs(&got), want);
    assert_eq!(ob.stats().corrupt_skipped_bytes, 89 * FRAME);
    assert_eq!(ob.stats().records, 20 + 141);
}

#[test]
fn reads_continue_where_they_stopped_and_can_go_back() {
    let tmp = tempfile::tempdir().unwrap();
    let s = settings(1 << 20, OnFull::DropOldest);
    let (mut ob, _) = open(tmp.path(), &s);
    ob.append(&recs(0..300)).unwrap();
    let a = ob.read(1, 100, usize::MAX).unwrap();
    assert_eq!(seqs(&a), (1..=100).collect::<Vec<_>>());
    // Across a segment boundary.
    let b = ob.read(101, 50, usize::MAX).unwrap();
    assert_eq!(seqs(&b), (101..=150).collect::<Vec<_>>());
    // Back, as after a link that dropped mid-replay.
    let c = ob.read(42, 3, usize::MAX).unwrap();
    assert_eq!(seqs(&c), [42, 43, 44]);
    assert_eq!(c[0].1.payload, rec(41).payload);
    // Forward past a gap in the reading.
    let d = ob.read(290, 100, usize::MAX).unwrap();
    assert_eq!(seqs(&d), (290..=300).collect::<Vec<_>>());
    assert!(ob.read(301, 100, usize::MAX).unwrap().is_empty());
    // New records are seen by the next read.
    ob.append(&recs(300..302)).unwrap();
    assert_eq!(seqs(&ob.read(301, 100, usize::MAX).unwrap()), [301, 302]);
    // Byte limits: whole records within it, at least one.
    assert_eq!(ob.read(1, 100, 3 * FRAME as usize + 1).unwrap().len(), 3);
    assert_eq!(ob.read(1, 100, 1).unwrap().len(), 1);
    assert!(ob.read(1, 0, usize::MAX).unwrap().is_empty());
}

#[test]
fn a_missing_directory_is_created_private_and_an_empty_one_is_an_empty_outbox() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state/outbox");
    let s = settings(1 << 20, OnFull::DropOldest);
    let (mut ob, recovered) = open(&dir, &s);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    assert_eq!(recovered, Recovered::default());
    assert_eq!((ob.first_seq(), ob.next_seq()), (1, 1));
    assert!(ob.read(0, 10, usize::MAX).unwrap().is_empty());
    assert_eq!(ob.release(10).unwrap(), 0);
    assert_eq!(ob.stats(), OutboxStats::default());
    // Nothing written until something is stored.
    assert!(segment_files(&dir).is_empty());
    drop(ob);
    let (_, recovered) = open(&dir, &s);
    assert_eq!(recovered, Recovered::default());
}

#[test]
fn files_that_are_not_segments_are_left_alone_and_reported() {
    let tmp = tempfile::tempdir().unwrap();
    for name in ["notes.txt", "42.seg", "0000000000000000000x.seg"] {
        fs::write(tmp.path().join(name), "x").unwrap();
    }
    fs::create_dir(tmp.path().join("00000000000000000007.seg")).unwrap();
    let s = settings(1 << 20, OnFull::DropOldest);
    let (mut ob, recovered) = open(tmp.path(), &s);
    let ignored: Vec<&str> = recovered
        .ignored
        .iter()
        .map(|p| p.file_name().unwrap().to_str().unwrap())
        .collect();
    assert_eq!(
        ignored,
        [
            "00000000000000000007.seg",
            "0000000000000000000x.seg",
            "42.seg",
            "notes.txt"
        ]
    );
    assert_eq!(recovered.segments, 0);
    ob.append(&recs(0..3)).unwrap();
    assert_eq!(ob.release(u64::MAX).unwrap(), 3);
    assert!(tmp.path().join("notes.txt").exists());
}

#[test]
fn a_directory_that_is_a_file_is_an_error_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("outbox");
    fs::write(&path, "not a directory").unwrap();
    let e = Outbox::open(&path, settings(1 << 20, OnFull::DropOldest))
        .err()
        .expect("a file is not an outbox");
    assert_eq!(
        e.to_string(),
        format!(
            "{} is not a directory; the outbox needs one there",
            path.display()
        )
    );
    // Below a file: the OS error, with the path.
    let below = path.join("outbox");
    let e = Outbox::open(&below, settings(1 << 20, OnFull::DropOldest))
        .err()
        .expect("nothing can be created below a file");
    assert!(
        e.to_string()
            .starts_with(&format!("cannot read {}: Not a directory", below.display())),
        "{e}"
    );
}

#[test]
fn frames_reject_bad_bytes_instead_of_panicking() {
    let record = rec(1);
    let mut bytes = Vec::new();
    frame::encode(&record, &mut bytes);
    assert_eq!(bytes.len() as u64, FRAME);
    let mut head = [0; frame::HEADER];
    head.copy_from_slice(&bytes[..frame::HEADER]);
    let (len, crc) = frame::header(&head).unwrap();
    let body = &bytes[frame::HEADER..];
    assert_eq!(len, body.len());
    assert_eq!(frame::check(body, crc).unwrap().to_record(), record);
    // Every single-bit flip in the body is caught.
    for at in 0..body.len() {
        let mut bad = body.to_vec();
        bad[at] ^= 0x10;
        assert!(frame::check(&bad, crc).is_err(), "flip at {at}");
    }
    for len in [0u32, 11, u32::MAX] {
        let mut h = head;
        h[..4].copy_from_slice(&len.to_le_bytes());
        assert!(frame::header(&h).is_err(), "{len}");
    }
    assert!(frame::check(&body[..5], crc32fast::hash(&body[..5])).is_err());
}

#[test]
fn mqtt5_properties_round_trip_and_plain_records_keep_version_1() {
    let mut plain = Vec::new();
    frame::encode(&rec(3), &mut plain);
    assert_eq!(
        plain[frame::HEADER],
        1,
        "a record without properties is version 1"
    );
    let mut record = rec(4);
    record.properties = Some(crate::job::Properties {
        response_topic: None,
        correlation_data: Some(bytes::Bytes::from_static(b"\x00\xffreq-7")),
        user_properties: vec![("site".into(), "north".into()), ("site".into(), "".into())],
        content_type: Some("application/json".into()),
    });
    let mut bytes = Vec::new();
    frame::encode(&record, &mut bytes);
    assert_eq!(Some(bytes.len()), record.frame_len());
    assert_eq!(bytes[frame::HEADER], 2);
    let mut head = [0; frame::HEADER];
    head.copy_from_slice(&bytes[..frame::HEADER]);
    let (len, crc) = frame::header(&head).unwrap();
    let body = &bytes[frame::HEADER..];
    assert_eq!(len, body.len());
    assert_eq!(frame::check(body, crc).unwrap().to_record(), record);
    for at in 0..body.len() {
        let mut bad = body.to_vec();
        bad[at] ^= 0x10;
        assert!(frame::check(&bad, crc).is_err(), "flip at {at}");
    }
}

#[test]
fn sequential_reads_open_each_segment_once() {
    let tmp = tempfile::tempdir().unwrap();
    let s = settings(1 << 20, OnFull::DropOldest);
    let (mut ob, _) = open(tmp.path(), &s);
    ob.append(&recs(0..300)).unwrap();
    assert_eq!(read_all(&mut ob).len(), 300);
    assert_eq!(ob.cursor_opens, 3);
    // Released as it goes, as a replay does.
    let mut from = ob.first_seq();
    while let Some((last, _)) = ob.read(from, 10, usize::MAX).unwrap().last() {
        from = last + 1;
        ob.release(from).unwrap();
    }
    assert_eq!(ob.cursor_opens, 6);
    // Going back rescans that one segment.
    ob.append(&recs(0..5)).unwrap();
    assert_eq!(seqs(&ob.read(301, 2, usize::MAX).unwrap()), [301, 302]);
    assert_eq!(seqs(&ob.read(301, 2, usize::MAX).unwrap()), [301, 302]);
    assert_eq!(ob.cursor_opens, 8);
}

#[test]
fn one_append_larger_than_the_outbox_keeps_its_newest_records() {
    let tmp = tempfile::tempdir().unwrap();
    let max = 1 << 20;
    let s = settings(max, OnFull::DropOldest);
    let (mut ob, _) = open(tmp.path(), &s);
    let done = ob.append(&recs(0..3000)).unwrap();
    assert!(disk_bytes(tmp.path()) <= max);
    let kept = stored(&done);
    assert_eq!(kept.len(), done.stored);
    assert_eq!(*kept.last().unwrap(), 3000);
    assert!(done.seqs[0].is_none());
    assert_eq!(done.stored as u64 + done.dropped, 3000);
    let stats = ob.stats();
    assert_eq!(stats.appended, stats.records + stats.dropped_full);
    assert_eq!(seqs(&read_all(&mut ob)), kept);
}

#[test]
fn a_record_that_needs_the_whole_outbox_replaces_everything() {
    let tmp = tempfile::tempdir().unwrap();
    let max = 1 << 20;
    let s = settings(max, OnFull::DropOldest);
    let (mut ob, _) = open(tmp.path(), &s);
    ob.append(&recs(0..10)).unwrap();
    let mut big = rec(10);
    big.payload = vec![7; max as usize - 1000];
    let done = ob.append(&[big.clone()]).unwrap();
    assert_eq!((done.seqs.clone(), done.dropped), (vec![Some(11)], 10));
    let files = segment_files(tmp.path());
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].0.file_name().unwrap(), "00000000000000000011.seg");
    drop(ob);
    let (mut ob, _) = open(tmp.path(), &s);
    let got = read_all(&mut ob);
    assert_eq!(seqs(&got), [11]);
    assert_eq!(got[0].1, big);
}

#[test]
fn a_failed_append_leaves_the_outbox_as_it_was() {
    let tmp = tempfile::tempdir().unwrap();
    let s = settings(1 << 20, OnFull::DropOldest);
    let (mut ob, _) = open(tmp.path(), &s);
    ob.append(&recs(0..50)).unwrap();
    ob.fail_write = Some(1);
    let e = ob.append(&recs(50..70)).unwrap_err();
    let first = tmp.path().join("00000000000000000001.seg");
    assert_eq!(
        e.to_string(),
        format!(
            "cannot write {}: No space left on device (os error 28)",
            first.display()
        )
    );
    assert_eq!(fs::metadata(&first).unwrap().len(), 50 * FRAME);
    let stats = ob.stats();
    assert_eq!(
        (stats.records, stats.appended, stats.bytes),
        (50, 50, 50 * FRAME)
    );
    assert_eq!(
        stored(&ob.append(&recs(70..75)).unwrap()),
        (51..=55).collect::<Vec<_>>()
    );

    // Failing in the segment after a rollover: the records before it are
    // durable (read again: at least once); the new segment is emptied.
    ob.fail_write = Some(2);
    assert!(ob.append(&recs(100..160)).is_err());
    let files = segment_files(tmp.path());
    assert_eq!(files.len(), 2);
    assert_eq!(files[0].1, 109 * FRAME);
    assert_eq!(files[1].1, 0);
    assert_eq!(ob.next_seq(), 110);
    let got = read_all(&mut ob);
    assert_eq!(seqs(&got), (1..=109).collect::<Vec<_>>());
    assert_eq!(got[108].1.topic, "r/00153");
    ob.fail_write = None;
    assert_eq!(stored(&ob.append(&recs(0..1)).unwrap()), [110]);
    drop(ob);
    let (_, recovered) = open(tmp.path(), &s);
    assert_eq!(
        (recovered.records, recovered.torn_bytes_truncated),
        (110, 0)
    );
}

#[test]
fn a_segment_running_into_the_next_ones_numbers_keeps_only_those_below_it() {
    let tmp = tempfile::tempdir().unwrap();
    let s = settings(1 << 20, OnFull::DropOldest);
    let (mut ob, _) = open(tmp.path(), &s);
    ob.append(&recs(0..250)).unwrap();
    drop(ob);
    // As if the second segment (110..=218) had lost the sync that let the
    // third one start at 200.
    fs::rename(
        tmp.path().join("00000000000000000219.seg"),
        tmp.path().join("00000000000000000200.seg"),
    )
    .unwrap();
    let (mut ob, recovered) = open(tmp.path(), &s);
    assert_eq!(recovered.records, 250 - 19);
    assert_eq!(ob.next_seq(), 232);
    let got = read_all(&mut ob);
    assert_eq!(seqs(&got), (1..=231).collect::<Vec<_>>());
    assert_eq!(got[198].1.topic, "r/00198");
    assert_eq!(got[199].1.topic, "r/00218");
    assert_eq!(ob.stats().corrupt_skipped_bytes, 19 * FRAME);
}

#[test]
fn a_second_process_cannot_open_the_same_outbox() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox");
    let (first, _) = Outbox::open(&path, settings(1 << 20, OnFull::DropOldest)).unwrap();
    match Outbox::open(&path, settings(1 << 20, OnFull::DropOldest)) {
        Err(e @ OutboxError::InUse { .. }) => {
            assert!(
                e.to_string().contains("in use by another edge-infer"),
                "{e}"
            )
        }
        other => panic!("expected InUse, got {:?}", other.map(|_| ())),
    }
    drop(first);
    let (_again, recovered) = Outbox::open(&path, settings(1 << 20, OnFull::DropOldest)).unwrap();
    assert!(recovered.ignored.is_empty(), "{:?}", recovered.ignored);
}
