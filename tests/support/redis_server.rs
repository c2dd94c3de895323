//! A real `redis-server` (Debian's package) on a loopback port of its own, with a temporary
//! directory, no persistence, never the system service. Killed when dropped; [`RedisServer::
//! kill`] and [`RedisServer::restart`] take it down and bring it back on the same port (the
//! port stays reserved meanwhile, refusing connections as a dead server's would).

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::ports::ReservedPort;
use super::wait::wait_until;

pub struct RedisServer {
    child: Option<Child>,
    port: ReservedPort,
    dir: tempfile::TempDir,
    extra: Vec<String>,
    /// TLS only (`--port 0 --tls-port …`): the PEM files of its certificate, key and CA.
    tls: Option<RedisTls>,
    /// A Sentinel watching the master on this port as `mymaster`.
    sentinel_of: Option<u16>,
}

/// The files `redis-server --tls-port` needs.
#[derive(Clone)]
pub struct RedisTls {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    pub ca: std::path::PathBuf,
}

impl RedisServer {
    /// Starts `redis-server` with `extra` arguments and waits until it answers PING.
    pub async fn start(extra: &[&str]) -> RedisServer {
        RedisServer::start_with(extra, None).await
    }

    /// A server that speaks TLS only, with `tls`'s certificate (clients need no certificate).
    pub async fn start_tls(extra: &[&str], tls: RedisTls) -> RedisServer {
        RedisServer::start_with(extra, Some(tls)).await
    }

    /// A Sentinel watching the master at `master` as `mymaster` (quorum 1, down after one
    /// second).
    pub async fn start_sentinel(master: SocketAddr) -> RedisServer {
        let mut server = RedisServer {
            child: None,
            port: ReservedPort::new(),
            dir: tempfile::tempdir().expect("a temporary directory for redis-server"),
            extra: Vec::new(),
            tls: None,
            sentinel_of: Some(master.port()),
        };
        server.launch().await;
        server
    }

    async fn start_with(extra: &[&str], tls: Option<RedisTls>) -> RedisServer {
        let mut server = RedisServer {
            child: None,
            port: ReservedPort::new(),
            dir: tempfile::tempdir().expect("a temporary directory for redis-server"),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            tls,
            sentinel_of: None,
        };
        server.launch().await;
        server
    }

    pub fn addr(&self) -> SocketAddr {
        self.port.addr()
    }

    pub fn url(&self) -> String {
        format!("redis://{}", self.addr())
    }

    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    async fn launch(&mut self) {
        let mut command = Command::new("redis-server");
        if let Some(master) = self.sentinel_of {
            // Sentinel rewrites its configuration file: one of its own, in its directory.
            let conf = self.dir.path().join("sentinel.conf");
            std::fs::write(
                &conf,
                format!(
                    "sentinel monitor mymaster 127.0.0.1 {master} 1\nsentinel down-after-milliseconds mymaster 1000\nsentinel failover-timeout mymaster 5000\n"
                ),
            )
            .expect("sentinel.conf");
            command.arg(&conf).arg("--sentinel");
        }
        match &self.tls {
            None => command.arg("--port").arg(self.port.port().to_string()),
            Some(tls) => command
                .args(["--port", "0", "--tls-port"])
                .arg(self.port.port().to_string())
                .arg("--tls-cert-file")
                .arg(&tls.cert)
                .arg("--tls-key-file")
                .arg(&tls.key)
                .arg("--tls-ca-cert-file")
                .arg(&tls.ca)
                .args(["--tls-auth-clients", "no"]),
        };
        let child = command
            .args(["--bind", "127.0.0.1"])
            .args(if self.sentinel_of.is_some() {
                &[][..]
            } else {
                &["--save", "", "--appendonly", "no"][..]
            })
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(self.dir.path().join("redis.log"))
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (Debian package redis-server) must be installed");
        self.child = Some(child);
        let addr = self.addr();
        let tls = self.tls.is_some();
        let up = wait_until(Duration::from_secs(10), || async move {
            if tls {
                // Listening is enough: the gateway's own TLS handshake is what is tested.
                tokio::net::TcpStream::connect(addr).await.is_ok()
            } else {
                ping(addr).await
            }
        })
        .await;
        if !up {
            let log =
                std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default();
            panic!("redis-server did not answer on {addr}:\n{log}");
        }
    }

    /// Sends one inline command (plain TCP, no password) and returns what the server answered
    /// in its first reply packet, e.g. `INFO replication`.
    pub async fn command(&self, line: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(self.addr())
            .await
            .expect("connect to redis-server");
        stream
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .expect("send to redis-server");
        let mut buf = vec![0u8; 16 * 1024];
        let n = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or(0);
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    /// The running server's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Kills the server at once (SIGKILL: no goodbye to its clients).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, empty (nothing was saved).
    pub async fn restart(&mut self) {
        self.kill();
        self.launch().await;
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether a Redis server answers `PING` on `addr` (a server with `requirepass` answers
/// `-NOAUTH`, which counts: it is up).
async fn ping(addr: SocketAddr) -> bool {
    let Ok(Ok(mut stream)) =
        tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr)).await
    else {
        return false;
    };
    if stream.write_all(b"PING\r\n").await.is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await,
        Ok(Ok(n)) if n > 0 && (buf.starts_with(b"+PONG") || buf.starts_with(b"-NOAUTH"))
    )
}
