//! How [`Session::connect_with_options`](crate::Session::connect_with_options) opens the
//! WebSocket: its timeouts and, for `wss://`, whom to trust.

use crate::signaling::Timeouts;
#[cfg(feature = "tls")]
use crate::tls::TlsOptions;

/// Options for opening a session. Build from `ConnectOptions::default()`:
///
/// ```
/// use std::time::Duration;
/// use callme::{ConnectOptions, Timeouts};
///
/// let options = ConnectOptions::default().with_timeouts(Timeouts::default().with_open(Duration::from_secs(2)));
/// assert_eq!(options.timeouts.open, Duration::from_secs(2));
/// ```
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ConnectOptions {
    /// How long each kind of wait may take; `open` bounds TCP, TLS and the WebSocket upgrade
    /// together.
    pub timeouts: Timeouts,
    /// Whom to trust on `wss://` (feature `tls`): by default the system's roots.
    #[cfg(feature = "tls")]
    pub tls: TlsOptions,
    /// How calls on the session reconnect ([`crate::reconnect`]); on by default.
    pub reconnect: crate::ReconnectPolicy,
}

impl ConnectOptions {
    /// These timeouts instead of the defaults.
    pub fn with_timeouts(mut self, timeouts: Timeouts) -> Self {
        self.timeouts = timeouts;
        self
    }

    /// This reconnection policy for the session's calls.
    pub fn with_reconnect(mut self, policy: crate::ReconnectPolicy) -> Self {
        self.reconnect = policy;
        self
    }

    /// These TLS options for `wss://` instead of the system's roots alone.
    #[cfg(feature = "tls")]
    pub fn with_tls(mut self, tls: TlsOptions) -> Self {
        self.tls = tls;
        self
    }
}

/// Why `wss://` fails in a build without TLS.
#[cfg(not(feature = "tls"))]
pub(crate) const NO_TLS: &str = "wss:// needs callme's cargo feature `tls` (on by default), which this build leaves out";
