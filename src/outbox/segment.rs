//! Segment files: their names, reading their frames through a buffer (never
//! past the end the caller knows to be valid), and the scan at open that
//! finds that end.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::frame::{self, Body, HEADER};

/// Bytes read at a time: a few hundred records of a few hundred bytes, so
/// sequential reads cost one `pread` per buffer, not two per record.
const CHUNK: usize = 128 * 1024;

/// `00000000000000000042.seg` holds records from sequence number 42 on.
pub fn file_name(first_seq: u64) -> String {
    format!("{first_seq:020}.seg")
}

/// The first sequence number a segment file's name gives, or None when the
/// name is not a segment's.
pub fn parse_name(name: &OsStr) -> Option<u64> {
    let digits = name.to_str()?.strip_suffix(".seg")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// What is at an offset of a segment.
pub enum Next<'a> {
    /// A whole frame (body not yet checked), and where the next one starts.
    Frame { body: &'a [u8], crc: u32, next: u64 },
    /// The offset is the end.
    End,
    /// A frame starts but does not fit before the end: a torn write.
    Torn,
    /// The header is impossible.
    Bad(&'static str),
}

/// A frame header, read.
enum Head {
    At(usize, u32),
    End,
    Torn,
    Bad(&'static str),
}

impl From<Head> for Next<'_> {
    fn from(head: Head) -> Self {
        match head {
            Head::End => Next::End,
            Head::Torn | Head::At(..) => Next::Torn,
            Head::Bad(why) => Next::Bad(why),
        }
    }
}

/// Frames of one segment file, read through a buffer with `pread`, so the
/// file position never matters and appends through another handle do not
/// disturb it.
pub struct Reader {
    file: File,
    buf: Vec<u8>,
    /// File offset of `buf[0]`.
    buf_at: u64,
}

impl Reader {
    pub fn open(path: &Path) -> io::Result<Reader> {
        Ok(Reader {
            file: File::open(path)?,
            buf: Vec::new(),
            buf_at: 0,
        })
    }

    /// The frame at `offset`, reading nothing at or past `end`.
    pub fn frame(&mut self, offset: u64, end: u64) -> io::Result<Next<'_>> {
        let (len, crc) = match self.head(offset, end)? {
            Head::At(len, crc) => (len, crc),
            other => return Ok(other.into()),
        };
        let start = offset + HEADER as u64;
        Ok(match self.fill(start, len, end)? {
            Some(body) => Next::Frame {
                body,
                crc,
                next: start + len as u64,
            },
            None => Next::Torn,
        })
    }

    /// Where the frame at `offset` ends, from its header alone (no CRC
    /// check): for skipping records already known good.
    pub fn skip(&mut self, offset: u64, end: u64) -> io::Result<Next<'_>> {
        Ok(match self.head(offset, end)? {
            Head::At(len, _) if offset + (HEADER + len) as u64 <= end => Next::Frame {
                body: &[],
                crc: 0,
                next: offset + (HEADER + len) as u64,
            },
            Head::At(..) => Next::Torn,
            other => other.into(),
        })
    }

    fn head(&mut self, offset: u64, end: u64) -> io::Result<Head> {
        if offset >= end {
            return Ok(Head::End);
        }
        let Some(bytes) = self.fill(offset, HEADER, end)? else {
            return Ok(Head::Torn);
        };
        let mut head = [0; HEADER];
        head.copy_from_slice(bytes);
        Ok(match frame::header(&head) {
            Ok((len, crc)) => Head::At(len, crc),
            Err(why) => Head::Bad(why),
        })
    }

    /// `len` bytes at `offset`, or None when they do not fit before `end`
    /// (or the file is shorter than `end` says).
    fn fill(&mut self, offset: u64, len: usize, end: u64) -> io::Result<Option<&[u8]>> {
        if offset + len as u64 > end {
            return Ok(None);
        }
        let buffered =
            self.buf_at <= offset && offset + len as u64 <= self.buf_at + self.buf.len() as u64;
        if !buffered {
            let want = len.max(CHUNK).min((end - offset) as usize);
            if self.buf.capacity() > 4 * CHUNK && want <= CHUNK {
                // One huge record must not pin its buffer for good.
                self.buf = Vec::new();
            }
            self.buf.resize(want, 0);
            self.buf_at = offset;
            if let Err(e) = self.file.read_exact_at(&mut self.buf, offset) {
                self.buf.clear();
                return match e.kind() {
                    // Shorter than we knew: cut by someone else.
                    io::ErrorKind::UnexpectedEof => Ok(None),
                    _ => Err(e),
                };
            }
        }
        let at = (offset - self.buf_at) as usize;
        Ok(Some(&self.buf[at..at + len]))
    }
}

/// What the scan at open found in one segment file.
#[derive(Debug, Clone, PartialEq)]
pub struct Scan {
    /// Good records before `valid_end`.
    pub records: u64,
    /// End of the last good record.
    pub valid_end: u64,
    pub file_len: u64,
    /// Creation times of the good records (infinite when there are none).
    pub oldest: f64,
    pub newest: f64,
    /// Why the scan stopped before `file_len`.
    pub problem: Option<&'static str>,
}

/// Reads a whole segment, checking every frame, up to the first that is
/// incomplete or bad.
pub fn scan(path: &Path) -> io::Result<Scan> {
    let mut reader = Reader::open(path)?;
    let file_len = reader.file.metadata()?.len();
    let mut s = Scan {
        records: 0,
        valid_end: 0,
        file_len,
        oldest: f64::INFINITY,
        newest: f64::NEG_INFINITY,
        problem: None,
    };
    loop {
        let next = match reader.frame(s.valid_end, file_len)? {
            Next::Frame { body, crc, next } => match frame::check(body, crc) {
                Ok(Body { created, .. }) => {
                    s.oldest = s.oldest.min(created);
                    s.newest = s.newest.max(created);
                    next
                }
                Err(why) => {
                    s.problem = Some(why);
                    break;
                }
            },
            Next::End => break,
            Next::Torn => {
                s.problem = Some("incomplete record");
                break;
            }
            Next::Bad(why) => {
                s.problem = Some(why);
                break;
            }
        };
        s.records += 1;
        s.valid_end = next;
    }
    Ok(s)
}
