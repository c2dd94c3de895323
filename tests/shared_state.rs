//! Several gateways sharing state through a real `redis-server` (`[redis]`): a sign-out or a
//! front-channel logout on one gateway ends the session on every gateway within a second, a
//! login state is single use across gateways, a gateway that starts later catches up, and
//! Redis dying under load is handled as `on_unavailable` says — without a panic, and with
//! recovery when Redis is back.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use mfa_gateway::demo::{ProviderEndpoint, TestProvider};
use support::{
    start_provider, wait_until, Browser, FakeExchange, RedisServer, RedisTls, SignInConfig,
    TestGateway, TestPki, SESSION_COOKIE,
};

/// How long a revocation may take to reach the other gateways (DESIGN.md section 5).
const PROPAGATION_BOUND: Duration = Duration::from_secs(1);

struct Farm {
    provider: TestProvider,
    _exchange: FakeExchange,
    redis: RedisServer,
    redis_url: String,
    redis_extra: String,
    config: SignInConfig,
    on_unavailable: &'static str,
    gateways: Vec<TestGateway>,
}

impl Farm {
    /// `count` gateways with the same session keys and the same `[redis]`.
    async fn start(count: usize, on_unavailable: &'static str) -> Farm {
        let redis = RedisServer::start(&[]).await;
        let url = redis.url();
        Farm::start_on(redis, url, String::new(), count, on_unavailable).await
    }

    /// … on `redis`, reached as `url`, with `redis_extra` lines in `[redis]`.
    async fn start_on(
        redis: RedisServer,
        url: String,
        redis_extra: String,
        count: usize,
        on_unavailable: &'static str,
    ) -> Farm {
        let provider = start_provider().await;
        let exchange = FakeExchange::builder("ex01").start().await;
        let config = SignInConfig::new(&provider, &exchange);
        let mut farm = Farm {
            provider,
            _exchange: exchange,
            redis,
            redis_url: url,
            redis_extra,
            config,
            on_unavailable,
            gateways: Vec::new(),
        };
        for _ in 0..count {
            farm.add_gateway().await;
        }
        farm
    }

    fn toml(&self) -> String {
        let base = self.config.toml().replacen(
            "http_listen = \"127.0.0.1:0\"",
            "http_listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"",
            1,
        );
        format!(
            "{}\n[redis]\nurls = [\"{}\"]\nkey_prefix = \"test:\"\non_unavailable = \"{}\"\n{}\n",
            base, self.redis_url, self.on_unavailable, self.redis_extra,
        )
    }

    async fn add_gateway(&mut self) -> usize {
        let gateway = TestGateway::start(&self.toml()).await;
        gateway.wait_ready().await;
        self.gateways.push(gateway);
        self.gateways.len() - 1
    }

    fn addr(&self, i: usize) -> SocketAddr {
        self.gateways[i].http.expect("plain HTTP listener")
    }

    fn browser(&self, i: usize) -> Browser {
        Browser::new(self.addr(i))
    }

    /// A browser on gateway `i` carrying `cookie` as its session cookie.
    fn with_session(&self, i: usize, cookie: &str) -> Browser {
        let mut browser = self.browser(i);
        browser.set_cookie(SESSION_COOKIE, cookie);
        browser
    }

    /// Signs alice in on gateway `i` and returns her session cookie.
    async fn signed_in(&self, i: usize, user: &str) -> String {
        let mut browser = self.browser(i);
        browser.sign_in_ok("/owa/", &self.provider, user).await;
        browser
            .cookie(SESSION_COOKIE)
            .expect("a session cookie")
            .to_owned()
    }

    /// What a script's request with `cookie` gets on gateway `i`.
    async fn script_status(&self, i: usize, cookie: &str) -> StatusCode {
        self.with_session(i, cookie)
            .xhr("/owa/service.svc?action=GetFolder")
            .await
            .status
    }

    /// Polls every gateway in `others` until each refuses `cookie` (440, signed out), and
    /// returns how long that took from `since`.
    async fn until_refused_everywhere(
        &self,
        others: &[usize],
        cookie: &str,
        since: Instant,
    ) -> Duration {
        for &i in others {
            let refused = wait_until(Duration::from_secs(5), || async {
                self.script_status(i, cookie).await.as_u16() == 440
            })
            .await;
            assert!(
                refused,
                "gateway {i} still serves the revoked session after 5 s"
            );
        }
        since.elapsed()
    }
}

/// `/readyz` (status and JSON) and `/metrics` of gateway `i`'s admin listener.
async fn admin(farm: &Farm, i: usize) -> (StatusCode, serde_json::Value, String) {
    let addr = farm.gateways[i].admin.expect("admin listener");
    let client = reqwest::Client::new();
    let ready = client
        .get(format!("http://{addr}/readyz"))
        .send()
        .await
        .expect("/readyz answers");
    let status = ready.status();
    let body = ready.text().await.expect("/readyz body");
    let json: serde_json::Value = serde_json::from_str(&body).expect("/readyz is JSON");
    let metrics = client
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .expect("/metrics answers")
        .text()
        .await
        .unwrap();
    (status, json, metrics)
}

fn report(what: &str, took: Duration) {
    eprintln!("propagation: {what}: {took:?}");
    assert!(
        took < PROPAGATION_BOUND,
        "{what}: the other gateways refused the session only after {took:?}"
    );
}

#[tokio::test]
async fn sign_out_on_one_gateway_ends_the_session_on_every_gateway_within_a_second() {
    let farm = Farm::start(3, "refuse").await;
    let cookie = farm.signed_in(0, "alice").await;
    for i in 0..3 {
        assert_eq!(
            farm.script_status(i, &cookie).await,
            StatusCode::OK,
            "gateway {i}"
        );
    }

    let mut alice = farm.with_session(0, &cookie);
    let signed_out = alice
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
    let since = Instant::now();
    assert_eq!(
        signed_out.status,
        StatusCode::FOUND,
        "{}",
        signed_out.describe()
    );
    let took = farm
        .until_refused_everywhere(&[0, 1, 2], &cookie, since)
        .await;
    report("sign-out on gateway 0 → gateways 1 and 2", took);

    // A gateway that starts afterwards catches up before it serves anyone.
    let mut farm = farm;
    let late = farm.add_gateway().await;
    assert_eq!(farm.script_status(late, &cookie).await.as_u16(), 440);
    // Another user's session is not affected anywhere.
    let bob = farm.signed_in(1, "bob").await;
    for i in 0..4 {
        assert_eq!(
            farm.script_status(i, &bob).await,
            StatusCode::OK,
            "gateway {i}"
        );
    }
}

#[tokio::test]
async fn owa_sign_out_on_one_gateway_ends_the_session_on_the_others() {
    let farm = Farm::start(2, "refuse").await;
    let cookie = farm.signed_in(0, "alice").await;
    assert_eq!(farm.script_status(1, &cookie).await, StatusCode::OK);
    let mut alice = farm.with_session(1, &cookie);
    let page = alice.navigate("/owa/logoff.owa").await;
    let since = Instant::now();
    assert!(page.status.is_redirection(), "{}", page.describe());
    let took = farm.until_refused_everywhere(&[0], &cookie, since).await;
    report("OWA sign-out on gateway 1 → gateway 0", took);
}

#[tokio::test]
async fn front_channel_logout_on_one_gateway_ends_the_session_on_every_gateway() {
    let farm = Farm::start(3, "refuse").await;
    let cookie = farm.signed_in(1, "alice").await;
    for i in 0..3 {
        assert_eq!(
            farm.script_status(i, &cookie).await,
            StatusCode::OK,
            "gateway {i}"
        );
    }
    let sid = farm.provider.last_sid("alice").expect("alice's sid");
    // Entra calls one URL, without cookies: it reaches gateway 2 only.
    let mut entra_frame = farm.browser(2);
    let reply = entra_frame
        .navigate(&format!("/_gateway/frontchannel-logout?sid={sid}"))
        .await;
    let since = Instant::now();
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.describe());
    let took = farm
        .until_refused_everywhere(&[0, 1, 2], &cookie, since)
        .await;
    report("front-channel logout on gateway 2 → gateways 0 and 1", took);
}

#[tokio::test]
async fn login_state_replayed_on_another_gateway_is_refused_by_the_gateway() {
    let farm = Farm::start(2, "refuse").await;
    let mut browser = farm.browser(0);
    let authorize = browser.start_sign_in("/owa/", &farm.provider).await;
    let login_name = browser.login_cookies().pop().expect("a pending login");
    let login_value = browser.cookie(&login_name).unwrap().to_owned();
    let callback = browser.sign_in_at_provider(&authorize, "alice", true).await;
    let first = browser.deliver(&callback).await;
    assert_eq!(first.status, StatusCode::FOUND, "{}", first.describe());
    let token_calls = farm.provider.calls_to(ProviderEndpoint::Token).len();

    // The captured callback and pending-login cookie, sent to the other gateway.
    let mut attacker = farm.browser(1);
    attacker.set_cookie(&login_name, &login_value);
    let replay = attacker.deliver(&callback).await;
    assert_eq!(
        replay.status,
        StatusCode::BAD_REQUEST,
        "{}",
        replay.describe()
    );
    assert!(replay.new_session_cookie().is_none());
    assert_eq!(
        farm.provider.calls_to(ProviderEndpoint::Token).len(),
        token_calls,
        "the gateway refused the replay itself: the code was not sent to Entra again"
    );
    // The callback URL names gateway 0's port (its redirect URI), so the refusal's audit event
    // carries that Host even though gateway 1 answered it; gateway 0 itself saw only the
    // first, successful callback.
    let refusal = farm.gateways[0]
        .audit_events()
        .into_iter()
        .rfind(|e| e.event() == "sign_in")
        .expect("an audit event for the replay");
    assert_eq!(
        (refusal.outcome(), refusal.reason()),
        ("refused", "state_replayed")
    );
}

/// `refuse`: while Redis is down, sessions and sign-ins get a 503 page (never a panic, never a
/// session served unchecked); when Redis is back the gateways recover by themselves.
#[tokio::test]
async fn redis_killed_under_load_refuses_sessions_until_it_is_back_then_recovers() {
    let mut farm = Farm::start(2, "refuse").await;
    let cookie = farm.signed_in(0, "alice").await;

    // Load on both gateways while Redis dies (SIGKILL, mid-load).
    let pid = farm.redis.pid();
    let load = async {
        let mut statuses = Vec::new();
        let until = Instant::now() + Duration::from_secs(3);
        while Instant::now() < until {
            for i in 0..2 {
                statuses.push(farm.script_status(i, &cookie).await);
            }
        }
        statuses
    };
    let kill = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let status = std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    };
    let (statuses, ()) = tokio::join!(load, kill);
    // Every request got an answer: served before, a 503 page after — nothing else.
    assert!(
        statuses
            .iter()
            .all(|s| *s == StatusCode::OK || *s == StatusCode::SERVICE_UNAVAILABLE),
        "{statuses:?}"
    );
    assert_eq!(statuses.first(), Some(&StatusCode::OK));
    assert_eq!(
        statuses.last(),
        Some(&StatusCode::SERVICE_UNAVAILABLE),
        "{statuses:?}"
    );
    let first_refusal = statuses
        .iter()
        .position(|s| *s == StatusCode::SERVICE_UNAVAILABLE)
        .unwrap_or(0);
    assert!(
        statuses[first_refusal..]
            .iter()
            .all(|s| *s == StatusCode::SERVICE_UNAVAILABLE),
        "once refused, sessions stay refused while Redis is down: {statuses:?}"
    );
    farm.redis.kill();
    let page = farm.with_session(1, &cookie).navigate("/owa/").await;
    assert_eq!(
        page.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        page.describe()
    );
    assert!(page.body.contains("session store"), "{}", page.body);
    let mut newcomer = farm.browser(0);
    let sign_in = newcomer.navigate("/owa/").await;
    assert_eq!(
        sign_in.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        sign_in.describe()
    );
    assert!(farm.gateways[0]
        .audit_events()
        .iter()
        .any(|e| e.reason() == "shared_state_unavailable"));
    // The operator sees it: /readyz and /metrics report Redis down. The gateway stays ready, so
    // users get its 503 page rather than the load balancer's.
    let (status, ready, metrics) = admin(&farm, 0).await;
    assert_eq!(status.as_u16(), 200, "{ready}");
    assert_eq!(ready["sign_in"]["redis"]["available"], false, "{ready}");
    assert!(
        metrics.lines().any(|l| l == "mfagw_redis_available 0"),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l == "mfagw_redis_connection_failures_total 1"),
        "{metrics}"
    );

    farm.redis.restart().await;
    let back = Instant::now();
    let recovered = wait_until(Duration::from_secs(10), || async {
        farm.script_status(0, &cookie).await == StatusCode::OK
            && farm.script_status(1, &cookie).await == StatusCode::OK
    })
    .await;
    assert!(
        recovered,
        "the gateways did not recover after Redis came back"
    );
    eprintln!("recovery after Redis restart: {:?}", back.elapsed());
    let (_, ready, metrics) = admin(&farm, 1).await;
    assert_eq!(ready["sign_in"]["redis"]["available"], true, "{ready}");
    assert!(
        metrics.lines().any(|l| l == "mfagw_redis_available 1"),
        "{metrics}"
    );
    // And sign-out propagates again.
    let mut alice = farm.with_session(1, &cookie);
    alice
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
    let since = Instant::now();
    let took = farm.until_refused_everywhere(&[0], &cookie, since).await;
    report("sign-out after Redis recovered", took);
}

/// `allow`: while Redis is down sessions are served from their cookies; a sign-out made
/// meanwhile waits and reaches the other gateways when Redis is back.
#[tokio::test]
async fn with_allow_a_sign_out_made_while_redis_is_down_reaches_the_others_when_it_is_back() {
    let mut farm = Farm::start(2, "allow").await;
    let cookie = farm.signed_in(0, "alice").await;
    farm.redis.kill();
    // Served from the cookie on both gateways, and new sign-ins still work.
    assert_eq!(farm.script_status(0, &cookie).await, StatusCode::OK);
    assert_eq!(farm.script_status(1, &cookie).await, StatusCode::OK);
    let carol = farm.signed_in(1, "carol").await;
    assert_eq!(farm.script_status(0, &carol).await, StatusCode::OK);

    let mut alice = farm.with_session(0, &cookie);
    let signed_out = alice
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
    // Ended where it was signed out at once; elsewhere it cannot be known yet.
    assert_eq!(farm.script_status(0, &cookie).await.as_u16(), 440);
    assert_eq!(farm.script_status(1, &cookie).await, StatusCode::OK);

    farm.redis.restart().await;
    let since = Instant::now();
    let took = farm.until_refused_everywhere(&[1], &cookie, since).await;
    eprintln!("queued sign-out reached gateway 1 {took:?} after Redis restarted");
    assert!(took < Duration::from_secs(5));
}

/// `rediss://` with the gateway's own CA bundle, and an ACL user that may touch only the
/// `test:` keys and channels (the default user is off), its password read from a file.
#[tokio::test]
async fn over_tls_with_an_acl_user_sign_out_still_reaches_every_gateway() {
    let pki = TestPki::new();
    let issued = pki.issue(&["127.0.0.1"]);
    let tls = RedisTls {
        cert: issued.cert.clone(),
        key: issued.key.clone(),
        ca: pki.ca_path(),
    };
    let acl = pki.dir().join("users.acl");
    std::fs::write(
        &acl,
        "user default off\nuser mfagw on >correct-horse ~test:* &test:* +@read +@write +@keyspace +@pubsub +ping\n",
    )
    .unwrap();
    let redis = RedisServer::start_tls(&["--aclfile", acl.to_str().unwrap()], tls).await;
    let password = redis.dir().join("redis-password");
    std::fs::write(&password, "correct-horse\n").unwrap();
    let url = format!("rediss://mfagw@127.0.0.1:{}", redis.addr().port());
    let extra = format!(
        "password = {{ file = \"{}\" }}\nca_file = \"{}\"\n",
        password.display(),
        pki.ca_path().display()
    );
    let farm = Farm::start_on(redis, url.clone(), extra, 2, "refuse").await;
    let cookie = farm.signed_in(0, "alice").await;
    assert_eq!(farm.script_status(1, &cookie).await, StatusCode::OK);
    let mut alice = farm.with_session(0, &cookie);
    alice
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
    let since = Instant::now();
    let took = farm.until_refused_everywhere(&[1], &cookie, since).await;
    report("sign-out over TLS with an ACL user", took);

    // A wrong password: the gateway never counts Redis as available, so with `refuse` it
    // does not become ready.
    std::fs::write(&password, "wrong\n").unwrap();
    let wrong = TestGateway::start(&farm.toml()).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !wrong.gateway().is_ready(),
        "ready without Redis accepting its password"
    );
}

/// `mode = "sentinel"`: the gateways ask a Sentinel for the master. The master dies, the
/// Sentinel promotes its replica, and the gateways follow: a sign-out made before the failover
/// is still known (replicated), and sign-outs after it propagate again.
#[tokio::test]
async fn with_sentinel_the_gateways_follow_a_failover_and_keep_the_revocations() {
    let master = RedisServer::start(&["--repl-diskless-sync-delay", "0"]).await;
    let master_port = master.addr().port().to_string();
    let replica = RedisServer::start(&["--replicaof", "127.0.0.1", &master_port]).await;
    let synced = wait_until(Duration::from_secs(10), || async {
        replica
            .command("INFO replication")
            .await
            .contains("master_link_status:up")
    })
    .await;
    assert!(synced, "the replica never synchronised with the master");
    let sentinel = RedisServer::start_sentinel(master.addr()).await;
    let url = format!("redis://{}", sentinel.addr());
    let extra = "mode = \"sentinel\"\nsentinel_master = \"mymaster\"\n".to_owned();
    let mut farm = Farm::start_on(master, url, extra, 2, "refuse").await;

    let alice = farm.signed_in(0, "alice").await;
    let mut browser = farm.with_session(0, &alice);
    browser
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
    let since = Instant::now();
    let took = farm.until_refused_everywhere(&[1], &alice, since).await;
    report("sign-out through Sentinel's master", took);
    // The gateway waited for the replica to acknowledge the write (WAIT) before the master
    // goes: the revocation survives the failover.

    farm.redis.kill();
    let killed = Instant::now();
    let bob = loop {
        // Until the Sentinel has promoted the replica and the gateways have followed, sign-in
        // gets the 503 page (refuse); then it works.
        let mut browser = farm.browser(1);
        let page = browser.navigate("/owa/").await;
        if page.status == StatusCode::FOUND {
            break farm.signed_in(1, "bob").await;
        }
        assert_eq!(
            page.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            page.describe()
        );
        assert!(
            killed.elapsed() < Duration::from_secs(20),
            "the gateways did not follow the failover within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!(
        "sign-in back {:?} after the master was killed",
        killed.elapsed()
    );
    // Both gateways on the new master: a sign-out on one reaches the other.
    let recovered = wait_until(Duration::from_secs(10), || async {
        farm.script_status(0, &bob).await == StatusCode::OK
    })
    .await;
    assert!(recovered, "gateway 0 did not follow the failover");
    let mut browser = farm.with_session(1, &bob);
    browser
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
    let since = Instant::now();
    let took = farm.until_refused_everywhere(&[0], &bob, since).await;
    report("sign-out after a Sentinel failover", took);
    // A gateway started now reads alice's sign-out, made before the failover, from the new
    // master.
    let late = farm.add_gateway().await;
    assert_eq!(farm.script_status(late, &alice).await.as_u16(), 440);
    drop((replica, sentinel));
}

/// A reload that keeps `[redis]` keeps its connection and revocations; one that changes it
/// (another `key_prefix`) connects anew and catches up under the new prefix.
#[tokio::test]
async fn a_reload_keeps_or_replaces_the_redis_connection_as_the_configuration_says() {
    let farm = Farm::start(2, "refuse").await;
    let alice = farm.signed_in(0, "alice").await;
    let reload = |farm: &Farm, i: usize| {
        let parsed = mfa_gateway::config::Config::from_toml(
            &farm.toml(),
            &mfa_gateway::config::SystemSecrets,
        )
        .unwrap();
        farm.gateways[i].gateway().reload(parsed).unwrap();
    };
    // Same configuration: nothing changes, sign-out still propagates both ways.
    reload(&farm, 0);
    let mut browser = farm.with_session(1, &alice);
    browser
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
    let took = farm
        .until_refused_everywhere(&[0], &alice, Instant::now())
        .await;
    report("sign-out reaching a reloaded gateway", took);

    // Another prefix on both: a new connection under the new prefix, the old one retired.
    let text = farm
        .toml()
        .replace("key_prefix = \"test:\"", "key_prefix = \"other:\"");
    for i in 0..2 {
        let parsed =
            mfa_gateway::config::Config::from_toml(&text, &mfa_gateway::config::SystemSecrets)
                .unwrap();
        farm.gateways[i].gateway().reload(parsed).unwrap();
    }
    // The new connection is made in the background: until it has caught up, `refuse` answers
    // 503 — briefly.
    let caught_up = wait_until(Duration::from_secs(5), || async {
        farm.script_status(0, &alice).await != StatusCode::SERVICE_UNAVAILABLE
            && farm.script_status(1, &alice).await != StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    assert!(
        caught_up,
        "the new Redis connection was not made after the reload"
    );
    // Revocations made before stay in memory across the reload.
    assert_eq!(farm.script_status(0, &alice).await.as_u16(), 440);
    let bob = farm.signed_in(0, "bob").await;
    let mut browser = farm.with_session(0, &bob);
    browser
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
    let took = farm
        .until_refused_everywhere(&[1], &bob, Instant::now())
        .await;
    report("sign-out after both gateways changed key_prefix", took);
    let keys = farm.redis.command("KEYS other:revoked:*").await;
    assert!(keys.contains("other:revoked:s:"), "{keys}");
}
