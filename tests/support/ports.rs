//! Loopback ports for listeners that something other than the test binds: the gateway binary
//! (which binds the addresses of its configuration file), a fake server brought back on the
//! address it had, the test provider restarted after an outage.
//!
//! Binding port 0, reading the number and closing the socket leaves the port free for anyone
//! until the intended listener binds it: another test's listener or an outgoing connection may
//! take it first. Instead the port stays *reserved*: a socket bound to it with `SO_REUSEADDR`
//! (and `SO_REUSEPORT`) that never listens. Linux gives a port bound that way to no other
//! `bind(…:0)` and to no outgoing connection, yet lets a listener that sets `SO_REUSEADDR` — as
//! the gateway, tokio and std all do — bind the same address and take every connection to it.
//! Until one does, connections to the port are refused, as to a closed one.

use std::net::SocketAddr;
use std::sync::Mutex;

use tokio::net::TcpSocket;

/// A loopback port held for a listener that someone else binds.
pub struct ReservedPort {
    // Bound, never listening: it holds the port and accepts nothing.
    _socket: TcpSocket,
    addr: SocketAddr,
}

impl ReservedPort {
    /// A fresh port on 127.0.0.1.
    pub fn new() -> ReservedPort {
        ReservedPort::hold(([127, 0, 0, 1], 0).into())
            .unwrap_or_else(|e| panic!("cannot reserve a loopback port: {e}"))
    }

    /// Holds `addr`, the address of a server that went away and is to come back on it. Fails
    /// when something else has taken the port since.
    pub fn hold(addr: SocketAddr) -> std::io::Result<ReservedPort> {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.set_reuseport(true)?;
        socket.bind(addr)?;
        let addr = socket.local_addr()?;
        Ok(ReservedPort {
            _socket: socket,
            addr,
        })
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Reservations made by [`free_port`], held until the test process ends.
static KEPT: Mutex<Vec<ReservedPort>> = Mutex::new(Vec::new());

/// A port on 127.0.0.1 for a listener bound from a configuration (the gateway binary's). It
/// stays reserved for the rest of the test process (see the module documentation), so nothing
/// else is handed it before that listener binds it. For the gateway binary prefer
/// `GatewayProcess::start`, which also retries with new ports should a listener fail to bind.
pub fn free_port() -> u16 {
    let reserved = ReservedPort::new();
    let port = reserved.port();
    KEPT.lock().unwrap().push(reserved);
    port
}
