//! Web3Signer's option list (`tests/web3signer/options.tsv`, kept as data with its source) against
//! ensign's parser (issue 17): every option marked `accepted` reaches ensign from the command
//! line, from its `WEB3SIGNER_…` variable and from `--config-file`, with the value given; every
//! option marked `unsupported` is refused by the parser (flag and variable alike) and listed in
//! the README's "Web3Signer options ensign does not have" with why.
//!
//! One test in this file on purpose: it sets process environment variables (clap reads option
//! values from the environment itself), which no other test in this binary may see.

use std::collections::BTreeMap;
use std::ffi::OsString;

use clap::CommandFactory;
use server::cli::Cli;
use server::cli_sources::{matches, Failure};

struct Row {
    /// `[]` for a global option, `["eth2"]`, `["eth2", "export"]`, …
    scope: Vec<String>,
    name: String,
    value: String,
    accepted: bool,
    /// An option that must come with this one (on the command line, at the same scope).
    with: Option<String>,
}

fn rows() -> Vec<Row> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/web3signer/options.tsv");
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            assert!(f.len() == 4 || f.len() == 5, "{l}");
            let scope = match f[0] {
                "global" => vec![],
                s => s.split('.').map(str::to_owned).collect(),
            };
            let accepted = match f[3] {
                "accepted" => true,
                "unsupported" => false,
                other => panic!("status {other:?} in {l}"),
            };
            Row {
                scope,
                name: f[1].into(),
                value: f[2].into(),
                accepted,
                with: f.get(4).map(|w| w.to_string()),
            }
        })
        .collect()
}

/// The clap id of option `name` (long name or alias) in the subcommand at `scope`.
fn arg_id(scope: &[String], name: &str) -> Option<String> {
    let mut cmd = Cli::command();
    for sub in scope {
        cmd = cmd.find_subcommand(sub)?.clone();
    }
    let arg = cmd.get_arguments().find(|a| {
        a.get_long() == Some(name) || a.get_all_aliases().unwrap_or_default().contains(&name)
    })?;
    Some(arg.get_id().to_string())
}

/// The raw values of option `id` in the matches of the subcommand at `scope`.
fn raw(m: &clap::ArgMatches, scope: &[String], id: &str) -> Vec<String> {
    let mut m = m;
    for sub in scope {
        m = m
            .subcommand_matches(sub)
            .unwrap_or_else(|| panic!("no {sub}"));
    }
    m.get_raw(id)
        .map(|v| v.map(|s| s.to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

/// `ensign [options] eth2 … [options]`: the options given on the command line at their scope.
fn command_line(scope: &[String], options: &[&str]) -> Vec<OsString> {
    let mut args = vec!["ensign".to_string()];
    let options = options.iter().map(|o| o.to_string());
    if scope.is_empty() {
        args.extend(options);
        args.push("eth2".into());
    } else {
        args.extend(scope.iter().cloned());
        args.extend(options);
    }
    args.into_iter().map(OsString::from).collect()
}

fn variable(scope: &[String], name: &str) -> String {
    let mut parts = vec!["WEB3SIGNER".to_string()];
    parts.extend(scope.iter().map(|s| s.to_ascii_uppercase()));
    parts.push(name.to_ascii_uppercase().replace('-', "_"));
    parts.join("_")
}

#[test]
fn every_web3signer_option_is_accepted_from_all_three_sources_or_listed_as_unsupported() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let heading = "#### Web3Signer options ensign does not have";
    let start = readme.find(heading).expect("README section");
    let section = &readme[start + heading.len()..];
    let section = &section[..section.find("\n#").unwrap_or(section.len())];
    let dir = tempfile::TempDir::new().unwrap();
    let (mut accepted, mut unsupported) = (0, 0);
    for row in rows() {
        let Row {
            scope,
            name,
            value,
            accepted: is_accepted,
            with,
        } = &row;
        let with: Vec<&str> = with.iter().map(String::as_str).collect();
        let flag = format!("--{name}={value}");
        let var = variable(scope, name);
        if !is_accepted {
            unsupported += 1;
            assert!(
                section.contains(&format!("`--{name}`")),
                "README does not list --{name} as unsupported"
            );
            let refused = matches(
                command_line(scope, &[&with[..], &[flag.as_str()]].concat()),
                &BTreeMap::new(),
            );
            assert!(
                matches!(refused, Err(Failure::Clap(_))),
                "--{name} accepted"
            );
            let env = BTreeMap::from([(var.clone(), OsString::from(value))]);
            let refused = matches(command_line(scope, &with), &env);
            assert!(matches!(refused, Err(Failure::Env(_))), "{var} accepted");
            continue;
        }
        accepted += 1;
        if name == "config-file" {
            continue; // the source of the third test itself (tests/tests/web3signer_env.rs)
        }
        let id = arg_id(scope, name).unwrap_or_else(|| panic!("no option --{name}"));
        let want = vec![value.clone()];

        let m = matches(
            command_line(scope, &[&with[..], &[flag.as_str()]].concat()),
            &BTreeMap::new(),
        )
        .unwrap_or_else(|e| panic!("{flag}: {e}"));
        assert_eq!(raw(&m, scope, &id), want, "{flag}");

        std::env::set_var(&var, value);
        let env = BTreeMap::from([(var.clone(), OsString::from(value))]);
        let m = matches(command_line(scope, &with), &env);
        std::env::remove_var(&var);
        let m = m.unwrap_or_else(|e| panic!("{var}: {e}"));
        assert_eq!(raw(&m, scope, &id), want, "{var}");

        let key = scope
            .iter()
            .cloned()
            .chain([name.clone()])
            .collect::<Vec<_>>()
            .join(".");
        let file = dir.path().join(format!("{key}.yaml"));
        std::fs::write(&file, format!("{key}: {}\n", serde_json::json!(value))).unwrap();
        let mut args = vec![
            OsString::from("ensign"),
            "--config-file".into(),
            file.clone().into(),
        ];
        args.extend(command_line(scope, &with).into_iter().skip(1));
        let m = matches(args, &BTreeMap::new()).unwrap_or_else(|e| panic!("{key}: {e}"));
        assert_eq!(raw(&m, scope, &id), want, "config file {key}");
    }
    // The whole list was checked (Web3Signer's visible eth2 options; aliases as rows of
    // their own; -h/-V left out).
    assert_eq!((accepted, unsupported), (41, 42));
}
