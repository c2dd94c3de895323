//! The token-signing credential: an RSA key and the X.509 certificate Exchange is told to
//! trust, by thumbprint. Exchange (through WIF) takes the verification key from the
//! certificate embedded in each token and accepts it only if its SHA-1 thumbprint is listed,
//! so the key and the certificate must belong together; that is checked once, on loading.

use std::fmt;

use ring::rand::SystemRandom;
use ring::signature::{RsaKeyPair, RSA_PKCS1_SHA256};
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs8::DecodePrivateKey;
use rsa::traits::PublicKeyParts;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The smallest RSA key accepted: what ring signs with and what Exchange's guidance asks for.
const MIN_BITS: usize = 2048;
/// The largest RSA key ring signs with and webpki verifies.
const MAX_BITS: usize = 8192;

/// The token-signing key (RSA) and its certificate. Its `Debug` shows the thumbprint and the
/// key size, never the key.
pub struct SigningCredential {
    key: RsaKeyPair,
    certificate: Vec<u8>,
    thumbprint: Thumbprint,
    bits: usize,
    not_after: Option<u64>,
}

/// Why a signing certificate and key cannot be used. The messages are for the administrator
/// who configured the files.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("the certificate file holds no PEM \"CERTIFICATE\" block")]
    NoCertificate,
    #[error(
        "the key file holds no PEM private key (\"PRIVATE KEY\" or \"RSA PRIVATE KEY\" block)"
    )]
    NoKey,
    #[error(
        "the private key is not an RSA key: Exchange verifies AD FS tokens signed with \
         RSA-SHA256, so the token-signing key must be RSA of 2048 bits or more"
    )]
    NotRsa,
    #[error("the RSA key has {bits} bits; a token-signing key needs at least 2048")]
    KeyTooSmall { bits: usize },
    #[error("the RSA key has {bits} bits; at most 8192 are supported")]
    KeyTooLarge { bits: usize },
    #[error(
        "the private key does not belong to the certificate: the certificate's public key does \
         not verify a signature made with this key (wrong key file, or a certificate that is \
         not RSA)"
    )]
    KeyDoesNotMatchCertificate,
    #[error("the {what} cannot be parsed: {reason}")]
    Unparsable { what: &'static str, reason: String },
}

impl SigningCredential {
    /// Loads the certificate (the first `CERTIFICATE` block of `cert_pem`) and its RSA key
    /// (PKCS#8 `PRIVATE KEY` or PKCS#1 `RSA PRIVATE KEY`), and proves they belong together by
    /// verifying, with the certificate, a signature made with the key.
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<SigningCredential, CredentialError> {
        let certificate = match CertificateDer::pem_slice_iter(cert_pem).next() {
            None => return Err(CredentialError::NoCertificate),
            Some(Err(e)) => return Err(pem_error("certificate PEM", e)),
            Some(Ok(der)) => der,
        };
        let private = match PrivateKeyDer::from_pem_slice(key_pem) {
            Ok(key) => key,
            Err(pem::Error::NoItemsFound) => return Err(CredentialError::NoKey),
            Err(e) => return Err(pem_error("key PEM", e)),
        };
        let (key, bits) = rsa_key_pair(&private)?;
        let end_entity = webpki::EndEntityCert::try_from(&certificate).map_err(|e| {
            CredentialError::Unparsable {
                what: "certificate",
                reason: e.to_string(),
            }
        })?;
        let probe = b"mfa-gateway token-signing key matches its certificate";
        let signature = sign_with(&key, probe).map_err(|_| CredentialError::Unparsable {
            what: "RSA private key",
            reason: "it cannot sign".to_owned(),
        })?;
        end_entity
            .verify_signature(webpki::ring::RSA_PKCS1_2048_8192_SHA256, probe, &signature)
            .map_err(|_| CredentialError::KeyDoesNotMatchCertificate)?;
        let certificate = certificate.as_ref().to_vec();
        Ok(SigningCredential {
            thumbprint: thumbprint_of(&certificate),
            not_after: not_after(&certificate),
            key,
            certificate,
            bits,
        })
    }

    /// SHA-1 of the certificate, as Exchange's `AdfsSignCertificateThumbprint` lists it.
    pub fn thumbprint(&self) -> Thumbprint {
        self.thumbprint
    }

    /// The certificate (DER), as embedded in every token.
    pub fn certificate_der(&self) -> &[u8] {
        &self.certificate
    }

    /// The end of the certificate's validity (unix seconds); `None` if it cannot be read.
    pub fn not_after(&self) -> Option<u64> {
        self.not_after
    }

    /// RSASSA-PKCS1-v1_5 with SHA-256 of `message`: the `rsa-sha256` of XML signatures.
    pub(super) fn sign(&self, message: &[u8]) -> Result<Vec<u8>, ring::error::Unspecified> {
        sign_with(&self.key, message)
    }
}

impl fmt::Debug for SigningCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningCredential")
            .field("thumbprint", &self.thumbprint)
            .field("bits", &self.bits)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// The SHA-1 of a certificate's DER: how Exchange and Windows name a certificate.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Thumbprint([u8; 20]);

impl Thumbprint {
    pub fn as_bytes(&self) -> &[u8; 20] {
        &self.0
    }
}

/// 40 uppercase hexadecimal digits, as `Get-ExchangeCertificate` shows them.
impl fmt::Display for Thumbprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02X}"))
    }
}

impl fmt::Debug for Thumbprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Thumbprint({self})")
    }
}

/// The thumbprint of a certificate given as DER.
pub fn thumbprint_of(cert_der: &[u8]) -> Thumbprint {
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, cert_der);
    let mut bytes = [0u8; 20];
    bytes.copy_from_slice(digest.as_ref());
    Thumbprint(bytes)
}

fn pem_error(what: &'static str, error: pem::Error) -> CredentialError {
    CredentialError::Unparsable {
        what,
        reason: error.to_string(),
    }
}

/// The ring key pair for signing, after the checks whose failure an administrator should read
/// precisely (not RSA, too small): ring itself only says "rejected".
fn rsa_key_pair(private: &PrivateKeyDer<'_>) -> Result<(RsaKeyPair, usize), CredentialError> {
    let unparsable = |reason: String| CredentialError::Unparsable {
        what: "RSA private key",
        reason,
    };
    let inspected = match private {
        PrivateKeyDer::Pkcs1(der) => rsa::RsaPrivateKey::from_pkcs1_der(der.secret_pkcs1_der())
            .map_err(|e| unparsable(e.to_string()))?,
        PrivateKeyDer::Pkcs8(der) => {
            let info = rsa::pkcs8::PrivateKeyInfo::try_from(der.secret_pkcs8_der())
                .map_err(|e| unparsable(e.to_string()))?;
            if info.algorithm.oid != rsa::pkcs1::ALGORITHM_OID {
                return Err(CredentialError::NotRsa);
            }
            rsa::RsaPrivateKey::from_pkcs8_der(der.secret_pkcs8_der())
                .map_err(|e| unparsable(e.to_string()))?
        }
        // "EC PRIVATE KEY" (SEC1), whatever the curve: not RSA.
        _ => return Err(CredentialError::NotRsa),
    };
    let bits = inspected.n().bits();
    drop(inspected);
    if bits < MIN_BITS {
        return Err(CredentialError::KeyTooSmall { bits });
    }
    if bits > MAX_BITS {
        return Err(CredentialError::KeyTooLarge { bits });
    }
    let key = match private {
        PrivateKeyDer::Pkcs1(der) => RsaKeyPair::from_der(der.secret_pkcs1_der()),
        PrivateKeyDer::Pkcs8(der) => RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()),
        _ => return Err(CredentialError::NotRsa),
    }
    .map_err(|e| unparsable(e.to_string()))?;
    Ok((key, bits))
}

fn sign_with(key: &RsaKeyPair, message: &[u8]) -> Result<Vec<u8>, ring::error::Unspecified> {
    let mut signature = vec![0u8; key.public().modulus_len()];
    key.sign(
        &RSA_PKCS1_SHA256,
        &SystemRandom::new(),
        message,
        &mut signature,
    )?;
    Ok(signature)
}

/// `tbsCertificate.validity.notAfter` in unix seconds, read with a few lines of DER rather
/// than an X.509 library: the gateway only wants it to warn before the certificate expires.
fn not_after(cert_der: &[u8]) -> Option<u64> {
    let (_, certificate, _) = der_element(cert_der)?;
    let (_, mut tbs, _) = der_element(certificate)?;
    // version [0] EXPLICIT, optional
    if tbs.first() == Some(&0xA0) {
        tbs = der_element(tbs)?.2;
    }
    // serialNumber, signature, issuer
    for _ in 0..3 {
        tbs = der_element(tbs)?.2;
    }
    let (_, validity, _) = der_element(tbs)?;
    let (_, _, rest) = der_element(validity)?;
    let (tag, time, _) = der_element(rest)?;
    let time = std::str::from_utf8(time).ok()?;
    let full = match (tag, time.len()) {
        // UTCTime YYMMDDHHMMSSZ: years 50–99 are 19xx (RFC 5280 §4.1.2.5.1).
        (0x17, 13) => {
            let yy: u32 = time.get(0..2)?.parse().ok()?;
            let century = if yy >= 50 { "19" } else { "20" };
            format!("{century}{time}")
        }
        // GeneralizedTime YYYYMMDDHHMMSSZ
        (0x18, 15) => time.to_owned(),
        _ => return None,
    };
    let naive = chrono::NaiveDateTime::parse_from_str(&full, "%Y%m%d%H%M%SZ").ok()?;
    u64::try_from(naive.and_utc().timestamp()).ok()
}

/// One DER element: (tag, contents, the bytes after it). Single-byte tags, definite lengths.
fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let length = if first < 0x80 {
        usize::from(first)
    } else {
        let count = usize::from(first & 0x7F);
        if count == 0 || count > 4 {
            return None;
        }
        let (bytes, after) = rest.split_at_checked(count)?;
        rest = after;
        bytes.iter().fold(0usize, |n, &b| (n << 8) | usize::from(b))
    };
    let (contents, after) = rest.split_at_checked(length)?;
    Some((tag, contents, after))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thumbprint_is_sha1_shown_as_forty_uppercase_hex_digits() {
        // FIPS 180 test vector: SHA-1("abc").
        let thumbprint = thumbprint_of(b"abc");
        assert_eq!(
            thumbprint.to_string(),
            "A9993E364706816ABA3E25717850C26C9CD0D89D"
        );
        assert_eq!(
            format!("{thumbprint:?}"),
            "Thumbprint(A9993E364706816ABA3E25717850C26C9CD0D89D)"
        );
    }

    #[test]
    fn pkcs8_and_pkcs1_keys_load_and_debug_shows_no_key() {
        use rsa::pkcs1::{EncodeRsaPrivateKey, LineEnding};

        let pem = super::super::test_credential::test_pem();
        let pkcs8 = SigningCredential::from_pem(pem.cert.as_bytes(), pem.key.as_bytes()).unwrap();
        let pkcs1_pem = pem.private.to_pkcs1_pem(LineEnding::LF).unwrap();
        assert!(pkcs1_pem.starts_with("-----BEGIN RSA PRIVATE KEY-----"));
        let pkcs1 = SigningCredential::from_pem(pem.cert.as_bytes(), pkcs1_pem.as_bytes()).unwrap();
        assert_eq!(pkcs8.thumbprint(), pkcs1.thumbprint());
        assert_eq!(pkcs8.thumbprint(), thumbprint_of(pkcs8.certificate_der()));
        let shown = format!("{pkcs8:?}");
        assert_eq!(
            shown,
            format!(
                "SigningCredential {{ thumbprint: Thumbprint({}), bits: 2048, not_after: {:?}, .. }}",
                pkcs8.thumbprint(),
                pkcs8.not_after()
            )
        );
    }

    #[test]
    fn not_after_is_read_from_the_certificate() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        // Up to 2049 a UTCTime, from 2050 a GeneralizedTime (RFC 5280).
        for (year, expected) in [
            (2030, 1_924_991_999),
            (2049, 2_524_607_999),
            (2050, 2_556_143_999),
        ] {
            params.not_after =
                rcgen::date_time_ymd(year, 12, 31) + std::time::Duration::from_secs(86_399);
            let cert = params.self_signed(&key).unwrap();
            assert_eq!(not_after(cert.der()), Some(expected), "{year}");
        }
    }

    #[test]
    fn an_ec_key_is_refused_as_not_rsa() {
        let pem = super::super::test_credential::test_pem();
        let ec = rcgen::KeyPair::generate().unwrap().serialize_pem();
        assert!(matches!(
            SigningCredential::from_pem(pem.cert.as_bytes(), ec.as_bytes()),
            Err(CredentialError::NotRsa)
        ));
    }

    #[test]
    fn missing_pem_blocks_are_named() {
        assert!(matches!(
            SigningCredential::from_pem(b"not a certificate", b""),
            Err(CredentialError::NoCertificate)
        ));
    }

    #[test]
    fn der_lengths_that_overrun_the_input_are_refused() {
        assert_eq!(der_element(&[0x30, 0x05, 0x01]), None);
        assert_eq!(der_element(&[0x30, 0x82, 0x01]), None);
        assert_eq!(der_element(&[0x30, 0x85, 0, 0, 0, 0, 1]), None);
        assert_eq!(
            der_element(&[0x02, 0x01, 0x07, 0xFF]),
            Some((0x02, &[0x07][..], &[0xFF][..]))
        );
        assert_eq!(not_after(&[0x30, 0x00]), None);
        assert_eq!(not_after(b""), None);
    }
}
