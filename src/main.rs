//! The `sluice` command: run, check, keys, audit, dlp, mock.

mod dlp_scan;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sluice::config::default_path;
use sluice::mock::MockOptions;
use sluice::GatewayBuilder;

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "A self-hosted, OpenAI-compatible LLM API gateway"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (FILE: -c, else $SLUICE_CONFIG, else conf/sluice.toml).
    Run {
        #[arg(short = 'c', long = "config")]
        config: Option<PathBuf>,
    },
    /// Validate a config without serving; exit 2 with every error when invalid.
    Check {
        #[arg(short = 'c', long = "config")]
        config: Option<PathBuf>,
        /// Also fetch what the config names on the network: `[identity]`'s discovery document
        /// and JWKS.
        #[arg(long)]
        online: bool,
    },
    /// API keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// The audit trail.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// DLP on files: what the gateway's scanner finds in them.
    Dlp {
        #[command(subcommand)]
        command: DlpCommand,
    },
    /// A standalone OpenAI-compatible mock upstream.
    Mock {
        #[arg(long, default_value = "127.0.0.1:8000")]
        listen: SocketAddr,
        #[arg(long, default_value_t = 0)]
        latency_ms: u64,
        #[arg(long, default_value_t = 0)]
        chunk_delay_ms: u64,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Print a fresh API key (once) and the [[keys]] entry that holds only its SHA-256; with
    /// --store, put it in the config's store instead (running gateways pick it up).
    New {
        #[arg(long)]
        user: String,
        #[arg(long)]
        id: Option<String>,
        /// Create the key in `[store]` (the config's store) rather than print a [[keys]] entry.
        #[arg(long)]
        store: bool,
        /// The key's name (with --store).
        #[arg(long, requires = "store")]
        name: Option<String>,
        /// The config whose store and users to use (with --store).
        #[arg(short = 'c', long = "config", requires = "store")]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum DlpCommand {
    /// Print each finding (file:line:column: detector) in FILEs (stdin without one, or `-`);
    /// exit 1 when there is any. Uses the [dlp] section of -c FILE, else the built-in packs.
    Scan {
        #[arg(short = 'c', long = "config")]
        config: Option<PathBuf>,
        /// Also print the matched text (it is a secret: mind where the output goes).
        #[arg(long)]
        show: bool,
        files: Vec<PathBuf>,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Verify the hash chain of audit log files, oldest first.
    Verify {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => run(default_path(config)),
        Command::Check { config, online } => check(default_path(config), online),
        Command::Keys {
            command:
                KeysCommand::New {
                    user,
                    id,
                    store: false,
                    ..
                },
        } => keys_new(&user, id),
        Command::Keys {
            command:
                KeysCommand::New {
                    user,
                    id,
                    name,
                    config,
                    ..
                },
        } => keys_new_in_store(default_path(config), &user, id, name),
        Command::Audit {
            command: AuditCommand::Verify { files },
        } => audit_verify(&files),
        Command::Dlp {
            command:
                DlpCommand::Scan {
                    config,
                    show,
                    files,
                },
        } => dlp_scan::run(config.as_deref(), show, &files),
        Command::Mock {
            listen,
            latency_ms,
            chunk_delay_ms,
        } => mock(
            listen,
            MockOptions {
                latency_ms,
                chunk_delay_ms,
            },
        ),
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,pingora_core=warn,pingora_proxy=warn,pingora=warn")
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn run(path: PathBuf) -> ExitCode {
    init_tracing();
    let gw = match GatewayBuilder::new()
        .config_file(&path)
        .handle_signals(true)
        .start()
    {
        Ok(g) => g,
        Err(e) => {
            eprintln!("sluice: cannot start with {}:\n{e}", path.display());
            return ExitCode::from(2);
        }
    };
    tracing::info!(listen = %gw.listen_addr(), admin = %gw.admin_addr(), config = %path.display(), "sluice is serving");
    gw.wait();
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

fn check(path: PathBuf, online: bool) -> ExitCode {
    match GatewayBuilder::new().config_file(&path).check() {
        Ok(c) if online && c.identity.is_some() => {
            let Some(identity) = &c.identity else {
                return ExitCode::from(2);
            };
            match sluice::identity::check_online(identity) {
                Ok(line) => {
                    println!("{}: ok ({line})", path.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("identity.issuer: {e}");
                    eprintln!("{}: 1 error(s)", path.display());
                    ExitCode::from(2)
                }
            }
        }
        Ok(c) => {
            println!(
                "{}: ok ({} upstreams, {} models, {} users, {} keys, {} agents, filters: [{}])",
                path.display(),
                c.upstreams.len(),
                c.models.len(),
                c.users.len(),
                c.keys.len(),
                c.agents.len(),
                c.filters
                    .iter()
                    .filter_map(|f| f.get("type").and_then(|t| t.as_str()))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            ExitCode::SUCCESS
        }
        Err(errs) => {
            for e in &errs.0 {
                eprintln!("{e}");
            }
            eprintln!("{}: {} error(s)", path.display(), errs.0.len());
            ExitCode::from(2)
        }
    }
}

fn keys_new(user: &str, id: Option<String>) -> ExitCode {
    use sluice::filters::auth;
    let id = id.unwrap_or_else(|| format!("{user}-{:06x}", rand::random::<u32>() & 0xff_ffff));
    let key = auth::generate_key();
    println!("# The API key for {user} (shown once; Sluice stores only its SHA-256):");
    println!("#   {key}");
    println!("# Add this entry to your config, then reload (SIGHUP or POST /admin/reload):");
    print!("{}", auth::key_entry_toml(&id, user, &key));
    ExitCode::SUCCESS
}

fn keys_new_in_store(
    path: PathBuf,
    user: &str,
    id: Option<String>,
    name: Option<String>,
) -> ExitCode {
    // Read as `run` reads it: a misspelled table (`[stor]`) is an error, not the default store.
    let config = match GatewayBuilder::new().config_file(&path).load() {
        Ok(c) => c,
        Err(errs) => {
            eprintln!("sluice: {}:\n{errs}", path.display());
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sluice: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(sluice::keys::create_in_store(&config, user, id, name)) {
        Ok((id, key)) => {
            println!("# The API key for {user} (shown once; the store holds only its SHA-256):");
            println!("{key}");
            println!("# id: {id}, in {}", config.store.display_url());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sluice: {e}");
            ExitCode::FAILURE
        }
    }
}

fn audit_verify(files: &[PathBuf]) -> ExitCode {
    let report = sluice::filters::audit::verify(files);
    if report.is_ok() {
        println!("{report}");
    } else {
        eprintln!("{report}");
    }
    ExitCode::from(report.exit_code() as u8)
}

fn mock(listen: SocketAddr, opts: MockOptions) -> ExitCode {
    init_tracing();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sluice mock: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let (_tx, rx) = tokio::sync::watch::channel(false);
        let listener = match tokio::net::TcpListener::bind(listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("sluice mock: cannot listen on {listen}: {e}");
                return ExitCode::FAILURE;
            }
        };
        tracing::info!(%listen, "mock upstream serving");
        tokio::select! {
            _ = sluice::mock::serve(listener, opts, rx) => {}
            _ = tokio::signal::ctrl_c() => {}
            _ = async {
                if let Ok(mut t) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    t.recv().await;
                }
            } => {}
        }
        ExitCode::SUCCESS
    })
}

/// The proxy allocates and frees many small objects per request (header maps, JSON values,
/// futures) across its threads; under glibc's malloc that was ~20% of Sluice's instructions.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
