//! The floor of `benches/overhead.sh`: Pingora doing nothing but forwarding. One `ProxyHttp`
//! whose only hook is `upstream_peer` (one fixed upstream, Pingora's defaults: keep-alive both
//! ways), on the same Pingora version and build profile as Sluice, so that a row's ratio to
//! it is what Sluice's own work costs. Built by the script (`cargo build --release --example
//! pingora_floor`); not part of the `sluice` binary.
//!
//!   pingora_floor LISTEN UPSTREAM THREADS     e.g. 127.0.0.1:8080 127.0.0.1:9000 1

use std::net::SocketAddr;

use async_trait::async_trait;
use pingora::prelude::{HttpPeer, ProxyHttp, Result, Session};
use pingora::server::configuration::ServerConf;
use pingora::server::Server;

struct Floor {
    upstream: SocketAddr,
}

#[async_trait]
impl ProxyHttp for Floor {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [listen, upstream, threads] = args.as_slice() else {
        eprintln!("usage: pingora_floor LISTEN UPSTREAM THREADS");
        std::process::exit(2);
    };
    let (Ok(upstream), Ok(threads)) = (upstream.parse(), threads.parse()) else {
        eprintln!("pingora_floor: UPSTREAM must be an address, THREADS a number");
        std::process::exit(2);
    };
    let conf = ServerConf {
        threads,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        pid_file: String::new(),
        upgrade_sock: String::new(),
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = pingora_proxy::http_proxy_service(&server.configuration, Floor { upstream });
    proxy.add_tcp(listen);
    server.add_service(proxy);
    server.run_forever();
}
