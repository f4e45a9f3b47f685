//! Named fields: readings of a stream (`[models.window]`) and one object's
//! fields stacked into an input (`[models.input] fields`).
//!
//! These payloads are small objects (one sensor reading, a few tabular
//! values), so they are parsed into a `serde_json::Value` and the fields
//! looked up by name or JSON Pointer; the id is read from the text, so a
//! numeric id keeps its exact spelling.

use serde_json::{Map, Value};

use super::peek::find_id;
use super::{clip, ErrorCode, Failure, MessageId};
use crate::config::FieldPath;

/// Nesting of arrays inside one field, as for `data` (see `decode`).
const MAX_FIELD_DEPTH: usize = 16;

/// The readings of one message, in message order.
#[derive(Debug, Default, PartialEq)]
pub struct Readings {
    pub id: Option<MessageId>,
    /// `fields.len()` values per reading, reading after reading.
    pub values: Vec<f32>,
    /// Each reading's timestamp field (Unix seconds), when one is
    /// configured; one entry per reading either way.
    pub timestamps: Vec<Option<f64>>,
}

/// A message of readings: one reading (an object), an array of readings,
/// or `{"readings": [...]}` (with an optional `id`). Every reading needs
/// every field as a number (and the timestamp field, when configured); a
/// message with one bad reading is refused whole.
pub fn parse_readings(
    payload: &[u8],
    fields: &[FieldPath],
    timestamp: Option<&FieldPath>,
) -> Result<Readings, (Option<MessageId>, Failure)> {
    let id = find_id(payload);
    let fail = |code, message: String| (find_id(payload), Failure::new(code, message));
    let value: Value = serde_json::from_slice(payload).map_err(|e| {
        fail(
            ErrorCode::BadJson,
            format!("expected a reading (a JSON object), an array of readings or {{\"readings\": [...]}}; not JSON: {e}"),
        )
    })?;
    let (items, listed): (Vec<&Value>, bool) = match &value {
        Value::Object(map) => match map.get("readings") {
            Some(Value::Array(items)) => (items.iter().collect(), true),
            Some(other) => {
                return Err(fail(
                    ErrorCode::BadJson,
                    format!(
                        "\"readings\" must be an array of readings, got {}",
                        describe(other)
                    ),
                ))
            }
            None => (vec![&value], false),
        },
        Value::Array(items) => (items.iter().collect(), true),
        other => {
            return Err(fail(
                ErrorCode::BadJson,
                format!(
                    "expected a reading (a JSON object), an array of readings or {{\"readings\": [...]}}; got {}",
                    describe(other)
                ),
            ))
        }
    };
    if items.is_empty() {
        return Err(fail(
            ErrorCode::BadReading,
            "the message holds no readings (an empty array)".into(),
        ));
    }
    let mut out = Readings {
        id,
        values: Vec::with_capacity(items.len() * fields.len()),
        timestamps: Vec::with_capacity(items.len()),
    };
    for (i, item) in items.iter().enumerate() {
        let at = if listed {
            format!("readings[{i}]")
        } else {
            "the reading".to_string()
        };
        let Value::Object(map) = item else {
            return Err(fail(
                ErrorCode::BadReading,
                format!("{at} must be a JSON object, got {}", describe(item)),
            ));
        };
        for field in fields {
            let v = lookup(map, field).ok_or_else(|| {
                fail(
                    ErrorCode::BadReading,
                    format!("{at} has no field \"{}\"{}", field.text, present(map)),
                )
            })?;
            let x = number(v).ok_or_else(|| {
                fail(
                    ErrorCode::BadReading,
                    format!(
                        "{at}: field \"{}\" must be a finite float32 number, got {}",
                        field.text,
                        describe(v)
                    ),
                )
            })?;
            out.values.push(x);
        }
        let ts = match timestamp {
            None => None,
            Some(field) => {
                let v = lookup(map, field).ok_or_else(|| {
                    fail(
                        ErrorCode::BadReading,
                        format!(
                            "{at} has no timestamp field \"{}\" (Unix seconds){}",
                            field.text,
                            present(map)
                        ),
                    )
                })?;
                let t = v.as_f64().filter(|t| t.is_finite() && *t >= 0.0);
                Some(t.ok_or_else(|| {
                    // Any number fits here; only its sign can be wrong.
                    let got = match v {
                        Value::Number(n) => format!("{n}"),
                        other => describe(other),
                    };
                    fail(
                        ErrorCode::BadReading,
                        format!(
                            "{at}: timestamp field \"{}\" must be Unix seconds (a number >= 0), got {got}",
                            field.text,
                        ),
                    )
                })?)
            }
        };
        out.timestamps.push(ts);
    }
    Ok(out)
}

/// One object whose `fields`, in order, fill `out`: each a number or an
/// array (nested up to 16 deep) of numbers, flattened. The total must be
/// `out.len()`.
pub fn decode_fields(
    payload: &[u8],
    fields: &[FieldPath],
    out: &mut [f32],
) -> Result<Option<MessageId>, (Option<MessageId>, Failure)> {
    let id = find_id(payload);
    let fail = |code, message: String| (find_id(payload), Failure::new(code, message));
    let names = || {
        fields
            .iter()
            .map(|f| format!("\"{}\"", f.text))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let value: Value = serde_json::from_slice(payload).map_err(|e| {
        fail(
            ErrorCode::BadJson,
            format!(
                "expected a JSON object with the fields {}; not JSON: {e}",
                names()
            ),
        )
    })?;
    let Value::Object(map) = &value else {
        return Err(fail(
            ErrorCode::BadJson,
            format!(
                "expected a JSON object with the fields {}; got {}",
                names(),
                describe(&value)
            ),
        ));
    };
    let mut n = 0;
    for field in fields {
        let v = lookup(map, field).ok_or_else(|| {
            fail(
                ErrorCode::BadJson,
                format!(
                    "field \"{}\" is missing (the model's input is the fields {} in that order){}",
                    field.text,
                    names(),
                    present(map)
                ),
            )
        })?;
        flatten(v, &field.text, out, &mut n, 0).map_err(|f| (find_id(payload), f))?;
    }
    if n != out.len() {
        return Err(fail(
            ErrorCode::BadShape,
            format!(
                "the fields {} hold {n} values together; the model's input needs {}",
                names(),
                out.len()
            ),
        ));
    }
    Ok(id)
}

fn flatten(
    v: &Value,
    field: &str,
    out: &mut [f32],
    n: &mut usize,
    depth: usize,
) -> Result<(), Failure> {
    match v {
        Value::Array(items) => {
            if depth == MAX_FIELD_DEPTH {
                return Err(Failure::new(
                    ErrorCode::BadJson,
                    format!("field \"{field}\" nests arrays more than {MAX_FIELD_DEPTH} deep"),
                ));
            }
            items
                .iter()
                .try_for_each(|item| flatten(item, field, out, n, depth + 1))
        }
        _ => {
            let x = number(v).ok_or_else(|| {
                Failure::new(
                    ErrorCode::BadValue,
                    format!(
                        "field \"{field}\" must hold finite float32 numbers, got {}",
                        describe(v)
                    ),
                )
            })?;
            // Counted past the end too, so the error can say how many came.
            if let Some(slot) = out.get_mut(*n) {
                *slot = x;
            }
            *n += 1;
            Ok(())
        }
    }
}

/// The value at `field`: a top-level key, or the steps of a JSON Pointer
/// through objects (keys) and arrays (indices).
fn lookup<'v>(map: &'v Map<String, Value>, field: &FieldPath) -> Option<&'v Value> {
    let (first, rest) = field.steps.split_first()?;
    let mut at = map.get(first)?;
    for step in rest {
        at = match at {
            Value::Object(m) => m.get(step)?,
            Value::Array(items) => items.get(array_index(step)?)?,
            _ => return None,
        };
    }
    Some(at)
}

/// RFC 6901: an array index is `0` or digits without a leading zero.
fn array_index(step: &str) -> Option<usize> {
    if step.is_empty() || (step.len() > 1 && step.starts_with('0')) {
        return None;
    }
    if !step.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    step.parse().ok()
}

/// A JSON number that is finite in float32.
fn number(v: &Value) -> Option<f32> {
    let x = v.as_f64()? as f32;
    x.is_finite().then_some(x)
}

/// What came instead, for messages: the type and a short excerpt.
fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("a boolean ({b})"),
        Value::Number(n) => format!("the number {n} (outside float32)"),
        Value::String(s) => {
            let short: String = s.chars().take(32).collect();
            let more = if short.len() < s.len() { "..." } else { "" };
            format!("a string (\"{short}{more}\")")
        }
        Value::Array(a) => format!("an array of {}", a.len()),
        Value::Object(m) => format!("an object with {} keys", m.len()),
    }
}

/// The keys a reading has, to make a misspelt field obvious.
fn present(map: &Map<String, Value>) -> String {
    if map.is_empty() {
        return "; it is an empty object".into();
    }
    let mut keys: Vec<String> = map
        .keys()
        .take(8)
        .map(|k| format!("\"{}\"", clip(k)))
        .collect();
    if map.len() > 8 {
        keys.push("...".into());
    }
    format!("; it has {}", keys.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(names: &[&str]) -> Vec<FieldPath> {
        names.iter().map(|n| FieldPath::parse(n).unwrap()).collect()
    }

    fn readings(payload: &str, ts: Option<&str>) -> Result<Readings, Failure> {
        let ts = ts.map(|t| FieldPath::parse(t).unwrap());
        parse_readings(payload.as_bytes(), &paths(&["ax", "/g/y"]), ts.as_ref()).map_err(|e| e.1)
    }

    #[test]
    fn one_reading_an_array_or_a_readings_list() {
        let one = readings(r#"{"ts": 10.5, "ax": 1, "g": {"y": 2.5}}"#, Some("ts")).unwrap();
        assert_eq!(one.values, vec![1.0, 2.5]);
        assert_eq!(one.timestamps, vec![Some(10.5)]);
        let many = readings(
            r#"[{"ax": 1, "g": {"y": 2}}, {"ax": 3, "g": {"y": 4}}]"#,
            None,
        )
        .unwrap();
        assert_eq!(many.values, vec![1.0, 2.0, 3.0, 4.0]);
        assert_eq!(many.timestamps, vec![None, None]);
        let listed = readings(
            r#"{"id": 1.50, "readings": [{"ax": 1, "g": {"y": 2}}]}"#,
            None,
        )
        .unwrap();
        assert_eq!(listed.timestamps.len(), 1);
        assert_eq!(listed.id.unwrap().to_string(), "1.50");
    }

    #[test]
    fn bad_readings_say_which_reading_and_field() {
        let e = readings(r#"[{"ax": 1, "g": {"y": 2}}, {"ax": 1}]"#, None).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadReading);
        assert_eq!(
            e.message,
            "readings[1] has no field \"/g/y\"; it has \"ax\""
        );
        let e = readings(r#"{"ax": "1", "g": {"y": 2}}"#, None).unwrap_err();
        assert_eq!(
            e.message,
            "the reading: field \"ax\" must be a finite float32 number, got a string (\"1\")"
        );
        let e = readings(r#"{"ax": 1e39, "g": {"y": 2}}"#, None).unwrap_err();
        assert!(e.message.contains("outside float32"), "{}", e.message);
        let e = readings(r#"{"ax": 1, "g": {"y": 2}}"#, Some("ts")).unwrap_err();
        assert!(
            e.message.contains("no timestamp field \"ts\""),
            "{}",
            e.message
        );
        let e = readings(r#"{"ts": "noon", "ax": 1, "g": {"y": 2}}"#, Some("ts")).unwrap_err();
        assert!(e.message.contains("Unix seconds"), "{}", e.message);
        let e = readings(r#"{"ts": -5, "ax": 1, "g": {"y": 2}}"#, Some("ts")).unwrap_err();
        assert!(
            e.message.ends_with("(a number >= 0), got -5"),
            "{}",
            e.message
        );
        // A huge key is quoted clipped, not whole.
        let key = "k".repeat(1 << 20);
        let e = readings(&format!(r#"{{"{key}": 1}}"#), None).unwrap_err();
        assert!(e.message.len() < 300, "{} bytes", e.message.len());
        assert!(e.message.contains("(1048576 bytes)"), "{}", e.message);
        assert_eq!(
            readings("[]", None).unwrap_err().code,
            ErrorCode::BadReading
        );
        assert_eq!(
            readings("[1]", None).unwrap_err().code,
            ErrorCode::BadReading
        );
        assert_eq!(readings("7", None).unwrap_err().code, ErrorCode::BadJson);
        assert_eq!(readings("{", None).unwrap_err().code, ErrorCode::BadJson);
        assert_eq!(
            readings(r#"{"readings": 3}"#, None).unwrap_err().code,
            ErrorCode::BadJson
        );
    }

    #[test]
    fn the_id_survives_a_bad_reading() {
        let (id, f) = parse_readings(
            br#"{"id": "m-1", "readings": [{"ax": null}]}"#,
            &paths(&["ax"]),
            None,
        )
        .unwrap_err();
        assert_eq!(id, Some(MessageId::Text("m-1".into())));
        assert_eq!(f.code, ErrorCode::BadReading);
    }

    #[test]
    fn pointers_follow_objects_and_array_indices() {
        let r = parse_readings(
            br#"{"a": [{"b": 5}], "x~y": 1, "p/q": 2}"#,
            &paths(&["/a/0/b", "/x~0y", "/p~1q"]),
            None,
        )
        .unwrap();
        assert_eq!(r.values, vec![5.0, 1.0, 2.0]);
        for bad in ["/a/00/b", "/a/-/b", "/a/1/b"] {
            assert!(parse_readings(br#"{"a": [{"b": 5}]}"#, &paths(&[bad]), None).is_err());
        }
    }

    #[test]
    fn fields_stack_scalars_and_arrays_in_order() {
        let mut out = [0.0f32; 5];
        let id = decode_fields(
            br#"{"id": 9, "hum": [[2, 3]], "temp": 1, "p": {"q": [4, 5]}}"#,
            &paths(&["temp", "hum", "/p/q"]),
            &mut out,
        )
        .unwrap();
        assert_eq!(out, [1.0, 2.0, 3.0, 4.0, 5.0]);
        assert_eq!(id.unwrap().to_string(), "9");
    }

    #[test]
    fn fields_errors_name_the_field() {
        let mut out = [0.0f32; 2];
        let f = |payload: &str| {
            decode_fields(payload.as_bytes(), &paths(&["temp", "hum"]), &mut [0.0; 2])
                .unwrap_err()
                .1
        };
        let e = f(r#"{"temp": 1}"#);
        assert_eq!(e.code, ErrorCode::BadJson);
        assert!(
            e.message.starts_with("field \"hum\" is missing"),
            "{}",
            e.message
        );
        let e = f(r#"{"temp": 1, "hum": true}"#);
        assert_eq!(e.code, ErrorCode::BadValue);
        assert!(e.message.contains("\"hum\""), "{}", e.message);
        let e = f(r#"{"temp": 1, "hum": [2, 3]}"#);
        assert_eq!(e.code, ErrorCode::BadShape);
        assert!(e.message.contains("hold 3 values"), "{}", e.message);
        let deep = format!(
            "{{\"temp\": 1, \"hum\": {}2{}}}",
            "[".repeat(40),
            "]".repeat(40)
        );
        assert_eq!(f(&deep).code, ErrorCode::BadJson);
        assert!(decode_fields(b"[1,2]", &paths(&["temp"]), &mut out).is_err());
    }
}
