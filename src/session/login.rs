//! A sign-in in progress: what the callback needs to finish it, carried by the browser in its
//! own short-lived cookie (one per `state`) instead of in gateway memory, so the callback may
//! land on any gateway behind the load balancer.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Sealed by [`super::SessionSeal::seal_login`] into the cookie named after `state`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginTransaction {
    /// Sent to Entra and echoed back; names this login's cookie.
    pub state: String,
    /// Must come back inside the ID token: ties the token to this browser's sign-in.
    pub nonce: String,
    /// PKCE S256 verifier, sent with the code exchange.
    pub pkce_verifier: String,
    /// Where to return after sign-in: a same-host relative path, already checked.
    pub return_path: String,
    /// Unix seconds when the sign-in started.
    pub created_at: u64,
}

impl LoginTransaction {
    /// Whether the sign-in started too long ago to be finished (`max_age`, minutes): an old
    /// callback gets a fresh sign-in link instead. A start time ahead of `now` (another
    /// gateway's clock) is not expired.
    pub fn is_expired(&self, now: u64, max_age: Duration) -> bool {
        now >= self.created_at.saturating_add(max_age.as_secs())
    }
}

/// The nonce and the PKCE verifier are secrets of this sign-in: never in a log line.
impl fmt::Debug for LoginTransaction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoginTransaction")
            .field("state", &self.state)
            .field("nonce", &"<redacted>")
            .field("pkce_verifier", &"<redacted>")
            .field("return_path", &self.return_path)
            .field("created_at", &self.created_at)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn login() -> LoginTransaction {
        LoginTransaction {
            state: "state-1".into(),
            nonce: "nonce-secret".into(),
            pkce_verifier: "verifier-secret".into(),
            return_path: "/owa/".into(),
            created_at: 1_800_000_000,
        }
    }

    #[test]
    fn sign_in_left_open_too_long_is_expired() {
        let ten_minutes = Duration::from_secs(600);
        assert!(!login().is_expired(1_800_000_000, ten_minutes));
        assert!(!login().is_expired(1_800_000_599, ten_minutes));
        assert!(login().is_expired(1_800_000_600, ten_minutes));
        // Started "in the future" by a gateway whose clock runs ahead: still usable.
        assert!(!login().is_expired(1_799_999_000, ten_minutes));
    }

    #[test]
    fn nonce_and_verifier_never_reach_a_log_line() {
        let printed = format!("{:?}", login());
        assert!(printed.contains("state-1"), "{printed}");
        assert!(!printed.contains("nonce-secret"), "{printed}");
        assert!(!printed.contains("verifier-secret"), "{printed}");
    }
}
