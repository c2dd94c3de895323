//! The token checks of the Exchange stand-in: WIF's `SamlSecurityTokenHandler` (parsing,
//! signature, issuer registry by thumbprint, lifetime, audience) and Exchange's own (claims,
//! authentication age), in that order, each refusal named.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;

use super::super::xmlsec1::{pem, xmlsec1_verify, Xmlsec1Key};
use super::AdfsExchangeConfig;

const SAML: &str = "urn:oasis:names:tc:SAML:1.0:assertion";
const DSIG: &str = "http://www.w3.org/2000/09/xmldsig#";
const WS_TRUST: &str = "http://schemas.xmlsoap.org/ws/2005/02/trust";
const EXC_C14N: &str = "http://www.w3.org/2001/10/xml-exc-c14n#";
const RSA_SHA256: &str = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256";
const SHA256: &str = "http://www.w3.org/2001/04/xmlenc#sha256";
const ENVELOPED_SIGNATURE: &str = "http://www.w3.org/2000/09/xmldsig#enveloped-signature";
const UPN_CLAIM: &str = "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/upn";
const SID_CLAIM: &str = "http://schemas.microsoft.com/ws/2008/06/identity/claims/primarysid";
/// WIF's `MaxClockSkew`.
const CLOCK_SKEW: i64 = 5 * 60;
/// Exchange's `ActivityBasedAuthenticationTimeoutInterval` (default 06:00:00).
const MAX_AUTHENTICATION_AGE: i64 = 6 * 3600;

/// The verdict on one posted token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenCheck {
    Accepted {
        upn: String,
        sid: Option<String>,
        assertion_id: String,
        audience: String,
    },
    Refused(Refusal),
}

/// Why a token was refused, as precisely as Exchange's and WIF's checks tell it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    RefererMissing,
    RefererNotIssuer {
        referer: String,
    },
    NoWresult,
    MalformedXml(String),
    NotARequestSecurityTokenResponse,
    /// None, or more than one, `saml:Assertion` in the response.
    AssertionCount(usize),
    /// Not the `RequestedSecurityToken` of the response.
    AssertionOutOfPlace,
    WrongVersion {
        major: String,
        minor: String,
    },
    BadAssertionId(String),
    IssuerMissing,
    NoStatement,
    Unsigned,
    SignatureNotLastChild,
    WrongAlgorithm {
        what: &'static str,
        algorithm: String,
    },
    ReferenceNotToAssertion {
        uri: String,
    },
    CertificateMissing,
    UnknownSigningCertificate {
        thumbprint: String,
    },
    BadSignature {
        xmlsec1: String,
    },
    BadTime {
        what: &'static str,
        value: String,
    },
    NotYetValid {
        not_before: i64,
        now: i64,
    },
    Expired {
        not_on_or_after: i64,
        now: i64,
    },
    NoAudienceRestriction,
    EmptyAudienceRestriction,
    /// No audience equals the realm built from the Host header.
    WrongAudience {
        audiences: Vec<String>,
        realm: String,
    },
    /// The audience is the realm, but not in `AdfsAudienceUris`.
    AudienceNotAccepted {
        audience: String,
    },
    UpnClaimMissing,
    DuplicateClaims {
        claim: String,
    },
    AuthenticationInstantMissing,
    /// `NotBefore − AuthenticationInstant` reached 6 hours: Exchange starts a new sign-in.
    AuthenticationTooOld {
        seconds: i64,
    },
}

impl Refusal {
    /// The `msg` of the `errorfe.aspx` page Exchange sends the browser to.
    pub(super) fn error_message(&self) -> &'static str {
        match self {
            Refusal::UpnClaimMissing => "UpnClaimMissing",
            Refusal::DuplicateClaims { .. } => "DuplicateClaims",
            _ => "WrongAudienceUriOrBadSigningCert",
        }
    }
}

pub(super) struct Accepted {
    pub(super) upn: String,
    pub(super) sid: Option<String>,
    pub(super) assertion_id: String,
    pub(super) audience: String,
}

/// The checks of WIF's `SamlSecurityTokenHandler` and of Exchange's AD FS modules.
pub(super) fn check_token(
    config: &AdfsExchangeConfig,
    realm: &str,
    now: i64,
    wresult: Option<String>,
) -> Result<Accepted, Refusal> {
    let wresult = wresult.ok_or(Refusal::NoWresult)?;
    let doc =
        roxmltree::Document::parse(&wresult).map_err(|e| Refusal::MalformedXml(e.to_string()))?;
    let root = doc.root_element();
    if !is(root, WS_TRUST, "RequestSecurityTokenResponse") {
        return Err(Refusal::NotARequestSecurityTokenResponse);
    }
    let assertions: Vec<_> = doc
        .descendants()
        .filter(|n| is(*n, SAML, "Assertion"))
        .collect();
    let [assertion] = assertions[..] else {
        return Err(Refusal::AssertionCount(assertions.len()));
    };
    let in_place = assertion.parent_element().is_some_and(|p| {
        is(p, WS_TRUST, "RequestedSecurityToken") && p.parent_element() == Some(root)
    });
    if !in_place {
        return Err(Refusal::AssertionOutOfPlace);
    }

    // ReadAssertion
    let major = assertion.attribute("MajorVersion").unwrap_or("");
    let minor = assertion.attribute("MinorVersion").unwrap_or("");
    if (major, minor) != ("1", "1") {
        return Err(Refusal::WrongVersion {
            major: major.to_owned(),
            minor: minor.to_owned(),
        });
    }
    let id = assertion.attribute("AssertionID").unwrap_or("");
    let xml_id = id.starts_with('_')
        && id[1..]
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if !xml_id {
        return Err(Refusal::BadAssertionId(id.to_owned()));
    }
    if assertion.attribute("Issuer").unwrap_or("").is_empty() {
        return Err(Refusal::IssuerMissing);
    }
    let statements = elements(assertion)
        .filter(|n| {
            n.tag_name().namespace() == Some(SAML) && n.tag_name().name().ends_with("Statement")
        })
        .count();
    if statements == 0 {
        return Err(Refusal::NoStatement);
    }

    // The signature
    let signatures: Vec<_> = elements(assertion)
        .filter(|n| is(*n, DSIG, "Signature"))
        .collect();
    let Some(&signature) = signatures.first() else {
        return Err(Refusal::Unsigned);
    };
    if signatures.len() != 1 || assertion.last_element_child() != Some(signature) {
        return Err(Refusal::SignatureNotLastChild);
    }
    let signed_info = child(signature, DSIG, "SignedInfo").ok_or(Refusal::Unsigned)?;
    algorithm(signed_info, "CanonicalizationMethod", EXC_C14N)?;
    algorithm(signed_info, "SignatureMethod", RSA_SHA256)?;
    let references: Vec<_> = elements(signed_info)
        .filter(|n| is(*n, DSIG, "Reference"))
        .collect();
    let [reference] = references[..] else {
        return Err(Refusal::ReferenceNotToAssertion {
            uri: format!("{} references", references.len()),
        });
    };
    let uri = reference.attribute("URI").unwrap_or("");
    if uri != format!("#{id}") {
        return Err(Refusal::ReferenceNotToAssertion {
            uri: uri.to_owned(),
        });
    }
    algorithm(reference, "DigestMethod", SHA256)?;
    let transforms: Vec<_> = child(reference, DSIG, "Transforms")
        .map(|t| {
            elements(t)
                .map(|n| n.attribute("Algorithm").unwrap_or("").to_owned())
                .collect()
        })
        .unwrap_or_default();
    if transforms != [ENVELOPED_SIGNATURE, EXC_C14N] {
        return Err(Refusal::WrongAlgorithm {
            what: "Transforms",
            algorithm: transforms.join(" "),
        });
    }
    let certificate = child(signature, DSIG, "KeyInfo")
        .and_then(|k| child(k, DSIG, "X509Data"))
        .and_then(|x| child(x, DSIG, "X509Certificate"))
        .and_then(|c| c.text())
        .map(|t| t.split_whitespace().collect::<String>())
        .and_then(|b64| BASE64.decode(b64).ok())
        .ok_or(Refusal::CertificateMissing)?;
    let thumbprint = sha1_hex(&certificate);
    let listed = config.thumbprints.iter().any(|t| {
        t.split_whitespace()
            .collect::<String>()
            .eq_ignore_ascii_case(&thumbprint)
    });
    if !listed {
        return Err(Refusal::UnknownSigningCertificate { thumbprint });
    }
    let verdict = xmlsec1_verify(
        &wresult,
        Xmlsec1Key::PubkeyCert(&pem("CERTIFICATE", &certificate)),
    );
    if !verdict.ok {
        return Err(Refusal::BadSignature {
            xmlsec1: verdict.output,
        });
    }

    // Lifetime
    let conditions = child(assertion, SAML, "Conditions");
    let condition_time = |name: &'static str| -> Result<Option<i64>, Refusal> {
        conditions
            .and_then(|c| c.attribute(name))
            .map(|v| parse_time(name, v))
            .transpose()
    };
    let not_before = condition_time("NotBefore")?;
    if let Some(not_before) = not_before {
        if now + CLOCK_SKEW < not_before {
            return Err(Refusal::NotYetValid { not_before, now });
        }
    }
    if let Some(not_on_or_after) = condition_time("NotOnOrAfter")? {
        if now - CLOCK_SKEW >= not_on_or_after {
            return Err(Refusal::Expired {
                not_on_or_after,
                now,
            });
        }
    }

    // Audience (AudienceUriMode Always)
    let restrictions: Vec<_> = conditions
        .map(|c| {
            elements(c)
                .filter(|n| is(*n, SAML, "AudienceRestrictionCondition"))
                .collect()
        })
        .unwrap_or_default();
    if restrictions.is_empty() {
        return Err(Refusal::NoAudienceRestriction);
    }
    let audiences: Vec<String> = restrictions
        .iter()
        .flat_map(|r| elements(*r).filter(|n| is(*n, SAML, "Audience")))
        .map(|a| a.text().unwrap_or("").to_owned())
        .collect();
    if audiences.is_empty() {
        return Err(Refusal::EmptyAudienceRestriction);
    }
    let Some(audience) = audiences.iter().find(|a| same_uri(a, realm)) else {
        return Err(Refusal::WrongAudience {
            audiences,
            realm: realm.to_owned(),
        });
    };
    if !config
        .audiences
        .iter()
        .any(|accepted| same_uri(audience, accepted))
    {
        return Err(Refusal::AudienceNotAccepted {
            audience: audience.clone(),
        });
    }

    // Exchange's claims
    let mut upns = Vec::new();
    let mut sids = Vec::new();
    for attribute in assertion
        .descendants()
        .filter(|n| is(*n, SAML, "Attribute"))
    {
        let namespace = attribute.attribute("AttributeNamespace").unwrap_or("");
        let name = attribute.attribute("AttributeName").unwrap_or("");
        let claim = if namespace.ends_with('/') {
            format!("{namespace}{name}")
        } else {
            format!("{namespace}/{name}")
        };
        let values = elements(attribute)
            .filter(|n| is(*n, SAML, "AttributeValue"))
            .map(|v| v.text().unwrap_or("").to_owned());
        match claim.as_str() {
            UPN_CLAIM => upns.extend(values),
            SID_CLAIM => sids.extend(values),
            _ => {}
        }
    }
    if upns.is_empty() {
        return Err(Refusal::UpnClaimMissing);
    }
    if upns.len() > 1 {
        return Err(Refusal::DuplicateClaims {
            claim: UPN_CLAIM.to_owned(),
        });
    }
    if sids.len() > 1 {
        return Err(Refusal::DuplicateClaims {
            claim: SID_CLAIM.to_owned(),
        });
    }
    let authentication_instant = child(assertion, SAML, "AuthenticationStatement")
        .and_then(|s| s.attribute("AuthenticationInstant"))
        .ok_or(Refusal::AuthenticationInstantMissing)?;
    let authenticated_at = parse_time("AuthenticationInstant", authentication_instant)?;
    let valid_from = match not_before {
        Some(t) => t,
        None => parse_time(
            "IssueInstant",
            assertion.attribute("IssueInstant").unwrap_or(""),
        )?,
    };
    if valid_from - authenticated_at >= MAX_AUTHENTICATION_AGE {
        return Err(Refusal::AuthenticationTooOld {
            seconds: valid_from - authenticated_at,
        });
    }
    Ok(Accepted {
        upn: upns.remove(0),
        sid: sids.pop(),
        assertion_id: id.to_owned(),
        audience: audience.clone(),
    })
}

fn is(node: roxmltree::Node<'_, '_>, namespace: &str, name: &str) -> bool {
    node.is_element()
        && node.tag_name().namespace() == Some(namespace)
        && node.tag_name().name() == name
}

fn elements<'a, 'input>(
    node: roxmltree::Node<'a, 'input>,
) -> impl Iterator<Item = roxmltree::Node<'a, 'input>> {
    node.children().filter(|n| n.is_element())
}

fn child<'a, 'input>(
    node: roxmltree::Node<'a, 'input>,
    namespace: &str,
    name: &str,
) -> Option<roxmltree::Node<'a, 'input>> {
    elements(node).find(|n| is(*n, namespace, name))
}

fn algorithm(
    parent: roxmltree::Node<'_, '_>,
    what: &'static str,
    expected: &str,
) -> Result<(), Refusal> {
    let algorithm = child(parent, DSIG, what)
        .and_then(|n| n.attribute("Algorithm"))
        .unwrap_or("");
    if algorithm == expected {
        Ok(())
    } else {
        Err(Refusal::WrongAlgorithm {
            what,
            algorithm: algorithm.to_owned(),
        })
    }
}

fn parse_time(what: &'static str, value: &str) -> Result<i64, Refusal> {
    chrono::DateTime::parse_from_rfc3339(value)
        .map(|t| t.timestamp())
        .map_err(|_| Refusal::BadTime {
            what,
            value: value.to_owned(),
        })
}

/// `System.Uri` equality of the URIs cut to their path: scheme and host in any case, default
/// port implied, path exact (letter case, trailing slash).
fn same_uri(a: &str, b: &str) -> bool {
    let cut = |s: &str| {
        url::Url::parse(s).ok().map(|mut u| {
            u.set_query(None);
            u.set_fragment(None);
            u.to_string()
        })
    };
    matches!((cut(a), cut(b)), (Some(a), Some(b)) if a == b)
}

/// Uppercase hex SHA-1, as Windows shows a certificate thumbprint.
pub fn sha1_hex(der: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect()
}
