//! The async runtime and the stop signal, set up in one place for `send`, `issues retry`,
//! `run` and `serve`.

use std::future::Future;

use anyhow::Context;
use tokio::sync::watch;

/// The async workers for sending an issue: one when messages are not signed (one thread
/// keeps the SMTP sessions busy and is measurably faster than two on a small machine: fewer
/// cross-thread wake-ups, more CPU left to the mail server), one per core when DKIM is on,
/// because the workers then also sign (docs/performance-dkim.md).
pub fn send_workers(config: &crate::config::Config) -> Option<usize> {
    if config.dkim.is_some() {
        None
    } else {
        Some(1)
    }
}

/// Takes the configured CPU priority (`nice`) in a process that is about to send, before its
/// runtime starts: Linux keeps a nice value per thread and threads inherit it from the one
/// that starts them, so the async workers, the ledger writer and the blocking pool all run
/// at it. A signed send keeps every core busy signing; at a lower priority it yields to the
/// mail server and the web server on the same machine instead of sharing the cores with
/// them evenly, which also makes the send itself faster when its relay is local
/// (docs/performance-dkim.md). A process started at a lower priority stays there.
pub fn lower_priority(config: &crate::config::Config) {
    if config.nice == 0 {
        return;
    }
    #[cfg(unix)]
    {
        use rustix::process::{getpriority_process, setpriority_process};
        if getpriority_process(None).is_ok_and(|now| now >= config.nice) {
            return;
        }
        match setpriority_process(None, config.nice) {
            Ok(()) => tracing::debug!(nice = config.nice, "CPU priority lowered"),
            Err(e) => {
                tracing::warn!(nice = config.nice, error = %e, "cannot lower the CPU priority")
            }
        }
    }
}

/// Runs `f` on a fresh runtime with a stop flag that turns true on SIGINT or SIGTERM.
/// `worker_threads: None` is one per core (see [`send_workers`] for a send).
pub fn block_on_until_signal<F, Fut, T>(worker_threads: Option<usize>, f: F) -> anyhow::Result<T>
where
    F: FnOnce(watch::Receiver<bool>) -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = worker_threads {
        builder.worker_threads(n);
    }
    let runtime = builder
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let (tx, rx) = watch::channel(false);
        tokio::spawn(async move {
            shutdown_signal().await;
            tracing::warn!("stopping: finishing the messages in flight");
            let _ = tx.send(true);
        });
        f(rx).await
    })
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// Resolves once `rx` turns true (or its sender is gone).
pub async fn stopped(mut rx: watch::Receiver<bool>) {
    while !*rx.borrow() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}
