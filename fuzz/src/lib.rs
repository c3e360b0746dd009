//! What the fuzz targets share: one config with the whole policy chain (no audit: a fuzzer must
//! not write files), the chain and DLP filters built from it once, and a runtime to drive the
//! async filter phases.

use std::future::Future;
use std::sync::OnceLock;

use sluice::chain::{Chain, FilterTypes};
use sluice::filters::dlp::{DlpFilter, DlpSettings};
use sluice::filters::Shared;
use sluice::Config;

/// The key the config knows (the README's public demo key).
pub const DEMO_KEY: &str = "sk-sluice-DEMOkeyDEMOkeyDEMOkeyDEMOkeyDEMOkey12345";

/// Upstreams are IP literals: loading resolves nothing.
pub const CONFIG: &str = r#"
[server]
listen = "127.0.0.1:18080"
admin_listen = "127.0.0.1:19090"

[[upstreams]]
name = "local"
url = "http://127.0.0.1:9"

[[models]]
name = "mock-echo"
upstream = "local"

[[models]]
name = "gpt-4o"
upstream = "local"

[[orgs]]
name = "acme"
rate_limit = { requests_per_minute = 1000000000, tokens_per_minute = 1000000000000 }

[[roles]]
name = "dev"
permissions = ["chat", "models:list", "agents:run", "embeddings", "passthrough"]
models = ["mock-*"]
agents = ["*"]

[[users]]
name = "alice"
org = "acme"
role = "dev"

[[keys]]
id = "demo"
user = "alice"
sha256 = "3ce9704b5e7cfd01a1b5b2a0aa71d65a0f72d983f20ff758e3ed8456f4aa70c5"

[[agents]]
id = "daily-scan"
model = "mock-echo"
instructions = "Summarise."

[dlp]
packs = ["secrets", "pii"]
request_action = "redact"
response_action = "redact"
[[dlp.rules]]
name = "codename"
keywords = ["BLUEBIRD", "NIGHTJAR"]
action = "block"
[[dlp.rules]]
name = "employee_id"
regex = 'EMP-[0-9]{6}'
action = "mask"

[[filters]]
type = "auth"
[[filters]]
type = "rate_limit"
[[filters]]
type = "dlp"
"#;

pub fn config() -> &'static Config {
    static C: OnceLock<Config> = OnceLock::new();
    C.get_or_init(|| Config::parse(CONFIG).unwrap_or_else(|e| panic!("fuzz config: {e}")))
}

fn shared() -> &'static Shared {
    static S: OnceLock<Shared> = OnceLock::new();
    S.get_or_init(|| Shared::new(prometheus::Registry::new()))
}

/// A gateway's state without listeners, on [`CONFIG`] (its key store a SQLite file in the temp
/// directory, made once): what the request pipeline runs on.
pub fn state() -> &'static std::sync::Arc<sluice::state::EngineState> {
    static S: OnceLock<std::sync::Arc<sluice::state::EngineState>> = OnceLock::new();
    S.get_or_init(|| {
        let db = std::env::temp_dir().join(format!("sluice-fuzz-{}.db", std::process::id()));
        let text = format!("{CONFIG}\n[store]\nurl = \"sqlite://{}\"\n", db.display());
        let cfg = Config::parse(&text).unwrap_or_else(|e| panic!("fuzz config: {e}"));
        run(sluice::state::EngineState::offline(
            cfg,
            FilterTypes::default(),
        ))
        .unwrap_or_else(|e| panic!("fuzz state: {e}"))
    })
}

/// auth → rate_limit → dlp, as a gateway builds it.
pub fn chain() -> &'static Chain {
    static C: OnceLock<Chain> = OnceLock::new();
    C.get_or_init(|| {
        let _rt = runtime().enter();
        Chain::build(config(), &FilterTypes::default(), shared())
            .unwrap_or_else(|e| panic!("fuzz chain: {e:?}"))
    })
}

/// A DLP filter with both packs and no custom rules, whose answers are redacted: what a client
/// receives must then equal [`sluice::filters::dlp::Scanner::apply`] of the whole text.
pub fn redacting_dlp() -> &'static DlpFilter {
    static D: OnceLock<DlpFilter> = OnceLock::new();
    D.get_or_init(|| {
        let settings: DlpSettings =
            toml_settings("packs = [\"secrets\", \"pii\"]\nresponse_action = \"redact\"");
        DlpFilter::new(&settings, shared()).unwrap_or_else(|e| panic!("fuzz dlp: {e:?}"))
    })
}

/// The config's DLP filter (custom block and mask rules included), by itself.
pub fn config_dlp() -> &'static DlpFilter {
    static D: OnceLock<DlpFilter> = OnceLock::new();
    D.get_or_init(|| {
        DlpFilter::new(&config().dlp, shared()).unwrap_or_else(|e| panic!("fuzz dlp: {e:?}"))
    })
}

fn toml_settings(text: &str) -> DlpSettings {
    let cfg = Config::parse(&format!("{}\n[dlp]\n{text}\n", server_only()))
        .unwrap_or_else(|e| panic!("fuzz dlp settings: {e}"));
    cfg.dlp
}

fn server_only() -> &'static str {
    "[server]\nlisten = \"127.0.0.1:18080\"\nadmin_listen = \"127.0.0.1:19090\""
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static R: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    R.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("fuzz runtime: {e}"))
    })
}

/// Runs a filter phase to completion.
pub fn run<F: Future>(f: F) -> F::Output {
    runtime().block_on(f)
}
