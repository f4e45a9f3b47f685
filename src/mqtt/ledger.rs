//! The account of publishes: how many were handed to the MQTT client and
//! how many the broker has confirmed (QoS 1 PUBACK, or written to the
//! socket at QoS 0). A drain waits until the two agree, so every reply is
//! with the broker before the daemon disconnects.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tokio::sync::Notify;

#[derive(Debug, Default)]
pub struct AckLedger {
    requested: AtomicU64,
    confirmed: AtomicU64,
    /// Signalled on every confirmation.
    progress: Notify,
}

impl AckLedger {
    /// One publish was handed to the client.
    pub fn requested(&self) {
        self.requested.fetch_add(1, Ordering::Relaxed);
    }

    /// The broker confirmed one publish.
    pub fn confirmed(&self) {
        self.confirmed.fetch_add(1, Ordering::Relaxed);
        self.progress.notify_waiters();
    }

    /// Publishes handed over and not yet confirmed.
    pub fn pending(&self) -> u64 {
        let requested = self.requested.load(Ordering::Relaxed);
        requested.saturating_sub(self.confirmed.load(Ordering::Relaxed))
    }

    /// Waits until every publish is confirmed, `until` passes, or
    /// `connected` says the broker is gone (nothing more will come).
    /// Returns how many were left unconfirmed.
    pub async fn settle(&self, until: Instant, connected: impl Fn() -> bool) -> u64 {
        loop {
            // Registered before the check, so a confirmation between the
            // check and the wait is not missed.
            let notified = self.progress.notified();
            let pending = self.pending();
            if pending == 0 || !connected() {
                return pending;
            }
            if tokio::time::timeout_at(until.into(), notified)
                .await
                .is_err()
            {
                return self.pending();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn settles_once_every_publish_is_confirmed() {
        let ledger = Arc::new(AckLedger::default());
        for _ in 0..3 {
            ledger.requested();
        }
        let confirming = Arc::clone(&ledger);
        let acks = tokio::spawn(async move {
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_millis(5)).await;
                confirming.confirmed();
            }
        });
        let left = ledger
            .settle(Instant::now() + Duration::from_secs(30), || true)
            .await;
        assert_eq!(left, 0);
        acks.await.unwrap();
    }

    #[tokio::test]
    async fn reports_what_is_left_at_the_deadline_or_when_disconnected() {
        let ledger = AckLedger::default();
        ledger.requested();
        ledger.requested();
        ledger.confirmed();
        let soon = Instant::now() + Duration::from_millis(20);
        assert_eq!(ledger.settle(soon, || true).await, 1);
        let later = Instant::now() + Duration::from_secs(30);
        assert_eq!(ledger.settle(later, || false).await, 1);
    }
}
