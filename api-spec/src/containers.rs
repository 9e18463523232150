//! SSZ containers of the consensus specs that a remote signer hashes, with their JSON shapes.
//!
//! Field order and list limits follow the consensus specs (mainnet preset; the Gnosis preset
//! has the same limits for these containers). `hash_tree_root` comes from `tree_hash`; list and
//! bitfield limits are enforced when the JSON is parsed (`ssz_types` refuses longer values), so
//! an oversized list is a 400, never an allocation.
//!
//! Shape only: no logic lives here. Unknown JSON fields are ignored, as Web3Signer (Jackson with
//! `FAIL_ON_UNKNOWN_PROPERTIES` off) ignores them; the wire format is Web3Signer's, not ours.
//! Multi-word fields also accept their camelCase spelling, which Web3Signer's own published
//! examples use (e.g. the legacy `BLOCK` example's `proposerIndex`).

use serde::{Deserialize, Serialize};
use ssz_types::{BitList, BitVector, FixedVector, VariableList};
use tree_hash_derive::TreeHash;
use typenum::{U128, U131072, U16, U2, U2048, U33, U512, U64};

use crate::primitives::{Address, PublicKeyBytes, Quoted, Root, SignatureBytes, Version};

/// `Checkpoint` (phase0).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, TreeHash)]
pub struct Checkpoint {
    pub epoch: Quoted,
    pub root: Root,
}

/// `AttestationData` (phase0).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, TreeHash)]
pub struct AttestationData {
    pub slot: Quoted,
    pub index: Quoted,
    #[serde(alias = "beaconBlockRoot")]
    pub beacon_block_root: Root,
    pub source: Checkpoint,
    pub target: Checkpoint,
}

/// A block-shaped struct: `slot`, `proposer_index`, `parent_root`, `state_root`, then the
/// body (`BeaconBlock`) or its root (`BeaconBlockHeader`). A header's root equals its block's
/// only while the four leading fields agree in order and type, so they are written once.
macro_rules! block_shaped {
    ($(#[$doc:meta])* $name:ident $(<$g:ident: $bound:path>)? {
        $(#[$last_attr:meta])* $last:ident: $ty:ty $(,)?
    }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, TreeHash)]
        pub struct $name $(<$g: $bound>)? {
            pub slot: Quoted,
            #[serde(alias = "proposerIndex")]
            pub proposer_index: Quoted,
            #[serde(alias = "parentRoot")]
            pub parent_root: Root,
            #[serde(alias = "stateRoot")]
            pub state_root: Root,
            $(#[$last_attr])* pub $last: $ty,
        }
    };
}

block_shaped! {
    /// `BeaconBlockHeader` (phase0).
    BeaconBlockHeader {
        #[serde(alias = "bodyRoot")]
        body_root: Root,
    }
}

/// `SignedBeaconBlockHeader` (phase0).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, TreeHash)]
pub struct SignedBeaconBlockHeader {
    pub message: BeaconBlockHeader,
    pub signature: SignatureBytes,
}

/// `ProposerSlashing` (phase0).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, TreeHash)]
pub struct ProposerSlashing {
    #[serde(alias = "signedHeader1")]
    pub signed_header_1: SignedBeaconBlockHeader,
    #[serde(alias = "signedHeader2")]
    pub signed_header_2: SignedBeaconBlockHeader,
}

/// `IndexedAttestation` (phase0): `attesting_indices` is `List[ValidatorIndex, MAX_VALIDATORS_PER_COMMITTEE]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, TreeHash)]
pub struct IndexedAttestation {
    #[serde(alias = "attestingIndices")]
    pub attesting_indices: VariableList<Quoted, U2048>,
    pub data: AttestationData,
    pub signature: SignatureBytes,
}

/// `AttesterSlashing` (phase0).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, TreeHash)]
pub struct AttesterSlashing {
    #[serde(alias = "attestation1")]
    pub attestation_1: IndexedAttestation,
    #[serde(alias = "attestation2")]
    pub attestation_2: IndexedAttestation,
}

/// `Attestation` (phase0 to Deneb): `aggregation_bits` is `Bitlist[MAX_VALIDATORS_PER_COMMITTEE]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, TreeHash)]
pub struct Attestation {
    #[serde(alias = "aggregationBits")]
    pub aggregation_bits: BitList<U2048>,
    pub data: AttestationData,
    pub signature: SignatureBytes,
}

/// `Attestation` as modified by Electra (EIP-7549): the bitlist spans all committees of the
/// slot (`MAX_VALIDATORS_PER_COMMITTEE * MAX_COMMITTEES_PER_SLOT`) and `committee_bits` is added.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, TreeHash)]
pub struct ElectraAttestation {
    #[serde(alias = "aggregationBits")]
    pub aggregation_bits: BitList<U131072>,
    pub data: AttestationData,
    pub signature: SignatureBytes,
    #[serde(alias = "committeeBits")]
    pub committee_bits: BitVector<U64>,
}

/// `Eth1Data` (phase0).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, TreeHash)]
pub struct Eth1Data {
    #[serde(alias = "depositRoot")]
    pub deposit_root: Root,
    #[serde(alias = "depositCount")]
    pub deposit_count: Quoted,
    #[serde(alias = "blockHash")]
    pub block_hash: Root,
}

/// `DepositData` (phase0).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, TreeHash)]
pub struct DepositData {
    pub pubkey: PublicKeyBytes,
    #[serde(alias = "withdrawalCredentials")]
    pub withdrawal_credentials: Root,
    pub amount: Quoted,
    pub signature: SignatureBytes,
}

/// `Deposit` (phase0): `proof` is `Vector[Bytes32, DEPOSIT_CONTRACT_TREE_DEPTH + 1]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, TreeHash)]
pub struct Deposit {
    pub proof: FixedVector<Root, U33>,
    pub data: DepositData,
}

/// `VoluntaryExit` (phase0).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, TreeHash)]
pub struct VoluntaryExit {
    pub epoch: Quoted,
    #[serde(alias = "validatorIndex")]
    pub validator_index: Quoted,
}

/// `SignedVoluntaryExit` (phase0).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, TreeHash)]
pub struct SignedVoluntaryExit {
    pub message: VoluntaryExit,
    pub signature: SignatureBytes,
}

/// `SyncAggregate` (Altair): `Bitvector[SYNC_COMMITTEE_SIZE]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, TreeHash)]
pub struct SyncAggregate {
    #[serde(alias = "syncCommitteeBits")]
    pub sync_committee_bits: BitVector<U512>,
    #[serde(alias = "syncCommitteeSignature")]
    pub sync_committee_signature: SignatureBytes,
}

/// A `BeaconBlockBody` struct: the fields every fork's body starts with, in the order
/// `hash_tree_root` depends on, then the fields its fork appends. Written once so that one
/// fork's copy cannot drift from another's in order, alias or list limit.
macro_rules! beacon_block_body {
    ($(#[$doc:meta])* $name:ident { $($(#[$extra_attr:meta])* $extra:ident: $ty:ty,)* }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, TreeHash)]
        pub struct $name {
            #[serde(alias = "randaoReveal")]
            pub randao_reveal: SignatureBytes,
            #[serde(alias = "eth1Data")]
            pub eth1_data: Eth1Data,
            pub graffiti: Root,
            #[serde(alias = "proposerSlashings")]
            pub proposer_slashings: VariableList<ProposerSlashing, U16>,
            #[serde(alias = "attesterSlashings")]
            pub attester_slashings: VariableList<AttesterSlashing, U2>,
            pub attestations: VariableList<Attestation, U128>,
            pub deposits: VariableList<Deposit, U16>,
            #[serde(alias = "voluntaryExits")]
            pub voluntary_exits: VariableList<SignedVoluntaryExit, U16>,
            $($(#[$extra_attr])* pub $extra: $ty,)*
        }
    };
}

beacon_block_body! {
    /// `BeaconBlockBody` (phase0), with the mainnet-preset operation limits.
    Phase0BeaconBlockBody {}
}

beacon_block_body! {
    /// `BeaconBlockBody` (Altair): phase0's body plus `sync_aggregate`.
    AltairBeaconBlockBody {
        #[serde(alias = "syncAggregate")]
        sync_aggregate: SyncAggregate,
    }
}

block_shaped! {
    /// `BeaconBlock` generic over the body of its fork.
    BeaconBlock<Body: tree_hash::TreeHash> {
        body: Body,
    }
}

/// `AggregateAndProof`, generic over the attestation of its fork.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, TreeHash)]
pub struct AggregateAndProof<Att: tree_hash::TreeHash> {
    #[serde(alias = "aggregatorIndex")]
    pub aggregator_index: Quoted,
    pub aggregate: Att,
    #[serde(alias = "selectionProof")]
    pub selection_proof: SignatureBytes,
}

/// `DepositMessage` (phase0): what a deposit signature covers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, TreeHash)]
pub struct DepositMessage {
    pub pubkey: PublicKeyBytes,
    #[serde(alias = "withdrawalCredentials")]
    pub withdrawal_credentials: Root,
    pub amount: Quoted,
}

/// `SyncAggregatorSelectionData` (Altair).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, TreeHash)]
pub struct SyncAggregatorSelectionData {
    pub slot: Quoted,
    #[serde(alias = "subcommitteeIndex")]
    pub subcommittee_index: Quoted,
}

/// `SyncCommitteeContribution` (Altair):
/// `Bitvector[SYNC_COMMITTEE_SIZE // SYNC_COMMITTEE_SUBNET_COUNT]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, TreeHash)]
pub struct SyncCommitteeContribution {
    pub slot: Quoted,
    #[serde(alias = "beaconBlockRoot")]
    pub beacon_block_root: Root,
    #[serde(alias = "subcommitteeIndex")]
    pub subcommittee_index: Quoted,
    #[serde(alias = "aggregationBits")]
    pub aggregation_bits: BitVector<U128>,
    pub signature: SignatureBytes,
}

/// `ContributionAndProof` (Altair).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, TreeHash)]
pub struct ContributionAndProof {
    #[serde(alias = "aggregatorIndex")]
    pub aggregator_index: Quoted,
    pub contribution: SyncCommitteeContribution,
    #[serde(alias = "selectionProof")]
    pub selection_proof: SignatureBytes,
}

/// `ValidatorRegistrationV1` (builder-specs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, TreeHash)]
pub struct ValidatorRegistration {
    #[serde(alias = "feeRecipient")]
    pub fee_recipient: Address,
    #[serde(alias = "gasLimit")]
    pub gas_limit: Quoted,
    pub timestamp: Quoted,
    pub pubkey: PublicKeyBytes,
}

/// `ForkData` (phase0), hashed into every domain.
#[derive(Debug, Clone, PartialEq, TreeHash)]
pub struct ForkData {
    pub current_version: Version,
    pub genesis_validators_root: Root,
}

/// `SigningData` (phase0): the signing root is its hash_tree_root.
#[derive(Debug, Clone, PartialEq, TreeHash)]
pub struct SigningData {
    pub object_root: Root,
    pub domain: Root,
}
