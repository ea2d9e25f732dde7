//! Logging in (`q_cplxLogin`) as a type: a [`Session`] that logs in becomes a [`LoggedIn`],
//! whose only way on is [`LoggedIn::load`].
//!
//! The password is kept in a [`Password`], whose `Debug` prints no secret; the login frame goes
//! into the transcript with the password replaced (`Command::to_shown_frame`).

use std::fmt;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::signaling::{Party, Session};
use crate::transcript::Transcript;
use crate::wire::{retcode, ClusterId, SchemeId};

/// A password, kept for the login (and for logging in again on resume). Its `Debug` shows
/// `Password(<redacted>)`; it has no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(Arc<str>);

impl Password {
    /// The password.
    pub fn new(password: impl Into<String>) -> Self {
        Password(Arc::from(password.into()))
    }

    /// The secret itself, for the one frame that carries it.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Password({})", crate::wire::login::REDACTED)
    }
}

impl From<&str> for Password {
    fn from(s: &str) -> Self {
        Password::new(s)
    }
}

impl From<String> for Password {
    fn from(s: String) -> Self {
        Password::new(s)
    }
}

/// A login and its password, as the session keeps them for a resume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Credentials {
    pub(crate) user: String,
    pub(crate) password: Password,
}

/// What the account may do, from `RETCODE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Role {
    /// `RETCODE` 2: a user; acts on its own party only.
    User,
    /// `RETCODE` 3: an administrator; controls conferences.
    Admin,
    /// `RETCODE` 12: a system administrator; controls conferences.
    SysAdmin,
}

impl Role {
    /// The role for a `RETCODE` of a successful login.
    pub fn from_retcode(code: i64) -> Option<Role> {
        match code {
            retcode::USER => Some(Role::User),
            retcode::ADMIN => Some(Role::Admin),
            retcode::SYSADMIN => Some(Role::SysAdmin),
            _ => None,
        }
    }

    /// Whether the role controls conferences (`bControl` 1 in `cd.load`).
    pub fn is_controlling(self) -> bool {
        matches!(self, Role::Admin | Role::SysAdmin)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::User => "user",
            Role::Admin => "admin",
            Role::SysAdmin => "system administrator",
        })
    }
}

/// The account a session logged in as.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Account {
    /// The login given (`sLogin`).
    pub login: String,
    /// The role `RETCODE` gave.
    pub role: Role,
    /// `NAME`: the person's display name.
    pub name: String,
}

/// A session that has logged in. Next: [`LoggedIn::load`].
///
/// There is no way back to a [`Session`] and a [`Party`] has no `login`: once an application
/// asks for a login, loading before it does not compile.
#[must_use = "a logged-in session loads its party with load"]
pub struct LoggedIn {
    pub(crate) session: Session,
    pub(crate) account: Account,
}

impl LoggedIn {
    /// The account: role and display name.
    pub fn account(&self) -> &Account {
        &self.account
    }

    /// The session's transcript (the password is not in it).
    pub fn transcript(&self) -> Transcript {
        self.session.transcript()
    }

    /// `cd.load` as the logged-in account (see [`Session::load`]); the party's `NAME` is
    /// `name`, or the account's display name when `name` is empty.
    pub async fn load(self, cluster: ClusterId, scheme: SchemeId, name: &str) -> Result<Party> {
        let name = if name.is_empty() { self.account().name.clone() } else { name.to_owned() };
        self.session.load(cluster, scheme, &name).await
    }
}

impl fmt::Debug for LoggedIn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoggedIn").field("account", &self.account).finish_non_exhaustive()
    }
}

/// The error of a login whose query the core did not answer with a positive `RETCODE`.
pub(crate) fn failed(retcode: i64, closed: Option<String>) -> Error {
    Error::new(
        crate::error::Stage::Login,
        crate::error::Cause::LoginFailed { retcode, meaning: retcode::meaning(retcode).to_owned(), closed },
    )
}
