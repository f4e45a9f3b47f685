//! Image payloads (a JPEG or PNG file) to an image model's input tensor:
//! the format from the magic bytes, the dimensions from the header and the
//! pixel cap checked before any decoding (`header`); decoding to 8-bit RGB
//! or grayscale (`decode`); fitting to the input's height x width with
//! Pillow's geometry and bilinear resampling (`resize`); then
//! `(pixel - mean[c]) / std[c]` in f32, quantized exactly as
//! `quant::store` does, through a 256-entry table per channel.
//!
//! [`ImagePlan`] is built once per model (it checks the input tensor and
//! the settings); [`ImagePlan::prepare`] serves one payload with the
//! buffers of an [`ImageScratch`] kept per worker.
//!
//! Crates, all pure Rust, chosen by measurement (release build, x86_64
//! with AVX2, CPU time of one thread, best of 9 runs, on this 2-core
//! machine shared with other builds; the photo-like 640x480 JPEG of the
//! fixtures, quality 90, 4:2:0, 71 kB):
//!
//! - JPEG: zune-jpeg 0.5 (image-rs's JPEG decoder; SIMD on x86_64 and
//!   aarch64): 1.2-1.3 ms. jpeg-decoder 0.3 took 2.0 ms of CPU (spread
//!   over its worker threads) and is in maintenance mode; its DCT-domain
//!   scaling (decoding at 1/2 scale, 320x240, still >= 224x224) took
//!   1.7 ms: less saved than zune-jpeg's full decode costs, so not used
//!   (zune-jpeg has no scaled decoding).
//! - PNG: png 0.18 (image-rs; fdeflate): 1.7 ms for a 640x480 RGB PNG
//!   against zune-png's 3.2 ms; and it has memory limits and skips text
//!   and ICC chunks unread, where zune-png inflates them with a 1 GiB
//!   limit (a decompression bomb in a 1 MB payload).
//! - Resize: fast_image_resize 6 (a SIMD port of Pillow's convolution
//!   resampler): 0.19-0.25 ms for 640x480 -> 224x224 RGB.
//!
//! The whole `prepare` of that JPEG into MobileNet's 224x224x3 int8 input
//! (stretch): 1.64 ms = decode 1.34 + resize 0.25 + quantize 0.04 (the
//! EOI scan 0.02). Pillow on the same machine, as a Python bridge does it
//! (`Image.open(...).convert("RGB").resize((224, 224), Image.BILINEAR)`,
//! then numpy to int8): 4.5 ms of CPU (decode 1.8-2.4, resize 1.3).
//!
//! What is not done, as with Pillow's `Image.open`: EXIF orientation is
//! not applied, ICC profiles are ignored, only an animated PNG's default
//! image is read.

mod decode;
mod header;
#[cfg(test)]
mod reference;
mod resize;
#[cfg(test)]
mod robustness;
#[cfg(test)]
mod tests;

use fast_image_resize as fr;
use model_runtime::{DType, TensorSpec};

use super::{quant, ErrorCode, Failure};
use crate::config::{ImageSettings, Resize};
use resize::Fit;

/// The image formats decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Jpeg,
    Png,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Jpeg => "jpeg",
            Format::Png => "png",
        }
    }

    /// As messages name it.
    fn name(self) -> &'static str {
        match self {
            Format::Jpeg => "JPEG",
            Format::Png => "PNG",
        }
    }
}

/// What a served image was, for the result's `"image"` object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageInfo {
    /// "jpeg" or "png".
    pub format: &'static str,
    pub width: u32,
    pub height: u32,
}

/// How one model turns images into its input: built once per model from
/// its `[models.image]` settings and its input tensor; shared by its
/// workers.
#[derive(Debug, Clone)]
pub struct ImagePlan {
    /// Input height and width.
    height: u32,
    width: u32,
    /// Input channels: 1 (grayscale) or 3 (RGB).
    channels: usize,
    /// Bytes per element: 4 (float32) or 1 (int8, uint8).
    elem: usize,
    resize: Resize,
    max_pixels: u64,
    /// The input's bytes per pixel value and channel: element `c * 256 + v`
    /// (of `elem` bytes) is what `quant::store` writes for
    /// `(v - mean[c]) / std[c]`.
    table: Vec<u8>,
    /// One pixel of letterbox padding, as written into the input
    /// (`channels` elements).
    pad: Vec<u8>,
    /// The input's size in bytes.
    byte_len: usize,
}

/// Buffers one worker reuses from image to image.
#[derive(Default)]
pub struct ImageScratch {
    /// The decoded image (1 or 3 channels).
    decoded: Vec<u8>,
    /// The resized image, before quantization.
    resized: Vec<u8>,
    /// fast_image_resize's state and intermediate buffers.
    resizer: fr::Resizer,
}

// One plan serves all of a model's workers; each worker owns a scratch.
const _: fn() = || {
    fn shared<T: Send + Sync>() {}
    fn owned<T: Send>() {}
    shared::<ImagePlan>();
    owned::<ImageScratch>();
};

/// Buffers above this are freed after their image rather than kept for
/// the next one: one 16-megapixel image should not pin 48 MB per worker.
const KEEP_BYTES: usize = 32 << 20;

impl ImageScratch {
    fn trim(&mut self) {
        for buf in [&mut self.decoded, &mut self.resized] {
            if buf.capacity() > KEEP_BYTES {
                *buf = Vec::new();
            }
        }
        if self.resizer.size_of_internal_buffers() > KEEP_BYTES {
            self.resizer.reset_internal_buffers();
        }
    }
}

/// Why an image model cannot be planned: the setting at fault and what is
/// wrong with it.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanError {
    pub setting: PlanSetting,
    pub message: String,
}

/// The setting an image plan refused: the input tensor itself (the model
/// is not an image model), or one key of `[models.image]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlanSetting {
    Input,
    Mean,
    Std,
    MaxPixels,
}

impl PlanSetting {
    pub fn as_str(self) -> &'static str {
        match self {
            PlanSetting::Input => "input",
            PlanSetting::Mean => "mean",
            PlanSetting::Std => "std",
            PlanSetting::MaxPixels => "max_pixels",
        }
    }
}

impl std::fmt::Display for PlanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl ImagePlan {
    /// Checks the input tensor: shape [1,H,W,C] or [H,W,C], C 1 or 3,
    /// dtype f32/i8/u8; mean/std lengths 1 or C, std != 0.
    /// Err: which setting is wrong and a sentence for check-config, e.g.
    /// "input 'image' is [1,10] float32; an image model needs [1, height,
    /// width, 1 or 3]".
    pub fn new(settings: &ImageSettings, input: &TensorSpec) -> Result<ImagePlan, PlanError> {
        Self::plan(settings, input).map_err(|(setting, message)| PlanError { setting, message })
    }

    fn plan(
        settings: &ImageSettings,
        input: &TensorSpec,
    ) -> Result<ImagePlan, (PlanSetting, String)> {
        let shape = format!(
            "[{}]",
            input
                .shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(",")
        );
        let what = format!("input '{}' is {shape} {}", input.name, input.dtype);
        let (height, width, channels) = match input.shape[..] {
            [1, h, w, c] if h > 0 && w > 0 && (c == 1 || c == 3) => (h, w, c),
            // Without a batch dimension, [1, 128, 3] is a window of 128
            // readings of 3 axes far more often than a 1-pixel-high image.
            [h, w, c] if h > 1 && w > 0 && (c == 1 || c == 3) => (h, w, c),
            _ => {
                return Err((
                    PlanSetting::Input,
                    format!("{what}; an image model needs [1, height, width, 1 or 3]"),
                ))
            }
        };
        let (Ok(height), Ok(width)) = (u32::try_from(height), u32::try_from(width)) else {
            return Err((
                PlanSetting::Input,
                format!("{what}; its height and width must fit in 32 bits"),
            ));
        };
        let elem = match input.dtype {
            DType::F32 => 4,
            DType::I8 | DType::U8 => 1,
            _ => {
                return Err((
                    PlanSetting::Input,
                    format!("{what}; an image model's input must be float32, int8 or uint8"),
                ))
            }
        };
        let per_channel = |key: PlanSetting,
                           values: &[f32]|
         -> Result<Vec<f32>, (PlanSetting, String)> {
            match values.len() {
                1 => Ok(vec![values[0]; channels]),
                n if n == channels => Ok(values.to_vec()),
                n => Err((key, format!(
                    "[models.image] {} has {n} values; input '{}' has {channels} channel{}: give 1{}",
                    key.as_str(),
                    input.name,
                    if channels == 1 { "" } else { "s" },
                    if channels == 1 { String::new() } else { format!(" or {channels}") },
                ))),
            }
        };
        let mean = per_channel(PlanSetting::Mean, &settings.mean)?;
        let std = per_channel(PlanSetting::Std, &settings.std)?;
        for (i, (&m, &s)) in mean.iter().zip(&std).enumerate() {
            if !m.is_finite() {
                return Err((
                    PlanSetting::Mean,
                    format!("[models.image] mean {m} (channel {i}) is not a finite number"),
                ));
            }
            if !s.is_finite() || s == 0.0 {
                return Err((
                    PlanSetting::Std,
                    format!(
                        "[models.image] std {s} (channel {i}) must be a finite number other than 0"
                    ),
                ));
            }
        }
        if settings.max_pixels == 0 {
            return Err((
                PlanSetting::MaxPixels,
                "[models.image] max_pixels is 0; it must be at least 1".into(),
            ));
        }

        let q = input.quantization;
        let value = |c: usize, v: u8| (f32::from(v) - mean[c]) / std[c];
        let mut table = vec![0u8; channels * 256 * elem];
        for c in 0..channels {
            for v in 0..=255u8 {
                let x = value(c, v);
                if !x.is_finite() {
                    return Err((
                        PlanSetting::Std,
                        format!(
                            "[models.image] mean {:?} and std {:?} make pixel value {v} {x}, not a finite number",
                            mean[c], std[c]
                        ),
                    ));
                }
                quant::store(input.dtype, q, &mut table, c * 256 + usize::from(v), x);
            }
        }
        let mut pad = vec![0u8; channels * elem];
        for c in 0..channels {
            let at = (c * 256 + usize::from(settings.pad)) * elem;
            pad[c * elem..(c + 1) * elem].copy_from_slice(&table[at..at + elem]);
        }
        Ok(ImagePlan {
            height,
            width,
            channels,
            elem,
            resize: settings.resize,
            max_pixels: settings.max_pixels,
            table,
            pad,
            byte_len: input.byte_len(),
        })
    }

    /// Fills `out` (exactly input.byte_len() bytes) from the image file
    /// `bytes`. Errors are `bad_image`, each saying what was expected and
    /// what came.
    ///
    /// Time per 640x480 photo-like JPEG to a 224x224x3 int8 input (release,
    /// x86_64; the machine shared): see the module doc for the parts.
    pub fn prepare(
        &self,
        bytes: &[u8],
        out: &mut [u8],
        scratch: &mut ImageScratch,
    ) -> Result<ImageInfo, Failure> {
        if out.len() != self.byte_len {
            return Err(Failure::new(
                ErrorCode::InferenceFailed,
                format!(
                    "internal: the input buffer has {} bytes, the image input takes {}",
                    out.len(),
                    self.byte_len
                ),
            ));
        }
        let result = self.prepare_into(bytes, out, scratch);
        scratch.trim();
        result.map_err(|message| Failure::new(ErrorCode::BadImage, message))
    }

    fn prepare_into(
        &self,
        bytes: &[u8],
        out: &mut [u8],
        scratch: &mut ImageScratch,
    ) -> Result<ImageInfo, String> {
        let header = header::read(bytes)?;
        let (w, h) = (header.width, header.height);
        let pixels = u64::from(w) * u64::from(h);
        if pixels > self.max_pixels {
            return Err(format!(
                "{} is {w}x{h} = {} pixels, above [models.image] max_pixels {}",
                header.format.name(),
                thousands(pixels),
                thousands(self.max_pixels)
            ));
        }
        let decoded = decode::decode(&header, bytes, self.channels == 1, &mut scratch.decoded)?;
        let fit = resize::fit(self.resize, (w, h), (self.width, self.height));
        let pixels = if fit.is_copy(w, h) {
            &scratch.decoded
        } else {
            resize::resize(
                &mut scratch.resizer,
                &scratch.decoded,
                (w, h),
                decoded.channels,
                &fit,
                &mut scratch.resized,
            )?;
            &scratch.resized
        };
        self.write(pixels, decoded.channels, &fit, out);
        Ok(ImageInfo {
            format: header.format.as_str(),
            width: w,
            height: h,
        })
    }

    /// Writes the fitted image (`fit.width` x `fit.height` pixels of
    /// `channels`) at its place in `out` through the table, padding the
    /// rest.
    fn write(&self, pixels: &[u8], channels: usize, fit: &Fit, out: &mut [u8]) {
        if (fit.width, fit.height) != (self.width, self.height) {
            for px in out.chunks_exact_mut(self.pad.len()) {
                px.copy_from_slice(&self.pad);
            }
        }
        let place = Place {
            src_width: fit.width as usize,
            rows: fit.height as usize,
            dst_width: self.width as usize,
            left: fit.left as usize,
            top: fit.top as usize,
        };
        let t = &self.table;
        // One loop per combination, so each is compiled with constant
        // strides.
        match (self.elem, channels, self.channels) {
            (1, 1, 1) => place.write::<1, 1, 1>(t, pixels, out),
            (1, 1, _) => place.write::<1, 1, 3>(t, pixels, out),
            (1, _, _) => place.write::<1, 3, 3>(t, pixels, out),
            (_, 1, 1) => place.write::<4, 1, 1>(t, pixels, out),
            (_, 1, _) => place.write::<4, 1, 3>(t, pixels, out),
            _ => place.write::<4, 3, 3>(t, pixels, out),
        }
    }
}

/// Where the fitted image's rows go in the input.
struct Place {
    src_width: usize,
    rows: usize,
    dst_width: usize,
    left: usize,
    top: usize,
}

impl Place {
    /// `E` bytes per element, `K` channels in `pixels`, `C` in the input
    /// (K is C, or 1 for a grayscale image into an RGB input: the gray
    /// value goes through each channel's table).
    #[inline(always)]
    fn write<const E: usize, const K: usize, const C: usize>(
        &self,
        table: &[u8],
        pixels: &[u8],
        out: &mut [u8],
    ) {
        let src_row = self.src_width * K;
        let dst_row = self.dst_width * C * E;
        for (y, src) in pixels.chunks_exact(src_row).take(self.rows).enumerate() {
            let start = (self.top + y) * dst_row + self.left * C * E;
            let dst = &mut out[start..start + self.src_width * C * E];
            for (px, o) in src.chunks_exact(K).zip(dst.chunks_exact_mut(C * E)) {
                for c in 0..C {
                    let v = usize::from(px[if K == 1 { 0 } else { c }]);
                    let at = (c * 256 + v) * E;
                    o[c * E..(c + 1) * E].copy_from_slice(&table[at..at + E]);
                }
            }
        }
    }
}

/// `1234567` as "1,234,567": pixel counts and byte offsets in messages.
pub(crate) fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}
