//! The real `mfa-gateway` binary, started with a configuration file and killed on drop: for
//! what only a process shows (signals, exit status, its log, its resident memory).
//!
//! The binary binds the addresses of its configuration file itself, so the ports are chosen
//! here: reserved until it binds them (see `ports.rs`), and should a listener still fail to
//! bind — the binary then exits saying it cannot listen — started again on new ports.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use super::ports::ReservedPort;
use super::wait::{wait_for, wait_until};

/// What the binary logs once every listener is bound and it serves.
const STARTED: &str = "mfa-gateway started";
/// What the binary logs, before it exits, when a listen address cannot be bound.
const CANNOT_LISTEN: &str = "cannot listen on";
/// How long the binary may take to start (a debug build on a loaded machine).
const START_LIMIT: Duration = Duration::from_secs(20);
/// Start attempts on new ports before giving up.
const START_ATTEMPTS: usize = 5;

/// Loopback ports for the listeners of a gateway process, chosen afresh for each start
/// attempt. A configuration uses those it needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessPorts {
    pub https: u16,
    pub http: u16,
    pub admin: u16,
}

impl ProcessPorts {
    /// Three ports, held until the binary binds them.
    fn reserve() -> (ProcessPorts, [ReservedPort; 3]) {
        let held = [
            ReservedPort::new(),
            ReservedPort::new(),
            ReservedPort::new(),
        ];
        let ports = ProcessPorts {
            https: held[0].port(),
            http: held[1].port(),
            admin: held[2].port(),
        };
        (ports, held)
    }
}

/// The real `mfa-gateway` binary started with a configuration file; killed on drop.
pub struct GatewayProcess {
    pub child: Child,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
}

/// How a start attempt ended.
enum Start {
    Serving,
    CannotListen,
    Exited(ExitStatus),
    Silent,
}

impl GatewayProcess {
    /// Starts `mfa-gateway run --config dir/gateway.toml ARGS` with the configuration
    /// `toml(ports)`, on loopback ports reserved for it, and waits until the binary logs that it
    /// has bound its listeners and started. Returns the process and the ports it listens on.
    pub async fn start(
        dir: &Path,
        args: &[&str],
        toml: impl Fn(ProcessPorts) -> String,
    ) -> (GatewayProcess, ProcessPorts) {
        for attempt in 1..=START_ATTEMPTS {
            let (ports, held) = ProcessPorts::reserve();
            let mut process = GatewayProcess::launch(dir, &toml(ports), args);
            let start = process.start_outcome().await;
            drop(held);
            match start {
                Start::Serving => return (process, ports),
                Start::CannotListen => {
                    println!(
                        "start attempt {attempt}: a listener could not bind ({ports:?}), starting again on new ports:\n{}",
                        process.log()
                    );
                }
                Start::Exited(status) => {
                    panic!("the gateway exited with {status}; log:\n{}", process.log())
                }
                Start::Silent => process.panic_silent(),
            }
        }
        panic!("the gateway could not listen on new ports {START_ATTEMPTS} times in a row");
    }

    /// Writes `toml` to `dir/gateway.toml`, starts `mfa-gateway run`, and waits until it has
    /// started and `GET http://{probe}` answers (any status). The listen addresses are the
    /// caller's: [`GatewayProcess::start`] chooses them and retries when one is taken.
    pub async fn spawn(dir: &Path, toml: &str, probe: &str) -> GatewayProcess {
        GatewayProcess::spawn_with_args(dir, toml, probe, &[]).await
    }

    /// [`GatewayProcess::spawn`] with more arguments after `run --config FILE`.
    pub async fn spawn_with_args(
        dir: &Path,
        toml: &str,
        probe: &str,
        args: &[&str],
    ) -> GatewayProcess {
        let mut process = GatewayProcess::launch(dir, toml, args);
        match process.start_outcome().await {
            Start::Serving => {}
            Start::CannotListen => panic!(
                "the gateway cannot listen on an address of its configuration (GatewayProcess::start chooses ports and retries); log:\n{}",
                process.log()
            ),
            Start::Exited(status) => {
                panic!("the gateway exited with {status}; log:\n{}", process.log())
            }
            Start::Silent => process.panic_silent(),
        }
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        let answers = wait_until(START_LIMIT, || async {
            client.get(format!("http://{probe}")).send().await.is_ok()
        })
        .await;
        assert!(
            answers,
            "http://{probe} does not answer; log:\n{}",
            process.log()
        );
        process
    }

    fn launch(dir: &Path, toml: &str, args: &[&str]) -> GatewayProcess {
        let config_path = dir.join("gateway.toml");
        std::fs::write(&config_path, toml).unwrap();
        let log_path = dir.join("gateway.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_mfa-gateway"))
            .arg("run")
            .arg("--config")
            .arg(&config_path)
            .args(args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        GatewayProcess {
            child,
            config_path,
            log_path,
        }
    }

    /// Waits until the binary says it started, or exits.
    async fn start_outcome(&mut self) -> Start {
        wait_for(START_LIMIT, || {
            let outcome = match self.child.try_wait().unwrap() {
                Some(_) if self.log().contains(CANNOT_LISTEN) => Some(Start::CannotListen),
                Some(status) => Some(Start::Exited(status)),
                None => self.log().contains(STARTED).then_some(Start::Serving),
            };
            async move { outcome }
        })
        .await
        .unwrap_or(Start::Silent)
    }

    fn panic_silent(&self) -> ! {
        panic!(
            "no {STARTED:?} line within {START_LIMIT:?} (does MFA_GATEWAY_LOG hide info lines?); log:\n{}",
            self.log()
        )
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Sends a signal by name (`TERM`, `HUP`) with kill(1).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name} failed");
    }

    /// Resident set size now, in KiB (VmRSS of /proc/PID/status).
    pub fn rss_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "VmRSS:")
    }

    /// Peak resident set size so far, in KiB (VmHWM).
    pub fn peak_rss_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "VmHWM:")
    }

    /// Waits up to `limit` for the process to exit and returns its status.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        wait_for(limit, || {
            let exited = self.child.try_wait().unwrap();
            async move { exited }
        })
        .await
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{field} not found for {pid}"))
}
