//! Networks: fork schedules and the preset values a signer needs.
//!
//! A signer takes domains from the request's `fork_info`, but a few things come from the
//! network itself: the genesis fork version (builder registrations), the Capella fork version
//! (EIP-7044 voluntary exits), the fork at a given epoch, and `SLOTS_PER_EPOCH` (32 on mainnet
//! presets, 16 on Gnosis). Values are those of each network's published `config.yaml`
//! (ethereum/consensus-specs `configs/`, eth-clients, gnosischain/configs); the test suite checks
//! them against an independent copy (Lodestar's `@lodestar/config`, `tests/vectors/networks.json`).

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use crate::primitives::{decode_hex_fixed, Version};
use crate::Error;

/// Consensus forks, in activation order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fork {
    Phase0,
    Altair,
    Bellatrix,
    Capella,
    Deneb,
    Electra,
    Fulu,
}

impl Fork {
    /// All forks in activation order.
    pub const ALL: [Fork; 7] = [
        Fork::Phase0,
        Fork::Altair,
        Fork::Bellatrix,
        Fork::Capella,
        Fork::Deneb,
        Fork::Electra,
        Fork::Fulu,
    ];

    /// Upper-case name as used by Web3Signer (`BLOCK_V2` `version`) and the beacon API.
    pub fn name(self) -> &'static str {
        match self {
            Fork::Phase0 => "PHASE0",
            Fork::Altair => "ALTAIR",
            Fork::Bellatrix => "BELLATRIX",
            Fork::Capella => "CAPELLA",
            Fork::Deneb => "DENEB",
            Fork::Electra => "ELECTRA",
            Fork::Fulu => "FULU",
        }
    }

    /// Parses a fork name in any case.
    pub fn from_name(name: &str) -> Option<Fork> {
        Fork::ALL
            .into_iter()
            .find(|f| f.name().eq_ignore_ascii_case(name))
    }

    fn config_prefix(self) -> Option<&'static str> {
        match self {
            Fork::Phase0 => None,
            Fork::Altair => Some("ALTAIR"),
            Fork::Bellatrix => Some("BELLATRIX"),
            Fork::Capella => Some("CAPELLA"),
            Fork::Deneb => Some("DENEB"),
            Fork::Electra => Some("ELECTRA"),
            Fork::Fulu => Some("FULU"),
        }
    }
}

impl fmt::Display for Fork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One scheduled fork.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForkEntry {
    pub fork: Fork,
    pub version: Version,
    /// Activation epoch; `None` when not scheduled (`FAR_FUTURE_EPOCH` in a config file).
    pub epoch: Option<u64>,
}

/// What a signer needs to know about a network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    pub name: String,
    pub slots_per_epoch: u64,
    /// Entry 0 is phase0 (genesis, epoch 0); then every later fork in order.
    pub forks: Vec<ForkEntry>,
    /// The chain's genesis validators root, for the built-in networks (it is a property of
    /// the genesis state, not of `config.yaml`, so a custom network has none here).
    pub genesis_validators_root: Option<[u8; 32]>,
}

const FAR_FUTURE_EPOCH: u64 = u64::MAX;

fn v(s: &str) -> Version {
    Version(decode_hex_fixed::<4>(s).expect("built-in fork version is valid hex"))
}

fn built_in(
    name: &str,
    slots_per_epoch: u64,
    genesis_validators_root: &str,
    schedule: &[(&str, Option<u64>)],
) -> Network {
    let forks = Fork::ALL
        .iter()
        .zip(schedule)
        .map(|(&fork, &(version, epoch))| ForkEntry {
            fork,
            version: v(version),
            epoch,
        })
        .collect();
    Network {
        name: name.to_string(),
        slots_per_epoch,
        forks,
        genesis_validators_root: Some(
            decode_hex_fixed::<32>(genesis_validators_root).expect("built-in root is valid hex"),
        ),
    }
}

impl Network {
    /// Names accepted by `--network`.
    pub const BUILT_IN: [&'static str; 5] = ["mainnet", "hoodi", "sepolia", "holesky", "gnosis"];

    /// A built-in network by (case-insensitive) name. Each entry: name, slots per epoch, the
    /// genesis validators root its clients publish (eth-clients/<network> `metadata/
    /// genesis_validators_root.txt`; gnosischain/configs for gnosis), fork versions and epochs.
    pub fn by_name(name: &str) -> Option<Network> {
        let n = match name.to_ascii_lowercase().as_str() {
            "mainnet" => built_in(
                "mainnet",
                32,
                "0x4b363db94e286120d76eb905340fdd4e54bfe9f06bf33ff6cf5ad27f511bfe95",
                &[
                    ("0x00000000", Some(0)),
                    ("0x01000000", Some(74240)),
                    ("0x02000000", Some(144896)),
                    ("0x03000000", Some(194048)),
                    ("0x04000000", Some(269568)),
                    ("0x05000000", Some(364032)),
                    ("0x06000000", Some(411392)),
                ],
            ),
            "sepolia" => built_in(
                "sepolia",
                32,
                "0xd8ea171f3c94aea21ebc42a1ed61052acf3f9209c00e4efbaaddac09ed9b8078",
                &[
                    ("0x90000069", Some(0)),
                    ("0x90000070", Some(50)),
                    ("0x90000071", Some(100)),
                    ("0x90000072", Some(56832)),
                    ("0x90000073", Some(132608)),
                    ("0x90000074", Some(222464)),
                    ("0x90000075", Some(272640)),
                ],
            ),
            "holesky" => built_in(
                "holesky",
                32,
                "0x9143aa7c615a7f7115e2b6aac319c03529df8242ae705fba9df39b79c59fa8b1",
                &[
                    ("0x01017000", Some(0)),
                    ("0x02017000", Some(0)),
                    ("0x03017000", Some(0)),
                    ("0x04017000", Some(256)),
                    ("0x05017000", Some(29696)),
                    ("0x06017000", Some(115968)),
                    ("0x07017000", Some(165120)),
                ],
            ),
            "hoodi" => built_in(
                "hoodi",
                32,
                "0x212f13fc4df078b6cb7db228f1c8307566dcecf900867401a92023d7ba99cb5f",
                &[
                    ("0x10000910", Some(0)),
                    ("0x20000910", Some(0)),
                    ("0x30000910", Some(0)),
                    ("0x40000910", Some(0)),
                    ("0x50000910", Some(0)),
                    ("0x60000910", Some(2048)),
                    ("0x70000910", Some(50688)),
                ],
            ),
            "gnosis" => built_in(
                "gnosis",
                16,
                "0xf5dcb5564e829aab27264b9becd5dfaa017085611224cb3036f573368dbb9d47",
                &[
                    ("0x00000064", Some(0)),
                    ("0x01000064", Some(512)),
                    ("0x02000064", Some(385536)),
                    ("0x03000064", Some(648704)),
                    ("0x04000064", Some(889856)),
                    ("0x05000064", Some(1337856)),
                    ("0x06000064", Some(1714688)),
                ],
            ),
            _ => return None,
        };
        Some(n)
    }

    /// `--network` value: a built-in name or the path of a consensus `config.yaml`.
    pub fn from_arg(arg: &str) -> Result<Network, Error> {
        if let Some(n) = Network::by_name(arg) {
            return Ok(n);
        }
        let path = Path::new(arg);
        if !path.exists() {
            return Err(Error::Config(format!(
                "unknown network {arg:?}: expected one of {} or the path of a config YAML",
                Network::BUILT_IN.join(", ")
            )));
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
        Network::from_config_yaml(&path.display().to_string(), &text)
    }

    /// Parses a consensus-specs style `config.yaml` (`GENESIS_FORK_VERSION`,
    /// `<FORK>_FORK_VERSION`, `<FORK>_FORK_EPOCH`, `PRESET_BASE`).
    pub fn from_config_yaml(name: &str, text: &str) -> Result<Network, Error> {
        let map: BTreeMap<String, serde_yaml_ng::Value> = serde_yaml_ng::from_str(text)
            .map_err(|e| Error::Config(format!("{name}: not a config YAML: {e}")))?;
        let get_str = |key: &str| -> Option<String> {
            map.get(key).map(|v| match v {
                serde_yaml_ng::Value::String(s) => s.clone(),
                serde_yaml_ng::Value::Number(n) => n.to_string(),
                other => format!("{other:?}"),
            })
        };
        let version = |key: &str| -> Result<Version, Error> {
            match map.get(key) {
                // YAML reads an unquoted `0x01000000` as the integer it spells.
                Some(serde_yaml_ng::Value::Number(n)) => n
                    .as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .map(|n| Version(n.to_be_bytes()))
                    .ok_or_else(|| Error::Config(format!("{name}: {key} is not a 4-byte version"))),
                Some(serde_yaml_ng::Value::String(s)) => decode_hex_fixed::<4>(s)
                    .map(Version)
                    .map_err(|e| Error::Config(format!("{name}: {key}: {e}"))),
                Some(_) => Err(Error::Config(format!(
                    "{name}: {key} is not a 4-byte version"
                ))),
                None => Err(Error::Config(format!("{name}: missing {key}"))),
            }
        };
        let slots_per_epoch = match get_str("SLOTS_PER_EPOCH") {
            Some(s) => s
                .parse()
                .map_err(|_| Error::Config(format!("{name}: SLOTS_PER_EPOCH is not a number")))?,
            None => match get_str("PRESET_BASE")
                .as_deref()
                .map(str::to_ascii_lowercase)
                .as_deref()
            {
                Some("minimal") => 8,
                Some("gnosis") => 16,
                _ => 32,
            },
        };
        if slots_per_epoch == 0 {
            return Err(Error::Config(format!(
                "{name}: SLOTS_PER_EPOCH must be positive"
            )));
        }
        let mut forks = vec![ForkEntry {
            fork: Fork::Phase0,
            version: version("GENESIS_FORK_VERSION")?,
            epoch: Some(0),
        }];
        for fork in &Fork::ALL[1..] {
            let prefix = fork.config_prefix().expect("later forks have a prefix");
            let key = format!("{prefix}_FORK_VERSION");
            if !map.contains_key(&key) {
                break;
            }
            let epoch_key = format!("{prefix}_FORK_EPOCH");
            let epoch: u64 = get_str(&epoch_key)
                .ok_or_else(|| Error::Config(format!("{name}: missing {epoch_key}")))?
                .parse()
                .map_err(|_| Error::Config(format!("{name}: {epoch_key} is not a number")))?;
            forks.push(ForkEntry {
                fork: *fork,
                version: version(&key)?,
                epoch: (epoch != FAR_FUTURE_EPOCH).then_some(epoch),
            });
        }
        Ok(Network {
            name: name.to_string(),
            slots_per_epoch,
            forks,
            genesis_validators_root: None,
        })
    }

    /// `GENESIS_FORK_VERSION`.
    pub fn genesis_fork_version(&self) -> Version {
        self.forks[0].version
    }

    /// The version of `fork` on this network, if the network defines it.
    pub fn fork_version(&self, fork: Fork) -> Option<Version> {
        self.forks
            .iter()
            .find(|f| f.fork == fork)
            .map(|f| f.version)
    }

    /// The activation epoch of `fork`, if scheduled.
    pub fn fork_epoch(&self, fork: Fork) -> Option<u64> {
        self.forks
            .iter()
            .find(|f| f.fork == fork)
            .and_then(|f| f.epoch)
    }

    /// Which fork a version belongs to on this network.
    pub fn fork_of_version(&self, version: Version) -> Option<Fork> {
        self.forks
            .iter()
            .find(|f| f.version == version)
            .map(|f| f.fork)
    }

    /// The fork active at `epoch` by this network's schedule.
    pub fn fork_at_epoch(&self, epoch: u64) -> Fork {
        self.forks
            .iter()
            .filter(|f| f.epoch.is_some_and(|e| e <= epoch))
            .map(|f| f.fork)
            .max()
            .unwrap_or(Fork::Phase0)
    }

    /// `compute_epoch_at_slot`.
    pub fn epoch_at_slot(&self, slot: u64) -> u64 {
        slot / self.slots_per_epoch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_ins_are_complete_and_ordered() {
        for name in Network::BUILT_IN {
            let n = Network::by_name(name).unwrap();
            assert_eq!(n.forks.len(), Fork::ALL.len(), "{name}");
            let epochs: Vec<u64> = n.forks.iter().filter_map(|f| f.epoch).collect();
            assert!(
                epochs.windows(2).all(|w| w[0] <= w[1]),
                "{name} epochs not ordered"
            );
        }
        let mainnet = Network::by_name("MAINNET").unwrap();
        assert_eq!(mainnet.fork_at_epoch(0), Fork::Phase0);
        assert_eq!(mainnet.fork_at_epoch(74240), Fork::Altair);
        assert_eq!(mainnet.fork_at_epoch(u64::MAX), Fork::Fulu);
        let gnosis = Network::by_name("gnosis").unwrap();
        assert_eq!(gnosis.epoch_at_slot(33), 2);
    }

    #[test]
    fn config_yaml_round_trip() {
        let yaml = "PRESET_BASE: 'gnosis'\nGENESIS_FORK_VERSION: 0x00000064\n\
                    ALTAIR_FORK_VERSION: 0x01000064\nALTAIR_FORK_EPOCH: 512\n\
                    BELLATRIX_FORK_VERSION: 0x02000064\nBELLATRIX_FORK_EPOCH: 18446744073709551615\n";
        let n = Network::from_config_yaml("custom", yaml).unwrap();
        assert_eq!(n.slots_per_epoch, 16);
        assert_eq!(n.forks.len(), 3);
        assert_eq!(n.fork_epoch(Fork::Bellatrix), None);
        assert_eq!(n.fork_at_epoch(10_000), Fork::Altair);
        assert_eq!(n.fork_version(Fork::Altair), Some(Version([1, 0, 0, 0x64])));
        assert!(Network::from_config_yaml("bad", "GENESIS_FORK_VERSION: 'zz'\n").is_err());
        assert!(Network::from_arg("no-such-network").is_err());
    }
}
