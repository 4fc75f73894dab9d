//! An image as a note brings it: its bytes checked and decoded once, with bounds, before
//! anything is written. Only PNG, JPEG and WebP are accepted (the format is read from the bytes,
//! never from a name or a header a client sent); the byte size is bounded before anything is
//! parsed, and the pixel size from the file's header before any pixel is decoded, so a small
//! file that claims a huge canvas (a decompression bomb) costs nothing. The image's identity is
//! the SHA-256 of its bytes ([`ImageHash`]): what the store keeps and what encoder features are
//! cached under.

use std::fmt;
use std::io::Cursor;

use image::{ImageFormat, ImageReader};
use sha2::{Digest, Sha256};

/// Bounds on an image a note brings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageLimits {
    /// Most bytes of the encoded file.
    pub max_bytes: usize,
    /// Most pixels on either side.
    pub max_side: u32,
}

impl Default for ImageLimits {
    /// 4 MiB and 4096 px: a phone photo fits; the encoder sees 224 px anyway.
    fn default() -> Self {
        Self { max_bytes: 4 << 20, max_side: 4096 }
    }
}

/// Why an image was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    #[error("the image is empty")]
    Empty,
    #[error("the image is {bytes} bytes, over the limit of {max}")]
    TooLarge { bytes: usize, max: usize },
    #[error("the image is {width} x {height} pixels, over the limit of {max} on a side")]
    TooManyPixels { width: u32, height: u32, max: u32 },
    #[error("the image is {0}, not PNG, JPEG or WebP")]
    Unsupported(String),
    #[error("the image cannot be decoded: {0}")]
    Decode(String),
}

impl ImageError {
    /// Whether the image was refused for its size (a client sends a smaller one) rather than
    /// for what it is.
    pub fn is_size(&self) -> bool {
        matches!(self, ImageError::TooLarge { .. } | ImageError::TooManyPixels { .. })
    }
}

/// SHA-256 of an image's bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageHash(pub [u8; 32]);

impl ImageHash {
    pub fn of(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }

    /// Lowercase hex, 64 characters.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn from_hex(s: &str) -> Option<Self> {
        if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Self(out))
    }
}

impl fmt::Display for ImageHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ImageHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ImageHash({})", self.to_hex())
    }
}

/// A checked, decoded image.
#[derive(Debug, Clone)]
pub struct ImageInput {
    pub hash: ImageHash,
    pub format: ImageFormat,
    /// Size of the encoded file.
    pub bytes: usize,
    pub image: image::DynamicImage,
}

/// Checks and decodes `bytes` within `limits`.
pub fn decode(bytes: &[u8], limits: &ImageLimits) -> Result<ImageInput, ImageError> {
    if bytes.is_empty() {
        return Err(ImageError::Empty);
    }
    if bytes.len() > limits.max_bytes {
        return Err(ImageError::TooLarge { bytes: bytes.len(), max: limits.max_bytes });
    }
    let format = image::guess_format(bytes).map_err(|_| ImageError::Unsupported("of an unknown format".into()))?;
    if !matches!(format, ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::WebP) {
        return Err(ImageError::Unsupported(format!("{format:?}").to_uppercase()));
    }
    let reader = || ImageReader::with_format(Cursor::new(bytes), format);
    let (width, height) = reader().into_dimensions().map_err(|e| ImageError::Decode(e.to_string()))?;
    if width > limits.max_side || height > limits.max_side {
        return Err(ImageError::TooManyPixels { width, height, max: limits.max_side });
    }
    if width == 0 || height == 0 {
        return Err(ImageError::Decode(format!("{width} x {height} pixels")));
    }
    let mut bounds = image::Limits::default();
    bounds.max_image_width = Some(limits.max_side);
    bounds.max_image_height = Some(limits.max_side);
    // RGBA f32 of the largest allowed canvas, the most a decoder needs.
    bounds.max_alloc = Some(u64::from(limits.max_side).pow(2) * 16);
    let mut r = reader();
    r.limits(bounds);
    let image = r.decode().map_err(|e| ImageError::Decode(e.to_string()))?;
    Ok(ImageInput { hash: ImageHash::of(bytes), format, bytes: bytes.len(), image })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encoded(w: u32, h: u32, format: ImageFormat) -> Vec<u8> {
        let img = image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([(x * 7) as u8, (y * 5) as u8, 99])
        }));
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, format).unwrap();
        out.into_inner()
    }

    #[test]
    fn png_jpeg_and_webp_decode_and_are_named_by_their_bytes() {
        for format in [ImageFormat::Png, ImageFormat::Jpeg, ImageFormat::WebP] {
            let bytes = encoded(40, 30, format);
            let img = decode(&bytes, &ImageLimits::default()).unwrap();
            assert_eq!((img.format, img.image.width(), img.image.height()), (format, 40, 30));
            assert_eq!(img.hash, ImageHash::of(&bytes));
            assert_eq!(ImageHash::from_hex(&img.hash.to_hex()), Some(img.hash));
        }
        assert_ne!(ImageHash::of(b"a"), ImageHash::of(b"b"));
        // The SHA-256 of the empty string, as published.
        assert_eq!(ImageHash::of(b"").to_hex(), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        assert_eq!(ImageHash::from_hex("zz"), None);
    }

    #[test]
    fn refusals_name_what_is_wrong() {
        let limits = ImageLimits { max_bytes: 10_000, max_side: 64 };
        assert_eq!(decode(b"", &limits).unwrap_err(), ImageError::Empty);
        let big = encoded(64, 64, ImageFormat::Png);
        let tiny = ImageLimits { max_bytes: 100, ..limits };
        assert!(matches!(decode(&big, &tiny).unwrap_err(), ImageError::TooLarge { max: 100, .. }));
        let wide = encoded(65, 2, ImageFormat::Png);
        assert_eq!(decode(&wide, &limits).unwrap_err(), ImageError::TooManyPixels { width: 65, height: 2, max: 64 });
        assert!(decode(&wide, &limits).unwrap_err().is_size());
        // GIF and BMP by their magic numbers (this build has no decoder for them at all).
        assert_eq!(decode(b"GIF89a\x04\x00\x04\x00", &limits).unwrap_err(), ImageError::Unsupported("GIF".into()));
        assert_eq!(decode(b"BM\x00\x00\x00\x00", &limits).unwrap_err(), ImageError::Unsupported("BMP".into()));
        assert!(matches!(decode(b"hello, not an image", &limits).unwrap_err(), ImageError::Unsupported(_)));
        // A PNG cut short: the header parses, the pixels do not.
        let png = encoded(32, 32, ImageFormat::Png);
        assert!(matches!(decode(&png[..png.len() / 2], &limits).unwrap_err(), ImageError::Decode(_)));
    }

    #[test]
    fn a_small_file_claiming_a_huge_canvas_is_refused_from_its_header() {
        // A valid 1 x 1 PNG whose IHDR is rewritten to 100000 x 100000 (CRC fixed): decoding
        // it would allocate 40 GB; the header check refuses it first.
        let mut png = encoded(1, 1, ImageFormat::Png);
        png[16..20].copy_from_slice(&100_000u32.to_be_bytes());
        png[20..24].copy_from_slice(&100_000u32.to_be_bytes());
        let crc = crc32(&png[12..29]);
        png[29..33].copy_from_slice(&crc.to_be_bytes());
        let err = decode(&png, &ImageLimits::default()).unwrap_err();
        assert_eq!(err, ImageError::TooManyPixels { width: 100_000, height: 100_000, max: 4096 });
    }

    fn crc32(data: &[u8]) -> u32 {
        let mut crc = 0xFFFF_FFFFu32;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
            }
        }
        !crc
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Any bytes: decoded or refused, never a panic, never past the limits.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let limits = ImageLimits { max_bytes: 1024, max_side: 32 };
            if let Ok(img) = decode(&bytes, &limits) {
                prop_assert!(img.bytes <= 1024 && img.image.width() <= 32 && img.image.height() <= 32);
            }
        }

        /// A real PNG with some bytes flipped: decoded or refused, never a panic.
        #[test]
        fn corrupted_pngs_never_panic(flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
            let mut png = encoded(16, 16, ImageFormat::Png);
            for (at, v) in flips {
                let i = at % png.len();
                png[i] = v;
            }
            let _ = decode(&png, &ImageLimits { max_bytes: 1 << 20, max_side: 64 });
        }
    }
}
