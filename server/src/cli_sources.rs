//! Where options come from besides the command line: ensign's `ENSIGN_…` variables and, so that a
//! Web3Signer deployment's environment works unchanged, Web3Signer's `WEB3SIGNER_…` ones
//! (issue 17).
//!
//! Web3Signer reads `WEB3SIGNER_<OPTION>` for global options and `WEB3SIGNER_ETH2_<OPTION>` for
//! the `eth2` subcommand's, for the option's name and each of its aliases (`-` → `_`, upper
//! case), with the command line taking precedence over the environment. ensign's variables have
//! the same shape under `ENSIGN_`; this module derives the Web3Signer names (and the `ENSIGN_`
//! names of aliases) from the clap definition, so no second list of options exists to drift.
//!
//! Invariants:
//! - A Web3Signer variable is never ignored in silence: one that names an option ensign has is
//!   used; one that names an option ensign does not have stops the start (exit 2, naming it),
//!   as an unknown flag does. Ignoring `WEB3SIGNER_ETH2_SLASHING_PROTECTION_DB_URL` would start
//!   the signer on a fresh local database instead of the validators' shared history.
//! - Two variables that set one option to different values stop the start, naming both.
//! - Precedence stays clap's: command line, then environment, then the default.

use std::collections::BTreeMap;
use std::ffi::OsString;

use clap::{Arg, Command, CommandFactory, FromArgMatches};

use crate::cli::Cli;

/// The prefix of ensign's own variables.
pub const ENSIGN_PREFIX: &str = "ENSIGN_";
/// The prefix of Web3Signer's variables.
pub const WEB3SIGNER_PREFIX: &str = "WEB3SIGNER_";

/// Web3Signer variables that are not options: the JVM options its start script passes on
/// (Gradle's `<APP>_OPTS` convention). Nothing for ensign to do with them.
const NOT_OPTIONS: &[&str] = &["WEB3SIGNER_OPTS"];

/// Why the environment cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvError {
    #[error(
        "{first} and {second} set --{option} to different values; unset one of them \
         (the command line, if given, would take precedence over both)"
    )]
    Conflict {
        option: String,
        first: String,
        second: String,
    },
    #[error(
        "{name} is set, but ensign has no such option (see README, \"Migrating from \
         Web3Signer\"); unset it rather than have it ignored"
    )]
    Unsupported { name: String },
    #[error("{name} is not valid UTF-8")]
    NotUtf8 { name: String },
}

/// One option's variables: the name clap reads and the others that mean the same option.
struct OptionVars {
    /// `clap::Arg` id, for `mut_arg`.
    id: String,
    /// The long name, for messages.
    long: String,
    /// The subcommand path to the arg (empty for a global option).
    path: Vec<String>,
    /// ensign's primary variable (the `env = "…"` of the definition): clap reads it itself.
    primary: String,
    /// Every other name of the same option: `ENSIGN_` aliases, `WEB3SIGNER_` name and aliases.
    others: Vec<String>,
}

/// Every option with an `ENSIGN_` variable, in `cmd` and its subcommands.
fn option_vars(cmd: &Command) -> Vec<OptionVars> {
    fn walk(cmd: &Command, path: &mut Vec<String>, out: &mut Vec<OptionVars>) {
        for arg in cmd.get_arguments() {
            if let Some(vars) = vars_of(arg, path) {
                // A global option shows up again in every subcommand once propagated; the
                // first (outermost) definition is the one to change.
                if !out
                    .iter()
                    .any(|o| o.id == vars.id && o.primary == vars.primary)
                {
                    out.push(vars);
                }
            }
        }
        for sub in cmd.get_subcommands() {
            path.push(sub.get_name().to_owned());
            walk(sub, path, out);
            path.pop();
        }
    }
    let mut out = Vec::new();
    walk(cmd, &mut Vec::new(), &mut out);
    out
}

fn vars_of(arg: &Arg, path: &[String]) -> Option<OptionVars> {
    let primary = arg.get_env()?.to_str()?.to_owned();
    let long = arg.get_long()?.to_owned();
    // `ENSIGN_` + scope + name: the scope (`ETH2_`, or nothing for a global option) is what
    // is left once the prefix and the long name are taken off.
    let env_name = |name: &str| name.to_ascii_uppercase().replace('-', "_");
    let scope = primary
        .strip_prefix(ENSIGN_PREFIX)?
        .strip_suffix(&env_name(&long))?
        .to_owned();
    let mut names = vec![long.clone()];
    names.extend(
        arg.get_all_aliases()
            .unwrap_or_default()
            .into_iter()
            .map(str::to_owned),
    );
    let mut others = Vec::new();
    for (i, name) in names.iter().enumerate() {
        if i > 0 {
            others.push(format!("{ENSIGN_PREFIX}{scope}{}", env_name(name)));
        }
        others.push(format!("{WEB3SIGNER_PREFIX}{scope}{}", env_name(name)));
    }
    Some(OptionVars {
        id: arg.get_id().to_string(),
        long,
        path: path.to_vec(),
        primary,
        others,
    })
}

/// The changes to make to the command so that clap reads each option from the one variable
/// that is set: `(option, variable)` for options whose primary variable is unset but another
/// name is. `env` is the process environment (or a test's).
fn plan(
    cmd: &Command,
    env: &BTreeMap<String, OsString>,
) -> Result<Vec<(OptionVars, String)>, EnvError> {
    let text = |name: &str| -> Result<Option<String>, EnvError> {
        env.get(name)
            .map(|v| {
                v.to_str()
                    .map(str::to_owned)
                    .ok_or_else(|| EnvError::NotUtf8 {
                        name: name.to_owned(),
                    })
            })
            .transpose()
    };
    let mut known = std::collections::BTreeSet::new();
    let mut changes = Vec::new();
    for vars in option_vars(cmd) {
        let mut set: Vec<(String, String)> = Vec::new();
        for name in std::iter::once(&vars.primary).chain(&vars.others) {
            known.insert(name.clone());
            if let Some(value) = text(name)? {
                set.push((name.clone(), value));
            }
        }
        if let Some((first, value)) = set.first() {
            if let Some((second, _)) = set.iter().find(|(_, v)| v != value) {
                return Err(EnvError::Conflict {
                    option: vars.long.clone(),
                    first: first.clone(),
                    second: second.clone(),
                });
            }
            if *first != vars.primary {
                let first = first.clone();
                changes.push((vars, first));
            }
        }
    }
    for name in env.keys() {
        if name.starts_with(WEB3SIGNER_PREFIX)
            && !known.contains(name)
            && !NOT_OPTIONS.contains(&name.as_str())
        {
            return Err(EnvError::Unsupported { name: name.clone() });
        }
    }
    Ok(changes)
}

/// `cmd` with each option that is set only under another name reading that name.
fn apply(mut cmd: Command, changes: Vec<(OptionVars, String)>) -> Command {
    fn at(cmd: Command, path: &[String], id: &str, var: String) -> Command {
        match path.split_first() {
            None => cmd.mut_arg(id, |a| a.env(var)),
            Some((sub, rest)) => {
                let (id, rest) = (id.to_owned(), rest.to_vec());
                cmd.mut_subcommand(sub, move |s| at(s, &rest, &id, var))
            }
        }
    }
    for (vars, var) in changes {
        cmd = at(cmd, &vars.path, &vars.id, var);
    }
    cmd
}

/// The environment's `ENSIGN_…` and `WEB3SIGNER_…` variables.
fn relevant_env() -> BTreeMap<String, OsString> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v)))
        .filter(|(k, _)| k.starts_with(ENSIGN_PREFIX) || k.starts_with(WEB3SIGNER_PREFIX))
        .collect()
}

/// Parses the command line with the environment as described in the module docs; on any error
/// (clap's or the environment's) prints it and exits with status 2, as clap does.
pub fn parse() -> Cli {
    let cmd = Cli::command();
    let changes = match plan(&cmd, &relevant_env()) {
        Ok(changes) => changes,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    let mut matches = apply(cmd, changes).get_matches();
    Cli::from_arg_matches_mut(&mut matches).unwrap_or_else(|e| e.exit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, OsString> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect()
    }

    fn planned(pairs: &[(&str, &str)]) -> Result<Vec<(String, String)>, EnvError> {
        plan(&Cli::command(), &env(pairs))
            .map(|c| c.into_iter().map(|(v, var)| (v.long, var)).collect())
    }

    #[test]
    fn web3signer_names_are_derived_for_global_and_eth2_options_and_aliases() {
        let all: Vec<String> = option_vars(&Cli::command())
            .into_iter()
            .flat_map(|v| std::iter::once(v.primary).chain(v.others))
            .collect();
        for name in [
            "WEB3SIGNER_HTTP_LISTEN_PORT",
            "WEB3SIGNER_KEY_STORE_PATH",
            "WEB3SIGNER_KEY_CONFIG_PATH",
            "ENSIGN_KEY_CONFIG_PATH",
            "WEB3SIGNER_ETH2_NETWORK",
            "WEB3SIGNER_ETH2_SLASHING_PROTECTION_DB_URL",
            "WEB3SIGNER_ETH2_SLASHING_PROTECTION_DB_PASSWORD",
        ] {
            assert!(all.iter().any(|n| n == name), "{name}");
        }
        // Scope is kept: a global option has no ETH2_ form, an eth2 option no global form.
        assert!(!all.iter().any(|n| n == "WEB3SIGNER_ETH2_HTTP_LISTEN_PORT"));
        assert!(!all.iter().any(|n| n == "WEB3SIGNER_NETWORK"));
    }

    #[test]
    fn a_web3signer_variable_is_used_when_ensigns_is_not_set() {
        assert_eq!(
            planned(&[(
                "WEB3SIGNER_ETH2_SLASHING_PROTECTION_DB_URL",
                "postgresql://h/db"
            )]),
            Ok(vec![(
                "slashing-protection-db-url".into(),
                "WEB3SIGNER_ETH2_SLASHING_PROTECTION_DB_URL".into()
            )])
        );
        // ensign's own variable: clap reads it already, nothing to change.
        assert_eq!(planned(&[("ENSIGN_ETH2_NETWORK", "hoodi")]), Ok(vec![]));
        // Both, with one value: no conflict, clap reads ensign's.
        assert_eq!(
            planned(&[
                ("ENSIGN_ETH2_NETWORK", "hoodi"),
                ("WEB3SIGNER_ETH2_NETWORK", "hoodi")
            ]),
            Ok(vec![])
        );
        assert_eq!(
            planned(&[("WEB3SIGNER_KEY_CONFIG_PATH", "/keys")]),
            Ok(vec![(
                "key-store-path".into(),
                "WEB3SIGNER_KEY_CONFIG_PATH".into()
            )])
        );
        assert_eq!(planned(&[("WEB3SIGNER_OPTS", "-Xmx2g")]), Ok(vec![]));
    }

    #[test]
    fn conflicts_and_unknown_web3signer_options_are_refused_by_name() {
        assert_eq!(
            planned(&[
                ("ENSIGN_HTTP_LISTEN_PORT", "1"),
                ("WEB3SIGNER_HTTP_LISTEN_PORT", "2")
            ]),
            Err(EnvError::Conflict {
                option: "http-listen-port".into(),
                first: "ENSIGN_HTTP_LISTEN_PORT".into(),
                second: "WEB3SIGNER_HTTP_LISTEN_PORT".into(),
            })
        );
        assert_eq!(
            planned(&[
                ("WEB3SIGNER_KEY_STORE_PATH", "/a"),
                ("WEB3SIGNER_KEY_CONFIG_PATH", "/b")
            ]),
            Err(EnvError::Conflict {
                option: "key-store-path".into(),
                first: "WEB3SIGNER_KEY_STORE_PATH".into(),
                second: "WEB3SIGNER_KEY_CONFIG_PATH".into(),
            })
        );
        assert_eq!(
            planned(&[("WEB3SIGNER_ETH2_AZURE_VAULT_ENABLED", "true")]),
            Err(EnvError::Unsupported {
                name: "WEB3SIGNER_ETH2_AZURE_VAULT_ENABLED".into()
            })
        );
        // An eth2 option under the global prefix is not that option (Web3Signer's scoping).
        assert!(matches!(
            planned(&[("WEB3SIGNER_NETWORK", "hoodi")]),
            Err(EnvError::Unsupported { .. })
        ));
    }

    #[test]
    fn the_command_reads_the_variable_that_is_set() {
        let vars = env(&[("WEB3SIGNER_ETH2_NETWORK", "hoodi")]);
        let cmd = Cli::command();
        let changes = plan(&cmd, &vars).unwrap();
        let cmd = apply(cmd, changes);
        let eth2 = cmd.find_subcommand("eth2").unwrap();
        let network = eth2
            .get_arguments()
            .find(|a| a.get_long() == Some("network"))
            .unwrap();
        assert_eq!(
            network.get_env().and_then(|e| e.to_str()),
            Some("WEB3SIGNER_ETH2_NETWORK")
        );
    }
}
