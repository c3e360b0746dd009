//! Field paths for TOML errors, shared by the engine's whole-file parse and a filter's own
//! section ([`super::parse_section`]): both report `models[3].name`, `quota.limit` alike.

use super::ConfigError;

/// serde_ignored writes `filters.0.x` (and `?` for an `Option`'s content, dropped); the
/// contract spells arrays `filters[0].x`.
pub fn fix_path(p: &str) -> String {
    let mut out = String::with_capacity(p.len() + 4);
    for (i, seg) in p.split('.').filter(|s| *s != "?").enumerate() {
        if !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) {
            out.push('[');
            out.push_str(seg);
            out.push(']');
        } else {
            if i > 0 {
                out.push('.');
            }
            out.push_str(seg);
        }
    }
    out
}

/// A TOML syntax or type error, with its line and the key path when toml names it.
pub fn toml_error(src: &str, e: &toml::de::Error) -> ConfigError {
    let msg = e.message().trim().to_string();
    let line = e
        .span()
        .map(|s| src[..s.start.min(src.len())].matches('\n').count() + 1);
    let path = key_path_at(src, e.span().map(|s| s.start));
    let loc = match line {
        Some(l) => format!(" (line {l})"),
        None => String::new(),
    };
    ConfigError::new(
        path.unwrap_or_else(|| "config".into()),
        format!("{msg}{loc}"),
    )
}

/// Best-effort field path of the TOML key at a byte offset: the last table header before it
/// plus the key on that line.
pub fn key_path_at(src: &str, offset: Option<usize>) -> Option<String> {
    let off = offset?.min(src.len());
    let before = &src[..off];
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let line_end = src[off..].find('\n').map(|i| off + i).unwrap_or(src.len());
    let line = src[line_start..line_end].trim();
    let key = line
        .split('=')
        .next()
        .map(str::trim)
        .filter(|k| !k.is_empty() && !k.starts_with('['));
    // Count array-of-tables occurrences so the path says `models[3]`.
    let mut header: Option<String> = None;
    let mut counts: std::collections::HashMap<String, usize> = Default::default();
    for l in src[..line_start].lines() {
        let t = l.trim();
        if let Some(name) = t.strip_prefix("[[").and_then(|r| r.split("]]").next()) {
            let name = name.trim().to_string();
            let n = counts.entry(name.clone()).or_insert(0);
            header = Some(format!("{name}[{n}]"));
            *n += 1;
        } else if let Some(name) = t.strip_prefix('[').and_then(|r| r.split(']').next()) {
            header = Some(name.trim().to_string());
        }
    }
    match (header, key) {
        (Some(h), Some(k)) => Some(format!("{h}.{k}")),
        (None, Some(k)) => Some(k.to_string()),
        (Some(h), None) => Some(h),
        (None, None) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_use_brackets() {
        assert_eq!(fix_path("filters.0.x"), "filters[0].x");
        assert_eq!(fix_path("server.listne"), "server.listne");
        assert_eq!(
            fix_path("models.0.targets.?.1.wieght"),
            "models[0].targets[1].wieght"
        );
        assert_eq!(fix_path("telemetry.?.sample_rate"), "telemetry.sample_rate");
    }
}

#[cfg(test)]
mod section_tests {
    use crate::config::parse_section;

    #[derive(serde::Deserialize, Debug)]
    struct Rule {
        #[allow(dead_code)]
        limit: u64,
    }

    #[derive(serde::Deserialize, Debug)]
    struct Settings {
        #[allow(dead_code)]
        rules: Vec<Rule>,
    }

    fn errors(src: &str) -> String {
        let table: toml::Table = toml::from_str(src).unwrap_or_else(|e| panic!("{e}"));
        let value = toml::Value::Table(table);
        match parse_section::<Settings>("quota", &value) {
            Ok(s) => format!("ok {s:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_sections_errors_carry_its_field_paths() {
        assert!(errors("[[rules]]\nlimit = 3\n").starts_with("ok"));
        let e = errors("[[rules]]\nlimit = 3\n[[rules]]\nlimit = \"x\"\n");
        assert!(e.starts_with("quota.rules[1].limit: invalid type"), "{e}");
        assert!(!e.contains("line"), "{e}");
        let e = errors("[[rules]]\nlimit = 3\nlimt = 4\n");
        assert_eq!(e, "quota.rules[0].limt: unknown key");
        let e = errors("");
        assert!(e.starts_with("quota: missing field `rules`"), "{e}");
    }
}
