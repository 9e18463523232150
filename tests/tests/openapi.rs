//! The OpenAPI document (`api-spec/openapi/ensign.yaml`, served at `/api-docs/openapi.yaml`)
//! against the server it describes:
//!
//! - the document is OpenAPI 3.1, every `$ref` resolves, every schema compiles as JSON Schema
//!   2020-12, every discriminator names its branches, and every response example is valid;
//! - its operations are exactly `server::app::ROUTES` (the table the router is built from), and
//!   on a running server every documented operation is routed and every other method of a
//!   documented path is refused by the router (405);
//! - real requests produce every documented status, and each response's status, content type
//!   and body validate against the document (in-process and with the release binary);
//! - every request example parses, signs on a server holding the example's key, and matches its
//!   schema; every committed signing vector (Lodestar's requests) matches the request schema;
//! - schemathesis fuzzes the release binary with the document (`scripts/schemathesis`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use api_spec::network::Network;
use api_spec::openapi::OPENAPI_YAML;
use api_spec::sign::SignRequest;
use serde_json::{json, Value};
use tests::body::{attestation, block_header, fork_info};
use tests::{pubkey_hex, test_secret, Resp, Runner, SignerBuilder, TestSigner};

/// A key manager request: `method` on `path` with the `authorization` header `auth`, and a JSON
/// body where one is given.
async fn km_request(
    s: &TestSigner,
    method: reqwest::Method,
    path: &str,
    auth: &str,
    body: Option<&Value>,
) -> Resp {
    let mut req = s.request(method, path).header("authorization", auth);
    if let Some(body) = body {
        req = req.json(body);
    }
    s.send(req).await
}

/// The base URI the document is registered under for JSON Schema validation.
const DOC_URI: &str = "urn:ensign:openapi";

/// The insecure sample key (`server/sample-keys`, interop key #0): the key of the examples.
const SAMPLE_SECRET: &str = "25295f0d1d592a90b333e26e85149708208e9f8e8bc18f6c77bd62f8ad7a6866";

/// Methods probed on every documented path.
const PROBED_METHODS: [&str; 5] = ["GET", "POST", "PUT", "DELETE", "PATCH"];

/// Documented statuses no test here produces, and why (each still has its schema checked
/// statically with the others).
const NOT_PRODUCED: [(&str, &str, u16, &str); 6] = [
    (
        "/api/v1/eth2/highWatermark",
        "GET",
        500,
        "needs a slashing database that fails mid-request (covered by tests/tests/slashing.rs)",
    ),
    (
        "/eth/v1/keystores",
        "POST",
        500,
        "needs a slashing database that fails mid-request",
    ),
    (
        "/eth/v1/keystores",
        "DELETE",
        500,
        "needs a slashing database that fails mid-request",
    ),
    (
        "/api/v1/attestation",
        "GET",
        200,
        "enclave mode only (covered by tests/tests/enclave.rs)",
    ),
    (
        "/api/v1/attestation",
        "GET",
        400,
        "enclave mode only (covered by tests/tests/enclave.rs)",
    ),
    (
        "/api/v1/attestation",
        "GET",
        500,
        "needs an attestor that fails (enclave mode)",
    ),
];

fn doc() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| serde_yaml_ng::from_str(OPENAPI_YAML).expect("the document is YAML"))
}

fn sample_secret() -> [u8; 32] {
    let mut s = [0u8; 32];
    hex::decode_to_slice(SAMPLE_SECRET, &mut s).unwrap();
    s
}

/// The value at a local reference (`#/components/...`).
fn resolve<'a>(doc: &'a Value, reference: &str) -> &'a Value {
    let pointer = reference
        .strip_prefix('#')
        .unwrap_or_else(|| panic!("non-local $ref {reference}"));
    doc.pointer(pointer)
        .unwrap_or_else(|| panic!("unresolved $ref {reference}"))
}

/// Follows a `$ref` object (responses, request bodies) to what it names.
fn deref<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => resolve(doc, r),
        None => v,
    }
}

/// Every `$ref` in `v`, with the JSON pointer of where it is.
fn refs(v: &Value, at: String, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                if k == "$ref" {
                    if let Some(r) = child.as_str() {
                        out.push((at.clone(), r.to_string()));
                    }
                }
                refs(
                    child,
                    format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")),
                    out,
                );
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                refs(child, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

/// A copy of a schema whose local references point into the registered document.
fn absolutize(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, child)| match (k.as_str(), child.as_str()) {
                    ("$ref", Some(r)) if r.starts_with('#') => {
                        (k.clone(), Value::String(format!("{DOC_URI}{r}")))
                    }
                    _ => (k.clone(), absolutize(child)),
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(absolutize).collect()),
        other => other.clone(),
    }
}

/// Every documented operation as (path, METHOD).
fn documented_operations() -> BTreeSet<(String, String)> {
    let mut ops = BTreeSet::new();
    for (path, item) in doc()["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            if [
                "get", "put", "post", "delete", "options", "head", "patch", "trace",
            ]
            .contains(&method.as_str())
            {
                ops.insert((path.clone(), method.to_uppercase()));
            }
        }
    }
    ops
}

/// Every documented (path, METHOD, status).
fn documented_statuses() -> BTreeSet<(String, String, u16)> {
    let mut all = BTreeSet::new();
    for (path, method) in documented_operations() {
        let op = &doc()["paths"][&path][method.to_lowercase()];
        for status in op["responses"].as_object().expect("responses").keys() {
            let code = status.parse().expect("numeric status (no `default`)");
            all.insert((path.clone(), method.clone(), code));
        }
    }
    all
}

/// JSON Schema validation of instances against schemas of the document.
struct Contract {
    registry: jsonschema::Registry<'static>,
    validators: Mutex<HashMap<String, Arc<jsonschema::Validator>>>,
    /// (path template, METHOD, status) of every response checked so far.
    seen: Mutex<BTreeSet<(String, String, u16)>>,
}

impl Contract {
    fn new() -> Contract {
        let registry = jsonschema::Registry::new()
            .draft(jsonschema::Draft::Draft202012)
            .add(DOC_URI, doc().clone())
            .expect("register the document")
            .prepare()
            .expect("prepare the registry");
        Contract {
            registry,
            validators: Mutex::new(HashMap::new()),
            seen: Mutex::new(BTreeSet::new()),
        }
    }

    /// A validator for `schema` (a schema object of the document), cached by `key`.
    fn validator(&self, key: &str, schema: &Value) -> Arc<jsonschema::Validator> {
        if let Some(v) = self.validators.lock().unwrap().get(key) {
            return v.clone();
        }
        let v = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .with_registry(&self.registry)
            .build(&absolutize(schema))
            .unwrap_or_else(|e| panic!("schema at {key} does not compile: {e}"));
        let v = Arc::new(v);
        self.validators
            .lock()
            .unwrap()
            .insert(key.to_string(), v.clone());
        v
    }

    /// Validates `instance` against the schema at `pointer`; the errors, if any.
    fn errors(&self, pointer: &str, instance: &Value) -> Vec<String> {
        let schema = doc()
            .pointer(pointer)
            .unwrap_or_else(|| panic!("no schema at {pointer}"));
        self.validator(pointer, schema)
            .iter_errors(instance)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect()
    }

    fn assert_valid(&self, pointer: &str, instance: &Value, what: &str) {
        let errors = self.errors(pointer, instance);
        assert!(
            errors.is_empty(),
            "{what}: not valid against {pointer}: {errors:#?}\ninstance: {}",
            truncate(&instance.to_string())
        );
    }

    /// Checks a response of `method path` (path as documented, e.g. with `{identifier}`):
    /// its status is documented for the operation, its content type is one the status
    /// documents, and its body validates against that content's schema.
    fn check(&self, path: &str, method: &str, r: &Resp) {
        let op = &doc()["paths"][path][method.to_lowercase()];
        assert!(op.is_object(), "{method} {path} is not documented");
        let status = r.status.to_string();
        let response = &op["responses"][&status];
        assert!(
            !response.is_null(),
            "{method} {path}: status {status} is not documented (body: {})",
            truncate(&r.body)
        );
        let response = deref(doc(), response);
        let media = r
            .content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        let Some(content) = response["content"].as_object() else {
            // A documented answer without content (the router's 404 of a route that is not
            // mounted) has no body.
            assert!(
                r.body.is_empty() && media.is_empty(),
                "{method} {path} {status}: documents no content, got {media}: {}",
                truncate(&r.body)
            );
            self.seen
                .lock()
                .unwrap()
                .insert((path.to_string(), method.to_string(), r.status));
            return;
        };
        let entry = content.get(&media).unwrap_or_else(|| {
            panic!(
                "{method} {path} {status}: content type {:?} not documented (documented: {:?}); body: {}",
                r.content_type,
                content.keys().collect::<Vec<_>>(),
                truncate(&r.body)
            )
        });
        // Structured bodies are validated parsed (as schemathesis does); text as a string.
        let instance = match media.as_str() {
            "application/json" => serde_json::from_str(&r.body)
                .unwrap_or_else(|e| panic!("{method} {path} {status}: not JSON ({e}): {}", r.body)),
            "application/yaml" => serde_yaml_ng::from_str(&r.body)
                .unwrap_or_else(|e| panic!("{method} {path} {status}: not YAML ({e})")),
            _ => Value::String(r.body.clone()),
        };
        let key = format!("{method} {path} {status} {media}");
        let errors: Vec<String> = self
            .validator(&key, &entry["schema"])
            .iter_errors(&instance)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "{method} {path} {status} ({media}): body does not match the document: {errors:#?}\nbody: {}",
            truncate(&r.body)
        );
        self.seen
            .lock()
            .unwrap()
            .insert((path.to_string(), method.to_string(), r.status));
    }
}

fn truncate(s: &str) -> String {
    if s.len() <= 600 {
        return s.to_string();
    }
    let mut end = 600;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Statically: OpenAPI 3.1, references, schemas, discriminators, examples.
#[test]
fn document_is_openapi_3_1_and_consistent() {
    let d = doc();
    let version = d["openapi"].as_str().expect("openapi is a string");
    assert!(version.starts_with("3.1."), "OpenAPI version {version}");
    assert!(d["info"]["title"].is_string() && d["info"]["version"].is_string());

    // Every $ref is local and resolves.
    let mut all_refs = vec![];
    refs(d, String::new(), &mut all_refs);
    assert!(all_refs.len() > 100, "only {} references?", all_refs.len());
    for (at, r) in &all_refs {
        assert!(r.starts_with("#/"), "{at}: non-local $ref {r}");
        assert!(
            d.pointer(&r[1..]).is_some(),
            "{at}: $ref {r} does not resolve"
        );
    }

    // Every component schema is used and compiles as JSON Schema 2020-12.
    let contract = Contract::new();
    let used: BTreeSet<&str> = all_refs.iter().map(|(_, r)| r.as_str()).collect();
    for name in d["components"]["schemas"].as_object().unwrap().keys() {
        let pointer = format!("/components/schemas/{name}");
        assert!(
            used.contains(format!("#{pointer}").as_str()),
            "schema {name} is never referenced"
        );
        contract.errors(&pointer, &Value::Null);
    }

    // Operations: unique ids, described responses, numeric statuses, every status has content.
    let mut ids = BTreeSet::new();
    for (path, method) in documented_operations() {
        let op = &d["paths"][&path][method.to_lowercase()];
        let id = op["operationId"].as_str().expect("operationId");
        assert!(ids.insert(id.to_string()), "duplicate operationId {id}");
        for (status, resp) in op["responses"].as_object().unwrap() {
            assert!(
                status.parse::<u16>().is_ok(),
                "{method} {path}: status {status}"
            );
            let resp = deref(d, resp);
            assert!(resp["description"].is_string(), "{method} {path} {status}");
            // Every answer of ensign's own handlers has a body; only the router's 404 of an
            // unmounted route (the key manager API when disabled) has none.
            assert!(
                resp["content"].as_object().is_some_and(|c| !c.is_empty())
                    || (status == "404" && resp.get("content").is_none()),
                "{method} {path} {status}: no content documented"
            );
        }
        // Every operation answers 403 when the Host header is not allowed.
        assert!(
            op["responses"]["403"].is_object(),
            "{method} {path}: no 403 (Host not authorized)"
        );
    }

    // Discriminators: each mapping entry is one of the oneOf branches, the branch requires the
    // property and fixes it to the mapped value; each branch is mapped.
    let mut discriminated = 0;
    for (name, schema) in d["components"]["schemas"].as_object().unwrap() {
        let Some(disc) = schema.get("discriminator") else {
            continue;
        };
        discriminated += 1;
        let prop = disc["propertyName"].as_str().unwrap();
        let branches: BTreeSet<&str> = schema["oneOf"]
            .as_array()
            .unwrap_or_else(|| panic!("{name}: discriminator without oneOf"))
            .iter()
            .map(|b| b["$ref"].as_str().unwrap())
            .collect();
        let mapping = disc["mapping"].as_object().unwrap();
        let mapped: BTreeSet<&str> = mapping.values().map(|v| v.as_str().unwrap()).collect();
        assert_eq!(branches, mapped, "{name}: oneOf and mapping differ");
        for (value, target) in mapping {
            let branch = resolve(d, target.as_str().unwrap());
            assert_eq!(
                branch["properties"][prop]["const"],
                json!(value),
                "{name} {value}"
            );
            assert!(
                branch["required"]
                    .as_array()
                    .unwrap()
                    .contains(&json!(prop)),
                "{name} {value}: {prop} not required"
            );
        }
    }
    assert_eq!(
        discriminated, 3,
        "SignRequest, BeaconBlockV2, VersionedAggregateAndProof"
    );

    // The sign request has a branch per type, named as api-spec names them.
    let mapping = d["components"]["schemas"]["SignRequest"]["discriminator"]["mapping"]
        .as_object()
        .unwrap();
    let documented: BTreeSet<&str> = mapping.keys().map(String::as_str).collect();
    let parsed: BTreeSet<&str> = api_spec::sign::SignType::ALL
        .iter()
        .map(|t| t.name())
        .collect();
    assert_eq!(documented, parsed, "every signing type, and no other");
    let versions: BTreeSet<&str> = d["components"]["schemas"]["BeaconBlockV2"]["discriminator"]
        ["mapping"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let forks: BTreeSet<&str> = api_spec::network::Fork::ALL
        .iter()
        .map(|f| f.name())
        .collect();
    assert_eq!(versions, forks, "a BLOCK_V2 branch per fork");

    // Every response example is valid against its schema.
    let mut examples = 0;
    for (path, method) in documented_operations() {
        let op = &d["paths"][&path][method.to_lowercase()];
        for (status, resp) in op["responses"].as_object().unwrap() {
            let no_content = serde_json::Map::new();
            let contents = deref(d, resp)["content"].as_object().unwrap_or(&no_content);
            for (media, content) in contents {
                let mut values: Vec<&Value> = content.get("example").into_iter().collect();
                if let Some(ex) = content.get("examples").and_then(Value::as_object) {
                    values.extend(ex.values().map(|e| &e["value"]));
                }
                for v in values {
                    let key = format!("{method} {path} {status} {media}");
                    let errors: Vec<String> = contract
                        .validator(&key, &content["schema"])
                        .iter_errors(v)
                        .map(|e| e.to_string())
                        .collect();
                    assert!(errors.is_empty(), "example of {key}: {errors:?}");
                    examples += 1;
                }
            }
        }
    }
    assert!(examples >= 20, "only {examples} response examples");
}

/// The document's operations are exactly the router's table.
#[test]
fn documented_operations_are_the_route_table() {
    let table: BTreeSet<(String, String)> = server::app::ROUTES
        .iter()
        .flat_map(|(path, methods)| methods.iter().map(|m| (path.to_string(), m.to_string())))
        .collect();
    let documented = documented_operations();
    let undocumented: Vec<_> = table.difference(&documented).collect();
    let unrouted: Vec<_> = documented.difference(&table).collect();
    assert!(
        undocumented.is_empty() && unrouted.is_empty(),
        "routed but not documented: {undocumented:?}; documented but not routed: {unrouted:?}"
    );
}

/// Builds a signer holding the sample key, with the key manager API enabled.
async fn full_signer(runner: Runner) -> TestSigner {
    SignerBuilder::new()
        .raw_keys([sample_secret()])
        .eth2_arg("--key-manager-api-enabled")
        .start(runner)
        .await
}

fn token(s: &TestSigner) -> String {
    std::fs::read_to_string(s.dir().join("data").join("api-token.txt"))
        .expect("api-token.txt")
        .trim()
        .to_string()
}

/// `path` with its template parameters filled in.
fn concrete(path: &str, pubkey: &str) -> String {
    path.replace("{identifier}", pubkey)
}

/// On a running server: every documented operation is routed (the router answers neither 405
/// nor its empty-bodied 404), and every other probed method of a documented path gets the
/// router's 405. With `ROUTES` checked against the document above, the router, the table and
/// the document cannot drift apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_is_routed() {
    let s = full_signer(Runner::InProcess).await;
    let pk = pubkey_hex(&sample_secret());
    let auth = format!("Bearer {}", token(&s));
    let documented = documented_operations();
    let paths: BTreeSet<&String> = documented.iter().map(|(p, _)| p).collect();
    for path in paths {
        for method in PROBED_METHODS {
            let url = concrete(path, &pk);
            let body = match (path.as_str(), method) {
                ("/api/v1/eth2/sign/{identifier}", _) => attestation(1, 2, 1),
                ("/eth/v1/keystores", "DELETE") => json!({"pubkeys": []}),
                ("/eth/v1/keystores", _) => json!({"keystores": [], "passwords": []}),
                _ => json!({}),
            };
            let r = s
                .send(
                    s.request(method.parse().unwrap(), &url)
                        .header("authorization", &auth)
                        .header("accept", "application/json")
                        .json(&body),
                )
                .await;
            let routed = r.status != 405 && !(r.status == 404 && r.body.is_empty());
            if documented.contains(&(path.to_string(), method.to_string())) {
                assert!(
                    routed,
                    "{method} {path} is documented but not routed: {r:?}"
                );
            } else {
                assert_eq!(
                    r.status, 405,
                    "{method} {path} is routed but not documented"
                );
            }
        }
    }
    // The router's own 404, for contrast: an unknown path.
    let r = s.get("/api/v1/eth2/unknown").await;
    assert_eq!((r.status, r.body.as_str()), (404, ""));
    s.stop().await;
}

/// A keystore whose decryption takes a noticeable time (scrypt, n = 2^15), so a reload is
/// still running when the next request arrives.
fn slow_keystore() -> (String, String) {
    let key = keystore::ValidatorKey::from_secret_bytes(&test_secret(b"openapi slow"))
        .expect("valid secret");
    let json =
        keystore::encrypt(&key, "slow", keystore::Kdf::Scrypt { n: 1 << 15 }).expect("encrypt");
    (json, "slow".into())
}

/// Drives real requests that produce every documented status (but [`NOT_PRODUCED`]) and
/// validates each response against the document.
async fn every_status_conforms(runner: Runner) {
    let c = Contract::new();
    let (ks_json, ks_password) = slow_keystore();
    let s = SignerBuilder::new()
        .raw_keys([sample_secret()])
        .keystore("slow", ks_json, &ks_password)
        .eth2_arg("--key-manager-api-enabled")
        // The 408s below wait for it.
        .global_arg("--http-request-body-timeout-seconds=1")
        .start(runner)
        .await;
    let pk = pubkey_hex(&sample_secret());
    let sign_path = "/api/v1/eth2/sign/{identifier}";
    let sign_url = concrete(sign_path, &pk);
    let auth = format!("Bearer {}", token(&s));

    // Status endpoints, documentation, public keys, high watermark.
    for path in [
        "/upcheck",
        "/healthcheck",
        "/api/v1/eth2/publicKeys",
        "/api/v1/eth2/highWatermark",
        "/reload",
        "/api-docs/openapi.yaml",
    ] {
        let r = s.get(path).await;
        assert_eq!(r.status, 200, "{path}: {r:?}");
        c.check(path, "GET", &r);
    }
    let served = s.get("/api-docs/openapi.yaml").await;
    assert_eq!(served.body, OPENAPI_YAML, "the built-in document is served");
    // Outside enclave mode there is no attestation (enclave mode: tests/tests/enclave.rs).
    let r = s.get("/api/v1/attestation?nonce=00").await;
    assert_eq!(r.status, 404, "{r:?}");
    c.check("/api/v1/attestation", "GET", &r);

    // Every operation answers 403 to a Host header outside the allow-list.
    for (path, method) in documented_operations() {
        let r = s
            .send(
                s.request(method.parse().unwrap(), &concrete(&path, &pk))
                    .header("host", "evil.example")
                    .header("authorization", &auth)
                    .json(&json!({})),
            )
            .await;
        assert_eq!(r.status, 403, "{method} {path}");
        c.check(&path, &method, &r);
    }

    // Sign: 200 as JSON and as text, 400, 404, 412, 413, 500.
    let body = serde_json::to_vec(&attestation(10, 11, 1)).unwrap();
    for accept in [
        Some("application/json"),
        Some("*/*"),
        Some("text/plain"),
        None,
    ] {
        let r = s.sign_raw(&pk, body.clone(), accept).await;
        assert_eq!(r.status, 200, "{accept:?}: {r:?}");
        let json = accept.is_some_and(|a| a != "text/plain");
        assert_eq!(
            r.content_type.starts_with("application/json"),
            json,
            "{r:?}"
        );
        c.check(sign_path, "POST", &r);
    }
    let bad_requests: [&[u8]; 6] = [
        b"{",
        br#"{"type": "NOT_A_TYPE"}"#,
        br#"{"randao_reveal": {"epoch": "1"}}"#,
        br#"{"type": "RANDAO_REVEAL"}"#,
        br#"{"type": "AGGREGATION_SLOT", "aggregation_slot": {"slot": [1]}}"#,
        br#"{"type": "BLOCK_V2", "beacon_block": {"version": "FULU", "block": {}}}"#,
    ];
    for b in bad_requests {
        let r = s.sign_raw(&pk, b.to_vec(), Some("application/json")).await;
        assert_eq!(r.status, 400, "{}: {r:?}", String::from_utf8_lossy(b));
        c.check(sign_path, "POST", &r);
    }
    // An identifier that is not UTF-8 once percent-decoded: the router's 400.
    let r = s
        .raw_request(
            "POST",
            "/api/v1/eth2/sign/%FF",
            "Accept: application/json\r\n",
            &body,
        )
        .await;
    assert_eq!(r.status, 400, "{r:?}");
    c.check(sign_path, "POST", &r);
    for identifier in [pubkey_hex(&test_secret(b"not loaded")), "0x1234".into()] {
        let r = s.sign(&identifier, &attestation(10, 11, 1)).await;
        assert_eq!(r.status, 404, "{r:?}");
        c.check(sign_path, "POST", &r);
    }
    assert_eq!(s.sign(&pk, &block_header(500, 1)).await.status, 200);
    let r = s.sign(&pk, &block_header(500, 2)).await;
    assert_eq!(r.status, 412, "{r:?}");
    c.check(sign_path, "POST", &r);
    let r = s.sign(&pk, &attestation(10, 11, 2)).await;
    assert_eq!(r.status, 412, "double vote: {r:?}");
    c.check(sign_path, "POST", &r);
    let mut mismatch = attestation(20, 21, 1);
    mismatch["signingRoot"] = json!(format!("0x{}", "00".repeat(32)));
    let no_fork_info = json!({"type": "RANDAO_REVEAL", "randao_reveal": {"epoch": "3"}});
    for b in [mismatch, no_fork_info] {
        let r = s.sign(&pk, &b).await;
        assert_eq!(r.status, 500, "{r:?}");
        c.check(sign_path, "POST", &r);
    }
    let r = s
        .post_oversized(&sign_url, api_spec_max_body() + 1024)
        .await;
    assert_eq!(r.status, 413, "{r:?}");
    c.check(sign_path, "POST", &r);

    // Reload: 202, then 409 while it runs (the slow keystore keeps it running), then status.
    let mut conflict = None;
    for _ in 0..5 {
        let first = s.send(s.request(reqwest::Method::POST, "/reload")).await;
        assert_eq!(first.status, 202, "{first:?}");
        c.check("/reload", "POST", &first);
        let second = s.send(s.request(reqwest::Method::POST, "/reload")).await;
        if second.status == 409 {
            conflict = Some(second);
            break;
        }
        assert_eq!(second.status, 202, "{second:?}");
        await_reload_done(&s, &c).await;
    }
    let conflict = conflict.expect("a second reload while one runs gets 409");
    c.check("/reload", "POST", &conflict);
    await_reload_done(&s, &c).await;

    // Key manager: 401 without a token, 403 with a wrong one, 200, 400, 413.
    let km = "/eth/v1/keystores";
    for method in ["GET", "POST", "DELETE"] {
        let m: reqwest::Method = method.parse().unwrap();
        let r = s.send(s.request(m.clone(), km).json(&json!({}))).await;
        assert_eq!(r.status, 401, "{method}: {r:?}");
        c.check(km, method, &r);
        let r = km_request(&s, m, km, "Bearer wrong", Some(&json!({}))).await;
        assert_eq!(r.status, 403, "{method}: {r:?}");
        c.check(km, method, &r);
    }
    let r = km_request(&s, reqwest::Method::GET, km, &auth, None).await;
    assert_eq!(r.status, 200, "{r:?}");
    c.check(km, "GET", &r);
    // Malformed bodies (400), then well-formed ones (200, with a status per key).
    for (method, body, status) in [
        ("POST", json!({"keystores": ["{}"], "passwords": []}), 400),
        (
            "POST",
            json!({"keystores": [], "passwords": [], "slashing_protection": "nope"}),
            400,
        ),
        ("POST", json!([]), 400),
        ("DELETE", json!({"keys": []}), 400),
        ("POST", json!({"keystores": ["x"], "passwords": ["y"]}), 200),
        ("DELETE", json!({"pubkeys": [pk, "0x1234"]}), 200),
    ] {
        let r = km_request(&s, method.parse().unwrap(), km, &auth, Some(&body)).await;
        assert_eq!(r.status, status, "{method} {body}: {r:?}");
        c.check(km, method, &r);
    }
    for method in ["POST", "DELETE"] {
        let big = vec![b' '; api_spec_max_body() + 1024];
        let r = s
            .raw_request(method, km, &format!("Authorization: {auth}\r\n"), &big)
            .await;
        assert_eq!(r.status, 413, "{method}: {r:?}");
        c.check(km, method, &r);
    }

    // 408: a body announced and never sent, on every route that reads one (at once: each
    // waits for the body timeout).
    let auth_header = format!("Authorization: {auth}\r\n");
    let (sign_408, import_408, delete_408) = tokio::join!(
        s.stalled_request("POST", &sign_url, "", 1000),
        s.stalled_request("POST", km, &auth_header, 1000),
        s.stalled_request("DELETE", km, &auth_header, 1000),
    );
    for (path, method, r) in [
        (sign_path, "POST", sign_408),
        (km, "POST", import_408),
        (km, "DELETE", delete_408),
    ] {
        assert_eq!(r.status, 408, "{method} {path}: {r:?}");
        c.check(path, method, &r);
    }
    s.stop().await;

    // A degraded signer: a key that fails to load (health 503), no slashing protection (high
    // watermark 404), one sign request at a time (503 past it).
    let d = SignerBuilder::new()
        .raw_keys([sample_secret()])
        .key_config(
            "broken.yaml",
            "type: file-raw\nkeyType: BLS\nprivateKey: \"0x00\"\n",
        )
        .eth2_arg("--slashing-protection-enabled=false")
        .global_arg("--max-in-flight-signing=1")
        .start(runner)
        .await;
    let r = d.get("/healthcheck").await;
    assert_eq!(r.status, 503, "{r:?}");
    c.check("/healthcheck", "GET", &r);
    let r = d.get("/api/v1/eth2/highWatermark").await;
    assert_eq!(r.status, 404, "{r:?}");
    c.check("/api/v1/eth2/highWatermark", "GET", &r);
    // No key manager API on this one: its path is not routed.
    for method in ["GET", "POST", "DELETE"] {
        let body = json!({"pubkeys": []});
        let r = km_request(&d, method.parse().unwrap(), km, &auth, Some(&body)).await;
        assert_eq!((r.status, r.body.as_str()), (404, ""), "{method}");
        c.check(km, method, &r);
    }
    let d = Arc::new(d);
    let mut overloaded = None;
    for round in 0..5u64 {
        let mut tasks = vec![];
        for i in 0..100u64 {
            let (d, pk) = (d.clone(), pk.clone());
            tasks.push(tokio::spawn(async move {
                let body = json!({"type": "AGGREGATION_SLOT", "fork_info": fork_info(),
                                  "aggregation_slot": {"slot": (round * 1000 + i).to_string()}});
                d.sign(&pk, &body).await
            }));
        }
        for t in tasks {
            let r = t.await.unwrap();
            assert!(r.status == 200 || r.status == 503, "{r:?}");
            c.check(sign_path, "POST", &r);
            if r.status == 503 {
                overloaded = Some(r);
            }
        }
        if overloaded.is_some() {
            break;
        }
    }
    assert!(
        overloaded.is_some(),
        "no 503 in 500 concurrent requests with a limit of 1"
    );

    // Every documented status was produced, except the listed ones.
    let seen = c.seen.lock().unwrap().clone();
    let missing: BTreeSet<_> = documented_statuses().difference(&seen).cloned().collect();
    let expected: BTreeSet<_> = NOT_PRODUCED
        .iter()
        .map(|(p, m, s, _)| (p.to_string(), m.to_string(), *s))
        .collect();
    assert_eq!(
        missing, expected,
        "documented statuses not produced by this test"
    );
}

/// The server's body limit, as documented (2 MiB).
fn api_spec_max_body() -> usize {
    server::app::MAX_BODY_BYTES
}

async fn await_reload_done(s: &TestSigner, c: &Contract) {
    for _ in 0..400 {
        let r = s.get("/reload").await;
        c.check("/reload", "GET", &r);
        if r.json()["status"] != "running" {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("reload never finished");
}

tests::on_both_runners!(
    every_status_conforms: every_status_conforms_in_process,
    every_status_conforms_release_binary
);

/// The request examples: each matches its schema, parses, and signs with the sample key (the
/// response conforming); together they cover every type and every BLOCK_V2 fork. The 200
/// example signature is the real signature of the RANDAO_REVEAL example. The key manager
/// examples import, list and delete the EIP-2335 test keystore.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_examples_parse_sign_and_conform() {
    let c = Contract::new();
    let d = doc();
    let network = Network::by_name("mainnet").unwrap();
    let s = full_signer(Runner::InProcess).await;
    let sign_path = "/api/v1/eth2/sign/{identifier}";
    let op = &d["paths"][sign_path]["post"];
    let identifier = op["parameters"][0]["example"].as_str().unwrap();
    assert_eq!(
        identifier,
        pubkey_hex(&sample_secret()),
        "the examples' key"
    );
    let examples = op["requestBody"]["content"]["application/json"]["examples"]
        .as_object()
        .unwrap();
    let mapping = &d["components"]["schemas"]["SignRequest"]["discriminator"]["mapping"];
    let mut types = BTreeSet::new();
    let mut block_versions = BTreeSet::new();
    let mut signatures = BTreeMap::new();
    // Blocks in ascending slot order: slashing protection refuses a block at or below the
    // lowest slot already signed (EIP-3076), so that is the only order in which all sign.
    let slot = |v: &Value| {
        let block = &v["beacon_block"];
        [
            &block["block"]["slot"],
            &block["block_header"]["slot"],
            &v["block"]["slot"],
        ]
        .iter()
        .find_map(|s| s.as_str().map(|s| s.parse::<u64>().unwrap()))
    };
    let mut ordered: Vec<(&String, &Value)> = examples.iter().collect();
    ordered.sort_by_key(|(_, e)| slot(&e["value"]));
    for (name, example) in ordered {
        let value = &example["value"];
        c.assert_valid("/components/schemas/SignRequest", value, name);
        let ty = value["type"].as_str().unwrap();
        let branch = mapping[ty].as_str().unwrap();
        c.assert_valid(&branch[1..], value, name);
        types.insert(ty.to_string());
        if let Some(v) = value["beacon_block"]["version"].as_str() {
            block_versions.insert(v.to_string());
        }

        let bytes = serde_json::to_vec(value).unwrap();
        let req = SignRequest::parse(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        let signable = req
            .signable(&network)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        if let Some(root) = value.get("signingRoot") {
            assert_eq!(root, &json!(signable.signing_root.to_string()), "{name}");
        }
        let r = s.sign(identifier, value).await;
        assert_eq!(r.status, 200, "{name}: {r:?}");
        c.check(sign_path, "POST", &r);
        signatures.insert(name.clone(), r.json()["signature"].clone());
    }
    let all_types: BTreeSet<String> = api_spec::sign::SignType::ALL
        .iter()
        .map(|t| t.name().to_string())
        .collect();
    assert_eq!(types, all_types, "an example per type");
    let all_forks: BTreeSet<String> = api_spec::network::Fork::ALL
        .iter()
        .map(|f| f.name().to_string())
        .collect();
    assert_eq!(block_versions, all_forks, "a BLOCK_V2 example per fork");
    let documented = &op["responses"]["200"]["content"]["application/json"]["example"]["signature"];
    assert_eq!(
        documented, &signatures["RANDAO_REVEAL"],
        "the documented signature is the RANDAO_REVEAL example's"
    );
    assert_eq!(
        op["responses"]["200"]["content"]["text/plain"]["example"],
        signatures["RANDAO_REVEAL"]
    );

    // Key manager: import the example keystore, see it listed, delete it.
    let km = "/eth/v1/keystores";
    let auth = format!("Bearer {}", token(&s));
    let example = |method: &str| {
        d["paths"][km][method]["requestBody"]["content"]["application/json"]["examples"]
            ["EIP2335_PBKDF2"]["value"]
            .clone()
    };
    let import = example("post");
    c.assert_valid(
        "/components/schemas/ImportKeystoresRequest",
        &import,
        "import",
    );
    let r = km_request(&s, reqwest::Method::POST, km, &auth, Some(&import)).await;
    c.check(km, "POST", &r);
    assert_eq!(r.json()["data"][0]["status"], "imported", "{r:?}");
    let delete = example("delete");
    c.assert_valid(
        "/components/schemas/DeleteKeystoresRequest",
        &delete,
        "delete",
    );
    let imported = delete["pubkeys"][0].as_str().unwrap();
    let r = km_request(&s, reqwest::Method::GET, km, &auth, None).await;
    c.check(km, "GET", &r);
    assert!(
        r.json()["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["validating_pubkey"] == imported && k["readonly"] == false),
        "{r:?}"
    );
    let r = km_request(&s, reqwest::Method::DELETE, km, &auth, Some(&delete)).await;
    c.check(km, "DELETE", &r);
    assert_eq!(r.json()["data"][0]["status"], "deleted", "{r:?}");
    s.stop().await;
}

/// Every committed signing vector (requests as Lodestar's packages shape them, every type,
/// fork and network) matches the request schema: the document admits what clients send.
#[test]
fn committed_vectors_match_the_request_schema() {
    let c = Contract::new();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("vectors/signing");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("vectors dir") {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let file: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        for case in file["cases"].as_array().unwrap() {
            let what = format!("{} {}", path.display(), case["name"]);
            c.assert_valid("/components/schemas/SignRequest", &case["request"], &what);
            checked += 1;
        }
    }
    assert!(checked >= 500, "only {checked} vectors");
}

/// The repository root (for `scripts/` and the document's file).
fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Installs schemathesis and openapi-spec-validator (`scripts/schemathesis --install`). `None`
/// after printing "not run" when that fails, unless `ENSIGN_REQUIRE_SCHEMATHESIS` is set (CI),
/// in which case it panics: CI must never skip these checks.
async fn schemathesis_installed(test: &str) -> Option<std::path::PathBuf> {
    let script = repo_root().join("scripts/schemathesis");
    let out = tokio::process::Command::new(&script)
        .arg("--install")
        .output()
        .await;
    let problem = match out {
        Ok(o) if o.status.success() => return Some(script),
        Ok(o) => format!(
            "{} --install failed: {}",
            script.display(),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => format!("cannot run {}: {e}", script.display()),
    };
    if std::env::var_os("ENSIGN_REQUIRE_SCHEMATHESIS").is_some() {
        panic!("ENSIGN_REQUIRE_SCHEMATHESIS is set but schemathesis is unavailable: {problem}");
    }
    eprintln!("not run: {test}: {problem}; set ENSIGN_REQUIRE_SCHEMATHESIS=1 to fail instead");
    None
}

/// The document passes openapi-spec-validator (the OpenAPI 3.1 meta-schema and its rules).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn document_passes_openapi_spec_validator() {
    let Some(script) = schemathesis_installed("document_passes_openapi_spec_validator").await
    else {
        return;
    };
    let out = tokio::process::Command::new(&script)
        .arg("--validate")
        .arg(repo_root().join("api-spec/openapi/ensign.yaml"))
        .output()
        .await
        .expect("run openapi-spec-validator");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "openapi-spec-validator: {text}");
    assert!(text.contains(": OK"), "{text}");
}

/// Hard bound on one schemathesis run (its own bounds are per operation: `--max-examples`).
const SCHEMATHESIS_WALL_CLOCK: Duration = Duration::from_secs(100);

/// schemathesis against the release binary (sample key, key manager enabled), with the
/// document: examples, coverage (but for the sign request: see
/// `tests/schemathesis/schemathesis.toml`) and fuzzing phases, positive and negative data,
/// bounded. Checks: no server error but the documented client-caused ones
/// (`tests/schemathesis/ensign_checks.py`), status codes, content types and bodies as
/// documented, 405 for undocumented methods. The seed is random unless
/// `ENSIGN_SCHEMATHESIS_SEED` is set; it is printed for reproduction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_contract_violation_release_binary() {
    let Some(script) = schemathesis_installed("schemathesis_release_binary").await else {
        return;
    };
    let s = full_signer(Runner::Binary).await;
    let pk = pubkey_hex(&sample_secret());
    let seed = std::env::var("ENSIGN_SCHEMATHESIS_SEED")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or_else(rand::random);
    eprintln!("schemathesis seed {seed} (set ENSIGN_SCHEMATHESIS_SEED={seed} to reproduce)");
    let root = repo_root();
    let report = tempfile::TempDir::new().unwrap();
    let mut cmd = tokio::process::Command::new(&script);
    cmd.arg("--no-color")
        .arg("--config-file")
        .arg(root.join("tests/schemathesis/schemathesis.toml"))
        .arg("run")
        .arg(root.join("api-spec/openapi/ensign.yaml"))
        .args(["--url", &s.base])
        .args(["--header", &format!("Authorization: Bearer {}", token(&s))])
        .args([
            "--checks",
            "no_undocumented_server_error,status_code_conformance,content_type_conformance,\
             response_schema_conformance,unsupported_method,allow_header_conformance",
        ])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--max-examples", "40"])
        .args(["--seed", &seed.to_string()])
        .args(["--request-timeout", "10"])
        .args(["--workers", "2"])
        .arg("--continue-on-failure")
        .args(["--report", "ndjson", "--report-dir"])
        .arg(report.path())
        .env(
            "SCHEMATHESIS_HOOKS",
            root.join("tests/schemathesis/ensign_checks.py"),
        )
        .env("ENSIGN_SCHEMATHESIS_IDENTIFIER", &pk)
        .env("NO_COLOR", "1")
        // schemathesis keeps a cache (`.schemathesis/`) in its working directory: not the tree.
        .current_dir(report.path())
        .kill_on_drop(true);
    let out = tokio::time::timeout(SCHEMATHESIS_WALL_CLOCK, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("schemathesis ran over {SCHEMATHESIS_WALL_CLOCK:?}"))
        .expect("run schemathesis");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "schemathesis found failures (seed {seed}):\n{text}"
    );
    // It ran every operation and every generated case passed (a run that tested nothing would
    // also exit 0). Warnings (e.g. an operation that only answers 404 in this mode) are fine.
    let counts = text.lines().find_map(|l| {
        let (generated, rest) = l.trim().split_once(" generated, ")?;
        let passed = rest.split_once(" passed")?.0;
        Some((generated.parse::<u64>().ok()?, passed.parse::<u64>().ok()?))
    });
    assert!(
        counts.is_some_and(|(g, p)| g == p && g > 0),
        "cases generated/passed {counts:?}:\n{text}"
    );
    let operations = documented_operations().len();
    assert!(text.contains(&format!("Tested: {operations}")), "{text}");
    // The sign requests got past parsing and key lookup: some were signed (and, with random
    // fork_info and blocks, some refused by slashing protection).
    let mut sign_statuses = BTreeMap::<u64, usize>::new();
    for entry in std::fs::read_dir(report.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("ndjson") {
            continue;
        }
        let text = std::fs::read_to_string(path).unwrap();
        for line in text.lines() {
            let event: Value = serde_json::from_str(line).expect("ndjson");
            sign_responses(&event, &mut sign_statuses);
        }
    }
    eprintln!("schemathesis sign responses by status: {sign_statuses:?}");
    assert!(
        sign_statuses.get(&200).is_some_and(|&n| n > 0),
        "no sign request was signed: {sign_statuses:?}"
    );

    // The server survived, answers, and stops cleanly.
    let up = s.get("/upcheck").await;
    assert_eq!((up.status, up.body.as_str()), (200, "OK"));
    s.stop().await;
}

/// Counts the statuses of the sign requests in a schemathesis report event.
fn sign_responses(v: &Value, out: &mut BTreeMap<u64, usize>) {
    match v {
        Value::Object(m) => {
            let uri = m
                .get("request")
                .and_then(|r| r.get("uri"))
                .and_then(Value::as_str);
            let status = m
                .get("response")
                .and_then(|r| r.get("status_code"))
                .and_then(Value::as_u64);
            if let (Some(uri), Some(status)) = (uri, status) {
                if uri.contains("/api/v1/eth2/sign/") {
                    *out.entry(status).or_default() += 1;
                }
            }
            m.values().for_each(|c| sign_responses(c, out));
        }
        Value::Array(a) => a.iter().for_each(|c| sign_responses(c, out)),
        _ => {}
    }
}
