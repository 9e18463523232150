//! Opt-in restart cache: decrypted validator keys, sealed under a key
//! derived from an operator secret, so that a restart does not have to run
//! every keystore's EIP-2335 KDF again (at the EIP-2335 default cost that is
//! ~0.1–1 s and 256 MiB per keystore, minutes for thousands of keys).
//!
//! # Security model
//!
//! The cache holds the same secrets as the keystores, protected by the
//! operator secret instead of the keystore passwords. It is only as strong
//! as that secret and must be treated like the keystores themselves.
//!
//! - One scrypt derivation per [`KeyCache::open`] (n = 2^15, r = 8, p = 1,
//!   32-byte output, random 32-byte salt stored in the header) turns the
//!   operator secret into a master key. Three subkeys are split off it with
//!   HMAC-SHA256 under fixed labels (key separation: the id key, the
//!   sealing key and the header-check key are never the same bytes).
//! - An entry's id is `HMAC-SHA256(id key, SHA-256(keystore file bytes) ‖
//!   SHA-256(normalised password))`. Any change to the keystore file or to
//!   the password (after EIP-2335 "Password requirements" normalisation,
//!   i.e. exactly the bytes the KDF would see) gives a different id, so it
//!   misses. Without the operator secret the ids reveal nothing about the
//!   passwords.
//! - An entry's value is the 32-byte secret sealed with AES-256-GCM under
//!   the sealing key, with a fresh random 96-bit nonce and the id as
//!   associated data, so an entry cannot be moved to another id. (Random
//!   nonces are safe up to ~2^32 seals per key; a cache sees a handful per
//!   key per restart.) A hit is only returned if the secret's pubkey also
//!   matches the keystore's `pubkey` field, when present.
//! - A wrong operator secret is detected by an HMAC check value over the
//!   header and reported as [`Error::CacheWrongSecret`]; it never yields
//!   keys. Anything structurally wrong (truncation, bit rot, unknown
//!   version) is [`Error::CacheCorrupt`]: the cache can always be rebuilt
//!   from the keystores, so callers may start a fresh one.
//! - Writes are atomic (temporary file, fsync, rename, fsync of the
//!   directory) and the file is created with mode 0600. No secret is ever
//!   written unsealed.
//!
//! # File format, version 1
//!
//! Binary, integers big-endian:
//!
//! | offset     | length | field                                              |
//! |------------|--------|----------------------------------------------------|
//! | 0          | 8      | magic `ENSKCACH`                                   |
//! | 8          | 1      | format version, `1`                                |
//! | 9          | 1      | scrypt log2(n), `15`                               |
//! | 10         | 1      | scrypt r, `8`                                      |
//! | 11         | 1      | scrypt p, `1`                                      |
//! | 12         | 32     | scrypt salt                                        |
//! | 44         | 32     | check: HMAC-SHA256(check key, bytes 0..44)         |
//! | 76         | 4      | entry count N                                      |
//! | 80         | 92 · N | entries, sorted by id: id (32) ‖ nonce (12) ‖ ciphertext (32) ‖ GCM tag (16) |
//! | 80 + 92·N  | 32     | SHA-256 of all preceding bytes                     |
//!
//! The trailing SHA-256 is unkeyed on purpose: it tells corruption apart
//! from a wrong operator secret before any key is derived. Version 1
//! accepts only the scrypt parameters above (a hand-edited file must not be
//! able to make us allocate more); they are stored so a later version can
//! change them.

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce, Tag};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::eip2335::Keystore;
use crate::key::{ValidatorKey, PUBKEY_LEN, SECRET_LEN};
use crate::password::normalize_password;
use crate::Error;

type HmacSha256 = Hmac<Sha256>;

const MAGIC: &[u8; 8] = b"ENSKCACH";
const VERSION: u8 = 1;
/// scrypt for the operator secret: n = 2^15, r = 8 needs 32 MiB and tens
/// of milliseconds, paid once per open rather than once per key.
const LOG_N: u8 = 15;
const R: u8 = 8;
const P: u8 = 1;
const SALT_LEN: usize = 32;
const ID_LEN: usize = 32;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const HEADER_LEN: usize = 8 + 1 + 3 + SALT_LEN;
const CHECK_LEN: usize = 32;
const PREFIX_LEN: usize = HEADER_LEN + CHECK_LEN + 4;
const ENTRY_LEN: usize = ID_LEN + NONCE_LEN + SECRET_LEN + TAG_LEN;
const TRAILER_LEN: usize = 32;

/// Most entries a cache file may hold (about 92 MiB); far beyond any
/// signer's key count, and it bounds what [`KeyCache::open`] reads.
pub const MAX_CACHE_ENTRIES: usize = 1 << 20;
const MAX_FILE_LEN: usize = PREFIX_LEN + ENTRY_LEN * MAX_CACHE_ENTRIES + TRAILER_LEN;

// Labels for splitting the scrypt output into independent subkeys.
const LABEL_ID: &[u8] = b"ensign key cache v1: entry id";
const LABEL_SEAL: &[u8] = b"ensign key cache v1: seal";
const LABEL_CHECK: &[u8] = b"ensign key cache v1: header check";

/// Identifier of one cache entry (an HMAC output, not secret).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CacheId([u8; ID_LEN]);

impl fmt::Debug for CacheId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CacheId({})", hex::encode(self.0))
    }
}

/// One sealed secret: AES-256-GCM output for a 32-byte plaintext.
#[derive(Clone)]
struct Sealed {
    nonce: [u8; NONCE_LEN],
    ciphertext: [u8; SECRET_LEN],
    tag: [u8; TAG_LEN],
}

/// An open key cache. See the module documentation for the security model
/// and file format. `Debug` shows only the path and entry count.
pub struct KeyCache {
    path: PathBuf,
    salt: [u8; SALT_LEN],
    check: [u8; CHECK_LEN],
    id_key: Zeroizing<[u8; 32]>,
    seal_key: Zeroizing<[u8; 32]>,
    entries: BTreeMap<CacheId, Sealed>,
}

impl fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyCache")
            .field("path", &self.path)
            .field("entries", &self.entries.len())
            .finish_non_exhaustive()
    }
}

impl KeyCache {
    /// Open the cache at `path`, or create an empty one there (written
    /// immediately, so an unwritable location fails now rather than after a
    /// long load).
    ///
    /// Errors: [`Error::CacheEmptySecret`]; [`Error::Io`] if the file exists
    /// but cannot be read; [`Error::CacheCorrupt`] for a damaged or foreign
    /// file (safe to delete and rebuild); [`Error::CacheWrongSecret`] if the
    /// file was sealed with another operator secret; [`Error::CacheWrite`]
    /// if a new cache cannot be written.
    pub fn open(path: &Path, operator_secret: &[u8]) -> Result<KeyCache, Error> {
        if operator_secret.is_empty() {
            return Err(Error::CacheEmptySecret);
        }
        let bytes = match read_cache_file(path)? {
            Some(b) => b,
            None => {
                let salt = random_bytes::<SALT_LEN>()?;
                let keys = derive_keys(operator_secret, &salt)?;
                let check = header_check(&keys.check, &header_bytes(&salt));
                let cache = KeyCache {
                    path: path.to_owned(),
                    salt,
                    check,
                    id_key: keys.id,
                    seal_key: keys.seal,
                    entries: BTreeMap::new(),
                };
                cache.save()?;
                return Ok(cache);
            }
        };
        Self::parse(path, &bytes, operator_secret)
    }

    /// Validate and decode a cache file. Every structural check runs before
    /// the scrypt derivation, so a damaged file is refused cheaply.
    fn parse(path: &Path, bytes: &[u8], operator_secret: &[u8]) -> Result<KeyCache, Error> {
        let corrupt = |reason| Error::CacheCorrupt {
            path: path.to_owned(),
            reason,
        };
        if bytes.len() < PREFIX_LEN + TRAILER_LEN {
            return Err(corrupt("file is truncated"));
        }
        let (body, trailer) = bytes.split_at(bytes.len() - TRAILER_LEN);
        if Sha256::digest(body).as_slice() != trailer {
            return Err(corrupt("integrity checksum mismatch"));
        }
        if &body[..8] != MAGIC {
            return Err(corrupt("not a key cache file"));
        }
        if body[8] != VERSION {
            return Err(corrupt("unsupported format version"));
        }
        if body[9..12] != [LOG_N, R, P] {
            return Err(corrupt("unsupported KDF parameters"));
        }
        let salt: [u8; SALT_LEN] = body[12..HEADER_LEN].try_into().expect("length checked");
        let check: [u8; CHECK_LEN] = body[HEADER_LEN..HEADER_LEN + CHECK_LEN]
            .try_into()
            .expect("length checked");
        let count_bytes: [u8; 4] = body[HEADER_LEN + CHECK_LEN..PREFIX_LEN]
            .try_into()
            .expect("length checked");
        let count = u32::from_be_bytes(count_bytes) as usize;
        if count > MAX_CACHE_ENTRIES || body.len() != PREFIX_LEN + count * ENTRY_LEN {
            return Err(corrupt("length does not match entry count"));
        }

        let keys = derive_keys(operator_secret, &salt)?;
        let mut mac = hmac_with(&keys.check);
        mac.update(&body[..HEADER_LEN]);
        // `verify_slice` compares in constant time.
        if mac.verify_slice(&check).is_err() {
            return Err(Error::CacheWrongSecret {
                path: path.to_owned(),
            });
        }

        let mut entries = BTreeMap::new();
        for raw in body[PREFIX_LEN..].chunks_exact(ENTRY_LEN) {
            let (id, rest) = raw.split_at(ID_LEN);
            let (nonce, rest) = rest.split_at(NONCE_LEN);
            let (ciphertext, tag) = rest.split_at(SECRET_LEN);
            let sealed = Sealed {
                nonce: nonce.try_into().expect("fixed split"),
                ciphertext: ciphertext.try_into().expect("fixed split"),
                tag: tag.try_into().expect("fixed split"),
            };
            let id = CacheId(id.try_into().expect("fixed split"));
            if entries.insert(id, sealed).is_some() {
                return Err(corrupt("duplicate entry id"));
            }
        }
        Ok(KeyCache {
            path: path.to_owned(),
            salt,
            check,
            id_key: keys.id,
            seal_key: keys.seal,
            entries,
        })
    }

    /// The cache file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the cache holds no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entry id for a keystore file's exact bytes and its password
    /// (normalised per EIP-2335 "Password requirements" first, so passwords
    /// the KDF treats as equal share an id).
    pub fn id(&self, keystore_bytes: &[u8], password: &str) -> CacheId {
        let password = normalize_password(password);
        let password_hash = Zeroizing::new(<[u8; 32]>::from(Sha256::digest(&*password)));
        let file_hash = Sha256::digest(keystore_bytes);
        let mut mac = hmac_with(&self.id_key);
        mac.update(&file_hash);
        mac.update(&*password_hash);
        CacheId(mac.finalize().into_bytes().into())
    }

    /// Whether an entry with this id is held.
    pub fn contains(&self, id: &CacheId) -> bool {
        self.entries.contains_key(id)
    }

    /// The cached key for this keystore file and password, if any. `None`
    /// also when the keystore does not parse or its `pubkey` field does not
    /// match the cached secret (defence in depth: the id already binds the
    /// file bytes).
    pub fn get(&self, keystore_bytes: &[u8], password: &str) -> Option<ValidatorKey> {
        let claimed = Keystore::from_json_bytes(keystore_bytes)
            .ok()?
            .claimed_pubkey();
        self.get_by_id(&self.id(keystore_bytes, password), claimed)
    }

    /// Unseal the entry `id`; `claimed` is the keystore's `pubkey` field.
    fn get_by_id(&self, id: &CacheId, claimed: Option<[u8; PUBKEY_LEN]>) -> Option<ValidatorKey> {
        let key = ValidatorKey::from_secret_bytes(&*self.unseal(id)?).ok()?;
        match claimed {
            Some(pk) if pk != key.pubkey() => None,
            _ => Some(key),
        }
    }

    /// The secret sealed under `id`, if the entry exists and authenticates.
    pub(crate) fn unseal(&self, id: &CacheId) -> Option<Zeroizing<[u8; SECRET_LEN]>> {
        let sealed = self.entries.get(id)?;
        let cipher = Aes256Gcm::new((&*self.seal_key).into());
        let mut secret = Zeroizing::new(sealed.ciphertext);
        cipher
            .decrypt_in_place_detached(
                Nonce::from_slice(&sealed.nonce),
                &id.0,
                &mut *secret,
                Tag::from_slice(&sealed.tag),
            )
            .ok()?;
        Some(secret)
    }

    /// Seal `key` under the entry for this keystore file and password,
    /// replacing any previous entry. Call only with the key those bytes and
    /// that password decrypt to. Returns the entry's id. A cache already
    /// holding [`MAX_CACHE_ENTRIES`] other entries does not grow.
    pub fn insert(
        &mut self,
        keystore_bytes: &[u8],
        password: &str,
        key: &ValidatorKey,
    ) -> Result<CacheId, Error> {
        let id = self.id(keystore_bytes, password);
        self.insert_by_id(id, key)?;
        Ok(id)
    }

    pub(crate) fn insert_by_id(&mut self, id: CacheId, key: &ValidatorKey) -> Result<(), Error> {
        // Past the bound the file would be refused on the next open; the
        // cache is an optimisation, so the key is simply not cached.
        if self.entries.len() >= MAX_CACHE_ENTRIES && !self.entries.contains_key(&id) {
            return Ok(());
        }
        let nonce = random_bytes::<NONCE_LEN>()?;
        let cipher = Aes256Gcm::new((&*self.seal_key).into());
        let mut buf = Zeroizing::new(key.secret().to_bytes());
        let tag = cipher
            .encrypt_in_place_detached(Nonce::from_slice(&nonce), &id.0, &mut *buf)
            // Only fails for plaintexts near 64 GiB; 32 bytes cannot.
            .map_err(|_| Error::Random("AES-GCM sealing failed".into()))?;
        self.entries.insert(
            id,
            Sealed {
                nonce,
                ciphertext: *buf,
                tag: tag.into(),
            },
        );
        Ok(())
    }

    /// Drop every entry whose id is not in `ids` (the keystores seen in the
    /// latest load), so keys of removed keystores, or of keystores whose
    /// file or password changed, do not linger. Returns how many entries
    /// were dropped.
    pub fn retain_only<I>(&mut self, ids: I) -> usize
    where
        I: IntoIterator,
        I::Item: Borrow<CacheId>,
    {
        let keep: std::collections::HashSet<CacheId> =
            ids.into_iter().map(|id| *id.borrow()).collect();
        let before = self.entries.len();
        self.entries.retain(|id, _| keep.contains(id));
        before - self.entries.len()
    }

    /// Write the cache to its path atomically: a temporary file in the same
    /// directory (mode 0600) is written and fsynced, renamed over the
    /// cache, and the directory is fsynced so the rename survives a crash.
    /// A crash at any point leaves either the old or the new file.
    pub fn save(&self) -> Result<(), Error> {
        let bytes = self.serialize();
        let werr = |path: &Path| {
            let path = path.to_owned();
            move |source| Error::CacheWrite { path, source }
        };
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let name = self
            .path
            .file_name()
            .ok_or_else(|| Error::CacheWrite {
                path: self.path.clone(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "no file name"),
            })?
            .to_string_lossy()
            .into_owned();
        // Hidden and uniquely named, so concurrent savers never share a
        // temporary file and key directory scans skip it.
        let tmp = dir.join(format!(
            ".{name}.tmp-{}-{}",
            std::process::id(),
            hex::encode(random_bytes::<8>()?)
        ));
        let write = || -> Result<(), Error> {
            let mut opts = fs::OpenOptions::new();
            opts.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                opts.mode(0o600);
            }
            let mut file = opts.open(&tmp).map_err(werr(&tmp))?;
            file.write_all(&bytes).map_err(werr(&tmp))?;
            file.sync_all().map_err(werr(&tmp))?;
            drop(file);
            fs::rename(&tmp, &self.path).map_err(werr(&self.path))
        };
        if let Err(e) = write() {
            // Best effort: the temporary file holds only sealed data, but
            // should not be left behind.
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        // fsync the directory so the rename itself is durable.
        #[cfg(unix)]
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(werr(dir))?;
        Ok(())
    }

    fn serialize(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(PREFIX_LEN + self.entries.len() * ENTRY_LEN + TRAILER_LEN);
        out.extend_from_slice(&header_bytes(&self.salt));
        out.extend_from_slice(&self.check);
        // `insert_by_id` keeps the count at most MAX_CACHE_ENTRIES (< 2^32).
        let count = u32::try_from(self.entries.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&count.to_be_bytes());
        for (id, sealed) in &self.entries {
            out.extend_from_slice(&id.0);
            out.extend_from_slice(&sealed.nonce);
            out.extend_from_slice(&sealed.ciphertext);
            out.extend_from_slice(&sealed.tag);
        }
        let digest = Sha256::digest(&out);
        out.extend_from_slice(&digest);
        out
    }
}

/// Subkeys split off the scrypt output.
struct Keys {
    id: Zeroizing<[u8; 32]>,
    seal: Zeroizing<[u8; 32]>,
    check: Zeroizing<[u8; 32]>,
}

fn derive_keys(operator_secret: &[u8], salt: &[u8; SALT_LEN]) -> Result<Keys, Error> {
    let params = scrypt::Params::new(LOG_N, u32::from(R), u32::from(P), 32).map_err(|_| {
        Error::ScryptParam {
            param: "r",
            value: u64::from(R),
            max: u64::from(R),
        }
    })?;
    let mut master = Zeroizing::new([0u8; 32]);
    scrypt::scrypt(operator_secret, salt, &params, &mut *master)
        .map_err(|_| Error::InvalidDkLen(32))?;
    let sub = |label: &[u8]| {
        let mut mac = hmac_with(&master);
        mac.update(label);
        Zeroizing::new(<[u8; 32]>::from(mac.finalize().into_bytes()))
    };
    Ok(Keys {
        id: sub(LABEL_ID),
        seal: sub(LABEL_SEAL),
        check: sub(LABEL_CHECK),
    })
}

fn hmac_with(key: &[u8; 32]) -> HmacSha256 {
    <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC accepts keys of any length")
}

fn header_bytes(salt: &[u8; SALT_LEN]) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(MAGIC);
    h[8] = VERSION;
    h[9..12].copy_from_slice(&[LOG_N, R, P]);
    h[12..].copy_from_slice(salt);
    h
}

fn header_check(check_key: &[u8; 32], header: &[u8; HEADER_LEN]) -> [u8; CHECK_LEN] {
    let mut mac = hmac_with(check_key);
    mac.update(header);
    mac.finalize().into_bytes().into()
}

/// The file's bytes, `None` if it does not exist, refusing anything larger
/// than the largest legitimate cache.
fn read_cache_file(path: &Path) -> Result<Option<Vec<u8>>, Error> {
    let io = |source| Error::Io {
        path: path.to_owned(),
        source,
    };
    let file = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    let limit = MAX_FILE_LEN as u64;
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes).map_err(io)?;
    if bytes.len() as u64 > limit {
        return Err(Error::CacheCorrupt {
            path: path.to_owned(),
            reason: "file is larger than any valid cache",
        });
    }
    Ok(Some(bytes))
}

fn random_bytes<const N: usize>() -> Result<[u8; N], Error> {
    let mut buf = [0u8; N];
    getrandom::getrandom(&mut buf).map_err(|e| Error::Random(e.to_string()))?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> ValidatorKey {
        let mut b = [0u8; 32];
        b[0] = 0x20;
        b[31] = seed;
        ValidatorKey::from_secret_bytes(&b).unwrap()
    }

    #[test]
    fn layout_constants() {
        assert_eq!(HEADER_LEN, 44);
        assert_eq!(PREFIX_LEN, 80);
        assert_eq!(ENTRY_LEN, 92);
    }

    #[test]
    fn round_trip_and_ad_binding() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("cache");
        let mut cache = KeyCache::open(&path, b"operator").unwrap();
        let k = key(1);
        let id = cache.insert(b"ks-bytes", "pw", &k).unwrap();
        assert_eq!(id, cache.id(b"ks-bytes", "pw"));
        // Passwords equal after EIP-2335 normalisation share an id.
        assert_eq!(id, cache.id(b"ks-bytes", "p\u{7f}w"));
        assert_ne!(id, cache.id(b"ks-bytes", "pw2"));
        assert_eq!(cache.get_by_id(&id, None).unwrap().pubkey(), k.pubkey());
        // A pubkey claim that disagrees is a miss.
        assert!(cache.get_by_id(&id, Some(key(2).pubkey())).is_none());
        // Moving a sealed value to another id fails authentication (the id
        // is the associated data).
        let other = cache.id(b"other", "pw");
        let sealed = cache.entries[&id].clone();
        cache.entries.insert(other, sealed);
        assert!(cache.get_by_id(&other, None).is_none());
        assert!(format!("{cache:?}").contains("entries"));
    }

    #[test]
    fn flipped_header_byte_is_corrupt_not_wrong_secret() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("cache");
        KeyCache::open(&path, b"operator").unwrap();
        let mut bytes = fs::read(&path).unwrap();
        bytes[20] ^= 1; // inside the salt
        fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            KeyCache::open(&path, b"operator"),
            Err(Error::CacheCorrupt { .. })
        ));
    }
}
