//! Secrets in the configuration file: `{ file = "…" }`, `{ env = "NAME" }` or, for tests only,
//! `{ value = "…" }`. They are read through the [`Secrets`] trait so tests feed a map instead of
//! touching the filesystem or the process environment.
//!
//! A secret's value never appears in an error message or in `Debug` output: configuration
//! errors end up in logs and terminals that other people read.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};

/// Where the gateway reads a secret from.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// `{ file = "/etc/mfa-gateway/client-secret" }`
    File(PathBuf),
    /// `{ env = "MFA_GATEWAY_CLIENT_SECRET" }`
    Env(String),
    /// `{ value = "…" }`: the secret written into the configuration file itself. Accepted, but
    /// validation warns, because configuration files are copied, backed up and shown around.
    Value(String),
}

/// Why a secret could not be read. Says where it was looked for, never what it contains.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read secret file {}: {error}", .path.display())]
    FileUnreadable {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("environment variable {name} is not set")]
    EnvUnset { name: String },
    /// Nothing is left once surrounding whitespace is removed.
    #[error("{source_name} is empty")]
    Empty {
        /// [`SecretSource::describe`]: `secret file /path`, `environment variable NAME`, …
        source_name: String,
    },
}

/// Reads secret material. [`SystemSecrets`] is the real filesystem and process environment.
pub trait Secrets {
    fn file(&self, path: &Path) -> std::io::Result<String>;
    fn env(&self, name: &str) -> Option<String>;
    /// A file that is not text, such as a Kerberos keytab.
    fn binary_file(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        self.file(path).map(String::into_bytes)
    }
}

/// Secrets from the real filesystem and the process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemSecrets;

impl Secrets for SystemSecrets {
    fn file(&self, path: &Path) -> std::io::Result<String> {
        std::fs::read_to_string(path)
    }

    fn env(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }

    fn binary_file(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        std::fs::read(path)
    }
}

/// Secrets held in memory, for tests and for embedding the gateway: nothing is read from the
/// filesystem or the environment.
#[derive(Default, Clone)]
pub struct MapSecrets {
    files: HashMap<PathBuf, String>,
    binary_files: HashMap<PathBuf, Vec<u8>>,
    env: HashMap<String, String>,
}

impl MapSecrets {
    pub fn new() -> MapSecrets {
        MapSecrets::default()
    }

    pub fn with_file(mut self, path: impl Into<PathBuf>, contents: impl Into<String>) -> Self {
        self.files.insert(path.into(), contents.into());
        self
    }

    pub fn with_binary_file(mut self, path: impl Into<PathBuf>, contents: Vec<u8>) -> Self {
        self.binary_files.insert(path.into(), contents);
        self
    }

    pub fn with_env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(name.into(), value.into());
        self
    }
}

impl fmt::Debug for MapSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Names only: the values are secrets.
        f.debug_struct("MapSecrets")
            .field("files", &self.files.keys().collect::<Vec<_>>())
            .field(
                "binary_files",
                &self.binary_files.keys().collect::<Vec<_>>(),
            )
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Secrets for MapSecrets {
    fn file(&self, path: &Path) -> std::io::Result<String> {
        self.files.get(path).cloned().ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory")
        })
    }

    fn env(&self, name: &str) -> Option<String> {
        self.env.get(name).cloned()
    }

    fn binary_file(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        match self.binary_files.get(path) {
            Some(bytes) => Ok(bytes.clone()),
            None => self.file(path).map(String::into_bytes),
        }
    }
}

impl SecretSource {
    /// True for `{ value = "…" }`, the form that validation warns about.
    pub fn is_inline(&self) -> bool {
        matches!(self, SecretSource::Value(_))
    }

    /// Where the secret comes from, for messages about its contents: `secret file /path`,
    /// `environment variable NAME` or `inline secret value`. Never the secret itself.
    pub fn describe(&self) -> String {
        match self {
            SecretSource::File(path) => format!("secret file {}", path.display()),
            SecretSource::Env(name) => format!("environment variable {name}"),
            SecretSource::Value(_) => "inline secret value".to_owned(),
        }
    }

    /// Reads the secret. Surrounding whitespace is removed (the trailing newline of
    /// `openssl rand -base64 32 > file`); an empty secret is refused. The error says where the
    /// secret was looked for, never what it contains.
    pub fn resolve(&self, secrets: &dyn Secrets) -> Result<String, SecretError> {
        let raw = match self {
            SecretSource::File(path) => match secrets.file(path) {
                Ok(text) => text,
                Err(error) => {
                    return Err(SecretError::FileUnreadable {
                        path: path.clone(),
                        error,
                    })
                }
            },
            SecretSource::Env(name) => match secrets.env(name) {
                Some(text) => text,
                None => return Err(SecretError::EnvUnset { name: name.clone() }),
            },
            SecretSource::Value(text) => text.clone(),
        };
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(SecretError::Empty {
                source_name: self.describe(),
            });
        }
        Ok(trimmed.to_owned())
    }
}

impl fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::File(path) => f.debug_tuple("File").field(path).finish(),
            SecretSource::Env(name) => f.debug_tuple("Env").field(name).finish(),
            SecretSource::Value(_) => f.write_str("Value(<redacted>)"),
        }
    }
}

const SECRET_FORMS: &str =
    "a secret is written { file = \"/path\" }, { env = \"NAME\" } or { value = \"…\" }";

impl<'de> Deserialize<'de> for SecretSource {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(SecretSourceVisitor)
    }
}

struct SecretSourceVisitor;

impl<'de> Visitor<'de> for SecretSourceVisitor {
    type Value = SecretSource;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(SECRET_FORMS)
    }

    // A bare string is most likely the secret itself: refuse it without repeating it.
    fn visit_str<E: de::Error>(self, _v: &str) -> Result<SecretSource, E> {
        Err(E::custom(format!(
            "{SECRET_FORMS}, not a plain string; to keep the secret in this file anyway, write {{ value = \"…\" }}"
        )))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<SecretSource, A::Error> {
        let mut found: Option<SecretSource> = None;
        let mut count = 0usize;
        while let Some(key) = map.next_key::<String>()? {
            count += 1;
            let source = match key.as_str() {
                "file" => SecretSource::File(PathBuf::from(map.next_value::<String>()?)),
                "env" => SecretSource::Env(map.next_value::<String>()?),
                "value" => SecretSource::Value(map.next_value::<String>()?),
                other => {
                    // Skip the value without looking at it: it may be the secret.
                    map.next_value::<IgnoredAny>()?;
                    return Err(de::Error::custom(format!(
                        "unknown key `{other}`; {SECRET_FORMS}"
                    )));
                }
            };
            found = Some(source);
        }
        match (found, count) {
            (Some(source), 1) => Ok(source),
            (_, 0) => Err(de::Error::custom(format!("empty table; {SECRET_FORMS}"))),
            _ => Err(de::Error::custom(format!(
                "give exactly one of file, env or value; {SECRET_FORMS}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    struct Holder {
        secret: SecretSource,
    }

    fn parse(text: &str) -> Result<SecretSource, String> {
        toml::from_str::<Holder>(text)
            .map(|h| h.secret)
            .map_err(|e| e.message().to_owned())
    }

    #[test]
    fn secret_from_a_file_is_read_and_its_trailing_newline_trimmed() {
        let source = parse(r#"secret = { file = "/etc/mfa-gateway/session.key" }"#).unwrap();
        let secrets = MapSecrets::new().with_file("/etc/mfa-gateway/session.key", "c2VjcmV0\n");
        assert_eq!(source.resolve(&secrets).unwrap(), "c2VjcmV0");
        assert!(!source.is_inline());
    }

    #[test]
    fn secret_from_an_environment_variable_is_read() {
        let source = parse(r#"secret = { env = "MFA_GATEWAY_CLIENT_SECRET" }"#).unwrap();
        let secrets = MapSecrets::new().with_env("MFA_GATEWAY_CLIENT_SECRET", "abc123");
        assert_eq!(source.resolve(&secrets).unwrap(), "abc123");
        assert!(!source.is_inline());
    }

    #[test]
    fn inline_secret_is_accepted_and_recognised_as_inline() {
        let source = parse(r#"secret = { value = "hunter2" }"#).unwrap();
        assert_eq!(source.resolve(&MapSecrets::new()).unwrap(), "hunter2");
        assert!(source.is_inline());
    }

    #[test]
    fn surrounding_whitespace_of_a_secret_is_trimmed() {
        let secrets = MapSecrets::new()
            .with_file("/k", "  \t key-material \r\n\n")
            .with_env("K", "\n value \n");
        assert_eq!(
            SecretSource::File("/k".into()).resolve(&secrets).unwrap(),
            "key-material"
        );
        assert_eq!(
            SecretSource::Env("K".into()).resolve(&secrets).unwrap(),
            "value"
        );
        assert_eq!(
            SecretSource::Value(" inline ".into())
                .resolve(&secrets)
                .unwrap(),
            "inline"
        );
    }

    #[test]
    fn missing_secret_file_is_reported_with_its_path() {
        let err = SecretSource::File("/etc/mfa-gateway/absent".into())
            .resolve(&MapSecrets::new())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cannot read secret file /etc/mfa-gateway/absent"),
            "{err}"
        );
    }

    #[test]
    fn unset_environment_variable_is_reported_by_name() {
        let err = SecretSource::Env("MFA_GATEWAY_NOPE".into())
            .resolve(&MapSecrets::new())
            .unwrap_err()
            .to_string();
        assert_eq!(err, "environment variable MFA_GATEWAY_NOPE is not set");
    }

    #[test]
    fn empty_secret_is_refused_in_every_form() {
        let secrets = MapSecrets::new()
            .with_file("/empty", "\n")
            .with_env("EMPTY", "   ");
        let refusal = |source: SecretSource| source.resolve(&secrets).map_err(|e| e.to_string());
        assert_eq!(
            refusal(SecretSource::File("/empty".into())),
            Err("secret file /empty is empty".to_owned())
        );
        assert_eq!(
            refusal(SecretSource::Env("EMPTY".into())),
            Err("environment variable EMPTY is empty".to_owned())
        );
        assert_eq!(
            refusal(SecretSource::Value(String::new())),
            Err("inline secret value is empty".to_owned())
        );
    }

    #[test]
    fn secret_with_two_sources_is_refused() {
        let err = parse(r#"secret = { file = "/k", env = "K" }"#).unwrap_err();
        assert!(err.contains("exactly one of file, env or value"), "{err}");
    }

    #[test]
    fn secret_with_no_source_is_refused() {
        let err = parse(r#"secret = {}"#).unwrap_err();
        assert!(err.contains("empty table"), "{err}");
    }

    #[test]
    fn secret_with_an_unknown_key_is_refused_without_echoing_its_value() {
        let err = parse(r#"secret = { vlaue = "hunter2" }"#).unwrap_err();
        assert!(err.contains("unknown key `vlaue`"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn secret_written_as_a_plain_string_is_refused_without_echoing_it() {
        let err = parse(r#"secret = "hunter2""#).unwrap_err();
        assert!(err.contains("not a plain string"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn debug_output_never_shows_an_inline_secret() {
        let shown = format!("{:?}", SecretSource::Value("hunter2".into()));
        assert_eq!(shown, "Value(<redacted>)");
        let shown = format!("{:?}", MapSecrets::new().with_env("K", "hunter2"));
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}
