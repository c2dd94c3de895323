//! A token-signing certificate and RSA key for the unit tests, made once per test binary (RSA
//! key generation takes a moment).

use std::sync::OnceLock;

use rsa::pkcs8::{EncodePrivateKey, LineEnding};

use super::SigningCredential;

/// PEM of a self-signed certificate and its 2048-bit RSA key (PKCS#8).
pub(super) struct TestPem {
    pub(super) cert: String,
    pub(super) key: String,
    pub(super) private: rsa::RsaPrivateKey,
}

pub(super) fn test_pem() -> &'static TestPem {
    static PEM: OnceLock<TestPem> = OnceLock::new();
    PEM.get_or_init(|| {
        let private = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).unwrap();
        let key = private.to_pkcs8_pem(LineEnding::LF).unwrap().to_string();
        let key_pair = rcgen::KeyPair::from_pem(&key).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            "Token Signing - mail.contoso.test",
        );
        let cert = params.self_signed(&key_pair).unwrap().pem();
        TestPem { cert, key, private }
    })
}

pub(super) fn test_credential() -> SigningCredential {
    let pem = test_pem();
    SigningCredential::from_pem(pem.cert.as_bytes(), pem.key.as_bytes()).unwrap()
}
