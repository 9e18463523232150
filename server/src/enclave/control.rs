use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::SystemTime;

use enclave_bridge::attestation::Attestor;
use enclave_bridge::control::{
    AddKeysRequest, AwsCredentials, ControlHandler, DatabaseCredentials, DatabasePassword,
    EncryptedBlob, EncryptedKeyRecord, HandlerError, InitRequest, KeyFailure, KeysReport,
    RemoveKeysRequest, RemoveReport,
};
use enclave_bridge::kms::{
    kms_client, DecryptRequest, KeyDecryptor, KmsClientConfig, KmsError, PlainDecryptor,
    RecipientDecryptor,
};
use keystore::ValidatorKey;
use slashing::StoreConfig;
use tokio::sync::Semaphore;
use zeroize::Zeroizing;

use crate::config::KmsPin;
use crate::key_records::{RecordPlaintext, CONTEXT_PUBKEY};
use crate::keys::{parse_identifier, KeyRing, SourceReport};
use crate::state::AppState;

use super::{
    BATCH_STOPPED, DB_PASSWORD_IN_CLEAR, DB_PASSWORD_UNUSABLE, KMS_CONCURRENCY, RECORD_UNUSABLE,
    SOURCE_ID,
};

/// How key records are decrypted.
#[derive(Clone)]
pub(super) enum Decrypt {
    /// KMS `Decrypt` with an attested `Recipient`.
    Attested(Arc<dyn Attestor>),
    /// Plain KMS `Decrypt` ([`AttestationMode::UnattestedPlainDecryptForTests`]).
    Plain,
}

/// One record's outcome.
type Loaded = Result<(String, ValidatorKey), KeyFailure>;

/// Why a ciphertext from the host is refused before anything is sent to KMS. The text goes to
/// the host: it carries only what the host sent.
#[derive(Debug, thiserror::Error)]
enum Refused {
    /// The image pins a KMS key (issue 15) and the ciphertext (`what`) names another.
    #[error(
        "{what} names KMS key {named}; this enclave decrypts only with {pinned} \
         (--enclave-kms-key-arn)"
    )]
    OtherKey {
        what: &'static str,
        named: String,
        pinned: String,
    },
    #[error(
        "the record has no `{}` encryption context (records made by `ensign keys encrypt` have \
         it; it is checked against the decrypted key)",
        CONTEXT_PUBKEY
    )]
    NoPubkeyContext,
    #[error(
        "the record's `{}` encryption context is not a public key",
        CONTEXT_PUBKEY
    )]
    ContextNotPubkey,
    #[error("the record is labelled {labelled} but its encryption context names {context}")]
    Relabelled { labelled: String, context: String },
}

/// The control protocol's handler: turns key records into keys in the ring.
pub(super) struct Handler {
    pub(super) app: OnceLock<Weak<AppState>>,
    /// Whether the last `Init` failed, for `/healthcheck` (the reason goes to the host only).
    pub(super) last_init_failed: Arc<AtomicBool>,
    pub(super) decrypt: Decrypt,
    pub(super) resolve_to: Option<IpAddr>,
    /// The image's KMS settings.
    pub(super) kms: KmsPin,
    /// The KMS settings of the accepted `Init` (credentials replaced by RefreshCredentials).
    pub(super) session: Mutex<Option<KmsClientConfig>>,
    /// Records that failed to load: id → reason (the health check's error count).
    pub(super) failed: Mutex<BTreeMap<String, String>>,
    /// PostgreSQL slashing protection, opened at `Init` (`None`: SQLite, opened at start, or
    /// protection off).
    pub(super) db: Option<Database>,
}

/// The PostgreSQL slashing database of an enclave (see the module docs).
pub(super) struct Database {
    /// The image's configuration (a `StoreConfig::Postgres`). The user it names, if any, is the
    /// only one the host may send credentials for.
    pub(super) configured: StoreConfig,
    /// `--enclave-development-mode`: a password in clear from the host is accepted.
    pub(super) development: bool,
    /// What the signer uses; empty until `Init` opened it.
    pub(super) store: Arc<slashing::MemoryWitness>,
}

impl Database {
    /// The store configuration with the host's user and the password it delivered, if any, in
    /// place of the configured ones. (`slashing` sets them on the parsed connection
    /// configuration: nothing to encode.)
    fn config(&self, from_host: Option<(&str, &str)>) -> StoreConfig {
        let mut config = self.configured.clone();
        if let (
            Some((user, pw)),
            StoreConfig::Postgres {
                username, password, ..
            },
        ) = (from_host, &mut config)
        {
            *username = Some(user.to_owned());
            *password = Some(pw.to_owned());
        }
        config
    }
}

impl Handler {
    /// Opens the PostgreSQL slashing store with `credentials` (or the configured ones) and puts
    /// it in place of the current one. Without PostgreSQL there is nothing to open. A password
    /// arrives KMS-encrypted for this image and is decrypted here with `kms` (the session's
    /// settings); one in clear only in development mode (issue 15).
    async fn open_database(
        &self,
        credentials: Option<&DatabaseCredentials>,
        kms: Option<&KmsClientConfig>,
    ) -> Result<(), HandlerError> {
        let Some(db) = &self.db else {
            if credentials.is_some() {
                tracing::warn!("database credentials received, but slashing protection is not PostgreSQL: ignored");
            }
            return Ok(());
        };
        if let (Some(c), Some(pinned)) = (credentials, db.configured.configured_user()) {
            if c.username != pinned {
                return Err(HandlerError::new(format!(
                    "the database credentials from ensign-host are for user {}, but this \
                     enclave's image names user {pinned}: refused (the parent instance must not \
                     choose whose tables the enclave reads)",
                    c.username
                )));
            }
        }
        let password: Option<Zeroizing<String>> = match credentials {
            None => None,
            Some(c) => match &c.password {
                DatabasePassword::Plain(_) if !db.development => {
                    return Err(HandlerError::new(DB_PASSWORD_IN_CLEAR))
                }
                DatabasePassword::Plain(p) => Some(Zeroizing::new(p.expose().to_owned())),
                DatabasePassword::Encrypted(blob) => {
                    let kms = kms.ok_or_else(|| {
                        HandlerError::new(
                            "no KMS session to decrypt the database password: Init first",
                        )
                    })?;
                    Some(self.decrypt_db_password(kms, &c.username, blob).await?)
                }
            },
        };
        let from_host = match (credentials, &password) {
            (Some(c), Some(p)) => Some((c.username.as_str(), p.as_str())),
            _ => None,
        };
        let config = db.config(from_host);
        let user = match (credentials, db.configured.configured_user()) {
            (Some(c), _) => format!("user {} from ensign-host", c.username),
            (None, Some(u)) => format!("user {u}"),
            (None, None) => "the URL's user".to_string(),
        };
        let store = db.store.clone();
        // Connecting and migrating block; the replaced store's connections are closed here too,
        // on a blocking thread (never on the reactor).
        let opened = tokio::task::spawn_blocking(move || {
            let opened = slashing::open(&config)?;
            drop(store.replace_store(opened));
            Ok::<(), slashing::Error>(())
        })
        .await
        .map_err(|_| HandlerError::new("opening the slashing protection database aborted"))?;
        match opened {
            Ok(()) => {
                tracing::info!("slashing protection database (PostgreSQL) opened with {user}");
                Ok(())
            }
            Err(e) => {
                let mut reason =
                    format!("the slashing protection database cannot be opened with {user}: {e}");
                // PostgreSQL's messages do not echo passwords; make sure of it.
                if let Some(p) = &password {
                    if !p.is_empty() && reason.contains(p.as_str()) {
                        reason = reason.replace(p.as_str(), "<redacted>");
                    }
                }
                Err(HandlerError::new(reason))
            }
        }
    }

    /// Decrypts the database password `ensign database provision` encrypted for this image. Its
    /// encryption context must name its purpose and `user` (KMS binds both to the ciphertext,
    /// so neither a key record nor another role's password can stand in for it); the image's
    /// pinned KMS key is used. After KMS answered, every failure is [`DB_PASSWORD_UNUSABLE`].
    async fn decrypt_db_password(
        &self,
        config: &KmsClientConfig,
        user: &str,
        blob: &EncryptedBlob,
    ) -> Result<Zeroizing<String>, HandlerError> {
        use crate::key_records::{CONTEXT_DB_USER, CONTEXT_PURPOSE, PURPOSE_DB_PASSWORD};
        self.check_key_id("the database password", blob.kms_key_id.as_deref())
            .map_err(|e| HandlerError::new(e.to_string()))?;
        let context = &blob.encryption_context;
        if context.get(CONTEXT_PURPOSE).map(String::as_str) != Some(PURPOSE_DB_PASSWORD)
            || context.get(CONTEXT_DB_USER).map(String::as_str) != Some(user)
        {
            return Err(HandlerError::new(format!(
                "the database password's encryption context must be {{{CONTEXT_PURPOSE}: \
                 {PURPOSE_DB_PASSWORD}, {CONTEXT_DB_USER}: {user}}} (`ensign database \
                 provision` makes it so)"
            )));
        }
        let decryptor = self.decryptor(config).await?;
        let got = decryptor
            .decrypt(DecryptRequest {
                ciphertext: &blob.ciphertext.0,
                key_id: self.kms.key_arn.as_deref().or(blob.kms_key_id.as_deref()),
                encryption_context: Some(context),
            })
            .await;
        match got {
            Ok(plain) => std::str::from_utf8(plain.expose())
                .ok()
                .filter(|p| (16..=1024).contains(&p.len()))
                .map(|p| Zeroizing::new(p.to_owned()))
                .ok_or_else(|| HandlerError::new(DB_PASSWORD_UNUSABLE)),
            Err(e) if e.after_answer() => Err(HandlerError::new(DB_PASSWORD_UNUSABLE)),
            Err(e) => Err(HandlerError::new(format!(
                "the database password could not be decrypted: {e}"
            ))),
        }
    }

    fn app(&self) -> Result<Arc<AppState>, HandlerError> {
        self.app
            .get()
            .and_then(Weak::upgrade)
            .ok_or_else(|| HandlerError::new("the signer is shutting down"))
    }

    fn decryptor(
        &self,
        config: &KmsClientConfig,
    ) -> impl std::future::Future<Output = Result<Arc<dyn KeyDecryptor>, HandlerError>> + Send + 'static
    {
        let client = kms_client(config);
        let decrypt = self.decrypt.clone();
        async move {
            match decrypt {
                Decrypt::Plain => {
                    Ok(Arc::new(PlainDecryptor::new(client)) as Arc<dyn KeyDecryptor>)
                }
                Decrypt::Attested(attestor) => {
                    // Cheap: each `decrypt` makes its own RSA key, on a blocking thread.
                    let d = RecipientDecryptor::new(client, attestor)
                        .map_err(|e| HandlerError::new(e.to_string()))?;
                    Ok(Arc::new(d) as Arc<dyn KeyDecryptor>)
                }
            }
        }
    }

    /// The KMS key a ciphertext (`what`) names, if any, must be the one the image pins, if it
    /// pins one (issue 15).
    fn check_key_id(&self, what: &'static str, named: Option<&str>) -> Result<(), Refused> {
        match (&self.kms.key_arn, named) {
            (Some(pinned), Some(named)) if named != pinned => Err(Refused::OtherKey {
                what,
                named: named.to_string(),
                pinned: pinned.clone(),
            }),
            _ => Ok(()),
        }
    }

    /// Checks a record before anything is sent to KMS: the key it names (if the image pins
    /// one) and its encryption context's public key (required: it is checked against the
    /// decrypted key). These reasons carry only what the host sent.
    fn precheck(&self, record: &EncryptedKeyRecord) -> Result<[u8; 48], Refused> {
        self.check_key_id("the record", record.kms_key_id.as_deref())?;
        let context = record
            .encryption_context
            .get(CONTEXT_PUBKEY)
            .ok_or(Refused::NoPubkeyContext)?;
        let pubkey = parse_identifier(context).ok_or(Refused::ContextNotPubkey)?;
        if let Some(labelled) = &record.pubkey {
            if parse_identifier(labelled) != Some(pubkey) {
                return Err(Refused::Relabelled {
                    labelled: labelled.clone(),
                    context: context.clone(),
                });
            }
        }
        Ok(pubkey)
    }

    /// Decrypts every record (KMS, then the keystore), a few at a time. Once KMS proved
    /// unreachable and nothing succeeded, the rest fail at once with the same reason (a
    /// thousand records must not take a thousand timeouts). Once a record fails after KMS
    /// answered (its plaintext, or the envelope holding it, did not check out), it gets
    /// [`RECORD_UNUSABLE`] and no further record of the batch is sent to KMS: nothing that
    /// depends on a plaintext is ever told apart to the host, and a host that tampers with
    /// answers gets one try per batch.
    async fn load(
        &self,
        config: &KmsClientConfig,
        records: &[EncryptedKeyRecord],
    ) -> Result<Vec<Loaded>, HandlerError> {
        if records.is_empty() {
            return Ok(vec![]);
        }
        let decryptor = self.decryptor(config).await?;
        let kms_slots = Arc::new(Semaphore::new(KMS_CONCURRENCY));
        // Memory budget for concurrent scrypt derivations, in MiB (as the keystore loader).
        let budget_mib =
            (keystore::default_max_kdf_memory() >> 20).clamp(1, u32::MAX as u64) as u32;
        let kdf_slots = Arc::new(Semaphore::new(budget_mib as usize));
        let unreachable: Arc<Mutex<Option<String>>> = Arc::default();
        let any_ok = Arc::new(AtomicBool::new(false));
        let stopped = Arc::new(AtomicBool::new(false));
        let key_id = self.kms.key_arn.clone();
        let mut tasks = tokio::task::JoinSet::new();
        for (i, record) in records.iter().cloned().enumerate() {
            let (decryptor, kms_slots, kdf_slots) =
                (decryptor.clone(), kms_slots.clone(), kdf_slots.clone());
            let (unreachable, any_ok, stopped) =
                (unreachable.clone(), any_ok.clone(), stopped.clone());
            let key_id = key_id.clone();
            let expected = self.precheck(&record);
            tasks.spawn(async move {
                let fail = |reason: String| KeyFailure {
                    id: record.id.clone(),
                    reason,
                };
                let unusable = || {
                    stopped.store(true, Ordering::SeqCst);
                    fail(RECORD_UNUSABLE.into())
                };
                let expected = match expected {
                    Ok(pk) => pk,
                    Err(refused) => return (i, Err(fail(refused.to_string()))),
                };
                // Held until the plaintext is parsed, so that a batch stops within
                // KMS_CONCURRENCY records of an unusable one.
                let slot = kms_slots.acquire().await.expect("never closed");
                let plaintext = {
                    if stopped.load(Ordering::SeqCst) {
                        return (i, Err(fail(BATCH_STOPPED.into())));
                    }
                    if !any_ok.load(Ordering::Relaxed) {
                        if let Some(why) = unreachable
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .clone()
                        {
                            return (i, Err(fail(format!("not attempted: {why}"))));
                        }
                    }
                    let got = decryptor
                        .decrypt(DecryptRequest {
                            ciphertext: &record.ciphertext.0,
                            // The image's key when it pins one (issue 15), else the record's.
                            key_id: key_id.as_deref().or(record.kms_key_id.as_deref()),
                            encryption_context: Some(&record.encryption_context),
                        })
                        .await;
                    match got {
                        Ok(p) => p,
                        // KMS answered, and what it answered did not open: the envelope
                        // depends on the plaintext.
                        Err(e) if e.after_answer() => return (i, Err(unusable())),
                        Err(e) => {
                            if matches!(e, KmsError::Transport(_)) {
                                unreachable
                                    .lock()
                                    .unwrap_or_else(|p| p.into_inner())
                                    .get_or_insert_with(|| e.to_string());
                            }
                            return (i, Err(fail(e.to_string())));
                        }
                    }
                };
                let parsed = RecordPlaintext::parse(plaintext.expose())
                    .and_then(|r| r.keystore().map(|k| (r, k)));
                drop(plaintext);
                // (`unusable()` marks the batch stopped before `slot` is released.)
                let Ok((record_plain, ks)) = parsed else {
                    return (i, Err(unusable()));
                };
                drop(slot);
                let mib = ((ks.kdf_memory() >> 20) as u32).clamp(1, budget_mib);
                let _mem = kdf_slots.acquire_many(mib).await.expect("never closed");
                let key = tokio::task::spawn_blocking(move || record_plain.decrypt(&ks)).await;
                let Ok(Ok(key)) = key else {
                    return (i, Err(unusable()));
                };
                // The key KMS bound the ciphertext to (its encryption context) must be the key
                // inside: a record cannot pass for another validator's.
                if key.pubkey() != expected {
                    return (i, Err(unusable()));
                }
                any_ok.store(true, Ordering::Relaxed);
                (i, Ok((record.id.clone(), key)))
            });
        }
        let mut out: Vec<Option<Loaded>> = (0..records.len()).map(|_| None).collect();
        while let Some(done) = tasks.join_next().await {
            let (i, outcome) = done.map_err(|_| HandlerError::new("a key task died"))?;
            out[i] = Some(outcome);
        }
        Ok(out
            .into_iter()
            .map(|o| o.expect("every task answered"))
            .collect())
    }

    /// Puts loaded keys into the ring (copy and swap) and records failures; returns the
    /// report.
    fn apply(&self, outcomes: Vec<Loaded>) -> Result<KeysReport, HandlerError> {
        let app = self.app()?;
        let mut report = KeysReport::default();
        let mut failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        let mut next: KeyRing = (*app.keyring()).clone();
        for outcome in outcomes {
            match outcome {
                Ok((id, key)) => {
                    let pubkey = const_hex::encode_prefixed(key.pubkey());
                    if !next.insert(Arc::new(key)) {
                        tracing::info!(key = %pubkey, "key already loaded");
                    } else {
                        tracing::info!(key = %pubkey, "key loaded from the host's record");
                    }
                    failed.remove(&id);
                    report.loaded.push(id);
                }
                Err(f) => {
                    tracing::warn!(record = %f.id, reason = %f.reason, "key record not loaded");
                    failed.insert(f.id.clone(), f.reason.clone());
                    report.failed.push(f);
                }
            }
        }
        publish(&app, next, failed.len());
        Ok(report)
    }

    /// The KMS client settings for an `Init`: the image's endpoint, roots and region; the
    /// host supplies only credentials. An `Init` that tries to choose the endpoint, or names
    /// another region, is refused (issue 15: an endpoint of the host's choosing would hand it
    /// the enclave's KMS traffic).
    fn config_for(&self, request: &InitRequest) -> Result<KmsClientConfig, HandlerError> {
        if let Some(url) = &request.kms_endpoint {
            return Err(HandlerError::new(format!(
                "Init names a KMS endpoint ({}), but this enclave's endpoint is fixed by its \
                 image ({}); send Init without kms_endpoint",
                url.as_str(),
                self.kms.endpoint.as_str()
            )));
        }
        if request.region != self.kms.region {
            return Err(HandlerError::new(format!(
                "Init names region {}, but this enclave's KMS is in {} (fixed by its image)",
                request.region.as_str(),
                self.kms.region.as_str()
            )));
        }
        Ok(KmsClientConfig {
            region: self.kms.region.clone(),
            credentials: request.credentials.clone(),
            endpoint_url: Some(self.kms.endpoint.clone()),
            resolve_to: self.resolve_to,
            trust_roots_pem: self.kms.roots_pem.clone(),
        })
    }

    async fn init_inner(&self, request: InitRequest) -> Result<KeysReport, HandlerError> {
        if request.tls.is_some() {
            return Err(HandlerError::new(
                "Init carries a TLS key, but this enclave makes its own (it never leaves the enclave)",
            ));
        }
        check_not_expired(&request.credentials)?;
        let config = self.config_for(&request)?;
        // Before any key: a signer that cannot record what it signs must not serve.
        self.open_database(request.database.as_ref(), Some(&config))
            .await?;
        tracing::info!(records = request.keys.len(), region = %request.region,
            access_key_id = %request.credentials.access_key_id, "Init: decrypting key records");
        let outcomes = self.load(&config, &request.keys).await?;
        let total = outcomes.len();
        let loaded = outcomes.iter().filter(|o| o.is_ok()).count();
        if total > 0 && loaded == 0 {
            let first = outcomes
                .iter()
                .find_map(|o| o.as_ref().err())
                .map(|f| f.reason.clone())
                .unwrap_or_default();
            return Err(HandlerError::new(format!(
                "no key could be loaded ({total} of {total} records failed); first failure: {first}"
            )));
        }
        let report = self.apply(outcomes)?;
        *self.session.lock().unwrap_or_else(|p| p.into_inner()) = Some(config);
        Ok(report)
    }
}

/// Puts `ring` in place (copy-and-swap: requests in flight keep the keys they looked up), with
/// the health check's count of records that failed.
fn publish(app: &AppState, mut ring: KeyRing, failed: usize) {
    ring.sources = vec![SourceReport {
        id: SOURCE_ID,
        keys_loaded: ring.len(),
        error_count: failed,
    }];
    app.set_keyring(ring);
}

/// Refuses credentials already past their expiry (KMS would answer `ExpiredTokenException`
/// for each record; saying so once is clearer).
fn check_not_expired(credentials: &AwsCredentials) -> Result<(), HandlerError> {
    if let Some(expiry) = credentials.expiration {
        let now = enclave_bridge::kms::unix_seconds(SystemTime::now());
        if expiry <= now {
            return Err(HandlerError::new(format!(
                "the AWS credentials (access key {}) expired at {expiry} (seconds since the \
                 epoch, now {now}): credentials expired; the host must send fresh ones",
                credentials.access_key_id
            )));
        }
    }
    Ok(())
}

impl ControlHandler for Handler {
    async fn init(&self, request: InitRequest) -> Result<KeysReport, HandlerError> {
        // The previous error stays visible in /healthcheck while this attempt runs.
        let outcome = self.init_inner(request).await;
        if outcome.is_ok() {
            self.last_init_failed.store(false, Ordering::SeqCst);
        }
        match &outcome {
            Ok(report) => tracing::info!(
                loaded = report.loaded.len(),
                failed = report.failed.len(),
                "enclave initialised"
            ),
            Err(e) => {
                tracing::error!(reason = %e, "Init failed; the data port stays closed");
                self.last_init_failed.store(true, Ordering::SeqCst);
            }
        }
        outcome
    }

    async fn add_keys(&self, request: AddKeysRequest) -> Result<KeysReport, HandlerError> {
        let config = self
            .session
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| HandlerError::new("no KMS session (Init first)"))?;
        check_not_expired(&config.credentials)?;
        tracing::info!(
            records = request.keys.len(),
            "AddKeys: decrypting key records"
        );
        let outcomes = self.load(&config, &request.keys).await?;
        self.apply(outcomes)
    }

    async fn remove_keys(&self, request: RemoveKeysRequest) -> Result<RemoveReport, HandlerError> {
        let app = self.app()?;
        let mut next: KeyRing = (*app.keyring()).clone();
        let mut report = RemoveReport::default();
        let mut failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        for given in request.pubkeys {
            match parse_identifier(&given) {
                Some(pk) => {
                    failed.retain(|id, _| parse_identifier(id) != Some(pk));
                    if next.remove(&pk) {
                        tracing::info!(key = %const_hex::encode_prefixed(pk), "key removed at the host's request");
                        report.removed.push(given);
                    } else {
                        report.not_found.push(given);
                    }
                }
                None => report.not_found.push(given),
            }
        }
        publish(&app, next, failed.len());
        Ok(report)
    }

    async fn refresh_credentials(&self, credentials: AwsCredentials) -> Result<(), HandlerError> {
        check_not_expired(&credentials)?;
        let mut session = self.session.lock().unwrap_or_else(|p| p.into_inner());
        let Some(config) = session.as_mut() else {
            return Err(HandlerError::new("no KMS session (Init first)"));
        };
        tracing::info!(access_key_id = %credentials.access_key_id, "AWS credentials refreshed");
        // The next batch builds its client from these.
        config.credentials = credentials;
        Ok(())
    }

    async fn refresh_database_credentials(
        &self,
        credentials: DatabaseCredentials,
    ) -> Result<(), HandlerError> {
        // On failure the current store stays in use (its pool keeps the connections it has).
        let kms = self
            .session
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        self.open_database(Some(&credentials), kms.as_ref()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_credentials_replace_the_configured_ones() {
        // The same database throughout: only the user and password may differ.
        let postgres = |user: &str, password: &str| StoreConfig::Postgres {
            url: "postgresql://postgres@127.0.0.1:5432/ensign?options=-c%20search_path%3Dx".into(),
            username: Some(user.into()),
            password: Some(password.into()),
            timeout: slashing::DEFAULT_POSTGRES_TIMEOUT,
            schema: Some("ensign".into()),
        };
        let db = Database {
            configured: postgres("from_cli", "cli-password"),
            development: false,
            store: Arc::new(slashing::MemoryWitness::unopened(Default::default())),
        };
        assert_eq!(db.config(None), postgres("from_cli", "cli-password"));
        // Set as connection parameters, not spliced into the URL: no encoding to get wrong.
        assert_eq!(
            db.config(Some(("from_host", "p@ss:w/rd%?#&="))),
            postgres("from_host", "p@ss:w/rd%?#&=")
        );
    }
}
