//! The worker threads of [`super::Gateway::start_workers`]: each has a single-threaded tokio
//! runtime of its own and serves the connections it accepts from accept to close, so that a
//! request never moves between cores and what it writes (counters, its snapshot handle, the
//! access log batch) is that worker's own.

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::listener::Serve;
use super::{listener_for_worker, Public, StartError, StartProblem};

/// A worker's listeners: std sockets, registered with its runtime once it runs.
pub(super) type WorkerListeners = Vec<(std::net::TcpListener, Option<TlsAcceptor>)>;

/// Each of `workers` workers' copy of every public listener (worker 0 gets the original).
pub(super) fn worker_listeners(
    public: Vec<Public>,
    workers: usize,
) -> Result<Vec<WorkerListeners>, StartError> {
    let mut per_worker: Vec<WorkerListeners> = (0..workers).map(|_| Vec::new()).collect();
    for (listener, tls) in public {
        let listener = listener
            .into_std()
            .map_err(|error| StartProblem::Worker { index: 0, error })?;
        for (index, listeners) in per_worker.iter_mut().enumerate().skip(1) {
            let copy = listener_for_worker(&listener)
                .map_err(|error| StartProblem::Worker { index, error })?;
            listeners.push((copy, tls.clone()));
        }
        per_worker[0].push((listener, tls));
    }
    Ok(per_worker)
}

/// Starts worker `index` on a thread of its own; the receiver completes when the thread has
/// stopped (after `stopped`, its runtime and every connection on it dropped, its access lines
/// handed to the log writer).
pub(super) fn spawn_worker(
    index: usize,
    listeners: WorkerListeners,
    serve: &Serve,
    stopped: CancellationToken,
) -> Result<oneshot::Receiver<()>, StartError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| StartProblem::Worker { index, error })?;
    let serve = serve.clone();
    let (exited, on_exit) = oneshot::channel();
    std::thread::Builder::new()
        .name(format!("mfagw-worker-{index}"))
        .spawn(move || {
            crate::worker::enter(index);
            crate::observe::access::buffer_on_this_thread();
            runtime.block_on(async {
                for (listener, tls) in listeners {
                    match TcpListener::from_std(listener) {
                        Ok(listener) => serve.accept(listener, tls),
                        Err(e) => {
                            tracing::error!(worker = index, error = %e, "cannot use a listener")
                        }
                    }
                }
                stopped.cancelled().await;
            });
            drop(runtime);
            crate::observe::access::flush_this_thread();
            let _ = exited.send(());
        })
        .map_err(|error| StartProblem::Worker { index, error })?;
    Ok(on_exit)
}
