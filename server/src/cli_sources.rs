//! Where options come from besides the command line: ensign's `ENSIGN_…` variables and, so that a
//! Web3Signer deployment's environment works unchanged, Web3Signer's `WEB3SIGNER_…` ones, and
//! Web3Signer's YAML `--config-file` (issue 17). Precedence, as Web3Signer's: command line, then
//! environment, then the configuration file, then the default.
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
//! - Precedence stays clap's: command line, then environment, then the default; a configuration
//!   file's value becomes the option's default, so it ranks just above the built-in one.
//! - A configuration file's key that is not an option of ensign's stops the start, naming its
//!   line (Web3Signer refuses unknown keys too).

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
#[derive(Clone)]
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
    /// The option's aliases (besides `long`).
    aliases: Vec<String>,
}

impl OptionVars {
    /// The option's long name and aliases.
    fn names(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.long.as_str()).chain(self.aliases.iter().map(String::as_str))
    }
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
        aliases: names[1..].to_vec(),
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

/// `cmd` with `change` made to the option `id` of the subcommand at `path`.
fn mut_option(cmd: Command, path: &[String], id: &str, change: impl FnOnce(Arg) -> Arg) -> Command {
    match path.split_first() {
        None => cmd.mut_arg(id, change),
        Some((sub, rest)) => {
            let (id, rest) = (id.to_owned(), rest.to_vec());
            cmd.mut_subcommand(sub, move |s| mut_option(s, &rest, &id, change))
        }
    }
}

/// `cmd` with each option that is set only under another name reading that name.
fn apply(mut cmd: Command, changes: Vec<(OptionVars, String)>) -> Command {
    for (vars, var) in changes {
        cmd = mut_option(cmd, &vars.path, &vars.id, |a| a.env(var));
    }
    cmd
}

/// Largest configuration file read (a limit at parse, as for key configuration files).
const MAX_CONFIG_FILE_BYTES: u64 = 1 << 20;

/// Why a configuration file cannot be used. Its values are never quoted: the file may hold a
/// database password.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigFileError {
    #[error("--config-file {path}: cannot read: {reason}")]
    Read { path: String, reason: String },
    #[error("--config-file {path}: larger than {MAX_CONFIG_FILE_BYTES} bytes")]
    TooLarge { path: String },
    #[error("--config-file {path}: not YAML (line {line})")]
    NotYaml { path: String, line: usize },
    #[error("--config-file {path}: must be a mapping of option names to values")]
    NotAMapping { path: String },
    #[error(
        "--config-file {path}, line {line}: unknown option {key:?} (global options by name, eth2 \
         options as eth2.<name>)"
    )]
    UnknownKey {
        path: String,
        key: String,
        line: usize,
    },
    #[error("--config-file {path}, line {line}: {key:?} must be a value or a list of values")]
    BadValue {
        path: String,
        key: String,
        line: usize,
    },
    #[error("--config-file {path}: {key:?} and {other:?} are the same option")]
    Twice {
        path: String,
        key: String,
        other: String,
    },
}

/// The line (1-based) where `key` is defined in `text`, for messages: the first line that starts
/// with it (plain or quoted) followed by a colon.
fn line_of(text: &str, key: &str) -> usize {
    text.lines()
        .position(|l| {
            let l = l.trim_start();
            [key.to_owned(), format!("\"{key}\""), format!("'{key}'")]
                .iter()
                .any(|k| {
                    l.strip_prefix(k.as_str())
                        .is_some_and(|r| r.trim_start().starts_with(':'))
                })
        })
        .map_or(0, |i| i + 1)
}

/// A configuration value as the command line would give it: a scalar's text, a list joined
/// with commas (how list options take several values).
fn value_text(v: &serde_yaml_ng::Value) -> Option<String> {
    use serde_yaml_ng::Value;
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::Sequence(items) => items
            .iter()
            .map(|i| match i {
                Value::Sequence(_) | Value::Mapping(_) => None,
                other => value_text(other),
            })
            .collect::<Option<Vec<_>>>()
            .map(|v| v.join(",")),
        _ => None,
    }
}

/// The options `text` (the file at `path`) sets: `(option, value)`, for each option's default.
/// Keys are an option's long name or alias, under `eth2.` for the eth2 subcommand's options.
fn config_values(
    cmd: &Command,
    path: &str,
    text: &str,
) -> Result<Vec<(OptionVars, String)>, ConfigFileError> {
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).map_err(|e| {
        // Position only: the message of a YAML error may quote the text (a password).
        ConfigFileError::NotYaml {
            path: path.to_owned(),
            line: e.location().map_or(0, |l| l.line()),
        }
    })?;
    let map = match doc {
        serde_yaml_ng::Value::Mapping(m) => m,
        // An empty file: no options.
        serde_yaml_ng::Value::Null => return Ok(vec![]),
        _ => {
            return Err(ConfigFileError::NotAMapping {
                path: path.to_owned(),
            })
        }
    };
    let options = option_vars(cmd);
    let mut found: Vec<(OptionVars, String, String)> = Vec::new();
    for (k, v) in map {
        let key = value_text(&k).filter(|_| !k.is_sequence()).ok_or_else(|| {
            ConfigFileError::NotAMapping {
                path: path.to_owned(),
            }
        })?;
        let line = line_of(text, &key);
        let unknown = || ConfigFileError::UnknownKey {
            path: path.to_owned(),
            key: key.clone(),
            line,
        };
        // `eth2.name` → the eth2 subcommand's option `name` (`eth2.export.to`: its export
        // subcommand's `to`); `name` → a global option.
        let (scope, name) = match key.rsplit_once('.') {
            Some((subs, name)) => (subs.split('.').map(str::to_owned).collect(), name),
            None => (vec![], key.as_str()),
        };
        let option = options
            .iter()
            .find(|o| o.path == scope && o.names().any(|n| n == name))
            .ok_or_else(unknown)?;
        // The file cannot name itself.
        if option.long == "config-file" {
            return Err(unknown());
        }
        let value = value_text(&v).ok_or_else(|| ConfigFileError::BadValue {
            path: path.to_owned(),
            key: key.clone(),
            line,
        })?;
        if let Some((_, other, _)) = found.iter().find(|(o, _, _)| o.primary == option.primary) {
            return Err(ConfigFileError::Twice {
                path: path.to_owned(),
                key: key.clone(),
                other: other.clone(),
            });
        }
        found.push((option.clone(), key, value));
    }
    Ok(found.into_iter().map(|(o, _, v)| (o, v)).collect())
}

/// Reads the configuration file at `path` into option defaults of `cmd`.
fn with_config_file(cmd: Command, path: &std::path::Path) -> Result<Command, ConfigFileError> {
    use std::io::Read;
    let shown = path.display().to_string();
    let read_err = |e: std::io::Error| ConfigFileError::Read {
        path: shown.clone(),
        reason: e.to_string(),
    };
    let mut text = String::new();
    std::fs::File::open(path)
        .map_err(read_err)?
        .take(MAX_CONFIG_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(read_err)?;
    if text.len() as u64 > MAX_CONFIG_FILE_BYTES {
        return Err(ConfigFileError::TooLarge { path: shown });
    }
    let values = config_values(&cmd, &shown, &text)?;
    Ok(values.into_iter().fold(cmd, |cmd, (option, value)| {
        // A default does not satisfy `required` in clap; the file's value does here.
        mut_option(cmd, &option.path, &option.id, |a| {
            a.default_value(value).required(false)
        })
    }))
}

/// Web3Signer's boolean options also take their value as the next word (`--metrics-enabled
/// true`), which clap cannot tell from a subcommand; ensign's take it after `=` (so that
/// `--metrics-enabled eth2` stays the flag and the subcommand). This joins a boolean option
/// and a following `true` / `false` (any case, as picocli reads them) into `--option=value`
/// before clap sees the command line. Boolean options are those made by `web3signer_bool`
/// (value name `BOOL`).
fn join_boolean_values(cmd: &Command, args: Vec<OsString>) -> Vec<OsString> {
    fn booleans(cmd: &Command, out: &mut Vec<String>) {
        for arg in cmd.get_arguments() {
            if arg.get_value_names().is_some_and(|n| n == ["BOOL"]) {
                if let Some(long) = arg.get_long() {
                    out.push(format!("--{long}"));
                }
                out.extend(
                    arg.get_all_aliases()
                        .unwrap_or_default()
                        .into_iter()
                        .map(|a| format!("--{a}")),
                );
            }
        }
        for sub in cmd.get_subcommands() {
            booleans(sub, out);
        }
    }
    let mut names = Vec::new();
    booleans(cmd, &mut names);
    let mut out = Vec::with_capacity(args.len());
    let mut args = args.into_iter().peekable();
    while let Some(arg) = args.next() {
        let is_boolean = arg.to_str().is_some_and(|a| names.iter().any(|n| n == a));
        let value = args
            .peek()
            .and_then(|v| v.to_str())
            .filter(|v| v.eq_ignore_ascii_case("true") || v.eq_ignore_ascii_case("false"))
            .map(str::to_ascii_lowercase);
        match (is_boolean, value) {
            (true, Some(value)) => {
                args.next();
                let mut joined = arg;
                joined.push(format!("={value}"));
                out.push(joined);
            }
            _ => out.push(arg),
        }
    }
    out
}

/// `cmd` with no option or subcommand required, for finding `--config-file` before the file
/// has given its values.
fn relaxed(cmd: Command) -> Command {
    let subs: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_owned())
        .collect();
    let cmd = cmd
        .mut_args(|a| a.required(false))
        .subcommand_required(false);
    subs.iter()
        .fold(cmd, |cmd, name| cmd.mut_subcommand(name, relaxed))
}

/// Parses the command line with the environment as described in the module docs; on any error
/// (clap's or the environment's) prints it and exits with status 2, as clap does.
pub fn parse() -> Cli {
    match matches(std::env::args_os().collect(), &relevant_env()) {
        Ok(mut m) => Cli::from_arg_matches_mut(&mut m).unwrap_or_else(|e| e.exit()),
        Err(Failure::Clap(e)) => e.exit(),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    }
}

/// Why the options could not be read.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error(transparent)]
    Env(#[from] EnvError),
    #[error(transparent)]
    ConfigFile(#[from] ConfigFileError),
    /// clap's own error (also `--help` and `--version`, which are not failures to clap).
    #[error(transparent)]
    Clap(#[from] clap::Error),
}

/// The matches for `args` (program name first) with `env` (the `ENSIGN_…` and `WEB3SIGNER_…`
/// variables; clap reads the values of those it is pointed at from the process environment)
/// and the configuration file, if one is named. Public for the option-list test
/// (`tests/tests/web3signer_options.rs`).
pub fn matches(
    args: Vec<OsString>,
    env: &BTreeMap<String, OsString>,
) -> Result<clap::ArgMatches, Failure> {
    let cmd = Cli::command();
    let changes = plan(&cmd, env)?;
    let cmd = apply(cmd, changes);
    let args = join_boolean_values(&cmd, args);
    // The file's name comes from the command line or the environment; its values then become
    // defaults, and the command line is parsed again with them. The first pass requires
    // nothing, as the file may give what is required (`eth2.export.to`); when even it fails
    // (`--help`, a bad flag), the second pass says so.
    let file = relaxed(cmd.clone())
        .try_get_matches_from(&args)
        .ok()
        .and_then(|m| m.get_one::<std::path::PathBuf>("config_file").cloned());
    let cmd = match file {
        Some(path) => with_config_file(cmd, &path)?,
        None => cmd,
    };
    Ok(cmd.try_get_matches_from(&args)?)
}

/// The environment's `ENSIGN_…` and `WEB3SIGNER_…` variables, as [`matches`] takes them.
pub fn relevant_env() -> BTreeMap<String, OsString> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v)))
        .filter(|(k, _)| k.starts_with(ENSIGN_PREFIX) || k.starts_with(WEB3SIGNER_PREFIX))
        .collect()
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
            "WEB3SIGNER_ETH2_EXPORT_TO",
            "WEB3SIGNER_ETH2_IMPORT_FROM",
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

    /// `ensign <args>` with the configuration file `yaml`.
    fn with_yaml(yaml: &str, args: &[&str]) -> Result<Cli, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, yaml).unwrap();
        let cmd = with_config_file(Cli::command(), &path).map_err(|e| e.to_string())?;
        let mut m = cmd
            .try_get_matches_from(std::iter::once("ensign").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        Cli::from_arg_matches_mut(&mut m).map_err(|e| e.to_string())
    }

    #[test]
    fn a_web3signer_config_file_sets_options_below_the_command_line() {
        let yaml = "# Web3Signer's form\n\
                    http-listen-port: 9100\n\
                    key-config-path: /keys\n\
                    http-host-allowlist: [signer.example, localhost]\n\
                    metrics-enabled: true\n\
                    eth2.network: hoodi\n\
                    eth2.slashing-protection-enabled: false\n\
                    eth2.slashing-protection-db-url: \"postgresql://db.example/ensign\"\n";
        let cli = with_yaml(yaml, &["eth2"]).unwrap();
        assert_eq!(cli.global.http_listen_port, 9100);
        assert_eq!(
            cli.global.key_store_path.as_deref(),
            Some(std::path::Path::new("/keys"))
        );
        assert_eq!(
            cli.global.http_host_allowlist,
            ["signer.example", "localhost"]
        );
        assert!(cli.global.metrics_enabled);
        let crate::cli::Mode::Eth2(eth2) = &cli.mode else {
            panic!("eth2")
        };
        assert_eq!(eth2.network, "hoodi");
        assert!(!eth2.slashing_protection_enabled);
        assert_eq!(
            eth2.slashing_protection_db_url.as_deref(),
            Some("postgresql://db.example/ensign")
        );
        // The command line wins.
        let cli = with_yaml(
            yaml,
            &["--http-listen-port=9200", "eth2", "--network=sepolia"],
        )
        .unwrap();
        assert_eq!(cli.global.http_listen_port, 9200);
        let crate::cli::Mode::Eth2(eth2) = &cli.mode else {
            panic!("eth2")
        };
        assert_eq!(eth2.network, "sepolia");
        // Comma-separated lists work as on the command line.
        let cli = with_yaml("http-host-allowlist: \"a,b\"\n", &["eth2"]).unwrap();
        assert_eq!(cli.global.http_host_allowlist, ["a", "b"]);
        // An empty file sets nothing.
        assert_eq!(
            with_yaml("", &["eth2"]).unwrap().global.http_listen_port,
            9000
        );
    }

    #[test]
    fn a_config_file_with_an_unknown_key_or_value_is_refused_by_line_never_quoting_a_value() {
        let e = with_yaml(
            "http-listen-port: 9000\n\n# c\nazure-vault-enabled: true\n",
            &["eth2"],
        )
        .unwrap_err();
        assert!(
            e.contains("line 4") && e.contains("azure-vault-enabled"),
            "{e}"
        );
        // An eth2 option without its scope is not that option.
        let e = with_yaml("network: hoodi\n", &["eth2"]).unwrap_err();
        assert!(e.contains("line 1") && e.contains("\"network\""), "{e}");
        let e = with_yaml("eth2.network: {a: 1}\n", &["eth2"]).unwrap_err();
        assert!(e.contains("must be a value"), "{e}");
        let e = with_yaml("key-store-path: /a\nkey-config-path: /b\n", &["eth2"]).unwrap_err();
        assert!(e.contains("same option"), "{e}");
        let e = with_yaml("config-file: other.yaml\n", &["eth2"]).unwrap_err();
        assert!(e.contains("unknown option"), "{e}");
        let e = with_yaml("- a\n- b\n", &["eth2"]).unwrap_err();
        assert!(e.contains("mapping"), "{e}");
        let e = with_yaml(
            "eth2.slashing-protection-db-password: \"hunter2\n  x: [",
            &["eth2"],
        )
        .unwrap_err();
        assert!(e.contains("not YAML") && !e.contains("hunter2"), "{e}");
        // A value clap refuses is clap's error, naming the option.
        let e = with_yaml("http-listen-port: many\n", &["eth2"]).unwrap_err();
        assert!(e.contains("--http-listen-port"), "{e}");
    }

    #[test]
    fn boolean_options_take_a_following_true_or_false_as_web3signer_does() {
        let parse = |args: &[&str]| {
            let cmd = Cli::command();
            let args = join_boolean_values(&cmd, args.iter().map(OsString::from).collect());
            let mut m = cmd.try_get_matches_from(args).map_err(|e| e.to_string())?;
            Cli::from_arg_matches_mut(&mut m).map_err(|e| e.to_string())
        };
        let cli = parse(&["ensign", "--metrics-enabled", "TRUE", "eth2"]).unwrap();
        assert!(cli.global.metrics_enabled);
        let cli = parse(&[
            "ensign",
            "eth2",
            "--slashing-protection-enabled",
            "false",
            "--enable-key-manager-api",
            "true",
        ])
        .unwrap();
        let crate::cli::Mode::Eth2(eth2) = &cli.mode else {
            panic!("eth2")
        };
        assert!(!eth2.slashing_protection_enabled && eth2.key_manager_api_enabled);
        // The bare flag before the subcommand stays a flag.
        let cli = parse(&["ensign", "--metrics-enabled", "eth2"]).unwrap();
        assert!(cli.global.metrics_enabled);
        // Not a boolean option: the next word is left alone.
        assert!(parse(&["ensign", "--logging", "true", "eth2"]).is_ok());
        // `-l` is `--logging`.
        let cli = parse(&["ensign", "-l", "DEBUG", "eth2"]).unwrap();
        assert_eq!(cli.global.logging, "DEBUG");
    }

    #[test]
    fn export_and_import_options_come_from_variables_and_the_file_too() {
        let cli = with_yaml("eth2.export.to: /tmp/out.json\n", &["eth2", "export"]).unwrap();
        let crate::cli::Mode::Eth2(eth2) = &cli.mode else {
            panic!("eth2")
        };
        assert!(matches!(
            &eth2.command,
            Some(crate::cli::Eth2Command::Export { to }) if to == std::path::Path::new("/tmp/out.json")
        ));
        assert_eq!(
            planned(&[("WEB3SIGNER_ETH2_IMPORT_FROM", "/tmp/in.json")]),
            Ok(vec![("from".into(), "WEB3SIGNER_ETH2_IMPORT_FROM".into())])
        );
        // The relaxed first pass finds the file even when the command line lacks --to.
        let m = relaxed(Cli::command())
            .try_get_matches_from(["ensign", "--config-file", "f.yaml", "eth2", "export"])
            .unwrap();
        assert_eq!(
            m.get_one::<std::path::PathBuf>("config_file"),
            Some(&std::path::PathBuf::from("f.yaml"))
        );
    }
}
