//! Publishing Outlook on the web and the Exchange Control Panel in place of Web Application
//! Proxy (issue 4), on real sockets with real RS256 tokens from the test OpenID provider: what
//! a mailbox user, an Exchange administrator and an attacker see. Route policy (groups, a
//! step-up to a fresh sign-in on ECP), sign-out through Exchange's own logoff pages and Entra's
//! front-channel logout, the virtual directories that stay closed, header and cookie hygiene
//! toward Exchange, long polls and large uploads, `Location` rewriting, and the hardening of
//! every page the gateway answers itself.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{CACHE_CONTROL, COOKIE, LOCATION, SET_COOKIE, STRICT_TRANSPORT_SECURITY};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use mfa_gateway::demo::provider::GROUP_EXCHANGE_ADMINS;
use mfa_gateway::demo::{parse_form_post, sign_in_form, Forgery, ProviderEndpoint, TestProvider};
use support::{
    full, plain_client, random_session_key, read_reply, start_provider, Browser, FakeExchange,
    Recorded, Reply, SetCookie, TestBody, TestClock, TestGateway, TestPki, CLIENT_ID,
    CLIENT_SECRET, MAIL_HOST, NAVIGATION, SESSION_COOKIE, XHR,
};

/// The upstream's name in the configuration: an internal name no page may show.
const UPSTREAM: &str = "exchange-dag1";
/// A deep link into OWA with a query, as a link in a mail opens it.
const OWA_DEEP_LINK: &str = "/owa/?exsvurl=1&ll-cc=1033&modurl=0&path=/mail/inbox";
/// The JavaScript-readable canary OWA sets and echoes in headers and query strings.
const CANARY: &str = "Xq7vN2mB0kS4yW9eR1tU3iO5pA8sD6fG.Hj2Kl4Zx6Cv8Bn0Mq1We3Rt5Yu7Io9P";
/// What Exchange answers a sign-out with: its Forms-auth cookies cleared.
const EXCHANGE_CLEARS: [&str; 3] = [
    "cadata=; expires=Thu, 01-Jan-1970 00:00:00 GMT; path=/; secure; HttpOnly",
    "cadataKey=; expires=Thu, 01-Jan-1970 00:00:00 GMT; path=/; secure; HttpOnly",
    "cadataSig=; expires=Thu, 01-Jan-1970 00:00:00 GMT; path=/; secure; HttpOnly",
];
/// How long OWA's notification long poll is held open by Exchange in the test (in the slow
/// suite: `cargo test` skips it, CI runs it with `--ignored`).
const LONG_POLL: Duration = Duration::from_secs(25);
/// A large attachment: more than OWA's default 35,000,000-byte limit.
const UPLOAD_BYTES: usize = 40_000_000;

/// A "Sign out" link clicked on the site itself: the browser says `Sec-Fetch-Site: same-origin`.
const SIGN_OUT_LINK: &[(&str, &str)] = &[
    ("accept", "text/html"),
    ("sec-fetch-mode", "navigate"),
    ("sec-fetch-site", "same-origin"),
];

const NO_ACCESS: &str = "You do not have access to this page";
const OVERAGE: &str = "Group membership could not be checked";
const NOT_FOUND: &str = "Page not found";

// ---------------------------------------------------------------------------------------------
// Fixture

#[derive(Default, Clone, Copy)]
struct Setup {
    /// `/ecp` requires membership of the Exchange administrators group.
    ecp_admins_only: bool,
    /// Listen for HTTPS (with a certificate for mail.contoso.com) instead of plain HTTP.
    tls: bool,
    /// Believe X-Forwarded-* from 127.0.0.1: a load balancer terminating TLS in front.
    behind_load_balancer: bool,
}

/// A provider, a fake Exchange that answers like OWA/ECP where it matters, and a gateway
/// publishing both, with a clock the test moves.
struct World {
    provider: TestProvider,
    exchange: FakeExchange,
    clock: TestClock,
    gateway: TestGateway,
    session_key: String,
    pki: Option<TestPki>,
}

async fn world(setup: Setup) -> World {
    let provider = start_provider().await;
    let own_address: Arc<OnceLock<SocketAddr>> = Arc::new(OnceLock::new());
    let exchange = {
        let own_address = own_address.clone();
        FakeExchange::builder("ex01")
            .handler(move |request| exchange_answers(request, own_address.clone()))
            .start()
            .await
    };
    own_address
        .set(exchange.addr)
        .expect("the address is set once");
    let pki = setup.tls.then(TestPki::new);
    let session_key = random_session_key();
    let toml = gateway_toml(&provider, &exchange, &session_key, setup, pki.as_ref());
    let clock = TestClock::new();
    let gateway = TestGateway::start_with_clock(&toml, clock.clock()).await;
    gateway.wait_ready().await;
    World {
        provider,
        exchange,
        clock,
        gateway,
        session_key,
        pki,
    }
}

/// The configuration an administrator replacing WAP writes (config/gateway.example.toml):
/// OWA and ECP behind MFA, ECP with a one-hour `max_auth_age`, health probes public.
fn gateway_toml(
    provider: &TestProvider,
    exchange: &FakeExchange,
    session_key: &str,
    setup: Setup,
    pki: Option<&TestPki>,
) -> String {
    let mut server = String::from("[server]\n");
    let mut certificates = String::new();
    match pki {
        Some(pki) => {
            server.push_str("https_listen = \"127.0.0.1:0\"\n");
            let cert = pki.issue(&[MAIL_HOST]);
            certificates = format!(
                "[[tls.certificates]]\ncert = \"{}\"\nkey = \"{}\"\n",
                cert.cert.display(),
                cert.key.display()
            );
        }
        None => server.push_str("http_listen = \"127.0.0.1:0\"\n"),
    }
    if setup.behind_load_balancer {
        server.push_str("trusted_proxies = [\"127.0.0.1\"]\n");
    }
    let ecp_groups = if setup.ecp_admins_only {
        format!("groups_any_of = [\"{GROUP_EXCHANGE_ADMINS}\"]\n")
    } else {
        String::new()
    };
    format!(
        r#"{server}
{certificates}
[oidc]
issuer = "{issuer}"
client_id = "{CLIENT_ID}"
client_secret = {{ value = "{CLIENT_SECRET}" }}

[session]
keys = [{{ value = "{session_key}" }}]

[upstreams.{UPSTREAM}]
servers = ["{exchange}"]
health_check = {{ path = "/owa/healthcheck.htm", interval = "2s", timeout = "1s" }}

[[routes]]
host = "{MAIL_HOST}"
path = "/owa"
upstream = "{UPSTREAM}"
access = "mfa"
unauthenticated_status = 440

[[routes]]
host = "{MAIL_HOST}"
path = "/ecp"
upstream = "{UPSTREAM}"
access = "mfa"
max_auth_age = "1h"
{ecp_groups}
[[routes]]
host = "{MAIL_HOST}"
path = "/owa/healthcheck.htm"
upstream = "{UPSTREAM}"
access = "public"

[[routes]]
host = "{MAIL_HOST}"
path = "/ecp/healthcheck.htm"
upstream = "{UPSTREAM}"
access = "public"
"#,
        issuer = provider.issuer(),
        exchange = exchange.url(),
    )
}

/// Exchange's answers: OWA's and ECP's sign-out pages clear the Forms-auth cookies, OWA's
/// start page sets the canary, the notification long poll is held open, an attachment upload
/// is counted, two pages redirect (to Exchange's own address, and to Exchange Online for a
/// mailbox already moved there); everything else is `ex01 <path>`.
async fn exchange_answers(
    request: Request<Incoming>,
    own_address: Arc<OnceLock<SocketAddr>>,
) -> Response<TestBody> {
    let path = request.uri().path().to_owned();
    let mut response = Response::builder();
    match path.to_ascii_lowercase().as_str() {
        "/owa/logoff.owa" => {
            for clear in EXCHANGE_CLEARS {
                response = response.header(SET_COOKIE, clear);
            }
            return response
                .body(full("ex01 signed out of OWA"))
                .expect("response");
        }
        "/ecp/logoff.aspx" => {
            for clear in EXCHANGE_CLEARS {
                response = response.header(SET_COOKIE, clear);
            }
            return response
                .status(StatusCode::FOUND)
                .header(LOCATION, "/owa/logoff.owa")
                .body(full(""))
                .expect("response");
        }
        "/owa/" => {
            response =
                response.header(SET_COOKIE, format!("X-OWA-CANARY={CANARY}; path=/; secure"));
        }
        "/owa/ev.owa2" => {
            // Exchange holding the notification long poll open is the behaviour under test.
            tokio::time::sleep(LONG_POLL).await;
            return response
                .header("content-type", "application/json")
                .body(full("{\"notifications\":[\"NewMail\"]}"))
                .expect("response");
        }
        "/owa/service.svc" if request.method() == Method::POST => {
            let mut body = request.into_body();
            let mut received: u64 = 0;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(frame) => {
                        if let Some(data) = frame.data_ref() {
                            received += data.len() as u64;
                        }
                    }
                    Err(e) => {
                        return response
                            .status(StatusCode::BAD_REQUEST)
                            .body(full(format!("upload broke after {received} bytes: {e}")))
                            .expect("response")
                    }
                }
            }
            return response.body(full(received.to_string())).expect("response");
        }
        "/owa/go-internal" => {
            let own = own_address.get().expect("own address known");
            return response
                .status(StatusCode::FOUND)
                .header(LOCATION, format!("http://{own}/owa/auth/x"))
                .body(full(""))
                .expect("response");
        }
        "/owa/go-cloud" => {
            return response
                .status(StatusCode::FOUND)
                .header(LOCATION, "https://outlook.office.com/mail/")
                .body(full(""))
                .expect("response");
        }
        _ => {}
    }
    response
        .body(full(format!("ex01 {path}")))
        .expect("response")
}

impl World {
    fn http(&self) -> SocketAddr {
        self.gateway.http.expect("plain HTTP listener")
    }

    fn browser(&self) -> Browser {
        Browser::new(self.http())
    }

    fn origin(&self) -> String {
        format!("http://{MAIL_HOST}:{}", self.http().port())
    }

    /// A client that talks to the gateway directly, sending only the headers it is given: no
    /// cookie jar, no redirects followed.
    fn raw_client(&self, timeout: Duration) -> reqwest::Client {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .resolve(MAIL_HOST, self.http())
            .http1_only()
            .build()
            .expect("client")
    }

    /// Requests to `/ecp` that reached Exchange.
    fn ecp_requests(&self) -> Vec<Recorded> {
        self.exchange
            .user_requests()
            .into_iter()
            .filter(|r| r.uri.to_ascii_lowercase().starts_with("/ecp"))
            .collect()
    }

    /// Strings no page of the gateway may contain: secrets from the configuration, the
    /// upstream's address and name, and every authorization code, PKCE verifier and cookie
    /// value handed out so far.
    fn secrets(&self, browsers: &[&Browser]) -> Vec<String> {
        let mut secrets = vec![
            CLIENT_SECRET.to_owned(),
            self.session_key.clone(),
            self.exchange.addr.to_string(),
            UPSTREAM.to_owned(),
        ];
        for call in self.provider.calls_to(ProviderEndpoint::Token) {
            for name in ["code", "code_verifier", "client_secret"] {
                if let Some(value) = call.param(name) {
                    secrets.push(value.to_owned());
                }
            }
        }
        for browser in browsers {
            for cookie in &browser.cookie_log {
                if cookie.value.len() >= 16 {
                    secrets.push(cookie.value.clone());
                }
            }
        }
        secrets
    }

    /// A page (or redirect) the gateway answered itself says nothing it should not: no token,
    /// code, cookie value, secret, upstream address or internal name, in the body or Location.
    fn assert_clean(&self, reply: &Reply, browsers: &[&Browser]) {
        assert_page_is_clean(reply, &self.secrets(browsers));
    }

    /// Navigates to `path` and expects to be sent to the provider to sign in, without Exchange
    /// seeing anything.
    async fn assert_sent_to_sign_in(&self, browser: &mut Browser, path: &str) -> Reply {
        let before = self.exchange.user_requests().len();
        let page = browser.navigate(path).await;
        assert_eq!(page.status, StatusCode::FOUND, "{}", page.describe());
        assert!(
            page.location()
                .is_some_and(|l| l.starts_with(&self.provider.authorization_endpoint())),
            "a page load without a usable session goes to sign in: {}",
            page.describe()
        );
        assert_eq!(
            self.exchange.user_requests().len(),
            before,
            "Exchange must not see a request without a usable session"
        );
        self.assert_clean(&page, &[browser]);
        page
    }
}

fn assert_page_is_clean(reply: &Reply, secrets: &[String]) {
    let location = reply.location().unwrap_or_default();
    for secret in secrets {
        assert!(
            !reply.body.contains(secret.as_str()) && !location.contains(secret.as_str()),
            "a gateway page shows {secret:?}: {}",
            reply.describe()
        );
    }
    assert!(
        !reply.body.contains("eyJ"),
        "a gateway page shows what looks like a JWT: {}",
        reply.describe()
    );
}

fn assert_no_store(reply: &Reply, what: &str) {
    let cache = reply
        .headers
        .get(CACHE_CONTROL)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(
        cache
            .split(',')
            .any(|d| d.trim().eq_ignore_ascii_case("no-store")),
        "{what}: a gateway page must carry Cache-Control: no-store: {}",
        reply.describe()
    );
}

fn assert_hsts(reply: &Reply, what: &str) {
    let value = reply
        .headers
        .get(STRICT_TRANSPORT_SECURITY)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| {
            panic!(
                "{what}: no Strict-Transport-Security over HTTPS: {}",
                reply.describe()
            )
        });
    let max_age: u64 = value
        .split(';')
        .find_map(|d| d.trim().strip_prefix("max-age="))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{what}: HSTS without max-age: {value}"));
    assert!(
        max_age >= 31_536_000,
        "{what}: HSTS must last at least a year, got {value}"
    );
}

fn query_param(url: &str, name: &str) -> Option<String> {
    url::Url::parse(url)
        .ok()?
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// The provider's clock moves with the gateway's: the next ID token is issued, and the user
/// authenticated, at the time the gateway believes it is.
fn provider_signs_in_at(provider: &TestProvider, now: u64) {
    provider
        .forge_next(
            Forgery::default()
                .claim("iat", now)
                .claim("nbf", now)
                .claim("exp", now + 3600)
                .claim("auth_time", now),
        )
        .expect("forgery queued");
}

fn header_values(headers: &http::HeaderMap, name: impl http::header::AsHeaderName) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect()
}

/// No request Exchange ever received carried one of the gateway's cookies.
fn assert_exchange_never_saw_gateway_cookies(exchange: &FakeExchange) {
    for request in exchange.requests() {
        for cookie in header_values(&request.headers, COOKIE) {
            assert!(
                !cookie.contains(SESSION_COOKIE),
                "Exchange received a gateway cookie on {}: {cookie}",
                request.uri
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 1. OWA with MFA

#[tokio::test]
async fn owa_deep_link_opens_after_an_mfa_sign_in_and_exchange_receives_it() {
    let w = world(Setup::default()).await;
    let mut browser = w.browser();

    let first = w.assert_sent_to_sign_in(&mut browser, OWA_DEEP_LINK).await;
    assert_no_store(&first, "redirect to sign in");
    let authorize = first.location().unwrap().to_owned();
    assert_eq!(
        query_param(&authorize, "redirect_uri").as_deref(),
        Some(format!("{}/_gateway/callback", w.origin()).as_str())
    );
    assert!(
        w.exchange.user_requests().is_empty(),
        "nothing reaches Exchange before the sign-in"
    );

    let callback = browser.sign_in_at_provider(&authorize, "alice", true).await;
    let landed = browser.deliver(&callback).await;
    assert_eq!(landed.status, StatusCode::FOUND, "{}", landed.describe());
    assert_eq!(
        landed.location(),
        Some(OWA_DEEP_LINK),
        "the sign-in returns to the page asked for, query included"
    );
    assert!(
        landed.new_session_cookie().is_some(),
        "{}",
        landed.describe()
    );
    w.assert_clean(&landed, &[&browser]);

    let page = browser.navigate(OWA_DEEP_LINK).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.describe());
    assert_eq!(page.body, "ex01 /owa/");
    let received = w.exchange.user_requests();
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(received[0].uri, OWA_DEEP_LINK);
    assert_eq!(
        received[0]
            .headers
            .get("host")
            .and_then(|v| v.to_str().ok()),
        Some(format!("{MAIL_HOST}:{}", w.http().port()).as_str()),
        "Exchange needs the public Host"
    );
    assert_exchange_never_saw_gateway_cookies(&w.exchange);
}

// ---------------------------------------------------------------------------------------------
// 2. ECP restricted to a group

#[tokio::test]
async fn ecp_restricted_to_admins_refuses_a_non_member_without_reaching_exchange() {
    let w = world(Setup {
        ecp_admins_only: true,
        ..Setup::default()
    })
    .await;

    // bob signs in with MFA but is in no group.
    let mut bob = w.browser();
    bob.sign_in_ok("/ecp/", &w.provider, "bob").await;
    let refused = bob.navigate("/ecp/").await;
    assert_eq!(
        refused.status,
        StatusCode::FORBIDDEN,
        "{}",
        refused.describe()
    );
    assert!(
        refused.location().is_none(),
        "no redirect loop: {}",
        refused.describe()
    );
    assert!(refused.body.contains(NO_ACCESS), "{}", refused.body);
    assert_no_store(&refused, "403 page");
    w.assert_clean(&refused, &[&bob]);
    let deeper = bob.navigate("/ecp/PersonalSettings/HomePage.aspx").await;
    assert_eq!(
        deeper.status,
        StatusCode::FORBIDDEN,
        "{}",
        deeper.describe()
    );
    assert!(
        w.ecp_requests().is_empty(),
        "Exchange must never see bob's /ecp requests: {:?}",
        w.ecp_requests()
    );
    // The group rule is ECP's only: his mailbox stays open to him.
    let mailbox = bob.navigate("/owa/").await;
    assert_eq!(mailbox.status, StatusCode::OK, "{}", mailbox.describe());

    // carol is in both groups, but in so many that Entra sends the overage marker.
    let mut carol = w.browser();
    carol.sign_in_ok("/ecp/", &w.provider, "carol").await;
    let unknown = carol.navigate("/ecp/").await;
    assert_eq!(
        unknown.status,
        StatusCode::FORBIDDEN,
        "{}",
        unknown.describe()
    );
    assert!(unknown.body.contains(OVERAGE), "{}", unknown.body);
    assert!(
        !unknown.body.contains(NO_ACCESS),
        "the overage page says membership could not be checked, not that she is no member"
    );
    w.assert_clean(&unknown, &[&carol]);
    assert!(w.ecp_requests().is_empty(), "{:?}", w.ecp_requests());

    // alice is an Exchange administrator.
    let mut alice = w.browser();
    alice.sign_in_ok("/ecp/", &w.provider, "alice").await;
    let admin = alice.navigate("/ecp/").await;
    assert_eq!(admin.status, StatusCode::OK, "{}", admin.describe());
    assert_eq!(admin.body, "ex01 /ecp/");
    assert_eq!(w.ecp_requests().len(), 1, "{:?}", w.ecp_requests());
    assert_exchange_never_saw_gateway_cookies(&w.exchange);
}

// ---------------------------------------------------------------------------------------------
// 3. ECP step-up

#[tokio::test]
async fn ecp_asks_for_a_fresh_sign_in_after_an_hour_and_returns_to_ecp() {
    let w = world(Setup::default()).await;
    let mut alice = w.browser();
    alice.sign_in_ok("/owa/", &w.provider, "alice").await;
    assert_eq!(alice.navigate("/owa/").await.status, StatusCode::OK);

    // She keeps reading mail for an hour and a minute.
    w.clock.advance(Duration::from_secs(40 * 60));
    let page = alice.navigate("/owa/").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.describe());
    w.clock.advance(Duration::from_secs(21 * 60));
    let page = alice.navigate("/owa/").await;
    assert_eq!(
        page.status,
        StatusCode::OK,
        "OWA (12 h) still accepts a 61-minute-old sign-in: {}",
        page.describe()
    );

    // ECP wants a sign-in less than an hour old.
    let step_up = w.assert_sent_to_sign_in(&mut alice, "/ecp/").await;
    assert_no_store(&step_up, "step-up redirect");
    let authorize = step_up.location().unwrap().to_owned();
    assert_eq!(query_param(&authorize, "prompt").as_deref(), Some("login"));
    assert_eq!(query_param(&authorize, "max_age").as_deref(), Some("3600"));
    assert!(w.ecp_requests().is_empty(), "{:?}", w.ecp_requests());

    // She signs in again at Entra (whose clock agrees with the gateway's).
    provider_signs_in_at(&w.provider, w.clock.now());
    let callback = alice.sign_in_at_provider(&authorize, "alice", true).await;
    let back = alice.deliver(&callback).await;
    assert_eq!(back.status, StatusCode::FOUND, "{}", back.describe());
    assert_eq!(back.location(), Some("/ecp/"), "the step-up returns to ECP");
    assert!(back.new_session_cookie().is_some(), "{}", back.describe());

    let ecp = alice.navigate("/ecp/").await;
    assert_eq!(
        ecp.status,
        StatusCode::OK,
        "after the fresh sign-in ECP lets her in: {}",
        ecp.describe()
    );
    assert_eq!(ecp.body, "ex01 /ecp/");
    assert_eq!(w.ecp_requests().len(), 1);
    let owa = alice.navigate("/owa/").await;
    assert_eq!(owa.status, StatusCode::OK, "{}", owa.describe());
}

// ---------------------------------------------------------------------------------------------
// 4. Sign-out

/// Signs alice in and opens OWA; returns her browser and her session cookie.
async fn signed_in_alice(w: &World) -> (Browser, String) {
    let mut alice = w.browser();
    alice.sign_in_ok("/owa/", &w.provider, "alice").await;
    let page = alice.navigate("/owa/").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.describe());
    let session = alice.cookie(SESSION_COOKIE).expect("signed in").to_owned();
    (alice, session)
}

/// The answer to a sign-out: the gateway session cleared and a redirect to Entra's
/// end-session endpoint that comes back to `/_gateway/signed-out`. Follows it as the browser
/// would, through the provider, to the signed-out page.
async fn assert_sign_out_goes_through_entra(w: &World, browser: &mut Browser, reply: &Reply) {
    assert_eq!(reply.status, StatusCode::FOUND, "{}", reply.describe());
    assert_no_store(reply, "sign-out redirect");
    w.assert_clean(reply, &[&*browser]);
    let cleared = reply
        .set_cookie(SESSION_COOKIE)
        .unwrap_or_else(|| panic!("the session cookie is cleared: {}", reply.describe()));
    assert!(cleared.is_removal(), "{}", cleared.raw);
    assert!(cleared.value.is_empty(), "{}", cleared.raw);
    assert!(browser.cookie(SESSION_COOKIE).is_none());

    let end_session = reply.location().unwrap().to_owned();
    assert!(
        end_session.starts_with(&w.provider.end_session_endpoint()),
        "the browser goes to Entra's end_session_endpoint: {end_session}"
    );
    let signed_out = format!("{}/_gateway/signed-out", w.origin());
    assert_eq!(
        query_param(&end_session, "post_logout_redirect_uri").as_deref(),
        Some(signed_out.as_str())
    );

    let logouts = w.provider.calls_to(ProviderEndpoint::Logout).len();
    let at_entra = read_reply(
        plain_client()
            .get(&end_session)
            .header("accept", "text/html")
            .send()
            .await
            .expect("provider answers"),
    )
    .await;
    let calls = w.provider.calls_to(ProviderEndpoint::Logout);
    assert_eq!(calls.len(), logouts + 1, "Entra's session ends too");
    assert_eq!(
        calls.last().unwrap().param("post_logout_redirect_uri"),
        Some(signed_out.as_str())
    );
    assert_eq!(
        at_entra.status,
        StatusCode::FOUND,
        "{}",
        at_entra.describe()
    );
    let back = at_entra.location().expect("back to the gateway").to_owned();
    assert!(back.starts_with(&signed_out), "{back}");

    let page = browser.navigate(&back).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.describe());
    assert!(page.body.contains("You have signed out"), "{}", page.body);
    assert_no_store(&page, "signed-out page");
    w.assert_clean(&page, &[&*browser]);
}

/// The old session cookie, replayed (copied before sign-out, say), reaches nothing.
async fn assert_session_is_dead(w: &World, session: &str) {
    let before = w.exchange.user_requests().len();
    let mut replay = w.browser();
    replay.set_cookie(SESSION_COOKIE, session);
    w.assert_sent_to_sign_in(&mut replay, "/owa/").await;
    let script = replay.xhr("/owa/service.svc?action=GetFolder").await;
    assert_eq!(script.status.as_u16(), 440, "{}", script.describe());
    assert!(script.location().is_none());
    let ecp = replay.navigate("/ecp/").await;
    assert_eq!(ecp.status, StatusCode::FOUND, "{}", ecp.describe());
    assert_eq!(
        w.exchange.user_requests().len(),
        before,
        "a signed-out session must not reach Exchange"
    );
}

async fn exchange_logoff_ends_both_sessions(logoff: &str) {
    let w = world(Setup::default()).await;
    let (mut alice, session) = signed_in_alice(&w).await;
    let before = w.exchange.user_requests().len();

    let reply = alice.navigate(logoff).await;

    let received = w.exchange.user_requests();
    assert_eq!(
        received.len(),
        before + 1,
        "Exchange receives its own sign-out"
    );
    assert_eq!(received.last().unwrap().uri, logoff);
    let passed_back = header_values(&reply.headers, SET_COOKIE);
    for clear in EXCHANGE_CLEARS {
        assert!(
            passed_back.iter().any(|c| c == clear),
            "Exchange's {clear:?} must reach the browser unchanged: {passed_back:?}"
        );
    }
    assert_sign_out_goes_through_entra(&w, &mut alice, &reply).await;
    assert_session_is_dead(&w, &session).await;
    assert_exchange_never_saw_gateway_cookies(&w.exchange);
}

#[tokio::test]
async fn owa_logoff_signs_out_of_exchange_the_gateway_and_entra() {
    exchange_logoff_ends_both_sessions("/owa/logoff.owa").await;
}

#[tokio::test]
async fn ecp_logoff_signs_out_of_exchange_the_gateway_and_entra() {
    exchange_logoff_ends_both_sessions("/ecp/logoff.aspx").await;
}

#[tokio::test]
async fn gateway_logout_ends_the_session_and_entras_without_exchange() {
    let w = world(Setup::default()).await;
    let (mut alice, session) = signed_in_alice(&w).await;
    let before = w.exchange.user_requests().len();

    let reply = alice
        .request(Method::GET, "/_gateway/logout", SIGN_OUT_LINK, None, false)
        .await;
    assert_eq!(
        w.exchange.user_requests().len(),
        before,
        "/_gateway/logout does not involve Exchange"
    );
    assert_sign_out_goes_through_entra(&w, &mut alice, &reply).await;
    assert_session_is_dead(&w, &session).await;
}

#[tokio::test]
async fn owa_sign_out_ends_the_gateway_session_even_when_exchange_cannot_be_reached() {
    let mut w = world(Setup::default()).await;
    let (mut alice, session) = signed_in_alice(&w).await;
    // Every Exchange server is gone; the user on a shared computer presses "Sign out".
    w.exchange.kill().await;

    let reply = alice.navigate("/owa/logoff.owa").await;
    assert_sign_out_goes_through_entra(&w, &mut alice, &reply).await;
    assert_session_is_dead(&w, &session).await;
}

#[tokio::test]
async fn ecp_sign_out_works_when_the_sign_in_is_too_old_for_ecp_itself() {
    let w = world(Setup::default()).await;
    let (mut alice, session) = signed_in_alice(&w).await;
    // In ECP at 59 minutes, she presses "Sign out" at 61: still fine for OWA, too old for ECP.
    w.clock.advance(Duration::from_secs(40 * 60));
    assert_eq!(alice.navigate("/owa/").await.status, StatusCode::OK);
    w.clock.advance(Duration::from_secs(21 * 60));
    assert_eq!(alice.navigate("/owa/").await.status, StatusCode::OK);

    // Signing out must not ask her to sign in again first: whoever sits down at the computer
    // next would find OWA open.
    let reply = alice.navigate("/ecp/logoff.aspx").await;
    assert_sign_out_goes_through_entra(&w, &mut alice, &reply).await;
    assert_session_is_dead(&w, &session).await;
}

// ---------------------------------------------------------------------------------------------
// 5. Front-channel logout

#[tokio::test]
async fn front_channel_logout_by_sid_alone_ends_that_sign_in_and_no_other() {
    let w = world(Setup::default()).await;
    let (mut alice, alice_session) = signed_in_alice(&w).await;
    let mut bob = w.browser();
    bob.sign_in_ok("/owa/", &w.provider, "bob").await;
    assert_eq!(bob.navigate("/owa/").await.status, StatusCode::OK);
    let sid = w
        .provider
        .last_sid("alice")
        .expect("alice's sign-in has a sid");
    assert_ne!(Some(sid.clone()), w.provider.last_sid("bob"));

    // Entra calls the logout URL in a hidden frame; third-party cookie blocking stripped
    // every cookie.
    let url = format!(
        "{}/_gateway/frontchannel-logout?sid={}",
        w.origin(),
        url::form_urlencoded::byte_serialize(sid.as_bytes()).collect::<String>()
    );
    let reply = read_reply(
        w.raw_client(Duration::from_secs(10))
            .get(&url)
            .header("sec-fetch-dest", "iframe")
            .send()
            .await
            .expect("gateway answers"),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.describe());
    assert_no_store(&reply, "front-channel logout page");
    w.assert_clean(&reply, &[&alice, &bob]);

    // alice's browser still holds its cookie, but it no longer opens anything.
    assert_eq!(alice.cookie(SESSION_COOKIE), Some(alice_session.as_str()));
    let before = w.exchange.user_requests().len();
    w.assert_sent_to_sign_in(&mut alice, "/owa/").await;
    let script = alice.xhr("/owa/service.svc?action=GetFolder").await;
    assert_eq!(script.status.as_u16(), 440, "{}", script.describe());
    assert_eq!(w.exchange.user_requests().len(), before);

    // bob's sign-in is another one: untouched.
    let page = bob.navigate("/owa/").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.describe());
    assert_eq!(page.body, "ex01 /owa/");

    // alice signs in again (a new Entra sign-in) and is back in.
    alice.sign_in_ok("/owa/", &w.provider, "alice").await;
    let page = alice.navigate("/owa/").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.describe());
}

// ---------------------------------------------------------------------------------------------
// 6. Closed virtual directories

#[tokio::test]
async fn ews_mapi_activesync_powershell_rpc_oab_and_autodiscover_stay_closed_even_when_signed_in() {
    let w = world(Setup::default()).await;
    let (mut alice, _) = signed_in_alice(&w).await;
    let before = w.exchange.user_requests().len();
    let rpc_in_data = Method::from_bytes(b"RPC_IN_DATA").unwrap();
    let closed: Vec<(Method, &str)> = vec![
        (Method::GET, "/EWS/Exchange.asmx"),
        (Method::POST, "/EWS/Exchange.asmx"),
        (Method::GET, "/ews/exchange.asmx"),
        (Method::POST, "/mapi/emsmdb/?MailboxId=alice@contoso.com"),
        (Method::GET, "/mapi/emsmdb/"),
        (
            Method::POST,
            "/Microsoft-Server-ActiveSync?Cmd=Sync&User=alice",
        ),
        (Method::OPTIONS, "/Microsoft-Server-ActiveSync"),
        (Method::GET, "/PowerShell"),
        (Method::POST, "/PowerShell/?PSVersion=5.1"),
        (rpc_in_data, "/rpc/rpcproxy.dll?ex01.corp.contoso.com:6001"),
        (Method::GET, "/rpc/rpcproxy.dll"),
        (Method::GET, "/OAB/"),
        (Method::GET, "/Autodiscover/Autodiscover.xml"),
        (Method::POST, "/Autodiscover/Autodiscover.xml"),
    ];
    for (method, path) in closed {
        let reply = alice
            .request(method.clone(), path, NAVIGATION, None, false)
            .await;
        assert_eq!(
            reply.status,
            StatusCode::NOT_FOUND,
            "{method} {path}: {}",
            reply.describe()
        );
        assert!(reply.body.contains(NOT_FOUND), "{}", reply.body);
        assert!(reply.location().is_none(), "{}", reply.describe());
        assert_no_store(&reply, path);
        assert!(
            reply.headers.get(STRICT_TRANSPORT_SECURITY).is_none(),
            "no HSTS over plain HTTP"
        );
        w.assert_clean(&reply, &[&alice]);
    }
    // Without a session they are not a reason to sign in either: simply not there.
    let mut stranger = w.browser();
    let reply = stranger.navigate("/EWS/Exchange.asmx").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "{}", reply.describe());
    // Nor can a path under /owa be bent into one.
    for sneaky in ["/owa/..%5cEWS/Exchange.asmx", "/owa/..%5C..%5Cmapi/emsmdb/"] {
        let reply = alice.navigate(sneaky).await;
        assert!(
            reply.status == StatusCode::NOT_FOUND || reply.status == StatusCode::BAD_REQUEST,
            "{sneaky}: {}",
            reply.describe()
        );
    }
    assert_eq!(
        w.exchange.user_requests().len(),
        before,
        "Exchange must record nothing: {:?}",
        &w.exchange.user_requests()[before..]
    );
}

// ---------------------------------------------------------------------------------------------
// 7. Header and cookie hygiene

#[tokio::test]
async fn exchange_never_sees_gateway_cookies_or_spoofed_identity_but_gets_its_own_cookies_intact() {
    let w = world(Setup::default()).await;
    let (alice, session) = signed_in_alice(&w).await;
    // Exchange set its canary on the first page of the session: the gateway bound Exchange's
    // cookies to this session, so the ones the browser now holds reach Exchange.
    let binding_name = format!("{SESSION_COOKIE}-exchange");
    let binding = alice
        .cookie(&binding_name)
        .expect("Exchange set an identity cookie under this session: bound")
        .to_owned();
    // A real pending-login cookie, from a sign-in started in another tab.
    let mut tab = w.browser();
    let _ = tab.start_sign_in("/owa/?tab=2", &w.provider).await;
    let login_name = tab.login_cookies().pop().expect("a pending login");
    let login_value = tab.cookie(&login_name).unwrap().to_owned();

    let exchange_cookies = [
        format!("X-OWA-CANARY={CANARY}"),
        "cadata=\"2Fh+Xy/Qk8LmNp0RsTuVwX1yZ3aBcDeFgHiJkLmNoPq=\"".to_owned(),
        "cadataKey=Zm9vYmFyYmF6cXV4+/==".to_owned(),
        "ClientId=9C3A5F1E2B4D4E6F8A0B1C2D3E4F5A6B".to_owned(),
        "PrivateComputer=true".to_owned(),
    ];
    let cookie_header = format!(
        "{SESSION_COOKIE}={session}; {}; {}; {login_name}={login_value}; {}; {binding_name}={binding}; {}; {}",
        exchange_cookies[0],
        exchange_cookies[1],
        exchange_cookies[2],
        exchange_cookies[3],
        exchange_cookies[4]
    );
    let spoofed = [
        ("X-Remote-User", "CONTOSO\\administrator"),
        ("X-MS-CLIENT-PRINCIPAL-NAME", "administrator@contoso.com"),
        ("X-MS-CLIENT-PRINCIPAL", "eyJhdXRoX3R5cCI6ImFhZCJ9"),
        ("X-Forwarded-User", "administrator@contoso.com"),
        ("Remote-User", "administrator"),
        ("X-MFAGW-User", "administrator@contoso.com"),
        ("X-MFAGW-Groups", GROUP_EXCHANGE_ADMINS),
        ("X-Mfagw-Mfa", "true"),
    ];
    let before = w.exchange.user_requests().len();
    let mut request = w
        .raw_client(Duration::from_secs(10))
        .get(format!("{}/owa/service.svc?action=GetFolder", w.origin()))
        .header("cookie", &cookie_header)
        .header("x-owa-canary", CANARY)
        .header("x-requested-with", "XMLHttpRequest");
    for (name, value) in spoofed {
        request = request.header(name, value);
    }
    let reply = read_reply(request.send().await.expect("gateway answers")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.describe());

    let received = w.exchange.user_requests();
    assert_eq!(received.len(), before + 1);
    let seen = received.last().unwrap();
    assert_eq!(
        header_values(&seen.headers, COOKIE),
        vec![exchange_cookies.join("; ")],
        "Exchange gets its own cookies byte for byte, in order, and none of the gateway's"
    );
    for (name, _) in spoofed {
        assert!(
            !seen.headers.contains_key(name),
            "the spoofed {name} reached Exchange: {:?}",
            seen.headers
        );
    }
    assert!(
        !seen
            .headers
            .keys()
            .any(|name| name.as_str().starts_with("x-mfagw-")),
        "{:?}",
        seen.headers
    );
    assert_eq!(
        seen.headers
            .get("x-owa-canary")
            .and_then(|v| v.to_str().ok()),
        Some(CANARY),
        "OWA's canary header is not an identity header: it passes"
    );

    // The canary Exchange sets is for OWA's script: it reaches the browser as Exchange sent it.
    let page = read_reply(
        w.raw_client(Duration::from_secs(10))
            .get(format!("{}/owa/", w.origin()))
            .header("cookie", format!("{SESSION_COOKIE}={session}"))
            .headers(navigation_headers())
            .send()
            .await
            .expect("gateway answers"),
    )
    .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.describe());
    let canary = format!("X-OWA-CANARY={CANARY}; path=/; secure");
    assert!(
        header_values(&page.headers, SET_COOKIE).contains(&canary),
        "the canary cookie must pass untouched (no HttpOnly added): {}",
        page.describe()
    );
    let parsed = SetCookie::parse(&canary).unwrap();
    assert!(!parsed.has("httponly"));
    assert_exchange_never_saw_gateway_cookies(&w.exchange);
}

#[tokio::test]
async fn over_http2_cookies_split_across_fields_reach_exchange_without_the_gateways() {
    let w = world(Setup {
        tls: true,
        ..Setup::default()
    })
    .await;
    let mut alice = TlsBrowser::new(&w);
    alice.sign_in_ok("/owa/", &w.provider, "alice").await;
    let session = alice.jar.get(SESSION_COOKIE).expect("signed in").0.clone();
    // The first page sets Exchange's canary, which binds Exchange's cookies to this session.
    let page = alice.navigate("/owa/").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.describe());
    let binding_name = format!("{SESSION_COOKIE}-exchange");
    let binding = alice
        .jar
        .get(&binding_name)
        .expect("Exchange's cookies bound to the session")
        .0
        .clone();
    let h2 = support::client(
        w.pki.as_ref().unwrap(),
        &[MAIL_HOST],
        w.gateway.https.unwrap(),
        true,
    );
    let before = w.exchange.user_requests().len();
    // Browsers send each cookie as its own `cookie` field over HTTP/2 (RFC 9113 8.2.3).
    let reply = read_reply(
        h2.get(format!("{}/owa/service.svc?action=GetFolder", alice.origin))
            .header("cookie", format!("X-OWA-CANARY={CANARY}"))
            .header("cookie", format!("{SESSION_COOKIE}={session}"))
            .header("cookie", "cadata=\"2Fh+Xy/Qk8LmNp0RsTuVwX1yZ3aB=\"")
            .header("cookie", format!("{binding_name}={binding}"))
            .headers(xhr_headers())
            .send()
            .await
            .expect("gateway answers"),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.describe());
    assert_hsts(&reply, "proxied over HTTP/2");
    let received = w.exchange.user_requests();
    assert_eq!(received.len(), before + 1);
    assert_eq!(
        header_values(&received[before].headers, COOKIE),
        vec![format!(
            "X-OWA-CANARY={CANARY}; cadata=\"2Fh+Xy/Qk8LmNp0RsTuVwX1yZ3aB=\""
        )],
        "one Cookie header toward Exchange, its cookies byte for byte, the gateway's gone"
    );
    assert_exchange_never_saw_gateway_cookies(&w.exchange);
}

fn navigation_headers() -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    for (name, value) in NAVIGATION {
        headers.insert(
            http::header::HeaderName::from_static(name),
            http::HeaderValue::from_static(value),
        );
    }
    headers
}

// ---------------------------------------------------------------------------------------------
// 8. Long polls and large uploads

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "slow: run by CI with --ignored"]
async fn owa_notification_long_poll_of_25_seconds_is_answered() {
    let w = world(Setup::default()).await;
    let (_alice, session) = signed_in_alice(&w).await;
    let started = Instant::now();
    let reply = read_reply(
        w.raw_client(Duration::from_secs(120))
            .get(format!(
                "{}/owa/ev.owa2?ns=PendingRequest&ev=PendingNotificationRequest&UA=0&cid=1",
                w.origin()
            ))
            .header("cookie", format!("{SESSION_COOKIE}={session}"))
            .headers(xhr_headers())
            .send()
            .await
            .expect("gateway answers"),
    )
    .await;
    let took = started.elapsed();
    eprintln!("long poll answered after {took:?}");
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.describe());
    assert_eq!(reply.body, "{\"notifications\":[\"NewMail\"]}");
    assert!(took >= LONG_POLL, "Exchange held it {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_megabyte_attachment_upload_reaches_exchange_whole() {
    let w = world(Setup::default()).await;
    let (_alice, session) = signed_in_alice(&w).await;
    let body: Vec<u8> = (0..UPLOAD_BYTES).map(|i| (i % 251) as u8).collect();
    let started = Instant::now();
    let reply = read_reply(
        w.raw_client(Duration::from_secs(300))
            .post(format!(
                "{}/owa/service.svc?action=CreateAttachmentFromLocalFile",
                w.origin()
            ))
            .header("cookie", format!("{SESSION_COOKIE}={session}"))
            .header("content-type", "application/octet-stream")
            .headers(xhr_headers())
            .body(Bytes::from(body))
            .send()
            .await
            .expect("gateway answers"),
    )
    .await;
    let took = started.elapsed();
    eprintln!("40 MB upload answered after {took:?}");
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.describe());
    assert_eq!(
        reply.body,
        UPLOAD_BYTES.to_string(),
        "bytes Exchange received"
    );
}

fn xhr_headers() -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    for (name, value) in XHR {
        headers.insert(
            http::header::HeaderName::from_static(name),
            http::HeaderValue::from_static(value),
        );
    }
    headers
}

// ---------------------------------------------------------------------------------------------
// 9. Location rewriting

#[tokio::test]
async fn exchange_redirect_to_its_own_address_is_rewritten_and_one_to_exchange_online_is_not() {
    let w = world(Setup::default()).await;
    let (mut alice, _) = signed_in_alice(&w).await;

    let internal = alice.navigate("/owa/go-internal").await;
    assert_eq!(
        internal.status,
        StatusCode::FOUND,
        "{}",
        internal.describe()
    );
    assert_eq!(
        internal.location(),
        Some(format!("{}/owa/auth/x", w.origin()).as_str()),
        "a redirect naming the Exchange server is rewritten to the public host (this listener \
         is plain HTTP)"
    );

    let cloud = alice.navigate("/owa/go-cloud").await;
    assert_eq!(cloud.status, StatusCode::FOUND, "{}", cloud.describe());
    assert_eq!(
        cloud.location(),
        Some("https://outlook.office.com/mail/"),
        "a mailbox moved to Exchange Online is sent there untouched"
    );
}

#[tokio::test]
async fn exchange_redirect_to_its_own_address_becomes_https_on_the_public_host_over_tls() {
    let w = world(Setup {
        tls: true,
        ..Setup::default()
    })
    .await;
    let mut alice = TlsBrowser::new(&w);
    alice.sign_in_ok("/owa/", &w.provider, "alice").await;

    let internal = alice.navigate("/owa/go-internal").await;
    assert_eq!(
        internal.status,
        StatusCode::FOUND,
        "{}",
        internal.describe()
    );
    assert_eq!(
        internal.location(),
        Some(format!("{}/owa/auth/x", alice.origin).as_str())
    );
    assert!(alice.origin.starts_with("https://"));
    assert_hsts(&internal, "proxied redirect");

    let cloud = alice.navigate("/owa/go-cloud").await;
    assert_eq!(cloud.location(), Some("https://outlook.office.com/mail/"));
}

#[tokio::test]
async fn behind_a_tls_terminating_load_balancer_the_rewritten_location_stays_https() {
    let w = world(Setup {
        behind_load_balancer: true,
        ..Setup::default()
    })
    .await;
    let (_alice, session) = signed_in_alice(&w).await;

    // The load balancer took the browser's HTTPS request for https://mail.contoso.com/ and
    // forwards it here, saying so in X-Forwarded-Proto.
    let reply = read_reply(
        w.raw_client(Duration::from_secs(10))
            .get(format!("{}/owa/go-internal", w.origin()))
            .header("host", MAIL_HOST)
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-for", "198.51.100.23")
            .header("cookie", format!("{SESSION_COOKIE}={session}"))
            .headers(navigation_headers())
            .send()
            .await
            .expect("gateway answers"),
    )
    .await;
    assert_eq!(reply.status, StatusCode::FOUND, "{}", reply.describe());
    assert_eq!(
        reply.location(),
        Some("https://mail.contoso.com/owa/auth/x"),
        "the browser is on HTTPS: a rewritten Location must not downgrade it to http://"
    );
}

// ---------------------------------------------------------------------------------------------
// 10. Response hardening

#[tokio::test]
async fn every_answer_over_https_carries_hsts_and_gateway_pages_are_never_cached_or_revealing() {
    let w = world(Setup {
        tls: true,
        ecp_admins_only: true,
        ..Setup::default()
    })
    .await;
    let mut bob = TlsBrowser::new(&w);
    let mut pages: Vec<(&str, Reply)> = Vec::new();

    let to_sign_in = bob.navigate("/ecp/").await;
    assert_eq!(
        to_sign_in.status,
        StatusCode::FOUND,
        "{}",
        to_sign_in.describe()
    );
    pages.push(("redirect to sign in", to_sign_in));
    let script = bob
        .request(Method::GET, "/owa/service.svc?action=GetFolder", XHR, None)
        .await;
    assert_eq!(script.status.as_u16(), 440, "{}", script.describe());
    pages.push(("440 to a script", script));
    let closed = bob.navigate("/EWS/Exchange.asmx").await;
    assert_eq!(
        closed.status,
        StatusCode::NOT_FOUND,
        "{}",
        closed.describe()
    );
    pages.push(("404", closed));

    let landed = bob.sign_in_ok("/ecp/", &w.provider, "bob").await;
    pages.push(("sign-in callback", landed));
    let refused = bob.navigate("/ecp/").await;
    assert_eq!(
        refused.status,
        StatusCode::FORBIDDEN,
        "{}",
        refused.describe()
    );
    assert!(refused.body.contains(NO_ACCESS), "{}", refused.body);
    pages.push(("403", refused));

    let mailbox = bob.navigate("/owa/").await;
    assert_eq!(mailbox.status, StatusCode::OK, "{}", mailbox.describe());
    assert_hsts(&mailbox, "a page from Exchange");
    let probe = bob.navigate("/ecp/healthcheck.htm").await;
    assert_eq!(probe.status, StatusCode::OK, "{}", probe.describe());
    assert_hsts(&probe, "public health probe");

    let sid = w.provider.last_sid("bob").unwrap();
    let front_channel = bob
        .request(
            Method::GET,
            &format!("/_gateway/frontchannel-logout?sid={sid}"),
            &[],
            None,
        )
        .await;
    assert_eq!(
        front_channel.status,
        StatusCode::OK,
        "{}",
        front_channel.describe()
    );
    pages.push(("front-channel logout", front_channel));
    let logout = bob
        .request(Method::GET, "/_gateway/logout", SIGN_OUT_LINK, None)
        .await;
    assert_eq!(logout.status, StatusCode::FOUND, "{}", logout.describe());
    pages.push(("logout redirect", logout));
    let signed_out = bob.navigate("/_gateway/signed-out").await;
    assert_eq!(
        signed_out.status,
        StatusCode::OK,
        "{}",
        signed_out.describe()
    );
    pages.push(("signed-out page", signed_out));

    let mut secrets = vec![
        CLIENT_SECRET.to_owned(),
        w.session_key.clone(),
        w.exchange.addr.to_string(),
        UPSTREAM.to_owned(),
    ];
    for call in w.provider.calls_to(ProviderEndpoint::Token) {
        for name in ["code", "code_verifier"] {
            secrets.extend(call.param(name).map(str::to_owned));
        }
    }
    secrets.extend(bob.cookie_values.iter().filter(|v| v.len() >= 16).cloned());
    for (what, reply) in &pages {
        assert_hsts(reply, what);
        assert_no_store(reply, what);
        assert_page_is_clean(reply, &secrets);
    }
}

/// A browser over HTTPS to the gateway (trusting the test CA), keeping cookies itself.
struct TlsBrowser {
    client: reqwest::Client,
    origin: String,
    /// name → (value, SameSite=None)
    jar: BTreeMap<String, (String, bool)>,
    /// Every cookie value the gateway handed out.
    cookie_values: Vec<String>,
}

impl TlsBrowser {
    fn new(w: &World) -> TlsBrowser {
        let https = w.gateway.https.expect("HTTPS listener");
        let pki = w.pki.as_ref().expect("TLS set up");
        TlsBrowser {
            client: support::client(pki, &[MAIL_HOST], https, false),
            origin: format!("https://{MAIL_HOST}:{}", https.port()),
            jar: BTreeMap::new(),
            cookie_values: Vec::new(),
        }
    }

    async fn request(
        &mut self,
        method: Method,
        path_or_url: &str,
        headers: &[(&str, &str)],
        form: Option<String>,
    ) -> Reply {
        let url = if path_or_url.starts_with("https://") {
            path_or_url.to_owned()
        } else {
            format!("{}{path_or_url}", self.origin)
        };
        let cross_site_post = form.is_some();
        let mut builder = self.client.request(method, url);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let cookies: Vec<String> = self
            .jar
            .iter()
            .filter(|(_, (_, none))| !cross_site_post || *none)
            .map(|(name, (value, _))| format!("{name}={value}"))
            .collect();
        if !cookies.is_empty() {
            builder = builder.header("cookie", cookies.join("; "));
        }
        if let Some(form) = form {
            builder = builder
                .header("content-type", "application/x-www-form-urlencoded")
                .body(form);
        }
        let reply = read_reply(builder.send().await.expect("gateway answers")).await;
        for cookie in reply.set_cookies() {
            if cookie.is_removal() {
                self.jar.remove(&cookie.name);
            } else {
                let none = cookie
                    .attribute("samesite")
                    .is_some_and(|v| v.eq_ignore_ascii_case("none"));
                self.cookie_values.push(cookie.value.clone());
                self.jar.insert(cookie.name.clone(), (cookie.value, none));
            }
        }
        reply
    }

    async fn navigate(&mut self, path: &str) -> Reply {
        self.request(Method::GET, path, NAVIGATION, None).await
    }

    /// The whole sign-in from a page load of `path`; returns the callback's answer after
    /// checking it sends the browser back to `path` with a session.
    async fn sign_in_ok(&mut self, path: &str, provider: &TestProvider, user: &str) -> Reply {
        let start = self.navigate(path).await;
        assert_eq!(start.status, StatusCode::FOUND, "{}", start.describe());
        let authorize = start.location().unwrap().to_owned();
        assert!(authorize.starts_with(&provider.authorization_endpoint()));
        let (url, form) = sign_in_form(&authorize, user, true);
        let at_provider = read_reply(
            plain_client()
                .post(url)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(
                    url::form_urlencoded::Serializer::new(String::new())
                        .extend_pairs(&form)
                        .finish(),
                )
                .send()
                .await
                .expect("provider answers"),
        )
        .await;
        assert_eq!(
            at_provider.status,
            StatusCode::OK,
            "{}",
            at_provider.describe()
        );
        let (callback, fields) = parse_form_post(&at_provider.body).expect("a form_post page");
        assert!(callback.starts_with(&self.origin), "{callback}");
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(&fields)
            .finish();
        let landed = self
            .request(
                Method::POST,
                &callback,
                &[
                    ("accept", "text/html"),
                    ("sec-fetch-mode", "navigate"),
                    ("sec-fetch-site", "cross-site"),
                ],
                Some(body),
            )
            .await;
        assert_eq!(landed.status, StatusCode::FOUND, "{}", landed.describe());
        assert_eq!(landed.location(), Some(path), "{}", landed.describe());
        assert!(
            landed.new_session_cookie().is_some(),
            "{}",
            landed.describe()
        );
        landed
    }
}
