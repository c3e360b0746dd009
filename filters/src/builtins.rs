//! The built-in filter types, one line each: the name a `[[filters]]` entry's `type` gives, and
//! the function that builds the filter from the config (`crate::FilterFactory`). A new filter
//! is its folder plus one line here; the engine registers every entry (`src/chain.rs`).

use std::sync::Arc;

use crate::{ConfigErrors, Filter, Policy, Shared};

/// What every built-in factory is: a plain function, so the list is a `const`.
pub type Build =
    fn(&Policy<'_>, &toml::Table, &str, &Shared) -> Result<Arc<dyn Filter>, ConfigErrors>;

pub const FILTERS: &[(&str, Build)] = &[
    ("auth", crate::auth::build),
    ("rate_limit", crate::ratelimit::build),
    ("dlp", crate::dlp::build),
    ("audit", crate::audit::build),
];
