//! What an image payload is, read from its first bytes before any decoder
//! sees it: the format (from the magic bytes) and the dimensions (from the
//! PNG IHDR chunk or the JPEG frame header). The pixel cap is checked on
//! these numbers, so no decoder allocates for an image that is refused.

use super::{thousands, Format};

/// The header facts of one image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub format: Format,
    pub width: u32,
    pub height: u32,
    /// JPEG: colour components in the frame (1, 3 or 4); PNG: 0 (the
    /// decoder reports its colour type).
    pub components: u8,
    /// JPEG: where the first scan's entropy-coded data starts; PNG: 0.
    pub scan: usize,
}

const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];

/// The format and dimensions of `bytes`, or why they cannot be had.
pub fn read(bytes: &[u8]) -> Result<Header, String> {
    if bytes.starts_with(&PNG_SIGNATURE) {
        png(bytes)
    } else if bytes.starts_with(&[0xff, 0xd8, 0xff]) {
        jpeg(bytes)
    } else {
        Err(not_an_image(bytes))
    }
}

/// "expected a JPEG or PNG file; got ...": what came, named when it is a
/// format a camera or a client plausibly sends instead.
fn not_an_image(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return "expected a JPEG or PNG file; got an empty payload".into();
    }
    let named = [
        (&b"GIF8"[..], "a GIF image"),
        (b"BM", "a BMP image"),
        (b"II*\0", "a TIFF image"),
        (b"MM\0*", "a TIFF image"),
        (b"\0\0\0\x0cjP  ", "a JPEG 2000 image"),
        (b"\xff\x0a", "a JPEG XL image"),
        (b"qoif", "a QOI image"),
        (b"%PDF", "a PDF document"),
    ]
    .iter()
    .find(|(magic, _)| bytes.starts_with(magic))
    .map(|(_, name)| *name)
    .or_else(|| {
        if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
            Some("a WebP image")
        } else if bytes.len() >= 12 && &bytes[4..8] == b"ftyp" {
            match &bytes[8..12] {
                b"avif" | b"avis" => Some("an AVIF image"),
                b"heic" | b"heix" | b"mif1" | b"msf1" => Some("a HEIF image"),
                _ => Some("an ISO media file (MP4, HEIF, ...)"),
            }
        } else if bytes.starts_with(&[0xff, 0xd8]) {
            Some("a truncated JPEG (no marker after the start of image)")
        } else if bytes.starts_with(&PNG_SIGNATURE[..4]) {
            Some("a damaged PNG signature")
        } else {
            match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
                Some(b'{') | Some(b'[') => Some("JSON"),
                _ => None,
            }
        }
    });
    let first: Vec<String> = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
    let first = first.join(" ");
    match named {
        Some(name) => format!(
            "expected a JPEG or PNG file; got {name} ({} bytes starting {first})",
            thousands(bytes.len() as u64)
        ),
        None => format!(
            "expected a JPEG or PNG file; got {} bytes starting {first}",
            thousands(bytes.len() as u64)
        ),
    }
}

/// IHDR must be the first chunk (PNG spec 5.6), at a fixed place.
fn png(bytes: &[u8]) -> Result<Header, String> {
    // signature, chunk length, "IHDR", width, height
    let Some(ihdr) = bytes.get(8..24) else {
        return Err(format!(
            "PNG data ends after {} bytes, inside its 33-byte header",
            bytes.len()
        ));
    };
    if &ihdr[4..8] != b"IHDR" || ihdr[..4] != 13u32.to_be_bytes() {
        return Err(format!(
            "corrupt PNG: the first chunk must be a 13-byte IHDR; got {:?} of {} bytes",
            String::from_utf8_lossy(&ihdr[4..8]),
            u32::from_be_bytes([ihdr[0], ihdr[1], ihdr[2], ihdr[3]])
        ));
    }
    let width = u32::from_be_bytes([ihdr[8], ihdr[9], ihdr[10], ihdr[11]]);
    let height = u32::from_be_bytes([ihdr[12], ihdr[13], ihdr[14], ihdr[15]]);
    // PNG limits both to 2^31 - 1 and forbids 0.
    for (name, v) in [("width", width), ("height", height)] {
        if v == 0 || v > i32::MAX as u32 {
            return Err(format!(
                "corrupt PNG: {name} {} in its header (expected 1 to 2,147,483,647)",
                thousands(u64::from(v))
            ));
        }
    }
    Ok(Header {
        format: Format::Png,
        width,
        height,
        components: 0,
        scan: 0,
    })
}

/// Walks the marker segments up to the first scan (SOS), the way decoders
/// do: fill bytes (0xff) before a marker skipped, markers without a
/// length (RSTn, TEM) stepped over, anything else skipped by its length;
/// the frame header (SOFn) on the way gives the dimensions.
fn jpeg(bytes: &[u8]) -> Result<Header, String> {
    let ends = |before: &str| {
        format!(
            "JPEG data ends after {} bytes, inside its headers (before the {before})",
            thousands(bytes.len() as u64)
        )
    };
    let mut frame: Option<Header> = None;
    let mut at = 2;
    loop {
        let before = if frame.is_some() {
            "image data"
        } else {
            "frame header"
        };
        // A marker: 0xff, any fill bytes, then the marker code.
        match bytes.get(at) {
            None => return Err(ends(before)),
            Some(0xff) => {}
            Some(b) => {
                return Err(format!(
                    "corrupt JPEG: expected a marker (0xff) at byte {}, found 0x{b:02x}",
                    thousands(at as u64)
                ))
            }
        }
        while bytes.get(at) == Some(&0xff) {
            at += 1;
        }
        let Some(&marker) = bytes.get(at) else {
            return Err(ends(before));
        };
        at += 1;
        match marker {
            // TEM, RST0-7, SOI: no length, no payload.
            0x01 | 0xd0..=0xd8 => continue,
            0xd9 => {
                return Err(format!(
                    "corrupt JPEG: the image ends (EOI) before its {before}"
                ))
            }
            0x00 => {
                return Err(format!(
                    "corrupt JPEG: 0xff 0x00 at byte {} where a marker belongs",
                    thousands(at as u64 - 2)
                ))
            }
            _ => {}
        }
        let Some(len) = bytes.get(at..at + 2) else {
            return Err(ends(before));
        };
        let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
        if len < 2 {
            return Err(format!(
                "corrupt JPEG: marker 0x{marker:02x} at byte {} has length {len} (at least 2)",
                thousands(at as u64 - 2)
            ));
        }
        if marker == 0xda {
            let Some(frame) = frame else {
                return Err("corrupt JPEG: image data (SOS) before the frame header (SOF)".into());
            };
            if at + len > bytes.len() {
                return Err(ends("image data"));
            }
            return Ok(Header {
                scan: at + len,
                ..frame
            });
        }
        // SOF0..SOF15 except DHT (c4), JPG (c8) and DAC (cc); the first
        // one counts.
        let is_frame = matches!(marker, 0xc0..=0xcf) && !matches!(marker, 0xc4 | 0xc8 | 0xcc);
        if is_frame && frame.is_none() {
            frame =
                Some(sof(bytes, marker, at, len).map_err(|e| e.unwrap_or_else(|| ends(before)))?);
        }
        at += len;
    }
}

/// The frame header of `len` bytes at `at` (after its marker); Err(None)
/// if the data ends inside it.
fn sof(bytes: &[u8], marker: u8, at: usize, len: usize) -> Result<Header, Option<String>> {
    let kind = match marker {
        0xc0..=0xc2 => None,
        0xc3 => Some("lossless (SOF3)"),
        0xc5..=0xc7 => Some("hierarchical (differential)"),
        _ => Some("arithmetic-coded"),
    };
    if let Some(kind) = kind {
        return Err(Some(format!(
            "unsupported JPEG: {kind}; only baseline, extended and progressive Huffman-coded JPEGs are decoded"
        )));
    }
    if len < 8 {
        return Err(Some(format!(
            "corrupt JPEG: frame header of {len} bytes (at least 8)"
        )));
    }
    // length, precision, height, width, component count
    let sof = bytes.get(at..at + 8).ok_or(None)?;
    let precision = sof[2];
    let height = u32::from(u16::from_be_bytes([sof[3], sof[4]]));
    let width = u32::from(u16::from_be_bytes([sof[5], sof[6]]));
    let components = sof[7];
    if precision != 8 {
        return Err(Some(format!(
            "unsupported JPEG: {precision}-bit samples; only 8-bit JPEGs are decoded"
        )));
    }
    if width == 0 || height == 0 {
        return Err(Some(format!(
            "unsupported JPEG: {width}x{height} in its frame header (a height of 0 is set later by a DNL marker, which is not supported)"
        )));
    }
    if !matches!(components, 1 | 3 | 4) {
        return Err(Some(format!(
            "unsupported JPEG: {components} colour components (expected 1, 3 or 4)"
        )));
    }
    Ok(Header {
        format: Format::Jpeg,
        width,
        height,
        components,
        scan: 0,
    })
}

/// Whether a JPEG's end-of-image marker follows its first scan's data
/// (which starts at `scan`). In entropy-coded data a 0xff is always
/// followed by 0x00 (stuffing) or a restart marker, so the first 0xff 0xd9
/// after `scan` is the EOI; a thumbnail's EOI inside an APP segment comes
/// before `scan`. A file cut anywhere in its image data has none: the
/// decoder fills what it cannot read (zune-jpeg does so without an error
/// when only the last bytes are missing), Pillow refuses the file ("image
/// file is truncated"), and so does this.
pub fn jpeg_has_eoi(bytes: &[u8], scan: usize) -> bool {
    bytes
        .get(scan..)
        .is_some_and(|data| data.windows(2).any(|w| w == [0xff, 0xd9]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A JPEG that is only headers: SOI, an APP0 and a frame header.
    pub fn jpeg_header(width: u16, height: u16, sof: u8, precision: u8, components: u8) -> Vec<u8> {
        let mut b = vec![0xff, 0xd8];
        b.extend_from_slice(&[
            0xff, 0xe0, 0, 16, b'J', b'F', b'I', b'F', 0, 1, 1, 0, 0, 1, 0, 1, 0, 0,
        ]);
        b.extend_from_slice(&[0xff, 0xff, sof, 0, 8 + 3 * components, precision]);
        b.extend_from_slice(&height.to_be_bytes());
        b.extend_from_slice(&width.to_be_bytes());
        b.push(components);
        for c in 0..components {
            b.extend_from_slice(&[c + 1, 0x11, 0]);
        }
        // A one-component scan header; nothing reads its contents.
        b.extend_from_slice(&[0xff, 0xda, 0, 8, 1, 1, 0, 0, 0x3f, 0]);
        b
    }

    pub fn png_header(width: u32, height: u32) -> Vec<u8> {
        let mut b = PNG_SIGNATURE.to_vec();
        b.extend_from_slice(&13u32.to_be_bytes());
        b.extend_from_slice(b"IHDR");
        b.extend_from_slice(&width.to_be_bytes());
        b.extend_from_slice(&height.to_be_bytes());
        b.extend_from_slice(&[8, 2, 0, 0, 0]);
        b.extend_from_slice(&[0, 0, 0, 0]); // CRC (not checked here)
        b
    }

    #[test]
    fn formats_are_told_by_their_magic_bytes() {
        let h = read(&jpeg_header(640, 480, 0xc0, 8, 3)).unwrap();
        assert_eq!(
            h,
            Header {
                format: Format::Jpeg,
                width: 640,
                height: 480,
                components: 3,
                // SOI + APP0, SOF (fill byte, marker, 17), SOS (marker, 8)
                scan: 20 + 20 + 10,
            }
        );
        let h = read(&png_header(60_000, 70_000)).unwrap();
        assert_eq!((h.format, h.width, h.height), (Format::Png, 60_000, 70_000));

        for (bytes, want) in [
            (
                &b""[..],
                "expected a JPEG or PNG file; got an empty payload",
            ),
            (
                b"GIF89a\x01\x00",
                "got a GIF image (8 bytes starting 47 49 46 38 39 61 01 00)",
            ),
            (b"RIFF\0\0\0\0WEBPVP8 ", "got a WebP image (16 bytes"),
            (b"\0\0\0\x1cftypheic", "got a HEIF image"),
            (b"BM\0\0", "got a BMP image"),
            (
                b" {\"id\": 1}",
                "got JSON (10 bytes starting 20 7b 22 69 64 22 3a 20)",
            ),
            (b"\xff\xd8", "got a truncated JPEG"),
            (b"hello", "got 5 bytes starting 68 65 6c 6c 6f"),
        ] {
            let e = read(bytes).unwrap_err();
            assert!(e.starts_with("expected a JPEG or PNG file; got "), "{e}");
            assert!(e.contains(want), "{e:?} lacks {want:?}");
        }
    }

    #[test]
    fn jpeg_headers_are_walked_to_the_frame() {
        // Fill bytes, a marker without length and a comment before SOF2.
        let mut b = vec![0xff, 0xd8, 0xff, 0xff, 0xfe, 0, 4, b'h', b'i', 0xff, 0xd0];
        b.extend_from_slice(&jpeg_header(300, 200, 0xc2, 8, 1)[2..]);
        let h = read(&b).unwrap();
        assert_eq!((h.width, h.height, h.components), (300, 200, 1));

        let cases: [(Vec<u8>, &str); 10] = [
            (
                jpeg_header(640, 480, 0xc3, 8, 3),
                "unsupported JPEG: lossless (SOF3)",
            ),
            (
                jpeg_header(640, 480, 0xc9, 8, 3),
                "unsupported JPEG: arithmetic-coded",
            ),
            (
                jpeg_header(640, 480, 0xc0, 12, 3),
                "unsupported JPEG: 12-bit samples",
            ),
            (jpeg_header(640, 0, 0xc0, 8, 3), "unsupported JPEG: 640x0"),
            (
                jpeg_header(640, 480, 0xc0, 8, 2),
                "unsupported JPEG: 2 colour components",
            ),
            (
                jpeg_header(640, 480, 0xc0, 8, 3)[..30].to_vec(),
                "JPEG data ends after 30 bytes, inside its headers (before the frame header)",
            ),
            (
                jpeg_header(640, 480, 0xc0, 8, 3)[..45].to_vec(),
                "JPEG data ends after 45 bytes, inside its headers (before the image data)",
            ),
            (
                vec![0xff, 0xd8, 0xff, 0xe0, 0, 1],
                "corrupt JPEG: marker 0xe0 at byte 2 has length 1",
            ),
            (
                vec![0xff, 0xd8, 0xff, 0xda, 0, 2],
                "corrupt JPEG: image data (SOS) before the frame header",
            ),
            (
                vec![0xff, 0xd8, 0xff, 0xfe, 0, 2, 0x12],
                "corrupt JPEG: expected a marker (0xff) at byte 6, found 0x12",
            ),
        ];
        for (bytes, want) in cases {
            let e = read(&bytes).unwrap_err();
            assert!(e.starts_with(want), "{e:?} does not start with {want:?}");
        }
    }

    #[test]
    fn the_end_of_image_is_looked_for_after_the_first_scan() {
        let mut b = jpeg_header(8, 8, 0xc0, 8, 1);
        let scan = read(&b).unwrap().scan;
        assert!(!jpeg_has_eoi(&b, scan));
        // Stuffed 0xff and a restart marker are not the end.
        b.extend_from_slice(&[0x12, 0xff, 0x00, 0xd9, 0xff, 0xd0, 0x34]);
        assert!(!jpeg_has_eoi(&b, scan));
        b.extend_from_slice(&[0xff, 0xd9]);
        assert!(jpeg_has_eoi(&b, scan));
        // An EOI before the scan (a thumbnail's) does not count.
        let mut thumb = vec![0xff, 0xd8, 0xff, 0xe1, 0, 6, 0xff, 0xd9, 0, 0];
        thumb.extend_from_slice(&jpeg_header(8, 8, 0xc0, 8, 1)[2..]);
        let scan = read(&thumb).unwrap().scan;
        assert!(!jpeg_has_eoi(&thumb, scan));
        assert!(!jpeg_has_eoi(&thumb, thumb.len() + 5));
    }

    #[test]
    fn png_headers_are_checked() {
        let e = read(&png_header(0, 5)).unwrap_err();
        assert_eq!(
            e,
            "corrupt PNG: width 0 in its header (expected 1 to 2,147,483,647)"
        );
        let e = read(&png_header(5, 1 << 31)).unwrap_err();
        assert!(e.starts_with("corrupt PNG: height 2,147,483,648"), "{e}");
        let e = read(&png_header(5, 5)[..20]).unwrap_err();
        assert_eq!(e, "PNG data ends after 20 bytes, inside its 33-byte header");
        let mut b = png_header(5, 5);
        b[12..16].copy_from_slice(b"IDAT");
        let e = read(&b).unwrap_err();
        assert!(
            e.starts_with("corrupt PNG: the first chunk must be a 13-byte IHDR; got \"IDAT\""),
            "{e}"
        );
    }
}
