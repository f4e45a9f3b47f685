//! Counters and timings every stage records, read by the health topic, the
//! systemd STATUS line, the watchdog and the shutdown summary. Workers and
//! the MQTT task update them concurrently; nothing here blocks for long.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::codec::ErrorCode;

/// Per-model counters. Every message routed to a model ends in exactly one
/// of `succeeded` or one `errors` bucket (`overloaded` counts drops).
#[derive(Debug)]
pub struct ModelStats {
    pub received: AtomicU64,
    pub succeeded: AtomicU64,
    errors: [AtomicU64; ErrorCode::ALL.len()],
    /// End-to-end latency (arrival to result) in microseconds since the last
    /// health report. A std Mutex: held for one `record` by a worker or one
    /// swap by the health tick, never across an await.
    latency_us: Mutex<Histogram<u64>>,
    /// Stage timings of every result since start, for Prometheus (which
    /// wants cumulative histograms, so the interval one above cannot
    /// serve): atomic adds only, no lock on the worker's path.
    pub stages: StageHistograms,
    /// Windowed models only.
    pub window: WindowStats,
}

impl Default for ModelStats {
    fn default() -> Self {
        ModelStats {
            received: AtomicU64::new(0),
            succeeded: AtomicU64::new(0),
            errors: Default::default(),
            latency_us: Mutex::new(new_histogram()),
            stages: StageHistograms::default(),
            window: WindowStats::default(),
        }
    }
}

/// A windowed model's streams. For such a model `succeeded` counts
/// windows served, and a reading that completes no window has no reply of
/// its own.
#[derive(Debug, Default)]
pub struct WindowStats {
    pub open_streams: AtomicU64,
    /// Windows completed (each runs the model once).
    pub windows: AtomicU64,
    pub readings: AtomicU64,
    /// Readings dropped before any window included them: a stream
    /// restarted (gap, out of order, bad reading), forgotten (idle), or
    /// refused (`max_streams`).
    pub readings_discarded: AtomicU64,
}

/// [`WindowStats`] read at one moment, as health reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct WindowCounts {
    pub open_streams: u64,
    pub windows: u64,
    pub readings: u64,
    pub readings_discarded: u64,
}

impl WindowStats {
    pub fn counts(&self) -> WindowCounts {
        WindowCounts {
            open_streams: self.open_streams.load(Ordering::Relaxed),
            windows: self.windows.load(Ordering::Relaxed),
            readings: self.readings.load(Ordering::Relaxed),
            readings_discarded: self.readings_discarded.load(Ordering::Relaxed),
        }
    }
}

/// Upper bounds (inclusive) of the cumulative latency buckets, in
/// nanoseconds: 50 µs (a small model's invoke) to 10 s (a big image on a
/// slow board, or a long queue), 1-2.5-5 steps. Prometheus reads them as
/// the `le` labels, in seconds.
pub const LATENCY_BOUNDS_NS: [u64; 17] = [
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// Buckets per histogram: one per bound, and one above the last (`+Inf`).
pub const LATENCY_BUCKETS: usize = LATENCY_BOUNDS_NS.len() + 1;

/// A histogram of durations since start over [`LATENCY_BOUNDS_NS`]. One
/// record is two relaxed atomic adds (its bucket, the sum); a read takes
/// each bucket once, so the count it reports is the sum of the buckets it
/// read and never disagrees with them.
#[derive(Debug, Default)]
pub struct Cumulative {
    /// Per bucket (not cumulative): samples above the previous bound and
    /// up to this one; the last holds those above every bound.
    buckets: [AtomicU64; LATENCY_BUCKETS],
    sum_ns: AtomicU64,
}

/// A [`Cumulative`] read at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CumulativeCounts {
    /// Per bucket, not cumulative, as in [`Cumulative`].
    pub buckets: [u64; LATENCY_BUCKETS],
    pub sum_ns: u64,
}

impl CumulativeCounts {
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }
}

impl Cumulative {
    pub fn record(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        // The first bound at or above the sample (`le` is inclusive).
        let i = LATENCY_BOUNDS_NS.partition_point(|&b| b < ns);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    pub fn counts(&self) -> CumulativeCounts {
        CumulativeCounts {
            buckets: std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed)),
            sum_ns: self.sum_ns.load(Ordering::Relaxed),
        }
    }
}

/// The stages of a result, as its `latency_ms` names them: `queue` (arrival
/// to a worker taking it), `pre` (decoding and quantizing), `invoke` (the
/// model run), `post` (dequantizing and ranking) and `total` (arrival to
/// the result built).
#[derive(Debug, Default)]
pub struct StageHistograms {
    pub queue: Cumulative,
    pub pre: Cumulative,
    pub invoke: Cumulative,
    pub post: Cumulative,
    pub total: Cumulative,
}

/// One result's stage durations.
#[derive(Debug, Clone, Copy)]
pub struct StageTimes {
    pub queue: Duration,
    pub pre: Duration,
    pub invoke: Duration,
    pub post: Duration,
    pub total: Duration,
}

impl StageHistograms {
    pub fn record(&self, t: &StageTimes) {
        self.queue.record(t.queue);
        self.pre.record(t.pre);
        self.invoke.record(t.invoke);
        self.post.record(t.post);
        self.total.record(t.total);
    }

    /// (stage name as `latency_ms` spells it, histogram), `total` last.
    pub fn each(&self) -> [(&'static str, &Cumulative); 5] {
        [
            ("queue", &self.queue),
            ("pre", &self.pre),
            ("invoke", &self.invoke),
            ("post", &self.post),
            ("total", &self.total),
        ]
    }
}

/// 1 µs to 10 min at 2 significant digits (within 1%, as the interval's
/// percentiles are reported): 3 digits took 172 KB per model, all of it
/// resident, and the same again at every interval.
fn new_histogram() -> Histogram<u64> {
    // Constant bounds, checked by the tests below.
    Histogram::new_with_bounds(1, 600_000_000, 2).expect("valid histogram bounds")
}

/// Latency percentiles over one reporting interval, in milliseconds.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl ModelStats {
    pub fn error(&self, code: ErrorCode) {
        self.errors[code.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn errors(&self, code: ErrorCode) -> u64 {
        self.errors[code.index()].load(Ordering::Relaxed)
    }

    pub fn succeeded(&self) -> u64 {
        self.succeeded.load(Ordering::Relaxed)
    }

    pub fn record_latency(&self, micros: u64) {
        if let Ok(mut h) = self.latency_us.lock() {
            // Saturate rather than drop an out-of-range sample.
            h.saturating_record(micros.max(1));
        }
    }

    /// Takes the interval's latencies and starts a new interval.
    pub fn take_latency(&self) -> LatencySummary {
        let Ok(mut h) = self.latency_us.lock() else {
            return LatencySummary::default();
        };
        let ms = |us: u64| us as f64 / 1000.0;
        let summary = LatencySummary {
            count: h.len(),
            p50: ms(h.value_at_quantile(0.50)),
            p95: ms(h.value_at_quantile(0.95)),
            p99: ms(h.value_at_quantile(0.99)),
            max: ms(h.max()),
        };
        h.reset();
        summary
    }

    /// "received=10 ok=8 bad_json=1 overloaded=1": nonzero error codes only.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "received={} ok={}",
            self.received.load(Ordering::Relaxed),
            self.succeeded()
        );
        for code in ErrorCode::ALL {
            let n = self.errors(code);
            if n > 0 {
                s.push_str(&format!(" {}={n}", code.as_str()));
            }
        }
        s
    }
}

/// What one worker thread is doing, for the watchdog: the time it started
/// its current message, or 0 when idle (and likewise its decoder's, when
/// it decodes ahead: `worker::ahead`), and the kernel's ids of the two
/// threads (0: none), by which the watchdog watches an `auto` worker in
/// the background for starving and returns it from outside
/// (`worker::sched::StarveWatch`); and, for health, the scheduling class
/// it runs in.
#[derive(Debug)]
pub struct WorkerBeat {
    epoch: Instant,
    busy_since_ms: AtomicU64,
    decoding_since_ms: AtomicU64,
    worker_tid: AtomicI32,
    decoder_tid: AtomicI32,
    class: AtomicU8,
}

/// Marks the calling thread as a worker's (or its decoder's) in its beat
/// until dropped, as the thread ends.
#[derive(Debug)]
pub struct OnThread<'a> {
    tid: &'a AtomicI32,
}

impl Drop for OnThread<'_> {
    fn drop(&mut self) {
        self.tid.store(0, Ordering::Relaxed);
    }
}

/// The scheduling class a worker thread found itself in when it started
/// (`models::priority`): what health reports next to the configured
/// `worker_priority`, so a refused class is seen, not only logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum WorkerClass {
    /// Not yet started (a worker between its spawn and its first step).
    Starting = 0,
    Normal = 1,
    /// `SCHED_IDLE`, as `worker_priority = "background"` asked, or moved
    /// there by `auto` (`worker::sched`).
    Background = 2,
    /// `worker_priority = "background"` (or `auto`) asked and the kernel
    /// refused: the thread runs at normal priority.
    Refused = 3,
}

impl WorkerClass {
    fn from_u8(v: u8) -> WorkerClass {
        match v {
            1 => WorkerClass::Normal,
            2 => WorkerClass::Background,
            3 => WorkerClass::Refused,
            _ => WorkerClass::Starting,
        }
    }
}

/// How many of a model's workers are in `class`: health and the metrics
/// endpoint count the same beats.
pub fn count_in<'a>(beats: impl IntoIterator<Item = &'a WorkerBeat>, class: WorkerClass) -> usize {
    beats.into_iter().filter(|b| b.class() == class).count()
}

impl WorkerBeat {
    pub fn new(epoch: Instant) -> WorkerBeat {
        WorkerBeat {
            epoch,
            busy_since_ms: AtomicU64::new(0),
            decoding_since_ms: AtomicU64::new(0),
            worker_tid: AtomicI32::new(0),
            decoder_tid: AtomicI32::new(0),
            class: AtomicU8::new(WorkerClass::Starting as u8),
        }
    }

    /// Called on the worker's thread (`decoder` false) or its decoder's,
    /// as it starts.
    pub fn on_this_thread(&self, decoder: bool) -> OnThread<'_> {
        let tid = if decoder {
            &self.decoder_tid
        } else {
            &self.worker_tid
        };
        // SAFETY: no arguments; gettid cannot fail.
        tid.store(unsafe { libc::gettid() }, Ordering::Relaxed);
        OnThread { tid }
    }

    /// The kernel's ids of the worker's thread and of its decoder's (0:
    /// none).
    pub fn threads(&self) -> [i32; 2] {
        [&self.worker_tid, &self.decoder_tid].map(|t| t.load(Ordering::Relaxed))
    }

    /// The kernel's ids of the worker's thread and its decoder's, those
    /// that run.
    pub fn tids(&self) -> impl Iterator<Item = i32> {
        self.threads().into_iter().filter(|&t| t != 0)
    }

    /// Takes the return of a background worker to the normal class: true
    /// for the one caller that moves the beat from `Background` to
    /// `Normal`, the worker's own check or the watchdog's
    /// (`worker::sched`), which may decide at the same time; that caller
    /// then moves the threads.
    pub fn claim_return(&self) -> bool {
        self.class
            .compare_exchange(
                WorkerClass::Background as u8,
                WorkerClass::Normal as u8,
                Ordering::Relaxed,
                Ordering::Relaxed,
            )
            .is_ok()
    }

    /// Called by the worker thread as it starts, and again whenever
    /// `worker_priority = "auto"` moves it (`worker::sched`).
    pub fn entered(&self, class: WorkerClass) {
        self.class.store(class as u8, Ordering::Relaxed);
    }

    pub fn class(&self) -> WorkerClass {
        WorkerClass::from_u8(self.class.load(Ordering::Relaxed))
    }

    pub fn busy(&self) {
        self.busy_since_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    pub fn idle(&self) {
        self.busy_since_ms.store(0, Ordering::Relaxed);
    }

    /// Called by the worker's decoder as it starts decoding a message.
    pub fn decoding(&self) {
        self.decoding_since_ms
            .store(self.now_ms(), Ordering::Relaxed);
    }

    pub fn decoded(&self) {
        self.decoding_since_ms.store(0, Ordering::Relaxed);
    }

    /// How long the current message has been running, if any: the longer
    /// of the worker's and its decoder's.
    pub fn busy_for(&self) -> Option<std::time::Duration> {
        let since = [&self.busy_since_ms, &self.decoding_since_ms]
            .into_iter()
            .map(|s| s.load(Ordering::Relaxed))
            .filter(|&s| s != 0)
            .min()?;
        Some(std::time::Duration::from_millis(
            self.now_ms().saturating_sub(since),
        ))
    }

    /// +1 so that a job started at the epoch is not read as idle.
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }
}

/// Daemon-wide counters.
#[derive(Debug, Default)]
pub struct DaemonStats {
    pub connected: AtomicBool,
    pub connections: AtomicU64,
    pub connection_errors: AtomicU64,
    /// Messages that matched no model (e.g. left over in a broker session).
    pub unrouted: AtomicU64,
    /// Results/errors that could not be handed to the MQTT client.
    pub publish_failures: AtomicU64,
    /// Time the input link spent not reading because the publisher was
    /// behind (the broker held, or past its limits dropped, what came).
    pub input_paused_us: AtomicU64,
    /// Messages on the daemon's own device topics, taken and ignored (a
    /// subscription that matches them; answering would feed on itself).
    pub own_ignored: AtomicU64,
    /// Time the input link was down, counted when it is back.
    pub offline_us: AtomicU64,
    /// Acknowledgements not sent because their message came on an earlier
    /// connection (the broker redelivers it).
    pub acks_stale: AtomicU64,
    /// Inputs left unacknowledged because an answer to them was lost (the
    /// broker redelivers them after the input link reconnects).
    pub acks_withheld: AtomicU64,
    /// Answers confirmed by the broker that receives them.
    pub answers_confirmed: AtomicU64,
    pub outbox: OutboxGauge,
    /// The input link (subscriptions, inputs).
    pub input_link: LinkStats,
    /// The output link (results, errors, status, health).
    pub output_link: LinkStats,
}

/// The outbox as the health record shows it, written by its thread after
/// every operation.
#[derive(Debug, Default)]
pub struct OutboxGauge {
    /// False without an outbox (`[outbox] max_bytes = 0`).
    pub enabled: AtomicBool,
    /// Records waiting, and their bytes on disk.
    pub records: AtomicU64,
    pub bytes: AtomicU64,
    /// Unix milliseconds of the oldest record waiting; 0 when empty.
    pub oldest_ms: AtomicU64,
    /// Since start: records committed, replayed and confirmed, dropped to
    /// make room (`drop_oldest`), refused for lack of room
    /// (`reject_new`), dropped as older than `max_age_secs`, answers
    /// that could not be written (their inputs are not acknowledged), and
    /// records too large to replay (written under a larger
    /// `max_packet_bytes`).
    pub stored: AtomicU64,
    pub replayed: AtomicU64,
    pub dropped_full: AtomicU64,
    pub rejected_full: AtomicU64,
    pub expired: AtomicU64,
    pub write_errors: AtomicU64,
    pub too_large: AtomicU64,
    /// Why the last record was lost, if one was.
    pub last_loss: Mutex<Option<String>>,
}

/// One broker connection as health reports it. Written by `mqtt`, read by
/// `health`; here so that neither imports the other.
#[derive(Debug, Default)]
pub struct LinkStats {
    /// "mqtt://host:port" or "mqtts://host:port", set when the link starts.
    broker: Mutex<String>,
    pub connected: AtomicBool,
    /// Why the last connection attempt failed or the connection was lost;
    /// None from the next successful connect on. A std Mutex: set and
    /// read once per event, never held across an await.
    last_error: Mutex<Option<String>>,
    /// Keep-alive pings the broker left unanswered while it kept sending
    /// (its queue for this client long or full); the connection stayed up.
    pub pings_unanswered: AtomicU64,
}

impl LinkStats {
    pub fn set_broker(&self, url: String) {
        match self.broker.lock() {
            Ok(mut g) => *g = url,
            Err(p) => *p.into_inner() = url,
        }
    }

    pub fn broker(&self) -> String {
        match self.broker.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// `Some(why)` when a connection fails, None once one succeeds.
    pub fn set_last_error(&self, why: Option<String>) {
        match self.last_error.lock() {
            Ok(mut g) => *g = why,
            Err(p) => *p.into_inner() = why,
        }
    }

    pub fn last_error(&self) -> Option<String> {
        match self.last_error.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_interval_is_taken_and_reset() {
        let s = ModelStats::default();
        for us in [100, 200, 300, 400, 10_000] {
            s.record_latency(us);
        }
        let l = s.take_latency();
        assert_eq!(l.count, 5);
        assert!((l.p50 - 0.3).abs() < 0.01, "{l:?}");
        // Within the histogram's 1%.
        assert!((l.max - 10.0).abs() < 0.1, "{l:?}");
        assert_eq!(s.take_latency().count, 0);
    }

    #[test]
    fn cumulative_histogram_puts_samples_at_their_inclusive_bound() {
        let h = Cumulative::default();
        // At a bound, just above it, below the first, above the last.
        h.record(Duration::from_micros(50));
        h.record(Duration::from_nanos(50_001));
        h.record(Duration::from_nanos(1));
        h.record(Duration::from_secs(11));
        h.record(Duration::from_secs(10));
        let c = h.counts();
        assert_eq!(c.buckets[0], 2, "{c:?}");
        assert_eq!(c.buckets[1], 1, "{c:?}");
        assert_eq!(c.buckets[LATENCY_BUCKETS - 2], 1, "{c:?}");
        assert_eq!(c.buckets[LATENCY_BUCKETS - 1], 1, "{c:?}");
        assert_eq!(c.count(), 5);
        assert_eq!(
            c.sum_ns,
            50_000 + 50_001 + 1 + 11_000_000_000 + 10_000_000_000
        );
        assert!(LATENCY_BOUNDS_NS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn worker_beat_reports_busy_time() {
        let beat = WorkerBeat::new(Instant::now());
        assert!(beat.busy_for().is_none());
        beat.busy();
        assert!(beat.busy_for().is_some());
        beat.idle();
        assert!(beat.busy_for().is_none());
        // A decoder's message counts as the worker's own.
        beat.decoding();
        assert!(beat.busy_for().is_some());
        beat.busy();
        beat.decoded();
        assert!(beat.busy_for().is_some());
        beat.idle();
        assert!(beat.busy_for().is_none());
    }
}
