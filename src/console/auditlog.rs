//! What the console reads from this instance's audit log: a user's recent records (admin) and
//! requests and tokens per day (Usage, until the spend records of SPEC §15 are in the store).
//!
//! Only the last [`TAIL_BYTES`] of the active file are read (bounded whatever the log's size),
//! on a blocking thread; a record is parsed with the audit module's own type, and shown with
//! the fields of SPEC §6 only — a record never holds a body.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};

use sluice_filters::audit::AuditRecord;
use time::{Duration, OffsetDateTime};

/// How much of the end of the audit log is read.
pub const TAIL_BYTES: u64 = 32 * 1024 * 1024;

/// One day of a user's use of the API.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UsageDay {
    /// `YYYY-MM-DD` (UTC).
    pub date: String,
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Spend in USD, when spend records exist (SPEC §15); `None` until then.
    pub cost_usd: Option<f64>,
}

/// The last records of the audit log at `path` (oldest first).
async fn tail(path: &str) -> Result<Vec<AuditRecord>, String> {
    if path == "-" {
        return Err(
            "The audit log goes to standard output here, so the console cannot read it.".into(),
        );
    }
    let path = path.to_string();
    tokio::task::spawn_blocking(move || read_tail(&path))
        .await
        .map_err(|e| format!("reading the audit log failed: {e}"))?
}

fn read_tail(path: &str) -> Result<Vec<AuditRecord>, String> {
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("The audit log cannot be read: {e}.")),
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(TAIL_BYTES);
    f.seek(SeekFrom::Start(start))
        .map_err(|e| format!("The audit log cannot be read: {e}."))?;
    let mut buf = Vec::with_capacity((len - start) as usize);
    f.take(TAIL_BYTES)
        .read_to_end(&mut buf)
        .map_err(|e| format!("The audit log cannot be read: {e}."))?;
    let mut lines = buf.split(|&b| b == b'\n');
    if start > 0 {
        // The first line is cut.
        lines.next();
    }
    Ok(lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| serde_json::from_slice(l).ok())
        .collect())
}

/// The user's `limit` most recent records, newest first.
pub async fn recent(path: &str, user: &str, limit: usize) -> Result<Vec<AuditRecord>, String> {
    let mut records: Vec<AuditRecord> = tail(path)
        .await?
        .into_iter()
        .filter(|r| r.user.as_deref() == Some(user))
        .collect();
    records.reverse();
    records.truncate(limit);
    Ok(records)
}

/// The user's API requests and tokens per day for the `days` days up to today (UTC), oldest
/// first, days without use included.
pub async fn usage_by_day(path: &str, user: &str, days: i64) -> Result<Vec<UsageDay>, String> {
    let records = tail(path).await?;
    Ok(per_day(&records, user, OffsetDateTime::now_utc(), days))
}

fn per_day(records: &[AuditRecord], user: &str, now: OffsetDateTime, days: i64) -> Vec<UsageDay> {
    let mut by_day: BTreeMap<String, UsageDay> = BTreeMap::new();
    for i in (0..days).rev() {
        let d = (now - Duration::days(i)).date();
        let date = format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day());
        by_day.insert(
            date.clone(),
            UsageDay {
                date,
                ..UsageDay::default()
            },
        );
    }
    // API calls only: the console's own records (auth "session") and key-change events are
    // not model use.
    let calls = records.iter().filter(|r| {
        r.user.as_deref() == Some(user) && r.auth.is_none() && r.path.starts_with("/v1/")
    });
    for r in calls {
        let Some(day) = r.ts.get(..10).and_then(|d| by_day.get_mut(d)) else {
            continue;
        };
        day.requests += 1;
        if let Some(u) = r.usage {
            day.prompt_tokens += u.prompt_tokens;
            day.completion_tokens += u.completion_tokens;
        }
    }
    by_day.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_filters::audit::RecordUsage;

    fn rec(ts: &str, user: &str, path: &str, tokens: u64) -> AuditRecord {
        AuditRecord {
            ts: ts.into(),
            user: Some(user.into()),
            path: path.into(),
            usage: Some(RecordUsage {
                prompt_tokens: tokens,
                completion_tokens: 1,
            }),
            ..AuditRecord::default()
        }
    }

    #[test]
    fn days_count_the_users_api_calls_only() {
        let now = OffsetDateTime::from_unix_timestamp(1_795_950_000).unwrap(); // 2026-11-29 11:00 UTC
        let mut console = rec("2026-11-29T10:00:00.000Z", "alice", "/console/api", 0);
        console.auth = Some("session".into());
        let records = vec![
            rec(
                "2026-11-29T10:00:00.000Z",
                "alice",
                "/v1/chat/completions",
                5,
            ),
            rec("2026-11-29T11:00:00.000Z", "alice", "/v1/responses", 2),
            rec("2026-11-28T11:00:00.000Z", "alice", "/v1/embeddings", 3),
            rec("2026-11-29T11:00:00.000Z", "bob", "/v1/chat/completions", 9),
            rec(
                "2025-01-01T00:00:00.000Z",
                "alice",
                "/v1/chat/completions",
                9,
            ),
            console,
        ];
        let days = per_day(&records, "alice", now, 30);
        assert_eq!(days.len(), 30);
        let today = days.last().unwrap();
        assert_eq!(today.date, "2026-11-29");
        assert_eq!(
            (today.requests, today.prompt_tokens, today.completion_tokens),
            (2, 7, 2)
        );
        assert_eq!(days[28].requests, 1);
        assert_eq!(days.iter().map(|d| d.requests).sum::<u64>(), 3);
    }

    #[test]
    fn a_missing_log_is_empty_and_a_cut_first_line_is_skipped() {
        assert!(read_tail("/nonexistent/audit.jsonl").unwrap().is_empty());
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.jsonl");
        let line =
            serde_json::to_string(&rec("2026-11-29T10:00:00.000Z", "a", "/v1/x", 1)).unwrap();
        std::fs::write(&p, format!("{line}\n{line}\n")).unwrap();
        assert_eq!(read_tail(p.to_str().unwrap()).unwrap().len(), 2);
    }
}
