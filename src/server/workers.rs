//! Connection workers. Each worker is one thread running a single-threaded runtime, and a
//! connection stays on the worker that took it from accept to close.
//!
//! Why not tokio's work-stealing pool: a proxy session is a chain of short wake-ups (read,
//! record, write) and stealing hands them between threads, which costs futex calls and
//! context switches on every hop. Pinned connections keep each session's wake-ups on one
//! thread, the way pgbouncer (one thread) and nginx (one loop per worker) do; spreading
//! sessions over several workers still uses several cores.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

use crate::tasks::heap_trim::Churn;

struct Worker {
    handle: Handle,
    /// Connections this worker is serving now, to send new ones to the least busy.
    active: Arc<AtomicUsize>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

pub struct WorkerPool {
    workers: Vec<Worker>,
    churn: Churn,
}

/// Decrements a worker's count when its connection ends, however it ends.
struct ActiveGuard(Arc<AtomicUsize>, Churn);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
        self.1.note();
    }
}

impl WorkerPool {
    /// Starts `count` workers (at least one).
    pub fn start(count: usize) -> std::io::Result<WorkerPool> {
        let mut workers = Vec::new();
        for index in 0..count.max(1) {
            // I/O and timers only: no session waits on a signal or a child process, and with
            // those drivers on, every turn of the worker's driver also reaped child processes.
            let runtime = tokio::runtime::Builder::new_current_thread().enable_io().enable_time().build()?;
            let handle = runtime.handle().clone();
            let (stop, stopped) = oneshot::channel::<()>();
            let thread = std::thread::Builder::new().name(format!("dbtape-worker-{index}")).spawn(move || {
                runtime.block_on(async {
                    let _ = stopped.await;
                });
                // Sessions still here were given their grace period by the server already.
                runtime.shutdown_timeout(Duration::from_secs(1));
            })?;
            workers.push(Worker { handle, active: Arc::new(AtomicUsize::new(0)), stop: Some(stop), thread: Some(thread) });
        }
        Ok(WorkerPool { workers, churn: Churn::default() })
    }

    /// Counts connections starting and ending on these workers.
    pub fn churn(&self) -> Churn {
        self.churn.clone()
    }

    pub fn len(&self) -> usize {
        self.workers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    /// Runs a connection's future on the least busy worker. The future is built on that
    /// worker, so sockets it makes register with that worker's reactor.
    pub fn spawn<F, Fut>(&self, make: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let Some(worker) = self.workers.iter().min_by_key(|w| w.active.load(Ordering::Relaxed)) else {
            return;
        };
        worker.active.fetch_add(1, Ordering::Relaxed);
        self.churn.note();
        let guard = ActiveGuard(worker.active.clone(), self.churn.clone());
        // Detached: the server tracks the connection through the future itself. The
        // connection's future is boxed on the worker, so the task allocated here, on the
        // accepting thread, holds only `make` (224 bytes). A task holding the whole future
        // was 1.8 KiB, which glibc serves from its slow path on one thread and frees on
        // another at every new connection (BENCHMARKS.md, eighth cut).
        drop(worker.handle.spawn(async move {
            let _guard = guard;
            Box::pin(make()).await;
        }));
    }

    /// Stops every worker and waits for its thread, dropping whatever is still running.
    pub fn stop(mut self) {
        for worker in &mut self.workers {
            if let Some(stop) = worker.stop.take() {
                let _ = stop.send(());
            }
        }
        for worker in &mut self.workers {
            if let Some(thread) = worker.thread.take() {
                let _ = thread.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_spread_over_workers_and_stay_on_one() {
        let pool = WorkerPool::start(3).unwrap_or_else(|e| panic!("{e}"));
        let (tx, rx) = std::sync::mpsc::channel();
        for _ in 0..6 {
            let tx = tx.clone();
            pool.spawn(move || async move {
                let before = std::thread::current().name().map(str::to_string);
                // Still counted as active while it waits, so the next ones go elsewhere.
                tokio::time::sleep(Duration::from_millis(200)).await;
                let after = std::thread::current().name().map(str::to_string);
                let _ = tx.send((before, after));
            });
        }
        drop(tx);
        let seen: Vec<_> = rx.iter().collect();
        assert_eq!(seen.len(), 6);
        assert!(seen.iter().all(|(before, after)| before == after), "a connection moved threads: {seen:?}");
        let mut names: Vec<_> = seen.into_iter().filter_map(|(name, _)| name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names, ["dbtape-worker-0", "dbtape-worker-1", "dbtape-worker-2"]);
        // Each connection counted once as it started and once as it ended, for the heap trimmer.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while pool.churn().count() < 12 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(pool.churn().count(), 12);
        pool.stop();
    }
}
