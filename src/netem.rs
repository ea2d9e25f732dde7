//! A network between clients and a core, for tests: a UDP relay on loopback that behaves like a
//! 1:1 NAT in front of the core's media port, with an injection hook on both sides and a seeded
//! network emulator in each direction (loss, bursty loss, delay and jitter, reordering,
//! duplication, blackouts), and a TCP relay in front of its WebSocket port that can cut
//! connections without closing them ([`TcpRelay`]).
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
//!
//! # The emulator
//!
//! Each direction ([`Direction::ToCore`], [`Direction::ToClients`]) has an [`Impairment`], and
//! each client's path a [`Model`] of it. The model is pure: no clock, no IO. It is told when a
//! datagram arrives (milliseconds since the impairment was set) and answers a [`Decision`]:
//! dropped, with its [`DropCause`], or delivered at a time, once or twice. The relay feeds it the real arrival
//! times and carries its answers out. The knobs, in the order they act:
//!
//! | knob | what it does |
//! |---|---|
//! | [`Impairment::blackouts`], [`Relay::blackout`] | every datagram arriving in `start..start + len` is dropped |
//! | [`Impairment::bursts`] | bursty loss: a [`GilbertElliott`] chain stepped once per datagram, lost with its state's loss; [`GilbertElliott::from_mean`] takes a mean loss rate and a mean burst length |
//! | [`Impairment::loss`] | each datagram dropped on its own with this probability |
//! | [`Impairment::delay_ms`], [`Impairment::jitter_ms`] | delivered after the fixed delay plus a delay drawn uniform in `0..=jitter_ms`; a jitter larger than the spacing of the datagrams reorders them |
//! | [`Impairment::keep_order`] | jitter never lets a datagram overtake an earlier one: it waits for the one before (the delay piles up as in a queue) |
//! | [`Impairment::reorder`], [`Impairment::reorder_ms`] | the share of datagrams held back `reorder_ms` beyond their time, so the next ones overtake them |
//! | [`Impairment::duplicate`] | the share of datagrams delivered twice, the copy right after the original |
//!
//! The default impairment does nothing, and a relay whose impairment never delays forwards each
//! datagram as it comes, with no queue and no timer. Otherwise each direction has a delay queue
//! (a heap ordered by delivery time, then by arrival, and one task sleeping until the earliest
//! time) that holds at most [`MAX_QUEUED`] datagrams; datagrams beyond it are dropped and
//! counted. [`RelayStats`] counts each effect: lost, lost in bursts, blacked out, overflowed,
//! duplicated, reordered, delayed.
//!
//! A test can settle a call first and impair it afterwards: [`Relay::set_impairment`] (or
//! [`Relay::set_impairment_one_way`]) replaces a direction's impairment at once, its clock
//! starting then, and [`Relay::blackout`] (or [`Relay::blackout_one_way`]) darkens the link
//! from now for a given time, the rest of the impairment staying.
//!
//! ## Determinism
//!
//! All random choices come from a small self-contained generator seeded by
//! [`Impairment::seed`] and the path (below), one generator per knob, each drawing the same number
//! of values for every datagram. So the model gives the same decisions for the same seed and the
//! same arrival times, and one knob's pattern does not change when another is turned on (10 %
//! loss drops the same datagrams with or without jitter). A relay's arrival times are real, so
//! a run over it is replayable only as far as its traffic's timing is: to replay a pattern
//! exactly, feed a [`Model`] the times.
//!
//! Each client's path has a model of its own in each direction (so bursts and reordering are
//! those of one path, not of several clients' datagrams interleaved), all with the direction's
//! impairment: the `k`-th client the relay sees gets streams `2k` (towards the core) and `2k + 1`
//! (towards it) of the seed. Models count in milliseconds.

use std::cmp::Reverse;
use std::collections::binary_heap::PeekMut;
use std::collections::{BinaryHeap, HashMap};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

mod model;

pub use model::{Blackout, Decision, Delivery, DropCause, GilbertElliott, Impairment, Model};

/// A direction through the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From the clients to the core.
    ToCore,
    /// From the core to the clients.
    ToClients,
}

impl Direction {
    const BOTH: [Direction; 2] = [Direction::ToCore, Direction::ToClients];

    /// The direction's place in the relay's arrays, and its model's stream.
    fn index(self) -> usize {
        match self {
            Direction::ToCore => 0,
            Direction::ToClients => 1,
        }
    }
}

/// Counts of what the relay did, over both directions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct RelayStats {
    /// Datagrams sent from clients to the core (a duplicate counts as one more).
    pub to_core: u64,
    /// Datagrams sent from the core to clients (a duplicate counts as one more).
    pub to_clients: u64,
    /// Datagrams dropped, for any reason: the sum of `lost`, `burst_lost`, `blacked_out` and
    /// `overflowed`.
    pub dropped: u64,
    /// Datagrams injected.
    pub injected: u64,
    /// Datagrams dropped by random loss ([`Impairment::loss`]).
    pub lost: u64,
    /// Datagrams dropped by bursty loss ([`Impairment::bursts`]).
    pub burst_lost: u64,
    /// Datagrams dropped because they arrived during a blackout.
    pub blacked_out: u64,
    /// Datagrams delivered twice.
    pub duplicated: u64,
    /// Datagrams delivered after one that arrived after them (by jitter or by
    /// [`Impairment::reorder`]), as the model scheduled them.
    pub reordered: u64,
    /// Datagrams delivered later than they arrived.
    pub delayed: u64,
    /// Datagrams dropped because a direction already held [`MAX_QUEUED`] datagrams waiting
    /// for their time (or their time lay beyond what the clock can hold).
    pub overflowed: u64,
}

#[derive(Default)]
struct Counters {
    to_core: AtomicU64,
    to_clients: AtomicU64,
    injected: AtomicU64,
    lost: AtomicU64,
    burst_lost: AtomicU64,
    blacked_out: AtomicU64,
    duplicated: AtomicU64,
    reordered: AtomicU64,
    delayed: AtomicU64,
    overflowed: AtomicU64,
}

impl Counters {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// The most datagrams one direction holds waiting for their delivery time; beyond it datagrams
/// are dropped and counted in [`RelayStats::overflowed`]. At 50 datagrams a second per party
/// this is over a minute of delay for a conference of a few parties.
pub const MAX_QUEUED: usize = 4096;

/// One direction's impairment, on its own clock, with a model for each client's path.
struct Link {
    /// The impairment set, with the blackouts added since.
    impairment: Impairment,
    /// Time zero of the models' clock: when the impairment was set.
    epoch: Instant,
    /// The arrival order, which settles datagrams due at the same time.
    seq: u64,
    /// Each client's path in this direction.
    paths: HashMap<SocketAddr, Model>,
}

impl Link {
    fn new(impairment: Impairment, epoch: Instant) -> Link {
        Link { impairment, epoch, seq: 0, paths: HashMap::new() }
    }

    /// Milliseconds from the epoch to `t`.
    fn ms(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }
}

/// Both directions, and the clients in the order first seen.
struct Links {
    dirs: [Link; 2],
    /// Each client's place in the order the relay first saw it, which gives its models' streams.
    order: HashMap<SocketAddr, u64>,
}

impl Links {
    /// The stream of client `k`'s model in `dir`: every path of the relay decides independently.
    fn stream(k: u64, dir: Direction) -> u64 {
        k.wrapping_mul(2).wrapping_add(dir.index() as u64)
    }

    /// Sets `dir`'s impairment, its clock starting at `now`, for every path.
    fn set(&mut self, dir: Direction, impairment: Impairment, now: Instant) {
        let link = &mut self.dirs[dir.index()];
        for (client, model) in link.paths.iter_mut() {
            let k = self.order.get(client).copied().unwrap_or_default();
            *model = Model::with_stream(impairment.clone(), Links::stream(k, dir));
        }
        link.impairment = impairment;
        link.epoch = now;
    }
}

/// A datagram waiting for its time.
struct Scheduled {
    at: Instant,
    seq: u64,
    dir: Direction,
    socket: Arc<UdpSocket>,
    dest: SocketAddr,
    datagram: Vec<u8>,
    copies: u8,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Scheduled {}

impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct Inner {
    public: Arc<UdpSocket>,
    target: SocketAddr,
    inside_ip: IpAddr,
    mappings: Mutex<HashMap<SocketAddr, Arc<UdpSocket>>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    counters: Counters,
    links: Mutex<Links>,
    queues: [mpsc::Sender<Scheduled>; 2],
}

impl Inner {
    /// Carries one datagram of `client`'s towards `dest` through `dir`'s impairment: dropped,
    /// sent now, or queued for its time.
    async fn forward(&self, dir: Direction, client: SocketAddr, datagram: &[u8], socket: &Arc<UdpSocket>, dest: SocketAddr) {
        let now = Instant::now();
        let (decision, arrival_ms, due, seq, delaying) = {
            let mut links = lock(&self.links);
            let next = links.order.len() as u64;
            let k = *links.order.entry(client).or_insert(next);
            let link = &mut links.dirs[dir.index()];
            let arrival_ms = link.ms(now);
            let model = link.paths.entry(client).or_insert_with(|| Model::with_stream(link.impairment.clone(), Links::stream(k, dir)));
            let decision = model.handle_datagram(arrival_ms);
            link.seq += 1;
            let due = match decision {
                Decision::Deliver(d) => link.epoch.checked_add(Duration::from_millis(d.at_ms)),
                Decision::Drop(_) => None,
            };
            (decision, arrival_ms, due, link.seq, link.impairment.is_delaying())
        };
        let c = &self.counters;
        let delivery = match decision {
            Decision::Drop(cause) => {
                Counters::add(
                    match cause {
                        DropCause::Loss => &c.lost,
                        DropCause::Burst => &c.burst_lost,
                        DropCause::Blackout => &c.blacked_out,
                    },
                    1,
                );
                return;
            }
            Decision::Deliver(d) => d,
        };
        let Some(at) = due else {
            Counters::add(&c.overflowed, 1);
            return;
        };
        Counters::add(&c.reordered, u64::from(delivery.overtakes));
        if delivery.duplicate {
            Counters::add(&c.duplicated, 1);
        }
        if delivery.at_ms > arrival_ms {
            Counters::add(&c.delayed, 1);
        }
        let copies = if delivery.duplicate { 2 } else { 1 };
        if !delaying {
            // Nothing is ever held back: no queue, no timer, the order is the arrival order.
            for _ in 0..copies {
                self.send(dir, socket, dest, datagram).await;
            }
            return;
        }
        let item = Scheduled { at, seq, dir, socket: socket.clone(), dest, datagram: datagram.to_vec(), copies };
        if self.queues[dir.index()].try_send(item).is_err() {
            Counters::add(&c.overflowed, 1);
        }
    }

    async fn send(&self, dir: Direction, socket: &UdpSocket, dest: SocketAddr, datagram: &[u8]) {
        if socket.send_to(datagram, dest).await.is_ok() {
            Counters::add(
                match dir {
                    Direction::ToCore => &self.counters.to_core,
                    Direction::ToClients => &self.counters.to_clients,
                },
                1,
            );
        }
    }
}

/// A running relay; dropping it stops it.
pub struct Relay {
    inner: Arc<Inner>,
}

impl Relay {
    /// Listens on `public` (for example `127.0.0.2:P`) and forwards to `target` (the core's media
    /// socket) from inside sockets bound on `inside_ip` (for example `127.0.0.3`), with
    /// `impairment` in both directions (each client's path, each way, its own stream of the seed).
    pub async fn start(public: SocketAddr, inside_ip: IpAddr, target: SocketAddr, impairment: Impairment) -> io::Result<Relay> {
        for ip in [public.ip(), inside_ip, target.ip()] {
            if !ip.is_loopback() {
                return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("the relay runs on loopback only, not {ip}")));
            }
        }
        let public = Arc::new(UdpSocket::bind(public).await?);
        let now = Instant::now();
        let (to_core, from_core) = mpsc::channel(MAX_QUEUED);
        let (to_clients, from_clients) = mpsc::channel(MAX_QUEUED);
        let inner = Arc::new(Inner {
            public,
            target,
            inside_ip,
            mappings: Mutex::default(),
            tasks: Mutex::default(),
            counters: Counters::default(),
            links: Mutex::new(Links { dirs: [Link::new(impairment.clone(), now), Link::new(impairment, now)], order: HashMap::new() }),
            queues: [to_core, to_clients],
        });
        let tasks = [
            tokio::spawn(Self::from_clients(inner.clone())),
            tokio::spawn(Self::deliver(inner.clone(), from_core)),
            tokio::spawn(Self::deliver(inner.clone(), from_clients)),
        ];
        lock(&inner.tasks).extend(tasks);
        Ok(Relay { inner })
    }

    /// The public address: what the core announces and clients send to.
    pub fn public_addr(&self) -> SocketAddr {
        self.inner.public.local_addr().expect("a bound socket has an address")
    }

    /// The clients seen so far, each with its inside address (where the core sees it).
    pub fn clients(&self) -> Vec<(SocketAddr, SocketAddr)> {
        let map = lock(&self.inner.mappings);
        map.iter().filter_map(|(c, s)| Some((*c, s.local_addr().ok()?))).collect()
    }

    /// Replaces the impairment in both directions for every client's path (each its own stream
    /// of the seed), blackouts started by [`Relay::blackout`] included. Its clock starts now: its
    /// [`Impairment::blackouts`] count from this call. Datagrams already waiting keep their time.
    pub fn set_impairment(&self, impairment: Impairment) {
        for dir in Direction::BOTH {
            self.set_impairment_one_way(dir, impairment.clone());
        }
    }

    /// Replaces the impairment in one direction, as [`Relay::set_impairment`] does in both.
    pub fn set_impairment_one_way(&self, dir: Direction, impairment: Impairment) {
        lock(&self.inner.links).set(dir, impairment, Instant::now());
    }

    /// The impairment in `dir`, blackouts added by [`Relay::blackout`] included (on the clock of
    /// the last [`Relay::set_impairment`]).
    pub fn impairment(&self, dir: Direction) -> Impairment {
        lock(&self.inner.links).dirs[dir.index()].impairment.clone()
    }

    /// Drops every datagram, both ways, from now for `len`; the rest of the impairment stays.
    pub fn blackout(&self, len: Duration) {
        for dir in Direction::BOTH {
            self.blackout_one_way(dir, len);
        }
    }

    /// Drops every datagram going `dir`-wards from now for `len`.
    pub fn blackout_one_way(&self, dir: Direction, len: Duration) {
        let mut links = lock(&self.inner.links);
        let link = &mut links.dirs[dir.index()];
        let start = link.ms(Instant::now());
        let len = u64::try_from(len.as_millis()).unwrap_or(u64::MAX);
        // Kept in the impairment for paths not seen yet; blackouts that are over are forgotten.
        link.impairment.blackouts.retain(|b| b.start_ms.saturating_add(b.len_ms) > start);
        link.impairment.blackouts.push(Blackout { start_ms: start, len_ms: len });
        for model in link.paths.values_mut() {
            model.blackout(start, len);
        }
    }

    /// Sends `datagram` to the core from `client`'s inside address, as if the client sent it.
    /// Injected datagrams bypass the impairment.
    pub async fn inject_to_core(&self, client: SocketAddr, datagram: &[u8]) -> io::Result<()> {
        let socket = lock(&self.inner.mappings).get(&client).cloned();
        let socket =
            socket.ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no client {client} has sent through the relay")))?;
        socket.send_to(datagram, self.inner.target).await?;
        Counters::add(&self.inner.counters.injected, 1);
        Ok(())
    }

    /// Sends `datagram` to `client` from the public address, as if the core sent it. Injected
    /// datagrams bypass the impairment.
    pub async fn inject_to_client(&self, client: SocketAddr, datagram: &[u8]) -> io::Result<()> {
        self.inner.public.send_to(datagram, client).await?;
        Counters::add(&self.inner.counters.injected, 1);
        Ok(())
    }

    /// What the relay has done so far.
    pub fn stats(&self) -> RelayStats {
        let c = &self.inner.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (lost, burst_lost, blacked_out, overflowed) = (l(&c.lost), l(&c.burst_lost), l(&c.blacked_out), l(&c.overflowed));
        RelayStats {
            to_core: l(&c.to_core),
            to_clients: l(&c.to_clients),
            dropped: lost + burst_lost + blacked_out + overflowed,
            injected: l(&c.injected),
            lost,
            burst_lost,
            blacked_out,
            duplicated: l(&c.duplicated),
            reordered: l(&c.reordered),
            delayed: l(&c.delayed),
            overflowed,
        }
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
            inner.forward(Direction::ToCore, client, &buf[..n], &socket, inner.target).await;
        }
    }

    /// One direction's delay queue: datagrams in order of their time (then of arrival), each
    /// sent when its time comes.
    async fn deliver(inner: Arc<Inner>, mut queue: mpsc::Receiver<Scheduled>) {
        let mut waiting: BinaryHeap<Reverse<Scheduled>> = BinaryHeap::new();
        loop {
            let next = waiting.peek().map(|Reverse(s)| s.at);
            tokio::select! {
                item = queue.recv() => match item {
                    Some(item) if waiting.len() < MAX_QUEUED => waiting.push(Reverse(item)),
                    Some(_) => Counters::add(&inner.counters.overflowed, 1),
                    None => return,
                },
                () = tokio::time::sleep_until(next.unwrap_or_else(Instant::now)), if next.is_some() => {
                    let now = Instant::now();
                    while let Some(top) = waiting.peek_mut() {
                        if top.0.at > now {
                            break;
                        }
                        let Reverse(s) = PeekMut::pop(top);
                        for _ in 0..s.copies {
                            inner.send(s.dir, &s.socket, s.dest, &s.datagram).await;
                        }
                    }
                }
            }
        }
    }

    /// The client's inside socket, made (with its task forwarding the core's replies) on first use.
    async fn mapping(inner: &Arc<Inner>, client: SocketAddr) -> io::Result<Arc<UdpSocket>> {
        if let Some(s) = lock(&inner.mappings).get(&client) {
            return Ok(s.clone());
        }
        let socket = Arc::new(UdpSocket::bind(SocketAddr::new(inner.inside_ip, 0)).await?);
        lock(&inner.mappings).insert(client, socket.clone());
        let (relay, inside) = (inner.clone(), socket.clone());
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            loop {
                let Ok((n, from)) = inside.recv_from(&mut buf).await else { return };
                // A 1:1 NAT's mapping only lets the host it was opened to answer.
                if from != relay.target {
                    continue;
                }
                relay.forward(Direction::ToClients, client, &buf[..n], &relay.public, client).await;
            }
        });
        lock(&inner.tasks).push(task);
        Ok(socket)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        for t in lock(&self.inner.tasks).drain(..) {
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

    /// A relay in front of a "core" socket that echoes each datagram back, and a client.
    async fn echo_behind_relay(impairment: Impairment) -> (Relay, UdpSocket, Arc<AtomicU64>) {
        let core = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let target = core.local_addr().unwrap();
        let seen = Arc::new(AtomicU64::new(0));
        let count = seen.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 64];
            while let Ok((n, from)) = core.recv_from(&mut buf).await {
                count.fetch_add(1, Ordering::Relaxed);
                let _ = core.send_to(&buf[..n], from).await;
            }
        });
        let relay = Relay::start("127.0.0.2:0".parse().unwrap(), "127.0.0.3".parse().unwrap(), target, impairment).await.unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client.connect(relay.public_addr()).await.unwrap();
        (relay, client, seen)
    }

    /// Sends `n` numbered datagrams 1 ms apart, then gathers the echoes until none comes for
    /// `quiet`.
    async fn echoes(client: &UdpSocket, n: u16, quiet: Duration) -> Vec<u16> {
        for i in 0..n {
            client.send(&i.to_be_bytes()).await.unwrap();
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        while let Ok(Ok(len)) = tokio::time::timeout(quiet, client.recv(&mut buf)).await {
            if len == 2 {
                got.push(u16::from_be_bytes([buf[0], buf[1]]));
            }
        }
        got
    }

    #[tokio::test]
    async fn the_relay_duplicates_drops_and_blacks_out_as_set_while_running() {
        let quiet = Duration::from_millis(300);
        let (relay, client, seen) = echo_behind_relay(Impairment::default()).await;
        assert_eq!(echoes(&client, 20, quiet).await, (0..20).collect::<Vec<_>>());

        relay.set_impairment_one_way(Direction::ToCore, Impairment::default().with_duplicates(1.0));
        let got = echoes(&client, 10, quiet).await;
        assert_eq!(got.len(), 20, "each datagram reaches the core twice and comes back twice: {got:?}");
        assert_eq!(seen.load(Ordering::Relaxed), 40);
        assert_eq!(relay.stats().duplicated, 10);

        relay.set_impairment(Impairment::default().with_loss(1.0));
        assert!(echoes(&client, 10, quiet).await.is_empty());
        assert_eq!((relay.stats().lost, relay.stats().dropped), (10, 10));

        relay.set_impairment(Impairment::default());
        relay.blackout_one_way(Direction::ToClients, Duration::from_secs(3600));
        assert!(echoes(&client, 10, quiet).await.is_empty());
        assert_eq!(seen.load(Ordering::Relaxed), 50, "towards the core the link is up");
        relay.blackout(Duration::from_secs(3600));
        assert!(echoes(&client, 10, quiet).await.is_empty());
        assert_eq!(seen.load(Ordering::Relaxed), 50, "now it is dark both ways");
        assert_eq!(relay.stats().blacked_out, 20);
        assert_eq!(relay.impairment(Direction::ToClients).blackouts.len(), 2);

        relay.set_impairment(Impairment::default());
        assert_eq!(echoes(&client, 5, quiet).await.len(), 5, "a new impairment ends the blackouts");
        let stats = relay.stats();
        assert_eq!((stats.to_core, stats.to_clients, stats.dropped, stats.reordered, stats.delayed), (55, 45, 30, 0, 0), "{stats:?}");
    }

    #[tokio::test]
    async fn the_relay_delays_and_reorders_as_its_model_says_and_keeps_order_when_asked() {
        let quiet = Duration::from_millis(500);
        let (relay, client, _) = echo_behind_relay(Impairment::default()).await;
        relay.set_impairment_one_way(Direction::ToCore, Impairment::default().with_delay(0, 40).with_seed(9));
        let got = echoes(&client, 100, quiet).await;
        let mut sorted = got.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>(), "nothing lost");
        assert_ne!(got, sorted, "40 ms of jitter on datagrams 1 ms apart reorders them");
        let stats = relay.stats();
        assert!(stats.reordered > 0 && stats.delayed > 0 && stats.delayed <= 100, "{stats:?}");

        relay.set_impairment_one_way(Direction::ToCore, Impairment::default().with_delay(5, 40).keeping_order());
        let got = echoes(&client, 100, quiet).await;
        assert_eq!(got, (0..100).collect::<Vec<_>>(), "the order is kept");
        assert_eq!(relay.stats().reordered, stats.reordered);
        assert_eq!(relay.stats().delayed, stats.delayed + 100);
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
