//! The real `mfa-gateway` binary under the signals an administrator or a service manager sends:
//! SIGTERM drains (readiness goes 503 at once, requests in flight finish within
//! `shutdown_grace`, the process exits 0), SIGHUP reloads the file and the certificates without
//! dropping connections, and a broken file is refused while the running configuration serves on.
#![allow(clippy::unwrap_used)] // a failed unwrap in a test is a failed test

mod support;

use std::cell::RefCell;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use support::{
    client, full, plain_client, wait_until, FakeExchange, GatewayProcess, IssuedCert, ProcessPorts,
    TestPki,
};

const HOST: &str = "mail.contoso.com";

fn quoted(path: &std::path::Path) -> String {
    format!("{:?}", path.display().to_string())
}

/// Exchange for these tests: `/owa/slow-2s` and `/owa/slow-10s` answer after that long,
/// everything else at once with `"<path>"`.
async fn exchange() -> FakeExchange {
    FakeExchange::builder("ex01")
        .handler(|req| async move {
            let path = req.uri().path().to_owned();
            // A slow answer is the behaviour under test: a request still in flight at SIGTERM.
            if path.ends_with("/slow-2s") {
                tokio::time::sleep(Duration::from_secs(2)).await;
            } else if path.ends_with("/slow-10s") {
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
            Response::builder()
                .header("x-served-by", "ex01")
                .body(full(path))
                .unwrap()
        })
        .start()
        .await
}

/// Where the gateway process listens.
struct Ports(ProcessPorts);

impl Ports {
    fn url(&self, path: &str) -> String {
        format!("https://{HOST}:{}{path}", self.0.https)
    }

    fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.0.admin)
    }
}

/// The binary with `gateway_toml(…, grace, exchange, paths)` on ports chosen for it.
async fn start_gateway(
    dir: &std::path::Path,
    cert: &IssuedCert,
    grace: &str,
    exchange: &FakeExchange,
    paths: &[&str],
    args: &[&str],
) -> (GatewayProcess, Ports) {
    let (gateway, ports) = GatewayProcess::start(dir, args, |ports| {
        gateway_toml(&Ports(ports), cert, grace, exchange, paths)
    })
    .await;
    (gateway, Ports(ports))
}

fn gateway_toml(
    ports: &Ports,
    cert: &IssuedCert,
    grace: &str,
    exchange: &FakeExchange,
    paths: &[&str],
) -> String {
    let mut toml = format!(
        r#"
[server]
https_listen = "127.0.0.1:{https}"
admin_listen = "127.0.0.1:{admin}"
shutdown_grace = "{grace}"

[[tls.certificates]]
cert = {cert}
key = {key}

[upstreams.exchange]
servers = [{url:?}]
"#,
        https = ports.0.https,
        admin = ports.0.admin,
        cert = quoted(&cert.cert),
        key = quoted(&cert.key),
        url = exchange.url(),
    );
    for path in paths {
        toml.push_str(&format!(
            "\n[[routes]]\nhost = \"{HOST}\"\npath = \"{path}\"\nupstream = \"exchange\"\naccess = \"public\"\n"
        ));
    }
    toml
}

fn browser(pki: &TestPki, ports: &Ports) -> reqwest::Client {
    client(pki, &[HOST], ([127, 0, 0, 1], ports.0.https).into(), false)
}

/// Starts `GET path` in the background and returns once Exchange has received it.
async fn request_in_flight(
    http: &reqwest::Client,
    ports: &Ports,
    exchange: &FakeExchange,
    path: &str,
) -> tokio::task::JoinHandle<Result<(StatusCode, String), String>> {
    let request = http.get(ports.url(path));
    let task = tokio::spawn(async move {
        let response = request.send().await.map_err(|e| e.to_string())?;
        let status = response.status();
        let body = response
            .text()
            .await
            .map_err(|e| format!("{status}, body: {e}"))?;
        Ok((status, body))
    });
    assert!(
        wait_until(Duration::from_secs(5), || async {
            exchange
                .user_requests()
                .iter()
                .any(|r| r.uri.ends_with(path))
        })
        .await,
        "{path} never reached Exchange"
    );
    task
}

/// A TLS connection to the gateway with HTTP/1.1 on it, and the certificate the gateway
/// presented in the handshake.
async fn open_connection(pki: &TestPki, ports: &Ports) -> (SendRequest<Empty<Bytes>>, Vec<u8>) {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", ports.0.https))
        .await
        .unwrap();
    let connector =
        tokio_rustls::TlsConnector::from(Arc::new(pki.rustls_client_config(&[b"http/1.1"])));
    let tls = connector
        .connect(ServerName::try_from(HOST).unwrap(), tcp)
        .await
        .unwrap();
    let presented = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(connection);
    (sender, presented)
}

async fn send(sender: &mut SendRequest<Empty<Bytes>>, path: &str) -> (StatusCode, String) {
    sender.ready().await.unwrap();
    let request = Request::get(path)
        .header("host", HOST)
        .body(Empty::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// The value of a metric without labels on the admin listener.
async fn metric(ports: &Ports, name: &str) -> Option<f64> {
    let page = plain_client()
        .get(ports.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// Waits for `needle` to appear in the gateway's log after byte `from`.
async fn log_shows(gateway: &GatewayProcess, from: usize, needle: &str) -> bool {
    wait_until(Duration::from_secs(5), || async {
        gateway
            .log()
            .get(from..)
            .is_some_and(|new| new.contains(needle))
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// SIGTERM

#[tokio::test]
async fn sigterm_turns_readiness_off_at_once_lets_the_request_in_flight_finish_and_exits_0() {
    support::init();
    let pki = TestPki::new();
    let cert = pki.issue(&[HOST]);
    let exchange = exchange().await;
    let dir = tempfile::tempdir().unwrap();
    let (mut gateway, ports) =
        start_gateway(dir.path(), &cert, "5s", &exchange, &["/owa"], &[]).await;
    let http = browser(&pki, &ports);
    let health = http
        .get(ports.url("/_gateway/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);

    let in_flight = request_in_flight(&http, &ports, &exchange, "/owa/slow-2s").await;
    gateway.signal("TERM");
    let terminated = Instant::now();

    // The load balancer's probe fails at once: 503, or the listener no longer answers.
    let seen = RefCell::new(String::new());
    let not_ready = wait_until(Duration::from_millis(500), || async {
        let fresh = browser(&pki, &ports);
        let (answer, not_ready) = match fresh.get(ports.url("/_gateway/health")).send().await {
            Ok(r) => (
                r.status().to_string(),
                r.status() == StatusCode::SERVICE_UNAVAILABLE,
            ),
            Err(e) => (format!("no answer: {e:?}"), true),
        };
        *seen.borrow_mut() = answer;
        not_ready
    })
    .await;
    let seen = seen.into_inner();
    assert!(
        not_ready,
        "/_gateway/health still 200 0.5 s after SIGTERM (last: {seen})"
    );
    println!(
        "health probe not ready {:?} after SIGTERM ({seen})",
        terminated.elapsed()
    );
    let readyz = plain_client().get(ports.admin_url("/readyz")).send().await;
    assert!(
        readyz
            .as_ref()
            .map_or(true, |r| r.status() == StatusCode::SERVICE_UNAVAILABLE),
        "/readyz during drain: {readyz:?}"
    );

    // New connections are refused while the request in flight is still running.
    let refused = wait_until(Duration::from_millis(500), || async {
        tokio::net::TcpStream::connect(("127.0.0.1", ports.0.https))
            .await
            .is_err()
    })
    .await;
    assert!(
        refused,
        "new connections are still accepted during the drain"
    );
    assert!(
        !in_flight.is_finished(),
        "the slow request ended before it was answered"
    );

    let outcome = in_flight.await.unwrap();
    assert_eq!(
        outcome,
        Ok((StatusCode::OK, "/owa/slow-2s".to_owned())),
        "the request in flight at SIGTERM did not complete"
    );
    let status = gateway
        .wait_exit(Duration::from_secs(5 + 3))
        .await
        .unwrap_or_else(|| panic!("still running 8 s after SIGTERM; log:\n{}", gateway.log()));
    let exited = terminated.elapsed();
    println!("exited {exited:?} after SIGTERM with {status}");
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        gateway.log()
    );
    assert!(
        exited < Duration::from_secs(4),
        "the gateway waited {exited:?} although its only request finished after 2 s"
    );
}

#[tokio::test]
async fn a_request_still_running_when_shutdown_grace_ends_is_cut_and_the_gateway_exits_0() {
    support::init();
    let pki = TestPki::new();
    let cert = pki.issue(&[HOST]);
    let exchange = exchange().await;
    let dir = tempfile::tempdir().unwrap();
    let (mut gateway, ports) =
        start_gateway(dir.path(), &cert, "1s", &exchange, &["/owa"], &[]).await;
    let http = browser(&pki, &ports);

    let in_flight = request_in_flight(&http, &ports, &exchange, "/owa/slow-10s").await;
    gateway.signal("TERM");
    let terminated = Instant::now();

    let status = gateway
        .wait_exit(Duration::from_secs(1 + 3))
        .await
        .unwrap_or_else(|| {
            panic!(
                "still running 4 s after SIGTERM with shutdown_grace = 1s; log:\n{}",
                gateway.log()
            )
        });
    let exited = terminated.elapsed();
    println!("exited {exited:?} after SIGTERM with {status}");
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        gateway.log()
    );
    assert!(
        exited >= Duration::from_millis(900),
        "exited after {exited:?}, before shutdown_grace"
    );

    let outcome = tokio::time::timeout(Duration::from_secs(3), in_flight)
        .await
        .expect("the cut request was left hanging")
        .unwrap();
    assert!(
        !matches!(outcome, Ok((StatusCode::OK, ref body)) if body == "/owa/slow-10s"),
        "the request completed although shutdown_grace ended 9 s before its answer: {outcome:?}"
    );
    println!("the browser saw: {outcome:?}");
}

// ---------------------------------------------------------------------------------------------
// SIGHUP

#[tokio::test]
async fn sighup_adds_a_route_and_a_new_certificate_while_open_connections_keep_working() {
    support::init();
    let pki = TestPki::new();
    let old_cert = pki.issue(&[HOST]);
    let new_cert = pki.issue(&[HOST]);
    let exchange = exchange().await;
    let dir = tempfile::tempdir().unwrap();
    let (gateway, ports) =
        start_gateway(dir.path(), &old_cert, "5s", &exchange, &["/owa"], &[]).await;
    let http = browser(&pki, &ports);

    let (mut held, presented) = open_connection(&pki, &ports).await;
    assert_eq!(
        presented, old_cert.der,
        "the gateway presents the certificate of the file"
    );
    assert_eq!(
        send(&mut held, "/owa/").await,
        (StatusCode::OK, "/owa/".to_owned())
    );
    assert_eq!(
        send(&mut held, "/ecp/").await.0,
        StatusCode::NOT_FOUND,
        "/ecp is not published yet"
    );
    let in_flight = request_in_flight(&http, &ports, &exchange, "/owa/slow-2s").await;

    let log_before = gateway.log().len();
    std::fs::write(
        &gateway.config_path,
        gateway_toml(&ports, &new_cert, "5s", &exchange, &["/owa", "/ecp"]),
    )
    .unwrap();
    gateway.signal("HUP");
    assert!(
        log_shows(&gateway, log_before, "configuration reloaded").await,
        "no reload in the log:\n{}",
        gateway.log()
    );

    // The connection opened before the reload still works, and sees the new route.
    assert!(!held.is_closed(), "the reload closed an open connection");
    assert_eq!(
        send(&mut held, "/owa/").await,
        (StatusCode::OK, "/owa/".to_owned())
    );
    assert_eq!(
        send(&mut held, "/ecp/").await,
        (StatusCode::OK, "/ecp/".to_owned())
    );
    // The request in flight across the reload completes.
    assert_eq!(
        in_flight.await.unwrap(),
        Ok((StatusCode::OK, "/owa/slow-2s".to_owned()))
    );

    // A new handshake gets the new certificate; the new route answers there too.
    let (mut fresh, presented) = open_connection(&pki, &ports).await;
    assert_eq!(
        presented, new_cert.der,
        "a new TLS handshake still presents the old certificate"
    );
    assert_eq!(
        send(&mut fresh, "/ecp/").await,
        (StatusCode::OK, "/ecp/".to_owned())
    );
    let response = browser(&pki, &ports)
        .get(ports.url("/ecp/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    assert_eq!(
        metric(&ports, "mfagw_config_reloads_total").await,
        Some(1.0)
    );
    assert_eq!(
        metric(&ports, "mfagw_config_reload_failures_total").await,
        Some(0.0)
    );
}

#[tokio::test]
async fn a_broken_file_on_sighup_is_refused_and_the_running_configuration_keeps_serving() {
    support::init();
    let pki = TestPki::new();
    let cert = pki.issue(&[HOST]);
    let exchange = exchange().await;
    let dir = tempfile::tempdir().unwrap();
    let (gateway, ports) = start_gateway(dir.path(), &cert, "5s", &exchange, &["/owa"], &[]).await;
    let good = gateway_toml(&ports, &cert, "5s", &exchange, &["/owa"]);
    let (mut held, _) = open_connection(&pki, &ports).await;
    assert_eq!(send(&mut held, "/owa/").await.0, StatusCode::OK);

    let still_serving = || async {
        let response = browser(&pki, &ports)
            .get(ports.url("/owa/"))
            .send()
            .await
            .unwrap();
        let (mut fresh, presented) = open_connection(&pki, &ports).await;
        response.status() == StatusCode::OK
            && presented == cert.der
            && send(&mut fresh, "/ecp/").await.0 == StatusCode::NOT_FOUND
    };

    // 1. A syntax error (an unclosed string) and the new route it was meant to add.
    let broken = format!(
        "{good}\n[[routes]]\nhost = \"{HOST}\"\npath = \"/ecp\nupstream = \"exchange\"\naccess = \"public\"\n"
    );
    let from = gateway.log().len();
    std::fs::write(&gateway.config_path, &broken).unwrap();
    gateway.signal("HUP");
    assert!(
        log_shows(&gateway, from, "reload refused").await,
        "the log does not say the reload was refused:\n{}",
        gateway.log()
    );
    assert!(
        still_serving().await,
        "the old configuration stopped serving after a broken file"
    );
    assert_eq!(send(&mut held, "/owa/").await.0, StatusCode::OK);
    assert_eq!(
        metric(&ports, "mfagw_config_reload_failures_total").await,
        Some(1.0)
    );

    // 2. Valid TOML, but an upstream with no servers.
    let no_servers = good.replace(&format!("servers = [{:?}]", exchange.url()), "servers = []");
    assert_ne!(no_servers, good);
    let from = gateway.log().len();
    std::fs::write(&gateway.config_path, &no_servers).unwrap();
    gateway.signal("HUP");
    assert!(
        log_shows(&gateway, from, "reload refused").await,
        "the log does not say the reload was refused:\n{}",
        gateway.log()
    );
    let new_log = gateway.log()[from..].to_owned();
    assert!(
        new_log.contains("upstreams.exchange.servers"),
        "the refusal does not name the key: {new_log}"
    );
    assert!(
        still_serving().await,
        "the old configuration stopped serving after an upstream without servers"
    );
    assert_eq!(
        metric(&ports, "mfagw_config_reload_failures_total").await,
        Some(2.0)
    );

    // 3. Valid configuration whose certificate file does not exist.
    let missing = good.replace(
        &quoted(&cert.cert),
        &quoted(&dir.path().join("missing.pem")),
    );
    assert_ne!(missing, good);
    let from = gateway.log().len();
    std::fs::write(&gateway.config_path, &missing).unwrap();
    gateway.signal("HUP");
    assert!(
        log_shows(&gateway, from, "reload refused").await,
        "the log does not say the reload was refused:\n{}",
        gateway.log()
    );
    assert!(
        still_serving().await,
        "the old configuration stopped serving after a missing certificate"
    );
    assert_eq!(
        metric(&ports, "mfagw_config_reload_failures_total").await,
        Some(3.0)
    );
    assert_eq!(
        metric(&ports, "mfagw_config_reloads_total").await,
        Some(0.0)
    );
    assert_eq!(
        send(&mut held, "/owa/").await.0,
        StatusCode::OK,
        "the held connection was dropped"
    );
}

/// `server.workers = 1`: the whole gateway on one serving thread still answers browsers, and
/// says at start how many threads it runs.
#[tokio::test]
async fn a_gateway_with_one_worker_thread_serves_and_says_so() {
    support::init();
    let pki = TestPki::new();
    let cert = pki.issue(&[HOST]);
    let exchange = exchange().await;
    let dir = tempfile::tempdir().unwrap();
    let (gateway, ports) = GatewayProcess::start(dir.path(), &[], |ports| {
        gateway_toml(&Ports(ports), &cert, "0s", &exchange, &["/owa"]).replacen(
            "[server]\n",
            "[server]\nworkers = 1\n",
            1,
        )
    })
    .await;
    let ports = Ports(ports);
    let started = gateway
        .log()
        .lines()
        .find(|l| l.contains("mfa-gateway started"))
        .map(str::to_owned)
        .unwrap();
    assert!(started.contains("workers=1"), "{started}");

    let http = browser(&pki, &ports);
    for i in 0..20 {
        let response = http
            .get(ports.url(&format!("/owa/{i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.text().await.unwrap(), format!("/owa/{i}"));
    }
    let (mut held, _) = open_connection(&pki, &ports).await;
    assert_eq!(
        send(&mut held, "/owa/held").await,
        (StatusCode::OK, "/owa/held".to_owned())
    );
}

/// The binary writes one access line per request, in the chosen log format, with the fields
/// docs/operations.md lists and never the query string (OWA puts its canary there).
#[tokio::test]
async fn access_lines_of_the_binary_in_text_and_json() {
    support::init();
    let pki = TestPki::new();
    let cert = pki.issue(&[HOST]);
    let exchange = exchange().await;
    for format in ["text", "json"] {
        let dir = tempfile::tempdir().unwrap();
        let (gateway, ports) = start_gateway(
            dir.path(),
            &cert,
            "0s",
            &exchange,
            &["/owa"],
            &["--log-format", format],
        )
        .await;
        let http = browser(&pki, &ports);
        let response = http
            .get(ports.url("/owa/service.svc?action=GetItem&canary=SECRET-CANARY"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.text().await.unwrap(), "/owa/service.svc");
        let found = wait_until(Duration::from_secs(5), || async {
            gateway.log().contains("/owa/service.svc")
        })
        .await;
        assert!(found, "no access line:\n{}", gateway.log());
        let log = gateway.log();
        assert!(
            !log.contains("SECRET-CANARY"),
            "query string logged:\n{log}"
        );
        let line = log
            .lines()
            .find(|line| line.contains("/owa/service.svc"))
            .unwrap();
        if format == "json" {
            let value: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(value["target"], "access", "{line}");
            assert_eq!(value["level"], "INFO", "{line}");
            assert_eq!(value["client"], "127.0.0.1", "{line}");
            assert_eq!(value["method"], "GET", "{line}");
            assert_eq!(value["path"], "/owa/service.svc", "{line}");
            assert_eq!(value["version"], "HTTP/1.1", "{line}");
            assert_eq!(value["route"], format!("{HOST}/owa"), "{line}");
            assert_eq!(value["status"], 200, "{line}");
            assert_eq!(
                value["upstream"],
                exchange.url().trim_end_matches('/'),
                "{line}"
            );
            assert_eq!(value["bytes"], "/owa/service.svc".len(), "{line}");
            assert!(value["duration_ms"].as_f64().unwrap() >= 0.0, "{line}");
        } else {
            for field in [
                " INFO access: client=127.0.0.1 method=GET path=\"/owa/service.svc\" ",
                &format!(" route=\"{HOST}/owa\" status=200 "),
                " bytes=16",
            ] {
                assert!(line.contains(field), "{field} missing in {line}");
            }
        }
    }
}
