//! `xmlsec1`, the reference XML-signature verifier, as a subprocess: the judge of the
//! gateway's token signatures in the tests. The tests fail, naming the package, when it is not
//! installed; they never skip.

use std::process::Command;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;

/// The SAML 1.1 assertion element, whose `AssertionID` is the XML ID references point at.
const SAML_ASSERTION: &str = "urn:oasis:names:tc:SAML:1.0:assertion:Assertion";

/// How `xmlsec1` is given the verification key.
pub enum Xmlsec1Key<'a> {
    /// `--pubkey-cert-pem`: exactly this certificate's public key (PEM text).
    PubkeyCert(&'a str),
    /// `--trusted-pem`: the certificate embedded in the token must chain to this one.
    Trusted(&'a str),
}

/// What `xmlsec1 --verify` said.
#[derive(Debug)]
pub struct Xmlsec1Verdict {
    /// Exit code 0 and "OK" printed.
    pub ok: bool,
    pub code: Option<i32>,
    /// stdout and stderr.
    pub output: String,
}

/// Fails the test, naming the package, unless `xmlsec1` runs: the token tests never skip.
pub fn require_xmlsec1() {
    match Command::new("xmlsec1").arg("--version").output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "xmlsec1 --version failed ({}): the AD FS token tests verify signatures with \
             xmlsec1; reinstall it (Debian/Ubuntu: apt-get install xmlsec1)",
            out.status
        ),
        Err(e) => panic!(
            "xmlsec1 is not installed ({e}): the AD FS token tests verify signatures with it. \
             Install it (Debian/Ubuntu: apt-get install xmlsec1) and run the tests again"
        ),
    }
}

/// `xmlsec1 --verify --id-attr:AssertionID <saml:Assertion> <key> token.xml`.
pub fn xmlsec1_verify(xml: &str, key: Xmlsec1Key<'_>) -> Xmlsec1Verdict {
    require_xmlsec1();
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token.xml");
    let cert = dir.path().join("cert.pem");
    std::fs::write(&token, xml).unwrap();
    let (option, pem) = match key {
        Xmlsec1Key::PubkeyCert(pem) => ("--pubkey-cert-pem", pem),
        Xmlsec1Key::Trusted(pem) => ("--trusted-pem", pem),
    };
    std::fs::write(&cert, pem).unwrap();
    let out = Command::new("xmlsec1")
        .arg("--verify")
        .arg("--id-attr:AssertionID")
        .arg(SAML_ASSERTION)
        .arg(option)
        .arg(&cert)
        .arg(&token)
        .output()
        .unwrap_or_else(|e| panic!("running xmlsec1: {e}"));
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let ok = out.status.success() && output.lines().any(|l| l.trim() == "OK");
    Xmlsec1Verdict {
        ok,
        code: out.status.code(),
        output,
    }
}

/// A PEM block with 64-column lines.
pub fn pem(label: &str, der: &[u8]) -> String {
    let b64 = BASE64.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}
