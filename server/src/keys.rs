//! The set of loaded validator keys and BLS signing.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use keystore::{LoadReport, PasswordSource, ValidatorKey};

/// Domain separation tag of the Ethereum consensus BLS signature scheme (proof-of-possession
/// ciphersuite, consensus specs phase0 "BLS signatures").
const DST: &[u8] = b"BLS_SIG_BLS12381G2_XMD:SHA-256_SSWU_RO_POP_";

/// Outcome of one key source, reported in `/healthcheck` under `keys-check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceReport {
    /// Web3Signer's health-check id for the source (`config-files-loading`, `keystores-bulk-loading`).
    pub id: &'static str,
    pub keys_loaded: usize,
    pub error_count: usize,
}

/// Where keys come from.
#[derive(Debug, Clone, Default)]
pub struct KeySources {
    /// `--key-store-path`: Web3Signer key configuration files.
    pub key_config_dir: Option<PathBuf>,
    /// `--keystores-path` with its password source.
    pub keystores: Option<(PathBuf, PasswordSource)>,
}

/// Loaded keys by compressed public key.
#[derive(Default)]
pub struct KeyRing {
    keys: HashMap<[u8; 48], Arc<ValidatorKey>>,
    pub sources: Vec<SourceReport>,
}

impl KeyRing {
    /// Loads every configured source. Per-key failures are logged and counted, never fatal:
    /// one bad file must not keep the other validators from signing.
    pub fn load(sources: &KeySources) -> KeyRing {
        let mut ring = KeyRing::default();
        if let Some(dir) = &sources.key_config_dir {
            let report = keystore::load_key_configs(dir);
            ring.absorb("config-files-loading", report);
        }
        if let Some((dir, passwords)) = &sources.keystores {
            let report = keystore::load_keystores_dir(dir, passwords);
            ring.absorb("keystores-bulk-loading", report);
        }
        ring
    }

    fn absorb(&mut self, id: &'static str, report: LoadReport) {
        let mut loaded = 0;
        let mut errors = report.errors.len();
        for e in &report.errors {
            tracing::error!(source = id, path = %e.path.display(), error = %e.error, "key not loaded");
        }
        for key in report.keys {
            let pk = key.pubkey();
            if self.keys.contains_key(&pk) {
                tracing::warn!(source = id, pubkey = %hex0x(&pk), "duplicate key ignored");
                errors += 1;
                continue;
            }
            self.keys.insert(pk, Arc::new(key));
            loaded += 1;
        }
        tracing::info!(
            source = id,
            keys_loaded = loaded,
            error_count = errors,
            "keys loaded"
        );
        self.sources.push(SourceReport {
            id,
            keys_loaded: loaded,
            error_count: errors,
        });
    }

    /// The key for a compressed public key.
    pub fn get(&self, pubkey: &[u8; 48]) -> Option<Arc<ValidatorKey>> {
        self.keys.get(pubkey).cloned()
    }

    /// All public keys, sorted.
    pub fn pubkeys(&self) -> Vec<[u8; 48]> {
        let mut v: Vec<[u8; 48]> = self.keys.keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// Number of loaded keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is loaded.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// BLS-signs a 32-byte signing root (compressed 96-byte G2 signature). CPU-bound, about
/// 0.8 ms: call it from a blocking thread, never on the async reactor.
pub fn sign_root(key: &ValidatorKey, signing_root: &[u8; 32]) -> [u8; 96] {
    key.secret().sign(signing_root, DST, &[]).compress()
}

/// Parses a sign-request identifier: a public key with or without `0x`, in any case
/// (Web3Signer lowercases and prefixes it before the lookup).
pub fn parse_identifier(identifier: &str) -> Option<[u8; 48]> {
    let digits = identifier
        .strip_prefix("0x")
        .or_else(|| identifier.strip_prefix("0X"))
        .unwrap_or(identifier);
    let mut out = [0u8; 48];
    hex::decode_to_slice(digits, &mut out).ok()?;
    Some(out)
}

/// Lowercase `0x` hex.
pub fn hex0x(bytes: &[u8]) -> String {
    format!("0x{}", hex::encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_in_any_form() {
        let hexkey = "a".repeat(96);
        let expected = Some([0xaa; 48]);
        assert_eq!(parse_identifier(&hexkey), expected);
        assert_eq!(parse_identifier(&format!("0x{hexkey}")), expected);
        assert_eq!(
            parse_identifier(&format!("0X{}", hexkey.to_uppercase())),
            expected
        );
        assert_eq!(parse_identifier("0x1234"), None);
        assert_eq!(parse_identifier(&"g".repeat(96)), None);
    }
}
