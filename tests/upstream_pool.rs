//! The pool of Exchange servers behind one upstream, seen from a browser and from the
//! administrator's admin listener: round robin, failover when a server dies under load, no
//! retry of a request that may have changed something, active health checks, the 502 page when
//! every server is down, TLS to Exchange verified against `ca_file` and `tls_server_name`,
//! metrics, and the idle timeout that lets OWA long polls live but cuts a silent server.
//!
//! Everything runs on real sockets on 127.0.0.1 with real TLS: the gateway in-process
//! ([`TestGateway`]), the Exchange servers as [`FakeExchange`].
#![allow(clippy::unwrap_used)] // a failed unwrap in a test is a failed test

mod support;

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use support::{
    client, full, plain_client, FakeExchange, IssuedCert, TestBody, TestGateway, TestPki,
};

const HOST: &str = "mail.contoso.com";

// ---------------------------------------------------------------------------------------------
// Helpers

/// A TOML string literal for a path.
fn quoted(path: &std::path::Path) -> String {
    format!("{:?}", path.display().to_string())
}

/// A gateway publishing `routes` (TOML `[[routes]]` blocks) with `upstreams` (TOML
/// `[upstreams.*]` blocks) on HTTPS for mail.contoso.com, with an admin listener.
fn gateway_toml(cert: &IssuedCert, upstreams: &str, routes: &str) -> String {
    format!(
        r#"
[server]
https_listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
shutdown_grace = "2s"

[[tls.certificates]]
cert = {cert}
key = {key}

{upstreams}

{routes}
"#,
        cert = quoted(&cert.cert),
        key = quoted(&cert.key),
    )
}

fn route(path: &str, upstream: &str) -> String {
    format!(
        "[[routes]]\nhost = \"{HOST}\"\npath = \"{path}\"\nupstream = \"{upstream}\"\naccess = \"public\"\n"
    )
}

fn servers_list(servers: &[&FakeExchange]) -> String {
    let urls: Vec<String> = servers.iter().map(|s| format!("{:?}", s.url())).collect();
    format!("[{}]", urls.join(", "))
}

/// One PKI, the gateway's certificate, and a browser that trusts the test CA.
struct Browser {
    http: reqwest::Client,
    base: String,
}

impl Browser {
    fn new(pki: &TestPki, gateway: &TestGateway) -> Browser {
        let addr = gateway.https.unwrap();
        Browser {
            http: client(pki, &[HOST], addr, false),
            base: format!("https://{HOST}:{}", addr.port()),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// GET `path`: status, `x-served-by`, body.
    async fn get(&self, path: &str) -> (StatusCode, Option<String>, String) {
        let response = self.http.get(self.url(path)).send().await.unwrap();
        let status = response.status();
        let served_by = served_by(&response);
        let body = response.text().await.unwrap();
        (status, served_by, body)
    }
}

fn served_by(response: &reqwest::Response) -> Option<String> {
    response
        .headers()
        .get("x-served-by")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

async fn readyz(admin: SocketAddr) -> (StatusCode, serde_json::Value) {
    let response = plain_client()
        .get(format!("http://{admin}/readyz"))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body: serde_json::Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    (status, body)
}

/// Whether `/readyz` reports the server at `url` in rotation.
async fn server_healthy_in_readyz(admin: SocketAddr, url: &str) -> bool {
    let (_, body) = readyz(admin).await;
    body["upstreams"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|u| u["servers"].as_array().into_iter().flatten())
        .find(|s| s["url"] == url)
        .and_then(|s| s["healthy"].as_bool())
        .unwrap_or_else(|| panic!("{url} not listed in /readyz: {body}"))
}

async fn metrics(admin: SocketAddr) -> String {
    plain_client()
        .get(format!("http://{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Polls `condition` every 50 ms until it holds or `limit` has passed.
async fn eventually<F, Fut>(limit: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if condition().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A response body that sends each chunk after its delay: a long poll, a trickle, a server
/// that falls silent.
struct ScriptedBody {
    steps: VecDeque<(Duration, Bytes)>,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl ScriptedBody {
    fn boxed(steps: Vec<(Duration, &'static str)>) -> TestBody {
        ScriptedBody {
            steps: steps
                .into_iter()
                .map(|(d, s)| (d, Bytes::from_static(s.as_bytes())))
                .collect(),
            sleep: None,
        }
        .boxed()
    }
}

impl Body for ScriptedBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = self.get_mut();
        let Some((delay, _)) = this.steps.front() else {
            return Poll::Ready(None);
        };
        let delay = *delay;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(delay)));
        ready!(sleep.as_mut().poll(cx));
        this.sleep = None;
        let (_, data) = this.steps.pop_front().unwrap();
        Poll::Ready(Some(Ok(Frame::data(data))))
    }
}

fn assert_no_internals(page: &str, servers: &[&FakeExchange]) {
    for server in servers {
        assert!(
            !page.contains(&server.addr.to_string())
                && !page.contains(&server.addr.port().to_string())
                && !page.contains(&server.name),
            "the error page shows an internal server ({}): {page}",
            server.url()
        );
    }
    for internal in [
        "127.0.0.1",
        "refused",
        "tcp",
        "Connect",
        "hyper",
        "error trying",
    ] {
        assert!(
            !page.contains(internal),
            "the error page shows internals ({internal:?}): {page}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Round robin and failover

#[tokio::test]
async fn requests_are_spread_round_robin_over_two_healthy_exchange_servers() {
    let pki = TestPki::new();
    let cert = pki.issue(&[HOST]);
    let ex01 = FakeExchange::builder("ex01").start().await;
    let ex02 = FakeExchange::builder("ex02").start().await;
    let upstream = format!(
        "[upstreams.exchange]\nservers = {}\n",
        servers_list(&[&ex01, &ex02])
    );
    let gateway =
        TestGateway::start(&gateway_toml(&cert, &upstream, &route("/owa", "exchange"))).await;
    let browser = Browser::new(&pki, &gateway);

    let mut served: HashMap<String, usize> = HashMap::new();
    let mut order = Vec::new();
    for i in 0..10 {
        let (status, by, body) = browser.get(&format!("/owa/item{i}")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let by = by.expect("x-served-by from the fake Exchange");
        order.push(by.clone());
        *served.entry(by).or_default() += 1;
    }
    assert_eq!(served.get("ex01"), Some(&5), "order: {order:?}");
    assert_eq!(served.get("ex02"), Some(&5), "order: {order:?}");
    for pair in order.windows(2) {
        assert_ne!(pair[0], pair[1], "round robin alternates: {order:?}");
    }
    assert_eq!(ex01.user_requests().len(), 5);
    assert_eq!(ex02.user_requests().len(), 5);
}

#[tokio::test]
async fn a_dead_exchange_server_mid_load_is_skipped_and_users_see_no_error() {
    const TOTAL: usize = 400;
    const TASKS: usize = 8;
    let pki = TestPki::new();
    let cert = pki.issue(&[HOST]);
    let ex01 = FakeExchange::builder("ex01").start().await;
    let mut ex02 = FakeExchange::builder("ex02").start().await;
    let upstream = format!(
        "[upstreams.exchange]\nservers = {}\n",
        servers_list(&[&ex01, &ex02])
    );
    let gateway =
        TestGateway::start(&gateway_toml(&cert, &upstream, &route("/owa", "exchange"))).await;
    let browser = Arc::new(Browser::new(&pki, &gateway));

    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let browser = browser.clone();
        let next = next.clone();
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= TOTAL {
                    break;
                }
                let outcome = match browser
                    .http
                    .get(browser.url(&format!("/owa/?n={i}")))
                    .send()
                    .await
                {
                    Ok(response) => {
                        let status = response.status();
                        let by = served_by(&response);
                        match response.text().await {
                            Ok(_) => Ok((status, by)),
                            Err(e) => Err(format!("{status}, body failed: {e}")),
                        }
                    }
                    Err(e) => Err(format!("request failed: {e}")),
                };
                outcomes.push((i, Instant::now(), outcome));
                done.fetch_add(1, Ordering::SeqCst);
            }
            outcomes
        }));
    }

    // Half-way through, ex02 dies: its port refuses connections, its open connections close.
    assert!(
        eventually(Duration::from_secs(30), || {
            let done = done.clone();
            async move { done.load(Ordering::SeqCst) >= TOTAL / 2 }
        })
        .await,
        "the first half of the load did not finish"
    );
    ex02.kill().await;
    let killed_at = Instant::now();
    let ex02_seen_at_kill = ex02.user_requests().len();

    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.extend(task.await.unwrap());
    }
    assert_eq!(outcomes.len(), TOTAL);
    let failures: Vec<String> = outcomes
        .iter()
        .filter_map(|(i, _, outcome)| match outcome {
            Ok((StatusCode::OK, _)) => None,
            Ok((status, by)) => Some(format!("n={i}: {status} (served by {by:?})")),
            Err(e) => Some(format!("n={i}: {e}")),
        })
        .collect();
    let ex02_saw = |i: &usize| {
        ex02.user_requests()
            .iter()
            .any(|r| r.uri.ends_with(&format!("?n={i}")))
    };
    assert!(
        failures.is_empty(),
        "{} of {TOTAL} GETs failed when ex02 died; every GET must still succeed:\n{}\n(failed requests that ex02 had received: {:?})",
        failures.len(),
        failures.join("\n"),
        outcomes
            .iter()
            .filter(|(_, _, o)| !matches!(o, Ok((StatusCode::OK, _))))
            .map(|(i, _, _)| *i)
            .filter(ex02_saw)
            .collect::<Vec<_>>()
    );

    let before_kill = outcomes
        .iter()
        .filter(|(_, at, o)| *at < killed_at && matches!(o, Ok((_, Some(by))) if by == "ex02"))
        .count();
    assert!(before_kill > 0, "ex02 served nothing before it died");
    // Requests that finished well after the kill were all answered by the survivor.
    let late_on_ex02: Vec<usize> = outcomes
        .iter()
        .filter(|(_, at, o)| {
            *at > killed_at + Duration::from_millis(100)
                && matches!(o, Ok((_, Some(by))) if by != "ex01")
        })
        .map(|(i, _, _)| *i)
        .collect();
    assert!(
        late_on_ex02.is_empty(),
        "answered by a dead server: {late_on_ex02:?}"
    );

    // Afterwards every request goes to the survivor.
    for i in 0..20 {
        let (status, by, body) = browser.get(&format!("/owa/after{i}")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(by.as_deref(), Some("ex01"));
    }
    assert_eq!(ex02.user_requests().len(), ex02_seen_at_kill);
}

#[tokio::test]
async fn a_post_is_not_retried_when_its_exchange_server_fails_after_receiving_it() {
    let pki = TestPki::new();
    let cert = pki.issue(&[HOST]);
    let (received_tx, mut received_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    // Both servers take the whole POST body, report it, then hang until they are killed.
    let hanging = |name: &'static str| {
        let received_tx = received_tx.clone();
        FakeExchange::builder(name).handler(move |req| {
            let received_tx = received_tx.clone();
            async move {
                let is_post = req.method() == http::Method::POST;
                let body = req.into_body().collect().await.unwrap().to_bytes();
                if is_post {
                    let _ = received_tx.send(format!("{name} {}", body.len()));
                    tokio::time::sleep(Duration::from_secs(60)).await;
                }
                Response::builder()
                    .header("x-served-by", name)
                    .body(full("ok"))
                    .unwrap()
            }
        })
    };
    let mut ex01 = hanging("ex01").start().await;
    let mut ex02 = hanging("ex02").start().await;
    let upstream = format!(
        "[upstreams.exchange]\nservers = {}\n",
        servers_list(&[&ex01, &ex02])
    );
    let gateway =
        TestGateway::start(&gateway_toml(&cert, &upstream, &route("/owa", "exchange"))).await;
    let browser = Arc::new(Browser::new(&pki, &gateway));

    let message = "x".repeat(10_000);
    let post = {
        let browser = browser.clone();
        tokio::spawn(async move {
            let response = browser
                .http
                .post(browser.url("/owa/service.svc?action=CreateItem"))
                .body(message)
                .send()
                .await
                .unwrap();
            let status = response.status();
            (status, response.text().await.unwrap())
        })
    };
    let received = tokio::time::timeout(Duration::from_secs(10), received_rx.recv())
        .await
        .expect("no Exchange server received the POST")
        .unwrap();
    assert_eq!(received.split(' ').nth(1), Some("10000"), "{received}");
    let (failed, other) = if received.starts_with("ex01") {
        ex01.kill().await;
        (&ex01, &ex02)
    } else {
        ex02.kill().await;
        (&ex02, &ex01)
    };

    let (status, page) = tokio::time::timeout(Duration::from_secs(10), post)
        .await
        .expect("the browser got no answer after its server died")
        .unwrap();
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{page}");
    assert_no_internals(&page, &[failed, other]);
    let posts_elsewhere: Vec<_> = other
        .user_requests()
        .into_iter()
        .filter(|r| r.method == http::Method::POST)
        .collect();
    assert!(
        posts_elsewhere.is_empty(),
        "the POST was sent again to {}: {posts_elsewhere:?}",
        other.name
    );
    // Give a late retry a chance to show up before concluding it did not happen.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(other
        .user_requests()
        .iter()
        .all(|r| r.method != http::Method::POST));
    assert!(
        received_rx.try_recv().is_err(),
        "the POST reached a second server"
    );
}

// ---------------------------------------------------------------------------------------------
// Health

fn health_checked(servers: &[&FakeExchange], extra: &str) -> String {
    format!(
        "[upstreams.exchange]\nservers = {}\nhealth_check = {{ path = \"/owa/healthcheck.htm\", interval = \"200ms\", timeout = \"100ms\", unhealthy_threshold = 2, healthy_threshold = 1 }}\n{extra}\n",
        servers_list(servers)
    )
}

#[tokio::test]
async fn an_exchange_server_failing_its_health_probe_is_taken_out_and_comes_back_when_healthy() {
    let pki = TestPki::new();
    let cert = pki.issue(&[HOST]);
    let ex01 = FakeExchange::builder("ex01").start().await;
    let ex02 = FakeExchange::builder("ex02").start().await;
    let gateway = TestGateway::start(&gateway_toml(
        &cert,
        &health_checked(&[&ex01, &ex02], ""),
        &route("/owa", "exchange"),
    ))
    .await;
    let admin = gateway.admin.unwrap();
    let browser = Browser::new(&pki, &gateway);
    assert!(
        eventually(Duration::from_secs(3), || async {
            ex02.requests()
                .iter()
                .any(|r| r.uri.ends_with("/owa/healthcheck.htm"))
        })
        .await,
        "the gateway never probed /owa/healthcheck.htm"
    );
    let probe = ex02
        .requests()
        .into_iter()
        .find(|r| r.uri.ends_with("/owa/healthcheck.htm"))
        .unwrap();
    assert_eq!(probe.method, http::Method::GET);

    // ex02's probe page answers 503 (e.g. the server is in maintenance mode).
    ex02.set_healthy(false);
    let started = Instant::now();
    assert!(
        eventually(Duration::from_secs(3), || async {
            !server_healthy_in_readyz(admin, &ex02.url()).await
        })
        .await,
        "/readyz still shows ex02 healthy 3 s after its probe started failing"
    );
    println!(
        "ex02 taken out of rotation {:?} after its probe failed",
        started.elapsed()
    );
    let (status, body) = readyz(admin).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "ex01 is still healthy: ready: {body}"
    );
    assert_eq!(body["upstreams"][0]["healthy_servers"], 1, "{body}");
    assert!(server_healthy_in_readyz(admin, &ex01.url()).await);

    let ex02_before = ex02.user_requests().len();
    for i in 0..20 {
        let (status, by, _) = browser.get(&format!("/owa/down{i}")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            by.as_deref(),
            Some("ex01"),
            "request {i} went to the unhealthy server"
        );
    }
    assert_eq!(
        ex02.user_requests().len(),
        ex02_before,
        "user requests reached ex02"
    );

    // ex02 recovers: one good probe puts it back.
    ex02.set_healthy(true);
    assert!(
        eventually(Duration::from_secs(3), || async {
            server_healthy_in_readyz(admin, &ex02.url()).await
        })
        .await,
        "ex02 did not come back within 3 s of its probe passing again"
    );
    let mut by_ex02 = 0;
    for i in 0..10 {
        let (status, by, _) = browser.get(&format!("/owa/up{i}")).await;
        assert_eq!(status, StatusCode::OK);
        if by.as_deref() == Some("ex02") {
            by_ex02 += 1;
        }
    }
    assert_eq!(by_ex02, 5, "ex02 is back in the round robin");
}
