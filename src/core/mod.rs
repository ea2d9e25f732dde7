//! The reference core: the server side of `docs/protocol.md` with real media.
//!
//! ```text
//! TCP :listen ── GET /ws (WebSocket, PalladaWSData) ── one session task per socket
//!            └── GET /, /callme.js                   ── the browser client page
//! UDP :media ── one socket, one webrtc-rs UDP mux ── every party's ICE-lite PeerConnection
//! per conference: one mixer task (jitter buffer, decode+PLC, N-1 mix, limiter, encode, 20 ms)
//! ```
//!
//! Three parts:
//!
//! - `registry`: sessions, conferences, parties, who owns what, the roster. Plain code with no
//!   IO: each input returns the effects to carry out.
//! - `shell`: the WebSocket sessions (bounded queues, caps, pings, timeouts, close codes) and
//!   the one place where the registry's effects become frames, mixers and media; `http` routes
//!   a connection and serves the browser page.
//! - media: `party_media` (one party's PeerConnection) and `mixer` (one per conference).
//!
//! Frames are read and written by the [`crate::wire`] types the SDK uses. Bad input from a peer
//! becomes a negative answer with its own code (or a `session.error` event when no `seq` can be
//! read) or, at the WebSocket layer, an RFC 6455 close code; it never panics and never touches
//! another session.

mod accounts;
pub mod config;
mod http;
mod mixer;
mod party_media;
mod registry;
mod shell;
mod tls;
mod turn;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use webrtc::ice::udp_mux::{UDPMuxDefault, UDPMuxParams};
use webrtc::peer_connection::certificate::RTCCertificate;

use crate::wire::ConfId;
pub use accounts::hash_password;
pub use config::{Account, CoreConfig, Credential, Role, TurnConfig};
pub use mixer::MixerStats;
use party_media::MediaEnv;
use shell::Shared;

/// A running core.
pub struct CoreHandle {
    /// `ws://IP:PORT/ws`.
    pub ws_url: String,
    /// `http://IP:PORT/`: the browser page.
    pub http_url: String,
    /// The UDP address all media uses.
    pub media_addr: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// Counts for tests and benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CoreStats {
    /// Open WebSocket sessions.
    pub sessions: usize,
    /// Running conferences.
    pub conferences: usize,
    /// Loaded parties.
    pub parties: usize,
    /// Parties whose media runs.
    pub parties_with_media: usize,
}

impl CoreHandle {
    /// What the core holds now.
    pub fn stats(&self) -> CoreStats {
        self.shared.stats()
    }

    /// The parties of the running conference `scheme` (`SchemeID`) of `cluster`, ordered by
    /// `Index`: the list every client's roster should equal once the core's `conf.changed`
    /// events have reached it (empty when the conference is not running).
    pub fn roster(&self, cluster: crate::wire::ClusterId, scheme: crate::wire::SchemeId) -> Vec<crate::wire::PartyData> {
        self.shared.roster(cluster, scheme)
    }

    /// Each running conference's mixer figures (ticks, late ticks, drops).
    pub fn mixer_stats(&self) -> Vec<(ConfId, mixer::MixerStats)> {
        self.shared.mixer_stats()
    }

    /// Stops accepting, closes every session (close code 1001) and every media session.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        self.shared.shutdown().await;
        // Give session tasks a moment to send their close frames.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts a core: binds the TCP listener and the UDP media socket, then serves until stopped.
pub async fn start(config: CoreConfig) -> Result<CoreHandle, String> {
    let config = config.validate()?;
    tracing::info!(config = %config.redacted(), "starting the core");
    let listener = TcpListener::bind(config.listen).await.map_err(|e| format!("listen {}: {e}", config.listen))?;
    let udp = bind_media(config.media).map_err(|e| format!("media {}: {e}", config.media))?;
    let media_addr = udp.local_addr().map_err(|e| e.to_string())?;
    let mux = UDPMuxDefault::new(UDPMuxParams::new(udp));
    let certificate = RTCCertificate::from_key_pair(rcgen::KeyPair::generate().map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    let env = MediaEnv {
        mux,
        fingerprint: MediaEnv::fingerprint_of(&certificate),
        certificate,
        announce: config.announce.unwrap_or(media_addr.ip()),
        bound: media_addr.ip(),
        port: media_addr.port(),
        media_timeout: config.media_timeout(),
    };
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    let tls = tls::acceptor(&config)?;
    let (ws, http) = if tls.is_some() { ("wss", "https") } else { ("ws", "http") };
    let shared = Shared::new(config, env, tls);
    let (stop, stop_rx) = watch::channel(false);
    shared.spawn_ticker(stop_rx.clone());
    let task = tokio::spawn(accept_loop(listener, shared.clone(), stop_rx));
    Ok(CoreHandle { ws_url: format!("{ws}://{local}/ws"), http_url: format!("{http}://{local}/"), media_addr, shared, stop, task })
}

/// The shared media socket, with a receive buffer deep enough (4 MiB) that a burst of datagrams
/// (a flood of garbage, or many parties' packets at one tick) is not dropped by the kernel.
fn bind_media(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    let _ = socket.set_recv_buffer_size(4 << 20);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut sessions = Vec::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => {
                let Ok((stream, peer)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                sessions.push(tokio::spawn(serve_connection(stream, peer, shared.clone(), stop.clone())));
                sessions.retain(|t: &JoinHandle<()>| !t.is_finished());
            }
        }
    }
    for s in sessions {
        let _ = tokio::time::timeout(Duration::from_millis(500), s).await;
    }
}

/// Routes a connection: a WebSocket upgrade on `/ws`, or a plain GET for the page. Everything
/// up to an established WebSocket must finish within `handshake_timeout_ms`.
async fn serve_connection(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>, stop: watch::Receiver<bool>) {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(shared.config.handshake_timeout_ms);
    // TLS first (when configured), then the request head, all within the deadline.
    let handshake = async {
        let mut conn = tls::Conn::accept(stream, shared.tls.as_ref(), peer).await?;
        match http::route(&mut conn).await? {
            http::Route::Page(path) => Some((conn, Err(path))),
            http::Route::WebSocket => Some((conn, Ok(()))),
        }
    };
    match tokio::time::timeout_at(deadline, handshake).await {
        Ok(Some((stream, Err(path)))) => http::serve_page(stream, &path).await,
        Ok(Some((stream, Ok(())))) => match tokio::time::timeout_at(deadline, shell::accept(stream, &shared.config)).await {
            Ok(Ok(ws)) => shell::serve(ws, peer, shared, stop).await,
            Ok(Err(e)) => tracing::debug!(%peer, "WebSocket handshake failed: {e}"),
            Err(_) => tracing::info!(%peer, "WebSocket handshake timed out"),
        },
        Ok(None) => tracing::debug!(%peer, "connection closed before a request"),
        Err(_) => tracing::info!(%peer, "no complete request within the handshake timeout"),
    }
}
