//! The bounded queue in front of one model, with its overflow policy.
//!
//! A mutex-guarded deque and a condition variable rather than a channel:
//! crossbeam's blocking receive spins and calls `sched_yield` about four
//! times before it parks, once per message at moderate rates (seen with
//! strace at 1,000 msg/s), and on a loaded core every yield can hand the
//! CPU to another process. Here a worker with nothing to do sleeps at once,
//! and the producer only makes the wake-up syscall when a worker sleeps.
//! Eviction (`drop_oldest`) and the byte budget are decided under the same
//! lock as the push, so they cannot race with the workers.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use bytes::Bytes;

use crate::config::OverflowPolicy;
use crate::job::Job;

/// What [`JobReceiver::recv_until`] got.
pub enum Recv {
    Job(Queued),
    Timeout,
    Closed,
}

/// A job in a model's queue, with the payload bytes it holds charged to
/// the queue until the worker is done with it.
#[derive(Debug)]
pub struct Queued {
    pub job: Job,
    charge: Charge,
}

impl Queued {
    /// The payload is decoded and no longer needed: it is dropped (its
    /// memory freed, unless another model's queue shares it) and its bytes
    /// leave the queue's charge.
    pub fn drop_payload(&mut self) {
        self.job.payload = Bytes::new();
        self.charge
            .held
            .fetch_sub(self.charge.bytes, Ordering::Relaxed);
        self.charge.bytes = 0;
    }
}

/// Releases its bytes from the queue's total when dropped.
#[derive(Debug)]
struct Charge {
    held: Arc<AtomicUsize>,
    bytes: usize,
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.held.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// What became of an offered job.
#[derive(Debug)]
pub enum Offer {
    Queued,
    /// The queue was full and the policy refused the new job; it comes
    /// back, with how full the queue was.
    Rejected(Job, Fullness),
    /// The new job was queued by evicting the oldest one(s), which come back.
    Evicted(Vec<Job>),
    /// `drop_oldest` could not make room for the new job by evicting at
    /// most [`MAX_EVICTIONS`] of the oldest (or what holds the room is in
    /// the workers' hands): nothing was evicted, and the new job comes back.
    NoRoom(Job),
}

/// How full a queue was when it refused a job: what the refusal tells the
/// sender and the operator (which bound to raise, `queue_capacity` or
/// `queue_max_bytes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fullness {
    /// Jobs waiting (not those being served).
    pub queued: usize,
    pub capacity: usize,
    /// Payload bytes of the jobs waiting and being served.
    pub held: usize,
    pub max_bytes: usize,
}

/// The most queued messages one new message may push out under
/// `drop_oldest`. Each one is answered at once on the event loop's refusal
/// channel, which must never fill (`replies::REPLY_CAPACITY`; the event
/// loop pauses reading above a quarter of it, checked once per message):
/// without a bound, one large message behind thousands of small ones
/// evicted them all in one go, and most of their answers were lost. 64
/// keeps even a message that several models take inside the reserve.
pub const MAX_EVICTIONS: usize = 64;

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    ready: Condvar,
    capacity: usize,
}

#[derive(Debug, Default)]
struct State {
    jobs: VecDeque<Queued>,
    /// Workers blocked in `recv`/`recv_deadline`.
    sleeping: usize,
    /// Every producer handle is gone: workers finish the queue and exit.
    closed: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent across a panic (every change is one
        // push or pop), so poisoning is ignored.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Closes the queue when the last producer handle is dropped.
#[derive(Debug)]
struct Producers(Arc<Shared>);

impl Drop for Producers {
    fn drop(&mut self) {
        self.0.lock().closed = true;
        self.0.ready.notify_all();
    }
}

/// Producer side of one model's queue. Held by the MQTT task; dropping it
/// (on shutdown or when a reload retires the model) lets the workers finish
/// what is queued and exit.
///
/// Bounded twice: by message count (`queue_capacity`) and by the payload
/// bytes its messages hold (`queue_max_bytes`), so a burst of image-sized
/// payloads cannot grow the daemon's memory without limit.
#[derive(Debug, Clone)]
pub struct ModelQueue {
    shared: Arc<Shared>,
    _producers: Arc<Producers>,
    policy: OverflowPolicy,
    /// Payload bytes held by queued and in-progress jobs.
    held: Arc<AtomicUsize>,
    max_bytes: usize,
}

/// Consumer side: one clone per worker, plus one the supervisor keeps for
/// the queue depth and for answering leftovers when a drain times out.
#[derive(Debug, Clone)]
pub struct JobReceiver {
    shared: Arc<Shared>,
}

impl ModelQueue {
    /// Returns the queue and the receiver the workers share.
    pub fn bounded(
        capacity: usize,
        max_bytes: usize,
        policy: OverflowPolicy,
    ) -> (ModelQueue, JobReceiver) {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            ready: Condvar::new(),
            capacity: capacity.max(1),
        });
        (
            ModelQueue {
                shared: Arc::clone(&shared),
                _producers: Arc::new(Producers(Arc::clone(&shared))),
                policy,
                held: Arc::new(AtomicUsize::new(0)),
                max_bytes,
            },
            JobReceiver { shared },
        )
    }

    fn fullness(&self, queued: usize, held: usize) -> Fullness {
        Fullness {
            queued,
            capacity: self.shared.capacity,
            held,
            max_bytes: self.max_bytes,
        }
    }

    /// Whether a job of `bytes` fits beside `queued` jobs that with the
    /// workers' hold `held` bytes.
    fn fits_after(&self, queued: usize, held: usize, bytes: usize) -> bool {
        // An empty queue takes any one message (its size is already capped
        // by limits.max_payload_bytes).
        queued < self.shared.capacity && (held == 0 || held + bytes <= self.max_bytes)
    }

    /// How many of the oldest queued jobs must go for one of `bytes` to
    /// fit beside `held` bytes (read once by the caller, so this agrees
    /// with the `fits` it just made), if at most [`MAX_EVICTIONS`] do.
    /// Workers can only free room meanwhile, so it still fits once they
    /// are gone.
    fn evictions_to_fit(&self, st: &State, held: usize, bytes: usize) -> Option<usize> {
        let mut freed = 0;
        for (i, oldest) in st.jobs.iter().take(MAX_EVICTIONS).enumerate() {
            freed += oldest.charge.bytes;
            let n = i + 1;
            if self.fits_after(st.jobs.len() - n, held.saturating_sub(freed), bytes) {
                return Some(n);
            }
        }
        None
    }

    fn push(&self, st: &mut State, job: Job) {
        let bytes = job.payload.len();
        self.held.fetch_add(bytes, Ordering::Relaxed);
        st.jobs.push_back(Queued {
            job,
            charge: Charge {
                held: Arc::clone(&self.held),
                bytes,
            },
        });
    }

    /// Never blocks on the workers (they hold the lock only to push or
    /// pop): the MQTT event loop must keep polling.
    ///
    /// The queue keeps a copy of the payload of its own. A received payload
    /// is a slice of the MQTT client's read buffer (one allocation that
    /// every packet read into it shares, grown to twice the largest one),
    /// so a queued slice would keep the whole buffer alive: under overload
    /// that was several times the bytes the budget counts. The copy is made
    /// only for a message the queue takes, and outside the lock: a refused
    /// 1 MB image costs no copy, and the workers do not wait on a memcpy.
    /// A message several models take is copied by each queue: each budget
    /// then counts memory its queue alone holds.
    pub fn offer(&self, mut job: Job) -> Offer {
        let bytes = job.payload.len();
        if self.policy == OverflowPolicy::RejectNew {
            let st = self.shared.lock();
            // Read once: workers free bytes without the lock, and the
            // refusal must report what it decided on.
            let held = self.held.load(Ordering::Relaxed);
            if !self.fits_after(st.jobs.len(), held, bytes) {
                return Offer::Rejected(job, self.fullness(st.jobs.len(), held));
            }
        }
        // Between here and the lock below the workers can only free room.
        job.payload = Bytes::copy_from_slice(&job.payload);
        let mut st = self.shared.lock();
        let held = self.held.load(Ordering::Relaxed);
        let offer = if self.fits_after(st.jobs.len(), held, bytes) {
            self.push(&mut st, job);
            Offer::Queued
        } else if self.policy == OverflowPolicy::RejectNew {
            return Offer::Rejected(job, self.fullness(st.jobs.len(), held));
        } else {
            // DropOldest: evict from the front until the new job fits, if
            // few enough evictions make it fit.
            let Some(n) = self.evictions_to_fit(&st, held, bytes) else {
                return Offer::NoRoom(job);
            };
            let evicted = st.jobs.drain(..n).map(|oldest| oldest.job).collect();
            self.push(&mut st, job);
            Offer::Evicted(evicted)
        };
        let wake = st.sleeping > 0 && !st.jobs.is_empty();
        drop(st);
        if wake {
            self.shared.ready.notify_one();
        }
        offer
    }

    /// The payload bytes its queued and in-progress jobs may hold
    /// (`queue_max_bytes`).
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// Payload bytes held by this model's queued and in-progress jobs.
    #[cfg(test)]
    pub fn held_bytes(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }
}

impl JobReceiver {
    /// The next job; waits for one. None once the queue is closed and empty.
    pub fn recv(&self) -> Option<Queued> {
        let mut st = self.shared.lock();
        loop {
            if let Some(q) = st.jobs.pop_front() {
                return Some(q);
            }
            if st.closed {
                return None;
            }
            st.sleeping += 1;
            st = self
                .shared
                .ready
                .wait(st)
                .unwrap_or_else(|p| p.into_inner());
            st.sleeping -= 1;
        }
    }

    /// The next job if one is queued now.
    pub fn try_recv(&self) -> Option<Queued> {
        self.shared.lock().jobs.pop_front()
    }

    /// The next job, waiting no later than `deadline`.
    pub fn recv_deadline(&self, deadline: Instant) -> Option<Queued> {
        let mut st = self.shared.lock();
        loop {
            if let Some(q) = st.jobs.pop_front() {
                return Some(q);
            }
            let now = Instant::now();
            if st.closed || now >= deadline {
                return None;
            }
            st.sleeping += 1;
            st = match self.shared.ready.wait_timeout(st, deadline - now) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
            st.sleeping -= 1;
        }
    }

    /// The next job, waiting no later than `deadline`; tells a timeout
    /// from a queue that is closed and empty.
    pub fn recv_until(&self, deadline: Instant) -> Recv {
        match self.recv_deadline(deadline) {
            Some(q) => Recv::Job(q),
            None => {
                let st = self.shared.lock();
                if st.closed && st.jobs.is_empty() {
                    Recv::Closed
                } else {
                    Recv::Timeout
                }
            }
        }
    }

    /// Messages waiting (not counting those a worker is serving).
    pub fn len(&self) -> usize {
        self.shared.lock().jobs.len()
    }

    /// Takes everything still queued (a drain that timed out answers them).
    pub fn take_all(&self) -> Vec<Queued> {
        self.shared.lock().jobs.drain(..).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(n: u8) -> Job {
        sized(n, 1)
    }

    fn sized(n: u8, len: usize) -> Job {
        Job {
            topic: format!("t/{n}"),
            payload: Bytes::from(vec![n; len]),
            received_at: 0.0,
            received: Instant::now(),
            ack: None,
            properties: None,
        }
    }

    /// A job as received: its payload a slice of a larger buffer (the MQTT
    /// client's read buffer) that other packets share.
    fn received(buffer: &Bytes, n: u8) -> Job {
        let mut j = job(n);
        j.payload = buffer.slice(100..200);
        j
    }

    fn within(part: &Bytes, buffer: &Bytes) -> bool {
        buffer.as_ptr_range().contains(&part.as_ptr())
    }

    #[test]
    fn a_taken_payload_is_copied_and_a_refused_one_is_not() {
        let buffer = Bytes::from((0..=255).cycle().take(4096).collect::<Vec<u8>>());
        let (q, rx) = ModelQueue::bounded(1, 1 << 20, OverflowPolicy::RejectNew);
        assert!(matches!(q.offer(received(&buffer, 1)), Offer::Queued));
        match q.offer(received(&buffer, 2)) {
            Offer::Rejected(j, _) => assert!(within(&j.payload, &buffer)),
            other => panic!("{other:?}"),
        }
        let taken = rx.recv().unwrap();
        assert!(!within(&taken.job.payload, &buffer));
        assert_eq!(taken.job.payload, buffer.slice(100..200));
        // drop_oldest takes every new message: each a copy of its own.
        let (q, rx) = ModelQueue::bounded(1, 1 << 20, OverflowPolicy::DropOldest);
        assert!(matches!(q.offer(received(&buffer, 1)), Offer::Queued));
        assert!(matches!(q.offer(received(&buffer, 2)), Offer::Evicted(_)));
        let taken = rx.recv().unwrap();
        assert_eq!(taken.job.topic, "t/2");
        assert!(!within(&taken.job.payload, &buffer));
    }

    #[test]
    fn reject_new_returns_the_new_job() {
        let (q, rx) = ModelQueue::bounded(1, 1 << 20, OverflowPolicy::RejectNew);
        assert!(matches!(q.offer(job(1)), Offer::Queued));
        match q.offer(job(2)) {
            Offer::Rejected(j, full) => {
                assert_eq!(j.topic, "t/2");
                let want = Fullness {
                    queued: 1,
                    capacity: 1,
                    held: 1,
                    max_bytes: 1 << 20,
                };
                assert_eq!(full, want);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(rx.recv().unwrap().job.topic, "t/1");
    }

    #[test]
    fn workers_get_everything_then_see_the_close() {
        let (q, rx) = ModelQueue::bounded(64, 1 << 20, OverflowPolicy::RejectNew);
        let workers: Vec<_> = (0..3)
            .map(|_| {
                let rx = rx.clone();
                std::thread::spawn(move || {
                    let mut got = Vec::new();
                    while let Some(queued) = rx.recv() {
                        got.push(queued.job.payload[0]);
                    }
                    got
                })
            })
            .collect();
        let mut sent = 0u32;
        while sent < 200 {
            match q.offer(job((sent % 256) as u8)) {
                Offer::Queued => sent += 1,
                Offer::Rejected(..) => std::thread::yield_now(),
                Offer::Evicted(_) | Offer::NoRoom(_) => unreachable!("reject_new never evicts"),
            }
        }
        drop(q);
        let total: usize = workers.into_iter().map(|w| w.join().unwrap().len()).sum();
        assert_eq!(total, 200);
        assert!(rx.recv().is_none());
    }

    #[test]
    fn recv_deadline_gives_up_at_the_deadline() {
        let (q, rx) = ModelQueue::bounded(4, 1 << 20, OverflowPolicy::RejectNew);
        let start = Instant::now();
        assert!(rx
            .recv_deadline(start + std::time::Duration::from_millis(20))
            .is_none());
        assert!(start.elapsed() >= std::time::Duration::from_millis(20));
        q.offer(job(9));
        assert_eq!(rx.recv_deadline(Instant::now()).unwrap().job.topic, "t/9");
    }

    #[test]
    fn drop_oldest_returns_the_oldest_job() {
        let (q, rx) = ModelQueue::bounded(2, 1 << 20, OverflowPolicy::DropOldest);
        q.offer(job(1));
        q.offer(job(2));
        match q.offer(job(3)) {
            Offer::Evicted(j) => assert_eq!(j[0].topic, "t/1"),
            other => panic!("{other:?}"),
        }
        assert_eq!(rx.recv().unwrap().job.topic, "t/2");
        assert_eq!(rx.recv().unwrap().job.topic, "t/3");
    }

    #[test]
    fn payload_bytes_bound_the_queue_and_are_released_when_done() {
        let (q, rx) = ModelQueue::bounded(100, 1000, OverflowPolicy::RejectNew);
        assert!(matches!(q.offer(sized(1, 600)), Offer::Queued));
        match q.offer(sized(2, 600)) {
            Offer::Rejected(_, full) => assert_eq!((full.queued, full.held), (1, 600)),
            other => panic!("{other:?}"),
        }
        assert!(matches!(q.offer(sized(3, 400)), Offer::Queued));
        assert_eq!(q.held_bytes(), 1000);
        // Taken by a worker, the bytes stay held until it is done with them.
        let first = rx.recv().unwrap();
        assert_eq!(q.held_bytes(), 1000);
        drop(first);
        assert_eq!(q.held_bytes(), 400);
        assert!(matches!(q.offer(sized(4, 600)), Offer::Queued));
        // Or until its payload is dropped (decoded ahead), once.
        let mut third = rx.recv().unwrap();
        third.drop_payload();
        assert!(third.job.payload.is_empty());
        assert_eq!(q.held_bytes(), 600);
        drop(third);
        assert_eq!(q.held_bytes(), 600);
    }

    #[test]
    fn drop_oldest_evicts_as_many_as_the_new_payload_needs() {
        let (q, rx) = ModelQueue::bounded(100, 1000, OverflowPolicy::DropOldest);
        for n in 1..=4 {
            assert!(matches!(q.offer(sized(n, 250)), Offer::Queued));
        }
        match q.offer(sized(5, 600)) {
            Offer::Evicted(old) => {
                let topics: Vec<&str> = old.iter().map(|j| j.topic.as_str()).collect();
                assert_eq!(topics, ["t/1", "t/2", "t/3"]);
            }
            other => panic!("{other:?}"),
        }
        let left: Vec<String> = rx.take_all().into_iter().map(|q| q.job.topic).collect();
        assert_eq!(left, ["t/4", "t/5"]);
        assert_eq!(q.held_bytes(), 0);
    }

    #[test]
    fn drop_oldest_refuses_a_job_that_would_evict_more_than_the_bound() {
        let per = 10;
        let budget = per * (MAX_EVICTIONS + 1);
        let (q, rx) = ModelQueue::bounded(10_000, budget, OverflowPolicy::DropOldest);
        for n in 0..=MAX_EVICTIONS {
            assert!(matches!(q.offer(sized(n as u8, per)), Offer::Queued));
        }
        // Room for it means evicting every queued job, one more than the
        // bound: refused, and nothing evicted.
        match q.offer(sized(200, budget)) {
            Offer::NoRoom(j) => assert_eq!(j.topic, "t/200"),
            other => panic!("{other:?}"),
        }
        assert_eq!(rx.len(), MAX_EVICTIONS + 1);
        // Exactly the bound is allowed.
        match q.offer(sized(201, budget - per)) {
            Offer::Evicted(old) => assert_eq!(old.len(), MAX_EVICTIONS),
            other => panic!("{other:?}"),
        }
        assert_eq!(rx.len(), 2);
        assert_eq!(q.held_bytes(), budget);
    }

    #[test]
    fn drop_oldest_evicts_nothing_when_the_room_is_held_by_workers() {
        let (q, rx) = ModelQueue::bounded(100, 1000, OverflowPolicy::DropOldest);
        assert!(matches!(q.offer(sized(1, 800)), Offer::Queued));
        let serving = rx.recv().unwrap();
        assert!(matches!(q.offer(sized(2, 100)), Offer::Queued));
        // Evicting t/2 frees 100 of the 900 held: not enough for 300.
        assert!(matches!(q.offer(sized(3, 300)), Offer::NoRoom(_)));
        assert_eq!(rx.len(), 1);
        drop(serving);
        assert!(matches!(q.offer(sized(3, 300)), Offer::Queued));
    }
}
