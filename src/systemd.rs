//! The sd_notify protocol: READY=1 once serving, STATUS= lines for
//! `systemctl status`, WATCHDOG=1 only while the pipeline is healthy,
//! RELOADING=1 around a reload, STOPPING=1 on shutdown. Without
//! $NOTIFY_SOCKET (not started by systemd) every call is a no-op.

use std::time::Duration;

use sd_notify::NotifyState;

#[derive(Debug)]
pub struct Notifier {
    /// How often systemd wants WATCHDOG=1 (WatchdogSec=), if at all.
    pub watchdog: Option<Duration>,
}

impl Notifier {
    pub fn from_env() -> Notifier {
        Notifier {
            watchdog: sd_notify::watchdog_enabled(),
        }
    }

    fn send(&self, states: &[NotifyState]) {
        // A failing notify socket must not stop the daemon; systemd will
        // notice missing notifications on its own.
        if let Err(e) = sd_notify::notify(states) {
            log::debug!("sd_notify failed: {e}");
        }
    }

    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    pub fn status(&self, status: &str) {
        self.send(&[NotifyState::Status(status)]);
    }

    pub fn reloading(&self) {
        // systemd >= 253 requires MONOTONIC_USEC with RELOADING=1.
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.send(&[NotifyState::Reloading, now]),
            Err(_) => self.send(&[NotifyState::Reloading]),
        }
    }

    pub fn stopping(&self) {
        self.send(&[
            NotifyState::Stopping,
            NotifyState::Status("draining and stopping"),
        ]);
    }

    pub fn watchdog_ping(&self) {
        self.send(&[NotifyState::Watchdog]);
    }
}
