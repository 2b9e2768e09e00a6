//! What stops a run early, and how a stalled run speaks up. Every part a send depends on
//! (the ledger writer thread, the workers) raises its failure on the run's [`Fault`]; the
//! dispatcher waits on nothing without also watching it and the stop signal. A
//! [`watchdog`] logs what the run is waiting for whenever nothing has progressed for a
//! while, so a send never sits silent.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tracing::warn;

/// The first failure of a part the run depends on.
#[derive(Clone)]
pub(super) struct Fault(Arc<watch::Sender<Option<String>>>);

impl Fault {
    pub(super) fn new() -> Self {
        Fault(Arc::new(watch::channel(None).0))
    }

    /// Records `why`, unless an earlier failure was recorded.
    pub(super) fn raise(&self, why: String) {
        self.0.send_if_modified(|slot| {
            if slot.is_none() {
                *slot = Some(why);
                true
            } else {
                false
            }
        });
    }

    pub(super) fn get(&self) -> Option<String> {
        self.0.borrow().clone()
    }

    /// Resolves with the failure once one is raised.
    pub(super) async fn raised(&self) -> String {
        let mut rx = self.0.subscribe();
        loop {
            if let Some(why) = rx.borrow_and_update().clone() {
                return why;
            }
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

/// Raises a fault if dropped while armed: a thread or task that panics (or returns by a
/// path that forgot to report) still tells the run.
pub(super) struct Sentinel {
    fault: Fault,
    what: &'static str,
    armed: bool,
}

impl Sentinel {
    pub(super) fn new(fault: Fault, what: &'static str) -> Self {
        Sentinel {
            fault,
            what,
            armed: true,
        }
    }

    pub(super) fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        if self.armed {
            self.fault.raise(self.what.to_owned());
        }
    }
}

/// Why the dispatcher stopped waiting.
#[derive(Debug)]
pub(super) enum Halt {
    /// A stop was requested (SIGINT/SIGTERM).
    Stop,
    /// A part the run depends on failed.
    Fault(String),
}

/// Resolves when `rx` says stop; never, if its sender is gone.
pub(super) async fn stop_requested(rx: &mut watch::Receiver<bool>) {
    loop {
        if *rx.borrow() {
            return;
        }
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Runs `f` unless a stop is requested or a fault raised first.
pub(super) async fn guarded<T>(
    stop: &mut watch::Receiver<bool>,
    fault: &Fault,
    f: impl std::future::Future<Output = T>,
) -> Result<T, Halt> {
    tokio::select! {
        biased;
        _ = stop_requested(stop) => Err(Halt::Stop),
        why = fault.raised() => Err(Halt::Fault(why)),
        out = f => Ok(out),
    }
}

/// Runs `f` unless a fault is raised first (a stop request waits for it: finishing what
/// is in flight is part of stopping).
pub(super) async fn unless_failed<T>(
    fault: &Fault,
    f: impl std::future::Future<Output = T>,
) -> Result<T, Halt> {
    tokio::select! {
        biased;
        why = fault.raised() => Err(Halt::Fault(why)),
        out = f => Ok(out),
    }
}

/// A run's heartbeat: every finished attempt (and every dispatched one) beats it, and the
/// dispatcher says what it is waiting for.
pub(super) struct Progress {
    beats: AtomicU64,
    waiting_for: Mutex<String>,
}

impl Progress {
    pub(super) fn new(waiting_for: &str) -> Self {
        Progress {
            beats: AtomicU64::new(0),
            waiting_for: Mutex::new(waiting_for.to_owned()),
        }
    }

    pub(super) fn beat(&self) {
        self.beats.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn waiting_for(&self, what: impl Into<String>) {
        *self.waiting_for.lock().expect("progress lock") = what.into();
    }

    fn beats(&self) -> u64 {
        self.beats.load(Ordering::Relaxed)
    }

    fn what(&self) -> String {
        self.waiting_for.lock().expect("progress lock").clone()
    }
}

/// Logs a warning each `quiet` that passes without progress, saying what the run waits for
/// and how many exchanges are in flight (`in_flight`). Runs until aborted.
pub(super) async fn watchdog(
    progress: Arc<Progress>,
    quiet: Duration,
    in_flight: impl Fn() -> usize,
) {
    let mut last = progress.beats();
    loop {
        tokio::time::sleep(quiet).await;
        let now = progress.beats();
        if now == last {
            warn!(
                quiet = %humantime::format_duration(quiet),
                in_flight = in_flight(),
                "no delivery progress: waiting for {}",
                progress.what()
            );
        }
        last = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_first_fault_wins_and_wakes_the_waiters() {
        let fault = Fault::new();
        let waiter = {
            let fault = fault.clone();
            tokio::spawn(async move { fault.raised().await })
        };
        fault.raise("the disk is full".into());
        fault.raise("and then something else".into());
        assert_eq!(waiter.await.unwrap(), "the disk is full");
    }

    #[tokio::test]
    async fn a_panicking_task_raises_through_its_sentinel() {
        let fault = Fault::new();
        let task = {
            let fault = fault.clone();
            tokio::spawn(async move {
                let _sentinel = Sentinel::new(fault, "a delivery worker stopped unexpectedly");
                panic!("boom");
            })
        };
        assert!(task.await.is_err());
        assert_eq!(
            fault.get().as_deref(),
            Some("a delivery worker stopped unexpectedly")
        );
        let (_tx, mut stop) = watch::channel(false);
        let r = guarded(&mut stop, &fault, std::future::pending::<()>()).await;
        assert!(matches!(r, Err(Halt::Fault(_))));
    }
}
