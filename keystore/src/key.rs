//! The validator key type.

use std::fmt;

use blst::min_pk::SecretKey;

use crate::Error;

/// Length of a compressed BLS12-381 G1 public key.
pub const PUBKEY_LEN: usize = 48;
/// Length of a serialised BLS12-381 secret scalar.
pub const SECRET_LEN: usize = 32;

/// A BLS validator signing key and its compressed public key.
///
/// Invariants: the secret is a valid, non-zero scalar below the group order,
/// and `pubkey` is always `secret · G1` (computed here, never taken from
/// input). The secret is zeroed on drop by `blst` (`#[zeroize(drop)]`), and
/// `Debug` prints only the pubkey. There is deliberately no `Clone`: copies
/// of secret material should be explicit (wrap in `Arc` to share).
pub struct ValidatorKey {
    secret: SecretKey,
    pubkey: [u8; PUBKEY_LEN],
}

impl ValidatorKey {
    /// Build a key from a 32-byte big-endian scalar (the EIP-2335 plaintext
    /// and Web3Signer `privateKey` encoding).
    ///
    /// Rejects wrong lengths, zero and values not below the group order `r`.
    pub fn from_secret_bytes(bytes: &[u8]) -> Result<ValidatorKey, Error> {
        if bytes.len() != SECRET_LEN {
            return Err(Error::InvalidSecretKey);
        }
        // blst's `blst_sk_check` already refuses zero, but say it here too so
        // the invariant does not rest on a detail of the C library.
        if bytes.iter().all(|b| *b == 0) {
            return Err(Error::InvalidSecretKey);
        }
        let secret = SecretKey::from_bytes(bytes).map_err(|_| Error::InvalidSecretKey)?;
        Ok(Self::from_secret(secret))
    }

    /// Wrap an already-valid `blst` secret key.
    pub fn from_secret(secret: SecretKey) -> ValidatorKey {
        let pubkey = secret.sk_to_pk().compress();
        ValidatorKey { secret, pubkey }
    }

    /// The 48-byte compressed public key.
    pub fn pubkey(&self) -> [u8; PUBKEY_LEN] {
        self.pubkey
    }

    /// The public key as lowercase hex with a `0x` prefix (Web3Signer's
    /// identifier format).
    pub fn pubkey_hex(&self) -> String {
        const_hex::encode_prefixed(self.pubkey)
    }

    /// The secret key, for signing.
    pub fn secret(&self) -> &SecretKey {
        &self.secret
    }
}

impl fmt::Debug for ValidatorKey {
    // `blst::min_pk::SecretKey` derives `Debug` and would print the scalar,
    // so this must never delegate to it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ValidatorKey")
            .field("pubkey", &format_args!("0x{}", hex::encode(self.pubkey)))
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "000000000019d6689c085ae165831e934ff763ae46a2a6c172b3f1b60a8ce26f";
    const PUBKEY: &str = "9612d7a727c9d0a22e185a1c768478dfe919cada9266988cb32359c11f2b7b27f4ae4040902382ae2910c15e2b420d07";

    #[test]
    fn derives_pubkey_and_redacts_debug() {
        let key = ValidatorKey::from_secret_bytes(&hex::decode(SECRET).unwrap()).unwrap();
        assert_eq!(hex::encode(key.pubkey()), PUBKEY);
        assert_eq!(key.pubkey_hex(), format!("0x{PUBKEY}"));
        let dbg = format!("{key:?} {key:#?}");
        assert!(dbg.contains(PUBKEY));
        assert!(!dbg.contains(SECRET));
        assert!(!dbg.contains("19d6689c085ae165831e934ff763ae46a2a6c172b3f1b60a8ce26f"));
        assert!(!dbg.to_lowercase().contains("value"));
        assert_eq!(
            key.secret().to_bytes().to_vec(),
            hex::decode(SECRET).unwrap()
        );
    }

    #[test]
    fn rejects_bad_scalars() {
        assert!(matches!(
            ValidatorKey::from_secret_bytes(&[0u8; 32]),
            Err(Error::InvalidSecretKey)
        ));
        assert!(matches!(
            ValidatorKey::from_secret_bytes(&[1u8; 31]),
            Err(Error::InvalidSecretKey)
        ));
        assert!(matches!(
            ValidatorKey::from_secret_bytes(&[1u8; 33]),
            Err(Error::InvalidSecretKey)
        ));
        // The group order r itself is not a valid scalar.
        let r = hex::decode("73eda753299d7d483339d80809a1d80553bda402fffe5bfeffffffff00000001")
            .unwrap();
        assert!(matches!(
            ValidatorKey::from_secret_bytes(&r),
            Err(Error::InvalidSecretKey)
        ));
        assert!(matches!(
            ValidatorKey::from_secret_bytes(&[0xff; 32]),
            Err(Error::InvalidSecretKey)
        ));
    }
}
