//! The orgs, roles, users, keys and `[[filters]]` most suites need, built rather than copied:
//! the org `acme`, a first role, the user `alice` in acme with that role, her keys (each with
//! optional extra fields such as a `rate_limit`), then the filters in chain order. More orgs,
//! roles, users and other users' keys are added the same way.
//!
//! ```ignore
//! let toml = Directory::role("dev", &["chat"], &["mock-*"])
//!     .key_with("limited", KEY, "rate_limit = { requests_per_minute = 20 }")
//!     .also_role("lister", &["models:list"], &["*"])
//!     .user("bob", "acme", "lister")
//!     .key_of("bob", "bob-key", BOB, "")
//!     .filters(&["auth", "rate_limit"])
//!     .toml();
//! ```

use sluice::filters::auth::key_sha256_hex;

struct Role {
    name: String,
    permissions: Vec<String>,
    models: Vec<String>,
    agents: Vec<String>,
    extra: String,
}

struct User {
    name: String,
    org: String,
    role: String,
    extra: String,
}

struct Key {
    user: String,
    id: String,
    sha256: String,
    extra: String,
}

pub struct Directory {
    orgs: Vec<String>,
    roles: Vec<Role>,
    users: Vec<User>,
    keys: Vec<Key>,
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
    /// The role `name` with these permissions and model globs, held by alice of acme.
    pub fn role(name: &str, permissions: &[&str], models: &[&str]) -> Directory {
        Directory {
            orgs: vec!["acme".into()],
            roles: Vec::new(),
            users: vec![User {
                name: "alice".into(),
                org: "acme".into(),
                role: name.into(),
                extra: String::new(),
            }],
            keys: Vec::new(),
            filters: Vec::new(),
        }
        .also_role(name, permissions, models)
    }

    /// Another role (nobody holds it until a [`Directory::user`] does).
    pub fn also_role(mut self, name: &str, permissions: &[&str], models: &[&str]) -> Directory {
        self.roles.push(Role {
            name: name.into(),
            permissions: strings(permissions),
            models: strings(models),
            agents: Vec::new(),
            extra: String::new(),
        });
        self
    }

    /// More fields of the last role added (TOML lines), e.g. its `mcp` globs.
    pub fn role_fields(mut self, extra: &str) -> Directory {
        if let Some(r) = self.roles.last_mut() {
            r.extra = extra.into();
        }
        self
    }

    /// The agent ids (globs) the last role added may run.
    pub fn agents(mut self, globs: &[&str]) -> Directory {
        if let Some(r) = self.roles.last_mut() {
            r.agents = strings(globs);
        }
        self
    }

    /// Another org.
    pub fn org(mut self, name: &str) -> Directory {
        self.orgs.push(name.into());
        self
    }

    /// Another user, of `org`, with `role`.
    pub fn user(self, name: &str, org: &str, role: &str) -> Directory {
        self.user_with(name, org, role, "")
    }

    /// The same, with more fields of the `[[users]]` entry (TOML lines), e.g. a `budget`.
    pub fn user_with(mut self, name: &str, org: &str, role: &str, extra: &str) -> Directory {
        self.users.push(User {
            name: name.into(),
            org: org.into(),
            role: role.into(),
            extra: extra.into(),
        });
        self
    }

    /// More fields of alice's `[[users]]` entry (TOML lines).
    pub fn alice_fields(mut self, extra: &str) -> Directory {
        if let Some(u) = self.users.first_mut() {
            u.extra = extra.into();
        }
        self
    }

    /// A key of alice's: `id`, and the key itself (its SHA-256 goes in the config).
    pub fn key(self, id: &str, key: &str) -> Directory {
        self.key_of("alice", id, key, "")
    }

    /// The same, with more fields of the `[[keys]]` entry (TOML lines).
    pub fn key_with(self, id: &str, key: &str, extra: &str) -> Directory {
        self.key_of("alice", id, key, extra)
    }

    /// A key of `user`'s, with more fields of the `[[keys]]` entry (TOML lines, may be empty).
    pub fn key_of(mut self, user: &str, id: &str, key: &str, extra: &str) -> Directory {
        self.keys.push(Key {
            user: user.into(),
            id: id.into(),
            sha256: key_sha256_hex(key),
            extra: extra.into(),
        });
        self
    }

    /// The `[[filters]]` entries, in chain order (types only).
    pub fn filters(mut self, types: &[&str]) -> Directory {
        self.filters = strings(types);
        self
    }

    pub fn toml(&self) -> String {
        let mut t = String::new();
        for o in &self.orgs {
            t.push_str(&format!("[[orgs]]\nname = {o:?}\n"));
        }
        for r in &self.roles {
            t.push_str(&format!(
                "[[roles]]\nname = {:?}\npermissions = {}\nmodels = {}\n",
                r.name,
                toml_list(&r.permissions),
                toml_list(&r.models)
            ));
            if !r.agents.is_empty() {
                t.push_str(&format!("agents = {}\n", toml_list(&r.agents)));
            }
            t.push_str(&format!("{}\n", r.extra));
        }
        for u in &self.users {
            t.push_str(&format!(
                "[[users]]\nname = {:?}\norg = {:?}\nrole = {:?}\n{}\n",
                u.name, u.org, u.role, u.extra
            ));
        }
        for k in &self.keys {
            t.push_str(&format!(
                "[[keys]]\nid = {:?}\nuser = {:?}\nsha256 = \"{}\"\n{}\n",
                k.id, k.user, k.sha256, k.extra
            ));
        }
        for f in &self.filters {
            t.push_str(&format!("[[filters]]\ntype = {f:?}\n"));
        }
        t
    }
}
