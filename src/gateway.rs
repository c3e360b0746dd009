//! Building, starting, reloading and stopping a gateway.
//!
//! ```text
//!  control runtime (1 thread): admin listener, built-in mock, signals, reload
//!  pingora server (threads = server.threads): the public listener and the proxy
//! ```
//!
//! The state a running gateway shares between its listeners is in [`crate::state`]; this
//! module starts it, wires signals and drains it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use pingora_core::listeners::ListenerConfig;
use pingora_core::protocols::l4::stream::L4BufferSettings;
use sluice_filters::{ConfigError, FilterFactory, Shared};
use tokio::sync::{watch, Notify};

use crate::agents::AgentRuns;
use crate::chain::FilterTypes;
use crate::config::{Config, ConfigErrors};
use crate::metrics::EngineMetrics;
use crate::mock::{self, MockOptions};
use crate::proxy::SluiceProxy;
use crate::state::{EngineState, Snapshot};

/// Bytes of each client connection's write buffer (see where the listener is added).
const DOWNSTREAM_WRITE_BUFFER: usize = 8 * 1024;

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

    /// Reads the config with every field checked (an unknown key or table is an error, as at
    /// start), without building filters: for commands that need only its data.
    pub fn load(self) -> Result<Config, ConfigErrors> {
        self.load_config()
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
            (None, Some(p)) => Config::load_owned(p, &|s| self.types.claims(s)),
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

        let mock_addr = builtin_mock(&config, &control, stop_rx.clone())?;

        let registry = prometheus::Registry::new();
        let metrics = EngineMetrics::register(&registry)
            .map_err(|e| StartError::Io(format!("metrics: {e}")))?;
        let shared = Arc::new(Shared::new(registry));
        // Active health checks run on the control runtime.
        crate::upstream::board(&shared)
            .map_err(StartError::Io)?
            .attach_runtime(control.handle().clone());
        let snapshot = {
            let _guard = control.enter();
            Snapshot::build(config.clone(), &self.types, &shared, mock_addr)
                .map_err(StartError::Config)?
        };
        metrics.preinit(&snapshot.config);
        let store = control
            .block_on(crate::store::StoreRuntime::open(&config.store, &shared))
            .map_err(|e| {
                StartError::Io(format!(
                    "store.url: cannot open {}: {e}",
                    config.store.display_url()
                ))
            })?;
        let telemetry = match &config.telemetry {
            Some(t) => Some(
                crate::telemetry::Telemetry::start(t, control.handle().clone(), shared.registry())
                    .map_err(StartError::Io)?,
            ),
            None => None,
        };
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
            runs: AgentRuns::new(store.clone()),
            store,
            telemetry,
        });
        {
            let _guard = control.enter();
            state.store.spawn(stop_rx.clone());
        }
        if let Some(cfg) = &config.identity {
            crate::identity::start(
                cfg,
                &state.shared,
                state.store.clone(),
                &control,
                stop_rx.clone(),
            )
            .map_err(|e| StartError::Io(format!("identity: {e}")))?;
        }

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

        let (pingora_stop, server_thread) = serve(&config, &state)?;

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

/// The built-in mock upstream, on the control runtime, when an upstream is `builtin = "mock"`.
fn builtin_mock(
    config: &Config,
    control: &tokio::runtime::Runtime,
    stop: watch::Receiver<bool>,
) -> Result<Option<SocketAddr>, StartError> {
    if !config
        .upstreams
        .iter()
        .any(|u| u.builtin.as_deref() == Some("mock"))
    {
        return Ok(None);
    }
    let addr = control
        .block_on(mock::spawn(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            MockOptions::default(),
            stop,
        ))
        .map_err(|e| StartError::Io(format!("built-in mock: {e}")))?;
    Ok(Some(addr))
}

/// The Pingora server with Sluice's proxy on the public listener, on its own thread; it stops
/// when the returned `Notify` fires.
fn serve(
    config: &Config,
    state: &Arc<EngineState>,
) -> Result<(Arc<Notify>, std::thread::JoinHandle<()>), StartError> {
    // The pingora server, on its own thread; it stops when `pingora_stop` fires.
    let pingora_stop = Arc::new(Notify::new());
    let conf = ServerConf {
        threads: config.server.threads,
        grace_period_seconds: Some(config.server.shutdown_grace_seconds),
        graceful_shutdown_timeout_seconds: Some(1),
        pid_file: String::new(),
        upgrade_sock: String::new(),
        // Pingora's retry loop runs every attempt of a request; Sluice decides each retry.
        max_retries: crate::upstream::MAX_ATTEMPTS,
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let proxy_app =
        pingora_proxy::http_proxy(&server.configuration, SluiceProxy::new(state.clone()));
    let mut proxy = pingora_core::services::listening::Service::new(
        "sluice".to_string(),
        crate::edge::EdgeApp::new(proxy_app, state.clone()),
    );
    // A write buffer that holds a whole small answer: Pingora sends a head with its length
    // and the body in one write when both fit (its default, 1,460 bytes, splits a chat
    // completion's head, with Sluice's rate-limit and cost headers, from its body).
    let buffers = L4BufferSettings::default().write(DOWNSTREAM_WRITE_BUFFER);
    proxy.add_listener(ListenerConfig::tcp(config.server.listen.clone()).l4_buffer(buffers));
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
    Ok((pingora_stop, server_thread))
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
        // The last spans are exported through the control runtime: before it stops.
        if let (Some(t), Some(_)) = (&self.state.telemetry, &self.control) {
            t.shutdown();
        }
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
            state.store.flush_uses().await;
            stopped.store(true, Ordering::SeqCst);
            done.notify_waiters();
        });
    }
}
