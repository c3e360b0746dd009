//! What the console reads from this instance's audit log: a user's recent records (admin).
//! Usage reads the store's spend rows instead ([`super::daily`]).
//!
//! Only the last [`TAIL_BYTES`] of the active file are read (bounded whatever the log's size),
//! on a blocking thread; a record is parsed with the audit module's own type, and shown with
//! the fields of SPEC §6 only — a record never holds a body.

use std::io::{Read, Seek, SeekFrom};

use sluice_filters::audit::AuditRecord;

/// How much of the end of the audit log is read.
pub const TAIL_BYTES: u64 = 32 * 1024 * 1024;

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
