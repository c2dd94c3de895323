//! `sso = "adfs"` through the real gateway: `/_gateway/wsfed/` as Exchange's AD FS mode uses it,
//! with sign-ins at the test provider (real RS256 ID tokens) and a token-signing certificate
//! made for the test. Every token issued is read as XML and verified by `xmlsec1` against the
//! configured certificate — a verifier that shares no code with the gateway.
//!
//! What is proved: a signed-in user gets a token for the realm of an `sso = "adfs"` route with
//! their UPN and on-premises SID; without a session the browser signs in first and comes back;
//! the realm route's policy decides (a user the route refuses gets no token); realms of other
//! hosts or paths, and other reply addresses, get no token; a session without `onprem_sid` gets
//! a page naming the claim; an old session signs in again first; WS-Federation sign-out ends the
//! session, but only from the site itself.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use http::{Method, StatusCode};
use mfa_gateway::demo::provider::GROUP_EXCHANGE_ADMINS;
use mfa_gateway::demo::{ProviderOptions, TestProvider, TestUser};
use support::{
    xmlsec1_verify, AdfsExchange, Browser, FakeExchange, Reply, SignInConfig, TestClock,
    TestGateway, TokenCheck, Xmlsec1Key, CLIENT_ID, MAIL_HOST,
};

const SAML: &str = "urn:oasis:names:tc:SAML:1.0:assertion";
const UPN_CLAIM: &str = "http://schemas.xmlsoap.org/ws/2005/05/identity/claims";
const SID_CLAIM: &str = "http://schemas.microsoft.com/ws/2008/06/identity/claims";

// ---------------------------------------------------------------------------------------------
// Fixture

/// A token-signing certificate and key in PEM files, as an administrator makes them.
struct SigningFiles {
    dir: tempfile::TempDir,
    cert_pem: String,
}

impl SigningFiles {
    fn new() -> SigningFiles {
        use rsa::pkcs8::{EncodePrivateKey, LineEnding};
        let private = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).unwrap();
        let key = private.to_pkcs8_pem(LineEnding::LF).unwrap().to_string();
        let key_pair = rcgen::KeyPair::from_pem(&key).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "mfa-gateway token signing");
        let cert_pem = params.self_signed(&key_pair).unwrap().pem();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token-signing.pem"), &cert_pem).unwrap();
        std::fs::write(dir.path().join("token-signing.key"), &key).unwrap();
        SigningFiles { dir, cert_pem }
    }

    fn cert(&self) -> PathBuf {
        self.dir.path().join("token-signing.pem")
    }

    fn key(&self) -> PathBuf {
        self.dir.path().join("token-signing.key")
    }

    fn section(&self) -> String {
        format!(
            "\n[sso.adfs]\ntoken_signing = {{ cert = {:?}, key = {:?} }}\n",
            self.cert(),
            self.key()
        )
    }

    /// The SHA-1 thumbprint of the certificate, upper-case hex, computed here from the PEM.
    fn thumbprint(&self) -> String {
        use rustls_pki_types::pem::PemObject;
        let der =
            rustls_pki_types::CertificateDer::from_pem_slice(self.cert_pem.as_bytes()).unwrap();
        let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &der);
        digest.as_ref().iter().map(|b| format!("{b:02X}")).collect()
    }
}

/// A cloud-only user: signed in with MFA, but not synchronised from Active Directory, so Entra
/// sends no `onprem_sid`.
fn dave() -> TestUser {
    TestUser {
        username: "dave".into(),
        name: "Dave Cloud".into(),
        upn: "dave@contoso.com".into(),
        oid: "4c2a8d1b-6e9f-4f3e-a5c7-2b3d4e5f6a71".into(),
        onprem_sid: None,
        groups: Vec::new(),
        extra_claims: Vec::new(),
    }
}

/// The test provider with alice, bob and the cloud-only dave, and the gateway's client.
async fn provider() -> TestProvider {
    let options = ProviderOptions {
        users: vec![TestUser::alice(), TestUser::bob(), dave()],
        ..ProviderOptions::default()
    };
    let provider = TestProvider::start(options).await.unwrap();
    provider.register_client(
        CLIENT_ID,
        mfa_gateway::demo::ClientCredential::Secret(support::CLIENT_SECRET.into()),
    );
    provider
}

struct World {
    provider: TestProvider,
    exchange: FakeExchange,
    clock: TestClock,
    gateway: TestGateway,
    signing: SigningFiles,
    /// The configuration the gateway runs (without `[sso.adfs]`), for reloads.
    config: SignInConfig,
}

/// `/owa` with `sso = "adfs"`, `/ecp` with `sso = "adfs"` for Exchange administrators only, and
/// sessions that do not go idle within the test's clock jumps.
async fn world() -> World {
    let provider = provider().await;
    let exchange = FakeExchange::builder("ex01").start().await;
    let signing = SigningFiles::new();
    let mut config = SignInConfig::new(&provider, &exchange);
    config.owa_extra = "sso = \"adfs\"\n".into();
    config.ecp_extra = format!("sso = \"adfs\"\ngroups_any_of = [\"{GROUP_EXCHANGE_ADMINS}\"]\n");
    config.session_extra = "idle_timeout = \"8h\"\n".into();
    let toml = format!("{}{}", config.toml(), signing.section());
    let clock = TestClock::new();
    let gateway = TestGateway::start_with_clock(&toml, clock.clock()).await;
    gateway.wait_ready().await;
    World {
        provider,
        exchange,
        clock,
        gateway,
        signing,
        config,
    }
}

impl World {
    fn browser(&self) -> Browser {
        Browser::new(self.gateway.http.expect("plain HTTP listener"))
    }

    fn host(&self) -> String {
        format!("{MAIL_HOST}:{}", self.gateway.http.unwrap().port())
    }

    /// Exchange's realm for a virtual directory, as Exchange builds it from the Host it sees.
    fn realm(&self, vdir: &str) -> String {
        format!("https://{}{vdir}/", self.host())
    }

    /// Where Exchange sends a browser without its own session: the issuer with `wsignin1.0`.
    fn sign_in_url(&self, realm: &str) -> String {
        let query = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("wa", "wsignin1.0")
            .append_pair("wtrealm", realm)
            .append_pair("wctx", "rm=0&id=passive&ru=%2fowa%2f")
            .finish();
        format!("/_gateway/wsfed/?{query}")
    }

    fn sso_events(&self) -> Vec<support::AuditEvent> {
        self.gateway
            .audit_events()
            .into_iter()
            .filter(|e| e.event() == "sso_token")
            .collect()
    }
}

/// The form the token page posts: its action and fields (HTML entities decoded).
fn posted_form(reply: &Reply) -> (String, Vec<(String, String)>) {
    mfa_gateway::demo::parse_form_post(&reply.body)
        .unwrap_or_else(|| panic!("a form post page: {}", reply.describe()))
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> &'a str {
    fields
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no field {name}"))
}

/// What the token says, read with an XML parser.
struct Claims {
    upn: String,
    sid: String,
    audience: String,
    applies_to: String,
    assertion_id: String,
    not_before: String,
    not_on_or_after: String,
    authentication_instant: String,
}

fn read_token(wresult: &str) -> Claims {
    let doc = roxmltree::Document::parse(wresult).expect("wresult is well-formed XML");
    let find = |name: &str| {
        doc.descendants()
            .find(|n| n.tag_name().name() == name)
            .unwrap_or_else(|| panic!("no {name} in the token"))
    };
    let assertion = find("Assertion");
    assert_eq!(assertion.tag_name().namespace(), Some(SAML));
    let attribute = |namespace: &str, name: &str| {
        let values: Vec<String> = doc
            .descendants()
            .filter(|n| {
                n.tag_name().name() == "Attribute"
                    && n.attribute("AttributeNamespace") == Some(namespace)
                    && n.attribute("AttributeName") == Some(name)
            })
            .map(|n| {
                n.children()
                    .find(|c| c.tag_name().name() == "AttributeValue")
                    .and_then(|v| v.text())
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect();
        assert_eq!(values.len(), 1, "exactly one {name} claim");
        values[0].clone()
    };
    let conditions = find("Conditions");
    Claims {
        upn: attribute(UPN_CLAIM, "upn"),
        sid: attribute(SID_CLAIM, "primarysid"),
        audience: find("Audience").text().unwrap_or_default().to_owned(),
        applies_to: find("Address").text().unwrap_or_default().to_owned(),
        assertion_id: assertion.attribute("AssertionID").unwrap().to_owned(),
        not_before: conditions.attribute("NotBefore").unwrap().to_owned(),
        not_on_or_after: conditions.attribute("NotOnOrAfter").unwrap().to_owned(),
        authentication_instant: find("AuthenticationStatement")
            .attribute("AuthenticationInstant")
            .unwrap()
            .to_owned(),
    }
}

fn seconds(time: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(time)
        .unwrap_or_else(|e| panic!("{time}: {e}"))
        .timestamp()
}

/// `xmlsec1 --verify` of the token against the PEM certificate, pinned: the certificate inside
/// the token is not trusted on its own.
fn xmlsec_verify(wresult: &str, cert_pem: &str) -> (bool, String) {
    let verdict = xmlsec1_verify(wresult, Xmlsec1Key::PubkeyCert(cert_pem));
    (verdict.ok, verdict.output)
}

/// Signs `user` in with MFA and asks for a token for `realm`: the token page.
async fn token_page(w: &World, browser: &mut Browser, user: &str, realm: &str) -> Reply {
    browser.sign_in_ok("/owa/", &w.provider, user).await;
    browser.navigate(&w.sign_in_url(realm)).await
}

// ---------------------------------------------------------------------------------------------
// Tokens

#[tokio::test]
async fn a_signed_in_user_gets_a_signed_token_for_the_realm_with_upn_and_on_premises_sid() {
    let w = world().await;
    let mut browser = w.browser();
    let realm = w.realm("/owa");
    let signed_in_at = w.clock.now() as i64;
    let reply = token_page(&w, &mut browser, "alice", &realm).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.describe());
    assert_eq!(reply.headers["cache-control"], "no-store");
    assert_eq!(reply.headers["referrer-policy"], "same-origin");

    let (action, fields) = posted_form(&reply);
    assert_eq!(action, realm, "the form goes to the realm, nowhere else");
    assert_eq!(field(&fields, "wa"), "wsignin1.0");
    assert_eq!(
        field(&fields, "wctx"),
        "rm=0&id=passive&ru=%2fowa%2f",
        "wctx is echoed unchanged"
    );
    let wresult = field(&fields, "wresult");
    let claims = read_token(wresult);
    assert_eq!(claims.upn, "alice@contoso.com");
    assert_eq!(
        claims.sid,
        TestUser::alice().onprem_sid.unwrap(),
        "the SID is the user's onprem_sid"
    );
    assert_eq!(claims.audience, realm);
    assert_eq!(claims.applies_to, realm);
    assert!(claims.assertion_id.starts_with('_'));
    let not_before = seconds(&claims.not_before);
    let lifetime = seconds(&claims.not_on_or_after) - not_before;
    assert!(
        (0..=8 * 3600).contains(&lifetime) && lifetime > 7 * 3600,
        "token_lifetime (8h by default): {lifetime} s"
    );
    let instant = seconds(&claims.authentication_instant);
    assert!(
        (instant - signed_in_at).abs() <= 5,
        "AuthenticationInstant is when the gateway session began"
    );

    let (ok, output) = xmlsec_verify(wresult, &w.signing.cert_pem);
    assert!(ok, "xmlsec1 verifies the token: {output}");

    let events = w.sso_events();
    assert_eq!(events.len(), 1, "{events:?}");
    let event = &events[0];
    assert_eq!(event.outcome(), "issued");
    assert_eq!(event.field("upn"), Some("alice@contoso.com"));
    assert_eq!(event.field("realm"), Some(realm.as_str()));
    assert_eq!(
        event.field("assertion_id"),
        Some(claims.assertion_id.as_str())
    );
    assert!(
        w.exchange
            .requests()
            .iter()
            .all(|r| !r.uri.contains("wsfed")),
        "the issuer endpoint is the gateway's own: Exchange sees nothing of it"
    );
}

#[tokio::test]
async fn a_token_altered_or_checked_against_another_certificate_fails_independent_verification() {
    let w = world().await;
    let mut browser = w.browser();
    let reply = token_page(&w, &mut browser, "alice", &w.realm("/owa")).await;
    let (_, fields) = posted_form(&reply);
    let wresult = field(&fields, "wresult").to_owned();

    let altered = wresult.replacen("alice@contoso.com", "alicf@contoso.com", 1);
    let (ok, output) = xmlsec_verify(&altered, &w.signing.cert_pem);
    assert!(!ok, "a UPN changed by one byte must not verify: {output}");

    let other = SigningFiles::new();
    let (ok, output) = xmlsec_verify(&wresult, &other.cert_pem);
    assert!(!ok, "another certificate must not verify it: {output}");
}

#[tokio::test]
async fn without_a_session_the_browser_signs_in_first_and_comes_back_for_its_token() {
    let w = world().await;
    let mut browser = w.browser();
    let url = w.sign_in_url(&w.realm("/owa"));
    let authorize = browser.start_sign_in(&url, &w.provider).await;
    let callback = browser.sign_in_at_provider(&authorize, "alice", true).await;
    let reply = browser.deliver(&callback).await;
    assert_eq!(reply.status, StatusCode::FOUND, "{}", reply.describe());
    assert_eq!(
        reply.location(),
        Some(url.as_str()),
        "back to the issuer endpoint"
    );
    let reply = browser.navigate(&url).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.describe());
    let (_, fields) = posted_form(&reply);
    assert_eq!(
        read_token(field(&fields, "wresult")).upn,
        "alice@contoso.com"
    );
}

#[tokio::test]
async fn the_realm_routes_policy_decides_who_gets_a_token() {
    let w = world().await;
    // ECP is for Exchange administrators only; bob is not one.
    let mut bob = w.browser();
    let reply = token_page(&w, &mut bob, "bob", &w.realm("/ecp")).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.describe());
    assert!(!reply.body.contains("wresult"));
    // OWA has no group rule: bob gets his token there.
    let reply = bob.navigate(&w.sign_in_url(&w.realm("/owa"))).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.describe());
    // Alice is an administrator.
    let mut alice = w.browser();
    let reply = token_page(&w, &mut alice, "alice", &w.realm("/ecp")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.describe());
    let (action, fields) = posted_form(&reply);
    assert_eq!(action, w.realm("/ecp"));
    assert_eq!(
        read_token(field(&fields, "wresult")).audience,
        w.realm("/ecp")
    );
    let outcomes: Vec<String> = w
        .sso_events()
        .iter()
        .map(|e| format!("{} {}", e.outcome(), e.field("upn").unwrap_or("-")))
        .collect();
    assert_eq!(
        outcomes,
        ["issued bob@contoso.com", "issued alice@contoso.com"],
        "bob's refusal at ECP is a policy event, not a token"
    );
}

#[tokio::test]
async fn realms_of_other_hosts_paths_or_schemes_and_other_reply_addresses_get_no_token() {
    let w = world().await;
    let mut browser = w.browser();
    browser.sign_in_ok("/owa/", &w.provider, "alice").await;
    let host = w.host();
    for realm in [
        "https://evil.example/owa/".to_owned(),
        format!("https://{host}/ews/"),
        format!("https://{host}/owa/x/"),
        format!("https://{host}/owa"),
        format!("ftp://{host}/owa/"),
        format!("https://{host}.evil.example/owa/"),
    ] {
        let reply = browser.navigate(&w.sign_in_url(&realm)).await;
        assert_eq!(
            reply.status,
            StatusCode::FORBIDDEN,
            "{realm}: {}",
            reply.describe()
        );
        assert!(!reply.body.contains("wresult"), "{realm}");
        assert!(reply.body.contains("Sign-in not available"), "{realm}");
    }
    let reply = browser
        .navigate(&format!(
            "{}&wreply=https%3a%2f%2fevil.example%2f",
            w.sign_in_url(&w.realm("/owa"))
        ))
        .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.describe());
    let reasons: Vec<String> = w
        .sso_events()
        .iter()
        .map(|e| e.field("reason").unwrap_or("-").to_owned())
        .collect();
    assert_eq!(
        reasons,
        [
            "wsfed_realm_not_published",
            "wsfed_realm_not_published",
            "wsfed_realm_not_published",
            "wsfed_realm_not_published",
            "wsfed_realm_not_published",
            "wsfed_realm_not_published",
            "wsfed_reply_not_realm",
        ]
    );
}

#[tokio::test]
async fn a_user_without_onprem_sid_gets_a_page_naming_the_missing_claim() {
    let w = world().await;
    let mut browser = w.browser();
    let reply = token_page(&w, &mut browser, "dave", &w.realm("/owa")).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.describe());
    assert!(reply.body.contains("onprem_sid"), "{}", reply.body);
    assert!(!reply.body.contains("wresult"));
    let events = w.sso_events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].outcome(), "refused");
    assert_eq!(events[0].field("reason"), Some("onprem_sid_missing"));
    assert_eq!(events[0].field("upn"), Some("dave@contoso.com"));
}

#[tokio::test]
async fn a_session_older_than_exchange_accepts_signs_in_again_before_a_token() {
    let w = world().await;
    let mut browser = w.browser();
    browser.sign_in_ok("/owa/", &w.provider, "alice").await;
    // Exchange refuses a token whose NotBefore is 6 hours after its AuthenticationInstant.
    w.clock.advance(Duration::from_secs(5 * 3600 + 55 * 60));
    let reply = browser.navigate(&w.sign_in_url(&w.realm("/owa"))).await;
    assert_eq!(reply.status, StatusCode::FOUND, "{}", reply.describe());
    assert!(
        reply
            .location()
            .unwrap()
            .starts_with(&w.provider.authorization_endpoint()),
        "{}",
        reply.describe()
    );
    assert!(w.sso_events().is_empty(), "no token from the old session");
}

#[tokio::test]
async fn malformed_requests_and_other_methods_are_refused() {
    let w = world().await;
    let mut browser = w.browser();
    browser.sign_in_ok("/owa/", &w.provider, "alice").await;
    let reply = browser.navigate("/_gateway/wsfed/?wa=wsignin2.0").await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let reply = browser.navigate("/_gateway/wsfed/?wa=wsignin1.0").await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let url = w.sign_in_url(&w.realm("/owa"));
    let reply = browser
        .request(
            Method::POST,
            &url,
            &[],
            Some((String::new(), "text/plain")),
            false,
        )
        .await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    // Without the trailing slash: sent to the address Exchange's AdfsIssuer names.
    let reply = browser.navigate(&url.replacen("wsfed/", "wsfed", 1)).await;
    assert_eq!(reply.status, StatusCode::FOUND);
    assert_eq!(reply.location(), Some(url.as_str()));
}

// ---------------------------------------------------------------------------------------------
// Through Exchange in AD FS mode

/// One MFA sign-in, then OWA as Exchange in AD FS mode serves it: Exchange sends the browser to
/// its issuer (the gateway), the token page posts to Exchange with the issuer as Referer,
/// Exchange validates the token as WIF does and opens the mailbox of the user who did MFA —
/// with no second prompt. ECP the same; Exchange's sign-out ends the gateway session too.
#[tokio::test]
async fn one_mfa_sign_in_opens_the_users_mailbox_in_exchange_adfs_mode_without_a_second_prompt() {
    let provider = provider().await;
    let signing = SigningFiles::new();
    let exchange = AdfsExchange::builder()
        .thumbprint(&signing.thumbprint())
        .start()
        .await;
    let mut config = SignInConfig::new(&provider, &exchange.server);
    config.owa_extra = "sso = \"adfs\"\n".into();
    config.ecp_extra = "sso = \"adfs\"\n".into();
    let gateway = TestGateway::start(&format!("{}{}", config.toml(), signing.section())).await;
    gateway.wait_ready().await;
    let port = gateway.http.unwrap().port();
    let origin = format!("http://{MAIL_HOST}:{port}");
    // Set-OrganizationConfig -AdfsIssuer <origin>/_gateway/wsfed/ -AdfsAudienceUris …/owa/, …/ecp/
    exchange.reconfigure(|c| {
        c.adfs_issuer = format!("{origin}/_gateway/wsfed/");
        c.audiences = vec![
            format!("https://{MAIL_HOST}:{port}/owa/"),
            format!("https://{MAIL_HOST}:{port}/ecp/"),
        ];
    });

    let mut browser = Browser::new(gateway.http.unwrap());
    browser.sign_in_ok("/owa/", &provider, "alice").await;
    for vdir in ["/owa/", "/ecp/"] {
        // Exchange has no session of its own: to the issuer.
        let reply = browser.navigate(vdir).await;
        assert_eq!(reply.status, StatusCode::FOUND, "{}", reply.describe());
        let issuer_url = reply.location().unwrap().to_owned();
        assert!(issuer_url.starts_with(&format!("{origin}/_gateway/wsfed/?wa=wsignin1.0")));
        // The gateway answers with the token page; the browser posts it to the realm.
        let page = browser.navigate(&issuer_url).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.describe());
        let (action, fields) = posted_form(&page);
        assert_eq!(action, format!("https://{MAIL_HOST}:{port}{vdir}"));
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(&fields)
            .finish();
        // The page's full address as Referer (Referrer-Policy: same-origin); the realm's path
        // on this plain-HTTP test listener.
        let posted = browser
            .request(
                Method::POST,
                vdir,
                &[
                    ("referer", issuer_url.as_str()),
                    ("origin", origin.as_str()),
                    ("sec-fetch-site", "same-origin"),
                    ("sec-fetch-mode", "navigate"),
                ],
                Some((body, "application/x-www-form-urlencoded")),
                false,
            )
            .await;
        assert_eq!(posted.status, StatusCode::FOUND, "{}", posted.describe());
        match exchange.last_check() {
            Some(TokenCheck::Accepted { upn, sid, .. }) => {
                assert_eq!(upn, "alice@contoso.com");
                assert_eq!(sid, TestUser::alice().onprem_sid);
            }
            other => panic!("Exchange refused the token at {vdir}: {other:?}"),
        }
        // Back to where Exchange started, now with its own session: alice's mailbox.
        let mailbox = browser.navigate(posted.location().unwrap()).await;
        assert_eq!(mailbox.status, StatusCode::OK, "{}", mailbox.describe());
        assert!(
            mailbox.body.contains("alice@contoso.com"),
            "{}",
            mailbox.describe()
        );
    }
    assert_eq!(
        exchange.checks().len(),
        2,
        "one token for OWA, one for ECP, each accepted once"
    );

    // OWA's sign-out: Exchange clears its session and sends the browser to the issuer, which
    // ends the gateway session and continues to Entra.
    let reply = browser.navigate("/owa/logoff.owa").await;
    assert_eq!(reply.status, StatusCode::FOUND, "{}", reply.describe());
    assert!(
        reply
            .location()
            .unwrap()
            .starts_with(&provider.end_session_endpoint()),
        "{}",
        reply.describe()
    );
    let after = browser.navigate("/owa/").await;
    assert!(
        after
            .location()
            .is_some_and(|l| l.starts_with(&provider.authorization_endpoint())),
        "signed out of the gateway: {}",
        after.describe()
    );
}

// ---------------------------------------------------------------------------------------------
// Sign-out

#[tokio::test]
async fn wsfed_sign_out_from_the_site_ends_the_session_but_a_cross_site_one_only_asks() {
    let w = world().await;
    let mut browser = w.browser();
    browser.sign_in_ok("/owa/", &w.provider, "alice").await;

    let cross_site = browser
        .request(
            Method::GET,
            "/_gateway/wsfed/?wa=wsignout1.0",
            &[
                ("sec-fetch-site", "cross-site"),
                ("sec-fetch-mode", "navigate"),
            ],
            None,
            false,
        )
        .await;
    assert_eq!(cross_site.status, StatusCode::OK);
    assert!(cross_site.body.contains("Sign out"));
    let still = browser.navigate("/owa/").await;
    assert_eq!(
        still.status,
        StatusCode::OK,
        "a cross-site link signs no one out"
    );

    let reply = browser
        .request(
            Method::GET,
            "/_gateway/wsfed/?wa=wsignout1.0",
            &[
                ("sec-fetch-site", "same-origin"),
                ("sec-fetch-mode", "navigate"),
            ],
            None,
            false,
        )
        .await;
    assert_eq!(reply.status, StatusCode::FOUND, "{}", reply.describe());
    assert!(
        reply
            .location()
            .unwrap()
            .starts_with(&w.provider.end_session_endpoint()),
        "on to Entra's sign-out: {}",
        reply.describe()
    );
    let after = browser.navigate("/owa/").await;
    assert_eq!(
        after.status,
        StatusCode::FOUND,
        "signed out: {}",
        after.describe()
    );
    let sign_out = w
        .gateway
        .audit_events()
        .into_iter()
        .find(|e| e.event() == "sign_out")
        .expect("a sign-out event");
    assert_eq!(sign_out.field("reason"), Some("wsfed_signout"));
}

// ---------------------------------------------------------------------------------------------
// Certificate rollover

/// The rollover the deployment guide describes: the new certificate is listed second while
/// Exchange learns its thumbprint, then moved first by a reload, and from then on signs.
#[tokio::test]
async fn a_reload_that_puts_the_next_certificate_first_signs_with_it_from_the_next_token() {
    let w = world().await;
    let next = SigningFiles::new();
    let both = |first: &SigningFiles, second: &SigningFiles| {
        format!(
            "\n[sso.adfs]\ntoken_signing = [\n  {{ cert = {:?}, key = {:?} }},\n  {{ cert = {:?}, key = {:?} }},\n]\n",
            first.cert(),
            first.key(),
            second.cert(),
            second.key()
        )
    };
    let config = w.config.clone();
    let reload = |section: String| {
        let text = format!("{}{section}", config.toml());
        let parsed =
            mfa_gateway::config::Config::from_toml(&text, &mfa_gateway::config::SystemSecrets)
                .unwrap();
        w.gateway.gateway().reload(parsed)
    };
    let mut browser = w.browser();
    browser.sign_in_ok("/owa/", &w.provider, "alice").await;
    let token = |reply: &Reply| {
        let (_, fields) = posted_form(reply);
        field(&fields, "wresult").to_owned()
    };

    // The current certificate first, the next one listed for Exchange to learn.
    reload(both(&w.signing, &next)).unwrap();
    let reply = browser.navigate(&w.sign_in_url(&w.realm("/owa"))).await;
    let wresult = token(&reply);
    assert!(xmlsec_verify(&wresult, &w.signing.cert_pem).0);
    assert!(!xmlsec_verify(&wresult, &next.cert_pem).0);

    // Switched: the next certificate signs.
    reload(both(&next, &w.signing)).unwrap();
    let reply = browser.navigate(&w.sign_in_url(&w.realm("/owa"))).await;
    let wresult = token(&reply);
    let (ok, output) = xmlsec_verify(&wresult, &next.cert_pem);
    assert!(
        ok,
        "the new first certificate signs after the reload: {output}"
    );
    assert!(!xmlsec_verify(&wresult, &w.signing.cert_pem).0);

    // A reload with an unusable key is refused and the running certificate keeps signing.
    let broken = format!(
        "\n[sso.adfs]\ntoken_signing = {{ cert = {:?}, key = {:?} }}\n",
        w.signing.cert(),
        next.key()
    );
    assert!(
        reload(broken).is_err(),
        "a key of another certificate is refused"
    );
    let reply = browser.navigate(&w.sign_in_url(&w.realm("/owa"))).await;
    assert!(xmlsec_verify(&token(&reply), &next.cert_pem).0);
}

/// Rollover as operations does it on the real binary: the files are replaced in place and the
/// process gets SIGHUP; the next token is signed with the new key, without a restart.
#[tokio::test]
async fn sighup_to_the_running_binary_reloads_the_token_signing_certificate_files() {
    support::init();
    let provider = provider().await;
    let exchange = FakeExchange::builder("ex01").start().await;
    let signing = SigningFiles::new();
    let mut config = SignInConfig::new(&provider, &exchange);
    config.owa_extra = "sso = \"adfs\"\n".into();
    let dir = tempfile::tempdir().unwrap();
    let (gateway, ports) = support::GatewayProcess::start(dir.path(), &[], |ports| {
        let toml = format!("{}{}", config.toml(), signing.section());
        toml.replace(
            "http_listen = \"127.0.0.1:0\"",
            &format!("http_listen = \"127.0.0.1:{}\"", ports.http),
        )
    })
    .await;
    let gateway_addr = std::net::SocketAddr::from(([127, 0, 0, 1], ports.http));
    let realm = format!("https://{MAIL_HOST}:{}/owa/", ports.http);
    let query = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("wa", "wsignin1.0")
        .append_pair("wtrealm", &realm)
        .finish();
    let token_url = format!("/_gateway/wsfed/?{query}");
    let ready = support::wait_until(Duration::from_secs(10), || async {
        reqwest::get(format!("http://{gateway_addr}/_gateway/health"))
            .await
            .is_ok_and(|r| r.status() == StatusCode::OK)
    })
    .await;
    assert!(ready, "the gateway never became ready:\n{}", gateway.log());

    let mut browser = Browser::new(gateway_addr);
    browser.sign_in_ok("/owa/", &provider, "alice").await;
    let token = |reply: &Reply| {
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.describe());
        let (_, fields) = posted_form(reply);
        field(&fields, "wresult").to_owned()
    };
    let before = token(&browser.navigate(&token_url).await);
    assert!(xmlsec_verify(&before, &signing.cert_pem).0);

    let next = SigningFiles::new();
    std::fs::copy(next.cert(), signing.cert()).unwrap();
    std::fs::copy(next.key(), signing.key()).unwrap();
    let log_before = gateway.log().len();
    gateway.signal("HUP");
    let reloaded = support::wait_until(Duration::from_secs(10), || async {
        gateway
            .log()
            .get(log_before..)
            .is_some_and(|new| new.contains("configuration reloaded"))
    })
    .await;
    assert!(reloaded, "no reload in the log:\n{}", gateway.log());

    let after = token(&browser.navigate(&token_url).await);
    let (ok, output) = xmlsec_verify(&after, &next.cert_pem);
    assert!(ok, "the replaced files sign after SIGHUP: {output}");
    assert!(!xmlsec_verify(&after, &signing.cert_pem).0);
}

// ---------------------------------------------------------------------------------------------
// Configuration

#[test]
fn check_config_prints_the_thumbprint_exchange_needs_and_refuses_a_key_of_another_certificate() {
    let signing = SigningFiles::new();
    let dir = tempfile::tempdir().unwrap();
    let session_key = dir.path().join("session.key");
    std::fs::write(&session_key, support::random_session_key()).unwrap();
    let config = |signing_section: &str| {
        format!(
            r#"[server]
http_listen = "127.0.0.1:8080"
[oidc]
issuer = "https://sts.windows.net/3f2a9b1c-5d4e-4f60-8a7b-1c2d3e4f5a6b/"
client_id = "{CLIENT_ID}"
client_secret = {{ value = "x" }}
[session]
keys = [{{ file = {session_key:?} }}]
[upstreams.exchange]
servers = ["http://127.0.0.1:8081"]
[[routes]]
host = "mail.contoso.com"
path = "/owa"
upstream = "exchange"
access = "mfa"
sso = "adfs"
{signing_section}"#
        )
    };
    let check = |text: &str| {
        let file = dir.path().join("gateway.toml");
        std::fs::write(&file, text).unwrap();
        let output = Command::new(env!("CARGO_BIN_EXE_mfa-gateway"))
            .args(["check-config", "--config"])
            .arg(&file)
            .output()
            .unwrap();
        (
            output.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        )
    };

    let (ok, output) = check(&config(&signing.section()));
    assert!(ok, "{output}");
    assert!(
        output.contains(&format!(
            "thumbprint {} (signs tokens)",
            signing.thumbprint()
        )),
        "{output}"
    );

    let other = SigningFiles::new();
    let mismatched = format!(
        "\n[sso.adfs]\ntoken_signing = {{ cert = {:?}, key = {:?} }}\n",
        signing.cert(),
        other.key()
    );
    let (ok, output) = check(&config(&mismatched));
    assert!(!ok, "a key of another certificate is refused: {output}");
    assert!(output.contains("sso.adfs.token_signing"), "{output}");

    let missing = "\n[sso.adfs]\ntoken_signing = { cert = \"/nonexistent/ts.pem\", key = \"/nonexistent/ts.key\" }\n";
    let (ok, output) = check(&config(missing));
    assert!(!ok, "{output}");
    assert!(output.contains("/nonexistent/ts.pem"), "{output}");
}
