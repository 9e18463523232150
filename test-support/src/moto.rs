//! moto's server as a local AWS stand-in for tests.
//!
//! [`Moto::start`] installs moto into the project-local virtualenv through
//! `scripts/moto-server --install` (once per test process; the script pins
//! the version), runs its `moto_server` on a free loopback port and waits
//! until the port accepts connections. The server is killed on drop.
//!
//! `ENSIGN_MOTO_SERVER=/path/to/moto_server` skips the install step. If moto
//! cannot be installed or started, `start` panics when `ENSIGN_REQUIRE_MOTO`
//! is set (CI) and otherwise prints `SKIPPED: ...` and returns `None`.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long moto gets to open its port.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Moto {
    child: Child,
    pub port: u16,
    pub url: String,
}

/// The `moto_server` executable, or why there is none.
fn moto_binary() -> &'static Result<PathBuf, String> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("ENSIGN_MOTO_SERVER") {
            return Ok(PathBuf::from(bin));
        }
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/moto-server");
        let out = Command::new("bash")
            .arg(&script)
            .arg("--install")
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        if !out.status.success() {
            return Err(format!(
                "{} --install failed ({})",
                script.display(),
                out.status
            ));
        }
        let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let path = PathBuf::from(path.lines().last().unwrap_or_default());
        if path.is_file() {
            Ok(path)
        } else {
            Err(format!("moto_server not found at `{}`", path.display()))
        }
    })
}

fn unavailable(why: &str) -> Option<Moto> {
    if std::env::var_os("ENSIGN_REQUIRE_MOTO").is_some() {
        panic!("moto server unavailable and ENSIGN_REQUIRE_MOTO is set: {why}");
    }
    eprintln!("\n*** SKIPPED: moto server unavailable ({why}); set ENSIGN_REQUIRE_MOTO=1 to fail instead ***\n");
    None
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().unwrap().port()
}

impl Moto {
    pub fn start() -> Option<Moto> {
        let bin = match moto_binary() {
            Ok(b) => b.clone(),
            Err(e) => return unavailable(e),
        };
        // Two tries: another process could take the port between our
        // probe and moto's bind.
        let mut last = String::new();
        for _ in 0..2 {
            let port = free_port();
            let child = Command::new(&bin)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn();
            let child = match child {
                Ok(c) => c,
                Err(e) => return unavailable(&format!("cannot run {}: {e}", bin.display())),
            };
            let mut moto = Moto {
                child,
                port,
                url: format!("http://127.0.0.1:{port}"),
            };
            match moto.wait_ready() {
                Ok(()) => return Some(moto),
                Err(e) => last = e, // `moto` is dropped (killed) here
            }
        }
        unavailable(&last)
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + READY_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("moto_server exited early ({status})"));
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!(
            "moto_server did not open port {} within {READY_TIMEOUT:?}",
            self.port
        ))
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
