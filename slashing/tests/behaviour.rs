//! Store behaviour beyond the vectors, run against both stores: GVR pinning,
//! atomic imports, disabled validators, high watermark, pruning, u64 range.

mod common;

use common::PgStores as _;

use common::{
    entry, expect_verdicts, interchange, pk, refused, root,
    Msg::{Att, Block},
    GVR,
};
use slashing::{Error, HighWatermark, Permit, Refusal, Root, SlashingProtection};

fn gvr_pinning(s: &dyn SlashingProtection) {
    assert_eq!(s.genesis_validators_root().unwrap(), None);
    assert_eq!(s.sign_block(GVR, pk(1), 5, root(1)).unwrap(), Permit::New);
    assert_eq!(s.genesis_validators_root().unwrap(), Some(GVR));
    let other = Root([9; 32]);
    assert_eq!(
        refused(s.sign_block(other, pk(1), 6, root(1))),
        Refusal::GenesisValidatorsRootMismatch
    );
    assert_eq!(
        refused(s.sign_attestation(other, pk(1), 1, 2, root(1))),
        Refusal::GenesisValidatorsRootMismatch
    );
    let before = s.export_interchange().unwrap();
    let r = s.import_interchange(&interchange(other, &entry(2, r#"{"slot":"9"}"#, "")));
    assert!(
        matches!(
            r,
            Err(Error::Refused(Refusal::GenesisValidatorsRootMismatch))
        ),
        "{r:?}"
    );
    assert_eq!(
        s.export_interchange().unwrap(),
        before,
        "failed import wrote something"
    );
    assert!(matches!(
        s.pin_genesis_validators_root(other),
        Err(Error::Refused(Refusal::GenesisValidatorsRootMismatch))
    ));
}

fn import_is_all_or_nothing(s: &dyn SlashingProtection) {
    s.pin_genesis_validators_root(GVR).unwrap();
    let body = format!(
        "{},{}",
        entry(
            1,
            r#"{"slot":"10"}"#,
            r#"{"source_epoch":"1","target_epoch":"2"}"#
        ),
        entry(2, r#"{"slot":"9223372036854775808"}"#, "")
    );
    let r = s.import_interchange(&interchange(GVR, &body));
    assert!(matches!(r, Err(Error::Interchange(_))), "{r:?}");
    // Validator 1's entries must not have been written.
    assert_eq!(s.sign_block(GVR, pk(1), 10, root(1)).unwrap(), Permit::New);
    assert_eq!(
        s.sign_attestation(GVR, pk(1), 1, 2, root(1)).unwrap(),
        Permit::New
    );
    // A malformed document is rejected before touching the store.
    assert!(matches!(
        s.import_interchange("{\"metadata\":{}}"),
        Err(Error::Interchange(_))
    ));
    // A good import raises the watermarks to the imported maxima.
    let sum = s
        .import_interchange(&interchange(
            GVR,
            &entry(
                3,
                r#"{"slot":"10","signing_root":"0x0000000000000000000000000000000000000000000000000000000000000001"},{"slot":"20"}"#,
                r#"{"source_epoch":"3","target_epoch":"4"},{"source_epoch":"2","target_epoch":"9"}"#,
            ),
        ))
        .unwrap();
    assert_eq!(
        (
            sum.validators,
            sum.blocks_inserted,
            sum.attestations_inserted
        ),
        (1, 2, 2)
    );
    expect_verdicts(
        s,
        pk(3),
        &[
            (Block(15, root(5)), Err(Refusal::SlotNotAboveLowWatermark)),
            (Block(10, root(1)), Ok(Permit::SameAsRecorded)),
            (Block(20, Root([0; 32])), Err(Refusal::DoubleBlockProposal)),
            (Block(21, root(5)), Ok(Permit::New)),
            (Att(2, 3, root(5)), Err(Refusal::SourceBelowLowWatermark)),
            (Att(3, 10, root(5)), Ok(Permit::New)),
        ],
    );
    // Re-importing the same file changes nothing and conflicts nothing new.
    let again = s
        .import_interchange(&interchange(GVR, &entry(3, r#"{"slot":"20"}"#, "")))
        .unwrap();
    assert_eq!(again.blocks_inserted, 0);
}

fn disabled_validator(s: &dyn SlashingProtection) {
    assert_eq!(s.sign_block(GVR, pk(1), 1, root(1)).unwrap(), Permit::New);
    s.set_validator_enabled(pk(1), false).unwrap();
    expect_verdicts(
        s,
        pk(1),
        &[
            (Block(2, root(1)), Err(Refusal::ValidatorDisabled)),
            (Att(0, 1, root(1)), Err(Refusal::ValidatorDisabled)),
        ],
    );
    s.set_validator_enabled(pk(1), true).unwrap();
    assert_eq!(s.sign_block(GVR, pk(1), 2, root(1)).unwrap(), Permit::New);
}

fn high_watermark(s: &dyn SlashingProtection) {
    assert_eq!(s.high_watermark().unwrap(), None);
    let hw = HighWatermark {
        epoch: Some(10),
        slot: Some(100),
    };
    s.set_high_watermark(Some(hw)).unwrap();
    assert_eq!(s.high_watermark().unwrap(), Some(hw));
    expect_verdicts(
        s,
        pk(1),
        &[
            (Block(100, root(1)), Err(Refusal::AtOrAboveHighWatermark)),
            (Block(99, root(1)), Ok(Permit::New)),
            (Att(1, 10, root(1)), Err(Refusal::AtOrAboveHighWatermark)),
            (Att(1, 9, root(1)), Ok(Permit::New)),
        ],
    );
    s.set_high_watermark(None).unwrap();
    assert_eq!(s.high_watermark().unwrap(), None);
    assert_eq!(s.sign_block(GVR, pk(1), 100, root(1)).unwrap(), Permit::New);
}

fn prune(s: &dyn SlashingProtection) {
    for e in 1..=20u64 {
        assert_eq!(
            s.sign_attestation(GVR, pk(1), e - 1, e, root(e)).unwrap(),
            Permit::New
        );
        assert_eq!(
            s.sign_block(GVR, pk(1), e * 4, root(e)).unwrap(),
            Permit::New
        );
    }
    // Keep 5 epochs of 4 slots: targets 16..=20, slots 61..=80 → 64..=80.
    let sum = s.prune(5, 4).unwrap();
    assert_eq!(sum.attestations_deleted, 15);
    assert_eq!(sum.blocks_deleted, 15);
    let exported: serde_json::Value =
        serde_json::from_str(&s.export_interchange().unwrap()).unwrap();
    assert_eq!(
        exported["data"][0]["signed_attestations"]
            .as_array()
            .unwrap()
            .len(),
        5
    );
    assert_eq!(
        exported["data"][0]["signed_blocks"]
            .as_array()
            .unwrap()
            .len(),
        5
    );
    // Below the new watermarks: refused; the kept messages still repeat.
    assert_eq!(
        refused(s.sign_attestation(GVR, pk(1), 14, 15, root(15))),
        Refusal::SourceBelowLowWatermark
    );
    assert_eq!(
        refused(s.sign_block(GVR, pk(1), 62, root(99))),
        Refusal::SlotNotAboveLowWatermark
    );
    assert_eq!(
        s.sign_attestation(GVR, pk(1), 15, 16, root(16)).unwrap(),
        Permit::SameAsRecorded
    );
    assert_eq!(
        s.sign_attestation(GVR, pk(1), 20, 21, root(21)).unwrap(),
        Permit::New
    );
    assert_eq!(s.sign_block(GVR, pk(1), 81, root(21)).unwrap(), Permit::New);
}

fn value_range(s: &dyn SlashingProtection) {
    assert_eq!(
        refused(s.sign_block(GVR, pk(1), u64::MAX, root(1))),
        Refusal::ValueTooLarge
    );
    assert_eq!(
        refused(s.sign_attestation(GVR, pk(1), 1, u64::MAX, root(1))),
        Refusal::ValueTooLarge
    );
    let max = i64::MAX as u64;
    assert_eq!(s.sign_block(GVR, pk(1), max, root(1)).unwrap(), Permit::New);
    assert_eq!(
        s.sign_block(GVR, pk(1), max, root(1)).unwrap(),
        Permit::SameAsRecorded
    );
    s.health_check().unwrap();
}

type Case = fn(&dyn SlashingProtection);
const CASES: &[(&str, Case)] = &[
    ("gvr_pinning", gvr_pinning),
    ("import_is_all_or_nothing", import_is_all_or_nothing),
    ("disabled_validator", disabled_validator),
    ("high_watermark", high_watermark),
    ("prune", prune),
    ("value_range", value_range),
];

#[test]
fn sqlite_behaviour() {
    for (name, case) in CASES {
        eprintln!("sqlite: {name}");
        let db = common::SqliteDb::new();
        case(&*db.store);
    }
}

#[test]
fn postgres_behaviour() {
    for (name, case) in CASES {
        let Some(schema) = common::PgSchema::new("postgres_behaviour") else {
            return;
        };
        eprintln!("postgres: {name}");
        case(&schema.open_pool(2));
    }
}
