//! The gateway configuration of the sign-in tests, built field by field: the names it
//! publishes, the client registered at the test provider, and fresh session keys.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use mfa_gateway::demo::TestProvider;
use rand::RngCore;

use super::fake_exchange::FakeExchange;

/// The host name the gateway publishes in the sign-in tests.
pub const MAIL_HOST: &str = "mail.contoso.com";
/// The gateway's default session cookie name.
pub const SESSION_COOKIE: &str = "__Host-mfagw";
/// The application (client) id registered at the test provider.
pub const CLIENT_ID: &str = "0c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f";
pub const CLIENT_SECRET: &str = "tEst~s3cret.value_with-odd+chars/=";

/// Base64 of 32 fresh random bytes: a session key as `openssl rand -base64 32` makes one.
pub fn random_session_key() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    STANDARD.encode(bytes)
}

/// A gateway configuration publishing `/owa` (mfa, 440 for scripts), `/ecp` (mfa) and
/// `/owa/healthcheck.htm` (public) on [`MAIL_HOST`] over plain HTTP. The `*_extra` fields are
/// TOML lines appended to their section.
#[derive(Clone)]
pub struct SignInConfig {
    pub issuer: String,
    pub exchange_url: String,
    /// `client_secret = …` or `client_certificate = …`, and related lines.
    pub client_auth: String,
    pub oidc_extra: String,
    /// The whole `[mfa]` section, or empty for the defaults.
    pub mfa: String,
    pub session_keys: Vec<String>,
    pub session_extra: String,
    pub owa_extra: String,
    pub ecp_extra: String,
}

impl SignInConfig {
    pub fn new(provider: &TestProvider, exchange: &FakeExchange) -> SignInConfig {
        SignInConfig {
            issuer: provider.issuer().to_owned(),
            exchange_url: exchange.url(),
            client_auth: format!("client_secret = {{ value = \"{CLIENT_SECRET}\" }}\n"),
            oidc_extra: String::new(),
            mfa: String::new(),
            session_keys: vec![random_session_key()],
            session_extra: String::new(),
            owa_extra: String::new(),
            ecp_extra: String::new(),
        }
    }

    pub fn toml(&self) -> String {
        let keys: Vec<String> = self
            .session_keys
            .iter()
            .map(|k| format!("{{ value = \"{k}\" }}"))
            .collect();
        format!(
            r#"
[server]
http_listen = "127.0.0.1:0"

[oidc]
issuer = "{issuer}"
client_id = "{CLIENT_ID}"
{client_auth}{oidc_extra}
{mfa}

[session]
keys = [{keys}]
{session_extra}

[upstreams.exchange]
servers = ["{exchange}"]
health_check = {{ path = "/owa/healthcheck.htm", interval = "2s", timeout = "1s" }}

[[routes]]
host = "{MAIL_HOST}"
path = "/owa"
upstream = "exchange"
access = "mfa"
unauthenticated_status = 440
{owa_extra}

[[routes]]
host = "{MAIL_HOST}"
path = "/ecp"
upstream = "exchange"
access = "mfa"
{ecp_extra}

[[routes]]
host = "{MAIL_HOST}"
path = "/owa/healthcheck.htm"
upstream = "exchange"
access = "public"
"#,
            issuer = self.issuer,
            client_auth = self.client_auth,
            oidc_extra = self.oidc_extra,
            mfa = self.mfa,
            keys = keys.join(", "),
            session_extra = self.session_extra,
            exchange = self.exchange_url,
            owa_extra = self.owa_extra,
            ecp_extra = self.ecp_extra,
        )
    }
}
