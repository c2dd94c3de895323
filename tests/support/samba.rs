//! A Samba Active Directory domain controller for the Kerberos tests: provisioned into a
//! temporary directory by `tests/kerberos/samba-lab.sh` (realm CORP.CONTOSO.TEST, the accounts
//! of a constrained delegation deployment, keytabs, a krb5.conf), serving only its KDC on a
//! loopback address of its own (127.0.0.N), so test binaries running at once do not share one.
//! Stopped on drop.
//!
//! Without `samba-tool` the Kerberos tests are skipped with a message — except in CI (`CI` set),
//! where they must run.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const REALM: &str = "CORP.CONTOSO.TEST";
/// The gateway's service account.
pub const GATEWAY_PRINCIPAL: &str = "svc-mfagw@CORP.CONTOSO.TEST";
/// Exchange's SPN, in the service account's delegation list.
pub const EXCHANGE_SPN: &str = "HTTP/mail.contoso.test";
/// An SPN of Exchange's account that is not in the delegation list.
pub const OTHER_SPN: &str = "HTTP/other.contoso.test";

/// How long provisioning and the KDC's start may take on a loaded machine.
const READY_LIMIT: Duration = Duration::from_secs(240);

/// The domain controller, its files and its process.
pub struct SambaDc {
    dir: tempfile::TempDir,
    pub ip: Ipv4Addr,
    child: Option<Child>,
}

/// Whether the Kerberos tests can run here; panics in CI when they cannot.
pub fn samba_available() -> bool {
    let found = Command::new("samba-tool")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        let ci = std::env::var_os("CI").is_some();
        assert!(
            !ci,
            "samba-tool is not installed, and CI is set: the Kerberos tests must run in CI \
             (apt-get install samba samba-ad-dc samba-ad-provision krb5-user winbind ldb-tools)"
        );
        eprintln!(
            "SKIPPED: the Kerberos tests need a Samba AD DC (apt-get install samba samba-ad-dc \
             samba-ad-provision krb5-user winbind ldb-tools python3-gssapi); samba-tool is not installed"
        );
    }
    found
}

impl SambaDc {
    /// A directory and a free loopback address for a domain controller; nothing runs yet. The
    /// paths are known before provisioning, so the Kerberos environment can be set first.
    pub fn reserve() -> SambaDc {
        let dir = tempfile::Builder::new()
            .prefix("mfagw-samba-")
            .tempdir()
            .unwrap();
        SambaDc {
            dir,
            ip: free_loopback_address(),
            child: None,
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn krb5_conf(&self) -> PathBuf {
        self.dir().join("krb5.conf")
    }

    /// The service account's keytab.
    pub fn gateway_keytab(&self) -> PathBuf {
        self.dir().join("gateway.keytab")
    }

    /// Exchange's keytab (both of its HTTP SPNs).
    pub fn exchange_keytab(&self) -> PathBuf {
        self.dir().join("exchange.keytab")
    }

    pub fn kdc(&self) -> SocketAddr {
        SocketAddr::from((self.ip, 88))
    }

    /// Provisions the domain and starts its KDC; returns once the KDC accepts connections.
    pub fn provision_and_start(&mut self) {
        let started = Instant::now();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/kerberos/samba-lab.sh");
        let out = Command::new("bash")
            .arg(&script)
            .arg(self.dir())
            .arg(self.ip.to_string())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "provisioning the Samba DC failed ({}):\n{}\n{}\nprovision.log:\n{}\naccounts.log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.dir().join("provision.log")).unwrap_or_default(),
            std::fs::read_to_string(self.dir().join("accounts.log")).unwrap_or_default(),
        );
        eprintln!(
            "samba: provisioned {} on {} in {:.1}s",
            REALM,
            self.ip,
            started.elapsed().as_secs_f64()
        );
        self.start();
    }

    /// Starts (or restarts) the KDC.
    pub fn start(&mut self) {
        use std::os::unix::process::CommandExt;
        // One KDC per domain: a running one is stopped first, never left behind.
        self.stop();
        let started = Instant::now();
        let log = std::fs::File::create(self.dir().join("samba.stdout")).unwrap();
        let child = Command::new("samba")
            .arg("-s")
            .arg(self.dir().join("etc/smb.conf"))
            .args(["-i", "-M", "single", "--debug-stdout"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap();
        self.child = Some(child);
        while TcpStream::connect_timeout(&self.kdc(), Duration::from_millis(200)).is_err() {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!(
                    "samba exited ({status}) before its KDC listened:\n{}",
                    std::fs::read_to_string(self.dir().join("samba.stdout")).unwrap_or_default()
                );
            }
            assert!(
                started.elapsed() < READY_LIMIT,
                "the KDC did not listen on {} within {READY_LIMIT:?}",
                self.kdc()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!(
            "samba: KDC listening on {} after {:.1}s",
            self.kdc(),
            started.elapsed().as_secs_f64()
        );
    }

    /// Stops the KDC (its process group) and waits until it no longer answers.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `samba-tool ARGS` against this domain (changes reach the running KDC at once).
    pub fn samba_tool(&self, args: &[&str]) {
        let out = Command::new("samba-tool")
            .args(args)
            .arg("-s")
            .arg(self.dir().join("etc/smb.conf"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "samba-tool {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// What Samba logged, for a failure message.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir().join("samba.stdout")).unwrap_or_default()
    }
}

impl Drop for SambaDc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// 127.0.0.N whose port 88 nobody holds, N from this process's id so concurrent test binaries
/// start apart.
fn free_loopback_address() -> Ipv4Addr {
    let start = std::process::id() as usize;
    for step in 0..200 {
        let n = 2 + (start + step * 7) % 250;
        let ip = Ipv4Addr::new(127, 0, 0, n as u8);
        if TcpListener::bind((ip, 88)).is_ok() {
            return ip;
        }
    }
    panic!("no loopback address 127.0.0.N has port 88 free");
}
