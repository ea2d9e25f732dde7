//! A network between clients and a core, for tests: a UDP relay on loopback that behaves like a
//! 1:1 NAT in front of the core's media port, with an injection hook on both sides and a seeded
//! impairment (loss today; jitter, reordering and blackouts belong here too), and a TCP relay
//! in front of its WebSocket port that can cut connections without closing them
//! ([`TcpRelay`]).
//!
//! ```text
//! client 127.0.0.1:c ──▶ public 127.0.0.2:P ══ relay ══ inside 127.0.0.3:m ──▶ core 127.0.0.1:P
//!                    ◀──                                               ◀──
//! ```
//!
//! The core announces the public address (`announce = 127.0.0.2` with the relay listening on
//! the core's media port), so a client reaches the core only through the relay. Each client
//! address gets an inside socket of its own, as a NAT maps each inside host to a port: the core
//! sees the client at that inside address. [`Relay::inject_to_core`] sends a datagram from a
//! client's inside socket (the core cannot tell it from the client's), and
//! [`Relay::inject_to_client`] one from the public socket (the client cannot tell it from the
//! core's). Loopback only: the relay never sends outside 127.0.0.0/8.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// What the relay does to the datagrams it forwards; the same seed gives the same drops.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct Impairment {
    /// The share of forwarded datagrams dropped, each direction, 0 to 1.
    pub loss: f64,
    /// The seed of the drop sequence.
    pub seed: u64,
}

impl Default for Impairment {
    fn default() -> Self {
        Impairment { loss: 0.0, seed: 1 }
    }
}

/// Counts of what the relay did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RelayStats {
    /// Datagrams forwarded from clients to the core.
    pub to_core: u64,
    /// Datagrams forwarded from the core to clients.
    pub to_clients: u64,
    /// Datagrams dropped by the impairment.
    pub dropped: u64,
    /// Datagrams injected.
    pub injected: u64,
}

#[derive(Default)]
struct Counters {
    to_core: AtomicU64,
    to_clients: AtomicU64,
    dropped: AtomicU64,
    injected: AtomicU64,
}

/// A small, seeded generator (xorshift64*), so a run's drops can be replayed.
struct Rng(u64);

impl Rng {
    fn next_unit(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

struct Inner {
    public: Arc<UdpSocket>,
    target: SocketAddr,
    inside_ip: IpAddr,
    mappings: Mutex<HashMap<SocketAddr, Arc<UdpSocket>>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    counters: Counters,
    impairment: Impairment,
    rng: Mutex<Rng>,
}

impl Inner {
    fn is_dropped(&self) -> bool {
        if self.impairment.loss <= 0.0 {
            return false;
        }
        let drop = self.rng.lock().unwrap_or_else(|p| p.into_inner()).next_unit() < self.impairment.loss;
        if drop {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
        drop
    }
}

/// A running relay; dropping it stops it.
pub struct Relay {
    inner: Arc<Inner>,
}

impl Relay {
    /// Listens on `public` (for example `127.0.0.2:P`) and forwards to `target` (the core's media
    /// socket) from inside sockets bound on `inside_ip` (for example `127.0.0.3`).
    pub async fn start(public: SocketAddr, inside_ip: IpAddr, target: SocketAddr, impairment: Impairment) -> io::Result<Relay> {
        for ip in [public.ip(), inside_ip, target.ip()] {
            if !ip.is_loopback() {
                return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("the relay runs on loopback only, not {ip}")));
            }
        }
        let public = Arc::new(UdpSocket::bind(public).await?);
        let inner = Arc::new(Inner {
            public,
            target,
            inside_ip,
            mappings: Mutex::default(),
            tasks: Mutex::default(),
            counters: Counters::default(),
            impairment,
            rng: Mutex::new(Rng(impairment.seed.max(1))),
        });
        let task = tokio::spawn(Self::from_clients(inner.clone()));
        inner.tasks.lock().unwrap_or_else(|p| p.into_inner()).push(task);
        Ok(Relay { inner })
    }

    /// The public address: what the core announces and clients send to.
    pub fn public_addr(&self) -> SocketAddr {
        self.inner.public.local_addr().expect("a bound socket has an address")
    }

    /// The clients seen so far, each with its inside address (where the core sees it).
    pub fn clients(&self) -> Vec<(SocketAddr, SocketAddr)> {
        let map = self.inner.mappings.lock().unwrap_or_else(|p| p.into_inner());
        map.iter().filter_map(|(c, s)| Some((*c, s.local_addr().ok()?))).collect()
    }

    /// Sends `datagram` to the core from `client`'s inside address, as if the client sent it.
    pub async fn inject_to_core(&self, client: SocketAddr, datagram: &[u8]) -> io::Result<()> {
        let socket = self.inner.mappings.lock().unwrap_or_else(|p| p.into_inner()).get(&client).cloned();
        let socket =
            socket.ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no client {client} has sent through the relay")))?;
        socket.send_to(datagram, self.inner.target).await?;
        self.inner.counters.injected.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Sends `datagram` to `client` from the public address, as if the core sent it.
    pub async fn inject_to_client(&self, client: SocketAddr, datagram: &[u8]) -> io::Result<()> {
        self.inner.public.send_to(datagram, client).await?;
        self.inner.counters.injected.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// What the relay has done so far.
    pub fn stats(&self) -> RelayStats {
        let c = &self.inner.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RelayStats { to_core: l(&c.to_core), to_clients: l(&c.to_clients), dropped: l(&c.dropped), injected: l(&c.injected) }
    }

    async fn from_clients(inner: Arc<Inner>) {
        let mut buf = vec![0u8; 2048];
        loop {
            let Ok((n, client)) = inner.public.recv_from(&mut buf).await else { return };
            let socket = match Self::mapping(&inner, client).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(%client, "the relay cannot map the client: {e}");
                    continue;
                }
            };
            if inner.is_dropped() {
                continue;
            }
            if socket.send_to(&buf[..n], inner.target).await.is_ok() {
                inner.counters.to_core.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The client's inside socket, made (with its task forwarding the core's replies) on first use.
    async fn mapping(inner: &Arc<Inner>, client: SocketAddr) -> io::Result<Arc<UdpSocket>> {
        if let Some(s) = inner.mappings.lock().unwrap_or_else(|p| p.into_inner()).get(&client) {
            return Ok(s.clone());
        }
        let socket = Arc::new(UdpSocket::bind(SocketAddr::new(inner.inside_ip, 0)).await?);
        inner.mappings.lock().unwrap_or_else(|p| p.into_inner()).insert(client, socket.clone());
        let (relay, inside) = (inner.clone(), socket.clone());
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            loop {
                let Ok((n, from)) = inside.recv_from(&mut buf).await else { return };
                // A 1:1 NAT's mapping only lets the host it was opened to answer.
                if from != relay.target || relay.is_dropped() {
                    continue;
                }
                if relay.public.send_to(&buf[..n], client).await.is_ok() {
                    relay.counters.to_clients.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        inner.tasks.lock().unwrap_or_else(|p| p.into_inner()).push(task);
        Ok(socket)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        for t in self.inner.tasks.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            t.abort();
        }
    }
}

/// A TCP relay on loopback in front of the core's WebSocket port, which can cut its connections
/// the way a dead network does: after [`TcpRelay::cut`] no byte moves either way and no side is
/// closed, so neither end learns of it until its own timeouts say so. New connections after a
/// cut are relayed as usual.
///
/// ```text
/// client ──▶ 127.0.0.x:R ══ relay ══▶ core's WebSocket port
/// ```
pub struct TcpRelay {
    addr: SocketAddr,
    cut: Arc<Mutex<Vec<tokio::sync::watch::Sender<bool>>>>,
    task: JoinHandle<()>,
}

impl TcpRelay {
    /// Listens on `listen` (port 0 for any) and relays every connection to `target`.
    pub async fn start(listen: SocketAddr, target: SocketAddr) -> io::Result<TcpRelay> {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let cut: Arc<Mutex<Vec<tokio::sync::watch::Sender<bool>>>> = Arc::default();
        let conns = cut.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(core) = tokio::net::TcpStream::connect(target).await else { continue };
                let (tx, rx) = tokio::sync::watch::channel(false);
                conns.lock().expect("the relay's lock is never poisoned").push(tx);
                tokio::spawn(relay_tcp(client, core, rx));
            }
        });
        Ok(TcpRelay { addr, cut, task })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Cuts every connection relayed so far: they stay open, and nothing moves on them again.
    pub fn cut(&self) {
        for c in self.cut.lock().expect("the relay's lock is never poisoned").drain(..) {
            let _ = c.send(true);
        }
    }
}

impl Drop for TcpRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies both ways until either side closes or the connection is cut; a cut connection's
/// sockets are held, silent, for as long as the runtime runs the task (at most an hour). A relay
/// dropped before a cut closes its connections.
async fn relay_tcp(mut client: tokio::net::TcpStream, mut core: tokio::net::TcpStream, mut cut: tokio::sync::watch::Receiver<bool>) {
    let was_cut = tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut core) => false,
        c = cut.wait_for(|c| *c) => c.is_ok(),
    };
    if was_cut {
        tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_drops_the_same_datagrams() {
        let run = |seed| {
            let mut r = Rng(seed);
            (0..64).map(|_| r.next_unit() < 0.3).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
        let drops = run(7).iter().filter(|d| **d).count();
        assert!((8..=32).contains(&drops), "{drops} of 64 at 30 %");
    }

    #[tokio::test]
    async fn a_cut_tcp_connection_stays_open_and_carries_nothing_while_a_new_one_works() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = echo.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = echo.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let relay = TcpRelay::start("127.0.0.1:0".parse().unwrap(), target).await.unwrap();
        let mut a = tokio::net::TcpStream::connect(relay.addr()).await.unwrap();
        let mut buf = [0u8; 4];
        a.write_all(b"ping").await.unwrap();
        a.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");

        relay.cut();
        a.write_all(b"lost").await.unwrap();
        let read = tokio::time::timeout(std::time::Duration::from_millis(300), a.read(&mut buf)).await;
        assert!(read.is_err(), "a cut connection neither echoes nor closes: {read:?}");

        let mut b = tokio::net::TcpStream::connect(relay.addr()).await.unwrap();
        b.write_all(b"next").await.unwrap();
        b.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"next");
    }
}
