//! Coming back as the same party after the WebSocket is lost (PROTOCOL §10).
//!
//! A [`Resume`] holds what a new session needs to get the party back: a way to open a new
//! session like the first one (the same URL and [`ConnectOptions`](crate::ConnectOptions), or
//! the factory given to [`Session::with_reopen`]), the login if the first session logged in,
//! the conference, the party's name and its [`ResumeToken`]. [`Resume::connect`] opens, logs
//! in, sends `cd.load` with `ResumeToken` and says whether the core gave the same party back
//! ([`Resumed::Same`]) or a new one ([`Resumed::New`]); then the caller joins the media again
//! (`party.join(source)`).

use std::fmt;
use std::sync::Arc;

use futures::future::BoxFuture;

use crate::error::{Cause, Error, Result, Stage};
use crate::login::Credentials;
use crate::signaling::{Party, Session};
use crate::wire::{ClusterId, PartyId, SchemeId};

/// `ResumeToken` of the `cd.load` answer: what a new session gives `cd.load` to come back as
/// the same party. A secret: its `Debug` does not show it, and transcripts redact it.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ResumeToken(String);

impl ResumeToken {
    /// A token as the core gave it.
    pub fn new(token: impl Into<String>) -> Self {
        ResumeToken(token.into())
    }

    /// The token, for the `cd.load` param.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ResumeToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ResumeToken({})", crate::wire::login::REDACTED)
    }
}

/// Opens a new session like the first one.
pub(crate) type Reopen = Arc<dyn Fn() -> BoxFuture<'static, Result<Session>> + Send + Sync>;

/// What a new session needs to come back as the same party; cheap to clone, kept by
/// [`Party::resumer`] and [`crate::Connected::resumer`]. Its `Debug` shows no password and no
/// token.
#[derive(Clone)]
pub struct Resume {
    pub(crate) reopen: Option<Reopen>,
    pub(crate) credentials: Option<Credentials>,
    pub(crate) cluster: ClusterId,
    pub(crate) scheme: SchemeId,
    pub(crate) name: String,
    pub(crate) token: Option<ResumeToken>,
    pub(crate) party: PartyId,
}

impl fmt::Debug for Resume {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resume")
            .field("can_reopen", &self.reopen.is_some())
            .field("login", &self.credentials.as_ref().map(|c| c.user.as_str()))
            .field("cluster", &self.cluster)
            .field("scheme", &self.scheme)
            .field("name", &self.name)
            .field("token", &self.token)
            .field("party", &self.party)
            .finish()
    }
}

/// What [`Resume::connect`] got back.
#[derive(Debug)]
#[must_use = "the party joins the media again with join"]
pub enum Resumed {
    /// The core gave the same party back (`SVPartyID` as before): join the media again.
    Same(Party),
    /// The core loaded a new party (the grace time passed, or the token was unknown): the old
    /// one is gone, and the others were told it left.
    New {
        /// The new party.
        party: Party,
        /// The party that was lost.
        lost: PartyId,
    },
}

impl Resumed {
    /// Whether the core gave the same party back.
    pub fn is_same(&self) -> bool {
        matches!(self, Resumed::Same(_))
    }

    /// The party, same or new.
    pub fn into_party(self) -> Party {
        match self {
            Resumed::Same(p) | Resumed::New { party: p, .. } => p,
        }
    }
}

impl Resume {
    /// The party to come back as.
    pub fn party(&self) -> PartyId {
        self.party
    }

    /// Whether the core gave a `ResumeToken` (without one, [`Resume::connect`] can only load a
    /// new party).
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// Opens a new session, logs in again if the first one did, sends `cd.load` with the same
    /// `ClusterID`, `SchemeID`, `NAME` and the `ResumeToken`, and says whether the party is the
    /// same. Errors are those of [`Session::connect`], [`Session::login`] and
    /// [`Session::load`]; a session opened by [`Session::over`] without
    /// [`Session::with_reopen`] fails at [`Stage::Open`].
    pub async fn connect(&self) -> Result<Resumed> {
        let reopen = self.reopen.as_ref().ok_or_else(|| {
            let reason = "the session was made by Session::over without Session::with_reopen: there is no way to open another".to_owned();
            Error::new(Stage::Open, Cause::Invalid { reason })
        })?;
        let mut session = reopen().await?;
        if session.reopen.is_none() {
            session.reopen = Some(reopen.clone());
        }
        let session = match &self.credentials {
            Some(c) => session.login(&c.user, c.password.clone()).await?.session,
            None => session,
        };
        let party = session.load_with(self.cluster, self.scheme, &self.name, self.token.as_ref()).await?;
        Ok(if party.id() == self.party { Resumed::Same(party) } else { Resumed::New { party, lost: self.party } })
    }
}
