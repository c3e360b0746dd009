//! HTTPS upstreams: rustls with certificate verification, against a local TLS upstream whose
//! certificate this test generates.

use std::convert::Infallible;
use std::sync::Arc;

use crate::support::*;
use bytes::Bytes;
use http_body_util::Full;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use tokio_rustls::rustls;

struct TlsUpstream {
    port: u16,
    ca_pem: String,
    _rt: tokio::runtime::Runtime,
}

/// A TLS upstream for `localhost` signed by a fresh CA; answers every request with a chat
/// completion that says "tls ok".
fn tls_upstream() -> TlsUpstream {
    let ca_key = KeyPair::generate().unwrap_or_else(|e| panic!("{e}"));
    let mut ca_params =
        CertificateParams::new(Vec::<String>::new()).unwrap_or_else(|e| panic!("{e}"));
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "sluice test CA");
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .unwrap_or_else(|e| panic!("{e}"));
    let key = KeyPair::generate().unwrap_or_else(|e| panic!("{e}"));
    let params =
        CertificateParams::new(vec!["localhost".to_string()]).unwrap_or_else(|e| panic!("{e}"));
    let cert = params
        .signed_by(&key, &ca_cert, &ca_key)
        .unwrap_or_else(|e| panic!("{e}"));

    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .and_then(|b| {
        b.with_no_client_auth().with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap_or_else(|e| panic!("{e}"));
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    rt.spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { continue };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let svc = hyper::service::service_fn(|_req| async {
                    let body = r#"{"id":"x","object":"chat.completion","created":0,"model":"tls","choices":[{"index":0,"message":{"role":"assistant","content":"tls ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":2}}"#;
                    Ok::<_, Infallible>(
                        hyper::Response::builder()
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from_static(body.as_bytes())))
                            .unwrap_or_default(),
                    )
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    TlsUpstream {
        port,
        ca_pem: ca_cert.pem(),
        _rt: rt,
    }
}

#[test]
fn https_upstream_is_verified_against_the_configured_ca() {
    let up = tls_upstream();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &up.ca_pem).unwrap_or_else(|e| panic!("{e}"));
    let gw = start(&format!(
        r#"
[[upstreams]]
name = "trusted"
url = "https://localhost:{port}"
ca_file = "{ca}"
[[upstreams]]
name = "untrusted"
url = "https://localhost:{port}"
[[models]]
name = "good"
upstream = "trusted"
[[models]]
name = "bad"
upstream = "untrusted"
"#,
        port = up.port,
        ca = ca.display()
    ));
    // Alternate: a pooled connection of the trusted upstream must never serve the other one
    // (both share an address and SNI; only the trusted CAs differ).
    for _ in 0..3 {
        let mut body = chat_body("x", false);
        body["model"] = "good".into();
        let r = client()
            .post(url(&gw, "/v1/chat/completions"))
            .json(&body)
            .send()
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(json_of(r)["choices"][0]["message"]["content"], "tls ok");

        // Without the CA, the certificate does not verify: nothing is sent, 502.
        body["model"] = "bad".into();
        let r = client()
            .post(url(&gw, "/v1/chat/completions"))
            .json(&body)
            .send()
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(error_code(r, 502), "upstream_unavailable");
    }
}
