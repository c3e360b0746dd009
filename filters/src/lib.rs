//! # sluice-filters
//!
//! The policy half of Sluice: the [`Filter`] trait every stage of the gateway's chain implements,
//! the small request/response model filters see ([`Cx`], [`RequestHead`], [`Request`],
//! [`JsonBody`], [`StreamEvent`]), and the built-in filters (`auth`, `rate_limit`, `dlp`,
//! `audit`).
//!
//! This crate knows nothing about Pingora or sockets. The engine (the `sluice` crate) frames the
//! bytes, calls the phases in order and turns a [`Verdict::Respond`] into an HTTP response. That
//! keeps every filter testable without a network and usable by programs that embed Sluice.

pub mod api;
pub mod audit;
pub mod auth;
mod body;
pub mod builtins;
pub mod clock;
pub mod config;
mod context;
pub mod dlp;
mod filter;
mod identity;
pub mod mcp;
pub mod policy;
pub mod ratelimit;
mod reply;
mod shared;
pub mod spend;
pub mod strict_json;

pub use body::{JsonBody, StreamEvent};
pub use config::{ConfigError, ConfigErrors, Sections};
pub use context::{Cx, DlpFinding, Exchange, Outcome, PreAuthenticated, Route, Usage};
pub use filter::{Filter, Needs, Request, RequestHead, ResponseHead, Verdict};
pub use identity::{glob_match, Grants, Identity, Permission};
pub use policy::{FilterFactory, Policy, WithSection};
pub use reply::Reply;
pub use shared::Shared;
