//! Randomized robustness of the image codec (issue 11), on the harness of
//! `crate::robustness` (seed, case count and replay through the same
//! `EDGE_INFER_ROBUSTNESS_*` variables as `codec::robustness`):
//!
//! ```sh
//! EDGE_INFER_ROBUSTNESS_CASES=100000 cargo test --release --bin edge-infer robustness_image -- --nocapture
//! ```
//!
//! Inputs are valid JPEG and PNG files (the fixtures, the PNG colour types
//! written by the png encoder, and PNGs built here with random dimensions,
//! colour types, bit depths, interlacing and scanlines) mutated the way
//! real damage and hostile senders do: bits flipped, bytes set, inserted,
//! deleted or duplicated, files cut (also cut inside the image data with
//! the end-of-image marker put back, so the decoder meets the cut), two
//! files spliced, and header fields changed: JPEG frame dimensions,
//! sampling factors, quantization and Huffman tables, scan parameters,
//! restart intervals; PNG IHDR fields, chunk order and lengths, image
//! data (with CRCs recomputed, so the damage reaches the inflater and the
//! unfiltering).
//!
//! Every `prepare` runs under `catch_unwind`: a panic fails the test with
//! the seed, the case and the input. A success must write every element
//! of the input (checked on float32 plans, whose buffer starts as NaN) and
//! give the same bytes with fresh buffers as with the worker's reused
//! ones; a refusal must be `bad_image` with a bounded message that starts
//! with one of the documented wordings.

use std::time::{Duration, Instant};

use model_runtime::DType;

use super::tests::{chunk, crc32, fixture, fixtures, noise, png, settings, spec, zlib_stored};
use super::{ImagePlan, ImageScratch};
use crate::codec::ErrorCode;
use crate::config::Resize;
use crate::robustness::{Rng, Run};

/// The CI-sized count (a debug build; the decoders are optimized even
/// there, see `[profile.dev.package."*"]`).
const CASES: u64 = 3_000;

/// Every refusal starts with one of these.
const WORDINGS: [&str; 10] = [
    "expected a JPEG or PNG file; got ",
    "corrupt JPEG: ",
    "corrupt PNG: ",
    "unsupported JPEG: ",
    "unsupported PNG: ",
    "JPEG data ends after ",
    "PNG data ends after ",
    "JPEG is ",
    "PNG is ",
    "PNG needs more than ",
];

/// Refusal messages are at most this long: a decoder's reason is cut to
/// 200 characters, the rest is ours.
const MESSAGE_MAX: usize = 400;

struct Seeds {
    jpeg: Vec<Vec<u8>>,
    png: Vec<Vec<u8>>,
}

fn seeds() -> Seeds {
    let mut jpeg = Vec::new();
    let mut png_files = Vec::new();
    let mut names: Vec<String> = std::fs::read_dir(fixtures())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for name in names {
        // The sources and variants; of Pillow's resize results, two.
        let keep = !name.starts_with("ref-") || name.ends_with("letterbox-96x64.png");
        if name.ends_with(".jpg") && keep {
            jpeg.push(fixture(&name));
        } else if name.ends_with(".png") && keep {
            png_files.push(fixture(&name));
        }
    }
    use png::{BitDepth, ColorType};
    let plte: Vec<u8> = (0..48).collect();
    png_files.extend([
        png(5, 3, ColorType::Rgba, BitDepth::Eight, &noise(60, 1), None),
        png(
            5,
            3,
            ColorType::GrayscaleAlpha,
            BitDepth::Sixteen,
            &noise(60, 2),
            None,
        ),
        png(5, 3, ColorType::Rgb, BitDepth::Sixteen, &noise(90, 3), None),
        png(
            9,
            2,
            ColorType::Indexed,
            BitDepth::Four,
            &noise(10, 4),
            Some((&plte, &[3, 200])),
        ),
        png(
            17,
            3,
            ColorType::Grayscale,
            BitDepth::One,
            &noise(9, 5),
            None,
        ),
    ]);
    assert!(
        jpeg.len() >= 10 && png_files.len() >= 12,
        "{} {}",
        jpeg.len(),
        png_files.len()
    );
    Seeds {
        jpeg,
        png: png_files,
    }
}

/// The plans the inputs are served with: the shipped MobileNet's input
/// and others reaching every dtype, channel count and resize mode.
fn plans() -> Vec<ImagePlan> {
    let small_cap = |mut s: crate::config::ImageSettings| {
        // Mutated dimensions stay cheap: a megapixel at most.
        s.max_pixels = 1 << 20;
        s
    };
    vec![
        ImagePlan::new(
            &small_cap(settings(Resize::Stretch, &[127.5], &[127.5], 0)),
            &spec(&[1, 224, 224, 3], DType::I8, Some((0.007_843_133, -1))),
        )
        .unwrap(),
        ImagePlan::new(
            &small_cap(settings(Resize::Letterbox, &[0.0], &[255.0], 114)),
            &spec(&[1, 48, 64, 3], DType::F32, None),
        )
        .unwrap(),
        ImagePlan::new(
            &small_cap(settings(Resize::Crop, &[10.0], &[2.0], 0)),
            &spec(&[33, 17, 1], DType::F32, None),
        )
        .unwrap(),
        ImagePlan::new(
            &small_cap(settings(Resize::Crop, &[0.0], &[1.0], 0)),
            &spec(&[1, 96, 96, 3], DType::U8, Some((1.0, 0))),
        )
        .unwrap(),
        ImagePlan::new(
            &small_cap(settings(Resize::Letterbox, &[0.0], &[1.0], 9)),
            &spec(&[1, 20, 30, 1], DType::U8, None),
        )
        .unwrap(),
        // The default cap: 16 megapixels (used rarely: slow).
        ImagePlan::new(
            &settings(Resize::Stretch, &[0.0], &[1.0], 0),
            &spec(&[1, 32, 32, 3], DType::F32, None),
        )
        .unwrap(),
    ]
}

// ---------------------------------------------------------------------
// Generic byte mutations.

fn mutate_bytes(rng: &mut Rng, p: &mut Vec<u8>, other: &[u8]) {
    for _ in 0..1 + rng.below(3) {
        if p.is_empty() {
            p.push(rng.byte());
            continue;
        }
        let at = rng.below(p.len());
        match rng.below(9) {
            0 | 1 => p[at] ^= 1 << rng.below(8),
            2 => {
                p[at] = {
                    let b = rng.byte();
                    *rng.pick(&[0x00, 0xff, 0x7f, 0x80, b])
                }
            }
            3 => {
                let bytes: Vec<u8> = (0..1 + rng.below(8)).map(|_| rng.byte()).collect();
                p.splice(at..at, bytes);
            }
            4 => {
                let end = (at + 1 + rng.below(64)).min(p.len());
                p.drain(at..end);
            }
            5 => {
                let end = (at + 1 + rng.below(256)).min(p.len());
                let range = p[at..end].to_vec();
                let to = rng.below(p.len() + 1);
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
            _ => {
                let b = rng.below(p.len());
                p.swap(at, b);
            }
        }
    }
}

/// A "random" u16 or u32 dimension: mostly small, sometimes huge or 0.
fn dimension(rng: &mut Rng, max: u64) -> u64 {
    match rng.below(6) {
        0 => 0,
        1 => max,
        2 => rng.range(1, 8) as u64,
        3 => rng.range(1, 2048) as u64,
        4 => rng.range(1, max as i64) as u64,
        _ => rng.range(1, 300) as u64,
    }
}

// ---------------------------------------------------------------------
// JPEG: segments and fields.

/// A JPEG's marker segments up to the first scan: (marker, offset of the
/// 0xff, payload range after the length field); and where the scan data
/// starts.
fn jpeg_segments(p: &[u8]) -> (Vec<(u8, usize, std::ops::Range<usize>)>, usize) {
    let mut segments = Vec::new();
    let mut at = 2;
    while at + 4 <= p.len() && p[at] == 0xff {
        let marker = p[at + 1];
        if matches!(marker, 0x01 | 0xd0..=0xd8 | 0xff) {
            at += if marker == 0xff { 1 } else { 2 };
            continue;
        }
        let len = usize::from(u16::from_be_bytes([p[at + 2], p[at + 3]]));
        let end = (at + 2 + len).min(p.len());
        segments.push((marker, at, (at + 4).min(end)..end));
        if marker == 0xda {
            return (segments, end);
        }
        at = end;
    }
    (segments, p.len())
}

fn mutate_jpeg(rng: &mut Rng, p: &mut Vec<u8>, other: &[u8]) -> &'static str {
    let (segments, scan) = jpeg_segments(p);
    let eoi = (scan..p.len().saturating_sub(1))
        .rev()
        .find(|&i| p[i] == 0xff && p[i + 1] == 0xd9);
    let pick = |rng: &mut Rng, markers: &[u8]| {
        let found: Vec<_> = segments
            .iter()
            .filter(|s| markers.contains(&s.0) && !s.2.is_empty())
            .cloned()
            .collect();
        (!found.is_empty()).then(|| found[rng.below(found.len())].clone())
    };
    match rng.below(12) {
        0 | 1 => {
            // Bits of the entropy-coded data, the end marker kept.
            let end = eoi.unwrap_or(p.len());
            if end > scan {
                for _ in 0..1 + rng.below(8) {
                    let at = scan + rng.below(end - scan);
                    p[at] ^= 1 << rng.below(8);
                }
            }
            "jpeg: entropy bits"
        }
        2 => {
            // Cut inside the image data, the end marker put back: the
            // decoder itself meets the missing data.
            if p.len() > scan + 2 {
                let at = scan + rng.below(p.len() - scan - 2);
                p.truncate(at);
                p.extend_from_slice(&[0xff, 0xd9]);
            }
            "jpeg: cut, end marker kept"
        }
        3 => {
            if let Some((_, _, r)) = pick(rng, &[0xc0, 0xc1, 0xc2]) {
                // precision, height, width, components, then per component
                // id, sampling factors, table.
                let field = rng.below(r.len().min(6 + 3 * 4));
                let at = r.start + field;
                match field {
                    1 | 3 => {
                        let v = dimension(rng, 65_535) as u16;
                        if at + 1 < r.end {
                            p[at..at + 2].copy_from_slice(&v.to_be_bytes());
                        }
                    }
                    _ => {
                        p[at] = {
                            let b = rng.byte();
                            *rng.pick(&[
                                0x11, 0x22, 0x21, 0x12, 0x44, 0x41, 0x00, 0x0f, 0xf0, 1, 3, 4, b,
                            ])
                        }
                    }
                }
            }
            "jpeg: frame header field"
        }
        4 => {
            if let Some((_, _, r)) = pick(rng, &[0xdb, 0xc4]) {
                for _ in 0..1 + rng.below(4) {
                    let at = r.start + rng.below(r.len());
                    p[at] = {
                        let b = rng.byte();
                        *rng.pick(&[0, 1, 0xff, 0x10, 0x11, b])
                    };
                }
            }
            "jpeg: quantization or Huffman table"
        }
        5 => {
            if let Some((_, _, r)) = pick(rng, &[0xda]) {
                let at = r.start + rng.below(r.len());
                p[at] = {
                    let b = rng.byte();
                    *rng.pick(&[0, 1, 2, 3, 4, 0x3f, 0x40, 0x11, 0xff, b])
                };
            }
            "jpeg: scan header field"
        }
        6 => {
            // A restart interval, new or changed.
            let interval = {
                let b = rng.byte();
                *rng.pick(&[0u16, 1, 2, 7, 0xffff, b.into()])
            };
            if let Some((_, _, r)) = pick(rng, &[0xdd]) {
                if r.len() >= 2 {
                    p[r.start..r.start + 2].copy_from_slice(&interval.to_be_bytes());
                }
            } else if let Some(&(_, at, _)) = segments.last() {
                let mut dri = vec![0xff, 0xdd, 0, 4];
                dri.extend_from_slice(&interval.to_be_bytes());
                p.splice(at..at, dri);
            }
            "jpeg: restart interval"
        }
        7 => {
            // A segment removed, duplicated or moved.
            if segments.len() > 1 {
                let (_, at, r) = segments[rng.below(segments.len())].clone();
                let seg = p[at..r.end].to_vec();
                match rng.below(3) {
                    0 => {
                        p.drain(at..r.end);
                    }
                    1 => {
                        p.splice(at..at, seg);
                    }
                    _ => {
                        p.drain(at..r.end);
                        let (_, to, _) = segments[rng.below(segments.len())].clone();
                        let to = to.min(p.len());
                        p.splice(to..to, seg);
                    }
                }
            }
            "jpeg: segment removed, duplicated or moved"
        }
        8 => {
            // A segment's length field.
            if let Some(&(_, at, _)) = segments.get(rng.below(segments.len().max(1))) {
                let v = {
                    let b = rng.byte();
                    *rng.pick(&[0u16, 1, 2, 3, 0xffff, b.into()])
                };
                if at + 4 <= p.len() {
                    p[at + 2..at + 4].copy_from_slice(&v.to_be_bytes());
                }
            }
            "jpeg: segment length"
        }
        _ => {
            mutate_bytes(rng, p, other);
            "jpeg: bytes"
        }
    }
}

// ---------------------------------------------------------------------
// PNG: chunks, with CRCs recomputed.

/// (offset of the length field, type, data range) per chunk.
fn png_chunks(p: &[u8]) -> Vec<(usize, [u8; 4], std::ops::Range<usize>)> {
    let mut chunks = Vec::new();
    let mut at = 8;
    while at + 12 <= p.len() {
        let len = u32::from_be_bytes([p[at], p[at + 1], p[at + 2], p[at + 3]]) as usize;
        let kind = [p[at + 4], p[at + 5], p[at + 6], p[at + 7]];
        let end = at.saturating_add(8).saturating_add(len);
        if end.saturating_add(4) > p.len() {
            break;
        }
        chunks.push((at, kind, at + 8..end));
        at = end + 4;
    }
    chunks
}

/// Rewrites every whole chunk's CRC.
fn fix_crcs(p: &mut [u8]) {
    for (at, _, data) in png_chunks(p) {
        let crc = crc32(&p[at + 4..data.end]);
        p[data.end..data.end + 4].copy_from_slice(&crc.to_be_bytes());
    }
}

/// Raw image data bytes (with filter bytes) for an image: per row,
/// ceil(width * bits per pixel / 8) + 1, per Adam7 pass when interlaced.
fn scanline_bytes(w: u64, h: u64, bits_per_pixel: u64, interlace: bool) -> u64 {
    let rows = |w: u64, h: u64| {
        if w == 0 {
            0
        } else {
            h * ((w * bits_per_pixel).div_ceil(8) + 1)
        }
    };
    if !interlace {
        return rows(w, h);
    }
    [
        (0, 0, 8, 8),
        (4, 0, 8, 8),
        (0, 4, 4, 8),
        (2, 0, 4, 4),
        (0, 2, 2, 4),
        (1, 0, 2, 2),
        (0, 1, 1, 2),
    ]
    .iter()
    .map(|&(x0, y0, dx, dy)| {
        rows(
            w.saturating_sub(x0).div_ceil(dx),
            h.saturating_sub(y0).div_ceil(dy),
        )
    })
    .sum()
}

/// A PNG built here: random small dimensions, colour type, bit depth and
/// interlacing (mostly valid combinations), random scanlines of about the
/// right length with mostly valid filter bytes, stored deflate blocks,
/// correct CRCs; sometimes a palette, transparency or text chunks.
fn generated_png(rng: &mut Rng) -> Vec<u8> {
    let (color, depth) = if rng.one_in(10) {
        (rng.byte() % 8, *rng.pick(&[0, 1, 2, 3, 4, 5, 8, 16, 32]))
    } else {
        *rng.pick(&[
            (0u8, 1u8),
            (0, 2),
            (0, 4),
            (0, 8),
            (0, 16),
            (2, 8),
            (2, 16),
            (3, 1),
            (3, 2),
            (3, 4),
            (3, 8),
            (4, 8),
            (4, 16),
            (6, 8),
            (6, 16),
        ])
    };
    let samples: u64 = match color {
        2 => 3,
        4 => 2,
        6 => 4,
        _ => 1,
    };
    let w = rng.range(1, 40) as u32;
    let h = rng.range(1, 40) as u32;
    let interlace = u8::from(rng.one_in(3));
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[depth, color, 0, 0, interlace]);
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut out, b"IHDR", &ihdr);
    if color == 3 || rng.one_in(8) {
        let entries = if rng.one_in(5) {
            rng.below(300)
        } else {
            1 << depth.min(8)
        };
        chunk(&mut out, b"PLTE", &noise(entries * 3, rng.byte().into()));
    }
    if rng.one_in(4) {
        let n = rng.below(20);
        chunk(&mut out, b"tRNS", &noise(n, rng.byte().into()));
    }
    if rng.one_in(6) {
        let kind = *rng.pick(&[
            b"tEXt", b"zTXt", b"iCCP", b"iTXt", b"gAMA", b"pHYs", b"sBIT", b"abcd",
        ]);
        chunk(&mut out, kind, &noise(rng.below(40), rng.byte().into()));
    }
    let bits = samples * u64::from(depth);
    let want = scanline_bytes(u64::from(w), u64::from(h), bits, interlace == 1) as usize;
    let len = match rng.below(8) {
        0 => rng.below(want + 1),
        1 => want + 1 + rng.below(16),
        _ => want,
    };
    let mut data = noise(len, rng.next_u64() as u32);
    // Mostly valid filter types at each row's start (roughly: rows of the
    // first pass length; the rest are data bytes, which is fine).
    let row = ((u64::from(w) * bits).div_ceil(8) + 1) as usize;
    for at in (0..len).step_by(row.max(1)) {
        if !rng.one_in(20) {
            data[at] %= 5;
        }
    }
    // The data in one or several IDAT chunks.
    let z = zlib_stored(&data);
    let parts = 1 + rng.below(3);
    let size = z.len().div_ceil(parts).max(1);
    for part in z.chunks(size) {
        chunk(&mut out, b"IDAT", part);
    }
    chunk(&mut out, b"IEND", &[]);
    out
}

fn mutate_png(rng: &mut Rng, p: &mut Vec<u8>, other: &[u8]) -> &'static str {
    let chunks = png_chunks(p);
    let label = match rng.below(10) {
        0 | 1 => {
            // IHDR fields.
            if let Some((_, _, r)) = chunks.iter().find(|c| &c.1 == b"IHDR").cloned() {
                if r.len() == 13 {
                    match rng.below(4) {
                        0 => {
                            let v = dimension(rng, u64::from(u32::MAX)) as u32;
                            p[r.start..r.start + 4].copy_from_slice(&v.to_be_bytes());
                        }
                        1 => {
                            let v = dimension(rng, u64::from(u32::MAX)) as u32;
                            p[r.start + 4..r.start + 8].copy_from_slice(&v.to_be_bytes());
                        }
                        2 => {
                            p[r.start + 8] = {
                                let b = rng.byte();
                                *rng.pick(&[0, 1, 2, 4, 8, 16, 3, 32, b])
                            }
                        }
                        _ => {
                            let at = r.start + 9 + rng.below(4);
                            p[at] = {
                                let b = rng.byte();
                                *rng.pick(&[0, 1, 2, 3, 4, 6, 7, b])
                            };
                        }
                    }
                }
            }
            fix_crcs(p);
            "png: header field"
        }
        2 | 3 => {
            // Image data bytes: the inflater and the unfiltering meet them.
            let idats: Vec<_> = chunks
                .iter()
                .filter(|c| &c.1 == b"IDAT" && !c.2.is_empty())
                .cloned()
                .collect();
            if !idats.is_empty() {
                let (_, _, r) = idats[rng.below(idats.len())].clone();
                for _ in 0..1 + rng.below(4) {
                    let at = r.start + rng.below(r.len());
                    if rng.one_in(2) {
                        p[at] ^= 1 << rng.below(8);
                    } else {
                        p[at] = rng.byte();
                    }
                }
            }
            fix_crcs(p);
            "png: image data, CRC fixed"
        }
        4 => {
            // A chunk removed, duplicated or moved (CRCs stay right).
            if chunks.len() > 1 {
                let (at, _, r) = chunks[rng.below(chunks.len())].clone();
                let c = p[at..r.end + 4].to_vec();
                match rng.below(3) {
                    0 => {
                        p.drain(at..r.end + 4);
                    }
                    1 => {
                        p.splice(at..at, c);
                    }
                    _ => {
                        p.drain(at..r.end + 4);
                        let (to, _, _) = chunks[rng.below(chunks.len())].clone();
                        let to = to.min(p.len());
                        p.splice(to..to, c);
                    }
                }
            }
            "png: chunk removed, duplicated or moved"
        }
        5 => {
            // A chunk's length field (CRCs then found in the wrong place).
            if !chunks.is_empty() {
                let (at, _, _) = chunks[rng.below(chunks.len())].clone();
                let v = dimension(rng, u64::from(u32::MAX)) as u32;
                p[at..at + 4].copy_from_slice(&v.to_be_bytes());
            }
            "png: chunk length"
        }
        6 => {
            // A chunk inserted before the image data.
            let kind = *rng.pick(&[
                b"PLTE", b"tRNS", b"zTXt", b"iCCP", b"IHDR", b"fcTL", b"acTL", b"IEND", b"xxxx",
            ]);
            let mut c = Vec::new();
            chunk(&mut c, kind, &noise(rng.below(64), rng.byte().into()));
            let at = chunks.get(1).map_or(p.len(), |c| c.0);
            p.splice(at..at, c);
            "png: chunk inserted"
        }
        _ => {
            mutate_bytes(rng, p, other);
            if rng.one_in(2) {
                fix_crcs(p);
            }
            "png: bytes"
        }
    };
    label
}

// ---------------------------------------------------------------------
// The test.

/// The outcome's label: "ok" or the wording a refusal starts with.
fn wording(message: &str) -> Option<&'static str> {
    WORDINGS.iter().find(|w| message.starts_with(*w)).copied()
}

#[test]
fn robustness_image() {
    let seeds = seeds();
    let plans = plans();
    let mut run = Run::new("image", CASES);
    let mut scratch = ImageScratch::default();
    // (time, case, how the input was made, its length, the outcome)
    let mut slowest = (Duration::ZERO, 0u64, "", 0usize, String::new());
    for case in run.cases() {
        let mut rng = run.rng(case);
        let (input, how) = run.guarded(case, "the generator", &[], || {
            let family = rng.below(10);
            if family < 5 {
                let mut p = rng.pick(&seeds.jpeg).clone();
                let other = rng.pick(&seeds.png).clone();
                let mut how = "";
                for _ in 0..1 + rng.below(2) {
                    how = mutate_jpeg(&mut rng, &mut p, &other);
                }
                (p, how)
            } else if family < 9 {
                let mut p = if rng.one_in(2) {
                    generated_png(&mut rng)
                } else {
                    rng.pick(&seeds.png).clone()
                };
                let other = rng.pick(&seeds.jpeg).clone();
                // A generated PNG is often served as it is.
                let mut how = "png: generated";
                for _ in 0..rng.below(3) {
                    how = mutate_png(&mut rng, &mut p, &other);
                }
                (p, how)
            } else {
                let len = rng.below(64);
                let mut p: Vec<u8> = (0..len).map(|_| rng.byte()).collect();
                if rng.one_in(2) && !p.is_empty() {
                    // A believable start.
                    let magic: &[u8] = if rng.one_in(2) {
                        b"\xff\xd8\xff"
                    } else {
                        b"\x89PNG\r\n\x1a\n"
                    };
                    p.splice(0..0, magic.iter().copied());
                }
                (p, "short bytes")
            }
        });
        run.count(how);
        // The default cap only now and then: those cases allocate for up
        // to 16 megapixels.
        let plan = if rng.one_in(200) {
            &plans[plans.len() - 1]
        } else {
            &plans[rng.below(plans.len() - 1)]
        };
        let float = plan.elem == 4;
        let mut out = if float {
            f32::NAN.to_le_bytes().repeat(plan.byte_len / 4)
        } else {
            vec![0xa5; plan.byte_len]
        };
        let t = Instant::now();
        let result = run.guarded(case, "prepare", &input, || {
            plan.prepare(&input, &mut out, &mut scratch)
        });
        let spent = t.elapsed();
        run.add_time("prepare", spent);
        if spent > slowest.0 {
            let outcome = match &result {
                Ok(info) => format!("{info:?}"),
                Err(f) => f.message.clone(),
            };
            slowest = (spent, case, how, input.len(), outcome);
        }
        match result {
            Ok(info) => {
                if info.format != "jpeg" && info.format != "png"
                    || info.width == 0
                    || info.height == 0
                {
                    run.fail(case, &input, &format!("odd info {info:?}"));
                }
                if float
                    && out
                        .chunks_exact(4)
                        .any(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]).is_nan())
                {
                    run.fail(case, &input, "an element of the input was not written");
                }
                // Fresh buffers give the same bytes as the reused ones.
                if rng.one_in(4) {
                    let mut again = vec![0x5a; plan.byte_len];
                    let fresh = run.guarded(case, "prepare (fresh buffers)", &input, || {
                        plan.prepare(&input, &mut again, &mut ImageScratch::default())
                    });
                    if fresh != Ok(info) || again != out {
                        run.fail(case, &input, "fresh buffers gave another result");
                    }
                }
                run.count(format!("ok: {}", info.format));
            }
            Err(f) => {
                if f.code != ErrorCode::BadImage || f.message.len() > MESSAGE_MAX {
                    run.fail(case, &input, &format!("refusal {f:?}"));
                }
                match wording(&f.message) {
                    Some(w) => run.count(format!("refused: {}", w.trim_end_matches([' ', ':']))),
                    None => run.fail(
                        case,
                        &input,
                        &format!("undocumented wording: {:?}", f.message),
                    ),
                }
            }
        }
    }
    let n = run.len();
    println!(
        "robustness image: slowest case {} ({:.1} ms): {}, {} bytes: {}",
        slowest.1,
        slowest.0.as_secs_f64() * 1e3,
        slowest.2,
        slowest.3,
        slowest.4
    );
    let counts = run.finish();
    if n >= 2_000 {
        let got = |prefix: &str| -> u64 {
            counts
                .iter()
                .filter(|(k, _)| k.starts_with(prefix))
                .map(|(_, v)| v)
                .sum()
        };
        // The mutations reach every part: successes and each kind of
        // refusal.
        for (label, at_least) in [
            ("ok: jpeg", n / 50),
            ("ok: png", n / 50),
            ("refused: corrupt JPEG", n / 50),
            ("refused: corrupt PNG", n / 50),
            ("refused: JPEG data ends", n / 200),
            ("refused: PNG data ends", n / 200),
            // Size refusals are rare: about 8 (JPEG) and 14 (PNG) in
            // 3,000 cases, 3 to 22 over 60 seeds; a CI run had 4 PNG ones
            // against the n / 500 = 6 asked before. Reached is enough.
            ("refused: JPEG is", 1),
            ("refused: PNG is", 1),
            ("refused: expected a JPEG or PNG", n / 100),
        ] {
            assert!(
                got(label) >= at_least,
                "{label}: {} of {n} (want {at_least}): {counts:?}",
                got(label)
            );
        }
    }
}
