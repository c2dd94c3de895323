//! `mfa-gateway demo`, the first command of the README: the real binary starts its identity
//! provider, the sample Exchange server and the gateway, and a person signs in through them as
//! a browser would, with real RS256 tokens over real sockets.
//!
//! The binary is the one cargo built for this run, or the one `MFA_GATEWAY_BIN` names: the CI
//! points it at the product build, which is compiled without the provider's test kit, so the
//! demo is proven to work as shipped.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use http::header::{LOCATION, SET_COOKIE};
use http::StatusCode;
use mfa_gateway::demo::{parse_form_post, sign_in_form};

/// Starting generates an RSA key and health-checks the sample Exchange: seconds, not minutes.
const START_DEADLINE: Duration = Duration::from_secs(60);

/// A page load in a browser's address bar.
const NAVIGATION: &[(&str, &str)] = &[
    (
        "accept",
        "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    ),
    ("sec-fetch-mode", "navigate"),
    ("sec-fetch-dest", "document"),
];

/// The provider's `form_post` page posting the code back: a cross-site navigation.
const FORM_POST_NAVIGATION: &[(&str, &str)] = &[
    ("accept", "text/html"),
    ("sec-fetch-mode", "navigate"),
    ("sec-fetch-dest", "document"),
    ("sec-fetch-site", "cross-site"),
];

/// `mfa-gateway demo` running on a free loopback port; killed when dropped.
struct Demo {
    child: Child,
    port: u16,
    banner: String,
}

impl Demo {
    /// Starts the demo and waits until it says where to open it.
    fn start() -> Demo {
        Demo::start_with(&[])
    }

    /// Starts the demo with more arguments (`--sso adfs`).
    fn start_with(extra: &[&str]) -> Demo {
        let binary = std::env::var_os("MFA_GATEWAY_BIN")
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_mfa-gateway").into());
        let mut child = Command::new(&binary)
            .args(["demo", "--listen", "127.0.0.1:0"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{} starts: {e}", binary.to_string_lossy()));
        let stdout = child.stdout.take().expect("stdout is piped");
        let (lines, banner) = mpsc::channel();
        // Keeps reading to the end, so the demo never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = lines.send(line);
            }
        });
        let mut demo = Demo {
            child,
            port: 0,
            banner: String::new(),
        };
        let deadline = Instant::now() + START_DEADLINE;
        while demo.port == 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = banner.recv_timeout(left).unwrap_or_else(|_| {
                panic!(
                    "the demo printed no URL to open within {START_DEADLINE:?}; it printed:\n{}",
                    demo.banner
                )
            });
            demo.banner.push_str(&line);
            demo.banner.push('\n');
            if let Some(url) = line.trim().strip_prefix("Open http://localhost:") {
                let port = url.split('/').next().unwrap_or_default();
                demo.port = port.parse().expect("the URL to open has a port");
            }
        }
        demo
    }

    fn url(&self, path: &str) -> String {
        format!("http://localhost:{}{path}", self.port)
    }

    /// Waits until the gateway's health endpoint says it is ready, as a load balancer would
    /// before sending users: its first health check of the sample Exchange has passed.
    async fn wait_until_ready(&self, browser: &mut Browser) {
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            let health = browser.navigate(&self.url("/_gateway/health")).await;
            if health.status == StatusCode::OK {
                assert_eq!(health.body, "ready\n");
                return;
            }
            assert_eq!(
                health.status,
                StatusCode::SERVICE_UNAVAILABLE,
                "health is ready or not yet: {}",
                health.body
            );
            assert!(
                Instant::now() < deadline,
                "the demo was not ready within {START_DEADLINE:?}; it printed:\n{}",
                self.banner
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Reply {
    status: StatusCode,
    location: Option<String>,
    body: String,
}

/// A browser: no automatic redirects, and the cookies the gateway sets, sent back to it.
struct Browser {
    client: reqwest::Client,
    cookies: Vec<(String, String)>,
}

impl Browser {
    fn new(demo: &Demo) -> Browser {
        mfa_gateway::install_crypto_provider();
        let gateway = SocketAddr::from(([127, 0, 0, 1], demo.port));
        Browser {
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .resolve("localhost", gateway)
                .build()
                .expect("HTTP client"),
            cookies: Vec::new(),
        }
    }

    async fn send(&mut self, request: reqwest::RequestBuilder, to_gateway: bool) -> Reply {
        let mut request = request;
        if to_gateway && !self.cookies.is_empty() {
            let header: Vec<String> = self
                .cookies
                .iter()
                .map(|(name, value)| format!("{name}={value}"))
                .collect();
            request = request.header("cookie", header.join("; "));
        }
        let response = request.send().await.expect("the demo answers");
        let status = response.status();
        let location = response
            .headers()
            .get(LOCATION)
            .map(|value| value.to_str().expect("ASCII Location").to_owned());
        if to_gateway {
            for set in response.headers().get_all(SET_COOKIE) {
                let set = set.to_str().expect("ASCII Set-Cookie");
                let pair = set.split(';').next().unwrap_or_default();
                let (name, value) = pair.split_once('=').expect("name=value");
                self.cookies.retain(|(kept, _)| kept != name);
                if !set.to_ascii_lowercase().contains("max-age=0") {
                    self.cookies.push((name.to_owned(), value.to_owned()));
                }
            }
        }
        let body = response.text().await.expect("a body");
        Reply {
            status,
            location,
            body,
        }
    }

    async fn navigate(&mut self, url: &str) -> Reply {
        let mut request = self.client.get(url);
        for (name, value) in NAVIGATION {
            request = request.header(*name, *value);
        }
        let to_gateway = url.starts_with("http://localhost:");
        self.send(request, to_gateway).await
    }

    async fn post_form(
        &mut self,
        url: &str,
        fields: &[(String, String)],
        headers: &[(&str, &str)],
    ) -> Reply {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(fields)
            .finish();
        let mut request = self
            .client
            .post(url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let to_gateway = url.starts_with("http://localhost:");
        self.send(request, to_gateway).await
    }

    /// Opens `/owa/`, signs in as `user` at the demo's provider, saying whether MFA was done,
    /// and delivers the provider's answer to the gateway; returns the gateway's reply to it.
    async fn sign_in(&mut self, demo: &Demo, user: &str, mfa: bool) -> Reply {
        let start = self.navigate(&demo.url("/owa/")).await;
        assert_eq!(
            start.status,
            StatusCode::FOUND,
            "opening OWA without a session leads to the sign-in"
        );
        let authorize = start.location.expect("a redirect to the provider");
        assert!(
            authorize.starts_with("http://127.0.0.1:") && authorize.contains("/oauth2/authorize?"),
            "the gateway sends the browser to the demo's provider: {authorize}"
        );
        let page = self.navigate(&authorize).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        assert!(
            page.body.contains("alice") && page.body.contains("multifactor"),
            "the provider's sign-in page offers alice and the MFA choice: {}",
            page.body
        );
        let (action, form) = sign_in_form(&authorize, user, mfa);
        let answer = self
            .post_form(&action, &form, &[("accept", "text/html")])
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        let (callback, fields) = parse_form_post(&answer.body)
            .unwrap_or_else(|| panic!("a form_post page: {}", answer.body));
        assert_eq!(callback, demo.url("/_gateway/callback"));
        self.post_form(&callback, &fields, FORM_POST_NAVIGATION)
            .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_signs_alice_in_with_mfa_and_opens_her_mailbox() {
    let demo = Demo::start();
    let mut browser = Browser::new(&demo);
    demo.wait_until_ready(&mut browser).await;

    let signed_in = browser.sign_in(&demo, "alice", true).await;
    assert_eq!(signed_in.status, StatusCode::FOUND, "{}", signed_in.body);
    assert_eq!(signed_in.location.as_deref(), Some("/owa/"));
    assert!(
        browser
            .cookies
            .iter()
            .any(|(name, _)| name == "__Host-mfagw"),
        "the sign-in sets the session cookie: {:?}",
        browser.cookies
    );

    let mailbox = browser.navigate(&demo.url("/owa/")).await;
    assert_eq!(mailbox.status, StatusCode::OK, "{}", mailbox.body);
    assert!(
        mailbox.body.contains("Outlook (sample Exchange server)"),
        "the sample Exchange server's inbox: {}",
        mailbox.body
    );
    assert!(
        !mailbox.body.to_ascii_lowercase().contains("mfagw"),
        "the gateway's cookies never reach Exchange: {}",
        mailbox.body
    );

    let ews = browser.navigate(&demo.url("/ews/exchange.asmx")).await;
    assert_eq!(
        ews.status,
        StatusCode::NOT_FOUND,
        "EWS is not published by the demo, even with a session"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_refuses_a_password_only_sign_in_and_exchange_stays_closed() {
    let demo = Demo::start();
    let mut browser = Browser::new(&demo);
    demo.wait_until_ready(&mut browser).await;

    let refused = browser.sign_in(&demo, "alice", false).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.body);
    assert!(
        refused
            .body
            .contains("did not include multifactor authentication"),
        "the refusal says why: {}",
        refused.body
    );
    assert!(
        !browser
            .cookies
            .iter()
            .any(|(name, _)| name == "__Host-mfagw"),
        "no session cookie after a refused sign-in: {:?}",
        browser.cookies
    );

    let owa = browser.navigate(&demo.url("/owa/")).await;
    assert_eq!(
        owa.status,
        StatusCode::FOUND,
        "OWA still asks for a sign-in: {}",
        owa.body
    );
    assert!(!owa.body.contains("sample Exchange"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_in_adfs_mode_lands_in_the_mailbox_with_the_gateways_token_and_no_second_prompt() {
    let demo = Demo::start_with(&["--sso", "adfs"]);
    let mut browser = Browser::new(&demo);
    demo.wait_until_ready(&mut browser).await;

    let signed_in = browser.sign_in(&demo, "alice", true).await;
    assert_eq!(signed_in.status, StatusCode::FOUND, "{}", signed_in.body);
    assert_eq!(signed_in.location.as_deref(), Some("/owa/"));

    // The sample Exchange, in AD FS mode, has no session of its own: it sends the browser to
    // its AdfsIssuer, the gateway's WS-Federation endpoint on the same host.
    let exchange = browser.navigate(&demo.url("/owa/")).await;
    assert_eq!(exchange.status, StatusCode::FOUND, "{}", exchange.body);
    let wsfed = exchange.location.expect("a redirect to the AdfsIssuer");
    assert!(
        wsfed.starts_with(&demo.url("/_gateway/wsfed/?wa=wsignin1.0&wtrealm=")),
        "{wsfed}"
    );

    let post_page = browser.navigate(&wsfed).await;
    assert_eq!(post_page.status, StatusCode::OK, "{}", post_page.body);
    let (action, fields) = parse_form_post(&post_page.body)
        .unwrap_or_else(|| panic!("the token's auto-post page: {}", post_page.body));
    assert_eq!(action, demo.url("/owa/"), "the token goes to the realm");
    assert!(fields.iter().any(|(name, value)| name == "wresult"
        && value.contains("saml:Assertion")
        && value.contains("alice@contoso.com")));

    // Exchange accepts a token only from a POST whose Referer starts with its AdfsIssuer.
    let mut refused = Browser::new(&demo);
    let without_referer = refused
        .post_form(&action, &fields, &[("accept", "text/html")])
        .await;
    assert_ne!(
        without_referer.status,
        StatusCode::FOUND,
        "the sample Exchange checks the Referer: {}",
        without_referer.body
    );

    let accepted = browser
        .post_form(
            &action,
            &fields,
            &[("accept", "text/html"), ("referer", &wsfed)],
        )
        .await;
    assert_eq!(accepted.status, StatusCode::FOUND, "{}", accepted.body);
    let back = accepted.location.expect("back to the page first asked");
    assert_eq!(back, "/owa/");

    let mailbox = browser.navigate(&demo.url(&back)).await;
    assert_eq!(mailbox.status, StatusCode::OK, "{}", mailbox.body);
    assert!(
        mailbox.body.contains("Inbox of alice@contoso.com"),
        "Exchange opened the mailbox the token named: {}",
        mailbox.body
    );
    assert!(mailbox.body.contains("AD FS mode"), "{}", mailbox.body);
}
