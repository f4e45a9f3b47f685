//! Payload -> input tensor bytes.
//!
//! Well-formed messages take the one-pass fast path (`fast`). Everything
//! else is walked with serde's visitor API, which words the precise error:
//! numbers go straight into the model's input buffers (quantized on the
//! way), nothing else is built.
//! Accepted shapes (see README "Message formats"):
//!
//! - `{"id": .., "data": [..]}` for a single-input model,
//! - `{"id": .., "inputs": [[..], [..]]}` in model input order, or
//! - `{"id": .., "inputs": {"<input name>": [..], ..}}`.
//!
//! Arrays may be nested any way; only the element count must match. Other
//! top-level fields are ignored so devices can add timestamps or metadata.

use std::fmt;

use model_runtime::TensorSpec;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use super::{clip, fast, number_end, peek, quant};
use super::{ErrorCode, Failure, MessageId, NumberId, MAX_ID_LEN};

/// What a successful decode leaves besides the filled buffers.
#[derive(Debug, Default)]
pub struct Decoded {
    pub id: Option<MessageId>,
}

/// Decodes a JSON payload into `buffers` (one per input of `specs`).
/// On failure the id is still returned when it could be read, so the error
/// can be correlated.
pub fn decode_json(
    payload: &[u8],
    specs: &[TensorSpec],
    buffers: &mut [Vec<u8>],
) -> Result<Decoded, (Option<MessageId>, Failure)> {
    match fast::decode(payload, specs, buffers, MAX_DEPTH) {
        Some(id) => Ok(Decoded { id }),
        None => decode_json_full(payload, specs, buffers),
    }
}

/// The visitor walk: every shape, every error worded. (`pub(super)`: the
/// robustness tests compare it with the fast path on its own.)
pub(super) fn decode_json_full(
    payload: &[u8],
    specs: &[TensorSpec],
    buffers: &mut [Vec<u8>],
) -> Result<Decoded, (Option<MessageId>, Failure)> {
    let mut state = State {
        specs,
        buffers,
        counts: vec![None; specs.len()],
        id: None,
        failure: None,
        saw_data: false,
        element: None,
    };
    let mut de = serde_json::Deserializer::from_slice(payload);
    let parsed = TopLevel(&mut state)
        .deserialize(&mut de)
        .and_then(|()| de.end());
    if let Some(f) = state.failure.take() {
        return Err((state.id.or_else(|| recover_id(payload)), f));
    }
    if let Err(e) = parsed {
        let element = state.element.map(|(input, index)| (&specs[input], index));
        return Err((
            state.id.or_else(|| recover_id(payload)),
            json_failure(payload, &e, element),
        ));
    }
    if !state.saw_data {
        return Err((
            state.id,
            Failure::new(
                ErrorCode::BadJson,
                format!(
                    "expected a JSON object with \"data\" (one input) or \"inputs\" (model inputs: {}); got neither",
                    input_list(specs)
                ),
            ),
        ));
    }
    for (i, spec) in specs.iter().enumerate() {
        match state.counts[i] {
            None => {
                return Err((
                    state.id,
                    Failure::new(
                        ErrorCode::BadShape,
                        format!(
                            "input '{}' ({} {}) is missing; the model takes {} input(s): {}",
                            spec.name,
                            spec.shape_string(),
                            spec.dtype,
                            specs.len(),
                            input_list(specs)
                        ),
                    ),
                ))
            }
            Some(n) if n != spec.element_count() => {
                return Err((state.id, count_failure(spec, n)));
            }
            Some(_) => {}
        }
    }
    Ok(Decoded { id: state.id })
}

/// Copies a raw payload (the input tensors' bytes, concatenated in input
/// order) into `buffers`.
pub fn decode_raw(
    payload: &[u8],
    specs: &[TensorSpec],
    buffers: &mut [Vec<u8>],
) -> Result<(), Failure> {
    let want: usize = specs.iter().map(TensorSpec::byte_len).sum();
    if payload.len() != want {
        let parts: Vec<String> = specs
            .iter()
            .map(|s| {
                format!(
                    "'{}' {} {} = {} bytes",
                    s.name,
                    s.shape_string(),
                    s.dtype,
                    s.byte_len()
                )
            })
            .collect();
        return Err(Failure::new(
            ErrorCode::BadShape,
            format!(
                "raw payload must be exactly {want} bytes ({}), got {}",
                parts.join(" + "),
                payload.len()
            ),
        ));
    }
    let mut at = 0;
    for (spec, buf) in specs.iter().zip(buffers.iter_mut()) {
        let n = spec.byte_len();
        buf[..n].copy_from_slice(&payload[at..at + n]);
        at += n;
    }
    Ok(())
}

/// On the error path only: the id of a message whose parse stopped before
/// reaching `"id"` (keys come in any order), so the error can still be
/// correlated. The same walk as [`peek::peek_id`], over the whole payload.
fn recover_id(payload: &[u8]) -> Option<MessageId> {
    peek::find_id(payload)
}

/// An `"id"` value as written (serde_json's raw text): a string, decoded,
/// or a number, kept verbatim; either at most [`MAX_ID_LEN`] bytes.
fn message_id(raw: &RawValue) -> Result<MessageId, Failure> {
    let text = raw.get();
    let too_long = |len: usize| {
        Failure::new(
            ErrorCode::BadJson,
            format!("\"id\" may be at most {MAX_ID_LEN} bytes, got {len}"),
        )
    };
    let got = match text.as_bytes().first() {
        Some(b'"') => {
            // serde_json checked the string's syntax while capturing it;
            // decoding still refuses what it cannot decode (a lone
            // surrogate escape).
            let s: String = serde_json::from_str(text)
                .map_err(|e| Failure::new(ErrorCode::BadJson, format!("\"id\": {e}")))?;
            if s.len() > MAX_ID_LEN {
                return Err(too_long(s.len()));
            }
            return Ok(MessageId::Text(s));
        }
        Some(b'-' | b'0'..=b'9') => {
            if text.len() > MAX_ID_LEN {
                return Err(too_long(text.len()));
            }
            match NumberId::parse(text) {
                Some(n) => return Ok(MessageId::Number(n)),
                None => "an invalid number",
            }
        }
        Some(b'n') => "null",
        Some(b't' | b'f') => "a boolean",
        Some(b'[') => "an array",
        Some(b'{') => "an object",
        _ => "an invalid value",
    };
    Err(Failure::new(
        ErrorCode::BadJson,
        format!("\"id\" must be a string or a number, got {got}"),
    ))
}

fn input_list(specs: &[TensorSpec]) -> String {
    specs
        .iter()
        .map(|s| format!("'{}' {} {}", s.name, s.shape_string(), s.dtype))
        .collect::<Vec<_>>()
        .join(", ")
}

fn count_failure(spec: &TensorSpec, got: usize) -> Failure {
    Failure::new(
        ErrorCode::BadShape,
        format!(
            "input '{}' needs {} values ({}), got {got}",
            spec.name,
            spec.element_count(),
            spec.shape_string()
        ),
    )
}

/// Classifies a serde_json error, recognising the non-JSON NaN/Infinity
/// literals some encoders (Python's json module) emit and numbers beyond
/// float64. `element` is the input element being read when the parse
/// stopped, if it stopped inside an input's values.
fn json_failure(
    payload: &[u8],
    e: &serde_json::Error,
    element: Option<(&TensorSpec, usize)>,
) -> Failure {
    if e.is_syntax() || e.is_eof() {
        let (line, col) = (e.line(), e.column());
        if let Some(offset) = byte_offset(payload, line, col) {
            if let Some(token) = overflowing_number(payload, offset) {
                return Failure::new(
                    ErrorCode::BadValue,
                    match element {
                        Some((spec, index)) => format!(
                            "input '{}' element {index} is {}, outside the float32 range",
                            spec.name,
                            clip(token)
                        ),
                        // serde_json points at the last digit; say where
                        // the number starts.
                        None => format!(
                            "{} at line {line} column {} is outside the float64 range",
                            clip(token),
                            (col + 1).saturating_sub(token.len())
                        ),
                    },
                );
            }
            // The column points at the offending character or just past it.
            let at = |o: usize| payload.get(o.min(payload.len())..).unwrap_or_default();
            for lit in ["NaN", "Infinity", "-Infinity", "inf", "nan"] {
                if at(offset).starts_with(lit.as_bytes())
                    || at(offset.saturating_sub(1)).starts_with(lit.as_bytes())
                {
                    return Failure::new(
                        ErrorCode::BadValue,
                        format!(
                            "{lit} at line {line} column {col}: inputs must be finite numbers (JSON has no NaN or Infinity)"
                        ),
                    );
                }
            }
        }
    }
    let what = if e.is_eof() {
        "payload ends early"
    } else if e.is_data() {
        "unexpected JSON structure"
    } else {
        "invalid JSON"
    };
    Failure::new(ErrorCode::BadJson, format!("{what}: {e}"))
}

/// The number whose last byte is `payload[offset]`, if it is a well-formed
/// JSON number too large for a float64: serde_json refuses those ("number
/// out of range", reported at the number's last digit) where it would
/// refuse a merely malformed one as a syntax error.
fn overflowing_number(payload: &[u8], offset: usize) -> Option<&str> {
    let in_number = |b: &u8| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E');
    let len = payload
        .get(..=offset)?
        .iter()
        .rev()
        .take_while(|b| in_number(b))
        .count();
    let start = offset + 1 - len;
    if len == 0 || number_end(payload, start) != Some(offset + 1) {
        return None;
    }
    let token = std::str::from_utf8(&payload[start..=offset]).ok()?;
    token.parse::<f64>().ok()?.is_infinite().then_some(token)
}

fn byte_offset(payload: &[u8], line: usize, col: usize) -> Option<usize> {
    let mut cur_line = 1;
    let mut line_start = 0;
    for (i, &b) in payload.iter().enumerate() {
        if cur_line == line {
            break;
        }
        if b == b'\n' {
            cur_line += 1;
            line_start = i + 1;
        }
    }
    (cur_line == line).then_some(line_start + col.saturating_sub(1))
}

struct State<'a> {
    specs: &'a [TensorSpec],
    buffers: &'a mut [Vec<u8>],
    /// Values seen per input; None until the input appears.
    counts: Vec<Option<usize>>,
    id: Option<MessageId>,
    /// Set by a visitor that aborts the parse with a classified failure.
    failure: Option<Failure>,
    saw_data: bool,
    /// (input, element index) being read when serde_json itself stopped
    /// the parse inside an input's values, for the error message.
    element: Option<(usize, usize)>,
}

impl State<'_> {
    fn fail<E: de::Error>(&mut self, f: Failure) -> E {
        if self.failure.is_none() {
            self.failure = Some(f);
        }
        E::custom("aborted")
    }
}

struct TopLevel<'s, 'a>(&'s mut State<'a>);

impl<'de> DeserializeSeed<'de> for TopLevel<'_, '_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for TopLevel<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object with \"data\" or \"inputs\"")
    }

    /// serde's default quotes the whole string in the error message.
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Err(E::invalid_type(de::Unexpected::Other("string"), &self))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let st = self.0;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match key.as_ref() {
                // The first "id" counts; a repeated one is ignored like
                // any other extra field (as peek_id, which stops at the
                // first, must agree).
                "id" if st.id.is_none() => {
                    // The raw text: numbers are echoed exactly as written.
                    let raw: &'de RawValue = map.next_value()?;
                    match message_id(raw) {
                        Ok(id) => st.id = Some(id),
                        Err(f) => return Err(st.fail(f)),
                    }
                }
                "data" => {
                    if st.specs.len() != 1 {
                        return Err(st.fail(Failure::new(
                            ErrorCode::BadShape,
                            format!(
                                "\"data\" is for single-input models; this model takes {} inputs ({}): send \"inputs\" as a list in that order or an object keyed by input name",
                                st.specs.len(),
                                input_list(st.specs)
                            ),
                        )));
                    }
                    if st.saw_data {
                        return Err(st.fail(Failure::new(
                            ErrorCode::BadJson,
                            "both \"data\" and \"inputs\" given (or one twice); send exactly one",
                        )));
                    }
                    st.saw_data = true;
                    map.next_value_seed(InputValues {
                        st: &mut *st,
                        input: 0,
                    })?;
                }
                "inputs" => {
                    if st.saw_data {
                        return Err(st.fail(Failure::new(
                            ErrorCode::BadJson,
                            "both \"data\" and \"inputs\" given (or one twice); send exactly one",
                        )));
                    }
                    st.saw_data = true;
                    map.next_value_seed(InputsField(&mut *st))?;
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

/// `"inputs"`: a list in model order or an object keyed by input name.
struct InputsField<'s, 'a>(&'s mut State<'a>);

impl<'de> DeserializeSeed<'de> for InputsField<'_, '_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for InputsField<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of input arrays or an object keyed by input name")
    }

    /// serde's default quotes the whole string in the error message.
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Err(E::invalid_type(de::Unexpected::Other("string"), &self))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let st = self.0;
        let mut i = 0;
        loop {
            if i >= st.specs.len() {
                // One more element means too many inputs.
                if seq.next_element::<IgnoredAny>()?.is_some() {
                    let mut extra = i + 1;
                    while seq.next_element::<IgnoredAny>()?.is_some() {
                        extra += 1;
                    }
                    return Err(st.fail(Failure::new(
                        ErrorCode::BadShape,
                        format!(
                            "\"inputs\" has {extra} entries, the model takes {}: {}",
                            st.specs.len(),
                            input_list(st.specs)
                        ),
                    )));
                }
                return Ok(());
            }
            let seed = InputValues {
                st: &mut *st,
                input: i,
            };
            if seq.next_element_seed(seed)?.is_none() {
                return Ok(());
            }
            i += 1;
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let st = self.0;
        while let Some(name) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            let Some(i) = st.specs.iter().position(|s| s.name == name.as_ref()) else {
                return Err(st.fail(Failure::new(
                    ErrorCode::BadShape,
                    format!(
                        "the model has no input named '{}'; its inputs are {}",
                        clip(&name),
                        input_list(st.specs)
                    ),
                )));
            };
            if st.counts[i].is_some() {
                return Err(st.fail(Failure::new(
                    ErrorCode::BadJson,
                    format!("input '{name}' is given twice"),
                )));
            }
            map.next_value_seed(InputValues {
                st: &mut *st,
                input: i,
            })?;
        }
        Ok(())
    }
}

/// The values of one input: a (possibly nested) array of numbers.
struct InputValues<'s, 'a> {
    st: &'s mut State<'a>,
    input: usize,
}

impl<'de> DeserializeSeed<'de> for InputValues<'_, '_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for InputValues<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of numbers")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let InputValues { st, input } = self;
        let mut w = Writer {
            spec: &st.specs[input],
            buf: &mut st.buffers[input],
            count: 0,
            failure: None,
        };
        // The outermost array is level 1.
        let mut depth_guard = 1u32;
        let result = (|| {
            while seq
                .next_element_seed(Element {
                    w: &mut w,
                    depth: &mut depth_guard,
                })?
                .is_some()
            {}
            Ok(())
        })();
        let count = w.count;
        if let Some(f) = w.failure.take() {
            return Err(st.fail(f));
        }
        if result.is_err() {
            st.element = Some((input, count));
        }
        result?;
        st.counts[input] = Some(count);
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        let name = self.st.specs[self.input].name.clone();
        Err(self.st.fail(Failure::new(
            ErrorCode::BadJson,
            format!("input '{name}' must be an array of numbers, got an object"),
        )))
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        self.not_array("a string")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.not_array("a boolean")
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.not_array("null")
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.not_array("a single number")
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        self.not_array("a single number")
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        self.not_array("a single number")
    }
}

impl InputValues<'_, '_> {
    fn not_array<E: de::Error>(self, what: &str) -> Result<(), E> {
        let name = self.st.specs[self.input].name.clone();
        Err(self.st.fail(Failure::new(
            ErrorCode::BadJson,
            format!("input '{name}' must be an array of numbers, got {what}"),
        )))
    }
}

/// Writes numbers into one input buffer, counting past the end so the
/// error can say how many came.
struct Writer<'a> {
    spec: &'a TensorSpec,
    buf: &'a mut [u8],
    count: usize,
    failure: Option<Failure>,
}

impl Writer<'_> {
    #[inline]
    fn push<E: de::Error>(&mut self, v: f64) -> Result<(), E> {
        let x = v as f32;
        if !x.is_finite() {
            return Err(self.fail(Failure::new(
                ErrorCode::BadValue,
                // `{:e}`: 1e300 in five characters, not three hundred.
                format!(
                    "input '{}' element {} is {v:e}, outside the float32 range",
                    self.spec.name, self.count
                ),
            )));
        }
        if self.count < self.spec.element_count() {
            quant::store(
                self.spec.dtype,
                self.spec.quantization,
                self.buf,
                self.count,
                x,
            );
        }
        self.count += 1;
        Ok(())
    }

    fn fail<E: de::Error>(&mut self, f: Failure) -> E {
        if self.failure.is_none() {
            self.failure = Some(f);
        }
        E::custom("aborted")
    }

    fn bad_element<E: de::Error>(&mut self, what: &str) -> E {
        let f = Failure::new(
            ErrorCode::BadValue,
            format!(
                "input '{}' element {} is {what}, expected a number",
                self.spec.name, self.count
            ),
        );
        self.fail(f)
    }
}

/// An input's values may nest this many arrays deep, the outermost
/// included; deeper is refused (a tensor has at most 8 dims; the margin
/// allows [[..]] wrappers). It also bounds recursion.
pub(super) const MAX_DEPTH: u32 = 16;

struct Element<'w, 'a> {
    w: &'w mut Writer<'a>,
    depth: &'w mut u32,
}

impl<'de> DeserializeSeed<'de> for Element<'_, '_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Element<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a number or an array of numbers")
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.w.push(v)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.w.push(v as f64)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.w.push(v as f64)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        *self.depth += 1;
        if *self.depth > MAX_DEPTH {
            let f = Failure::new(
                ErrorCode::BadShape,
                format!(
                    "input '{}' nests arrays more than {MAX_DEPTH} deep (at element {}); at most {MAX_DEPTH} levels, the outermost included",
                    self.w.spec.name, self.w.count
                ),
            );
            return Err(self.w.fail(f));
        }
        while seq
            .next_element_seed(Element {
                w: &mut *self.w,
                depth: &mut *self.depth,
            })?
            .is_some()
        {}
        *self.depth -= 1;
        Ok(())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Err(self.w.bad_element("a string"))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Err(self.w.bad_element("a boolean"))
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(self.w.bad_element("null"))
    }
    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(self.w.bad_element("an object"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use model_runtime::{DType, Quantization};

    fn spec(name: &str, shape: &[usize], dtype: DType, q: Option<Quantization>) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            shape: shape.to_vec(),
            dtype,
            quantization: q,
            shape_signature: shape.iter().map(|&d| d as i64).collect(),
        }
    }

    fn bufs(specs: &[TensorSpec]) -> Vec<Vec<u8>> {
        specs.iter().map(|s| vec![0u8; s.byte_len()]).collect()
    }

    fn f32s(b: &[u8]) -> Vec<f32> {
        b.chunks(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }

    #[test]
    fn flat_and_nested_data_fill_the_buffer() {
        let specs = [spec("x", &[1, 2, 2], DType::F32, None)];
        let mut b = bufs(&specs);
        let d = decode_json(br#"{"id":"a1","data":[[1,2],[3.5,-4]]}"#, &specs, &mut b).unwrap();
        assert_eq!(d.id, Some(MessageId::Text("a1".into())));
        assert_eq!(f32s(&b[0]), vec![1.0, 2.0, 3.5, -4.0]);
        let d = decode_json(
            br#"{"data":[5,6,7,8],"ts":123,"meta":{"a":[1]}}"#,
            &specs,
            &mut b,
        )
        .unwrap();
        assert_eq!(d.id, None);
        assert_eq!(f32s(&b[0]), vec![5.0, 6.0, 7.0, 8.0]);
    }

    #[test]
    fn quantizes_int8_inputs() {
        let q = Some(Quantization {
            scale: 0.5,
            zero_point: 1,
        });
        let specs = [spec("x", &[3], DType::I8, q)];
        let mut b = bufs(&specs);
        decode_json(br#"{"data":[0, 1.0, -100]}"#, &specs, &mut b).unwrap();
        assert_eq!(
            b[0].iter().map(|&x| x as i8).collect::<Vec<_>>(),
            vec![1, 3, -128]
        );
    }

    #[test]
    fn count_mismatch_names_the_input_and_counts() {
        let specs = [spec("input_1", &[1, 128, 3], DType::F32, None)];
        let mut b = bufs(&specs);
        let payload = format!(r#"{{"id":7,"data":[{}]}}"#, vec!["0.5"; 383].join(","));
        let (id, f) = decode_json(payload.as_bytes(), &specs, &mut b).unwrap_err();
        assert_eq!(id, Some(MessageId::Number(NumberId::parse("7").unwrap())));
        assert_eq!(f.code, ErrorCode::BadShape);
        assert_eq!(
            f.message,
            "input 'input_1' needs 384 values (1x128x3), got 383"
        );
        let payload = format!(r#"{{"data":[{}]}}"#, vec!["0.5"; 390].join(","));
        let (_, f) = decode_json(payload.as_bytes(), &specs, &mut b).unwrap_err();
        assert!(f.message.ends_with("got 390"), "{}", f.message);
    }

    #[test]
    fn id_after_the_data_is_still_echoed_on_errors() {
        let specs = [spec("x", &[2], DType::F32, None)];
        let mut b = bufs(&specs);
        let (id, f) =
            decode_json(br#"{"data":[1,"two"],"id":"late"}"#, &specs, &mut b).unwrap_err();
        assert_eq!(f.code, ErrorCode::BadValue);
        assert_eq!(id, Some(MessageId::Text("late".into())));
    }

    #[test]
    fn multi_input_list_and_object_forms() {
        let specs = [
            spec("a", &[2], DType::F32, None),
            spec("b", &[1], DType::F32, None),
        ];
        let mut b = bufs(&specs);
        decode_json(br#"{"inputs":[[1,2],[3]]}"#, &specs, &mut b).unwrap();
        assert_eq!(f32s(&b[1]), vec![3.0]);
        decode_json(br#"{"inputs":{"b":[9],"a":[7,8]}}"#, &specs, &mut b).unwrap();
        assert_eq!(f32s(&b[0]), vec![7.0, 8.0]);
        let (_, f) = decode_json(br#"{"inputs":{"a":[7,8]}}"#, &specs, &mut b).unwrap_err();
        assert_eq!(f.code, ErrorCode::BadShape);
        assert!(f.message.contains("'b'"), "{}", f.message);
        let (_, f) = decode_json(br#"{"inputs":{"c":[1]}}"#, &specs, &mut b).unwrap_err();
        assert!(f.message.contains("no input named 'c'"), "{}", f.message);
        let (_, f) = decode_json(br#"{"inputs":[[1,2],[3],[4]]}"#, &specs, &mut b).unwrap_err();
        assert!(f.message.contains("3 entries"), "{}", f.message);
        let (_, f) = decode_json(br#"{"data":[1,2,3]}"#, &specs, &mut b).unwrap_err();
        assert_eq!(f.code, ErrorCode::BadShape);
    }

    #[test]
    fn bad_values_and_bad_json_are_classified() {
        let specs = [spec("x", &[2], DType::F32, None)];
        let mut b = bufs(&specs);
        let cases: &[(&[u8], ErrorCode)] = &[
            (br#"{"data":[1,NaN]}"#, ErrorCode::BadValue),
            (br#"{"data":[1,Infinity]}"#, ErrorCode::BadValue),
            (br#"{"data":[1,-Infinity]}"#, ErrorCode::BadValue),
            (br#"{"data":[1,1e39]}"#, ErrorCode::BadValue),
            (br#"{"data":[1,1e309]}"#, ErrorCode::BadValue),
            (br#"{"data":[1e400,1]}"#, ErrorCode::BadValue),
            (br#"{"data":1e309}"#, ErrorCode::BadValue),
            (br#"{"data":[1 1e309]}"#, ErrorCode::BadJson),
            (br#"{"data":[1,"2"]}"#, ErrorCode::BadValue),
            (br#"{"data":[1,null]}"#, ErrorCode::BadValue),
            (br#"{"data":[1,2]"#, ErrorCode::BadJson),
            (br#"[1,2]"#, ErrorCode::BadJson),
            (br#"{"id":"x"}"#, ErrorCode::BadJson),
            (br#"{"data":"12"}"#, ErrorCode::BadJson),
            (br#"{"id":[1],"data":[1,2]}"#, ErrorCode::BadJson),
            (b"\xff\xfe", ErrorCode::BadJson),
            (b"", ErrorCode::BadJson),
        ];
        for (payload, code) in cases {
            let (_, f) = decode_json(payload, &specs, &mut b).unwrap_err();
            assert_eq!(
                f.code,
                *code,
                "{} -> {}",
                String::from_utf8_lossy(payload),
                f.message
            );
        }
    }

    #[test]
    fn numbers_beyond_float64_are_bad_values_named_by_input_and_element() {
        let specs = [spec("accel", &[2, 2], DType::F32, None)];
        let mut b = bufs(&specs);
        let cases = [
            (
                r#"{"id":"o1","data":[[1,2],[3,1e309]]}"#,
                "input 'accel' element 3 is 1e309, outside the float32 range",
            ),
            (
                "{\"data\":[\n-1E+999,2,3,4]}",
                "input 'accel' element 0 is -1E+999, outside the float32 range",
            ),
            (
                // Quoted by its start and length, not whole.
                &format!(r#"{{"data":[1,2,3,1{}]}}"#, "0".repeat(400)),
                &format!(
                    "input 'accel' element 3 is 1{}… (401 bytes), outside the float32 range",
                    "0".repeat(63)
                ),
            ),
            (
                r#"{"data":1e309}"#,
                "1e309 at line 1 column 9 is outside the float64 range",
            ),
        ];
        for (payload, message) in cases {
            let mut fast_bufs = bufs(&specs);
            assert_eq!(
                fast::decode(payload.as_bytes(), &specs, &mut fast_bufs, MAX_DEPTH),
                None,
                "{payload}"
            );
            let (_, f) = decode_json(payload.as_bytes(), &specs, &mut b).unwrap_err();
            assert_eq!(f.code, ErrorCode::BadValue, "{payload}");
            assert_eq!(f.message, message, "{payload}");
        }
        // The id still comes back, and ignored fields may hold any JSON
        // number: they are never converted.
        let (id, _) =
            decode_json(br#"{"id":"o1","data":[1,2,3,1e309]}"#, &specs, &mut b).unwrap_err();
        assert_eq!(id, Some(MessageId::Text("o1".into())));
        decode_json(br#"{"ts":1e309,"data":[1,2,3,4]}"#, &specs, &mut b).unwrap();
    }

    /// Payload text quoted in a message is clipped: a 100 KB key or
    /// number, or a string where an object or list belongs, once made an
    /// error message as long (found by the robustness tests).
    #[test]
    fn error_messages_quote_payload_text_clipped() {
        let specs = [
            spec("a", &[1], DType::F32, None),
            spec("b", &[1], DType::F32, None),
        ];
        let mut b = bufs(&specs);
        let (k, digits) = ("k".repeat(100_000), "0".repeat(100_000));
        let cases = [
            (
                format!(r#"{{"inputs":{{"{k}":[1]}}}}"#),
                ErrorCode::BadShape,
                format!(
                    "the model has no input named '{}… (100000 bytes)'; its inputs are 'a' 1 float32, 'b' 1 float32",
                    "k".repeat(64)
                ),
            ),
            (
                format!(r#"{{"inputs":[[1{digits}],[1]]}}"#),
                ErrorCode::BadValue,
                format!(
                    "input 'a' element 0 is 1{}… (100001 bytes), outside the float32 range",
                    "0".repeat(63)
                ),
            ),
            (
                r#"{"inputs":[[1],[-1.0e+300]]}"#.to_string(),
                ErrorCode::BadValue,
                "input 'b' element 0 is -1e300, outside the float32 range".into(),
            ),
            (
                format!(r#"{{"inputs":1{digits}}}"#),
                ErrorCode::BadValue,
                format!(
                    "1{}… (100001 bytes) at line 1 column 11 is outside the float64 range",
                    "0".repeat(63)
                ),
            ),
            (
                format!(r#""{k}""#),
                ErrorCode::BadJson,
                "unexpected JSON structure: invalid type: string, expected a JSON object with \"data\" or \"inputs\" at line 1 column 100002".into(),
            ),
            (
                format!(r#"{{"inputs":"{k}"}}"#),
                ErrorCode::BadJson,
                "unexpected JSON structure: invalid type: string, expected a list of input arrays or an object keyed by input name at line 1 column 100012".into(),
            ),
        ];
        for (payload, code, message) in cases {
            let (_, f) = decode_json(payload.as_bytes(), &specs, &mut b).unwrap_err();
            assert_eq!((f.code, f.message.as_str()), (code, message.as_str()));
        }
        // Short text is quoted whole, multi-byte characters are not cut.
        let (_, f) = decode_json(br#"{"inputs":{"c":[1]}}"#, &specs, &mut b).unwrap_err();
        assert!(f.message.starts_with("the model has no input named 'c';"));
        assert_eq!(
            clip(&"é".repeat(40)),
            format!("{}… (80 bytes)", "é".repeat(32))
        );
    }

    #[test]
    fn inputs_nest_at_most_sixteen_arrays_deep_in_both_paths() {
        let specs = [spec("x", &[1], DType::F32, None)];
        let nested = |n: usize| format!(r#"{{"data":{}1{}}}"#, "[".repeat(n), "]".repeat(n));
        let mut b = bufs(&specs);
        let ok = nested(16);
        assert!(fast::decode(ok.as_bytes(), &specs, &mut b, MAX_DEPTH).is_some());
        decode_json_full(ok.as_bytes(), &specs, &mut b).unwrap();
        let deep = nested(17);
        assert_eq!(
            fast::decode(deep.as_bytes(), &specs, &mut b, MAX_DEPTH),
            None
        );
        let (_, f) = decode_json(deep.as_bytes(), &specs, &mut b).unwrap_err();
        assert_eq!(f.code, ErrorCode::BadShape);
        assert_eq!(
            f.message,
            "input 'x' nests arrays more than 16 deep (at element 0); at most 16 levels, the outermost included"
        );
        // The "inputs" list is not one of an input's levels.
        let multi = [
            spec("a", &[1], DType::F32, None),
            spec("b", &[1], DType::F32, None),
        ];
        let mut b = bufs(&multi);
        let list = format!(
            r#"{{"inputs":[{0}1{1},{0}2{1}]}}"#,
            "[".repeat(16),
            "]".repeat(16)
        );
        assert!(fast::decode(list.as_bytes(), &multi, &mut b, MAX_DEPTH).is_some());
        decode_json_full(list.as_bytes(), &multi, &mut b).unwrap();
    }

    #[test]
    fn ids_are_echoed_exactly_as_written() {
        let specs = [spec("x", &[1], DType::F32, None)];
        let number = |t: &str| Some(MessageId::Number(NumberId::parse(t).unwrap()));
        for (id, want) in [
            (
                "1000000000000000000000000000000",
                number("1000000000000000000000000000000"),
            ),
            ("1.50", number("1.50")),
            ("-0", number("-0")),
            ("1e309", number("1e309")),
            ("12345678901234567890123", number("12345678901234567890123")),
            (r#""\u0041\n""#, Some(MessageId::Text("A\n".into()))),
            (r#""é""#, Some(MessageId::Text("é".into()))),
        ] {
            // The fast path, then the full decoder (an escaped key sends
            // the message there).
            for payload in [
                format!(r#"{{"id":{id},"data":[1]}}"#),
                format!(r#"{{"id":{id},"d\u0061ta":[1]}}"#),
            ] {
                let mut b = bufs(&specs);
                let d = decode_json(payload.as_bytes(), &specs, &mut b).unwrap();
                assert_eq!(d.id, want, "{payload}");
            }
        }
        // A repeated id: the first counts, the rest are ignored.
        let mut b = bufs(&specs);
        let d = decode_json(
            br#"{"id":1,"id":"two","id":null,"data":[1]}"#,
            &specs,
            &mut b,
        )
        .unwrap();
        assert_eq!(d.id, number("1"));
        let mut b = bufs(&specs);
        let full = decode_json_full(
            br#"{"id":1000000000000000000000000000000,"data":[1]}"#,
            &specs,
            &mut b,
        )
        .unwrap();
        let id = full.id.unwrap();
        assert!(
            matches!(&id, MessageId::Number(n) if n.to_string() == "1000000000000000000000000000000")
        );
        assert_eq!(
            serde_json::to_string(&id).unwrap(),
            "1000000000000000000000000000000"
        );
    }

    #[test]
    fn ids_longer_than_the_limit_or_of_another_type_are_refused() {
        let specs = [spec("x", &[1], DType::F32, None)];
        let mut b = bufs(&specs);
        let longest = "9".repeat(MAX_ID_LEN);
        for payload in [
            format!(r#"{{"id":{longest},"data":[1]}}"#),
            format!(r#"{{"id":"{longest}","data":[1]}}"#),
        ] {
            decode_json(payload.as_bytes(), &specs, &mut b).unwrap();
        }
        let cases = [
            (
                format!(r#"{{"id":{longest}9,"data":[1]}}"#),
                "\"id\" may be at most 256 bytes, got 257".to_string(),
            ),
            (
                format!(r#"{{"id":"{longest}é","data":[1]}}"#),
                "\"id\" may be at most 256 bytes, got 258".to_string(),
            ),
            (
                r#"{"id":null,"data":[1]}"#.to_string(),
                "\"id\" must be a string or a number, got null".to_string(),
            ),
            (
                r#"{"id":{"a":1},"data":[1]}"#.to_string(),
                "\"id\" must be a string or a number, got an object".to_string(),
            ),
            (
                r#"{"id":"\ud83d","data":[1]}"#.to_string(),
                "\"id\": unexpected end of hex escape at line 1 column 8".to_string(),
            ),
        ];
        for (payload, message) in cases {
            let (id, f) = decode_json(payload.as_bytes(), &specs, &mut b).unwrap_err();
            assert_eq!(id, None, "{payload}");
            assert_eq!(f.code, ErrorCode::BadJson, "{payload}");
            assert_eq!(f.message, message, "{payload}");
        }
    }

    #[test]
    fn absurd_nesting_is_refused_without_overflowing_the_stack() {
        let specs = [spec("x", &[1], DType::F32, None)];
        let mut b = bufs(&specs);
        let payload = format!(r#"{{"data":{}1{}}}"#, "[".repeat(100), "]".repeat(100));
        let (_, f) = decode_json(payload.as_bytes(), &specs, &mut b).unwrap_err();
        assert!(
            matches!(f.code, ErrorCode::BadShape | ErrorCode::BadJson),
            "{f:?}"
        );
    }

    /// The fast path must take the common messages, and whatever it takes
    /// it must decode exactly as the full decoder does. (Generated and
    /// mutated messages by the million: `codec::robustness`.)
    #[test]
    fn fast_path_agrees_with_the_full_decoder() {
        let q = Some(Quantization {
            scale: 0.0078,
            zero_point: -1,
        });
        let single = [spec("x", &[1, 2, 3], DType::I8, q)];
        let multi = [
            spec("a", &[2], DType::F32, None),
            spec("b", &[1, 1], DType::U8, q),
        ];
        let taken: &[(&[TensorSpec], &str)] = &[
            (&single, r#"{"id":"a-1","data":[0.5,-0.25,1,-1,0,0.0078]}"#),
            (
                &single,
                r#" { "data" : [[0.5, -0.25, 1], [-1, 0, 3e-3]] , "id" : 17 } "#,
            ),
            (&single, r#"{"data":[1,2,3,4,5,6]}"#),
            (&single, "{\"id\":-2.5e3,\n\"data\":[1,2,3,4,5,6]}"),
            (
                &single,
                r#"{"ts":1.7e9,"meta":{"s":"a\"]}","l":[1,{"x":null}],"t":true},"data":[6,5,4,3,2,1],"id":"z"}"#,
            ),
            (&single, r#"{"data":[1.00000000000000000001,2,3,4,5,6]}"#),
            // Near float32 rounding midpoints: serde_json rounds these
            // differently unless its float_roundtrip feature is on.
            (
                &multi,
                r#"{"inputs":[[1.626353960117428e-32,8.601462673544976291e-19],[0.3]]}"#,
            ),
            (&multi, r#"{"inputs":[[1.5,2],[0.3]],"id":"m"}"#),
            (&multi, r#"{"inputs":{"b":[[0.3]],"a":[1.5,-2]}}"#),
        ];
        for (specs, payload) in taken {
            let mut fast_bufs = bufs(specs);
            let id = fast::decode(payload.as_bytes(), specs, &mut fast_bufs, MAX_DEPTH);
            let Some(id) = id else {
                panic!("the fast path declined {payload}");
            };
            let mut full_bufs = bufs(specs);
            let full = decode_json_full(payload.as_bytes(), specs, &mut full_bufs).unwrap();
            assert_eq!(id, full.id, "{payload}");
            assert_eq!(fast_bufs, full_bufs, "{payload}");
        }
        // Declined: left to the full decoder, which accepts some of these
        // (escaped keys or ids, a repeated id) and words the errors for
        // the rest.
        let too_long_id = format!(r#"{{"id":{},"data":[1,2,3,4,5,6]}}"#, "1".repeat(257));
        let declined: &[(&[TensorSpec], &str)] = &[
            (&single, r#"{"d\u0061ta":[1,2,3,4,5,6]}"#),
            (&single, r#"{"id":"\u0041","data":[1,2,3,4,5,6]}"#),
            (&single, r#"{"id":1,"id":2,"data":[1,2,3,4,5,6]}"#),
            (&single, r#"{"data":[1,2,3,4,5]}"#),
            (&single, r#"{"data":[1,2,3,4,5,6,7]}"#),
            (&single, r#"{"data":[1,2,3,4,5,"6"]}"#),
            (&single, r#"{"data":[1,2,3,4,5,6],"data":[1,2,3,4,5,6]}"#),
            (&single, r#"{"data":[1,2,3,4,5,6],"x":[1,}"#),
            (&single, r#"{"data":[1,2,3,4,5,6],"x":tru}"#),
            (&single, r#"{"data":[1,2,3,4,5,6]} x"#),
            (&single, r#"{"data":[1,2,3,4,5,1e39]}"#),
            (&single, r#"{"data":[1,2,3,4,5,1e309]}"#),
            (&single, &too_long_id),
            (&single, r#"{"id":[1],"data":[1,2,3,4,5,6]}"#),
            (&single, "{}"),
            (&multi, r#"{"inputs":[[1.5,2]]}"#),
            (&multi, r#"{"inputs":{"a":[1,2],"a":[1,2],"b":[1]}}"#),
            (&multi, r#"{"data":[1,2,3]}"#),
        ];
        for (specs, payload) in declined {
            let mut b = bufs(specs);
            assert_eq!(
                fast::decode(payload.as_bytes(), specs, &mut b, MAX_DEPTH),
                None,
                "{payload}"
            );
        }
    }

    #[test]
    fn raw_payload_size_must_match_exactly() {
        let specs = [
            spec("a", &[2], DType::I8, None),
            spec("b", &[1], DType::F32, None),
        ];
        let mut b = bufs(&specs);
        decode_raw(&[1, 2, 0, 0, 128, 63], &specs, &mut b).unwrap();
        assert_eq!(b[0], vec![1, 2]);
        assert_eq!(f32s(&b[1]), vec![1.0]);
        let f = decode_raw(&[1, 2, 3], &specs, &mut b).unwrap_err();
        assert!(f.message.contains("exactly 6 bytes"), "{}", f.message);
        assert!(f.message.ends_with("got 3"));
    }
}
