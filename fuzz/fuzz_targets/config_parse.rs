//! The configuration file, as an administrator (or a broken deployment script) may write it.
//!
//! `Config::from_toml` must never panic: every mistake is an error naming the key. Secrets come
//! from an in-memory source, so nothing touches the filesystem or the process environment.
//! What is accepted must be usable as is: the routes build a router without a duplicate, each
//! route names a defined upstream and a path in normal form, and the session keys make a
//! ring. No error message and no `Debug` output contains a secret's value.

#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use mfa_gateway::config::{ClientAuth, Config, MapSecrets};
use mfa_gateway::routing::{normalize_path, Router};
use mfa_gateway::session::{SessionKey, SessionSeal};

const CLIENT_SECRET: &str = "fz-client-secret~Q7vW2xK9pL4mN8rT";
/// base64 of 32 bytes 0x5a.
const SESSION_KEY: &str = "WlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlo=";
/// base64 of 48 bytes 0xa5.
const OLD_SESSION_KEY: &str = "paWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWl";

static SECRETS: LazyLock<MapSecrets> = LazyLock::new(|| {
    MapSecrets::new()
        .with_file(
            "/etc/mfa-gateway/client-secret",
            format!("{CLIENT_SECRET}\n"),
        )
        .with_file("/etc/mfa-gateway/session.key", format!("{SESSION_KEY}\n"))
        .with_file("/etc/mfa-gateway/old.key", OLD_SESSION_KEY)
        .with_file("/etc/mfa-gateway/empty", "\n")
        .with_file("/etc/mfa-gateway/short.key", "c2hvcnQ=")
        .with_env("MFA_GATEWAY_CLIENT_SECRET", CLIENT_SECRET)
        .with_env("SESSION_KEY", SESSION_KEY)
});

/// A secret's value in `output` that the configuration text itself does not contain came
/// from the secret source. (libFuzzer learns the values from this very comparison and writes
/// them into the text, e.g. as an environment variable's name; echoing the file is fine.)
fn assert_no_secret(config_text: &str, output: &str) {
    for secret in [CLIENT_SECRET, SESSION_KEY, OLD_SESSION_KEY] {
        assert!(
            config_text.contains(secret) || !output.contains(secret),
            "a secret value in: {output}"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let config = match Config::from_toml(&text, &*SECRETS) {
        Ok(config) => config,
        Err(errors) => {
            assert!(!errors.is_empty(), "refused without a reason");
            assert_no_secret(&text, &errors.to_string());
            return;
        }
    };
    assert_no_secret(&text, &format!("{config:?}"));
    if let Some(ClientAuth::Secret { secret, .. }) = config.oidc.as_ref().map(|o| &o.client_auth) {
        assert!(!secret.is_empty() && secret.trim() == secret);
    }

    let mut router = Router::new();
    for (i, route) in config.routes.iter().enumerate() {
        assert!(
            config.upstreams.get(route.upstream.index()).is_some(),
            "routes[{i}] names an undefined upstream: {route:?}"
        );
        let path = route.path.as_str();
        assert!(path.starts_with('/'), "routes[{i}].path {path:?}");
        assert_eq!(
            normalize_path(path).as_deref(),
            Ok(path),
            "routes[{i}].path can never match a normalised request"
        );
        if let Err(duplicate) = router.insert(&route.host, path, i) {
            panic!("accepted configuration publishes a route twice: {duplicate}");
        }
    }

    if let Some(session) = &config.session {
        assert!(!session.keys.is_empty());
        let keys: Vec<SessionKey> = session
            .keys
            .iter()
            .map(|key| SessionKey::from_bytes(key).expect("accepted session key"))
            .collect();
        if let Err(e) = SessionSeal::new(&session.cookie_name, keys) {
            panic!("accepted [session] does not make a key ring: {e}");
        }
    }
});
