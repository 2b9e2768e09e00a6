//! Threads that build and sign messages, one per core, so DKIM signing runs in parallel on
//! every core without ever blocking the SMTP sessions' async workers, and without the
//! hundreds of threads a general blocking pool would start under sixteen sessions.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tokio::sync::oneshot;

type Job = Box<dyn FnOnce() + Send>;

pub struct BuildPool {
    jobs: Option<mpsc::Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
}

impl BuildPool {
    /// A pool with one thread per core the process may use.
    pub fn per_core() -> std::io::Result<BuildPool> {
        let n = std::thread::available_parallelism().map_or(1, usize::from);
        BuildPool::new(n)
    }

    pub fn new(threads: usize) -> std::io::Result<BuildPool> {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let threads = (0..threads.max(1))
            .map(|i| {
                let rx = rx.clone();
                std::thread::Builder::new()
                    .name(format!("build-{i}"))
                    .spawn(move || loop {
                        let job = rx.lock().expect("build queue lock").recv();
                        match job {
                            // A panicking job drops its reply channel; the thread lives on.
                            Ok(job) => {
                                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                            }
                            Err(_) => return,
                        }
                    })
            })
            .collect::<std::io::Result<_>>()?;
        Ok(BuildPool {
            jobs: Some(tx),
            threads,
        })
    }

    /// Runs `f` on a pool thread; `None` if it panicked.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
        });
        self.jobs.as_ref()?.send(job).ok()?;
        rx.await.ok()
    }
}

impl Drop for BuildPool {
    fn drop(&mut self) {
        self.jobs.take();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_jobs_and_survives_a_panicking_one() {
        let pool = BuildPool::new(1).unwrap();
        assert_eq!(pool.run(|| 2 + 2).await, Some(4));
        assert_eq!(pool.run(|| -> u8 { panic!("boom") }).await, None);
        assert_eq!(pool.run(|| 3 * 3).await, Some(9));
    }
}
