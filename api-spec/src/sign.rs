//! `POST /api/v1/eth2/sign/{identifier}`: request parsing and signing roots.
//!
//! Parsing follows Web3Signer's wire format (see `README.md` and Web3Signer's `Eth2SigningRequestBody`):
//! a `type`, an optional `fork_info`, an optional `signing_root` (alias `signingRoot`) and one
//! payload key whose name depends on the type. The signing root is always recomputed from the
//! payload (consensus specs, phase0 `compute_signing_root`); a supplied root is only a
//! cross-check, so a client can never make the signer sign an arbitrary 32-byte value.

use serde::Deserialize;
use serde_json::{Map, Value};
use tree_hash::TreeHash;

use crate::containers::*;
use crate::network::{Fork, Network};
use crate::primitives::{Quoted, Root, Version};
use crate::Error;

/// Domain types (consensus specs, phase0 / altair "Domain types"; builder-specs for
/// `DOMAIN_APPLICATION_BUILDER`).
pub mod domain {
    pub const BEACON_PROPOSER: [u8; 4] = [0, 0, 0, 0];
    pub const BEACON_ATTESTER: [u8; 4] = [1, 0, 0, 0];
    pub const RANDAO: [u8; 4] = [2, 0, 0, 0];
    pub const DEPOSIT: [u8; 4] = [3, 0, 0, 0];
    pub const VOLUNTARY_EXIT: [u8; 4] = [4, 0, 0, 0];
    pub const SELECTION_PROOF: [u8; 4] = [5, 0, 0, 0];
    pub const AGGREGATE_AND_PROOF: [u8; 4] = [6, 0, 0, 0];
    pub const SYNC_COMMITTEE: [u8; 4] = [7, 0, 0, 0];
    pub const SYNC_COMMITTEE_SELECTION_PROOF: [u8; 4] = [8, 0, 0, 0];
    pub const CONTRIBUTION_AND_PROOF: [u8; 4] = [9, 0, 0, 0];
    pub const APPLICATION_BUILDER: [u8; 4] = [0, 0, 0, 1];
}

/// The signing request types Web3Signer defines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SignType {
    Block,
    BlockV2,
    Attestation,
    AggregationSlot,
    AggregateAndProof,
    AggregateAndProofV2,
    Deposit,
    RandaoReveal,
    VoluntaryExit,
    SyncCommitteeMessage,
    SyncCommitteeSelectionProof,
    SyncCommitteeContributionAndProof,
    ValidatorRegistration,
}

impl SignType {
    /// Every type, for documentation and metrics.
    pub const ALL: [SignType; 13] = [
        SignType::Block,
        SignType::BlockV2,
        SignType::Attestation,
        SignType::AggregationSlot,
        SignType::AggregateAndProof,
        SignType::AggregateAndProofV2,
        SignType::Deposit,
        SignType::RandaoReveal,
        SignType::VoluntaryExit,
        SignType::SyncCommitteeMessage,
        SignType::SyncCommitteeSelectionProof,
        SignType::SyncCommitteeContributionAndProof,
        SignType::ValidatorRegistration,
    ];

    /// The wire name (`type`).
    pub fn name(self) -> &'static str {
        match self {
            SignType::Block => "BLOCK",
            SignType::BlockV2 => "BLOCK_V2",
            SignType::Attestation => "ATTESTATION",
            SignType::AggregationSlot => "AGGREGATION_SLOT",
            SignType::AggregateAndProof => "AGGREGATE_AND_PROOF",
            SignType::AggregateAndProofV2 => "AGGREGATE_AND_PROOF_V2",
            SignType::Deposit => "DEPOSIT",
            SignType::RandaoReveal => "RANDAO_REVEAL",
            SignType::VoluntaryExit => "VOLUNTARY_EXIT",
            SignType::SyncCommitteeMessage => "SYNC_COMMITTEE_MESSAGE",
            SignType::SyncCommitteeSelectionProof => "SYNC_COMMITTEE_SELECTION_PROOF",
            SignType::SyncCommitteeContributionAndProof => "SYNC_COMMITTEE_CONTRIBUTION_AND_PROOF",
            SignType::ValidatorRegistration => "VALIDATOR_REGISTRATION",
        }
    }

    /// The JSON key that carries this type's payload.
    pub fn payload_key(self) -> &'static str {
        match self {
            SignType::Block => "block",
            SignType::BlockV2 => "beacon_block",
            SignType::Attestation => "attestation",
            SignType::AggregationSlot => "aggregation_slot",
            SignType::AggregateAndProof | SignType::AggregateAndProofV2 => "aggregate_and_proof",
            SignType::Deposit => "deposit",
            SignType::RandaoReveal => "randao_reveal",
            SignType::VoluntaryExit => "voluntary_exit",
            SignType::SyncCommitteeMessage => "sync_committee_message",
            SignType::SyncCommitteeSelectionProof => "sync_aggregator_selection_data",
            SignType::SyncCommitteeContributionAndProof => "contribution_and_proof",
            SignType::ValidatorRegistration => "validator_registration",
        }
    }

    /// Web3Signer reads enum names case-insensitively.
    pub fn from_name(name: &str) -> Option<SignType> {
        SignType::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(name))
    }
}

/// `fork_info` of a request.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
pub struct ForkInfo {
    pub fork: ForkSpec,
    #[serde(alias = "genesisValidatorsRoot")]
    pub genesis_validators_root: Root,
}

/// The `Fork` container as sent by validator clients.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
pub struct ForkSpec {
    // Web3Signer's own examples use the camelCase spellings; both are accepted.
    #[serde(alias = "previousVersion")]
    pub previous_version: Version,
    #[serde(alias = "currentVersion")]
    pub current_version: Version,
    pub epoch: Quoted,
}

impl ForkInfo {
    /// The phase0 `get_domain` rule: the previous version before the fork epoch.
    pub fn version_at(&self, epoch: u64) -> Version {
        if epoch < self.fork.epoch.0 {
            self.fork.previous_version
        } else {
            self.fork.current_version
        }
    }
}

/// The typed payload of a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    Phase0Block(BeaconBlock<Phase0BeaconBlockBody>),
    AltairBlock(BeaconBlock<AltairBeaconBlockBody>),
    BlockHeader(Fork, BeaconBlockHeader),
    Attestation(AttestationData),
    AggregationSlot(Quoted),
    AggregateAndProof(AggregateAndProof<Attestation>),
    ElectraAggregateAndProof(AggregateAndProof<ElectraAttestation>),
    Deposit(DepositMessage, Version),
    RandaoReveal(Quoted),
    VoluntaryExit(VoluntaryExit),
    SyncCommitteeMessage {
        beacon_block_root: Root,
        slot: Quoted,
    },
    SyncCommitteeSelectionProof(SyncAggregatorSelectionData),
    SyncCommitteeContributionAndProof(ContributionAndProof),
    ValidatorRegistration(ValidatorRegistration),
}

/// A parsed signing request.
#[derive(Debug, Clone, PartialEq)]
pub struct SignRequest {
    pub sign_type: SignType,
    pub fork_info: Option<ForkInfo>,
    pub signing_root: Option<Root>,
    pub payload: Payload,
}

/// (object root, domain, slot, epoch, slashing check) of a message, before its signing root.
type Parts = (Root, Root, Option<u64>, Option<u64>, Option<SlashingCheck>);

/// What slashing protection must check before the signature may be released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlashingCheck {
    Block {
        slot: u64,
    },
    Attestation {
        source_epoch: u64,
        target_epoch: u64,
    },
}

/// The outcome of computing a request's signing root.
#[derive(Debug, Clone, PartialEq)]
pub struct Signable {
    pub signing_root: Root,
    /// `Some` for blocks and attestations; carries the genesis validators root to pin.
    pub slashing: Option<(Root, SlashingCheck)>,
    /// The slot the message is about, where it has one (for logs).
    pub slot: Option<u64>,
    /// The epoch that chose the domain (for logs).
    pub epoch: Option<u64>,
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "type")]
    sign_type: Option<String>,
    fork_info: Option<ForkInfo>,
    #[serde(alias = "signingRoot")]
    signing_root: Option<Root>,
    #[serde(flatten)]
    rest: Map<String, Value>,
}

#[derive(Deserialize)]
struct SlotOnly {
    slot: Quoted,
}

#[derive(Deserialize)]
struct EpochOnly {
    epoch: Quoted,
}

#[derive(Deserialize)]
struct DepositWire {
    pubkey: crate::primitives::PublicKeyBytes,
    withdrawal_credentials: Root,
    amount: Quoted,
    genesis_fork_version: Version,
}

#[derive(Deserialize)]
struct SyncMessageWire {
    beacon_block_root: Root,
    slot: Quoted,
}

fn malformed(msg: impl Into<String>) -> Error {
    Error::Malformed(msg.into())
}

fn typed<T: serde::de::DeserializeOwned>(key: &str, v: Value) -> Result<T, Error> {
    serde_json::from_value(v).map_err(|e| malformed(format!("invalid {key}: {e}")))
}

impl SignRequest {
    /// Parses a request body. Every failure here is the client's (HTTP 400).
    pub fn parse(body: &[u8]) -> Result<SignRequest, Error> {
        let env: Envelope = serde_json::from_slice(body)
            .map_err(|e| malformed(format!("invalid JSON body: {e}")))?;
        let name = env
            .sign_type
            .ok_or_else(|| malformed("missing field `type`"))?;
        let sign_type = SignType::from_name(&name)
            .ok_or_else(|| malformed(format!("unknown type {name:?}")))?;
        let mut rest = env.rest;
        let key = sign_type.payload_key();
        let raw = match rest.remove(key) {
            Some(Value::Null) | None => {
                return Err(malformed(format!(
                    "type {} needs the `{key}` field",
                    sign_type.name()
                )))
            }
            Some(v) => v,
        };
        let payload = parse_payload(sign_type, key, raw)?;
        Ok(SignRequest {
            sign_type,
            fork_info: env.fork_info,
            signing_root: env.signing_root,
            payload,
        })
    }

    /// Computes the signing root (and what slashing protection must check) for `network`.
    ///
    /// Fails with [`Error::MissingForkInfo`] where the domain needs `fork_info` and it is
    /// absent, and with [`Error::SigningRootMismatch`] when a supplied root differs from ours.
    pub fn signable(&self, network: &Network) -> Result<Signable, Error> {
        let fork_info = || self.fork_info.as_ref().ok_or(Error::MissingForkInfo);
        // Domain from fork_info at `epoch`: phase0 `get_domain` with the client's fork.
        let with_fork = |domain_type: [u8; 4], epoch: u64| -> Result<Root, Error> {
            let fi = fork_info()?;
            Ok(compute_domain(
                domain_type,
                fi.version_at(epoch),
                fi.genesis_validators_root,
            ))
        };
        // Most messages take their domain at the epoch of their slot.
        let at_slot =
            |object_root: Root, domain_type: [u8; 4], slot: Quoted| -> Result<Parts, Error> {
                let epoch = network.epoch_at_slot(slot.0);
                Ok((
                    object_root,
                    with_fork(domain_type, epoch)?,
                    Some(slot.0),
                    Some(epoch),
                    None,
                ))
            };
        let block = |object_root: Root, slot: Quoted| -> Result<Parts, Error> {
            let mut parts = at_slot(object_root, domain::BEACON_PROPOSER, slot)?;
            parts.4 = Some(SlashingCheck::Block { slot: slot.0 });
            Ok(parts)
        };
        let (object_root, domain, slot, epoch, slashing) = match &self.payload {
            Payload::Phase0Block(b) => block(b.tree_hash_root().into(), b.slot)?,
            Payload::AltairBlock(b) => block(b.tree_hash_root().into(), b.slot)?,
            // hash_tree_root(BeaconBlock) == hash_tree_root(BeaconBlockHeader) when
            // body_root = hash_tree_root(body): a container's root only sees its fields' roots.
            Payload::BlockHeader(_, h) => block(h.tree_hash_root().into(), h.slot)?,
            Payload::Attestation(a) => {
                // phase0 `get_attestation_signature`: the domain is taken at the target epoch.
                let e = a.target.epoch.0;
                let check = SlashingCheck::Attestation {
                    source_epoch: a.source.epoch.0,
                    target_epoch: e,
                };
                let d = with_fork(domain::BEACON_ATTESTER, e)?;
                (
                    a.tree_hash_root().into(),
                    d,
                    Some(a.slot.0),
                    Some(e),
                    Some(check),
                )
            }
            Payload::AggregationSlot(s) => {
                at_slot(s.tree_hash_root().into(), domain::SELECTION_PROOF, *s)?
            }
            Payload::AggregateAndProof(a) => at_slot(
                a.tree_hash_root().into(),
                domain::AGGREGATE_AND_PROOF,
                a.aggregate.data.slot,
            )?,
            Payload::ElectraAggregateAndProof(a) => at_slot(
                a.tree_hash_root().into(),
                domain::AGGREGATE_AND_PROOF,
                a.aggregate.data.slot,
            )?,
            Payload::Deposit(msg, genesis_fork_version) => {
                // phase0 `process_deposit`: deposits are valid across forks, so the domain
                // uses the genesis fork version and a zero genesis validators root.
                let d = compute_domain(domain::DEPOSIT, *genesis_fork_version, Root::ZERO);
                (msg.tree_hash_root().into(), d, None, None, None)
            }
            Payload::RandaoReveal(e) => (
                e.tree_hash_root().into(),
                with_fork(domain::RANDAO, e.0)?,
                None,
                Some(e.0),
                None,
            ),
            Payload::VoluntaryExit(exit) => {
                let e = exit.epoch.0;
                let d = voluntary_exit_domain(network, fork_info()?, e);
                (exit.tree_hash_root().into(), d, None, Some(e), None)
            }
            // altair validator guide `get_sync_committee_message`: the object is the root itself.
            Payload::SyncCommitteeMessage {
                beacon_block_root,
                slot,
            } => at_slot(*beacon_block_root, domain::SYNC_COMMITTEE, *slot)?,
            Payload::SyncCommitteeSelectionProof(d) => at_slot(
                d.tree_hash_root().into(),
                domain::SYNC_COMMITTEE_SELECTION_PROOF,
                d.slot,
            )?,
            Payload::SyncCommitteeContributionAndProof(c) => at_slot(
                c.tree_hash_root().into(),
                domain::CONTRIBUTION_AND_PROOF,
                c.contribution.slot,
            )?,
            Payload::ValidatorRegistration(r) => {
                // builder-specs `compute_builder_domain`: the network's genesis fork version
                // and a zero genesis validators root, whatever the current fork.
                let d = compute_domain(
                    domain::APPLICATION_BUILDER,
                    network.genesis_fork_version(),
                    Root::ZERO,
                );
                (r.tree_hash_root().into(), d, None, None, None)
            }
        };
        let signing_root = compute_signing_root(object_root, domain);
        if let Some(supplied) = self.signing_root {
            if supplied != signing_root {
                return Err(Error::SigningRootMismatch {
                    supplied,
                    computed: signing_root,
                });
            }
        }
        let slashing = slashing
            .map(|check| fork_info().map(|fi| (fi.genesis_validators_root, check)))
            .transpose()?;
        Ok(Signable {
            signing_root,
            slashing,
            slot,
            epoch,
        })
    }
}

fn parse_payload(sign_type: SignType, key: &str, raw: Value) -> Result<Payload, Error> {
    Ok(match sign_type {
        SignType::Block => Payload::Phase0Block(typed(key, raw)?),
        SignType::BlockV2 => parse_block_v2(raw)?,
        SignType::Attestation => Payload::Attestation(typed(key, raw)?),
        SignType::AggregationSlot => Payload::AggregationSlot(typed::<SlotOnly>(key, raw)?.slot),
        SignType::AggregateAndProof | SignType::AggregateAndProofV2 => parse_aggregate(raw)?,
        SignType::Deposit => {
            let d: DepositWire = typed(key, raw)?;
            Payload::Deposit(
                DepositMessage {
                    pubkey: d.pubkey,
                    withdrawal_credentials: d.withdrawal_credentials,
                    amount: d.amount,
                },
                d.genesis_fork_version,
            )
        }
        SignType::RandaoReveal => Payload::RandaoReveal(typed::<EpochOnly>(key, raw)?.epoch),
        SignType::VoluntaryExit => Payload::VoluntaryExit(typed(key, raw)?),
        SignType::SyncCommitteeMessage => {
            let m: SyncMessageWire = typed(key, raw)?;
            Payload::SyncCommitteeMessage {
                beacon_block_root: m.beacon_block_root,
                slot: m.slot,
            }
        }
        SignType::SyncCommitteeSelectionProof => {
            Payload::SyncCommitteeSelectionProof(typed(key, raw)?)
        }
        SignType::SyncCommitteeContributionAndProof => {
            Payload::SyncCommitteeContributionAndProof(typed(key, raw)?)
        }
        SignType::ValidatorRegistration => Payload::ValidatorRegistration(typed(key, raw)?),
    })
}

/// `beacon_block`: `{version, block}` (PHASE0, ALTAIR) or `{version, block_header}` (any fork;
/// validator clients send headers from BELLATRIX on, since the body root is all that is hashed).
fn parse_block_v2(raw: Value) -> Result<Payload, Error> {
    let Value::Object(mut obj) = raw else {
        return Err(malformed("beacon_block must be an object"));
    };
    let version = match obj.remove("version") {
        Some(Value::String(s)) => s,
        _ => return Err(malformed("beacon_block needs a string `version`")),
    };
    let fork = Fork::from_name(&version)
        .ok_or_else(|| malformed(format!("unknown beacon_block version {version:?}")))?;
    if let Some(h) = obj.remove("block_header").filter(|v| !v.is_null()) {
        return Ok(Payload::BlockHeader(fork, typed("block_header", h)?));
    }
    let block = obj
        .remove("block")
        .filter(|v| !v.is_null())
        .ok_or_else(|| {
            malformed(format!(
                "beacon_block of version {fork} needs `block_header`"
            ))
        })?;
    match fork {
        Fork::Phase0 => Ok(Payload::Phase0Block(typed("block", block)?)),
        Fork::Altair => Ok(Payload::AltairBlock(typed("block", block)?)),
        _ => Err(malformed(format!(
            "a full block is accepted for PHASE0 and ALTAIR only; send `block_header` for {fork}"
        ))),
    }
}

/// `aggregate_and_proof`: the bare object, or Lodestar's `{version, data}` wrapper (recognised,
/// as Web3Signer does, by the presence of both keys). The attestation schema follows the
/// payload's shape: Electra's `Attestation` is the one with `committee_bits` (EIP-7549).
fn parse_aggregate(raw: Value) -> Result<Payload, Error> {
    let Value::Object(mut obj) = raw else {
        return Err(malformed("aggregate_and_proof must be an object"));
    };
    let mut declared: Option<Fork> = None;
    if obj.contains_key("version") && obj.contains_key("data") {
        let version = match obj.remove("version") {
            Some(Value::String(s)) => s,
            _ => return Err(malformed("aggregate_and_proof `version` must be a string")),
        };
        declared = Some(Fork::from_name(&version).ok_or_else(|| {
            malformed(format!("unknown aggregate_and_proof version {version:?}"))
        })?);
        obj = match obj.remove("data") {
            Some(Value::Object(o)) => o,
            _ => return Err(malformed("aggregate_and_proof `data` must be an object")),
        };
    }
    let has_committee_bits = obj
        .get("aggregate")
        .and_then(Value::as_object)
        .and_then(|a| a.get("committee_bits"))
        .is_some_and(|v| !v.is_null());
    if let Some(fork) = declared {
        let electra = fork >= Fork::Electra;
        if electra != has_committee_bits {
            return Err(malformed(format!(
                "aggregate of version {fork} {} `committee_bits`",
                if electra { "needs" } else { "must not have" }
            )));
        }
    }
    let value = Value::Object(obj);
    if has_committee_bits {
        Ok(Payload::ElectraAggregateAndProof(typed(
            "aggregate_and_proof",
            value,
        )?))
    } else {
        Ok(Payload::AggregateAndProof(typed(
            "aggregate_and_proof",
            value,
        )?))
    }
}

/// EIP-7044: from Deneb on, voluntary exits are signed with the Capella fork version so they
/// stay valid forever (deneb `process_voluntary_exit`). The request's fork is Deneb or later
/// when its `current_version` is this network's Deneb-or-later version (Lodestar sends the real
/// fork), or when the exit epoch is at or after the network's Deneb epoch. Lighthouse sends a
/// synthetic Capella fork, which the phase0 rule already turns into the Capella version.
fn voluntary_exit_domain(network: &Network, fork_info: &ForkInfo, exit_epoch: u64) -> Root {
    let gvr = fork_info.genesis_validators_root;
    let request_fork = network.fork_of_version(fork_info.fork.current_version);
    let deneb_by_request = request_fork.is_some_and(|f| f >= Fork::Deneb);
    let deneb_by_epoch = network
        .fork_epoch(Fork::Deneb)
        .is_some_and(|d| exit_epoch >= d);
    match network.fork_version(Fork::Capella) {
        Some(capella) if deneb_by_request || deneb_by_epoch => {
            compute_domain(domain::VOLUNTARY_EXIT, capella, gvr)
        }
        _ => compute_domain(
            domain::VOLUNTARY_EXIT,
            fork_info.version_at(exit_epoch),
            gvr,
        ),
    }
}

/// phase0 `compute_domain`: domain type ‖ first 28 bytes of `compute_fork_data_root`.
pub fn compute_domain(
    domain_type: [u8; 4],
    fork_version: Version,
    genesis_validators_root: Root,
) -> Root {
    let fork_data_root = ForkData {
        current_version: fork_version,
        genesis_validators_root,
    }
    .tree_hash_root();
    let mut d = [0u8; 32];
    d[..4].copy_from_slice(&domain_type);
    d[4..].copy_from_slice(&fork_data_root.0[..28]);
    Root(d)
}

/// phase0 `compute_signing_root`: `hash_tree_root(SigningData(object_root, domain))`.
pub fn compute_signing_root(object_root: Root, domain: Root) -> Root {
    SigningData {
        object_root,
        domain,
    }
    .tree_hash_root()
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_known_mainnet_domains() {
        // The deposit domain every deposit tool uses on mainnet (genesis version 0x00000000,
        // zero genesis validators root), and the builder domain derived the same way.
        let d = compute_domain(domain::DEPOSIT, Version([0; 4]), Root::ZERO);
        assert_eq!(
            d.to_string(),
            "0x03000000f5a5fd42d16a20302798ef6ed309979b43003d2320d9f0e8ea9831a9"
        );
        let b = compute_domain(domain::APPLICATION_BUILDER, Version([0; 4]), Root::ZERO);
        assert_eq!(
            b.to_string(),
            "0x00000001f5a5fd42d16a20302798ef6ed309979b43003d2320d9f0e8ea9831a9"
        );
    }

    #[test]
    fn parse_errors_are_malformed() {
        for body in [
            &b"not json"[..],
            br#"{"fork_info": null}"#,
            br#"{"type": "NOPE"}"#,
            br#"{"type": "ATTESTATION"}"#,
            br#"{"type": "AGGREGATION_SLOT", "aggregation_slot": {"slot": "x"}}"#,
            br#"{"type": "BLOCK_V2", "beacon_block": {"version": "GLOAS", "block_header": {}}}"#,
        ] {
            assert!(
                matches!(SignRequest::parse(body), Err(Error::Malformed(_))),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn type_names_are_case_insensitive() {
        let r = SignRequest::parse(br#"{"type": "randao_reveal", "randao_reveal": {"epoch": 3}}"#)
            .unwrap();
        assert_eq!(r.sign_type, SignType::RandaoReveal);
        let n = Network::by_name("mainnet").unwrap();
        assert_eq!(r.signable(&n), Err(Error::MissingForkInfo));
    }
}
