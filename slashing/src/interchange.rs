//! EIP-3076 interchange format, version 5 ("Specification" / "JSON Schema").
//!
//! Shape-only serde types. Unknown fields are accepted on purpose: files come
//! from other clients, and EIP-3076 lets them carry extra data. All integers
//! are decimal strings; roots and pubkeys are `0x`-prefixed hex.

use serde::{Deserialize, Serialize};

use crate::{Error, Pubkey, Root};

/// The only version this crate reads and writes.
pub const FORMAT_VERSION: &str = "5";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interchange {
    pub metadata: Metadata,
    pub data: Vec<ValidatorData>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    pub interchange_format_version: String,
    pub genesis_validators_root: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValidatorData {
    pub pubkey: String,
    #[serde(default)]
    pub signed_blocks: Vec<BlockEntry>,
    #[serde(default)]
    pub signed_attestations: Vec<AttestationEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockEntry {
    pub slot: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_root: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttestationEntry {
    pub source_epoch: String,
    pub target_epoch: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_root: Option<String>,
}

/// A parsed, validated interchange: numbers and byte arrays instead of strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub genesis_validators_root: Root,
    pub validators: Vec<ParsedValidator>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedValidator {
    pub pubkey: Pubkey,
    pub blocks: Vec<(u64, Option<Root>)>,
    pub attestations: Vec<(u64, u64, Option<Root>)>,
}

fn bad(msg: String) -> Error {
    Error::Interchange(msg)
}

pub(crate) fn parse_hex<const N: usize>(s: &str, what: &str) -> Result<[u8; N], Error> {
    let h = s
        .strip_prefix("0x")
        .ok_or_else(|| bad(format!("{what} {s:?}: missing 0x prefix")))?;
    let v = hex::decode(h).map_err(|e| bad(format!("{what} {s:?}: {e}")))?;
    v.try_into()
        .map_err(|v: Vec<u8>| bad(format!("{what} {s:?}: expected {N} bytes, got {}", v.len())))
}

fn parse_u64(s: &str, what: &str) -> Result<u64, Error> {
    // EIP-3076: integers are decimal strings; reject signs and blanks.
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad(format!("{what} {s:?}: not a decimal u64 string")));
    }
    s.parse().map_err(|e| bad(format!("{what} {s:?}: {e}")))
}

fn parse_root(s: &Option<String>) -> Result<Option<Root>, Error> {
    s.as_deref()
        .map(|s| parse_hex::<32>(s, "signing_root").map(Root))
        .transpose()
}

/// Parse and validate a v5 interchange document.
pub fn parse(json: &str) -> Result<Parsed, Error> {
    let doc: Interchange =
        serde_json::from_str(json).map_err(|e| bad(format!("invalid interchange JSON: {e}")))?;
    if doc.metadata.interchange_format_version != FORMAT_VERSION {
        return Err(bad(format!(
            "unsupported interchange_format_version {:?} (only \"5\")",
            doc.metadata.interchange_format_version
        )));
    }
    let gvr = Root(parse_hex::<32>(
        &doc.metadata.genesis_validators_root,
        "genesis_validators_root",
    )?);
    let mut validators = Vec::with_capacity(doc.data.len());
    for d in &doc.data {
        let pubkey = Pubkey(parse_hex::<48>(&d.pubkey, "pubkey")?);
        let blocks = d
            .signed_blocks
            .iter()
            .map(|b| Ok((parse_u64(&b.slot, "slot")?, parse_root(&b.signing_root)?)))
            .collect::<Result<Vec<_>, Error>>()?;
        let attestations = d
            .signed_attestations
            .iter()
            .map(|a| {
                Ok((
                    parse_u64(&a.source_epoch, "source_epoch")?,
                    parse_u64(&a.target_epoch, "target_epoch")?,
                    parse_root(&a.signing_root)?,
                ))
            })
            .collect::<Result<Vec<_>, Error>>()?;
        validators.push(ParsedValidator {
            pubkey,
            blocks,
            attestations,
        });
    }
    Ok(Parsed {
        genesis_validators_root: gvr,
        validators,
    })
}

/// Render a v5 document (pretty-printed JSON).
pub fn render(parsed: &Parsed) -> Result<String, Error> {
    let doc = Interchange {
        metadata: Metadata {
            interchange_format_version: FORMAT_VERSION.to_owned(),
            genesis_validators_root: const_hex::encode_prefixed(parsed.genesis_validators_root.0),
        },
        data: parsed
            .validators
            .iter()
            .map(|v| ValidatorData {
                pubkey: const_hex::encode_prefixed(v.pubkey.0),
                signed_blocks: v
                    .blocks
                    .iter()
                    .map(|(slot, r)| BlockEntry {
                        slot: slot.to_string(),
                        signing_root: r.map(|r| const_hex::encode_prefixed(r.0)),
                    })
                    .collect(),
                signed_attestations: v
                    .attestations
                    .iter()
                    .map(|(s, t, r)| AttestationEntry {
                        source_epoch: s.to_string(),
                        target_epoch: t.to_string(),
                        signing_root: r.map(|r| const_hex::encode_prefixed(r.0)),
                    })
                    .collect(),
            })
            .collect(),
    };
    serde_json::to_string_pretty(&doc).map_err(|e| bad(format!("serialising interchange: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_unknown_fields_and_missing_roots() {
        let gvr = format!("0x{}", "00".repeat(32));
        let pk = format!("0x{}", "ab".repeat(48));
        let json = format!(
            r#"{{"metadata":{{"interchange_format_version":"5","genesis_validators_root":"{gvr}","x":1}},
               "data":[{{"pubkey":"{pk}","signed_blocks":[{{"slot":"7","extra":true}}],
               "signed_attestations":[{{"source_epoch":"1","target_epoch":"2","signing_root":"{gvr}"}}]}}]}}"#
        );
        let p = parse(&json).unwrap();
        assert_eq!(p.validators[0].blocks, vec![(7, None)]);
        assert_eq!(
            p.validators[0].attestations,
            vec![(1, 2, Some(Root([0; 32])))]
        );
        let again = parse(&render(&p).unwrap()).unwrap();
        assert_eq!(again, p);
    }

    #[test]
    fn rejects_bad_input() {
        let gvr = format!("0x{}", "00".repeat(32));
        let v4 = format!(
            r#"{{"metadata":{{"interchange_format_version":"4","genesis_validators_root":"{gvr}"}},"data":[]}}"#
        );
        assert!(matches!(parse(&v4), Err(Error::Interchange(_))));
        let neg = format!(
            r#"{{"metadata":{{"interchange_format_version":"5","genesis_validators_root":"{gvr}"}},
               "data":[{{"pubkey":"0x{}","signed_blocks":[{{"slot":"-1"}}]}}]}}"#,
            "ab".repeat(48)
        );
        assert!(matches!(parse(&neg), Err(Error::Interchange(_))));
        assert!(matches!(parse("{"), Err(Error::Interchange(_))));
    }
}
