//! Unit tests of the image codec: plans, detection and the pixel cap,
//! every dtype quantized exactly, channel conversions, the PNG colour
//! types, letterbox padding, crop geometry, decoder errors.

use std::path::PathBuf;

use model_runtime::{DType, Quantization, TensorSpec};

use super::*;
use crate::config::{ImageSettings, Resize};

pub(super) fn spec(shape: &[usize], dtype: DType, q: Option<(f32, i32)>) -> TensorSpec {
    TensorSpec {
        name: "image".into(),
        shape: shape.to_vec(),
        dtype,
        quantization: q.map(|(scale, zero_point)| Quantization { scale, zero_point }),
        shape_signature: shape.iter().map(|&d| d as i64).collect(),
    }
}

pub(super) fn settings(resize: Resize, mean: &[f32], std: &[f32], pad: u8) -> ImageSettings {
    ImageSettings {
        resize,
        mean: mean.to_vec(),
        std: std.to_vec(),
        pad,
        ..ImageSettings::default()
    }
}

/// A plan whose output bytes are the resized pixels themselves (uint8,
/// no quantization, mean 0, std 1).
pub(super) fn identity(resize: Resize, h: usize, w: usize, c: usize, pad: u8) -> ImagePlan {
    ImagePlan::new(
        &settings(resize, &[0.0], &[1.0], pad),
        &spec(&[1, h, w, c], DType::U8, None),
    )
    .unwrap()
}

pub(super) fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/images")
}

pub(super) fn fixture(name: &str) -> Vec<u8> {
    let path = fixtures().join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A PNG of `pixels` (8-bit unless `depth` says 16: then two bytes per
/// sample, big-endian, in `pixels`).
pub(super) fn png(
    w: u32,
    h: u32,
    color: png::ColorType,
    depth: png::BitDepth,
    pixels: &[u8],
    palette: Option<(&[u8], &[u8])>,
) -> Vec<u8> {
    let mut out = Vec::new();
    let mut e = png::Encoder::new(&mut out, w, h);
    e.set_color(color);
    e.set_depth(depth);
    if let Some((plte, trns)) = palette {
        e.set_palette(plte.to_vec());
        if !trns.is_empty() {
            e.set_trns(trns.to_vec());
        }
    }
    let mut writer = e.write_header().unwrap();
    writer.write_image_data(pixels).unwrap();
    writer.finish().unwrap();
    out
}

fn rgb_png(w: u32, h: u32, pixels: &[u8]) -> Vec<u8> {
    png(
        w,
        h,
        png::ColorType::Rgb,
        png::BitDepth::Eight,
        pixels,
        None,
    )
}

/// Deterministic "random" pixels.
pub(super) fn noise(n: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 8) as u8
        })
        .collect()
}

fn prepare(plan: &ImagePlan, bytes: &[u8]) -> Result<(ImageInfo, Vec<u8>), Failure> {
    let mut out = vec![0xa5; plan.byte_len];
    let info = plan.prepare(bytes, &mut out, &mut ImageScratch::default())?;
    Ok((info, out))
}

fn refused(plan: &ImagePlan, bytes: &[u8]) -> String {
    match prepare(plan, bytes) {
        Ok((info, _)) => panic!("accepted: {info:?}"),
        Err(f) => {
            assert_eq!(f.code, ErrorCode::BadImage, "{f:?}");
            f.message
        }
    }
}

#[test]
fn plans_check_the_input_tensor_and_the_settings() {
    let s = ImageSettings::default();
    let cases: [(TensorSpec, &str); 7] = [
        (
            spec(&[1, 10], DType::F32, None),
            "input 'image' is [1,10] float32; an image model needs [1, height, width, 1 or 3]",
        ),
        (
            spec(&[1, 224, 224, 4], DType::U8, None),
            "input 'image' is [1,224,224,4] uint8; an image model needs [1, height, width, 1 or 3]",
        ),
        (
            spec(&[2, 224, 224, 3], DType::U8, None),
            "input 'image' is [2,224,224,3] uint8; an image model needs [1, height, width, 1 or 3]",
        ),
        (
            spec(&[1, 128, 3], DType::I8, Some((0.05, 0))),
            "input 'image' is [1,128,3] int8; an image model needs [1, height, width, 1 or 3]",
        ),
        (
            spec(&[1, 0, 224, 3], DType::U8, None),
            "input 'image' is [1,0,224,3] uint8; an image model needs [1, height, width, 1 or 3]",
        ),
        (
            spec(&[1, 224, 224, 3], DType::I16, Some((0.1, 0))),
            "input 'image' is [1,224,224,3] int16; an image model's input must be float32, int8 or uint8",
        ),
        (
            spec(&[224, 224, 3], DType::F16, None),
            "input 'image' is [224,224,3] float16; an image model's input must be float32, int8 or uint8",
        ),
    ];
    for (input, want) in cases {
        let e = ImagePlan::new(&s, &input).unwrap_err();
        assert_eq!((e.setting, e.message.as_str()), (PlanSetting::Input, want));
    }
    // [H, W, C] is accepted too.
    let p = ImagePlan::new(&s, &spec(&[96, 64, 1], DType::I8, Some((0.5, 3)))).unwrap();
    assert_eq!(
        (p.height, p.width, p.channels, p.byte_len),
        (96, 64, 1, 96 * 64)
    );

    let rgb = spec(&[1, 8, 8, 3], DType::F32, None);
    let gray = spec(&[1, 8, 8, 1], DType::F32, None);
    let bad = |mean: &[f32], std: &[f32], input: &TensorSpec| {
        let e = ImagePlan::new(&settings(Resize::Stretch, mean, std, 0), input).unwrap_err();
        (e.setting, e.message)
    };
    assert_eq!(
        bad(&[1.0, 2.0], &[1.0], &rgb),
        (
            PlanSetting::Mean,
            "[models.image] mean has 2 values; input 'image' has 3 channels: give 1 or 3"
                .to_string()
        )
    );
    assert_eq!(
        bad(&[0.0], &[1.0, 2.0, 3.0], &gray),
        (
            PlanSetting::Std,
            "[models.image] std has 3 values; input 'image' has 1 channel: give 1".to_string()
        )
    );
    assert_eq!(
        bad(&[0.0], &[1.0, 0.0, 1.0], &rgb),
        (
            PlanSetting::Std,
            "[models.image] std 0 (channel 1) must be a finite number other than 0".to_string()
        )
    );
    assert_eq!(
        bad(&[f32::NAN], &[1.0], &rgb),
        (
            PlanSetting::Mean,
            "[models.image] mean NaN (channel 0) is not a finite number".to_string()
        )
    );
    assert_eq!(
        bad(&[0.0], &[1e-45], &rgb),
        (
            PlanSetting::Std,
            "[models.image] mean 0.0 and std 1e-45 make pixel value 1 inf, not a finite number"
                .to_string()
        )
    );
    let s = ImageSettings {
        max_pixels: 0,
        ..ImageSettings::default()
    };
    assert_eq!(
        ImagePlan::new(&s, &rgb).unwrap_err(),
        PlanError {
            setting: PlanSetting::MaxPixels,
            message: "[models.image] max_pixels is 0; it must be at least 1".into()
        }
    );
}

#[test]
fn what_is_not_a_jpeg_or_png_is_a_bad_image() {
    let plan = identity(Resize::Stretch, 4, 4, 3, 0);
    assert_eq!(
        refused(&plan, b"{\"id\": 1, \"image\": \"...\"}"),
        "expected a JPEG or PNG file; got JSON (25 bytes starting 7b 22 69 64 22 3a 20 31)"
    );
    assert_eq!(
        refused(&plan, b""),
        "expected a JPEG or PNG file; got an empty payload"
    );
    assert!(refused(&plan, b"GIF89a....").contains("got a GIF image"));
}

/// Headers claiming 60000x60000 (3.6 gigapixels, 10.8 GB of RGB) are
/// refused from the header alone. The test runs itself again in a child
/// process whose address space is limited to 1 GiB (`ulimit -v`), and the
/// images are served only there: had any decoder or buffer been sized
/// from those headers first, the child would die of a failed allocation
/// (rather than this process filling 10.8 GB) instead of printing its
/// verdict.
#[test]
fn huge_headers_are_refused_before_any_allocation() {
    const CHILD: &str = "EDGE_INFER_IMAGE_TEST_CHILD";
    const VERDICT: &str = "huge headers refused within a 1 GiB address space";
    if std::env::var_os(CHILD).is_none() {
        let exe = std::env::current_exe().unwrap();
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg("ulimit -v 1048576 && exec \"$0\" \"$@\"")
            .arg(exe)
            .args([
                "codec::image::tests::huge_headers_are_refused_before_any_allocation",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains(VERDICT),
            "child: {}\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    }
    // The child. The limit is in force: 2 GiB cannot be had.
    assert!(Vec::<u8>::new().try_reserve_exact(2 << 30).is_err());
    let png_header = {
        let mut b = png(
            1,
            1,
            png::ColorType::Rgb,
            png::BitDepth::Eight,
            &[1, 2, 3],
            None,
        );
        b[16..24].copy_from_slice(&[0, 0, 0xea, 0x60, 0, 0, 0xea, 0x60]);
        b
    };
    let jpeg_header = {
        let mut b = fixture("photo-300x200.jpg");
        let sof = (0..b.len() - 1)
            .find(|&i| b[i] == 0xff && b[i + 1] == 0xc0)
            .unwrap();
        b[sof + 5..sof + 9].copy_from_slice(&[0xea, 0x60, 0xea, 0x60]);
        b
    };
    let plan = identity(Resize::Stretch, 224, 224, 3, 0);
    assert_eq!(
        refused(&plan, &png_header),
        "PNG is 60000x60000 = 3,600,000,000 pixels, above [models.image] max_pixels 16,000,000"
    );
    assert_eq!(
        refused(&plan, &jpeg_header),
        "JPEG is 60000x60000 = 3,600,000,000 pixels, above [models.image] max_pixels 16,000,000"
    );
    println!("{VERDICT}");
}

#[test]
fn the_pixel_cap_counts_width_times_height() {
    let bytes = rgb_png(40, 25, &noise(40 * 25 * 3, 1));
    let mut s = settings(Resize::Stretch, &[0.0], &[1.0], 0);
    s.max_pixels = 1000;
    let plan = ImagePlan::new(&s, &spec(&[1, 8, 8, 3], DType::U8, None)).unwrap();
    assert!(prepare(&plan, &bytes).is_ok());
    s.max_pixels = 999;
    let plan = ImagePlan::new(&s, &spec(&[1, 8, 8, 3], DType::U8, None)).unwrap();
    assert_eq!(
        refused(&plan, &bytes),
        "PNG is 40x25 = 1,000 pixels, above [models.image] max_pixels 999"
    );
}

/// The same size with stretch is the decoded pixels, each through
/// `quant::store` exactly as a JSON value would be.
#[test]
fn same_size_pngs_are_copied_then_quantized_exactly() {
    let (w, h) = (32usize, 24usize);
    let pixels = noise(w * h * 3, 2);
    let bytes = rgb_png(w as u32, h as u32, &pixels);
    let mean = [123.7f32, 116.3, 103.5];
    let std = [58.4f32, 57.1, 57.4];
    let cases = [
        (DType::F32, None),
        (DType::I8, Some((0.018_658, -14))),
        (DType::U8, Some((0.020_4, 114))),
        // Integers without quantization take the value rounded.
        (DType::U8, None),
        (DType::I8, None),
    ];
    for (dtype, q) in cases {
        let input = spec(&[1, h, w, 3], dtype, q);
        let plan = ImagePlan::new(&settings(Resize::Stretch, &mean, &std, 0), &input).unwrap();
        let (info, out) = prepare(&plan, &bytes).unwrap();
        assert_eq!(
            info,
            ImageInfo {
                format: "png",
                width: 32,
                height: 24
            }
        );
        let mut want = vec![0u8; input.byte_len()];
        for (i, &p) in pixels.iter().enumerate() {
            let c = i % 3;
            let value = (f32::from(p) - mean[c]) / std[c];
            quant::store(dtype, input.quantization, &mut want, i, value);
        }
        assert_eq!(out, want, "{dtype:?} {q:?}");
    }
    // Identity: the pixels themselves, for each resize mode at the same
    // aspect ratio and size.
    for resize in [Resize::Stretch, Resize::Crop, Resize::Letterbox] {
        let (_, out) = prepare(&identity(resize, h, w, 3, 9), &bytes).unwrap();
        assert_eq!(out, pixels, "{resize:?}");
    }
}

#[test]
fn one_mean_and_std_serve_every_channel() {
    let pixels = noise(5 * 4 * 3, 3);
    let bytes = rgb_png(5, 4, &pixels);
    let input = spec(&[1, 4, 5, 3], DType::F32, None);
    let plan = ImagePlan::new(&settings(Resize::Stretch, &[127.5], &[127.5], 0), &input).unwrap();
    let (_, out) = prepare(&plan, &bytes).unwrap();
    for (i, &p) in pixels.iter().enumerate() {
        let got = f32::from_le_bytes(out[i * 4..i * 4 + 4].try_into().unwrap());
        assert_eq!(got.to_bits(), ((f32::from(p) - 127.5) / 127.5).to_bits());
    }
}

#[test]
fn color_becomes_pillows_grayscale_and_gray_becomes_rgb() {
    // RGB into a 1-channel input: Pillow's "L" (values checked against
    // Pillow in decode.rs).
    let bytes = rgb_png(2, 1, &[10, 200, 30, 255, 0, 0]);
    let (_, out) = prepare(&identity(Resize::Stretch, 1, 2, 1, 0), &bytes).unwrap();
    assert_eq!(out, [124, 76]);
    // A grayscale PNG into an RGB input: each value three times, through
    // each channel's own mean and std.
    let gray = png(
        3,
        1,
        png::ColorType::Grayscale,
        png::BitDepth::Eight,
        &[0, 100, 255],
        None,
    );
    let (_, out) = prepare(&identity(Resize::Stretch, 1, 3, 3, 0), &gray).unwrap();
    assert_eq!(out, [0, 0, 0, 100, 100, 100, 255, 255, 255]);
    let input = spec(&[1, 1, 3, 3], DType::F32, None);
    let plan = ImagePlan::new(
        &settings(Resize::Stretch, &[0.0, 100.0, 0.0], &[1.0, 1.0, 2.0], 0),
        &input,
    )
    .unwrap();
    let (_, out) = prepare(&plan, &gray).unwrap();
    let floats: Vec<f32> = out
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert_eq!(
        floats,
        [0.0, -100.0, 0.0, 100.0, 0.0, 50.0, 255.0, 155.0, 127.5]
    );
    // And a grayscale JPEG into an RGB input: three equal channels.
    let jpeg = fixture("gray-320x240.jpg");
    let (info, out) = prepare(&identity(Resize::Stretch, 240, 320, 3, 0), &jpeg).unwrap();
    assert_eq!((info.format, info.width, info.height), ("jpeg", 320, 240));
    assert!(out.chunks_exact(3).all(|p| p[0] == p[1] && p[1] == p[2]));
    let (_, one) = prepare(&identity(Resize::Stretch, 240, 320, 1, 0), &jpeg).unwrap();
    assert!(out.chunks_exact(3).zip(&one).all(|(p, &g)| p[0] == g));
}

#[test]
fn every_png_color_type_decodes_like_pillows_convert() {
    use png::{BitDepth, ColorType};
    let rgb = [10u8, 20, 30, 200, 150, 100];
    // RGBA and gray+alpha: alpha dropped, not composited.
    let rgba = png(
        2,
        1,
        ColorType::Rgba,
        BitDepth::Eight,
        &[10, 20, 30, 0, 200, 150, 100, 77],
        None,
    );
    let (_, out) = prepare(&identity(Resize::Stretch, 1, 2, 3, 0), &rgba).unwrap();
    assert_eq!(out, rgb);
    let (_, out) = prepare(&identity(Resize::Stretch, 1, 2, 1, 0), &rgba).unwrap();
    // (10*19595 + 20*38470 + 30*7471 + 32768) >> 16 = 18; 200,150,100 -> 159
    assert_eq!(out, [18, 159]);
    let la = png(
        2,
        1,
        ColorType::GrayscaleAlpha,
        BitDepth::Eight,
        &[7, 0, 250, 255],
        None,
    );
    let (_, out) = prepare(&identity(Resize::Stretch, 1, 2, 1, 0), &la).unwrap();
    assert_eq!(out, [7, 250]);
    let (_, out) = prepare(&identity(Resize::Stretch, 1, 2, 3, 0), &la).unwrap();
    assert_eq!(out, [7, 7, 7, 250, 250, 250]);
    // 16 bits: the high byte.
    let rgb16 = png(
        2,
        1,
        ColorType::Rgb,
        BitDepth::Sixteen,
        &[10, 255, 20, 0, 30, 128, 200, 1, 150, 2, 100, 3],
        None,
    );
    let (_, out) = prepare(&identity(Resize::Stretch, 1, 2, 3, 0), &rgb16).unwrap();
    assert_eq!(out, rgb);
    let gray16 = png(
        2,
        1,
        ColorType::Grayscale,
        BitDepth::Sixteen,
        &[0x12, 0xff, 0xfe, 0x01],
        None,
    );
    let (_, out) = prepare(&identity(Resize::Stretch, 1, 2, 1, 0), &gray16).unwrap();
    assert_eq!(out, [0x12, 0xfe]);
    // Palettes, with transparency (dropped) and without; 2 bits per index.
    let plte = [10u8, 20, 30, 200, 150, 100, 1, 2, 3];
    for trns in [&[][..], &[0, 128]] {
        let indexed = png(
            3,
            1,
            ColorType::Indexed,
            BitDepth::Two,
            &[0b0001_1000],
            Some((&plte, trns)),
        );
        let (_, out) = prepare(&identity(Resize::Stretch, 1, 3, 3, 0), &indexed).unwrap();
        assert_eq!(out, [10, 20, 30, 200, 150, 100, 1, 2, 3], "tRNS {trns:?}");
    }
    // 1-bit grayscale: 0 and 255.
    let bits = png(
        4,
        1,
        ColorType::Grayscale,
        BitDepth::One,
        &[0b1010_0000],
        None,
    );
    let (_, out) = prepare(&identity(Resize::Stretch, 1, 4, 1, 0), &bits).unwrap();
    assert_eq!(out, [255, 0, 255, 0]);
}

/// png 0.18.1 panics on a palette whose length is not a multiple of 3
/// (found by `robustness_image`); it is refused before the decoder sees it.
#[test]
fn a_palette_of_a_wrong_length_is_refused() {
    for len in [4usize, 5, 7, 17, 767] {
        let mut b = b"\x89PNG\r\n\x1a\n".to_vec();
        chunk(&mut b, b"IHDR", &[0, 0, 0, 1, 0, 0, 0, 1, 8, 3, 0, 0, 0]);
        chunk(&mut b, b"tEXt", b"a\0b");
        chunk(&mut b, b"PLTE", &noise(len, 8));
        chunk(&mut b, b"IDAT", &zlib_stored(&[0, 0]));
        chunk(&mut b, b"IEND", &[]);
        let plan = identity(Resize::Stretch, 1, 1, 3, 0);
        assert_eq!(
            refused(&plan, &b),
            format!("corrupt PNG: a palette (PLTE) of {len} bytes; it holds 3 bytes per colour")
        );
        // A well-formed palette of the same image decodes.
        let mut good = b"\x89PNG\r\n\x1a\n".to_vec();
        chunk(&mut good, b"IHDR", &[0, 0, 0, 1, 0, 0, 0, 1, 8, 3, 0, 0, 0]);
        chunk(&mut good, b"PLTE", &[9, 8, 7]);
        chunk(&mut good, b"IDAT", &zlib_stored(&[0, 0]));
        chunk(&mut good, b"IEND", &[]);
        assert_eq!(prepare(&plan, &good).unwrap().1, [9, 8, 7]);
    }
}

/// The same pixels as a plain and as an Adam7-interlaced PNG (filter type
/// None, stored deflate blocks: the layout is written here, not by an
/// encoder) decode alike.
#[test]
fn interlaced_pngs_decode_like_plain_ones() {
    let (w, h) = (13usize, 11usize);
    let pixels = noise(w * h * 3, 4);
    let plain = raw_png(w, h, 0, &pixels);
    let interlaced = raw_png(w, h, 1, &pixels);
    let plan = identity(Resize::Stretch, h, w, 3, 0);
    assert_eq!(prepare(&plan, &plain).unwrap().1, pixels);
    assert_eq!(prepare(&plan, &interlaced).unwrap().1, pixels);
}

/// An 8-bit RGB PNG written by hand: scanlines with filter type None, in
/// Adam7 pass order if `interlace` is 1, in stored deflate blocks.
pub(super) fn raw_png(w: usize, h: usize, interlace: u8, pixels: &[u8]) -> Vec<u8> {
    let mut scan = Vec::new();
    if interlace == 0 {
        for row in pixels.chunks_exact(w * 3) {
            scan.push(0);
            scan.extend_from_slice(row);
        }
    } else {
        // (x0, y0, dx, dy) per pass.
        for (x0, y0, dx, dy) in [
            (0, 0, 8, 8),
            (4, 0, 8, 8),
            (0, 4, 4, 8),
            (2, 0, 4, 4),
            (0, 2, 2, 4),
            (1, 0, 2, 2),
            (0, 1, 1, 2),
        ] {
            if x0 >= w || y0 >= h {
                continue;
            }
            for y in (y0..h).step_by(dy) {
                scan.push(0);
                for x in (x0..w).step_by(dx) {
                    scan.extend_from_slice(&pixels[(y * w + x) * 3..][..3]);
                }
            }
        }
    }
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&(w as u32).to_be_bytes());
    ihdr.extend_from_slice(&(h as u32).to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, interlace]);
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &zlib_stored(&scan));
    chunk(&mut out, b"IEND", &[]);
    out
}

/// `data` as a zlib stream of stored (uncompressed) blocks.
pub(super) fn zlib_stored(data: &[u8]) -> Vec<u8> {
    let mut z = vec![0x78, 0x01];
    let mut blocks = data.chunks(65_535).peekable();
    if blocks.peek().is_none() {
        z.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    }
    while let Some(block) = blocks.next() {
        z.push(u8::from(blocks.peek().is_none()));
        let len = block.len() as u16;
        z.extend_from_slice(&len.to_le_bytes());
        z.extend_from_slice(&(!len).to_le_bytes());
        z.extend_from_slice(block);
    }
    let (mut a, mut b) = (1u32, 0u32);
    for &x in data {
        a = (a + u32::from(x)) % 65_521;
        b = (b + a) % 65_521;
    }
    z.extend_from_slice(&((b << 16) | a).to_be_bytes());
    z
}

/// Appends a PNG chunk with its CRC.
pub(super) fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let start = out.len();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = crc32(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

/// CRC-32 (ISO 3309, as PNG uses it), bit by bit: for tests only.
pub(super) fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn letterbox_padding_is_the_pad_value_quantized() {
    // 40x20 into 32x32: 32x16 at the middle, 8 rows of padding above and
    // below.
    let pixels = noise(40 * 20 * 3, 5);
    let bytes = rgb_png(40, 20, &pixels);
    let mean = [100.0f32, 110.0, 120.0];
    let std = [50.0f32, 60.0, 70.0];
    let q = Some((0.03f32, -5));
    let input = spec(&[1, 32, 32, 3], DType::I8, q);
    let plan = ImagePlan::new(&settings(Resize::Letterbox, &mean, &std, 114), &input).unwrap();
    let (_, out) = prepare(&plan, &bytes).unwrap();
    let mut pad = [0u8; 3];
    for c in 0..3 {
        quant::store(
            DType::I8,
            input.quantization,
            &mut pad,
            c,
            (114.0 - mean[c]) / std[c],
        );
    }
    let row = 32 * 3;
    for y in (0..8).chain(24..32) {
        for px in out[y * row..(y + 1) * row].chunks_exact(3) {
            assert_eq!(px, pad, "row {y}");
        }
    }
    // The image rows are not padding (noise is never 114 for 32 pixels).
    for y in 8..24 {
        assert!(
            out[y * row..(y + 1) * row]
                .chunks_exact(3)
                .any(|px| px != pad),
            "row {y}"
        );
    }
    // Identity plan: the pad value itself; the middle is the image resized
    // (40x20 -> 32x16), as stretch gives it at that size.
    let (_, out) = prepare(&identity(Resize::Letterbox, 32, 32, 3, 114), &bytes).unwrap();
    assert!(out[..8 * row]
        .iter()
        .chain(&out[24 * row..])
        .all(|&v| v == 114));
    let (_, stretched) = prepare(&identity(Resize::Stretch, 16, 32, 3, 0), &bytes).unwrap();
    assert_eq!(&out[8 * row..24 * row], &stretched[..]);
    // Left and right padding for a tall image: 20x40 into 32x32 is 16x32
    // at x = 8.
    let tall = rgb_png(20, 40, &pixels);
    let (_, out) = prepare(&identity(Resize::Letterbox, 32, 32, 1, 7), &tall).unwrap();
    for y in 0..32 {
        let r = &out[y * 32..(y + 1) * 32];
        assert!(r[..8].iter().chain(&r[24..]).all(|&v| v == 7), "row {y}");
    }
}

#[test]
fn crop_keeps_the_centre_at_the_inputs_aspect() {
    // 64x32 into 32x32: the box is columns 16..48, at scale 1 a copy.
    let (w, h) = (64usize, 32usize);
    let pixels = noise(w * h * 3, 6);
    let bytes = rgb_png(w as u32, h as u32, &pixels);
    let (_, out) = prepare(&identity(Resize::Crop, 32, 32, 3, 0), &bytes).unwrap();
    let want: Vec<u8> = pixels
        .chunks_exact(w * 3)
        .flat_map(|row| row[16 * 3..48 * 3].to_vec())
        .collect();
    assert_eq!(out, want);
    // 32x64 into 32x32: rows 16..48.
    let tall = rgb_png(32, 64, &pixels);
    let (_, out) = prepare(&identity(Resize::Crop, 32, 32, 3, 0), &tall).unwrap();
    assert_eq!(out, pixels[16 * 32 * 3..48 * 32 * 3]);
    // 64x32 into 16x16: the box is 32x32 at x = 16, shrunk by 2: each
    // output pixel averages the box's pixels under it (bilinear support 2
    // at scale 2, weights 1/8, 3/8, 3/8, 1/8), so a box of one flat value
    // stays that value whatever lies outside... within a pixel of the
    // edge, where the filter reaches past the box.
    let mut framed = vec![0u8; w * h];
    for y in 0..h {
        for x in 0..w {
            framed[y * w + x] = if (16..48).contains(&x) { 100 } else { 250 };
        }
    }
    let gray = png(
        w as u32,
        h as u32,
        png::ColorType::Grayscale,
        png::BitDepth::Eight,
        &framed,
        None,
    );
    let (_, out) = prepare(&identity(Resize::Crop, 16, 16, 1, 0), &gray).unwrap();
    for y in 0..16 {
        let r = &out[y * 16..(y + 1) * 16];
        assert!(r[1..15].iter().all(|&v| v == 100), "row {y}: {r:?}");
        // The edge columns see 1/8 of the frame: (3*100 + 3*100 + 100 + 250) / 8.
        assert!(r[0] > 100 && r[0] < 130 && r[15] == r[0], "row {y}: {r:?}");
    }
}

#[test]
fn scratch_buffers_carry_nothing_from_one_image_to_the_next() {
    let plan = identity(Resize::Letterbox, 50, 60, 3, 3);
    let images = [
        fixture("photo-640x480.jpg"),
        rgb_png(7, 90, &noise(7 * 90 * 3, 7)),
        fixture("gray-320x240.png"),
        fixture("rgba-200x150.png"),
        fixture("variant-cmyk.jpg"),
    ];
    let mut scratch = ImageScratch::default();
    for bytes in images.iter().chain(images.iter().rev()) {
        let mut out = vec![0; plan.byte_len];
        plan.prepare(bytes, &mut out, &mut scratch).unwrap();
        assert_eq!(out, prepare(&plan, bytes).unwrap().1);
    }
}

#[test]
fn truncated_and_corrupt_files_say_so() {
    let plan = identity(Resize::Stretch, 32, 32, 3, 0);
    let jpeg = fixture("photo-300x200.jpg");
    // Cut in the middle, or only the end-of-image marker missing (the
    // decoder manages all blocks without it; Pillow refuses it too).
    for cut in [jpeg.len() / 2, jpeg.len() - 2] {
        assert_eq!(
            refused(&plan, &jpeg[..cut]),
            format!(
                "JPEG data ends after {} bytes, before the image is complete (no end-of-image marker after the image data)",
                thousands(cut as u64)
            )
        );
    }
    // A Huffman table entry out of range.
    let mut bad = jpeg.clone();
    let dht = (0..bad.len() - 1)
        .find(|&i| bad[i] == 0xff && bad[i + 1] == 0xc4)
        .unwrap();
    bad[dht + 5..dht + 21].fill(0xff);
    let e = refused(&plan, &bad);
    assert!(e.starts_with("corrupt JPEG: "), "{e}");

    let png_bytes = fixture("photo-300x200.png");
    let e = refused(&plan, &png_bytes[..png_bytes.len() / 2]);
    assert!(
        e.starts_with(&format!(
            "PNG data ends after {} bytes, before the image is complete",
            thousands(png_bytes.len() as u64 / 2)
        )),
        "{e}"
    );
    // A flipped bit in the image data: the chunk's CRC catches it.
    let mut bad = png_bytes.clone();
    let at = bad.len() / 2;
    bad[at] ^= 0x10;
    let e = refused(&plan, &bad);
    assert!(e.starts_with("corrupt PNG: ") && e.contains("CRC"), "{e}");
}

#[test]
fn thousands_are_grouped() {
    assert_eq!(thousands(0), "0");
    assert_eq!(thousands(999), "999");
    assert_eq!(thousands(1000), "1,000");
    assert_eq!(thousands(3_600_000_000), "3,600,000,000");
}
