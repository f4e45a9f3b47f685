//! At-least-once delivery, end to end: a QoS 1 input is acknowledged to
//! its broker only once every answer to it is safe (confirmed by the
//! broker that receives the answers, or committed to the outbox).
//!
//! The input link gives each such message an [`InputAck`]; the job
//! carries it through routing, the queue and the worker, and every reply
//! built from the job carries a clone. When the last clone is dropped
//! (the job is done and every reply confirmed or committed), the PUBACK
//! goes out. Dropping is the normal end; a path that loses an answer
//! instead (the publisher gone, the outbox unwritable, the drain not
//! taking a message) calls [`InputAck::withhold`] first, so the broker
//! keeps the message and redelivers it.
//!
//! A message fanned out to several models is acknowledged after all of
//! their answers; a reading appended to a window stream is acknowledged
//! once it is in the stream (a window needs many messages, and brokers
//! hold few unacknowledged ones per client: Mosquitto's default is 20).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Sends the acknowledgement of one input message; implemented by the
/// input link, which knows its connection and the order messages came in.
pub trait Acknowledge: Send + Sync {
    /// The message numbered `number` is answered. `session` is the
    /// connection it came on: its number and packet id mean nothing on a
    /// later connection (the broker redelivers what was not acknowledged,
    /// and may reuse the id for another message).
    fn acknowledge(&self, session: u64, number: u64);

    /// The message numbered `number` will not be acknowledged.
    fn withheld(&self, _session: u64, _number: u64) {}
}

/// The pending acknowledgement of one input message.
pub struct InputAck {
    by: Arc<dyn Acknowledge>,
    session: u64,
    /// The message's place on its connection, as the input link numbered
    /// it (it acknowledges in that order, `mqtt::arrivals`).
    number: u64,
    withheld: AtomicBool,
}

/// Shared by the job and every reply built from it.
pub type AckHandle = Arc<InputAck>;

impl InputAck {
    pub fn new(by: Arc<dyn Acknowledge>, session: u64, number: u64) -> AckHandle {
        Arc::new(InputAck {
            by,
            session,
            number,
            withheld: AtomicBool::new(false),
        })
    }

    /// An answer to this message was lost: never acknowledge it, so the
    /// broker redelivers it (to this run after a reconnect, or the next).
    pub fn withhold(&self) {
        if !self.withheld.swap(true, Ordering::Relaxed) {
            self.by.withheld(self.session, self.number);
        }
    }
}

impl Drop for InputAck {
    fn drop(&mut self) {
        // A thread unwinding from a panic drops what it holds unanswered:
        // those inputs must come again, not be acknowledged. (Per-message
        // panics are caught and answered before this; this is for a bug
        // outside them.)
        if std::thread::panicking() {
            self.withhold();
        }
        if !self.withheld.load(Ordering::Relaxed) {
            self.by.acknowledge(self.session, self.number);
        }
    }
}

impl std::fmt::Debug for InputAck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InputAck")
            .field("session", &self.session)
            .field("number", &self.number)
            .field("withheld", &self.withheld.load(Ordering::Relaxed))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<(u64, u64)>>);

    impl Acknowledge for Recorder {
        fn acknowledge(&self, session: u64, number: u64) {
            self.0.lock().unwrap().push((session, number));
        }
    }

    #[test]
    fn a_thread_that_panics_acknowledges_nothing_it_held() {
        let rec = Arc::new(Recorder::default());
        let held = InputAck::new(rec.clone(), 1, 5);
        let unwound = std::thread::spawn(move || {
            let _held = held;
            panic!("a bug outside the per-message catch");
        })
        .join();
        assert!(unwound.is_err());
        assert!(rec.0.lock().unwrap().is_empty());
    }

    #[test]
    fn acknowledges_once_the_last_holder_is_gone() {
        let rec = Arc::new(Recorder::default());
        let ack = InputAck::new(rec.clone(), 3, 17);
        let answers = [Arc::clone(&ack), Arc::clone(&ack)];
        drop(ack);
        assert!(rec.0.lock().unwrap().is_empty());
        let [a, b] = answers;
        drop(a);
        assert!(rec.0.lock().unwrap().is_empty());
        drop(b);
        assert_eq!(*rec.0.lock().unwrap(), vec![(3, 17)]);
    }

    #[test]
    fn a_withheld_message_is_never_acknowledged() {
        let rec = Arc::new(Recorder::default());
        let ack = InputAck::new(rec.clone(), 1, 5);
        let answer = Arc::clone(&ack);
        drop(ack);
        answer.withhold();
        drop(answer);
        assert!(rec.0.lock().unwrap().is_empty());
    }
}
