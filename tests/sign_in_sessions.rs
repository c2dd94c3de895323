//! Sessions after sign-in, on real sockets with real tokens from the test OpenID provider:
//! lifetime and idle expiry (with the gateway's clock moved by the test, not sleeps), several
//! gateways sharing session keys and rotating them, Entra ID outages (a live session keeps
//! working, new sign-ins get a 503 page), and the cap on pending-login cookies.

mod support;

use std::time::Duration;

use http::StatusCode;
use mfa_gateway::demo::{ClientCredential, ProviderEndpoint, ProviderOptions, TestProvider};
use support::{
    connection_refused, random_session_key, start_provider, wait_for, wait_until, Browser,
    FakeExchange, Reply, ReservedPort, SignInConfig, TestClock, TestGateway, CLIENT_ID,
    CLIENT_SECRET, SESSION_COOKIE,
};

const MINUTE: u64 = 60;

// ---------------------------------------------------------------------------------------------
// Fixture

struct World {
    provider: TestProvider,
    exchange: FakeExchange,
    clock: TestClock,
    gateway: TestGateway,
}

async fn world(configure: impl FnOnce(&mut SignInConfig)) -> World {
    let provider = start_provider().await;
    let exchange = FakeExchange::builder("ex01").start().await;
    let mut config = SignInConfig::new(&provider, &exchange);
    configure(&mut config);
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

    fn advance(&self, minutes: u64) {
        self.clock.advance(Duration::from_secs(minutes * MINUTE));
    }
}

/// The page reached Exchange.
fn assert_reached_exchange(reply: &Reply, name: &str, path: &str) {
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.describe());
    assert_eq!(reply.body, format!("{name} {path}"), "{}", reply.describe());
}

/// The browser is signed out: a script gets 440 without a redirect, a page load is sent to
/// sign in.
async fn assert_signed_out(browser: &mut Browser, provider: &TestProvider) {
    let script = browser.xhr("/owa/service.svc?action=GetFolder").await;
    assert_eq!(script.status.as_u16(), 440, "{}", script.describe());
    assert!(script.location().is_none());
    let page = browser.navigate("/owa/").await;
    assert_eq!(page.status, StatusCode::FOUND, "{}", page.describe());
    assert!(
        page.location()
            .is_some_and(|l| l.starts_with(&provider.authorization_endpoint())),
        "{}",
        page.describe()
    );
}

/// The last sign-in audit event of `gateway` is a refusal for `reason`.
fn assert_last_sign_in_refused(gateway: &TestGateway, reason: &str) {
    let last = gateway
        .audit_events()
        .into_iter()
        .rfind(|event| event.event() == "sign_in")
        .expect("a sign-in audit event");
    assert_eq!(
        (last.outcome(), last.reason()),
        ("refused", reason),
        "{last:#?}"
    );
}

fn assert_close(actual: i64, expected: i64, what: &str) {
    assert!(
        (actual - expected).abs() <= 10,
        "{what}: expected about {expected}, got {actual}"
    );
}

// ---------------------------------------------------------------------------------------------
// Lifetime and idle timeout

#[tokio::test]
async fn session_ends_at_its_lifetime_however_active_the_user_is() {
    let w = world(|c| c.session_extra = "lifetime = \"2h\"\nidle_timeout = \"1h\"\n".into()).await;
    let mut browser = w.browser();
    browser.sign_in_ok("/owa/", &w.provider, "alice").await;
    let first = browser.navigate("/owa/").await;
    assert_reached_exchange(&first, "ex01", "/owa/");

    // Active every 50 minutes: never idle, and each re-seal keeps the original end.
    w.advance(50);
    let page = browser.navigate("/owa/").await;
    assert_reached_exchange(&page, "ex01", "/owa/");
    let resealed = page
        .new_session_cookie()
        .expect("re-sealed after 50 minutes");
    assert_close(
        resealed.max_age().unwrap(),
        (120 - 50) * 60,
        "a re-sealed cookie keeps the session's end",
    );
    w.advance(50);
    let page = browser.navigate("/owa/").await;
    assert_reached_exchange(&page, "ex01", "/owa/");
    assert_close(
        page.new_session_cookie()
            .expect("re-sealed")
            .max_age()
            .unwrap(),
        (120 - 100) * 60,
        "a re-sealed cookie keeps the session's end",
    );
    w.advance(19);
    assert_reached_exchange(&browser.navigate("/owa/").await, "ex01", "/owa/");
    let reached = w.exchange.user_requests().len();

    // Two hours and a minute after sign-in.
    w.advance(2);
    assert_signed_out(&mut browser, &w.provider).await;
    assert_eq!(w.exchange.user_requests().len(), reached);
}

#[tokio::test]
async fn session_ends_after_the_idle_timeout_and_activity_keeps_it_alive_by_resealing() {
    let w = world(|c| c.session_extra = "idle_timeout = \"30m\"\n".into()).await;
    let mut browser = w.browser();
    browser.sign_in_ok("/owa/", &w.provider, "alice").await;
    let at_sign_in = browser.cookie(SESSION_COOKIE).unwrap().to_owned();
    let page = browser.navigate("/owa/").await;
    assert_reached_exchange(&page, "ex01", "/owa/");
    assert!(
        page.new_session_cookie().is_none(),
        "no re-seal within the first minute: {}",
        page.describe()
    );

    // Twenty minutes later: still signed in, and the cookie is re-sealed with the new time.
    w.advance(20);
    let page = browser.navigate("/owa/inbox").await;
    assert_reached_exchange(&page, "ex01", "/owa/inbox");
    let resealed = page
        .new_session_cookie()
        .expect("a request after more than a minute re-seals the session");
    assert_ne!(resealed.value, at_sign_in);
    assert!(resealed.has("httponly") && resealed.has("secure"));
    assert_eq!(resealed.attribute("samesite"), Some("Lax"));

    // Forty minutes after sign-in, twenty after the last request: alive thanks to the re-seal…
    w.advance(20);
    let script = browser.xhr("/owa/service.svc?action=GetFolder").await;
    assert_reached_exchange(&script, "ex01", "/owa/service.svc");
    // … while the cookie from before the re-seal has been idle for forty minutes.
    let mut stale = w.browser();
    stale.set_cookie(SESSION_COOKIE, &at_sign_in);
    assert_signed_out(&mut stale, &w.provider).await;

    // Then thirty-one minutes of silence.
    let reached = w.exchange.user_requests().len();
    w.advance(31);
    assert_signed_out(&mut browser, &w.provider).await;
    assert_eq!(w.exchange.user_requests().len(), reached);
}

// ---------------------------------------------------------------------------------------------
// Several gateways

#[tokio::test]
async fn second_gateway_with_the_same_session_keys_accepts_the_session() {
    let provider = start_provider().await;
    let exchange_a = FakeExchange::builder("ex-a").start().await;
    let exchange_b = FakeExchange::builder("ex-b").start().await;
    let config_a = SignInConfig::new(&provider, &exchange_a);
    let mut config_b = config_a.clone();
    config_b.exchange_url = exchange_b.url();
    let a = TestGateway::start(&config_a.toml()).await;
    let b = TestGateway::start(&config_b.toml()).await;
    a.wait_ready().await;
    b.wait_ready().await;

    let mut browser = Browser::new(a.http.unwrap());
    browser.sign_in_ok("/owa/", &provider, "alice").await;
    // The load balancer sends the next request to the other gateway.
    browser.switch_gateway(b.http.unwrap());
    let page = browser.navigate("/owa/").await;
    assert_reached_exchange(&page, "ex-b", "/owa/");
    let script = browser.xhr("/ecp/PersonalSettings/").await;
    assert_reached_exchange(&script, "ex-b", "/ecp/PersonalSettings/");
    assert!(exchange_a.user_requests().is_empty());
    assert_eq!(exchange_b.user_requests().len(), 2);
}

#[tokio::test]
async fn rotated_session_keys_keep_old_sessions_and_seal_new_ones_with_the_new_key() {
    let provider = start_provider().await;
    let exchange = FakeExchange::builder("ex01").start().await;
    let old = random_session_key();
    let new = random_session_key();
    let mut config_a = SignInConfig::new(&provider, &exchange);
    config_a.session_keys = vec![old.clone()];
    let mut config_b = config_a.clone();
    config_b.session_keys = vec![new, old];
    let a = TestGateway::start(&config_a.toml()).await;
    let b = TestGateway::start(&config_b.toml()).await;
    a.wait_ready().await;
    b.wait_ready().await;

    // Signed in before the rotation (on a gateway with the old key only)…
    let mut before = Browser::new(a.http.unwrap());
    before.sign_in_ok("/owa/", &provider, "alice").await;
    // … and still signed in on a gateway that seals with the new key.
    before.switch_gateway(b.http.unwrap());
    assert_reached_exchange(&before.navigate("/owa/").await, "ex01", "/owa/");

    // A session sealed with the new key opens only where the new key is known.
    let mut after = Browser::new(b.http.unwrap());
    after.sign_in_ok("/owa/", &provider, "bob").await;
    assert_reached_exchange(&after.navigate("/owa/x").await, "ex01", "/owa/x");
    let reached = exchange.user_requests().len();
    after.switch_gateway(a.http.unwrap());
    assert_signed_out(&mut after, &provider).await;
    assert_eq!(exchange.user_requests().len(), reached);
}

// ---------------------------------------------------------------------------------------------
// Entra ID unavailable

#[tokio::test]
async fn live_session_keeps_reaching_exchange_while_entra_is_down() {
    let w = world(|_| {}).await;
    let mut browser = w.browser();
    browser.sign_in_ok("/owa/", &w.provider, "alice").await;
    w.provider.set_available(false);

    assert_reached_exchange(&browser.navigate("/owa/").await, "ex01", "/owa/");
    assert_reached_exchange(
        &browser.xhr("/owa/service.svc?action=GetFolder").await,
        "ex01",
        "/owa/service.svc",
    );
    // Also when the session is re-sealed meanwhile.
    w.advance(5);
    let page = browser.navigate("/ecp/").await;
    assert_reached_exchange(&page, "ex01", "/ecp/");
    assert!(page.new_session_cookie().is_some());
    assert_reached_exchange(&browser.navigate("/owa/").await, "ex01", "/owa/");

    // A browser without a session is sent to sign in, or told at once that it cannot.
    let mut newcomer = w.browser();
    let page = newcomer.navigate("/owa/").await;
    assert!(
        page.status == StatusCode::FOUND || page.status == StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        page.describe()
    );
}

/// The sign-in page was passed while Entra was up; then the gateway's code exchange meets
/// Entra answering 503.
#[tokio::test]
async fn callback_while_entra_answers_with_errors_gets_a_503_page_and_new_sign_ins_wait() {
    let w = world(|_| {}).await;
    let mut alice = w.browser();
    alice.sign_in_ok("/owa/", &w.provider, "alice").await;

    let mut bob = w.browser();
    let authorize = bob.start_sign_in("/owa/?path=/mail", &w.provider).await;
    let callback = bob.sign_in_at_provider(&authorize, "bob", true).await;
    w.provider.set_available(false);
    let reply = bob.deliver(&callback).await;
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "Entra answering 503 to the code exchange is Entra being down: {}",
        reply.describe()
    );
    assert_last_sign_in_refused(&w.gateway, "idp_unavailable");
    assert!(
        reply.body.contains("Sign-in is unavailable"),
        "{}",
        reply.body
    );
    assert!(reply.location().is_none());
    assert!(reply.new_session_cookie().is_none());
    assert_eq!(reply.page_link().as_deref(), Some("/owa/?path=/mail"));
    assert!(bob.cookie(SESSION_COOKIE).is_none());

    // The gateway now knows: new sign-ins get the 503 page instead of a trip to Entra.
    let mut carol = w.browser();
    let page = carol.navigate("/owa/").await;
    assert_eq!(
        page.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        page.describe()
    );
    assert!(page.location().is_none());
    assert!(carol.login_cookies().is_empty());
    assert!(w.exchange.user_requests().is_empty());

    // The signed-in user is not affected.
    assert_reached_exchange(&alice.navigate("/owa/").await, "ex01", "/owa/");
}

/// The provider is gone entirely (connections refused), then comes back on the same address.
#[tokio::test]
async fn callback_while_entra_is_unreachable_gets_a_503_page_and_sign_in_resumes_when_it_is_back() {
    let w = world(|_| {}).await;
    let World {
        provider,
        exchange,
        gateway,
        ..
    } = w;
    let provider_addr = provider.addr();
    let mut alice = Browser::new(gateway.http.unwrap());
    alice.sign_in_ok("/owa/", &provider, "alice").await;

    let mut bob = Browser::new(gateway.http.unwrap());
    let authorize = bob.start_sign_in("/owa/", &provider).await;
    let callback = bob.sign_in_at_provider(&authorize, "bob", true).await;
    drop(provider);
    // Gone: connections are refused. Its port is held for it meanwhile (still refusing).
    let provider_port = wait_for(Duration::from_secs(5), || async {
        if connection_refused(provider_addr).await {
            ReservedPort::hold(provider_addr).ok()
        } else {
            None
        }
    })
    .await
    .expect("the provider still accepts connections after it was stopped");

    let reply = bob.deliver(&callback).await;
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.describe()
    );
    assert!(reply.body.contains("cannot be reached"), "{}", reply.body);
    assert!(reply.new_session_cookie().is_none());
    assert_last_sign_in_refused(&gateway, "idp_unavailable");
    let page = bob.navigate("/owa/").await;
    assert_eq!(
        page.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        page.describe()
    );
    assert!(page.location().is_none());
    assert!(exchange.user_requests().is_empty());
    // The signed-in user keeps working.
    assert_reached_exchange(&alice.navigate("/owa/").await, "ex01", "/owa/");

    // Entra is back on the same address (with new signing keys).
    let provider = TestProvider::start(ProviderOptions {
        addr: Some(provider_addr),
        ..ProviderOptions::default()
    })
    .await
    .expect("provider restarts on its address");
    drop(provider_port);
    provider.register_client(CLIENT_ID, ClientCredential::Secret(CLIENT_SECRET.into()));
    let resumed = wait_until(Duration::from_secs(30), || async {
        let mut probe = Browser::new(gateway.http.unwrap());
        probe.navigate("/owa/").await.status == StatusCode::FOUND
    })
    .await;
    assert!(
        resumed,
        "new sign-ins resume within 30 s of Entra answering again"
    );
    let mut bob = Browser::new(gateway.http.unwrap());
    bob.sign_in_ok("/owa/", &provider, "bob").await;
    assert_reached_exchange(&bob.navigate("/owa/").await, "ex01", "/owa/");
}

/// After an outage the first sign-in attempt re-checks Entra itself (the background check
/// runs every 30 s and backs off up to a minute): sign-in is back the moment Entra is.
#[tokio::test]
async fn first_sign_in_after_entra_comes_back_goes_through_without_waiting_for_the_background_check(
) {
    let w = world(|_| {}).await;
    let mut bob = w.browser();
    let authorize = bob.start_sign_in("/owa/", &w.provider).await;
    let callback = bob.sign_in_at_provider(&authorize, "bob", true).await;
    w.provider.set_available(false);
    // The code exchange meets Entra down: the gateway marks it unreachable.
    let reply = bob.deliver(&callback).await;
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.describe()
    );

    // While Entra is down, sign-in attempts get the 503 page; a crowd of them asks Entra at
    // most once per re-check interval (single-flight, rate-limited), not once each.
    let discovery_before = w.provider.calls_to(ProviderEndpoint::Discovery).len();
    let attempts = (0..10).map(|_| async {
        let mut browser = w.browser();
        browser.navigate("/owa/").await
    });
    for page in futures_util::future::join_all(attempts).await {
        assert_eq!(
            page.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            page.describe()
        );
        assert!(page.location().is_none(), "{}", page.describe());
    }
    let asked = w.provider.calls_to(ProviderEndpoint::Discovery).len() - discovery_before;
    // One re-check by the attempts, perhaps one by the background task woken by the failed
    // code exchange.
    assert!(asked <= 2, "ten sign-in attempts asked Entra {asked} times");

    // Entra answers again; past the re-check interval, the very next attempt goes through.
    tokio::time::sleep(
        mfa_gateway::auth::provider::RECHECK_MIN_INTERVAL + Duration::from_millis(200),
    )
    .await;
    w.provider.set_available(true);
    let back = std::time::Instant::now();
    let mut carol = w.browser();
    let page = carol.navigate("/owa/").await;
    assert_eq!(page.status, StatusCode::FOUND, "{}", page.describe());
    assert!(
        page.location()
            .is_some_and(|l| l.starts_with(&w.provider.authorization_endpoint())),
        "{}",
        page.describe()
    );
    let mut carol = w.browser();
    carol.sign_in_ok("/owa/", &w.provider, "carol").await;
    assert_reached_exchange(&carol.navigate("/owa/").await, "ex01", "/owa/");
    assert!(
        back.elapsed() < Duration::from_secs(10),
        "sign-in took {:?} after Entra was back",
        back.elapsed()
    );
}

#[tokio::test]
async fn gateway_started_while_entra_is_down_is_not_ready_until_entra_answers() {
    let provider = start_provider().await;
    let exchange = FakeExchange::builder("ex01").start().await;
    provider.set_available(false);
    let config = SignInConfig::new(&provider, &exchange);
    let gateway = TestGateway::start(&config.toml()).await;
    let mut browser = Browser::new(gateway.http.unwrap());
    // The gateway has asked Entra for its metadata and been turned away.
    assert!(
        wait_until(Duration::from_secs(10), || async {
            provider
                .calls_to(ProviderEndpoint::Discovery)
                .iter()
                .any(|call| call.status == StatusCode::SERVICE_UNAVAILABLE)
        })
        .await,
        "the gateway never asked Entra for its metadata"
    );

    let health = browser.navigate("/_gateway/health").await;
    assert_eq!(
        health.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        health.describe()
    );
    assert!(!gateway.gateway().is_ready());
    let page = browser.navigate("/owa/").await;
    assert_eq!(
        page.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        page.describe()
    );
    assert!(page.location().is_none());
    assert!(
        page.body.contains("Sign-in is unavailable"),
        "{}",
        page.body
    );
    let script = browser.xhr("/owa/service.svc").await;
    assert_eq!(script.status.as_u16(), 440, "{}", script.describe());
    assert!(exchange.user_requests().is_empty());

    provider.set_available(true);
    let ready = wait_until(Duration::from_secs(30), || async {
        let mut probe = Browser::new(gateway.http.unwrap());
        probe.navigate("/_gateway/health").await.status == StatusCode::OK
    })
    .await;
    assert!(ready, "ready within 30 s of Entra answering");
    browser.sign_in_ok("/owa/", &provider, "alice").await;
    assert_reached_exchange(&browser.navigate("/owa/").await, "ex01", "/owa/");
}

// ---------------------------------------------------------------------------------------------
// Pending logins

#[tokio::test]
async fn ten_sign_ins_started_in_one_browser_leave_at_most_four_pending_login_cookies() {
    let w = world(|_| {}).await;
    let mut browser = w.browser();
    let mut started: Vec<(String, String, String)> = Vec::new(); // (path, cookie, authorize)
    for tab in 0..10 {
        // A few seconds between tabs, so "oldest" is well defined.
        w.clock.advance(Duration::from_secs(5));
        let path = format!("/owa/?tab={tab}");
        let before = browser.login_cookies();
        let reply = browser.navigate(&path).await;
        assert_eq!(reply.status, StatusCode::FOUND, "{}", reply.describe());
        let added: Vec<_> = reply
            .set_cookies()
            .into_iter()
            .filter(|c| c.name.starts_with(&format!("{SESSION_COOKIE}-login-")) && !c.is_removal())
            .collect();
        assert_eq!(
            added.len(),
            1,
            "one pending login per sign-in: {}",
            reply.describe()
        );
        assert!(!before.contains(&added[0].name));
        started.push((
            path,
            added[0].name.clone(),
            reply.location().unwrap().to_owned(),
        ));
        let live = browser.login_cookies();
        assert!(
            live.len() <= 4,
            "after {} sign-ins the browser holds {} pending-login cookies: {live:?}",
            tab + 1,
            live.len()
        );
    }
    // The four newest are the ones kept.
    let mut newest: Vec<String> = started[6..].iter().map(|(_, c, _)| c.clone()).collect();
    newest.sort();
    assert_eq!(browser.login_cookies(), newest);
    let header = browser.cookie_header(false).unwrap();
    assert!(
        header.len() < 4096,
        "Cookie header of {} bytes",
        header.len()
    );

    // The oldest tab's sign-in can no longer finish: a page with a fresh link, no session.
    let (_, _, oldest) = &started[0];
    let callback = browser.sign_in_at_provider(oldest, "alice", true).await;
    let reply = browser.deliver(&callback).await;
    assert_eq!(
        reply.status,
        StatusCode::BAD_REQUEST,
        "{}",
        reply.describe()
    );
    // Its pending-login cookie was dropped for the newer ones: the state is unknown.
    assert_last_sign_in_refused(&w.gateway, "state_unknown");
    assert!(reply.location().is_none());
    assert!(reply.new_session_cookie().is_none());

    // The newest ones finish, each back on its own tab's page.
    for (path, _, authorize) in [&started[9], &started[6]] {
        let callback = browser.sign_in_at_provider(authorize, "alice", true).await;
        let reply = browser.deliver(&callback).await;
        assert_eq!(reply.status, StatusCode::FOUND, "{}", reply.describe());
        assert_eq!(reply.location(), Some(path.as_str()));
        assert!(reply.new_session_cookie().is_some());
    }
    assert_eq!(browser.login_cookies().len(), 2);
    let header = browser.cookie_header(false).unwrap();
    assert!(
        header.len() < 4096,
        "session and pending logins fit the header budget: {} bytes",
        header.len()
    );
    assert!(w.exchange.user_requests().is_empty());
}
