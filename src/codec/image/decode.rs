//! JPEG and PNG files to 8-bit pixels, with as many channels as the model
//! needs: 1 (grayscale) or 3 (RGB); a grayscale image stays 1 channel for
//! an RGB model (the channels are equal, so it is replicated only when
//! written into the tensor). Conversions follow Pillow's `convert`: alpha
//! is dropped (not composited), palettes expanded, RGB to grayscale with
//! the ITU-R 601 weights of Pillow's "L" mode.

use std::io::{Cursor, ErrorKind};

use zune_core::bytestream::ZCursor;
use zune_core::colorspace::ColorSpace;
use zune_core::options::DecoderOptions;
use zune_jpeg::errors::DecodeErrors;
use zune_jpeg::JpegDecoder;

use super::header::{self, Header};
use super::{thousands, Format};

/// Memory the PNG decoder may allocate besides the output (its row
/// buffers; text and ICC chunks are skipped unread): 64 MiB, the png
/// crate's default, enough for rows of any image within the pixel cap
/// except 16-bit RGBA wider than 4 million pixels.
const PNG_DECODER_BYTES: usize = 64 << 20;

/// The pixels `decode` left in its buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decoded {
    /// 1 or 3, interleaved.
    pub channels: usize,
}

/// Decodes `bytes` (whose header is `header`, already checked against the
/// pixel cap) into `buf`: header.width x header.height pixels of 1 or 3
/// channels (1 only if the image is grayscale or `gray` asks for it).
pub fn decode(
    header: &Header,
    bytes: &[u8],
    gray: bool,
    buf: &mut Vec<u8>,
) -> Result<Decoded, String> {
    match header.format {
        Format::Jpeg => jpeg(header, bytes, gray, buf),
        Format::Png => png(header, bytes, gray, buf),
    }
}

fn jpeg(header: &Header, bytes: &[u8], gray: bool, buf: &mut Vec<u8>) -> Result<Decoded, String> {
    // Cut files first: the decoder does not notice when only the last
    // bytes are missing.
    if !header::jpeg_has_eoi(bytes, header.scan) {
        return Err(format!(
            "JPEG data ends after {} bytes, before the image is complete (no end-of-image marker after the image data)",
            thousands(bytes.len() as u64)
        ));
    }
    // Strict: truncated or corrupt data is an error, as with Pillow
    // (libjpeg warns, Pillow refuses "image file is truncated"); without it
    // the decoder fills what is missing with grey and succeeds. (A file
    // cut before its end-of-image marker was refused above.) The limits
    // are the dimensions already checked: the decoder cannot find a larger
    // frame than the header reader did.
    let options = |out: ColorSpace| {
        DecoderOptions::default()
            .set_strict_mode(true)
            .set_max_width(header.width as usize)
            .set_max_height(header.height as usize)
            .jpeg_set_out_colorspace(out)
    };
    // Luma straight from the decoder when the file has it: the Y channel
    // of a YCbCr JPEG is 0.299 R + 0.587 G + 0.114 B of the encoder's RGB,
    // the weights of Pillow's "L", without a round trip through upsampled
    // chroma. RGB, CMYK and YCCK files are decoded to RGB and converted.
    let luma = gray || header.components == 1;
    let mut decoder = JpegDecoder::new_with_options(
        ZCursor::new(bytes),
        options(if luma {
            ColorSpace::Luma
        } else {
            ColorSpace::RGB
        }),
    );
    decoder
        .decode_headers()
        .map_err(|e| jpeg_error(e, bytes.len()))?;
    let has_luma = matches!(
        decoder.input_colorspace(),
        Some(ColorSpace::YCbCr | ColorSpace::Luma)
    );
    let convert = luma && !has_luma;
    if convert {
        decoder = JpegDecoder::new_with_options(ZCursor::new(bytes), options(ColorSpace::RGB));
        decoder
            .decode_headers()
            .map_err(|e| jpeg_error(e, bytes.len()))?;
    }
    let found = decoder.dimensions();
    if found != Some((header.width as usize, header.height as usize)) {
        return Err(format!(
            "corrupt JPEG: its frame header says {}x{}, the decoder found {found:?}",
            header.width, header.height
        ));
    }
    let out_channels = if luma && !convert { 1 } else { 3 };
    let len = header.width as usize * header.height as usize * out_channels;
    if decoder.output_buffer_size() != Some(len) {
        let space = decoder
            .input_colorspace()
            .map_or_else(|| "unknown".to_string(), |c| format!("{c:?}"));
        return Err(format!(
            "unsupported JPEG: {} colour components in a {space} image",
            header.components
        ));
    }
    buf.clear();
    buf.resize(len, 0);
    decoder
        .decode_into(buf)
        .map_err(|e| jpeg_error(e, bytes.len()))?;
    if convert {
        to_luma(buf, 3);
        return Ok(Decoded { channels: 1 });
    }
    Ok(Decoded {
        channels: out_channels,
    })
}

/// The decoder's reason, worded as what was expected and what came.
fn jpeg_error(e: DecodeErrors, len: usize) -> String {
    let reason = bounded(&e.to_string());
    let truncated = match &e {
        DecodeErrors::ExhaustedData | DecodeErrors::IoErrors(_) => true,
        DecodeErrors::FormatStatic(s) => s.contains("Premature end"),
        _ => false,
    };
    if truncated {
        format!(
            "JPEG data ends after {} bytes, before the image is complete ({reason})",
            thousands(len as u64)
        )
    } else if matches!(e, DecodeErrors::Unsupported(_)) {
        format!("unsupported JPEG: {reason}")
    } else {
        format!("corrupt JPEG: {reason}")
    }
}

fn png(header: &Header, bytes: &[u8], gray: bool, buf: &mut Vec<u8>) -> Result<Decoded, String> {
    check_palettes(bytes)?;
    let mut decoder = png::Decoder::new_with_limits(
        Cursor::new(bytes),
        png::Limits {
            bytes: PNG_DECODER_BYTES,
        },
    );
    // Palettes and low bit depths expanded to 8 bits, tRNS to an alpha
    // channel, 16-bit samples cut to their high byte (as Pillow reads
    // 16-bit RGB).
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    // Never read: skipping them also skips their decompression, which a
    // small hostile file can make large.
    decoder.set_ignore_text_chunk(true);
    decoder.set_ignore_iccp_chunk(true);
    let mut reader = decoder.read_info().map_err(|e| png_error(e, bytes.len()))?;
    let info = reader.info();
    if (info.width, info.height) != (header.width, header.height) {
        return Err(format!(
            "corrupt PNG: its header says {}x{}, the decoder found {}x{}",
            header.width, header.height, info.width, info.height
        ));
    }
    let (color, depth) = reader.output_color_type();
    let samples = color.samples();
    let len = header.width as usize * header.height as usize * samples;
    if depth != png::BitDepth::Eight || reader.output_buffer_size() != Some(len) {
        return Err(format!(
            "unsupported PNG: {color:?} at {depth:?} bits did not expand to 8-bit samples"
        ));
    }
    buf.clear();
    buf.resize(len, 0);
    reader
        .next_frame(buf)
        .map_err(|e| png_error(e, bytes.len()))?;
    let channels = match (samples, gray) {
        (1, _) => 1,
        (2, _) => {
            drop_alpha(buf, 1);
            1
        }
        (3, false) => 3,
        (3, true) => {
            to_luma(buf, 3);
            1
        }
        (4, false) => {
            drop_alpha(buf, 3);
            3
        }
        (4, true) => {
            to_luma(buf, 4);
            1
        }
        _ => {
            return Err(format!(
                "unsupported PNG: {samples} samples per pixel after expansion"
            ))
        }
    };
    Ok(Decoded { channels })
}

/// Refuses a PLTE chunk whose length is not a multiple of 3 (PNG spec
/// 11.2.3: 3 bytes per entry). png 0.18.1 accepts any length from 3 to
/// 768 and then panics expanding such a palette (image-rs/image-png
/// issue 694; found by `robustness_image`). Walks the chunk headers only.
fn check_palettes(bytes: &[u8]) -> Result<(), String> {
    let mut at = 8usize;
    while let Some(head) = at.checked_add(8).and_then(|end| bytes.get(at..end)) {
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        if &head[4..8] == b"PLTE" && !len.is_multiple_of(3) {
            return Err(format!(
                "corrupt PNG: a palette (PLTE) of {len} bytes; it holds 3 bytes per colour"
            ));
        }
        if &head[4..8] == b"IEND" {
            break;
        }
        // length, type, data, CRC
        at = match at.checked_add(12).and_then(|a| a.checked_add(len)) {
            Some(next) => next,
            None => break,
        };
    }
    Ok(())
}

fn png_error(e: png::DecodingError, len: usize) -> String {
    match e {
        png::DecodingError::IoError(io) if io.kind() == ErrorKind::UnexpectedEof => format!(
            "PNG data ends after {} bytes, before the image is complete",
            thousands(len as u64)
        ),
        png::DecodingError::LimitsExceeded => format!(
            "PNG needs more than the decoder's {} MiB of row buffers",
            PNG_DECODER_BYTES >> 20
        ),
        png::DecodingError::Format(f) => {
            let reason = bounded(&f.to_string());
            // The image data stops short: the file was cut within or
            // right after its last IDAT chunk.
            if reason.starts_with("IDAT or fDAT chunk does not have enough data") {
                format!(
                    "PNG data ends after {} bytes, before the image is complete ({reason})",
                    thousands(len as u64)
                )
            } else {
                format!("corrupt PNG: {reason}")
            }
        }
        other => format!("corrupt PNG: {}", bounded(&other.to_string())),
    }
}

/// Drops the last channel of every pixel of `channels + 1` (in place).
fn drop_alpha(buf: &mut Vec<u8>, channels: usize) {
    let pixels = buf.len() / (channels + 1);
    for p in 0..pixels {
        for c in 0..channels {
            buf[p * channels + c] = buf[p * (channels + 1) + c];
        }
    }
    buf.truncate(pixels * channels);
}

/// RGB(A) to Pillow's "L" (in place): `(R*19595 + G*38470 + B*7471 +
/// 0x8000) >> 16`, the ITU-R 601-2 weights in 16-bit fixed point
/// (libImaging/Convert.c `L24`); any fourth channel (alpha) is ignored.
fn to_luma(buf: &mut Vec<u8>, stride: usize) {
    let pixels = buf.len() / stride;
    for p in 0..pixels {
        let at = p * stride;
        let l = u32::from(buf[at]) * 19595
            + u32::from(buf[at + 1]) * 38470
            + u32::from(buf[at + 2]) * 7471
            + 0x8000;
        buf[p] = (l >> 16) as u8;
    }
    buf.truncate(pixels);
}

/// A decoder's message, cut to 200 characters: never an echo of the
/// payload.
fn bounded(text: &str) -> String {
    let text = text.trim();
    match text.char_indices().nth(200) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luma_uses_pillows_weights() {
        // Values from Pillow: Image.new("RGB", (1, 1), rgb).convert("L").
        let mut b = vec![255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 255, 10, 200, 30];
        to_luma(&mut b, 3);
        assert_eq!(b, [76, 150, 29, 255, 124]);
        let mut b = vec![255, 0, 0, 7, 1, 2, 3, 9];
        to_luma(&mut b, 4);
        assert_eq!(b, [76, 2]);
    }

    #[test]
    fn alpha_is_dropped_in_place() {
        let mut b = vec![1, 2, 3, 4, 5, 6, 7, 8];
        drop_alpha(&mut b, 3);
        assert_eq!(b, [1, 2, 3, 5, 6, 7]);
        let mut b = vec![1, 2, 3, 4];
        drop_alpha(&mut b, 1);
        assert_eq!(b, [1, 3]);
    }

    #[test]
    fn decoder_messages_are_bounded() {
        let long = "x".repeat(1000);
        assert_eq!(bounded(&long).len(), 203);
        assert_eq!(bounded(" short "), "short");
    }
}
