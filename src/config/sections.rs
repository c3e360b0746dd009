//! The filter sections (`[rate_limit]`, `[dlp]`, `[audit]`) as loading built them: each is
//! checked by building it ([`Section::build`]), once per load, and the filters and the engine
//! take the built value instead of building it again.

use std::sync::Arc;

use sluice_filters::audit::AuditSettings;
use sluice_filters::config::Section;
use sluice_filters::dlp::{Dlp, DlpSettings};
use sluice_filters::ratelimit::RateLimitSettings;
use sluice_filters::{ConfigError, ConfigErrors, Sections};

/// One section built, with the settings it was built from: an embedder may change a parsed
/// config, and the snapshot then builds the changed section again (see [`Built::fresh`]).
struct Built<S: Section + Clone> {
    from: S,
    value: Arc<S::Built>,
}

impl<S: Section + Clone> Clone for Built<S> {
    fn clone(&self) -> Self {
        Built {
            from: self.from.clone(),
            value: Arc::clone(&self.value),
        }
    }
}

impl<S: Section + Clone + PartialEq> Built<S> {
    fn of(settings: &S, errs: &mut Vec<ConfigError>) -> Option<Built<S>> {
        match settings.build() {
            Ok(v) => Some(Built {
                from: settings.clone(),
                value: Arc::new(v),
            }),
            Err(e) => {
                errs.extend(e);
                None
            }
        }
    }

    /// Whether this was built from `settings` as they are now.
    fn fresh(this: &Option<Built<S>>, settings: &S) -> bool {
        this.as_ref().is_some_and(|b| b.from == *settings)
    }
}

#[derive(Clone, Default)]
pub(crate) struct BuiltSections {
    rate_limit: Option<Built<RateLimitSettings>>,
    dlp: Option<Built<DlpSettings>>,
    audit: Option<Built<AuditSettings>>,
}

impl std::fmt::Debug for BuiltSections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuiltSections")
            .field("dlp", &self.dlp.as_ref().map(|b| &b.value))
            .finish_non_exhaustive()
    }
}

impl BuiltSections {
    /// Builds every section, each error with its field path.
    pub(crate) fn build(
        rate_limit: &RateLimitSettings,
        dlp: &DlpSettings,
        audit: &AuditSettings,
        errs: &mut Vec<ConfigError>,
    ) -> BuiltSections {
        BuiltSections {
            rate_limit: Built::of(rate_limit, errs),
            dlp: Built::of(dlp, errs),
            audit: Built::of(audit, errs),
        }
    }

    /// Builds again the sections whose settings changed since (or that were never built: a
    /// config deserialized without [`super::Config::parse`]); the others are kept as they are.
    pub(crate) fn refresh(
        &mut self,
        rate_limit: &RateLimitSettings,
        dlp: &DlpSettings,
        audit: &AuditSettings,
    ) -> Result<(), ConfigErrors> {
        let mut errs = Vec::new();
        if !Built::fresh(&self.rate_limit, rate_limit) {
            self.rate_limit = Built::of(rate_limit, &mut errs);
        }
        if !Built::fresh(&self.dlp, dlp) {
            self.dlp = Built::of(dlp, &mut errs);
        }
        if !Built::fresh(&self.audit, audit) {
            self.audit = Built::of(audit, &mut errs);
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(errs))
        }
    }

    /// What filter factories read: each section's settings, and its built value when it was
    /// built from them (a factory given only settings builds them itself).
    pub(crate) fn sections<'a>(
        &'a self,
        rate_limit: &'a RateLimitSettings,
        dlp: &'a DlpSettings,
        audit: &'a AuditSettings,
    ) -> Sections<'a> {
        let mut s = Sections::new().with(rate_limit).with(dlp).with(audit);
        if let Some(b) = self.rate_limit.as_ref().filter(|b| b.from == *rate_limit) {
            s = s.with(&b.value);
        }
        if let Some(b) = self.dlp.as_ref().filter(|b| b.from == *dlp) {
            s = s.with(&b.value);
        }
        if let Some(b) = self.audit.as_ref().filter(|b| b.from == *audit) {
            s = s.with(&b.value);
        }
        s
    }

    /// `[dlp]` as built from `dlp`, if it was.
    pub(crate) fn dlp(&self, dlp: &DlpSettings) -> Option<&Arc<Dlp>> {
        self.dlp
            .as_ref()
            .filter(|b| b.from == *dlp)
            .map(|b| &b.value)
    }
}
