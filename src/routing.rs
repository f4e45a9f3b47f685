//! Routing: which models' queues an incoming message goes to, and the
//! answer when it cannot go anywhere (`too_large`, `overloaded`,
//! `no_model`). The event loop calls [`Switch::dispatch`] for every
//! publish; the supervisor swaps the whole routing state in one step on
//! reload and takes it away on drain. Offers never block: a full queue is
//! answered, not waited on.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use crate::codec::{ErrorCode, Failure};
use crate::job::Job;
use crate::models::ModelContext;
use crate::replies::Replies;
use crate::worker::{Fullness, ModelQueue, Offer, MAX_EVICTIONS};

/// One served model as routing sees it: its record and the producer side
/// of its queue. Dropping the route (reload retires the model, or drain)
/// closes the queue, so its workers finish what they took and exit.
pub struct Route {
    pub model: Arc<ModelContext>,
    pub queue: ModelQueue,
}

/// Home Assistant's announcements (`[homeassistant]`): its status topic,
/// subscribed beside the models' filters but never an input to a model.
#[derive(Clone)]
pub struct Announcements {
    /// `<prefix>/status`.
    pub topic: String,
    /// Woken on `online`: the supervisor re-publishes the discovery
    /// configs. A `Notify` keeps one pending wake-up, so a flapping Home
    /// Assistant coalesces into one.
    pub online: Arc<Notify>,
}

/// Model updates (`[updates]`): this device's and the fleet's manifests,
/// and the chunks of a download under way, subscribed beside the models'
/// filters but never an input to a model. Each goes to the updates thread
/// with its acknowledgement.
#[derive(Clone)]
pub struct UpdateIntake {
    pub device_id: String,
    /// Chunk filters subscribed while downloads run; the supervisor
    /// changes them, routing lists them so a reconnect subscribes again.
    pub chunk_filters: Arc<Mutex<Vec<String>>>,
    pub to_agent: std::sync::mpsc::Sender<crate::updates::Input>,
}

/// The routing state of one model set.
pub struct Routes {
    /// In config order: a message that several models listen for is
    /// offered to them in that order.
    routes: Vec<Route>,
    max_payload_bytes: usize,
    replies: Replies,
    /// With `[homeassistant]` enabled.
    announcements: Option<Announcements>,
    /// With `[updates]` on.
    updates: Option<UpdateIntake>,
}

impl Routes {
    pub fn new(routes: Vec<Route>, max_payload_bytes: usize, replies: Replies) -> Routes {
        Routes {
            routes,
            max_payload_bytes,
            replies,
            announcements: None,
            updates: None,
        }
    }

    /// Also listens for model updates.
    pub fn with_updates(mut self, updates: Option<UpdateIntake>) -> Routes {
        self.updates = updates;
        self
    }

    /// Also listens for Home Assistant's announcements.
    pub fn with_announcements(mut self, announcements: Option<Announcements>) -> Routes {
        self.announcements = announcements;
        self
    }

    /// The distinct filters to subscribe to, in config order, then Home
    /// Assistant's status topic when discovery is on.
    pub fn filters(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for r in &self.routes {
            let f = r.model.input_topic.as_str();
            if !out.iter().any(|s| s == f) {
                out.push(f.to_string());
            }
        }
        if let Some(a) = &self.announcements {
            out.push(a.topic.clone());
        }
        if let Some(u) = &self.updates {
            out.extend(crate::topic::desired_filters(&u.device_id));
            if let Ok(chunks) = u.chunk_filters.lock() {
                out.extend(chunks.iter().cloned());
            }
        }
        out
    }

    /// Gives the routes up, for a reload to keep the unchanged ones.
    pub fn into_routes(self) -> Vec<Route> {
        self.routes
    }

    /// Offers `job` to every model listening on its topic; answers it
    /// where it cannot be queued.
    pub fn dispatch(&self, mut job: Job) {
        if let Some(a) = self.announcements.as_ref().filter(|a| a.topic == job.topic) {
            // Config validation keeps model filters off this topic. Taken
            // (the job's acknowledgement goes out as it drops), not answered.
            if job.payload.as_ref() == b"online" {
                // Logged where the send is scheduled: a client repeating
                // "online" must not write a line each time.
                a.online.notify_one();
            }
            return;
        }
        if let Some(u) = self
            .updates
            .as_ref()
            .filter(|u| crate::topic::update_topic(&u.device_id, &job.topic).is_some())
        {
            // Config validation keeps model filters off these topics. If
            // the updates thread is gone (stopping), the message is taken.
            let _ = u.to_agent.send(crate::updates::Input::Message(job));
            return;
        }
        if self.replies.is_own_topic(&job.topic) {
            // A filter that matches the daemon's own output (config
            // validation refuses those, but a broker session can keep an
            // old subscription): taken, counted, never answered.
            self.replies.own_topic_ignored(&job.topic);
            return;
        }
        if let Some(why) = self.bad_response_topic(&job) {
            // The answer goes to the errors topic instead: the request's
            // properties are dropped so nothing is published where the
            // requester asked.
            job.properties = None;
            self.refuse(None, &job, &Failure::new(ErrorCode::BadResponseTopic, why));
            return;
        }
        let mut routed = false;
        for r in &self.routes {
            if r.model.input_topic.matches(&job.topic).is_none() {
                continue;
            }
            routed = true;
            r.model.stats.received.fetch_add(1, Ordering::Relaxed);
            if job.payload.len() > self.max_payload_bytes {
                let f = Failure::new(
                    ErrorCode::TooLarge,
                    format!(
                        "payload is {} bytes, the limit (limits.max_payload_bytes) is {}",
                        job.payload.len(),
                        self.max_payload_bytes
                    ),
                );
                self.refuse(Some(&r.model), &job, &f);
                continue;
            }
            match r.queue.offer(job.clone()) {
                Offer::Queued => log::debug!("queued {} for model {}", job.topic, r.model.name),
                Offer::Rejected(j, full) => {
                    let f = overloaded(&r.model, &refused_new(&full, j.payload.len()));
                    self.refuse(Some(&r.model), &j, &f);
                }
                Offer::NoRoom(j) => {
                    let f = overloaded(
                        &r.model,
                        &format!(
                            "dropping up to {MAX_EVICTIONS} of the oldest queued messages would not free room for the new message's {} bytes within queue_max_bytes = {} (messages being served count too), so it was refused (overflow = \"drop_oldest\")",
                            j.payload.len(),
                            r.queue.max_bytes()
                        ),
                    );
                    self.refuse(Some(&r.model), &j, &f);
                }
                Offer::Evicted(old) => {
                    let f = overloaded(
                        &r.model,
                        "this message was the oldest queued and was dropped for a newer one (overflow = \"drop_oldest\")",
                    );
                    for j in &old {
                        self.refuse(Some(&r.model), j, &f);
                    }
                }
            }
        }
        if !routed {
            let f = Failure::new(
                ErrorCode::NoModel,
                format!(
                    "no configured model listens on topic \"{}\" (a subscription left in the broker session?)",
                    job.topic
                ),
            );
            self.refuse(None, &job, &f);
        }
    }

    /// Why an MQTT 5 request's `response_topic` must not be published to:
    /// the client chose it at run time, so config validation cannot see
    /// it, and an answer on a topic the daemon consumes would be answered
    /// in turn, without end.
    fn bad_response_topic(&self, job: &Job) -> Option<String> {
        let topic = job.properties.as_deref()?.response_topic.as_deref()?;
        if topic.is_empty() || topic.contains(['+', '#', '\0']) {
            return Some(format!(
                "response_topic \"{topic}\" is not a topic name (empty, or with a wildcard or NUL); the answer was not published"
            ));
        }
        if self.replies.is_own_topic(topic) {
            return Some(format!(
                "response_topic \"{topic}\" is one of this daemon's own topics; the answer was not published"
            ));
        }
        let consumer = self
            .routes
            .iter()
            .find(|r| r.model.input_topic.matches(topic).is_some())?;
        Some(format!(
            "response_topic \"{topic}\" matches model '{}''s input_topic \"{}\": the daemon would consume its own answer; the answer was not published",
            consumer.model.name,
            consumer.model.input_topic.as_str()
        ))
    }

    /// Answers a message that was not queued. Its id is looked for only
    /// here, at the top of the payload, so refusing stays cheap for the
    /// event loop.
    fn refuse(&self, model: Option<&ModelContext>, job: &Job, f: &Failure) {
        let id = crate::codec::peek_id(&job.payload);
        if let Some(reply) = self.replies.error(model, job, id.as_ref(), f) {
            self.replies.try_send(reply);
        }
    }
}

/// Which bounds refused a new message: the ones an operator would raise.
fn refused_new(full: &Fullness, bytes: usize) -> String {
    let count = (full.queued >= full.capacity).then(|| {
        format!(
            "queue_capacity = {} reached (messages waiting, not counting those being served)",
            full.capacity
        )
    });
    // An empty queue takes any one message (`ModelQueue::offer`).
    let would_hold = full.held.saturating_add(bytes);
    let size = (full.held > 0 && would_hold > full.max_bytes).then(|| {
        format!(
            "with its {bytes} bytes the messages waiting and being served would hold {would_hold} bytes, above queue_max_bytes = {}",
            full.max_bytes
        )
    });
    let why = match (count, size) {
        (Some(c), Some(s)) => format!("{c}; and {s}"),
        (Some(w), None) | (None, Some(w)) => w,
        (None, None) => "the queue was full".to_string(),
    };
    format!("the new message was refused (overflow = \"reject_new\"): {why}")
}

fn overloaded(model: &ModelContext, what: &str) -> Failure {
    Failure::new(
        ErrorCode::Overloaded,
        format!("model '{}' queue is full: {what}", model.name),
    )
}

/// The routing state the event loop reads: the current [`Routes`], or
/// none while draining (from then on messages are left unacknowledged
/// for the broker to redeliver after a restart).
#[derive(Default)]
pub struct Switch {
    current: Mutex<Option<Routes>>,
}

impl Switch {
    pub fn new(routes: Routes) -> Switch {
        Switch {
            current: Mutex::new(Some(routes)),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, Option<Routes>> {
        // A panic while holding the lock leaves consistent data (the state
        // is replaced whole), so poisoning is ignored.
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Routes `job`; false while draining (the caller then leaves the
    /// message unacknowledged).
    pub fn dispatch(&self, job: Job) -> bool {
        match self.lock().as_ref() {
            Some(routes) => {
                routes.dispatch(job);
                true
            }
            None => false,
        }
    }

    /// The filters to subscribe to; none while draining.
    pub fn filters(&self) -> Option<Vec<String>> {
        self.lock().as_ref().map(Routes::filters)
    }

    /// The shared subscriptions (`$share/GROUP/...`) among them: what a
    /// stopping daemon leaves, so the broker hands their stream to the
    /// group's other members instead of keeping it for this one.
    pub fn shared_filters(&self) -> Vec<String> {
        self.lock().as_ref().map_or_else(Vec::new, |routes| {
            let mut out: Vec<String> = Vec::new();
            for r in &routes.routes {
                let f = &r.model.input_topic;
                if f.share_group().is_some() && !out.iter().any(|s| s == f.as_str()) {
                    out.push(f.as_str().to_string());
                }
            }
            out
        })
    }

    /// Stops routing: the returned state (dropped by the caller) holds the
    /// queue senders, so dropping it lets the workers finish and exit.
    pub fn take(&self) -> Option<Routes> {
        self.lock().take()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use bytes::Bytes;
    use serde_json::Value;

    use super::*;
    use crate::config::OverflowPolicy;
    use crate::replies::ReplyReceiver;
    use crate::telemetry::DaemonStats;
    use crate::worker::JobReceiver;

    #[test]
    fn a_refusal_names_every_bound_it_reached() {
        let full = |queued, held| Fullness {
            queued,
            capacity: 4,
            held,
            max_bytes: 1000,
        };
        let by_count = refused_new(&full(4, 100), 10);
        assert!(by_count.ends_with(
            "\"reject_new\"): queue_capacity = 4 reached (messages waiting, not counting those being served)"
        ), "{by_count}");
        let by_size = refused_new(&full(2, 900), 200);
        assert!(by_size.ends_with("\"reject_new\"): with its 200 bytes the messages waiting and being served would hold 1100 bytes, above queue_max_bytes = 1000"), "{by_size}");
        let both = refused_new(&full(4, 900), 200);
        assert!(
            both.contains("queue_capacity = 4 reached")
                && both.contains("1100 bytes, above queue_max_bytes = 1000"),
            "{both}"
        );
    }

    struct Fixture {
        switch: Switch,
        queues: Vec<JobReceiver>,
        models: Vec<Arc<ModelContext>>,
        replies: ReplyReceiver,
        stats: Arc<DaemonStats>,
    }

    /// One model per (name, filter), each behind a queue of `capacity`.
    fn fixture(models: &[(&str, &str)], capacity: usize, max_payload_bytes: usize) -> Fixture {
        let stats = Arc::new(DaemonStats::default());
        let (replies, rx) = Replies::channel(
            "dev",
            Arc::clone(&stats),
            (usize::MAX, "mqtt.max_packet_bytes"),
        );
        let mut routes = Vec::new();
        let mut queues = Vec::new();
        let mut contexts = Vec::new();
        for (name, filter) in models {
            let model = Arc::new(ModelContext::for_tests(name, filter));
            let (queue, q_rx) = ModelQueue::bounded(capacity, 1 << 20, OverflowPolicy::RejectNew);
            routes.push(Route {
                model: Arc::clone(&model),
                queue,
            });
            queues.push(q_rx);
            contexts.push(model);
        }
        Fixture {
            switch: Switch::new(Routes::new(routes, max_payload_bytes, replies)),
            queues,
            models: contexts,
            replies: rx,
            stats,
        }
    }

    fn job(topic: &str, payload: &str) -> Job {
        Job {
            topic: topic.into(),
            payload: Bytes::from(payload.to_string()),
            received_at: 1.5,
            received: Instant::now(),
            ack: None,
            properties: None,
        }
    }

    fn errors(rx: &mut ReplyReceiver) -> Vec<Value> {
        let mut out = Vec::new();
        while let Some(o) = rx.try_recv() {
            assert_eq!(o.topic, "edge-infer/dev/errors");
            out.push(serde_json::from_slice(&o.payload).unwrap());
        }
        out
    }

    #[test]
    fn a_message_goes_to_every_model_listening_on_its_topic() {
        let mut f = fixture(
            &[("a", "sensors/+/accel"), ("b", "sensors/#"), ("c", "other")],
            8,
            1024,
        );
        assert!(f.switch.dispatch(job("sensors/x/accel", "{}")));
        assert!(f.switch.dispatch(job("sensors/x/temp", "{}")));
        let depths: Vec<usize> = f.queues.iter().map(JobReceiver::len).collect();
        assert_eq!(depths, [1, 2, 0]);
        let received: Vec<u64> = f
            .models
            .iter()
            .map(|m| m.stats.received.load(Ordering::Relaxed))
            .collect();
        assert_eq!(received, [1, 2, 0]);
        assert!(errors(&mut f.replies).is_empty());
    }

    #[test]
    fn filters_are_listed_once_in_config_order() {
        let f = fixture(&[("a", "a/+"), ("b", "b"), ("c", "a/+")], 8, 1024);
        assert_eq!(f.switch.filters().unwrap(), ["a/+", "b"]);
    }

    #[test]
    fn refusals_are_answered_on_the_errors_topic_and_counted() {
        let mut f = fixture(&[("a", "in/a")], 1, 16);
        f.switch.dispatch(job("in/a", "0123456789abcdefg"));
        f.switch.dispatch(job("in/a", "{}"));
        f.switch.dispatch(job("in/a", "{}"));
        f.switch.dispatch(job("nowhere", "{}"));
        let got = errors(&mut f.replies);
        let codes: Vec<&str> = got.iter().map(|e| e["code"].as_str().unwrap()).collect();
        assert_eq!(codes, ["too_large", "overloaded", "no_model"]);
        assert_eq!(got[0]["model"], "a");
        assert_eq!(got[0]["source_topic"], "in/a");
        assert_eq!(got[0]["received_at"], 1.5);
        assert!(
            got[0]["message"].as_str().unwrap().contains("17 bytes"),
            "{}",
            got[0]
        );
        assert!(got[2].get("model").is_none(), "{}", got[2]);
        let stats = &f.models[0].stats;
        assert_eq!(stats.errors(ErrorCode::TooLarge), 1);
        assert_eq!(stats.errors(ErrorCode::Overloaded), 1);
        assert_eq!(f.stats.unrouted.load(Ordering::Relaxed), 1);
        assert_eq!(f.queues[0].len(), 1);
    }

    #[test]
    fn the_daemons_own_topics_are_never_consumed_or_answered() {
        let mut f = fixture(&[("all", "#")], 8, 1024);
        for kind in ["errors", "status", "health"] {
            assert!(f
                .switch
                .dispatch(job(&format!("edge-infer/dev/{kind}"), "{}")));
        }
        // Another device's records are ordinary messages.
        assert!(f.switch.dispatch(job("edge-infer/other/errors", "{}")));
        assert!(f.switch.dispatch(job("edge-infer/dev/errors/x", "{}")));
        assert_eq!(f.queues[0].len(), 2);
        assert_eq!(f.stats.own_ignored.load(Ordering::Relaxed), 3);
        assert!(errors(&mut f.replies).is_empty());
    }

    #[test]
    fn home_assistants_announcements_wake_discovery_and_reach_no_model() {
        // "#" would take the topic too (config validation refuses such a
        // filter; routing must not depend on that).
        let mut f = fixture(&[("all", "#")], 8, 1024);
        let online = Arc::new(Notify::new());
        let routes = f
            .switch
            .take()
            .unwrap()
            .with_announcements(Some(Announcements {
                topic: "homeassistant/status".into(),
                online: Arc::clone(&online),
            }));
        f.switch = Switch::new(routes);
        assert_eq!(f.switch.filters().unwrap(), ["#", "homeassistant/status"]);
        assert!(f.switch.dispatch(job("homeassistant/status", "offline")));
        assert!(f.switch.dispatch(job("homeassistant/status", "online")));
        assert!(f.switch.dispatch(job("homeassistant/status", "online")));
        // One stored wake-up for however many announcements.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            tokio::time::timeout(std::time::Duration::from_secs(1), online.notified())
                .await
                .expect("woken");
            assert!(
                tokio::time::timeout(std::time::Duration::from_millis(50), online.notified())
                    .await
                    .is_err()
            );
        });
        assert_eq!(f.queues[0].len(), 0);
        assert_eq!(f.stats.unrouted.load(Ordering::Relaxed), 0);
        assert!(errors(&mut f.replies).is_empty());
    }

    #[test]
    fn once_taken_nothing_is_routed_and_the_queues_close() {
        let f = fixture(&[("a", "in/a")], 8, 1024);
        assert!(f.switch.dispatch(job("in/a", "{}")));
        drop(f.switch.take());
        assert!(!f.switch.dispatch(job("in/a", "{}")));
        assert!(f.switch.filters().is_none());
        // What was queued is still served, then the queue reports closed.
        assert!(f.queues[0].recv().is_some());
        assert!(f.queues[0].recv().is_none());
    }
}
