//! The real OpenID provider of the identity tests (tests/oidc/provider.mjs, the certified
//! `oidc-provider` package) on a free loopback port, stopped when dropped. `npm ci` in
//! tests/oidc installs it (scripts/test.sh does).
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct OidcProvider {
    child: Child,
    _dir: tempfile::TempDir,
    pub issuer: String,
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

impl OidcProvider {
    pub fn start(port: u16) -> OidcProvider {
        let oidc = repo().join("tests/oidc");
        assert!(
            oidc.join("node_modules/oidc-provider").is_dir(),
            "the OpenID provider is not installed: run `npm ci` in tests/oidc (scripts/test.sh does)"
        );
        let dir = tempfile::tempdir().expect("tmp");
        let child = Command::new("node")
            .arg(oidc.join("provider.mjs"))
            .arg(port.to_string())
            .arg(dir.path().join("keys.json"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run node (is Node.js installed?): {e}"));
        let issuer = format!("http://127.0.0.1:{port}");
        let p = OidcProvider {
            child,
            _dir: dir,
            issuer,
        };
        // It starts in well under a second here; the bound is for a machine under load.
        let deadline = Instant::now() + Duration::from_secs(60);
        let http = reqwest::blocking::Client::new();
        while Instant::now() < deadline {
            let url = format!("{}/.well-known/openid-configuration", p.issuer);
            if http.get(url).send().is_ok_and(|r| r.status().is_success()) {
                return p;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the OpenID provider did not start within 60 s");
    }

    /// A JWT access token for the client credentials client `client` (`svc-eng`: groups
    /// `eng`; `svc-admin`: `ml-platform-admins`; `svc-marketing`: `marketing`).
    pub fn client_token(&self, client: &str) -> String {
        let r = reqwest::blocking::Client::new()
            .post(format!("{}/token", self.issuer))
            .basic_auth(client, Some(format!("{client}-secret")))
            .form(&[
                ("grant_type", "client_credentials"),
                ("scope", "api"),
                ("resource", "https://sluice.test/api"),
            ])
            .send()
            .expect("token request");
        assert!(r.status().is_success(), "token: {}", r.status());
        let v: serde_json::Value = r.json().expect("token JSON");
        v["access_token"]
            .as_str()
            .expect("access_token")
            .to_string()
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
