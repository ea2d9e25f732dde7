//! What the examples share: the core to join. With a `ws://` URL on the command line (or in
//! `CALLME_URL`) an example joins that core; without one it starts the reference core on
//! loopback with a party in conference 7 that sends 660 Hz, so there is something to hear.

#![allow(dead_code)] // each example uses part of it

use callme::core::{self, CoreConfig, CoreHandle};
use callme::{AudioSource, ClusterId, Connected, SchemeId, Session};

/// The conference the examples join.
pub const SCHEME: SchemeId = SchemeId(7);

/// Where to join, and what keeps it running for the example's lifetime.
pub struct Target {
    /// The WebSocket URL of the core.
    pub url: String,
    /// The embedded core and its 660 Hz party, when no URL was given.
    embedded: Option<(CoreHandle, Connected)>,
}

impl Target {
    /// The core named on the command line or in `CALLME_URL`, else an embedded one.
    pub async fn from_args() -> Result<Target, callme::Error> {
        let url = std::env::args().skip(1).find(|a| a.starts_with("ws://") || a.starts_with("wss://"));
        if let Some(url) = url.or_else(|| std::env::var("CALLME_URL").ok()) {
            return Ok(Target { url, embedded: None });
        }
        let core = core::start(CoreConfig::loopback_ephemeral()).await.expect("the reference core starts on loopback");
        let other =
            Session::connect(&core.ws_url).await?.load(ClusterId(1), SCHEME, "tone-660").await?.join(AudioSource::tone(660.0)).await?;
        eprintln!("(a reference core on {} with a party sending 660 Hz)", core.ws_url);
        Ok(Target { url: core.ws_url.clone(), embedded: Some((core, other)) })
    }

    /// Stops the embedded core, if there is one.
    pub async fn stop(self) {
        if let Some((core, other)) = self.embedded {
            other.leave().await;
            core.stop().await;
        }
    }
}
