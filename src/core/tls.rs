//! The core's TLS: with `tls_cert` and `tls_key` set, every connection on the listen port (the
//! WebSocket and the browser page) is TLS, and nothing is served in the clear.
//!
//! rustls with the ring provider; the certificate chain and the private key are PEM files
//! (the key as PKCS#8, PKCS#1 or SEC1). The handshake of each connection runs in that
//! connection's own task and is bounded by [`HANDSHAKE_TIMEOUT`].

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
pub use tokio_rustls::TlsAcceptor;

use super::CoreConfig;

/// How long a client may take to finish the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Checks the two config keys: both or neither, each file readable, the certificate chain and
/// the key parse, and the key belongs to the certificate. The error names the key.
pub fn check(cert: Option<&Path>, key: Option<&Path>) -> Result<(), String> {
    match (cert, key) {
        (None, None) => Ok(()),
        (Some(cert), Some(key)) => server_config(cert, key).map(drop),
        (Some(_), None) => Err("tls_cert is set but tls_key is not: both or neither".into()),
        (None, Some(_)) => Err("tls_key is set but tls_cert is not: both or neither".into()),
    }
}

/// The acceptor for the configured certificate and key, or `None` when the core serves in the
/// clear.
pub fn acceptor(config: &CoreConfig) -> Result<Option<TlsAcceptor>, String> {
    match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Ok(Some(TlsAcceptor::from(server_config(cert, key)?))),
        _ => check(config.tls_cert.as_deref(), config.tls_key.as_deref()).map(|()| None),
    }
}

/// A rustls server configuration from a PEM certificate chain and a PEM private key.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, String> {
    let read = |name: &str, path: &Path| std::fs::read(path).map_err(|e| format!("{name} {}: {e}", path.display()));
    let chain = CertificateDer::pem_slice_iter(&read("tls_cert", cert)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("tls_cert {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("tls_cert {}: no CERTIFICATE block", cert.display()));
    }
    let private =
        PrivateKeyDer::from_pem_slice(&read("tls_key", key)?).map_err(|e| format!("tls_key {}: no private key ({e})", key.display()))?;
    let config = ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS configuration: {e}"))?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| format!("tls_key {} does not go with tls_cert {}: {e}", key.display(), cert.display()))?;
    Ok(Arc::new(config))
}

/// One accepted connection: in the clear, or TLS with the bytes already peeked at kept for the
/// first reads.
pub enum Conn {
    /// A plain TCP connection.
    Plain(TcpStream),
    /// A TLS connection whose handshake is done.
    Tls {
        /// The TLS stream.
        stream: Box<TlsStream<TcpStream>>,
        /// Decrypted bytes read by [`Conn::peek`], not yet read by the connection's user.
        peeked: Vec<u8>,
    },
}

impl Conn {
    /// Takes an accepted TCP connection: with an acceptor, performs the TLS handshake (within
    /// [`HANDSHAKE_TIMEOUT`]); `None` when it fails, which is logged.
    pub async fn accept(stream: TcpStream, acceptor: Option<&TlsAcceptor>, peer: SocketAddr) -> Option<Conn> {
        let Some(acceptor) = acceptor else { return Some(Conn::Plain(stream)) };
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
            Ok(Ok(tls)) => Some(Conn::Tls { stream: Box::new(tls), peeked: Vec::new() }),
            Ok(Err(e)) => {
                tracing::debug!(%peer, "TLS handshake failed: {e}");
                None
            }
            Err(_) => {
                tracing::debug!(%peer, "TLS handshake not finished within {HANDSHAKE_TIMEOUT:?}");
                None
            }
        }
    }

    /// The first bytes of the request without consuming them: they are read again by the next
    /// reads. Returns how many were copied into `buf`.
    pub async fn peek(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.peek(buf).await,
            Conn::Tls { stream, peeked } => {
                // Each call reads what has come since (the caller peeks again only while the
                // request head is incomplete), up to `buf`'s size.
                if peeked.len() < buf.len() {
                    let mut chunk = vec![0u8; buf.len() - peeked.len()];
                    let n = stream.read(&mut chunk).await?;
                    if n == 0 && peeked.is_empty() {
                        return Ok(0);
                    }
                    peeked.extend_from_slice(&chunk[..n]);
                }
                let n = peeked.len().min(buf.len());
                buf[..n].copy_from_slice(&peeked[..n]);
                Ok(n)
            }
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls { stream, peeked } => {
                if !peeked.is_empty() {
                    let n = peeked.len().min(buf.remaining());
                    buf.put_slice(&peeked[..n]);
                    peeked.drain(..n);
                    return Poll::Ready(Ok(()));
                }
                Pin::new(stream.as_mut()).poll_read(cx, buf)
            }
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, data),
            Conn::Tls { stream, .. } => Pin::new(stream.as_mut()).poll_write(cx, data),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls { stream, .. } => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls { stream, .. } => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str, text: &[u8]) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("callme-core-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn a_cert_without_a_key_names_the_missing_key() {
        let e = check(Some(Path::new("/nonexistent/cert.pem")), None).unwrap_err();
        assert!(e.contains("tls_key is set but") || e.contains("tls_key is not"), "{e}");
    }

    #[test]
    fn a_missing_file_is_named_by_its_key_and_path() {
        let e = check(Some(Path::new("/nonexistent/cert.pem")), Some(Path::new("/nonexistent/key.pem"))).unwrap_err();
        assert!(e.starts_with("tls_cert /nonexistent/cert.pem:"), "{e}");
    }

    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let one = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let other = rcgen::KeyPair::generate().unwrap();
        let cert = temp("cert.pem", one.cert.pem().as_bytes());
        let key = temp("other-key.pem", other.serialize_pem().as_bytes());
        let e = check(Some(&cert), Some(&key)).unwrap_err();
        assert!(e.contains("does not go with tls_cert"), "{e}");
        let good_key = temp("key.pem", one.key_pair.serialize_pem().as_bytes());
        check(Some(&cert), Some(&good_key)).expect("the certificate's own key is accepted");
    }

    #[test]
    fn a_file_that_is_not_pem_is_refused() {
        let cert = temp("garbage.pem", b"not a certificate");
        let e = check(Some(&cert), Some(&cert)).unwrap_err();
        assert!(e.contains("tls_cert") && e.contains("no CERTIFICATE block"), "{e}");
    }
}
