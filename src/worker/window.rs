//! Windows over streams of readings (`[models.window]`): each stream (a
//! key rendered from the topic) keeps its last `size` readings; every
//! `stride` new readings complete a window, which the worker runs through
//! the model. Gaps and readings older than their stream's last restart the
//! window. Memory is bounded: `size` readings per stream, `max_streams`
//! streams, silent streams forgotten after `idle_timeout`.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::codec::{ErrorCode, Failure};
use crate::models::WindowShape;

/// A completed window: `size` readings of `fields` values, oldest first.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    pub key: String,
    /// Windows of this stream so far, counting this one (from 1).
    pub seq: u64,
    /// Timestamps of the first and last reading (Unix seconds).
    pub start: f64,
    pub end: f64,
    /// Readings in the window (the window's size).
    pub readings: usize,
    pub values: Vec<f32>,
}

/// What pushing one message's readings did.
#[derive(Debug, Default, PartialEq)]
pub struct Pushed {
    pub windows: Vec<Window>,
    /// Gaps and out-of-order readings (each restarted the window), or the
    /// refusal of a new stream beyond `max_streams`.
    pub failures: Vec<Failure>,
}

/// The open streams of one model. Counters are cumulative.
pub struct Streams {
    shape: WindowShape,
    streams: HashMap<String, Stream>,
    last_sweep: Instant,
    pub windows: u64,
    pub readings: u64,
    /// Readings dropped before they were part of any window: a restart, an
    /// idle stream forgotten, a stream refused.
    pub discarded: u64,
}

struct Stream {
    values: VecDeque<f32>,
    stamps: VecDeque<f64>,
    /// Readings held that no window has included yet.
    fresh: usize,
    seq: u64,
    last_seen: Instant,
}

impl Stream {
    fn new(shape: &WindowShape, now: Instant) -> Stream {
        Stream {
            values: VecDeque::with_capacity(shape.size * shape.fields),
            stamps: VecDeque::with_capacity(shape.size),
            fresh: 0,
            seq: 0,
            last_seen: now,
        }
    }

    /// Drops every held reading; returns how many were in no window yet.
    fn restart(&mut self) -> usize {
        self.values.clear();
        self.stamps.clear();
        std::mem::take(&mut self.fresh)
    }
}

impl Streams {
    pub fn new(shape: WindowShape, now: Instant) -> Streams {
        Streams {
            shape,
            streams: HashMap::new(),
            last_sweep: now,
            windows: 0,
            readings: 0,
            discarded: 0,
        }
    }

    pub fn open(&self) -> usize {
        self.streams.len()
    }

    /// Appends readings (`values`: `fields` per reading; `stamps`: one per
    /// reading, Unix seconds) to the stream `key`.
    pub fn push(&mut self, key: &str, values: &[f32], stamps: &[f64], now: Instant) -> Pushed {
        let mut out = Pushed::default();
        let shape = self.shape;
        if !self.streams.contains_key(key) {
            if self.streams.len() >= shape.max_streams {
                self.sweep(now);
            }
            if self.streams.len() >= shape.max_streams {
                self.discarded += stamps.len() as u64;
                out.failures.push(Failure::new(
                    ErrorCode::Overloaded,
                    format!(
                        "stream \"{key}\" refused: the model already has max_streams = {} open streams (a stream silent for idle_timeout_secs = {} is forgotten)",
                        shape.max_streams,
                        shape.idle_timeout.as_secs_f64()
                    ),
                ));
                return out;
            }
            self.streams
                .insert(key.to_string(), Stream::new(&shape, now));
        }
        let Some(stream) = self.streams.get_mut(key) else {
            return out;
        };
        stream.last_seen = now;
        for (i, &ts) in stamps.iter().enumerate() {
            if let Some(&last) = stream.stamps.back() {
                let restart = if ts < last {
                    Some((
                        ErrorCode::OutOfOrder,
                        format!(
                            "stream \"{key}\": a reading at {ts:.3} is {:.3} s older than the previous one ({last:.3})",
                            last - ts
                        ),
                    ))
                } else {
                    shape
                        .max_gap
                        .filter(|gap| ts - last > gap.as_secs_f64())
                        .map(|gap| {
                            (
                                ErrorCode::StreamGap,
                                format!(
                                    "stream \"{key}\": {:.3} s since the previous reading (max_gap_ms = {})",
                                    ts - last,
                                    gap.as_millis()
                                ),
                            )
                        })
                };
                if let Some((code, what)) = restart {
                    let dropped = stream.restart();
                    self.discarded += dropped as u64;
                    out.failures.push(Failure::new(
                        code,
                        format!(
                            "{what}; the window restarts with this reading ({dropped} earlier reading(s) that were in no window yet discarded)"
                        ),
                    ));
                }
            }
            let row = &values[i * shape.fields..(i + 1) * shape.fields];
            stream.values.extend(row);
            stream.stamps.push_back(ts);
            stream.fresh += 1;
            self.readings += 1;
            if stream.stamps.len() == shape.size {
                stream.seq += 1;
                self.windows += 1;
                let start = stream.stamps.front().copied().unwrap_or(ts);
                out.windows.push(Window {
                    key: key.to_string(),
                    seq: stream.seq,
                    start,
                    end: ts,
                    readings: shape.size,
                    values: stream.values.iter().copied().collect(),
                });
                stream.fresh = 0;
                stream.stamps.drain(..shape.stride);
                stream.values.drain(..shape.stride * shape.fields);
            }
        }
        if now.saturating_duration_since(self.last_sweep) >= sweep_interval(&shape) {
            self.sweep(now);
        }
        out
    }

    /// Drops the partial window of stream `key` (a message of it was
    /// refused); returns how many readings that discarded.
    pub fn restart(&mut self, key: &str) -> usize {
        let dropped = self.streams.get_mut(key).map_or(0, Stream::restart);
        self.discarded += dropped as u64;
        dropped
    }

    /// Forgets streams silent for `idle_timeout`.
    pub fn sweep(&mut self, now: Instant) {
        self.last_sweep = now;
        let timeout = self.shape.idle_timeout;
        let mut discarded = 0;
        self.streams.retain(|_, s| {
            let keep = now.saturating_duration_since(s.last_seen) < timeout;
            if !keep {
                discarded += s.fresh as u64;
            }
            keep
        });
        self.discarded += discarded;
        if self.streams.capacity() > 4 * self.streams.len().max(16) {
            // A flood of keys that has passed leaves a large table behind.
            self.streams.shrink_to_fit();
        }
    }

    /// Whether a sweep is due; the worker sweeps while no message comes.
    pub fn sweep_due(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.last_sweep) >= sweep_interval(&self.shape)
    }
}

/// Often enough that a stream is forgotten within a quarter of its
/// timeout (at most a second) after it; rarely enough to cost nothing.
pub fn sweep_interval(shape: &WindowShape) -> Duration {
    (shape.idle_timeout / 4).min(Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(size: usize, stride: usize) -> WindowShape {
        WindowShape {
            fields: 2,
            size,
            stride,
            max_gap: Some(Duration::from_millis(1000)),
            idle_timeout: Duration::from_secs(10),
            max_streams: 3,
        }
    }

    /// Readings i = from..to of a stream at 10 Hz: values (i, -i), ts i/10.
    fn readings(from: usize, to: usize) -> (Vec<f32>, Vec<f64>) {
        let values = (from..to).flat_map(|i| [i as f32, -(i as f32)]).collect();
        let stamps = (from..to).map(|i| i as f64 / 10.0).collect();
        (values, stamps)
    }

    #[test]
    fn overlapping_windows_every_stride_readings() {
        let now = Instant::now();
        let mut s = Streams::new(shape(4, 2), now);
        let (v, t) = readings(0, 9);
        let out = s.push("a", &v, &t, now);
        assert!(out.failures.is_empty());
        let seqs: Vec<(u64, f64, f64)> = out
            .windows
            .iter()
            .map(|w| (w.seq, w.start, w.end))
            .collect();
        assert_eq!(seqs, vec![(1, 0.0, 0.3), (2, 0.2, 0.5), (3, 0.4, 0.7)]);
        assert_eq!(
            out.windows[1].values,
            vec![2.0, -2.0, 3.0, -3.0, 4.0, -4.0, 5.0, -5.0]
        );
        assert_eq!((s.windows, s.readings, s.discarded), (3, 9, 0));
        // One at a time gives the same windows.
        let mut one = Streams::new(shape(4, 2), now);
        let mut windows = Vec::new();
        for i in 0..9 {
            windows.extend(
                one.push("a", &v[2 * i..2 * i + 2], &t[i..i + 1], now)
                    .windows,
            );
        }
        assert_eq!(windows, out.windows);
    }

    #[test]
    fn streams_never_mix() {
        let now = Instant::now();
        let mut s = Streams::new(shape(2, 2), now);
        let (v, t) = readings(0, 2);
        assert!(s.push("a", &v[..2], &t[..1], now).windows.is_empty());
        assert!(s.push("b", &v[..2], &t[..1], now).windows.is_empty());
        let w = s.push("a", &v[2..], &t[1..], now).windows;
        assert_eq!(w.len(), 1);
        assert_eq!((w[0].key.as_str(), w[0].seq), ("a", 1));
        assert_eq!(s.open(), 2);
    }

    #[test]
    fn a_gap_restarts_the_window_with_the_new_reading() {
        let now = Instant::now();
        let mut s = Streams::new(shape(3, 3), now);
        let (v, t) = readings(0, 2);
        s.push("a", &v, &t, now);
        let out = s.push("a", &[7.0, 8.0, 9.0, 10.0], &[5.0, 5.1], now);
        assert_eq!(out.failures.len(), 1);
        assert_eq!(out.failures[0].code, ErrorCode::StreamGap);
        assert!(
            out.failures[0]
                .message
                .contains("4.900 s since the previous reading (max_gap_ms = 1000)")
                && out.failures[0].message.contains("2 earlier reading(s)"),
            "{}",
            out.failures[0].message
        );
        assert!(out.windows.is_empty());
        let w = s.push("a", &[1.0, 1.0], &[5.2], now).windows;
        assert_eq!((w[0].start, w[0].end, w[0].seq), (5.0, 5.2, 1));
        assert_eq!(s.discarded, 2);
    }

    #[test]
    fn an_older_reading_restarts_the_window() {
        let now = Instant::now();
        let mut s = Streams::new(shape(3, 3), now);
        let (v, t) = readings(5, 7);
        s.push("a", &v, &t, now);
        let out = s.push("a", &[0.0, 0.0], &[0.1], now);
        assert_eq!(out.failures[0].code, ErrorCode::OutOfOrder);
        assert!(
            out.failures[0].message.contains("0.500 s older"),
            "{}",
            out.failures[0].message
        );
        // Equal timestamps are not out of order (coarse device clocks).
        assert!(s.push("a", &[0.0, 0.0], &[0.1], now).failures.is_empty());
    }

    #[test]
    fn streams_beyond_the_cap_are_refused_until_idle_ones_go() {
        let start = Instant::now();
        let mut s = Streams::new(shape(4, 4), start);
        let (v, t) = readings(0, 1);
        for key in ["a", "b", "c"] {
            assert!(s.push(key, &v, &t, start).failures.is_empty());
        }
        let out = s.push("d", &v, &t, start);
        assert_eq!(out.failures[0].code, ErrorCode::Overloaded);
        assert!(out.failures[0].message.contains("max_streams = 3"));
        assert_eq!(s.open(), 3);
        // Ten seconds on, "a".."c" are idle: "d" gets a place.
        let later = start + Duration::from_secs(10);
        assert!(s.push("d", &v, &t, later).failures.is_empty());
        assert_eq!(s.open(), 1);
        assert_eq!(s.discarded, 1 + 3);
    }

    #[test]
    fn a_flood_of_keys_leaves_no_memory_behind() {
        let start = Instant::now();
        let mut s = Streams::new(
            WindowShape {
                max_streams: 100_000,
                ..shape(4, 4)
            },
            start,
        );
        let (v, t) = readings(0, 1);
        for i in 0..50_000 {
            s.push(&format!("k{i}"), &v, &t, start);
        }
        assert!(s.streams.capacity() >= 50_000);
        s.sweep(start + Duration::from_secs(60));
        assert_eq!(s.open(), 0);
        assert!(s.streams.capacity() < 1000, "{}", s.streams.capacity());
    }

    /// Random keys, batch sizes, timestamps (in order, equal, older, gaps)
    /// and clock steps: streams never exceed the cap, every window has
    /// `size` readings in time order, and every reading is either in a
    /// window, still held, or counted as discarded.
    #[test]
    fn random_streams_keep_their_invariants() {
        let mut rng = crate::robustness::Rng::new(0x5eed);
        for _ in 0..200 {
            let size = 1 + rng.below(8);
            let shape = WindowShape {
                fields: 1 + rng.below(3),
                size,
                stride: 1 + rng.below(size),
                max_gap: rng.one_in(2).then(|| Duration::from_millis(500)),
                idle_timeout: Duration::from_secs(1 + rng.below(5) as u64),
                max_streams: 1 + rng.below(6),
            };
            let mut now = Instant::now();
            let mut s = Streams::new(shape, now);
            let mut ts = 100.0;
            let mut refused = 0u64;
            for _ in 0..300 {
                let key = format!("k{}", rng.below(10));
                let n = 1 + rng.below(5);
                let mut stamps = Vec::new();
                for _ in 0..n {
                    ts += match rng.below(10) {
                        0 => -1.0,
                        1 => 0.0,
                        2 => 2.0,
                        _ => 0.01,
                    };
                    stamps.push(ts);
                }
                let values: Vec<f32> = (0..n * shape.fields).map(|i| i as f32).collect();
                now += Duration::from_millis(rng.below(800) as u64);
                let out = s.push(&key, &values, &stamps, now);
                assert!(s.open() <= shape.max_streams);
                for w in &out.windows {
                    assert_eq!(w.values.len(), size * shape.fields);
                    assert!(w.start <= w.end, "{w:?}");
                    assert_eq!(w.readings, size);
                }
                if out.failures.iter().any(|f| f.code == ErrorCode::Overloaded) {
                    refused += n as u64;
                }
                if rng.one_in(50) {
                    s.restart(&key);
                }
            }
            // Every reading taken or refused is held (in no window yet),
            // discarded, or covered by a window; a window covers `stride`
            // fresh readings, or `size` when it is its stream's first
            // since a (re)start.
            let held: u64 = s.streams.values().map(|st| st.fresh as u64).sum();
            let covered = (s.readings + refused)
                .checked_sub(held + s.discarded)
                .expect("more readings held or discarded than came");
            let (stride, size) = (shape.stride as u64, size as u64);
            assert!(
                (s.windows * stride..=s.windows * size).contains(&covered),
                "{covered} readings covered by {} windows of {size}, stride {stride}",
                s.windows
            );
        }
    }
}
