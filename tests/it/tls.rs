//! HTTPS as a deployment without a load balancer meets it: a certificate
//! from the suite's own authority, HTTP/2 and HTTP/1.1 by ALPN, a renewed
//! certificate served without a restart, and the clients that get TLS wrong
//! refused without stopping anyone else.

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use sluice_server::config::Config;
use sluice_server::server::{Running, StartError, start};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

/// A certificate authority of the test's own.
fn authority(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("CA")
}

/// A server certificate for `localhost` and 127.0.0.1 signed by `ca`: the
/// chain's PEM and the key's.
fn leaf(ca: &CertifiedIssuer<'static, KeyPair>) -> (String, String) {
    let params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .expect("params");
    let key = KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, ca).expect("signed");
    (cert.pem(), key.serialize_pem())
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path
}

/// A client that trusts `ca` and offers `alpn`.
fn client(ca: &CertifiedIssuer<'static, KeyPair>, alpn: &[&[u8]]) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from(ca.der().to_vec()))
        .expect("a root");
    let mut config = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    TlsConnector::from(Arc::new(config))
}

/// What one `GET path` over TLS saw: the status, the protocol ALPN chose,
/// and the certificate the server showed.
struct Seen {
    status: u16,
    alpn: Option<Vec<u8>>,
    cert: Vec<u8>,
}

async fn get(addr: SocketAddr, tls: &TlsConnector, path: &str) -> std::io::Result<Seen> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").expect("a name");
    let stream = tls.connect(name, tcp).await?;
    let (_, session) = stream.get_ref();
    let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
    let cert = session
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .unwrap_or_default();
    let request = hyper::Request::get(format!("https://localhost{path}"))
        .header("host", "localhost")
        .body(Empty::<Bytes>::new())
        .expect("request");
    let io = TokioIo::new(stream);
    let failed = |e: hyper::Error| std::io::Error::other(e.to_string());
    let response = if alpn.as_deref() == Some(b"h2") {
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(failed)?;
        tokio::spawn(connection);
        sender.send_request(request).await.map_err(failed)?
    } else {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(failed)?;
        tokio::spawn(connection);
        sender.send_request(request).await.map_err(failed)?
    };
    let status = response.status().as_u16();
    response.into_body().collect().await.map_err(failed)?;
    Ok(Seen { status, alpn, cert })
}

async fn serve(config: Config) -> Result<(Running, tokio::sync::oneshot::Sender<()>), StartError> {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = start(config, async move {
        let _ = stopped.await;
    })
    .await?;
    Ok((running, stop))
}

fn config(data: &Path, cert: &Path, key: &Path) -> Config {
    Config {
        listen: "127.0.0.1:0".into(),
        data_dir: data.to_path_buf(),
        tls_cert: Some(cert.to_path_buf()),
        tls_key: Some(key.to_path_buf()),
        ..Config::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_serves_both_protocols_and_a_renewed_certificate_without_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = authority("sluice test CA");
    let (cert_pem, key_pem) = leaf(&ca);
    let cert = write(dir.path(), "cert.pem", &cert_pem);
    let key = write(dir.path(), "key.pem", &key_pem);
    let (running, stop) = serve(config(dir.path(), &cert, &key))
        .await
        .expect("serves HTTPS");
    let addr = running.addr;

    // HTTP/2 when the client offers it, HTTP/1.1 otherwise.
    let h2 = get(addr, &client(&ca, &[b"h2", b"http/1.1"]), "/healthz")
        .await
        .expect("h2");
    assert_eq!((h2.status, h2.alpn.as_deref()), (200, Some(&b"h2"[..])));
    let h1 = get(addr, &client(&ca, &[b"http/1.1"]), "/healthz")
        .await
        .expect("http/1.1");
    assert_eq!(
        (h1.status, h1.alpn.as_deref()),
        (200, Some(&b"http/1.1"[..]))
    );
    let bare = get(addr, &client(&ca, &[]), "/v1/stats")
        .await
        .expect("no ALPN");
    assert_eq!(bare.status, 200, "no ALPN is HTTP/1.1");

    // Clients that get it wrong are refused; the others go on.
    let stranger = authority("another CA");
    assert!(
        get(addr, &client(&stranger, &[b"h2"]), "/healthz")
            .await
            .is_err(),
        "a client that does not trust the certificate does not connect"
    );
    let plain = reqwest::Client::new()
        .get(format!("http://{addr}/healthz"))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(
        plain.map(|r| r.status().as_u16() != 200).unwrap_or(true),
        "plain HTTP is not served on the TLS port"
    );
    let mut silent = TcpStream::connect(addr).await.expect("connect");
    silent.write_all(&[0x16, 0x03]).await.expect("half a hello");
    let after = get(addr, &client(&ca, &[b"h2"]), "/healthz")
        .await
        .expect("served while a handshake hangs");
    assert_eq!(after.status, 200);

    // A renewed certificate is served within seconds, without a restart.
    let (renewed_pem, renewed_key) = leaf(&ca);
    write(dir.path(), "cert.pem", &renewed_pem);
    write(dir.path(), "key.pem", &renewed_key);
    let mut renewed = false;
    for _ in 0..50 {
        let seen = get(addr, &client(&ca, &[b"h2"]), "/healthz")
            .await
            .expect("served while renewing");
        if seen.cert != h2.cert {
            renewed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(renewed, "the renewed certificate is served");

    // A renewal that does not load keeps the certificate before.
    write(dir.path(), "cert.pem", "not a certificate");
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let kept = get(addr, &client(&ca, &[b"h2"]), "/healthz")
        .await
        .expect("still served");
    assert_eq!(kept.status, 200);
    assert_ne!(kept.cert, h2.cert, "the renewed one, still");

    drop(silent);
    let _ = stop.send(());
    running
        .served
        .await
        .expect("server task")
        .expect("server ran");
}

#[tokio::test]
async fn a_certificate_that_does_not_load_stops_the_start_and_says_why() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = authority("sluice test CA");
    let (cert_pem, _) = leaf(&ca);
    let (_, other_key) = leaf(&ca);
    let cert = write(dir.path(), "cert.pem", &cert_pem);
    let wrong_key = write(dir.path(), "wrong.pem", &other_key);
    let garbage = write(dir.path(), "garbage.pem", "hello");
    let missing = dir.path().join("missing.pem");
    for (cert, key, says) in [
        (&cert, &wrong_key, "does not go with"),
        (&garbage, &wrong_key, "no certificate"),
        (&missing, &wrong_key, "missing.pem"),
        (&cert, &garbage, "garbage.pem"),
    ] {
        let refused = serve(config(dir.path(), cert, key))
            .await
            .err()
            .unwrap_or_else(|| panic!("started with {cert:?} and {key:?}"));
        let message = refused.to_string();
        assert!(message.contains(says), "{message}");
    }
    let half = Config {
        tls_key: None,
        ..config(dir.path(), &cert, &wrong_key)
    };
    let refused = serve(half).await.err().expect("tls_cert alone");
    assert!(
        refused.to_string().contains("tls_cert needs tls_key"),
        "{refused}"
    );
}
