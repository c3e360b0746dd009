//! The provider tokens of the `secrets` pack beyond the first fourteen (those are in
//! [`detectors`](super::detectors)): formats published by each provider, or read off the
//! tokens it issues, each with its own checks in [`tokens`](super::tokens). The DLP manual
//! (`filters/src/dlp/README.md`) names the source of truth of every one.
//!
//! A pattern starts with its trigger literal (the scanner finds candidates by it) and is as
//! tight as the format allows: fixed lengths, the provider's alphabet, word boundaries.

use super::detectors::{Builtin, BuiltinTrigger, NumericShape, Pack};
use super::tokens;

const fn secret(
    name: &'static str,
    pattern: &'static str,
    literals: &'static [&'static str],
    validator: Option<super::validate::Validator>,
) -> Builtin {
    Builtin {
        name,
        pack: Pack::Secrets,
        pattern,
        trigger: BuiltinTrigger::Literals(literals),
        validator,
    }
}

/// In priority order, after the first fourteen and before the `pii` pack; the generic ones
/// (URLs with passwords, `password = …`) last.
pub(crate) const PROVIDER_SECRETS: &[Builtin] = &[
    secret(
        "azure_storage_key",
        r"\bAccountKey=[A-Za-z0-9+/]{86}==",
        &["AccountKey="],
        Some(tokens::random),
    ),
    secret(
        "azure_sas_token",
        r"\bsig=[A-Za-z0-9%+/]{43,60}(?:%3[Dd]|=)",
        &["sig="],
        Some(tokens::azure_sas),
    ),
    secret(
        "gcp_service_account_key",
        r#""private_key"\s{0,4}:\s{0,4}"-----BEGIN PRIVATE KEY-----(?:\\n|[A-Za-z0-9+/=])+-----END PRIVATE KEY-----(?:\\n)?""#,
        &["\"private_key\""],
        None,
    ),
    secret(
        "google_oauth",
        r"\b(?:GOCSPX-[A-Za-z0-9_-]{28}|ya29\.[A-Za-z0-9_-]{30,})",
        &["GOCSPX-", "ya29."],
        Some(tokens::random),
    ),
    secret(
        "twilio_api_key",
        r"\bSK[0-9a-f]{32}\b",
        &["SK"],
        Some(tokens::random),
    ),
    secret(
        "mailgun_api_key",
        r"\bkey-[0-9a-f]{32}\b",
        &["key-"],
        Some(tokens::random),
    ),
    secret(
        "shopify_token",
        r"\bshp(?:at|ca|pa|ss)_[a-fA-F0-9]{32}\b",
        &["shp"],
        Some(tokens::random),
    ),
    secret(
        "databricks_token",
        r"\bdapi[0-9a-f]{32}(?:-[0-9])?\b",
        &["dapi"],
        Some(tokens::random),
    ),
    secret(
        "digitalocean_token",
        r"\bdo[por]_v1_[a-f0-9]{64}\b",
        &["dop_v1_", "doo_v1_", "dor_v1_"],
        Some(tokens::random),
    ),
    secret(
        "vault_token",
        r"\bhv[sbr]\.[A-Za-z0-9_-]{24,}",
        &["hv"],
        Some(tokens::random),
    ),
    secret(
        "doppler_token",
        r"\bdp\.(?:pt|st|sa|ct|scim|audit)\.[A-Za-z0-9]{40,44}\b",
        &["dp."],
        Some(tokens::random),
    ),
    secret(
        "linear_api_key",
        r"\blin_(?:api|oauth)_[A-Za-z0-9]{40,64}\b",
        &["lin_"],
        Some(tokens::random),
    ),
    secret(
        "atlassian_api_token",
        r"\bATATT3[A-Za-z0-9_=-]{180,}",
        &["ATATT3"],
        Some(tokens::random),
    ),
    secret(
        // The first part is the bot's user id in base64: a snowflake of 17–20 digits, whose
        // first two digits fix the first two characters.
        "discord_bot_token",
        r"\b[MNO][A-Za-z0-9_-]{23,27}\.[A-Za-z0-9_-]{6}\.[A-Za-z0-9_-]{27,40}\b",
        &["MT", "Mj", "Mz", "ND", "NT", "Nj", "Nz", "OD", "OT"],
        Some(tokens::discord),
    ),
    secret(
        "discord_webhook",
        r"\bdiscord(?:app)?\.com/api/webhooks/[0-9]{17,20}/[A-Za-z0-9_-]{60,68}",
        &["discord"],
        None,
    ),
    Builtin {
        name: "telegram_bot_token",
        pack: Pack::Secrets,
        pattern: r"\b[0-9]{8,10}:A[A-Za-z0-9_-]{34}\b",
        trigger: BuiltinTrigger::Numeric(NumericShape {
            first_run: (8, 10),
            after_first: b":",
            min_digits: 8,
            needs_dot: false,
            signed: None,
        }),
        validator: Some(tokens::random),
    },
    secret(
        "npm_token",
        r"\bnpm_[A-Za-z0-9]{36}\b",
        &["npm_"],
        Some(tokens::npm),
    ),
    secret(
        // A macaroon whose first caveat is the location of PyPI (or of TestPyPI), base64.
        "pypi_token",
        r"\bpypi-AgE(?:IcHlwaS5vcmc|NdGVzdC5weXBpLm9yZw)[A-Za-z0-9_-]{50,}",
        &["pypi-AgE"],
        None,
    ),
    secret(
        "dockerhub_token",
        r"\bdckr_(?:pat|oat)_[A-Za-z0-9_-]{27,}",
        &["dckr_"],
        Some(tokens::random),
    ),
    secret(
        "grafana_token",
        r"\b(?:glsa_[A-Za-z0-9]{32}_[A-Fa-f0-9]{8}|glc_[A-Za-z0-9+/]{32,}={0,2})",
        &["gl"],
        Some(tokens::random),
    ),
    secret(
        "age_secret_key",
        r"\bAGE-SECRET-KEY-1[QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L]{58}",
        &["AGE-SECRET-KEY-1"],
        None,
    ),
    secret(
        "crates_io_token",
        r"\bcio[A-Za-z0-9]{32}\b",
        &["cio"],
        Some(tokens::random),
    ),
    secret(
        "new_relic_key",
        r"\bNR(?:AK-[A-Za-z0-9]{27}|II-[A-Za-z0-9-]{32})\b",
        &["NR"],
        Some(tokens::random),
    ),
    secret(
        "sentry_token",
        r"\bsntry[su]_[A-Za-z0-9+/=_-]{40,}",
        &["sntry"],
        Some(tokens::random),
    ),
    secret(
        "postman_api_key",
        r"\bPMAK-[a-f0-9]{24}-[a-f0-9]{34}\b",
        &["PMAK-"],
        Some(tokens::random),
    ),
    secret(
        "pulumi_token",
        r"\bpul-[a-f0-9]{40}\b",
        &["pul-"],
        Some(tokens::random),
    ),
    secret(
        "groq_api_key",
        r"\bgsk_[A-Za-z0-9]{52}\b",
        &["gsk_"],
        Some(tokens::random),
    ),
    secret(
        "tailscale_key",
        r"\btskey-(?:auth|api|client|scim|webhook)-[A-Za-z0-9]{6,}-[A-Za-z0-9]{16,}",
        &["tskey-"],
        Some(tokens::random),
    ),
    secret(
        // `scheme://user:password@`: the match is `://user:password@` (the validator reads the
        // scheme behind it), so the scheme and the host stay readable, and one rare literal
        // finds every scheme.
        "database_url",
        r#"://[^\s:@/?#"'<>]{1,64}:[^\s@/?#"'<>]{1,128}@"#,
        &["://"],
        Some(tokens::database_url),
    ),
    Builtin {
        // The key names of credentials in code, configs and `.env` files, then the operator
        // and a quoted or bare value; `tokens::assignment` decides whether the value is one.
        name: "generic_secret",
        pack: Pack::Secrets,
        pattern: r#"(?i:password|passwd|secret|api[_-]?key|access[_-]?key|auth[_-]?token|access[_-]?token)[A-Za-z0-9_]{0,16}["']?[ \t]{0,3}(?::=|=>|[:=])[ \t]{0,3}["']?[^\s"'`,;]{8,128}"#,
        // The usual spellings' first letters, case-sensitively (a case-insensitive automaton
        // costs several times more per byte); the pattern decides the rest, in any case.
        trigger: BuiltinTrigger::Literals(&[
            "pass", "Pass", "PASS", "secret", "Secret", "SECRET", "api", "Api", "API", "access",
            "Access", "ACCESS", "auth", "Auth", "AUTH",
        ]),
        validator: Some(tokens::assignment),
    },
];
