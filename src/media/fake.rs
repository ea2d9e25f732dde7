//! An in-memory media layer for the sequence tests: deterministic values, every call recorded,
//! any call made to fail, the remote track made never to arrive, and a probe that tells whether
//! the PeerConnection was closed and the tasks stopped.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::sync::broadcast;

use super::{IceServer, MediaEngine};
use crate::audio::{AudioSource, Frame, FRAME_DURATION};
use crate::stats::StatsCell;

/// The offer the fake PeerConnection creates: what Chromium's offer holds, with fixed values.
pub const FAKE_OFFER: &str = "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\na=msid-semantic: WMS callme\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=rtcp:9 IN IP4 0.0.0.0\r\na=ice-ufrag:fAkE\r\na=ice-pwd:fakepasswordfakepassword\r\na=ice-options:trickle\r\na=fingerprint:sha-256 0F:A4:E0:0F:A4:E0:0F:A4:E0:0F:A4:E0:0F:A4:E0:0F:A4:E0:0F:A4:E0:0F:A4:E0:0F:A4:E0:0F:A4:E0:0F:A4\r\na=setup:actpass\r\na=mid:0\r\na=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\na=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\na=sendrecv\r\na=msid:callme audio\r\na=rtcp-mux\r\na=rtpmap:111 opus/48000/2\r\na=fmtp:111 minptime=10;useinbandfec=1\r\na=ssrc:2882400001 cname:fakecname\r\n";

/// What the test can see of the fake after the fact.
#[derive(Debug, Clone, Default)]
pub struct FakeProbe {
    calls: Arc<Mutex<Vec<String>>>,
    closed: Arc<AtomicBool>,
    running: Arc<AtomicUsize>,
    muted: Arc<AtomicBool>,
    /// Set to end the current media session with this reason (`ended` resolves).
    failure: Arc<Mutex<Option<tokio::sync::watch::Sender<Option<String>>>>>,
    /// While set, the remote track delivers no packets (frames of silence are still played).
    silent: Arc<AtomicBool>,
    /// What the fake's media measured: a packet per frame the remote track delivers.
    stats: StatsCell,
    /// Media sessions that end at once with this reason, one per session, in order
    /// (`ended` resolves as soon as it is awaited).
    doomed: Arc<Mutex<std::collections::VecDeque<String>>>,
}

impl FakeProbe {
    /// The media calls made, in order.
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
    /// Whether `close` was called (after a PeerConnection existed or not).
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }
    /// Whether sending is stopped ([`MediaEngine::set_sending`] off).
    pub fn is_muted(&self) -> bool {
        self.muted.load(Ordering::SeqCst)
    }
    /// Tasks the fake started that are still running.
    pub fn running_tasks(&self) -> usize {
        self.running.load(Ordering::SeqCst)
    }
    /// Ends the current media session with `reason`, as ICE or DTLS failing would.
    pub fn fail_media(&self, reason: &str) {
        if let Some(tx) = self.failure.lock().unwrap().as_ref() {
            let _ = tx.send(Some(reason.to_owned()));
        }
    }
    /// Makes the next `n` media sessions fail as soon as they play, with `reason` (a
    /// reconnection attempt whose ICE never completes).
    pub fn fail_next_sessions(&self, n: usize, reason: &str) {
        self.doomed.lock().unwrap().extend(std::iter::repeat_n(reason.to_owned(), n));
    }
    /// Stops (`true`) or resumes the packets of the remote track: the core's media goes silent.
    pub fn set_silent(&self, silent: bool) {
        self.silent.store(silent, Ordering::SeqCst);
    }
    /// What the fake's media measured.
    pub fn stats(&self) -> StatsCell {
        self.stats.clone()
    }
}

/// The fake media layer.
#[derive(Debug)]
pub struct FakeMedia {
    probe: FakeProbe,
    fail: Option<&'static str>,
    no_track: bool,
    remote_tone: Option<f32>,
    offer: String,
    task: Option<tokio::task::JoinHandle<()>>,
    failure: Option<tokio::sync::watch::Receiver<Option<String>>>,
}

impl FakeMedia {
    /// A fake that works, hears silence, and its probe.
    pub fn new() -> (Self, FakeProbe) {
        let probe = FakeProbe::default();
        (
            FakeMedia {
                probe: probe.clone(),
                fail: None,
                no_track: false,
                remote_tone: None,
                offer: FAKE_OFFER.to_owned(),
                task: None,
                failure: None,
            },
            probe,
        )
    }
    /// A probe on this fake.
    pub fn probe(&self) -> FakeProbe {
        self.probe.clone()
    }
    /// Makes the call named `call` (e.g. `"createOffer"`) fail.
    pub fn failing(mut self, call: &'static str) -> Self {
        self.fail = Some(call);
        self
    }
    /// Makes the remote track never arrive (step 18 times out).
    pub fn without_remote_track(mut self) -> Self {
        self.no_track = true;
        self
    }
    /// Makes the remote track carry a tone at `hz` once playing.
    pub fn hearing(mut self, hz: f32) -> Self {
        self.remote_tone = Some(hz);
        self
    }
    /// Makes createOffer return this SDP.
    pub fn with_offer(mut self, sdp: &str) -> Self {
        self.offer = sdp.to_owned();
        self
    }

    fn call(&self, name: &str) -> Result<(), String> {
        self.probe.calls.lock().unwrap().push(name.to_owned());
        match self.fail {
            Some(f) if f == name => Err(format!("{name} failed (injected by the test)")),
            _ => Ok(()),
        }
    }
}

#[async_trait]
impl MediaEngine for FakeMedia {
    async fn get_user_media(&mut self, source: AudioSource) -> Result<String, String> {
        self.call("getUserMedia")?;
        let d = source.describe();
        source.open()?;
        Ok(format!("fake stream: {d}"))
    }
    async fn create_peer_connection(&mut self, ice_servers: &[IceServer]) -> Result<(), String> {
        self.call("createPeerConnection")?;
        let _ = ice_servers;
        Ok(())
    }
    async fn create_offer(&mut self) -> Result<String, String> {
        self.call("createOffer")?;
        Ok(self.offer.clone())
    }
    async fn set_local_description(&mut self, _sdp: &str) -> Result<(), String> {
        self.call("setLocalDescription")
    }
    async fn set_remote_description(&mut self, sdp: &str) -> Result<(), String> {
        self.call("setRemoteDescription")?;
        if !sdp.contains("a=ice-ufrag:") {
            return Err("the answer has no a=ice-ufrag".into());
        }
        Ok(())
    }
    async fn remote_track(&mut self) -> Result<String, String> {
        self.call("ontrack")?;
        if self.no_track {
            std::future::pending::<()>().await;
        }
        Ok("audio track, opus/48000/2".into())
    }
    async fn play(&mut self, heard: broadcast::Sender<Frame>) -> Result<(), String> {
        self.call("play")?;
        let (fail_tx, fail_rx) = tokio::sync::watch::channel(self.probe.doomed.lock().unwrap().pop_front());
        *self.probe.failure.lock().unwrap() = Some(fail_tx);
        self.failure = Some(fail_rx);
        let (silent, stats) = (self.probe.silent.clone(), self.probe.stats.clone());
        let mut source = match self.remote_tone {
            Some(hz) => AudioSource::tone(hz).open()?,
            None => AudioSource::Silence.open()?,
        };
        /// Counts the task as running from spawn until its future is dropped.
        struct Running(Arc<AtomicUsize>);
        impl Drop for Running {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        self.probe.running.fetch_add(1, Ordering::SeqCst);
        let running = Running(self.probe.running.clone());
        self.task = Some(tokio::spawn(async move {
            let _running = running;
            let mut tick = tokio::time::interval(FRAME_DURATION);
            loop {
                tick.tick().await;
                let frame = if silent.load(Ordering::SeqCst) {
                    vec![0; crate::audio::FRAME_SAMPLES]
                } else {
                    stats.update(|s| s.received.packets += 1);
                    source.next_frame()
                };
                if heard.send(frame).is_err() {
                    return; // nobody listens any more
                }
            }
        }));
        Ok(())
    }
    async fn set_sending(&mut self, on: bool) -> Result<(), String> {
        self.call(if on { "setSending on" } else { "setSending off" })?;
        self.probe.muted.store(!on, Ordering::SeqCst);
        Ok(())
    }
    async fn ended(&mut self) -> String {
        let Some(rx) = self.failure.as_mut() else { return std::future::pending::<String>().await };
        let reason = match rx.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone(),
            Err(_) => None,
        };
        match reason {
            Some(r) => r,
            None => std::future::pending::<String>().await,
        }
    }
    async fn restart(&mut self) -> Result<(), String> {
        self.call("restart")?;
        self.failure = None;
        *self.probe.failure.lock().unwrap() = None;
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
        Ok(())
    }
    fn stats(&self) -> Option<StatsCell> {
        Some(self.probe.stats.clone())
    }
    async fn close(&mut self) {
        self.probe.calls.lock().unwrap().push("close".into());
        self.probe.closed.store(true, Ordering::SeqCst);
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }
}
