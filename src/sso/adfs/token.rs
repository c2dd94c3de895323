//! The WS-Federation sign-in response Exchange accepts in AD FS mode: a
//! `RequestSecurityTokenResponse` around a SAML 1.1 assertion with the user's UPN and
//! on-premises SID, signed (enveloped XML signature, exclusive canonicalisation, RSA-SHA256).
//!
//! No maintained Rust XML-signature library fits (SAML 1.1's `AssertionID`, pure Rust), and the
//! token has a fixed shape, so the assertion is written directly in its exclusive-canonical
//! form: the bytes in the document are the bytes that are digested. That means, everywhere
//! below: no XML declaration, no whitespace between elements, `<a></a>` for empty elements,
//! namespace declarations before attributes, attributes sorted by name (none is namespaced),
//! and the escaping of canonical XML. Every value from outside (UPN, SID, realm, issuer) goes
//! through that escaping, so a UPN holding `<`, `&` or `"` still yields a well-formed token
//! whose signature holds.

use std::fmt;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use ring::rand::{SecureRandom, SystemRandom};
use sha2::{Digest, Sha256};

use super::signing::SigningCredential;

const SAML: &str = "urn:oasis:names:tc:SAML:1.0:assertion";
const DSIG: &str = "http://www.w3.org/2000/09/xmldsig#";
const EXC_C14N: &str = "http://www.w3.org/2001/10/xml-exc-c14n#";
const RSA_SHA256: &str = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256";
const ENVELOPED_SIGNATURE: &str = "http://www.w3.org/2000/09/xmldsig#enveloped-signature";
const SHA256: &str = "http://www.w3.org/2001/04/xmlenc#sha256";
const WS_TRUST: &str = "http://schemas.xmlsoap.org/ws/2005/02/trust";
const WSU: &str =
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd";
const WSP: &str = "http://schemas.xmlsoap.org/ws/2004/09/policy";
const WSA: &str = "http://www.w3.org/2005/08/addressing";

/// The claim namespaces of Exchange's two claim rules (`…/upn`, `…/primarysid`).
const UPN_NAMESPACE: &str = "http://schemas.xmlsoap.org/ws/2005/05/identity/claims";
const SID_NAMESPACE: &str = "http://schemas.microsoft.com/ws/2008/06/identity/claims";
const NAME_ID_UNSPECIFIED: &str = "urn:oasis:names:tc:SAML:1.1:nameid-format:unspecified";
const BEARER: &str = "urn:oasis:names:tc:SAML:1.0:cm:bearer";
/// SAML 1.1's "unspecified" method, WIF's own default: Exchange does not read it, and the
/// multifactor sign-in happened at Entra ID, not here.
const AUTHENTICATION_METHOD: &str = "urn:oasis:names:tc:SAML:1.0:am:unspecified";

/// What one token says. Times are unix seconds.
#[derive(Clone, Copy, Debug)]
pub struct TokenRequest<'a> {
    /// The assertion's `Issuer`. WIF requires it non-empty; Exchange does not compare it with
    /// its `AdfsIssuer` (that one is only where it sends the browser).
    pub issuer: &'a str,
    /// The relying party, e.g. `https://mail.contoso.com/owa/`: the `Audience` and the
    /// `AppliesTo` address. Exchange compares the path case-sensitively, trailing slash
    /// included.
    pub realm: &'a str,
    /// The on-premises `userPrincipalName`: the `upn` claim Exchange requires, and the
    /// `NameIdentifier`.
    pub upn: &'a str,
    /// The on-premises `objectSID` (`S-1-5-21-…`), the `primarysid` claim Exchange finds the
    /// user by. Empty: no `primarysid` claim, and Exchange falls back to a logon by UPN.
    pub primary_sid: &'a str,
    /// `AuthenticationInstant`: when the gateway's session began. Exchange refuses a token
    /// whose `NotBefore` is 6 hours or more after it.
    pub authenticated_at: u64,
    /// `IssueInstant`, `NotBefore`, `Lifetime/Created`.
    pub now: u64,
    /// `NotOnOrAfter`, `Lifetime/Expires`.
    pub not_on_or_after: u64,
}

/// A signed token. `wresult` is a bearer credential for the user's mailbox: its `Debug` shows
/// only the assertion ID.
#[derive(Clone)]
pub struct IssuedToken {
    /// `_` and 32 random hexadecimal digits.
    pub assertion_id: String,
    /// The `t:RequestSecurityTokenResponse`, the `wresult` field of the form posted to Exchange.
    pub wresult: String,
}

impl fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedToken")
            .field("assertion_id", &self.assertion_id)
            .field("wresult", &format_args!("<{} bytes>", self.wresult.len()))
            .finish()
    }
}

/// Why no token was issued.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignError {
    #[error("the {field} is empty")]
    Empty { field: &'static str },
    #[error("the {field} contains U+{code_point:04X}, a character XML 1.0 cannot carry")]
    NotXmlCharacter {
        field: &'static str,
        code_point: u32,
    },
    #[error("the {field} time ({seconds}) is outside the years 1970–9999")]
    TimeOutOfRange { field: &'static str, seconds: u64 },
    #[error("the token would expire ({not_on_or_after}) no later than it is issued ({now})")]
    NoLifetime { now: u64, not_on_or_after: u64 },
    #[error("the authentication time ({authenticated_at}) is later than now ({now})")]
    AuthenticatedInTheFuture { authenticated_at: u64, now: u64 },
    #[error("the system random number generator failed")]
    Random,
    #[error("RSA signing failed")]
    Signing,
}

/// Signs a token for `request` with `credential`.
pub fn issue(
    credential: &SigningCredential,
    request: &TokenRequest<'_>,
) -> Result<IssuedToken, SignError> {
    let fields = Fields::check(request)?;
    let assertion_id = new_assertion_id()?;
    let body = assertion_body(&assertion_id, &fields);
    // The enveloped-signature transform removes the Signature again before digesting, and the
    // assertion is already canonical: the digest is over exactly these bytes.
    let digest = BASE64.encode(Sha256::digest(format!("{body}{ASSERTION_END}").as_bytes()));
    let signature_value = credential
        .sign(signed_info(&assertion_id, &digest, true).as_bytes())
        .map_err(|_| SignError::Signing)?;

    let mut xml = Xml(body);
    xml.open("ds:Signature", &[("xmlns:ds", DSIG)]);
    xml.0.push_str(&signed_info(&assertion_id, &digest, false));
    xml.element("ds:SignatureValue", &[], &BASE64.encode(signature_value));
    xml.open("ds:KeyInfo", &[]);
    xml.open("ds:X509Data", &[]);
    xml.element(
        "ds:X509Certificate",
        &[],
        &BASE64.encode(credential.certificate_der()),
    );
    xml.close("ds:X509Data");
    xml.close("ds:KeyInfo");
    xml.close("ds:Signature");
    xml.0.push_str(ASSERTION_END);

    Ok(IssuedToken {
        wresult: request_security_token_response(&fields, &xml.0),
        assertion_id,
    })
}

const ASSERTION_END: &str = "</saml:Assertion>";

/// The request's values, checked and with times formatted.
struct Fields<'a> {
    issuer: &'a str,
    realm: &'a str,
    upn: &'a str,
    primary_sid: Option<&'a str>,
    now: String,
    not_on_or_after: String,
    authenticated_at: String,
}

impl<'a> Fields<'a> {
    fn check(request: &TokenRequest<'a>) -> Result<Fields<'a>, SignError> {
        for (field, value) in [
            ("issuer", request.issuer),
            ("realm", request.realm),
            ("UPN", request.upn),
        ] {
            if value.is_empty() {
                return Err(SignError::Empty { field });
            }
            xml_characters(field, value)?;
        }
        xml_characters("primary SID", request.primary_sid)?;
        if request.not_on_or_after <= request.now {
            return Err(SignError::NoLifetime {
                now: request.now,
                not_on_or_after: request.not_on_or_after,
            });
        }
        if request.authenticated_at > request.now {
            return Err(SignError::AuthenticatedInTheFuture {
                authenticated_at: request.authenticated_at,
                now: request.now,
            });
        }
        Ok(Fields {
            issuer: request.issuer,
            realm: request.realm,
            upn: request.upn,
            primary_sid: Some(request.primary_sid).filter(|sid| !sid.is_empty()),
            now: xml_time("issue", request.now)?,
            not_on_or_after: xml_time("expiry", request.not_on_or_after)?,
            authenticated_at: xml_time("authentication", request.authenticated_at)?,
        })
    }
}

/// `_` and 128 random bits in hex: an XML ID (it must not start with a digit) that nobody can
/// predict.
fn new_assertion_id() -> Result<String, SignError> {
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| SignError::Random)?;
    let mut id = String::with_capacity(33);
    id.push('_');
    for b in bytes {
        id.push_str(&format!("{b:02x}"));
    }
    Ok(id)
}

/// The assertion in exclusive-canonical form, up to its end tag: the Signature goes there.
fn assertion_body(assertion_id: &str, fields: &Fields<'_>) -> String {
    let mut xml = Xml(String::with_capacity(2048));
    xml.open(
        "saml:Assertion",
        &[
            ("xmlns:saml", SAML),
            ("AssertionID", assertion_id),
            ("IssueInstant", &fields.now),
            ("Issuer", fields.issuer),
            ("MajorVersion", "1"),
            ("MinorVersion", "1"),
        ],
    );
    xml.open(
        "saml:Conditions",
        &[
            ("NotBefore", &fields.now),
            ("NotOnOrAfter", &fields.not_on_or_after),
        ],
    );
    xml.open("saml:AudienceRestrictionCondition", &[]);
    xml.element("saml:Audience", &[], fields.realm);
    xml.close("saml:AudienceRestrictionCondition");
    xml.close("saml:Conditions");

    xml.open("saml:AttributeStatement", &[]);
    subject(&mut xml, fields.upn);
    attribute(&mut xml, "upn", UPN_NAMESPACE, fields.upn);
    if let Some(sid) = fields.primary_sid {
        attribute(&mut xml, "primarysid", SID_NAMESPACE, sid);
    }
    xml.close("saml:AttributeStatement");

    xml.open(
        "saml:AuthenticationStatement",
        &[
            ("AuthenticationInstant", &fields.authenticated_at),
            ("AuthenticationMethod", AUTHENTICATION_METHOD),
        ],
    );
    subject(&mut xml, fields.upn);
    xml.close("saml:AuthenticationStatement");
    xml.0
}

fn subject(xml: &mut Xml, upn: &str) {
    xml.open("saml:Subject", &[]);
    xml.element(
        "saml:NameIdentifier",
        &[("Format", NAME_ID_UNSPECIFIED)],
        upn,
    );
    xml.open("saml:SubjectConfirmation", &[]);
    xml.element("saml:ConfirmationMethod", &[], BEARER);
    xml.close("saml:SubjectConfirmation");
    xml.close("saml:Subject");
}

fn attribute(xml: &mut Xml, name: &str, namespace: &str, value: &str) {
    xml.open(
        "saml:Attribute",
        &[("AttributeName", name), ("AttributeNamespace", namespace)],
    );
    xml.element("saml:AttributeValue", &[], value);
    xml.close("saml:Attribute");
}

/// `ds:SignedInfo` for the reference to `#assertion_id`. The signed bytes are its canonical
/// form, which declares `xmlns:ds` itself (`declare_namespace`); inside `ds:Signature` in the
/// document it inherits the declaration instead.
fn signed_info(assertion_id: &str, digest: &str, declare_namespace: bool) -> String {
    let mut xml = Xml(String::with_capacity(1024));
    let declaration = [("xmlns:ds", DSIG)];
    xml.open(
        "ds:SignedInfo",
        if declare_namespace { &declaration } else { &[] },
    );
    xml.element("ds:CanonicalizationMethod", &[("Algorithm", EXC_C14N)], "");
    xml.element("ds:SignatureMethod", &[("Algorithm", RSA_SHA256)], "");
    let uri = format!("#{assertion_id}");
    xml.open("ds:Reference", &[("URI", &uri)]);
    xml.open("ds:Transforms", &[]);
    xml.element("ds:Transform", &[("Algorithm", ENVELOPED_SIGNATURE)], "");
    xml.element("ds:Transform", &[("Algorithm", EXC_C14N)], "");
    xml.close("ds:Transforms");
    xml.element("ds:DigestMethod", &[("Algorithm", SHA256)], "");
    xml.element("ds:DigestValue", &[], digest);
    xml.close("ds:Reference");
    xml.close("ds:SignedInfo");
    xml.0
}

/// The envelope AD FS posts: lifetime, the relying party, the assertion, and the constants
/// WIF expects. Not signed, so its form is free; it is written in the same compact style.
fn request_security_token_response(fields: &Fields<'_>, assertion: &str) -> String {
    let mut xml = Xml(String::with_capacity(assertion.len() + 1024));
    xml.open("t:RequestSecurityTokenResponse", &[("xmlns:t", WS_TRUST)]);
    xml.open("t:Lifetime", &[]);
    xml.element("wsu:Created", &[("xmlns:wsu", WSU)], &fields.now);
    xml.element(
        "wsu:Expires",
        &[("xmlns:wsu", WSU)],
        &fields.not_on_or_after,
    );
    xml.close("t:Lifetime");
    xml.open("wsp:AppliesTo", &[("xmlns:wsp", WSP)]);
    xml.open("wsa:EndpointReference", &[("xmlns:wsa", WSA)]);
    xml.element("wsa:Address", &[], fields.realm);
    xml.close("wsa:EndpointReference");
    xml.close("wsp:AppliesTo");
    xml.open("t:RequestedSecurityToken", &[]);
    xml.0.push_str(assertion);
    xml.close("t:RequestedSecurityToken");
    xml.element("t:TokenType", &[], SAML);
    xml.element(
        "t:RequestType",
        &[],
        "http://schemas.xmlsoap.org/ws/2005/02/trust/Issue",
    );
    xml.element(
        "t:KeyType",
        &[],
        "http://schemas.xmlsoap.org/ws/2005/05/identity/NoProofKey",
    );
    xml.close("t:RequestSecurityTokenResponse");
    xml.0
}

/// Canonical XML written by hand: the caller gives attributes in canonical order (namespace
/// declarations, then attributes by name), which debug builds check.
struct Xml(String);

impl Xml {
    fn open(&mut self, name: &str, attributes: &[(&str, &str)]) {
        debug_assert!(in_canonical_order(attributes), "{name}: {attributes:?}");
        self.0.push('<');
        self.0.push_str(name);
        for (attribute, value) in attributes {
            self.0.push(' ');
            self.0.push_str(attribute);
            self.0.push_str("=\"");
            escape_attribute(&mut self.0, value);
            self.0.push('"');
        }
        self.0.push('>');
    }

    fn close(&mut self, name: &str) {
        self.0.push_str("</");
        self.0.push_str(name);
        self.0.push('>');
    }

    /// An element holding only text (or nothing: canonical XML has no `<a/>`).
    fn element(&mut self, name: &str, attributes: &[(&str, &str)], text: &str) {
        self.open(name, attributes);
        escape_text(&mut self.0, text);
        self.close(name);
    }
}

fn in_canonical_order(attributes: &[(&str, &str)]) -> bool {
    let is_declaration = |name: &str| name == "xmlns" || name.starts_with("xmlns:");
    let declarations = attributes
        .iter()
        .take_while(|(name, _)| is_declaration(name))
        .count();
    let (declarations, plain) = attributes.split_at(declarations);
    declarations.windows(2).all(|w| w[0].0 < w[1].0)
        && plain.iter().all(|(name, _)| !name.contains(':'))
        && plain.windows(2).all(|w| w[0].0 < w[1].0)
}

/// Canonical XML's text escaping (C14N 1.0 §2.3).
fn escape_text(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\r' => out.push_str("&#xD;"),
            c => out.push(c),
        }
    }
}

/// Canonical XML's attribute-value escaping: also the whitespace a parser would otherwise
/// normalise to spaces.
fn escape_attribute(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '"' => out.push_str("&quot;"),
            '\t' => out.push_str("&#x9;"),
            '\n' => out.push_str("&#xA;"),
            '\r' => out.push_str("&#xD;"),
            c => out.push(c),
        }
    }
}

/// XML 1.0 `Char`: not even a character reference can carry the others.
fn xml_characters(field: &'static str, value: &str) -> Result<(), SignError> {
    match value.chars().find(|&c| {
        !matches!(c,
            '\t' | '\n' | '\r'
            | '\u{20}'..='\u{D7FF}'
            | '\u{E000}'..='\u{FFFD}'
            | '\u{10000}'..='\u{10FFFF}')
    }) {
        Some(c) => Err(SignError::NotXmlCharacter {
            field,
            code_point: u32::from(c),
        }),
        None => Ok(()),
    }
}

/// `xs:dateTime` in UTC with milliseconds, as AD FS writes it.
fn xml_time(field: &'static str, seconds: u64) -> Result<String, SignError> {
    let time = i64::try_from(seconds)
        .ok()
        .and_then(|s| chrono::DateTime::from_timestamp(s, 0))
        .filter(|time| chrono::Datelike::year(time) <= 9999)
        .ok_or(SignError::TimeOutOfRange { field, seconds })?;
    Ok(time.format("%Y-%m-%dT%H:%M:%S.000Z").to_string())
}

#[cfg(test)]
mod tests;
