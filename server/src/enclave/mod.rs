//! Enclave mode (`--enclave-mode=true`): ensign as the enclave half of an AWS Nitro Enclave
//! deployment, with `ensign-host` (crate `enclave-bridge`) on the parent instance.
//!
//! # What changes
//!
//! - **No keys from disk.** Key sources (`--key-store-path`, `--keystores-path`, AWS Secrets
//!   Manager, the key manager API, the restart cache) are refused. Keys arrive over the
//!   **control endpoint** (`--enclave-control-endpoint`, default `vsock:any:5001`) as KMS
//!   ciphertexts of ensign's key records (`key_records`): `Init`, then `AddKeys` /
//!   `RemoveKeys`, from `ensign-host` (protocol: `enclave_bridge::control`).
//! - **KMS decrypts for this image only.** Each record is decrypted with KMS `Decrypt` and a
//!   `Recipient`: an attestation document (the NSM's, `--enclave-attestation nsm`) carrying an
//!   ephemeral RSA key made in this process; KMS checks the document and the key policy's
//!   `kms:RecipientAttestation:ImageSha384` (PCR0) condition and answers with the plaintext
//!   encrypted to that RSA key (`enclave_bridge::kms::RecipientDecryptor`). The host relays
//!   ciphertext only. The record's keystore is then decrypted with its password (EIP-2335).
//! - **TLS ends inside the enclave, with a key made here.** At start the enclave makes an
//!   ECDSA P-256 key and a self-signed certificate (`--enclave-tls-subject-alt-names`); the key
//!   never leaves the process. The signing API (the same router, TLS and connection limits as
//!   ever) is served on the **data endpoint** (`--enclave-data-endpoint`, default
//!   `vsock:any:5000`), to which the host pipes validator clients' TCP bytes unseen. Clients
//!   must present a certificate (`--tls-known-clients-file` or `--tls-allow-ca-clients`; start
//!   is refused without one of them outside `--enclave-development-mode`), and voluntary exits
//!   are refused unless `--enclave-allow-voluntary-exits=true`.
//! - **The certificate is attested.** `GET /api/v1/attestation?nonce=<hex>` returns an
//!   attestation document whose `user_data` is the SHA-256 of the certificate's
//!   SubjectPublicKeyInfo DER and whose `nonce` is the client's, with the certificate:
//!   a client that verifies the document (`ensign verify-attestation`) knows that the TLS key
//!   it talks to belongs to an enclave running the measured image (PCR0).
//! - **Fail closed.** Until an `Init` succeeded, the data endpoint answers only `/upcheck`,
//!   `/healthcheck` (with the enclave's state and only *that* the last `Init` failed: the
//!   reason goes to the host) and
//!   `/api/v1/attestation`; everything else is 503. An `Init` whose every key fails (KMS
//!   `AccessDenied` for another image's PCR0, expired credentials, KMS unreachable) is refused
//!   with the first reason, leaves no key loaded, and may be retried; a second `Init` once
//!   initialised is refused.
//! - **No network.** `--enclave-forward LOCAL=REMOTE` listens on loopback inside the enclave
//!   and pipes each connection to the host's proxies over vsock (KMS: `tcp:127.0.0.1:443=
//!   vsock:3:8000`; PostgreSQL: `tcp:127.0.0.1:5432=vsock:3:5432`). With forwards, the KMS
//!   client resolves every name to 127.0.0.1 but still speaks TLS to the real KMS host name.
//!
//! Slashing protection: PostgreSQL through a forward (`--slashing-protection-db-url
//! postgresql://…?sslmode=verify-full…`, authenticated by name; anything less is refused
//! outside development mode) is the production setup. In enclave mode it is **opened at
//! `Init`, not at start**: `Init` may carry the database's user (which must be the one the
//! image names) and its password as a KMS ciphertext for this image (`ensign database
//! provision` makes it; ensign-host reads it from Secrets Manager, `--db-secret-arn`), decrypted
//! here like a key record and used instead of the URL's and the
//! `--slashing-protection-db-username/-password` options (set on the parsed connection
//! configuration, so no character of a password needs URL-encoding); a password in clear is
//! accepted only in development mode. Without credentials the URL is used as given. A database
//! that cannot be opened fails `Init` with the reason (state
//! `Failed`, `/healthcheck`, the host's log; never the password). Until it is open nothing is
//! signed (the gate answers 503 before `Init` succeeds). `RefreshDatabaseCredentials` opens a
//! new store (a new connection pool) with rotated credentials and swaps it in: decisions in
//! flight finish on the old pool, whose connections close when it is dropped; if the new
//! credentials do not work the old store stays and the host hears why. SQLite also works (opened
//! at start, as outside enclave mode), but an enclave's file system lives in its memory, so
//! SQLite's history is LOST when the enclave restarts — a restarted enclave would not know what
//! it signed. Use it for demos only.
//!
//! # Invariants
//!
//! - Plaintext key material exists only in this process: decrypted records and passwords are
//!   zeroizing types, dropped as soon as the key is derived; control replies, health output,
//!   errors and logs carry ids, counts and reasons, never secrets.
//! - The keys change only through the control handler, which the control server serialises;
//!   the key manager API and `/reload` are off in enclave mode.
//! - Key ring updates are copy-and-swap (as the key manager does): a request in flight keeps
//!   the key it looked up.

mod control;
mod http;
mod identity;
mod prepare;

pub use http::{attestation, gate, EnclaveShared};
pub use identity::{spki_sha256, IdentityError, TlsIdentity};
pub use prepare::{prepare, ControlParts, PrepareError, Prepared};

/// Where the attestation document is served.
pub const ATTESTATION_PATH: &str = "/api/v1/attestation";

/// Paths served before the enclave is initialised; everything else is 503.
const SERVED_BEFORE_INIT: [&str; 3] = ["/upcheck", "/healthcheck", ATTESTATION_PATH];

/// Largest nonce accepted (the NSM accepts up to 512 bytes; a verifier needs far less).
pub const MAX_NONCE_LEN: usize = 64;

/// What `/healthcheck` says of a failed `Init` (the reason is in the host's control reply).
pub const INIT_FAILED_PUBLIC: &str = "the last Init failed; ensign-host logs the reason";

/// The one text a record that failed after KMS answered gets, whatever went wrong: its
/// envelope, its JSON, its keystore, its password or its public key. A failure's detail would
/// be derived from the plaintext, and the parent instance reads every reply and log line
/// (issue 15): it could otherwise learn plaintext from how tampered ciphertexts fail.
pub const RECORD_UNUSABLE: &str = "the record could not be used once KMS had answered (envelope, \
    format, keystore, password or public key check failed; no detail is given outside the \
    enclave); the rest of the batch was not attempted";

/// The one text for a database password ciphertext that KMS answered but that did not open to
/// a password (as [`RECORD_UNUSABLE`]: no detail derived from a plaintext leaves the enclave).
pub const DB_PASSWORD_UNUSABLE: &str = "the database password could not be used once KMS had \
    answered (no detail is given outside the enclave)";

/// Why a password in clear from the parent instance is refused outside development mode.
pub const DB_PASSWORD_IN_CLEAR: &str = "the database password arrived in clear from the parent \
    instance, which could then use it itself; this enclave accepts it only KMS-encrypted for its \
    image (`ensign database provision` writes such a secret; --enclave-development-mode=true \
    accepts it in clear)";

/// What the records of a batch not attempted after a [`RECORD_UNUSABLE`] failure get.
const BATCH_STOPPED: &str =
    "not attempted: an earlier record of this batch could not be used once KMS had answered";

/// Health-check id of the keys loaded from the host's records.
const SOURCE_ID: &str = "enclave-kms-loading";

/// KMS requests at once during one Init/AddKeys batch.
const KMS_CONCURRENCY: usize = 8;

/// Attestation documents made at once (each is an NSM round trip on a blocking thread).
const ATTEST_CONCURRENCY: usize = 4;
