//! MQTT topic filters (with `+`/`#` wildcards), output-topic templates, the
//! daemon's own device topics, and whether a filter can match what a
//! template publishes (the feedback-loop check). Pure string logic, no IO.

use std::collections::{HashMap, VecDeque};
use std::fmt;

use sha2::Digest;

/// The topic the daemon publishes its errors on (about messages and about
/// itself, such as `reload_failed`).
pub fn errors_topic(device_id: &str) -> String {
    format!("edge-infer/{device_id}/errors")
}

/// The retained status record's topic (online, offline as Last Will).
pub fn status_topic(device_id: &str) -> String {
    format!("edge-infer/{device_id}/status")
}

/// The periodic health record's topic.
pub fn health_topic(device_id: &str) -> String {
    format!("edge-infer/{device_id}/health")
}

/// Every topic the daemon publishes about itself, each with its name
/// (`errors`, `status`, `health`). Here rather than in `replies`, which
/// publishes on them, because config validation needs them too and
/// `replies` (through `models`) imports `config`: one pure place both use.
pub fn device_topics(device_id: &str) -> [(&'static str, String); 3] {
    [
        ("errors", errors_topic(device_id)),
        ("status", status_topic(device_id)),
        ("health", health_topic(device_id)),
    ]
}

/// The fleet's pseudo device in update topics: a manifest under it is for
/// every device that has none of its own.
pub const FLEET: &str = "fleet";

/// Where the daemon reports a model's update state (retained).
pub fn model_state_topic(device_id: &str, model: &str) -> String {
    format!("edge-infer/{device_id}/models/{model}/state")
}

/// Where a model's desired manifest is published (retained): for this
/// device, or for the fleet (`device_id` = [`FLEET`]).
pub fn desired_topic(device_id: &str, model: &str) -> String {
    format!("edge-infer/{device_id}/models/{model}/desired")
}

/// Chunk `n` of the model a manifest on `desired` describes.
pub fn chunk_topic(desired: &str, n: u32) -> String {
    format!("{desired}/chunk/{n}")
}

/// The chunks of the model a manifest on `desired` describes.
pub fn chunk_filter(desired: &str) -> String {
    format!("{desired}/chunk/+")
}

/// The manifests a device listens to: its own and the fleet's.
pub fn desired_filters(device_id: &str) -> [String; 2] {
    [desired_topic(device_id, "+"), desired_topic(FLEET, "+")]
}

/// An update topic, taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateTopic<'t> {
    pub model: &'t str,
    /// The fleet's manifest rather than this device's.
    pub fleet: bool,
    /// A chunk's number; None for the manifest itself.
    pub chunk: Option<u32>,
}

/// Whether `topic` is this device's or the fleet's manifest or chunk.
pub fn update_topic<'t>(device_id: &str, topic: &'t str) -> Option<UpdateTopic<'t>> {
    let rest = topic.strip_prefix("edge-infer/")?;
    let (fleet, rest) = if let Some(r) = rest
        .strip_prefix(device_id)
        .and_then(|r| r.strip_prefix("/models/"))
    {
        (false, r)
    } else {
        (
            true,
            rest.strip_prefix(FLEET)
                .and_then(|r| r.strip_prefix("/models/"))?,
        )
    };
    let mut levels = rest.split('/');
    let model = levels.next().filter(|m| !m.is_empty())?;
    if levels.next()? != "desired" {
        return None;
    }
    let chunk = match (levels.next(), levels.next(), levels.next()) {
        (None, _, _) => None,
        (Some("chunk"), Some(n), None) => Some(n.parse().ok()?),
        _ => return None,
    };
    Some(UpdateTopic {
        model,
        fleet,
        chunk,
    })
}

/// Where Home Assistant announces itself (`online` when it starts): the
/// daemon re-publishes its discovery configs when it hears that.
pub fn homeassistant_status_topic(prefix: &str) -> String {
    format!("{prefix}/status")
}

/// The retained discovery config of one Home Assistant entity:
/// `<prefix>/<component>/<node_id>/<object_id>/config`, the layout Home
/// Assistant's MQTT discovery reads (node and object ids are
/// `[a-zA-Z0-9_-]+`, see [`homeassistant_id`]).
pub fn discovery_topic(prefix: &str, component: &str, node_id: &str, object_id: &str) -> String {
    format!("{prefix}/{component}/{node_id}/{object_id}/config")
}

/// `text` as a Home Assistant discovery id (`[a-zA-Z0-9_-]+`): as it is
/// when it already is one, else with every other character made `_` and
/// the start of its SHA-256 appended, so two names that sanitize alike
/// ("a.b", "a_b") keep ids of their own, the same on every start.
pub fn homeassistant_id(text: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    if !text.is_empty() && text.chars().all(plain) {
        return text.to_string();
    }
    let id: String = text
        .chars()
        .map(|c| if plain(c) { c } else { '_' })
        .collect();
    let digest = sha2::Sha256::digest(text.as_bytes());
    let hex: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    format!("{id}_{hex}")
}

/// A validated subscription filter, e.g. `sensors/+/accel` or `plant/#`,
/// or a shared subscription to one, `$share/GROUP/sensors/+/accel`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicFilter {
    /// As written: what the daemon subscribes to.
    text: String,
    /// Where the filter starts in `text`: past `$share/GROUP/`, else 0.
    filter_start: usize,
    /// The levels of the filter alone: a shared subscription delivers
    /// messages on their own topics, without its prefix, so matching,
    /// templates and the feedback check all see the filter part.
    levels: Vec<Level>,
}

/// The prefix of a shared subscription (MQTT 5.0 4.8.2; Mosquitto, EMQX,
/// VerneMQ and HiveMQ accept it from 3.1.1 clients too).
const SHARE_PREFIX: &str = "$share/";

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
        let filter_start = match text.strip_prefix(SHARE_PREFIX) {
            None => 0,
            Some(rest) => {
                let Some((group, filter)) = rest.split_once('/') else {
                    return Err(format!(
                        "shared subscription \"{text}\" has no topic filter after its group name (expected \"$share/GROUP/FILTER\", e.g. \"$share/gateways/sensors/+/accel\")"
                    ));
                };
                if group.is_empty() || group.contains(['+', '#']) {
                    return Err(format!(
                        "the group name of shared subscription \"{text}\" must be a non-empty level without '+' or '#' (it is \"{group}\")"
                    ));
                }
                if filter.is_empty() {
                    return Err(format!(
                        "shared subscription \"{text}\" has no topic filter after its group name (expected \"$share/GROUP/FILTER\", e.g. \"$share/gateways/sensors/+/accel\")"
                    ));
                }
                text.len() - filter.len()
            }
        };
        let parts: Vec<&str> = text[filter_start..].split('/').collect();
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
            filter_start,
            levels,
        })
    }

    /// As written, with a `$share/GROUP/` prefix if it has one: what to
    /// subscribe to.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The group of a shared subscription.
    pub fn share_group(&self) -> Option<&str> {
        (self.filter_start > 0).then(|| &self.text[SHARE_PREFIX.len()..self.filter_start - 1])
    }

    /// Some topic both filters match (an example, to show), or `None`
    /// when no topic matches both. Only the filter parts count, not a
    /// `$share/GROUP/` prefix.
    pub fn intersection(&self, other: &TopicFilter) -> Option<String> {
        fn walk(a: &[Level], b: &[Level], out: &mut Vec<String>) -> bool {
            match (a.first(), b.first()) {
                (None, None) => true,
                // `#` matches what is left of the other filter, whatever
                // it is ("a/#" matches "a" too): spell that out.
                (Some(Level::Multi), _) | (_, Some(Level::Multi)) => {
                    let rest = if a.first() == Some(&Level::Multi) {
                        b
                    } else {
                        a
                    };
                    out.extend(rest.iter().filter_map(|l| match l {
                        Level::Exact(t) => Some(t.clone()),
                        Level::Single => Some("x".into()),
                        Level::Multi => None,
                    }));
                    true
                }
                (None, Some(_)) | (Some(_), None) => false,
                (Some(x), Some(y)) => {
                    let level = match (x, y) {
                        (Level::Exact(p), Level::Exact(q)) if p != q => return false,
                        (Level::Exact(t), _) | (_, Level::Exact(t)) => t.clone(),
                        _ => "x".into(),
                    };
                    out.push(level);
                    walk(&a[1..], &b[1..], out)
                }
            }
        }
        let mut levels = Vec::new();
        if !walk(&self.levels, &other.levels, &mut levels) || levels.is_empty() {
            return None;
        }
        let topic = levels.join("/");
        // The one rule the walk leaves out, wildcards at the first level
        // never matching a '$' topic, is decided by the topic the walk
        // found: its first level is the only one it could have.
        (self.matches(&topic).is_some() && other.matches(&topic).is_some()).then_some(topic)
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
        let wildcards = || {
            Err(format!(
                "an output topic cannot contain MQTT wildcards: \"{text}\""
            ))
        };
        if text.contains('+') {
            return wildcards();
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
        // '#' is only allowed as the `{#}` placeholder: "a#b/{#}" would
        // publish on a topic name with a wildcard, which brokers refuse.
        if parts
            .iter()
            .any(|p| matches!(p, Part::Literal(l) if l.contains('#')))
        {
            return wildcards();
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

impl TopicTemplate {
    /// A subscription filter that matches every topic this template can
    /// publish for `model` on `device_id`: `{device_id}` and `{model}` are
    /// written out, a level holding a `{N}` becomes `+`, and the level
    /// holding `{#}` becomes `#` (what follows it is dropped: `#` must be
    /// last, so such a filter may also match a little more).
    pub fn subscription(&self, device_id: &str, model: &str) -> String {
        // Each level's text, and whether a placeholder makes it a wildcard.
        let mut levels: Vec<(String, Option<&'static str>)> = vec![(String::new(), None)];
        let push = |levels: &mut Vec<(String, Option<&'static str>)>, text: &str| {
            let mut pieces = text.split('/');
            if let (Some(first), Some(last)) = (pieces.next(), levels.last_mut()) {
                last.0.push_str(first);
            }
            for piece in pieces {
                levels.push((piece.to_string(), None));
            }
        };
        for part in &self.parts {
            match part {
                Part::Literal(s) => push(&mut levels, s),
                Part::DeviceId => push(&mut levels, device_id),
                Part::Model => push(&mut levels, model),
                Part::Single(_) => {
                    if let Some(last) = levels.last_mut() {
                        last.1 = last.1.or(Some("+"));
                    }
                }
                Part::Multi => {
                    if let Some(last) = levels.last_mut() {
                        last.1 = Some("#");
                    }
                    break;
                }
            }
        }
        levels
            .iter()
            .map(|(text, wild)| wild.unwrap_or(text.as_str()))
            .collect::<Vec<_>>()
            .join("/")
    }
}

impl TopicTemplate {
    /// Every topic this template can publish for a model named `model` on
    /// `device_id` whose input filter is `source`: `{device_id}` and
    /// `{model}` are fixed text; each `{N}` is any one level the N-th `+` of
    /// `source` can match, `{#}` any text its `#` can match (zero or more
    /// levels).
    pub fn pattern(&self, source: &TopicFilter, device_id: &str, model: &str) -> TopicPattern {
        // The level index of each `+` of the source filter, in order.
        let singles: Vec<usize> = source
            .levels
            .iter()
            .enumerate()
            .filter(|(_, l)| **l == Level::Single)
            .map(|(i, _)| i)
            .collect();
        // A filter that is one wildcard level captures the whole topic,
        // which MQTT never allows to be empty.
        let whole_topic = source.levels.len() == 1;
        let mut pieces = Vec::with_capacity(self.parts.len());
        for part in &self.parts {
            let piece = match part {
                Part::Literal(s) => Piece::Text(s.clone()),
                Part::DeviceId => Piece::Text(device_id.to_string()),
                Part::Model => Piece::Text(model.to_string()),
                Part::Single(k) => match singles.get(*k) {
                    Some(&level) => Piece::Hole(Hole {
                        id: *k,
                        levels: false,
                        may_be_empty: !whole_topic,
                        may_start_with_dollar: level != 0,
                    }),
                    // `render` writes nothing for a placeholder the filter
                    // cannot fill (parse refuses such templates).
                    None => Piece::Text(String::new()),
                },
                Part::Multi if source.has_multi_wildcard() => Piece::Hole(Hole {
                    id: MULTI_HOLE,
                    levels: true,
                    may_be_empty: !whole_topic,
                    may_start_with_dollar: !whole_topic,
                }),
                Part::Multi => Piece::Text(String::new()),
            };
            pieces.push(piece);
        }
        TopicPattern { pieces }
    }
}

/// The set of topics one output template can publish: fixed text and
/// holes, each hole any text the input could supply for its placeholder.
/// Made by [`TopicTemplate::pattern`], compared with a filter by
/// [`TopicFilter::overlap`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicPattern {
    pieces: Vec<Piece>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Hole(Hole),
}

/// What one placeholder can render to. A captured level never contains
/// '+' or '#' (MQTT topic names cannot), but a filter's levels cannot
/// either, so only '/' and a leading '$' matter when comparing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Hole {
    /// Which placeholder: `{N}` is N-1, `{#}` is [`MULTI_HOLE`]. A
    /// placeholder used twice renders the same text both times.
    id: usize,
    /// `{#}`: zero or more levels, so any text, '/' included. `{N}`: one
    /// level, no '/'.
    levels: bool,
    /// `+` matches an empty level (`a//b`) and `#` zero levels, so a
    /// capture can be empty, except when the wildcard is the whole filter.
    may_be_empty: bool,
    /// A wildcard at the filter's first level never matches a topic that
    /// starts with '$' (MQTT 3.1.1 4.7.2), so its capture cannot start
    /// with '$'; elsewhere it can ("a/$b" matches "a/+").
    may_start_with_dollar: bool,
}

/// The hole id of `{#}`.
const MULTI_HOLE: usize = usize::MAX;

/// How many combinations of values for repeated placeholders `overlap`
/// tries before it gives up on telling them apart. Each try is one search
/// of a few thousand states; repeated placeholders are rare, and typical
/// filters give a few dozen values each.
const REPEAT_BUDGET: usize = 4096;

impl TopicPattern {
    /// The pattern with every hole `id` replaced by `value`.
    fn fill(&self, id: usize, value: &str) -> TopicPattern {
        TopicPattern {
            pieces: self
                .pieces
                .iter()
                .map(|p| match p {
                    Piece::Hole(h) if h.id == id => Piece::Text(value.to_string()),
                    other => other.clone(),
                })
                .collect(),
        }
    }

    /// The holes whose placeholder occurs more than once, one each.
    fn repeated_holes(&self) -> Vec<Hole> {
        let mut seen: HashMap<usize, usize> = HashMap::new();
        for p in &self.pieces {
            if let Piece::Hole(h) = p {
                *seen.entry(h.id).or_default() += 1;
            }
        }
        let mut out: Vec<Hole> = Vec::new();
        for p in &self.pieces {
            if let Piece::Hole(h) = p {
                if seen[&h.id] > 1 && !out.iter().any(|o| o.id == h.id) {
                    out.push(*h);
                }
            }
        }
        out
    }
}

/// A set of characters one step of either side accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Char(char),
    /// Any character, except '/' unless `slash`, and '$' unless `dollar`.
    Any {
        slash: bool,
        dollar: bool,
    },
}

impl Class {
    const ALL: Class = Class::Any {
        slash: true,
        dollar: true,
    };

    fn allows(self, c: char) -> bool {
        match self {
            Class::Char(x) => x == c,
            Class::Any { slash, dollar } => (slash || c != '/') && (dollar || c != '$'),
        }
    }

    /// The characters both accept, if any.
    fn and(self, other: Class) -> Option<Class> {
        match (self, other) {
            (Class::Char(a), o) | (o, Class::Char(a)) => o.allows(a).then_some(Class::Char(a)),
            (
                Class::Any {
                    slash: s1,
                    dollar: d1,
                },
                Class::Any {
                    slash: s2,
                    dollar: d2,
                },
            ) => Some(Class::Any {
                slash: s1 && s2,
                dollar: d1 && d2,
            }),
        }
    }

    /// One character of the set, for the example topic.
    fn example(self) -> char {
        match self {
            Class::Char(c) => c,
            Class::Any { .. } => 'x',
        }
    }
}

/// One step of a filter, as characters: its levels joined by '/'.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FilterStep {
    Char(char),
    /// `+`: any text without '/', possibly empty.
    Plus,
    /// `#` as the whole filter: any text.
    Hash,
    /// `/#` after other levels: nothing ("a/#" matches "a"), or '/' and
    /// then any text.
    SlashHash,
}

/// A position in the product of a pattern and a filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct State {
    /// Step of the pattern, and whether its hole has taken a character.
    pattern: usize,
    in_hole: bool,
    /// Step of the filter, and whether its `/#` has taken the '/'.
    filter: usize,
    past_slash: bool,
    /// Whether a character has been produced (topics are never empty, and
    /// the first one decides the '$' rule).
    started: bool,
}

impl TopicFilter {
    /// Some topic that `pattern` can publish and this filter matches (an
    /// example, to show), or `None` when there is none. Exact for the rules
    /// [`TopicFilter::matches`] and [`TopicTemplate::render`] follow: `+`
    /// matches any one level (empty too), `#` zero or more, wildcards at the
    /// first level never match a topic starting with '$'; a hole renders
    /// what its wildcard captured. A placeholder used twice renders the
    /// same text twice: its possible values are tried one by one (the
    /// substrings of this filter's fixed levels and one free value cover
    /// every case); past [`REPEAT_BUDGET`] combinations its uses are
    /// compared as if independent, which can only report an overlap that
    /// is not there, never miss one.
    pub fn overlap(&self, pattern: &TopicPattern) -> Option<String> {
        let repeated = pattern.repeated_holes();
        if repeated.is_empty() {
            return self.search(pattern);
        }
        let values: Option<Vec<Vec<String>>> =
            repeated.iter().map(|h| self.hole_values(h)).collect();
        let Some(values) = values.filter(|v| {
            v.iter()
                .try_fold(1usize, |n, choices| n.checked_mul(choices.len()))
                .is_some_and(|n| n <= REPEAT_BUDGET)
        }) else {
            return self.search(pattern);
        };
        if values.iter().any(|v| v.is_empty()) {
            return None;
        }
        // An odometer over every combination of values.
        let mut at = vec![0usize; repeated.len()];
        loop {
            let mut filled = pattern.clone();
            for ((hole, choices), i) in repeated.iter().zip(&values).zip(&at) {
                filled = filled.fill(hole.id, &choices[*i]);
            }
            if let Some(example) = self.search(&filled) {
                return Some(example);
            }
            let mut digit = 0;
            loop {
                if digit == at.len() {
                    return None;
                }
                at[digit] += 1;
                if at[digit] < values[digit].len() {
                    break;
                }
                at[digit] = 0;
                digit += 1;
            }
        }
    }

    /// The values worth trying for a repeated hole. Where an occurrence
    /// lands in a fixed level of this filter, the hole's text (or for `{#}`,
    /// each of its levels) is a substring of that level; where every
    /// occurrence lands in wildcard levels, any text does, so "x" stands
    /// for all of them. `{#}` needs at most as many levels as the filter
    /// has: levels past that are inside the filter's `#` at every
    /// occurrence and can be dropped. `None` past [`REPEAT_BUDGET`] values.
    fn hole_values(&self, hole: &Hole) -> Option<Vec<String>> {
        let mut pieces: Vec<String> = vec!["x".into()];
        for level in &self.levels {
            if let Level::Exact(e) = level {
                let bounds: Vec<usize> =
                    e.char_indices().map(|(i, _)| i).chain([e.len()]).collect();
                for (a, &start) in bounds.iter().enumerate() {
                    for &end in &bounds[a..] {
                        if !pieces.iter().any(|p| *p == e[start..end]) {
                            pieces.push(e[start..end].to_string());
                        }
                    }
                }
            }
        }
        let mut values = pieces.clone();
        if hole.levels {
            let mut longer = pieces.clone();
            for _ in 1..self.levels.len() {
                if values.len() + longer.len() * pieces.len() > REPEAT_BUDGET {
                    return None;
                }
                longer = longer
                    .iter()
                    .flat_map(|l| pieces.iter().map(move |p| format!("{l}/{p}")))
                    .collect();
                values.extend(longer.iter().cloned());
            }
        }
        values.retain(|v| {
            (hole.may_be_empty || !v.is_empty())
                && (hole.may_start_with_dollar || !v.starts_with('$'))
        });
        (values.len() <= REPEAT_BUDGET).then_some(values)
    }

    /// This filter as steps over characters.
    fn steps(&self) -> Vec<FilterStep> {
        let mut steps = Vec::new();
        for (i, level) in self.levels.iter().enumerate() {
            if *level == Level::Multi {
                steps.push(if i == 0 {
                    FilterStep::Hash
                } else {
                    FilterStep::SlashHash
                });
                continue;
            }
            if i > 0 {
                steps.push(FilterStep::Char('/'));
            }
            match level {
                Level::Exact(e) => steps.extend(e.chars().map(FilterStep::Char)),
                _ => steps.push(FilterStep::Plus),
            }
        }
        steps
    }

    /// Whether `pattern`, holes taken as independent, can produce a topic
    /// this filter matches; the example if so. First with every hole
    /// non-empty (for a readable example such as "out/x" rather than
    /// "out/"), then as the rules allow.
    fn search(&self, pattern: &TopicPattern) -> Option<String> {
        self.search_with(pattern, true)
            .or_else(|| self.search_with(pattern, false))
    }

    /// A breadth-first walk of the product of the pattern and the filter,
    /// both read as automata over characters.
    fn search_with(&self, pattern: &TopicPattern, holes_non_empty: bool) -> Option<String> {
        enum Step {
            Char(char),
            Hole(Hole),
        }
        let psteps: Vec<Step> = pattern
            .pieces
            .iter()
            .flat_map(|p| match p {
                Piece::Text(t) => t.chars().map(Step::Char).collect::<Vec<_>>(),
                Piece::Hole(h) => vec![Step::Hole(*h)],
            })
            .collect();
        let fsteps = self.steps();
        // The '$' rule of `matches`.
        let no_leading_dollar = !matches!(self.levels.first(), Some(Level::Exact(_)));

        // Pattern moves from (step, in hole): ε moves and character moves.
        let pattern_moves = |i: usize, in_hole: bool| {
            let mut eps = Vec::new();
            let mut chars = Vec::new();
            match psteps.get(i) {
                None => {}
                Some(Step::Char(c)) => chars.push((Class::Char(*c), i + 1, false)),
                Some(Step::Hole(h)) => {
                    if in_hole || (h.may_be_empty && !holes_non_empty) {
                        eps.push((i + 1, false));
                    }
                    let first = !in_hole;
                    chars.push((
                        Class::Any {
                            slash: h.levels,
                            dollar: !first || h.may_start_with_dollar,
                        },
                        i,
                        true,
                    ));
                }
            }
            (eps, chars)
        };
        let filter_moves = |j: usize, past_slash: bool| {
            let mut eps = Vec::new();
            let mut chars = Vec::new();
            match fsteps.get(j) {
                None => {}
                Some(FilterStep::Char(c)) => chars.push((Class::Char(*c), j + 1, false)),
                Some(FilterStep::Plus) => {
                    eps.push((j + 1, false));
                    chars.push((
                        Class::Any {
                            slash: false,
                            dollar: true,
                        },
                        j,
                        false,
                    ));
                }
                Some(FilterStep::Hash) => {
                    eps.push((j + 1, false));
                    chars.push((Class::ALL, j, false));
                }
                Some(FilterStep::SlashHash) => {
                    eps.push((j + 1, false));
                    if past_slash {
                        chars.push((Class::ALL, j, true));
                    } else {
                        chars.push((Class::Char('/'), j, true));
                    }
                }
            }
            (eps, chars)
        };

        let start = State {
            pattern: 0,
            in_hole: false,
            filter: 0,
            past_slash: false,
            started: false,
        };
        // How each state was first reached: the state before it and the
        // character produced on the way (none for an ε move).
        let mut came_from: HashMap<State, Option<(State, Option<char>)>> = HashMap::new();
        came_from.insert(start, None);
        let mut queue = VecDeque::from([start]);
        while let Some(s) = queue.pop_front() {
            if s.started && s.pattern == psteps.len() && s.filter == fsteps.len() {
                let mut topic: Vec<char> = Vec::new();
                let mut at = s;
                while let Some(Some((prev, c))) = came_from.get(&at) {
                    topic.extend(c);
                    at = *prev;
                }
                return Some(topic.into_iter().rev().collect());
            }
            let (p_eps, p_chars) = pattern_moves(s.pattern, s.in_hole);
            let (f_eps, f_chars) = filter_moves(s.filter, s.past_slash);
            let mut next: Vec<(State, Option<char>)> = Vec::new();
            for (pattern, in_hole) in p_eps {
                next.push((
                    State {
                        pattern,
                        in_hole,
                        ..s
                    },
                    None,
                ));
            }
            for (filter, past_slash) in f_eps {
                next.push((
                    State {
                        filter,
                        past_slash,
                        ..s
                    },
                    None,
                ));
            }
            for (pc, pattern, in_hole) in &p_chars {
                for (fc, filter, past_slash) in &f_chars {
                    let mut class = pc.and(*fc);
                    if !s.started && no_leading_dollar {
                        class = class.and_then(|c| {
                            c.and(Class::Any {
                                slash: true,
                                dollar: false,
                            })
                        });
                    }
                    if let Some(c) = class {
                        next.push((
                            State {
                                pattern: *pattern,
                                in_hole: *in_hole,
                                filter: *filter,
                                past_slash: *past_slash,
                                started: true,
                            },
                            Some(c.example()),
                        ));
                    }
                }
            }
            for (state, c) in next {
                if let std::collections::hash_map::Entry::Vacant(e) = came_from.entry(state) {
                    e.insert(Some((s, c)));
                    queue.push_back(state);
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn shared_subscriptions_match_on_their_filter() {
        let f = TopicFilter::parse("$share/gw-pool/sensors/+/accel").unwrap();
        assert_eq!(f.as_str(), "$share/gw-pool/sensors/+/accel");
        assert_eq!(f.share_group(), Some("gw-pool"));
        assert_eq!(f.single_wildcards(), 1);
        let caps = f.matches("sensors/s1/accel").unwrap();
        assert_eq!(caps.singles, ["s1"]);
        assert!(f.matches("$share/gw-pool/sensors/s1/accel").is_none());
        let t = TopicTemplate::parse("out/{device_id}/{model}/{1}", &f).unwrap();
        assert_eq!(t.render("gw", "har", &caps), "out/gw/har/s1");
        assert_eq!(TopicFilter::parse("sensors/#").unwrap().share_group(), None);
        // A '$' topic under a shared wildcard follows the usual rule.
        let all = TopicFilter::parse("$share/g/#").unwrap();
        assert!(all.matches("$SYS/broker/uptime").is_none());
        assert!(all.matches("a/b").is_some());
        for (bad, says) in [
            ("$share/g", "no topic filter"),
            ("$share/g/", "no topic filter"),
            ("$share//a", "non-empty level"),
            ("$share/g+/a", "without '+' or '#'"),
            ("$share/#/a", "without '+' or '#'"),
            ("$share/g/a/#/b", "'#' must be the last level"),
        ] {
            let e = TopicFilter::parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn filters_intersect_when_one_topic_matches_both() {
        let f = |t: &str| TopicFilter::parse(t).unwrap();
        for (a, b, want) in [
            ("a/+/c", "a/b/+", Some("a/b/c")),
            ("a/#", "a", Some("a")),
            ("a/#", "+/x/#", Some("a/x")),
            ("#", "x/+", Some("x/x")),
            ("$share/g/s/+", "s/1", Some("s/1")),
            ("a/+", "a/+/+", None),
            ("a/b", "a/c", None),
            ("+/x", "$SYS/x", None),
            ("#", "$SYS/#", None),
            ("$SYS/#", "$SYS/+", Some("$SYS/x")),
        ] {
            assert_eq!(f(a).intersection(&f(b)).as_deref(), want, "{a} & {b}");
            assert_eq!(f(b).intersection(&f(a)).as_deref(), want, "{b} & {a}");
        }
    }

    use std::collections::HashSet;

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

    #[test]
    fn template_rejects_a_literal_hash_next_to_the_placeholder() {
        let filter = f("in/#");
        assert!(TopicTemplate::parse("out/{#}", &filter).is_ok());
        assert!(TopicTemplate::parse("out#/{#}", &filter)
            .unwrap_err()
            .contains("wildcards"));
    }

    #[test]
    fn a_template_becomes_the_filter_of_everything_it_publishes() {
        let sub = |input: &str, output: &str| {
            TopicTemplate::parse(output, &f(input))
                .unwrap()
                .subscription("gw-7", "har")
        };
        assert_eq!(
            sub("sensors/+/accel", "edge-infer/{device_id}/{model}/{1}"),
            "edge-infer/gw-7/har/+"
        );
        assert_eq!(sub("in/+/+", "out/{2}-{1}/x"), "out/+/x");
        assert_eq!(sub("in/#", "out/{model}/{#}"), "out/har/#");
        assert_eq!(sub("in/#", "out/a{#}/tail"), "out/#");
        assert_eq!(sub("in/x", "out/{device_id}/{model}"), "out/gw-7/har");
        // Every rendered topic matches it.
        let filter = f("sensors/+/+/#");
        let t = TopicTemplate::parse("o/{model}/{2}/{1}/{#}", &filter).unwrap();
        let caps = filter.matches("sensors/a/b/c/d").unwrap();
        let sub = f(&t.subscription("gw", "m"));
        assert!(sub.matches(&t.render("gw", "m", &caps)).is_some());
    }

    #[test]
    fn homeassistant_ids_keep_only_what_discovery_accepts() {
        assert_eq!(homeassistant_id("gw-7_a"), "gw-7_a");
        let (a, b) = (homeassistant_id("a.b"), homeassistant_id("a_b"));
        assert!(a.starts_with("a_b_") && a.len() == 12, "{a}");
        assert_eq!(b, "a_b");
        assert_eq!(a, homeassistant_id("a.b"));
        assert!(homeassistant_id("gw.7 ü$").starts_with("gw_7____"));
        assert!(homeassistant_id("").starts_with('_'));
        assert_eq!(
            discovery_topic("homeassistant", "sensor", "gw-7", "har_label"),
            "homeassistant/sensor/gw-7/har_label/config"
        );
    }

    #[test]
    fn device_topics_are_the_ones_replies_publishes_on() {
        for id in ["gw-7", "$gw"] {
            assert_eq!(
                device_topics(id),
                [
                    ("errors", crate::replies::errors_topic(id)),
                    ("status", crate::replies::status_topic(id)),
                    ("health", crate::replies::health_topic(id)),
                ]
            );
        }
    }

    /// What `consumer` can take of what `template` publishes for model "m"
    /// on device "gw-7", the template's input filter being `source`.
    fn overlap(consumer: &str, source: &str, template: &str) -> Option<String> {
        let source = f(source);
        let t = TopicTemplate::parse(template, &source).unwrap();
        f(consumer).overlap(&t.pattern(&source, "gw-7", "m"))
    }

    fn some(s: &str) -> Option<String> {
        Some(s.to_string())
    }

    #[test]
    fn filters_that_take_the_daemons_own_output_overlap() {
        let default = "edge-infer/{device_id}/{model}/result";
        assert_eq!(
            overlap("edge-infer/#", "sensors/+/accel", default),
            some("edge-infer/gw-7/m/result")
        );
        assert_eq!(
            overlap("#", "sensors/+/accel", default),
            some("edge-infer/gw-7/m/result")
        );
        assert_eq!(
            overlap("+/+/+/+", "sensors/+/accel", default),
            some("edge-infer/gw-7/m/result")
        );
        assert_eq!(overlap("+/+/+", "sensors/+/accel", default), None);
        assert_eq!(
            overlap("+/+/+", "sensors/+/accel", "out/{device_id}/{1}"),
            some("out/gw-7/x")
        );
        // A `+` capture is any level: "out/x" as the example, but "out/+"
        // matches whatever it is.
        assert_eq!(overlap("out/+", "in/+", "out/{1}"), some("out/x"));
        assert_eq!(overlap("out/abc", "in/+", "out/{1}"), some("out/abc"));
        // Part of a level.
        assert_eq!(
            overlap("out/pre-abc", "in/+", "out/pre-{1}"),
            some("out/pre-abc")
        );
        assert_eq!(overlap("out/abc", "in/+", "out/pre-{1}"), None);
        // An empty level: "in//x" captures "".
        assert_eq!(overlap("out/", "in/+/x", "out/{1}"), some("out/"));
        assert_eq!(overlap("out//y", "in/+/x", "out/{1}/y"), some("out//y"));
        // `{#}` renders any number of levels, none included.
        assert_eq!(overlap("out/a/b/c", "in/#", "out/{#}"), some("out/a/b/c"));
        assert_eq!(
            overlap("out/+/+/+/end", "in/#", "out/{#}/end"),
            some("out////end")
        );
        assert_eq!(overlap("out/", "in/#", "out/{#}"), some("out/"));
        assert_eq!(overlap("out", "in/#", "out/{#}"), None);
        assert_eq!(overlap("out/#", "in/#", "out{#}"), some("out/"));
        // The device id and model name are fixed text.
        assert_eq!(
            overlap("gw-7/+", "in/+", "{device_id}/{model}"),
            some("gw-7/m")
        );
        assert_eq!(overlap("gw-8/+", "in/+", "{device_id}/{model}"), None);
        assert_eq!(overlap("+/n", "in/+", "{device_id}/{model}"), None);
    }

    #[test]
    fn filters_that_cannot_take_what_a_template_publishes_do_not_overlap() {
        assert_eq!(
            overlap("sensors/+/accel", "sensors/+/accel", "results/{1}"),
            None
        );
        assert_eq!(
            overlap("sensors/+/accel", "sensors/+/accel", "sensors/{1}/result"),
            None
        );
        assert_eq!(
            overlap("sensors/#", "sensors/+/accel", "edge-infer/{device_id}/{1}"),
            None
        );
        // One level never holds a '/'.
        assert_eq!(overlap("out/+/+", "in/+", "out/{1}"), None);
        assert_eq!(overlap("out/+", "in/+", "out/{1}/{1}"), None);
        // `a/#` matches "a" itself ("out{1}" with an empty level), but
        // "out/{1}" is always two levels.
        assert_eq!(overlap("out/#", "in/+", "out{1}"), some("out"));
        assert_eq!(overlap("outx/#", "in/+", "out/{1}"), None);
    }

    #[test]
    fn the_dollar_rule_of_matches_applies() {
        // Fixed text starting with '$' is not matched by a leading wildcard.
        assert_eq!(overlap("#", "in/+", "$out/{1}"), None);
        assert_eq!(overlap("+/+", "in/+", "$out/{1}"), None);
        assert_eq!(overlap("$out/#", "in/+", "$out/{1}"), some("$out/x"));
        // Nor is a capture that starts the topic with '$'...
        assert_eq!(overlap("#", "in/+", "{1}/out"), some("x/out"));
        assert_eq!(overlap("$a/out", "in/+", "{1}/out"), some("$a/out"));
        // ...which a first-level wildcard can never capture.
        assert_eq!(overlap("$a/out", "+/in", "{1}/out"), None);
        assert_eq!(overlap("$a", "#", "{#}"), None);
        assert_eq!(overlap("$a", "in/#", "{#}"), some("$a"));
    }

    #[test]
    fn a_repeated_placeholder_renders_the_same_text_twice() {
        assert_eq!(overlap("a/b", "in/+", "{1}/{1}"), None);
        assert_eq!(overlap("a/a", "in/+", "{1}/{1}"), some("a/a"));
        assert_eq!(overlap("+/b", "in/+", "{1}/{1}"), some("b/b"));
        assert_eq!(overlap("ab/+", "in/+", "a{1}/{1}"), some("ab/b"));
        assert_eq!(overlap("ab/c", "in/+", "a{1}/{1}"), None);
        assert_eq!(overlap("a/b/a", "in/#", "{#}/{#}"), None);
        assert_eq!(overlap("a/b/a/b", "in/#", "{#}/{#}"), some("a/b/a/b"));
        assert_eq!(overlap("x/+/#", "in/#", "{#}/{#}"), some("x/x"));
        // Past REPEAT_BUDGET combinations (two repeated placeholders, 352
        // substrings of the first level each) the uses count as
        // independent: an overlap is reported that values equal in both
        // uses could not give. Conservative, never the other way round.
        let long = "abcdefghijklmnopqrstuvwxyz/b/+/+";
        assert!(overlap(long, "in/+/+", "{1}/{1}/{2}/{2}").is_some());
        assert_eq!(overlap("abc/b/+/+", "in/+/+", "{1}/{1}/{2}/{2}"), None);
    }

    /// Against the definition: every topic of a small universe goes through
    /// `source`, `render` and `consumer.matches`; `overlap` must find a
    /// topic exactly when that does, and only ones it can render.
    #[test]
    fn overlap_agrees_with_matching_rendered_topics() {
        let level_values = ["", "a", "b", "$a", "x", "s", "aa", "ab", "$ab", "gwa"];
        let mut topics: Vec<String> = level_values.iter().map(|l| l.to_string()).collect();
        let mut last = topics.clone();
        for _ in 1..4 {
            last = last
                .iter()
                .flat_map(|t| level_values.iter().map(move |l| format!("{t}/{l}")))
                .collect();
            topics.extend(last.iter().cloned());
        }
        topics.retain(|t| !t.is_empty()); // MQTT topics are never empty
        let sources = ["+", "#", "s/+", "+/+", "s/#", "+/#", "+/s/+", "s/+/+"];
        let templates = [
            "{1}",
            "{1}/x",
            "a{1}",
            "{1}/{1}",
            "{1}{1}",
            "{#}",
            "x/{#}",
            "{#}/{1}",
            "{1}{2}",
            "{2}/{1}",
            "$a/{1}",
            "{1}/{#}/{1}",
            "{device_id}{1}",
            "x",
        ];
        let consumers = [
            "#", "+", "a", "+/+", "a/#", "x/a", "x/+/b", "$a/#", "+/$a", "aa", "a/a", "x/#", "x//",
            "ab", "$a", "+/+/+", "a/+/#", "$ab", "b/#", "x/x", "gwa", "x/$a/a",
        ];
        let mut checked = 0;
        for source in sources.map(f) {
            for text in templates {
                let Ok(template) = TopicTemplate::parse(text, &source) else {
                    continue;
                };
                let rendered: HashSet<String> = topics
                    .iter()
                    .filter_map(|t| {
                        source
                            .matches(t)
                            .map(|caps| template.render("gw", "m", &caps))
                    })
                    .filter(|t| !t.is_empty())
                    .collect();
                let pattern = template.pattern(&source, "gw", "m");
                for consumer in consumers.map(f) {
                    let brute = rendered.iter().any(|t| consumer.matches(t).is_some());
                    let found = consumer.overlap(&pattern);
                    assert_eq!(
                        found.is_some(),
                        brute,
                        "{consumer} vs {text} on {source}: overlap says {found:?}"
                    );
                    if let Some(example) = found {
                        assert!(consumer.matches(&example).is_some(), "{example}");
                        assert!(
                            rendered.contains(&example),
                            "{consumer} vs {text} on {source}: {example} cannot be rendered"
                        );
                    }
                    checked += 1;
                }
            }
        }
        assert!(checked > 1000, "{checked}");
    }

    #[test]
    fn update_topics_are_taken_apart() {
        let d = "gw-1";
        let own = update_topic(d, "edge-infer/gw-1/models/har/desired").unwrap();
        assert_eq!((own.model, own.fleet, own.chunk), ("har", false, None));
        let c = update_topic(d, "edge-infer/fleet/models/har/desired/chunk/12").unwrap();
        assert_eq!((c.model, c.fleet, c.chunk), ("har", true, Some(12)));
        for other in [
            "edge-infer/gw-2/models/har/desired",
            "edge-infer/gw-1/models/har/state",
            "edge-infer/gw-1/models//desired",
            "edge-infer/gw-1/models/har/desired/chunk/x",
            "edge-infer/gw-1/models/har/desired/chunk/1/2",
        ] {
            assert_eq!(update_topic(d, other), None, "{other}");
        }
        let [own, fleet] = desired_filters(d);
        assert!(TopicFilter::parse(&own)
            .unwrap()
            .matches(&desired_topic(d, "har"))
            .is_some());
        assert!(TopicFilter::parse(&fleet)
            .unwrap()
            .matches(&desired_topic(FLEET, "x"))
            .is_some());
        let chunks = TopicFilter::parse(&chunk_filter(&desired_topic(d, "har"))).unwrap();
        assert!(chunks
            .matches(&chunk_topic(&desired_topic(d, "har"), 3))
            .is_some());
    }
}
