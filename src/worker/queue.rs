//! The bounded queue in front of one model, with its overflow policy.

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

/// What became of an offered job.
#[derive(Debug)]
pub enum Offer {
    Queued,
    /// The queue was full and the policy refused the new job; it comes back.
    Rejected(Job),
    /// The new job was queued by evicting the oldest one, which comes back.
    Evicted(Job),
}

/// Producer side of one model's queue. Held by the MQTT task; dropping it
/// (on shutdown) lets the workers finish what is queued and exit.
#[derive(Debug, Clone)]
pub struct ModelQueue {
    tx: Sender<Job>,
    /// A consumer handle used only to evict the oldest job under
    /// `DropOldest`, and to collect leftovers when a drain times out.
    oldest: Receiver<Job>,
    policy: OverflowPolicy,
}

impl ModelQueue {
    /// Returns the queue and the receiver the workers share.
    pub fn bounded(capacity: usize, policy: OverflowPolicy) -> (ModelQueue, Receiver<Job>) {
        let (tx, rx) = crossbeam_channel::bounded(capacity);
        (
            ModelQueue {
                tx,
                oldest: rx.clone(),
                policy,
            },
            rx,
        )
    }

    /// Never blocks: the MQTT event loop must keep polling.
    pub fn offer(&self, job: Job) -> Offer {
        // The queue itself holds a receiver (`oldest`), so the channel never
        // disconnects while a `ModelQueue` exists; a send fails only when full.
        match self.tx.try_send(job) {
            Ok(()) => Offer::Queued,
            Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) => match self.policy {
                OverflowPolicy::RejectNew => Offer::Rejected(job),
                OverflowPolicy::DropOldest => match self.oldest.try_recv() {
                    Ok(old) => match self.tx.try_send(job) {
                        Ok(()) => Offer::Evicted(old),
                        // Cannot happen with a single producer, but if it
                        // does, both are answered rather than lost.
                        Err(e) => {
                            let _ = self.tx.try_send(old);
                            Offer::Rejected(e.into_inner())
                        }
                    },
                    // A worker took one meanwhile: there is room now.
                    Err(_) => match self.tx.try_send(job) {
                        Ok(()) => Offer::Queued,
                        Err(e) => Offer::Rejected(e.into_inner()),
                    },
                },
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(n: u8) -> Job {
        Job {
            topic: format!("t/{n}"),
            payload: Bytes::from(vec![n]),
            received_at: 0.0,
            received: Instant::now(),
        }
    }

    #[test]
    fn reject_new_returns_the_new_job() {
        let (q, rx) = ModelQueue::bounded(1, OverflowPolicy::RejectNew);
        assert!(matches!(q.offer(job(1)), Offer::Queued));
        match q.offer(job(2)) {
            Offer::Rejected(j) => assert_eq!(j.topic, "t/2"),
            other => panic!("{other:?}"),
        }
        assert_eq!(rx.recv().unwrap().topic, "t/1");
    }

    #[test]
    fn drop_oldest_returns_the_oldest_job() {
        let (q, rx) = ModelQueue::bounded(2, OverflowPolicy::DropOldest);
        q.offer(job(1));
        q.offer(job(2));
        match q.offer(job(3)) {
            Offer::Evicted(j) => assert_eq!(j.topic, "t/1"),
            other => panic!("{other:?}"),
        }
        assert_eq!(rx.recv().unwrap().topic, "t/2");
        assert_eq!(rx.recv().unwrap().topic, "t/3");
    }
}
