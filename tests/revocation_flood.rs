//! What an attacker without an account can send in bulk — made-up front-channel logouts, sign-ins
//! started and called back with made-up codes — against a gateway on real sockets, with real
//! sign-ins at the test OpenID provider: a genuine revocation is never undone, and what the
//! gateway remembers stays bounded (read from its `/metrics` on the admin listener).

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::StatusCode;
use mfa_gateway::demo::TestProvider;
use mfa_gateway::session::MAX_UNSEEN_SID_REVOCATIONS;
use rand::RngCore;
use support::{
    read_reply, start_provider, Browser, Callback, FakeExchange, SignInConfig, TestGateway,
    MAIL_HOST, SESSION_COOKIE,
};

/// Connections the flood is spread over (each kept alive for all its requests).
const FLOOD_CONNECTIONS: usize = 4;

struct World {
    provider: TestProvider,
    exchange: FakeExchange,
    gateway: TestGateway,
}

/// A provider, a fake Exchange and a gateway with its admin listener, all on 127.0.0.1.
async fn world() -> World {
    let provider = start_provider().await;
    let exchange = FakeExchange::builder("ex01").start().await;
    let toml = SignInConfig::new(&provider, &exchange).toml().replacen(
        "[server]\n",
        "[server]\nadmin_listen = \"127.0.0.1:0\"\n",
        1,
    );
    let gateway = TestGateway::start(&toml).await;
    gateway.wait_ready().await;
    World {
        provider,
        exchange,
        gateway,
    }
}

impl World {
    fn gateway_addr(&self) -> SocketAddr {
        self.gateway.http.expect("plain HTTP listener")
    }

    fn browser(&self) -> Browser {
        Browser::new(self.gateway_addr())
    }

    /// A client that sends no cookies, as Entra's hidden logout frame often does (and as an
    /// attacker does); keeps its connection alive.
    fn cookieless_client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30))
            .resolve(MAIL_HOST, self.gateway_addr())
            .http1_only()
            .build()
            .unwrap()
    }

    fn frontchannel_logout_url(&self, sid: &str) -> String {
        let sid: String = url::form_urlencoded::byte_serialize(sid.as_bytes()).collect();
        format!(
            "http://{MAIL_HOST}:{}/_gateway/frontchannel-logout?sid={sid}",
            self.gateway_addr().port()
        )
    }

    /// One value from the gateway's Prometheus output: `series` is the metric name with its
    /// labels, exactly as printed.
    async fn metric(&self, series: &str) -> u64 {
        let admin = self.gateway.admin.expect("admin listener");
        let body = reqwest::get(format!("http://{admin}/metrics"))
            .await
            .expect("admin listener answers")
            .text()
            .await
            .expect("metrics body");
        body.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} in the metrics:\n{body}"))
    }
}

/// The revoked session reaches nothing: a script gets 440 (OWA) or 401 (ECP) without a
/// redirect, a page load is sent to sign in, and Exchange sees no request.
async fn assert_session_refused(w: &World, browser: &mut Browser, when: &str) {
    let before = w.exchange.user_requests().len();
    let owa = browser.xhr("/owa/service.svc?action=GetFolder").await;
    assert_eq!(owa.status.as_u16(), 440, "{when}: {}", owa.describe());
    assert!(owa.location().is_none(), "{when}: {}", owa.describe());
    let ecp = browser.xhr("/ecp/DDI/DDIService.svc/GetList").await;
    assert_eq!(
        ecp.status,
        StatusCode::UNAUTHORIZED,
        "{when}: {}",
        ecp.describe()
    );
    let page = browser.navigate("/owa/").await;
    assert_eq!(
        page.status,
        StatusCode::FOUND,
        "{when}: {}",
        page.describe()
    );
    assert!(
        page.location()
            .is_some_and(|l| l.starts_with(&w.provider.authorization_endpoint())),
        "{when}: {}",
        page.describe()
    );
    assert_eq!(
        w.exchange.user_requests().len(),
        before,
        "{when}: a revoked session must not reach Exchange"
    );
}

fn made_up_sid() -> String {
    let mut bytes = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut bytes);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

#[tokio::test]
async fn front_channel_logout_of_a_real_sign_in_survives_a_flood_of_made_up_sids() {
    let w = world().await;
    let mut alice = w.browser();
    alice.sign_in_ok("/owa/", &w.provider, "alice").await;
    let page = alice.navigate("/owa/").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.describe());
    let sid = w
        .provider
        .last_sid("alice")
        .expect("alice's sign-in has a sid");

    // Entra's hidden logout frame, without cookies.
    let logout = read_reply(
        w.cookieless_client()
            .get(w.frontchannel_logout_url(&sid))
            .header("sec-fetch-dest", "iframe")
            .send()
            .await
            .expect("gateway answers"),
    )
    .await;
    assert_eq!(logout.status, StatusCode::OK, "{}", logout.describe());
    let revoked_cookie = alice
        .cookie(SESSION_COOKIE)
        .expect("alice's browser keeps its cookie")
        .to_owned();
    assert_session_refused(&w, &mut alice, "right after the front-channel logout").await;
    assert_eq!(w.metric("mfagw_revocations{store=\"protected\"}").await, 1);

    // An attacker floods the unauthenticated endpoint with more made-up sids than the
    // best-effort list holds, over a few kept-alive loopback connections.
    let flood = MAX_UNSEEN_SID_REVOCATIONS + MAX_UNSEEN_SID_REVOCATIONS / 10;
    let started = Instant::now();
    let mut senders = Vec::new();
    for connection in 0..FLOOD_CONNECTIONS {
        let client = w.cookieless_client();
        let urls: Vec<String> = (connection..flood)
            .step_by(FLOOD_CONNECTIONS)
            .map(|_| w.frontchannel_logout_url(&made_up_sid()))
            .collect();
        senders.push(tokio::spawn(async move {
            for url in urls {
                let response = client.get(&url).send().await.expect("gateway answers");
                assert_eq!(response.status(), StatusCode::OK);
                response.bytes().await.expect("page body");
            }
        }));
    }
    for sender in senders {
        sender.await.expect("flood connection");
    }
    eprintln!("{flood} front-channel logouts in {:?}", started.elapsed());
    assert_eq!(
        w.metric("mfagw_revocations{store=\"unseen_sid\"}").await,
        MAX_UNSEEN_SID_REVOCATIONS as u64,
        "the flood filled the best-effort list"
    );
    assert_eq!(
        w.metric("mfagw_revocations{store=\"protected\"}").await,
        1,
        "alice's logout is still there"
    );

    // alice's cookie, and a copy of it in another client, still reach nothing.
    assert_session_refused(&w, &mut alice, "after the flood").await;
    let mut copy = w.browser();
    copy.set_cookie(SESSION_COOKIE, &revoked_cookie);
    assert_session_refused(&w, &mut copy, "a copy of the cookie after the flood").await;

    // A sign-in the flood never named still works.
    let mut bob = w.browser();
    bob.sign_in_ok("/owa/", &w.provider, "bob").await;
    let page = bob.navigate("/owa/").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.describe());
}

#[tokio::test]
async fn callbacks_with_made_up_codes_leave_no_used_state_behind() {
    let w = world().await;
    let mut attacker = w.browser();
    let pairs = 300;
    for _ in 0..pairs {
        // Any page load without a session starts a sign-in: a pending-login cookie and a
        // state, free for the asking.
        let start = attacker.navigate("/owa/").await;
        assert_eq!(start.status, StatusCode::FOUND, "{}", start.describe());
        let authorize = url::Url::parse(start.location().expect("Location")).unwrap();
        let state = authorize
            .query_pairs()
            .find(|(k, _)| k == "state")
            .map(|(_, v)| v.into_owned())
            .expect("state in the authorization request");
        let callback = Callback::FormPost {
            url: format!("{}/_gateway/callback", attacker.origin()),
            fields: vec![
                ("code".into(), format!("made-up-code-{state}")),
                ("state".into(), state),
            ],
        };
        let reply = attacker.deliver(&callback).await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_GATEWAY,
            "{}",
            reply.describe()
        );
        assert!(reply.new_session_cookie().is_none());
    }
    assert!(
        attacker.login_cookies().is_empty(),
        "every callback cleared its pending-login cookie"
    );
    assert_eq!(
        w.metric("mfagw_used_login_states").await,
        0,
        "codes the identity provider refused leave no state behind"
    );

    // A real sign-in's state is remembered, and its callback cannot be replayed.
    let mut alice = w.browser();
    let authorize = alice.start_sign_in("/owa/", &w.provider).await;
    let login_name = alice.login_cookies().pop().expect("a pending login");
    let login_value = alice.cookie(&login_name).unwrap().to_owned();
    let callback = alice.sign_in_at_provider(&authorize, "alice", true).await;
    let landed = alice.deliver(&callback).await;
    assert_eq!(landed.status, StatusCode::FOUND, "{}", landed.describe());
    assert!(landed.new_session_cookie().is_some());
    assert_eq!(w.metric("mfagw_used_login_states").await, 1);

    let mut replayer = w.browser();
    replayer.set_cookie(&login_name, &login_value);
    let replay = replayer.deliver(&callback).await;
    assert_eq!(
        replay.status,
        StatusCode::BAD_REQUEST,
        "{}",
        replay.describe()
    );
    assert!(replay.new_session_cookie().is_none());
    assert!(
        replay.body.contains("This sign-in link has expired"),
        "{}",
        replay.describe()
    );
}
