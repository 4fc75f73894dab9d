//! A streaming 64-bit checksum for snapshot files (corruption and truncation detection, not
//! security).
//!
//! Each 8-byte little-endian word is folded in with `h = xorshift((h ^ w) * K)`; every step is a
//! bijection of `h` for a fixed word, so any change confined to one word always changes the
//! result, and the byte length is folded in last so that truncation does too. It runs at memory
//! speed without a table or a dependency.

const K: u64 = 0x9E37_79B9_7F4A_7C15;
const SEED: u64 = 0x6E6F_7465_6C6C_6D31; // "notellm1"

/// Incremental checksum: feed bytes with [`update`](Self::update) in any chunking, then
/// [`finish`](Self::finish).
#[derive(Debug, Clone)]
pub struct Checksum {
    h: u64,
    pending: [u8; 8],
    pending_len: usize,
    total: u64,
}

impl Default for Checksum {
    fn default() -> Self {
        Self { h: SEED, pending: [0; 8], pending_len: 0, total: 0 }
    }
}

#[inline]
fn mix(h: u64, w: u64) -> u64 {
    let x = (h ^ w).wrapping_mul(K);
    x ^ (x >> 29)
}

impl Checksum {
    pub fn update(&mut self, mut bytes: &[u8]) {
        self.total += bytes.len() as u64;
        if self.pending_len > 0 {
            let take = (8 - self.pending_len).min(bytes.len());
            self.pending[self.pending_len..self.pending_len + take].copy_from_slice(&bytes[..take]);
            self.pending_len += take;
            bytes = &bytes[take..];
            if self.pending_len < 8 {
                return;
            }
            self.h = mix(self.h, u64::from_le_bytes(self.pending));
            self.pending_len = 0;
        }
        let words = bytes.chunks_exact(8);
        let rest = words.remainder();
        for w in words {
            let mut b = [0u8; 8];
            b.copy_from_slice(w);
            self.h = mix(self.h, u64::from_le_bytes(b));
        }
        self.pending[..rest.len()].copy_from_slice(rest);
        self.pending_len = rest.len();
    }

    pub fn finish(&self) -> u64 {
        let mut h = self.h;
        if self.pending_len > 0 {
            let mut last = [0u8; 8];
            last[..self.pending_len].copy_from_slice(&self.pending[..self.pending_len]);
            h = mix(h, u64::from_le_bytes(last));
        }
        mix(h, self.total)
    }

    /// Checksum of one buffer.
    pub fn of(bytes: &[u8]) -> u64 {
        let mut c = Self::default();
        c.update(bytes);
        c.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn detects_flips_and_truncation() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 31 % 251) as u8).collect();
        let c = Checksum::of(&data);
        for i in [0, 7, 8, 500, 999] {
            let mut d = data.clone();
            d[i] ^= 0x10;
            assert_ne!(Checksum::of(&d), c, "flip at {i}");
        }
        assert_ne!(Checksum::of(&data[..999]), c);
        let mut padded = data.clone();
        padded.push(0);
        assert_ne!(Checksum::of(&padded), c);
    }

    proptest! {
        #[test]
        fn chunking_does_not_matter(
            data in proptest::collection::vec(any::<u8>(), 0..200),
            cut in 0usize..200,
            cut2 in 0usize..200,
        ) {
            let a = cut.min(data.len());
            let b = cut2.min(data.len()).max(a);
            let mut c = Checksum::default();
            c.update(&data[..a]);
            c.update(&data[a..b]);
            c.update(&data[b..]);
            prop_assert_eq!(c.finish(), Checksum::of(&data));
        }
    }
}
