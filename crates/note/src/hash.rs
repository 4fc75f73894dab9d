//! FNV-1a (<http://www.isthe.com/chongo/tech/comp/fnv/>), in its 64- and 128-bit widths: a
//! stable, cheap, non-cryptographic hash for values that must not change between Rust
//! releases or processes (std's hasher may): the store's content hash, the training split's
//! per-note choices, the service's lock stripes.

macro_rules! fnv1a {
    ($(#[$doc:meta])* $name:ident, $int:ty, $basis:expr, $prime:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub struct $name($int);

        impl $name {
            pub const OFFSET_BASIS: $int = $basis;
            pub const PRIME: $int = $prime;

            /// A hasher at the standard offset basis.
            pub const fn new() -> Self {
                Self(Self::OFFSET_BASIS)
            }

            /// A hasher starting from another state (a seeded variant).
            pub const fn with_state(state: $int) -> Self {
                Self(state)
            }

            pub fn write(&mut self, bytes: &[u8]) -> &mut Self {
                for &b in bytes {
                    self.0 ^= <$int>::from(b);
                    self.0 = self.0.wrapping_mul(Self::PRIME);
                }
                self
            }

            pub const fn finish(&self) -> $int {
                self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }
    };
}

fnv1a!(
    /// FNV-1a, 64-bit.
    Fnv1a64,
    u64,
    0xcbf2_9ce4_8422_2325,
    0x0100_0000_01b3
);

fnv1a!(
    /// FNV-1a, 128-bit.
    Fnv1a128,
    u128,
    0x6c62272e07bb014262b821756295c58d,
    0x0000000001000000000000000000013b
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_published_test_vectors() {
        // From the FNV reference test suite.
        assert_eq!(Fnv1a64::new().finish(), 0xcbf29ce484222325);
        assert_eq!(Fnv1a64::new().write(b"a").finish(), 0xaf63dc4c8601ec8c);
        assert_eq!(Fnv1a64::new().write(b"foobar").finish(), 0x85944171f73967e8);
        assert_eq!(Fnv1a128::new().finish(), 0x6c62272e07bb014262b821756295c58d);
        assert_eq!(Fnv1a128::new().write(b"a").finish(), 0xd228cb696f1a8caf78912b704e4a8964);
        assert_eq!(Fnv1a128::new().write(b"foobar").finish(), 0x343e1662793c64bf6f0d3597ba446f18);
    }

    #[test]
    fn writes_compose() {
        assert_eq!(Fnv1a64::new().write(b"foo").write(b"bar").finish(), Fnv1a64::new().write(b"foobar").finish());
    }
}
