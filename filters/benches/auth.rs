//! What authenticating a request costs: a Sluice key (SHA-256, then a table lookup) next to a
//! provider's JWT access token verified with a cached key (RS256, ES256, EdDSA; no network),
//! each through the auth filter's `on_request_head`, as a request pays it.
//!
//! The JWT path goes through a `TokenAuthority` that does what the engine's does on a cached key
//! set (`jwt::verify`, then the first `identity.roles` glob over the groups); the engine adds
//! one mutex-guarded map lookup (its sightings throttle). The tokens and public keys below were
//! made once with Node's crypto (no private key is kept); they expire in 2100.
//!
//! `cargo bench -p sluice-filters --bench auth`

use std::sync::Arc;

use async_trait::async_trait;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue, Method};
use serde::Deserialize;
use sluice_filters::audit::AuditSettings;
use sluice_filters::auth::jwt::{self, ProviderKeys, TokenRules};
use sluice_filters::auth::{AuthoritySlot, TokenAuthority, TokenRefusal, TokenUser};
use sluice_filters::dlp::DlpSettings;
use sluice_filters::policy::{KeyConfig, OrgConfig, RoleConfig, UserConfig};
use sluice_filters::ratelimit::RateLimitSettings;
use sluice_filters::{
    auth, glob_match, Cx, Filter, Policy, RequestHead, Sections, Shared, Verdict,
};

const ISSUER: &str = "https://login.example.com/realms/acme";
const JWKS: &str = r#"{"keys": [{"kty": "RSA", "n": "lx1fnJLoRj_ohzvgcNZFSOd1PGPIBW2cEpN_bGdhOwVioLcBdczDaGmn54ub-R_EqEKSaAyFEc8z9klbbyTy27CMmew-k9aqQBeDxVSGpSzPybUZbpVFkVHzhtK39ZdiNDEPdUWQ3E9NcjkZV1NX2-ZQDPnfzGneXM11mVcVE6j43zk_Tm0eNPshg69botOdI4XcITFHn_tjbzGRB3GzWnT1mCtZM5Hmzmz-gw3xJbclctGtevv1Fri7IfMgXsCFjQb5EaYyWxEkSEevW2icNHZsnF9DipS6FVVqEklAh3wzifHWv5zB0VVHI_vWy1YsPRGWpkfLdczZ1RuR_UNYDw", "e": "AQAB", "kid": "rsa-1", "alg": "RS256", "use": "sig"}, {"kty": "EC", "x": "oYv_0hNQ4LfIXmbP22aLdTr5DGsd0dtxcIA2imaSzaw", "y": "Ngjbk1jBcxQEbkK_Xh7eBeWVpkuCModIMYo7r85JQls", "crv": "P-256", "kid": "ec-1", "alg": "ES256", "use": "sig"}, {"crv": "Ed25519", "x": "8WO4ISvRgNGvJhmQEyij1UqKFUBde-fi6YGHhzPdxQg", "kty": "OKP", "kid": "ed-1", "alg": "EdDSA", "use": "sig"}]}"#;
const RS256: &str = "eyJhbGciOiJSUzI1NiIsImtpZCI6InJzYS0xIiwidHlwIjoiYXQrand0In0.eyJpc3MiOiJodHRwczovL2xvZ2luLmV4YW1wbGUuY29tL3JlYWxtcy9hY21lIiwiYXVkIjoic2x1aWNlIiwic3ViIjoidS0xIiwiZW1haWwiOiJhbm5AZXhhbXBsZS5jb20iLCJncm91cHMiOlsiZW5nIiwic3RhZmYiXSwiaWF0IjoxNzY1MDAwMDAwLCJleHAiOjQxMDI0NDQ4MDAsInNjb3BlIjoiYXBpIn0.lnsmfe1iZpWyEgS2Bf9zAiB9XFFg-Z4PmN9xyK7ll-nZ0D0IgtZbrrMKfCk0JxqGpry1lI__Xkb76kFUXSvdY-sTN6h9dUl8Bw7vXJOBxBct3fY9pIxVER3_CgQEEy7Tp1VIhe-dkkcDg2VYT7dJ3IM1iwVdaOZb7htBUQLf-XO-PXizdx1AAa1Ezz_6uyi4Ksz3mY0gRlhFjHniHfNpJFm76kvJWmu09WImqLkjUlp2SPnyg9hYWG46Od0pp_khqIV-96W4s9nkYyz6jTw__9eS4PVTdZo010kpxo4BuiSz9Gpe_mn1sGt44pBrF5iUtSGIs0MSufIe07cgV4CJCA";
const ES256: &str = "eyJhbGciOiJFUzI1NiIsImtpZCI6ImVjLTEiLCJ0eXAiOiJhdCtqd3QifQ.eyJpc3MiOiJodHRwczovL2xvZ2luLmV4YW1wbGUuY29tL3JlYWxtcy9hY21lIiwiYXVkIjoic2x1aWNlIiwic3ViIjoidS0xIiwiZW1haWwiOiJhbm5AZXhhbXBsZS5jb20iLCJncm91cHMiOlsiZW5nIiwic3RhZmYiXSwiaWF0IjoxNzY1MDAwMDAwLCJleHAiOjQxMDI0NDQ4MDAsInNjb3BlIjoiYXBpIn0._EgPFp-SjB3mAzkZWU3ieW5UBxIRPPFD3zvlIRsyOJ7GULI-ZeXpCeLNm-LOc0HlfEYseqf7M11-2QItoCFhhg";
const EDDSA: &str = "eyJhbGciOiJFZERTQSIsImtpZCI6ImVkLTEiLCJ0eXAiOiJhdCtqd3QifQ.eyJpc3MiOiJodHRwczovL2xvZ2luLmV4YW1wbGUuY29tL3JlYWxtcy9hY21lIiwiYXVkIjoic2x1aWNlIiwic3ViIjoidS0xIiwiZW1haWwiOiJhbm5AZXhhbXBsZS5jb20iLCJncm91cHMiOlsiZW5nIiwic3RhZmYiXSwiaWF0IjoxNzY1MDAwMDAwLCJleHAiOjQxMDI0NDQ4MDAsInNjb3BlIjoiYXBpIn0.6DRnOa9dK8k_LVVU5QEtxhbZTXZKXquZaV6EP3q0b0spW5jpydnz7bydK1G1OkiRaF_L4HzaehlmSZrm0o8ICQ";
const KEY: &str = "sk-sluice-BENCHbenchBENCHbenchBENCHbenchBENCHbe";

#[derive(Deserialize)]
struct BenchConfig {
    orgs: Vec<OrgConfig>,
    roles: Vec<RoleConfig>,
    users: Vec<UserConfig>,
    keys: Vec<KeyConfig>,
}

/// Verifies with the cached key set and maps groups to a role, as the engine does.
struct CachedKeys {
    keys: ProviderKeys,
    rules: TokenRules,
}

#[async_trait]
impl TokenAuthority for CachedKeys {
    async fn authenticate(&self, token: &str) -> Result<TokenUser, TokenRefusal> {
        let claims = jwt::verify(token, &self.keys, &self.rules)
            .map_err(|e| TokenRefusal::Invalid(e.message()))?;
        let name = claims
            .string("email")
            .ok_or_else(|| TokenRefusal::Invalid("no email".into()))?;
        if !claims
            .strings("groups")
            .iter()
            .any(|g| glob_match("eng", g))
        {
            return Err(TokenRefusal::NoRole("no group".into()));
        }
        Ok(TokenUser {
            name: Arc::from(name),
            org: Arc::from("acme"),
            role: Arc::from("dev"),
        })
    }
}

fn filter() -> Arc<dyn Filter> {
    let text = format!(
        "[[orgs]]\nname = \"acme\"\n[[roles]]\nname = \"dev\"\npermissions = [\"chat\"]\n\
         models = [\"*\"]\n[[users]]\nname = \"alice\"\norg = \"acme\"\nrole = \"dev\"\n\
         [[keys]]\nid = \"a1\"\nuser = \"alice\"\nsha256 = \"{}\"\n",
        auth::key_sha256_hex(KEY)
    );
    let cfg: BenchConfig = toml::from_str(&text).expect("bench config");
    let (rate_limit, dlp) = (RateLimitSettings::default(), DlpSettings::default());
    let audit: AuditSettings = toml::from_str("").expect("audit defaults");
    let policy = Policy {
        orgs: &cfg.orgs,
        roles: &cfg.roles,
        users: &cfg.users,
        keys: &cfg.keys,
        sections: Sections::new().with(&rate_limit).with(&dlp).with(&audit),
        models: &[],
        agents: &[],
        prices: sluice_filters::spend::no_prices(),
    };
    let shared = Shared::new(prometheus::Registry::new());
    let keys = ProviderKeys::from_jwks(JWKS.as_bytes()).expect("jwks");
    let rules = TokenRules::new(ISSUER, &["sluice".to_string()]);
    AuthoritySlot::in_shared(&shared).install(Some(Box::new(CachedKeys { keys, rules })));
    auth::build(&policy, &toml::Table::new(), "filters[0]", &shared).expect("auth filter")
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let f = filter();
    let mut g = c.benchmark_group("auth_on_request_head");
    for (name, credential) in [
        ("sluice_key", KEY),
        ("jwt_rs256_cached", RS256),
        ("jwt_es256_cached", ES256),
        ("jwt_eddsa_cached", EDDSA),
    ] {
        let mut headers = HeaderMap::new();
        let value = HeaderValue::from_str(&format!("Bearer {credential}")).expect("header");
        headers.insert(http::header::AUTHORIZATION, value);
        g.bench_function(name, |b| {
            b.iter(|| {
                rt.block_on(async {
                    let mut cx = Cx::new("b".into(), Method::POST, "/v1/chat/completions".into());
                    let head = RequestHead {
                        method: &Method::POST,
                        path: "/v1/chat/completions",
                        headers: &headers,
                    };
                    let v = f.on_request_head(&head, &mut cx).await;
                    assert!(matches!(v, Verdict::Continue), "{name} must authenticate");
                })
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
