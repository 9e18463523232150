//! What a load returns: the keys, the sources that failed and why, and what it cost. A leaf
//! module, so that every key source (`loader`'s files, `aws`'s secrets) reports the same way
//! without importing each other.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;

use crate::key::PUBKEY_LEN;
use crate::{Error, ValidatorKey};

/// A file that failed to yield a key, and why.
///
/// `path` is the file the key came from: the YAML config for config errors
/// and `file-raw` keys, the keystore JSON for keystore errors (including
/// keystores referenced from a `file-keystore` config), or the directory if
/// it could not be listed.
#[derive(Debug)]
pub struct LoadError {
    pub path: PathBuf,
    pub error: Error,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.error)
    }
}

/// Outcome of loading a directory: the keys that loaded and the files that
/// did not. One bad file never stops the others.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub keys: Vec<ValidatorKey>,
    pub errors: Vec<LoadError>,
    /// What the load cost; see [`LoadStats`].
    pub stats: LoadStats,
}

impl LoadReport {
    /// Adds one outcome per source, in order: its key, or its error. A key whose pubkey an
    /// earlier source already gave is an error naming that first source, so that every key
    /// source refuses duplicates the same way and the first one wins.
    pub(crate) fn add_outcomes(
        &mut self,
        outcomes: impl IntoIterator<Item = (PathBuf, Result<ValidatorKey, Error>)>,
    ) {
        let mut seen: HashMap<[u8; PUBKEY_LEN], PathBuf> = HashMap::new();
        for (path, result) in outcomes {
            match result {
                Ok(key) => {
                    if let Some(first) = seen.get(&key.pubkey()) {
                        self.errors.push(LoadError {
                            path,
                            error: Error::DuplicatePubkey {
                                pubkey: hex::encode(key.pubkey()),
                                first: first.clone(),
                            },
                        });
                    } else {
                        seen.insert(key.pubkey(), path);
                        self.keys.push(key);
                    }
                }
                Err(error) => self.errors.push(LoadError { path, error }),
            }
        }
    }
}

/// Counters of one load, for logs and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadStats {
    /// KDF derivations run: one per keystore decrypted without the cache,
    /// whether or not its password turned out to be right.
    pub kdf_runs: usize,
    /// Keystores whose key came from the restart cache, with no KDF run.
    pub cache_hits: usize,
    /// Most scrypt derivations that were running at the same time.
    pub max_concurrent_scrypt: usize,
    /// Most scrypt working memory (bytes, per [`crate::Keystore::kdf_memory`]) in
    /// use at the same time. Never above the larger of
    /// [`crate::LoadOptions::max_kdf_memory`] and the single largest need.
    pub peak_kdf_memory: u64,
}
