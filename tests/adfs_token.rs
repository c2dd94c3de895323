//! The WS-Federation token the gateway gives Exchange in AD FS mode, judged by others than the
//! code that made it: `xmlsec1` verifies the signature (against the configured certificate, or
//! with the certificate as trust anchor), and the Exchange stand-in (`support::adfs_exchange`)
//! applies what Exchange and WIF check before they open a mailbox. Also: which signing
//! certificates and keys the gateway refuses to load, and their thumbprint.
//!
//! `xmlsec1` must be installed (Debian/Ubuntu: `apt-get install xmlsec1`); without it these
//! tests fail, they never skip.

mod support;

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use http::header::{CONTENT_TYPE, COOKIE, HOST, REFERER};
use http::StatusCode;
use mfa_gateway::sso::adfs::{
    issue, thumbprint_of, CredentialError, IssuedToken, SigningCredential, TokenRequest,
};
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::pkcs8::{EncodePrivateKey, LineEnding};
use rsa::{Pkcs1v15Sign, RsaPrivateKey};
use sha2::{Digest, Sha256};
use support::{
    plain_client, read_reply, require_xmlsec1, xmlsec1_verify, AdfsExchange, Refusal, Reply,
    TokenCheck, Xmlsec1Key, ADFS_AUTH_COOKIE,
};

const HOST_NAME: &str = "mail.test";
const ISSUER: &str = "https://mail.test/_gateway/wsfed/";
const OWA: &str = "https://mail.test/owa/";
const ECP: &str = "https://mail.test/ecp/";
const UPN: &str = "alice@contoso.com";
const SID: &str = "S-1-5-21-1004336348-1177238915-682003330-1106";

// ---------------------------------------------------------------------------------------------
// Keys, certificates, tokens

/// A token-signing certificate (self-signed, like the AD FS one) and its 2048-bit RSA key.
struct Signer {
    cert_pem: String,
    key_pem: String,
    private: RsaPrivateKey,
    credential: SigningCredential,
}

impl Signer {
    fn new(name: &str) -> Signer {
        let private = RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).unwrap();
        let key_pem = private.to_pkcs8_pem(LineEnding::LF).unwrap().to_string();
        let key_pair = rcgen::KeyPair::from_pem(&key_pem).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("Token Signing - {name}"));
        let cert_pem = params.self_signed(&key_pair).unwrap().pem();
        let credential =
            SigningCredential::from_pem(cert_pem.as_bytes(), key_pem.as_bytes()).unwrap();
        Signer {
            cert_pem,
            key_pem,
            private,
            credential,
        }
    }
}

/// The certificate Exchange trusts.
fn signer() -> &'static Signer {
    static SIGNER: OnceLock<Signer> = OnceLock::new();
    SIGNER.get_or_init(|| Signer::new("mail.test"))
}

/// A certificate nobody told Exchange about.
fn stranger() -> &'static Signer {
    static SIGNER: OnceLock<Signer> = OnceLock::new();
    SIGNER.get_or_init(|| Signer::new("someone else"))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn request<'a>(upn: &'a str, realm: &'a str) -> TokenRequest<'a> {
    let now = now();
    TokenRequest {
        issuer: ISSUER,
        realm,
        upn,
        primary_sid: SID,
        authenticated_at: now - 120,
        now,
        not_on_or_after: now + 480,
    }
}

fn issued(signer: &Signer, request: &TokenRequest<'_>) -> IssuedToken {
    issue(&signer.credential, request).unwrap()
}

fn byte_range(haystack: &str, start: &str, end: &str) -> std::ops::Range<usize> {
    let from = haystack.find(start).unwrap();
    let to = haystack[from..].find(end).unwrap() + from + end.len();
    from..to
}

/// Digests and signs the assertion again after a test changed it, so that only the change is
/// wrong with it: a token as a compromised (or buggy) trusted signer would send it.
fn resign(wresult: &str, key: &RsaPrivateKey) -> String {
    let assertion = byte_range(wresult, "<saml:Assertion", "</saml:Assertion>");
    let signature = byte_range(wresult, "<ds:Signature", "</ds:Signature>");
    let unsigned = format!(
        "{}{}",
        &wresult[assertion.start..signature.start],
        &wresult[signature.end..assertion.end]
    );
    let digest = BASE64.encode(Sha256::digest(unsigned.as_bytes()));
    let old_digest = byte_range(wresult, "<ds:DigestValue>", "</ds:DigestValue>");
    let mut out = format!(
        "{}<ds:DigestValue>{digest}</ds:DigestValue>{}",
        &wresult[..old_digest.start],
        &wresult[old_digest.end..]
    );
    let signed_info = byte_range(&out, "<ds:SignedInfo>", "</ds:SignedInfo>");
    let canonical = out[signed_info.clone()].replacen(
        "<ds:SignedInfo>",
        "<ds:SignedInfo xmlns:ds=\"http://www.w3.org/2000/09/xmldsig#\">",
        1,
    );
    let value = key
        .sign(
            Pkcs1v15Sign::new::<Sha256>(),
            &Sha256::digest(canonical.as_bytes()),
        )
        .unwrap();
    let old_value = byte_range(&out, "<ds:SignatureValue>", "</ds:SignatureValue>");
    out = format!(
        "{}<ds:SignatureValue>{}</ds:SignatureValue>{}",
        &out[..old_value.start],
        BASE64.encode(value),
        &out[old_value.end..]
    );
    out
}

fn upn_attribute(upn: &str) -> String {
    format!(
        "<saml:Attribute AttributeName=\"upn\" \
         AttributeNamespace=\"http://schemas.xmlsoap.org/ws/2005/05/identity/claims\">\
         <saml:AttributeValue>{upn}</saml:AttributeValue></saml:Attribute>"
    )
}

// ---------------------------------------------------------------------------------------------
// xmlsec1

#[test]
fn a_fresh_token_verifies_with_xmlsec1_against_the_configured_certificate() {
    let token = issued(signer(), &request(UPN, OWA));
    let pinned = xmlsec1_verify(&token.wresult, Xmlsec1Key::PubkeyCert(&signer().cert_pem));
    assert!(pinned.ok, "{pinned:?}");
    assert_eq!(pinned.code, Some(0));
    assert!(
        pinned.output.contains("References (ok/all): 1/1"),
        "{pinned:?}"
    );
}

#[test]
fn a_fresh_token_verifies_with_xmlsec1_with_the_certificate_as_trust_anchor() {
    let token = issued(signer(), &request(UPN, OWA));
    let anchored = xmlsec1_verify(&token.wresult, Xmlsec1Key::Trusted(&signer().cert_pem));
    assert!(anchored.ok, "{anchored:?}");
    assert_eq!(anchored.code, Some(0));
}

#[test]
fn one_byte_changed_in_the_upn_is_refused_by_xmlsec1() {
    let token = issued(signer(), &request(UPN, OWA));
    let forged = token.wresult.replacen(
        ">alice@contoso.com</saml:AttributeValue>",
        ">alicf@contoso.com</saml:AttributeValue>",
        1,
    );
    assert_ne!(forged, token.wresult);
    for key in [
        Xmlsec1Key::PubkeyCert(&signer().cert_pem),
        Xmlsec1Key::Trusted(&signer().cert_pem),
    ] {
        let verdict = xmlsec1_verify(&forged, key);
        assert!(!verdict.ok, "{verdict:?}");
        assert_ne!(verdict.code, Some(0));
        // Refused for the digest, not for anything else.
        assert!(
            verdict.output.contains("data and digest do not match")
                && verdict.output.contains("References (ok/all): 0/1"),
            "{verdict:?}"
        );
    }
}

#[test]
fn a_token_signed_by_another_key_is_refused_against_the_configured_certificate() {
    let token = issued(stranger(), &request(UPN, OWA));
    // Self-consistent: it verifies with its own certificate...
    let own = xmlsec1_verify(&token.wresult, Xmlsec1Key::PubkeyCert(&stranger().cert_pem));
    assert!(own.ok, "{own:?}");
    // ...and not with the one Exchange was given, however it is given: pinned, the
    // signature fails; as trust anchor, the embedded certificate yields no trusted key.
    let pinned = xmlsec1_verify(&token.wresult, Xmlsec1Key::PubkeyCert(&signer().cert_pem));
    assert!(!pinned.ok, "{pinned:?}");
    assert_ne!(pinned.code, Some(0));
    assert!(
        pinned.output.contains("signature verification failed"),
        "{pinned:?}"
    );
    let anchored = xmlsec1_verify(&token.wresult, Xmlsec1Key::Trusted(&signer().cert_pem));
    assert!(!anchored.ok, "{anchored:?}");
    assert_ne!(anchored.code, Some(0));
    assert!(anchored.output.contains("key is not found"), "{anchored:?}");
}

#[test]
fn a_upn_with_xml_special_characters_still_verifies_with_xmlsec1() {
    // Markup, whitespace a parser would normalise, non-ASCII (XML 1.1's line ends included).
    let upn = "o'brien&<sales>\"\t\r\n]]>j\u{fc}rgen\u{1F600}\u{85}\u{2028}@contoso.com";
    let token = issued(signer(), &request(upn, OWA));
    assert!(token
        .wresult
        .contains("o'brien&amp;&lt;sales&gt;\"\t&#xD;\n]]&gt;j\u{fc}rgen"));
    let verdict = xmlsec1_verify(&token.wresult, Xmlsec1Key::PubkeyCert(&signer().cert_pem));
    assert!(verdict.ok, "{verdict:?}");
    let doc = roxmltree::Document::parse(&token.wresult).unwrap();
    let values: Vec<_> = doc
        .descendants()
        .filter(|n| n.tag_name().name() == "AttributeValue")
        .map(|n| n.text().unwrap_or(""))
        .collect();
    assert_eq!(values, [upn, SID]);
}

#[test]
fn the_tests_fail_rather_than_skip_without_xmlsec1() {
    // The check every xmlsec1 use goes through; it panics, naming the package, when missing.
    require_xmlsec1();
}

// ---------------------------------------------------------------------------------------------
// Loading the signing certificate and key

fn load(cert: &str, key: &str) -> Result<SigningCredential, CredentialError> {
    SigningCredential::from_pem(cert.as_bytes(), key.as_bytes())
}

#[test]
fn an_rsa_key_loads_as_pkcs8_or_pkcs1() {
    let s = signer();
    let pkcs1 = s.private.to_pkcs1_pem(LineEnding::LF).unwrap();
    assert!(pkcs1.starts_with("-----BEGIN RSA PRIVATE KEY-----"));
    let from_pkcs1 = load(&s.cert_pem, &pkcs1).unwrap();
    let from_pkcs8 = load(&s.cert_pem, &s.key_pem).unwrap();
    assert_eq!(from_pkcs1.thumbprint(), from_pkcs8.thumbprint());
    let shown = format!("{from_pkcs8:?}");
    assert!(
        shown.contains(&from_pkcs8.thumbprint().to_string()),
        "{shown}"
    );
    let b64_of_key = s.key_pem.lines().nth(1).unwrap();
    assert!(!shown.contains(b64_of_key), "{shown}");
}

#[test]
fn elliptic_curve_and_ed25519_keys_are_refused_as_not_rsa() {
    let ec = rcgen::KeyPair::generate().unwrap().serialize_pem();
    let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)
        .unwrap()
        .serialize_pem();
    for key in [ec, ed] {
        let error = load(&signer().cert_pem, &key).unwrap_err();
        assert!(matches!(error, CredentialError::NotRsa), "{error:?}");
        assert!(error.to_string().contains("not an RSA key"), "{error}");
    }
}

#[test]
fn a_1024_bit_rsa_key_is_refused_as_too_small() {
    let small = RsaPrivateKey::new(&mut rand::rngs::OsRng, 1024).unwrap();
    let pem = small.to_pkcs8_pem(LineEnding::LF).unwrap();
    let error = load(&signer().cert_pem, &pem).unwrap_err();
    assert!(
        matches!(error, CredentialError::KeyTooSmall { bits: 1024 }),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        "the RSA key has 1024 bits; a token-signing key needs at least 2048"
    );
}

#[test]
fn a_key_that_is_not_the_certificates_is_refused() {
    let error = load(&signer().cert_pem, &stranger().key_pem).unwrap_err();
    assert!(
        matches!(error, CredentialError::KeyDoesNotMatchCertificate),
        "{error:?}"
    );
    assert!(
        error
            .to_string()
            .contains("does not belong to the certificate"),
        "{error}"
    );
    // An EC certificate with an RSA key: no match either.
    let ec_key = rcgen::KeyPair::generate().unwrap();
    let ec_cert = rcgen::CertificateParams::new(Vec::<String>::new())
        .unwrap()
        .self_signed(&ec_key)
        .unwrap()
        .pem();
    assert!(matches!(
        load(&ec_cert, &signer().key_pem),
        Err(CredentialError::KeyDoesNotMatchCertificate)
    ));
}

#[test]
fn garbage_is_refused_with_what_is_wrong() {
    let s = signer();
    assert!(matches!(
        load("garbage", &s.key_pem),
        Err(CredentialError::NoCertificate)
    ));
    assert!(matches!(
        load(&s.cert_pem, "garbage"),
        Err(CredentialError::NoKey)
    ));
    // The key where the certificate should be, and the other way round.
    assert!(matches!(
        load(&s.key_pem, &s.key_pem),
        Err(CredentialError::NoCertificate)
    ));
    assert!(matches!(
        load(&s.cert_pem, &s.cert_pem),
        Err(CredentialError::NoKey)
    ));
    let bad_base64 = "-----BEGIN PRIVATE KEY-----\n!!!!\n-----END PRIVATE KEY-----\n";
    assert!(matches!(
        load(&s.cert_pem, bad_base64),
        Err(CredentialError::Unparsable {
            what: "key PEM",
            ..
        })
    ));
    let not_der = "-----BEGIN PRIVATE KEY-----\nAAECAwQF\n-----END PRIVATE KEY-----\n";
    assert!(matches!(
        load(&s.cert_pem, not_der),
        Err(CredentialError::Unparsable {
            what: "RSA private key",
            ..
        })
    ));
    let not_a_certificate = "-----BEGIN CERTIFICATE-----\nAAECAwQF\n-----END CERTIFICATE-----\n";
    let error = load(not_a_certificate, &s.key_pem).unwrap_err();
    assert!(
        matches!(
            error,
            CredentialError::Unparsable {
                what: "certificate",
                ..
            }
        ),
        "{error:?}"
    );
    assert!(
        error
            .to_string()
            .starts_with("the certificate cannot be parsed: "),
        "{error}"
    );
}

#[test]
fn the_thumbprint_is_the_sha1_of_the_certificate_as_sha1sum_computes_it() {
    let der = signer().credential.certificate_der().to_vec();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cert.der");
    std::fs::write(&path, &der).unwrap();
    let out = std::process::Command::new("sha1sum")
        .arg(&path)
        .output()
        .expect("sha1sum (coreutils) runs");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let expected = stdout
        .split_whitespace()
        .next()
        .unwrap()
        .to_ascii_uppercase();
    let thumbprint = signer().credential.thumbprint().to_string();
    assert_eq!(thumbprint, expected);
    assert_eq!(thumbprint.len(), 40);
    assert_eq!(thumbprint_of(&der), signer().credential.thumbprint());
    // FIPS 180-2 test vector.
    assert_eq!(
        thumbprint_of(b"abc").to_string(),
        "A9993E364706816ABA3E25717850C26C9CD0D89D"
    );
}

#[test]
fn the_certificate_expiry_is_read() {
    let not_after = signer()
        .credential
        .not_after()
        .expect("read from the certificate");
    // rcgen's default validity ends on 4096-01-01T00:00:00Z.
    assert_eq!(not_after, 67_090_118_400);
}

// ---------------------------------------------------------------------------------------------
// The Exchange stand-in

async fn exchange() -> AdfsExchange {
    AdfsExchange::builder()
        .adfs_issuer(ISSUER)
        .thumbprint(&signer().credential.thumbprint().to_string())
        .audience(OWA)
        .audience(ECP)
        .start()
        .await
}

const WCTX: &str = "rm=0&id=passive&ru=%2fowa%2f%3fpath%3d%2fmail";

/// The browser's auto-submitted form, as posted to `path` with `Host: mail.test`.
async fn post(exchange: &AdfsExchange, path: &str, wresult: &str, referer: Option<&str>) -> Reply {
    let body = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("wa", "wsignin1.0")
        .append_pair("wresult", wresult)
        .append_pair("wctx", WCTX)
        .finish();
    let mut request = plain_client()
        .post(format!("{}{path}", exchange.url()))
        .header(HOST, HOST_NAME)
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(body);
    if let Some(referer) = referer {
        request = request.header(REFERER, referer);
    }
    read_reply(request.send().await.unwrap()).await
}

async fn sign_in(exchange: &AdfsExchange, wresult: &str) -> Reply {
    post(exchange, "/owa/", wresult, Some(ISSUER)).await
}

async fn get(exchange: &AdfsExchange, path: &str, cookie: Option<&str>) -> Reply {
    let mut request = plain_client()
        .get(format!("{}{path}", exchange.url()))
        .header(HOST, HOST_NAME);
    if let Some(cookie) = cookie {
        request = request.header(COOKIE, format!("{ADFS_AUTH_COOKIE}={cookie}"));
    }
    read_reply(request.send().await.unwrap()).await
}

fn refusal(exchange: &AdfsExchange) -> Refusal {
    match exchange.last_check() {
        Some(TokenCheck::Refused(refusal)) => refusal,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn assert_sent_to_error_page(reply: &Reply, msg: &str) {
    assert_eq!(reply.status, StatusCode::FOUND, "{}", reply.describe());
    assert_eq!(
        reply.location(),
        Some(&*format!("/owa/auth/errorfe.aspx?msg={msg}"))
    );
    assert!(reply.set_cookie(ADFS_AUTH_COOKIE).is_none());
}

#[tokio::test]
async fn without_its_cookie_exchange_sends_the_browser_to_the_issuer_with_the_realm_of_the_host() {
    let exchange = exchange().await;
    let reply = get(&exchange, "/owa/?path=/mail", None).await;
    assert_eq!(reply.status, StatusCode::FOUND);
    let location = reply.location().unwrap();
    assert!(
        location.starts_with(
            "https://mail.test/_gateway/wsfed/?wa=wsignin1.0\
             &wtrealm=https%3a%2f%2fmail.test%2fowa%2f\
             &wctx=rm%3d0%26id%3dpassive%26ru%3d%252fowa%252f%253fpath%253d%252fmail&wct="
        ),
        "{location}"
    );
    let query: Vec<(String, String)> =
        url::form_urlencoded::parse(location.split_once('?').unwrap().1.as_bytes())
            .into_owned()
            .collect();
    assert_eq!(query[1], ("wtrealm".into(), OWA.into()));
    assert_eq!(
        query[2],
        (
            "wctx".into(),
            "rm=0&id=passive&ru=%2fowa%2f%3fpath%3d%2fmail".into()
        )
    );

    // The virtual directory's own spelling, whatever the request's.
    let ecp = get(&exchange, "/ECP/", None).await;
    assert!(
        ecp.location()
            .unwrap()
            .contains("&wtrealm=https%3a%2f%2fmail.test%2fecp%2f&"),
        "{}",
        ecp.describe()
    );
    assert_eq!(
        get(&exchange, "/rpc/", None).await.status,
        StatusCode::NOT_FOUND
    );
    assert!(exchange.checks().is_empty());
}

#[tokio::test]
async fn a_valid_token_opens_the_mailbox_of_its_upn_and_sid_until_sign_out() {
    let exchange = exchange().await;
    let token = issued(signer(), &request(UPN, OWA));
    let reply = sign_in(&exchange, &token.wresult).await;
    assert_eq!(reply.status, StatusCode::FOUND, "{}", reply.describe());
    assert_eq!(reply.location(), Some("/owa/?path=/mail"));
    let cookie = reply
        .set_cookie(ADFS_AUTH_COOKIE)
        .expect("Exchange's cookie");
    assert!(cookie.has("secure") && cookie.has("httponly"));
    assert_eq!(
        exchange.last_check(),
        Some(TokenCheck::Accepted {
            upn: UPN.into(),
            sid: Some(SID.into()),
            assertion_id: token.assertion_id.clone(),
            audience: OWA.into(),
        })
    );
    let posts = exchange.sign_in_posts();
    assert_eq!(posts.len(), 1);
    assert_eq!(posts[0].field("wresult"), Some(&*token.wresult));
    assert_eq!(posts[0].field("wctx"), Some(WCTX));

    let mailbox = get(&exchange, "/owa/?path=/mail", Some(&cookie.value)).await;
    assert_eq!(mailbox.status, StatusCode::OK, "{}", mailbox.describe());
    assert!(mailbox.body.contains("Mailbox of alice@contoso.com"));
    assert!(mailbox.body.contains(SID));
    assert_eq!(exchange.signed_in_users(), [UPN]);

    let out = get(&exchange, "/owa/logoff.owa", Some(&cookie.value)).await;
    assert_eq!(out.status, StatusCode::FOUND);
    assert_eq!(
        out.location(),
        Some("https://mail.test/_gateway/wsfed/?wa=wsignout1.0")
    );
    assert!(out.set_cookie(ADFS_AUTH_COOKIE).unwrap().is_removal());
    assert!(exchange.signed_in_users().is_empty());
    let after = get(&exchange, "/owa/", Some(&cookie.value)).await;
    assert_eq!(after.status, StatusCode::FOUND);
    assert!(after.location().unwrap().contains("wa=wsignin1.0"));
}

#[tokio::test]
async fn ecp_takes_its_own_realm_and_wa_signout_signs_out() {
    let exchange = exchange().await;
    let token = issued(signer(), &request(UPN, ECP));
    let reply = post(&exchange, "/ecp/", &token.wresult, Some(ISSUER)).await;
    assert_eq!(reply.status, StatusCode::FOUND, "{}", reply.describe());
    assert!(matches!(
        exchange.last_check(),
        Some(TokenCheck::Accepted { ref audience, .. }) if audience == ECP
    ));
    let cookie = reply.set_cookie(ADFS_AUTH_COOKIE).unwrap();
    let out = get(&exchange, "/ecp/?wa=wsignout1.0", Some(&cookie.value)).await;
    assert_eq!(
        out.location(),
        Some("https://mail.test/_gateway/wsfed/?wa=wsignout1.0")
    );
    assert!(exchange.signed_in_users().is_empty());

    // An OWA token posted to ECP: the audience is not the realm.
    let owa_token = issued(signer(), &request(UPN, OWA));
    post(&exchange, "/ecp/", &owa_token.wresult, Some(ISSUER)).await;
    assert!(matches!(refusal(&exchange), Refusal::WrongAudience { .. }));
}

#[tokio::test]
async fn a_upn_with_markup_is_carried_intact_to_the_mailbox() {
    let exchange = exchange().await;
    let upn = "o'brien&<b>\"x\"</b>@contoso.com";
    let reply = sign_in(&exchange, &issued(signer(), &request(upn, OWA)).wresult).await;
    assert_eq!(reply.status, StatusCode::FOUND, "{}", reply.describe());
    assert!(
        matches!(exchange.last_check(), Some(TokenCheck::Accepted { upn: ref got, .. }) if got == upn),
        "{:?}",
        exchange.last_check()
    );
}

#[tokio::test]
async fn one_byte_altered_in_the_upn_is_refused_as_a_bad_signature() {
    let exchange = exchange().await;
    let token = issued(signer(), &request(UPN, OWA));
    let forged = token.wresult.replacen(
        ">alice@contoso.com</saml:AttributeValue>",
        ">alicf@contoso.com</saml:AttributeValue>",
        1,
    );
    let reply = sign_in(&exchange, &forged).await;
    assert_sent_to_error_page(&reply, "WrongAudienceUriOrBadSigningCert");
    match refusal(&exchange) {
        Refusal::BadSignature { xmlsec1 } => {
            assert!(
                xmlsec1.contains("data and digest do not match"),
                "{xmlsec1}"
            )
        }
        other => panic!("{other:?}"),
    }
    assert!(exchange.signed_in_users().is_empty());
}

#[tokio::test]
async fn a_token_signed_by_an_unlisted_certificate_is_refused_by_thumbprint() {
    let exchange = exchange().await;
    let token = issued(stranger(), &request(UPN, OWA));
    let reply = sign_in(&exchange, &token.wresult).await;
    assert_sent_to_error_page(&reply, "WrongAudienceUriOrBadSigningCert");
    assert_eq!(
        refusal(&exchange),
        Refusal::UnknownSigningCertificate {
            thumbprint: stranger().credential.thumbprint().to_string()
        }
    );
}

#[tokio::test]
async fn a_stripped_signature_is_refused_as_unsigned() {
    let exchange = exchange().await;
    let wresult = issued(signer(), &request(UPN, OWA)).wresult;
    let signature = byte_range(&wresult, "<ds:Signature", "</ds:Signature>");
    let unsigned = format!(
        "{}{}",
        &wresult[..signature.start],
        &wresult[signature.end..]
    );
    sign_in(&exchange, &unsigned).await;
    assert_eq!(refusal(&exchange), Refusal::Unsigned);
}

#[tokio::test]
async fn the_audience_must_be_the_realm_to_the_letter_of_its_path() {
    let exchange = exchange().await;
    for realm in ["https://mail.test/owa", "https://mail.test/OWA/"] {
        let reply = sign_in(&exchange, &issued(signer(), &request(UPN, realm)).wresult).await;
        assert_sent_to_error_page(&reply, "WrongAudienceUriOrBadSigningCert");
        assert_eq!(
            refusal(&exchange),
            Refusal::WrongAudience {
                audiences: vec![realm.to_owned()],
                realm: OWA.to_owned()
            }
        );
    }
    // Scheme and host in any case are the same URI.
    let reply = sign_in(
        &exchange,
        &issued(signer(), &request(UPN, "HTTPS://MAIL.test/owa/")).wresult,
    )
    .await;
    assert_eq!(reply.location(), Some("/owa/?path=/mail"));
    assert!(matches!(
        exchange.last_check(),
        Some(TokenCheck::Accepted { .. })
    ));
}

#[tokio::test]
async fn an_audience_missing_from_the_configured_list_is_refused() {
    // AdfsAudienceUris holding only the form without the slash.
    let exchange = AdfsExchange::builder()
        .adfs_issuer(ISSUER)
        .thumbprint(&signer().credential.thumbprint().to_string())
        .audience("https://mail.test/owa")
        .start()
        .await;
    let reply = sign_in(&exchange, &issued(signer(), &request(UPN, OWA)).wresult).await;
    assert_sent_to_error_page(&reply, "WrongAudienceUriOrBadSigningCert");
    assert_eq!(
        refusal(&exchange),
        Refusal::AudienceNotAccepted {
            audience: OWA.to_owned()
        }
    );
}

#[tokio::test]
async fn an_expired_token_is_refused_once_five_minutes_of_skew_are_spent() {
    let exchange = exchange().await;
    let now = now();
    let mut expired = request(UPN, OWA);
    expired.now = now - 900;
    expired.authenticated_at = now - 900;
    // now − 5 min ≥ NotOnOrAfter
    expired.not_on_or_after = now - 300;
    let reply = sign_in(&exchange, &issued(signer(), &expired).wresult).await;
    assert_sent_to_error_page(&reply, "WrongAudienceUriOrBadSigningCert");
    assert!(
        matches!(refusal(&exchange), Refusal::Expired { not_on_or_after, .. } if not_on_or_after == (now - 300) as i64)
    );

    // A minute inside the skew: accepted.
    expired.not_on_or_after = now - 240;
    sign_in(&exchange, &issued(signer(), &expired).wresult).await;
    assert!(matches!(
        exchange.last_check(),
        Some(TokenCheck::Accepted { .. })
    ));

    // A fresh token, but Exchange's clock 20 minutes ahead of the gateway's.
    exchange.set_clock_offset(20 * 60);
    sign_in(&exchange, &issued(signer(), &request(UPN, OWA)).wresult).await;
    assert!(matches!(refusal(&exchange), Refusal::Expired { .. }));
}

#[tokio::test]
async fn a_token_not_yet_valid_beyond_the_skew_is_refused() {
    let exchange = exchange().await;
    let now = now();
    let mut early = request(UPN, OWA);
    early.authenticated_at = now;
    early.now = now + 600;
    early.not_on_or_after = now + 1200;
    let reply = sign_in(&exchange, &issued(signer(), &early).wresult).await;
    assert_sent_to_error_page(&reply, "WrongAudienceUriOrBadSigningCert");
    assert!(
        matches!(refusal(&exchange), Refusal::NotYetValid { not_before, .. } if not_before == (now + 600) as i64)
    );

    // Exchange's clock 10 minutes behind: a fresh token is from its future.
    exchange.set_clock_offset(-10 * 60);
    sign_in(&exchange, &issued(signer(), &request(UPN, OWA)).wresult).await;
    assert!(matches!(refusal(&exchange), Refusal::NotYetValid { .. }));
}

#[tokio::test]
async fn a_sign_in_six_hours_old_makes_exchange_start_a_new_one() {
    let exchange = exchange().await;
    let mut old = request(UPN, OWA);
    old.authenticated_at = old.now - 6 * 3600;
    let reply = sign_in(&exchange, &issued(signer(), &old).wresult).await;
    assert_eq!(
        refusal(&exchange),
        Refusal::AuthenticationTooOld { seconds: 6 * 3600 }
    );
    assert_eq!(reply.status, StatusCode::FOUND);
    assert!(
        reply
            .location()
            .unwrap()
            .starts_with("https://mail.test/_gateway/wsfed/?wa=wsignin1.0&"),
        "{}",
        reply.describe()
    );

    old.authenticated_at = old.now - 6 * 3600 + 60;
    sign_in(&exchange, &issued(signer(), &old).wresult).await;
    assert!(matches!(
        exchange.last_check(),
        Some(TokenCheck::Accepted { .. })
    ));
}

#[tokio::test]
async fn the_referer_must_start_with_the_issuer() {
    let exchange = exchange().await;
    let wresult = issued(signer(), &request(UPN, OWA)).wresult;

    let missing = post(&exchange, "/owa/", &wresult, None).await;
    assert_eq!(missing.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(refusal(&exchange), Refusal::RefererMissing);

    // Chrome's default policy across origins: the origin only.
    let origin_only = post(&exchange, "/owa/", &wresult, Some("https://mail.test/")).await;
    assert_eq!(origin_only.status, StatusCode::INTERNAL_SERVER_ERROR);
    let elsewhere = "https://login.example/_gateway/wsfed/";
    post(&exchange, "/owa/", &wresult, Some(elsewhere)).await;
    assert_eq!(
        refusal(&exchange),
        Refusal::RefererNotIssuer {
            referer: elsewhere.to_owned()
        }
    );
    assert!(exchange.signed_in_users().is_empty());

    // Compared without regard to letter case.
    let shouting = "HTTPS://MAIL.TEST/_GATEWAY/WSFED/?wa=wsignin1.0";
    let reply = post(&exchange, "/owa/", &wresult, Some(shouting)).await;
    assert_eq!(reply.status, StatusCode::FOUND, "{}", reply.describe());
    assert!(matches!(
        exchange.last_check(),
        Some(TokenCheck::Accepted { .. })
    ));
}

#[tokio::test]
async fn a_signed_token_without_a_upn_claim_is_refused_as_upn_claim_missing() {
    let exchange = exchange().await;
    let wresult = issued(signer(), &request(UPN, OWA)).wresult;

    // The re-signing itself is sound: an unchanged token re-signed is accepted.
    sign_in(&exchange, &resign(&wresult, &signer().private)).await;
    assert!(matches!(
        exchange.last_check(),
        Some(TokenCheck::Accepted { .. })
    ));

    let without_upn = resign(
        &wresult.replacen(&upn_attribute(UPN), "", 1),
        &signer().private,
    );
    assert!(!without_upn.contains("AttributeName=\"upn\""));
    let reply = sign_in(&exchange, &without_upn).await;
    assert_sent_to_error_page(&reply, "UpnClaimMissing");
    assert_eq!(refusal(&exchange), Refusal::UpnClaimMissing);
}

#[tokio::test]
async fn a_second_upn_claim_is_refused_as_duplicate_claims() {
    let exchange = exchange().await;
    let wresult = issued(signer(), &request(UPN, OWA)).wresult;
    let doubled = wresult.replacen(
        &upn_attribute(UPN),
        &format!(
            "{}{}",
            upn_attribute(UPN),
            upn_attribute("mallory@contoso.com")
        ),
        1,
    );
    let reply = sign_in(&exchange, &resign(&doubled, &signer().private)).await;
    assert_sent_to_error_page(&reply, "DuplicateClaims");
    assert!(matches!(
        refusal(&exchange),
        Refusal::DuplicateClaims { ref claim } if claim.ends_with("/upn")
    ));
}
