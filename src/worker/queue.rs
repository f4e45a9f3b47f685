//! The bounded queue in front of one model, with its overflow policy.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::config::OverflowPolicy;

/// One message on its way to one model.
#[derive(Debug, Clone)]
pub struct Job {
    pub topic: String,
    pub payload: Bytes,
    /// Unix time of arrival, seconds.
    pub received_at: f64,
    pub received: Instant,
}

/// A job in a model's queue, with the payload bytes it holds charged to
/// the queue until the worker is done with it.
#[derive(Debug)]
pub struct Queued {
    pub job: Job,
    _charge: Charge,
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
    /// The queue was full and the policy refused the new job; it comes back.
    Rejected(Job),
    /// The new job was queued by evicting the oldest one(s), which come back.
    Evicted(Vec<Job>),
}

/// Producer side of one model's queue. Held by the MQTT task; dropping it
/// (on shutdown) lets the workers finish what is queued and exit.
///
/// Bounded twice: by message count (`queue_capacity`) and by the payload
/// bytes its messages hold (`queue_max_bytes`), so a burst of image-sized
/// payloads cannot grow the daemon's memory without limit.
#[derive(Debug, Clone)]
pub struct ModelQueue {
    tx: Sender<Queued>,
    /// A consumer handle used only to evict the oldest job under
    /// `DropOldest`, and to collect leftovers when a drain times out.
    oldest: Receiver<Queued>,
    policy: OverflowPolicy,
    /// Payload bytes held by queued and in-progress jobs.
    held: Arc<AtomicUsize>,
    max_bytes: usize,
}

impl ModelQueue {
    /// Returns the queue and the receiver the workers share.
    pub fn bounded(
        capacity: usize,
        max_bytes: usize,
        policy: OverflowPolicy,
    ) -> (ModelQueue, Receiver<Queued>) {
        let (tx, rx) = crossbeam_channel::bounded(capacity);
        (
            ModelQueue {
                tx,
                oldest: rx.clone(),
                policy,
                held: Arc::new(AtomicUsize::new(0)),
                max_bytes,
            },
            rx,
        )
    }

    fn fits(&self, bytes: usize) -> bool {
        let held = self.held.load(Ordering::Relaxed);
        // An empty queue takes any one message (its size is already capped
        // by limits.max_payload_bytes).
        held == 0 || held + bytes <= self.max_bytes
    }

    /// Queues `job` if it fits; gives it back otherwise.
    fn try_queue(&self, job: Job) -> Result<(), Job> {
        let bytes = job.payload.len();
        if !self.fits(bytes) {
            return Err(job);
        }
        self.held.fetch_add(bytes, Ordering::Relaxed);
        let charge = Charge {
            held: Arc::clone(&self.held),
            bytes,
        };
        // The queue itself holds a receiver (`oldest`), so the channel never
        // disconnects while a `ModelQueue` exists; a send fails only when full.
        self.tx
            .try_send(Queued {
                job,
                _charge: charge,
            })
            .map_err(|e| match e {
                TrySendError::Full(q) | TrySendError::Disconnected(q) => q.job,
            })
    }

    /// Never blocks: the MQTT event loop must keep polling.
    pub fn offer(&self, job: Job) -> Offer {
        let mut job = match self.try_queue(job) {
            Ok(()) => return Offer::Queued,
            Err(job) => job,
        };
        if self.policy == OverflowPolicy::RejectNew {
            return Offer::Rejected(job);
        }
        // DropOldest: evict from the front until the new job fits.
        let mut evicted = Vec::new();
        loop {
            match self.oldest.try_recv() {
                Ok(old) => evicted.push(old.job),
                // Nothing left to evict (workers hold the rest).
                Err(_) => {
                    return match self.try_queue(job) {
                        Ok(()) if evicted.is_empty() => Offer::Queued,
                        Ok(()) => Offer::Evicted(evicted),
                        Err(job) => {
                            // Answered rather than lost: the evicted ones
                            // and the new one alike.
                            evicted.push(job);
                            Offer::Evicted(evicted)
                        }
                    };
                }
            }
            job = match self.try_queue(job) {
                Ok(()) => return Offer::Evicted(evicted),
                Err(job) => job,
            };
        }
    }

    /// Payload bytes held by this model's queued and in-progress jobs.
    #[cfg(test)]
    pub fn held_bytes(&self) -> usize {
        self.held.load(Ordering::Relaxed)
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
        }
    }

    #[test]
    fn reject_new_returns_the_new_job() {
        let (q, rx) = ModelQueue::bounded(1, 1 << 20, OverflowPolicy::RejectNew);
        assert!(matches!(q.offer(job(1)), Offer::Queued));
        match q.offer(job(2)) {
            Offer::Rejected(j) => assert_eq!(j.topic, "t/2"),
            other => panic!("{other:?}"),
        }
        assert_eq!(rx.recv().unwrap().job.topic, "t/1");
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
        assert!(matches!(q.offer(sized(2, 600)), Offer::Rejected(_)));
        assert!(matches!(q.offer(sized(3, 400)), Offer::Queued));
        assert_eq!(q.held_bytes(), 1000);
        // Taken by a worker, the bytes stay held until it is done with them.
        let first = rx.recv().unwrap();
        assert_eq!(q.held_bytes(), 1000);
        drop(first);
        assert_eq!(q.held_bytes(), 400);
        assert!(matches!(q.offer(sized(4, 600)), Offer::Queued));
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
        let left: Vec<String> = rx.try_iter().map(|q| q.job.topic).collect();
        assert_eq!(left, ["t/4", "t/5"]);
        assert_eq!(q.held_bytes(), 0);
    }
}
