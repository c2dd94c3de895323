//! Exchange 2019 Outlook on the web and ECP in AD FS mode, for the tests: it sends browsers
//! without its cookie to the "AD FS" (`wa=wsignin1.0`, realm from the Host header), and takes
//! the posted WS-Federation token only if it passes what Exchange's AD FS modules and WIF's
//! `SamlSecurityTokenHandler` check:
//!
//! - the Referer starts with the AD FS issuer URL (else ASP.NET request validation refuses the
//!   `wresult` field, which holds `<`);
//! - a SAML 1.1 assertion (1.1, `_`-started ID, non-empty Issuer, a statement), signed with the
//!   enveloped signature as its last child, exclusive c14n, RSA-SHA256, SHA-256, referring to
//!   the assertion; the signature verified by `xmlsec1` with the embedded certificate, whose
//!   SHA-1 thumbprint must be listed (`AdfsSignCertificateThumbprint`);
//! - lifetime with 5 minutes of clock skew, an audience equal to the realm and listed
//!   (`AdfsAudienceUris`: host case-insensitive, path case-sensitive, trailing slash counts);
//! - exactly one `upn` claim, at most one `primarysid`; `NotBefore` less than 6 hours after
//!   `AuthenticationInstant`.
//!
//! Then it sets its own cookie and shows "Mailbox of <upn>". Every outcome is recorded with its
//! precise reason; the raw requests are recorded by the [`FakeExchange`] underneath. The checks
//! (`token_check`) use nothing of the gateway's code: roxmltree, `url`, ring's SHA-1 and
//! `xmlsec1`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use http::header::{COOKIE, HOST, LOCATION, REFERER, SET_COOKIE};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use super::fake_exchange::{full, FakeExchange, Recorded, TestBody};
use super::xmlsec1::require_xmlsec1;

mod token_check;

use token_check::check_token;
pub use token_check::{Refusal, TokenCheck};

/// The cookie the stand-in sets once it has accepted a token (Exchange's is `TimeWindow` and
/// friends; the name does not matter to the gateway, which passes it through).
pub const ADFS_AUTH_COOKIE: &str = "TestAdfsAuth";

/// What Exchange is configured with (`Set-OrganizationConfig -AdfsIssuer …`).
#[derive(Clone, Debug)]
pub struct AdfsExchangeConfig {
    /// `AdfsSignCertificateThumbprints`: hex, any case, spaces ignored (as WIF reads them).
    pub thumbprints: Vec<String>,
    /// `AdfsAudienceUris`.
    pub audiences: Vec<String>,
    /// `AdfsIssuer`: where browsers are sent to sign in and out; the Referer prefix.
    pub adfs_issuer: String,
    /// Virtual directories in AD FS mode, e.g. `/owa`, `/ecp`.
    pub vdirs: Vec<String>,
    /// Seconds added to the system clock: Exchange's clock against the gateway's.
    pub clock_offset: i64,
}

/// One sign-in POST as received.
#[derive(Clone, Debug)]
pub struct SignInPost {
    pub path: String,
    pub headers: HeaderMap,
    pub form: Vec<(String, String)>,
}

impl SignInPost {
    pub fn field(&self, name: &str) -> Option<&str> {
        self.form
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

struct Session {
    upn: String,
    sid: Option<String>,
    /// The virtual directories a token was accepted for: like Exchange's, OWA's sign-in does
    /// not open ECP.
    vdirs: Vec<String>,
}

struct State {
    /// Mutable so a test can name the gateway's address once it has one.
    config: Mutex<AdfsExchangeConfig>,
    clock_offset: AtomicI64,
    checks: Mutex<Vec<TokenCheck>>,
    posts: Mutex<Vec<SignInPost>>,
    sessions: Mutex<HashMap<String, Session>>,
}

/// The stand-in, listening on 127.0.0.1 (plain HTTP).
pub struct AdfsExchange {
    pub server: FakeExchange,
    state: Arc<State>,
}

pub struct AdfsExchangeBuilder {
    config: AdfsExchangeConfig,
}

impl AdfsExchange {
    /// Defaults: issuer `https://mail.test/_gateway/wsfed/`, vdirs `/owa` and `/ecp`, no
    /// thumbprint and no audience (add them), no clock offset.
    pub fn builder() -> AdfsExchangeBuilder {
        AdfsExchangeBuilder {
            config: AdfsExchangeConfig {
                thumbprints: Vec::new(),
                audiences: Vec::new(),
                adfs_issuer: "https://mail.test/_gateway/wsfed/".to_owned(),
                vdirs: vec!["/owa".to_owned(), "/ecp".to_owned()],
                clock_offset: 0,
            },
        }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    pub fn config(&self) -> AdfsExchangeConfig {
        self.state.config()
    }

    /// Changes the configuration, as `Set-OrganizationConfig` would (for example once the
    /// gateway in front has its address).
    pub fn reconfigure(&self, change: impl FnOnce(&mut AdfsExchangeConfig)) {
        change(&mut self.state.config.lock().unwrap());
    }

    /// Every token verdict, oldest first.
    pub fn checks(&self) -> Vec<TokenCheck> {
        self.state.checks.lock().unwrap().clone()
    }

    pub fn last_check(&self) -> Option<TokenCheck> {
        self.state.checks.lock().unwrap().last().cloned()
    }

    /// Every sign-in POST (`wa=wsignin1.0`), with its form fields.
    pub fn sign_in_posts(&self) -> Vec<SignInPost> {
        self.state.posts.lock().unwrap().clone()
    }

    /// Every request, as the underlying fake Exchange recorded it.
    pub fn requests(&self) -> Vec<Recorded> {
        self.server.user_requests()
    }

    /// Users with a live session (cookie issued, not signed out).
    pub fn signed_in_users(&self) -> Vec<String> {
        let sessions = self.state.sessions.lock().unwrap();
        let mut users: Vec<_> = sessions.values().map(|s| s.upn.clone()).collect();
        users.sort();
        users
    }

    /// Moves Exchange's clock against the system clock.
    pub fn set_clock_offset(&self, seconds: i64) {
        self.state.clock_offset.store(seconds, Ordering::SeqCst);
    }
}

impl AdfsExchangeBuilder {
    pub fn adfs_issuer(mut self, issuer: &str) -> Self {
        self.config.adfs_issuer = issuer.to_owned();
        self
    }

    pub fn thumbprint(mut self, thumbprint: &str) -> Self {
        self.config.thumbprints.push(thumbprint.to_owned());
        self
    }

    pub fn audience(mut self, audience: &str) -> Self {
        self.config.audiences.push(audience.to_owned());
        self
    }

    pub fn vdirs(mut self, vdirs: &[&str]) -> Self {
        self.config.vdirs = vdirs.iter().map(|v| (*v).to_owned()).collect();
        self
    }

    pub fn clock_offset(mut self, seconds: i64) -> Self {
        self.config.clock_offset = seconds;
        self
    }

    pub fn config(mut self, config: AdfsExchangeConfig) -> Self {
        self.config = config;
        self
    }

    pub async fn start(self) -> AdfsExchange {
        super::logging::init();
        require_xmlsec1();
        let state = Arc::new(State {
            clock_offset: AtomicI64::new(self.config.clock_offset),
            config: Mutex::new(self.config),
            checks: Mutex::new(Vec::new()),
            posts: Mutex::new(Vec::new()),
            sessions: Mutex::new(HashMap::new()),
        });
        let handler_state = state.clone();
        let server = FakeExchange::builder("exchange-adfs")
            .handler(move |req| handle(handler_state.clone(), req))
            .start()
            .await;
        AdfsExchange { server, state }
    }
}

impl State {
    fn config(&self) -> AdfsExchangeConfig {
        self.config.lock().unwrap().clone()
    }
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Response<TestBody> {
    let path = req.uri().path().to_owned();
    let Some(vdir) = state
        .config()
        .vdirs
        .iter()
        .find(|v| in_vdir(&path, v))
        .cloned()
    else {
        return respond(StatusCode::NOT_FOUND, "not an Exchange virtual directory");
    };
    let host = req
        .headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default();
    // Exchange builds the realm from the Host it sees, with https (`requireHttps`), and the
    // application's own virtual path, whatever the letter case of the request.
    let realm = format!("https://{host}{vdir}/");
    let query: Vec<(String, String)> = req
        .uri()
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    let wa = query
        .iter()
        .find(|(k, _)| k == "wa")
        .map(|(_, v)| v.as_str());
    let cookie = session_cookie(req.headers());
    let original = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".to_owned());

    if wa == Some("wsignout1.0") || path.to_ascii_lowercase().ends_with("/logoff.owa") {
        if let Some(cookie) = &cookie {
            state.sessions.lock().unwrap().remove(cookie);
        }
        let location = with_query(&state.config().adfs_issuer, "wa=wsignout1.0");
        return redirect(&location, Some(clear_cookie()));
    }
    if wa == Some("wsignoutcleanup1.0") {
        if let Some(cookie) = &cookie {
            state.sessions.lock().unwrap().remove(cookie);
        }
        let mut response = respond(StatusCode::OK, "signed out");
        response
            .headers_mut()
            .insert(SET_COOKIE, clear_cookie().parse().unwrap());
        return response;
    }

    if req.method() == Method::POST {
        let headers = req.headers().clone();
        let body = match Limited::new(req.into_body(), 1 << 20).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(_) => return respond(StatusCode::BAD_REQUEST, "body unreadable or too large"),
        };
        let form: Vec<(String, String)> = url::form_urlencoded::parse(&body).into_owned().collect();
        let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        if field("wa").as_deref() == Some("wsignin1.0") {
            state.posts.lock().unwrap().push(SignInPost {
                path: path.clone(),
                headers: headers.clone(),
                form: form.clone(),
            });
            return sign_in(
                &state,
                &headers,
                &realm,
                &vdir,
                field("wresult"),
                field("wctx"),
            )
            .await;
        }
    }

    if let Some(cookie) = cookie {
        let sessions = state.sessions.lock().unwrap();
        if let Some(session) = sessions.get(&cookie).filter(|s| s.vdirs.contains(&vdir)) {
            let body = format!(
                "<!DOCTYPE html><html><body><h1>Mailbox of {}</h1><p>SID {}</p>\
                 <p>{} {}</p></body></html>",
                html_escape(&session.upn),
                html_escape(session.sid.as_deref().unwrap_or("(none)")),
                html_escape(&vdir),
                html_escape(&path),
            );
            return Response::builder()
                .header("content-type", "text/html; charset=utf-8")
                .body(full(body))
                .unwrap();
        }
    }
    redirect(&sign_in_location(&state, &realm, &original), None)
}

/// `AdfsIssuer?wa=wsignin1.0&wtrealm=…&wctx=rm=0&id=passive&ru=<path>&wct=…`, encoded as .NET's
/// `HttpUtility.UrlEncode` does (lowercase hex; `ru` encoded twice).
fn sign_in_location(state: &State, realm: &str, original: &str) -> String {
    let wctx = format!("rm=0&id=passive&ru={}", dotnet_url_encode(original));
    let wct = chrono::DateTime::from_timestamp(now(state), 0)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default();
    let query = format!(
        "wa=wsignin1.0&wtrealm={}&wctx={}&wct={}",
        dotnet_url_encode(realm),
        dotnet_url_encode(&wctx),
        dotnet_url_encode(&wct)
    );
    with_query(&state.config().adfs_issuer, &query)
}

async fn sign_in(
    state: &Arc<State>,
    headers: &HeaderMap,
    realm: &str,
    vdir: &str,
    wresult: Option<String>,
    wctx: Option<String>,
) -> Response<TestBody> {
    let referer = headers
        .get(REFERER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let issuer = state.config().adfs_issuer.to_ascii_lowercase();
    let refused_referer = match &referer {
        None => Some(Refusal::RefererMissing),
        Some(r) if !r.to_ascii_lowercase().starts_with(&issuer) => {
            Some(Refusal::RefererNotIssuer { referer: r.clone() })
        }
        Some(_) => None,
    };
    if let Some(refusal) = refused_referer {
        state
            .checks
            .lock()
            .unwrap()
            .push(TokenCheck::Refused(refusal));
        // ASP.NET request validation: a form field holding `<` from an unknown Referer.
        return respond(
            StatusCode::INTERNAL_SERVER_ERROR,
            "A potentially dangerous Request.Form value was detected from the client (wresult)",
        );
    }

    let verdict = {
        let config = state.config();
        let realm = realm.to_owned();
        let now = now(state);
        tokio::task::spawn_blocking(move || check_token(&config, &realm, now, wresult))
            .await
            .unwrap()
    };
    match verdict {
        Ok(accepted) => {
            let mut sessions = state.sessions.lock().unwrap();
            // The same user signing in to another virtual directory keeps one cookie.
            let existing = session_cookie(headers).filter(|c| {
                sessions
                    .get(c)
                    .is_some_and(|s| s.upn == accepted.upn && s.sid == accepted.sid)
            });
            let cookie = match existing {
                Some(cookie) => {
                    if let Some(session) = sessions.get_mut(&cookie) {
                        session.vdirs.push(vdir.to_owned());
                    }
                    cookie
                }
                None => {
                    let cookie = random_hex();
                    sessions.insert(
                        cookie.clone(),
                        Session {
                            upn: accepted.upn.clone(),
                            sid: accepted.sid.clone(),
                            vdirs: vec![vdir.to_owned()],
                        },
                    );
                    cookie
                }
            };
            drop(sessions);
            state.checks.lock().unwrap().push(TokenCheck::Accepted {
                upn: accepted.upn,
                sid: accepted.sid,
                assertion_id: accepted.assertion_id,
                audience: accepted.audience,
            });
            let location = wctx
                .as_deref()
                .and_then(return_path)
                .unwrap_or_else(|| format!("{vdir}/"));
            redirect(
                &location,
                Some(format!(
                    "{ADFS_AUTH_COOKIE}={cookie}; path=/; secure; HttpOnly"
                )),
            )
        }
        Err(refusal) => {
            let location = match refusal {
                // Exchange cancels the token and starts a new sign-in.
                Refusal::AuthenticationTooOld { .. } => {
                    sign_in_location(state, realm, &format!("{vdir}/"))
                }
                // The error page lives in OWA, whichever virtual directory was signed in to.
                _ => format!("/owa/auth/errorfe.aspx?msg={}", refusal.error_message()),
            };
            state
                .checks
                .lock()
                .unwrap()
                .push(TokenCheck::Refused(refusal));
            redirect(&location, None)
        }
    }
}

/// `ru` of the echoed `wctx`, if it is a path on this server.
fn return_path(wctx: &str) -> Option<String> {
    let ru = url::form_urlencoded::parse(wctx.as_bytes())
        .find(|(k, _)| k == "ru")
        .map(|(_, v)| v.into_owned())?;
    let local = ru.starts_with('/') && !ru.starts_with("//") && !ru.starts_with("/\\");
    local.then_some(ru)
}

fn in_vdir(path: &str, vdir: &str) -> bool {
    let path = path.to_ascii_lowercase();
    let vdir = vdir.to_ascii_lowercase();
    path == vdir || path.starts_with(&format!("{vdir}/"))
}

fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == ADFS_AUTH_COOKIE)
        .map(|(_, value)| value.to_owned())
}

fn clear_cookie() -> String {
    format!("{ADFS_AUTH_COOKIE}=; path=/; expires=Thu, 01 Jan 1970 00:00:00 GMT; max-age=0")
}

fn now(state: &State) -> i64 {
    let system = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    system + state.clock_offset.load(Ordering::SeqCst)
}

fn with_query(base: &str, query: &str) -> String {
    let separator = if base.contains('?') { '&' } else { '?' };
    format!("{base}{separator}{query}")
}

/// .NET's `HttpUtility.UrlEncode`: unreserved `A-Za-z0-9-_.!*()`, space as `+`, the rest
/// `%xx` in lowercase.
pub fn dotnet_url_encode(value: &str) -> String {
    let mut out = String::new();
    for b in value.bytes() {
        match b {
            b'A'..=b'Z'
            | b'a'..=b'z'
            | b'0'..=b'9'
            | b'-'
            | b'_'
            | b'.'
            | b'!'
            | b'*'
            | b'('
            | b')' => out.push(char::from(b)),
            b' ' => out.push('+'),
            b => out.push_str(&format!("%{b:02x}")),
        }
    }
    out
}

fn redirect(location: &str, cookie: Option<String>) -> Response<TestBody> {
    let mut builder = Response::builder()
        .status(StatusCode::FOUND)
        .header(LOCATION, location);
    if let Some(cookie) = cookie {
        builder = builder.header(SET_COOKIE, cookie);
    }
    builder.body(full("")).unwrap()
}

fn respond(status: StatusCode, body: &str) -> Response<TestBody> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .body(full(body.to_owned()))
        .unwrap()
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn random_hex() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
