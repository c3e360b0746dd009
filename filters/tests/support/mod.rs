//! What the filter tests share: the audit log rig, the DLP drivers, a throw-away redis-server.
#![allow(dead_code)]

pub mod audit;
pub mod dlp;
pub mod redis_server;
