//! Byte-string and integer newtypes with the Web3Signer / beacon-API JSON encodings.
//!
//! Integers arrive as decimal strings (the beacon API convention) but Web3Signer also accepts
//! bare JSON numbers, so both are parsed. Byte strings are `0x`-prefixed hex; the prefix is
//! optional on input and hex digits may be of either case.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use tree_hash::{Hash256, PackedEncoding, TreeHash, TreeHashType};

/// Decodes `0x`-prefixed (or bare) hex into exactly `N` bytes.
pub fn decode_hex_fixed<const N: usize>(s: &str) -> Result<[u8; N], String> {
    let digits = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    if digits.len() != 2 * N {
        return Err(format!(
            "expected {N} bytes of hex, got {} characters",
            digits.len()
        ));
    }
    let mut out = [0u8; N];
    hex::decode_to_slice(digits, &mut out).map_err(|e| format!("invalid hex: {e}"))?;
    Ok(out)
}

macro_rules! fixed_bytes {
    ($(#[$doc:meta])* $name:ident, $n:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash)]
        pub struct $name(pub [u8; $n]);

        impl $name {
            /// Length in bytes.
            pub const LEN: usize = $n;
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&const_hex::encode_prefixed(&self.0))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&const_hex::encode_prefixed(&self.0))
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                decode_hex_fixed::<$n>(s).map($name)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&const_hex::encode_prefixed(&self.0))
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                decode_hex_fixed::<$n>(&s).map($name).map_err(de::Error::custom)
            }
        }

        // SSZ: a `Vector[byte, N]`, merkleized over its packed 32-byte chunks.
        impl TreeHash for $name {
            fn tree_hash_type() -> TreeHashType {
                TreeHashType::Vector
            }
            fn tree_hash_packed_encoding(&self) -> PackedEncoding {
                unreachable!("byte vectors are never packed")
            }
            fn tree_hash_packing_factor() -> usize {
                unreachable!("byte vectors are never packed")
            }
            fn tree_hash_root(&self) -> Hash256 {
                self.0.tree_hash_root()
            }
        }
    };
}

fixed_bytes!(
    /// A 32-byte root or hash (`Bytes32` / `Root` in the consensus specs).
    Root,
    32
);
fixed_bytes!(
    /// A 4-byte fork version.
    Version,
    4
);
fixed_bytes!(
    /// A 20-byte execution-layer address.
    Address,
    20
);
fixed_bytes!(
    /// A 48-byte compressed BLS12-381 G1 public key.
    PublicKeyBytes,
    48
);
fixed_bytes!(
    /// A 96-byte compressed BLS12-381 G2 signature.
    SignatureBytes,
    96
);

impl Root {
    /// The all-zero root.
    pub const ZERO: Root = Root([0u8; 32]);
}

impl From<Hash256> for Root {
    fn from(h: Hash256) -> Self {
        Root(h.0)
    }
}

/// A `uint64` that is a decimal string on the wire (a JSON number is accepted too).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Quoted(pub u64);

impl fmt::Debug for Quoted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl Serialize for Quoted {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Quoted {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Quoted;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a uint64 as a decimal string or number")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Quoted, E> {
                Ok(Quoted(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Quoted, E> {
                u64::try_from(v)
                    .map(Quoted)
                    .map_err(|_| E::custom("negative integer"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Quoted, E> {
                // Decimal digits only: no sign, no whitespace, no exponent.
                if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(E::custom(format!("not a decimal uint64: {v:?}")));
                }
                v.parse::<u64>()
                    .map(Quoted)
                    .map_err(|_| E::custom("uint64 out of range"))
            }
        }
        d.deserialize_any(V)
    }
}

impl TreeHash for Quoted {
    fn tree_hash_type() -> TreeHashType {
        u64::tree_hash_type()
    }
    fn tree_hash_packed_encoding(&self) -> PackedEncoding {
        self.0.tree_hash_packed_encoding()
    }
    fn tree_hash_packing_factor() -> usize {
        u64::tree_hash_packing_factor()
    }
    fn tree_hash_root(&self) -> Hash256 {
        self.0.tree_hash_root()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_accepts_string_and_number() {
        let a: Quoted = serde_json::from_str("\"42\"").unwrap();
        let b: Quoted = serde_json::from_str("42").unwrap();
        assert_eq!(a, b);
        assert!(serde_json::from_str::<Quoted>("\"-1\"").is_err());
        assert!(serde_json::from_str::<Quoted>("\"18446744073709551616\"").is_err());
        assert!(serde_json::from_str::<Quoted>("\" 1\"").is_err());
        assert_eq!(serde_json::to_string(&a).unwrap(), "\"42\"");
    }

    #[test]
    fn hex_requires_exact_length_and_accepts_both_cases() {
        let r: Root = serde_json::from_str(&format!("\"0x{}\"", "AB".repeat(32))).unwrap();
        assert_eq!(r.0, [0xab; 32]);
        let bare: Version = serde_json::from_str("\"01020304\"").unwrap();
        assert_eq!(bare.0, [1, 2, 3, 4]);
        assert!(serde_json::from_str::<Version>("\"0x010203\"").is_err());
        assert!(serde_json::from_str::<Version>("\"0x0102030g\"").is_err());
    }
}
