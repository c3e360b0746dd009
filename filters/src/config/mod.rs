//! The base every config section and filter builds on: errors with their field path, and what a
//! `[[filters]]` entry's options are checked with. It names no filter: the built-in ones are
//! listed in [`crate::builtins`], each filter's own settings live in its folder.

use std::fmt;

pub mod toml_paths;

/// One problem in the config, with the field path that holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// e.g. `dlp.rules[2].regex`, `models[3].upstream`.
    pub path: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Everything wrong with a config: what loading a file, building a snapshot and building a
/// filter all return, one error per line.
#[derive(Debug, Clone, Default)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    pub fn one(path: impl Into<String>, message: impl Into<String>) -> ConfigErrors {
        ConfigErrors(vec![ConfigError::new(path, message)])
    }
}

impl From<ConfigError> for ConfigErrors {
    fn from(e: ConfigError) -> Self {
        ConfigErrors(vec![e])
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// One error per key of a `[[filters]]` entry's options, for a filter that takes none (its
/// settings live in a section of their own, which `why` names).
pub fn no_options(options: &toml::Table, path: &str, why: &str) -> Vec<ConfigError> {
    options
        .keys()
        .map(|k| ConfigError::new(format!("{path}.{k}"), why))
        .collect()
}

/// `built`, unless `errs` (a factory's own option errors) or its errors say otherwise: either
/// way every error is reported, together.
pub fn together<T>(
    mut errs: Vec<ConfigError>,
    built: Result<T, ConfigErrors>,
) -> Result<T, ConfigErrors> {
    match built {
        Ok(b) if errs.is_empty() => Ok(b),
        Ok(_) => Err(ConfigErrors(errs)),
        Err(e) => {
            errs.extend(e.0);
            Err(ConfigErrors(errs))
        }
    }
}

/// A config section whose check is building what it configures (`[dlp]` → its compiled
/// detectors): nothing is checked without being built, and nothing built is checked again.
/// The engine builds each section once per load and hands the result to every user of it.
pub trait Section: std::any::Any + Send + Sync {
    /// The section's name in the file (`dlp` for `[dlp]`).
    const NAME: &'static str;
    /// What the section configures, ready for use.
    type Built: std::any::Any + Send + Sync;
    /// Builds it, reporting every problem with its field path.
    fn build(&self) -> Result<Self::Built, ConfigErrors>;
}

/// The config sections a factory may read, by type: each filter takes its own (`[dlp]` →
/// `DlpSettings`, built: `Dlp`) with [`Sections::built`], so this base and the factory trait
/// name none of them and a filter with its own section needs no field here.
#[derive(Clone, Default)]
pub struct Sections<'a> {
    items: Vec<&'a (dyn std::any::Any + Send + Sync)>,
    /// The top-level tables the engine's config has no field for: filter types' own sections
    /// (`[NAME]`), as written, for the types that claim them ([`crate::FilterFactory::section`]).
    tables: Option<&'a toml::Table>,
}

impl<'a> Sections<'a> {
    pub fn new() -> Sections<'a> {
        Sections::default()
    }

    /// Adds a section (one of each type: the first given wins).
    pub fn with<T: std::any::Any + Send + Sync>(mut self, section: &'a T) -> Sections<'a> {
        self.items.push(section);
        self
    }

    /// Adds the config's own-section tables (see [`Sections::table`]).
    pub fn with_tables(mut self, tables: &'a toml::Table) -> Sections<'a> {
        self.tables = Some(tables);
        self
    }

    /// Section `[name]` as written, when the config has it and it is a filter type's own (the
    /// engine reports a table no registered type claims as an unknown key).
    pub fn table(&self, name: &str) -> Option<&'a toml::Value> {
        self.tables.and_then(|t| t.get(name))
    }

    pub fn get<T: std::any::Any>(&self) -> Option<&'a T> {
        self.items.iter().find_map(|s| {
            let s: &'a (dyn std::any::Any + Send + Sync) = *s;
            s.downcast_ref::<T>()
        })
    }

    /// Section `S` as built: the one given built (the engine's, built once per load), else
    /// built here from the settings given (an embedder's policy).
    pub fn built<S: Section>(&self, path: &str) -> Result<std::sync::Arc<S::Built>, ConfigErrors> {
        if let Some(b) = self.get::<std::sync::Arc<S::Built>>() {
            return Ok(b.clone());
        }
        let settings = self.require::<S>(path, S::NAME)?;
        settings.build().map(std::sync::Arc::new)
    }

    /// The section of type `T`, or an error naming the filter at `path` that needed it (an
    /// embedder's policy without it).
    pub fn require<T: std::any::Any>(
        &self,
        path: &str,
        section: &str,
    ) -> Result<&'a T, ConfigErrors> {
        self.get::<T>().ok_or_else(|| {
            ConfigErrors::one(
                path,
                format!("needs the [{section}] section, which was not given"),
            )
        })
    }
}

/// A filter's own section `[name]` (its [`Sections::table`]) deserialized into its settings:
/// every unknown key and type error is reported with its field path (`name.field`), as the
/// engine reports the rest of the file.
pub fn parse_section<T: serde::de::DeserializeOwned>(
    name: &str,
    table: &toml::Value,
) -> Result<T, ConfigErrors> {
    // Written back as `[name]` and read with toml's own parser: its errors carry a position,
    // from which the path is read exactly as for the whole file.
    let mut doc = toml::Table::new();
    doc.insert(name.to_string(), table.clone());
    let src = toml::to_string(&doc)
        .map_err(|e| ConfigErrors::one(name, format!("cannot be read: {e}")))?;
    let mut errs = Vec::new();
    let mut unknown = Vec::new();
    let parsed: Result<std::collections::BTreeMap<String, T>, _> =
        serde_ignored::deserialize(toml::Deserializer::new(&src), |p| {
            unknown.push(p.to_string())
        });
    for p in unknown {
        errs.push(ConfigError::new(toml_paths::fix_path(&p), "unknown key"));
    }
    match parsed {
        // No line: it would be the rewritten text's, not the file's.
        Err(e) => errs.push(ConfigError::new(
            toml_paths::key_path_at(&src, e.span().map(|s| s.start))
                .unwrap_or_else(|| name.to_string()),
            e.message().trim(),
        )),
        Ok(mut m) if errs.is_empty() => {
            if let Some(v) = m.remove(name) {
                return Ok(v);
            }
            errs.push(ConfigError::new(name, "missing"));
        }
        Ok(_) => {}
    }
    Err(ConfigErrors(errs))
}
