//! Configuration texts for the rule tests of every section: a valid file with one piece
//! changed, so each test shows only what it is about, and the assertions they share.

use super::validate::check;
use super::{raw, Config, MapSecrets};

pub(super) const UPSTREAM: &str = r#"
[upstreams.exchange]
servers = ["http://127.0.0.1:8081"]
"#;

pub(super) const ROUTE: &str = r#"
[[routes]]
host = "localhost"
path = "/owa"
upstream = "exchange"
access = "public"
"#;

pub(super) const TENANT: &str = "3f2a9b1c-5d4e-4f60-8a7b-1c2d3e4f5a6b";
pub(super) const CLIENT: &str = "0c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f";
/// 32 bytes, base64 as `openssl rand -base64 32` writes it.
pub(super) const SESSION_KEY: &str = "q83vEjRWeJCrze8SNFZ4kKvN7xI0VniQq83vEjRWeJA=";

/// The body of a valid `[oidc]`: the v1.0 issuer of [`TENANT`] and a client secret file.
pub(super) const OIDC: &str = r#"issuer = "https://sts.windows.net/3f2a9b1c-5d4e-4f60-8a7b-1c2d3e4f5a6b/"
client_id = "0c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f"
client_secret = { file = "/etc/mfa-gateway/client-secret" }
"#;

/// The body of a valid `[session]`.
pub(super) const SESSION: &str = "keys = [{ file = \"/etc/mfa-gateway/session.key\" }]\n";

/// A valid plain-HTTP configuration with `server` as the body of `[server]` plus `rest`.
pub(super) fn with_server(server: &str, rest: &str) -> String {
    format!("[server]\n{server}\n{UPSTREAM}{ROUTE}{rest}")
}

pub(super) fn valid_with(rest: &str) -> String {
    with_server("http_listen = \"127.0.0.1:8080\"", rest)
}

pub(super) fn upstream_with(body: &str) -> String {
    format!("[server]\nhttp_listen = \"127.0.0.1:8080\"\n[upstreams.exchange]\n{body}\n{ROUTE}")
}

pub(super) fn route_with(host: &str, path: &str, upstream: &str, access: &str) -> String {
    format!(
        "[server]\nhttp_listen = \"127.0.0.1:8080\"\n{UPSTREAM}\n[[routes]]\nhost = {host:?}\npath = {path:?}\nupstream = {upstream:?}\naccess = {access:?}\n"
    )
}

/// A configuration with one `access = "mfa"` route (line 7; `route` is added to its table
/// from line 12), `[oidc]` with `oidc` as its body, then `rest`.
pub(super) fn signed_in(route: &str, oidc: &str, rest: &str) -> String {
    format!(
        "[server]\nhttp_listen = \"127.0.0.1:8080\"\n{UPSTREAM}\n[[routes]]\nhost = \"localhost\"\npath = \"/owa\"\nupstream = \"exchange\"\naccess = \"mfa\"\n{route}\n[oidc]\n{oidc}\n{rest}"
    )
}

/// A complete sign-in configuration whose `[oidc]` body is `oidc`.
pub(super) fn with_oidc(oidc: &str) -> String {
    signed_in("", oidc, &format!("[session]\n{SESSION}"))
}

/// `[oidc]` with the given issuer (and client id), a client secret and `extra` keys.
pub(super) fn oidc_issuer(issuer: &str, extra: &str) -> String {
    with_oidc(&format!(
        "issuer = {issuer:?}\nclient_id = \"{CLIENT}\"\nclient_secret = {{ file = \"/etc/mfa-gateway/client-secret\" }}\n{extra}"
    ))
}

/// A complete sign-in configuration with `mfa` as the body of `[mfa]`.
pub(super) fn with_mfa(mfa: &str) -> String {
    signed_in("", OIDC, &format!("[session]\n{SESSION}\n[mfa]\n{mfa}\n"))
}

/// A complete sign-in configuration whose `[session]` body is `session`.
pub(super) fn with_session(session: &str) -> String {
    signed_in("", OIDC, &format!("[session]\n{session}\n"))
}

/// A complete sign-in configuration with `keys` on the mfa route.
pub(super) fn with_route_policy(keys: &str) -> String {
    signed_in(keys, OIDC, &format!("[session]\n{SESSION}"))
}

/// The files the sign-in tests name, as an administrator would have made them.
pub(super) fn secrets() -> MapSecrets {
    MapSecrets::new()
        .with_file(
            "/etc/mfa-gateway/client-secret",
            "client-secret-from-file\n",
        )
        .with_file("/etc/mfa-gateway/session.key", format!("{SESSION_KEY}\n"))
}

pub(super) fn load(text: &str) -> Result<Config, Vec<String>> {
    Config::from_toml(text, &secrets()).map_err(|e| e.iter().map(ToString::to_string).collect())
}

/// The warnings for `text`, with the secrets of [`secrets`].
pub(super) fn warnings(text: &str) -> Vec<String> {
    let raw = raw::parse(text).unwrap_or_else(|e| panic!("{e}"));
    check(raw, text, &secrets())
        .1
        .iter()
        .map(ToString::to_string)
        .collect()
}

pub(super) fn errors(text: &str) -> Vec<String> {
    match load(text) {
        Ok(_) => panic!("configuration was accepted:\n{text}"),
        Err(errors) => errors,
    }
}

/// Asserts that exactly one error is reported and that it contains every fragment.
pub(super) fn refused(text: &str, fragments: &[&str]) {
    let errors = errors(text);
    assert_eq!(errors.len(), 1, "expected one error, got {errors:#?}");
    for fragment in fragments {
        assert!(
            errors[0].contains(fragment),
            "{:?} lacks {fragment:?}",
            errors[0]
        );
    }
}
