//! The sd_notify protocol: READY=1 once serving, STATUS= lines for
//! `systemctl status`, WATCHDOG=1 only while the pipeline is healthy,
//! RELOADING=1 around a reload, STOPPING=1 on shutdown. Without
//! $NOTIFY_SOCKET (not started by systemd) every call is a no-op.
//!
//! Sending blocks when the receiver does not read (a full datagram queue),
//! so notifications go through a small thread of their own: the supervisor
//! shares the event loop's thread and must never wait on the notify socket.
//! If that thread falls behind, STATUS and WATCHDOG lines are dropped (a
//! stuck service manager would not act on them anyway).

use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::time::Duration;

use sd_notify::NotifyState;

/// Notifications waiting for the sender thread.
const QUEUE: usize = 64;

#[derive(Debug, Clone)]
enum Note {
    Ready(String),
    Status(String),
    Reloading,
    Stopping,
    Watchdog,
}

#[derive(Debug)]
pub struct Notifier {
    /// How often systemd wants WATCHDOG=1 (WatchdogSec=), if at all.
    pub watchdog: Option<Duration>,
    /// To the sender thread, bounded at QUEUE; None when not started by
    /// systemd. Dropping it ends the thread.
    tx: Option<SyncSender<Note>>,
}

impl Notifier {
    pub fn from_env() -> Notifier {
        let watchdog = sd_notify::watchdog_enabled();
        let tx = std::env::var_os("NOTIFY_SOCKET").and_then(|_| {
            let (tx, rx) = sync_channel::<Note>(QUEUE);
            crate::cores::spawn(
                std::thread::Builder::new().name("sd-notify".into()),
                move || {
                    for note in rx {
                        send(&note);
                    }
                },
            )
            .map_err(|e| log::warn!("cannot start the sd_notify thread: {e}"))
            .ok()
            .map(|_| tx)
        });
        Notifier { watchdog, tx }
    }

    fn queue(&self, note: Note) {
        if let Some(tx) = &self.tx {
            match tx.try_send(note) {
                Ok(()) => {}
                Err(TrySendError::Full(n)) => {
                    log::debug!("sd_notify is not being read; dropped {n:?}")
                }
                Err(TrySendError::Disconnected(_)) => {}
            }
        }
    }

    pub fn ready(&self, status: &str) {
        self.queue(Note::Ready(status.to_string()));
    }

    pub fn status(&self, status: &str) {
        self.queue(Note::Status(status.to_string()));
    }

    pub fn reloading(&self) {
        self.queue(Note::Reloading);
    }

    pub fn stopping(&self) {
        self.queue(Note::Stopping);
    }

    pub fn watchdog_ping(&self) {
        self.queue(Note::Watchdog);
    }
}

fn send(note: &Note) {
    let result = match note {
        Note::Ready(status) => {
            sd_notify::notify(&[NotifyState::Ready, NotifyState::Status(status)])
        }
        Note::Status(status) => sd_notify::notify(&[NotifyState::Status(status)]),
        // systemd >= 253 requires MONOTONIC_USEC with RELOADING=1.
        Note::Reloading => match NotifyState::monotonic_usec_now() {
            Ok(now) => sd_notify::notify(&[NotifyState::Reloading, now]),
            Err(_) => sd_notify::notify(&[NotifyState::Reloading]),
        },
        Note::Stopping => sd_notify::notify(&[
            NotifyState::Stopping,
            NotifyState::Status("draining and stopping"),
        ]),
        Note::Watchdog => sd_notify::notify(&[NotifyState::Watchdog]),
    };
    // A failing notify socket must not stop the daemon; systemd notices
    // missing notifications on its own.
    if let Err(e) = result {
        log::debug!("sd_notify failed: {e}");
    }
}
