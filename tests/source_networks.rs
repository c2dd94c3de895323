//! Routes limited to source networks (`allow_from`): Exchange's hybrid endpoints published only
//! to Microsoft 365's ranges, ECP only to admin networks. Judged on the client address after
//! `trusted_proxies`, before anything else: a client elsewhere gets 403, is never sent to sign
//! in, and Exchange never sees it. Over real sockets from 127.0.0.1.

mod support;

use std::path::Path;

use http::{Method, StatusCode};
use support::{
    start_provider, Browser, FakeExchange, Reply, SignInConfig, TestGateway, NAVIGATION,
};

const HOST: &str = "mail.contoso.com";

/// A gateway publishing `/ews/exchange.asmx/wssecurity` (public) with `allow_from` and the
/// `[server]` lines `server`.
async fn hybrid_gateway(exchange: &FakeExchange, server: &str, allow_from: &str) -> TestGateway {
    let toml = format!(
        r#"
[server]
http_listen = "127.0.0.1:0"
{server}

[upstreams.exchange]
servers = ["{exchange}"]

[[routes]]
host = "{HOST}"
path = "/ews/exchange.asmx/wssecurity"
upstream = "exchange"
access = "public"
allow_from = {allow_from}
"#,
        exchange = exchange.url(),
    );
    let gateway = TestGateway::start(&toml).await;
    gateway.wait_ready().await;
    gateway
}

async fn post_ews(gateway: &TestGateway, forwarded_for: Option<&str>) -> Reply {
    let mut browser = Browser::new(gateway.http.expect("plain HTTP listener"));
    let mut headers = vec![("soapaction", "GetUserAvailability")];
    if let Some(client) = forwarded_for {
        headers.push(("x-forwarded-for", client));
    }
    browser
        .request(
            Method::POST,
            "/ews/exchange.asmx/wssecurity",
            &headers,
            Some(("<soap:Envelope/>".to_owned(), "text/xml")),
            false,
        )
        .await
}

fn assert_refused_unseen(reply: &Reply, exchange: &FakeExchange, gateway: &TestGateway) {
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.describe());
    assert!(
        reply
            .body
            .contains("not available from the network you are connecting from"),
        "{}",
        reply.describe()
    );
    assert!(
        exchange.user_requests().is_empty(),
        "Exchange must never see a refused source: {:?}",
        exchange.user_requests()
    );
    let events: Vec<_> = gateway
        .audit_events()
        .into_iter()
        .filter(|e| e.event() == "source_network")
        .collect();
    assert!(!events.is_empty(), "an audit event for the refusal");
    let last = events.last().expect("an event");
    assert_eq!(
        (last.outcome(), last.reason()),
        ("refused", "source_not_allowed")
    );
    assert_eq!(
        last.field("route"),
        Some("mail.contoso.com/ews/exchange.asmx/wssecurity")
    );
}

#[tokio::test]
async fn a_client_outside_the_routes_networks_gets_403_and_exchange_sees_nothing() {
    let exchange = FakeExchange::builder("ex01").start().await;
    let gateway = hybrid_gateway(
        &exchange,
        "",
        r#"["52.96.0.0/14", "2001:db8::/32", "192.0.2.7"]"#,
    )
    .await;
    let reply = post_ews(&gateway, None).await;
    assert_refused_unseen(&reply, &exchange, &gateway);
    assert_eq!(gateway.audit_events()[0].field("client"), Some("127.0.0.1"));
}

#[tokio::test]
async fn a_client_inside_the_routes_networks_reaches_exchange() {
    let exchange = FakeExchange::builder("ex01").start().await;
    let gateway = hybrid_gateway(&exchange, "", r#"["10.0.0.0/8", "127.0.0.0/8"]"#).await;
    let reply = post_ews(&gateway, None).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.describe());
    let seen = exchange.user_requests();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].uri, "/ews/exchange.asmx/wssecurity");
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_forwarded_client_is_judged() {
    let exchange = FakeExchange::builder("ex01").start().await;
    let gateway = hybrid_gateway(
        &exchange,
        r#"trusted_proxies = ["127.0.0.1"]"#,
        r#"["198.51.100.0/24"]"#,
    )
    .await;
    // The load balancer's own address is not the client: without X-Forwarded-For it is judged
    // as itself, and it is outside the list.
    let reply = post_ews(&gateway, None).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.describe());

    let reply = post_ews(&gateway, Some("198.51.100.7")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.describe());
    assert_eq!(exchange.user_requests().len(), 1);

    // A spoofed hop further left changes nothing: the nearest untrusted address counts.
    let reply = post_ews(&gateway, Some("198.51.100.7, 203.0.113.9")).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.describe());
    assert_eq!(exchange.user_requests().len(), 1);
    let refused = gateway
        .audit_events()
        .into_iter()
        .rev()
        .find(|e| e.event() == "source_network")
        .expect("an audit event");
    assert_eq!(refused.field("client"), Some("203.0.113.9"));
}

#[tokio::test]
async fn an_untrusted_peers_forwarded_for_is_ignored() {
    let exchange = FakeExchange::builder("ex01").start().await;
    let gateway = hybrid_gateway(
        &exchange,
        r#"trusted_proxies = ["10.9.9.9"]"#,
        r#"["198.51.100.0/24"]"#,
    )
    .await;
    let reply = post_ews(&gateway, Some("198.51.100.7")).await;
    assert_refused_unseen(&reply, &exchange, &gateway);
}

#[tokio::test]
async fn an_mfa_route_limited_to_admin_networks_refuses_before_any_sign_in() {
    let provider = start_provider().await;
    let exchange = FakeExchange::builder("ex01").start().await;
    let mut config = SignInConfig::new(&provider, &exchange);
    config.ecp_extra = "allow_from = [\"10.20.0.0/16\"]\n".into();
    let gateway = TestGateway::start(&config.toml()).await;
    gateway.wait_ready().await;
    let mut browser = Browser::new(gateway.http.expect("plain HTTP listener"));

    let reply = browser
        .request(Method::GET, "/ecp/", NAVIGATION, None, false)
        .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.describe());
    assert!(reply.location().is_none(), "no redirect to sign in");
    assert!(
        browser.login_cookies().is_empty(),
        "no sign-in was started: {:?}",
        browser.cookie_names()
    );
    assert!(provider
        .calls_to(mfa_gateway::demo::ProviderEndpoint::Authorize)
        .is_empty());
    assert!(exchange.user_requests().is_empty());

    // OWA, without allow_from, still sends the same client to sign in.
    let reply = browser.navigate("/owa/").await;
    assert_eq!(reply.status, StatusCode::FOUND, "{}", reply.describe());
}

fn check_config(dir: &Path, text: &str) -> (Option<i32>, String) {
    let path = dir.join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_mfa-gateway"))
        .args(["check-config", "--config", path.to_str().unwrap()])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    (output.status.code(), text)
}

#[test]
fn check_config_names_each_bad_network_and_an_empty_list() {
    let dir = std::env::temp_dir().join(format!("mfagw-source-networks-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let route = |allow_from: &str| {
        format!(
            "[server]\nhttp_listen = \"127.0.0.1:8080\"\n\n[upstreams.exchange]\nservers = [\"https://ex01.corp.contoso.com\"]\n\n[[routes]]\nhost = \"{HOST}\"\npath = \"/ews/mrsproxy.svc\"\nupstream = \"exchange\"\naccess = \"public\"\nallow_from = {allow_from}\n"
        )
    };
    let (code, out) = check_config(
        &dir,
        &route(r#"["52.96.0.0/14", "52.96.0.0/40", "eu.office365"]"#),
    );
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(
            "routes[0].allow_from[1] (line 12): \"52.96.0.0/40\" is neither an IP network"
        ),
        "{out}"
    );
    assert!(
        out.contains("routes[0].allow_from[2] (line 12): \"eu.office365\""),
        "{out}"
    );

    let (code, out) = check_config(&dir, &route("[]"));
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("routes[0].allow_from (line 12): must list at least one network"),
        "{out}"
    );

    let (code, out) = check_config(&dir, &route(r#"["52.96.0.0/14", "2603:1000::/24"]"#));
    assert_eq!(code, Some(0), "{out}");
    std::fs::remove_dir_all(&dir).ok();
}
