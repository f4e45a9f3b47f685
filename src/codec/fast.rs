//! The fast path of the JSON decoder, for the messages devices really
//! send: `{"id": .., "data": [numbers]}` (or `"inputs"`), read in one pass
//! straight into the input tensors.
//!
//! serde's visitor walk costs about 24 ns per value (a 150,528-value image
//! took 3.6 ms to parse against 0.7 ms to run the model). This path handles
//! only well-formed messages the model accepts and declines anything else
//! (escaped keys, strings or nulls among the values, numbers it cannot
//! convert exactly as the slow path does, a wrong count, a missing input,
//! a duplicate key): the caller then runs the full decoder, which words the
//! precise error. So the two paths never disagree on what is accepted, and
//! every error message comes from one place.

use model_runtime::{DType, TensorSpec};
use serde::de::IgnoredAny;

use super::{quant, MessageId, NumberId, MAX_ID_LEN};

/// Decodes `payload` into `buffers` if it is a well-formed message this
/// model accepts; returns its id. None: run the full decoder instead (the
/// buffers may have been partly written).
pub fn decode(
    payload: &[u8],
    specs: &[TensorSpec],
    buffers: &mut [Vec<u8>],
    max_depth: u32,
) -> Option<Option<MessageId>> {
    // Which inputs got their values, one bit each: no allocation per
    // message. Models with more inputs than bits (or none) take the full
    // decoder.
    if specs.is_empty() || specs.len() > 64 {
        return None;
    }
    let mut filled = 0u64;
    let mut id = None;
    let mut saw_values = false;
    let mut at = skip_ws(payload, 0);
    if payload.get(at) != Some(&b'{') {
        return None;
    }
    at = skip_ws(payload, at + 1);
    if payload.get(at) == Some(&b'}') {
        // No "data": the full decoder says what is missing.
        return None;
    }
    loop {
        let (key, after_key) = plain_string(payload, at)?;
        at = skip_ws(payload, after_key);
        if payload.get(at) != Some(&b':') {
            return None;
        }
        at = skip_ws(payload, at + 1);
        at = match key {
            b"id" if id.is_none() => {
                let (value, end) = message_id(payload, at)?;
                id = Some(value);
                end
            }
            b"data" if !saw_values && specs.len() == 1 => {
                saw_values = true;
                input(payload, at, &specs[0], &mut buffers[0], max_depth)?
            }
            b"inputs" if !saw_values => {
                saw_values = true;
                inputs(payload, at, specs, buffers, &mut filled, max_depth)?
            }
            b"id" | b"data" | b"inputs" => return None,
            _ => {
                // Ignored fields must still be valid JSON, as in the full
                // decoder: find the value's extent, then let serde_json
                // judge exactly that.
                let end = skip_value(payload, at)?;
                serde_json::from_slice::<IgnoredAny>(&payload[at..end]).ok()?;
                end
            }
        };
        at = skip_ws(payload, at);
        match payload.get(at)? {
            b',' => at = skip_ws(payload, at + 1),
            b'}' => break,
            _ => return None,
        }
    }
    if !saw_values || skip_ws(payload, at + 1) != payload.len() {
        return None;
    }
    if specs.len() == 1 {
        filled = 1;
    }
    (filled == u64::MAX >> (64 - specs.len())).then_some(id)
}

/// One input's values; they must be exactly as many as the tensor holds.
fn input(
    payload: &[u8],
    at: usize,
    spec: &TensorSpec,
    buf: &mut [u8],
    max_depth: u32,
) -> Option<usize> {
    let (q, n) = (spec.quantization, spec.element_count());
    // One loop per common type, so the per-value store has no type switch.
    macro_rules! fill_as {
        ($dtype:expr) => {
            fill(payload, at, max_depth, |i, x| {
                if i < n {
                    quant::store($dtype, q, buf, i, x);
                }
            })
        };
    }
    let (count, end) = match spec.dtype {
        DType::I8 => fill_as!(DType::I8),
        DType::U8 => fill_as!(DType::U8),
        DType::F32 => fill_as!(DType::F32),
        other => fill_as!(other),
    }?;
    (count == n).then_some(end)
}

/// `"inputs"`: a list in model order or an object keyed by input name.
fn inputs(
    payload: &[u8],
    mut at: usize,
    specs: &[TensorSpec],
    buffers: &mut [Vec<u8>],
    filled: &mut u64,
    max_depth: u32,
) -> Option<usize> {
    let open = *payload.get(at)?;
    let close = match open {
        b'[' => b']',
        b'{' => b'}',
        _ => return None,
    };
    at = skip_ws(payload, at + 1);
    for n in 0.. {
        let i = if open == b'[' {
            n
        } else {
            let (name, after) = plain_string(payload, at)?;
            at = skip_ws(payload, after);
            if payload.get(at) != Some(&b':') {
                return None;
            }
            at = skip_ws(payload, at + 1);
            specs.iter().position(|s| s.name.as_bytes() == name)?
        };
        if i >= specs.len() || *filled & (1 << i) != 0 {
            return None;
        }
        *filled |= 1 << i;
        at = skip_ws(
            payload,
            input(payload, at, &specs[i], &mut buffers[i], max_depth)?,
        );
        match *payload.get(at)? {
            b',' => at = skip_ws(payload, at + 1),
            c if c == close => return Some(at + 1),
            _ => return None,
        }
    }
    None
}

/// A string without escapes or control characters, as keys and ids are:
/// its bytes and where it ends. Anything else goes to the full decoder.
fn plain_string(payload: &[u8], at: usize) -> Option<(&[u8], usize)> {
    if payload.get(at) != Some(&b'"') {
        return None;
    }
    let rest = payload.get(at + 1..)?;
    let len = rest
        .iter()
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
    if rest[len] != b'"' {
        return None;
    }
    std::str::from_utf8(&rest[..len]).ok()?;
    Some((&rest[..len], at + 1 + len + 1))
}

/// `"id"`: a plain string of at most MAX_ID_LEN bytes, or a number's text
/// (at most MAX_ID_LEN bytes), kept as written.
fn message_id(payload: &[u8], at: usize) -> Option<(MessageId, usize)> {
    match payload.get(at)? {
        b'"' => {
            let (s, end) = plain_string(payload, at)?;
            if s.len() > MAX_ID_LEN {
                return None;
            }
            let s = std::str::from_utf8(s).ok()?;
            Some((MessageId::Text(s.to_owned()), end))
        }
        b'-' | b'0'..=b'9' => {
            let (_, end) = number(payload, at)?;
            let text = std::str::from_utf8(&payload[at..end]).ok()?;
            Some((MessageId::Number(NumberId::parse(text)?), end))
        }
        _ => None,
    }
}

/// Where the JSON value starting at `at` (a member of an object) ends,
/// found by matching brackets and strings only: the caller has serde_json
/// validate exactly that extent.
fn skip_value(payload: &[u8], mut at: usize) -> Option<usize> {
    let mut depth = 0usize;
    loop {
        let b = *payload.get(at)?;
        match b {
            b'"' => {
                at += 1;
                loop {
                    match *payload.get(at)? {
                        b'\\' => at += 2,
                        b'"' => break,
                        _ => at += 1,
                    }
                }
                at += 1;
            }
            b'[' | b'{' => {
                depth += 1;
                at += 1;
            }
            // The end of the enclosing object, or a member separator:
            // a scalar ended just before.
            b']' | b'}' | b',' if depth == 0 => return Some(at),
            b']' | b'}' => {
                depth -= 1;
                at += 1;
            }
            _ => at += 1,
        }
        if depth == 0 && matches!(b, b'"' | b']' | b'}') {
            return Some(at);
        }
    }
}

/// Powers of ten exactly representable as f64.
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// Largest integer below which every integer is exact in an f64.
const EXACT_MANTISSA: u64 = 1 << 53;

/// Walks the array that starts at `text[start]`, calling `store(index,
/// value)` for every number in document order. Returns how many numbers
/// there were and where the array ends, or None if it is anything but
/// arrays of finite float32 numbers nested at most `max_depth` arrays
/// deep, the outermost included.
///
/// Each number is converted exactly as serde_json + `as f32` would (to the
/// nearest f64, then to f32), so the fast and slow paths agree.
///
/// Why it is written this way (MobileNetV2's 150,528-number image, 958 KB;
/// in-process medians on the benchmark machine, timing the benchmark's
/// payloads; the benchmark's `pre` stage is the figure to watch now):
/// reading the array byte by byte, each number's end had to be found
/// before the next could start, and the exits of its digit loops
/// (1 to 4 fraction digits, a sign half the time) were mispredicted, so
/// nothing overlapped: ~25 ns a number. Here the separators (`,` `[` `]`)
/// of 64 bytes at a time are found first ([`Separators`]), so every
/// number's bounds are known before it is read; a number of up to 16
/// bytes is then read without a loop or a data-dependent branch ([`short`],
/// [`long`]) and the work of consecutive numbers overlaps. Anything else
/// between two separators (whitespace, exponents, longer numbers, junk)
/// goes through [`token`].
pub fn fill(
    text: &[u8],
    start: usize,
    max_depth: u32,
    store: impl FnMut(usize, f32),
) -> Option<(usize, usize)> {
    #[cfg(target_arch = "x86_64")]
    if x86_64_v3() {
        // SAFETY: the CPU has every feature `fill_v3` is compiled for.
        return unsafe { fill_v3(text, start, max_depth, store) };
    }
    fill_any(text, start, max_depth, store)
}

/// Whether this CPU is x86-64-v3 (AVX2, BMI1, BMI2, LZCNT: every x86
/// gateway of the last decade). std checks once and caches the answer.
#[cfg(target_arch = "x86_64")]
fn x86_64_v3() -> bool {
    std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("bmi1")
        && std::arch::is_x86_feature_detected!("bmi2")
        && std::arch::is_x86_feature_detected!("lzcnt")
}

/// [`fill_any`] compiled for x86-64-v3. The release binary targets
/// baseline x86-64, where `trailing_zeros` is a `bsf` with a zero check
/// and the variable shifts take their count in `cl`; here they are
/// `tzcnt`, `blsr` and `shlx`. MobileNetV2's 958 KB JSON image decodes in
/// 1.80 ms against 1.90 for the baseline build (in-process minimum of 400
/// decodes, AMD EPYC). The float arithmetic gives the same IEEE results
/// (Rust never fuses or reorders float operations), so both read every
/// number alike, as a test checks.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,bmi1,bmi2,lzcnt")]
fn fill_v3(
    text: &[u8],
    start: usize,
    max_depth: u32,
    store: impl FnMut(usize, f32),
) -> Option<(usize, usize)> {
    fill_any(text, start, max_depth, store)
}

#[inline(always)]
fn fill_any(
    text: &[u8],
    start: usize,
    max_depth: u32,
    mut store: impl FnMut(usize, f32),
) -> Option<(usize, usize)> {
    if text.get(start) != Some(&b'[') {
        return None;
    }
    // Numbers of up to 16 bytes after a sign (float32s printed in full,
    // `0.0917029`, as the HAR benchmark sends them) are read between
    // separators by [`short`] and [`long`]. Longer ones (float64s printed
    // in full, `0.13254721298082472`, as Python's `json.dumps` writes
    // them) gain nothing from knowing their bounds first, and a
    // byte-by-byte walk of a few hundred of them, its branches learned,
    // was faster. In-process minimum per 4 KB message of 384 random
    // readings, 256 messages in turn: float32s 6.9 us between separators
    // against 9.3 walked; float64s 18.8 walked against 21.3. The first
    // element decides.
    let first = text.get(start + 1..).unwrap_or_default();
    let first_len = first
        .iter()
        .take(19)
        .position(|&b| matches!(b, b',' | b'[' | b']'));
    if first_len.is_none_or(|len| len > 16 + usize::from(first.first() == Some(&b'-'))) {
        return walk_bytes(text, start, max_depth, store);
    }
    let mut separators = Separators::new(text, start + 1);
    // Arrays open below the outermost one.
    let mut depth = 0u32;
    let mut count = 0usize;
    // The separator before the current token, and its byte.
    let mut prev = start;
    let mut prev_byte = b'[';
    loop {
        let at = separators.next()?;
        let byte = text[at];
        // The common case: `[` or `,`, a short number, `,`. One space after
        // the `,` (Python's json.dumps) is skipped here too.
        if byte == b',' && prev_byte != b']' {
            let from = prev + 1 + usize::from(text[prev + 1] == b' ');
            if let Some(v) = short(text, from, at).or_else(|| long(text, from, at)) {
                // Below 1e8: always finite in float32.
                store(count, v as f32);
                count += 1;
                prev = at;
                prev_byte = b',';
                continue;
            }
        }
        if !matches!(byte, b',' | b'[' | b']') {
            return None;
        }
        match token(text, prev + 1, at)? {
            Some(v) => {
                // A value follows `[` or `,` and is followed by `,` or `]`.
                if prev_byte == b']' || byte == b'[' {
                    return None;
                }
                let x = v as f32;
                if !x.is_finite() {
                    return None;
                }
                store(count, x);
                count += 1;
            }
            None => match (prev_byte, byte) {
                (b'[' | b',', b'[') => {
                    depth += 1;
                    if depth >= max_depth {
                        return None;
                    }
                }
                // An empty array, or a closed array then `,` or `]`.
                (b'[', b']') | (b']', b',' | b']') => {}
                // `[,` `,,` `,]` `][`
                _ => return None,
            },
        }
        if byte == b']' {
            if depth == 0 {
                return Some((count, at + 1));
            }
            depth -= 1;
        }
        prev = at;
        prev_byte = byte;
    }
}

/// [`fill`] byte by byte, for arrays of long numbers.
fn walk_bytes(
    text: &[u8],
    start: usize,
    max_depth: u32,
    mut store: impl FnMut(usize, f32),
) -> Option<(usize, usize)> {
    let mut at = start;
    if text.get(at) != Some(&b'[') {
        return None;
    }
    at += 1;
    // Arrays open below the outermost one.
    let mut depth = 0u32;
    let mut count = 0usize;
    // Just after '[': a value or an immediate ']'.
    let mut after_open = true;
    loop {
        at = skip_ws(text, at);
        match *text.get(at)? {
            b'[' => {
                depth += 1;
                if depth >= max_depth {
                    return None;
                }
                at += 1;
                after_open = true;
                continue;
            }
            // An empty array: closed by the loop below like any other.
            b']' if after_open => {}
            b'-' | b'0'..=b'9' => {
                let (v, end) = number(text, at)?;
                let x = v as f32;
                if !x.is_finite() {
                    return None;
                }
                store(count, x);
                count += 1;
                at = end;
            }
            _ => return None,
        }
        after_open = false;
        // After a complete value: ',' then another value, or close arrays.
        loop {
            at = skip_ws(text, at);
            match *text.get(at)? {
                b',' => {
                    at += 1;
                    break;
                }
                b']' if depth == 0 => return Some((count, at + 1)),
                b']' => {
                    depth -= 1;
                    at += 1;
                }
                _ => return None,
            }
        }
    }
}

/// The positions of the bytes `,` `[` `]` (and of `Y` `_`, which no
/// number array holds: the caller declines them) from a given position on,
/// in order. Strings are not tracked: a separator inside one splits a
/// token that is then not a number, and the array is declined.
struct Separators<'a> {
    text: &'a [u8],
    /// Where the current 64-byte block starts.
    base: usize,
    /// One bit per byte of the block not yet returned.
    mask: u64,
}

impl<'a> Separators<'a> {
    fn new(text: &'a [u8], from: usize) -> Self {
        Separators {
            text,
            base: from,
            mask: block_mask(text, from),
        }
    }

    #[inline(always)]
    fn next(&mut self) -> Option<usize> {
        while self.mask == 0 {
            self.base += 64;
            if self.base >= self.text.len() {
                return None;
            }
            self.mask = block_mask(self.text, self.base);
        }
        let at = self.base + self.mask.trailing_zeros() as usize;
        self.mask &= self.mask - 1;
        Some(at)
    }
}

/// Bit i set if `text[from + i]` is a separator, for the 64 bytes from
/// `from` (fewer at the end of the text).
#[inline(always)]
fn block_mask(text: &[u8], from: usize) -> u64 {
    match text
        .get(from..from + 64)
        .and_then(|bytes| <&[u8; 64]>::try_from(bytes).ok())
    {
        Some(block) => separators_in(block),
        None => {
            let mut block = [0u8; 64];
            let rest = text.get(from..).unwrap_or_default();
            block[..rest.len()].copy_from_slice(rest);
            separators_in(&block)
        }
    }
}

/// x86-64: four 16-byte compares and `pmovmskb`, which SSE2 (part of
/// every x86-64) has. The portable version below took MobileNetV2's JSON
/// image from 1.90 to 2.04 ms, and to 2.40 ms in the x86-64-v3 build.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn separators_in(block: &[u8; 64]) -> u64 {
    use std::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
    };
    let mut mask = 0u64;
    for (k, sixteen) in block.chunks_exact(16).enumerate() {
        // SAFETY: SSE2 is part of every x86-64 CPU; `sixteen` is 16
        // readable bytes and the load has no alignment requirement.
        let bits = unsafe {
            let v = _mm_loadu_si128(sixteen.as_ptr().cast::<__m128i>());
            let comma = _mm_cmpeq_epi8(v, _mm_set1_epi8(b',' as i8));
            // `[` 0x5B and `]` 0x5D (and `Y` 0x59, `_` 0x5F) in one compare.
            let bracket = _mm_cmpeq_epi8(_mm_or_si128(v, _mm_set1_epi8(6)), _mm_set1_epi8(0x5F));
            _mm_movemask_epi8(_mm_or_si128(comma, bracket)) as u16
        };
        mask |= u64::from(bits) << (16 * k);
    }
    mask
}

/// Elsewhere: written so the compiler can use vector compares for the
/// first loop; the bytes' flags are then gathered eight at a time by one
/// multiplication.
#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn separators_in(block: &[u8; 64]) -> u64 {
    separators_in_any(block)
}

#[cfg(any(test, not(target_arch = "x86_64")))]
#[inline(always)]
fn separators_in_any(block: &[u8; 64]) -> u64 {
    let mut flags = [0u8; 64];
    for (f, &c) in flags.iter_mut().zip(block) {
        // `[` 0x5B and `]` 0x5D (and `Y` 0x59, `_` 0x5F) in one compare.
        *f = u8::from(c == b',') | u8::from((c | 6) == 0x5F);
    }
    let mut mask = 0u64;
    for (k, eight) in flags.chunks_exact(8).enumerate() {
        let mut b = [0u8; 8];
        b.copy_from_slice(eight);
        // Byte i's 0 or 1 lands in bit 56 + i; no two products overlap.
        let bits = u64::from_le_bytes(b).wrapping_mul(0x0102_0408_1020_4080) >> 56;
        mask |= bits << (8 * k);
    }
    mask
}

/// The text between two separators, `text[from..end]`: Some(None) if it
/// is only whitespace, Some(Some(value)) if it is one JSON number with
/// optional whitespace around it, None if anything else.
fn token(text: &[u8], from: usize, end: usize) -> Option<Option<f64>> {
    let start = skip_ws(&text[..end], from);
    if start == end {
        return Some(None);
    }
    if !matches!(text[start], b'-' | b'0'..=b'9') {
        return None;
    }
    let (v, after) = number(text, start)?;
    (skip_ws(&text[..end], after) == end).then_some(Some(v))
}

/// `text[from..end]` if it is a JSON number of at most 8 bytes after an
/// optional `-`, with no exponent: `-?digits` or `-?digits.digits`, read
/// from one 8-byte word without a loop. None for anything else, valid or
/// not: the caller then takes the general path ([`token`]).
///
/// The value is [`number`]'s: at most 8 digits, at most 6 after the '.',
/// so Clinger's fast path (an exact integer over an exact power of ten,
/// one rounding) applies to all of them.
#[inline(always)]
fn short(text: &[u8], from: usize, end: usize) -> Option<f64> {
    let negative = *text.get(from)? == b'-';
    let at = from + usize::from(negative);
    let t = digit_word(text.get(at..at + 8)?);
    let len = end.wrapping_sub(at);
    if len.wrapping_sub(1) >= 8 {
        return None;
    }
    let len = len as u32;
    let nondigit = nondigits(t);
    // Where the first and the second non-digit are (8: none). The byte at
    // `len` is the separator (or past the word), so the first is at `len`
    // or beyond exactly when all `len` bytes are digits.
    let first = nondigit.trailing_zeros() / 8;
    let second = (nondigit & nondigit.wrapping_sub(1)).trailing_zeros() / 8;
    let shift = (8 * first) & 63;
    let integer = first >= len;
    // One '.', with digits before and after it and nothing else.
    let fraction =
        ((t >> shift) as u8 == 0x1E) & (first >= 1) & (first + 2 <= len) & (second >= len);
    let int_digits = if integer { len } else { first };
    // JSON: no leading zero before more integer digits.
    let leading_zero = (int_digits > 1) & (t as u8 == 0);
    if !(integer | fraction) | leading_zero {
        return None;
    }
    let (digits, exp) = if integer {
        (t, 0)
    } else {
        (squeeze_dot(t, shift), len - first - 1)
    };
    let value = exact_f64(digits_value(digits, len)) / POW10[exp as usize];
    Some(signed(value, negative))
}

/// `text[from..end]` if it is a JSON number of 9 to 16 bytes after an
/// optional `-`, of the form `digits.digits` with 1 to 7 digits before
/// the '.': float32 readings printed in full (`0.0917029`,
/// `-0.0074718054`). Read from two 8-byte words, as [`short`] reads one.
/// None for anything else (the caller then takes [`token`]).
///
/// The value is [`number`]'s: at most 15 digits, so the mantissa is
/// exact and Clinger's fast path applies.
#[inline(always)]
fn long(text: &[u8], from: usize, end: usize) -> Option<f64> {
    let negative = *text.get(from)? == b'-';
    let at = from + usize::from(negative);
    let len = end.wrapping_sub(at);
    if len.wrapping_sub(9) >= 8 {
        return None;
    }
    let len = len as u32;
    let words = text.get(at..at + 16)?;
    let (t, u) = (digit_word(&words[..8]), digit_word(&words[8..]));
    // The '.' is the first word's only non-digit, after 1 to 7 digits;
    // the second word's first `len - 8` bytes are digits.
    let in_first = nondigits(t);
    let first = in_first.trailing_zeros() / 8;
    let shift = (8 * first) & 63;
    let dot = ((t >> shift) as u8 == 0x1E) & (1..=7).contains(&first);
    let only_one = (in_first & in_first.wrapping_sub(1)) == 0;
    let rest = len - 8;
    let second_digits = nondigits(u).trailing_zeros() / 8 >= rest;
    // JSON: no leading zero before more integer digits.
    let leading_zero = (first > 1) & (t as u8 == 0);
    if !(dot & only_one & second_digits) | leading_zero {
        return None;
    }
    // Seven digits in the first word once the '.' is out, then `rest`.
    let mantissa =
        digits_value(squeeze_dot(t, shift), 8) * POW10_U64[rest as usize] + digits_value(u, rest);
    let value = exact_f64(mantissa) / POW10[(len - first - 1) as usize];
    Some(signed(value, negative))
}

/// Eight bytes of text as one word, in text order (first byte lowest),
/// each XORed with b'0': the digits become 0..=9 and '.' 0x1E. XOR, not a
/// subtraction, so no byte borrows from the next.
#[inline(always)]
fn digit_word(eight: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(eight);
    u64::from_le_bytes(b) ^ 0x3030_3030_3030_3030
}

/// Bit 7 of each byte of a [`digit_word`] that is not a digit. A byte
/// above 0x89 carries into the next one, which can only flag a byte after
/// a non-digit that is not the '.', where the number is refused anyway.
#[inline(always)]
fn nondigits(w: u64) -> u64 {
    (w | w.wrapping_add(0x7676_7676_7676_7676)) & 0x8080_8080_8080_8080
}

/// `w` with its '.' at bit `shift` squeezed out: the integer digits move
/// up one byte over it and a 0 takes their place at the front.
#[inline(always)]
fn squeeze_dot(w: u64, shift: u32) -> u64 {
    let below = (1u64 << shift) - 1;
    ((w & below) << 8) | (w & !((below << 8) | 0xFF))
}

/// `value` (>= +0.0) negated if `negative` by setting its sign bit (-0
/// stays -0): a branch on the sign would be mispredicted half the time.
#[inline(always)]
fn signed(value: f64, negative: bool) -> f64 {
    f64::from_bits(value.to_bits() | (u64::from(negative) << 63))
}

/// Powers of ten up to 10^8, for joining groups of digits.
const POW10_U64: [u64; 9] = [
    1,
    10,
    100,
    1_000,
    10_000,
    100_000,
    1_000_000,
    10_000_000,
    100_000_000,
];

/// The number whose decimal digits are the first `k` (1..=8) bytes of
/// `v`, each 0..=9, the first digit in the lowest byte.
#[inline(always)]
fn digits_value(v: u64, k: u32) -> u64 {
    // Drop the bytes past the number, then pair the digits up: 10s, then
    // 100s, then 10,000s, each step one multiply.
    let v = v << (64 - 8 * k);
    let v = v.wrapping_mul(10).wrapping_add(v >> 8);
    ((v & 0x0000_00FF_0000_00FF)
        .wrapping_mul(100 + (1_000_000 << 32))
        .wrapping_add(((v >> 16) & 0x0000_00FF_0000_00FF).wrapping_mul(1 + (10_000 << 32))))
        >> 32
}

/// `m as f64` for m < 2^52, exactly. Not `as`: cvtsi2sd writes half of its
/// register and so waits for that register's last writer, which the
/// compiler may pick from the previous number's quantization, chaining
/// every number's float work into one serial dependency.
#[inline(always)]
fn exact_f64(m: u64) -> f64 {
    const TWO_52: f64 = 4_503_599_627_370_496.0;
    f64::from_bits(m | TWO_52.to_bits()) - TWO_52
}

#[inline]
pub fn skip_ws(text: &[u8], mut at: usize) -> usize {
    while let Some(b' ' | b'\n' | b'\r' | b'\t') = text.get(at) {
        at += 1;
    }
    at
}

/// Reads the JSON number starting at `start`: its value and where it ends.
#[inline]
pub fn number(text: &[u8], start: usize) -> Option<(f64, usize)> {
    let mut at = start;
    let negative = text[at] == b'-';
    at += usize::from(negative);
    // Up to 19 digits fit a u64 exactly; longer numbers take the fallback.
    let mut mantissa = 0u64;
    let int_start = at;
    while let Some(&d @ b'0'..=b'9') = text.get(at) {
        mantissa = mantissa.wrapping_mul(10).wrapping_add(u64::from(d - b'0'));
        at += 1;
    }
    let int_digits = at - int_start;
    // JSON: at least one integer digit, and no leading zero before more.
    if int_digits == 0 || (int_digits > 1 && text[int_start] == b'0') {
        return None;
    }
    let mut frac_digits = 0;
    if text.get(at) == Some(&b'.') {
        at += 1;
        let frac_start = at;
        while let Some(&d @ b'0'..=b'9') = text.get(at) {
            mantissa = mantissa.wrapping_mul(10).wrapping_add(u64::from(d - b'0'));
            at += 1;
        }
        frac_digits = at - frac_start;
        if frac_digits == 0 {
            return None;
        }
    }
    let mut exp10 = -(frac_digits as i64);
    if let Some(b'e' | b'E') = text.get(at) {
        at += 1;
        let exp_negative = text.get(at) == Some(&b'-');
        if let Some(b'-' | b'+') = text.get(at) {
            at += 1;
        }
        let exp_start = at;
        let mut e = 0i64;
        while let Some(&d @ b'0'..=b'9') = text.get(at) {
            // Capped far beyond any f64 exponent; the fallback parses.
            e = (e * 10 + i64::from(d - b'0')).min(1 << 32);
            at += 1;
        }
        if at == exp_start {
            return None;
        }
        exp10 += if exp_negative { -e } else { e };
    }
    let digits = int_digits + frac_digits;
    let value = if digits <= 19 && mantissa == 0 {
        0.0
    } else if digits <= 19 && mantissa <= EXACT_MANTISSA && (-22..=22).contains(&exp10) {
        // Clinger's fast path: both operands exact, so the one rounding of
        // the multiply or divide gives the correctly rounded result.
        let m = mantissa as f64;
        if exp10 >= 0 {
            m * POW10[exp10 as usize]
        } else {
            m / POW10[(-exp10) as usize]
        }
    } else {
        // Rare (long or extreme numbers): the standard library's correctly
        // rounded parser on the token (sign included).
        return std::str::from_utf8(&text[start..at])
            .ok()?
            .parse::<f64>()
            .ok()
            .map(|v| (v, at));
    };
    Some((if negative { -value } else { value }, at))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(text: &str) -> Option<Vec<f32>> {
        let mut out = Vec::new();
        let bytes = text.as_bytes();
        let (n, end) = fill(bytes, skip_ws(bytes, 0), 16, |i, x| {
            assert_eq!(i, out.len());
            out.push(x);
        })?;
        assert_eq!(n, out.len());
        // The whole text must be the one array.
        (skip_ws(bytes, end) == bytes.len()).then_some(out)
    }

    /// What the visitor path computes: serde_json's f64, then `as f32`.
    fn reference(token: &str) -> f32 {
        let v: serde_json::Value = serde_json::from_str(token).unwrap();
        v.as_f64().unwrap() as f32
    }

    #[test]
    fn reads_flat_and_nested_arrays() {
        assert_eq!(all("[1,2,3]"), Some(vec![1.0, 2.0, 3.0]));
        assert_eq!(
            all(" [ [ -0.6875 , 0.25 ] , [ 1e2, -2E-1 ] ] "),
            Some(vec![-0.6875, 0.25, 100.0, -0.2])
        );
        assert_eq!(all("[]"), Some(vec![]));
        assert_eq!(all("[[],[1],[]]"), Some(vec![1.0]));
        assert_eq!(all("[-0]").map(|v| v[0].is_sign_negative()), Some(true));
    }

    #[test]
    fn declines_what_the_visitor_must_word() {
        for text in [
            r#"["1"]"#, "[null]", "[true]", "[{}]", "[1e39]", "[-1e39]", "12", r#""a""#, "[01]",
            "[1.]", "[.5]", "[1,]", "[,1]", "[1 2]", "[1]]", "[[1]", "[1] x", "[+1]", "[1e]",
        ] {
            assert_eq!(all(text), None, "{text}");
        }
    }

    #[test]
    fn nesting_beyond_the_limit_is_declined() {
        let ok = format!("{}1{}", "[".repeat(16), "]".repeat(16));
        assert!(all(&ok).is_some());
        let deep = format!("{}1{}", "[".repeat(17), "]".repeat(17));
        assert_eq!(all(&deep), None);
    }

    #[test]
    fn numbers_convert_exactly_as_the_slow_path_does() {
        let tokens = [
            "0",
            "-0.0",
            "0.1",
            "-0.6875",
            "3.4028234e38",
            "1.17549435e-38",
            "1e-45",
            "123456789012345678",
            "1234567890123456789012",
            "0.000000000000000000000000001",
            "2.5e-3",
            "9007199254740993",
            "0.30000000000000004",
            "1E+2",
            "255",
            "-128",
            "1e-400",
            "4.9406564584124654e-324",
        ];
        for t in tokens {
            let got = all(&format!("[{t}]")).unwrap()[0];
            assert_eq!(got.to_bits(), reference(t).to_bits(), "{t}");
        }
        // A deterministic sweep of short decimals, as sensors and image
        // encoders print them.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let digits = (x % 1_000_000_000) as i64 - 500_000_000;
            let scale = (x >> 40) % 12;
            let t = format!("{}e-{scale}", digits);
            let got = all(&format!("[{t}]")).unwrap()[0];
            assert_eq!(got.to_bits(), reference(&t).to_bits(), "{t}");
        }
    }

    /// Every string of up to 5 bytes over `-.0123456789`, and random ones
    /// up to 17: `short` and `long` read a token only as [`number`] does
    /// (same value bits, the whole token), and they read every token of
    /// their forms, so the common numbers really take the loop-free paths.
    #[test]
    fn short_and_long_read_exactly_what_number_reads() {
        const ALPHABET: &[u8] = b"-.0123456789";
        let check = |token: &[u8]| {
            // The separator after the token, then room for the loads.
            let mut text = token.to_vec();
            text.extend_from_slice(b",xxxxxxxxxxxxxxxx");
            let whole = number(&text, 0).filter(|&(_, end)| end == token.len());
            let shown = String::from_utf8_lossy(token);
            let digits = token.strip_prefix(b"-").unwrap_or(token);
            let exponent = digits.iter().any(|b| b.eq_ignore_ascii_case(&b'e'));
            let int_digits = digits.iter().take_while(|b| b.is_ascii_digit()).count();
            let forms = [
                ("short", short(&text, 0, token.len()), digits.len() <= 8),
                (
                    "long",
                    long(&text, 0, token.len()),
                    (9..=16).contains(&digits.len())
                        && (1..=7).contains(&int_digits)
                        && digits.contains(&b'.'),
                ),
            ];
            for (name, got, form) in forms {
                match got {
                    Some(v) => {
                        let (want, _) = whole.unwrap_or_else(|| panic!("{name} took {shown:?}"));
                        assert_eq!(v.to_bits(), want.to_bits(), "{name}: {shown}");
                    }
                    None => assert!(
                        !(whole.is_some() && form && !exponent),
                        "{name} declined {shown:?}"
                    ),
                }
            }
        };
        let mut token = Vec::new();
        for len in 1..=5u32 {
            for mut n in 0..ALPHABET.len().pow(len) {
                token.clear();
                for _ in 0..len {
                    token.push(ALPHABET[n % ALPHABET.len()]);
                    n /= ALPHABET.len();
                }
                check(&token);
            }
        }
        let mut rng = crate::robustness::Rng::new(0x0005_eedf_10a7);
        for _ in 0..400_000 {
            token.clear();
            if rng.one_in(2) {
                // As float32 readings are printed: `-?d+.d+`.
                if rng.one_in(2) {
                    token.push(b'-');
                }
                for _ in 0..1 + rng.below(9) {
                    token.push(b'0' + rng.below(10) as u8);
                }
                token.push(b'.');
                for _ in 0..1 + rng.below(12) {
                    token.push(b'0' + rng.below(10) as u8);
                }
            } else {
                for _ in 0..6 + rng.below(12) {
                    // Mostly digits, so long valid numbers come up often.
                    let b = if rng.one_in(6) {
                        *rng.pick(b"-.eE+ x")
                    } else {
                        b'0' + rng.below(10) as u8
                    };
                    token.push(b);
                }
            }
            check(&token);
        }
    }

    /// The payloads the benchmark sends (MobileNetV2's `noise` case
    /// printed as float32 like `edge-infer-bench`, with both separators,
    /// and HAR's) decode on the fast path, to the same bytes and id as the
    /// full decoder gives. (Their speed is the benchmark's `pre` stage.)
    #[test]
    fn the_benchmark_payloads_decode_as_the_full_decoder_does() {
        use model_runtime::{DType, Quantization, TensorSpec};

        fn payload(fixture: &str, case: &str, separator: &str) -> Vec<u8> {
            let path = format!("{}/tests/fixtures/{fixture}", env!("CARGO_MANIFEST_DIR"));
            let doc: serde_json::Value =
                serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
            let case = doc["cases"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["name"] == case)
                .unwrap();
            let values: Vec<String> = case["inputs"][0]["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| (v.as_f64().unwrap() as f32).to_string())
                .collect();
            format!(r#"{{"id":17,"data":[{}]}}"#, values.join(separator)).into_bytes()
        }
        let spec = |shape: &[usize], scale: f32| TensorSpec {
            name: "x".into(),
            shape: shape.to_vec(),
            dtype: DType::I8,
            quantization: Some(Quantization {
                scale,
                zero_point: -1,
            }),
            shape_signature: shape.iter().map(|&d| d as i64).collect(),
        };
        let mnv2 = spec(&[1, 224, 224, 3], 0.007_843_133);
        let har = spec(&[1, 128, 3], 0.045_965_016);
        let cases = [
            (
                "mnv2_json",
                payload("mobilenet_v2_int8.json", "noise", ","),
                &mnv2,
            ),
            (
                "mnv2_json with \", \" separators",
                payload("mobilenet_v2_int8.json", "noise", ", "),
                &mnv2,
            ),
            (
                "har_json",
                payload("har_accel_int8.json", "walking", ","),
                &har,
            ),
            (
                "har_json with \", \" separators",
                payload("har_accel_int8.json", "walking", ", "),
                &har,
            ),
        ];
        for (name, text, spec) in cases {
            let specs = std::slice::from_ref(spec);
            let mut fast = vec![vec![0u8; spec.byte_len()]];
            let mut full = vec![vec![0u8; spec.byte_len()]];
            let id = decode(&text, specs, &mut fast, 16);
            let expected = super::super::decode::decode_json_full(&text, specs, &mut full)
                .unwrap_or_else(|(_, f)| panic!("{name}: {}", f.message));
            assert_eq!(id, Some(expected.id), "{name}: declined or another id");
            assert!(
                fast == full,
                "{name}: other tensor bytes than the full decoder's"
            );
        }
    }

    /// The x86-64-v3 build of the walk and the portable one read every
    /// array alike, and the two ways of finding separators agree on every
    /// block: numbers short and long, whitespace, nesting, junk.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_x86_64_v3_build_reads_as_the_portable_one() {
        let pieces = [
            "0",
            "-0",
            "1",
            "-0.6875",
            "0.25",
            "127",
            "255",
            "-128",
            "0.0917029",
            "1e2",
            "-2E-1",
            "3.4028234e38",
            "12345678",
            "1.000001",
            "-1.5",
            "-0.0074718054",
            "1234567.12345678",
            "0.13254721298082472",
            "[",
            "]",
            "[]",
            ",",
            " ",
            "\n",
            "x",
            "\"",
            "01",
            "1.",
            "_",
            "Y",
        ];
        let mut rng = crate::robustness::Rng::new(16);
        for case in 0..20_000 {
            let mut text = String::from("[");
            let n = rng.below(if case % 100 == 0 { 3_000 } else { 40 });
            for i in 0..n {
                if i > 0 && !rng.one_in(50) {
                    text.push(',');
                }
                // Mostly numbers, so most arrays are read to the end.
                if rng.one_in(20) {
                    let piece = *rng.pick::<&str>(&pieces);
                    text.push_str(piece);
                } else {
                    let piece = *rng.pick::<&str>(&pieces[..18]);
                    text.push_str(piece);
                }
            }
            text.push(']');
            let bytes = text.as_bytes();
            let (mut any, mut v3) = (Vec::new(), Vec::new());
            let by_any = fill_any(bytes, 0, 4, |i, x| any.push((i, x.to_bits())));
            let by_v3 = fill(bytes, 0, 4, |i, x| v3.push((i, x.to_bits())));
            assert_eq!((by_any, any), (by_v3, v3), "{text}");
            for block in bytes.chunks(64) {
                let mut padded = [0u8; 64];
                padded[..block.len()].copy_from_slice(block);
                assert_eq!(separators_in(&padded), separators_in_any(&padded), "{text}");
            }
        }
        let mut block = [0u8; 64];
        for _ in 0..100_000 {
            block.iter_mut().for_each(|b| *b = rng.byte());
            assert_eq!(separators_in(&block), separators_in_any(&block));
        }
        // Where the CPU is not x86-64-v3, `fill` is `fill_any` and only the
        // separators were compared.
        eprintln!("x86-64-v3 build compared: {}", x86_64_v3());
    }
}
