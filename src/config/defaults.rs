//! What the gateway uses for a key the file leaves out, in the type the validated
//! [`Config`](super::Config) holds. `config/gateway.example.toml` and `docs/configuration.md`
//! state the same values to operators: change them together.

use std::time::Duration;

use http::StatusCode;

use super::ResponseMode;

const MINUTE: u64 = 60;
const HOUR: u64 = 60 * MINUTE;

// ── [server] ────────────────────────────────────────────────────────────────────────────────

/// `server.shutdown_grace`: how long in-flight requests may finish after SIGTERM.
pub(super) const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// `server.max_connections`: open browser connections on the public listeners together.
pub(super) const DEFAULT_MAX_CONNECTIONS: usize = 20_000;

/// `server.header_read_timeout`: a client's TLS handshake and each request head (slowloris),
/// and an idle keep-alive connection's wait for its next request.
pub(super) const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// `server.max_header_bytes`: the largest request head (request line and headers) accepted.
pub(super) const DEFAULT_MAX_HEADER_BYTES: usize = 65_536;

/// `server.request_body_timeout`: the longest pause a client may make within a request body.
pub(super) const DEFAULT_REQUEST_BODY_TIMEOUT: Duration = Duration::from_secs(60);

/// `server.workers`: one per CPU the process may use (its affinity mask and cgroup quota, as
/// `std::thread::available_parallelism` reads them), or 1 when that cannot be told.
pub(super) fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

// ── [upstreams.<name>] ──────────────────────────────────────────────────────────────────────

/// `upstreams.<name>.connect_timeout`: TCP and TLS connection to one Exchange server.
pub(super) const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// `upstreams.<name>.idle_timeout`: OWA holds notification long polls open for minutes.
pub(super) const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(5 * MINUTE);

/// `upstreams.<name>.max_request_body`, 128 MiB: above OWA's 35,000,000-byte attachment limit
/// and EWS's 64 MiB.
pub(super) const DEFAULT_MAX_REQUEST_BODY: u64 = 128 * 1024 * 1024;

/// `upstreams.<name>.health_check.interval`.
pub(super) const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(10);

/// `upstreams.<name>.health_check.timeout`: shorter than the default interval.
pub(super) const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(3);

/// `upstreams.<name>.health_check.unhealthy_threshold`: one lost probe does not take a server
/// out of rotation.
pub(super) const DEFAULT_UNHEALTHY_THRESHOLD: u32 = 2;

/// `upstreams.<name>.health_check.healthy_threshold`.
pub(super) const DEFAULT_HEALTHY_THRESHOLD: u32 = 1;

// ── [[routes]] ──────────────────────────────────────────────────────────────────────────────

/// `routes[].unauthenticated_status`: the standard answer; OWA's routes choose 440.
pub(super) const DEFAULT_UNAUTHENTICATED_STATUS: StatusCode = StatusCode::UNAUTHORIZED;

// ── [oidc] ──────────────────────────────────────────────────────────────────────────────────

/// `oidc.scopes`: `openid` and the standard claims of the user's name and e-mail address.
pub(super) const DEFAULT_SCOPES: [&str; 3] = ["openid", "profile", "email"];

/// `oidc.clock_skew`: tolerance between the gateway's clock and Entra's for `exp`, `nbf`, `iat`.
pub(super) const DEFAULT_CLOCK_SKEW: Duration = Duration::from_secs(2 * MINUTE);

/// `oidc.response_mode`: `form_post`, which Microsoft recommends for web applications.
pub(super) const DEFAULT_RESPONSE_MODE: ResponseMode = ResponseMode::FormPost;

/// `oidc.login_timeout`: how long a started sign-in (its login-transaction cookie) stays valid.
pub(super) const DEFAULT_LOGIN_TIMEOUT: Duration = Duration::from_secs(10 * MINUTE);

// ── [mfa] ───────────────────────────────────────────────────────────────────────────────────

/// `mfa.amr_any_of`: Entra writes `mfa` after a second factor, and `ngcmfa`, which Microsoft
/// documents as equivalent to `mfa`, used for provisioning of certain advanced credential types.
pub(super) const DEFAULT_AMR_ANY_OF: [&str; 2] = ["mfa", "ngcmfa"];

/// `mfa.max_auth_age`: older sign-ins sign in again, however recent the session.
pub(super) const DEFAULT_MAX_AUTH_AGE: Duration = Duration::from_secs(12 * HOUR);

// ── [session] ───────────────────────────────────────────────────────────────────────────────

/// `session.cookie_name`: the `__Host-` prefix makes browsers refuse the cookie unless it is
/// Secure, for path `/` and without a Domain, so no other host can plant or read it.
pub(super) const DEFAULT_COOKIE_NAME: &str = "__Host-mfagw";

/// `session.lifetime`.
pub(super) const DEFAULT_SESSION_LIFETIME: Duration = Duration::from_secs(10 * HOUR);

/// `session.idle_timeout`.
pub(super) const DEFAULT_SESSION_IDLE_TIMEOUT: Duration = Duration::from_secs(HOUR);

// ── [sso.adfs] ──────────────────────────────────────────────────────────────────────────────

/// `sso.adfs.token_lifetime`: a working day, and never beyond the gateway session's end.
pub(super) const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(8 * HOUR);

/// `sso.adfs.token_signing` entries at most: the one that signs and those of a rollover.
pub(super) const MAX_TOKEN_SIGNING_ENTRIES: usize = 4;

// ── [sso.kerberos] ──────────────────────────────────────────────────────────────────────────

/// `sso.kerberos.ticket_lifetime`: Active Directory's default maximum for service tickets
/// ("Maximum lifetime for service ticket" is 600 minutes).
pub(super) const DEFAULT_TICKET_LIFETIME: Duration = Duration::from_secs(10 * HOUR);

/// `sso.kerberos.kdc` entries at most.
pub(super) const MAX_KDCS: usize = 16;

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::test_support::{load, upstream_with, valid_with};

    #[test]
    fn defaults_apply_when_optional_keys_are_left_out() {
        let config = load(&valid_with("")).unwrap();
        let s = &config.server;
        assert_eq!(s.shutdown_grace, Duration::from_secs(30));
        assert_eq!(s.max_connections, 20_000);
        assert_eq!(s.header_read_timeout, Duration::from_secs(10));
        assert_eq!(s.max_header_bytes, 65_536);
        assert_eq!(
            s.workers,
            std::thread::available_parallelism().map_or(1, usize::from)
        );
        assert!(s.trusted_proxies.is_empty());
        let u = &config.upstreams[0];
        assert_eq!(u.connect_timeout, Duration::from_secs(5));
        assert_eq!(u.idle_timeout, Duration::from_secs(300));
        assert_eq!(u.max_request_body, 134_217_728);
        assert!(u.health_check.is_none());

        let config = load(&upstream_with(
            "servers = [\"http://127.0.0.1:8081\"]\nhealth_check = { path = \"/owa/healthcheck.htm\" }",
        ))
        .unwrap();
        let h = config.upstreams[0].health_check.clone().unwrap();
        assert_eq!(h.interval, Duration::from_secs(10));
        assert_eq!(h.timeout, Duration::from_secs(3));
        assert_eq!(h.unhealthy_threshold, 2);
        assert_eq!(h.healthy_threshold, 1);
    }
}
