//! Opening apt's index files as apt stores them: plain, lz4 (frame format) or gzip, told apart by
//! the file name's extension. Which one apt writes depends on `Acquire::CompressionTypes`,
//! `Acquire::GzipIndexes` and each index target's `KeepCompressedAs` (gzip for DEP-11).

use std::io::{BufRead, BufReader};
use std::path::Path;

/// Extensions [`open`] reads, in the order a lookup prefers them.
pub const EXTENSIONS: [&str; 3] = ["lz4", "gz", ""];

/// Extensions apt may write that [`open`] does not read.
pub const UNSUPPORTED: [&str; 3] = ["xz", "bz2", "zst"];

/// Opens `path`, decompressing `*.lz4` and `*.gz` on the fly; any other name is read as is,
/// except the extensions of [`UNSUPPORTED`], which are refused.
pub fn open(path: &Path) -> std::io::Result<Box<dyn BufRead>> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or_default();
    if UNSUPPORTED.contains(&ext) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            format!(".{ext} is not read: have apt keep its indices as .lz4, .gz or plain (Acquire::CompressionTypes)"),
        ));
    }
    let file = std::fs::File::open(path)?;
    Ok(match ext {
        "lz4" => Box::new(BufReader::new(lz4_flex::frame::FrameDecoder::new(BufReader::new(file)))),
        "gz" => Box::new(BufReader::new(flate2::read::MultiGzDecoder::new(BufReader::new(file)))),
        _ => Box::new(BufReader::new(file)),
    })
}

/// `base`, `base.lz4` or `base.gz`, whichever is in `names` (that order of preference).
pub fn find<'a>(names: &'a [String], base: &str) -> Option<&'a str> {
    EXTENSIONS.iter().find_map(|ext| {
        let want = if ext.is_empty() { base.to_owned() } else { format!("{base}.{ext}") };
        names.iter().find(|n| **n == want).map(String::as_str)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn reads_every_supported_form() {
        let dir = tempfile::tempdir().unwrap();
        let text = b"Package: a\n\nPackage: b\n";
        std::fs::write(dir.path().join("plain"), text).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(text).unwrap();
        std::fs::write(dir.path().join("x.gz"), gz.finish().unwrap()).unwrap();
        let mut lz = lz4_flex::frame::FrameEncoder::new(Vec::new());
        lz.write_all(text).unwrap();
        std::fs::write(dir.path().join("x.lz4"), lz.finish().unwrap()).unwrap();
        for name in ["plain", "x.gz", "x.lz4"] {
            let mut got = Vec::new();
            open(&dir.path().join(name)).unwrap().read_to_end(&mut got).unwrap();
            assert_eq!(got, text, "{name}");
        }
        std::fs::write(dir.path().join("x.xz"), b"").unwrap();
        let e = open(&dir.path().join("x.xz")).err().unwrap();
        assert_eq!(e.kind(), std::io::ErrorKind::Unsupported);
    }

    #[test]
    fn find_prefers_lz4_then_gz_then_plain() {
        let names: Vec<String> = ["a", "a.gz", "b.gz", "b.lz4", "c.xz"].map(String::from).to_vec();
        assert_eq!(find(&names, "a"), Some("a.gz"));
        assert_eq!(find(&names, "b"), Some("b.lz4"));
        assert_eq!(find(&names, "c"), None);
    }
}
