//! Exchange's own identity cookies never outlive or cross gateway sessions: on a shared
//! computer, the next person to sign in must not inherit the previous user's open Exchange
//! session. Against an Exchange stand-in on forms authentication that shows the mailbox of
//! whoever its `cadata` cookie names, with real sign-ins at the test provider.

mod support;

use std::time::Duration;

use http::header::{COOKIE, LOCATION, SET_COOKIE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use mfa_gateway::demo::{TestProvider, TestUser};
use support::{
    full, start_provider, Browser, FakeExchange, Reply, SignInConfig, TestClock, TestGateway,
    SESSION_COOKIE,
};

const BINDING_COOKIE: &str = "__Host-mfagw-exchange";

/// The `Set-Cookie` values that must be in every answer that starts or ends a session: each
/// identity cookie of Exchange 2019, on the path Exchange sets it on.
const EXPIRIES: &[&str] = &[
    "cadata=; Max-Age=0; Path=/",
    "cadataKey=; Max-Age=0; Path=/",
    "cadataIV=; Max-Age=0; Path=/",
    "cadataSig=; Max-Age=0; Path=/",
    "cadataTTL=; Max-Age=0; Path=/",
    "FedAuth=; Max-Age=0; Path=/owa/",
    "FedAuth=; Max-Age=0; Path=/ecp/",
    "FedAuth1=; Max-Age=0; Path=/owa/",
    "UC=; Max-Age=0; Path=/",
    "X-OWA-CANARY=; Max-Age=0; Path=/",
    "msExchEcpCanary=; Max-Age=0; Path=/ecp",
    "ASP.NET_SessionId=; Max-Age=0; Path=/",
    "X-BackEndCookie=; Max-Age=0; Path=/owa",
    "X-BackEndCookie=; Max-Age=0; Path=/ecp",
];

// ---------------------------------------------------------------------------------------------
// Fixture: Exchange on forms authentication

/// The value of cookie `name` in a request.
fn request_cookie(headers: &http::HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.to_owned())
}

/// Exchange with forms authentication, as far as identity goes: `auth.owa` takes the logon
/// form and answers with `cadata*` naming the user; every other page shows the mailbox of
/// whoever `cadata` names, or sends the browser to the logon page; `/owa/` also sets the
/// canary; `logoff.owa` clears the cookies.
async fn forms_exchange() -> FakeExchange {
    FakeExchange::builder("ex01")
        .handler(|request: Request<Incoming>| async move {
            let path = request.uri().path().to_owned();
            let cadata = request_cookie(request.headers(), "cadata");
            let response = Response::builder();
            if request.method() == Method::POST && path == "/owa/auth.owa" {
                let body = request.into_body().collect().await.unwrap().to_bytes();
                let user = url::form_urlencoded::parse(&body)
                    .find(|(k, _)| k == "username")
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default();
                return response
                    .status(StatusCode::FOUND)
                    .header(LOCATION, "/owa/")
                    .header(
                        SET_COOKIE,
                        format!("cadata={user}; path=/; secure; HttpOnly"),
                    )
                    .header(SET_COOKIE, "cadataTTL=ttl; path=/; secure; HttpOnly")
                    .body(full(""))
                    .unwrap();
            }
            if path == "/owa/logoff.owa" {
                return response
                    .header(
                        SET_COOKIE,
                        "cadata=; expires=Thu, 01-Jan-1970 00:00:00 GMT; path=/",
                    )
                    .body(full("signed out of OWA"))
                    .unwrap();
            }
            let Some(user) = cadata.filter(|u| !u.is_empty()) else {
                return response
                    .status(StatusCode::FOUND)
                    .header(LOCATION, "/owa/auth/logon.aspx")
                    .body(full("logon page"))
                    .unwrap();
            };
            let mut response = response;
            if path == "/owa/" {
                response =
                    response.header(SET_COOKIE, format!("X-OWA-CANARY=canary-{user}; path=/"));
            }
            response.body(full(format!("mailbox of {user}"))).unwrap()
        })
        .start()
        .await
}

struct World {
    provider: TestProvider,
    exchange: FakeExchange,
    clock: TestClock,
    gateway: TestGateway,
}

async fn world(session_extra: &str) -> World {
    let provider = start_provider().await;
    let exchange = forms_exchange().await;
    let mut config = SignInConfig::new(&provider, &exchange);
    config.session_extra = session_extra.to_owned();
    let clock = TestClock::new();
    let gateway = TestGateway::start_with_clock(&config.toml(), clock.clock()).await;
    gateway.wait_ready().await;
    World {
        provider,
        exchange,
        clock,
        gateway,
    }
}

impl World {
    fn browser(&self) -> Browser {
        Browser::new(self.gateway.http.expect("plain HTTP listener"))
    }

    /// The cookies Exchange received with its last request.
    fn last_exchange_cookies(&self) -> String {
        let requests = self.exchange.user_requests();
        let last = requests.last().expect("Exchange was reached");
        last.headers
            .get_all(COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// Signs `user` in at the gateway, then in to Exchange with the logon form, and opens the
/// mailbox.
async fn sign_in_and_open_mailbox(w: &World, browser: &mut Browser, user: &TestUser) {
    browser
        .sign_in_ok("/owa/", &w.provider, &user.username)
        .await;
    let logon = logon(browser, user).await;
    assert_eq!(logon.status, StatusCode::FOUND, "{}", logon.describe());
    let mailbox = browser.navigate("/owa/").await;
    assert_eq!(mailbox.status, StatusCode::OK, "{}", mailbox.describe());
    assert_eq!(mailbox.body, format!("mailbox of {}", user.upn));
}

/// OWA's logon form, posted from OWA's own page.
async fn logon(browser: &mut Browser, user: &TestUser) -> Reply {
    let body = format!(
        "destination=https%3A%2F%2Fmail.contoso.com%2Fowa%2F&flags=4&forcedownlevel=0&username={}&password=secret&isUtf8=1",
        url::form_urlencoded::byte_serialize(user.upn.as_bytes()).collect::<String>()
    );
    browser
        .request(
            Method::POST,
            "/owa/auth.owa",
            &[
                ("accept", "text/html"),
                ("sec-fetch-mode", "navigate"),
                ("sec-fetch-site", "same-origin"),
            ],
            Some((body, "application/x-www-form-urlencoded")),
            false,
        )
        .await
}

/// Every Exchange identity cookie is expired by this answer, on the paths Exchange uses.
/// Bob signs in in the browser Alice used: Exchange asks him to log on (his own session), and
/// none of Alice's Exchange cookies reaches it.
async fn bob_signs_in_to_his_own_logon_page(w: &World, browser: &mut Browser) {
    browser.sign_in_ok("/owa/", &w.provider, "bob").await;
    let page = browser.navigate("/owa/").await;
    assert_eq!(
        page.location(),
        Some("/owa/auth/logon.aspx"),
        "{}",
        page.describe()
    );
    assert!(!w.last_exchange_cookies().contains("alice"));
}

fn assert_expires_exchange_cookies(reply: &Reply, what: &str) {
    let sent: Vec<&str> = reply
        .headers
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    for expiry in EXPIRIES {
        assert!(
            sent.contains(expiry),
            "{what}: {expiry} missing from {sent:#?}"
        );
    }
    assert!(
        !sent
            .iter()
            .any(|c| c.starts_with("ClientId=") || c.starts_with("PrivateComputer=")),
        "{what}: only identity cookies are Exchange's to lose: {sent:#?}"
    );
}

// ---------------------------------------------------------------------------------------------
// A session starts: Exchange's cookies from before it go

#[tokio::test]
async fn signing_in_expires_the_exchange_cookies_a_previous_user_left_in_the_browser() {
    let w = world("").await;
    let mut browser = w.browser();
    // What a previous user's Exchange session left behind.
    browser.set_cookie("cadata", "alice@contoso.com");
    browser.set_cookie("FedAuth", "77u_PD94bWwgdmVyc2lvbj0iMS4wIj8-");
    browser.set_cookie("X-OWA-CANARY", "canary-alice");
    browser.set_cookie("UC_0123456789abcdef0123456789abcdef", "context");
    browser.set_cookie("ClientId", "9C3A5F1E2B4D4E6F8A0B1C2D3E4F5A6B");
    let callback = browser.sign_in("/owa/", &w.provider, "bob", true).await;
    assert_eq!(
        callback.status,
        StatusCode::FOUND,
        "{}",
        callback.describe()
    );
    assert!(
        callback.new_session_cookie().is_some(),
        "{}",
        callback.describe()
    );
    assert_expires_exchange_cookies(&callback, "the callback that starts the session");
    // A name only the request showed (another mailbox's user context) goes too.
    assert!(
        callback
            .set_cookie("UC_0123456789abcdef0123456789abcdef")
            .is_some_and(|c| c.is_removal()),
        "{}",
        callback.describe()
    );
    for gone in [
        "cadata",
        "FedAuth",
        "X-OWA-CANARY",
        "UC_0123456789abcdef0123456789abcdef",
    ] {
        assert!(browser.cookie(gone).is_none(), "{gone} kept");
    }
    assert_eq!(
        browser.cookie("ClientId"),
        Some("9C3A5F1E2B4D4E6F8A0B1C2D3E4F5A6B")
    );

    // Bob reaches Exchange's logon page, not Alice's mailbox.
    let page = browser.navigate("/owa/").await;
    assert_eq!(page.status, StatusCode::FOUND, "{}", page.describe());
    assert_eq!(page.location(), Some("/owa/auth/logon.aspx"));
    assert!(!w.last_exchange_cookies().contains("cadata"));
}

// ---------------------------------------------------------------------------------------------
// During a session: Exchange's cookies work as Exchange set them

#[tokio::test]
async fn exchange_cookies_set_during_the_session_reach_exchange_and_owa_keeps_working() {
    let w = world("").await;
    let mut alice = w.browser();
    alice.sign_in_ok("/owa/", &w.provider, "alice").await;
    let logon = logon(&mut alice, &TestUser::alice()).await;
    assert_eq!(logon.status, StatusCode::FOUND, "{}", logon.describe());
    // Exchange's cookies pass to the browser as Exchange sent them, with the binding beside.
    let cadata = logon.set_cookie("cadata").expect("Exchange's cookie");
    assert_eq!(cadata.value, "alice@contoso.com");
    assert!(cadata.has("httponly"));
    let binding = logon
        .set_cookie(BINDING_COOKIE)
        .expect("bound to the session");
    assert!(
        binding.has("httponly") && binding.has("secure"),
        "{}",
        binding.raw
    );

    let page = alice.navigate("/owa/").await;
    assert_eq!(
        page.body,
        "mailbox of alice@contoso.com",
        "{}",
        page.describe()
    );
    // The canary set by that page goes back with OWA's script requests.
    let script = alice.xhr("/owa/service.svc?action=GetFolder").await;
    assert_eq!(script.status, StatusCode::OK, "{}", script.describe());
    let seen = w.last_exchange_cookies();
    assert!(seen.contains("cadata=alice@contoso.com"), "{seen}");
    assert!(seen.contains("cadataTTL=ttl"), "{seen}");
    assert!(
        seen.contains("X-OWA-CANARY=canary-alice@contoso.com"),
        "{seen}"
    );
    assert!(!seen.contains(SESSION_COOKIE), "{seen}");
    // Nothing of Exchange's is expired while the session lasts.
    assert!(
        !script.set_cookies().iter().any(|c| c.is_removal()),
        "{}",
        script.describe()
    );
}

// ---------------------------------------------------------------------------------------------
// Cookies the session did not earn never reach Exchange

#[tokio::test]
async fn exchange_never_receives_identity_cookies_planted_under_a_session_that_did_not_set_them() {
    let w = world("").await;
    let mut bob = w.browser();
    bob.sign_in_ok("/owa/", &w.provider, "bob").await;
    // Planted afterwards (from a sibling domain, a late response of an earlier session): Alice's
    // forms and claims cookies.
    bob.set_cookie("cadata", "alice@contoso.com");
    bob.set_cookie("FedAuth", "alice-claims");
    bob.set_cookie("ClientId", "9C3A5F1E2B4D4E6F8A0B1C2D3E4F5A6B");
    let before = w.exchange.user_requests().len();
    let page = bob.navigate("/owa/").await;
    assert_eq!(w.exchange.user_requests().len(), before + 1);
    let seen = w.last_exchange_cookies();
    assert!(
        !seen.contains("cadata") && !seen.contains("FedAuth"),
        "{seen}"
    );
    assert!(
        seen.contains("ClientId=9C3A5F1E2B4D4E6F8A0B1C2D3E4F5A6B"),
        "{seen}"
    );
    assert_eq!(
        page.location(),
        Some("/owa/auth/logon.aspx"),
        "{}",
        page.describe()
    );
    // And the answer clears them from the browser.
    assert_expires_exchange_cookies(&page, "an answer to planted cookies");
    assert!(bob.cookie("cadata").is_none() && bob.cookie("FedAuth").is_none());

    // Without a session they reach nothing at all.
    let mut stranger = w.browser();
    stranger.set_cookie("cadata", "alice@contoso.com");
    let before = w.exchange.user_requests().len();
    let page = stranger.navigate("/owa/").await;
    assert_eq!(page.status, StatusCode::FOUND, "{}", page.describe());
    assert!(page
        .location()
        .unwrap()
        .starts_with(&w.provider.authorization_endpoint()));
    let script = stranger.xhr("/owa/service.svc?action=GetFolder").await;
    assert_eq!(script.status.as_u16(), 440, "{}", script.describe());
    assert_eq!(w.exchange.user_requests().len(), before);
}

#[tokio::test]
async fn across_a_session_change_the_previous_users_exchange_cookies_never_reach_exchange() {
    let w = world("").await;
    let mut browser = w.browser();
    sign_in_and_open_mailbox(&w, &mut browser, &TestUser::alice()).await;
    let alice_cadata = browser.cookie("cadata").unwrap().to_owned();
    let alice_binding = browser.cookie(BINDING_COOKIE).unwrap().to_owned();

    // Alice's session cookie is gone (its Max-Age ran out) and Bob signs in in the same
    // browser. Suppose the browser kept Alice's Exchange cookies and her binding anyway (a
    // path the expiry missed, a response of hers arriving late).
    browser.remove_cookie(SESSION_COOKIE);
    browser.sign_in_ok("/owa/", &w.provider, "bob").await;
    browser.set_cookie("cadata", &alice_cadata);
    browser.set_cookie(BINDING_COOKIE, &alice_binding);
    let page = browser.navigate("/owa/").await;
    assert_ne!(
        page.body,
        "mailbox of alice@contoso.com",
        "{}",
        page.describe()
    );
    assert_eq!(
        page.location(),
        Some("/owa/auth/logon.aspx"),
        "{}",
        page.describe()
    );
    let seen = w.last_exchange_cookies();
    assert!(
        !seen.contains("cadata"),
        "Alice's cadata reached Exchange under Bob's session: {seen}"
    );
    assert_expires_exchange_cookies(&page, "Alice's cookies under Bob's session");

    // Bob's own logon works and binds to his session.
    let logon = logon(&mut browser, &TestUser::bob()).await;
    assert_eq!(logon.status, StatusCode::FOUND, "{}", logon.describe());
    let page = browser.navigate("/owa/").await;
    assert_eq!(
        page.body,
        "mailbox of bob@contoso.com",
        "{}",
        page.describe()
    );
}

#[tokio::test]
async fn a_logon_with_the_previous_users_cookies_still_in_the_browser_keeps_only_the_new_ones() {
    let w = world("").await;
    let mut browser = w.browser();
    sign_in_and_open_mailbox(&w, &mut browser, &TestUser::alice()).await;
    let alice_cadata = browser.cookie("cadata").unwrap().to_owned();
    let alice_binding = browser.cookie(BINDING_COOKIE).unwrap().to_owned();
    browser.remove_cookie(SESSION_COOKIE);
    browser.sign_in_ok("/owa/", &w.provider, "bob").await;
    browser.set_cookie("cadata", &alice_cadata);
    browser.set_cookie(BINDING_COOKIE, &alice_binding);

    // Bob's logon form goes straight to Exchange with Alice's cookies still in the jar.
    let logon = logon(&mut browser, &TestUser::bob()).await;
    assert_eq!(logon.status, StatusCode::FOUND, "{}", logon.describe());
    assert!(!w.last_exchange_cookies().contains("cadata"));
    // The expiry of Alice's cookie comes before Exchange's new one for Bob, which wins.
    let sent: Vec<String> = logon.set_cookies().into_iter().map(|c| c.raw).collect();
    let expiry = sent.iter().position(|c| c == "cadata=; Max-Age=0; Path=/");
    let bobs = sent
        .iter()
        .position(|c| c.starts_with("cadata=bob@contoso.com"));
    assert!(
        matches!((expiry, bobs), (Some(e), Some(b)) if e < b),
        "{sent:#?}"
    );
    assert_eq!(browser.cookie("cadata"), Some("bob@contoso.com"));
    assert_ne!(browser.cookie(BINDING_COOKIE), Some(alice_binding.as_str()));
    let page = browser.navigate("/owa/").await;
    assert_eq!(
        page.body,
        "mailbox of bob@contoso.com",
        "{}",
        page.describe()
    );
}

// ---------------------------------------------------------------------------------------------
// A session ends: Exchange's cookies go with it

#[tokio::test]
async fn signing_out_expires_exchange_cookies_and_the_next_user_does_not_reach_the_mailbox() {
    let w = world("").await;
    let mut browser = w.browser();
    sign_in_and_open_mailbox(&w, &mut browser, &TestUser::alice()).await;
    let signed_out = browser
        .request(
            Method::GET,
            "/_gateway/logout",
            &[
                ("sec-fetch-site", "same-origin"),
                ("sec-fetch-mode", "navigate"),
            ],
            None,
            false,
        )
        .await;
    assert_eq!(
        signed_out.status,
        StatusCode::FOUND,
        "{}",
        signed_out.describe()
    );
    assert_expires_exchange_cookies(&signed_out, "/_gateway/logout");
    assert!(signed_out
        .set_cookie(SESSION_COOKIE)
        .is_some_and(|c| c.is_removal()));
    assert!(signed_out
        .set_cookie(BINDING_COOKIE)
        .is_some_and(|c| c.is_removal()));
    assert!(browser.cookie("cadata").is_none());

    bob_signs_in_to_his_own_logon_page(&w, &mut browser).await;
}

#[tokio::test]
async fn owas_own_sign_out_expires_exchange_cookies_after_exchanges_own_answer() {
    let w = world("").await;
    let mut browser = w.browser();
    sign_in_and_open_mailbox(&w, &mut browser, &TestUser::alice()).await;
    let signed_out = browser.navigate("/owa/logoff.owa").await;
    assert_eq!(
        signed_out.status,
        StatusCode::FOUND,
        "{}",
        signed_out.describe()
    );
    // Exchange saw the logoff with Alice's cookies (it ends her Exchange session)…
    assert!(w
        .last_exchange_cookies()
        .contains("cadata=alice@contoso.com"));
    // … and the answer expires every identity cookie, the gateway's after Exchange's.
    assert_expires_exchange_cookies(&signed_out, "/owa/logoff.owa");
    let all: Vec<String> = signed_out
        .set_cookies()
        .into_iter()
        .map(|c| c.raw)
        .collect();
    let exchange_own = all
        .iter()
        .position(|c| c.contains("1970"))
        .expect("Exchange's");
    let ours = all
        .iter()
        .position(|c| c == "cadata=; Max-Age=0; Path=/")
        .unwrap();
    assert!(exchange_own < ours, "{all:#?}");
}

#[tokio::test]
async fn an_idle_session_seen_on_a_request_expires_exchange_cookies_and_the_next_user_starts_clean()
{
    let w = world("idle_timeout = \"30m\"\n").await;
    let mut browser = w.browser();
    sign_in_and_open_mailbox(&w, &mut browser, &TestUser::alice()).await;
    w.clock.advance(Duration::from_secs(31 * 60));
    let before = w.exchange.user_requests().len();
    // OWA's script notices first: 440, and the cookies go.
    let script = browser.xhr("/owa/service.svc?action=GetFolder").await;
    assert_eq!(script.status.as_u16(), 440, "{}", script.describe());
    assert_expires_exchange_cookies(&script, "a script request of an idle session");
    assert!(script
        .set_cookie(SESSION_COOKIE)
        .is_some_and(|c| c.is_removal()));
    assert_eq!(w.exchange.user_requests().len(), before);

    // Bob sits down and signs in: his own logon page, never Alice's mailbox.
    bob_signs_in_to_his_own_logon_page(&w, &mut browser).await;
}

#[tokio::test]
async fn a_page_load_of_an_expired_or_revoked_session_expires_exchange_cookies() {
    let w = world("lifetime = \"1h\"\n").await;
    let mut browser = w.browser();
    sign_in_and_open_mailbox(&w, &mut browser, &TestUser::alice()).await;
    w.clock.advance(Duration::from_secs(61 * 60));
    let page = browser.navigate("/owa/").await;
    assert_eq!(page.status, StatusCode::FOUND, "{}", page.describe());
    assert!(page
        .location()
        .unwrap()
        .starts_with(&w.provider.authorization_endpoint()));
    assert_expires_exchange_cookies(&page, "a page load after the lifetime");

    // Revoked: the same session cookie signed out elsewhere (another tab's sign-out).
    let mut browser = w.browser();
    sign_in_and_open_mailbox(&w, &mut browser, &TestUser::alice()).await;
    let mut other_tab = w.browser();
    other_tab.set_cookie(SESSION_COOKIE, browser.cookie(SESSION_COOKIE).unwrap());
    let out = other_tab
        .request(
            Method::POST,
            "/_gateway/logout",
            &[
                ("sec-fetch-site", "same-origin"),
                ("sec-fetch-mode", "navigate"),
            ],
            None,
            false,
        )
        .await;
    assert_eq!(out.status, StatusCode::FOUND, "{}", out.describe());
    let before = w.exchange.user_requests().len();
    let script = browser.xhr("/owa/service.svc?action=GetFolder").await;
    assert_eq!(script.status.as_u16(), 440, "{}", script.describe());
    assert_expires_exchange_cookies(&script, "a script request of a revoked session");
    assert_eq!(w.exchange.user_requests().len(), before);
}
