//! Waiting for something to happen by looking at it again until a deadline, never by sleeping
//! for a guessed time: a fast machine goes on at once, a loaded one gets the whole limit.
//!
//! The deadlines are wall-clock time: what is awaited is a real socket, thread or process.

use std::future::Future;
use std::time::{Duration, Instant};

/// How long to wait before looking at a condition again.
const POLL_EVERY: Duration = Duration::from_millis(20);

/// Polls `condition` until it holds or `limit` has passed; whether it held. The condition is
/// looked at once more when the limit has passed.
pub async fn wait_until<F, Fut>(limit: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_for(limit, || {
        let holds = condition();
        async move { holds.await.then_some(()) }
    })
    .await
    .is_some()
}

/// Polls `attempt` until it gives a value or `limit` has passed.
pub async fn wait_for<T, F, Fut>(limit: Duration, mut attempt: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = attempt().await {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// Whether nothing listens on `addr` any more: a connection to it is refused.
pub async fn connection_refused(addr: std::net::SocketAddr) -> bool {
    matches!(
        tokio::net::TcpStream::connect(addr).await,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
    )
}
