//! The image codec against Pillow: the fixtures of
//! `tests/fixtures/images/` (made by its `make.py` with Pillow 13) hold
//! source images and Pillow's results for each resize mode and target
//! size; `manifest.json` lists them with the sha256 of their pixels.
//!
//! - PNG sources decode exactly as Pillow decodes them, and resize
//!   within 1 of Pillow per sample: the only difference is the resampler's
//!   fixed-point rounding (fast_image_resize's coefficients have fewer
//!   bits than Pillow's 22).
//! - JPEG sources differ more: zune-jpeg's IDCT and chroma upsampling are
//!   not libjpeg-turbo's. The measured differences (run with
//!   `--nocapture` to see them per file) are asserted below as
//!   [`JPEG_MAX`] and [`JPEG_MEAN`], with some room for other SIMD paths
//!   (aarch64, x86_64 without AVX2).

use std::collections::BTreeMap;
use std::io::Cursor;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::tests::{fixture, identity};
use crate::config::Resize;

/// Largest difference from Pillow's value for any sample of a JPEG
/// source, after resizing. Measured (x86_64, AVX2): 6, for the 300x200
/// JPEG enlarged to 224x224 (an upscale magnifies the decoders'
/// differences); 2 for the 640x480 one shrunk to 224x224.
const JPEG_MAX: u8 = 8;
/// Mean absolute difference per sample, over one JPEG reference.
/// Measured: at most 0.33 (PNG sources, the resampler alone: 0.20).
const JPEG_MEAN: f64 = 0.5;
/// The same for the small JPEG variants (progressive, 4:4:4, 4:2:2,
/// restart markers, optimized tables, CMYK, grayscale), compared at their
/// own size: the decoders alone. Measured: max 3, mean at most 0.37
/// (CMYK: max 1, mean 0.014).
const VARIANT_MAX: u8 = 4;
const VARIANT_MEAN: f64 = 0.5;

#[derive(Deserialize)]
struct Manifest {
    pad: u8,
    sources: Vec<Source>,
    references: Vec<Reference>,
    variants: Vec<Variant>,
}

#[derive(Deserialize)]
struct Source {
    file: String,
    width: u32,
    height: u32,
    mode: String,
    sha256: String,
}

#[derive(Deserialize)]
struct Reference {
    source: String,
    channels: usize,
    resize: String,
    width: usize,
    height: usize,
    file: String,
    sha256: String,
}

#[derive(Deserialize)]
struct Variant {
    file: String,
    channels: usize,
    width: usize,
    height: usize,
    reference: Option<String>,
    sha256: String,
}

fn manifest() -> Manifest {
    serde_json::from_slice(&fixture("manifest.json")).unwrap()
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A reference PNG's pixels, checked against the manifest's sha256 (so
/// the comparison is with exactly what Pillow wrote).
fn reference_pixels(file: &str, sha256: &str) -> Vec<u8> {
    let mut d = png::Decoder::new(Cursor::new(fixture(file)));
    d.set_transformations(png::Transformations::IDENTITY);
    let mut r = d.read_info().unwrap();
    let mut pixels = vec![0; r.output_buffer_size().unwrap()];
    let n = r.next_frame(&mut pixels).unwrap().buffer_size();
    pixels.truncate(n);
    assert_eq!(sha256_hex(&pixels), sha256, "{file}");
    pixels
}

/// Our pixels for `bytes` at `width` x `height` with `channels` (uint8
/// identity: the output is the resized image).
fn ours(
    bytes: &[u8],
    resize: Resize,
    width: usize,
    height: usize,
    channels: usize,
    pad: u8,
) -> Vec<u8> {
    let plan = identity(resize, height, width, channels, pad);
    let mut out = vec![0; width * height * channels];
    plan.prepare(bytes, &mut out, &mut super::ImageScratch::default())
        .unwrap_or_else(|f| panic!("{f:?}"));
    out
}

/// (max, mean) absolute difference per sample.
fn diff(a: &[u8], b: &[u8]) -> (u8, f64) {
    assert_eq!(a.len(), b.len());
    let mut max = 0u8;
    let mut sum = 0u64;
    for (&x, &y) in a.iter().zip(b) {
        let d = x.abs_diff(y);
        max = max.max(d);
        sum += u64::from(d);
    }
    (max, sum as f64 / a.len() as f64)
}

fn resize_mode(name: &str) -> Resize {
    match name {
        "stretch" => Resize::Stretch,
        "crop" => Resize::Crop,
        "letterbox" => Resize::Letterbox,
        other => panic!("resize {other:?} in manifest.json"),
    }
}

#[test]
fn png_sources_decode_exactly_as_pillow_does() {
    let m = manifest();
    let mut checked = 0;
    for s in m.sources.iter().filter(|s| s.file.ends_with(".png")) {
        let channels = match s.mode.as_str() {
            "RGB" => 3,
            "L" => 1,
            // RGBA: Pillow's pixels keep the alpha ours drop; the resize
            // references cover it.
            _ => continue,
        };
        let bytes = fixture(&s.file);
        let got = ours(
            &bytes,
            Resize::Stretch,
            s.width as usize,
            s.height as usize,
            channels,
            0,
        );
        assert_eq!(sha256_hex(&got), s.sha256, "{}", s.file);
        checked += 1;
    }
    assert!(checked >= 3, "{checked}");
}

#[test]
fn resizing_matches_pillow() {
    let m = manifest();
    // Per source format: (worst max, worst mean, count).
    let mut worst: BTreeMap<&str, (u8, f64, usize)> = BTreeMap::new();
    for r in &m.references {
        let want = reference_pixels(&r.file, &r.sha256);
        let bytes = fixture(&r.source);
        let got = ours(
            &bytes,
            resize_mode(&r.resize),
            r.width,
            r.height,
            r.channels,
            m.pad,
        );
        let (max, mean) = diff(&got, &want);
        println!(
            "{:<48} {:>9} {}x{}x{}: max {max:>2}, mean {mean:.4}",
            r.file, r.resize, r.width, r.height, r.channels
        );
        let format = if r.source.ends_with(".png") {
            "png"
        } else {
            "jpeg"
        };
        let w = worst.entry(format).or_insert((0, 0.0, 0));
        *w = (w.0.max(max), w.1.max(mean), w.2 + 1);
        if format == "png" {
            assert!(max <= 1, "{}: max {max} from Pillow's", r.file);
        } else {
            assert!(
                max <= JPEG_MAX && mean <= JPEG_MEAN,
                "{}: max {max}, mean {mean:.4} from Pillow's (allowed {JPEG_MAX}, {JPEG_MEAN})",
                r.file
            );
        }
    }
    println!("worst per source format (max, mean, references): {worst:?}");
    assert!(worst.get("png").is_some_and(|w| w.2 >= 20), "{worst:?}");
    assert!(worst.get("jpeg").is_some_and(|w| w.2 >= 15), "{worst:?}");
}

#[test]
fn variants_decode_like_pillow() {
    let m = manifest();
    assert!(m.variants.len() >= 10);
    for v in &m.variants {
        let bytes = fixture(&v.file);
        let got = ours(&bytes, Resize::Stretch, v.width, v.height, v.channels, 0);
        match &v.reference {
            // A PNG: exactly Pillow's pixels.
            None => assert_eq!(sha256_hex(&got), v.sha256, "{}", v.file),
            Some(reference) => {
                let want = reference_pixels(reference, &v.sha256);
                let (max, mean) = diff(&got, &want);
                println!("{:<28} max {max:>2}, mean {mean:.4}", v.file);
                assert!(
                    max <= VARIANT_MAX && mean <= VARIANT_MEAN,
                    "{}: max {max}, mean {mean:.4} from Pillow's (allowed {VARIANT_MAX}, {VARIANT_MEAN})",
                    v.file
                );
            }
        }
    }
}
