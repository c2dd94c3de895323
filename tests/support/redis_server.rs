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
}

impl RedisServer {
    /// Starts `redis-server` with `extra` arguments and waits until it answers PING.
    pub async fn start(extra: &[&str]) -> RedisServer {
        let mut server = RedisServer {
            child: None,
            port: ReservedPort::new(),
            dir: tempfile::tempdir().expect("a temporary directory for redis-server"),
            extra: extra.iter().map(|s| s.to_string()).collect(),
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
        let child = Command::new("redis-server")
            .arg("--port")
            .arg(self.port.port().to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (Debian package redis-server) must be installed");
        self.child = Some(child);
        let addr = self.addr();
        let up = wait_until(Duration::from_secs(10), || async move { ping(addr).await }).await;
        assert!(up, "redis-server did not answer on {addr}");
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
