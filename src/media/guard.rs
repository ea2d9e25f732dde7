//! The datagram guard: what may reach webrtc-rs from the network.
//!
//! A media socket receives datagrams from anyone who knows its address, and an address is easy to
//! forge for UDP. Before SRTP authentication webrtc-rs 0.17 parses the clear-text RTP and RTCP
//! headers of every datagram that arrives from a party's address, and two of those parsers trust
//! lengths they were given:
//!
//! - `rtp::header::Header::unmarshal` (crate `rtp`, `src/header.rs`) walks the RFC 8285 header
//!   extension elements with `Buf::copy_to_bytes(len)`, checking the element against neither the
//!   extension block nor the packet: one 20-byte packet whose one-byte element claims 16 bytes
//!   panics. It runs in `srtp::Context::decrypt_rtp` (crate `webrtc-srtp`, `src/context/srtp.rs`)
//!   inside the SRTP session's read task (`src/session/mod.rs`); the panic ends that task, so
//!   the stream's reader waits forever and the party's audio is gone for the rest of the call.
//! - `srtp::Context::decrypt_rtcp` (`src/context/srtcp.rs`) reads the sender SSRC at bytes 4–8
//!   after a 4-byte header check, and the cipher's `get_rtcp_index` subtracts the tag and index
//!   length from the packet length before any size check: an RTCP datagram under 22 bytes panics.
//!
//! Both contexts also keep one state per SSRC (`srtp_ssrc_states`, `srtcp_ssrc_states`: a
//! rollover counter and a replay window) that is created *before* the packet is authenticated
//! and never removed, so forged packets with fresh SSRCs grow it without bound. (After
//! authentication, webrtc-rs's per-SSRC streams and its "undeclared SSRC" path only ever see
//! packets that carried a valid tag.)
//!
//! The guard sits between the UDP socket (or the core's shared port) and webrtc-rs's ICE agent:
//! [`GuardedMux`] hands the agent a connection whose `recv_from` drops every datagram that
//! [`check_datagram`] rejects, and every RTP or RTCP datagram whose SSRC would exceed the
//! [`SsrcBudget`]. STUN and DTLS pass untouched (webrtc-rs parses them with bounds checks);
//! anything else passes too and is dropped by webrtc-rs's own demultiplexer.
//!
//! [`check_datagram`] is pure: no state, no IO, no panic on any input (a fuzz target's entry).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use webrtc::ice::udp_mux::UDPMux;
use webrtc::util::Conn;

/// What a datagram is, by its first byte (RFC 7983) and, for RTP and RTCP, its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datagram {
    /// A STUN message (first byte 0–3): ICE checks.
    Stun,
    /// A DTLS record (first byte 20–63).
    Dtls,
    /// An (S)RTP packet whose clear-text header is well formed.
    Rtp {
        /// The packet's SSRC.
        ssrc: u32,
    },
    /// An (S)RTCP packet whose first header is well formed.
    Rtcp {
        /// The sender SSRC of the first packet.
        ssrc: u32,
    },
    /// Anything else: webrtc-rs's demultiplexer drops it.
    Other,
}

/// Why a datagram was dropped; each names the field and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Rejected {
    /// Shorter than its fixed header.
    #[error("{kind}: {len} bytes, shorter than the {need} bytes of its fixed header")]
    TooShort {
        /// `RTP` or `RTCP`.
        kind: &'static str,
        /// The datagram's length.
        len: usize,
        /// The least length accepted.
        need: usize,
    },
    /// The CSRC count needs more bytes than the datagram has.
    #[error("RTP: CSRC count {count} needs {need} bytes, the datagram has {len}")]
    CsrcOverrun {
        /// The CSRC count (CC).
        count: u8,
        /// The bytes the header needs.
        need: usize,
        /// The datagram's length.
        len: usize,
    },
    /// The extension bit is set but the extension header or block does not fit.
    #[error("RTP: header extension of {need} bytes (header included) from offset {offset} runs past the datagram's {len} bytes")]
    ExtensionOverrun {
        /// Where the extension header starts.
        offset: usize,
        /// The bytes the extension needs.
        need: usize,
        /// The datagram's length.
        len: usize,
    },
    /// An RFC 8285 element runs past the end of the extension block.
    #[error("RTP: header extension element id {id} at offset {offset} claims {claimed} bytes, the extension block ends at {end}")]
    ExtensionElementOverrun {
        /// The element's id.
        id: u8,
        /// Where the element starts.
        offset: usize,
        /// The bytes it claims (its header included).
        claimed: usize,
        /// The end of the extension block.
        end: usize,
    },
    /// The first RTCP packet's length field runs past the datagram (before the SRTCP index and tag).
    #[error("RTCP: length field {words} ({bytes} bytes) runs past the {room} bytes before the SRTCP index and tag")]
    RtcpLengthOverrun {
        /// The length field (32-bit words minus one).
        words: u16,
        /// The bytes it means.
        bytes: usize,
        /// The bytes there are for it.
        room: usize,
    },
    /// A new SSRC beyond what the guard admits.
    #[error("{kind}: SSRC {ssrc} is not admitted ({reason})")]
    SsrcNotAdmitted {
        /// `RTP` or `RTCP`.
        kind: &'static str,
        /// The SSRC.
        ssrc: u32,
        /// Why: the pinned SSRC, or the budget spent.
        reason: String,
    },
}

/// The RTP fixed header.
pub const RTP_HEADER: usize = 12;
/// The least SRTCP datagram: an RTCP header with sender SSRC (8), the SRTCP index (4) and the
/// shortest authentication tag webrtc-rs negotiates for SRTCP (10).
pub const SRTCP_MIN: usize = 8 + SRTCP_TRAILER;
/// The SRTCP index and the shortest tag.
const SRTCP_TRAILER: usize = 4 + 10;
const PROFILE_ONE_BYTE: u16 = 0xBEDE;
const PROFILE_TWO_BYTE: u16 = 0x1000;

/// Classifies a datagram and checks the clear-text header of RTP and RTCP; never panics.
///
/// A first byte of 128–191 is RTP or RTCP of version 2. RTP: the CSRC list, the extension
/// header and block inside the datagram, and for the RFC 8285 one- and two-byte profiles every
/// element inside the block. RTCP (recognised as webrtc-rs does: second byte 192–223): at
/// least [`SRTCP_MIN`] bytes, and the first
/// packet's length field inside the part before the SRTCP index and tag. Padding is not checked
/// here: in SRTP and SRTCP the padding count sits in the encrypted part, and webrtc-rs reads it
/// only after the packet has been authenticated.
pub fn check_datagram(buf: &[u8]) -> Result<Datagram, Rejected> {
    let Some(&first) = buf.first() else { return Ok(Datagram::Other) };
    match first {
        0..=3 => Ok(Datagram::Stun),
        20..=63 => Ok(Datagram::Dtls),
        128..=191 if buf.len() >= 4 && (192..=223).contains(&buf[1]) => check_rtcp(buf),
        128..=191 => check_rtp(buf),
        _ => Ok(Datagram::Other),
    }
}

fn be16(buf: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([buf[at], buf[at + 1]])
}

fn be32(buf: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}

fn check_rtp(buf: &[u8]) -> Result<Datagram, Rejected> {
    let len = buf.len();
    if len < RTP_HEADER {
        return Err(Rejected::TooShort { kind: "RTP", len, need: RTP_HEADER });
    }
    let count = buf[0] & 0x0F;
    let mut at = RTP_HEADER + 4 * usize::from(count);
    if at > len {
        return Err(Rejected::CsrcOverrun { count, need: at, len });
    }
    let ssrc = be32(buf, 8);
    if buf[0] & 0x10 == 0 {
        return Ok(Datagram::Rtp { ssrc });
    }
    if at + 4 > len {
        return Err(Rejected::ExtensionOverrun { offset: at, need: 4, len });
    }
    let profile = be16(buf, at);
    let block = 4 * usize::from(be16(buf, at + 2));
    let start = at + 4;
    let end = start + block;
    if end > len {
        return Err(Rejected::ExtensionOverrun { offset: at, need: 4 + block, len });
    }
    at = start;
    match profile {
        PROFILE_ONE_BYTE => {
            while at < end {
                let b = buf[at];
                if b == 0 {
                    at += 1; // padding
                    continue;
                }
                let id = b >> 4;
                if id == 0x0F {
                    break; // reserved id: the rest of the block is ignored
                }
                let claimed = 1 + usize::from(b & 0x0F) + 1;
                if at + claimed > end {
                    return Err(Rejected::ExtensionElementOverrun { id, offset: at, claimed, end });
                }
                at += claimed;
            }
        }
        PROFILE_TWO_BYTE => {
            while at < end {
                let id = buf[at];
                if id == 0 {
                    at += 1; // padding
                    continue;
                }
                if at + 2 > end {
                    return Err(Rejected::ExtensionElementOverrun { id, offset: at, claimed: 2, end });
                }
                let claimed = 2 + usize::from(buf[at + 1]);
                if at + claimed > end {
                    return Err(Rejected::ExtensionElementOverrun { id, offset: at, claimed, end });
                }
                at += claimed;
            }
        }
        _ => {} // RFC 3550: one opaque block, already inside the datagram
    }
    Ok(Datagram::Rtp { ssrc })
}

fn check_rtcp(buf: &[u8]) -> Result<Datagram, Rejected> {
    let len = buf.len();
    if len < SRTCP_MIN {
        return Err(Rejected::TooShort { kind: "RTCP", len, need: SRTCP_MIN });
    }
    let words = be16(buf, 2);
    let bytes = 4 * (usize::from(words) + 1);
    let room = len - SRTCP_TRAILER;
    if bytes > room {
        return Err(Rejected::RtcpLengthOverrun { words, bytes, room });
    }
    Ok(Datagram::Rtcp { ssrc: be32(buf, 4) })
}

/// How many distinct SSRCs a connection admits by default, per kind (RTP, RTCP). An audio call
/// uses one RTP SSRC each way and one or two RTCP sender SSRCs.
pub const MAX_SSRCS: usize = 8;

/// The SSRCs a connection admits before authentication: a pinned RTP SSRC when the peer
/// declared one, otherwise the first [`MAX_SSRCS`] seen; RTCP the first [`MAX_SSRCS`]. This
/// bounds the per-SSRC state webrtc-rs's SRTP and SRTCP contexts create before they check a tag.
#[derive(Debug, Clone)]
pub struct SsrcBudget {
    pinned_rtp: Option<u32>,
    max: usize,
    rtp: HashSet<u32>,
    rtcp: HashSet<u32>,
}

impl Default for SsrcBudget {
    fn default() -> Self {
        Self::new(None, MAX_SSRCS)
    }
}

impl SsrcBudget {
    /// A budget of `max` distinct SSRCs per kind; with `pinned_rtp`, RTP of that SSRC only.
    pub fn new(pinned_rtp: Option<u32>, max: usize) -> Self {
        SsrcBudget { pinned_rtp, max, rtp: HashSet::new(), rtcp: HashSet::new() }
    }

    /// Whether a datagram of this kind may pass; a new SSRC within the budget is remembered.
    pub fn handle_datagram(&mut self, datagram: Datagram) -> Result<(), Rejected> {
        let (kind, ssrc, seen) = match datagram {
            Datagram::Rtp { ssrc } => {
                if let Some(pinned) = self.pinned_rtp {
                    if ssrc != pinned {
                        return Err(Rejected::SsrcNotAdmitted { kind: "RTP", ssrc, reason: format!("the peer declared SSRC {pinned}") });
                    }
                    return Ok(());
                }
                ("RTP", ssrc, &mut self.rtp)
            }
            Datagram::Rtcp { ssrc } => ("RTCP", ssrc, &mut self.rtcp),
            _ => return Ok(()),
        };
        if seen.contains(&ssrc) {
            return Ok(());
        }
        if seen.len() >= self.max {
            return Err(Rejected::SsrcNotAdmitted { kind, ssrc, reason: format!("{} SSRCs already admitted", self.max) });
        }
        seen.insert(ssrc);
        Ok(())
    }
}

/// What a guard has let through and dropped.
#[derive(Debug, Default)]
pub struct GuardStats {
    passed: AtomicU64,
    dropped: AtomicU64,
    last: Mutex<Option<Rejected>>,
}

impl GuardStats {
    /// Datagrams handed to webrtc-rs.
    pub fn passed(&self) -> u64 {
        self.passed.load(Ordering::Relaxed)
    }

    /// Datagrams dropped.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Why the last dropped datagram was dropped.
    pub fn last_rejection(&self) -> Option<Rejected> {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// A connection whose `recv_from` hands on only the datagrams the guard passes.
struct GuardedConn {
    inner: Arc<dyn Conn + Send + Sync>,
    budget: Mutex<SsrcBudget>,
    stats: Arc<GuardStats>,
}

impl GuardedConn {
    fn admit(&self, buf: &[u8]) -> Result<(), Rejected> {
        let datagram = check_datagram(buf)?;
        self.budget.lock().unwrap_or_else(|p| p.into_inner()).handle_datagram(datagram)
    }
}

#[async_trait]
impl Conn for GuardedConn {
    async fn connect(&self, addr: SocketAddr) -> webrtc::util::Result<()> {
        self.inner.connect(addr).await
    }

    async fn recv(&self, buf: &mut [u8]) -> webrtc::util::Result<usize> {
        Ok(self.recv_from(buf).await?.0)
    }

    async fn recv_from(&self, buf: &mut [u8]) -> webrtc::util::Result<(usize, SocketAddr)> {
        loop {
            let (n, from) = self.inner.recv_from(buf).await?;
            match self.admit(&buf[..n.min(buf.len())]) {
                Ok(()) => {
                    self.stats.passed.fetch_add(1, Ordering::Relaxed);
                    return Ok((n, from));
                }
                Err(why) => {
                    tracing::debug!(%from, "datagram dropped: {why}");
                    self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                    *self.stats.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
                }
            }
        }
    }

    async fn send(&self, buf: &[u8]) -> webrtc::util::Result<usize> {
        self.inner.send(buf).await
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> webrtc::util::Result<usize> {
        self.inner.send_to(buf, target).await
    }

    fn local_addr(&self) -> webrtc::util::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        self.inner.remote_addr()
    }

    async fn close(&self) -> webrtc::util::Result<()> {
        self.inner.close().await
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

enum Below {
    /// A shared mux (the core's one port): connections come from it, closing is its owner's.
    Mux(Arc<dyn UDPMux + Send + Sync>),
    /// One socket for one PeerConnection (the SDK).
    Socket(Arc<dyn Conn + Send + Sync>),
}

/// A [`UDPMux`] for one PeerConnection (`SettingEngine::set_udp_network(UDPNetwork::Muxed(..))`)
/// whose connection passes only what [`check_datagram`] and an [`SsrcBudget`] admit.
pub struct GuardedMux {
    below: Below,
    budget: SsrcBudget,
    stats: Arc<GuardStats>,
}

impl GuardedMux {
    /// Guards one PeerConnection's connection from a shared mux; `close` leaves the mux open.
    pub fn over_mux(mux: Arc<dyn UDPMux + Send + Sync>, budget: SsrcBudget) -> Arc<Self> {
        Arc::new(GuardedMux { below: Below::Mux(mux), budget, stats: Arc::default() })
    }

    /// Guards a socket of a PeerConnection's own (every datagram on it is that PeerConnection's).
    pub fn over_socket(socket: Arc<dyn Conn + Send + Sync>, budget: SsrcBudget) -> Arc<Self> {
        Arc::new(GuardedMux { below: Below::Socket(socket), budget, stats: Arc::default() })
    }

    /// What the guard has passed and dropped.
    pub fn stats(&self) -> Arc<GuardStats> {
        self.stats.clone()
    }
}

#[async_trait]
impl UDPMux for GuardedMux {
    async fn close(&self) -> Result<(), webrtc::util::Error> {
        match &self.below {
            Below::Mux(_) => Ok(()),
            Below::Socket(s) => s.close().await,
        }
    }

    async fn get_conn(self: Arc<Self>, ufrag: &str) -> Result<Arc<dyn Conn + Send + Sync>, webrtc::util::Error> {
        let inner = match &self.below {
            Below::Mux(mux) => mux.clone().get_conn(ufrag).await?,
            Below::Socket(s) => s.clone(),
        };
        Ok(Arc::new(GuardedConn { inner, budget: Mutex::new(self.budget.clone()), stats: self.stats.clone() }))
    }

    async fn remove_conn_by_ufrag(&self, ufrag: &str) {
        if let Below::Mux(mux) = &self.below {
            mux.remove_conn_by_ufrag(ufrag).await;
        }
    }
}

/// Why a media reader stopped, from `read_rtp`'s error: `None` for a clean close (the
/// PeerConnection or the track closed), otherwise a sentence for the media failure.
pub fn reader_failure(e: &webrtc::Error) -> Option<String> {
    let text = e.to_string();
    let clean =
        matches!(e, webrtc::Error::ErrClosedPipe | webrtc::Error::ErrConnectionClosed) || text.to_ascii_lowercase().contains("closed");
    (!clean).then(|| format!("the RTP reader stopped: {text}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The 20-byte packet: RTP v2 with the extension bit, a one-byte-profile extension block of
    /// one word whose first element (id 1) claims 16 bytes.
    pub const OVERLONG_EXTENSION: [u8; 20] = [
        0x90, 0x6F, 0x00, 0x01, // V=2 X=1, PT 111, seq 1
        0x00, 0x00, 0x00, 0x00, // timestamp
        0x12, 0x34, 0x56, 0x78, // SSRC
        0xBE, 0xDE, 0x00, 0x01, // one-byte profile, 1 word
        0x1F, 0x00, 0x00, 0x00, // id 1, len 16
    ];

    fn rtp(ext: Option<(u16, &[u8])>, cc: u8, tail: usize) -> Vec<u8> {
        let mut p = vec![0x80 | cc, 111, 0, 7, 0, 0, 0, 9, 0, 0, 0, 42];
        if ext.is_some() {
            p[0] |= 0x10;
        }
        p.extend(std::iter::repeat_n(0u8, 4 * usize::from(cc)));
        if let Some((profile, block)) = ext {
            p.extend(profile.to_be_bytes());
            p.extend(((block.len() / 4) as u16).to_be_bytes());
            p.extend(block);
        }
        p.extend(std::iter::repeat_n(0xAAu8, tail));
        p
    }

    #[test]
    fn the_overlong_extension_packet_is_rejected_naming_its_element() {
        assert_eq!(check_datagram(&OVERLONG_EXTENSION), Err(Rejected::ExtensionElementOverrun { id: 1, offset: 16, claimed: 17, end: 20 }));
        let text = check_datagram(&OVERLONG_EXTENSION).unwrap_err().to_string();
        assert!(text.contains("element id 1") && text.contains("16"), "{text}");
    }

    #[test]
    fn well_formed_rtp_passes_with_its_ssrc() {
        // The two extensions callme negotiates: audio level (id 1, 1 byte) and mid (id 4, "0").
        let ext = [0x10, 0x80, 0x40, b'0'];
        for p in [rtp(None, 0, 40), rtp(Some((0xBEDE, &ext)), 0, 40), rtp(None, 2, 10), rtp(Some((0x1000, &[1, 2, 0xAA, 0xBB])), 1, 0)] {
            assert_eq!(check_datagram(&p), Ok(Datagram::Rtp { ssrc: 42 }), "{p:02x?}");
        }
        // Padding bytes and the reserved id 15 end the walk without reading past the block.
        assert_eq!(check_datagram(&rtp(Some((0xBEDE, &[0, 0, 0xF5, 0])), 0, 0)), Ok(Datagram::Rtp { ssrc: 42 }));
        // An RFC 3550 extension is one opaque block.
        assert_eq!(check_datagram(&rtp(Some((0x1234, &[0xFF; 8])), 0, 3)), Ok(Datagram::Rtp { ssrc: 42 }));
    }

    #[test]
    fn each_structural_fault_of_rtp_is_named() {
        assert_eq!(check_datagram(&[0x80, 111, 0, 1]), Err(Rejected::TooShort { kind: "RTP", len: 4, need: 12 }));
        let mut cc = rtp(None, 0, 8);
        cc[0] |= 0x0F;
        assert_eq!(check_datagram(&cc), Err(Rejected::CsrcOverrun { count: 15, need: 72, len: 20 }));
        let mut x = rtp(None, 0, 2);
        x[0] |= 0x10;
        assert_eq!(check_datagram(&x), Err(Rejected::ExtensionOverrun { offset: 12, need: 4, len: 14 }));
        let mut block = rtp(Some((0xBEDE, &[0x10, 1, 0, 0])), 0, 0);
        block[15] = 9; // 9 words claimed, 1 present
        assert_eq!(check_datagram(&block), Err(Rejected::ExtensionOverrun { offset: 12, need: 40, len: 20 }));
        // Two-byte profile: the length byte itself past the block, and an element past it.
        assert_eq!(
            check_datagram(&rtp(Some((0x1000, &[0, 0, 0, 5])), 0, 4)),
            Err(Rejected::ExtensionElementOverrun { id: 5, offset: 19, claimed: 2, end: 20 })
        );
        assert_eq!(
            check_datagram(&rtp(Some((0x1000, &[5, 3, 0, 0])), 0, 4)),
            Err(Rejected::ExtensionElementOverrun { id: 5, offset: 16, claimed: 5, end: 20 })
        );
    }

    #[test]
    fn rtcp_shorter_than_header_index_and_tag_or_overrunning_its_length_is_rejected() {
        let mut rr = vec![0x80, 201, 0, 1, 0, 0, 0, 7];
        rr.extend([0u8; SRTCP_TRAILER]);
        assert_eq!(check_datagram(&rr), Ok(Datagram::Rtcp { ssrc: 7 }));
        for len in 4..SRTCP_MIN {
            assert_eq!(check_datagram(&rr[..len]), Err(Rejected::TooShort { kind: "RTCP", len, need: SRTCP_MIN }));
        }
        let mut long = rr.clone();
        long[3] = 5;
        assert_eq!(check_datagram(&long), Err(Rejected::RtcpLengthOverrun { words: 5, bytes: 24, room: 8 }));
    }

    #[test]
    fn stun_dtls_and_other_first_bytes_pass_unparsed() {
        assert_eq!(check_datagram(&[0, 1, 0, 0]), Ok(Datagram::Stun));
        assert_eq!(check_datagram(&[22, 254, 253]), Ok(Datagram::Dtls));
        assert_eq!(check_datagram(&[]), Ok(Datagram::Other));
        assert_eq!(check_datagram(&[64, 0]), Ok(Datagram::Other));
        assert_eq!(check_datagram(&[0xFF; 30]), Ok(Datagram::Other));
    }

    #[test]
    fn no_input_of_up_to_24_bytes_panics_the_check() {
        // Every first byte of the RTP/RTCP range with every length up to 24, over a few fillers.
        for first in 128..=191u8 {
            for second in [0u8, 111, 200, 223] {
                for fill in [0x00u8, 0x11, 0xFF] {
                    for len in 0..=24 {
                        let mut p = vec![fill; len];
                        if len > 0 {
                            p[0] = first;
                        }
                        if len > 1 {
                            p[1] = second;
                        }
                        let _ = check_datagram(&p);
                    }
                }
            }
        }
    }

    #[test]
    fn what_the_check_passes_the_rtp_parser_reads_without_panicking() {
        use webrtc::util::marshal::Unmarshal;
        // Every one-byte element header after a valid fixed header, with blocks of 1 and 2 words.
        for words in 1..=2u16 {
            for b in 0..=255u8 {
                let mut block = vec![b];
                block.resize(4 * usize::from(words), 0x11);
                let p = rtp(Some((0xBEDE, &block)), 0, 0);
                if check_datagram(&p).is_ok() {
                    let mut buf = &p[..];
                    let parsed = std::panic::catch_unwind(move || webrtc::rtp::header::Header::unmarshal(&mut buf).is_ok());
                    assert!(parsed.is_ok(), "the parser panics on {p:02x?}");
                }
            }
        }
    }

    #[test]
    fn the_budget_admits_a_pinned_ssrc_only_or_the_first_few() {
        let mut pinned = SsrcBudget::new(Some(42), 8);
        assert_eq!(pinned.handle_datagram(Datagram::Rtp { ssrc: 42 }), Ok(()));
        assert!(matches!(pinned.handle_datagram(Datagram::Rtp { ssrc: 43 }), Err(Rejected::SsrcNotAdmitted { ssrc: 43, .. })));
        let mut open = SsrcBudget::new(None, 2);
        for ssrc in [1, 2, 1, 2] {
            assert_eq!(open.handle_datagram(Datagram::Rtp { ssrc }), Ok(()));
        }
        let err = open.handle_datagram(Datagram::Rtp { ssrc: 3 }).unwrap_err();
        assert_eq!(err.to_string(), "RTP: SSRC 3 is not admitted (2 SSRCs already admitted)");
        // RTCP has a budget of its own; STUN and DTLS are not counted.
        assert_eq!(open.handle_datagram(Datagram::Rtcp { ssrc: 3 }), Ok(()));
        assert_eq!(open.handle_datagram(Datagram::Stun), Ok(()));
    }
    #[test]
    fn a_reader_closed_with_its_connection_is_clean_and_any_other_error_a_failure() {
        assert_eq!(reader_failure(&webrtc::Error::ErrClosedPipe), None);
        assert_eq!(reader_failure(&webrtc::Error::ErrConnectionClosed), None);
        let failure = reader_failure(&webrtc::Error::ErrInterceptorNotBind).expect("a failure");
        assert!(failure.starts_with("the RTP reader stopped: "), "{failure}");
    }
}
