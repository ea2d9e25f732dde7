//! Time-limited TURN credentials (the "TURN REST API" scheme coturn calls `use-auth-secret`):
//! the user name is `<expiry unix seconds>:<name>`, the password is
//! `base64(HMAC-SHA1(secret, user name))`. The TURN server recomputes the password from its copy
//! of the secret and refuses a user name whose expiry has passed.

use base64::Engine as _;
use hmac::{Hmac, Mac};

/// A minted user name and password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnCredentials {
    pub username: String,
    pub credential: String,
}

/// Mints credentials for `name`, valid until `now_unix + ttl_secs`.
pub fn mint(secret: &str, name: &str, now_unix: u64, ttl_secs: u64) -> TurnCredentials {
    let username = format!("{}:{name}", now_unix + ttl_secs);
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(username.as_bytes());
    let credential = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    TurnCredentials { username, credential }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_user_name_carries_the_expiry_and_the_password_is_the_hmac() {
        let c = mint("north", "party3", 1_700_000_000, 600);
        assert_eq!(c.username, "1700000600:party3");
        // HMAC-SHA1("north", "1700000600:party3"), base64: recomputed independently by the
        // openssl command line (`printf %s 1700000600:party3 | openssl dgst -sha1 -hmac north -binary | base64`).
        assert_eq!(c.credential, "npqSVIq0EIkjh9d+riowNerIRQ8=");
        assert_ne!(mint("south", "party3", 1_700_000_000, 600).credential, c.credential);
    }
}
