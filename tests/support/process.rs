//! A `sluice run` subprocess, for the suites that need a real process (its logs, its exit):
//! the config written to a file in its own directory, stderr (the logs) in `sluice.log`,
//! ready once its admin listener answers `/readyz`, killed on drop.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `sluice run -c <dir>/sluice.toml`.
pub struct SluiceProcess {
    child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub log: PathBuf,
    pub dir: tempfile::TempDir,
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
        let conf = dir.path().join("sluice.toml");
        std::fs::write(&conf, config).unwrap_or_else(|e| panic!("{e}"));
        let log = dir.path().join("sluice.log");
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
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let probe = b"GET /readyz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n";
            if raw(p.admin, probe).starts_with("HTTP/1.1 200") {
                return p;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("gateway not ready: {}", p.logs());
    }

    /// What it logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for SluiceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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
