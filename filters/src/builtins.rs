//! The built-in filter types, one line each: the name a `[[filters]]` entry's `type` gives, the
//! function that builds the filter from the config (`crate::FilterFactory`), and the top-level
//! section the filter owns, if any (`Some("quota")`: `[quota]` is handed to `build` as written,
//! through `Policy::section_table`, and read with `config::parse_section`). A new filter, its
//! own section included, is its folder plus one line here; the engine registers every entry
//! (`src/chain.rs`).
//!
//! `[rate_limit]`, `[dlp]` and `[audit]` are the engine's own fields (it reads them too: the
//! field scrubber, MCP, admin audit), so their filters own no section here.

use std::sync::Arc;

use crate::{ConfigErrors, Filter, Policy, Shared};

/// What every built-in factory is: a plain function, so the list is a `const`.
pub type Build =
    fn(&Policy<'_>, &toml::Table, &str, &Shared) -> Result<Arc<dyn Filter>, ConfigErrors>;

/// `(type, build, own section)`.
pub const FILTERS: &[(&str, Build, Option<&str>)] = &[
    ("auth", crate::auth::build, None),
    ("rate_limit", crate::ratelimit::build, None),
    ("dlp", crate::dlp::build, None),
    ("audit", crate::audit::build, None),
];
