//! A message's `id`, found without decoding the message: answers refused
//! before decoding (`too_large`, `overloaded`, `no_model`) still carry the
//! id the sender needs to correlate them.
//!
//! [`peek_id`] runs on the MQTT event loop, so it reads at most the first
//! [`PEEK_WINDOW`] bytes, allocates nothing but the id and never recurses.
//! It walks the top-level object member by member, skipping values by
//! their structure, and takes an `"id"` as the full decoder does: a string
//! (escapes decoded, valid UTF-8, at most [`MAX_ID_LEN`] bytes) or a number
//! (its exact text). Like the decoder it takes the first `"id"` member and
//! stops there, so an id placed first costs a few dozen bytes of scanning;
//! whatever follows it (even a syntax error) does not matter, as the
//! decoder reports the id it read before an error. The full decoder uses
//! the same walk over the whole payload to find the id of a message whose
//! parse failed before reaching its id.

use super::{number_end, MessageId, NumberId, MAX_ID_LEN};

/// How much of a payload [`peek_id`] reads: an id placed first (as senders
/// do) is found, and a refused 64 MiB payload costs no more than a small one.
pub const PEEK_WINDOW: usize = 4096;

/// The top-level `"id"` of a JSON object payload, read from its first
/// [`PEEK_WINDOW`] bytes; None if there is none there, the payload is not a
/// JSON object, or the id is invalid (not a string or number, too long, a
/// bad escape).
pub fn peek_id(payload: &[u8]) -> Option<MessageId> {
    find_id(&payload[..payload.len().min(PEEK_WINDOW)])
}

/// [`peek_id`] over all of `payload`.
pub(super) fn find_id(payload: &[u8]) -> Option<MessageId> {
    let mut at = skip_ws(payload, 0);
    if payload.get(at) != Some(&b'{') {
        return None;
    }
    at = skip_ws(payload, at + 1);
    loop {
        let mut is_id = KeyMatch::new(b"id");
        at = skip_ws(payload, string(payload, at, |piece| is_id.feed(piece))?);
        if payload.get(at) != Some(&b':') {
            return None;
        }
        at = skip_ws(payload, at + 1);
        if is_id.matched() {
            return id_value(payload, at);
        }
        at = skip_ws(payload, skip_value(payload, at)?);
        if payload.get(at) != Some(&b',') {
            return None;
        }
        at = skip_ws(payload, at + 1);
    }
}

/// An id value at `at`: a string or a number, within [`MAX_ID_LEN`].
fn id_value(payload: &[u8], at: usize) -> Option<MessageId> {
    match payload.get(at)? {
        b'"' => {
            let mut text = String::new();
            let mut too_long = false;
            string(payload, at, |piece| {
                too_long |= text.len() + piece.len() > MAX_ID_LEN;
                if !too_long {
                    text.push_str(piece);
                }
            })?;
            (!too_long).then_some(MessageId::Text(text))
        }
        _ => {
            let end = number_end(payload, at)?;
            // Only a delimiter proves the number complete: `01` is no
            // number, and at the window's end `123` may be `1234567`.
            if !matches!(
                payload.get(end),
                Some(b',' | b'}' | b' ' | b'\n' | b'\r' | b'\t')
            ) {
                return None;
            }
            let text = std::str::from_utf8(&payload[at..end]).ok()?;
            Some(MessageId::Number(NumberId::parse(text)?))
        }
    }
}

/// Compares a key, fed in decoded pieces, with `want`, without allocating.
struct KeyMatch {
    want: &'static [u8],
    seen: usize,
    differs: bool,
}

impl KeyMatch {
    fn new(want: &'static [u8]) -> KeyMatch {
        KeyMatch {
            want,
            seen: 0,
            differs: false,
        }
    }

    fn feed(&mut self, piece: &str) {
        let end = self.seen + piece.len();
        self.differs |= self.want.get(self.seen..end) != Some(piece.as_bytes());
        self.seen = end;
    }

    fn matched(&self) -> bool {
        !self.differs && self.seen == self.want.len()
    }
}

/// Decodes the JSON string that starts at `text[at]` (a `"`), handing its
/// content to `sink` in pieces; returns where it ends. None if it is not a
/// string serde_json accepts: unterminated, a raw control character, an
/// unknown escape, a lone surrogate, invalid UTF-8.
fn string(text: &[u8], at: usize, mut sink: impl FnMut(&str)) -> Option<usize> {
    if text.get(at) != Some(&b'"') {
        return None;
    }
    let mut at = at + 1;
    loop {
        let rest = text.get(at..)?;
        let run = rest
            .iter()
            .position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
        sink(std::str::from_utf8(&rest[..run]).ok()?);
        at += run;
        match text[at] {
            b'"' => return Some(at + 1),
            b'\\' => {
                let (c, end) = escape(text, at)?;
                sink(c.encode_utf8(&mut [0; 4]));
                at = end;
            }
            _ => return None,
        }
    }
}

/// The escape at `text[at]` (a backslash): its character and where it ends.
fn escape(text: &[u8], at: usize) -> Option<(char, usize)> {
    let c = match *text.get(at + 1)? {
        b'"' => '"',
        b'\\' => '\\',
        b'/' => '/',
        b'b' => '\u{8}',
        b'f' => '\u{c}',
        b'n' => '\n',
        b'r' => '\r',
        b't' => '\t',
        b'u' => {
            let high = hex4(text, at + 2)?;
            return match high {
                0xD800..=0xDBFF => {
                    // A surrogate pair: the low half must follow at once.
                    if text.get(at + 6..at + 8) != Some(b"\\u") {
                        return None;
                    }
                    let low = hex4(text, at + 8)?;
                    if !(0xDC00..=0xDFFF).contains(&low) {
                        return None;
                    }
                    let c = 0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00);
                    Some((char::from_u32(c)?, at + 12))
                }
                _ => Some((char::from_u32(high)?, at + 6)),
            };
        }
        _ => return None,
    };
    Some((c, at + 2))
}

fn hex4(text: &[u8], at: usize) -> Option<u32> {
    let digits = text.get(at..at + 4)?;
    digits
        .iter()
        .try_fold(0u32, |acc, &b| Some(acc * 16 + char::from(b).to_digit(16)?))
}

/// Where the JSON value starting at `text[at]` ends. Checks the structure
/// (brackets matched, members and elements separated, keys are strings)
/// without recursion: one bit per open container, up to [`MAX_LEVELS`]
/// levels, deeper gives up. Strings are skipped by their quotes, scalars
/// by their grammar.
fn skip_value(text: &[u8], mut at: usize) -> Option<usize> {
    // Bit `d` of `objects` set: the container at depth d+1 is an object.
    let mut objects = [0u64; MAX_LEVELS / 64];
    let mut depth = 0u32;
    loop {
        // A value.
        at = skip_ws(text, at);
        match *text.get(at)? {
            open @ (b'{' | b'[') => {
                if depth as usize == MAX_LEVELS {
                    return None;
                }
                let object = open == b'{';
                let (word, bit) = (depth as usize / 64, depth % 64);
                objects[word] = (objects[word] & !(1 << bit)) | (u64::from(object) << bit);
                depth += 1;
                at = skip_ws(text, at + 1);
                let close = if object { b'}' } else { b']' };
                if text.get(at) != Some(&close) {
                    if object {
                        at = member_key(text, at)?;
                    }
                    continue;
                }
                // Empty: closed below like any other.
            }
            b'"' => {
                at = skip_string(text, at)?;
                if depth == 0 {
                    return Some(at);
                }
                at = skip_ws(text, at);
            }
            b't' | b'f' | b'n' => {
                let word: &[u8] = match text[at] {
                    b't' => b"true",
                    b'f' => b"false",
                    _ => b"null",
                };
                if !text.get(at..)?.starts_with(word) {
                    return None;
                }
                at += word.len();
                if depth == 0 {
                    return Some(at);
                }
                at = skip_ws(text, at);
            }
            _ => {
                at = number_end(text, at)?;
                if depth == 0 {
                    return Some(at);
                }
                at = skip_ws(text, at);
            }
        }
        // After a value inside a container: close containers, or a
        // separator and the next value.
        loop {
            let (word, bit) = ((depth - 1) as usize / 64, (depth - 1) % 64);
            let object = (objects[word] >> bit) & 1 == 1;
            match (*text.get(at)?, object) {
                (b',', false) => {
                    at += 1;
                    break;
                }
                (b',', true) => {
                    at = member_key(text, skip_ws(text, at + 1))?;
                    break;
                }
                (b'}', true) | (b']', false) => {
                    at += 1;
                    depth -= 1;
                    if depth == 0 {
                        return Some(at);
                    }
                    at = skip_ws(text, at);
                }
                _ => return None,
            }
        }
    }
}

/// How deeply [`skip_value`] follows nesting: as deep as the peek window
/// can nest. The decoder skips ignored members of any depth (serde_json
/// skips them without its recursion limit), so peek_id must too, or an id
/// after a deeply nested `"meta"` would be read by the decoder but missed
/// here. 512 bytes of stack; the whole-payload walk of the decoder's error
/// path gives up only past 4096 levels.
const MAX_LEVELS: usize = PEEK_WINDOW;

/// A member's key and colon at `text[at]`: where its value starts.
fn member_key(text: &[u8], at: usize) -> Option<usize> {
    let at = skip_ws(text, skip_string(text, at)?);
    (text.get(at) == Some(&b':')).then_some(at + 1)
}

/// Where the string starting at `text[at]` (a `"`) ends, escapes skipped
/// without being decoded.
fn skip_string(text: &[u8], at: usize) -> Option<usize> {
    if text.get(at) != Some(&b'"') {
        return None;
    }
    let mut at = at + 1;
    loop {
        match *text.get(at)? {
            b'"' => return Some(at + 1),
            b'\\' => at += 2,
            b if b < 0x20 => return None,
            _ => at += 1,
        }
    }
}

fn skip_ws(text: &[u8], mut at: usize) -> usize {
    while let Some(b' ' | b'\n' | b'\r' | b'\t') = text.get(at) {
        at += 1;
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Option<MessageId> {
        Some(MessageId::Text(s.into()))
    }

    fn number(s: &str) -> Option<MessageId> {
        Some(MessageId::Number(NumberId::parse(s).unwrap()))
    }

    #[test]
    fn an_id_first_in_a_large_payload_is_found() {
        let mut payload = br#"{"id":"cam-7/000123","data":["#.to_vec();
        while payload.len() < 2 << 20 {
            payload.extend_from_slice(b"0.123456,");
        }
        payload.extend_from_slice(b"0]}");
        assert_eq!(peek_id(&payload), text("cam-7/000123"));
    }

    #[test]
    fn an_id_beyond_the_window_is_not_found() {
        let values = vec!["0.5"; 1700].join(",");
        let payload = format!(r#"{{"data":[{values}],"id":"late"}}"#);
        assert!(payload.len() > 5000);
        assert_eq!(peek_id(payload.as_bytes()), None);
        // The same id, inside the window, is found; the whole payload
        // (the full decoder's error path) finds it too.
        let short = r#"{"data":[0.5,0.5],"id":"late"}"#;
        assert_eq!(peek_id(short.as_bytes()), text("late"));
        assert_eq!(find_id(payload.as_bytes()), text("late"));
    }

    #[test]
    fn only_a_top_level_id_counts() {
        assert_eq!(peek_id(br#"{"meta":{"id":"inner"},"data":[1]}"#), None);
        assert_eq!(peek_id(br#"{"l":[{"id":1},["id"]],"id":2}"#), number("2"));
        assert_eq!(
            peek_id(br#"{"note":"\"id\":\"fake\"","id":"real"}"#),
            text("real")
        );
        assert_eq!(peek_id(br#"{"note":"\"id\":\"fake\""}"#), None);
        assert_eq!(peek_id(br#"{"x":"id","y":"id"}"#), None);
        assert_eq!(peek_id(br#"{"idx":1,"i":2,"ID":3}"#), None);
    }

    #[test]
    fn string_ids_are_decoded_as_the_decoder_does() {
        assert_eq!(peek_id(br#"{"id":"a\"b\\c\/d"}"#), text("a\"b\\c/d"));
        assert_eq!(peek_id(br#"{"id":"\u00e9\ud83d\ude00\n"}"#), text("é😀\n"));
        assert_eq!(peek_id("{\"id\":\"é\"}".as_bytes()), text("é"));
        // An escaped key is still "id".
        assert_eq!(peek_id(br#"{"\u0069d":"k"}"#), text("k"));
        for bad in [
            &br#"{"id":"\ud83d"}"#[..],
            br#"{"id":"\ude00"}"#,
            br#"{"id":"\x"}"#,
            br#"{"id":"\u12"}"#,
            b"{\"id\":\"a\x01b\"}",
            b"{\"id\":\"\xff\"}",
            br#"{"id":"open"#,
        ] {
            assert_eq!(peek_id(bad), None, "{}", String::from_utf8_lossy(bad));
        }
        let longest = "x".repeat(MAX_ID_LEN);
        let payload = format!(r#"{{"id":"{longest}"}}"#);
        assert_eq!(peek_id(payload.as_bytes()), text(&longest));
        let payload = format!(r#"{{"id":"{longest}y"}}"#);
        assert_eq!(peek_id(payload.as_bytes()), None);
        // The limit is on decoded bytes: 256 escapes of one byte each fit.
        let payload = format!(r#"{{"id":"{}"}}"#, "\\u0041".repeat(MAX_ID_LEN));
        assert_eq!(peek_id(payload.as_bytes()), text(&"A".repeat(MAX_ID_LEN)));
    }

    #[test]
    fn number_ids_keep_their_exact_text() {
        for n in [
            "7",
            "-0",
            "1.50",
            "2.5e-3",
            "1E+2",
            "1000000000000000000000000000000",
            "1e309",
        ] {
            let payload = format!(r#"{{ "id" : {n} , "data":[1]}}"#);
            assert_eq!(peek_id(payload.as_bytes()), number(n), "{payload}");
        }
        for bad in ["01", "1.", "-", "+1", ".5", "0x1", "1e"] {
            let payload = format!(r#"{{"id":{bad},"data":[1]}}"#);
            assert_eq!(peek_id(payload.as_bytes()), None, "{payload}");
        }
        let payload = format!(r#"{{"id":{}}}"#, "9".repeat(MAX_ID_LEN + 1));
        assert_eq!(peek_id(payload.as_bytes()), None);
    }

    #[test]
    fn other_values_and_other_payloads_give_none() {
        for bad in [
            &br#"{"id":null}"#[..],
            br#"{"id":true}"#,
            br#"{"id":[1]}"#,
            br#"{"id":{"a":1}}"#,
            br#"[{"id":1}]"#,
            br#""id""#,
            b"",
            b"   ",
            b"{",
            b"{}",
            b"\x00\x01\x02\xff{\"id\":1}",
            b"\xef\xbb\xbf{\"id\":1}",
            br#"{id:1}"#,
            br#"{"a" 1,"id":1}"#,
            br#"{"a":1 "id":1}"#,
            br#"{"a":[1,],"id":1}"#,
            br#"{"a":[1}],"id":1}"#,
            br#"{"a":tru,"id":1}"#,
        ] {
            assert_eq!(peek_id(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn like_the_decoder_the_first_id_counts_whatever_follows() {
        assert_eq!(peek_id(br#"{"id":1,"id":"two"}"#), number("1"));
        assert_eq!(peek_id(br#"{"id":1,"id":null}"#), number("1"));
        assert_eq!(peek_id(br#"{"id":null,"id":1}"#), None);
        assert_eq!(peek_id(br#"{"id":1,"data":[1,"#), number("1"));
        assert_eq!(peek_id(br#"{"id":"a"} trailing"#), text("a"));
    }

    #[test]
    fn nesting_is_skipped_without_recursion_as_deep_as_the_window_allows() {
        let deep = |n: usize| format!(r#"{{"x":{}{},"id":3}}"#, "[".repeat(n), "]".repeat(n));
        // The decoder takes ignored members of any depth (serde_json skips
        // them without its recursion limit), so deeper than 128 levels the
        // id must still be found: it once was not.
        for n in [128, 129, 1000, 2000] {
            assert_eq!(peek_id(deep(n).as_bytes()), number("3"), "{n} levels");
            let mut b = vec![vec![0u8; 16]];
            let specs = [model_runtime::TensorSpec {
                name: "x".into(),
                shape: vec![1, 4],
                dtype: model_runtime::DType::F32,
                quantization: None,
                shape_signature: vec![1, 4],
            }];
            // The decoder's error path walks the same way to the id the
            // parse never reached.
            let payload = format!(
                r#"{{"x":{}{},"data":[1,2,3,"x"],"id":3}}"#,
                "[".repeat(n),
                "]".repeat(n)
            );
            let (id, _) =
                crate::codec::decode::decode_json(payload.as_bytes(), &specs, &mut b).unwrap_err();
            assert_eq!(id, number("3"), "{n} levels");
        }
        // Only a payload larger than the window nests deeper than it can:
        // the whole-payload walk gives up there.
        assert_eq!(find_id(deep(MAX_LEVELS - 1).as_bytes()), number("3"));
        assert_eq!(find_id(deep(MAX_LEVELS + 1).as_bytes()), None);
        let objects = format!(
            r#"{{"x":{}1{},"id":4}}"#,
            r#"{"a":"#.repeat(300),
            "}".repeat(300)
        );
        assert_eq!(peek_id(objects.as_bytes()), number("4"));
        // Objects and arrays interleaved across the 64-level words.
        let mixed = format!(
            r#"{{"x":{}1{},"id":5}}"#,
            r#"[{"a":"#.repeat(100),
            "}]".repeat(100)
        );
        assert_eq!(peek_id(mixed.as_bytes()), number("5"));
        let broken = format!(
            r#"{{"x":{}1{},"id":5}}"#,
            r#"[{"a":"#.repeat(100),
            "]}".repeat(100)
        );
        assert_eq!(peek_id(broken.as_bytes()), None);
    }
}
