//! The triggers against an oracle that has none: on generated texts, the scanner finds exactly
//! what trying every detector at every position finds. A trigger that misses a start (a word
//! start not indexed, an operator not looked back from, a digit run skipped) fails here.

use super::{FindCx, Match, Scanner};
use crate::dlp::{DlpSettings, Scanner as PubScanner};

/// Pieces that start, nearly start or end matches, and the bytes between them.
const PIECES: &[&str] = &[
    "AKIAIOSFODNN7EXAMPLE",
    "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",
    "ghp_",
    "gh",
    "gl",
    "glpat-",
    "xoxb-",
    "sk-",
    "sk-ant-api03-",
    "sk_live_",
    "rk_live_",
    "SK",
    "MT",
    "NR",
    "hv",
    "hvs.",
    "-----BEGIN",
    "-----BEGIN RSA PRIVATE KEY-----\n",
    "\"private_key\"",
    "AccountKey=",
    "sig=",
    "hooks.slack.com/services/",
    "discord.com/api/webhooks/",
    "AGE-SECRET-KEY-1",
    "eyJ",
    "password",
    "PassWord",
    "db_password",
    "myPASSWD",
    "api_key",
    "Api-Key",
    "accesstoken",
    "auth-token",
    "secret",
    "://",
    "postgres://",
    "user:",
    ":",
    "=",
    ":=",
    "=>",
    "\"",
    "'",
    " ",
    "  ",
    "\t",
    "\n",
    "@",
    ".",
    "-",
    "_",
    "+",
    "(",
    ")",
    "+1 ",
    "(415) ",
    "555-2671",
    "4111 1111 1111 1111",
    "536-22-1234",
    "81.2.69.142",
    "DE89 3704 0044 0532 0130 00",
    "12345678:",
    "12345678:A",
    "://admin:",
    "-----END PRIVATE KEY-----",
    "\"private_key\": \"-----BEGIN PRIVATE KEY-----\\n",
    "dop_v1_",
    "dapi",
    "npm_",
    "pypi-AgEIcHlwaS5vcmc",
    "ATATT3",
    "SG.",
    "AIza",
    "0123456789",
    "2024",
    "hunter2hunter2",
    "Zx9Qw8Er7Ty6Ui5Op4As3Df2",
    "abcdef0123456789abcdef0123456789",
    "the",
    "é",
];

struct Gen(u64);

impl Gen {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }

    fn text(&mut self) -> Vec<u8> {
        let mut t = Vec::new();
        for _ in 0..1 + self.below(40) {
            if self.below(6) == 0 {
                // A run of random word bytes: keys, values, tokens' bodies.
                const BODY: &[u8] =
                    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";
                let hex = self.below(3) == 0;
                for _ in 0..1 + self.below(100) {
                    t.push(if hex {
                        BODY[52 + self.below(10)]
                    } else {
                        BODY[self.below(64)]
                    });
                }
            } else {
                t.extend_from_slice(PIECES[self.below(PIECES.len())].as_bytes());
            }
        }
        t
    }
}

/// Every detector but `email` (whose trigger picks the longest local part, where the oracle
/// would find every suffix of it) tried at every position from `from`.
fn oracle(sc: &Scanner, hay: &[u8], from: usize) -> Vec<Match> {
    let mut out = Vec::new();
    let mut cx = FindCx {
        hay,
        fin: true,
        out: &mut out,
        hold: usize::MAX,
        ends: Vec::new(),
    };
    for s in from..hay.len() {
        for d in 0..sc.len() {
            if sc.name(d) != "email" {
                sc.try_at(d, s, &mut cx);
            }
        }
    }
    sorted(out)
}

fn sorted(mut ms: Vec<Match>) -> Vec<Match> {
    ms.sort_by_key(|m| (m.start, m.detector, m.end));
    ms
}

#[test]
fn the_triggers_miss_no_match() {
    let sc: PubScanner = PubScanner::from_settings(&DlpSettings::default()).expect("default packs");
    let email = sc.names().position(|n| n == "email");
    let mut g = Gen(0x2545_F491_4F6C_DD1D);
    let mut found = vec![0usize; sc.len()];
    for i in 0..10_000 {
        let hay = g.text();
        let from = if i % 3 == 0 {
            g.below(hay.len() + 1)
        } else {
            0
        };
        let mut got = Vec::new();
        sc.find_unexempted(&hay, from, true, &mut got);
        got.retain(|m| Some(m.detector) != email);
        let want = oracle(&sc, &hay, from);
        for m in &want {
            found[m.detector] += 1;
        }
        assert_eq!(
            sorted(got),
            want,
            "text {:?} from {from}",
            String::from_utf8_lossy(&hay)
        );
    }
    // The generator makes matches of most kinds, for the comparison to mean something.
    let kinds: Vec<&str> = (0..sc.len())
        .filter(|&d| found[d] > 0)
        .map(|d| sc.name(d))
        .collect();
    assert!(kinds.len() >= 20, "matched kinds: {kinds:?}");
}

#[test]
fn the_default_packs_take_one_literal_pass() {
    // Every token prefix is word-anchored; what is not (`generic_secret`'s key names, found
    // inside longer names, and `://`) fits one Teddy group.
    let sc = PubScanner::from_settings(&DlpSettings::default()).expect("default packs");
    assert!(sc.words.is_some());
    assert_eq!(sc.literals.as_ref().map(|l| l.passes()), Some(1));
    assert!(sc.keywords.is_none());
}
