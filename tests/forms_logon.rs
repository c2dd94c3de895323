//! Exchange's forms logon bound to the MFA identity (`bind_forms_logon`): with Exchange on
//! forms authentication, the logon form that OWA and ECP post to `/owa/auth.owa` reaches
//! Exchange only when its `username` names the user who signed in at Entra — otherwise anyone
//! with their own MFA session could open another mailbox with only its password. Over real
//! sockets: a fake Exchange that keeps every body it receives, the test provider, the gateway.

mod support;

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use mfa_gateway::demo::{ClientCredential, ProviderOptions, TestProvider, TestUser};
use support::{
    full, Browser, FakeExchange, Reply, SignInConfig, TestGateway, CLIENT_ID, CLIENT_SECRET,
    NAVIGATION,
};

/// The claim a claims-mapping policy fills with the on-premises sAMAccountName.
const ACCOUNT_CLAIM: &str = "samaccountname";
const FORM: &str = "application/x-www-form-urlencoded";
const PASSWORD: &str = "Winter2026!bob-secret";

/// OWA's logon form as Exchange 2019's logon page posts it.
fn logon_form(username: &str) -> String {
    let fields = [
        ("destination", "http://mail.contoso.com/owa/"),
        ("flags", "4"),
        ("forcedownlevel", "0"),
        ("username", username),
        ("password", PASSWORD),
        ("passwordText", ""),
        ("isUtf8", "1"),
    ];
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(fields)
        .finish()
}

struct World {
    provider: TestProvider,
    exchange: FakeExchange,
    /// Every body Exchange received, in order.
    bodies: Arc<Mutex<Vec<Bytes>>>,
    gateway: TestGateway,
}

async fn world(configure: impl FnOnce(&mut SignInConfig)) -> World {
    let mut alice = TestUser::alice();
    alice
        .extra_claims
        .push((ACCOUNT_CLAIM.to_owned(), "alice".to_owned()));
    let options = ProviderOptions {
        users: vec![alice, TestUser::bob()],
        ..ProviderOptions::default()
    };
    let provider = TestProvider::start(options).await.expect("provider starts");
    provider.register_client(CLIENT_ID, ClientCredential::Secret(CLIENT_SECRET.into()));
    let bodies: Arc<Mutex<Vec<Bytes>>> = Arc::default();
    let kept = bodies.clone();
    let exchange = FakeExchange::builder("ex01")
        .handler(move |req: Request<Incoming>| {
            let kept = kept.clone();
            async move {
                let body = req
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                kept.lock().unwrap().push(body);
                // Exchange answers a good logon with its cookies and a redirect to OWA.
                Response::builder()
                    .status(StatusCode::FOUND)
                    .header("location", "/owa/")
                    .header("set-cookie", "cadata=x; path=/; HttpOnly")
                    .body(full("logged on"))
                    .unwrap()
            }
        })
        .start()
        .await;
    let mut config = SignInConfig::new(&provider, &exchange);
    configure(&mut config);
    let gateway = TestGateway::start(&config.toml()).await;
    gateway.wait_ready().await;
    World {
        provider,
        exchange,
        bodies,
        gateway,
    }
}

impl World {
    async fn alice(&self) -> Browser {
        let mut browser = Browser::new(self.gateway.http.expect("plain HTTP listener"));
        browser.sign_in_ok("/owa/", &self.provider, "alice").await;
        browser
    }

    fn logon_posts(&self) -> usize {
        self.exchange
            .user_requests()
            .iter()
            .filter(|r| r.method == Method::POST)
            .count()
    }

    /// The refusal: 403 naming the account this session may open, Exchange never reached and
    /// the password nowhere in what it received, and one audit event with both names.
    fn assert_refused(&self, reply: &Reply, reason: &str, attempted: &str) {
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.describe());
        assert!(
            reply.body.contains("alice@contoso.com"),
            "the page names the account this session may open: {}",
            reply.describe()
        );
        assert_eq!(self.logon_posts(), 0, "Exchange must not receive the logon");
        assert!(self
            .bodies
            .lock()
            .unwrap()
            .iter()
            .all(|b| !String::from_utf8_lossy(b).contains(PASSWORD)));
        let events: Vec<_> = self
            .gateway
            .audit_events()
            .into_iter()
            .filter(|e| e.event() == "forms_logon")
            .collect();
        assert_eq!(events.len(), 1, "{events:?}");
        let event = &events[0];
        assert_eq!(
            (event.outcome(), event.reason()),
            ("refused", reason),
            "{event:?}"
        );
        assert_eq!(event.field("attempted"), Some(attempted), "{event:?}");
        assert_eq!(event.field("upn"), Some("alice@contoso.com"), "{event:?}");
        assert!(
            event.fields.values().all(|v| !v.contains(PASSWORD)),
            "never the password: {event:?}"
        );
    }
}

async fn post(browser: &mut Browser, path: &str, body: String) -> Reply {
    browser
        .request(Method::POST, path, NAVIGATION, Some((body, FORM)), false)
        .await
}

#[tokio::test]
async fn the_signed_in_user_logs_on_to_exchange_under_her_upn_in_any_case() {
    let world = world(|_| {}).await;
    let mut browser = world.alice().await;
    for (i, username) in ["alice@contoso.com", "ALICE@Contoso.COM"]
        .iter()
        .enumerate()
    {
        let form = logon_form(username);
        let reply = post(&mut browser, "/owa/auth.owa", form.clone()).await;
        assert_eq!(reply.status, StatusCode::FOUND, "{}", reply.describe());
        assert_eq!(reply.location(), Some("/owa/"));
        let bodies = world.bodies.lock().unwrap().clone();
        assert_eq!(
            bodies.last().map(|b| &b[..]),
            Some(form.as_bytes()),
            "Exchange gets the form byte for byte"
        );
        assert_eq!(world.logon_posts(), i + 1);
    }
    assert!(world
        .gateway
        .audit_events()
        .iter()
        .all(|e| e.event() != "forms_logon"));
}

#[tokio::test]
async fn another_users_name_is_refused_naming_the_session_user_and_never_reaches_exchange() {
    let world = world(|_| {}).await;
    let mut browser = world.alice().await;
    let reply = post(&mut browser, "/owa/auth.owa", logon_form("bob@contoso.com")).await;
    assert!(
        reply.body.contains("not your account"),
        "{}",
        reply.describe()
    );
    world.assert_refused(&reply, "forms_logon_other_account", "bob@contoso.com");
}

#[tokio::test]
async fn the_logon_is_bound_however_its_path_is_spelled() {
    let world = world(|_| {}).await;
    let mut browser = world.alice().await;
    for path in [
        "/OWA/Auth.owa",
        "/owa//auth.owa",
        "/owa/%61uth.owa",
        "/owa/auth.owa.",
    ] {
        let reply = post(&mut browser, path, logon_form("bob@contoso.com")).await;
        assert_eq!(
            reply.status,
            StatusCode::FORBIDDEN,
            "{path}: {}",
            reply.describe()
        );
    }
    assert_eq!(world.logon_posts(), 0);
}

#[tokio::test]
async fn domain_and_bare_account_names_are_accepted_only_with_the_account_name_claim() {
    // Without the claim configured: only the UPN.
    let world_without = world(|_| {}).await;
    let mut browser = world_without.alice().await;
    let reply = post(&mut browser, "/owa/auth.owa", logon_form("CONTOSO\\alice")).await;
    world_without.assert_refused(&reply, "forms_logon_other_account", "CONTOSO\\alice");

    let world = world(|config| {
        config.oidc_extra =
            format!("account_name_claim = \"{ACCOUNT_CLAIM}\"\naccount_domains = [\"CONTOSO\"]\n");
    })
    .await;
    let mut browser = world.alice().await;
    for (i, username) in ["CONTOSO\\alice", "contoso\\ALICE", "alice"]
        .iter()
        .enumerate()
    {
        let form = logon_form(username);
        let reply = post(&mut browser, "/owa/auth.owa", form.clone()).await;
        assert_eq!(
            reply.status,
            StatusCode::FOUND,
            "{username}: {}",
            reply.describe()
        );
        assert_eq!(world.logon_posts(), i + 1);
        assert_eq!(
            world.bodies.lock().unwrap().last().map(|b| b.to_vec()),
            Some(form.into_bytes())
        );
    }
    // Another domain, or bob in any form, is still refused.
    for username in ["FABRIKAM\\alice", "CONTOSO\\bob", "bob"] {
        let reply = post(&mut browser, "/owa/auth.owa", logon_form(username)).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{username}");
    }
    assert_eq!(world.logon_posts(), 3);
}

#[tokio::test]
async fn a_logon_without_a_readable_username_or_too_large_is_refused() {
    let world = world(|_| {}).await;
    let mut browser = world.alice().await;
    let reply = post(
        &mut browser,
        "/owa/auth.owa",
        format!("password={PASSWORD}&destination=x"),
    )
    .await;
    world.assert_refused(&reply, "forms_logon_unreadable", "-");

    let two = format!(
        "{}&username=alice%40contoso.com",
        logon_form("bob@contoso.com")
    );
    let reply = post(&mut browser, "/owa/auth.owa", two).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.describe());

    let huge = format!(
        "{}&destination={}",
        logon_form("alice@contoso.com"),
        "a".repeat(64 * 1024)
    );
    let reply = post(&mut browser, "/owa/auth.owa", huge).await;
    assert_eq!(
        reply.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        reply.describe()
    );
    assert_eq!(world.logon_posts(), 0);
}

#[tokio::test]
async fn with_the_binding_off_any_username_reaches_exchange() {
    let world = world(|config| {
        config.owa_extra = "bind_forms_logon = false\n".into();
    })
    .await;
    let mut browser = world.alice().await;
    let form = logon_form("bob@contoso.com");
    let reply = post(&mut browser, "/owa/auth.owa", form.clone()).await;
    assert_eq!(reply.status, StatusCode::FOUND, "{}", reply.describe());
    assert_eq!(world.logon_posts(), 1);
    assert_eq!(
        world.bodies.lock().unwrap().last().map(|b| b.to_vec()),
        Some(form.into_bytes())
    );
}

/// The configuration `check-config` reads for the warning below: a complete sign-in setup with
/// `/owa` on forms logon and `bind_forms_logon = false`.
const UNBOUND_CONFIG: &str = r#"[server]
http_listen = "127.0.0.1:8080"

[oidc]
issuer = "https://sts.windows.net/3f2a9b1c-5d4e-4f60-8a7b-1c2d3e4f5a6b/"
client_id = "0c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f"
client_secret = { file = "SECRET" }

[session]
keys = [{ file = "KEY" }]

[upstreams.exchange]
servers = ["https://ex01.corp.contoso.com"]

[[routes]]
host = "mail.contoso.com"
path = "/owa"
upstream = "exchange"
access = "mfa"
bind_forms_logon = false
"#;

#[test]
fn check_config_warns_when_the_binding_is_turned_off() {
    let dir = std::env::temp_dir().join(format!("mfagw-forms-logon-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let secret = dir.join("client-secret");
    let key = dir.join("session.key");
    std::fs::write(&secret, "s3cret\n").unwrap();
    std::fs::write(&key, format!("{}\n", support::random_session_key())).unwrap();
    let config = dir.join("gateway.toml");
    let text = UNBOUND_CONFIG
        .replace("SECRET", secret.to_str().unwrap())
        .replace("KEY", key.to_str().unwrap());
    std::fs::write(&config, text).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_mfa-gateway"))
        .args(["check-config", "--config", config.to_str().unwrap()])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    let warnings: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("warning:"))
        .collect();
    assert_eq!(warnings.len(), 1, "{stdout}");
    assert!(
        warnings[0].starts_with("warning: routes[0].bind_forms_logon (line 20): ")
            && warnings[0].contains("any mailbox whose password they know"),
        "{stdout}"
    );
    std::fs::remove_dir_all(&dir).ok();
}
