//! A `sluice run` subprocess, for the suites that need a real process (its logs, its exit, a
//! signal, a restart): the config written to `sluice.toml` in a directory, stderr (the logs) in
//! `sluice.log` next to it, ready once its admin listener answers `/readyz`, killed on drop.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

/// Where the process's files live: a directory it owns (removed with it) or the test's.
enum Dir {
    Owned(tempfile::TempDir),
    Borrowed(PathBuf),
}

/// A running `sluice run -c <dir>/sluice.toml`.
pub struct SluiceProcess {
    child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub log: PathBuf,
    _dir: Dir,
    wait_on_drop: bool,
}

impl SluiceProcess {
    /// Starts Sluice on `config` (listening on `port`, admin on `admin`) with `env` set, and
    /// waits up to 30 s for it to be ready (panics with its log otherwise).
    pub fn spawn(
        dir: tempfile::TempDir,
        config: &str,
        (port, admin): (u16, u16),
        env: &[(&str, &str)],
    ) -> SluiceProcess {
        let path = dir.path().to_path_buf();
        Self::start(&path, Dir::Owned(dir), config, (port, admin), env)
    }

    /// Starts Sluice in the test's directory `dir` on free ports: `[server]` with `listen`,
    /// `admin_listen` and the `server` keys given (TOML lines), then `body`. Starting again in
    /// the same directory (a restart) overwrites the config and the log.
    pub fn run_in(dir: &Path, server: &str, body: &str) -> SluiceProcess {
        let (port, admin) = (free_port(), free_port());
        let config = format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin}\"\n{server}\n{body}"
        );
        Self::start(dir, Dir::Borrowed(dir.into()), &config, (port, admin), &[])
    }

    fn start(
        at: &Path,
        dir: Dir,
        config: &str,
        (port, admin): (u16, u16),
        env: &[(&str, &str)],
    ) -> SluiceProcess {
        let conf = at.join("sluice.toml");
        std::fs::write(&conf, config).unwrap_or_else(|e| panic!("{e}"));
        let log = at.join("sluice.log");
        let err = std::fs::File::create(&log).unwrap_or_else(|e| panic!("{e}"));
        let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["run", "-c"])
            .arg(&conf)
            .env("RUST_LOG", "debug")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("{e}"));
        let p = SluiceProcess {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            admin: SocketAddr::from(([127, 0, 0, 1], admin)),
            log,
            _dir: dir,
            wait_on_drop: true,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if p.ready() {
                return p;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("gateway not ready: {}", p.logs());
    }

    /// Its admin listener answers `/readyz` with 200.
    pub fn ready(&self) -> bool {
        let probe = b"GET /readyz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n";
        raw(self.admin, probe).starts_with("HTTP/1.1 200")
    }

    /// `host:port` of the public listener.
    pub fn listen(&self) -> String {
        self.addr.to_string()
    }

    /// `http://host:port` of the public listener.
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, and wait for it to be gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for it to exit by itself (after a signal the test sent).
    pub fn wait(&mut self) -> ExitStatus {
        self.child.wait().unwrap_or_else(|e| panic!("{e}"))
    }

    /// On drop, SIGKILL without waiting: a process blocked on a frozen filesystem dies only
    /// once it thaws, which happens after this is dropped.
    pub fn dont_wait_on_drop(mut self) -> SluiceProcess {
        self.wait_on_drop = false;
        self
    }

    /// What it logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for SluiceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        if self.wait_on_drop {
            let _ = self.child.wait();
        }
    }
}

/// Sends bytes on a fresh connection and reads the answer until the server closes (bounded).
pub fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).to_string()
}
