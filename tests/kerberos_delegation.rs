//! The Kerberos engine of `sso = "kerberos"` against a real Active Directory KDC (Samba) and an
//! Exchange stand-in that verifies every token with Exchange's keytab and the TLS channel
//! binding: real S4U2Self and S4U2Proxy exchanges, real tickets. First the engine alone, then
//! the whole gateway (`gateway_*` tests): users signed in at the test provider with MFA, their
//! requests to `sso = "kerberos"` routes reaching the stand-in as their Active Directory
//! accounts, each user over connections of their own.
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
use http::{Method, StatusCode};
use mfa_gateway::config::{KerberosConfig, KerberosUser};
use mfa_gateway::demo::{ProviderOptions, TestProvider, TestUser};
use mfa_gateway::sso::kerberos::{ChannelBinding, KerberosReason, KerberosSso};
use support::{
    random_session_key, samba_available, Browser, KerberosExchange, Reply, SambaDc, TestGateway,
    CLIENT_ID, CLIENT_SECRET, EXCHANGE_SPN, GATEWAY_PRINCIPAL, OTHER_SPN, REALM,
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

// In this order: the last two stop the KDC.
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
    gateway_alice_and_bob_interleaved_each_reach_exchange_as_themselves_over_their_own_connections,
    gateway_delegation_not_allowed_is_a_refusal_page_and_exchange_never_sees_the_request,
    gateway_a_sensitive_account_and_an_unknown_user_are_refused_without_reaching_exchange,
    gateway_a_ticket_exchange_refuses_is_renewed_once_and_the_request_sent_again,
    gateway_a_binding_exchange_does_not_expect_is_refused_with_a_page_after_one_renewal,
    gateway_an_answer_without_mutual_authentication_is_not_passed_on,
    gateway_exchange_without_windows_authentication_is_a_page_without_a_retry,
    gateway_with_user_onprem_sam_account_name_the_claim_is_impersonated_not_the_upn,
    with_the_kdc_stopped_cached_users_keep_working_and_new_users_get_kdc_unreachable,
    gateway_with_the_kdc_stopped_a_user_with_a_ticket_keeps_working_and_a_new_one_gets_a_page,
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

// ---------------------------------------------------------------------------------------------
// Through the gateway

/// A person of the test provider whose UPN is their Active Directory account's.
fn ad_user(username: &str, oid: &str) -> TestUser {
    TestUser {
        username: username.into(),
        name: username.into(),
        upn: format!("{username}@corp.contoso.test"),
        oid: oid.into(),
        onprem_sid: None,
        groups: Vec::new(),
        extra_claims: Vec::new(),
    }
}

/// How the stand-in names a user signed in by enterprise name (their UPN).
fn seen_as(username: &str) -> String {
    format!("{username}\\@corp.contoso.test@CORP.CONTOSO.TEST")
}

/// The test provider (alice, bob, carol — sensitive in AD — and dave, unknown to AD) and a
/// gateway in this process publishing `/owa` (Exchange's SPN, delegated) and `/ecp` (an SPN
/// outside the delegation list), both `sso = "kerberos"` towards the stand-in.
struct GatewayWorld {
    provider: TestProvider,
    gateway: TestGateway,
}

impl GatewayWorld {
    async fn start(lab: &Lab) -> GatewayWorld {
        GatewayWorld::start_with(lab, "", "").await
    }

    /// With `oidc_extra` lines in `[oidc]` and `kerberos_extra` in `[sso.kerberos]`.
    async fn start_with(lab: &Lab, oidc_extra: &str, kerberos_extra: &str) -> GatewayWorld {
        // Robert's Entra UPN is not his Active Directory one; his sAMAccountName, sent in a
        // claim, is bob's account.
        let mut robert = ad_user("robert", "7f3e5a2c-0b1d-4e6b-9d8f-3c4a5b6d7e82");
        robert.upn = "robert@contoso.com".into();
        robert.extra_claims = vec![("samaccountname".into(), "bob".into())];
        let options = ProviderOptions {
            users: vec![
                ad_user("alice", "6e9f4c2a-8d1b-4f3e-a5c7-1b2d3e4f5a60"),
                ad_user("bob", "0b7d1f3e-5a2c-4e6b-9d8f-3c4a5b6d7e81"),
                ad_user("carol", "9a4e2b6c-1d3f-4a5b-8c7d-e9f0a1b2c3d4"),
                ad_user("dave", "4c2a8d1b-6e9f-4f3e-a5c7-2b3d4e5f6a71"),
                robert,
            ],
            ..ProviderOptions::default()
        };
        let provider = TestProvider::start(options).await.unwrap();
        provider.register_client(
            CLIENT_ID,
            mfa_gateway::demo::ClientCredential::Secret(CLIENT_SECRET.into()),
        );
        let (kdc, keytab) = {
            let dc = lab.dc.lock().unwrap();
            (dc.kdc(), dc.gateway_keytab())
        };
        let exchange = &lab.exchange;
        let upstream = |spn: &str| {
            format!(
                "servers = [\"{}\"]\nca_file = {:?}\ntls_server_name = \"mail.contoso.test\"\n{spn}",
                exchange.url(),
                exchange.ca_path()
            )
        };
        let toml = format!(
            r#"
[server]
http_listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
workers = 1

[oidc]
issuer = "{issuer}"
client_id = "{CLIENT_ID}"
client_secret = {{ value = "{CLIENT_SECRET}" }}
{oidc_extra}

[session]
keys = [{{ value = "{key}" }}]

[upstreams.exchange]
{exchange_upstream}

[upstreams.other]
{other_upstream}

[[routes]]
host = "mail.contoso.com"
path = "/owa"
upstream = "exchange"
access = "mfa"
sso = "kerberos"

[[routes]]
host = "mail.contoso.com"
path = "/ecp"
upstream = "other"
access = "mfa"
sso = "kerberos"

[sso.kerberos]
realm = "{REALM}"
kdc = ["{kdc}"]
principal = "{GATEWAY_PRINCIPAL}"
keytab = {{ file = {keytab:?} }}
{kerberos_extra}
"#,
            issuer = provider.issuer(),
            key = random_session_key(),
            exchange_upstream = upstream(""),
            other_upstream = upstream(&format!("kerberos_spn = \"{OTHER_SPN}\"")),
        );
        let gateway = TestGateway::start(&toml).await;
        gateway.wait_ready().await;
        GatewayWorld { provider, gateway }
    }

    async fn signed_in(&self, user: &str) -> Browser {
        let mut browser = Browser::new(self.gateway.http.unwrap());
        browser.sign_in_ok("/owa/", &self.provider, user).await;
        browser
    }

    /// The gateway's `/metrics` value of `series` (0 when absent).
    async fn metric(&self, series: &str) -> f64 {
        let url = format!("http://{}/metrics", self.gateway.admin.unwrap());
        let text = reqwest::get(url).await.unwrap().text().await.unwrap();
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .map_or(0.0, |v| v.trim().parse().unwrap())
    }

    /// The gateway's `sso_ticket` audit events, oldest first.
    fn ticket_refusals(&self) -> Vec<support::AuditEvent> {
        self.gateway
            .audit_events()
            .into_iter()
            .filter(|e| e.event() == "sso_ticket")
            .collect()
    }
}

fn header<'r>(reply: &'r Reply, name: &str) -> Option<&'r str> {
    reply.headers.get(name).and_then(|v| v.to_str().ok())
}

/// A page of the gateway refusing the request with the Kerberos `reason`, not Exchange's.
fn assert_refusal_page(reply: &Reply, status: StatusCode, reason: &str) {
    assert_eq!(reply.status, status, "{}", reply.describe());
    assert!(
        reply.body.contains(&format!("kerberos {reason}")),
        "{}",
        reply.describe()
    );
    assert_eq!(header(reply, "X-Authenticated-User"), None);
    assert_eq!(header(reply, "WWW-Authenticate"), None);
}

/// How many verdicts the stand-in has given so far.
fn verdict_count(lab: &Lab) -> usize {
    lab.exchange.verdicts().len()
}

async fn gateway_alice_and_bob_interleaved_each_reach_exchange_as_themselves_over_their_own_connections(
    lab: &Lab,
) {
    let world = GatewayWorld::start(lab).await;
    let mut alice = world.signed_in("alice").await;
    let mut bob = world.signed_in("bob").await;
    let mut connections: [Vec<String>; 2] = [Vec::new(), Vec::new()];
    let mut most_requests_on_one_connection = [0u32; 2];
    for round in 0..4 {
        for (i, (browser, name)) in [(&mut alice, "alice"), (&mut bob, "bob")]
            .into_iter()
            .enumerate()
        {
            // The browser's own Authorization never reaches Exchange: the gateway's ticket
            // alone says who the user is.
            let reply = browser
                .request(
                    Method::GET,
                    &format!("/owa/?round={round}"),
                    &[("authorization", "Basic YWxpY2U6cGFzc3dvcmQ=")],
                    None,
                    false,
                )
                .await;
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.describe());
            assert_eq!(
                header(&reply, "X-Authenticated-User"),
                Some(seen_as(name).as_str())
            );
            assert_eq!(reply.body.trim(), seen_as(name));
            // Exchange's mutual authentication answer stays between gateway and Exchange.
            assert_eq!(
                header(&reply, "WWW-Authenticate"),
                None,
                "{}",
                reply.describe()
            );
            connections[i].push(header(&reply, "X-Connection").unwrap().to_owned());
            let carried: u32 = header(&reply, "X-Connection-Requests")
                .unwrap()
                .parse()
                .unwrap();
            most_requests_on_one_connection[i] = most_requests_on_one_connection[i].max(carried);
        }
    }
    // Both at once, too.
    let (a, b) = tokio::join!(alice.navigate("/owa/inbox"), bob.navigate("/owa/inbox"));
    for (reply, name, i) in [(a, "alice", 0), (b, "bob", 1)] {
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.describe());
        assert_eq!(
            header(&reply, "X-Authenticated-User"),
            Some(seen_as(name).as_str())
        );
        connections[i].push(header(&reply, "X-Connection").unwrap().to_owned());
    }
    // No connection that carried one user's ticket ever carried the other's request.
    assert!(
        connections[0].iter().all(|c| !connections[1].contains(c)),
        "alice's connections {:?}, bob's {:?}",
        connections[0],
        connections[1]
    );
    // Each user's own connections are kept alive for their next requests.
    assert!(
        most_requests_on_one_connection.iter().all(|n| *n >= 2),
        "{most_requests_on_one_connection:?} (alice {:?}, bob {:?})",
        connections[0],
        connections[1]
    );
    // Every verdict of the stand-in for these requests: a verified token, never a connection
    // that was merely still signed in.
    let verdicts = lab.exchange.verdicts();
    let recent = &verdicts[verdicts.len() - 10..];
    assert!(
        recent
            .iter()
            .all(|v| v["accepted"] == true && v["persisted"] == false),
        "{recent:#?}"
    );
    assert_eq!(
        world
            .metric("mfagw_kerberos_kdc_requests_total{exchange=\"s4u2self\"}")
            .await,
        2.0
    );
    assert_eq!(world.metric("mfagw_kerberos_tokens_total").await, 10.0);
    assert_eq!(
        world.metric("mfagw_kerberos_ticket_cache_hits_total").await,
        8.0
    );
    assert!(world.ticket_refusals().is_empty());
}

async fn gateway_delegation_not_allowed_is_a_refusal_page_and_exchange_never_sees_the_request(
    lab: &Lab,
) {
    let world = GatewayWorld::start(lab).await;
    let mut alice = world.signed_in("alice").await;
    let before = verdict_count(lab);
    let reply = alice.navigate("/ecp/").await;
    assert_refusal_page(&reply, StatusCode::FORBIDDEN, "delegation_not_allowed");
    assert!(reply.body.contains("not allowed to sign your account in"));
    // A fetch of a page too: refused the same way, without a request to Exchange.
    let reply = alice
        .fetch(Method::POST, "/ecp/DDI/DDIService.svc/GetList")
        .await;
    assert_refusal_page(&reply, StatusCode::FORBIDDEN, "delegation_not_allowed");
    assert_eq!(verdict_count(lab), before, "{:#?}", lab.exchange.verdicts());

    let refusals = world.ticket_refusals();
    assert_eq!(refusals.len(), 2, "{refusals:#?}");
    let event = &refusals[0];
    assert_eq!(event.outcome(), "refused");
    assert_eq!(event.reason(), "delegation_not_allowed");
    assert_eq!(event.field("mode"), Some("kerberos"));
    assert_eq!(event.field("user"), Some("alice@corp.contoso.test"));
    assert_eq!(event.field("upn"), Some("alice@corp.contoso.test"));
    assert_eq!(event.field("route"), Some("mail.contoso.com/ecp"));
    assert_eq!(
        world
            .metric("mfagw_kerberos_failures_total{reason=\"delegation_not_allowed\"}")
            .await,
        2.0
    );
    // alice is still fine where she may be delegated.
    let reply = alice.navigate("/owa/").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.describe());
}

async fn gateway_a_sensitive_account_and_an_unknown_user_are_refused_without_reaching_exchange(
    lab: &Lab,
) {
    let world = GatewayWorld::start(lab).await;
    let mut carol = world.signed_in("carol").await;
    let mut dave = world.signed_in("dave").await;
    let before = verdict_count(lab);
    let reply = carol.navigate("/owa/").await;
    assert_refusal_page(&reply, StatusCode::FORBIDDEN, "account_sensitive");
    assert!(reply.body.contains("protected from delegation"));
    let reply = dave.navigate("/owa/").await;
    assert_refusal_page(&reply, StatusCode::FORBIDDEN, "user_not_found");
    assert!(reply.body.contains("could not be found"));
    assert_eq!(verdict_count(lab), before, "{:#?}", lab.exchange.verdicts());
    let reasons: Vec<(String, Option<String>)> = world
        .ticket_refusals()
        .iter()
        .map(|e| (e.reason().to_owned(), e.field("user").map(str::to_owned)))
        .collect();
    assert_eq!(
        reasons,
        [
            (
                "account_sensitive".to_owned(),
                Some("carol@corp.contoso.test".to_owned())
            ),
            (
                "user_not_found".to_owned(),
                Some("dave@corp.contoso.test".to_owned())
            ),
        ]
    );
}

async fn gateway_a_ticket_exchange_refuses_is_renewed_once_and_the_request_sent_again(lab: &Lab) {
    let world = GatewayWorld::start(lab).await;
    let mut alice = world.signed_in("alice").await;
    assert_eq!(alice.navigate("/owa/").await.status, StatusCode::OK);
    let s4u2self = "mfagw_kerberos_kdc_requests_total{exchange=\"s4u2self\"}";
    assert_eq!(world.metric(s4u2self).await, 1.0);

    // Exchange judges the ticket expired: the gateway forgets it, asks the KDC again and sends
    // the request once more, on a new connection.
    lab.exchange.control("refuse-next").await;
    let before = verdict_count(lab);
    let reply = alice.navigate("/owa/?after-expiry").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.describe());
    assert_eq!(
        header(&reply, "X-Authenticated-User"),
        Some(seen_as("alice").as_str())
    );
    let verdicts = &lab.exchange.verdicts()[before..];
    assert_eq!(verdicts.len(), 2, "{verdicts:#?}");
    assert_eq!(verdicts[0]["accepted"], false);
    assert_eq!(verdicts[1]["accepted"], true);
    assert_ne!(verdicts[0]["peer"], verdicts[1]["peer"], "{verdicts:#?}");
    assert_eq!(world.metric(s4u2self).await, 2.0);

    // A small POST body was read ahead, so it is sent again whole.
    lab.exchange.control("refuse-next").await;
    let body = "x".repeat(3000);
    let reply = alice
        .request(
            Method::POST,
            "/owa/service.svc?action=GetItem",
            &[("x-requested-with", "XMLHttpRequest")],
            Some((body, "application/json")),
            false,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.describe());
    assert_eq!(header(&reply, "X-Body-Length"), Some("3000"));
    assert_eq!(world.metric(s4u2self).await, 3.0);

    // Refused again with the fresh ticket: a page, not a loop, and not Exchange's 401 (which
    // would make the browser try a Windows sign-in of its own).
    lab.exchange.control("refuse-next").await;
    lab.exchange.control("refuse-next").await;
    let before = verdict_count(lab);
    let reply = alice.navigate("/owa/").await;
    assert_refusal_page(&reply, StatusCode::BAD_GATEWAY, "ticket_refused");
    assert_eq!(verdict_count(lab) - before, 2);
    let refusals = world.ticket_refusals();
    assert_eq!(refusals.len(), 1, "{refusals:#?}");
    assert_eq!(refusals[0].reason(), "ticket_refused");
    // And the next request works again.
    assert_eq!(alice.navigate("/owa/").await.status, StatusCode::OK);

    // An upload above 64 KiB is streamed to Exchange as it arrives: it cannot be sent again,
    // so a refused ticket is a page — and the next request has a fresh ticket.
    lab.exchange.control("refuse-next").await;
    let before = verdict_count(lab);
    let reply = alice
        .request(
            Method::POST,
            "/owa/service.svc?action=CreateAttachment",
            &[("x-requested-with", "XMLHttpRequest")],
            Some(("y".repeat(100 * 1024), "application/octet-stream")),
            false,
        )
        .await;
    assert_refusal_page(&reply, StatusCode::BAD_GATEWAY, "ticket_refused");
    assert_eq!(verdict_count(lab) - before, 1, "sent once");
    let refusals = world.ticket_refusals();
    assert!(
        refusals[1]
            .field("detail")
            .unwrap()
            .contains("cannot be sent again"),
        "{refusals:#?}"
    );
    let s4u2self_before = world.metric(s4u2self).await;
    assert_eq!(alice.navigate("/owa/").await.status, StatusCode::OK);
    assert_eq!(world.metric(s4u2self).await, s4u2self_before + 1.0);
}

async fn gateway_a_binding_exchange_does_not_expect_is_refused_with_a_page_after_one_renewal(
    lab: &Lab,
) {
    let world = GatewayWorld::start(lab).await;
    let mut bob = world.signed_in("bob").await;
    // Exchange behind a TLS-terminating device: the binding it expects is of another
    // certificate than the one the gateway was shown.
    lab.exchange.control("foreign-binding").await;
    let before = verdict_count(lab);
    let reply = bob.navigate("/owa/").await;
    lab.exchange.control("own-binding").await;
    assert_refusal_page(&reply, StatusCode::BAD_GATEWAY, "ticket_refused");
    let verdicts = &lab.exchange.verdicts()[before..];
    assert_eq!(verdicts.len(), 2, "{verdicts:#?}");
    for verdict in verdicts {
        assert_eq!(verdict["accepted"], false);
        assert!(
            verdict["refusal"]
                .as_str()
                .unwrap()
                .contains("token refused"),
            "{verdict:#?}"
        );
    }
    assert_eq!(
        world
            .metric("mfagw_kerberos_failures_total{reason=\"ticket_refused\"}")
            .await,
        1.0
    );
    assert_eq!(bob.navigate("/owa/").await.status, StatusCode::OK);
}

async fn gateway_an_answer_without_mutual_authentication_is_not_passed_on(lab: &Lab) {
    let world = GatewayWorld::start(lab).await;
    let mut alice = world.signed_in("alice").await;
    lab.exchange.control("omit-reply-next").await;
    let reply = alice.navigate("/owa/").await;
    assert_refusal_page(&reply, StatusCode::BAD_GATEWAY, "mutual_auth_failed");
    assert!(!reply.body.contains("alice"), "{}", reply.describe());
    let refusals = world.ticket_refusals();
    assert_eq!(refusals.len(), 1, "{refusals:#?}");
    assert_eq!(refusals[0].reason(), "mutual_auth_failed");
    assert_eq!(alice.navigate("/owa/").await.status, StatusCode::OK);
}

async fn gateway_with_the_kdc_stopped_a_user_with_a_ticket_keeps_working_and_a_new_one_gets_a_page(
    lab: &Lab,
) {
    lab.dc.lock().unwrap().start();
    let world = GatewayWorld::start(lab).await;
    let mut alice = world.signed_in("alice").await;
    let mut bob = world.signed_in("bob").await;
    assert_eq!(alice.navigate("/owa/").await.status, StatusCode::OK);
    lab.dc.lock().unwrap().stop();

    for _ in 0..2 {
        let reply = alice.navigate("/owa/").await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.describe());
        assert_eq!(
            header(&reply, "X-Authenticated-User"),
            Some(seen_as("alice").as_str())
        );
    }
    let before = verdict_count(lab);
    let reply = bob.navigate("/owa/").await;
    assert_refusal_page(&reply, StatusCode::SERVICE_UNAVAILABLE, "kdc_unreachable");
    assert!(reply.body.contains("Try again in a few minutes"));
    assert_eq!(verdict_count(lab), before);
    let refusals = world.ticket_refusals();
    assert_eq!(refusals.len(), 1, "{refusals:#?}");
    assert_eq!(refusals[0].reason(), "kdc_unreachable");
    assert_eq!(refusals[0].field("user"), Some("bob@corp.contoso.test"));
    assert_eq!(
        world
            .metric("mfagw_kerberos_failures_total{reason=\"kdc_unreachable\"}")
            .await,
        1.0
    );
}

async fn gateway_exchange_without_windows_authentication_is_a_page_without_a_retry(lab: &Lab) {
    let world = GatewayWorld::start(lab).await;
    let mut bob = world.signed_in("bob").await;
    lab.exchange.control("basic-next").await;
    let before = verdict_count(lab);
    let reply = bob.navigate("/owa/").await;
    // Exchange's Basic challenge is not passed on: the browser would ask for a password.
    assert_refusal_page(&reply, StatusCode::BAD_GATEWAY, "ticket_refused");
    assert_eq!(verdict_count(lab) - before, 1, "no second try");
    let refusals = world.ticket_refusals();
    assert_eq!(refusals.len(), 1, "{refusals:#?}");
    assert!(
        refusals[0]
            .field("detail")
            .unwrap()
            .contains("without offering Negotiate"),
        "{refusals:#?}"
    );
    assert_eq!(bob.navigate("/owa/").await.status, StatusCode::OK);
}

async fn gateway_with_user_onprem_sam_account_name_the_claim_is_impersonated_not_the_upn(
    lab: &Lab,
) {
    let world = GatewayWorld::start_with(
        lab,
        "account_name_claim = \"samaccountname\"",
        "user = \"onprem_sam_account_name\"",
    )
    .await;
    let mut robert = world.signed_in("robert").await;
    let reply = robert.navigate("/owa/").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.describe());
    assert_eq!(
        header(&reply, "X-Authenticated-User"),
        Some("bob@CORP.CONTOSO.TEST")
    );
    // Without the claim there is nobody to impersonate: refused before any KDC exchange.
    let mut alice = world.signed_in("alice").await;
    let before = verdict_count(lab);
    let reply = alice.navigate("/owa/").await;
    assert_refusal_page(&reply, StatusCode::FORBIDDEN, "user_not_found");
    assert_eq!(verdict_count(lab), before);
    let refusals = world.ticket_refusals();
    assert_eq!(refusals.len(), 1, "{refusals:#?}");
    assert!(
        refusals[0]
            .field("detail")
            .unwrap()
            .contains("onprem_sam_account_name"),
        "{refusals:#?}"
    );
    assert_eq!(
        world
            .metric("mfagw_kerberos_kdc_requests_total{exchange=\"s4u2self\"}")
            .await,
        1.0
    );
}
