//! Extended Protection for Authentication: the Kerberos authenticator carries a hash of the TLS
//! server certificate the client saw (`tls-server-end-point`, RFC 5929 section 4), so a ticket
//! captured on one TLS connection is refused on another — in particular on the connection of a
//! man in the middle who presents a different certificate. Exchange 2019 CU14 and later require
//! it by default.
//!
//! The hash is that of the certificate's own signature algorithm, except that MD5 and SHA-1 (and
//! algorithms without a single hash, such as Ed25519) use SHA-256.

use ring::digest;

/// `tls-server-end-point:` followed by the certificate hash: the `application_data` of the
/// GSSAPI channel bindings, as Windows (SSPI) and MIT both build it.
#[derive(Clone, PartialEq, Eq)]
pub struct ChannelBinding(Vec<u8>);

impl ChannelBinding {
    /// The binding of the TLS connection whose server presented `certificate_der` (the first
    /// certificate of the chain, the server's own).
    pub fn tls_server_end_point(certificate_der: &[u8]) -> Result<ChannelBinding, String> {
        let algorithm = signature_algorithm(certificate_der)
            .ok_or_else(|| "the server certificate is not a DER X.509 certificate".to_owned())?;
        let hash = digest::digest(hash_for(&algorithm), certificate_der);
        let mut data = b"tls-server-end-point:".to_vec();
        data.extend_from_slice(hash.as_ref());
        Ok(ChannelBinding(data))
    }

    /// The bytes given to GSSAPI as the channel bindings' application data.
    pub fn application_data(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for ChannelBinding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ChannelBinding({} bytes)", self.0.len())
    }
}

// DER encodings (content octets) of the object identifiers that decide the hash.
const SHA384_WITH_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c];
const SHA512_WITH_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d];
const RSASSA_PSS: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a];
const ECDSA_WITH_SHA384: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03];
const ECDSA_WITH_SHA512: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04];
const SHA384: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02];
const SHA512: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03];

/// The certificate's `signatureAlgorithm`: its OID and the DER of its parameters.
#[derive(Debug, PartialEq, Eq)]
struct Algorithm<'a> {
    oid: &'a [u8],
    parameters: &'a [u8],
}

fn hash_for(algorithm: &Algorithm<'_>) -> &'static digest::Algorithm {
    match algorithm.oid {
        SHA384_WITH_RSA | ECDSA_WITH_SHA384 => &digest::SHA384,
        SHA512_WITH_RSA | ECDSA_WITH_SHA512 => &digest::SHA512,
        // RSASSA-PSS names its hash in the parameters (SHA-1 when absent).
        RSASSA_PSS => {
            if contains(algorithm.parameters, SHA512) {
                &digest::SHA512
            } else if contains(algorithm.parameters, SHA384) {
                &digest::SHA384
            } else {
                &digest::SHA256
            }
        }
        _ => &digest::SHA256,
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// `Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm AlgorithmIdentifier, … }`
fn signature_algorithm(der: &[u8]) -> Option<Algorithm<'_>> {
    let (certificate, _) = element(der, 0x30)?;
    let (_tbs, rest) = element(certificate, 0x30)?;
    let (algorithm, _) = element(rest, 0x30)?;
    let (oid, parameters) = element(algorithm, 0x06)?;
    Some(Algorithm { oid, parameters })
}

/// One DER element of the given tag at the start of `input`: its contents and what follows.
fn element(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&first, rest) = input.split_first()?;
    if first != tag {
        return None;
    }
    let (&length_byte, rest) = rest.split_first()?;
    let (length, rest) = if length_byte < 0x80 {
        (usize::from(length_byte), rest)
    } else {
        let count = usize::from(length_byte & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let length = rest[..count]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (length, &rest[count..])
    };
    if rest.len() < length {
        return None;
    }
    Some(rest.split_at(length))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certificate(algorithm: &'static rcgen::SignatureAlgorithm) -> Vec<u8> {
        let key = rcgen::KeyPair::generate_for(algorithm).unwrap();
        let params = rcgen::CertificateParams::new(vec!["mail.contoso.com".into()]).unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    fn expected(der: &[u8], hash: &'static digest::Algorithm) -> Vec<u8> {
        let mut data = b"tls-server-end-point:".to_vec();
        data.extend_from_slice(digest::digest(hash, der).as_ref());
        data
    }

    #[test]
    fn an_ecdsa_sha256_certificate_is_bound_with_sha256() {
        let der = certificate(&rcgen::PKCS_ECDSA_P256_SHA256);
        let binding = ChannelBinding::tls_server_end_point(&der).unwrap();
        assert_eq!(binding.application_data(), expected(&der, &digest::SHA256));
        assert_eq!(binding.application_data().len(), 21 + 32);
    }

    #[test]
    fn an_ecdsa_sha384_certificate_is_bound_with_sha384() {
        let der = certificate(&rcgen::PKCS_ECDSA_P384_SHA384);
        let binding = ChannelBinding::tls_server_end_point(&der).unwrap();
        assert_eq!(binding.application_data(), expected(&der, &digest::SHA384));
    }

    #[test]
    fn an_ed25519_certificate_is_bound_with_sha256() {
        let der = certificate(&rcgen::PKCS_ED25519);
        let binding = ChannelBinding::tls_server_end_point(&der).unwrap();
        assert_eq!(binding.application_data(), expected(&der, &digest::SHA256));
    }

    #[test]
    fn sha1_md5_and_pss_follow_rfc_5929() {
        let sha1_with_rsa = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x05];
        let md5_with_rsa = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x04];
        for oid in [&sha1_with_rsa[..], &md5_with_rsa[..]] {
            let algorithm = Algorithm {
                oid,
                parameters: &[0x05, 0x00],
            };
            assert_eq!(hash_for(&algorithm), &digest::SHA256);
        }
        let mut pss_sha512 = vec![0x30, 0x0f, 0xa0, 0x0d, 0x30, 0x0b, 0x06, 0x09];
        pss_sha512.extend_from_slice(SHA512);
        let pss = Algorithm {
            oid: RSASSA_PSS,
            parameters: &pss_sha512,
        };
        assert_eq!(hash_for(&pss), &digest::SHA512);
        let pss_default = Algorithm {
            oid: RSASSA_PSS,
            parameters: &[0x30, 0x00],
        };
        assert_eq!(hash_for(&pss_default), &digest::SHA256);
    }

    #[test]
    fn bytes_that_are_not_a_certificate_are_refused() {
        assert!(ChannelBinding::tls_server_end_point(b"not a certificate").is_err());
        assert!(ChannelBinding::tls_server_end_point(&[0x30, 0x82, 0xff]).is_err());
        let der = certificate(&rcgen::PKCS_ECDSA_P256_SHA256);
        assert!(ChannelBinding::tls_server_end_point(&der[..der.len() / 2]).is_err());
    }
}
