//! Starting, watching and terminating the enclave: `nitro-cli` on a Nitro
//! instance, or a plain child process (`--run-command`) anywhere else.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde::Deserialize;
use tokio::process::{Child, Command};

/// How long `nitro-cli run-enclave` may take (it allocates and pins the
/// enclave's memory first).
const NITRO_RUN_TIMEOUT: Duration = Duration::from_secs(180);
/// How long other nitro-cli commands may take.
const NITRO_CMD_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a `--run-command` process group gets between SIGTERM and SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(5);

/// `nitro-cli run-enclave` parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NitroConfig {
    pub nitro_cli: PathBuf,
    pub eif: PathBuf,
    pub cpus: u32,
    pub memory_mib: u64,
    pub cid: u32,
    pub debug_mode: bool,
    pub name: String,
}

impl NitroConfig {
    /// The `run-enclave` arguments.
    pub fn run_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            "run-enclave".into(),
            "--eif-path".into(),
            self.eif.clone().into(),
            "--cpu-count".into(),
            self.cpus.to_string().into(),
            "--memory".into(),
            self.memory_mib.to_string().into(),
            "--enclave-cid".into(),
            self.cid.to_string().into(),
            "--enclave-name".into(),
            self.name.clone().into(),
        ];
        if self.debug_mode {
            args.push("--debug-mode".into());
        }
        args
    }
}

/// How the enclave is started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LauncherConfig {
    Nitro(NitroConfig),
    /// `sh -c <command>` (tests, off-enclave).
    Command {
        command: String,
    },
}

/// Why an enclave could not be started.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("nitro-cli run-enclave failed ({status}): {stderr}")]
    NitroFailed { status: String, stderr: String },
    #[error("nitro-cli run-enclave timed out")]
    NitroTimeout,
    #[error("cannot read nitro-cli's answer: {0}")]
    NitroOutput(String),
}

/// One entry of `nitro-cli describe-enclaves` / the `run-enclave` answer
/// (fields as in nitro-cli's JSON output).
#[derive(Debug, Deserialize, PartialEq, Eq)]
pub struct NitroEnclaveInfo {
    #[serde(rename = "EnclaveName", default)]
    pub name: Option<String>,
    #[serde(rename = "EnclaveID")]
    pub id: String,
    #[serde(rename = "EnclaveCID", default)]
    pub cid: Option<u64>,
    #[serde(rename = "State", default)]
    pub state: Option<String>,
}

/// The JSON value in nitro-cli's standard output. It may print progress
/// lines first (which can contain brackets, e.g. `cpu-ids: [1, 3]`), so the
/// first position from which a `T` parses wins.
pub fn parse_nitro_json<T: serde::de::DeserializeOwned>(stdout: &str) -> Result<T, String> {
    let mut first_error = None;
    for (at, _) in stdout.match_indices(['{', '[']) {
        let mut it = serde_json::Deserializer::from_str(&stdout[at..]).into_iter::<T>();
        match it.next() {
            Some(Ok(v)) => return Ok(v),
            Some(Err(e)) => {
                first_error.get_or_insert_with(|| e.to_string());
            }
            None => {}
        }
    }
    Err(first_error.unwrap_or_else(|| "no JSON in nitro-cli's output".to_owned()))
}

/// Starts enclaves.
#[derive(Debug)]
pub struct Launcher {
    config: LauncherConfig,
    env: Vec<(String, String)>,
}

impl Launcher {
    /// `env`: variables for a `--run-command` process.
    pub fn new(config: LauncherConfig, env: Vec<(String, String)>) -> Self {
        Self { config, env }
    }

    /// Before the first start: terminate an enclave of our name left by an
    /// earlier host process (its keys were delivered by that process; this
    /// one starts from a clean enclave).
    pub async fn clear_leftover(&self) {
        let LauncherConfig::Nitro(nitro) = &self.config else {
            return;
        };
        let Ok(enclaves) = describe_enclaves(nitro).await else {
            return;
        };
        for e in enclaves {
            if e.name.as_deref() == Some(nitro.name.as_str()) {
                tracing::warn!(enclave_id = %e.id, name = %nitro.name,
                    "terminating an enclave left by an earlier ensign-host");
                terminate_nitro(nitro, &e.id).await;
            }
        }
    }

    pub async fn start(&self) -> Result<Enclave, LaunchError> {
        match &self.config {
            LauncherConfig::Nitro(nitro) => {
                let mut cmd = Command::new(&nitro.nitro_cli);
                cmd.args(nitro.run_args())
                    .stdin(Stdio::null())
                    .kill_on_drop(true);
                let out = tokio::time::timeout(NITRO_RUN_TIMEOUT, cmd.output())
                    .await
                    .map_err(|_| LaunchError::NitroTimeout)?
                    .map_err(|source| LaunchError::Spawn {
                        program: nitro.nitro_cli.display().to_string(),
                        source,
                    })?;
                if !out.status.success() {
                    return Err(LaunchError::NitroFailed {
                        status: out.status.to_string(),
                        stderr: tail(&String::from_utf8_lossy(&out.stderr)),
                    });
                }
                let info: NitroEnclaveInfo =
                    parse_nitro_json(&String::from_utf8_lossy(&out.stdout))
                        .map_err(LaunchError::NitroOutput)?;
                Ok(Enclave::Nitro {
                    config: nitro.clone(),
                    id: info.id,
                })
            }
            LauncherConfig::Command { command } => {
                let mut cmd = Command::new("sh");
                cmd.arg("-c")
                    .arg(command)
                    .envs(self.env.iter().map(|(k, v)| (k, v)))
                    .stdin(Stdio::null())
                    // Its own process group, so terminating it reaches every
                    // process the shell started.
                    .process_group(0)
                    .kill_on_drop(true);
                let child = cmd.spawn().map_err(|source| LaunchError::Spawn {
                    program: "sh".into(),
                    source,
                })?;
                let pid = child.id();
                Ok(Enclave::Process { child, pid })
            }
        }
    }
}

fn tail(s: &str) -> String {
    let s = s.trim();
    let start = s.char_indices().rev().nth(999).map_or(0, |(i, _)| i);
    s[start..].to_owned()
}

async fn describe_enclaves(nitro: &NitroConfig) -> Result<Vec<NitroEnclaveInfo>, String> {
    let mut cmd = Command::new(&nitro.nitro_cli);
    cmd.arg("describe-enclaves")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(NITRO_CMD_TIMEOUT, cmd.output())
        .await
        .map_err(|_| "nitro-cli describe-enclaves timed out".to_owned())?
        .map_err(|e| format!("cannot run {}: {e}", nitro.nitro_cli.display()))?;
    if !out.status.success() {
        return Err(format!(
            "nitro-cli describe-enclaves failed ({}): {}",
            out.status,
            tail(&String::from_utf8_lossy(&out.stderr))
        ));
    }
    parse_nitro_json(&String::from_utf8_lossy(&out.stdout))
}

async fn terminate_nitro(nitro: &NitroConfig, id: &str) {
    let mut cmd = Command::new(&nitro.nitro_cli);
    cmd.args(["terminate-enclave", "--enclave-id", id])
        .stdin(Stdio::null())
        .kill_on_drop(true);
    match tokio::time::timeout(NITRO_CMD_TIMEOUT, cmd.output()).await {
        Ok(Ok(out)) if out.status.success() => {
            tracing::info!(enclave_id = %id, "enclave terminated")
        }
        Ok(Ok(out)) => tracing::warn!(enclave_id = %id, status = %out.status,
            stderr = %tail(&String::from_utf8_lossy(&out.stderr)),
            "nitro-cli terminate-enclave failed"),
        Ok(Err(e)) => tracing::warn!(enclave_id = %id, error = %e, "cannot run nitro-cli"),
        Err(_) => tracing::warn!(enclave_id = %id, "nitro-cli terminate-enclave timed out"),
    }
}

/// A started enclave.
#[derive(Debug)]
pub enum Enclave {
    Nitro {
        config: NitroConfig,
        id: String,
    },
    Process {
        child: Child,
        /// Kept for logs after the child has been reaped.
        pid: Option<u32>,
    },
}

impl Enclave {
    /// For logs: the enclave id or the process id.
    pub fn describe(&self) -> String {
        match self {
            Enclave::Nitro { id, .. } => format!("enclave {id}"),
            Enclave::Process { pid, .. } => match pid {
                Some(pid) => format!("process {pid}"),
                None => "process".to_owned(),
            },
        }
    }

    /// `Err(why)` if the enclave is known to be gone. A nitro-cli that
    /// cannot be asked is not taken as an answer (the control port decides).
    pub async fn check_alive(&mut self) -> Result<(), String> {
        match self {
            Enclave::Nitro { config, id } => match describe_enclaves(config).await {
                Ok(list) => match list.iter().find(|e| &e.id == id) {
                    Some(e)
                        if e.state
                            .as_deref()
                            .is_none_or(|s| s.eq_ignore_ascii_case("running")) =>
                    {
                        Ok(())
                    }
                    Some(e) => Err(format!(
                        "nitro-cli reports enclave {id} as {}",
                        e.state.as_deref().unwrap_or("?")
                    )),
                    None => Err(format!("nitro-cli no longer lists enclave {id}")),
                },
                Err(e) => {
                    tracing::warn!(error = %e, "cannot ask nitro-cli about the enclave");
                    Ok(())
                }
            },
            Enclave::Process { child, .. } => match child.try_wait() {
                Ok(None) => Ok(()),
                Ok(Some(status)) => Err(format!("the enclave process exited ({status})")),
                Err(e) => Err(format!("cannot check the enclave process: {e}")),
            },
        }
    }

    /// Resolves when the enclave process exits (never for nitro-cli
    /// enclaves, which [`Self::check_alive`] watches).
    pub async fn exited(&mut self) -> String {
        match self {
            Enclave::Nitro { .. } => std::future::pending().await,
            Enclave::Process { child, .. } => match child.wait().await {
                Ok(status) => format!("the enclave process exited ({status})"),
                Err(e) => {
                    // Not waitable: report it once, then behave as running
                    // (the control port decides).
                    tracing::warn!(error = %e, "cannot wait for the enclave process");
                    std::future::pending().await
                }
            },
        }
    }

    /// Stop the enclave: `nitro-cli terminate-enclave`, or SIGTERM to the
    /// process group, SIGKILL after a grace period.
    pub async fn terminate(&mut self) {
        match self {
            Enclave::Nitro { config, id } => terminate_nitro(config, id).await,
            Enclave::Process { child, .. } => {
                let Some(pid) = child.id() else {
                    // Already reaped; its group may live on.
                    return;
                };
                let Ok(raw) = i32::try_from(pid) else { return };
                let group = Pid::from_raw(raw);
                let _ = killpg(group, Signal::SIGTERM);
                match tokio::time::timeout(TERM_GRACE, child.wait()).await {
                    Ok(_) => {}
                    Err(_) => tracing::warn!(pid, "enclave process ignored SIGTERM; killing it"),
                }
                // Whatever is left of the group (the shell's children).
                let _ = killpg(group, Signal::SIGKILL);
                let _ = child.wait().await;
                tracing::info!(pid, "enclave process terminated");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_enclave_arguments() {
        let mut n = NitroConfig {
            nitro_cli: "nitro-cli".into(),
            eif: "/opt/ensign/ensign.eif".into(),
            cpus: 2,
            memory_mib: 2048,
            cid: 16,
            debug_mode: false,
            name: "ensign".into(),
        };
        let join = |n: &NitroConfig| {
            n.run_args()
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert_eq!(
            join(&n),
            "run-enclave --eif-path /opt/ensign/ensign.eif --cpu-count 2 --memory 2048 \
             --enclave-cid 16 --enclave-name ensign"
        );
        n.debug_mode = true;
        assert!(join(&n).ends_with(" --debug-mode"));
    }

    #[test]
    fn nitro_cli_output() {
        // run-enclave prints progress lines, then the JSON object.
        let run = "Start allocating memory...\nStarted enclave with enclave-cid: 16, memory: 2048 MiB, cpu-ids: [1, 3]\n{\n  \"EnclaveName\": \"ensign\",\n  \"EnclaveID\": \"i-0abc-enc0def\",\n  \"ProcessID\": 4242,\n  \"EnclaveCID\": 16,\n  \"NumberOfCPUs\": 2,\n  \"CPUIDs\": [1, 3],\n  \"MemoryMiB\": 2048\n}\n";
        let info: NitroEnclaveInfo = parse_nitro_json(run).unwrap();
        assert_eq!(info.id, "i-0abc-enc0def");
        assert_eq!(info.cid, Some(16));
        let described = "[{\"EnclaveName\":\"ensign\",\"EnclaveID\":\"i-0abc-enc0def\",\"ProcessID\":1,\"EnclaveCID\":16,\"NumberOfCPUs\":2,\"CPUIDs\":[1,3],\"MemoryMiB\":2048,\"State\":\"RUNNING\",\"Flags\":\"NONE\"}]";
        let list: Vec<NitroEnclaveInfo> = parse_nitro_json(described).unwrap();
        assert_eq!(list[0].state.as_deref(), Some("RUNNING"));
        assert_eq!(list[0].name.as_deref(), Some("ensign"));
        let empty: Vec<NitroEnclaveInfo> = parse_nitro_json("[]").unwrap();
        assert!(empty.is_empty());
        assert!(parse_nitro_json::<NitroEnclaveInfo>("error").is_err());
    }

    #[tokio::test]
    async fn a_command_enclave_is_watched_and_terminated() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("bg.pid");
        let launcher = Launcher::new(
            LauncherConfig::Command {
                // A child of the shell too: terminate must reach the group.
                command: format!(
                    "sleep 600 & echo $! > {}; exec sleep 600",
                    pid_file.display()
                ),
            },
            vec![],
        );
        let mut enclave = launcher.start().await.unwrap();
        assert!(enclave.check_alive().await.is_ok());
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let bg: i32 = loop {
            if let Some(pid) = std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                break pid;
            }
            assert!(std::time::Instant::now() < deadline, "no pid file");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        enclave.terminate().await;
        assert!(enclave.check_alive().await.is_err());
        // The background child is gone too (reaped by init once killed).
        loop {
            // Gone, or a zombie waiting for a reaper (PID 1 in a container
            // may not reap): either way no longer running.
            let stat = std::fs::read_to_string(format!("/proc/{bg}/stat")).unwrap_or_default();
            let state = stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .chars()
                .next();
            if matches!(state, None | Some('Z') | Some('X')) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the shell's background child survived terminate()"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        let quick = Launcher::new(
            LauncherConfig::Command {
                command: "exit 3".into(),
            },
            vec![],
        );
        let mut enclave = quick.start().await.unwrap();
        let why = enclave.exited().await;
        assert!(why.contains("exit status: 3"), "{why}");
    }
}
