//! The org, role, user, keys and `[[filters]]` most suites need, built rather than copied: one
//! org `acme`, one role, the user `alice` in it, her keys (each with optional extra fields such
//! as a `rate_limit`), then the filters in chain order.
//!
//! ```ignore
//! let toml = Directory::role("dev", &["chat"], &["mock-*"])
//!     .key_with("limited", KEY, "rate_limit = { requests_per_minute = 20 }")
//!     .filters(&["auth", "rate_limit"])
//!     .toml();
//! ```

use sluice::filters::auth::key_sha256_hex;

pub struct Directory {
    role: String,
    permissions: Vec<String>,
    models: Vec<String>,
    agents: Vec<String>,
    keys: Vec<(String, String, String)>,
    filters: Vec<String>,
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn toml_list(v: &[String]) -> String {
    let quoted: Vec<String> = v.iter().map(|s| format!("{s:?}")).collect();
    format!("[{}]", quoted.join(", "))
}

impl Directory {
    /// The role `name` with these permissions and model globs.
    pub fn role(name: &str, permissions: &[&str], models: &[&str]) -> Directory {
        Directory {
            role: name.to_string(),
            permissions: strings(permissions),
            models: strings(models),
            agents: Vec::new(),
            keys: Vec::new(),
            filters: Vec::new(),
        }
    }

    /// The agent ids (globs) the role may run.
    pub fn agents(mut self, globs: &[&str]) -> Directory {
        self.agents = strings(globs);
        self
    }

    /// A key of alice's: `id`, and the key itself (its SHA-256 goes in the config).
    pub fn key(self, id: &str, key: &str) -> Directory {
        self.key_with(id, key, "")
    }

    /// The same, with more fields of the `[[keys]]` entry (TOML lines).
    pub fn key_with(mut self, id: &str, key: &str, extra: &str) -> Directory {
        self.keys
            .push((id.to_string(), key_sha256_hex(key), extra.to_string()));
        self
    }

    /// The `[[filters]]` entries, in chain order (types only).
    pub fn filters(mut self, types: &[&str]) -> Directory {
        self.filters = strings(types);
        self
    }

    pub fn toml(&self) -> String {
        let mut t = format!(
            "[[orgs]]\nname = \"acme\"\n[[roles]]\nname = {:?}\npermissions = {}\nmodels = {}\n",
            self.role,
            toml_list(&self.permissions),
            toml_list(&self.models)
        );
        if !self.agents.is_empty() {
            t.push_str(&format!("agents = {}\n", toml_list(&self.agents)));
        }
        t.push_str(&format!(
            "[[users]]\nname = \"alice\"\norg = \"acme\"\nrole = {:?}\n",
            self.role
        ));
        for (id, sha, extra) in &self.keys {
            t.push_str(&format!(
                "[[keys]]\nid = {id:?}\nuser = \"alice\"\nsha256 = \"{sha}\"\n{extra}\n"
            ));
        }
        for f in &self.filters {
            t.push_str(&format!("[[filters]]\ntype = {f:?}\n"));
        }
        t
    }
}
