//! The filter sections (`[rate_limit]`, `[dlp]`, `[audit]`) as loading built them, and the
//! policy (`[[orgs]]`, `[[roles]]`, `[[users]]`, `[[keys]]`) as loading checked it: each is
//! checked by building it ([`Section::build`], [`Policy::check`]), once per load, and the
//! filters and the engine take the built value instead of building it again.

use std::sync::Arc;

use sluice_filters::audit::AuditSettings;
use sluice_filters::config::Section;
use sluice_filters::dlp::{Dlp, DlpSettings};
use sluice_filters::policy::{CheckedPolicy, KeyConfig, OrgConfig, RoleConfig, UserConfig};
use sluice_filters::ratelimit::RateLimitSettings;
use sluice_filters::{ConfigError, ConfigErrors, Policy, Sections};

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
                errs.extend(e.0);
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
    /// The policy's lists as checked, and what checking them parsed.
    policy: Option<(PolicyLists, Arc<CheckedPolicy>)>,
}

/// The lists a [`CheckedPolicy`] was made from.
#[derive(Clone, PartialEq)]
struct PolicyLists {
    orgs: Vec<OrgConfig>,
    roles: Vec<RoleConfig>,
    users: Vec<UserConfig>,
    keys: Vec<KeyConfig>,
}

impl PolicyLists {
    fn of(p: &Policy<'_>) -> PolicyLists {
        PolicyLists {
            orgs: p.orgs.to_vec(),
            roles: p.roles.to_vec(),
            users: p.users.to_vec(),
            keys: p.keys.to_vec(),
        }
    }

    fn are(&self, p: &Policy<'_>) -> bool {
        self.orgs == p.orgs && self.roles == p.roles && self.users == p.users && self.keys == p.keys
    }
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
        &mut self,
        rate_limit: &RateLimitSettings,
        dlp: &DlpSettings,
        audit: &AuditSettings,
        errs: &mut Vec<ConfigError>,
    ) {
        self.rate_limit = Built::of(rate_limit, errs);
        self.dlp = Built::of(dlp, errs);
        self.audit = Built::of(audit, errs);
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

    /// Checks the policy (the one place: [`Policy::check`]) and keeps what checking parsed.
    pub(crate) fn check_policy(&mut self, policy: &Policy<'_>, errs: &mut Vec<ConfigError>) {
        self.policy = match policy.check() {
            Ok(c) => Some((PolicyLists::of(policy), Arc::new(c))),
            Err(e) => {
                errs.extend(e.0);
                None
            }
        };
    }

    /// Checks the policy again if its lists changed since.
    pub(crate) fn refresh_policy(&mut self, policy: &Policy<'_>) -> Result<(), ConfigErrors> {
        if self.policy.as_ref().is_some_and(|(l, _)| l.are(policy)) {
            return Ok(());
        }
        let mut errs = Vec::new();
        self.check_policy(policy, &mut errs);
        if errs.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(errs))
        }
    }

    /// What filter factories read: each section's settings, and its built value when it was
    /// built from them (a factory given only settings builds them itself); the policy's check
    /// when it was made from `lists`.
    pub(crate) fn sections<'a>(
        &'a self,
        lists: &Policy<'_>,
        rate_limit: &'a RateLimitSettings,
        dlp: &'a DlpSettings,
        audit: &'a AuditSettings,
    ) -> Sections<'a> {
        let mut s = Sections::new().with(rate_limit).with(dlp).with(audit);
        if let Some((_, c)) = self.policy.as_ref().filter(|(l, _)| l.are(lists)) {
            s = s.with(c);
        }
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

impl super::Config {
    /// The policy sections, for filter factories.
    pub fn policy(&self) -> Policy<'_> {
        let mut p = self.policy_lists();
        p.sections = self
            .built
            .sections(&p, &self.rate_limit, &self.dlp, &self.audit)
            .with_tables(&self.filter_sections);
        p
    }

    /// The policy without its sections.
    pub(super) fn policy_lists(&self) -> Policy<'_> {
        Policy {
            orgs: &self.orgs,
            roles: &self.roles,
            users: &self.users,
            keys: &self.keys,
            sections: Default::default(),
            models: &self.model_names,
            agents: &self.agent_ids,
            prices: &self.prices,
        }
    }

    /// Checks the policy and builds the filter sections, each once (loading does, in order
    /// with the other checks).
    pub(super) fn build_sections(&mut self, errs: &mut Vec<ConfigError>) {
        let mut built = BuiltSections::default();
        built.check_policy(&self.policy_lists(), errs);
        built.build(&self.rate_limit, &self.dlp, &self.audit, errs);
        self.built = built;
    }

    /// Builds again any filter section an embedder changed since loading; the snapshot build
    /// calls it first, so that [`Config::policy`] hands factories built sections.
    pub(crate) fn refresh_sections(&mut self) -> Result<(), ConfigErrors> {
        let mut built = std::mem::take(&mut self.built);
        let result = built
            .refresh(&self.rate_limit, &self.dlp, &self.audit)
            .and_then(|()| built.refresh_policy(&self.policy_lists()));
        self.built = built;
        result
    }

    /// `[dlp]` as built (after [`Config::refresh_sections`]).
    pub fn dlp_built(&self) -> Option<&Arc<Dlp>> {
        self.built.dlp(&self.dlp)
    }
}
