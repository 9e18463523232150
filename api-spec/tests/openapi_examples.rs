//! Web3Signer's own OpenAPI examples: our signing root must equal the one Web3Signer computed.

use api_spec::network::Network;
use api_spec::sign::SignRequest;

/// Examples that do not use mainnet-preset sizes (see `vectors/README.md`); the contribution's
/// 1-byte `aggregation_bits` is the minimal preset's `Bitvector[8]`, mainnet's is `Bitvector[128]`.
const UNVERIFIED: [&str; 4] = [
    "AGGREGATE_AND_PROOF_V2 (ELECTRA)",
    "AGGREGATE_AND_PROOF_V2 (FULU)",
    "BLOCK_V2 (ALTAIR)",
    "SYNC_COMMITTEE_CONTRIBUTION_AND_PROOF",
];

#[test]
fn web3signer_examples_give_web3signer_roots() {
    let text = include_str!("vectors/web3signer-openapi-examples.json");
    let examples: serde_json::Map<String, serde_json::Value> = serde_json::from_str(text).unwrap();
    let network = Network::by_name("mainnet").unwrap();
    // The registration example was computed on a test network whose genesis fork version is
    // 0x00000001 (the version every other example's fork_info carries), not mainnet's.
    let mut example_network = network.clone();
    example_network.forks[0].version = api_spec::primitives::Version([0, 0, 0, 1]);
    let mut checked = 0;
    for (name, body) in &examples {
        if UNVERIFIED.contains(&name.as_str()) {
            continue;
        }
        let expected = body.get("signingRoot").or_else(|| body.get("signing_root"));
        let expected = expected
            .and_then(|v| v.as_str())
            .expect("example has a root")
            .to_string();
        let mut body = body.clone();
        let obj = body.as_object_mut().unwrap();
        obj.remove("signingRoot");
        obj.remove("signing_root");
        let req = SignRequest::parse(serde_json::to_vec(&body).unwrap().as_slice())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let net = if name == "VALIDATOR_REGISTRATION" {
            &example_network
        } else {
            &network
        };
        let got = req.signable(net).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            got.signing_root.to_string(),
            expected.to_lowercase(),
            "{name}"
        );
        checked += 1;
    }
    assert_eq!(checked, examples.len() - UNVERIFIED.len());
}
