//! `mfa-gateway demo --sso adfs`: the sample Exchange in AD FS claims authentication mode, and
//! the demo's token-signing certificate.
//!
//! Like Exchange, the sample sends a browser without its own session to `AdfsIssuer`
//! (`/_gateway/wsfed/` on the host it was asked for) and takes the posted token only if the
//! `Referer` starts with that issuer, the signing certificate has the configured thumbprint, the
//! signature and digest hold, the audience is the realm and the times are valid; then it opens
//! the mailbox of the UPN and SID the token carries.
//!
//! The sample reads the token as the gateway writes it — already in exclusive-canonical form —
//! so it checks the digest and signature over those bytes without a canonicaliser of its own.
//! The independent proof that real XML-signature verifiers accept the token is in the test
//! suites (`xmlsec1`).

use std::collections::HashMap;
use std::sync::Mutex;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use bytes::Bytes;
use http::header::{
    HeaderValue, CACHE_CONTROL, CONTENT_TYPE, COOKIE, HOST, LOCATION, REFERER, SET_COOKIE,
};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use rustls_pki_types::CertificateDer;
use sha2::{Digest, Sha256};

use crate::pages::escape;
use crate::sso::adfs::{thumbprint_of, Thumbprint};

/// Seconds of clock skew Exchange allows.
const SKEW: i64 = 5 * 60;
const DSIG: &str = "http://www.w3.org/2000/09/xmldsig#";
const SIGNATURE_START: &str = "<ds:Signature xmlns:ds=\"http://www.w3.org/2000/09/xmldsig#\">";

/// A token-signing certificate and key for the demo, made at start: PEM text.
pub(super) struct DemoSigning {
    pub(super) cert_pem: String,
    pub(super) key_pem: String,
}

impl DemoSigning {
    pub(super) fn generate() -> Result<DemoSigning, String> {
        use rsa::pkcs8::{EncodePrivateKey, LineEnding};
        let private = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048)
            .map_err(|e| format!("token-signing key: {e}"))?;
        let key_pem = private
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| format!("token-signing key: {e}"))?
            .to_string();
        let key_pair =
            rcgen::KeyPair::from_pem(&key_pem).map_err(|e| format!("token-signing key: {e}"))?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())
            .map_err(|e| format!("token-signing certificate: {e}"))?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "mfa-gateway demo token signing");
        let cert_pem = params
            .self_signed(&key_pair)
            .map_err(|e| format!("token-signing certificate: {e}"))?
            .pem();
        Ok(DemoSigning { cert_pem, key_pem })
    }
}

/// Exchange's AD FS settings, as `Set-OrganizationConfig` holds them, and its sessions.
pub(super) struct AdfsMode {
    /// `AdfsSignCertificateThumbprints`.
    thumbprint: Thumbprint,
    certificate: Vec<u8>,
    /// Its own session cookie → (UPN, SID, the virtual directories it signed in to).
    sessions: Mutex<HashMap<String, Mailbox>>,
}

#[derive(Clone)]
pub(super) struct Mailbox {
    pub(super) upn: String,
    pub(super) sid: String,
    vdirs: Vec<String>,
}

/// A token posted to a virtual directory, with what Exchange checks it against.
#[derive(Clone, Copy)]
pub(super) struct TokenPost<'a> {
    /// `AdfsIssuer`: the Referer must start with it.
    pub(super) issuer: &'a str,
    pub(super) referer: Option<&'a str>,
    /// `https://<host><vdir>/` as Exchange builds it (`http://` in the plain-HTTP demo).
    pub(super) realm: &'a str,
    pub(super) vdir: &'a str,
    pub(super) wresult: &'a str,
}

/// The sample's own session cookie.
const SESSION_COOKIE: &str = "DemoAdfsAuth";

impl AdfsMode {
    pub(super) fn new(cert_pem: &str) -> Result<AdfsMode, String> {
        use rustls_pki_types::pem::PemObject;
        let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| format!("token-signing certificate: {e}"))?;
        Ok(AdfsMode {
            thumbprint: thumbprint_of(&der),
            certificate: der.to_vec(),
            sessions: Mutex::new(HashMap::new()),
        })
    }

    /// The thumbprint Exchange trusts (`AdfsSignCertificateThumbprints`).
    pub(super) fn thumbprint(&self) -> Thumbprint {
        self.thumbprint
    }

    /// The mailbox of the session `cookie` names, when it signed in to `vdir`.
    pub(super) fn mailbox(&self, cookie: Option<&str>, vdir: &str) -> Option<Mailbox> {
        let sessions = self.sessions.lock().ok()?;
        sessions
            .get(cookie?)
            .filter(|m| m.vdirs.iter().any(|v| v == vdir))
            .cloned()
    }

    /// Takes a posted token; the new session cookie's value, or why Exchange would refuse it.
    pub(super) fn sign_in(
        &self,
        post: &TokenPost<'_>,
        cookie: Option<&str>,
        now: i64,
    ) -> Result<String, &'static str> {
        let TokenPost {
            issuer,
            referer,
            realm,
            vdir,
            wresult,
        } = *post;
        if !referer.is_some_and(|r| {
            r.to_ascii_lowercase()
                .starts_with(&issuer.to_ascii_lowercase())
        }) {
            return Err("the Referer does not start with AdfsIssuer");
        }
        let claims = self.check(wresult, realm, now)?;
        let mut sessions = self.sessions.lock().map_err(|_| "sessions unavailable")?;
        let same_user = cookie.filter(|c| sessions.get(*c).is_some_and(|m| m.upn == claims.upn));
        let value = match same_user {
            Some(value) => value.to_owned(),
            None => random_hex()?,
        };
        let entry = sessions.entry(value.clone()).or_insert(Mailbox {
            upn: claims.upn,
            sid: claims.sid,
            vdirs: Vec::new(),
        });
        entry.vdirs.push(vdir.to_owned());
        Ok(value)
    }

    /// Signs a session out (`wsignout1.0`, OWA's sign-out).
    pub(super) fn sign_out(&self, cookie: Option<&str>) {
        if let (Some(cookie), Ok(mut sessions)) = (cookie, self.sessions.lock()) {
            sessions.remove(cookie);
        }
    }

    fn check(&self, wresult: &str, realm: &str, now: i64) -> Result<Claims, &'static str> {
        let assertion = between_inclusive(wresult, "<saml:Assertion ", "</saml:Assertion>")
            .ok_or("no SAML assertion")?;
        let certificate = BASE64
            .decode(
                between(assertion, "<ds:X509Certificate>", "</ds:X509Certificate>").unwrap_or(""),
            )
            .map_err(|_| "unreadable signing certificate")?;
        if thumbprint_of(&certificate) != self.thumbprint || certificate != self.certificate {
            return Err("signing certificate not in AdfsSignCertificateThumbprints");
        }
        // Enveloped signature: the digest is over the assertion without its Signature element.
        let signature_at = assertion.find(SIGNATURE_START).ok_or("unsigned")?;
        let signature = &assertion[signature_at..];
        let unsigned = format!(
            "{}{}",
            &assertion[..signature_at],
            &signature[signature.find("</ds:Signature>").ok_or("unsigned")? + 15..]
        );
        let digest = BASE64.encode(Sha256::digest(unsigned.as_bytes()));
        if between(signature, "<ds:DigestValue>", "</ds:DigestValue>") != Some(digest.as_str()) {
            return Err("digest does not match: the token was changed");
        }
        // The signed bytes: SignedInfo in canonical form, which declares its namespace.
        let signed_info =
            between(signature, "<ds:SignedInfo>", "</ds:SignedInfo>").ok_or("no SignedInfo")?;
        let canonical = format!("<ds:SignedInfo xmlns:ds=\"{DSIG}\">{signed_info}</ds:SignedInfo>");
        let value = BASE64
            .decode(between(signature, "<ds:SignatureValue>", "</ds:SignatureValue>").unwrap_or(""))
            .map_err(|_| "unreadable signature")?;
        let der = CertificateDer::from(certificate.as_slice());
        let end_entity =
            webpki::EndEntityCert::try_from(&der).map_err(|_| "unreadable signing certificate")?;
        end_entity
            .verify_signature(
                webpki::ring::RSA_PKCS1_2048_8192_SHA256,
                canonical.as_bytes(),
                &value,
            )
            .map_err(|_| "bad signature")?;

        let audience = between(assertion, "<saml:Audience>", "</saml:Audience>");
        if audience.map(unescape).as_deref() != Some(realm) {
            return Err("the audience is not this realm");
        }
        let time = |name: &str| {
            let start = format!("{name}=\"");
            between(assertion, &start, "\"")
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.timestamp())
        };
        let (Some(not_before), Some(not_on_or_after)) = (time("NotBefore"), time("NotOnOrAfter"))
        else {
            return Err("no validity period");
        };
        if now + SKEW < not_before || now - SKEW >= not_on_or_after {
            return Err("the token is not valid now");
        }
        let claim = |name: &str| {
            let start = format!("AttributeName=\"{name}\"");
            let at = assertion.find(&start)?;
            between(
                &assertion[at..],
                "<saml:AttributeValue>",
                "</saml:AttributeValue>",
            )
            .map(unescape)
        };
        Ok(Claims {
            upn: claim("upn").ok_or("no upn claim")?,
            sid: claim("primarysid").unwrap_or_default(),
        })
    }
}

struct Claims {
    upn: String,
    sid: String,
}

/// One request to the sample Exchange in AD FS mode.
pub(super) async fn respond(request: Request<Incoming>, mode: &AdfsMode) -> Response<Full<Bytes>> {
    let path = request.uri().path().to_ascii_lowercase();
    if path.ends_with("/healthcheck.htm") {
        return page(StatusCode::OK, "<h1>200 OK</h1>".to_owned());
    }
    let Some(vdir) = ["/owa", "/ecp"]
        .into_iter()
        .find(|v| path == *v || path.starts_with(&format!("{v}/")))
    else {
        return page(StatusCode::NOT_FOUND, "<h1>404</h1>".to_owned());
    };
    let header = |name| {
        request
            .headers()
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
            .map(str::to_owned)
    };
    let host = header(HOST).unwrap_or_default();
    // The demo is plain HTTP on loopback: its realm and issuer carry the scheme the browser uses.
    let issuer = format!("http://{host}/_gateway/wsfed/");
    let realm = format!("http://{host}{vdir}/");
    let cookie = header(COOKIE).and_then(|cookies| {
        cookies
            .split(';')
            .filter_map(|c| c.trim().split_once('='))
            .find(|(name, _)| *name == SESSION_COOKIE)
            .map(|(_, value)| value.to_owned())
    });
    let query: Vec<(String, String)> =
        url::form_urlencoded::parse(request.uri().query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    if query.iter().any(|(k, v)| k == "wa" && v == "wsignout1.0") || path.ends_with("/logoff.owa") {
        mode.sign_out(cookie.as_deref());
        let mut response = redirect(&format!("{issuer}?wa=wsignout1.0"));
        set_cookie(
            &mut response,
            &format!("{SESSION_COOKIE}=; Path=/; Max-Age=0"),
        );
        return response;
    }
    let original = request
        .uri()
        .path_and_query()
        .map_or_else(|| format!("{vdir}/"), |pq| pq.as_str().to_owned());
    if request.method() == Method::POST {
        let referer = header(REFERER);
        let Ok(body) = Limited::new(request.into_body(), 256 * 1024)
            .collect()
            .await
        else {
            return page(
                StatusCode::BAD_REQUEST,
                "<h1>Request too large</h1>".to_owned(),
            );
        };
        let form: Vec<(String, String)> = url::form_urlencoded::parse(&body.to_bytes())
            .into_owned()
            .collect();
        let field = |name: &str| {
            form.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        if field("wa") == Some("wsignin1.0") {
            let now = chrono::Utc::now().timestamp();
            let wresult = field("wresult").unwrap_or_default();
            let post = TokenPost {
                issuer: &issuer,
                referer: referer.as_deref(),
                realm: &realm,
                vdir,
                wresult,
            };
            return match mode.sign_in(&post, cookie.as_deref(), now) {
                Ok(value) => {
                    let ru = field("wctx")
                        .and_then(|wctx| {
                            url::form_urlencoded::parse(wctx.as_bytes())
                                .find(|(k, _)| k == "ru")
                                .map(|(_, v)| v.into_owned())
                        })
                        .filter(|ru| ru.starts_with('/') && !ru.starts_with("//"))
                        .unwrap_or_else(|| format!("{vdir}/"));
                    let mut response = redirect(&ru);
                    set_cookie(
                        &mut response,
                        &format!("{SESSION_COOKIE}={value}; Path=/; HttpOnly"),
                    );
                    response
                }
                Err(why) => page(
                    StatusCode::FORBIDDEN,
                    format!(
                        "<h1>Exchange refused the sign-in token</h1><p>{}</p>",
                        escape(why)
                    ),
                ),
            };
        }
    }
    if let Some(mailbox) = mode.mailbox(cookie.as_deref(), vdir) {
        let title = if vdir == "/owa" {
            "Inbox"
        } else {
            "Exchange admin center"
        };
        return page(
            StatusCode::OK,
            format!(
                "<header>Outlook (sample Exchange server, AD FS mode)</header><main><h2 id=\"adfs-mailbox\">{title} of {upn}</h2>\
<p>Exchange signed you in with the token the gateway issued after your MFA sign-in: no second password. \
The token named <code>{upn}</code> with the on-premises SID <code>{sid}</code>; its signature, certificate thumbprint, \
audience <code>{realm}</code> and validity were checked.</p><p><a href=\"{issuer}?wa=wsignout1.0\">Sign out</a></p></main>",
                upn = escape(&mailbox.upn),
                sid = escape(&mailbox.sid),
                realm = escape(&realm),
                issuer = escape(&issuer),
            ),
        );
    }
    // No session of its own: to the issuer, as Exchange does.
    let wctx = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("rm", "0")
        .append_pair("id", "passive")
        .append_pair("ru", &original)
        .finish();
    let query = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("wa", "wsignin1.0")
        .append_pair("wtrealm", &realm)
        .append_pair("wctx", &wctx)
        .finish();
    redirect(&format!("{issuer}?{query}"))
}

fn page(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let html = format!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Outlook</title>\
<style>body{{font-family:'Segoe UI',system-ui,sans-serif;margin:0}}header{{background:#0f6cbd;color:#fff;\
padding:.8rem 1.5rem;font-size:1.2rem}}main{{padding:1.5rem}}</style></head><body>{body}</body></html>"
    );
    let mut response = Response::new(Full::new(Bytes::from(html)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn redirect(location: &str) -> Response<Full<Bytes>> {
    let mut response = page(StatusCode::FOUND, String::new());
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(LOCATION, value);
    }
    response
}

fn set_cookie(response: &mut Response<Full<Bytes>>, cookie: &str) {
    if let Ok(value) = HeaderValue::from_str(cookie) {
        response.headers_mut().append(SET_COOKIE, value);
    }
}

fn between<'t>(text: &'t str, start: &str, end: &str) -> Option<&'t str> {
    let from = text.find(start)? + start.len();
    let to = from + text[from..].find(end)?;
    Some(&text[from..to])
}

fn between_inclusive<'t>(text: &'t str, start: &str, end: &str) -> Option<&'t str> {
    let from = text.find(start)?;
    let to = from + text[from..].find(end)? + end.len();
    Some(&text[from..to])
}

/// The escapes of canonical XML text, undone.
fn unescape(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#xD;", "\r")
        .replace("&amp;", "&")
}

fn random_hex() -> Result<String, &'static str> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| "no randomness")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sso::adfs::{issue, SigningCredential, TokenRequest};

    const REALM: &str = "http://localhost:8080/owa/";
    const ISSUER: &str = "http://localhost:8080/_gateway/wsfed/";

    fn token(signing: &DemoSigning, now: u64) -> String {
        let credential =
            SigningCredential::from_pem(signing.cert_pem.as_bytes(), signing.key_pem.as_bytes())
                .unwrap();
        issue(
            &credential,
            &TokenRequest {
                issuer: ISSUER,
                realm: REALM,
                upn: "alice@contoso.com",
                primary_sid: "S-1-5-21-1-2-3-1105",
                authenticated_at: now - 60,
                now,
                not_on_or_after: now + 3600,
            },
        )
        .unwrap()
        .wresult
    }

    #[test]
    fn the_sample_takes_the_gateways_token_and_refuses_a_changed_or_foreign_one() {
        let signing = DemoSigning::generate().unwrap();
        let mode = AdfsMode::new(&signing.cert_pem).unwrap();
        let now = chrono::Utc::now().timestamp();
        let wresult = token(&signing, now as u64);
        let referer = Some("http://localhost:8080/_gateway/wsfed/?wa=wsignin1.0");
        let sign_in = |wresult: &str, referer: Option<&str>, realm: &str, now: i64| {
            let post = TokenPost {
                issuer: ISSUER,
                referer,
                realm,
                vdir: "/owa",
                wresult,
            };
            mode.sign_in(&post, None, now)
        };
        let cookie = sign_in(&wresult, referer, REALM, now).unwrap();
        let mailbox = mode.mailbox(Some(&cookie), "/owa").unwrap();
        assert_eq!(mailbox.upn, "alice@contoso.com");
        assert_eq!(mailbox.sid, "S-1-5-21-1-2-3-1105");
        assert!(mode.mailbox(Some(&cookie), "/ecp").is_none());

        let changed = wresult.replacen("alice@", "alicf@", 1);
        assert_eq!(
            sign_in(&changed, referer, REALM, now),
            Err("digest does not match: the token was changed")
        );
        assert_eq!(
            sign_in(&wresult, Some("http://localhost:8080/"), REALM, now),
            Err("the Referer does not start with AdfsIssuer")
        );
        assert_eq!(
            sign_in(&wresult, referer, "http://localhost:8080/ecp/", now),
            Err("the audience is not this realm")
        );
        assert_eq!(
            sign_in(&wresult, referer, REALM, now + 2 * 3600),
            Err("the token is not valid now")
        );
        let foreign = DemoSigning::generate().unwrap();
        assert_eq!(
            sign_in(&token(&foreign, now as u64), referer, REALM, now),
            Err("signing certificate not in AdfsSignCertificateThumbprints")
        );
    }
}
