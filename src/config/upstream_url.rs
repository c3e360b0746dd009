//! Upstream URLs: split once at load, the host resolved once (never on the request path), and
//! CA files read once.

use std::net::SocketAddr;
use std::path::Path;

/// Where an upstream lives, resolved once at load.
#[derive(Debug, Clone)]
pub struct UpstreamTarget {
    pub addr: Option<SocketAddr>,
    pub tls: bool,
    pub host: String,
    /// Path prefix of the upstream URL (`https://host/openai` → `/openai`), without a trailing `/`.
    pub base_path: String,
}

/// The first address of `host`, looked up once at load.
#[cfg(not(fuzzing))]
fn resolve(host: &str, port: u16) -> Result<Option<SocketAddr>, String> {
    use std::net::ToSocketAddrs;
    Ok((host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve `{host}`: {e}"))?
        .next())
}

/// Under the fuzzer (`cargo fuzz` builds with `--cfg fuzzing`) only IP literals resolve: a
/// fuzzed config must not send a DNS query per input.
#[cfg(fuzzing)]
fn resolve(host: &str, port: u16) -> Result<Option<SocketAddr>, String> {
    let ip: std::net::IpAddr = host
        .parse()
        .map_err(|_| format!("cannot resolve `{host}`: names are not resolved when fuzzing"))?;
    Ok(Some(SocketAddr::new(ip, port)))
}

/// Splits an upstream URL and resolves its host once (DNS must not run on the request path).
pub fn parse_url(url: &str) -> Result<UpstreamTarget, String> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(format!("`{url}` must start with http:// or https://"));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if authority.is_empty() || authority.contains('@') {
        return Err(format!("`{url}` has no usable host"));
    }
    let default_port = if tls { 443 } else { 80 };
    let (host, port) = split_host_port(authority, default_port)
        .ok_or_else(|| format!("`{url}` has a bad port"))?;
    let addr = resolve(&host, port)?;
    if addr.is_none() {
        return Err(format!("`{host}` resolves to no address"));
    }
    Ok(UpstreamTarget {
        addr,
        tls,
        host,
        base_path: path.trim_end_matches('/').to_string(),
    })
}

fn split_host_port(authority: &str, default_port: u16) -> Option<(String, u16)> {
    if let Some(rest) = authority.strip_prefix('[') {
        let end = rest.find(']')?;
        let host = &rest[..end];
        let port = match &rest[end + 1..] {
            "" => default_port,
            p => p.strip_prefix(':')?.parse().ok()?,
        };
        return Some((host.to_string(), port));
    }
    match authority.rsplit_once(':') {
        Some((h, p)) => Some((h.to_string(), p.parse().ok()?)),
        None => Some((authority.to_string(), default_port)),
    }
}

/// Reads the DER certificates of a PEM CA file.
pub fn load_ca_file(path: &Path) -> Result<Vec<Vec<u8>>, String> {
    let data = std::fs::read(path).map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
    let mut reader = std::io::BufReader::new(&data[..]);
    let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut reader).collect();
    let certs =
        certs.map_err(|e| format!("`{}` is not a PEM certificate file: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("`{}` holds no PEM certificate", path.display()));
    }
    Ok(certs.into_iter().map(|c| c.to_vec()).collect())
}

/// What loading made of one `[[upstreams]]` entry's `url` (split and resolved) and `ca_file`
/// (read and decoded): validation reports its errors and the snapshot build takes its values, so
/// a load resolves each host and reads each CA file once. `None`: the field is absent.
#[derive(Debug, Clone, Default)]
pub struct CheckedUpstream {
    url: Option<String>,
    ca_file: Option<String>,
    pub target: Option<Result<UpstreamTarget, String>>,
    /// The DER certificates of `ca_file`.
    pub ca: Option<Result<Vec<Vec<u8>>, String>>,
}

impl CheckedUpstream {
    pub fn of(url: Option<&str>, ca_file: Option<&str>) -> CheckedUpstream {
        CheckedUpstream {
            url: url.map(str::to_string),
            ca_file: ca_file.map(str::to_string),
            target: url.map(parse_url),
            ca: ca_file.map(|f| load_ca_file(Path::new(f))),
        }
    }

    /// Whether this was made from these fields (an embedder may change a parsed config).
    pub fn is_of(&self, url: Option<&str>, ca_file: Option<&str>) -> bool {
        self.url.as_deref() == url && self.ca_file.as_deref() == ca_file
    }
}
