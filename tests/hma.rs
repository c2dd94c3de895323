//! Exchange with hybrid modern authentication (HMA) behind the gateway, over real sockets.
//!
//! Exchange signs the browser in at the same provider as a second OpenID client (the Exchange
//! Online application); the provider keeps a browser session, so after the one interactive
//! sign-in (the gateway's) it answers Exchange's request at once, with a `form_post` page that
//! posts `code`, `id_token`, `state` and `session_state` cross-site to `/owa/`. That POST
//! carries no `SameSite=Lax` session cookie: the gateway relays it as a same-site POST, which
//! does, and Exchange — validating the ID token for real — shows the user's mailbox.
//!
//! What is proved: one interactive sign-in, then alice's mailbox; the relay is a no-store page
//! that escapes what it repeats, audited and counted, and forwards nothing itself; the same POST
//! from another origin, without an `Origin`, with a field that is no part of an authorization
//! response, or to another path, gets the ordinary 440 and Exchange never sees it.

mod support;

use http::{Method, StatusCode};
use mfa_gateway::demo::{parse_form_post, ClientCredential, ProviderOptions, TestProvider};
use support::{
    Browser, HmaExchange, HmaVerdict, Reply, SignInConfig, TestGateway, CLIENT_ID, CLIENT_SECRET,
    EXCHANGE_ONLINE_APP_ID, HMA_AUTH_COOKIE,
};

struct Fixture {
    provider: TestProvider,
    exchange: HmaExchange,
    gateway: TestGateway,
}

impl Fixture {
    async fn start() -> Fixture {
        let provider = TestProvider::start(ProviderOptions {
            single_sign_on: true,
            ..ProviderOptions::default()
        })
        .await
        .expect("test provider starts");
        provider.register_client(CLIENT_ID, ClientCredential::Secret(CLIENT_SECRET.into()));
        provider.register_client(
            EXCHANGE_ONLINE_APP_ID,
            ClientCredential::Secret("exchange-online-secret".into()),
        );
        let exchange = HmaExchange::start(
            provider.issuer(),
            &provider.authorization_endpoint(),
            &provider.jwks_uri(),
        )
        .await;
        let config = SignInConfig::new(&provider, &exchange.server);
        let gateway = TestGateway::start(&config.toml()).await;
        gateway.wait_ready().await;
        Fixture {
            provider,
            exchange,
            gateway,
        }
    }

    fn browser(&self) -> Browser {
        Browser::new(self.gateway.http.expect("plain HTTP listener"))
    }

    /// `http://127.0.0.1:PORT`: the site whose page posts the provider's answers.
    fn provider_origin(&self) -> String {
        format!("http://{}", self.provider.addr())
    }

    /// alice signs in to the gateway (interactively), opens OWA, and Exchange sends her to the
    /// provider, which answers at once from its browser session: the `form_post` page's target
    /// and fields.
    async fn exchange_sign_in_answer(
        &self,
        browser: &mut Browser,
    ) -> (String, Vec<(String, String)>) {
        browser.sign_in_ok("/owa/", &self.provider, "alice").await;
        let to_exchange_sign_in = browser.navigate("/owa/").await;
        assert_eq!(
            to_exchange_sign_in.status,
            StatusCode::FOUND,
            "{}",
            to_exchange_sign_in.describe()
        );
        let authorize = to_exchange_sign_in.location().expect("Location").to_owned();
        assert!(
            authorize.starts_with(&self.provider.authorization_endpoint())
                && authorize.contains(EXCHANGE_ONLINE_APP_ID),
            "Exchange sends the browser to the provider as its own client: {authorize}"
        );
        let answer = browser.visit_provider(&authorize).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.describe());
        let (action, fields) = parse_form_post(&answer.body).unwrap_or_else(|| {
            panic!(
                "the provider answers silently with a form_post page: {}",
                answer.body
            )
        });
        assert_eq!(action, format!("{}/owa/", browser.origin()));
        let names: Vec<&str> = fields.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["code", "id_token", "state", "session_state"]);
        (action, fields)
    }
}

fn form(fields: &[(String, String)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(fields)
        .finish()
}

/// The provider's page posts `fields` to `url` cross-site, as Chromium sends it (`origin`
/// `None`: a client that sends none).
async fn post_cross_site(
    browser: &mut Browser,
    url: &str,
    origin: Option<&str>,
    fields: &[(String, String)],
) -> Reply {
    let mut headers = vec![
        ("accept", "text/html"),
        ("sec-fetch-mode", "navigate"),
        ("sec-fetch-site", "cross-site"),
        ("sec-fetch-dest", "document"),
    ];
    if let Some(origin) = origin {
        headers.push(("origin", origin));
    }
    browser
        .request(
            Method::POST,
            url,
            &headers,
            Some((form(fields), "application/x-www-form-urlencoded")),
            true,
        )
        .await
}

#[tokio::test]
async fn one_interactive_sign_in_then_exchange_signs_in_silently_and_shows_the_mailbox() {
    let fixture = Fixture::start().await;
    let mut browser = fixture.browser();
    let (url, fields) = fixture.exchange_sign_in_answer(&mut browser).await;

    // Entra's answer, cross-site without the session cookie: relayed, not forwarded.
    let origin = fixture.provider_origin();
    let relay = post_cross_site(&mut browser, &url, Some(&origin), &fields).await;
    assert_eq!(relay.status, StatusCode::OK, "{}", relay.describe());
    assert_eq!(relay.headers["cache-control"], "no-store");
    let csp = relay.headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("form-action 'self'") && csp.contains("script-src 'sha256-"));
    let (action, relayed) = parse_form_post(&relay.body).expect("the relay page is a form");
    assert_eq!(action, "/owa/");
    assert_eq!(relayed, fields, "exactly the provider's fields, in order");
    assert!(
        fixture.exchange.sign_in_posts().is_empty(),
        "the cross-site POST itself never reaches Exchange"
    );
    let relays: Vec<_> = fixture
        .gateway
        .audit_events()
        .into_iter()
        .filter(|e| e.event() == "hma_relay")
        .collect();
    assert_eq!(relays.len(), 1, "{relays:?}");
    assert_eq!(
        relays[0].field("fields"),
        Some("code,id_token,state,session_state")
    );
    assert!(
        !format!("{relays:?}").contains(&fields[1].1),
        "the audit event never holds the token"
    );

    // The page posts the same form from this site: with the session cookie, through the
    // ordinary admission, to Exchange, which validates the ID token and signs alice in.
    let own_origin = browser.origin().to_owned();
    let delivered = browser
        .request(
            Method::POST,
            &action,
            &[
                ("accept", "text/html"),
                ("sec-fetch-mode", "navigate"),
                ("sec-fetch-site", "same-origin"),
                ("origin", own_origin.as_str()),
            ],
            Some((form(&relayed), "application/x-www-form-urlencoded")),
            false,
        )
        .await;
    assert_eq!(
        delivered.status,
        StatusCode::FOUND,
        "{}",
        delivered.describe()
    );
    assert_eq!(
        fixture.exchange.verdicts(),
        vec![HmaVerdict::Accepted {
            upn: "alice@contoso.com".into()
        }]
    );
    assert!(browser.cookie(HMA_AUTH_COOKIE).is_some());
    let mailbox = browser.navigate(delivered.location().unwrap()).await;
    assert_eq!(mailbox.status, StatusCode::OK, "{}", mailbox.describe());
    assert!(
        mailbox.body.contains("Mailbox of alice@contoso.com"),
        "{}",
        mailbox.body
    );
    let posts = fixture.exchange.sign_in_posts();
    assert_eq!(posts.len(), 1);
    assert!(
        posts[0]
            .headers
            .get("cookie")
            .is_some_and(|c| !c.to_str().unwrap().contains("__Host-mfagw")),
        "Exchange never sees the gateway's cookie"
    );
}

#[tokio::test]
async fn the_answer_from_any_other_origin_or_none_is_not_relayed() {
    let fixture = Fixture::start().await;
    let mut browser = fixture.browser();
    let (url, fields) = fixture.exchange_sign_in_answer(&mut browser).await;
    let evil_origin = "https://evil.example".to_owned();
    let provider_over_https = fixture.provider_origin().replace("http://", "https://");
    let own_origin = browser.origin().to_owned();
    for origin in [
        Some(evil_origin.as_str()),
        Some("null"),
        Some(provider_over_https.as_str()),
        Some(own_origin.as_str()),
        None,
    ] {
        let reply = post_cross_site(&mut browser, &url, origin, &fields).await;
        assert_eq!(
            reply.status.as_u16(),
            440,
            "origin {origin:?}: {}",
            reply.describe()
        );
        assert!(!reply.body.contains("<form"), "{origin:?}");
    }
    assert!(fixture.exchange.sign_in_posts().is_empty());
    assert!(fixture
        .gateway
        .audit_events()
        .iter()
        .all(|e| e.event() != "hma_relay"));
}

#[tokio::test]
async fn a_form_that_is_not_an_authorization_response_or_not_to_the_reply_url_is_not_relayed() {
    let fixture = Fixture::start().await;
    let mut browser = fixture.browser();
    let (url, fields) = fixture.exchange_sign_in_answer(&mut browser).await;
    let origin = fixture.provider_origin();

    let mut extra = fields.clone();
    extra.push(("username".into(), "bob".into()));
    let mut twice = fields.clone();
    twice.push(("state".into(), "other".into()));
    let only_state = vec![("state".to_owned(), "s".to_owned())];
    for (what, form) in [
        ("an extra field", extra),
        ("a field twice", twice),
        ("no code, token or error", only_state),
    ] {
        let reply = post_cross_site(&mut browser, &url, Some(&origin), &form).await;
        assert_eq!(reply.status.as_u16(), 440, "{what}: {}", reply.describe());
    }
    for path in ["/owa/auth.owa", "/owa/?x=1", "/owa/x/"] {
        let target = format!("{}{path}", browser.origin());
        let reply = post_cross_site(&mut browser, &target, Some(&origin), &fields).await;
        assert_eq!(reply.status.as_u16(), 440, "{path}: {}", reply.describe());
    }
    // Not a form.
    let reply = browser
        .request(
            Method::POST,
            &url,
            &[
                ("sec-fetch-site", "cross-site"),
                ("origin", origin.as_str()),
            ],
            Some((form(&fields), "text/plain")),
            true,
        )
        .await;
    assert_eq!(reply.status.as_u16(), 440, "{}", reply.describe());
    // Same-origin: it would have carried the cookie; nothing to relay.
    let reply = browser
        .request(
            Method::POST,
            &url,
            &[("sec-fetch-site", "same-site"), ("origin", origin.as_str())],
            Some((form(&fields), "application/x-www-form-urlencoded")),
            true,
        )
        .await;
    assert_eq!(reply.status.as_u16(), 440, "{}", reply.describe());
    assert!(fixture.exchange.sign_in_posts().is_empty());
}

#[tokio::test]
async fn the_relay_page_escapes_what_it_repeats_and_a_relay_without_a_session_gets_no_further() {
    let fixture = Fixture::start().await;
    // A browser with no gateway session at all.
    let mut browser = fixture.browser();
    let origin = fixture.provider_origin();
    let hostile = "\"><script>alert(1)</script><input name=\"x";
    let fields = vec![
        ("code".to_owned(), "c".to_owned()),
        ("state".to_owned(), hostile.to_owned()),
    ];
    let url = format!("{}/owa/", browser.origin());
    let relay = post_cross_site(&mut browser, &url, Some(&origin), &fields).await;
    assert_eq!(relay.status, StatusCode::OK, "{}", relay.describe());
    assert_eq!(relay.headers["cache-control"], "no-store");
    assert_eq!(relay.headers["x-frame-options"], "DENY");
    assert_eq!(relay.body.matches("<script>").count(), 1, "{}", relay.body);
    assert!(relay.body.contains(
        "value=\"&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;&lt;input name=&quot;x\""
    ));
    let (_, relayed) = parse_form_post(&relay.body).unwrap();
    assert_eq!(relayed, fields);

    // The re-post comes from the gateway's own page: never relayed again, and without a
    // session it is refused like any other request.
    let own_origin = browser.origin().to_owned();
    let again = browser
        .request(
            Method::POST,
            "/owa/",
            &[
                ("sec-fetch-site", "same-origin"),
                ("origin", own_origin.as_str()),
            ],
            Some((form(&relayed), "application/x-www-form-urlencoded")),
            false,
        )
        .await;
    assert_eq!(again.status.as_u16(), 440, "{}", again.describe());
    assert!(fixture.exchange.sign_in_posts().is_empty());
}
