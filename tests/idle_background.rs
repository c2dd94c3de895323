//! The idle timeout that Outlook on the web cannot defeat: OWA's background traffic (the
//! notification long polls, requests marked `UA=0`, keep-alives and pings, and what a route
//! adds with `background_requests`) is served while the session is live but never moves the
//! idle deadline; what the user does (a page load, a request without the marks) does. With
//! the gateway's clock moved by the test.

mod support;

use std::time::Duration;

use http::StatusCode;
use mfa_gateway::demo::TestProvider;
use support::{start_provider, Browser, FakeExchange, SignInConfig, TestClock, TestGateway};

/// What an open, untouched OWA tab sends.
const OWA_BACKGROUND: &[&str] = &[
    "/owa/ev.owa2?ns=PendingRequest&ev=PendingNotificationRequest&UA=0&cid=c1&brwnm=chrome&n=12",
    "/owa/ev.owa2?ns=PendingRequest&ev=FinishNotificationRequest&UA=0",
    "/owa/service.svc?action=GetReminders&UA=0&app=Mail",
    "/owa/keepalive.owa",
    "/owa/ping.owa",
];

struct World {
    provider: TestProvider,
    _exchange: FakeExchange,
    clock: TestClock,
    gateway: TestGateway,
}

async fn world(owa_extra: &str) -> World {
    let provider = start_provider().await;
    let exchange = FakeExchange::builder("ex01").start().await;
    let mut config = SignInConfig::new(&provider, &exchange);
    config.session_extra = "lifetime = \"10h\"\nidle_timeout = \"30m\"\n".into();
    config.owa_extra = owa_extra.to_owned();
    let clock = TestClock::new();
    let gateway = TestGateway::start_with_clock(&config.toml(), clock.clock()).await;
    gateway.wait_ready().await;
    World {
        provider,
        _exchange: exchange,
        clock,
        gateway,
    }
}

impl World {
    fn browser(&self) -> Browser {
        Browser::new(self.gateway.http.expect("plain HTTP listener"))
    }

    fn advance_minutes(&self, minutes: u64) {
        self.clock.advance(Duration::from_secs(minutes * 60));
    }
}

/// Every background request of an open tab is served, and none re-seals the session.
async fn poll_all(browser: &mut Browser, list: &[&str], when: &str) {
    for path in list {
        let reply = browser.xhr(path).await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "{when}, {path}: {}",
            reply.describe()
        );
        assert!(
            reply.new_session_cookie().is_none(),
            "{when}, {path}: background traffic moved the idle timer: {}",
            reply.describe()
        );
    }
}

/// After the idle deadline: OWA's poll gets 440 (no redirect its script would choke on), and
/// the next page load goes to sign in again.
async fn assert_idle_expired(browser: &mut Browser, provider: &TestProvider, poll: &str) {
    let reply = browser.xhr(poll).await;
    assert_eq!(reply.status.as_u16(), 440, "{}", reply.describe());
    assert!(reply.location().is_none(), "{}", reply.describe());
    let page = browser.navigate("/owa/").await;
    assert_eq!(page.status, StatusCode::FOUND, "{}", page.describe());
    assert!(
        page.location()
            .is_some_and(|l| l.starts_with(&provider.authorization_endpoint())),
        "{}",
        page.describe()
    );
}

#[tokio::test]
async fn owa_background_polls_every_five_minutes_never_keep_the_session_past_its_idle_timeout() {
    let w = world("").await;
    let mut browser = w.browser();
    browser.sign_in_ok("/owa/", &w.provider, "alice").await;
    let page = browser.navigate("/owa/").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.describe());

    // The tab stays open; nobody touches it.
    for minute in [5, 10, 15, 20, 25, 29] {
        w.advance_minutes(if minute == 29 { 4 } else { 5 });
        poll_all(&mut browser, OWA_BACKGROUND, &format!("minute {minute}")).await;
    }
    // Thirty minutes after the last thing the user did.
    w.advance_minutes(1);
    assert_idle_expired(&mut browser, &w.provider, OWA_BACKGROUND[0]).await;
}

#[tokio::test]
async fn what_the_user_does_moves_the_idle_deadline_and_background_traffic_does_not() {
    let w = world("").await;
    let mut browser = w.browser();
    browser.sign_in_ok("/owa/", &w.provider, "alice").await;

    w.advance_minutes(20);
    poll_all(&mut browser, OWA_BACKGROUND, "minute 20").await;
    // The user opens a message: OWA's request without UA=0 is activity.
    let read = browser
        .xhr("/owa/service.svc?action=GetItem&EP=1&UA=1")
        .await;
    assert_eq!(read.status, StatusCode::OK, "{}", read.describe());
    assert!(
        read.new_session_cookie().is_some(),
        "the user's request re-seals the session: {}",
        read.describe()
    );

    // Idle deadline now minute 50: polls until then pass, without moving it.
    for _ in 0..5 {
        w.advance_minutes(5);
        poll_all(&mut browser, OWA_BACKGROUND, "after the user's request").await;
    }
    w.advance_minutes(4);
    // Minute 49: a page load (the user comes back) is activity too.
    let page = browser.navigate("/owa/").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.describe());
    assert!(page.new_session_cookie().is_some(), "{}", page.describe());
    w.advance_minutes(29);
    poll_all(&mut browser, OWA_BACKGROUND, "minute 78").await;
    w.advance_minutes(1);
    assert_idle_expired(&mut browser, &w.provider, OWA_BACKGROUND[2]).await;
}

#[tokio::test]
async fn a_routes_own_background_requests_are_honoured_and_other_parameters_still_count() {
    let w = world("background_requests = [\"/owa/custom.ashx?poll=1\"]\n").await;
    let mut browser = w.browser();
    browser.sign_in_ok("/owa/", &w.provider, "alice").await;

    for _ in 0..5 {
        w.advance_minutes(5);
        poll_all(
            &mut browser,
            &["/owa/custom.ashx?poll=1", "/owa/Custom.ashx?x=2&POLL=1"],
            "custom poll",
        )
        .await;
    }
    // The same handler without the parameter is the user's doing.
    w.advance_minutes(4);
    let reply = browser.xhr("/owa/custom.ashx?poll=2").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.describe());
    assert!(reply.new_session_cookie().is_some(), "{}", reply.describe());
    w.advance_minutes(29);
    poll_all(&mut browser, &["/owa/custom.ashx?poll=1"], "minute 58").await;
    w.advance_minutes(1);
    assert_idle_expired(&mut browser, &w.provider, "/owa/custom.ashx?poll=1").await;
}

#[tokio::test]
async fn without_the_exclusions_a_poll_would_have_kept_the_session_alive() {
    // The contrast that makes the tests above mean something: a request that is not on the
    // list, sent on the same schedule, keeps the session alive past the idle timeout.
    let w = world("").await;
    let mut browser = w.browser();
    browser.sign_in_ok("/owa/", &w.provider, "alice").await;
    for _ in 0..12 {
        w.advance_minutes(5);
        let reply = browser.xhr("/owa/service.svc?action=GetFolder").await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.describe());
    }
}
