//! MIT Kerberos takes its configuration, the gateway's keytab and its credential cache from
//! the process environment — `KRB5_CONFIG`, `KRB5_CLIENT_KTNAME`, `KRB5CCNAME` — which is the
//! only way to give them without calling the C library directly. The environment is shared by
//! every thread and may only be changed while there is one: [`prepare`] runs at the top of
//! `main`, before the runtime, the log writer or anything else starts a thread. Changes to
//! `[sso.kerberos]`'s `realm`, `kdc` and `keytab` therefore take effect at a restart, not on a
//! reload (SIGHUP).

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::config::KerberosConfig;

/// What [`prepare`] set, for the start-up log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KerberosEnvironment {
    /// The krb5.conf in effect: written by the gateway, or the administrator's `KRB5_CONFIG`.
    pub krb5_config: PathBuf,
    /// True when the gateway wrote `krb5_config` from `realm` and `kdc`.
    pub generated: bool,
}

/// The krb5.conf the gateway writes: only the realm, its KDCs (or DNS), and the settings
/// constrained delegation against Active Directory needs. The machine's /etc/krb5.conf is never
/// read.
pub fn krb5_conf(config: &KerberosConfig) -> String {
    let realm = &config.realm;
    let mut text = String::new();
    text.push_str("[libdefaults]\n");
    text.push_str(&format!("  default_realm = {realm}\n"));
    // No kdc listed: the KDCs are the realm's _kerberos._tcp SRV records, as for domain members.
    let dns = config.kdc.is_empty();
    text.push_str(&format!("  dns_lookup_kdc = {dns}\n"));
    text.push_str("  dns_lookup_realm = false\n");
    // The SPN is used as configured: never rewritten by reverse DNS or canonicalisation.
    text.push_str("  rdns = false\n");
    text.push_str("  dns_canonicalize_hostname = false\n");
    // S4U2Proxy needs a forwardable S4U2Self ticket, which needs a forwardable TGT.
    text.push_str("  forwardable = true\n");
    // Tickets with Active Directory's PAC outgrow UDP datagrams: TCP from the start.
    text.push_str("  udp_preference_limit = 1\n");
    text.push_str("[realms]\n");
    text.push_str(&format!("  {realm} = {{\n"));
    for kdc in &config.kdc {
        text.push_str(&format!("    kdc = {kdc}\n"));
    }
    text.push_str("  }\n");
    text
}

/// Sets the Kerberos environment for `config`. Must be called before any thread is started.
///
/// - `KRB5_CONFIG`: a krb5.conf written from `realm` and `kdc` into `runtime_dir`
///   (`$RUNTIME_DIRECTORY` under systemd, else the temporary directory) — unless `kdc` is left
///   out and `KRB5_CONFIG` is already set, in which case that file is used as it is.
/// - `KRB5_CLIENT_KTNAME`: the keytab; MIT gets the gateway's ticket-granting ticket from it and
///   renews it by itself.
/// - `KRB5CCNAME`: a memory cache, so no ticket is ever written to disk.
pub fn prepare(config: &KerberosConfig) -> std::io::Result<KerberosEnvironment> {
    let existing = std::env::var_os("KRB5_CONFIG").map(PathBuf::from);
    let environment = match existing {
        Some(path) if config.kdc.is_empty() => KerberosEnvironment {
            krb5_config: path,
            generated: false,
        },
        _ => {
            let directory = std::env::var_os("RUNTIME_DIRECTORY")
                .map(PathBuf::from)
                .unwrap_or_else(std::env::temp_dir);
            let path = write_private(&directory, &krb5_conf(config))?;
            KerberosEnvironment {
                krb5_config: path,
                generated: true,
            }
        }
    };
    set("KRB5_CONFIG", environment.krb5_config.as_os_str());
    set("KRB5_CLIENT_KTNAME", config.keytab.as_os_str());
    set("KRB5CCNAME", std::ffi::OsStr::new("MEMORY:mfa-gateway"));
    Ok(environment)
}

#[allow(clippy::disallowed_methods)]
fn set(name: &str, value: &std::ffi::OsStr) {
    // Sound only while the process has one thread: see the module documentation.
    std::env::set_var(name, value);
}

/// Writes `text` to a new file only the gateway's user can write, named after the process.
fn write_private(directory: &Path, text: &str) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = directory.join(format!("mfa-gateway-{}-krb5.conf", std::process::id()));
    // A file left by an earlier process with the same id is replaced, never followed.
    let _ = std::fs::remove_file(&path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&path)?;
    file.write_all(text.as_bytes())?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::KerberosUser;

    fn config(kdc: &[&str]) -> KerberosConfig {
        KerberosConfig {
            realm: "CORP.CONTOSO.COM".into(),
            kdc: kdc.iter().map(|k| k.to_string()).collect(),
            principal: "svc-mfagw@CORP.CONTOSO.COM".into(),
            keytab: "/etc/mfa-gateway/svc-mfagw.keytab".into(),
            user: KerberosUser::Upn,
            ticket_lifetime: Duration::from_secs(3600),
        }
    }

    #[test]
    fn the_written_krb5_conf_lists_the_kdcs_and_needs_no_dns() {
        let text = krb5_conf(&config(&["dc01.corp.contoso.com:88", "10.0.0.2:88"]));
        assert!(
            text.contains("default_realm = CORP.CONTOSO.COM\n"),
            "{text}"
        );
        assert!(text.contains("dns_lookup_kdc = false\n"), "{text}");
        assert!(text.contains("forwardable = true\n"), "{text}");
        assert!(
            text.contains("  CORP.CONTOSO.COM = {\n    kdc = dc01.corp.contoso.com:88\n    kdc = 10.0.0.2:88\n  }\n"),
            "{text}"
        );
    }

    #[test]
    fn without_kdcs_the_realm_is_found_through_dns() {
        let text = krb5_conf(&config(&[]));
        assert!(text.contains("dns_lookup_kdc = true\n"), "{text}");
        assert!(!text.contains("    kdc = "), "{text}");
    }
}
