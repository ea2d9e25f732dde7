//! The core's accounts (`[[accounts]]` in its configuration) and how a password is checked.
//!
//! A password is kept as given (`password`) or as an argon2id PHC string (`password_hash`, made
//! by `callme hash-password`). Checking an argon2 hash costs tens of milliseconds: the shell
//! does it outside its lock, on a blocking thread ([`Credential::verify`]), and hands the
//! outcome to the registry.

use std::fmt;

use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use serde::Deserialize;

/// What an account may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Acts on its own party only (`RETCODE` 2).
    User,
    /// Controls every conference it is in (`RETCODE` 3, `bControl` 1).
    Admin,
}

impl Role {
    /// Whether the role controls conferences (acts on other parties).
    pub fn is_control(self) -> bool {
        self == Role::Admin
    }
}

/// How an account's password is checked.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// The password itself, compared in constant time.
    Plain(String),
    /// An argon2id PHC string (`$argon2id$v=19$m=...,t=...,p=...$salt$hash`).
    Hash(String),
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::Plain(_) => f.write_str("Plain([redacted])"),
            Credential::Hash(_) => f.write_str("Hash([redacted])"),
        }
    }
}

/// A PHC string checked against when the login is unknown, so an unknown login costs as much
/// time as a wrong password; made once, on first use.
fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| hash_password("no such account").unwrap_or_default())
}

impl Credential {
    /// Whether `password` matches. A hash that does not parse never matches (the configuration
    /// check refuses such hashes up front).
    pub fn verify(&self, password: &str) -> bool {
        match self {
            Credential::Plain(p) => constant_time_eq(p.as_bytes(), password.as_bytes()),
            Credential::Hash(h) => match PasswordHash::new(h) {
                Ok(parsed) => Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok(),
                Err(_) => false,
            },
        }
    }

    /// Spends about the time of a hash check and answers `false`: the check for a login that
    /// does not exist.
    pub fn verify_unknown(password: &str) -> bool {
        let _ = Credential::Hash(dummy_hash().to_owned()).verify(password);
        false
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, x) in a.iter().enumerate() {
        diff |= usize::from(x ^ b.get(i).copied().unwrap_or(0));
    }
    diff == 0
}

/// An argon2id PHC string of `password` with a random salt (the argon2 crate's default cost).
pub fn hash_password(password: &str) -> Result<String, String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default().hash_password(password.as_bytes(), &salt).map(|h| h.to_string()).map_err(|e| format!("hashing failed: {e}"))
}

/// One `[[accounts]]` entry.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Account {
    /// `sLogin` of the login query.
    pub login: String,
    /// The password as given (prefer `password_hash`).
    #[serde(default)]
    pub password: Option<String>,
    /// An argon2id PHC string (`callme hash-password`).
    #[serde(default)]
    pub password_hash: Option<String>,
    /// `user` or `admin`, as text so that a wrong value is reported with its place.
    pub role: String,
    /// The display name (`NAME` of the login answer and of the party).
    pub name: String,
}

impl fmt::Debug for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Account")
            .field("login", &self.login)
            .field("password", &self.password.as_ref().map(|_| "[redacted]"))
            .field("password_hash", &self.password_hash.as_ref().map(|_| "[redacted]"))
            .field("role", &self.role)
            .field("name", &self.name)
            .finish()
    }
}

impl Account {
    /// An account whose password is kept as given.
    pub fn with_password(login: &str, password: &str, role: Role, name: &str) -> Self {
        let role = if role.is_control() { "admin" } else { "user" };
        Account { login: login.into(), password: Some(password.into()), password_hash: None, role: role.into(), name: name.into() }
    }

    /// An account whose password is an argon2id PHC string.
    pub fn with_hash(login: &str, password_hash: &str, role: Role, name: &str) -> Self {
        Account { password: None, password_hash: Some(password_hash.into()), ..Account::with_password(login, "", role, name) }
    }

    /// The role, checked.
    pub fn role(&self) -> Result<Role, String> {
        match self.role.as_str() {
            "user" => Ok(Role::User),
            "admin" => Ok(Role::Admin),
            other => Err(format!("role: {other:?} is not user or admin")),
        }
    }

    /// How its password is checked, checked.
    pub fn credential(&self) -> Result<Credential, String> {
        match (&self.password, &self.password_hash) {
            (Some(p), None) => Ok(Credential::Plain(p.clone())),
            (None, Some(h)) => {
                let parsed = PasswordHash::new(h).map_err(|e| format!("password_hash: not a PHC string ({e})"))?;
                if parsed.algorithm.as_str() != "argon2id" {
                    return Err(format!("password_hash: the algorithm is {:?}, not argon2id", parsed.algorithm.as_str()));
                }
                Ok(Credential::Hash(h.clone()))
            }
            (Some(_), Some(_)) => Err("password and password_hash: give one, not both".into()),
            (None, None) => Err("password_hash: missing (or password)".into()),
        }
    }

    /// Checks the entry; the error names the field (without the `accounts[i].` prefix).
    pub fn check(&self) -> Result<(), String> {
        if self.login.is_empty() {
            return Err("login: empty".into());
        }
        if self.login.chars().count() > super::registry::MAX_LOGIN_CHARS {
            return Err(format!("login: longer than {} characters", super::registry::MAX_LOGIN_CHARS));
        }
        if self.name.chars().any(char::is_control) {
            return Err("name: contains a control character".into());
        }
        self.role()?;
        self.credential()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_made_here_verifies_its_password_only() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        let c = Account::with_hash("a", &h, Role::User, "A").credential().unwrap();
        assert!(c.verify("correct horse"));
        assert!(!c.verify("correct horse "));
        assert!(!Credential::verify_unknown("correct horse"));
    }

    #[test]
    fn a_plain_password_is_compared_whole() {
        let c = Credential::Plain("secret".into());
        assert!(c.verify("secret"));
        assert!(!c.verify("secre") && !c.verify("secrets") && !c.verify(""));
    }

    #[test]
    fn a_bad_entry_is_refused_naming_the_field_and_debug_hides_the_secrets() {
        let mut a = Account::with_password("bob", "pw-visible", Role::User, "Bob");
        a.role = "boss".into();
        assert_eq!(a.check().unwrap_err(), r#"role: "boss" is not user or admin"#);
        let a = Account::with_hash("bob", "$md5$xyz", Role::User, "Bob");
        assert!(a.check().unwrap_err().starts_with("password_hash:"), "{:?}", a.check());
        let a = Account { password_hash: None, password: None, ..Account::with_password("c", "x", Role::User, "C") };
        assert!(a.check().unwrap_err().starts_with("password_hash: missing"));
        let shown = format!("{:?}", Account::with_password("bob", "pw-visible", Role::Admin, "Bob"));
        assert!(!shown.contains("pw-visible"), "{shown}");
    }
}
