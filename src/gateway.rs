//! Building, starting, reloading and stopping a gateway.
//!
//! ```text
//!  control runtime (1 thread): admin listener, built-in mock, signals, reload
//!  pingora server (threads = server.threads): the public listener and the proxy
//! ```
//!
//! Each request snapshots the current [`Snapshot`] (`ArcSwap`), so a reload never changes a
//! request mid-flight; resources that must outlive a reload (metrics, the audit writer, local
//! rate-limit buckets) live in [`Shared`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use http::HeaderValue;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use pingora_core::utils::tls::WrappedX509;
use sluice_filters::{ConfigError, FilterFactory, Shared};
use tokio::sync::{watch, Notify};

use crate::agents::AgentRuns;
use crate::chain::{Chain, FilterTypes};
use crate::config::{load_ca_file, parse_url, Config, ConfigErrors};
use crate::metrics::EngineMetrics;
use crate::mock::{self, MockOptions};
use crate::proxy::SluiceProxy;

/// An upstream ready for the request path: resolved address, credentials, timeouts.
pub struct UpstreamRt {
    pub name: String,
    pub addr: SocketAddr,
    pub tls: bool,
    pub host: String,
    /// The `Host` header: host, plus the port when it is not the scheme's default.
    pub host_header: String,
    pub base_path: String,
    /// `Bearer <key>` from `api_key_env`, never logged.
    pub authorization: Option<HeaderValue>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub idle_timeout: Duration,
    pub ca: Option<Arc<[WrappedX509]>>,
    /// Separates the connection pools of upstreams: Pingora's pool key ignores the trusted CAs,
    /// so two upstreams on one address must never share a connection.
    pub pool_key: u64,
}

/// One config generation: the config, its chain and its routing tables.
pub struct Snapshot {
    pub config: Config,
    pub chain: Chain,
    pub upstreams: Vec<UpstreamRt>,
    /// Model name → (index in `config.models`, index in `upstreams`).
    pub models: HashMap<String, (usize, usize)>,
}

impl Snapshot {
    fn build(
        config: Config,
        types: &FilterTypes,
        shared: &Shared,
        mock_addr: Option<SocketAddr>,
    ) -> Result<Snapshot, ConfigErrors> {
        let mut errs: Vec<ConfigError> = Vec::new();
        let mut upstreams = Vec::new();
        for (i, u) in config.upstreams.iter().enumerate() {
            let p = format!("upstreams[{i}]");
            let target = match (&u.url, &u.builtin, mock_addr) {
                (Some(url), _, _) => match parse_url(url) {
                    Ok(t) => t,
                    Err(m) => {
                        errs.push(ConfigError::new(format!("{p}.url"), m));
                        continue;
                    }
                },
                (None, Some(_), Some(addr)) => crate::config::UpstreamTarget {
                    addr: Some(addr),
                    tls: false,
                    host: addr.to_string(),
                    base_path: String::new(),
                },
                _ => {
                    errs.push(ConfigError::new(
                        p.clone(),
                        "the built-in mock is not running",
                    ));
                    continue;
                }
            };
            let Some(addr) = target.addr else { continue };
            let authorization = match &u.api_key_env {
                Some(env) => match std::env::var(env) {
                    Ok(key) if !key.is_empty() => {
                        match HeaderValue::from_str(&format!("Bearer {key}")) {
                            Ok(mut v) => {
                                v.set_sensitive(true);
                                Some(v)
                            }
                            Err(_) => {
                                errs.push(ConfigError::new(
                                    format!("{p}.api_key_env"),
                                    format!("${env} holds characters a header cannot carry"),
                                ));
                                None
                            }
                        }
                    }
                    _ => {
                        errs.push(ConfigError::new(
                            format!("{p}.api_key_env"),
                            format!("environment variable {env} is not set"),
                        ));
                        None
                    }
                },
                None => None,
            };
            let mut pool_key = std::collections::hash_map::DefaultHasher::new();
            std::hash::Hash::hash(&(&u.name, &u.url, &u.builtin), &mut pool_key);
            let ca = match &u.ca_file {
                Some(path) => match load_ca_file(std::path::Path::new(path)) {
                    Ok(ders) => {
                        std::hash::Hash::hash(&ders, &mut pool_key);
                        let certs: Vec<WrappedX509> = ders
                            .into_iter()
                            .map(|d| WrappedX509::new(d, pingora_core::utils::tls::parse_x509))
                            .collect();
                        Some(Arc::from(certs.into_boxed_slice()))
                    }
                    Err(m) => {
                        errs.push(ConfigError::new(format!("{p}.ca_file"), m));
                        None
                    }
                },
                None => None,
            };
            let default_port = if target.tls { 443 } else { 80 };
            let host_header = match (u.builtin.is_some(), addr.port() == default_port) {
                (true, _) => addr.to_string(),
                (false, true) => target.host.clone(),
                (false, false) if target.host.contains(':') => {
                    format!("[{}]:{}", target.host, addr.port())
                }
                (false, false) => format!("{}:{}", target.host, addr.port()),
            };
            upstreams.push(UpstreamRt {
                name: u.name.clone(),
                addr,
                tls: target.tls,
                host_header,
                host: target.host,
                base_path: target.base_path,
                authorization,
                connect_timeout: Duration::from_millis(u.connect_timeout_ms),
                read_timeout: Duration::from_millis(u.read_timeout_ms),
                idle_timeout: Duration::from_millis(u.idle_timeout_ms),
                ca,
                pool_key: std::hash::Hasher::finish(&pool_key),
            });
        }
        let mut models = HashMap::new();
        for (i, m) in config.models.iter().enumerate() {
            if let Some(u) = upstreams.iter().position(|u| u.name == m.upstream) {
                models.insert(m.name.clone(), (i, u));
            }
        }
        let chain = match Chain::build(&config, types, shared) {
            Ok(c) => Some(c),
            Err(e) => {
                errs.extend(e);
                None
            }
        };
        match chain {
            Some(chain) if errs.is_empty() => Ok(Snapshot {
                config,
                chain,
                upstreams,
                models,
            }),
            _ => Err(ConfigErrors(errs)),
        }
    }
}

/// What the proxy and the admin listener share.
pub struct EngineState {
    pub snapshot: ArcSwap<Snapshot>,
    pub metrics: EngineMetrics,
    pub shared: Arc<Shared>,
    pub types: FilterTypes,
    pub mock_addr: Option<SocketAddr>,
    pub config_path: Option<PathBuf>,
    pub inflight: AtomicUsize,
    pub draining: AtomicBool,
    /// Set once the gateway has fully started (signal handlers included).
    pub ready: AtomicBool,
    /// A random token that lets `start` recognise its own listener.
    pub probe_token: String,
    pub runs: AgentRuns,
}

impl EngineState {
    /// Loads the config again (from its file, or `next` when given) and swaps it in when valid.
    pub fn reload(&self, next: Option<Config>) -> Result<(), ConfigErrors> {
        let config = match next {
            Some(c) => c,
            None => match &self.config_path {
                Some(p) => match Config::load(p) {
                    Ok(c) => c,
                    Err(e) => return Err(self.rejected(e)),
                },
                None => {
                    return Err(ConfigErrors(vec![ConfigError::new(
                        "config",
                        "this gateway was built from a value, not a file",
                    )]))
                }
            },
        };
        let old = self.snapshot.load();
        if config.server.listen != old.config.server.listen
            || config.server.admin_listen != old.config.server.admin_listen
        {
            tracing::warn!(
                "server.listen and server.admin_listen take effect only after a restart"
            );
        }
        match Snapshot::build(config, &self.types, &self.shared, self.mock_addr) {
            Ok(s) => {
                // The new config's series exist before its first request is counted.
                self.metrics.preinit(&s.config);
                self.snapshot.store(Arc::new(s));
                self.metrics.config_reloads.with_label_values(&["ok"]).inc();
                tracing::info!("config reloaded");
                Ok(())
            }
            Err(e) => Err(self.rejected(e)),
        }
    }

    /// Logs and counts a rejected reload; the running config stays.
    fn rejected(&self, e: ConfigErrors) -> ConfigErrors {
        self.metrics
            .config_reloads
            .with_label_values(&["error"])
            .inc();
        for err in &e.0 {
            tracing::error!(error = %err, "config reload rejected; keeping the running config");
        }
        e
    }
}

/// Counts a request as in flight for the graceful drain.
pub struct InflightGuard(Arc<EngineState>);

impl InflightGuard {
    pub fn new(state: &Arc<EngineState>) -> InflightGuard {
        state.inflight.fetch_add(1, Ordering::SeqCst);
        InflightGuard(state.clone())
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Builds a gateway: a config (file or value) plus any custom filter types.
#[derive(Clone, Default)]
pub struct GatewayBuilder {
    config_path: Option<PathBuf>,
    config: Option<Config>,
    types: FilterTypes,
    handle_signals: bool,
}

impl GatewayBuilder {
    pub fn new() -> GatewayBuilder {
        GatewayBuilder::default()
    }

    /// Reads the config from a file (SIGHUP and `/admin/reload` read it again).
    pub fn config_file(mut self, path: impl Into<PathBuf>) -> GatewayBuilder {
        self.config_path = Some(path.into());
        self
    }

    /// Uses a config value.
    pub fn config(mut self, config: Config) -> GatewayBuilder {
        self.config = Some(config);
        self
    }

    /// Makes `[[filters]] type = "<name>"` build a filter with `factory`.
    pub fn filter_type(mut self, name: &str, factory: impl FilterFactory) -> GatewayBuilder {
        self.types.register(name, factory);
        self
    }

    /// Installs SIGTERM/SIGINT (drain and stop) and SIGHUP (reload) handlers, as `sluice run` does.
    pub fn handle_signals(mut self, yes: bool) -> GatewayBuilder {
        self.handle_signals = yes;
        self
    }

    /// Validates the config and builds every filter without serving (`sluice check`).
    pub fn check(self) -> Result<Config, ConfigErrors> {
        let config = self.load_config()?;
        let shared = Shared::new(prometheus::Registry::new());
        let placeholder = Some(SocketAddr::from(([127, 0, 0, 1], 9)));
        let snap = Snapshot::build(config, &self.types, &shared, placeholder)?;
        Ok(snap.config)
    }

    fn load_config(&self) -> Result<Config, ConfigErrors> {
        match (&self.config, &self.config_path) {
            (Some(c), _) => Ok(c.clone()),
            (None, Some(p)) => Config::load(p),
            (None, None) => Err(ConfigErrors(vec![ConfigError::new(
                "config",
                "no config given",
            )])),
        }
    }

    /// Starts the gateway: binds the admin listener, starts the mock if a `builtin = "mock"`
    /// upstream needs it, and runs the proxy on its own threads. Returns once the public
    /// listener accepts connections.
    pub fn start(self) -> Result<Gateway, StartError> {
        let config = self.load_config().map_err(StartError::Config)?;
        let control = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("sluice-control")
            .enable_all()
            .build()
            .map_err(|e| StartError::Io(format!("control runtime: {e}")))?;
        let (stop_tx, stop_rx) = watch::channel(false);
        // Signal handlers are registered before anything listens, so a signal sent as soon as
        // the gateway is reachable is never left to its default action (termination).
        let signals = if self.handle_signals {
            let _guard = control.enter();
            Some(Signals::register().map_err(|e| StartError::Io(format!("signal handlers: {e}")))?)
        } else {
            None
        };

        let needs_mock = config
            .upstreams
            .iter()
            .any(|u| u.builtin.as_deref() == Some("mock"));
        let mock_addr = if needs_mock {
            let rx = stop_rx.clone();
            let addr = control
                .block_on(mock::spawn(
                    SocketAddr::from(([127, 0, 0, 1], 0)),
                    MockOptions::default(),
                    rx,
                ))
                .map_err(|e| StartError::Io(format!("built-in mock: {e}")))?;
            Some(addr)
        } else {
            None
        };

        let registry = prometheus::Registry::new();
        let metrics = EngineMetrics::register(&registry)
            .map_err(|e| StartError::Io(format!("metrics: {e}")))?;
        let shared = Arc::new(Shared::new(registry));
        let snapshot = {
            let _guard = control.enter();
            Snapshot::build(config.clone(), &self.types, &shared, mock_addr)
                .map_err(StartError::Config)?
        };
        metrics.preinit(&snapshot.config);
        let listen = config.server.listen.clone();
        let admin_listen: SocketAddr = config.server.admin_listen.parse().map_err(|_| {
            StartError::Io(format!("bad admin address {}", config.server.admin_listen))
        })?;
        let state = Arc::new(EngineState {
            snapshot: ArcSwap::from_pointee(snapshot),
            metrics,
            shared,
            types: self.types,
            mock_addr,
            config_path: self.config_path,
            inflight: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            ready: AtomicBool::new(false),
            probe_token: format!("{:032x}", rand::random::<u128>()),
            runs: AgentRuns::default(),
        });

        let admin_addr = control
            .block_on(crate::admin::spawn(
                admin_listen,
                state.clone(),
                stop_rx.clone(),
            ))
            .map_err(|e| StartError::Io(format!("admin listener {admin_listen}: {e}")))?;

        // Pingora retries a busy address for a while; say at once that it is taken.
        let listen_sock: SocketAddr = listen
            .parse()
            .map_err(|_| StartError::Io(format!("bad listen address {listen}")))?;
        std::net::TcpListener::bind(listen_sock)
            .map_err(|e| StartError::Io(format!("cannot listen on {listen}: {e}")))?;

        // The pingora server, on its own thread; it stops when `pingora_stop` fires.
        let pingora_stop = Arc::new(Notify::new());
        let conf = ServerConf {
            threads: config.server.threads,
            grace_period_seconds: Some(config.server.shutdown_grace_seconds),
            graceful_shutdown_timeout_seconds: Some(1),
            pid_file: String::new(),
            upgrade_sock: String::new(),
            ..Default::default()
        };
        let mut server = Server::new_with_opt_and_conf(None, conf);
        server.bootstrap();
        let mut proxy = pingora_proxy::http_proxy_service(
            &server.configuration,
            SluiceProxy::new(state.clone()),
        );
        proxy.add_tcp(&listen);
        server.add_service(proxy);
        let watch = StopWatch(pingora_stop.clone());
        let server_thread = std::thread::Builder::new()
            .name("sluice-pingora".into())
            .spawn(move || {
                server.run(RunArgs {
                    shutdown_signal: Box::new(watch),
                })
            })
            .map_err(|e| StartError::Io(format!("server thread: {e}")))?;

        let listen_addr: SocketAddr = listen
            .parse()
            .map_err(|_| StartError::Io(format!("bad listen address {listen}")))?;
        wait_until_accepting(listen_addr, &state.probe_token, &server_thread)?;

        let done = Arc::new(Notify::new());
        let gw = Gateway {
            state,
            control: Some(control),
            stop_tx,
            pingora_stop,
            listen_addr,
            admin_addr,
            stopped: Arc::new(AtomicBool::new(false)),
            done,
        };
        if let Some(signals) = signals {
            gw.install_signal_handlers(signals);
        }
        gw.state.ready.store(true, Ordering::SeqCst);
        Ok(gw)
    }
}

/// Waits until *this* gateway answers on its listener: a probe carrying the gateway's own
/// random token must come back 204. Accepting alone is not proof — another process may hold
/// the port while Pingora retries its bind.
fn wait_until_accepting(
    addr: SocketAddr,
    token: &str,
    thread: &std::thread::JoinHandle<()>,
) -> Result<(), StartError> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if probe(addr, token) {
            return Ok(());
        }
        if thread.is_finished() {
            return Err(StartError::Io(format!(
                "the server stopped before listening on {addr} (is the port in use?)"
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(StartError::Io(format!(
        "{addr} does not answer as this gateway after 10 s (another process may hold the port)"
    )))
}

fn probe(addr: SocketAddr, token: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let req = format!(
        "GET / HTTP/1.1\r\nhost: {addr}\r\n{}: {token}\r\nconnection: close\r\n\r\n",
        crate::proxy::PROBE_HEADER
    );
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut buf = [0u8; 12];
    s.read_exact(&mut buf).is_ok() && buf.starts_with(b"HTTP/1.1 204")
}

/// SIGHUP, SIGTERM and SIGINT streams, registered up front.
struct Signals {
    hup: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn register() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            hup: signal(SignalKind::hangup())?,
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }
}

/// Why a gateway did not start.
#[derive(Debug)]
pub enum StartError {
    Config(ConfigErrors),
    Io(String),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Config(e) => write!(f, "{e}"),
            StartError::Io(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for StartError {}

struct StopWatch(Arc<Notify>);

#[async_trait]
impl ShutdownSignalWatch for StopWatch {
    async fn recv(&self) -> ShutdownSignal {
        self.0.notified().await;
        ShutdownSignal::GracefulTerminate
    }
}

/// A running gateway. Dropping it stops it (draining in-flight requests).
pub struct Gateway {
    state: Arc<EngineState>,
    control: Option<tokio::runtime::Runtime>,
    stop_tx: watch::Sender<bool>,
    pingora_stop: Arc<Notify>,
    listen_addr: SocketAddr,
    admin_addr: SocketAddr,
    stopped: Arc<AtomicBool>,
    done: Arc<Notify>,
}

impl Gateway {
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen_addr
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The Prometheus registry the admin listener serves.
    pub fn registry(&self) -> &prometheus::Registry {
        self.state.shared.registry()
    }

    /// Reloads the config from its file (like SIGHUP).
    pub fn reload(&self) -> Result<(), ConfigErrors> {
        self.state.reload(None)
    }

    /// Swaps in a new config value.
    pub fn reload_with(&self, config: Config) -> Result<(), ConfigErrors> {
        self.state.reload(Some(config))
    }

    fn install_signal_handlers(&self, signals: Signals) {
        let Some(rt) = &self.control else { return };
        let Signals {
            mut hup,
            mut term,
            mut int,
        } = signals;
        let state = self.state.clone();
        rt.spawn(async move {
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading config");
                let s = state.clone();
                let _ = tokio::task::spawn_blocking(move || s.reload(None)).await;
            }
        });
        let stop = self.shutdown_trigger();
        rt.spawn(async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: draining"),
                _ = int.recv() => tracing::info!("SIGINT: draining"),
            }
            stop.trigger();
        });
    }

    /// A handle that starts the drain from anywhere.
    pub fn shutdown_trigger(&self) -> ShutdownTrigger {
        ShutdownTrigger {
            state: self.state.clone(),
            pingora_stop: self.pingora_stop.clone(),
            stopped: self.stopped.clone(),
            done: self.done.clone(),
            handle: self.control.as_ref().map(|r| r.handle().clone()),
        }
    }

    /// Stops accepting, waits for in-flight requests (up to the grace period), flushes every
    /// filter (the audit log) and returns.
    pub fn shutdown(mut self) {
        self.shutdown_inner();
    }

    /// Blocks until a shutdown (signal or trigger) has completed.
    pub fn wait(mut self) {
        if let Some(rt) = &self.control {
            let done = self.done.clone();
            let stopped = self.stopped.clone();
            rt.block_on(async move {
                loop {
                    let notified = done.notified();
                    if stopped.load(Ordering::SeqCst) {
                        return;
                    }
                    notified.await;
                    if stopped.load(Ordering::SeqCst) {
                        return;
                    }
                }
            });
        }
        self.finish();
    }

    fn shutdown_inner(&mut self) {
        self.shutdown_trigger().trigger();
        if let Some(rt) = &self.control {
            let done = self.done.clone();
            let stopped = self.stopped.clone();
            rt.block_on(async move {
                while !stopped.load(Ordering::SeqCst) {
                    let n = done.notified();
                    if stopped.load(Ordering::SeqCst) {
                        break;
                    }
                    let _ = tokio::time::timeout(Duration::from_millis(50), n).await;
                }
            });
        }
        self.finish();
    }

    fn finish(&mut self) {
        let _ = self.stop_tx.send(true);
        if let Some(rt) = self.control.take() {
            rt.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if self.control.is_some() {
            self.shutdown_inner();
        }
    }
}

/// Starts a gateway's drain; cheap to clone and `Send`.
#[derive(Clone)]
pub struct ShutdownTrigger {
    state: Arc<EngineState>,
    pingora_stop: Arc<Notify>,
    stopped: Arc<AtomicBool>,
    done: Arc<Notify>,
    handle: Option<tokio::runtime::Handle>,
}

impl ShutdownTrigger {
    pub fn trigger(&self) {
        if self.state.draining.swap(true, Ordering::SeqCst) {
            return;
        }
        let Some(handle) = &self.handle else { return };
        let state = self.state.clone();
        let pingora_stop = self.pingora_stop.clone();
        let stopped = self.stopped.clone();
        let done = self.done.clone();
        handle.spawn(async move {
            // Stop accepting; Pingora closes idle keep-alive connections and lets in-flight
            // requests run. Then wait for them, up to the grace period.
            pingora_stop.notify_one();
            let grace =
                Duration::from_secs(state.snapshot.load().config.server.shutdown_grace_seconds);
            let deadline = Instant::now() + grace;
            tokio::time::sleep(Duration::from_millis(50)).await;
            while state.inflight.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let left = state.inflight.load(Ordering::SeqCst);
            if left > 0 {
                tracing::warn!(
                    requests = left,
                    "grace period over with requests still in flight"
                );
            }
            let chain = state.snapshot.load().chain.clone();
            chain.shutdown().await;
            stopped.store(true, Ordering::SeqCst);
            done.notify_waiters();
        });
    }
}
