//! The filter crate's integration tests, one module per suite, in one binary (one link instead
//! of sixteen). `cargo test -p sluice-filters --test it dlp_stream::` runs one suite; the helpers
//! are `filters/tests/support`.

#[path = "../support/mod.rs"]
mod support;

mod audit_chain;
mod audit_durability;
mod audit_filter;
mod auth;
mod dlp_allow;
mod dlp_code_context;
mod dlp_config;
mod dlp_corpus;
mod dlp_detectors;
mod dlp_precision;
mod dlp_request;
mod dlp_secrets;
mod dlp_secrets_stream;
mod dlp_stream;
mod ratelimit;
