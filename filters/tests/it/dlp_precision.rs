//! Precision: clean technical text (identifiers, hashes, timestamps, versions, prices, code,
//! logs) gives no finding with both packs on.

use sluice_filters::dlp::{DlpSettings, Scanner};

const PROSE: &str = "\
The quick brown fox jumps over the lazy dog. In 2023 the team shipped 3 releases and closed
1,204 tickets; the median time to merge fell from 18.5 hours to 6 hours. ASIA PACIFIC revenue
grew 12% while EMEA stayed flat. Meet me at 10:30 on 2024-01-15, room 404, floor 3. Call it a
risk-free, task-based, desk-top exercise. xoxo, the on-call rotation. She said: \"sk-learn is a
nickname for scikit-learn\". The SG. prefix in a sentence. PRIVATE KEY handling is documented.
";

const IDENTIFIERS: &str = "\
request 550e8400-e29b-41d4-a716-446655440000 and 6ba7b810-9dad-11d1-80b4-00c04fd430c8
trace f47ac10b-58cc-4372-a567-0e02b2c3d479 span 00f067aa0ba902b7 parent 4bf92f3577b34da6
commit 9a8d13d7dc8b46be18ae1a589c7571e16abb7460 (9a8d13d), tag v1.29.2, build #18442
sha256 e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855
SHA256 E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855
md5 d41d8cd98f00b204e9800998ecf8427e, crc32 0x1c291ca3, etag \"33a64df551425fcc55e4d42a148795d9f25f89d4\"
arn:aws:iam::123456789012:role/deploy-role, account 123456789012, region eu-west-1
docker image sha256:4bcd1f2a9e1a7c2e0b6e3e7e3a6f5d1c8b2a9f0e7d6c5b4a3f2e1d0c9b8a7f6e5
base64 aGVsbG8gd29ybGQ= and eyJmb28iOiJiYXIifQ== (one JSON segment, no token)
ISBN 978-3-16-148410-0, ISSN 2049-3630, DOI 10.1000/182, order 123-45-678, part 12-3456-7
";

const NUMBERS: &str = "\
Timestamps: 1700000000, 1700000000123, 2024-11-28T14:32:05.123Z, 2024-11-28 14:32:05+05:30,
Thu, 28 Nov 2024 14:32:05 GMT, 28/11/2024, 11/28/24, 14:32:05.123456, 20241128T143205Z.
Versions: 1.2.3, v2.0.0-beta.1, 10.15.7, 3.11.4, 0.9.1, 1.0.0-rc.2+build.5, node@18.17.0.
Prices: $1,299.99, 49.00 EUR, 1 234,56 €, ¥120000, £0.99/month, USD 1,000,000.00.
Sizes: 4096 bytes, 16 MiB, 1,048,576, 2^32 = 4294967296, 18446744073709551615 (u64::MAX).
Math: 3 + 4 = 7, -273.15, 6.022e23, 1e-9, 0.000123, 3.14159265358979, 48.8566, 2.3522.
Diff: +1234 -567 lines, UTC+8, +05:00, +100 more, x+1, (42), (1 2 3), [12, 34, 56].
Ports: localhost:8080, 127.0.0.1 (loopback), 0.0.0.0, :443, port 5432. HTTP 200 OK, 503 after 30s.
Phone-like but not: call 123, ext. 4567, 555-0100 (7 digits), 2023.11.28, 10.1.2024.
Long digits: 12345678901234567890123, 1234 5678 9012 3456 7890, 12 345 678 901 234.
";

const CODE: &str = r#"
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr: std::net::SocketAddr = "0.0.0.0:8080".parse()?;
    let max = u32::MAX; // 4294967295
    let mask = 0xFFFF_FFFF_u32 & 0x7fffffff;
    let key = std::env::var("OPENAI_API_KEY")?; // never hard-code keys
    println!("{addr} {max} {mask} {}", key.len());
    Ok(())
}

@app.route("/v1/users/<int:user_id>")
@login_required
def get_user(user_id: int) -> dict:
    user = db.session.get(User, user_id)
    return {"id": user.id, "created": user.created_at.isoformat(), "ratio": 0.75}

const config = { retries: 3, timeoutMs: 2500, backoff: [100, 200, 400], pkg: "@types/node" };
export async function fetchAll(ids) { return Promise.all(ids.map((id) => get(`/items/${id}`))); }

SELECT id, email_hash, created_at FROM users WHERE created_at > '2024-01-01' LIMIT 100;
docker run -p 8080:80 -e TOKEN="$TOKEN" -v /srv/data:/data nginx:1.25.3-alpine
kubectl scale deployment/web --replicas=3 -n prod && curl -sf http://localhost:9090/healthz
git log --oneline HEAD~3..HEAD; ssh -i ~/.ssh/id_ed25519 deploy@host; chmod 600 id_rsa
background-image: url("icon@2x.png"); margin: 0 auto; color: #1a2b3c; z-index: 1000;
"#;

const LOGS: &str = "\
2024-11-28T14:32:05.123Z INFO  sluice::proxy request_id=8f14e45f route=chat_completions status=200 latency_ms=183
2024-11-28T14:32:05.456Z WARN  pool: connection reset by peer (os error 104), retrying in 250ms (attempt 2/5)
Nov 28 14:32:06 web-01 kernel: [123456.789012] TCP: out of memory -- consider tuning tcp_mem
E1128 14:32:07.000123   12345 reflector.go:138] Failed to watch *v1.Pod: context deadline exceeded
{\"level\":\"info\",\"ts\":1732804327.5123,\"caller\":\"main.go:42\",\"msg\":\"ready\",\"pid\":4321}
";

#[test]
fn clean_technical_text_yields_no_finding() {
    let sc = Scanner::from_settings(&DlpSettings::default()).expect("builds");
    for (name, text) in [
        ("prose", PROSE),
        ("identifiers", IDENTIFIERS),
        ("numbers", NUMBERS),
        ("code", CODE),
        ("logs", LOGS),
    ] {
        let found: Vec<String> = sc
            .find_all(text.as_bytes())
            .iter()
            .map(|m| format!("{} {:?}", sc.name(m.detector), &text[m.start..m.end]))
            .collect();
        assert!(found.is_empty(), "{name}: {found:#?}");
    }
}

#[test]
fn the_corpus_is_not_trivially_clean() {
    // The same scanner does find things planted in the same text.
    let sc = Scanner::from_settings(&DlpSettings::default()).expect("builds");
    let planted = format!("{CODE} key AKIAIOSFODNN7EXAMPLE mail ops@example.com {NUMBERS}");
    let names: Vec<&str> = sc
        .find_all(planted.as_bytes())
        .iter()
        .map(|m| sc.name(m.detector))
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
}
