//! A test OpenID provider shaped like Microsoft Entra ID (v1.0 endpoints and tokens), served
//! over plain HTTP on loopback, for `mfa-gateway demo` and the tests. **Never for production**:
//! it signs in whoever presses "Sign in" and lets that person claim multifactor
//! authentication.
//!
//! What it imitates, because the gateway must cope with each of these Entra facts:
//! - a tenant-specific issuer, `http://127.0.0.1:PORT/<tid>/`, with the trailing slash of
//!   `https://sts.windows.net/<tid>/`, and discovery at `<issuer>.well-known/openid-configuration`;
//! - the authorization code flow with PKCE S256, `state`, `nonce`, `response_mode` `query` or
//!   `form_post`, and the `claims` parameter asking for an `acrs` authentication context;
//! - RS256 ID tokens whose `kid` is in the JWKS, with the v1.0 claims: `tid`, `oid`, pairwise
//!   `sub`, `upn`, `unique_name`, `name`, `onprem_sid`, `groups` (or the overage marker above
//!   200), `amr`, `acrs`, `sid`, `auth_time`, `ver` "1.0";
//! - client authentication by secret (`client_secret_post` or `client_secret_basic`) or by
//!   certificate (`private_key_jwt`), checked as Entra checks it;
//! - the end-session endpoint with `post_logout_redirect_uri`;
//! - on request ([`ProviderOptions::single_sign_on`]), Entra's browser session: after one
//!   sign-in, further authorization requests from that browser — for any client, such as
//!   Exchange's own sign-in with hybrid modern authentication — are answered without a page,
//!   and `response_type=code id_token` (the hybrid flow Exchange uses) returns the ID token
//!   with the code.
//!
//! The tests steer it and read it back through its test kit (cargo feature `test-kit`, which
//! only the tests turn on): forged ID tokens, an outage, key rotation, backdated sign-ins and
//! the record of every call. The shipped gateway has none of that.

mod endpoints;
mod form;
mod jwt;
mod pages;
#[cfg(feature = "test-kit")]
mod test_kit;
#[cfg(test)]
mod tests;
mod token;

#[cfg(feature = "test-kit")]
pub use self::test_kit::{parse_form_post, sign_in_form, Forgery, ProviderCall, Signing};

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use self::endpoints::CodeGrant;
use self::jwt::SigningKey;

/// The tenant id the provider uses unless told otherwise (a made-up GUID).
pub const DEFAULT_TENANT_ID: &str = "3f6a8e2c-5b1d-4c7e-9a0f-2d4b6c8e1a35";
/// Object id of the "Mail users" group; alice and carol are members.
pub const GROUP_MAIL_USERS: &str = "b1c2d3e4-0001-4a5b-8c6d-7e8f9a0b1c2d";
/// Object id of the "Exchange administrators" group; alice and carol are members.
pub const GROUP_EXCHANGE_ADMINS: &str = "b1c2d3e4-0002-4a5b-8c6d-7e8f9a0b1c2d";

/// Entra puts at most this many groups in a JWT; above it, an overage marker instead.
const MAX_GROUPS_IN_TOKEN: usize = 200;
/// Largest request body read (a sign-in form or a token request is a few kilobytes).
const MAX_BODY: usize = 64 * 1024;

const DISCOVERY_PATH: &str = ".well-known/openid-configuration";
const KEYS_PATH: &str = "discovery/keys";
const AUTHORIZE_PATH: &str = "oauth2/authorize";
const TOKEN_PATH: &str = "oauth2/token";
const LOGOUT_PATH: &str = "oauth2/logout";

/// A person who can sign in at the provider.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestUser {
    /// What the sign-in form sends as `user` (e.g. "alice").
    pub username: String,
    /// Display name: the `name` claim.
    pub name: String,
    /// The `upn` and `unique_name` claims.
    pub upn: String,
    /// The `oid` claim (object id, a GUID).
    pub oid: String,
    /// The `onprem_sid` claim of a user synchronised from Active Directory.
    pub onprem_sid: Option<String>,
    /// Group object ids; more than 200 become the overage marker.
    pub groups: Vec<String>,
    /// Further string claims of the ID token, as a claims-mapping policy adds them (e.g. the
    /// on-premises sAMAccountName under a name the administrator chose).
    pub extra_claims: Vec<(String, String)>,
}

impl TestUser {
    /// Member of [`GROUP_MAIL_USERS`] and [`GROUP_EXCHANGE_ADMINS`], synchronised from AD.
    pub fn alice() -> TestUser {
        TestUser {
            username: "alice".into(),
            name: "Alice Wilber".into(),
            upn: "alice@contoso.com".into(),
            oid: "6e9f4c2a-8d1b-4f3e-a5c7-1b2d3e4f5a60".into(),
            onprem_sid: Some("S-1-5-21-1004336348-1177238915-682003330-1105".into()),
            groups: vec![GROUP_MAIL_USERS.into(), GROUP_EXCHANGE_ADMINS.into()],
            extra_claims: Vec::new(),
        }
    }

    /// In no group.
    pub fn bob() -> TestUser {
        TestUser {
            username: "bob".into(),
            name: "Bob Kelly".into(),
            upn: "bob@contoso.com".into(),
            oid: "0b7d1f3e-5a2c-4e6b-9d8f-3c4a5b6d7e81".into(),
            onprem_sid: Some("S-1-5-21-1004336348-1177238915-682003330-1106".into()),
            groups: Vec::new(),
            extra_claims: Vec::new(),
        }
    }

    /// In 250 groups (both named groups among them): her tokens carry the overage marker.
    pub fn carol() -> TestUser {
        let mut groups = vec![
            GROUP_MAIL_USERS.to_owned(),
            GROUP_EXCHANGE_ADMINS.to_owned(),
        ];
        groups.extend((3..=250).map(|i| format!("c0ffee00-{i:04x}-4000-8000-000000000000")));
        TestUser {
            username: "carol".into(),
            name: "Carol Lopez".into(),
            upn: "carol@contoso.com".into(),
            oid: "9a4e2b6c-1d3f-4a5b-8c7d-e9f0a1b2c3d4".into(),
            onprem_sid: Some("S-1-5-21-1004336348-1177238915-682003330-1107".into()),
            groups,
            extra_claims: Vec::new(),
        }
    }
}

/// How to start a [`TestProvider`].
#[derive(Clone, Debug)]
pub struct ProviderOptions {
    /// The tenant id in every URL and in the `tid` claim.
    pub tenant_id: String,
    /// Where to listen, a loopback address; default 127.0.0.1 on a free port.
    pub addr: Option<SocketAddr>,
    /// Who can sign in; default alice, bob and carol.
    pub users: Vec<TestUser>,
    /// ID token lifetime (`exp` − `iat`) and the token response's `expires_in`.
    pub token_lifetime: Duration,
    /// Keep a browser session after a sign-in (cookie [`SSO_COOKIE`], as Entra's `ESTSAUTH`):
    /// a later authorization request from that browser, for any client, is answered at once
    /// unless it asks for `prompt=login` or an authentication context the sign-in did not
    /// satisfy. Off by default, so that every sign-in in the demo and the tests is a choice
    /// made on the page.
    pub single_sign_on: bool,
}

/// The provider's browser-session cookie (with [`ProviderOptions::single_sign_on`]).
pub const SSO_COOKIE: &str = "ESTSAUTH";

impl Default for ProviderOptions {
    fn default() -> ProviderOptions {
        ProviderOptions {
            tenant_id: DEFAULT_TENANT_ID.into(),
            addr: None,
            users: vec![TestUser::alice(), TestUser::bob(), TestUser::carol()],
            token_lifetime: Duration::from_secs(3600),
            single_sign_on: false,
        }
    }
}

/// How a registered client proves itself at the token endpoint.
#[derive(Clone, Debug)]
pub enum ClientCredential {
    /// A client secret, sent with `client_secret_post` or `client_secret_basic`.
    Secret(String),
    /// A certificate credential: `private_key_jwt` assertions signed (RS256 or PS256) by the
    /// private half of `public_key`. With `cert_der`, the assertion header must name that
    /// certificate by `x5t#S256` and/or `x5t`, as Entra requires.
    KeyPair {
        public_key: rsa::RsaPublicKey,
        cert_der: Option<Vec<u8>>,
    },
}

/// Which endpoint a call reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProviderEndpoint {
    Discovery,
    Keys,
    Authorize,
    Token,
    Logout,
    /// Any other path (answered 404).
    Other(String),
}

/// How a client authenticated at the token endpoint (as presented, accepted or not).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuthMethod {
    ClientSecretPost,
    ClientSecretBasic,
    PrivateKeyJwt,
}

/// The running provider. Dropping it closes the listener and every connection.
pub struct TestProvider {
    shared: Arc<Shared>,
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

struct Shared {
    tenant_id: String,
    issuer: String,
    users: Vec<TestUser>,
    token_lifetime: Duration,
    single_sign_on: bool,
    state: Mutex<State>,
}

struct State {
    /// Published keys; the first signs.
    keys: Vec<Arc<SigningKey>>,
    clients: HashMap<String, ClientCredential>,
    codes: HashMap<String, CodeGrant>,
    /// Browser sessions by the value of their [`SSO_COOKIE`].
    browser_sessions: HashMap<String, endpoints::BrowserSession>,
    seen_jtis: HashSet<String>,
    #[cfg(feature = "test-kit")]
    test_kit: test_kit::Controls,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.issuer)
    }

    fn user(&self, username: &str) -> Option<&TestUser> {
        self.users.iter().find(|user| user.username == username)
    }
}

impl TestProvider {
    /// Binds the listener, generates the first signing key and starts serving.
    pub async fn start(options: ProviderOptions) -> std::io::Result<TestProvider> {
        let tenant_ok = !options.tenant_id.is_empty()
            && options
                .tenant_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        if !tenant_ok {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the tenant id must be letters, digits, '-' and '.'",
            ));
        }
        let addr = options
            .addr
            .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0)));
        if !addr.ip().is_loopback() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the test provider listens on loopback only: it signs in anyone",
            ));
        }
        let key = generate_key()?;
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            issuer: format!("http://{addr}/{}/", options.tenant_id),
            tenant_id: options.tenant_id,
            users: options.users,
            token_lifetime: options.token_lifetime,
            single_sign_on: options.single_sign_on,
            state: Mutex::new(State {
                keys: vec![key],
                clients: HashMap::new(),
                codes: HashMap::new(),
                browser_sessions: HashMap::new(),
                seen_jtis: HashSet::new(),
                #[cfg(feature = "test-kit")]
                test_kit: test_kit::Controls::default(),
            }),
        });
        let serving = shared.clone();
        let task = tokio::spawn(async move {
            // Owned by this task, so aborting it (on drop) also ends every open connection.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                while connections.try_join_next().is_some() {}
                let Ok((stream, _)) = listener.accept().await else {
                    // Out of file descriptors, say: wait instead of spinning.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let shared = serving.clone();
                connections.spawn(async move {
                    let service = service_fn(move |request| {
                        let shared = shared.clone();
                        async move { Ok::<_, Infallible>(endpoints::handle(&shared, request).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(TestProvider { shared, addr, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn tenant_id(&self) -> &str {
        &self.shared.tenant_id
    }

    /// `http://127.0.0.1:PORT/<tid>/`, exactly as in discovery and in every token's `iss`.
    pub fn issuer(&self) -> &str {
        &self.shared.issuer
    }

    /// `<issuer>.well-known/openid-configuration`.
    pub fn discovery_url(&self) -> String {
        self.shared.url(DISCOVERY_PATH)
    }

    pub fn authorization_endpoint(&self) -> String {
        self.shared.url(AUTHORIZE_PATH)
    }

    /// Also the `aud` a `private_key_jwt` assertion must carry.
    pub fn token_endpoint(&self) -> String {
        self.shared.url(TOKEN_PATH)
    }

    pub fn jwks_uri(&self) -> String {
        self.shared.url(KEYS_PATH)
    }

    pub fn end_session_endpoint(&self) -> String {
        self.shared.url(LOGOUT_PATH)
    }

    pub fn users(&self) -> &[TestUser] {
        &self.shared.users
    }

    /// Registers (or replaces) a client. Any `redirect_uri` is accepted for it.
    pub fn register_client(&self, client_id: impl Into<String>, credential: ClientCredential) {
        self.shared
            .lock()
            .clients
            .insert(client_id.into(), credential);
    }
}

impl Drop for TestProvider {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn generate_key() -> std::io::Result<Arc<SigningKey>> {
    SigningKey::generate()
        .map(Arc::new)
        .map_err(|e| std::io::Error::other(format!("cannot generate an RSA key: {e}")))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

type Reply = http::Response<http_body_util::Full<bytes::Bytes>>;
