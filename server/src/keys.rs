//! The set of loaded validator keys and BLS signing.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keystore::{KeyCache, LoadOptions, LoadReport, PasswordSource, Progress, ValidatorKey};

use crate::config::KeySources;

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

/// Loaded keys by compressed public key. Cloning is shallow (keys are shared `Arc`s).
#[derive(Default, Clone)]
pub struct KeyRing {
    keys: HashMap<[u8; 48], Arc<ValidatorKey>>,
    /// Public keys that came from the key manager directory (deletable, `readonly: false`).
    managed: HashSet<[u8; 48]>,
    pub sources: Vec<SourceReport>,
}

impl KeyRing {
    /// Loads every configured source. Per-key failures are logged and counted, never fatal:
    /// one bad file must not keep the other validators from signing.
    pub fn load(sources: &KeySources) -> KeyRing {
        let mut ring = KeyRing::default();
        if let Some(dir) = &sources.key_config_dir {
            let report = with_options(sources, "config-files-loading", |o| {
                keystore::load_key_configs_with(dir, o)
            });
            ring.absorb("config-files-loading", report, false);
        }
        if let Some((dir, passwords)) = &sources.keystores {
            let report = with_options(sources, "keystores-bulk-loading", |o| {
                keystore::load_keystores_dir_with(dir, passwords, o)
            });
            ring.absorb("keystores-bulk-loading", report, false);
        }
        if let Some(aws) = &sources.aws_secrets {
            ring.absorb("aws-bulk-loading", load_aws_bulk(aws), false);
        }
        if let Some(dir) = &sources.key_manager_dir {
            let passwords = PasswordSource::Dir(dir.clone());
            let report = with_options(sources, "key-manager-loading", |o| {
                keystore::load_keystores_dir_with(dir, &passwords, o)
            });
            ring.absorb("key-manager-loading", report, true);
        }
        ring
    }

    fn absorb(&mut self, id: &'static str, report: LoadReport, managed: bool) {
        let mut loaded = 0;
        let mut errors = report.errors.len();
        for e in &report.errors {
            tracing::error!(source = id, path = %e.path.display(), error = %e.error, "key not loaded");
        }
        for key in report.keys {
            let pk = key.pubkey();
            if self.keys.contains_key(&pk) {
                tracing::warn!(source = id, pubkey = %const_hex::encode_prefixed(pk), "duplicate key ignored");
                errors += 1;
                continue;
            }
            self.keys.insert(pk, Arc::new(key));
            if managed {
                self.managed.insert(pk);
            }
            loaded += 1;
        }
        tracing::info!(
            source = id,
            keys_loaded = loaded,
            error_count = errors,
            kdf_runs = report.stats.kdf_runs,
            cache_hits = report.stats.cache_hits,
            "keys loaded"
        );
        self.sources.push(SourceReport {
            id,
            keys_loaded: loaded,
            error_count: errors,
        });
    }

    /// Adds a key imported through the key manager.
    pub fn insert_managed(&mut self, key: Arc<ValidatorKey>) {
        let pk = key.pubkey();
        self.keys.insert(pk, key);
        self.managed.insert(pk);
    }

    /// Adds a key from a source that is not the key manager (enclave mode: a host's key
    /// record). An already loaded key is kept as it is; returns whether this one was added.
    pub fn insert(&mut self, key: Arc<ValidatorKey>) -> bool {
        let pk = key.pubkey();
        if self.keys.contains_key(&pk) {
            return false;
        }
        self.keys.insert(pk, key);
        true
    }

    /// Removes a key; true if it was loaded.
    pub fn remove(&mut self, pubkey: &[u8; 48]) -> bool {
        self.managed.remove(pubkey);
        self.keys.remove(pubkey).is_some()
    }

    /// Whether the key came from the key manager (and so may be deleted through it).
    pub fn is_managed(&self, pubkey: &[u8; 48]) -> bool {
        self.managed.contains(pubkey)
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

#[cfg(feature = "aws")]
fn load_aws_bulk(o: &crate::config::AwsSecretsOptions) -> LoadReport {
    let auth = if o.aws_secrets_auth_mode.eq_ignore_ascii_case("ENVIRONMENT") {
        keystore::AwsAuth::Environment
    } else {
        keystore::AwsAuth::Specified {
            access_key_id: o.aws_secrets_access_key_id.clone().unwrap_or_default(),
            secret_access_key: o
                .aws_secrets_secret_access_key
                .clone()
                .map(|s| s.0)
                .unwrap_or_default(),
        }
    };
    keystore::load_aws_secrets_bulk(&keystore::AwsSecretsBulk {
        auth,
        region: o.aws_secrets_region.clone(),
        endpoint_override: o.aws_endpoint_override.clone(),
        prefixes: o.aws_secrets_prefixes_filter.clone(),
        tag_names: o.aws_secrets_tag_names_filter.clone(),
        tag_values: o.aws_secrets_tag_values_filter.clone(),
    })
}

#[cfg(not(feature = "aws"))]
fn load_aws_bulk(_: &crate::config::AwsSecretsOptions) -> LoadReport {
    tracing::error!("--aws-secrets-enabled needs a build with the `aws` feature");
    LoadReport {
        errors: vec![keystore::LoadError {
            path: "aws-secretsmanager:*".into(),
            error: keystore::Error::FeatureDisabled {
                kind: "aws-secrets-enabled".into(),
                feature: "aws",
            },
        }],
        ..LoadReport::default()
    }
}

/// Runs one source's load with a progress line (at most every 5 s, and at the end) and, when
/// configured, that source's restart cache (one cache file per source: a cache drops the
/// entries its load did not see).
fn with_options(
    sources: &KeySources,
    id: &str,
    load: impl FnOnce(&LoadOptions<'_>) -> LoadReport,
) -> LoadReport {
    let started = Instant::now();
    let last = Mutex::new(Instant::now());
    let progress = |p: Progress| {
        metrics::gauge!("ensign_key_loading_processed", "source" => id.to_string())
            .set(p.done as f64);
        metrics::gauge!("ensign_key_loading_keys", "source" => id.to_string()).set(p.total as f64);
        let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
        if p.done == p.total || last.elapsed() >= Duration::from_secs(5) {
            *last = Instant::now();
            tracing::info!(
                source = id,
                done = p.done,
                total = p.total,
                errors = p.errors,
                "loading keys"
            );
        }
    };
    let cache = sources.cache.as_ref().and_then(|(dir, secret)| {
        let path = dir.join(format!("key-cache.{id}.bin"));
        match KeyCache::open(&path, &secret.0) {
            Ok(c) => Some(Mutex::new(c)),
            Err(e) => {
                // A corrupt cache is only lost time: rebuild it. A wrong secret is reported and
                // the cache left alone, so the operator can fix the secret.
                tracing::warn!(path = %path.display(), error = %e, "key cache not used");
                if matches!(e, keystore::Error::CacheCorrupt { .. }) {
                    let _ = std::fs::remove_file(&path);
                    KeyCache::open(&path, &secret.0).ok().map(Mutex::new)
                } else {
                    None
                }
            }
        }
    });
    let mut options = LoadOptions {
        progress: Some(&progress),
        ..LoadOptions::default()
    };
    options.cache = cache.as_ref();
    let report = load(&options);
    tracing::debug!(
        source = id,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "source loaded"
    );
    report
}

/// BLS-signs a 32-byte signing root (compressed 96-byte G2 signature). CPU-bound, about
/// 0.8 ms: call it from a blocking thread, never on the async reactor.
pub fn sign_root(key: &ValidatorKey, signing_root: &[u8; 32]) -> [u8; 96] {
    key.secret().sign(signing_root, DST, &[]).compress()
}

type SignJob = (
    Arc<ValidatorKey>,
    [u8; 32],
    tokio::sync::oneshot::Sender<[u8; 96]>,
);

/// A fixed set of threads, one per core, that do nothing but BLS signing, fed first-in
/// first-out from one multi-consumer queue (no lock shared by the workers). Signing is
/// CPU-bound: more threads than cores only adds switching, and a FIFO queue keeps latency even
/// under load (unlike many blocking-pool threads sharing the CPU).
#[derive(Clone)]
pub struct SigningPool {
    jobs: crossbeam_channel::Sender<SignJob>,
}

impl SigningPool {
    /// Starts `threads` signing threads (they end when the pool is dropped).
    pub fn new(threads: usize) -> SigningPool {
        let (tx, rx) = crossbeam_channel::unbounded::<SignJob>();
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("ensign-sign-{i}"))
                .spawn(move || {
                    for (key, root, reply) in rx {
                        let _ = reply.send(sign_root(&key, &root));
                    }
                })
                .expect("spawn signing thread");
        }
        SigningPool { jobs: tx }
    }

    /// Queues a signature; the future resolves to it (an error only if the pool is gone).
    pub fn sign(
        &self,
        key: Arc<ValidatorKey>,
        signing_root: [u8; 32],
    ) -> tokio::sync::oneshot::Receiver<[u8; 96]> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let _ = self.jobs.send((key, signing_root, tx));
        rx
    }
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
