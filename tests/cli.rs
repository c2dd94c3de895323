//! The `mfa-gateway` command as an administrator uses it before a restart:
//! `check-config` says valid or lists every problem with its key path, and `--version`.
#![allow(clippy::unwrap_used)] // a failed unwrap in a test is a failed test

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::TestPki;

fn mfa_gateway(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mfa-gateway"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .unwrap()
}

fn check_config(path: &Path) -> (Option<i32>, String, String) {
    let output = mfa_gateway(&["check-config", "--config", path.to_str().unwrap()]);
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn quoted(path: &Path) -> String {
    format!("{:?}", path.display().to_string())
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn repo_file(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// Non-empty lines of the command's output.
fn lines(text: &str) -> Vec<&str> {
    text.lines().filter(|l| !l.trim().is_empty()).collect()
}

#[test]
fn check_config_says_a_complete_configuration_with_real_certificates_is_valid() {
    let pki = TestPki::new();
    let cert = pki.issue(&["mail.contoso.com"]);
    let path = write(
        pki.dir(),
        "gateway.toml",
        &format!(
            r#"
[server]
https_listen = "127.0.0.1:8443"
http_listen = "127.0.0.1:8080"
admin_listen = "127.0.0.1:9100"
shutdown_grace = "30s"

[[tls.certificates]]
cert = {cert}
key = {key}

[upstreams.exchange]
servers = ["https://ex01.corp.contoso.com", "https://ex02.corp.contoso.com"]
ca_file = {ca}
tls_server_name = "mail.contoso.com"
health_check = {{ path = "/owa/healthcheck.htm", interval = "10s", timeout = "3s" }}

[[routes]]
host = "mail.contoso.com"
path = "/owa"
upstream = "exchange"
access = "public"

[[routes]]
host = "mail.contoso.com"
path = "/ecp"
upstream = "exchange"
access = "deny"
"#,
            cert = quoted(&cert.cert),
            key = quoted(&cert.key),
            ca = quoted(&pki.ca_path()),
        ),
    );
    let (code, stdout, stderr) = check_config(&path);
    assert_eq!(code, Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("valid"), "{stdout}");
    assert!(
        stdout.contains(path.to_str().unwrap()),
        "names the file it checked: {stdout}"
    );
}

#[test]
fn check_config_reports_the_missing_files_of_the_shipped_example() {
    let example = repo_file("config/gateway.example.toml");
    assert!(
        example.exists(),
        "config/gateway.example.toml is missing from the repository"
    );
    let text = std::fs::read_to_string(&example).unwrap();
    let (code, stdout, stderr) = check_config(&example);
    // The example points at /etc/mfa-gateway/…, which a test machine does not have: the file
    // itself must be valid, and check-config must name the certificate file it cannot read.
    let cert_path = "/etc/mfa-gateway/mail.contoso.com.pem";
    assert!(
        text.contains(cert_path),
        "the example no longer uses {cert_path}; update this test"
    );
    if Path::new(cert_path).exists() {
        assert_eq!(code, Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
        return;
    }
    assert_ne!(
        code,
        Some(0),
        "a configuration whose certificate is missing passed: {stdout}"
    );
    let problems = lines(&stdout);
    assert!(
        !problems.is_empty(),
        "no problem printed; stderr:\n{stderr}"
    );
    assert!(
        problems
            .iter()
            .all(|line| line.starts_with("tls.certificates[0].cert")
                || line.starts_with("tls.certificates[0].key")
                || line.contains("ca_file")
                || line.contains("cannot read secret file /etc/mfa-gateway/")),
        "the example has problems other than files absent on this machine:\n{stdout}"
    );
    // Secret files are read while the file is validated, certificates once it is valid: with
    // the secrets missing too, those are what is reported, each with its key path.
    let secret_path = "/etc/mfa-gateway/client-secret";
    let first_missing = if Path::new(secret_path).exists() {
        ("tls.certificates[0].cert", cert_path)
    } else {
        ("oidc.client_secret", secret_path)
    };
    assert!(
        problems
            .iter()
            .any(|line| line.starts_with(first_missing.0) && line.contains(first_missing.1)),
        "the missing {} is not reported with its key path and file:\n{stdout}",
        first_missing.1
    );
}

#[test]
fn check_config_says_the_shipped_local_configuration_is_valid() {
    let local = repo_file("config/local.toml");
    assert!(
        local.exists(),
        "config/local.toml is missing from the repository"
    );
    let (code, stdout, stderr) = check_config(&local);
    assert_eq!(code, Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("valid"), "{stdout}");
}

#[test]
fn check_config_lists_every_error_on_its_own_line_with_its_key_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "gateway.toml",
        r#"
[server]
http_listen = "127.0.0.1:8080"
shutdown_grace = "soon"

[upstreams.exchange]
servers = ["ftp://ex01.corp.contoso.com"]

[[routes]]
host = "mail.contoso.com"
path = "/owa"
upstream = "exchnage"
access = "public"

[[routes]]
host = "mail.contoso.com"
path = "/ecp"
upstream = "exchange"
access = "sometimes"
"#,
    );
    let (code, stdout, stderr) = check_config(&path);
    assert!(
        matches!(code, Some(c) if c != 0),
        "exit {code:?}; stdout:\n{stdout}"
    );
    let problems = lines(&stdout);
    let expected = [
        "server.shutdown_grace",
        "upstreams.exchange.servers[0]",
        "routes[0].upstream",
        "routes[1].access",
    ];
    for key in expected {
        let matching: Vec<&&str> = problems.iter().filter(|l| l.starts_with(key)).collect();
        assert_eq!(
            matching.len(),
            1,
            "expected exactly one line starting with {key}:\nstdout:\n{stdout}\nstderr:\n{stderr}"
        );
    }
    assert_eq!(
        problems.len(),
        expected.len(),
        "one line per problem:\n{stdout}"
    );
    let line_of = |key: &str| {
        problems
            .iter()
            .find(|l| l.starts_with(key))
            .unwrap()
            .to_string()
    };
    assert!(
        line_of("routes[0].upstream").contains("exchnage"),
        "{stdout}"
    );
    assert!(
        line_of("server.shutdown_grace").contains("(line 4)"),
        "{stdout}"
    );
}

#[test]
fn check_config_refuses_a_route_that_asks_for_mfa_because_sign_in_is_not_available_yet() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "gateway.toml",
        r#"
[server]
http_listen = "127.0.0.1:8080"

[upstreams.exchange]
servers = ["http://127.0.0.1:8081"]

[[routes]]
host = "mail.contoso.com"
path = "/owa"
upstream = "exchange"
access = "mfa"
"#,
    );
    let (code, stdout, stderr) = check_config(&path);
    assert!(
        matches!(code, Some(c) if c != 0),
        "access = \"mfa\" passed: {stdout}"
    );
    let problems = lines(&stdout);
    assert_eq!(problems.len(), 1, "{stdout}\n{stderr}");
    assert!(problems[0].starts_with("routes[0].access"), "{stdout}");
    assert!(
        problems[0].contains("sign-in"),
        "the refusal does not explain why: {stdout}"
    );
}

#[test]
fn check_config_reports_an_unknown_key_with_its_line_number() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "gateway.toml",
        r#"[server]
http_listen = "127.0.0.1:8080"
shutdown_grace = "30s"
shutdown_grase = "30s"

[upstreams.exchange]
servers = ["http://127.0.0.1:8081"]

[[routes]]
host = "mail.contoso.com"
path = "/owa"
upstream = "exchange"
access = "public"
"#,
    );
    let (code, stdout, _) = check_config(&path);
    assert!(
        matches!(code, Some(c) if c != 0),
        "an unknown key passed: {stdout}"
    );
    let problems = lines(&stdout);
    assert_eq!(problems.len(), 1, "{stdout}");
    assert!(
        problems[0].starts_with("server.shutdown_grase (line 4)"),
        "the unknown key is not reported with its path and line: {stdout}"
    );
    assert!(problems[0].contains("unknown key"), "{stdout}");
}

#[test]
fn check_config_names_a_certificate_file_that_does_not_exist() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("mail.contoso.com.pem");
    let path = write(
        dir.path(),
        "gateway.toml",
        &format!(
            r#"
[server]
https_listen = "127.0.0.1:8443"

[[tls.certificates]]
cert = {cert}
key = {key}

[upstreams.exchange]
servers = ["https://ex01.corp.contoso.com"]

[[routes]]
host = "mail.contoso.com"
path = "/owa"
upstream = "exchange"
access = "public"
"#,
            cert = quoted(&missing),
            key = quoted(&dir.path().join("mail.contoso.com.key")),
        ),
    );
    let (code, stdout, _) = check_config(&path);
    assert!(
        matches!(code, Some(c) if c != 0),
        "a missing certificate passed: {stdout}"
    );
    let problems = lines(&stdout);
    assert!(
        problems[0].starts_with("tls.certificates[0].cert")
            && problems[0].contains(missing.to_str().unwrap()),
        "{stdout}"
    );
}

#[test]
fn check_config_of_a_file_that_does_not_exist_fails_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nowhere.toml");
    let (code, stdout, _) = check_config(&path);
    assert!(matches!(code, Some(c) if c != 0));
    assert!(stdout.contains(path.to_str().unwrap()), "{stdout}");
}

/// `server.workers` sizes the runtime, so `run` reads it before anything starts: a bad value
/// stops both commands with the key's path, and `run` exits without serving.
#[test]
fn workers_of_zero_or_not_a_number_is_refused_by_check_config_and_by_run() {
    let dir = tempfile::tempdir().unwrap();
    for (value, says) in [
        ("0", "server.workers (line 4): must be between 1 and 1024"),
        (
            "\"auto\"",
            "server.workers (line 4): invalid type: string \"auto\", expected i64",
        ),
    ] {
        let path = write(
            dir.path(),
            "gateway.toml",
            &format!(
                r#"
[server]
http_listen = "127.0.0.1:0"
workers = {value}

[upstreams.exchange]
servers = ["http://127.0.0.1:8081"]

[[routes]]
host = "mail.contoso.com"
path = "/owa"
upstream = "exchange"
access = "public"
"#
            ),
        );
        let (code, stdout, stderr) = check_config(&path);
        assert!(
            matches!(code, Some(c) if c != 0),
            "workers = {value} passed check-config: {stdout}"
        );
        let problems = lines(&stdout);
        assert!(
            problems.len() == 1 && problems[0].starts_with(says),
            "expected one line starting with {says:?}:\n{stdout}\nstderr:\n{stderr}"
        );

        let output = mfa_gateway(&["run", "--config", path.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success(),
            "run started with workers = {value}: {stderr}"
        );
        assert!(stderr.contains(says), "{stderr}");
        assert!(!stderr.contains("mfa-gateway started"), "{stderr}");
    }
}

#[test]
fn version_prints_the_version() {
    let output = mfa_gateway(&["--version"]);
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        stdout.trim(),
        format!("mfa-gateway {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn check_config_reports_every_missing_file_in_one_run() {
    let dir = tempfile::tempdir().unwrap();
    let absent = |name: &str| quoted(&dir.path().join(name));
    let path = write(
        dir.path(),
        "gateway.toml",
        &format!(
            r#"
[server]
https_listen = "127.0.0.1:8443"

[[tls.certificates]]
cert = {cert0}
key = {key0}

[[tls.certificates]]
cert = {cert1}
key = {key1}

[upstreams.exchange]
servers = ["https://ex01.corp.contoso.com"]
ca_file = {ca}

[[routes]]
host = "mail.contoso.com"
path = "/owa"
upstream = "exchange"
access = "public"
"#,
            cert0 = absent("mail.pem"),
            key0 = absent("mail.key"),
            cert1 = absent("autodiscover.pem"),
            key1 = absent("autodiscover.key"),
            ca = absent("corp-root.pem"),
        ),
    );
    let (code, stdout, _) = check_config(&path);
    assert!(matches!(code, Some(c) if c != 0));
    // An administrator fixing the file before a restart sees every unreadable file at once.
    let problems = lines(&stdout);
    for key in [
        "tls.certificates[0].cert",
        "tls.certificates[1].cert",
        "upstreams.exchange.ca_file",
    ] {
        assert!(
            problems.iter().any(|l| l.starts_with(key)),
            "{key} is not reported:\n{stdout}"
        );
    }
}

/// A sign-in configuration with an `sso = "kerberos"` route whose keytab is `keytab`.
fn kerberos_configuration(dir: &Path, keytab: &Path) -> PathBuf {
    write(
        dir,
        "kerberos.toml",
        &kerberos_configuration_text(keytab, 8080),
    )
}

fn kerberos_configuration_text(keytab: &Path, http_port: u16) -> String {
    format!(
        r#"
[server]
http_listen = "127.0.0.1:{http_port}"

[oidc]
issuer = "https://sts.windows.net/3f2a9b1c-5d4e-4f60-8a7b-1c2d3e4f5a6b/"
client_id = "0c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f"
client_secret = {{ value = "client-secret" }}

[session]
keys = [{{ value = "q83vEjRWeJCrze8SNFZ4kKvN7xI0VniQq83vEjRWeJA=" }}]

[sso.kerberos]
realm = "CORP.CONTOSO.COM"
kdc = ["dc01.corp.contoso.com"]
principal = "svc-mfagw@CORP.CONTOSO.COM"
keytab = {{ file = {keytab} }}

[upstreams.exchange]
servers = ["https://ex01.corp.contoso.com"]
tls_server_name = "mail.contoso.com"

[[routes]]
host = "mail.contoso.com"
path = "/owa"
upstream = "exchange"
access = "mfa"
sso = "kerberos"
"#,
        keytab = quoted(keytab),
    )
}

#[test]
fn check_config_reads_the_keytab_and_refuses_a_principal_it_has_no_key_for() {
    use mfa_gateway::sso::kerberos::keytab::write_keytab_for_tests;
    let dir = tempfile::tempdir().unwrap();
    let keytab = dir.path().join("svc-mfagw.keytab");
    std::fs::write(
        &keytab,
        write_keytab_for_tests(&[("HTTP/gw.corp.contoso.com@CORP.CONTOSO.COM", 3, 18)]),
    )
    .unwrap();
    let path = kerberos_configuration(dir.path(), &keytab);
    let (code, stdout, stderr) = check_config(&path);
    assert_eq!(code, Some(1), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let refusal = lines(&stdout);
    assert_eq!(refusal.len(), 1, "{stdout}");
    assert!(
        refusal[0].starts_with("sso.kerberos.keytab (line 17): ")
            && refusal[0].contains(keytab.to_str().unwrap())
            && refusal[0]
                .contains("has no key for sso.kerberos.principal \"svc-mfagw@CORP.CONTOSO.COM\""),
        "{stdout}"
    );

    std::fs::write(
        &keytab,
        write_keytab_for_tests(&[
            ("svc-mfagw@CORP.CONTOSO.COM", 3, 18),
            ("svc-mfagw@CORP.CONTOSO.COM", 3, 17),
        ]),
    )
    .unwrap();
    let (code, stdout, stderr) = check_config(&path);
    assert_eq!(code, Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("configuration is valid"), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "sso.kerberos keytab {}: svc-mfagw@CORP.CONTOSO.COM, key version 3 (aes256-cts-hmac-sha1-96, aes128-cts-hmac-sha1-96)",
            keytab.display()
        )),
        "{stdout}"
    );
}

#[tokio::test]
async fn run_configures_kerberos_from_sso_kerberos_in_its_own_krb5_conf_and_removes_it_at_exit() {
    use mfa_gateway::sso::kerberos::keytab::write_keytab_for_tests;
    let dir = tempfile::tempdir().unwrap();
    let keytab = dir.path().join("svc-mfagw.keytab");
    std::fs::write(
        &keytab,
        write_keytab_for_tests(&[("svc-mfagw@CORP.CONTOSO.COM", 3, 18)]),
    )
    .unwrap();
    let (mut process, _) = support::GatewayProcess::start(dir.path(), &[], |ports| {
        kerberos_configuration_text(&keytab, ports.http)
    })
    .await;
    let log = process.log();
    let written = log
        .split("krb5_config=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("no krb5_config in the log:\n{log}"));
    assert!(log.contains("generated=true"), "{log}");
    let text = std::fs::read_to_string(&written).unwrap();
    assert!(
        text.contains("default_realm = CORP.CONTOSO.COM\n"),
        "{text}"
    );
    assert!(text.contains("kdc = dc01.corp.contoso.com:88\n"), "{text}");
    assert!(text.contains("dns_lookup_kdc = false\n"), "{text}");

    process.signal("TERM");
    let status = process.child.wait().unwrap();
    assert!(status.success(), "{status}; log:\n{}", process.log());
    assert!(!written.exists(), "{} is left behind", written.display());
}

fn redis_configuration_text(redis: &str) -> String {
    format!(
        r#"
[server]
http_listen = "127.0.0.1:8080"

[oidc]
issuer = "https://sts.windows.net/3f2a9b1c-5d4e-4f60-8a7b-1c2d3e4f5a6b/"
client_id = "0c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f"
client_secret = {{ value = "client-secret" }}

[session]
keys = [{{ value = "q83vEjRWeJCrze8SNFZ4kKvN7xI0VniQq83vEjRWeJA=" }}]

[upstreams.exchange]
servers = ["http://127.0.0.1:8081"]

[[routes]]
host = "mail.contoso.com"
path = "/owa"
upstream = "exchange"
access = "mfa"

[redis]
{redis}
"#
    )
}

#[test]
fn check_config_describes_redis_without_its_password_and_refuses_bad_redis_keys() {
    let dir = tempfile::tempdir().unwrap();
    let password = write(dir.path(), "redis-password", "hunter2-redis\n");
    let ca = write(dir.path(), "ca.pem", "not a certificate\n");
    let good = write(
        dir.path(),
        "good.toml",
        &redis_configuration_text(&format!(
            "urls = [\"rediss://mfagw@redis01.corp.contoso.com:6380\"]\npassword = {{ file = {} }}\n",
            quoted(&password)
        )),
    );
    let (code, stdout, stderr) = check_config(&good);
    assert_eq!(code, Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let line = lines(&stdout)
        .into_iter()
        .find(|l| l.starts_with("redis:"))
        .unwrap_or_else(|| panic!("no redis line:\n{stdout}"))
        .to_owned();
    assert!(
        line.contains("standalone rediss://mfagw@redis01.corp.contoso.com:6380"),
        "{line}"
    );
    assert!(line.contains("on_unavailable = refuse"), "{line}");
    assert!(!stdout.contains("hunter2") && !stderr.contains("hunter2"));

    let bad = write(
        dir.path(),
        "bad.toml",
        &redis_configuration_text(
            "urls = [\"redis://a\", \"redis://b\"]\nmode = \"sentinel\"\non_unavailable = \"sometimes\"\n",
        ),
    );
    let (code, stdout, _) = check_config(&bad);
    assert_ne!(code, Some(0), "{stdout}");
    for key in ["redis.sentinel_master", "redis.on_unavailable"] {
        assert!(
            lines(&stdout).iter().any(|l| l.starts_with(key)),
            "{key} not reported:\n{stdout}"
        );
    }

    // A CA bundle that holds no certificate is found before the gateway runs with it.
    let bad_ca = write(
        dir.path(),
        "bad-ca.toml",
        &redis_configuration_text(&format!(
            "urls = [\"rediss://redis01.corp.contoso.com:6380\"]\nca_file = {}\n",
            quoted(&ca)
        )),
    );
    let (code, stdout, _) = check_config(&bad_ca);
    assert_ne!(code, Some(0), "{stdout}");
    assert!(
        lines(&stdout)
            .iter()
            .any(|l| l.starts_with("redis.ca_file")),
        "{stdout}"
    );
}
