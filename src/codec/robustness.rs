//! Randomized robustness tests of every payload decoder (issue 10): the
//! JSON decoder (the fast path and the full decoder, each on its own and
//! as `decode_json` composes them), the raw decoder and `peek_id`. Each
//! gets generated and mutated inputs, every one run under `catch_unwind`
//! (a panic fails the test with the input, the seed and the case), and
//! every answer is checked: a result whose buffers are fully written with
//! valid values, or a documented error code with a bounded message.
//!
//! Counts: `EDGE_INFER_ROBUSTNESS_CASES` inputs per decoder (default: a
//! CI-sized count). The full run, a million per decoder, with the counts
//! printed:
//!
//! ```sh
//! EDGE_INFER_ROBUSTNESS_CASES=1000000 cargo test --release --bin edge-infer robustness -- --nocapture
//! ```
//!
//! `EDGE_INFER_ROBUSTNESS_SEED` (and `EDGE_INFER_ROBUSTNESS_CASE`) replay
//! a failure; see `crate::robustness`. A new decoder gets its own
//! `robustness_*` test here: a generator of its inputs, [`mutate`], and
//! the checks its contract asks for.
//!
//! Inputs:
//!
//! - generated ([`message`]): objects with `id` of many shapes, `data` or
//!   `inputs` (list or object form) nested any way with counts around the
//!   tensor's, numbers in many textual forms, unknown fields, escaped keys,
//!   duplicates, whitespace, deep nesting up to and past the limits. The
//!   generator plants zero, one or more faults and knows what each must
//!   cause, so a fault-free message must decode to exactly the values it
//!   wrote (quantized with `quant::store`) and a one-fault message must be
//!   refused with that fault's code and wording;
//! - mutated ([`mutate`]): bit flips, bytes set, inserted, deleted or
//!   duplicated, truncation, splices of two messages, numbers replaced by
//!   extreme ones, on generated messages and on the seeds of the earlier
//!   mutation tests (whose checks this module took over).

use std::time::Instant;

use model_runtime::{DType, Quantization, TensorSpec};

use super::decode::{decode_json, decode_json_full, decode_raw, Decoded, MAX_DEPTH};
use super::peek::{find_id, PEEK_WINDOW};
use super::{fast, peek_id, quant, ErrorCode, Failure, MessageId, NumberId, MAX_ID_LEN};
use crate::robustness::{Rng, Run};

/// Per-test CI counts: together well under 20 s in a debug build on two
/// busy cores (the config loader's test runs alongside).
const JSON_CASES: u64 = 10_000;
const RAW_CASES: u64 = 50_000;
const PEEK_CASES: u64 = 10_000;
const READINGS_CASES: u64 = 20_000;
const ARRAY_CASES: u64 = 50_000;

/// An error message may be this long plus twice the length of the model's
/// input list (which some messages spell out): enough for every wording,
/// never an echo of a large payload.
const MESSAGE_BASE: usize = 400;

// ---------------------------------------------------------------------
// The models.

/// The inputs of one model, as the runtime reports them.
struct SpecSet {
    name: &'static str,
    specs: Vec<TensorSpec>,
}

fn spec(name: &str, shape: &[usize], dtype: DType, q: Option<(f32, i32)>) -> TensorSpec {
    TensorSpec {
        name: name.into(),
        shape: shape.to_vec(),
        dtype,
        quantization: q.map(|(scale, zero_point)| Quantization { scale, zero_point }),
        shape_signature: shape.iter().map(|&d| d as i64).collect(),
    }
}

/// The shipped models' inputs (models/README.md) and a few that reach the
/// other dtypes and edges.
fn spec_sets() -> Vec<SpecSet> {
    let mut dynamic = spec("features", &[4, 8], DType::F32, None);
    dynamic.shape_signature = vec![-1, 8];
    vec![
        SpecSet {
            name: "har_int8",
            specs: vec![spec(
                "accel",
                &[1, 128, 3],
                DType::I8,
                Some((0.045_965_016, -1)),
            )],
        },
        SpecSet {
            name: "har_f32",
            specs: vec![spec("accel", &[1, 128, 3], DType::F32, None)],
        },
        SpecSet {
            name: "multi_uint8",
            specs: vec![
                spec("temp", &[1, 4], DType::U8, Some((0.007_767_345, 128))),
                spec("accel", &[1, 16, 3], DType::U8, Some((0.072_725_54, 132))),
            ],
        },
        SpecSet {
            name: "multi_f32",
            specs: vec![
                spec("temp", &[1, 4], DType::F32, None),
                spec("accel", &[1, 16, 3], DType::F32, None),
            ],
        },
        SpecSet {
            name: "lookup_int32",
            specs: vec![spec("indices", &[1, 4], DType::I32, None)],
        },
        SpecSet {
            name: "dynamic_batch",
            specs: vec![dynamic],
        },
        SpecSet {
            // int16 (quantized), int64, bool, a one-value input and an
            // empty one.
            name: "mixed",
            specs: vec![
                spec("a", &[2, 3], DType::I16, Some((0.001, 3))),
                spec("b", &[3], DType::I64, None),
                spec("c", &[2, 2], DType::Bool, None),
                spec("d", &[1], DType::F32, None),
                spec("e", &[0], DType::U8, Some((0.5, 0))),
            ],
        },
        SpecSet {
            // One value, a scale that saturates almost everything: deep
            // nesting is cheap here.
            name: "tiny_i8",
            specs: vec![spec("x", &[1], DType::I8, Some((1e-6, 5)))],
        },
        SpecSet {
            // The model of the earlier mutation tests; LEGACY_SEEDS fit it.
            name: "x4_int8",
            specs: vec![spec("x", &[4], DType::I8, Some((0.0078, -1)))],
        },
    ]
}

/// The seeds of the mutation tests this module replaced (decode.rs's
/// fast-path/full-decoder test and peek.rs's id test), for `x4_int8`.
const LEGACY_SEEDS: [&str; 10] = [
    r#"{"id":"a-1","data":[0.5,-0.25,1e-2,-1]}"#,
    r#"{"ts":12,"meta":{"s":"q\"","l":[1,null]},"data":[[1,2],[3,4]],"id":7}"#,
    r#"{"inputs":{"x":[0.125,2,3,4]}}"#,
    r#"{"id":-1.50e+30,"data":[1e2,0.5,-1,2]}"#,
    r#"{"ts":12,"meta":{"id":"no","l":[1,null,{"id":2}]},"data":[[1,2],[3,4]],"id":7}"#,
    r#"{"note":"say \"id\":1","id":"\u00e9\ud83d\ude00\n","inputs":{"x":[1,2,3,4]}}"#,
    r#"{"id":1000000000000000000000000000000,"data":[1,2,3,4],"id":-2.50e+3}"#,
    r#"{ "\u0069d" : "esc" , "data" : [ 1 , 2 , 3 , 4 ] , "t" : true , "f" : false }"#,
    r#"{"data":[1,2,3,"x"],"id":"late"}"#,
    r#"{"id":"a-1","data":[0.5,-0.25,1e-2,-1]}"#,
];

/// Bytes JSON is made of (the earlier tests' alphabet, with the starts of
/// NaN/Infinity and escapes).
const ALPHABET: &[u8] = b"{}[]\",:-+.eE0123456789 \\ntrulfasxuidD8NI";

/// Numbers that break things when they replace a value.
const EXTREMES: &[&str] = &[
    "1e309",
    "-1e400",
    "1E+999",
    "3.4028236e38",
    "-3.5e38",
    "1e39",
    "1e-400",
    "4.9406564584124654e-324",
    "1.4e-45",
    "-0",
    "-0.0e-0",
    "NaN",
    "Infinity",
    "-Infinity",
    "nan",
    "inf",
    "18446744073709551616",
    "-9223372036854775809",
    "1e99999999999999999999",
    "0.00000000000000000000000000000000000000000000000000001",
    "01",
    "1.",
    ".5",
    "+1",
    "-",
    "1e",
];

// ---------------------------------------------------------------------
// The generator.

/// Something planted in a message that must make the decoder refuse it.
#[derive(Debug, Clone)]
struct Fault {
    code: ErrorCode,
    /// Texts the error message must contain.
    says: Vec<String>,
}

/// A generated message and what a correct decoder answers to it.
struct Message {
    payload: Vec<u8>,
    faults: Vec<Fault>,
    /// The first `"id"` member's value, when it is a valid id.
    id: Option<MessageId>,
    /// Where the first id member's value ends, if there is one.
    id_end: Option<usize>,
    /// A fault that breaks the JSON comes before the first id member.
    syntax_before_id: bool,
    /// Each input's values as written (meaningful without faults).
    values: Vec<Vec<f32>>,
}

impl Message {
    /// The id the decoder must return along with an error: what it could
    /// read before the fault, or find by walking the JSON up to the id.
    fn error_id(&self) -> Option<MessageId> {
        if self.syntax_before_id {
            None
        } else {
            self.id.clone()
        }
    }

    /// Whether peek_id must find the id: valid, first, not preceded by
    /// broken JSON, and ending (with the delimiter that proves a number
    /// complete) inside the window.
    fn peekable(&self) -> bool {
        self.id.is_some()
            && !self.syntax_before_id
            && self.id_end.is_some_and(|end| end < PEEK_WINDOW)
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Form {
    /// `"data": [..]` (single-input models).
    Data,
    /// `"inputs": [[..], ..]`.
    List,
    /// `"inputs": {"name": [..], ..}`.
    Object,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    ValueNan,
    ValueF32,
    ValueF64,
    ValueType,
    ValueSyntax,
    Count,
    Deep,
    NotArray,
    Missing,
    UnknownName,
    DupName,
    Extra,
    NoValues,
    Both,
    InputsScalar,
    IdType,
    IdLong,
    IdEscape,
    IdSyntax,
    Trailing,
    BadIgnored,
}

enum Member {
    Id,
    DupId,
    Values,
    Second,
    Ignored,
    BadIgnored,
    DeepIgnored(usize),
    Pad,
}

struct Gen<'a> {
    rng: &'a mut Rng,
    specs: &'a [TensorSpec],
    out: String,
    faults: Vec<Fault>,
    id: Option<MessageId>,
    id_end: Option<usize>,
    syntax_before_id: bool,
    values: Vec<Vec<f32>>,
    /// Faults to plant: what, and in which input.
    plan: Vec<(Kind, usize)>,
    /// Numbers may be random float64s (most beyond float32).
    wild: bool,
    /// Numbers are plain sensor readings only.
    plain: bool,
}

/// Generates one message for `specs`.
fn message(rng: &mut Rng, specs: &[TensorSpec]) -> Message {
    let style = rng.below(20);
    let mut g = Gen {
        rng,
        specs,
        out: String::new(),
        faults: Vec::new(),
        id: None,
        id_end: None,
        syntax_before_id: false,
        values: vec![Vec::new(); specs.len()],
        plan: Vec::new(),
        wild: style == 0,
        plain: style >= 12,
    };
    if g.rng.one_in(40) {
        g.not_object();
    } else {
        g.object();
    }
    Message {
        payload: g.out.into_bytes(),
        faults: g.faults,
        id: g.id,
        id_end: g.id_end,
        syntax_before_id: g.syntax_before_id,
        values: g.values,
    }
}

impl Gen<'_> {
    /// Plants a fault; `syntax`: the message is no longer valid JSON from
    /// here on (peek_id and the decoder's id recovery stop at it).
    fn fault(&mut self, code: ErrorCode, says: Vec<String>, syntax: bool) {
        if syntax && self.id_end.is_none() {
            self.syntax_before_id = true;
        }
        self.faults.push(Fault { code, says });
    }

    fn planned(&self, kind: Kind, input: usize) -> bool {
        self.plan.contains(&(kind, input))
    }

    fn planned_any(&self, kind: Kind) -> bool {
        self.plan.iter().any(|&(k, _)| k == kind)
    }

    fn ws(&mut self) {
        if self.rng.below(10) < 7 {
            return;
        }
        let w = *self.rng.pick(&[" ", "\n", "\t", "\r\n", "  ", " \n\t "]);
        self.out.push_str(w);
    }

    /// A key as JSON text: plain, or with one character written as a
    /// `\u` escape (the full decoder must still recognise it).
    fn key(&mut self, name: &str) {
        self.out.push('"');
        if !name.is_empty() && self.rng.one_in(12) {
            let at = self.rng.below(name.len());
            for (i, c) in name.char_indices() {
                if i == at && c.is_ascii() {
                    if self.rng.one_in(2) {
                        self.out.push_str(&format!("\\u{:04x}", c as u32));
                    } else {
                        self.out.push_str(&format!("\\u{:04X}", c as u32));
                    }
                } else {
                    self.out.push(c);
                }
            }
        } else {
            self.out.push_str(name);
        }
        self.out.push('"');
        self.ws();
        self.out.push(':');
        self.ws();
    }

    fn not_object(&mut self) {
        let long = format!("\"{}\"", "s".repeat(300 + self.rng.below(3000)));
        let text = match self.rng.below(11) {
            0 => String::new(),
            1 => "   \n".into(),
            2 => "[1,2]".into(),
            3 => "\"str\"".into(),
            4 => long,
            5 => "123".into(),
            6 => "null".into(),
            7 => "true".into(),
            8 => r#"[{"data":[1]}]"#.into(),
            9 => "{".into(),
            _ => "\u{feff}{\"data\":[1]}".into(),
        };
        self.out.push_str(&text);
        self.fault(ErrorCode::BadJson, vec![], true);
    }

    fn object(&mut self) {
        let n = self.specs.len();
        let form = match (n, self.rng.below(8)) {
            (1, 0) => Form::List,
            (1, 1) => Form::Object,
            (1, _) => Form::Data,
            (_, k) if k < 4 => Form::List,
            _ => Form::Object,
        };
        let planned = match self.rng.below(10) {
            0..=5 => 0,
            6..=8 => 1,
            _ => 2 + self.rng.below(2),
        };
        for _ in 0..planned {
            let kind = self.pick_kind(form);
            let input = self.rng.below(n);
            if !self.plan.iter().any(|&(k, i)| k == kind && i == input) {
                self.plan.push((kind, input));
            }
        }
        let mut members = Vec::new();
        if self.planned_any(Kind::NoValues) {
            // Nothing else may bring values either.
            self.plan.retain(|&(k, _)| k != Kind::Both);
            self.fault(ErrorCode::BadJson, vec!["got neither".into()], false);
        } else {
            members.push(Member::Values);
        }
        let id_fault = [Kind::IdType, Kind::IdLong, Kind::IdEscape, Kind::IdSyntax]
            .iter()
            .any(|&k| self.planned_any(k));
        if id_fault || self.rng.below(5) != 0 {
            members.push(Member::Id);
            if self.rng.one_in(10) {
                members.push(Member::DupId);
            }
        }
        for _ in 0..self.rng.below(4) {
            members.push(Member::Ignored);
        }
        if self.planned_any(Kind::BadIgnored) {
            members.push(Member::BadIgnored);
        }
        if self.rng.one_in(12) {
            // Ignored members may nest any depth: serde_json skips them
            // without its recursion limit (and peek_id must walk them).
            members.push(Member::DeepIgnored(100 + self.rng.below(300)));
        }
        if self.planned_any(Kind::Both) {
            members.push(Member::Second);
        }
        if self.rng.one_in(8) {
            members.push(Member::Pad);
        }
        // Any order; a duplicate id after the first.
        for i in (1..members.len()).rev() {
            let j = self.rng.below(i + 1);
            members.swap(i, j);
        }
        let first = members.iter().position(|m| matches!(m, Member::Id));
        let dup = members.iter().position(|m| matches!(m, Member::DupId));
        if let (Some(a), Some(b)) = (first, dup) {
            if b < a {
                members.swap(a, b);
            }
        }

        self.ws();
        self.out.push('{');
        self.ws();
        for (i, m) in members.iter().enumerate() {
            if i > 0 {
                self.out.push(',');
                self.ws();
            }
            match m {
                Member::Id => self.id_member(),
                Member::DupId => {
                    self.key("id");
                    let v = self.rng.pick(&["\"dup\"", "2", "null", "[1]", "{}"]);
                    self.out.push_str(v);
                }
                Member::Values => self.values_member(form),
                Member::Second => self.second_member(form),
                Member::Ignored => {
                    let key = *self.rng.pick(&[
                        "ts",
                        "meta",
                        "Data",
                        "ID",
                        "Inputs",
                        "data_",
                        "idx",
                        "",
                        "é",
                        "\\u00e9t\\u00e9",
                        "sensor\\\"q",
                        "\\u0064at",
                        "i d",
                    ]);
                    self.out.push('"');
                    self.out.push_str(key);
                    self.out.push_str("\":");
                    self.ws();
                    let v = json_value(self.rng, 0);
                    self.out.push_str(&v);
                }
                Member::BadIgnored => {
                    self.key("junk");
                    // Whether the id walk stops there: it skips strings by
                    // their quotes, so an unknown escape does not stop it.
                    // (No unclosed "[" or "{": a planted trailing "]" or
                    // "}" would close it into a valid message.)
                    let (v, stops) = *self.rng.pick(&[
                        ("tru", true),
                        ("nul", true),
                        ("[1,]", true),
                        ("{\"a\" 1}", true),
                        ("{\"a\":1,}", true),
                        ("[1 2]", true),
                        ("01", true),
                        ("\"\\x\"", false),
                        ("\"a\nb\"", true),
                    ]);
                    self.out.push_str(v);
                    self.fault(ErrorCode::BadJson, vec![], stops);
                }
                Member::DeepIgnored(levels) => {
                    let levels = *levels;
                    self.key("deep");
                    if self.rng.one_in(2) {
                        self.out.push_str(&"[".repeat(levels));
                        self.out.push_str(&"]".repeat(levels));
                    } else {
                        self.out.push_str(&"{\"a\":".repeat(levels - 1));
                        self.out.push_str("[]");
                        self.out.push_str(&"}".repeat(levels - 1));
                    }
                }
                Member::Pad => {
                    self.key("pad");
                    if self.rng.one_in(2) {
                        let len = 3000 + self.rng.below(6000);
                        self.out.push('"');
                        self.out.push_str(&"p".repeat(len));
                        self.out.push('"');
                    } else {
                        let len = 600 + self.rng.below(1200);
                        self.out.push('[');
                        self.out.push_str(&vec!["0.125"; len].join(","));
                        self.out.push(']');
                    }
                }
            }
            self.ws();
        }
        self.out.push('}');
        self.ws();
        if self.planned_any(Kind::Trailing) {
            let t = *self
                .rng
                .pick(&[" x", "}", ",", "{}", "]", "\0", " {\"data\":[1]}"]);
            self.out.push_str(t);
            self.fault(ErrorCode::BadJson, vec!["trailing".into()], true);
        }
    }

    fn pick_kind(&mut self, form: Form) -> Kind {
        loop {
            let kind = *self.rng.pick(&[
                Kind::ValueNan,
                Kind::ValueF32,
                Kind::ValueF64,
                Kind::ValueType,
                Kind::ValueSyntax,
                Kind::Count,
                Kind::Count,
                Kind::Deep,
                Kind::NotArray,
                Kind::Missing,
                Kind::UnknownName,
                Kind::DupName,
                Kind::Extra,
                Kind::NoValues,
                Kind::Both,
                Kind::InputsScalar,
                Kind::IdType,
                Kind::IdLong,
                Kind::IdEscape,
                Kind::IdSyntax,
                Kind::Trailing,
                Kind::BadIgnored,
            ]);
            let fits = match kind {
                Kind::Missing | Kind::InputsScalar => form != Form::Data,
                Kind::UnknownName | Kind::DupName => form == Form::Object,
                Kind::Extra => form == Form::List,
                _ => true,
            };
            if fits {
                return kind;
            }
        }
    }

    fn id_member(&mut self) {
        let names = ["id", "id", "id", "\\u0069d", "i\\u0064"];
        let name = *self.rng.pick(&names);
        self.out.push('"');
        self.out.push_str(name);
        self.out.push_str("\":");
        self.ws();
        let kind = [Kind::IdType, Kind::IdLong, Kind::IdEscape, Kind::IdSyntax]
            .into_iter()
            .find(|&k| self.planned_any(k));
        let id = match kind {
            Some(Kind::IdType) => {
                let (text, what) = *self.rng.pick(&[
                    ("null", "null"),
                    ("true", "a boolean"),
                    ("false", "a boolean"),
                    ("[1]", "an array"),
                    ("[]", "an array"),
                    ("{}", "an object"),
                    ("{\"a\":1}", "an object"),
                ]);
                self.out.push_str(text);
                self.fault(
                    ErrorCode::BadJson,
                    vec![format!("\"id\" must be a string or a number, got {what}")],
                    false,
                );
                None
            }
            Some(Kind::IdLong) => {
                let len = MAX_ID_LEN + 1 + self.rng.below(200);
                if self.rng.one_in(2) {
                    self.out.push('"');
                    self.out.push_str(&"x".repeat(len));
                    self.out.push('"');
                } else {
                    self.out.push('1');
                    self.out.push_str(&"0".repeat(len - 1));
                }
                self.fault(
                    ErrorCode::BadJson,
                    vec![format!(
                        "\"id\" may be at most {MAX_ID_LEN} bytes, got {len}"
                    )],
                    false,
                );
                None
            }
            Some(Kind::IdEscape) => {
                let text = *self
                    .rng
                    .pick(&[r#""\ud800""#, r#""\udc00""#, r#""a\ud83dx""#]);
                self.out.push_str(text);
                self.fault(ErrorCode::BadJson, vec!["\"id\"".into()], false);
                None
            }
            Some(_) => {
                let text = *self
                    .rng
                    .pick(&["01", "+1", ".5", "1.", "-", "\"\\x\"", "\"a\tb\""]);
                self.out.push_str(text);
                self.fault(ErrorCode::BadJson, vec![], true);
                None
            }
            None => {
                let (text, id) = valid_id(self.rng);
                self.out.push_str(&text);
                Some(id)
            }
        };
        if self.id_end.is_none() {
            self.id = id;
            self.id_end = Some(self.out.len());
        }
    }

    fn values_member(&mut self, form: Form) {
        let n = self.specs.len();
        if self.planned_any(Kind::InputsScalar) {
            self.key("inputs");
            let long = format!("\"{}\"", "i".repeat(300 + self.rng.below(3000)));
            let v = match self.rng.below(5) {
                0 => "5".to_string(),
                1 => "null".into(),
                2 => "true".into(),
                3 => "\"x\"".into(),
                _ => long,
            };
            self.out.push_str(&v);
            self.fault(ErrorCode::BadJson, vec![], false);
            return;
        }
        match form {
            Form::Data => {
                self.key("data");
                self.input(0);
            }
            Form::List => {
                self.key("inputs");
                self.out.push('[');
                self.ws();
                let missing = (0..n).find(|&i| self.planned(Kind::Missing, i));
                let upto = missing.unwrap_or(n);
                for i in 0..upto {
                    if i > 0 {
                        self.out.push(',');
                        self.ws();
                    }
                    self.input(i);
                }
                if let Some(i) = missing {
                    self.missing(i);
                }
                if self.planned_any(Kind::Extra) && missing.is_none() {
                    let extra = 1 + self.rng.below(2);
                    for _ in 0..extra {
                        if n > 0 {
                            self.out.push(',');
                        }
                        let v = json_value(self.rng, 2);
                        self.out.push_str(&v);
                    }
                    self.fault(
                        ErrorCode::BadShape,
                        vec![format!("\"inputs\" has {} entries", n + extra)],
                        false,
                    );
                }
                self.ws();
                self.out.push(']');
            }
            Form::Object => {
                self.key("inputs");
                self.out.push('{');
                self.ws();
                let mut order: Vec<usize> = (0..n).collect();
                for i in (1..n).rev() {
                    let j = self.rng.below(i + 1);
                    order.swap(i, j);
                }
                let missing: Vec<usize> =
                    (0..n).filter(|&i| self.planned(Kind::Missing, i)).collect();
                order.retain(|i| !missing.contains(i));
                let unknown = self
                    .planned_any(Kind::UnknownName)
                    .then(|| self.rng.below(order.len() + 1));
                let dup = (0..n).find(|&i| self.planned(Kind::DupName, i) && order.contains(&i));
                let mut first = true;
                for (at, &i) in order.iter().enumerate() {
                    if unknown == Some(at) {
                        self.unknown_input(&mut first);
                    }
                    if !first {
                        self.out.push(',');
                        self.ws();
                    }
                    first = false;
                    let name = self.specs[i].name.clone();
                    self.key(&name);
                    self.input(i);
                }
                if unknown == Some(order.len()) {
                    self.unknown_input(&mut first);
                }
                if let Some(i) = dup {
                    if !first {
                        self.out.push(',');
                    }
                    let name = self.specs[i].name.clone();
                    self.key(&name);
                    let vals = self.plain_values(self.specs[i].element_count());
                    self.out.push_str(&vals);
                    self.fault(
                        ErrorCode::BadJson,
                        vec![format!("input '{name}' is given twice")],
                        false,
                    );
                }
                if let Some(&i) = missing.first() {
                    self.missing(i);
                }
                self.ws();
                self.out.push('}');
            }
        }
    }

    fn missing(&mut self, i: usize) {
        let name = &self.specs[i].name;
        self.fault(
            ErrorCode::BadShape,
            vec![format!("input '{name}' ("), "is missing".into()],
            false,
        );
    }

    fn unknown_input(&mut self, first: &mut bool) {
        if !*first {
            self.out.push(',');
        }
        *first = false;
        let len = if self.rng.one_in(4) {
            300 + self.rng.below(3000)
        } else {
            1 + self.rng.below(12)
        };
        let name: String = (0..len)
            .map(|_| char::from(b'a' + self.rng.below(26) as u8))
            .collect();
        let name = if self.specs.iter().any(|s| s.name == name) {
            format!("{name}_")
        } else {
            name
        };
        self.out.push('"');
        self.out.push_str(&name);
        self.out.push_str("\":[1]");
        let shown: String = name.chars().take(16).collect();
        self.fault(
            ErrorCode::BadShape,
            vec![format!("no input named '{shown}")],
            false,
        );
    }

    /// A second values member: `data` or `inputs` again.
    fn second_member(&mut self, form: Form) {
        if self.specs.len() == 1 {
            let n = self.specs[0].element_count();
            let vals = self.plain_values(n);
            if form == Form::Data && self.rng.one_in(2) {
                self.key("data");
                self.out.push_str(&vals);
            } else {
                self.key("inputs");
                self.out.push('[');
                self.out.push_str(&vals);
                self.out.push(']');
            }
            self.fault(ErrorCode::BadJson, vec!["send exactly one".into()], false);
        } else {
            self.key("data");
            let vals = self.plain_values(self.specs[0].element_count());
            self.out.push_str(&vals);
            self.fault(
                ErrorCode::BadShape,
                vec!["\"data\" is for single-input models".into()],
                false,
            );
        }
    }

    fn plain_values(&mut self, n: usize) -> String {
        let vals: Vec<String> = (0..n).map(|_| sensor(self.rng)).collect();
        format!("[{}]", vals.join(","))
    }

    /// One input's values, with the faults planned for it.
    fn input(&mut self, i: usize) {
        let spec = &self.specs[i];
        let name = spec.name.clone();
        let n = spec.element_count();
        let shape = spec.shape.clone();
        if self.planned(Kind::NotArray, i) {
            let (text, what) = *self.rng.pick(&[
                ("5", "a single number"),
                ("-0.5e3", "a single number"),
                ("\"1,2\"", "a string"),
                ("null", "null"),
                ("true", "a boolean"),
                ("{\"a\":[1]}", "an object"),
            ]);
            self.out.push_str(text);
            self.fault(
                ErrorCode::BadJson,
                vec![format!(
                    "input '{name}' must be an array of numbers, got {what}"
                )],
                false,
            );
            return;
        }
        let m = if self.planned(Kind::Count, i) {
            let delta = match self.rng.below(4) {
                0 => 1,
                1 if n > 0 => -1,
                2 if n > 0 => self.rng.range(-(n as i64), -1),
                _ => self.rng.range(1, n as i64 + 3),
            };
            let m = (n as i64 + delta).max(0) as usize;
            let m = if m == n { n + 1 } else { m };
            self.fault(
                ErrorCode::BadShape,
                vec![
                    format!("input '{name}' needs {n} values"),
                    format!("got {m}"),
                ],
                false,
            );
            m
        } else {
            n
        };
        // The planned bad values, each at its own element.
        let mut bad: Vec<(usize, Kind)> = Vec::new();
        if m > 0 {
            for &(kind, input) in &self.plan {
                let value_kind = matches!(
                    kind,
                    Kind::ValueNan
                        | Kind::ValueF32
                        | Kind::ValueF64
                        | Kind::ValueType
                        | Kind::ValueSyntax
                );
                if value_kind && input == i {
                    let at = self.rng.below(m);
                    if !bad.iter().any(|&(a, _)| a == at) {
                        bad.push((at, kind));
                    }
                }
            }
        }
        let mut toks = Vec::with_capacity(m);
        let mut vals = Vec::with_capacity(m);
        for j in 0..m {
            if let Some(&(_, kind)) = bad.iter().find(|&&(a, _)| a == j) {
                let tok = self.bad_value(kind, &name, j);
                toks.push(tok);
                continue;
            }
            let tok = if self.plain {
                sensor(self.rng)
            } else {
                number(self.rng, self.wild)
            };
            let x = tok.parse::<f64>().expect("generated numbers parse") as f32;
            if !x.is_finite() {
                // A random number beyond float32 (only `wild` numbers).
                self.fault(
                    ErrorCode::BadValue,
                    vec![
                        format!("input '{name}' element {j} is "),
                        "outside the float32 range".into(),
                    ],
                    false,
                );
            }
            vals.push(x);
            toks.push(tok);
        }
        let deep = self.planned(Kind::Deep, i);
        let depth = self.nest(&toks, &shape, deep);
        if depth > MAX_DEPTH as usize {
            self.fault(
                ErrorCode::BadShape,
                vec![format!("input '{name}' nests arrays more than 16 deep")],
                false,
            );
        }
        self.values[i] = vals;
    }

    /// The token of a planned bad value at element `j`.
    fn bad_value(&mut self, kind: Kind, name: &str, j: usize) -> String {
        match kind {
            Kind::ValueNan => {
                let t = *self
                    .rng
                    .pick(&["NaN", "Infinity", "-Infinity", "nan", "inf"]);
                self.fault(
                    ErrorCode::BadValue,
                    vec![
                        t.trim_start_matches('-').to_string(),
                        "must be finite".into(),
                    ],
                    true,
                );
                t.into()
            }
            Kind::ValueF32 => {
                let t = *self.rng.pick(&[
                    "1e39",
                    "-3.5e38",
                    "3.4028236e38",
                    "340282370000000000000000000000000000000",
                    "1.0e+300",
                    "-4e100",
                ]);
                self.fault(
                    ErrorCode::BadValue,
                    vec![
                        format!("input '{name}' element {j} is "),
                        "outside the float32 range".into(),
                    ],
                    false,
                );
                t.into()
            }
            Kind::ValueF64 => {
                let t = match self.rng.below(4) {
                    0 => "1e309".to_string(),
                    1 => "-1e400".into(),
                    2 => "1E+999".into(),
                    _ => format!("1{}", "0".repeat(309 + self.rng.below(3000))),
                };
                let shown: String = t.chars().take(16).collect();
                self.fault(
                    ErrorCode::BadValue,
                    vec![
                        format!("input '{name}' element {j} is {shown}"),
                        "outside the float32 range".into(),
                    ],
                    false,
                );
                t
            }
            Kind::ValueType => {
                let (t, what) = *self.rng.pick(&[
                    ("\"1.5\"", "a string"),
                    ("\"\"", "a string"),
                    ("true", "a boolean"),
                    ("false", "a boolean"),
                    ("null", "null"),
                    ("{}", "an object"),
                    ("{\"v\":1}", "an object"),
                ]);
                self.fault(
                    ErrorCode::BadValue,
                    vec![format!(
                        "input '{name}' element {j} is {what}, expected a number"
                    )],
                    false,
                );
                t.into()
            }
            _ => {
                let t = *self.rng.pick(&[
                    "01", "+1", ".5", "1.", "1e", "-", "0x10", "1e+", "--1", "1.e3",
                ]);
                self.fault(ErrorCode::BadJson, vec![], true);
                t.into()
            }
        }
    }

    /// Writes `toks` as one nested array; returns the deepest level (the
    /// outermost array is level 1).
    fn nest(&mut self, toks: &[String], shape: &[usize], deep: bool) -> usize {
        let by_shape = shape.len() > 1 && toks.len() == shape.iter().product::<usize>();
        let (inner, depth) = match self.rng.below(10) {
            0..=3 => self.walk(toks, 1),
            4..=5 if by_shape => (shaped(toks, shape), shape.len()),
            6 => {
                let max = 2 + self.rng.below(15);
                self.walk(toks, max)
            }
            _ => {
                let max = 2 + self.rng.below(3);
                self.walk(toks, max)
            }
        };
        let wrappers = if deep {
            (MAX_DEPTH as usize + 1).saturating_sub(depth) + self.rng.below(8)
        } else if self.rng.one_in(5) {
            (1 + self.rng.below(3)).min(MAX_DEPTH as usize - depth)
        } else {
            0
        };
        self.out.push_str(&"[".repeat(wrappers));
        self.out.push_str(&inner);
        self.out.push_str(&"]".repeat(wrappers));
        depth + wrappers
    }

    /// The values in arrays opened and closed at random, at most
    /// `max_level` deep, with empty arrays here and there.
    fn walk(&mut self, toks: &[String], max_level: usize) -> (String, usize) {
        let mut s = String::with_capacity(toks.iter().map(|t| t.len() + 2).sum::<usize>() + 2);
        s.push('[');
        // Per open array: whether it has an element yet.
        let mut open = vec![false];
        let mut deepest = 1;
        for tok in toks {
            if open.len() > 1 && self.rng.one_in(3) {
                for _ in 0..1 + self.rng.below(open.len() - 1) {
                    s.push(']');
                    open.pop();
                }
            }
            if open.len() < max_level && self.rng.one_in(25) {
                if open[open.len() - 1] {
                    s.push(',');
                }
                s.push_str("[]");
                *open.last_mut().unwrap() = true;
                deepest = deepest.max(open.len() + 1);
            }
            if open.len() < max_level && self.rng.one_in(3) {
                for _ in 0..1 + self.rng.below(max_level - open.len()) {
                    if open[open.len() - 1] {
                        s.push(',');
                    }
                    *open.last_mut().unwrap() = true;
                    s.push('[');
                    open.push(false);
                }
                deepest = deepest.max(open.len());
            }
            if open[open.len() - 1] {
                s.push(',');
                if self.rng.one_in(8) {
                    s.push(' ');
                }
            }
            s.push_str(tok);
            if self.rng.one_in(20) {
                // Whitespace before the next `,` or `]`: the fast path
                // reads such a token the general way.
                s.push_str(self.rng.pick::<&str>(&[" ", "\n", " \t"]));
            }
            *open.last_mut().unwrap() = true;
        }
        if toks.is_empty() && max_level > 1 && self.rng.one_in(2) {
            s.push_str("[]");
            deepest = 2;
        }
        for _ in 0..open.len() {
            s.push(']');
        }
        (s, deepest)
    }
}

/// `toks` nested as `shape` says (its product is `toks.len()`).
fn shaped(toks: &[String], shape: &[usize]) -> String {
    if shape.len() <= 1 {
        return format!("[{}]", toks.join(","));
    }
    let per: usize = shape[1..].iter().product();
    let rows: Vec<String> = toks.chunks(per).map(|c| shaped(c, &shape[1..])).collect();
    format!("[{}]", rows.join(","))
}

/// A sensor reading as devices print them.
fn sensor(rng: &mut Rng) -> String {
    let x = rng.range(-40_000_000, 40_000_000) as f64 / 1e6;
    let k = rng.below(9);
    format!("{x:.k$}")
}

fn finite_f32(rng: &mut Rng) -> f32 {
    loop {
        let x = f32::from_bits(rng.next_u64() as u32);
        if x.is_finite() {
            return x;
        }
    }
}

/// A JSON number in one of many textual forms, finite in float32 unless
/// `wild` (random float64s, mostly beyond it).
fn number(rng: &mut Rng, wild: bool) -> String {
    match rng.below(if wild { 10 } else { 9 }) {
        0 | 1 => sensor(rng),
        2 => format!("{}", finite_f32(rng)),
        3 => {
            let x = finite_f32(rng);
            let mut s = if rng.one_in(2) {
                format!("{x:e}")
            } else {
                format!("{x:E}")
            };
            let e = s.find(['e', 'E']).unwrap() + 1;
            if s.as_bytes()[e] != b'-' && rng.one_in(2) {
                s.insert(e, '+');
            }
            if rng.one_in(3) {
                let digits = s[e..].find(|c: char| c.is_ascii_digit()).unwrap() + e;
                s.insert_str(digits, "00");
            }
            s
        }
        4 => match rng.below(3) {
            0 => rng.range(-1000, 1000).to_string(),
            1 => (rng.next_u64() as i64).to_string(),
            _ => rng.next_u64().to_string(),
        },
        5 => {
            // Long mantissas, scaled to stay within float32.
            let len = 18 + rng.below(50);
            let mut s: String = (0..len)
                .map(|i| {
                    let d = rng.below(10) as u8;
                    char::from(b'0' + if i == 0 { d.max(1) } else { d })
                })
                .collect();
            if rng.one_in(2) {
                // At most 30 integer digits, then a negative exponent.
                let dot = 1 + rng.below((len - 1).min(30));
                s.insert(dot, '.');
                s.push_str(&format!("e-{}", rng.below(20)));
            } else {
                s.push_str(&format!("e-{}", len - 1 + rng.below(30)));
            }
            if rng.one_in(2) {
                s.insert(0, '-');
            }
            s
        }
        6 => rng
            .pick(&[
                "0",
                "-0",
                "0.0",
                "-0.0",
                "0e0",
                "-0E-0",
                "0.000",
                "1.000000",
                "1e-400",
                "-1e-400",
                "4.9406564584124654e-324",
                "1.4e-45",
                "7e-46",
                "1.17549435e-38",
                "3.4028235e38",
                "-3.4028235e38",
                "3.40282356e38",
                "0.1",
                "1.00000000000000000001",
                "123456789012345678901234567890e-20",
                "9007199254740993",
                "0.30000000000000004",
                "1E+2",
                "2.5e-3",
                "1e0000000000000000000000001",
                "1e-0000000000000000000000000000009",
                "0.000000000000000000000000000000000000000000001",
                "255",
                "-128",
                "127.5",
                "-128.5",
                "2147483647",
                "-2147483648",
                "2147483648",
                "9223372036854775807",
                "18446744073709551615",
                "18446744073709551616",
            ])
            .to_string(),
        7 | 8 => {
            // Around the quantization steps and halves.
            let k = rng.range(-300, 300);
            let half = if rng.one_in(2) { 0.5 } else { 0.0 };
            format!("{}", (k as f64 + half) * 0.007_812_5)
        }
        _ => {
            let x = loop {
                let x = f64::from_bits(rng.next_u64());
                if x.is_finite() {
                    break x;
                }
            };
            if rng.one_in(2) {
                format!("{x}")
            } else {
                format!("{x:e}")
            }
        }
    }
}

/// A valid id: its JSON text and what the decoder must return.
fn valid_id(rng: &mut Rng) -> (String, MessageId) {
    match rng.below(8) {
        0..=2 => {
            let len = rng.below(40);
            let s: String = (0..len)
                .map(|_| char::from(b' ' + rng.below(95) as u8))
                .filter(|&c| c != '"' && c != '\\')
                .collect();
            (format!("\"{s}\""), MessageId::Text(s))
        }
        3 => {
            let pieces: &[(&str, &str)] = &[
                ("a", "a"),
                ("\\\"", "\""),
                ("\\\\", "\\"),
                ("\\/", "/"),
                ("\\b", "\u{8}"),
                ("\\f", "\u{c}"),
                ("\\n", "\n"),
                ("\\r", "\r"),
                ("\\t", "\t"),
                ("\\u00e9", "é"),
                ("\\u0000", "\0"),
                ("\\ud83d\\ude00", "😀"),
                ("\\u20AC", "€"),
                ("é", "é"),
                ("😀", "😀"),
            ];
            let (mut text, mut decoded) = (String::from("\""), String::new());
            for _ in 0..rng.below(20) {
                let (t, d) = rng.pick(pieces);
                if decoded.len() + d.len() > MAX_ID_LEN {
                    break;
                }
                text.push_str(t);
                decoded.push_str(d);
            }
            text.push('"');
            (text, MessageId::Text(decoded))
        }
        4 => {
            // At the limit: 256 bytes, one- or two-byte characters.
            let s = if rng.one_in(2) {
                "x".repeat(MAX_ID_LEN)
            } else {
                "é".repeat(MAX_ID_LEN / 2)
            };
            (format!("\"{s}\""), MessageId::Text(s))
        }
        _ => {
            let text = match rng.below(6) {
                0 => rng.range(-5, 100_000).to_string(),
                1 => rng.next_u64().to_string(),
                2 => number(rng, false),
                3 => "9".repeat(1 + rng.below(MAX_ID_LEN)),
                4 => rng
                    .pick(&[
                        "-0",
                        "1.50",
                        "1e309",
                        "-1E-999",
                        "1000000000000000000000000000000",
                    ])
                    .to_string(),
                _ => format!("{}e{}", rng.range(-99, 99), rng.range(-400, 400)),
            };
            let id = NumberId::parse(&text).expect("generated number ids are valid");
            (text, MessageId::Number(id))
        }
    }
}

/// A random valid JSON value (for ignored fields and extra entries).
fn json_value(rng: &mut Rng, depth: usize) -> String {
    let k = if depth >= 4 {
        rng.below(6)
    } else {
        rng.below(8)
    };
    match k {
        0 => number(rng, true),
        // Ignored numbers are never converted: beyond float64 is fine.
        1 => rng
            .pick(&["1e400", "-0", "123456789012345678901234567890", "0.5"])
            .to_string(),
        2 => rng
            .pick(&[
                "\"\"",
                "\"text\"",
                "\"q\\\"\\\\\"",
                "\"\\u00e9\\ud83d\\ude00\"",
                "\"]}\\\",:\"",
                "\"id\"",
                "\"data\"",
            ])
            .to_string(),
        3 => "true".into(),
        4 => "false".into(),
        5 => "null".into(),
        6 => {
            let items: Vec<String> = (0..rng.below(4))
                .map(|_| json_value(rng, depth + 1))
                .collect();
            format!("[{}]", items.join(","))
        }
        _ => {
            let items: Vec<String> = (0..rng.below(4))
                .map(|_| {
                    let key = rng
                        .pick(&["id", "data", "inputs", "x", "", "a b"])
                        .to_string();
                    format!("\"{key}\":{}", json_value(rng, depth + 1))
                })
                .collect();
            format!("{{{}}}", items.join(","))
        }
    }
}

// ---------------------------------------------------------------------
// The mutator.

/// Applies one to four byte-level mutations to `p`; `other` is a second
/// message to splice from.
fn mutate(rng: &mut Rng, p: &mut Vec<u8>, other: &[u8]) {
    for _ in 0..1 + rng.below(4) {
        if p.is_empty() {
            p.push(*rng.pick(ALPHABET));
            continue;
        }
        let at = rng.below(p.len());
        match rng.below(12) {
            0 => p[at] ^= 1 << rng.below(8),
            1 => p[at] = rng.byte(),
            2 => p[at] = *rng.pick(ALPHABET),
            3 => {
                let bytes: Vec<u8> = (0..1 + rng.below(8))
                    .map(|_| {
                        if rng.one_in(2) {
                            rng.byte()
                        } else {
                            *rng.pick(ALPHABET)
                        }
                    })
                    .collect();
                p.splice(at..at, bytes);
            }
            4 => {
                let end = (at + 1 + rng.below(16)).min(p.len());
                p.drain(at..end);
            }
            5 => {
                // A range duplicated, right after itself or elsewhere.
                let end = (at + 1 + rng.below(32)).min(p.len());
                let range = p[at..end].to_vec();
                let to = if rng.one_in(2) {
                    end
                } else {
                    rng.below(p.len() + 1)
                };
                p.splice(to..to, range);
            }
            6 => p.truncate(at),
            7 => {
                if !other.is_empty() {
                    let from = rng.below(other.len());
                    p.truncate(at);
                    p.extend_from_slice(&other[from..]);
                }
            }
            8 | 9 => replace_number(rng, p),
            10 => {
                let b = rng.below(p.len());
                p.swap(at, b);
            }
            // The earlier tests' single-byte edits.
            _ => {
                if rng.one_in(2) {
                    p.remove(at);
                } else {
                    p.insert(at, p[at]);
                }
            }
        }
    }
}

/// Replaces one number of `p` with an extreme one.
fn replace_number(rng: &mut Rng, p: &mut Vec<u8>) {
    let in_number = |b: u8| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E');
    let starts: Vec<usize> = (0..p.len())
        .filter(|&i| (p[i].is_ascii_digit() || p[i] == b'-') && (i == 0 || !in_number(p[i - 1])))
        .collect();
    if starts.is_empty() {
        return;
    }
    let start = *rng.pick(&starts);
    let end = start + p[start..].iter().take_while(|&&b| in_number(b)).count();
    let with = rng.pick(EXTREMES).as_bytes().to_vec();
    p.splice(start..end, with);
}

// ---------------------------------------------------------------------
// The checks.

fn buffers(specs: &[TensorSpec], fill: u8) -> Vec<Vec<u8>> {
    specs.iter().map(|s| vec![fill; s.byte_len()]).collect()
}

/// Every element a valid value of its type: float32 finite, bool 0 or 1
/// (every bit pattern of the integer types is one).
fn check_values(specs: &[TensorSpec], bufs: &[Vec<u8>]) -> Result<(), String> {
    for (s, b) in specs.iter().zip(bufs) {
        if b.len() != s.byte_len() {
            return Err(format!("input '{}' buffer has {} bytes", s.name, b.len()));
        }
        for i in 0..s.element_count() {
            let bad = match s.dtype {
                DType::F32 => !quant::load(DType::F32, None, b, i).is_finite(),
                DType::Bool => b[i] > 1,
                _ => false,
            };
            if bad {
                return Err(format!(
                    "input '{}' element {i} is not a valid {}: bytes {:02x?}",
                    s.name,
                    s.dtype,
                    &b[i * s.dtype.size().unwrap_or(1)..][..s.dtype.size().unwrap_or(1)]
                ));
            }
        }
    }
    Ok(())
}

/// A message error: a documented code, and a message that is a sentence
/// about the input (not empty, no panic or internal text, bounded).
fn check_failure(specs: &[TensorSpec], f: &Failure) -> Result<(), String> {
    if !matches!(
        f.code,
        ErrorCode::BadJson | ErrorCode::BadShape | ErrorCode::BadValue
    ) {
        return Err(format!("code {} is not a decoding error", f.code.as_str()));
    }
    if f.message.trim().is_empty() {
        return Err("empty error message".into());
    }
    // "aborted" is the visitors' internal serde error: it must never be
    // what the sender reads.
    for internal in ["panicked", "aborted"] {
        if f.message.contains(internal) {
            return Err(format!("message leaks {internal:?}: {}", f.message));
        }
    }
    let list: usize = specs
        .iter()
        .map(|s| s.name.len() + s.shape_string().len() + 24)
        .sum();
    let bound = MESSAGE_BASE + 2 * list;
    if f.message.len() > bound {
        let shown: String = f.message.chars().take(200).collect();
        return Err(format!(
            "message of {} bytes (bound {bound}): {shown}...",
            f.message.len()
        ));
    }
    Ok(())
}

type JsonOutcome = Result<Decoded, (Option<MessageId>, Failure)>;

fn outcome_label(r: &JsonOutcome) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err((_, f)) => f.code.as_str(),
    }
}

/// Decodes `payload` with the fast path, the full decoder and
/// `decode_json`, each on its own buffers, and checks every answer and
/// their agreement; with `gen`, also that the answer is the one the
/// generator planted.
fn check_json(run: &mut Run, case: u64, set: &SpecSet, payload: &[u8], gen: Option<&Message>) {
    let specs = &set.specs;
    let fail = |run: &Run, why: String| -> ! {
        run.fail(case, payload, &format!("model {}: {why}", set.name))
    };
    // Different fills: a byte no path writes shows up as a difference
    // (0xff is also a NaN float32, caught by check_values).
    let mut fast_bufs = buffers(specs, 0x5a);
    let mut full_bufs = buffers(specs, 0xff);
    let mut pub_bufs = buffers(specs, 0x00);
    let t = Instant::now();
    let fast = run.guarded(case, "fast::decode", payload, || {
        fast::decode(payload, specs, &mut fast_bufs, MAX_DEPTH)
    });
    let t_fast = t.elapsed();
    let t = Instant::now();
    let full = run.guarded(case, "decode_json_full", payload, || {
        decode_json_full(payload, specs, &mut full_bufs)
    });
    let t_full = t.elapsed();
    let public = run.guarded(case, "decode_json", payload, || {
        decode_json(payload, specs, &mut pub_bufs)
    });
    run.add_time("fast path", t_fast);
    run.add_time("full decoder", t_full);

    match &full {
        Ok(d) => {
            if let Err(why) = check_values(specs, &full_bufs) {
                fail(run, format!("full decoder accepted with {why}"));
            }
            if serde_json::from_slice::<serde::de::IgnoredAny>(payload).is_err() {
                fail(run, "full decoder accepted invalid JSON".into());
            }
            if find_id(payload) != d.id {
                fail(
                    run,
                    format!(
                        "full decoder's id {:?}, the id walk finds {:?}",
                        d.id,
                        find_id(payload)
                    ),
                );
            }
        }
        Err((_, f)) => {
            if let Err(why) = check_failure(specs, f) {
                fail(run, format!("full decoder: {why}"));
            }
        }
    }
    // The fast path only ever accepts what the full decoder accepts, with
    // the same id and the same bytes (which, from different fills, are
    // then every byte).
    if let Some(id) = &fast {
        match &full {
            Ok(d) if d.id == *id && fast_bufs == full_bufs => {}
            Ok(d) => fail(
                run,
                format!(
                    "fast path and full decoder differ: ids {id:?} / {:?}, buffers equal: {}",
                    d.id,
                    fast_bufs == full_bufs
                ),
            ),
            Err((_, f)) => fail(
                run,
                format!("fast path accepted (id {id:?}), full decoder refused: {f:?}"),
            ),
        }
    }
    // decode_json is the fast path, else the full decoder.
    let same = match (&fast, &public, &full) {
        (Some(id), Ok(p), _) => p.id == *id && pub_bufs == fast_bufs,
        (None, Ok(p), Ok(f)) => p.id == f.id && pub_bufs == full_bufs,
        (None, Err(p), Err(f)) => p == f,
        _ => false,
    };
    if !same {
        fail(run, format!(
            "decode_json {public:?} is neither the fast path's {fast:?} nor the full decoder's {full:?}"
        ));
    }

    run.count(format!("full:{}", outcome_label(&full)));
    run.count(if fast.is_some() {
        "fast:accepted"
    } else {
        "fast:declined"
    });

    let Some(gen) = gen else { return };
    match (gen.faults.as_slice(), &full) {
        ([], Ok(d)) => {
            if d.id != gen.id {
                fail(run, format!("id {:?}, the message's is {:?}", d.id, gen.id));
            }
            let mut want = buffers(specs, 0);
            for (i, s) in specs.iter().enumerate() {
                for (j, &x) in gen.values[i].iter().enumerate() {
                    quant::store(s.dtype, s.quantization, &mut want[i], j, x);
                }
            }
            if full_bufs != want {
                let i = (0..specs.len()).find(|&i| full_bufs[i] != want[i]).unwrap();
                let j = (0..full_bufs[i].len())
                    .find(|&j| full_bufs[i][j] != want[i][j])
                    .unwrap();
                fail(
                    run,
                    format!(
                        "input '{}' byte {j} is {:#04x}, the message's value gives {:#04x}",
                        specs[i].name, full_bufs[i][j], want[i][j]
                    ),
                );
            }
            run.count("generated:ok as planted");
        }
        ([], Err(e)) => fail(run, format!("a valid message was refused: {e:?}")),
        ([fault], Err((id, f))) => {
            if f.code != fault.code || !fault.says.iter().all(|s| f.message.contains(s)) {
                fail(
                    run,
                    format!(
                        "planted {fault:?}, got {} \"{}\"",
                        f.code.as_str(),
                        f.message
                    ),
                );
            }
            if *id != gen.error_id() {
                fail(run, format!(
                    "the error came with id {id:?}, the message's is {:?} (syntax error before it: {})",
                    gen.error_id(),
                    gen.syntax_before_id
                ));
            }
            run.count("generated:refused as planted");
        }
        (_, Err((id, _))) => {
            if id.is_some() && *id != gen.id {
                fail(
                    run,
                    format!(
                        "the error came with id {id:?}, the message's is {:?}",
                        gen.id
                    ),
                );
            }
            run.count("generated:refused (several faults)");
        }
        (faults, Ok(_)) => fail(run, format!("accepted a message with faults {faults:?}")),
    }
}

/// One case's model and, half the time, a generated message (else a
/// mutated one).
fn json_case(rng: &mut Rng, sets: &[SpecSet]) -> (usize, Vec<u8>, Option<Message>) {
    let s = rng.below(sets.len());
    let specs = &sets[s].specs;
    if rng.one_in(2) {
        let m = message(rng, specs);
        return (s, m.payload.clone(), Some(m));
    }
    let mut p = if sets[s].name == "x4_int8" && rng.one_in(2) {
        rng.pick(&LEGACY_SEEDS).as_bytes().to_vec()
    } else {
        message(rng, specs).payload
    };
    let other = message(rng, specs).payload;
    mutate(rng, &mut p, &other);
    (s, p, None)
}

#[test]
fn robustness_json_fast_path_and_full_decoder() {
    let sets = spec_sets();
    let mut run = Run::new("json", JSON_CASES);
    for case in run.cases() {
        let mut rng = run.rng(case);
        let (s, payload, gen) =
            run.guarded(case, "the generator", &[], || json_case(&mut rng, &sets));
        run.count(if gen.is_some() {
            "generated"
        } else {
            "mutated"
        });
        check_json(&mut run, case, &sets[s], &payload, gen.as_ref());
    }
    let n = run.len();
    let counts = run.finish();
    let got = |k: &str| counts.get(k).copied().unwrap_or(0);
    // Not vacuous: every kind of answer came up, and the fast path took a
    // share (the earlier test required 1 in 30 of its mutants; generated
    // messages often have escaped keys or ids, which it leaves to the full
    // decoder).
    if n >= 2_000 {
        for k in [
            "full:ok",
            "full:bad_json",
            "full:bad_shape",
            "full:bad_value",
            "generated:ok as planted",
            "generated:refused as planted",
        ] {
            assert!(got(k) * 100 >= n, "only {} of {n} {k}: {counts:?}", got(k));
        }
        assert!(got("fast:accepted") * 20 >= n, "{counts:?}");
    }
}

/// Number arrays alone, as `fast::fill` reads them (the data arrays of
/// the JSON fast path): valid and invalid tokens of every form (the short
/// ones it reads without a loop, exponents, long mantissas, leading zeros,
/// lone signs and dots, junk), whitespace around separators, `[` `]` and
/// `,` nested, doubled or missing. Whatever it accepts must be exactly
/// what serde_json reads from the same text (each number as an f64, then
/// `as f32`, as the full decoder converts it), and it must accept all of
/// that.
#[test]
fn robustness_number_arrays() {
    let mut run = Run::new("number arrays", ARRAY_CASES);
    for case in run.cases() {
        let mut rng = run.rng(case);
        let text = run.guarded(case, "the generator", &[], || number_array(&mut rng));
        let got = run.guarded(case, "fast::fill", &text, || {
            let start = fast::skip_ws(&text, 0);
            let mut values = Vec::new();
            let (n, end) = fast::fill(&text, start, MAX_DEPTH, |i, x| {
                assert_eq!(i, values.len());
                values.push(x.to_bits());
            })?;
            assert_eq!(n, values.len());
            (fast::skip_ws(&text, end) == text.len()).then_some(values)
        });
        let want = reference_array(&text);
        if got != want {
            run.fail(
                case,
                &text,
                &format!("fast::fill read {got:?}, serde_json {want:?}"),
            );
        }
        run.count(if got.is_some() {
            "accepted"
        } else {
            "declined"
        });
    }
    let n = run.len();
    let counts = run.finish();
    if n >= 2_000 {
        for k in ["accepted", "declined"] {
            let got = counts.get(k).copied().unwrap_or(0);
            assert!(got * 5 >= n, "only {got} of {n} {k}: {counts:?}");
        }
    }
}

/// The float32 bits of every number in `text` if it is one JSON array of
/// numbers (arrays nested at most [`MAX_DEPTH`] deep, the outermost
/// included), all finite in float32, as serde_json reads them.
fn reference_array(text: &[u8]) -> Option<Vec<u32>> {
    fn walk(v: &serde_json::Value, level: u32, out: &mut Vec<u32>) -> Option<()> {
        match v {
            serde_json::Value::Array(items) if level <= MAX_DEPTH => {
                for item in items {
                    walk(item, level + 1, out)?;
                }
                Some(())
            }
            serde_json::Value::Number(n) if level > 1 => {
                let x = n.as_f64()? as f32;
                x.is_finite().then(|| out.push(x.to_bits()))
            }
            _ => None,
        }
    }
    let v: serde_json::Value = serde_json::from_slice(text).ok()?;
    let mut out = Vec::new();
    walk(&v, 1, &mut out)?;
    Some(out)
}

/// A generated array text: mostly valid, often not.
fn number_array(rng: &mut Rng) -> Vec<u8> {
    let ws = |rng: &mut Rng| -> &'static str {
        if rng.below(10) < 8 {
            ""
        } else {
            const WS: [&str; 6] = [" ", "  ", "\n", "\t", "\r\n", " \n "];
            WS[rng.below(WS.len())]
        }
    };
    let mut s = String::from(ws(rng));
    s.push('[');
    // Per open array: whether it has an element yet.
    let mut open = vec![false];
    let deep = rng.one_in(20);
    for _ in 0..rng.below(12) {
        if open.len() > 1 && rng.one_in(4) {
            s.push_str(ws(rng));
            s.push(']');
            open.pop();
            continue;
        }
        if open[open.len() - 1] {
            s.push_str(ws(rng));
            s.push_str(if rng.one_in(60) { ",," } else { "," });
            if rng.one_in(4) {
                s.push(' ');
            }
        }
        *open.last_mut().unwrap() = true;
        if rng.one_in(if deep { 2 } else { 8 }) {
            s.push_str(ws(rng));
            s.push('[');
            open.push(false);
            continue;
        }
        s.push_str(ws(rng));
        s.push_str(&array_token(rng));
    }
    for _ in 0..open.len() {
        if !rng.one_in(80) {
            s.push_str(ws(rng));
            s.push(']');
        }
    }
    if rng.one_in(40) {
        s.push_str(rng.pick::<&str>(&[",", "]", "x", "[1]", "}"]));
    }
    s.push_str(ws(rng));
    s.into_bytes()
}

/// One element of [`number_array`]: a number in any form or something
/// that is almost one.
fn array_token(rng: &mut Rng) -> String {
    match rng.below(10) {
        // The short forms: `-?digits(.digits)?`, up to 10 bytes.
        0..=4 => {
            let mut t = String::new();
            if rng.one_in(2) {
                t.push('-');
            }
            let int = 1 + rng.below(4);
            for i in 0..int {
                let d = rng.below(10) as u8;
                t.push(char::from(
                    b'0' + if i == 0 && int > 1 { d.max(1) } else { d },
                ));
            }
            if rng.below(4) > 0 {
                t.push('.');
                for _ in 0..1 + rng.below(6) {
                    t.push(char::from(b'0' + rng.below(10) as u8));
                }
            }
            t
        }
        5 | 6 => {
            let wild = rng.one_in(4);
            number(rng, wild)
        }
        7 => (*rng.pick(&[
            "01",
            "-01",
            "00.5",
            "-",
            ".5",
            "-.5",
            "5.",
            "-5.",
            "1.2.3",
            "--1",
            "+1",
            "1-2",
            "0x10",
            "1e",
            "1e+",
            "1E-",
            "1.e5",
            "1e5.5",
            "Infinity",
            "NaN",
            "-Infinity",
            "\"1\"",
            "null",
            "true",
            "{}",
            "1 2",
            "12a",
            "0.5x",
            "-0",
            "-0.0",
            "0.000000",
            "99999999",
            "-9999999",
            "1234567.8",
            "1e39",
            "-1e39",
            "3.4028236e38",
            "1e-46",
            "",
            "Y",
            "_",
            "-_",
            "1_0",
        ]))
        .to_string(),
        // Random bytes over the alphabet of numbers.
        _ => (0..1 + rng.below(11))
            .map(|_| {
                if rng.one_in(5) {
                    char::from(*rng.pick(b"-+.eE x"))
                } else {
                    char::from(b'0' + rng.below(10) as u8)
                }
            })
            .collect(),
    }
}

#[test]
fn robustness_raw() {
    let sets = spec_sets();
    let mut run = Run::new("raw", RAW_CASES);
    for case in run.cases() {
        let mut rng = run.rng(case);
        let set = &sets[rng.below(sets.len())];
        let want: usize = set.specs.iter().map(TensorSpec::byte_len).sum();
        let len = match rng.below(6) {
            0 | 1 => want,
            2 => want + 1 + rng.below(8),
            3 => want.saturating_sub(1 + rng.below(8)),
            4 => 0,
            _ => rng.below(2 * want + 17),
        };
        let payload: Vec<u8> = (0..len).map(|_| rng.byte()).collect();
        let mut bufs = buffers(&set.specs, 0x5a);
        let t = Instant::now();
        let r = run.guarded(case, "decode_raw", &payload, || {
            decode_raw(&payload, &set.specs, &mut bufs)
        });
        run.add_time("raw decoder", t.elapsed());
        let fail = |run: &Run, why: String| -> ! {
            run.fail(case, &payload, &format!("model {}: {why}", set.name))
        };
        match r {
            Ok(()) if len == want => {
                if bufs.concat() != payload {
                    fail(&run, "the buffers are not the payload's bytes".into());
                }
                run.count("ok");
            }
            Ok(()) => fail(
                &run,
                format!("accepted {len} bytes, the model takes {want}"),
            ),
            Err(f) if len == want => fail(&run, format!("refused the right size: {f:?}")),
            Err(f) => {
                if f.code != ErrorCode::BadShape
                    || !f.message.contains(&format!("exactly {want} bytes"))
                    || !f.message.ends_with(&format!("got {len}"))
                {
                    fail(&run, format!("wrong refusal: {f:?}"));
                }
                if let Err(why) = check_failure(&set.specs, &f) {
                    fail(&run, why);
                }
                run.count("bad_shape");
            }
        }
    }
    run.finish();
}

/// A message whose id ends within 3 bytes of the window's edge, and what
/// peek_id must find: the id if it ends inside the window (a number with
/// the delimiter that proves it complete), else nothing.
fn at_the_window_edge(rng: &mut Rng) -> (Vec<u8>, Option<MessageId>) {
    let (text, id) = valid_id(rng);
    let head = r#"{"pad":""#;
    let mid = r#"","id":"#;
    // Where the id's text ends.
    let end = (PEEK_WINDOW as i64 + rng.range(-3, 3)) as usize;
    let pad = end - head.len() - mid.len() - text.len();
    let payload = format!(r#"{head}{}{mid}{text},"data":[1]}}"#, "p".repeat(pad));
    let inside = match id {
        MessageId::Text(_) => end <= PEEK_WINDOW,
        MessageId::Number(_) => end < PEEK_WINDOW,
    };
    (payload.into_bytes(), inside.then_some(id))
}

/// `peek_id`: never a panic, never a byte read past the window, and the
/// decoder's id for every valid message (the invariant of the earlier
/// peek test, whose seeds are among the inputs).
#[test]
fn robustness_peek_id() {
    let sets = spec_sets();
    let mut run = Run::new("peek_id", PEEK_CASES);
    for case in run.cases() {
        let mut rng = run.rng(case);
        let s = rng.below(sets.len());
        let specs = &sets[s].specs;
        // (payload, the generated message, the answer at the window's edge)
        let (payload, gen, edge) = run.guarded(case, "the generator", &[], || match rng.below(9) {
            8 => {
                let (p, id) = at_the_window_edge(&mut rng);
                (p, None, Some(id))
            }
            0..=3 => {
                let m = message(&mut rng, specs);
                (m.payload.clone(), Some(m), None)
            }
            4..=6 => {
                let mut p = if rng.one_in(3) {
                    rng.pick(&LEGACY_SEEDS).as_bytes().to_vec()
                } else {
                    message(&mut rng, specs).payload
                };
                let other = message(&mut rng, specs).payload;
                mutate(&mut rng, &mut p, &other);
                (p, None, None)
            }
            _ => {
                let len = rng.below(64);
                ((0..len).map(|_| *rng.pick(ALPHABET)).collect(), None, None)
            }
        });
        let fail = |run: &Run, why: String| -> ! {
            run.fail(case, &payload, &format!("model {}: {why}", sets[s].name))
        };
        let t = Instant::now();
        let peeked = run.guarded(case, "peek_id", &payload, || peek_id(&payload));
        run.add_time("peek_id", t.elapsed());
        run.count(if peeked.is_some() { "found" } else { "none" });

        // Nothing past the window matters: change it (bytes flipped, cut,
        // more appended) and the answer is the same.
        if payload.len() > PEEK_WINDOW {
            let mut tail_changed = payload.clone();
            match rng.below(4) {
                // The first byte past the window.
                3 => tail_changed[PEEK_WINDOW] = rng.byte(),
                0 => {
                    for _ in 0..1 + rng.below(8) {
                        let at = PEEK_WINDOW + rng.below(payload.len() - PEEK_WINDOW);
                        tail_changed[at] = rng.byte();
                    }
                }
                1 => tail_changed.truncate(PEEK_WINDOW + rng.below(payload.len() - PEEK_WINDOW)),
                _ => tail_changed.extend((0..1 + rng.below(64)).map(|_| rng.byte())),
            }
            let again = run.guarded(case, "peek_id", &tail_changed, || peek_id(&tail_changed));
            if again != peeked {
                fail(
                    &run,
                    format!(
                        "bytes past {PEEK_WINDOW} changed the answer: {peeked:?}, then {again:?}"
                    ),
                );
            }
            run.count("window checked");
        }

        if let Some(want) = &edge {
            if peeked != *want {
                fail(
                    &run,
                    format!("at the window's edge: found {peeked:?}, want {want:?}"),
                );
            }
            run.count("at the window's edge");
        }
        if let Some(m) = &gen {
            if peeked.is_some() && peeked != m.id {
                fail(
                    &run,
                    format!("found {peeked:?}, the message's id is {:?}", m.id),
                );
            }
            if m.peekable() && peeked != m.id {
                fail(
                    &run,
                    format!("missed the id {:?} at the top of the message", m.id),
                );
            }
        }
        if serde_json::from_slice::<serde::de::IgnoredAny>(&payload).is_ok() {
            let mut bufs = buffers(specs, 0);
            let decoded = run.guarded(case, "decode_json", &payload, || {
                match decode_json(&payload, specs, &mut bufs) {
                    Ok(d) => d.id,
                    Err((id, _)) => id,
                }
            });
            if payload.len() <= PEEK_WINDOW || peeked.is_some() {
                if peeked != decoded {
                    fail(
                        &run,
                        format!("peek_id found {peeked:?}, the decoder reports {decoded:?}"),
                    );
                }
                run.count("valid JSON, agrees with the decoder");
            }
        }
    }
    let n = run.len();
    let counts = run.finish();
    if n >= 2_000 {
        let got = |k: &str| counts.get(k).copied().unwrap_or(0);
        assert!(got("found") * 4 >= n, "{counts:?}");
        assert!(got("window checked") * 50 >= n, "{counts:?}");
        assert!(
            got("valid JSON, agrees with the decoder") * 4 >= n,
            "{counts:?}"
        );
    }
}

/// Readings as devices publish them (one, an array, `{"readings": [..]}`,
/// nested fields, ids, timestamps), mutated or not, through
/// `parse_readings`, and tabular objects through `decode_fields`: never a
/// panic; an accepted message has every field of every reading as a finite
/// float32; a refusal is one of the documented codes with a message.
#[test]
fn robustness_readings_and_fields() {
    use super::readings::{decode_fields, parse_readings};
    use crate::config::FieldPath;

    let fields: Vec<FieldPath> = ["ax", "/g/y", "/arr/1"]
        .iter()
        .map(|f| FieldPath::parse(f).unwrap())
        .collect();
    let ts = FieldPath::parse("ts").unwrap();
    let mut run = Run::new("readings", READINGS_CASES);
    let mut previous = Vec::new();
    for case in run.cases() {
        let mut rng = run.rng(case);
        let reading = |rng: &mut Rng| {
            let value = |rng: &mut Rng| {
                let wild = rng.one_in(8);
                number(rng, wild)
            };
            let mut parts = vec![
                format!("\"ax\": {}", value(rng)),
                format!("\"g\": {{\"y\": {}}}", value(rng)),
                format!("\"arr\": [0, {}]", value(rng)),
                format!("\"ts\": {}", 1_764_620_000 + rng.below(1000)),
            ];
            if rng.one_in(4) {
                parts.swap(0, 3);
            }
            if rng.one_in(10) {
                parts.remove(rng.below(4));
            }
            format!("{{{}}}", parts.join(", "))
        };
        let n = 1 + rng.below(12);
        let items: Vec<String> = (0..n).map(|_| reading(&mut rng)).collect();
        let text = match rng.below(3) {
            0 => items[0].clone(),
            1 => format!("[{}]", items.join(",")),
            _ => format!(
                "{{\"id\": {}, \"readings\": [{}]}}",
                valid_id(&mut rng).0,
                items.join(",")
            ),
        };
        let mut payload = text.into_bytes();
        if rng.one_in(2) {
            mutate(&mut rng, &mut payload, &previous);
        }
        let timestamp = rng.one_in(2).then_some(&ts);
        let t = Instant::now();
        let r = run.guarded(case, "parse_readings", &payload, || {
            parse_readings(&payload, &fields, timestamp)
        });
        run.add_time("readings", t.elapsed());
        match r {
            Ok(r) => {
                if r.values.len() != r.timestamps.len() * fields.len() || r.timestamps.is_empty() {
                    run.fail(
                        case,
                        &payload,
                        &format!(
                            "{} values for {} readings",
                            r.values.len(),
                            r.timestamps.len()
                        ),
                    );
                }
                if r.values.iter().any(|v| !v.is_finite()) {
                    run.fail(
                        case,
                        &payload,
                        "accepted a value that is not a finite float32",
                    );
                }
                if timestamp.is_some()
                    && r.timestamps.iter().any(|t| !t.is_some_and(f64::is_finite))
                {
                    run.fail(
                        case,
                        &payload,
                        "accepted a reading without a finite timestamp",
                    );
                }
                run.count("readings ok");
            }
            Err((_, f)) => {
                if !matches!(f.code, ErrorCode::BadJson | ErrorCode::BadReading)
                    || f.message.is_empty()
                {
                    run.fail(case, &payload, &format!("wrong refusal: {f:?}"));
                }
                run.count(format!("readings {}", f.code.as_str()));
            }
        }
        let mut out = [0f32; 3];
        let r = run.guarded(case, "decode_fields", &payload, || {
            decode_fields(&payload, &fields, &mut out)
        });
        match r {
            Ok(_) if out.iter().any(|v| !v.is_finite()) => {
                run.fail(case, &payload, "fields accepted a value that is not finite")
            }
            Ok(_) => run.count("fields ok"),
            Err((_, f)) => {
                if !matches!(
                    f.code,
                    ErrorCode::BadJson | ErrorCode::BadValue | ErrorCode::BadShape
                ) {
                    run.fail(case, &payload, &format!("wrong fields refusal: {f:?}"));
                }
                run.count(format!("fields {}", f.code.as_str()));
            }
        }
        previous = payload;
    }
    run.finish();
}
