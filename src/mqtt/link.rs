//! One broker connection's event loop, shared by the input and the output
//! link: poll, reconnect with capped exponential backoff, log what happens
//! without flooding, stop on request. What each link does with its events
//! is its [`Side`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{ConnectionError, Event, EventLoop, Incoming, Outgoing};
use tokio::sync::watch;

use crate::telemetry::DaemonStats;

/// What both links share: the daemon's broker counters, whether each link
/// is up (the daemon counts as connected only while both are), and the
/// backoff limits.
pub struct Links {
    pub stats: Arc<DaemonStats>,
    pub input_up: AtomicBool,
    pub output_up: AtomicBool,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
}

impl Links {
    fn set_up(&self, which: Which, up: bool) -> bool {
        let was = self.flag(which).swap(up, Ordering::Relaxed);
        let both = self.input_up.load(Ordering::Relaxed) && self.output_up.load(Ordering::Relaxed);
        self.stats.connected.store(both, Ordering::Relaxed);
        was
    }

    fn flag(&self, which: Which) -> &AtomicBool {
        match which {
            Which::Input => &self.input_up,
            Which::Output => &self.output_up,
        }
    }

    pub fn is_up(&self, which: Which) -> bool {
        self.flag(which).load(Ordering::Relaxed)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    /// Subscriptions and inputs.
    Input,
    /// Results, errors, status and health.
    Output,
}

impl Which {
    fn name(self) -> &'static str {
        match self {
            Which::Input => "input",
            Which::Output => "output",
        }
    }
}

/// What a link does with its connection's events.
pub trait Side {
    const WHICH: Which;

    /// Called before every poll; the input link waits here while the
    /// publisher is behind. `keep_alive` bounds the wait, so the link
    /// still polls (and pings) in time.
    async fn before_poll(&mut self, _keep_alive: Duration) {}

    /// A ConnAck: the `n`th successful connection of this link.
    fn on_connect(&mut self, n: u64, session_present: bool);

    /// Every other event. `eventloop` lets the input link queue its
    /// acknowledgements directly (they never wait for channel room).
    fn on_event(&mut self, event: Event, eventloop: &mut EventLoop);

    /// The connection failed; called before the next reconnect attempt,
    /// with nothing in between (one tokio thread), so the output link can
    /// take back what rumqttc was holding.
    fn on_down(&mut self, _eventloop: &mut EventLoop) {}
}

/// Runs until the client has sent DISCONNECT or `stop` turns true while
/// the broker is unreachable.
pub async fn drive<S: Side>(
    mut side: S,
    mut eventloop: EventLoop,
    links: Arc<Links>,
    mut stop: watch::Receiver<bool>,
) {
    let which = S::WHICH;
    let keep_alive = eventloop.mqtt_options.keep_alive();
    let mut backoff = links.reconnect_min;
    let mut failures_in_row = 0u32;
    let mut connections = 0u64;
    let mut down_since: Option<Instant> = None;
    loop {
        if links.is_up(which) {
            side.before_poll(keep_alive).await;
        }
        let event = tokio::select! {
            ev = eventloop.poll() => ev,
            _ = stopped(&mut stop) => {
                if !links.is_up(which) {
                    return;
                }
                // Connected: keep polling so the DISCONNECT goes out.
                eventloop.poll().await
            }
        };
        match event {
            Ok(Event::Incoming(Incoming::ConnAck(ack))) => {
                connections += 1;
                if which == Which::Input {
                    links.stats.connections.fetch_add(1, Ordering::Relaxed);
                }
                links.set_up(which, true);
                if let Some(since) = down_since.take() {
                    if which == Which::Input {
                        links
                            .stats
                            .offline_us
                            .fetch_add(since.elapsed().as_micros() as u64, Ordering::Relaxed);
                    }
                    log::info!(
                        "{} link: back after {:.1} s offline",
                        which.name(),
                        since.elapsed().as_secs_f64()
                    );
                }
                backoff = links.reconnect_min;
                failures_in_row = 0;
                side.on_connect(connections, ack.session_present);
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                links.set_up(which, false);
                log::info!("{} link: disconnected from the MQTT broker", which.name());
                return;
            }
            Ok(event) => side.on_event(event, &mut eventloop),
            Err(e) => {
                side.on_down(&mut eventloop);
                let was_up = links.set_up(which, false);
                links
                    .stats
                    .connection_errors
                    .fetch_add(1, Ordering::Relaxed);
                if *stop.borrow() {
                    return;
                }
                down_since.get_or_insert_with(Instant::now);
                failures_in_row += 1;
                let msg = describe(&e);
                if was_up {
                    log::warn!(
                        "{} link: lost the MQTT broker connection: {msg}; reconnecting in {backoff:?}",
                        which.name()
                    );
                } else if failures_in_row <= 3 || failures_in_row.is_multiple_of(10) {
                    log::warn!(
                        "{} link: cannot reach the MQTT broker ({msg}); retry {failures_in_row} in {backoff:?}",
                        which.name()
                    );
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stopped(&mut stop) => return,
                }
                backoff = (backoff * 2).min(links.reconnect_max);
            }
        }
    }
}

/// Resolves once `stop` is true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

fn describe(e: &ConnectionError) -> String {
    match e {
        ConnectionError::ConnectionRefused(code) => {
            format!("broker refused the connection: {code:?}")
        }
        other => other.to_string(),
    }
}
