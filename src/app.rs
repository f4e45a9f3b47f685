//! The supervisor of a running daemon: wires config, models, workers and
//! MQTT together, waits for a signal, then drains: stop accepting, let the
//! workers finish what they took, wait for the broker to acknowledge every
//! reply, disconnect.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{watch, Notify};

use crate::codec::encode::error_json;
use crate::codec::{ErrorCode, Failure};
use crate::config::Settings;
use crate::models::LoadedModel;
use crate::mqtt::egress::{self, Egress, Outgoing};
use crate::mqtt::ingress::{self, Accepting, Ingress};
use crate::router::Router;
use crate::telemetry::{DaemonStats, ModelStats};
use crate::worker::{spawn_workers, ModelContext, ModelQueue};

pub fn errors_topic(device_id: &str) -> String {
    format!("edge-infer/{device_id}/errors")
}

/// Runs the daemon until SIGTERM/SIGINT. Models are already loaded and
/// warmed.
pub fn run(settings: Settings, models: Vec<LoadedModel>) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(serve(settings, models))
}

async fn serve(settings: Settings, models: Vec<LoadedModel>) -> anyhow::Result<()> {
    let stats = Arc::new(DaemonStats::default());
    let (client, eventloop) = crate::mqtt::connect(&settings.mqtt);
    let qos = crate::mqtt::qos(settings.mqtt.qos);
    let (egress, egress_rx) = Egress::channel(Arc::clone(&stats));
    let publisher = tokio::spawn(egress::run(
        egress_rx,
        client.clone(),
        qos,
        Arc::clone(&stats),
    ));
    let errors_topic = errors_topic(&settings.device_id);

    let mut queues = Vec::new();
    let mut workers = Vec::new();
    let mut model_stats = Vec::new();
    let mut names = Vec::new();
    for model in models {
        let ms = &model.settings;
        let (queue, rx) = ModelQueue::bounded(ms.queue_capacity, ms.overflow);
        let stats = Arc::new(ModelStats::default());
        let ctx = Arc::new(ModelContext {
            name: ms.name.clone(),
            sha256: model.sha256.clone(),
            device_id: settings.device_id.clone(),
            errors_topic: errors_topic.clone(),
            input_topic: ms.input_topic.clone(),
            output_topic: ms.output_topic.clone(),
            payload: ms.payload,
            inputs: model.inputs.clone(),
            labels: model.labels.clone(),
            top_k: model.top_k,
            stats: Arc::clone(&stats),
        });
        names.push(ms.name.clone());
        let handles =
            spawn_workers(model, ctx, rx, &egress).context("cannot start worker threads")?;
        workers.extend(handles);
        queues.push(queue);
        model_stats.push(stats);
    }
    // Only receivers are kept here: when ingress drops the senders, workers
    // drain the queue and exit, and these collect anything left on timeout.
    let leftovers: Vec<_> = queues.iter().map(ModelQueue::leftovers_receiver).collect();

    let (ready_tx, mut ready_rx) = watch::channel(false);
    let ing = Arc::new(Ingress {
        router: Router::new(&settings.models),
        model_names: names.clone(),
        model_stats: model_stats.clone(),
        device_id: settings.device_id.clone(),
        errors_topic: errors_topic.clone(),
        max_payload_bytes: settings.max_payload_bytes,
        qos,
        reconnect_min: settings.mqtt.reconnect_min,
        reconnect_max: settings.mqtt.reconnect_max,
        stats: Arc::clone(&stats),
        accepting: Mutex::new(Some(Accepting {
            queues,
            egress: egress.clone(),
        })),
        progress: Notify::new(),
        connected_once: ready_tx,
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let events = tokio::spawn(ingress::run(
        eventloop,
        client.clone(),
        Arc::clone(&ing),
        stop_rx,
    ));
    log::info!(
        "connecting to mqtt://{}:{} as {}",
        settings.mqtt.host,
        settings.mqtt.port,
        settings.mqtt.client_id
    );

    let mut sigterm =
        signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    let mut sigint =
        signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
    let mut announced = false;
    let signal_name = loop {
        tokio::select! {
            _ = sigterm.recv() => break "SIGTERM",
            _ = sigint.recv() => break "SIGINT",
            changed = ready_rx.changed(), if !announced => {
                if changed.is_err() || *ready_rx.borrow() {
                    announced = true;
                    log::info!("ready: serving {} model(s): {}", names.len(), names.join(", "));
                }
            }
        }
    };

    // Drain: queued messages get `drain_timeout` to be served; whatever is
    // still queued then is answered with `shutting_down`.
    let drain_timeout = settings.drain_timeout;
    let deadline = Instant::now() + drain_timeout;
    log::info!(
        "{signal_name}: draining (up to {drain_timeout:?}); new messages stay with the broker"
    );
    drop(ing.stop_accepting());
    let joiner = tokio::task::spawn_blocking(move || {
        for w in workers {
            let _ = w.join();
        }
    });
    if tokio::time::timeout_at(deadline.into(), joiner)
        .await
        .is_err()
    {
        let mut abandoned = 0;
        for (i, rx) in leftovers.iter().enumerate() {
            for job in rx.try_iter() {
                abandoned += 1;
                model_stats[i].error(ErrorCode::ShuttingDown);
                let f = Failure::new(
                    ErrorCode::ShuttingDown,
                    format!(
                        "the daemon stopped before model '{}' got to this message",
                        names[i]
                    ),
                );
                if let Some(payload) = error_json(
                    &settings.device_id,
                    Some(&names[i]),
                    &job.topic,
                    job.received_at,
                    None,
                    &f,
                ) {
                    egress.try_send(Outgoing {
                        topic: errors_topic.clone(),
                        payload,
                    });
                }
            }
        }
        log::warn!("drain timed out: {abandoned} queued message(s) answered with shutting_down");
    }
    drop(leftovers);
    drop(egress);
    let grace = deadline.max(Instant::now() + Duration::from_secs(2));
    let _ = tokio::time::timeout_at(grace.into(), publisher).await;
    // Wait until the broker has everything we sent.
    loop {
        let notified = ing.progress.notified();
        let requested = stats.publishes_requested.load(Ordering::Relaxed);
        let done = stats.publishes_done.load(Ordering::Relaxed);
        if done >= requested || !stats.connected.load(Ordering::Relaxed) {
            if done < requested {
                log::warn!(
                    "{} reply(ies) not confirmed by the broker at shutdown",
                    requested - done
                );
            }
            break;
        }
        if tokio::time::timeout_at(grace.into(), notified)
            .await
            .is_err()
        {
            log::warn!(
                "{} reply(ies) not confirmed by the broker at shutdown",
                requested - done
            );
            break;
        }
    }
    let _ = client.try_disconnect();
    stop_tx.send_replace(true);
    let _ = tokio::time::timeout(Duration::from_secs(3), events).await;
    for (name, s) in names.iter().zip(model_stats.iter()) {
        log::info!("model {name}: {}", s.summary());
    }
    log::info!("stopped");
    Ok(())
}
