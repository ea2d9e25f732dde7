//! The core's configuration: defaults → TOML file (unknown keys rejected) → environment →
//! command-line flags → validation.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

pub use super::accounts::{Account, Credential, Role};

/// A TURN server whose credentials the core mints (TURN REST: `use-auth-secret`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct TurnConfig {
    /// The URL given to clients, e.g. `turn:127.0.0.1:3478?transport=udp`.
    pub url: String,
    /// The secret shared with the TURN server (`static-auth-secret`).
    pub secret: String,
    /// How long minted credentials stay valid, in seconds.
    #[serde(default = "default_turn_ttl")]
    pub ttl_secs: u64,
}

fn default_turn_ttl() -> u64 {
    3600
}

impl TurnConfig {
    /// A TURN server at `url` sharing `secret`, credentials valid for an hour.
    pub fn new(url: impl Into<String>, secret: impl Into<String>) -> Self {
        TurnConfig { url: url.into(), secret: secret.into(), ttl_secs: default_turn_ttl() }
    }

    /// Credentials valid for this many seconds.
    pub fn with_ttl_secs(mut self, secs: u64) -> Self {
        self.ttl_secs = secs;
        self
    }
}

/// Everything the core can be told.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct CoreConfig {
    /// Where the WebSocket (and the browser page) listens.
    pub listen: SocketAddr,
    /// The UDP address every party's media uses (port 0 picks one).
    pub media: SocketAddr,
    /// The address announced to clients in `servufrag` (default: `media`'s IP).
    pub announce: Option<IpAddr>,
    /// A STUN/TURN server for `servdesc`: none by default.
    pub turn: Option<TurnConfig>,
    /// A plain STUN URL for `servdesc` when no TURN is configured.
    pub stun: Option<String>,
    /// A party whose media sends nothing for this long is disconnected, in milliseconds.
    pub media_timeout_ms: u64,
    /// Frames larger than this are refused, in bytes.
    pub max_frame_bytes: usize,
    /// How often `timer.time` is sent, in milliseconds (0: never).
    pub timer_ms: u64,
    /// Negative answers a session may earn before it is closed with 1008.
    pub max_errors: u32,
    /// WebSocket sessions open at once; one more is closed at once with 1013.
    pub max_sessions: usize,
    /// Running conferences one session may start with `cd.load` (code 207 above it).
    pub max_conferences_per_session: usize,
    /// The longest display name (`NAME` of `cd.load`) in characters; longer is refused (105).
    pub max_name_len: usize,
    /// Frames queued for one session; a session whose queue fills (the client does not read)
    /// is closed with 1008.
    pub outbound_queue_frames: usize,
    /// A connection must finish its HTTP request and WebSocket upgrade within this, in
    /// milliseconds.
    pub handshake_timeout_ms: u64,
    /// The core pings each session this often, in milliseconds (0: never).
    pub ping_interval_ms: u64,
    /// A session from which nothing (no frame, no pong) arrives for this long is closed with
    /// 1008 and its parties freed, in milliseconds (0: never).
    pub idle_timeout_ms: u64,
    /// The read buffer of each WebSocket, in bytes.
    pub ws_read_buffer_bytes: usize,
    /// PEM certificate chain: with `tls_key`, the listen port serves TLS only (`wss://`, `https://`).
    pub tls_cert: Option<std::path::PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<std::path::PathBuf>,
    /// The accounts (`[[accounts]]`): with any, every session logs in (`q_cplxLogin`) before
    /// it may load; with none, the core is open (as in v1).
    pub accounts: Vec<Account>,
    /// A party whose WebSocket closed without `CALLME_BYE` is kept (out of the mix) this long
    /// for a `cd.load` with its `ResumeToken`, in milliseconds (0: it leaves at once).
    pub resume_grace_ms: u64,
    /// Failed logins from one IP address within `login_throttle_window_ms` after which each
    /// further login answer to that address is delayed.
    pub login_throttle_failures: u32,
    /// The window over which failed logins are counted, in milliseconds.
    pub login_throttle_window_ms: u64,
    /// The first delay of a throttled login answer, doubled with each further failure, in
    /// milliseconds.
    pub login_throttle_delay_ms: u64,
    /// The longest delay of a throttled login answer, in milliseconds.
    pub login_throttle_max_delay_ms: u64,
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            listen: "127.0.0.1:8080".parse().unwrap(),
            media: "127.0.0.1:40000".parse().unwrap(),
            announce: None,
            turn: None,
            stun: None,
            media_timeout_ms: 10_000,
            max_frame_bytes: 16 * 1024,
            timer_ms: 10_000,
            max_errors: 100,
            max_sessions: 1000,
            max_conferences_per_session: 8,
            max_name_len: 64,
            outbound_queue_frames: 256,
            handshake_timeout_ms: 5000,
            ping_interval_ms: 15_000,
            idle_timeout_ms: 45_000,
            ws_read_buffer_bytes: 4096,
            tls_cert: None,
            tls_key: None,
            accounts: Vec::new(),
            resume_grace_ms: 15_000,
            login_throttle_failures: 3,
            login_throttle_window_ms: 60_000,
            login_throttle_delay_ms: 1000,
            login_throttle_max_delay_ms: 16_000,
        }
    }
}

impl CoreConfig {
    /// This configuration, changed by `f` (the struct is `#[non_exhaustive]`: new keys come):
    /// `CoreConfig::loopback_ephemeral().with(|c| c.media_timeout_ms = 3000)`.
    pub fn with(mut self, f: impl FnOnce(&mut Self)) -> Self {
        f(&mut self);
        self
    }

    /// The defaults on loopback with ports the system picks: for a core in a test, a demo or a
    /// benchmark, beside anything else running.
    pub fn loopback_ephemeral() -> Self {
        CoreConfig { listen: "127.0.0.1:0".parse().unwrap(), media: "127.0.0.1:0".parse().unwrap(), ..CoreConfig::default() }
    }

    /// Reads a TOML file over the defaults; unknown keys are an error naming them.
    pub fn from_toml_file(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::from_toml(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Reads TOML text over the defaults; unknown keys are an error naming them.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Applies `CALLME_LISTEN`, `CALLME_MEDIA`, `CALLME_ANNOUNCE`, `CALLME_TURN_URL`,
    /// `CALLME_TURN_SECRET`, `CALLME_MEDIA_TIMEOUT_MS` from the environment.
    pub fn with_env(mut self, env: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let parse = |k: &str, v: String| -> Result<String, String> {
            if v.trim().is_empty() {
                return Err(format!("{k} is empty"));
            }
            Ok(v)
        };
        if let Some(v) = env("CALLME_LISTEN") {
            self.listen = parse("CALLME_LISTEN", v)?.parse().map_err(|e| format!("CALLME_LISTEN: {e}"))?;
        }
        if let Some(v) = env("CALLME_MEDIA") {
            self.media = parse("CALLME_MEDIA", v)?.parse().map_err(|e| format!("CALLME_MEDIA: {e}"))?;
        }
        if let Some(v) = env("CALLME_ANNOUNCE") {
            self.announce = Some(parse("CALLME_ANNOUNCE", v)?.parse().map_err(|e| format!("CALLME_ANNOUNCE: {e}"))?);
        }
        if let Some(v) = env("CALLME_MEDIA_TIMEOUT_MS") {
            self.media_timeout_ms = parse("CALLME_MEDIA_TIMEOUT_MS", v)?.parse().map_err(|e| format!("CALLME_MEDIA_TIMEOUT_MS: {e}"))?;
        }
        match (env("CALLME_TURN_URL"), env("CALLME_TURN_SECRET")) {
            (Some(url), Some(secret)) => self.turn = Some(TurnConfig { url, secret, ttl_secs: default_turn_ttl() }),
            (None, None) => {}
            _ => return Err("CALLME_TURN_URL and CALLME_TURN_SECRET go together".into()),
        }
        Ok(self)
    }

    /// Checks the whole configuration.
    pub fn validate(self) -> Result<Self, String> {
        if let Some(t) = &self.turn {
            if !(t.url.starts_with("turn:") || t.url.starts_with("turns:")) {
                return Err(format!("turn.url {:?} is not a turn: or turns: URL", t.url));
            }
            if t.secret.is_empty() {
                return Err("turn.secret is empty".into());
            }
        }
        if let Some(s) = &self.stun {
            if !s.starts_with("stun:") {
                return Err(format!("stun {s:?} is not a stun: URL"));
            }
        }
        if self.media_timeout_ms < 1000 {
            return Err(format!("media_timeout_ms {} is below 1000", self.media_timeout_ms));
        }
        if self.max_frame_bytes < 1024 {
            return Err(format!("max_frame_bytes {} is below 1024", self.max_frame_bytes));
        }
        for (name, v) in [
            ("max_sessions", self.max_sessions),
            ("max_conferences_per_session", self.max_conferences_per_session),
            ("max_name_len", self.max_name_len),
            ("outbound_queue_frames", self.outbound_queue_frames),
        ] {
            if v == 0 {
                return Err(format!("{name} is 0: nothing would be allowed"));
            }
        }
        if self.handshake_timeout_ms < 100 {
            return Err(format!("handshake_timeout_ms {} is below 100", self.handshake_timeout_ms));
        }
        if self.ws_read_buffer_bytes < 256 {
            return Err(format!("ws_read_buffer_bytes {} is below 256", self.ws_read_buffer_bytes));
        }
        if self.idle_timeout_ms > 0 && self.ping_interval_ms > 0 && self.idle_timeout_ms <= self.ping_interval_ms {
            return Err(format!(
                "idle_timeout_ms {} is not above ping_interval_ms {}: a client would be closed before it could answer a ping",
                self.idle_timeout_ms, self.ping_interval_ms
            ));
        }
        let mut logins = std::collections::HashSet::new();
        for (i, a) in self.accounts.iter().enumerate() {
            a.check().map_err(|e| format!("accounts[{i}].{e}"))?;
            if !logins.insert(a.login.as_str()) {
                return Err(format!("accounts[{i}].login: {:?} is given twice", a.login));
            }
        }
        if self.login_throttle_failures == 0 {
            return Err("login_throttle_failures is 0: every login would be delayed".into());
        }
        if self.login_throttle_delay_ms > self.login_throttle_max_delay_ms {
            return Err(format!(
                "login_throttle_delay_ms {} is above login_throttle_max_delay_ms {}",
                self.login_throttle_delay_ms, self.login_throttle_max_delay_ms
            ));
        }
        super::tls::check(self.tls_cert.as_deref(), self.tls_key.as_deref())?;
        if self.media.ip().is_unspecified() && self.announce.is_none() {
            return Err("media listens on all addresses: set announce to the address clients reach".into());
        }
        Ok(self)
    }

    /// `media_timeout_ms` as a duration.
    pub fn media_timeout(&self) -> Duration {
        Duration::from_millis(self.media_timeout_ms)
    }

    /// The effective configuration for the log, the TURN secret redacted.
    pub fn redacted(&self) -> String {
        let mut c = self.clone();
        if let Some(t) = &mut c.turn {
            t.secret = "[redacted]".into();
        }
        // Accounts show their logins only (their Debug hides the passwords too).
        let logins: Vec<&str> = self.accounts.iter().map(|a| a.login.as_str()).collect();
        c.accounts.clear();
        format!("{c:?} accounts: {logins:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sample_config_parses_and_validates() {
        let c = CoreConfig::from_toml(include_str!("../../docs/core.sample.toml")).unwrap().validate().unwrap();
        assert_eq!(c.listen.port(), 8080);
        assert!(c.turn.is_some());
    }

    #[test]
    fn accounts_are_read_and_a_bad_one_is_named_by_its_place_and_field() {
        let text = |role: &str| {
            format!(
                "[[accounts]]\nlogin = \"alice\"\npassword = \"pw-alice\"\nrole = \"admin\"\nname = \"Alice\"\n\n[[accounts]]\nlogin = \"bob\"\npassword = \"pw-bob\"\nrole = \"{role}\"\nname = \"Bob\"\n"
            )
        };
        let c = CoreConfig::from_toml(&text("user")).unwrap().validate().unwrap();
        assert_eq!(c.accounts.len(), 2);
        assert_eq!(c.accounts[0].role(), Ok(Role::Admin));
        assert!(!c.redacted().contains("pw-alice"), "{}", c.redacted());
        let e = CoreConfig::from_toml(&text("boss")).unwrap().validate().unwrap_err();
        assert_eq!(e, r#"accounts[1].role: "boss" is not user or admin"#);
        let e = CoreConfig::from_toml("[[accounts]]\nlogin = \"a\"\nrole = \"user\"\nname = \"A\"\n").unwrap().validate().unwrap_err();
        assert!(e.starts_with("accounts[0].password_hash: missing"), "{e}");
        let e = CoreConfig::from_toml("[[accounts]]\nlogin = \"a\"\npasswd = \"x\"\nrole = \"user\"\nname = \"A\"\n").unwrap_err();
        assert!(e.contains("passwd"), "{e}");
    }

    #[test]
    fn unknown_keys_are_rejected_by_name() {
        let e = CoreConfig::from_toml("listen = \"127.0.0.1:1\"\nlistne = 3\n").unwrap_err();
        assert!(e.contains("listne"), "{e}");
    }

    #[test]
    fn env_overrides_the_file_and_secrets_are_redacted() {
        let env = |k: &str| match k {
            "CALLME_LISTEN" => Some("127.0.0.1:9000".to_owned()),
            "CALLME_TURN_URL" => Some("turn:127.0.0.1:3478".to_owned()),
            "CALLME_TURN_SECRET" => Some("s3cret".to_owned()),
            _ => None,
        };
        let c = CoreConfig::default().with_env(env).unwrap().validate().unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert!(!c.redacted().contains("s3cret"));
    }
}
