//! # Sluice
//!
//! A self-hosted, OpenAI-compatible LLM API gateway on Pingora. The engine lives here: config,
//! the filter chain, the Pingora proxy adapter, routes, metrics, the admin listener and the
//! mock upstream. Policy lives in the [`sluice_filters`] crate.
//!
//! Embedding: build a [`GatewayBuilder`], register your own filter types with
//! [`GatewayBuilder::filter_type`], and [`GatewayBuilder::start`] it (see `examples/`).

pub mod admin;
mod admin_audit;
pub mod agents;
pub mod chain;
pub mod config;
pub mod console;
pub mod edge;
pub mod gateway;
pub mod headers;
mod held_head;
pub mod identity;
pub mod keys;
pub mod mcp;
pub mod metrics;
pub mod mock;
pub mod pipeline;
pub mod proxy;
mod reply;
pub mod request_id;
pub mod routes;
pub mod spend;
pub mod sse;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod upstream;

pub use config::{Config, ConfigErrors};
pub use gateway::{Gateway, GatewayBuilder, ShutdownTrigger, StartError};
pub use sluice_filters as filters;
