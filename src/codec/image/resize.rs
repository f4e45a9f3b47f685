//! Fitting the decoded image to the input's height x width, with the
//! geometry of Pillow's own functions, so a model trained behind a Python
//! pipeline sees the same pixels:
//!
//! - stretch: `image.resize((W, H), Image.BILINEAR)`;
//! - crop: `ImageOps.fit(image, (W, H), Image.BILINEAR)`: the largest
//!   centred box with the input's aspect ratio, in fractional pixels,
//!   resized (pixels just outside the box weigh in at its edges, as with
//!   Pillow's `resize(box=...)`);
//! - letterbox: `ImageOps.pad(image, (W, H), Image.BILINEAR, color=pad)`:
//!   scaled to fit (`ImageOps.contain`), centred, the rest padding.
//!
//! The arithmetic is Pillow's, in f64 like Python's floats, including
//! Python's `round` (half to even). The resampling is fast_image_resize's
//! `Convolution(Bilinear)`, a SIMD port of Pillow's convolution resampler
//! (antialiased when shrinking): within 1 of Pillow per sample (measured
//! against Pillow's output in `reference.rs`).

use fast_image_resize as fr;
use fr::images::{TypedImage, TypedImageRef};
use fr::pixels::{U8x3, U8};

use crate::config::Resize;

/// Where the image goes: the part of the source resized (x, y, width,
/// height in source pixels), the size it is resized to, and where that
/// lands in the input (non-zero only for letterbox).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fit {
    pub source: [f64; 4],
    pub width: u32,
    pub height: u32,
    pub left: u32,
    pub top: u32,
}

impl Fit {
    /// Whether the resize is the identity: the whole source at its size.
    pub fn is_copy(&self, src_width: u32, src_height: u32) -> bool {
        self.source == [0.0, 0.0, f64::from(src_width), f64::from(src_height)]
            && (self.width, self.height) == (src_width, src_height)
    }
}

/// The geometry of `resize` for a `src` image into a `dst` input (each
/// width, height; all at least 1).
pub fn fit(resize: Resize, src: (u32, u32), dst: (u32, u32)) -> Fit {
    let (sw, sh) = (f64::from(src.0), f64::from(src.1));
    let (dw, dh) = (f64::from(dst.0), f64::from(dst.1));
    let whole = [0.0, 0.0, sw, sh];
    match resize {
        Resize::Stretch => Fit {
            source: whole,
            width: dst.0,
            height: dst.1,
            left: 0,
            top: 0,
        },
        Resize::Crop => {
            // ImageOps.fit with bleed 0 and centering (0.5, 0.5).
            let live_ratio = sw / sh;
            let output_ratio = dw / dh;
            let (crop_w, crop_h) = if live_ratio == output_ratio {
                (sw, sh)
            } else if live_ratio >= output_ratio {
                (output_ratio * sh, sh)
            } else {
                (sw, sw / output_ratio)
            };
            let left = (sw - crop_w) * 0.5;
            let top = (sh - crop_h) * 0.5;
            Fit {
                source: [left, top, crop_w, crop_h],
                width: dst.0,
                height: dst.1,
                left: 0,
                top: 0,
            }
        }
        Resize::Letterbox => {
            // ImageOps.contain, then ImageOps.pad's placement. Pillow
            // fails on a scaled side of 0 (an image over 448 times wider
            // than tall for 224x224); here it is 1 pixel.
            let im_ratio = sw / sh;
            let dest_ratio = dw / dh;
            let (mut width, mut height) = dst;
            if im_ratio != dest_ratio {
                if im_ratio > dest_ratio {
                    height = py_round(sh / sw * dw).clamp(1, dst.1);
                } else {
                    width = py_round(sw / sh * dh).clamp(1, dst.0);
                }
            }
            let (left, top) = if width != dst.0 {
                (py_round(f64::from(dst.0 - width) * 0.5), 0)
            } else {
                (0, py_round(f64::from(dst.1 - height) * 0.5))
            };
            Fit {
                source: whole,
                width,
                height,
                left,
                top,
            }
        }
    }
}

/// Python's `round(x)` for a non-negative x: to the nearest integer,
/// halves to even.
fn py_round(x: f64) -> u32 {
    x.round_ties_even() as u32
}

/// Resizes `src` (`size`, `channels` 1 or 3) as `fit` says into `dst`
/// (fit.width x fit.height, same channels).
pub fn resize(
    resizer: &mut fr::Resizer,
    src: &[u8],
    size: (u32, u32),
    channels: usize,
    fit: &Fit,
    dst: &mut Vec<u8>,
) -> Result<(), String> {
    let [left, top, width, height] = fit.source;
    let options = fr::ResizeOptions::new()
        .resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::Bilinear))
        .crop(left, top, width, height);
    dst.clear();
    dst.resize(fit.width as usize * fit.height as usize * channels, 0);
    let failed = |e: &dyn std::fmt::Display| format!("resizing failed: {e}");
    // Typed (one pixel type each) rather than the dynamic `resize`, which
    // would compile in every pixel type fast_image_resize knows.
    match channels {
        1 => {
            let from =
                TypedImageRef::<U8>::from_buffer(size.0, size.1, src).map_err(|e| failed(&e))?;
            let mut to = TypedImage::<U8>::from_buffer(fit.width, fit.height, dst)
                .map_err(|e| failed(&e))?;
            resizer
                .resize_typed(&from, &mut to, &options)
                .map_err(|e| failed(&e))
        }
        _ => {
            let from =
                TypedImageRef::<U8x3>::from_buffer(size.0, size.1, src).map_err(|e| failed(&e))?;
            let mut to = TypedImage::<U8x3>::from_buffer(fit.width, fit.height, dst)
                .map_err(|e| failed(&e))?;
            resizer
                .resize_typed(&from, &mut to, &options)
                .map_err(|e| failed(&e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(resize: Resize, src: (u32, u32), dst: (u32, u32)) -> Fit {
        fit(resize, src, dst)
    }

    #[test]
    fn stretch_takes_the_whole_image() {
        let g = f(Resize::Stretch, (640, 480), (224, 224));
        assert_eq!(g.source, [0.0, 0.0, 640.0, 480.0]);
        assert_eq!((g.width, g.height, g.left, g.top), (224, 224, 0, 0));
        assert!(f(Resize::Stretch, (224, 224), (224, 224)).is_copy(224, 224));
        assert!(!g.is_copy(640, 480));
    }

    #[test]
    fn crop_is_the_largest_centred_box_of_the_inputs_aspect() {
        // Wider than the input: the sides go.
        let g = f(Resize::Crop, (640, 480), (224, 224));
        assert_eq!(g.source, [80.0, 0.0, 480.0, 480.0]);
        assert_eq!((g.width, g.height, g.left, g.top), (224, 224, 0, 0));
        // Taller: top and bottom go.
        let g = f(Resize::Crop, (300, 500), (96, 64));
        assert_eq!(g.source, [0.0, 150.0, 300.0, 200.0]);
        // A fractional box, as ImageOps.fit computes it: 200 * 1.5 = 300
        // wide of 301, half a pixel off each side.
        let g = f(Resize::Crop, (301, 200), (96, 64));
        assert_eq!(g.source, [0.5, 0.0, 300.0, 200.0]);
        // The same aspect: the whole image; at the same size, a copy.
        let g = f(Resize::Crop, (448, 448), (224, 224));
        assert_eq!(g.source, [0.0, 0.0, 448.0, 448.0]);
        assert!(f(Resize::Crop, (224, 224), (224, 224)).is_copy(224, 224));
    }

    #[test]
    fn letterbox_fits_inside_and_centres_like_imageops_pad() {
        // 4:3 into a square: full width, 168 rows, 28 rows of padding above.
        let g = f(Resize::Letterbox, (640, 480), (224, 224));
        assert_eq!(g.source, [0.0, 0.0, 640.0, 480.0]);
        assert_eq!((g.width, g.height, g.left, g.top), (224, 168, 0, 28));
        // Taller than the input: full height, centred horizontally.
        let g = f(Resize::Letterbox, (480, 640), (96, 64));
        assert_eq!((g.width, g.height, g.left, g.top), (48, 64, 24, 0));
        // round(640/480*64) = round(85.33) = 85; round((96-85)/2) =
        // round(5.5) = 6.
        let g = f(Resize::Letterbox, (640, 480), (96, 64));
        assert_eq!((g.width, g.height, g.left, g.top), (85, 64, 6, 0));
        // Python's round, halves to even: a 3x2 image into 4x4 is 4x3
        // (round(2.67)), top round(0.5) = 0.
        let g = f(Resize::Letterbox, (3, 2), (4, 4));
        assert_eq!((g.width, g.height, g.left, g.top), (4, 3, 0, 0));
        // round(1.5) = 2.
        let g = f(Resize::Letterbox, (4, 1), (4, 4));
        assert_eq!((g.width, g.height, g.left, g.top), (4, 1, 0, 2));
        // Never a side of 0.
        let g = f(Resize::Letterbox, (10_000, 1), (224, 224));
        assert_eq!((g.width, g.height, g.left, g.top), (224, 1, 0, 112));
        // Same aspect: no padding.
        let g = f(Resize::Letterbox, (448, 448), (224, 224));
        assert_eq!((g.width, g.height, g.left, g.top), (224, 224, 0, 0));
    }

    #[test]
    fn resizing_to_the_same_size_copies() {
        let src: Vec<u8> = (0..5 * 4 * 3).map(|i| (i * 7 % 256) as u8).collect();
        let mut dst = Vec::new();
        let mut r = fr::Resizer::new();
        let g = f(Resize::Stretch, (5, 4), (5, 4));
        resize(&mut r, &src, (5, 4), 3, &g, &mut dst).unwrap();
        assert_eq!(dst, src);
    }

    #[test]
    fn a_flat_image_stays_flat() {
        let src = vec![77u8; 31 * 17];
        let mut dst = Vec::new();
        let mut r = fr::Resizer::new();
        for resize_mode in [Resize::Stretch, Resize::Crop, Resize::Letterbox] {
            for dst_size in [(7, 5), (100, 3), (64, 64)] {
                let g = f(resize_mode, (31, 17), dst_size);
                resize(&mut r, &src, (31, 17), 1, &g, &mut dst).unwrap();
                assert_eq!(dst.len(), (g.width * g.height) as usize);
                assert!(dst.iter().all(|&v| v == 77), "{resize_mode:?} {dst_size:?}");
            }
        }
    }
}
