use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use rustls_pki_types::CertificateDer;
use sha2::{Digest, Sha256};

use super::*;
use crate::sso::adfs::test_credential::test_credential;

const NOW: u64 = 1_700_000_000; // 2023-11-14T22:13:20Z

fn request<'a>(upn: &'a str) -> TokenRequest<'a> {
    TokenRequest {
        issuer: "https://mail.contoso.com/_gateway/wsfed/",
        realm: "https://mail.contoso.com/owa/",
        upn,
        primary_sid: "S-1-5-21-1004336348-1177238915-682003330-1106",
        authenticated_at: NOW - 60,
        now: NOW,
        not_on_or_after: NOW + 600,
    }
}

fn ns_name<'a>(node: roxmltree::Node<'a, 'a>) -> (Option<&'a str>, &'a str) {
    (node.tag_name().namespace(), node.tag_name().name())
}

fn child<'a>(node: roxmltree::Node<'a, 'a>, ns: &str, name: &str) -> roxmltree::Node<'a, 'a> {
    node.children()
        .find(|c| c.is_element() && ns_name(*c) == (Some(ns), name))
        .unwrap_or_else(|| panic!("no {name} under {:?}", node.tag_name()))
}

/// Checks the enveloped signature the way a verifier does, with nothing of the issuing code:
/// the digest over the assertion without its Signature, the RSA-SHA256 signature over the
/// SignedInfo (declaring `ds`, as its canonical form does) with the certificate's key.
fn verify(wresult: &str, cert_der: &[u8]) -> Result<(), String> {
    let doc = roxmltree::Document::parse(wresult).map_err(|e| e.to_string())?;
    let assertion = doc
        .descendants()
        .find(|n| ns_name(*n) == (Some(SAML), "Assertion"))
        .ok_or("no assertion")?;
    let signature = assertion.last_element_child().ok_or("empty assertion")?;
    if ns_name(signature) != (Some(DSIG), "Signature") {
        return Err("the signature is not the assertion's last child".into());
    }
    let whole = &wresult[assertion.range()];
    let cut = signature.range().start - assertion.range().start
        ..signature.range().end - assertion.range().start;
    let unsigned = format!("{}{}", &whole[..cut.start], &whole[cut.end..]);

    let signed_info = child(signature, DSIG, "SignedInfo");
    let reference = child(signed_info, DSIG, "Reference");
    let id = assertion.attribute("AssertionID").ok_or("no AssertionID")?;
    if reference.attribute("URI") != Some(&format!("#{id}")) {
        return Err("the reference is not to the assertion".into());
    }
    let digest = child(reference, DSIG, "DigestValue").text().unwrap_or("");
    if BASE64.encode(Sha256::digest(unsigned.as_bytes())) != digest {
        return Err("digest mismatch".into());
    }
    let signed_info_text = &wresult[signed_info.range()];
    let canonical_signed_info = signed_info_text.replacen(
        "<ds:SignedInfo>",
        &format!("<ds:SignedInfo xmlns:ds=\"{DSIG}\">"),
        1,
    );
    let value = BASE64
        .decode(
            child(signature, DSIG, "SignatureValue")
                .text()
                .unwrap_or(""),
        )
        .map_err(|e| e.to_string())?;
    let cert = CertificateDer::from(cert_der);
    let end_entity = webpki::EndEntityCert::try_from(&cert).map_err(|e| e.to_string())?;
    end_entity
        .verify_signature(
            webpki::ring::RSA_PKCS1_2048_8192_SHA256,
            canonical_signed_info.as_bytes(),
            &value,
        )
        .map_err(|e| format!("signature: {e}"))
}

fn attribute_values<'a>(assertion: roxmltree::Node<'a, 'a>, name: &str) -> Vec<String> {
    assertion
        .descendants()
        .filter(|n| ns_name(*n) == (Some(SAML), "Attribute"))
        .filter(|n| n.attribute("AttributeName") == Some(name))
        .flat_map(|n| n.children().filter(|c| c.is_element()))
        .map(|v| v.text().unwrap_or("").to_owned())
        .collect()
}

#[test]
fn token_is_the_response_ad_fs_posts_with_a_signed_saml_assertion() {
    let credential = test_credential();
    let token = issue(&credential, &request("alice@contoso.com")).unwrap();
    let doc = roxmltree::Document::parse(&token.wresult).unwrap();
    let root = doc.root_element();
    assert_eq!(
        ns_name(root),
        (Some(WS_TRUST), "RequestSecurityTokenResponse")
    );
    let lifetime = child(root, WS_TRUST, "Lifetime");
    assert_eq!(
        child(lifetime, WSU, "Created").text(),
        Some("2023-11-14T22:13:20.000Z")
    );
    assert_eq!(
        child(lifetime, WSU, "Expires").text(),
        Some("2023-11-14T22:23:20.000Z")
    );
    let address = child(
        child(child(root, WSP, "AppliesTo"), WSA, "EndpointReference"),
        WSA,
        "Address",
    );
    assert_eq!(address.text(), Some("https://mail.contoso.com/owa/"));
    assert_eq!(child(root, WS_TRUST, "TokenType").text(), Some(SAML));

    let assertion = child(
        child(root, WS_TRUST, "RequestedSecurityToken"),
        SAML,
        "Assertion",
    );
    assert_eq!(
        assertion.attribute("AssertionID"),
        Some(&*token.assertion_id)
    );
    assert_eq!(assertion.attribute("MajorVersion"), Some("1"));
    assert_eq!(assertion.attribute("MinorVersion"), Some("1"));
    assert_eq!(
        assertion.attribute("Issuer"),
        Some("https://mail.contoso.com/_gateway/wsfed/")
    );
    let conditions = child(assertion, SAML, "Conditions");
    assert_eq!(
        conditions.attribute("NotBefore"),
        Some("2023-11-14T22:13:20.000Z")
    );
    let audience = child(
        child(conditions, SAML, "AudienceRestrictionCondition"),
        SAML,
        "Audience",
    );
    assert_eq!(audience.text(), Some("https://mail.contoso.com/owa/"));
    assert_eq!(attribute_values(assertion, "upn"), ["alice@contoso.com"]);
    assert_eq!(
        attribute_values(assertion, "primarysid"),
        ["S-1-5-21-1004336348-1177238915-682003330-1106"]
    );
    let authentication = child(assertion, SAML, "AuthenticationStatement");
    assert_eq!(
        authentication.attribute("AuthenticationInstant"),
        Some("2023-11-14T22:12:20.000Z")
    );
    let children: Vec<_> = assertion
        .children()
        .filter(|c| c.is_element())
        .map(|c| c.tag_name().name())
        .collect();
    assert_eq!(
        children,
        [
            "Conditions",
            "AttributeStatement",
            "AuthenticationStatement",
            "Signature"
        ]
    );
    verify(&token.wresult, credential.certificate_der()).unwrap();
}

#[test]
fn canonical_assertion_is_byte_for_byte_stable() {
    let request = request("alice@contoso.com");
    let fields = Fields::check(&request).unwrap();
    let id = "_00112233445566778899aabbccddeeff";
    let subject = "<saml:Subject><saml:NameIdentifier \
        Format=\"urn:oasis:names:tc:SAML:1.1:nameid-format:unspecified\">alice@contoso.com\
        </saml:NameIdentifier><saml:SubjectConfirmation><saml:ConfirmationMethod>\
        urn:oasis:names:tc:SAML:1.0:cm:bearer</saml:ConfirmationMethod>\
        </saml:SubjectConfirmation></saml:Subject>";
    let expected = format!(
        "<saml:Assertion xmlns:saml=\"urn:oasis:names:tc:SAML:1.0:assertion\" \
         AssertionID=\"{id}\" IssueInstant=\"2023-11-14T22:13:20.000Z\" \
         Issuer=\"https://mail.contoso.com/_gateway/wsfed/\" MajorVersion=\"1\" \
         MinorVersion=\"1\"><saml:Conditions NotBefore=\"2023-11-14T22:13:20.000Z\" \
         NotOnOrAfter=\"2023-11-14T22:23:20.000Z\"><saml:AudienceRestrictionCondition>\
         <saml:Audience>https://mail.contoso.com/owa/</saml:Audience>\
         </saml:AudienceRestrictionCondition></saml:Conditions><saml:AttributeStatement>\
         {subject}<saml:Attribute AttributeName=\"upn\" \
         AttributeNamespace=\"http://schemas.xmlsoap.org/ws/2005/05/identity/claims\">\
         <saml:AttributeValue>alice@contoso.com</saml:AttributeValue></saml:Attribute>\
         <saml:Attribute AttributeName=\"primarysid\" \
         AttributeNamespace=\"http://schemas.microsoft.com/ws/2008/06/identity/claims\">\
         <saml:AttributeValue>S-1-5-21-1004336348-1177238915-682003330-1106\
         </saml:AttributeValue></saml:Attribute></saml:AttributeStatement>\
         <saml:AuthenticationStatement AuthenticationInstant=\"2023-11-14T22:12:20.000Z\" \
         AuthenticationMethod=\"urn:oasis:names:tc:SAML:1.0:am:unspecified\">{subject}\
         </saml:AuthenticationStatement></saml:Assertion>"
    );
    assert_eq!(
        format!("{}{ASSERTION_END}", assertion_body(id, &fields)),
        expected
    );

    let expected_signed_info = format!(
        "<ds:SignedInfo xmlns:ds=\"http://www.w3.org/2000/09/xmldsig#\">\
         <ds:CanonicalizationMethod Algorithm=\"http://www.w3.org/2001/10/xml-exc-c14n#\">\
         </ds:CanonicalizationMethod><ds:SignatureMethod \
         Algorithm=\"http://www.w3.org/2001/04/xmldsig-more#rsa-sha256\"></ds:SignatureMethod>\
         <ds:Reference URI=\"#{id}\"><ds:Transforms><ds:Transform \
         Algorithm=\"http://www.w3.org/2000/09/xmldsig#enveloped-signature\"></ds:Transform>\
         <ds:Transform Algorithm=\"http://www.w3.org/2001/10/xml-exc-c14n#\"></ds:Transform>\
         </ds:Transforms><ds:DigestMethod Algorithm=\"http://www.w3.org/2001/04/xmlenc#sha256\">\
         </ds:DigestMethod><ds:DigestValue>DIGEST</ds:DigestValue></ds:Reference>\
         </ds:SignedInfo>"
    );
    assert_eq!(signed_info(id, "DIGEST", true), expected_signed_info);
    assert_eq!(
        signed_info(id, "DIGEST", false),
        expected_signed_info.replace(" xmlns:ds=\"http://www.w3.org/2000/09/xmldsig#\"", "")
    );
}

#[test]
fn every_element_has_its_attributes_in_canonical_order() {
    let token = issue(&test_credential(), &request("alice@contoso.com")).unwrap();
    let doc = roxmltree::Document::parse(&token.wresult).unwrap();
    for element in doc.descendants().filter(|n| n.is_element()) {
        let names: Vec<_> = element.attributes().map(|a| a.name()).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        assert_eq!(names, sorted, "{:?}", element.tag_name());
    }
}

#[test]
fn a_changed_upn_breaks_the_digest() {
    let credential = test_credential();
    let token = issue(&credential, &request("alice@contoso.com")).unwrap();
    let forged = token
        .wresult
        .replace(">alice@contoso.com<", ">mallory@contoso.com<");
    assert_ne!(forged, token.wresult);
    assert_eq!(
        verify(&forged, credential.certificate_der()),
        Err("digest mismatch".to_owned())
    );
}

#[test]
fn a_upn_with_markup_and_whitespace_is_escaped_and_still_signed() {
    let credential = test_credential();
    let upn = "a<b>&c\"d'e\tf\ng\rh]]>i@contoso.com";
    let mut hostile = request(upn);
    let realm = "https://mail.contoso.com/owa/?a=1&b=\"2\"<3>";
    hostile.realm = realm;
    hostile.issuer = "https://x/\"><saml:Attribute>";
    hostile.primary_sid = "S-1-5-21-\r\n";
    let token = issue(&credential, &hostile).unwrap();
    let doc = roxmltree::Document::parse(&token.wresult).unwrap();
    let assertion = doc
        .descendants()
        .find(|n| ns_name(*n) == (Some(SAML), "Assertion"))
        .unwrap();
    assert_eq!(attribute_values(assertion, "upn"), [upn]);
    assert_eq!(attribute_values(assertion, "primarysid"), ["S-1-5-21-\r\n"]);
    assert_eq!(assertion.attribute("Issuer"), Some(hostile.issuer));
    let audience = assertion
        .descendants()
        .find(|n| n.tag_name().name() == "Audience")
        .unwrap();
    assert_eq!(audience.text(), Some(realm));
    assert!(token
        .wresult
        .contains("a&lt;b&gt;&amp;c\"d'e\tf\ng&#xD;h]]&gt;i@"));
    assert!(token
        .wresult
        .contains("Issuer=\"https://x/&quot;>&lt;saml:Attribute>\""));
    verify(&token.wresult, credential.certificate_der()).unwrap();
}

#[test]
fn characters_xml_cannot_carry_are_refused_by_name() {
    let credential = test_credential();
    assert_eq!(
        issue(&credential, &request("ali\u{1}ce@contoso.com")).unwrap_err(),
        SignError::NotXmlCharacter {
            field: "UPN",
            code_point: 1
        }
    );
    assert_eq!(
        issue(&credential, &request("alice\u{FFFE}@contoso.com")).unwrap_err(),
        SignError::NotXmlCharacter {
            field: "UPN",
            code_point: 0xFFFE
        }
    );
    let mut bad_sid = request("alice@contoso.com");
    bad_sid.primary_sid = "S-1-5\u{0}";
    assert_eq!(
        issue(&credential, &bad_sid).unwrap_err().to_string(),
        "the primary SID contains U+0000, a character XML 1.0 cannot carry"
    );
}

#[test]
fn empty_values_and_impossible_times_are_refused() {
    let credential = test_credential();
    assert_eq!(
        issue(&credential, &request("")).unwrap_err(),
        SignError::Empty { field: "UPN" }
    );
    let mut no_issuer = request("alice@contoso.com");
    no_issuer.issuer = "";
    assert_eq!(
        issue(&credential, &no_issuer).unwrap_err(),
        SignError::Empty { field: "issuer" }
    );
    let mut expired = request("alice@contoso.com");
    expired.not_on_or_after = expired.now;
    assert!(matches!(
        issue(&credential, &expired),
        Err(SignError::NoLifetime { .. })
    ));
    let mut future = request("alice@contoso.com");
    future.authenticated_at = future.now + 1;
    assert!(matches!(
        issue(&credential, &future),
        Err(SignError::AuthenticatedInTheFuture { .. })
    ));
    let mut far = request("alice@contoso.com");
    far.not_on_or_after = u64::MAX;
    assert_eq!(
        issue(&credential, &far).unwrap_err(),
        SignError::TimeOutOfRange {
            field: "expiry",
            seconds: u64::MAX
        }
    );
    far.not_on_or_after = 253_402_300_800; // 10000-01-01
    assert!(matches!(
        issue(&credential, &far),
        Err(SignError::TimeOutOfRange { .. })
    ));
}

#[test]
fn without_a_sid_the_primarysid_claim_is_left_out() {
    let credential = test_credential();
    let mut no_sid = request("alice@contoso.com");
    no_sid.primary_sid = "";
    let token = issue(&credential, &no_sid).unwrap();
    assert!(!token.wresult.contains("primarysid"));
    verify(&token.wresult, credential.certificate_der()).unwrap();
}

#[test]
fn assertion_ids_are_unpredictable_xml_ids() {
    let credential = test_credential();
    let a = issue(&credential, &request("alice@contoso.com")).unwrap();
    let b = issue(&credential, &request("alice@contoso.com")).unwrap();
    assert_ne!(a.assertion_id, b.assertion_id);
    for id in [&a.assertion_id, &b.assertion_id] {
        assert_eq!(id.len(), 33);
        assert!(id.starts_with('_'));
        assert!(id[1..].chars().all(|c| c.is_ascii_hexdigit()));
    }
    let shown = format!("{a:?}");
    assert!(shown.contains(&a.assertion_id));
    assert!(!shown.contains("Assertion>"), "{shown}");
}

#[test]
fn times_are_utc_with_milliseconds() {
    assert_eq!(xml_time("issue", 0).unwrap(), "1970-01-01T00:00:00.000Z");
    assert_eq!(xml_time("issue", NOW).unwrap(), "2023-11-14T22:13:20.000Z");
}
