//! The engine's integration tests, one module per suite, in one binary: each test binary links
//! all of Sluice, Pingora and sqlx, so ~35 of them spent most of CI's Rust build linking.
//! `cargo test --test it hostile_keys::` runs one suite; the helpers are `tests/support`.

#[path = "../support/mod.rs"]
mod support;

mod agents;
mod apis;
mod apis_stream;
mod audit_e2e;
mod auth;
mod chain;
mod check;
mod dlp_e2e;
mod dlp_scan;
mod faults;
mod faults_audit;
mod foundation;
mod hostile;
mod hostile_keys;
mod hostile_quickstart;
mod hostile_trust;
mod identity_postgres;
mod keys_postgres;
mod keys_sqlite;
mod mcp;
mod mcp_spend;
mod operations;
mod ratelimit_e2e;
mod resilience;
mod resilience_state;
mod spend;
mod spend_keys;
mod spend_postgres;
mod spend_redis;
mod tls;
mod traces;
