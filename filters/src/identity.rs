//! Who is calling and what they may do.

use std::sync::Arc;

/// A role permission, as spelled in the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    Chat,
    ModelsList,
    AgentsRun,
    Embeddings,
    Passthrough,
    /// Making, listing and revoking one's own API keys (`/v1/keys`).
    KeysManage,
    /// The console's admin pages (SPEC §14).
    ConsoleAdmin,
    /// Calling tools through `/mcp/{server}` (SPEC §16), within the role's `mcp` globs.
    Mcp,
}

impl Permission {
    pub const ALL: [Permission; 8] = [
        Permission::Chat,
        Permission::ModelsList,
        Permission::AgentsRun,
        Permission::Embeddings,
        Permission::Passthrough,
        Permission::KeysManage,
        Permission::ConsoleAdmin,
        Permission::Mcp,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Chat => "chat",
            Permission::ModelsList => "models:list",
            Permission::AgentsRun => "agents:run",
            Permission::Embeddings => "embeddings",
            Permission::Passthrough => "passthrough",
            Permission::KeysManage => "keys:manage",
            Permission::ConsoleAdmin => "console:admin",
            Permission::Mcp => "mcp",
        }
    }

    pub fn parse(s: &str) -> Option<Permission> {
        Permission::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

/// What a key may do: its user's role, narrowed by the key's own `models` globs.
#[derive(Debug, Clone, Default)]
pub struct Grants {
    pub permissions: Vec<Permission>,
    /// The role's model globs.
    pub models: Vec<String>,
    /// The key's own model globs (`None`: no narrowing). A model must match both.
    pub key_models: Option<Vec<String>>,
    /// The role's agent globs.
    pub agents: Vec<String>,
}

impl Grants {
    pub fn has(&self, p: Permission) -> bool {
        self.permissions.contains(&p)
    }

    /// Whether the key may use `model`: the role allows it and, when the key narrows, so does
    /// the key. A key's globs can never widen its role.
    pub fn may_use_model(&self, model: &str) -> bool {
        self.models.iter().any(|g| glob_match(g, model))
            && self
                .key_models
                .as_ref()
                .is_none_or(|k| k.iter().any(|g| glob_match(g, model)))
    }

    pub fn may_run_agent(&self, agent: &str) -> bool {
        self.agents.iter().any(|g| glob_match(g, agent))
    }
}

/// The resolved caller, set in [`crate::Cx::identity`] by the auth filter.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The key's configured id (never the key itself).
    pub key_id: Arc<str>,
    pub user: Arc<str>,
    pub org: Arc<str>,
    pub role: Arc<str>,
    pub grants: Arc<Grants>,
    /// The keys this key was made from through the key API, its parent first (empty for a
    /// key an administrator made). A request counts against each one's key-level limits (and
    /// budgets) too.
    pub ancestors: Arc<[Arc<str>]>,
}

/// Shell-style glob with `*` (any run, possibly empty) and `?` (one character).
///
/// Names are almost always ASCII: matched as bytes, with no allocation (this runs on every
/// request, once per model pattern of the caller's role). Otherwise as characters, so that `?`
/// takes one whole character.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    if pattern.is_ascii() && text.is_ascii() {
        return glob(pattern.as_bytes(), text.as_bytes(), b'*', b'?');
    }
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    glob(&p, &t, '*', '?')
}

fn glob<T: PartialEq + Copy>(p: &[T], t: &[T], any_run: T, any_one: T) -> bool {
    let (mut pi, mut ti) = (0usize, 0usize);
    let (mut star, mut mark) = (None::<usize>, 0usize);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == any_one || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == any_run {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == any_run {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("mock-*", "mock-echo"));
        assert!(glob_match("*", ""));
        assert!(glob_match("gpt-4o-mini", "gpt-4o-mini"));
        assert!(!glob_match("gpt-4o-mini", "gpt-4o"));
        assert!(glob_match("daily-*", "daily-scan"));
        assert!(!glob_match("daily-*", "weekly-scan"));
        assert!(glob_match("a?c*", "abcdef"));
        assert!(glob_match("*-mini", "gpt-4o-mini"));
        // Not ASCII: `?` takes one whole character, not one byte.
        assert!(glob_match("caf?-*", "café-large"));
        assert!(!glob_match("caf??-*", "café-large"));
        assert!(glob_match("modèle-*", "modèle-7b"));
        assert!(!glob_match("modele-*", "modèle-7b"));
    }

    #[test]
    fn key_narrows_never_widens() {
        let g = Grants {
            permissions: vec![Permission::Chat],
            models: vec!["mock-*".into()],
            key_models: Some(vec!["*".into()]),
            agents: vec![],
        };
        assert!(g.may_use_model("mock-echo"));
        assert!(!g.may_use_model("gpt-4o"));
        let g2 = Grants {
            key_models: Some(vec!["mock-echo".into()]),
            ..g
        };
        assert!(g2.may_use_model("mock-echo"));
        assert!(!g2.may_use_model("mock-other"));
    }
}
