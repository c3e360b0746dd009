//! `[console]`: the web console's own section (SPEC §14).

use serde::Deserialize;
use sluice_filters::ConfigError;

/// `[console]`. Every field has a default: the console is on with the quick start.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ConsoleConfig {
    /// The console's address as browsers reach it (`https://gateway.example.com`), when a TLS
    /// terminator or a name fronts Sluice. Default: what the browser asked for (`Host`).
    pub public_url: Option<String>,
    /// A session unused this long ends.
    #[serde(default = "default_idle")]
    pub idle_minutes: u64,
    /// A session ends this long after sign-in, however busy.
    #[serde(default = "default_max_hours")]
    pub max_hours: u64,
    /// Sign-in by pasting a Sluice key. Default: on (the quick start has no identity provider).
    #[serde(default = "default_key_sign_in")]
    pub key_sign_in: bool,
}

fn default_idle() -> u64 {
    30
}
fn default_max_hours() -> u64 {
    12
}
fn default_key_sign_in() -> bool {
    true
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig {
            public_url: None,
            idle_minutes: default_idle(),
            max_hours: default_max_hours(),
            key_sign_in: default_key_sign_in(),
        }
    }
}

impl ConsoleConfig {
    pub fn validate(&self, errs: &mut Vec<ConfigError>) {
        if let Some(url) = &self.public_url {
            if let Err(m) = parse_origin(url) {
                errs.push(ConfigError::new("console.public_url", m));
            }
        }
        if !(1..=24 * 60).contains(&self.idle_minutes) {
            errs.push(ConfigError::new(
                "console.idle_minutes",
                "must be between 1 and 1440",
            ));
        }
        if !(1..=24 * 30).contains(&self.max_hours) {
            errs.push(ConfigError::new(
                "console.max_hours",
                "must be between 1 and 720",
            ));
        }
    }

    /// The origin (`scheme://host[:port]`) of `public_url`, when set.
    pub fn origin(&self) -> Option<String> {
        self.public_url
            .as_deref()
            .and_then(|u| parse_origin(u).ok())
    }

    /// Whether browsers reach the console over TLS: cookies are then `Secure`.
    pub fn secure(&self) -> bool {
        self.origin().is_some_and(|o| o.starts_with("https://"))
    }
}

/// `scheme://host[:port]` of an `http(s)://` URL without query or fragment; a path is allowed
/// only as `/` (the console lives at `/console/` of that origin).
fn parse_origin(url: &str) -> Result<String, String> {
    let rest = url
        .strip_prefix("https://")
        .map(|r| ("https", r))
        .or_else(|| url.strip_prefix("http://").map(|r| ("http", r)));
    let Some((scheme, rest)) = rest else {
        return Err(format!(
            "`{url}` must start with https:// (or http://), e.g. https://gateway.example.com"
        ));
    };
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let bad_host = host.is_empty()
        || host.contains('@')
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b));
    if bad_host {
        return Err(format!("`{url}` names no valid host"));
    }
    if !(path.is_empty() || path == "/") {
        return Err(format!(
            "`{url}` has a path: give the origin only (the console is served at /console/)"
        ));
    }
    Ok(format!("{scheme}://{}", host.to_ascii_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        assert_eq!(
            parse_origin("https://GW.example.com/").as_deref(),
            Ok("https://gw.example.com")
        );
        assert_eq!(
            parse_origin("http://127.0.0.1:8080").as_deref(),
            Ok("http://127.0.0.1:8080")
        );
        assert!(parse_origin("ftp://x").is_err());
        assert!(parse_origin("https://x/console").is_err());
        assert!(parse_origin("https://user@x").is_err());
        assert!(parse_origin("https://").is_err());
    }

    #[test]
    fn bounds_name_their_field() {
        let c = ConsoleConfig {
            idle_minutes: 0,
            max_hours: 0,
            ..ConsoleConfig::default()
        };
        let mut errs = Vec::new();
        c.validate(&mut errs);
        let paths: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert!(paths[0].starts_with("console.idle_minutes"), "{paths:?}");
        assert!(paths[1].starts_with("console.max_hours"), "{paths:?}");
    }
}
