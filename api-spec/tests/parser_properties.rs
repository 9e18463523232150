//! Property tests of the sign request parser and the signing roots (proptest).
//!
//! - No input makes `SignRequest::parse` or `signable` panic: arbitrary bytes, arbitrary JSON
//!   under a real `type`, and valid requests (the committed signing vectors, every type and
//!   fork, mainnet and Gnosis) structurally mutated (fields removed, replaced by values of other
//!   types or sizes, lists grown past their limits, strings cut or re-cased, types and versions
//!   swapped) or cut and flipped at the byte level. A parse error or a signing-root error is a
//!   fine outcome; a panic would take down the request's task (and its in-flight permit).
//! - Every request that parses and has a signing root keeps it through a serde round trip
//!   (typed request → JSON → typed request) and through encodings the wire format treats as
//!   equal (numbers for decimal strings, upper-case hex, reordered keys, unknown fields, the
//!   matching `signingRoot` added).
//!
//! Bounded (a few hundred cases per property) so that the whole file runs in seconds in a debug
//! build; it is part of `cargo test --workspace`.

use std::sync::OnceLock;

use api_spec::network::Network;
use api_spec::sign::{Payload, SignRequest, SignType, Signable};
use proptest::prelude::*;
use proptest::test_runner::Config;
use serde_json::{json, Map, Value};

/// The committed vectors (tests/vectors/signing), with the network each was made for.
fn corpus() -> &'static [(Network, Value)] {
    static CORPUS: OnceLock<Vec<(Network, Value)>> = OnceLock::new();
    CORPUS.get_or_init(|| {
        let files = [
            (
                "mainnet",
                include_str!("../../tests/vectors/signing/mainnet.json"),
            ),
            (
                "gnosis",
                include_str!("../../tests/vectors/signing/gnosis.json"),
            ),
        ];
        let mut out = vec![];
        for (name, text) in files {
            let network = Network::by_name(name).unwrap();
            let file: Value = serde_json::from_str(text).unwrap();
            for case in file["cases"].as_array().unwrap() {
                out.push((network.clone(), case["request"].clone()));
            }
        }
        assert!(out.len() > 300, "{} vectors", out.len());
        out
    })
}

fn mainnet() -> &'static Network {
    static N: OnceLock<Network> = OnceLock::new();
    N.get_or_init(|| Network::by_name("mainnet").unwrap())
}

fn config(cases: u32) -> Config {
    Config {
        cases,
        // Hermetic: no regression files written into the source tree; a failure prints its
        // minimal input, which belongs in a unit test.
        failure_persistence: None,
        ..Config::default()
    }
}

/// Parses and, if that succeeds, computes the signing root: the server's two steps.
fn parse_and_sign(bytes: &[u8], network: &Network) -> Option<(SignRequest, Signable)> {
    let request = SignRequest::parse(bytes).ok()?;
    let signable = request.signable(network).ok()?;
    Some((request, signable))
}

/// The typed request written back as a request body.
fn to_json(req: &SignRequest) -> Value {
    fn v<T: serde::Serialize>(x: &T) -> Value {
        serde_json::to_value(x).expect("payload types serialize")
    }
    let payload = match &req.payload {
        Payload::Phase0Block(b) if req.sign_type == SignType::Block => v(b),
        Payload::Phase0Block(b) => json!({"version": "PHASE0", "block": v(b)}),
        Payload::AltairBlock(b) => json!({"version": "ALTAIR", "block": v(b)}),
        Payload::BlockHeader(fork, h) => json!({"version": fork.name(), "block_header": v(h)}),
        Payload::Attestation(a) => v(a),
        Payload::AggregationSlot(s) => json!({"slot": v(s)}),
        Payload::AggregateAndProof(a) => v(a),
        Payload::ElectraAggregateAndProof(a) => v(a),
        Payload::Deposit(m, version) => {
            let mut d = v(m);
            d["genesis_fork_version"] = v(version);
            d
        }
        Payload::RandaoReveal(e) => json!({"epoch": v(e)}),
        Payload::VoluntaryExit(x) => v(x),
        Payload::SyncCommitteeMessage {
            beacon_block_root,
            slot,
        } => json!({"beacon_block_root": v(beacon_block_root), "slot": v(slot)}),
        Payload::SyncCommitteeSelectionProof(d) => v(d),
        Payload::SyncCommitteeContributionAndProof(c) => v(c),
        Payload::ValidatorRegistration(r) => v(r),
    };
    let mut body = Map::new();
    body.insert("type".into(), json!(req.sign_type.name()));
    if let Some(fi) = &req.fork_info {
        body.insert("fork_info".into(), v(fi));
    }
    if let Some(root) = &req.signing_root {
        body.insert("signing_root".into(), v(root));
    }
    body.insert(req.sign_type.payload_key().into(), payload);
    Value::Object(body)
}

/// A request that parsed with a signing root keeps it through the typed round trip and through
/// equivalent encodings.
fn assert_round_trips(
    original: &SignRequest,
    signable: &Signable,
    network: &Network,
) -> Result<(), TestCaseError> {
    let written = serde_json::to_vec(&to_json(original)).unwrap();
    let (again, again_signable) = parse_and_sign(&written, network)
        .ok_or_else(|| TestCaseError::fail("the written-back request does not parse"))?;
    prop_assert_eq!(&again, original);
    prop_assert_eq!(&again_signable, signable);

    // Equivalent encodings: numbers for decimal strings, upper-case hex, keys reversed, an
    // unknown field, and the computed root as the cross-check.
    let mut variant = to_json(original);
    reencode(&mut variant);
    variant["x-unknown-field"] = json!({"ignored": [1, 2, 3]});
    variant["signingRoot"] = json!(signable.signing_root.to_string());
    if let Some(o) = variant.as_object_mut() {
        o.remove("signing_root");
    }
    let bytes = serde_json::to_vec(&variant).unwrap();
    let (_, variant_signable) = parse_and_sign(&bytes, network)
        .ok_or_else(|| TestCaseError::fail(format!("equivalent encoding refused: {variant}")))?;
    prop_assert_eq!(variant_signable.signing_root, signable.signing_root);
    Ok(())
}

/// Rewrites a request body into an equivalent one: decimal strings that fit become JSON
/// numbers, hex becomes upper case (the `0x` prefix kept), object keys are reversed.
fn reencode(v: &mut Value) {
    match v {
        Value::Object(m) => {
            let mut entries: Vec<(String, Value)> = std::mem::take(m).into_iter().collect();
            entries.reverse();
            for (k, mut child) in entries {
                // `type` and `version` are names, not numbers or hex.
                if k != "type" && k != "version" {
                    reencode(&mut child);
                }
                m.insert(k, child);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(reencode),
        Value::String(s) => {
            if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
                if let Ok(n) = s.parse::<u64>() {
                    *v = json!(n);
                }
            } else if let Some(hex) = s.strip_prefix("0x") {
                *s = format!("0x{}", hex.to_uppercase());
            }
        }
        _ => {}
    }
}

/// Values a field may be replaced with: other JSON types, boundaries, bad encodings, sizes.
fn odd_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n.to_string())),
        any::<f64>().prop_map(|f| json!(f)),
        Just(json!("18446744073709551616")),
        Just(json!("-1")),
        Just(json!("")),
        Just(json!("0x")),
        Just(json!("0x0")),
        Just(json!("0x00")),
        Just(json!("0x01")),
        Just(json!("0xzz")),
        (0usize..200).prop_map(|n| json!(format!("0x{}", "ab".repeat(n)))),
        (0usize..200).prop_map(|n| json!(format!("0x{}", "f".repeat(n)))),
        "[a-zA-Z0-9_ ]{0,40}".prop_map(Value::String),
        Just(json!("PHASE0")),
        Just(json!("fulu")),
        Just(json!("GLOAS")),
        Just(json!("BLOCK_V2")),
        Just(json!("\u{0}\u{ffff}é🔑")),
        (0usize..3000).prop_map(|n| json!("9".repeat(n))),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,12}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// One structural change at a position chosen by `at` among all positions of the document.
#[derive(Debug, Clone)]
enum Mutation {
    Remove,
    Replace(Value),
    /// Repeats an array's elements until it has about `n` of them (past SSZ list limits).
    Grow(usize),
    Truncate,
    Uppercase,
    /// Swaps the value with the same field's value in another corpus request.
    Transplant(usize),
    AddField(String, Value),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        Just(Mutation::Remove),
        odd_value().prop_map(Mutation::Replace),
        prop_oneof![Just(3usize), Just(17), Just(129), Just(300)].prop_map(Mutation::Grow),
        Just(Mutation::Truncate),
        Just(Mutation::Uppercase),
        any::<usize>().prop_map(Mutation::Transplant),
        ("[a-z_]{1,20}", odd_value()).prop_map(|(k, v)| Mutation::AddField(k, v)),
    ]
}

/// JSON pointers of every value in `v` (the root included).
fn positions(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                positions(
                    child,
                    format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")),
                    out,
                );
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                positions(child, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
    out.push(at);
}

fn apply(doc: &mut Value, at: usize, m: &Mutation) {
    let mut all = vec![];
    positions(doc, String::new(), &mut all);
    let pointer = all[at % all.len()].clone();
    match m {
        Mutation::Remove => {
            if let Some((parent, last)) = pointer.rsplit_once('/') {
                let key = last.replace("~1", "/").replace("~0", "~");
                match doc.pointer_mut(parent) {
                    Some(Value::Object(o)) => {
                        o.remove(&key);
                    }
                    Some(Value::Array(a)) => {
                        if let Ok(i) = key.parse::<usize>() {
                            if i < a.len() {
                                a.remove(i);
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        Mutation::Replace(v) => {
            if let Some(slot) = doc.pointer_mut(&pointer) {
                *slot = v.clone();
            }
        }
        Mutation::Grow(n) => {
            if let Some(Value::Array(a)) = doc.pointer_mut(&pointer) {
                if !a.is_empty() {
                    let seed = a.clone();
                    while a.len() < *n {
                        a.extend(seed.iter().cloned());
                    }
                } else {
                    a.extend(std::iter::repeat_n(json!("0"), *n));
                }
            }
        }
        Mutation::Truncate => match doc.pointer_mut(&pointer) {
            Some(Value::String(s)) => {
                s.pop();
            }
            Some(Value::Array(a)) => {
                a.pop();
            }
            _ => {}
        },
        Mutation::Uppercase => {
            if let Some(Value::String(s)) = doc.pointer_mut(&pointer) {
                *s = s.to_uppercase();
            }
        }
        Mutation::Transplant(i) => {
            let other = &corpus()[i % corpus().len()].1;
            if let (Some(v), Some(slot)) = (other.pointer(&pointer), doc.pointer_mut(&pointer)) {
                *slot = v.clone();
            } else if let (Some(v), Some(o)) = (other.get("type"), doc.as_object_mut()) {
                // Another type's name over this payload.
                o.insert("type".into(), v.clone());
            }
        }
        Mutation::AddField(k, v) => {
            if let Some(Value::Object(o)) = doc.pointer_mut(&pointer) {
                o.insert(k.clone(), v.clone());
            }
        }
    }
}

#[test]
fn corpus_parses_and_round_trips() {
    // Every committed vector parses, signs, and round-trips: the property below starts from
    // valid requests.
    for (network, request) in corpus() {
        let bytes = serde_json::to_vec(request).unwrap();
        let (req, signable) = parse_and_sign(&bytes, network)
            .unwrap_or_else(|| panic!("vector does not parse: {request}"));
        assert_round_trips(&req, &signable, network).unwrap();
    }
}

proptest! {
    #![proptest_config(config(2000))]

    /// Arbitrary bytes, and printable text that looks a little like JSON.
    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..512),
        text in "[{}\\[\\]\":,0-9a-zA-Z_ x-]{0,256}",
    ) {
        for input in [bytes.as_slice(), text.as_bytes()] {
            if let Some((req, signable)) = parse_and_sign(input, mainnet()) {
                assert_round_trips(&req, &signable, mainnet())?;
            }
        }
    }
}

proptest! {
    #![proptest_config(config(1000))]

    /// Arbitrary JSON in the payload field of each type, with or without a valid fork_info.
    #[test]
    fn arbitrary_payloads_never_panic(
        type_index in 0..SignType::ALL.len(),
        lower_case in any::<bool>(),
        with_fork_info in any::<bool>(),
        payload in odd_value(),
    ) {
        let t = SignType::ALL[type_index];
        let name = if lower_case { t.name().to_lowercase() } else { t.name().to_string() };
        let mut body = json!({"type": name, t.payload_key(): payload});
        if with_fork_info {
            body["fork_info"] = corpus()[0].1["fork_info"].clone();
        }
        let bytes = serde_json::to_vec(&body).unwrap();
        if let Some((req, signable)) = parse_and_sign(&bytes, mainnet()) {
            assert_round_trips(&req, &signable, mainnet())?;
        }
    }

    /// Valid requests, structurally mutated: never a panic; whatever still parses and has a
    /// signing root round-trips.
    #[test]
    fn mutated_vectors_never_panic(
        index in any::<usize>(),
        mutations in prop::collection::vec((any::<usize>(), mutation()), 1..5),
    ) {
        let (network, original) = &corpus()[index % corpus().len()];
        let mut doc = original.clone();
        for (at, m) in &mutations {
            apply(&mut doc, *at, m);
        }
        let bytes = serde_json::to_vec(&doc).unwrap();
        if let Some((req, signable)) = parse_and_sign(&bytes, network) {
            assert_round_trips(&req, &signable, network)?;
        }
    }

    /// Valid requests damaged at the byte level: cut short, or with bytes overwritten.
    #[test]
    fn damaged_bytes_never_panic(
        index in any::<usize>(),
        cut in any::<prop::sample::Index>(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
    ) {
        let (network, original) = &corpus()[index % corpus().len()];
        let mut bytes = serde_json::to_vec(original).unwrap();
        for (at, b) in &flips {
            let i = at.index(bytes.len());
            bytes[i] = *b;
        }
        let keep = if flips.is_empty() { cut.index(bytes.len()) } else { bytes.len() };
        bytes.truncate(keep);
        if let Some((req, signable)) = parse_and_sign(&bytes, network) {
            assert_round_trips(&req, &signable, network)?;
        }
    }
}
