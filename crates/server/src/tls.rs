//! TLS for deployments without a terminating load balancer: rustls with
//! the ring provider, HTTP/2 and HTTP/1.1 offered by ALPN, and the
//! certificate re-read when its files change, so a renewal needs no
//! restart.
//!
//! Handshakes run in tasks of their own, not in the accept loop: a client
//! that opens a connection and sends nothing (or a byte a second) holds
//! only its own connection slot, for at most the request read time-out.

use crate::connections::{Bounded, Guarded};
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::crypto::{CryptoProvider, ring};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{ServerConfig, version};
use tokio_rustls::server::TlsStream;
use tracing::{debug, info, warn};

/// How often the certificate's files are looked at.
const RELOAD_EVERY: Duration = Duration::from_secs(1);
/// Handshaken connections waiting for the server to take them.
const HANDSHAKEN_QUEUE: usize = 64;

/// Where the certificate chain and its private key are, in PEM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

/// Reads and checks the chain and key: `Err` says which file is wrong and
/// how.
pub fn load(files: &TlsFiles) -> Result<CertifiedKey, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|certs| certs.collect::<Result<_, _>>())
        .map_err(|e| format!("tls_cert {}: {e}", files.cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "tls_cert {}: no certificate in it (PEM, BEGIN CERTIFICATE)",
            files.cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| format!("tls_key {}: {e}", files.key.display()))?;
    CertifiedKey::from_der(chain, key, &provider()).map_err(|e| {
        format!(
            "tls_key {} does not go with tls_cert {}: {e}",
            files.key.display(),
            files.cert.display()
        )
    })
}

/// The certificate in use, replaced when its files change and the new ones
/// load; a change that does not load keeps the one before (and says why).
#[derive(Debug)]
pub struct Reloading {
    files: TlsFiles,
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}

/// When the files were last changed, as far as the file system says.
fn stamp(files: &TlsFiles) -> Option<(SystemTime, SystemTime)> {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    Some((modified(&files.cert)?, modified(&files.key)?))
}

impl Reloading {
    pub fn open(files: TlsFiles) -> Result<Arc<Reloading>, String> {
        let key = load(&files)?;
        Ok(Arc::new(Reloading {
            files,
            current: RwLock::new(Arc::new(key)),
        }))
    }

    /// Looks at the files every second for as long as the server runs.
    fn watch(self: Arc<Self>) -> JoinHandle<()> {
        tokio::spawn(async move {
            let mut seen = stamp(&self.files);
            let mut tick = tokio::time::interval(RELOAD_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let now = stamp(&self.files);
                if now == seen || now.is_none() {
                    continue;
                }
                seen = now;
                match load(&self.files) {
                    Ok(key) => {
                        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(key);
                        info!(cert = %self.files.cert.display(), "TLS certificate reloaded");
                    }
                    Err(e) => {
                        warn!(error = %e, "the TLS certificate changed but does not load; serving the one before")
                    }
                }
            }
        })
    }
}

/// What the server offers: TLS 1.3 and 1.2, HTTP/2 then HTTP/1.1.
fn server_config(certs: Arc<Reloading>) -> Result<Arc<ServerConfig>, String> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&version::TLS13, &version::TLS12])
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(certs);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A listener that hands out connections once their TLS handshake is done.
pub struct TlsListener {
    handshaken: mpsc::Receiver<(TlsStream<Guarded>, SocketAddr)>,
    addr: SocketAddr,
    tasks: [JoinHandle<()>; 2],
}

impl TlsListener {
    /// Serves `certs` over the connections `bounded` accepts; a handshake
    /// that does not finish within `handshake_timeout` is dropped.
    pub fn new(
        mut bounded: Bounded,
        certs: Arc<Reloading>,
        handshake_timeout: Duration,
    ) -> Result<TlsListener, String> {
        let addr = axum::serve::Listener::local_addr(&bounded)
            .map_err(|e| format!("the listening address: {e}"))?;
        let acceptor = TlsAcceptor::from(server_config(certs.clone())?);
        let (tx, handshaken) = mpsc::channel(HANDSHAKEN_QUEUE);
        let accepting = tokio::spawn(async move {
            loop {
                let (stream, peer) = axum::serve::Listener::accept(&mut bounded).await;
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener {
            handshaken,
            addr,
            tasks: [accepting, certs.watch()],
        })
    }
}

impl Drop for TlsListener {
    // The accept loop holds the socket: the server stopping must free it.
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<Guarded>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.handshaken.recv().await {
            Some(next) => next,
            // The accept loop never ends while the listener lives.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.addr)
    }
}
