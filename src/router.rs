//! Topic -> model table. Pure: the MQTT task asks it which models a topic
//! goes to; it owns no queues and does no IO.

use crate::config::ModelSettings;
use crate::topic::TopicFilter;

#[derive(Debug, Clone)]
pub struct Router {
    routes: Vec<(TopicFilter, usize)>,
}

impl Router {
    pub fn new(models: &[ModelSettings]) -> Router {
        Router {
            routes: models
                .iter()
                .enumerate()
                .map(|(i, m)| (m.input_topic.clone(), i))
                .collect(),
        }
    }

    /// Indexes of the models whose input filter matches `topic`, in config
    /// order. One message can feed several models.
    pub fn route<'a>(&'a self, topic: &'a str) -> impl Iterator<Item = usize> + 'a {
        self.routes
            .iter()
            .filter(move |(f, _)| f.matches(topic).is_some())
            .map(|(_, i)| *i)
    }

    /// The distinct filters to subscribe to.
    pub fn filters(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for (f, _) in &self.routes {
            if !out.iter().any(|s| s == f.as_str()) {
                out.push(f.as_str().to_string());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(filters: &[&str]) -> Router {
        Router {
            routes: filters
                .iter()
                .enumerate()
                .map(|(i, f)| (TopicFilter::parse(f).unwrap(), i))
                .collect(),
        }
    }

    #[test]
    fn routes_to_every_matching_model() {
        let r = router(&["sensors/+/accel", "sensors/#", "other"]);
        assert_eq!(r.route("sensors/a/accel").collect::<Vec<_>>(), vec![0, 1]);
        assert_eq!(r.route("sensors/a/temp").collect::<Vec<_>>(), vec![1]);
        assert_eq!(r.route("nothing").count(), 0);
    }

    #[test]
    fn filters_are_deduplicated() {
        let r = router(&["a/+", "b", "a/+"]);
        assert_eq!(r.filters(), vec!["a/+".to_string(), "b".to_string()]);
    }
}
