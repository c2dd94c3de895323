//! The worker model of the real binary: `[server] workers = 2` runs two threads named
//! `mfagw-worker-0` and `mfagw-worker-1`, each accepting and serving connections on a listener
//! socket of its own (`SO_REUSEPORT`); both serve, a SIGHUP reload reaches both, and SIGTERM
//! drains both (the request in flight finishes, new connections are refused, the access lines
//! each worker batched are all written, the process exits 0).
#![allow(clippy::unwrap_used)] // a failed unwrap in a test is a failed test

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use support::{
    full, plain_client, wait_until, FakeExchange, GatewayProcess, IssuedCert, ProcessPorts, TestPki,
};

const HOST: &str = "mail.contoso.com";

/// Exchange: `/owa/slow-2s` answers after 2 s, everything else at once with its path.
async fn exchange() -> FakeExchange {
    FakeExchange::builder("ex01")
        .handler(|req| async move {
            let path = req.uri().path().to_owned();
            if path.ends_with("/slow-2s") {
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Response::builder().body(full(path)).unwrap()
        })
        .start()
        .await
}

fn gateway_toml(
    ports: ProcessPorts,
    cert: &IssuedCert,
    exchange: &FakeExchange,
    paths: &[&str],
) -> String {
    let quoted = |p: &std::path::Path| format!("{:?}", p.display().to_string());
    let mut toml = format!(
        r#"
[server]
https_listen = "127.0.0.1:{https}"
admin_listen = "127.0.0.1:{admin}"
shutdown_grace = "5s"
workers = 2

[[tls.certificates]]
cert = {cert}
key = {key}

[upstreams.exchange]
servers = [{url:?}]
"#,
        https = ports.https,
        admin = ports.admin,
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

/// A fresh TLS connection with HTTP/1.1 on it.
async fn connect(pki: &TestPki, port: u16) -> SendRequest<Empty<Bytes>> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let connector =
        tokio_rustls::TlsConnector::from(Arc::new(pki.rustls_client_config(&[b"http/1.1"])));
    let tls = connector
        .connect(ServerName::try_from(HOST).unwrap(), tcp)
        .await
        .unwrap();
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(connection);
    sender
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

/// `count` requests for `path`, each on a connection of its own.
async fn requests_on_new_connections(pki: &TestPki, port: u16, path: &str, count: usize) {
    for _ in 0..count {
        let mut sender = connect(pki, port).await;
        assert_eq!(
            send(&mut sender, path).await,
            (StatusCode::OK, path.to_owned())
        );
    }
}

/// The process's worker threads by name, with the CPU time each has used so far, in
/// nanoseconds (the first field of /proc/PID/task/TID/schedstat). A worker with nothing to do
/// sleeps in epoll and uses none.
fn worker_cpu(pid: u32) -> BTreeMap<String, u64> {
    let mut workers = BTreeMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap().path();
        let Ok(name) = std::fs::read_to_string(task.join("comm")) else {
            continue; // the thread ended meanwhile
        };
        let name = name.trim().to_owned();
        if !name.starts_with("mfagw-worker") {
            continue;
        }
        let schedstat = std::fs::read_to_string(task.join("schedstat")).unwrap();
        let on_cpu = schedstat.split(' ').next().unwrap().parse().unwrap();
        workers.insert(name, on_cpu);
    }
    workers
}

/// Every worker used more than `at_least` ns of CPU between `before` and `after`.
fn each_worker_worked(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
    at_least: u64,
) -> Result<(), String> {
    for (name, read) in after {
        let grew = read - before.get(name).copied().unwrap_or(0);
        if grew < at_least {
            return Err(format!(
                "{name} used {grew} ns of CPU (before {before:?}, after {after:?})"
            ));
        }
    }
    Ok(())
}

async fn metric(admin: u16, name: &str) -> Option<f64> {
    let page = plain_client()
        .get(format!("http://127.0.0.1:{admin}/metrics"))
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

#[tokio::test]
async fn two_workers_both_serve_reload_together_and_drain_together() {
    support::init();
    let pki = TestPki::new();
    let cert = pki.issue(&[HOST]);
    let exchange = exchange().await;
    let dir = tempfile::tempdir().unwrap();
    let (mut gateway, ports) = GatewayProcess::start(dir.path(), &[], |ports| {
        gateway_toml(ports, &cert, &exchange, &["/owa"])
    })
    .await;
    let pid = gateway.pid();

    // Two worker threads, by name.
    let before = worker_cpu(pid);
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        ["mfagw-worker-0", "mfagw-worker-1"],
        "the worker threads of workers = 2"
    );

    // Connections land on both workers (the kernel spreads them over the two sockets by
    // address and port: all 40 on one has odds of 2^-39), and each worker serves what it
    // accepted: TLS handshakes and requests, over a millisecond of CPU for its share.
    let connections = 40;
    requests_on_new_connections(&pki, ports.https, "/owa/", connections).await;
    let after = worker_cpu(pid);
    println!("worker CPU ns before {before:?}, after {after:?}");
    each_worker_worked(&before, &after, 1_000_000).unwrap();
    // Counted by each worker in its own shard, summed when scraped.
    assert_eq!(
        metric(ports.admin, "mfagw_connections_total").await,
        Some(connections as f64)
    );
    assert_eq!(
        metric(
            ports.admin,
            "mfagw_requests_total{route=\"mail.contoso.com/owa\",status=\"200\"}"
        )
        .await,
        Some(connections as f64)
    );

    // SIGHUP: a new route, seen by connections on both workers, and by a connection opened
    // before the reload.
    let mut held = connect(&pki, ports.https).await;
    assert_eq!(send(&mut held, "/ecp/").await.0, StatusCode::NOT_FOUND);
    let log_before = gateway.log().len();
    std::fs::write(
        &gateway.config_path,
        gateway_toml(ports, &cert, &exchange, &["/owa", "/ecp"]),
    )
    .unwrap();
    gateway.signal("HUP");
    assert!(
        wait_until(Duration::from_secs(5), || async {
            gateway.log()[log_before..].contains("configuration reloaded")
        })
        .await,
        "no reload in the log:\n{}",
        gateway.log()
    );
    assert_eq!(
        send(&mut held, "/ecp/").await,
        (StatusCode::OK, "/ecp/".to_owned())
    );
    let before = worker_cpu(pid);
    requests_on_new_connections(&pki, ports.https, "/ecp/", connections).await;
    each_worker_worked(&before, &worker_cpu(pid), 1_000_000).unwrap();
    assert_eq!(
        metric(
            ports.admin,
            "mfagw_requests_total{route=\"mail.contoso.com/ecp\",status=\"200\"}"
        )
        .await,
        Some(connections as f64 + 1.0)
    );

    // SIGTERM with a request in flight: it finishes, new connections are refused, exit 0.
    let mut slow = connect(&pki, ports.https).await;
    let in_flight = tokio::spawn(async move { send(&mut slow, "/owa/slow-2s").await });
    assert!(
        wait_until(Duration::from_secs(5), || async {
            exchange
                .user_requests()
                .iter()
                .any(|r| r.uri.ends_with("/slow-2s"))
        })
        .await,
        "the slow request never reached Exchange"
    );
    gateway.signal("TERM");
    let terminated = Instant::now();
    let refused = wait_until(Duration::from_millis(500), || async {
        tokio::net::TcpStream::connect(("127.0.0.1", ports.https))
            .await
            .is_err()
    })
    .await;
    assert!(
        refused,
        "new connections are still accepted during the drain"
    );
    assert!(!in_flight.is_finished(), "the slow request ended early");
    assert_eq!(
        in_flight.await.unwrap(),
        (StatusCode::OK, "/owa/slow-2s".to_owned()),
        "the request in flight at SIGTERM did not complete"
    );
    let status = gateway
        .wait_exit(Duration::from_secs(8))
        .await
        .unwrap_or_else(|| panic!("still running 8 s after SIGTERM; log:\n{}", gateway.log()));
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        gateway.log()
    );
    assert!(
        terminated.elapsed() < Duration::from_secs(4),
        "the drain took {:?} for a request of 2 s",
        terminated.elapsed()
    );
    // Every request has its access line, the last one (batched by its worker during the
    // drain) too.
    let log = gateway.log();
    let access_lines = log.lines().filter(|l| l.contains(" access: ")).count();
    assert_eq!(
        access_lines,
        2 * connections + 2 + 1,
        "one access line per request; log:\n{log}"
    );
    assert!(
        log.lines().any(|l| l.contains(" access: ")
            && l.contains("/owa/slow-2s")
            && l.contains("status=200")),
        "no access line for the request finished during the drain:\n{log}"
    );
}
