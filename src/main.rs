//! The `mfa-gateway` command: `run`, `check-config`, `--version`.

#![forbid(unsafe_code)]
// Input from the network, the browser and the identity provider is hostile: no panics on it.
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use mfa_gateway::config::Config;
use mfa_gateway::{Gateway, Listeners};
use tokio::signal::unix::{signal, SignalKind};

/// mimalloc: per-thread free lists suit a proxy's many short-lived, same-sized allocations
/// (headers, buffers, futures) better than glibc's malloc, and return memory to the system.
/// Built without transparent huge pages: they would make every idle connection's few
/// kilobytes of buffers cost whole 2 MiB pages' worth of resident memory.
/// The `system-allocator` feature leaves it out, for heap profilers (heaptrack, valgrind's
/// massif and DHAT) that see only the C library's malloc.
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "mfa-gateway",
    version,
    about = "Multifactor authentication in front of on-premises Exchange"
)]
struct Cli {
    /// Log format: `text` for people, `json` for a SIEM.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway. SIGHUP reloads the file and certificates; SIGTERM drains and exits.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run a complete local demonstration on loopback: a sample Exchange server and the
    /// gateway in front of it. Prints the URL to open.
    Demo {
        /// Address of the gateway's listener.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// How the sample Exchange signs users in: `none`, or `adfs` (Exchange in AD FS claims
        /// authentication mode, with the gateway issuing its token).
        #[arg(long, value_enum, default_value = "none")]
        sso: DemoSsoArg,
    },
    /// Check a configuration file: exit 0 when it is valid, else print every problem.
    CheckConfig {
        #[arg(long, short)]
        config: PathBuf,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum DemoSsoArg {
    None,
    Adfs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Before the first thread (the log writer's): MIT Kerberos is configured through the
    // process environment, which may only change while there is one thread.
    let kerberos = match &cli.command {
        Command::Run { config } => kerberos_environment(config),
        _ => Ok(None),
    };
    let _log_writer = init_logging(cli.log_format);
    let kerberos = match kerberos {
        Ok(Some(environment)) => {
            tracing::info!(
                krb5_config = %environment.krb5_config.display(),
                generated = environment.generated,
                "Kerberos configuration for sso.kerberos"
            );
            Some(environment)
        }
        Ok(None) => None,
        Err(e) => {
            tracing::error!("sso.kerberos: cannot write the Kerberos configuration: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = command(cli.command);
    if let Some(environment) = kerberos.filter(|e| e.generated) {
        let _ = std::fs::remove_file(&environment.krb5_config);
    }
    code
}

fn command(command: Command) -> ExitCode {
    mfa_gateway::install_crypto_provider();
    match command {
        Command::CheckConfig { config } => check_config(&config),
        Command::Demo { listen, sso } => {
            let Some(runtime) = runtime() else {
                return ExitCode::FAILURE;
            };
            let sso = match sso {
                DemoSsoArg::None => mfa_gateway::demo::DemoSso::None,
                DemoSsoArg::Adfs => mfa_gateway::demo::DemoSso::Adfs,
            };
            let result = runtime.block_on(mfa_gateway::demo::run(listen, sso, async {
                let _ = tokio::signal::ctrl_c().await;
            }));
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("demo failed: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run { config: path } => {
            let Some(config) = load_or_log(&path) else {
                return ExitCode::FAILURE;
            };
            // Connections are served on `server.workers` threads, each with a runtime of its
            // own (`Gateway::start_workers`); this one runs the signals, the admin listener,
            // health checks, the provider refresh and the drain: one thread is plenty.
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    eprintln!("cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            runtime.block_on(run(path, config))
        }
    }
}

/// Sets the Kerberos environment when the configuration file has `[sso.kerberos]`. A file that
/// does not load is left for `run` to report.
fn kerberos_environment(
    path: &Path,
) -> std::io::Result<Option<mfa_gateway::sso::kerberos::environment::KerberosEnvironment>> {
    let Ok(config) = Config::load(path) else {
        return Ok(None);
    };
    match &config.sso.kerberos {
        Some(kerberos) => mfa_gateway::sso::kerberos::environment::prepare(kerberos).map(Some),
        None => Ok(None),
    }
}

/// The runtime of `demo`: one thread per CPU.
fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => Some(runtime),
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            None
        }
    }
}

/// Logs go to standard error through a background writer, so a request never waits on the
/// write (nor on the lock around standard error). When its buffer is full the writer blocks
/// rather than drop lines: audit events must not be lost. The guard flushes at exit. The
/// writer batches: lines that arrive while it writes go out together in one write.
fn init_logging(format: LogFormat) -> tracing_appender::non_blocking::WorkerGuard {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MFA_GATEWAY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .finish(std::io::BufWriter::with_capacity(
            64 * 1024,
            std::io::stderr(),
        ));
    let access_writer = writer.clone();
    mfa_gateway::observe::access::install(
        match format {
            LogFormat::Text => mfa_gateway::observe::access::Format::Text,
            LogFormat::Json => mfa_gateway::observe::access::Format::Json,
        },
        move |line| {
            let _ = std::io::Write::write_all(&mut access_writer.clone(), line);
        },
    );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(writer);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
    guard
}

fn check_config(path: &Path) -> ExitCode {
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(errors) => {
            println!("{errors}");
            return ExitCode::FAILURE;
        }
    };
    if let Ok(text) = std::fs::read_to_string(path) {
        for warning in Config::warnings(&text) {
            println!("warning: {warning}");
        }
    }
    let kerberos_keys = config.sso.kerberos.as_ref().map(kerberos_keys);
    // Certificates, keys and CA bundles are read here too, so a wrong path or a key that does
    // not match its certificate shows up before the gateway is restarted with the file.
    let metrics = std::sync::Arc::new(mfa_gateway::observe::metrics::Metrics::default());
    let snapshot = match mfa_gateway::server::Snapshot::build(
        config,
        &metrics,
        None,
        mfa_gateway::clock::Clock::system(),
    ) {
        Ok((snapshot, _)) => snapshot,
        Err(e) => {
            println!("{e}");
            return ExitCode::FAILURE;
        }
    };
    println!("{}: configuration is valid", path.display());
    if let Some(redis) = &snapshot.config.redis {
        println!("{}", describe_redis(redis));
    }
    // What Exchange's Set-OrganizationConfig -AdfsSignCertificateThumbprints needs.
    if let Some(adfs) = &snapshot.adfs {
        for (i, thumbprint) in adfs.thumbprints().iter().enumerate() {
            let role = if i == 0 {
                "signs tokens"
            } else {
                "listed for a rollover; does not sign"
            };
            println!(
                "sso.adfs token-signing certificate {}: thumbprint {thumbprint} ({role})",
                i + 1
            );
        }
    }
    // What `klist -kte` would show for the principal: the key version must match the account's
    // in Active Directory (msDS-KeyVersionNumber) after every password change.
    if let Some(line) = kerberos_keys {
        println!("{line}");
    }
    ExitCode::SUCCESS
}

/// What `[redis]` will connect to, for `check-config` (which does not connect).
fn describe_redis(redis: &mfa_gateway::config::RedisConfig) -> String {
    use mfa_gateway::config::{OnUnavailable, RedisMode};
    let servers: Vec<String> = redis
        .urls
        .iter()
        .map(|u| {
            let scheme = if u.tls { "rediss" } else { "redis" };
            let user = u
                .username
                .as_deref()
                .map(|n| format!("{n}@"))
                .unwrap_or_default();
            format!("{scheme}://{user}{}:{}", u.host, u.port)
        })
        .collect();
    let mode = match (redis.mode, &redis.sentinel_master) {
        (RedisMode::Sentinel, Some(master)) => format!("sentinel (master {master:?})"),
        (RedisMode::Sentinel, None) => "sentinel".to_owned(),
        (RedisMode::Standalone, _) => "standalone".to_owned(),
        (RedisMode::Cluster, _) => "cluster".to_owned(),
    };
    let on_unavailable = match redis.on_unavailable {
        OnUnavailable::Refuse => "refuse",
        OnUnavailable::Allow => "allow",
    };
    format!(
        "redis: {mode} {}, password {}, key prefix {:?}, on_unavailable = {on_unavailable} (not contacted by check-config)",
        servers.join(", "),
        if redis.password.is_some() { "set" } else { "none" },
        redis.key_prefix,
    )
}

/// `sso.kerberos keytab FILE: principal, key version N (enctypes)`, for `check-config`.
fn kerberos_keys(kerberos: &mfa_gateway::config::KerberosConfig) -> String {
    use mfa_gateway::sso::kerberos::keytab::parse_keytab;
    let entries = std::fs::read(&kerberos.keytab)
        .ok()
        .and_then(|bytes| parse_keytab(&bytes).ok())
        .unwrap_or_default();
    let keys: Vec<_> = entries
        .iter()
        .filter(|e| e.principal == kerberos.principal)
        .collect();
    let newest = keys.iter().map(|k| k.kvno).max().unwrap_or(0);
    let kinds: Vec<String> = keys
        .iter()
        .filter(|k| k.kvno == newest)
        .map(|k| k.enctype_name())
        .collect();
    format!(
        "sso.kerberos keytab {}: {}, key version {newest} ({})",
        kerberos.keytab.display(),
        kerberos.principal,
        kinds.join(", ")
    )
}

fn load_or_log(path: &Path) -> Option<Config> {
    match Config::load(path) {
        Ok(config) => Some(config),
        Err(errors) => {
            for error in &errors.0 {
                tracing::error!("{error}");
            }
            None
        }
    }
}

async fn run(path: PathBuf, config: Config) -> ExitCode {
    let workers = config.server.workers;
    let (mut terminate, mut hangup) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) {
        (Ok(t), Ok(h)) => (t, h),
        _ => {
            tracing::error!("cannot install signal handlers");
            return ExitCode::FAILURE;
        }
    };
    let listeners = match Listeners::bind(&config.server).await {
        Ok(listeners) => listeners,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let gateway = match Gateway::start_workers(config, listeners, async move {
        let _ = stop_rx.await;
    })
    .await
    {
        Ok(gateway) => gateway,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(version = env!("CARGO_PKG_VERSION"), config = %path.display(), workers, "mfa-gateway started");
    loop {
        tokio::select! {
            _ = terminate.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            _ = hangup.recv() => match Config::load(&path) {
                Ok(config) => match gateway.reload(config) {
                    Ok(()) => tracing::info!(config = %path.display(), "configuration reloaded"),
                    Err(e) => tracing::error!(error = %e, "reload refused; the running configuration stays in force"),
                },
                Err(errors) => {
                    gateway.reload_failed();
                    for error in &errors.0 {
                        tracing::error!("reload refused, the running configuration stays in force: {error}");
                    }
                }
            },
        }
    }
    let _ = stop_tx.send(());
    gateway.wait().await;
    ExitCode::SUCCESS
}
