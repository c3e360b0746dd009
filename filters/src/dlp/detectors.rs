//! The built-in detectors of the `secrets` and `pii` packs.
//!
//! Each detector is a pattern (an anchored, byte-oriented DFA: ASCII classes, ASCII `\b`), how
//! its candidates are found cheaply ([`Trigger`]), and an optional [`Validator`]. The order of
//! [`BUILTINS`] is the priority order: when two detectors match at the same place, the first
//! one names the finding (so `sk-ant-…` is an Anthropic key, not an OpenAI one).
//!
//! The names are stable: they appear in redaction markers, audit records and metrics.

use std::sync::LazyLock;

use super::secrets::PROVIDER_SECRETS;
use super::tokens;
use super::validate::{self, Validator};

/// Which pack a built-in detector belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pack {
    Secrets,
    Pii,
}

impl Pack {
    pub(crate) const NAMES: [&'static str; 2] = ["secrets", "pii"];

    pub(crate) fn parse(s: &str) -> Option<Pack> {
        match s {
            "secrets" => Some(Pack::Secrets),
            "pii" => Some(Pack::Pii),
            _ => None,
        }
    }
}

/// How a detector's candidate start positions are found before its DFA runs.
#[derive(Debug, Clone)]
pub(crate) enum Trigger {
    /// The match starts with one of these (case-sensitive) literals.
    Literals(Vec<Vec<u8>>),
    /// The match starts with one of these, ASCII case-insensitively (keyword rules).
    Keywords(Vec<Vec<u8>>),
    /// An e-mail address: found from its `@`, its start by scanning back over the local part.
    Email,
    /// Digit-led: a digit at a word start (or the `+`/`(` right before it). Every match is made
    /// of digits and ` -.()+` only and has the [`NumericShape`]: the scanner skips the DFA where
    /// the bytes there cannot have it.
    Numeric(NumericShape),
    /// Two uppercase letters at a word start followed by a digit.
    Iban,
    /// Any position whose byte is in the set (custom regexes without a usable literal prefix).
    Bytes(Box<[bool; 256]>),
}

/// The definition of a built-in detector.
pub(crate) struct Builtin {
    pub name: &'static str,
    pub pack: Pack,
    pub pattern: &'static str,
    pub trigger: BuiltinTrigger,
    pub validator: Option<Validator>,
}

pub(crate) enum BuiltinTrigger {
    Literals(&'static [&'static str]),
    Email,
    Numeric(NumericShape),
    Iban,
}

/// What every match of a digit-led detector needs (see [`Trigger::Numeric`]), so that the
/// scanner can rule a candidate out without running its DFA.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NumericShape {
    /// How many digits the match starts with, when it starts with a digit.
    pub first_run: (u8, u8),
    /// The bytes that may follow that first run (empty: any).
    pub after_first: &'static [u8],
    /// Digits in the whole match.
    pub min_digits: u8,
    pub needs_dot: bool,
    /// Whether a match may start with `+` or `(`, and then its least number of digits.
    pub signed: Option<u8>,
}

/// The longest digit-led match: 19 card digits and 18 separators.
pub(crate) const NUMERIC_MAX_LEN: usize = 48;

/// Every built-in detector, in priority order: the first secrets, the provider tokens added
/// since, then personal data.
pub(crate) static BUILTINS: LazyLock<Vec<&'static Builtin>> = LazyLock::new(|| {
    FIRST_SECRETS
        .iter()
        .chain(PROVIDER_SECRETS)
        .chain(PII)
        .collect()
});

/// The first fourteen secret detectors (their order is their priority).
const FIRST_SECRETS: &[Builtin] = &[
    Builtin {
        name: "sluice_api_key",
        pack: Pack::Secrets,
        pattern: r"\bsk-sluice-[A-Za-z0-9]{40}\b",
        trigger: BuiltinTrigger::Literals(&["sk-sluice-"]),
        validator: None,
    },
    Builtin {
        name: "anthropic_api_key",
        pack: Pack::Secrets,
        pattern: r"\bsk-ant-[a-z]{2,10}[0-9]{0,4}-[A-Za-z0-9_-]{32,}",
        trigger: BuiltinTrigger::Literals(&["sk-ant-"]),
        validator: None,
    },
    Builtin {
        name: "openai_api_key",
        pack: Pack::Secrets,
        pattern: r"\bsk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20,}",
        trigger: BuiltinTrigger::Literals(&["sk-"]),
        validator: Some(tokens::openai),
    },
    Builtin {
        name: "aws_access_key",
        pack: Pack::Secrets,
        pattern: r"\b(?:AKIA|ASIA|ABIA|ACCA)[A-Z2-7]{16}\b",
        trigger: BuiltinTrigger::Literals(&["AKIA", "ASIA", "ABIA", "ACCA"]),
        validator: None,
    },
    Builtin {
        name: "github_token",
        pack: Pack::Secrets,
        pattern: r"\b(?:(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{36}|github_pat_[A-Za-z0-9]{22}_[A-Za-z0-9]{59})\b",
        trigger: BuiltinTrigger::Literals(&["gh", "github_pat_"]),
        validator: Some(tokens::github),
    },
    Builtin {
        name: "gitlab_token",
        pack: Pack::Secrets,
        pattern: r"\b(?:(?:glpat|gloas|gldt|glrt|glcbt|glptt|glft|glimt|glagent|glsoat|glffct)-[A-Za-z0-9_.-]{20,}|GR1348941[A-Za-z0-9_-]{20,})",
        // `gl` (shared with Grafana's `glsa_`/`glc_`): one short literal, not eleven.
        trigger: BuiltinTrigger::Literals(&["gl", "GR1348941"]),
        validator: Some(tokens::random),
    },
    Builtin {
        name: "slack_token",
        pack: Pack::Secrets,
        pattern: r"\b(?:xox[abposr]-[A-Za-z0-9-]{10,}|xoxe\.xox[bp]-1-[A-Za-z0-9-]{40,}|xoxe-1-[A-Za-z0-9-]{40,}|xapp-[0-9]-[A-Za-z0-9-]{10,})",
        trigger: BuiltinTrigger::Literals(&["xox", "xapp-"]),
        validator: None,
    },
    Builtin {
        name: "slack_webhook",
        pack: Pack::Secrets,
        pattern: r"\bhooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9/_+-]{20,}",
        trigger: BuiltinTrigger::Literals(&["hooks.slack.com/"]),
        validator: None,
    },
    Builtin {
        name: "stripe_key",
        pack: Pack::Secrets,
        pattern: r"\b(?:(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{20,}|pk_live_[A-Za-z0-9]{20,}|whsec_[A-Za-z0-9+/=]{24,})",
        trigger: BuiltinTrigger::Literals(&["sk_", "rk_", "pk_live_", "whsec_"]),
        validator: Some(tokens::stripe),
    },
    Builtin {
        name: "google_api_key",
        pack: Pack::Secrets,
        pattern: r"\bAIza[0-9A-Za-z_-]{35}",
        trigger: BuiltinTrigger::Literals(&["AIza"]),
        validator: None,
    },
    Builtin {
        name: "huggingface_token",
        pack: Pack::Secrets,
        pattern: r"\b(?:hf_|api_org_)[A-Za-z0-9]{30,40}\b",
        trigger: BuiltinTrigger::Literals(&["hf_", "api_org_"]),
        validator: Some(tokens::mixed_case),
    },
    Builtin {
        name: "sendgrid_api_key",
        pack: Pack::Secrets,
        pattern: r"\bSG\.[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43}",
        trigger: BuiltinTrigger::Literals(&["SG."]),
        validator: None,
    },
    Builtin {
        // The whole block: header, base64 body (with PEM header fields), footer. A block whose
        // footer never comes is redacted up to the first byte that cannot be part of a body.
        name: "private_key",
        pack: Pack::Secrets,
        // `\n` and `\r` escapes count as line breaks: a key pasted from a JSON file or a
        // string literal is caught whole.
        pattern: r"-----BEGIN[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----(?:[A-Za-z0-9+/=\s:,]|\\[nr]|-[A-Za-z0-9])*(?:-----END[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----)?",
        trigger: BuiltinTrigger::Literals(&["-----BEGIN"]),
        validator: Some(tokens::pem_block),
    },
    Builtin {
        name: "jwt",
        pack: Pack::Secrets,
        pattern: r"\beyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]*",
        trigger: BuiltinTrigger::Literals(&["eyJ"]),
        validator: None,
    },
];

/// The `pii` pack.
const PII: &[Builtin] = &[
    Builtin {
        name: "email",
        pack: Pack::Pii,
        pattern: r"[A-Za-z0-9._%+-]+@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,24}\b",
        trigger: BuiltinTrigger::Email,
        validator: Some(validate::email),
    },
    Builtin {
        name: "credit_card",
        pack: Pack::Pii,
        pattern: r"\b[0-9](?:[ -]?[0-9]){12,18}\b(?:[.:/][0-9A-Za-z])?",
        trigger: BuiltinTrigger::Numeric(NumericShape {
            first_run: (4, 19),
            after_first: b"",
            min_digits: 13,
            needs_dot: false,
            signed: None,
        }),
        validator: Some(validate::card),
    },
    Builtin {
        name: "us_ssn",
        pack: Pack::Pii,
        pattern: r"\b[0-9]{3}(?:-[0-9]{2}-|\x20[0-9]{2}\x20)[0-9]{4}\b(?:[.:/][0-9A-Za-z])?",
        trigger: BuiltinTrigger::Numeric(NumericShape {
            first_run: (3, 3),
            after_first: b"- ",
            min_digits: 9,
            needs_dot: false,
            signed: None,
        }),
        validator: Some(validate::ssn),
    },
    Builtin {
        name: "iban",
        pack: Pack::Pii,
        pattern: r"\b[A-Z]{2}[0-9]{2}(?:\x20?[A-Z0-9]{4}){2,7}(?:\x20?[A-Z0-9]{1,3})?\b",
        trigger: BuiltinTrigger::Iban,
        validator: Some(validate::iban),
    },
    Builtin {
        name: "phone_number",
        pack: Pack::Pii,
        pattern: r"(?:(?:\+1[-. ]?)?(?:\([2-9][0-9]{2}\)\x20?|\b[2-9][0-9]{2}[-. ])[0-9]{3}[-. ][0-9]{4}\b|\+[1-9][0-9]{0,2}[-. ]?(?:\([0-9]{1,4}\)[-. ]?)?[0-9]{1,4}(?:[-. ]?[0-9]{1,4}){1,4}\b)(?:[.:/][0-9A-Za-z])?",
        trigger: BuiltinTrigger::Numeric(NumericShape {
            first_run: (3, 3),
            after_first: b"-. ",
            min_digits: 10,
            needs_dot: false,
            signed: Some(10),
        }),
        validator: Some(validate::phone),
    },
    Builtin {
        name: "ipv4",
        pack: Pack::Pii,
        pattern: r"\b(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\b(?:\.[0-9]|-[A-Za-z])?",
        trigger: BuiltinTrigger::Numeric(NumericShape {
            first_run: (1, 3),
            after_first: b".",
            min_digits: 4,
            needs_dot: true,
            signed: None,
        }),
        validator: Some(validate::ipv4),
    },
];

/// The names of every built-in detector, in priority order.
pub fn builtin_names() -> impl Iterator<Item = &'static str> {
    BUILTINS.iter().map(|b| b.name)
}
