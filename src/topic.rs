//! MQTT topic filters (with `+`/`#` wildcards) and output-topic templates.
//! Pure string logic, no IO.

use std::fmt;

/// A validated subscription filter, e.g. `sensors/+/accel` or `plant/#`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicFilter {
    text: String,
    levels: Vec<Level>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Level {
    Exact(String),
    Single,
    Multi,
}

impl TopicFilter {
    pub fn parse(text: &str) -> Result<TopicFilter, String> {
        if text.is_empty() {
            return Err("topic filter is empty".into());
        }
        if text.contains('\0') {
            return Err("topic filter contains a NUL character".into());
        }
        let parts: Vec<&str> = text.split('/').collect();
        let mut levels = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let level = match *part {
                "+" => Level::Single,
                "#" if i + 1 == parts.len() => Level::Multi,
                "#" => return Err(format!("'#' must be the last level in \"{text}\"")),
                p if p.contains('+') || p.contains('#') => {
                    return Err(format!(
                        "wildcards must fill a whole level in \"{text}\" (level {} is \"{p}\")",
                        i + 1
                    ))
                }
                p => Level::Exact(p.to_string()),
            };
            levels.push(level);
        }
        Ok(TopicFilter {
            text: text.to_string(),
            levels,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// How many `+` wildcards the filter has.
    pub fn single_wildcards(&self) -> usize {
        self.levels.iter().filter(|l| **l == Level::Single).count()
    }

    pub fn has_multi_wildcard(&self) -> bool {
        self.levels.last() == Some(&Level::Multi)
    }

    /// Matches `topic`; on success returns what each wildcard matched: the
    /// `+` levels in order, then the `#` remainder (if the filter has one).
    pub fn matches<'t>(&self, topic: &'t str) -> Option<Captures<'t>> {
        // MQTT 3.1.1 4.7.2: wildcards at the first level do not match
        // topics that start with '$' (broker internals such as $SYS).
        if topic.starts_with('$') && !matches!(self.levels.first(), Some(Level::Exact(_))) {
            return None;
        }
        let mut caps = Captures::default();
        let mut rest = topic;
        for (i, level) in self.levels.iter().enumerate() {
            if *level == Level::Multi {
                caps.multi = Some(rest);
                return Some(caps);
            }
            let (head, tail) = match rest.find('/') {
                Some(pos) => (&rest[..pos], Some(&rest[pos + 1..])),
                None => (rest, None),
            };
            match level {
                Level::Exact(want) if want != head => return None,
                Level::Single => caps.singles.push(head),
                _ => {}
            }
            let last = i + 1 == self.levels.len();
            match (tail, last) {
                (Some(t), false) => rest = t,
                (None, true) => return Some(caps),
                // "a/#" also matches "a" itself.
                (None, false) if self.levels[i + 1] == Level::Multi => {
                    caps.multi = Some("");
                    return Some(caps);
                }
                _ => return None,
            }
        }
        None
    }
}

impl fmt::Display for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// What the wildcards of a filter matched in one topic.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Captures<'t> {
    pub singles: Vec<&'t str>,
    pub multi: Option<&'t str>,
}

/// An output topic with placeholders: `{device_id}`, `{model}`, `{1}`..`{n}`
/// for the levels the input filter's `+` wildcards matched, `{#}` for what
/// its `#` matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicTemplate {
    text: String,
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    DeviceId,
    Model,
    Single(usize),
    Multi,
}

impl TopicTemplate {
    /// Parses `text`, checking each placeholder against what `filter` can
    /// capture.
    pub fn parse(text: &str, filter: &TopicFilter) -> Result<TopicTemplate, String> {
        if text.is_empty() {
            return Err("topic is empty".into());
        }
        if text.contains('+') || text.contains('#') && !text.contains("{#}") {
            return Err(format!(
                "an output topic cannot contain MQTT wildcards: \"{text}\""
            ));
        }
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Literal(rest[..open].to_string()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| format!("unclosed '{{' in \"{text}\""))?;
            let name = &rest[open + 1..open + close];
            let part = match name {
                "device_id" => Part::DeviceId,
                "model" => Part::Model,
                "#" if filter.has_multi_wildcard() => Part::Multi,
                "#" => {
                    return Err(format!(
                        "{{#}} needs a '#' wildcard in input_topic \"{filter}\""
                    ))
                }
                n => match n.parse::<usize>() {
                    Ok(k) if k >= 1 && k <= filter.single_wildcards() => Part::Single(k - 1),
                    Ok(k) => {
                        return Err(format!(
                            "{{{k}}} refers to '+' wildcard number {k}, but input_topic \"{filter}\" has {}",
                            filter.single_wildcards()
                        ))
                    }
                    Err(_) => {
                        return Err(format!(
                            "unknown placeholder {{{n}}} in \"{text}\" (known: {{device_id}}, {{model}}, {{1}}.., {{#}})"
                        ))
                    }
                },
            };
            parts.push(part);
            rest = &rest[open + close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_string()));
        }
        Ok(TopicTemplate {
            text: text.to_string(),
            parts,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn render(&self, device_id: &str, model: &str, caps: &Captures<'_>) -> String {
        let mut out = String::with_capacity(self.text.len() + 32);
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::DeviceId => out.push_str(device_id),
                Part::Model => out.push_str(model),
                Part::Single(i) => out.push_str(caps.singles.get(*i).copied().unwrap_or("")),
                Part::Multi => out.push_str(caps.multi.unwrap_or("")),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(s: &str) -> TopicFilter {
        TopicFilter::parse(s).unwrap()
    }

    #[test]
    fn exact_and_single_level() {
        assert!(f("a/b").matches("a/b").is_some());
        assert!(f("a/b").matches("a/b/c").is_none());
        let caps = f("sensors/+/accel").matches("sensors/dev7/accel").unwrap();
        assert_eq!(caps.singles, vec!["dev7"]);
        assert!(f("sensors/+/accel").matches("sensors/accel").is_none());
        assert!(f("+").matches("a").is_some());
        assert!(f("+/+").matches("a/").is_some());
    }

    #[test]
    fn multi_level() {
        let caps = f("plant/#").matches("plant/line1/press/3").unwrap();
        assert_eq!(caps.multi, Some("line1/press/3"));
        assert_eq!(f("plant/#").matches("plant").unwrap().multi, Some(""));
        assert!(f("plant/#").matches("plants/x").is_none());
        assert!(f("#").matches("anything/at/all").is_some());
    }

    #[test]
    fn dollar_topics_are_not_matched_by_leading_wildcards() {
        assert!(f("#").matches("$SYS/broker/uptime").is_none());
        assert!(f("+/broker").matches("$SYS/broker").is_none());
        assert!(f("$SYS/#").matches("$SYS/broker").is_some());
    }

    #[test]
    fn bad_filters_are_rejected_with_reason() {
        assert!(TopicFilter::parse("a/#/b")
            .unwrap_err()
            .contains("last level"));
        assert!(TopicFilter::parse("a/b+")
            .unwrap_err()
            .contains("whole level"));
        assert!(TopicFilter::parse("").is_err());
    }

    #[test]
    fn template_renders_placeholders() {
        let filter = f("sensors/+/+/#");
        let t = TopicTemplate::parse("out/{device_id}/{model}/{2}/{1}/{#}", &filter).unwrap();
        let caps = filter.matches("sensors/a/b/c/d").unwrap();
        assert_eq!(t.render("gw", "har", &caps), "out/gw/har/b/a/c/d");
    }

    #[test]
    fn template_rejects_placeholders_the_filter_cannot_fill() {
        let filter = f("sensors/+/accel");
        assert!(TopicTemplate::parse("x/{2}", &filter)
            .unwrap_err()
            .contains("has 1"));
        assert!(TopicTemplate::parse("x/{#}", &filter).is_err());
        assert!(TopicTemplate::parse("x/{nope}", &filter)
            .unwrap_err()
            .contains("unknown"));
        assert!(TopicTemplate::parse("x/+", &filter).is_err());
    }
}
