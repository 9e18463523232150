//! The standard key manager API (ethereum/keymanager-APIs, `/eth/v1/keystores`), as Web3Signer
//! serves it with `--key-manager-api-enabled`, plus Lighthouse's bearer-token protection.
//!
//! Imported keystores are kept under `<data-path>/keymanager/` (`<pubkey>.json` and the
//! password in `<pubkey>.txt`, both 0600) and loaded again at every start and reload. Only those
//! keys can be deleted through the API; keys from `--key-store-path` or `--keystores-path` are
//! read-only here. A deletion first disables the validator in the slashing database (so no
//! instance sharing it signs for the key again), then unloads it, then exports its history.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::keys::parse_identifier;
use crate::state::AppState;
use crate::FileError;

/// File of the bearer token under `--data-path`.
pub const TOKEN_FILE: &str = "api-token.txt";

/// One key manager change at a time: each reads the key set, changes files and the database,
/// and writes the key set back.
static OPERATIONS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The path of the API (`crate::app::ROUTES` lists its methods).
pub const PATH: &str = "/eth/v1/keystores";

/// The handler of `method` on [`PATH`], behind the bearer-token check; `None` for a method
/// the API does not have.
pub fn endpoint(state: Arc<AppState>, method: &str) -> Option<MethodRouter<Arc<AppState>>> {
    let handler = match method {
        "GET" => get(list),
        "POST" => post(import),
        "DELETE" => axum::routing::delete(delete),
        _ => return None,
    };
    Some(handler.route_layer(middleware::from_fn_with_state(state, authorize)))
}

async fn authorize(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let Some(expected) = st.key_manager_token.as_deref() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token);
    match given {
        None => (
            StatusCode::UNAUTHORIZED,
            Json(json!({"message": "missing bearer token"})),
        )
            .into_response(),
        Some(t) if constant_time_eq(t.trim().as_bytes(), expected.as_bytes()) => {
            next.run(req).await
        }
        Some(_) => (
            StatusCode::FORBIDDEN,
            Json(json!({"message": "invalid bearer token"})),
        )
            .into_response(),
    }
}

/// The credentials of `Authorization: Bearer <token>`. The scheme name is case-insensitive
/// (RFC 9110 §11.1), so `bearer` and `BEARER` work as well.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("Bearer").then_some(token)
}

/// Whether the two are equal, in time that does not depend on where they differ (`subtle`).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    subtle::ConstantTimeEq::ct_eq(a, b).into()
}

/// Reads `<data-path>/api-token.txt`, creating it (0600, 32 random bytes in hex) if absent.
pub fn load_or_create_token(data_path: &Path) -> Result<String, FileError> {
    let path = data_path.join(TOKEN_FILE);
    if let Ok(t) = std::fs::read_to_string(&path) {
        let t = t.trim().to_string();
        if !t.is_empty() {
            return Ok(t);
        }
    }
    let token = format!("api-token-0x{}", hex::encode(rand::random::<[u8; 32]>()));
    write_private(&path, token.as_bytes()).map_err(FileError::write(&path))?;
    tracing::info!(path = %path.display(), "key manager API token created");
    Ok(token)
}

/// Writes a file readable by its owner only, atomically (temp file, fsync, rename).
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

fn managed_dir(st: &AppState) -> Result<PathBuf, ApiError> {
    st.sources
        .key_manager_dir
        .clone()
        .ok_or_else(|| ApiError::Internal("key manager directory".into()))
}

async fn list(State(st): State<Arc<AppState>>) -> Json<Value> {
    let ring = st.keyring();
    let data: Vec<Value> = ring
        .pubkeys()
        .iter()
        .map(|pk| json!({"validating_pubkey": const_hex::encode_prefixed(pk), "derivation_path": "", "readonly": !ring.is_managed(pk)}))
        .collect();
    Json(json!({ "data": data }))
}

#[derive(Deserialize)]
struct ImportBody {
    keystores: Vec<String>,
    passwords: Vec<String>,
    slashing_protection: Option<String>,
}

fn bad_request(msg: &str) -> ApiError {
    ApiError::Request(api_spec::Error::Malformed(msg.into()))
}

/// A request body of the API as `T`; what does not parse is the client's fault (400).
fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| bad_request(&format!("invalid request body: {e}")))
}

/// An interchange document without a `data` list: from a client (400) or from the store
/// (500), as the caller knows.
const NO_DATA_ARRAY: &str = "slashing_protection has no data array";

/// Keeps only the interchange entries of `pubkeys` (lowercase 0x hex); `None` for a document
/// without a `data` list ([`NO_DATA_ARRAY`]).
fn filter_interchange(doc: &Value, pubkeys: &HashSet<String>) -> Option<Value> {
    let mut v = doc.clone();
    let data = v.get_mut("data").and_then(Value::as_array_mut)?;
    data.retain(|d| {
        d["pubkey"]
            .as_str()
            .is_some_and(|p| pubkeys.contains(&p.to_ascii_lowercase()))
    });
    Some(v)
}

async fn import(
    State(st): State<Arc<AppState>>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let body: ImportBody = parse_body(&body)?;
    if body.keystores.len() != body.passwords.len() {
        return Err(bad_request("keystores and passwords differ in length"));
    }
    // A malformed history is refused whichever keystores turn out to be importable.
    let history_doc: Option<Value> = body
        .slashing_protection
        .as_deref()
        .map(serde_json::from_str)
        .transpose()
        .map_err(|e| bad_request(&format!("slashing_protection is not JSON: {e}")))?;
    let _guard = OPERATIONS.lock().await;
    let dir = managed_dir(&st)?;
    let passwords = body.passwords;
    let keystores = body.keystores;
    // Decryption is the KDF: seconds per scrypt keystore, so off the reactor.
    let decrypted = {
        let keystores = keystores.clone();
        tokio::task::spawn_blocking(move || {
            keystores
                .iter()
                .zip(passwords)
                .map(|(k, pw)| {
                    keystore::Keystore::from_json(k)
                        .and_then(|k| k.decrypt(&pw))
                        .map(|key| (key, pw))
                })
                .collect::<Vec<_>>()
        })
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
    };

    // Which keystores will be imported: decrypted, not loaded yet, not repeated in the request.
    let mut next = (*st.keyring()).clone();
    let mut statuses: Vec<Value> = vec![];
    let mut chosen = vec![];
    let mut seen = HashSet::new();
    for (i, outcome) in decrypted.into_iter().enumerate() {
        match outcome {
            Err(e) => statuses.push(json!({"status": "error", "message": e.to_string()})),
            Ok((key, _)) if next.get(&key.pubkey()).is_some() || !seen.insert(key.pubkey()) => {
                statuses.push(json!({"status": "duplicate", "message": ""}))
            }
            Ok((key, password)) => {
                statuses.push(Value::Null); // decided below
                chosen.push((i, key, password));
            }
        }
    }
    // Their files next: a keystore that cannot be persisted is not imported either.
    chosen.retain(|(i, key, password)| {
        let stem = const_hex::encode_prefixed(key.pubkey());
        let written = write_private(&dir.join(format!("{stem}.txt")), password.as_bytes())
            .and_then(|()| {
                write_private(&dir.join(format!("{stem}.json")), keystores[*i].as_bytes())
            });
        match written {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(error = %e, pubkey = %stem, "cannot persist imported keystore");
                remove_managed_files(&dir, &stem);
                statuses[*i] = json!({"status": "error", "message": "cannot persist the keystore"});
                false
            }
        }
    });

    // The history of exactly those keys, all or nothing, before any of them can sign: a key
    // must never be usable without its history, and no other key's history is touched.
    let pubkeys: HashSet<String> = chosen
        .iter()
        .map(|(_, k, _)| const_hex::encode_prefixed(k.pubkey()))
        .collect();
    let history = history_doc.filter(|_| !pubkeys.is_empty());
    if let (Some(doc), Some(sp)) = (history, st.slashing.clone()) {
        let imported = match filter_interchange(&doc, &pubkeys) {
            None => Err(bad_request(NO_DATA_ARRAY)),
            Some(filtered) => {
                let filtered = filtered.to_string();
                tokio::task::spawn_blocking(move || sp.import_interchange(&filtered))
                    .await
                    .map_err(|e| ApiError::Internal(e.to_string()))?
                    .map_err(|e| bad_request(&format!("slashing_protection not imported: {e}")))
                    .map(drop)
            }
        };
        if let Err(e) = imported {
            for (_, key, _) in &chosen {
                remove_managed_files(&dir, &const_hex::encode_prefixed(key.pubkey()));
            }
            return Err(e);
        }
    }

    for (i, key, _) in chosen {
        let stem = const_hex::encode_prefixed(key.pubkey());
        if let Some(sp) = st.slashing.clone() {
            let p = slashing::Pubkey(key.pubkey());
            let enabled =
                tokio::task::spawn_blocking(move || sp.set_validator_enabled(p, true)).await;
            if !matches!(enabled, Ok(Ok(()))) {
                remove_managed_files(&dir, &stem);
                statuses[i] = json!({"status": "error", "message": "slashing protection database unavailable"});
                continue;
            }
        }
        tracing::info!(pubkey = %stem, "key imported through the key manager API");
        next.insert_managed(Arc::new(key));
        statuses[i] = json!({"status": "imported", "message": ""});
    }
    st.set_keyring(next);
    Ok(Json(json!({ "data": statuses })).into_response())
}

/// Removes a managed key's files (keystore and password), ignoring files that do not exist.
fn remove_managed_files(dir: &Path, stem: &str) {
    for ext in ["json", "txt"] {
        let _ = std::fs::remove_file(dir.join(format!("{stem}.{ext}")));
    }
}

/// The whole slashing-protection history as an EIP-3076 document. A database that has
/// recorded nothing yet has no genesis validators root of its own: the network's stands in
/// (EIP-3076 metadata), with an empty `data` list.
async fn export_history(
    st: &AppState,
    sp: Arc<dyn slashing::SlashingProtection>,
) -> Result<Value, ApiError> {
    let network_gvr = st.network.genesis_validators_root;
    tokio::task::spawn_blocking(move || match sp.genesis_validators_root()? {
        Some(_) => {
            let doc = sp.export_interchange()?;
            serde_json::from_str(&doc).map_err(|e| ApiError::Internal(format!("export: {e}")))
        }
        None => Ok(empty_interchange(network_gvr.unwrap_or_else(|| {
            tracing::warn!("no genesis validators root recorded and none known for this network: the export names the zero root");
            [0u8; 32]
        }))),
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?
}

fn empty_interchange(gvr: [u8; 32]) -> Value {
    json!({"metadata": {"interchange_format_version": "5",
        "genesis_validators_root": const_hex::encode_prefixed(gvr)}, "data": []})
}

#[derive(Deserialize)]
struct DeleteBody {
    pubkeys: Vec<String>,
}

async fn delete(
    State(st): State<Arc<AppState>>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let body: DeleteBody = parse_body(&body)?;
    let _guard = OPERATIONS.lock().await;
    let dir = managed_dir(&st)?;
    let mut next = (*st.keyring()).clone();
    let mut statuses = vec![];
    let mut exported: HashSet<String> = HashSet::new();
    let history = match st.slashing.clone() {
        Some(sp) => Some(export_history(&st, sp).await?),
        None => None,
    };
    let has_history = |pk: &str| {
        history.as_ref().is_some_and(|h| {
            filter_interchange(h, &HashSet::from([pk.to_string()]))
                .is_some_and(|v| v["data"].as_array().is_some_and(|d| !d.is_empty()))
        })
    };
    for raw in &body.pubkeys {
        let Some(pk) = parse_identifier(raw) else {
            statuses.push(json!({"status": "error", "message": "not a public key"}));
            continue;
        };
        let stem = const_hex::encode_prefixed(pk);
        if next.get(&pk).is_some() && !next.is_managed(&pk) {
            statuses.push(json!({"status": "error", "message": "read-only key (not imported through this API)"}));
            continue;
        }
        // Disable first: from here on no instance sharing the database signs for this key.
        if let Some(sp) = st.slashing.clone() {
            let p = slashing::Pubkey(pk);
            match tokio::task::spawn_blocking(move || sp.set_validator_enabled(p, false)).await {
                Ok(Ok(())) => {}
                _ => {
                    statuses.push(json!({"status": "error", "message": "slashing protection database unavailable"}));
                    continue;
                }
            }
        }
        if next.remove(&pk) {
            remove_managed_files(&dir, &stem);
            tracing::info!(pubkey = %stem, "key deleted through the key manager API");
            statuses.push(json!({"status": "deleted", "message": ""}));
            exported.insert(stem);
        } else if has_history(&stem) {
            statuses.push(json!({"status": "not_active", "message": ""}));
            exported.insert(stem);
        } else {
            statuses.push(json!({"status": "not_found", "message": ""}));
        }
    }
    st.set_keyring(next);
    // The export is taken after the keys were disabled, so it holds their final history.
    let doc = match st.slashing.clone() {
        Some(sp) => filter_interchange(&export_history(&st, sp).await?, &exported)
            .ok_or_else(|| ApiError::Internal(NO_DATA_ARRAY.into()))?,
        None => empty_interchange(st.network.genesis_validators_root.unwrap_or([0u8; 32])),
    };
    Ok(Json(json!({"data": statuses, "slashing_protection": doc.to_string()})).into_response())
}
