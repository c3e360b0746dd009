//! The base every config section and filter builds on: errors with their field path, and what a
//! `[[filters]]` entry's options are checked with. It names no filter: the built-in ones are
//! listed in [`crate::builtins`], each filter's own settings live in its folder.

use std::fmt;

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
