//! `sluice_mcp_calls_total{server,tool,outcome}`, with the tool label bounded: a tool is its
//! own label only once its server listed it (`tools/list`), else `other`, so a client cannot
//! grow the series by inventing names.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use prometheus::{IntCounterVec, Opts};
use sluice_filters::Shared;

/// Most tools per server kept as labels; later ones are counted as `other`.
const MAX_TOOLS_PER_SERVER: usize = 256;

/// The MCP metrics of one process (shared by config generations).
pub struct McpMetrics {
    calls: IntCounterVec,
    /// The tools each server listed (instance-local: only the label set depends on it).
    listed: Mutex<HashMap<String, HashSet<String>>>,
}

impl McpMetrics {
    /// The process's MCP metrics, registered on first use.
    pub fn of(shared: &Shared) -> Option<std::sync::Arc<McpMetrics>> {
        shared
            .get_or_try_init("mcp_metrics", || -> prometheus::Result<McpMetrics> {
                let calls = IntCounterVec::new(
                    Opts::new(
                        "sluice_mcp_calls_total",
                        "MCP tools/call requests, by server, tool and outcome",
                    ),
                    &["server", "tool", "outcome"],
                )?;
                shared.registry().register(Box::new(calls.clone()))?;
                Ok(McpMetrics {
                    calls,
                    listed: Mutex::new(HashMap::new()),
                })
            })
            .map_err(|e| tracing::warn!(error = %e, "mcp: cannot register sluice_mcp_calls_total"))
            .ok()
    }

    /// Remembers the tools a server listed.
    pub fn listed(&self, server: &str, tools: Vec<String>) {
        let mut l = self.listed.lock().unwrap_or_else(|p| p.into_inner());
        let set = l.entry(server.to_string()).or_default();
        for t in tools {
            if set.len() >= MAX_TOOLS_PER_SERVER {
                break;
            }
            set.insert(t);
        }
    }

    /// Counts one `tools/call`.
    pub fn call(&self, server: &str, tool: &str, outcome: &str) {
        let known = {
            let l = self.listed.lock().unwrap_or_else(|p| p.into_inner());
            l.get(server).is_some_and(|s| s.contains(tool))
        };
        let tool = if known { tool } else { "other" };
        self.calls.with_label_values(&[server, tool, outcome]).inc();
    }
}
