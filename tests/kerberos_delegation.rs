//! The Kerberos engine of `sso = "kerberos"` against a real Active Directory KDC (Samba) and an
//! Exchange stand-in that verifies every token with Exchange's keytab and the TLS channel
//! binding: real S4U2Self and S4U2Proxy exchanges, real tickets.
//!
//! MIT GSSAPI takes its configuration from the process environment, which may only be set while
//! the process has one thread; the libtest harness starts threads before any test runs. So this
//! binary has its own `main` (`harness = false`): it sets `KRB5_CONFIG`, `KRB5_CLIENT_KTNAME`
//! and `KRB5CCNAME` first, then provisions the domain controller, then runs the tests one after
//! another on one runtime, printing libtest's summary line. A name given on the command line
//! runs the tests whose names contain it.

mod support;

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use futures_util::FutureExt as _;
use mfa_gateway::config::{KerberosConfig, KerberosUser};
use mfa_gateway::sso::kerberos::{ChannelBinding, KerberosReason, KerberosSso};
use support::{
    samba_available, KerberosExchange, SambaDc, EXCHANGE_SPN, GATEWAY_PRINCIPAL, OTHER_SPN, REALM,
};

/// The domain controller and Exchange, shared by every test.
struct Lab {
    dc: std::sync::Mutex<SambaDc>,
    exchange: KerberosExchange,
}

impl Lab {
    fn config(&self, user: KerberosUser, ticket_lifetime: Duration) -> KerberosConfig {
        let dc = self.dc.lock().unwrap();
        KerberosConfig {
            realm: REALM.into(),
            kdc: vec![dc.kdc().to_string()],
            principal: GATEWAY_PRINCIPAL.into(),
            keytab: dc.gateway_keytab(),
            user,
            ticket_lifetime,
        }
    }

    fn engine(&self) -> KerberosSso {
        KerberosSso::new(&self.config(KerberosUser::Upn, Duration::from_secs(36000)))
    }
}

type Test = for<'a> fn(&'a Lab) -> Pin<Box<dyn Future<Output = ()> + 'a>>;

macro_rules! tests {
    ($($name:ident),* $(,)?) => {
        const TESTS: &[(&str, Test)] = &[$((stringify!($name), |lab| Box::pin($name(lab)))),*];
    };
}

// In this order: the last one stops the KDC.
tests!(
    alice_and_bob_each_get_a_token_exchange_accepts_as_themselves,
    the_sam_account_name_is_impersonated_in_the_realm,
    exchange_s_mutual_authentication_answer_is_verified_and_a_forged_one_refused,
    an_unknown_user_is_user_not_found,
    a_sensitive_account_is_refused_as_account_sensitive,
    an_spn_outside_the_delegation_list_is_delegation_not_allowed,
    a_token_bound_to_another_tls_connection_is_refused_by_exchange,
    a_token_without_channel_binding_is_refused_by_exchange,
    exchange_keeps_a_kerberos_connection_signed_in_as_its_user,
    ten_concurrent_first_requests_of_one_user_make_one_s4u2self_and_one_s4u2proxy_exchange,
    a_cached_credential_is_reused_until_the_ticket_lifetime_then_renewed,
    a_principal_the_keytab_lacks_is_a_gateway_credentials_failure,
    without_protocol_transition_every_user_is_refused_as_account_sensitive,
    with_the_kdc_stopped_cached_users_keep_working_and_new_users_get_kdc_unreachable,
);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        for (name, _) in TESTS {
            println!("{name}: test");
        }
        return ExitCode::SUCCESS;
    }
    let filter = args.iter().find(|a| !a.starts_with('-')).cloned();
    let selected: Vec<&(&str, Test)> = TESTS
        .iter()
        .filter(|(name, _)| filter.as_ref().is_none_or(|f| name.contains(f.as_str())))
        .collect();
    // Nothing here is #[ignore]d: `cargo test -- --ignored` runs none of them.
    if args.iter().any(|a| a == "--ignored") || selected.is_empty() {
        println!("\ntest result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; {} filtered out; finished in 0.00s\n", TESTS.len());
        return ExitCode::SUCCESS;
    }
    if !samba_available() {
        println!("\ntest result: ok. 0 passed; 0 failed; {} ignored; 0 measured; 0 filtered out; finished in 0.00s\n", selected.len());
        return ExitCode::SUCCESS;
    }

    let started = Instant::now();
    let mut dc = SambaDc::reserve();
    // The one moment this process has a single thread: the Kerberos environment is set now.
    let mut config = KerberosConfig {
        realm: REALM.into(),
        kdc: vec![dc.kdc().to_string()],
        principal: GATEWAY_PRINCIPAL.into(),
        keytab: dc.gateway_keytab(),
        user: KerberosUser::Upn,
        ticket_lifetime: Duration::from_secs(36000),
    };
    let environment = mfa_gateway::sso::kerberos::environment::prepare(&config).unwrap();
    assert!(environment.generated);
    config.kdc.clear();
    dc.provision_and_start();
    mfa_gateway::install_crypto_provider();
    let exchange = KerberosExchange::start(&dc.exchange_keytab());
    let lab = Lab {
        dc: std::sync::Mutex::new(dc),
        exchange,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    // One line per failed assertion, as libtest prints them without RUST_BACKTRACE.
    std::panic::set_hook(Box::new(|info| eprintln!("{info}")));
    println!("\nrunning {} tests", selected.len());
    let mut failed = Vec::new();
    for (name, test) in &selected {
        let began = Instant::now();
        let outcome = runtime.block_on(AssertUnwindSafe(test(&lab)).catch_unwind());
        match outcome {
            Ok(()) => println!("test {name} ... ok ({:.2}s)", began.elapsed().as_secs_f64()),
            Err(_) => {
                println!("test {name} ... FAILED");
                failed.push(*name);
            }
        }
    }
    if !failed.is_empty() {
        println!("\nfailures:");
        for name in &failed {
            println!("    {name}");
        }
        println!("\nsamba log:\n{}", lab.dc.lock().unwrap().log());
    }
    println!(
        "\ntest result: {}. {} passed; {} failed; 0 ignored; 0 measured; {} filtered out; finished in {:.2}s\n",
        if failed.is_empty() { "ok" } else { "FAILED" },
        selected.len() - failed.len(),
        failed.len(),
        TESTS.len() - selected.len(),
        started.elapsed().as_secs_f64()
    );
    drop(lab);
    runtime.shutdown_timeout(Duration::from_secs(5));
    let _ = std::fs::remove_file(&environment.krb5_config);
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// A token for `user` to Exchange, sent on a new connection to the stand-in with the binding of
/// that connection; the stand-in's verdict on it.
async fn sign_in(lab: &Lab, engine: &KerberosSso, user: &str) -> support::ExchangeAnswer {
    let mut connection = lab.exchange.connect().await;
    let binding = ChannelBinding::tls_server_end_point(&connection.server_certificate()).unwrap();
    let token = engine
        .token_for(user, EXCHANGE_SPN, Some(&binding))
        .await
        .unwrap_or_else(|e| panic!("no token for {user}: {e}"));
    connection
        .get("/owa/", Some(token.authorization().to_str().unwrap()))
        .await
}

async fn alice_and_bob_each_get_a_token_exchange_accepts_as_themselves(lab: &Lab) {
    let engine = lab.engine();
    for (user, seen) in [
        (
            "alice@corp.contoso.test",
            "alice\\@corp.contoso.test@CORP.CONTOSO.TEST",
        ),
        (
            "bob@corp.contoso.test",
            "bob\\@corp.contoso.test@CORP.CONTOSO.TEST",
        ),
        (
            "alice@corp.contoso.test",
            "alice\\@corp.contoso.test@CORP.CONTOSO.TEST",
        ),
    ] {
        let began = Instant::now();
        let answer = sign_in(lab, &engine, user).await;
        eprintln!(
            "  token for {user} and Exchange's verdict: {:.1} ms",
            began.elapsed().as_secs_f64() * 1000.0
        );
        assert_eq!(answer.status, 200, "{answer:?}");
        assert_eq!(answer.header("X-Authenticated-User"), Some(seen));
    }
    let counters = engine.counters();
    assert_eq!(counters.s4u2self_requests, 2, "{counters:?}");
    assert_eq!(counters.s4u2proxy_requests, 2, "{counters:?}");
    assert_eq!(counters.cache_hits, 1, "{counters:?}");
    assert_eq!(counters.tokens, 3, "{counters:?}");
    assert!(
        counters.failures.iter().all(|(_, n)| *n == 0),
        "{counters:?}"
    );
}

async fn the_sam_account_name_is_impersonated_in_the_realm(lab: &Lab) {
    let engine = KerberosSso::new(&lab.config(
        KerberosUser::OnpremSamAccountName,
        Duration::from_secs(3600),
    ));
    let answer = sign_in(lab, &engine, "bob").await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(
        answer.header("X-Authenticated-User"),
        Some("bob@CORP.CONTOSO.TEST")
    );
    let refused = engine
        .token_for("bob@corp.contoso.test", EXCHANGE_SPN, None)
        .await
        .unwrap_err();
    assert_eq!(refused.reason, KerberosReason::UserNotFound, "{refused}");
}

async fn exchange_s_mutual_authentication_answer_is_verified_and_a_forged_one_refused(lab: &Lab) {
    let engine = lab.engine();
    let mut connection = lab.exchange.connect().await;
    let binding = ChannelBinding::tls_server_end_point(&connection.server_certificate()).unwrap();
    let token = engine
        .token_for("alice@corp.contoso.test", EXCHANGE_SPN, Some(&binding))
        .await
        .unwrap();
    let answer = connection
        .get("/owa/", Some(token.authorization().to_str().unwrap()))
        .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let reply = answer.header("WWW-Authenticate").unwrap().to_owned();
    assert!(reply.starts_with("Negotiate "), "{reply}");
    token
        .verify_reply(&http::HeaderValue::from_str(&reply).unwrap())
        .await
        .unwrap();

    // The answer to another token (another context's key) does not verify this one.
    let first = engine
        .token_for("alice@corp.contoso.test", EXCHANGE_SPN, Some(&binding))
        .await
        .unwrap();
    let second = engine
        .token_for("alice@corp.contoso.test", EXCHANGE_SPN, Some(&binding))
        .await
        .unwrap();
    // Same server certificate on every connection, so the same binding.
    let mut other = lab.exchange.connect().await;
    let answer = other
        .get("/owa/", Some(second.authorization().to_str().unwrap()))
        .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let foreign = answer.header("WWW-Authenticate").unwrap().to_owned();
    let refused = first
        .verify_reply(&http::HeaderValue::from_str(&foreign).unwrap())
        .await
        .unwrap_err();
    assert_eq!(
        refused.reason,
        KerberosReason::MutualAuthFailed,
        "{refused}"
    );

    let third = engine
        .token_for("alice@corp.contoso.test", EXCHANGE_SPN, None)
        .await
        .unwrap();
    let missing = third
        .verify_reply(&http::HeaderValue::from_static("Negotiate"))
        .await
        .unwrap_err();
    assert_eq!(
        missing.reason,
        KerberosReason::MutualAuthFailed,
        "{missing}"
    );
}

async fn an_unknown_user_is_user_not_found(lab: &Lab) {
    let engine = lab.engine();
    let error = engine
        .token_for("nobody@corp.contoso.test", EXCHANGE_SPN, None)
        .await
        .unwrap_err();
    assert_eq!(error.reason, KerberosReason::UserNotFound, "{error}");
    assert!(error.detail.contains("S4U2Self"), "{error}");
    let counters = engine.counters();
    assert!(counters
        .failures
        .contains(&(KerberosReason::UserNotFound, 1)));
    assert_eq!(counters.tokens, 0);
}

async fn a_sensitive_account_is_refused_as_account_sensitive(lab: &Lab) {
    let engine = lab.engine();
    let error = engine
        .token_for("carol@corp.contoso.test", EXCHANGE_SPN, None)
        .await
        .unwrap_err();
    assert_eq!(error.reason, KerberosReason::AccountSensitive, "{error}");
    // Not kept: once the account is changed, the next request asks the KDC again.
    let again = engine
        .token_for("carol@corp.contoso.test", EXCHANGE_SPN, None)
        .await
        .unwrap_err();
    assert_eq!(again.reason, KerberosReason::AccountSensitive, "{again}");
    assert_eq!(engine.counters().s4u2self_requests, 2);
    // alice, delegated to the same SPN by the same engine, is fine.
    engine
        .token_for("alice@corp.contoso.test", EXCHANGE_SPN, None)
        .await
        .unwrap();
    let counters = engine.counters();
    assert!(counters
        .failures
        .contains(&(KerberosReason::AccountSensitive, 2)));
    assert!(counters
        .failures
        .contains(&(KerberosReason::DelegationNotAllowed, 0)));
}

async fn an_spn_outside_the_delegation_list_is_delegation_not_allowed(lab: &Lab) {
    let engine = lab.engine();
    let error = engine
        .token_for("alice@corp.contoso.test", OTHER_SPN, None)
        .await
        .unwrap_err();
    assert_eq!(
        error.reason,
        KerberosReason::DelegationNotAllowed,
        "{error}"
    );
    assert!(error.detail.contains("S4U2Proxy"), "{error}");
    // alice's credential is still good for the SPN she may be delegated to.
    engine
        .token_for("alice@corp.contoso.test", EXCHANGE_SPN, None)
        .await
        .unwrap();
    let counters = engine.counters();
    assert_eq!(
        (
            counters.s4u2self_requests,
            counters.s4u2proxy_requests,
            counters.cache_hits
        ),
        (1, 2, 1),
        "{counters:?}"
    );
    let unknown = engine
        .token_for("alice@corp.contoso.test", "HTTP/nowhere.contoso.test", None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            unknown.reason,
            KerberosReason::SpnNotFound | KerberosReason::DelegationNotAllowed
        ),
        "{unknown}"
    );
}

async fn a_token_bound_to_another_tls_connection_is_refused_by_exchange(lab: &Lab) {
    let engine = lab.engine();
    // The binding of another server's certificate: what a man in the middle's would give.
    let other = support::TestPki::new().issue(&["mail.contoso.test"]);
    let foreign = ChannelBinding::tls_server_end_point(&other.der).unwrap();
    let token = engine
        .token_for("alice@corp.contoso.test", EXCHANGE_SPN, Some(&foreign))
        .await
        .unwrap();
    let mut connection = lab.exchange.connect().await;
    let answer = connection
        .get("/owa/", Some(token.authorization().to_str().unwrap()))
        .await;
    assert_eq!(answer.status, 401, "{answer:?}");
    assert!(
        answer
            .header("X-Refusal")
            .unwrap()
            .contains("token refused"),
        "{answer:?}"
    );
    assert_eq!(answer.header("X-Authenticated-User"), None);
}

async fn a_token_without_channel_binding_is_refused_by_exchange(lab: &Lab) {
    let engine = lab.engine();
    let token = engine
        .token_for("alice@corp.contoso.test", EXCHANGE_SPN, None)
        .await
        .unwrap();
    let mut connection = lab.exchange.connect().await;
    let answer = connection
        .get("/owa/", Some(token.authorization().to_str().unwrap()))
        .await;
    assert_eq!(answer.status, 401, "{answer:?}");
    assert!(
        answer
            .header("X-Refusal")
            .unwrap()
            .contains("without channel binding"),
        "{answer:?}"
    );
}

async fn exchange_keeps_a_kerberos_connection_signed_in_as_its_user(lab: &Lab) {
    let engine = lab.engine();
    let mut connection = lab.exchange.connect().await;
    let binding = ChannelBinding::tls_server_end_point(&connection.server_certificate()).unwrap();
    let token = engine
        .token_for("bob@corp.contoso.test", EXCHANGE_SPN, Some(&binding))
        .await
        .unwrap();
    let first = connection
        .get("/owa/", Some(token.authorization().to_str().unwrap()))
        .await;
    assert_eq!(first.status, 200, "{first:?}");
    // No token: the connection is still bob's. This is why a connection that carried one
    // user's ticket must never carry another user's request.
    let later = connection.get("/owa/service.svc", None).await;
    assert_eq!(later.status, 200, "{later:?}");
    assert_eq!(
        later.header("X-Authenticated-User"),
        Some("bob\\@corp.contoso.test@CORP.CONTOSO.TEST")
    );
    let mut fresh = lab.exchange.connect().await;
    assert_eq!(fresh.get("/owa/", None).await.status, 401);
}

async fn ten_concurrent_first_requests_of_one_user_make_one_s4u2self_and_one_s4u2proxy_exchange(
    lab: &Lab,
) {
    let engine = lab.engine();
    let began = Instant::now();
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let engine = engine.clone();
            tokio::spawn(async move {
                engine
                    .token_for("bob@corp.contoso.test", EXCHANGE_SPN, None)
                    .await
                    .map(|token| token.token().len())
            })
        })
        .collect();
    for task in tasks {
        assert!(task.await.unwrap().unwrap() > 1000);
    }
    eprintln!(
        "  10 concurrent first tokens of one user: {:.1} ms",
        began.elapsed().as_secs_f64() * 1000.0
    );
    let counters = engine.counters();
    assert_eq!(counters.kdc_requests(), 2, "{counters:?}");
    assert_eq!(counters.s4u2self_requests, 1, "{counters:?}");
    assert_eq!(counters.s4u2proxy_requests, 1, "{counters:?}");
    assert_eq!(counters.cache_hits, 9, "{counters:?}");
    assert_eq!(counters.tokens, 10, "{counters:?}");

    // Timings: a new user's first token (S4U2Self and S4U2Proxy), then a cached one's.
    for user in ["alice@corp.contoso.test", "carol.unknown@corp.contoso.test"] {
        let began = Instant::now();
        let result = engine.token_for(user, EXCHANGE_SPN, None).await;
        eprintln!(
            "  first token of {user}: {:.1} ms ({})",
            began.elapsed().as_secs_f64() * 1000.0,
            match &result {
                Ok(_) => "S4U2Self + S4U2Proxy".to_owned(),
                Err(e) => e.reason.to_string(),
            }
        );
    }
    // Timings of a cached user's token.
    let began = Instant::now();
    for _ in 0..20 {
        engine
            .token_for("bob@corp.contoso.test", EXCHANGE_SPN, None)
            .await
            .unwrap();
    }
    eprintln!(
        "  token with a cached credential: {:.2} ms each",
        began.elapsed().as_secs_f64() * 1000.0 / 20.0
    );
}

async fn a_cached_credential_is_reused_until_the_ticket_lifetime_then_renewed(lab: &Lab) {
    let engine = KerberosSso::new(&lab.config(KerberosUser::Upn, Duration::from_secs(2)));
    assert_eq!(
        sign_in(lab, &engine, "bob@corp.contoso.test").await.status,
        200
    );
    assert_eq!(
        sign_in(lab, &engine, "bob@corp.contoso.test").await.status,
        200
    );
    assert_eq!(engine.counters().s4u2self_requests, 1);
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let answer = sign_in(lab, &engine, "bob@corp.contoso.test").await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let counters = engine.counters();
    assert_eq!(counters.s4u2self_requests, 2, "{counters:?}");
    assert_eq!(counters.s4u2proxy_requests, 2, "{counters:?}");
    assert_eq!(counters.cache_hits, 1, "{counters:?}");

    // forget(): the next token asks the KDC again (a 401 from Exchange after a token).
    engine.forget("bob@corp.contoso.test").await;
    assert_eq!(
        sign_in(lab, &engine, "bob@corp.contoso.test").await.status,
        200
    );
    assert_eq!(engine.counters().s4u2self_requests, 3);
}

async fn a_principal_the_keytab_lacks_is_a_gateway_credentials_failure(lab: &Lab) {
    let mut config = lab.config(KerberosUser::Upn, Duration::from_secs(3600));
    config.principal = format!("exchsvc@{REALM}");
    let engine = KerberosSso::new(&config);
    let error = engine
        .token_for("alice@corp.contoso.test", EXCHANGE_SPN, None)
        .await
        .unwrap_err();
    assert_eq!(error.reason, KerberosReason::GatewayCredentials, "{error}");
}

async fn without_protocol_transition_every_user_is_refused_as_account_sensitive(lab: &Lab) {
    // "Use Kerberos only" instead of "Use any authentication protocol": the KDC still answers
    // S4U2Self, with a ticket it will not let the service account delegate.
    lab.dc
        .lock()
        .unwrap()
        .samba_tool(&["delegation", "for-any-protocol", "svc-mfagw", "off"]);
    let engine = lab.engine();
    let error = engine
        .token_for("bob@corp.contoso.test", EXCHANGE_SPN, None)
        .await
        .unwrap_err();
    lab.dc
        .lock()
        .unwrap()
        .samba_tool(&["delegation", "for-any-protocol", "svc-mfagw", "on"]);
    assert_eq!(error.reason, KerberosReason::AccountSensitive, "{error}");
    assert!(
        error
            .detail
            .contains("not trusted for any authentication protocol"),
        "{error}"
    );
    // Trusted again: the refused credential was not kept, so bob gets a ticket at once.
    let answer = sign_in(lab, &engine, "bob@corp.contoso.test").await;
    assert_eq!(answer.status, 200, "{answer:?}");
}

async fn with_the_kdc_stopped_cached_users_keep_working_and_new_users_get_kdc_unreachable(
    lab: &Lab,
) {
    let engine = lab.engine();
    assert_eq!(
        sign_in(lab, &engine, "alice@corp.contoso.test")
            .await
            .status,
        200
    );
    lab.dc.lock().unwrap().stop();

    let answer = sign_in(lab, &engine, "alice@corp.contoso.test").await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(
        answer.header("X-Authenticated-User"),
        Some("alice\\@corp.contoso.test@CORP.CONTOSO.TEST")
    );
    let began = Instant::now();
    let error = engine
        .token_for("bob@corp.contoso.test", EXCHANGE_SPN, None)
        .await
        .unwrap_err();
    assert_eq!(error.reason, KerberosReason::KdcUnreachable, "{error}");
    eprintln!(
        "  kdc_unreachable reported after {:.1} ms",
        began.elapsed().as_secs_f64() * 1000.0
    );
    let counters = engine.counters();
    assert!(counters
        .failures
        .contains(&(KerberosReason::KdcUnreachable, 1)));
}
