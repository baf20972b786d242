//! Background work beside the sessions: one registry that starts it, at the priority it
//! should have, trims the heap after it, and stops it in order at shutdown. `dbtape serve`
//! runs the uploader, the admin listener and the indexer through it (and the event lake's
//! writer will be one more periodic job).

pub mod heap_trim;
mod priority;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

pub use priority::lower_this_threads_priority;

/// How often a periodic job's thread looks at its stop flag between passes.
const STOP_POLL: Duration = Duration::from_millis(100);

/// What a periodic job's pass did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// Nothing to do.
    Idle,
    /// It worked: the freed working set is given back to the system after it.
    Worked,
}

struct PeriodicJob {
    name: &'static str,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

/// The background jobs of one process.
pub struct BackgroundTasks {
    cancel: CancellationToken,
    tasks: Vec<(&'static str, tokio::task::JoinHandle<()>)>,
    periodic: Vec<PeriodicJob>,
}

impl Default for BackgroundTasks {
    fn default() -> Self {
        Self::new()
    }
}

impl BackgroundTasks {
    pub fn new() -> Self {
        BackgroundTasks { cancel: CancellationToken::new(), tasks: Vec::new(), periodic: Vec::new() }
    }

    /// An async job on the current runtime. It gets the token that says shutdown has begun,
    /// and should make its last pass then and return.
    pub fn spawn_async<F>(&mut self, name: &'static str, job: impl FnOnce(CancellationToken) -> F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.tasks.push((name, tokio::spawn(job(self.cancel.clone()))));
    }

    /// A blocking job on its own low-priority thread: `pass` runs at once, then every
    /// `every`, and once more at shutdown so that what the last sessions left is taken along.
    pub fn spawn_periodic(
        &mut self,
        name: &'static str,
        every: Duration,
        mut pass: impl FnMut() -> Pass + Send + 'static,
    ) -> std::io::Result<()> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new().name(format!("dbtape-{name}")).spawn(move || {
            lower_this_threads_priority();
            let run = |pass: &mut dyn FnMut() -> Pass| {
                if pass() == Pass::Worked {
                    // A pass leaves megabytes of freed state in this thread's heap arena;
                    // give it back rather than hold it until the next.
                    heap_trim::trim();
                }
            };
            let mut next = Instant::now();
            while !flag.load(Ordering::Acquire) {
                if Instant::now() >= next {
                    run(&mut pass);
                    next = Instant::now() + every;
                }
                std::thread::sleep(STOP_POLL.min(every));
            }
            run(&mut pass);
        })?;
        self.periodic.push(PeriodicJob { name, stop, thread });
        Ok(())
    }

    /// Tells every job to stop and waits for each one's last pass, in the order they were
    /// started.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        for job in &self.periodic {
            job.stop.store(true, Ordering::Release);
        }
        for job in self.periodic {
            let name = job.name;
            if !matches!(tokio::task::spawn_blocking(move || job.thread.join()).await, Ok(Ok(()))) {
                tracing::error!(job = name, "a background job ended with a panic");
            }
        }
        for (name, task) in self.tasks {
            if task.await.is_err() {
                tracing::error!(job = name, "a background task ended with a panic");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[tokio::test]
    async fn periodic_jobs_pass_at_once_and_once_more_at_shutdown() {
        let passes = Arc::new(AtomicUsize::new(0));
        let counted = passes.clone();
        let mut tasks = BackgroundTasks::new();
        tasks
            .spawn_periodic("test", Duration::from_secs(3600), move || {
                counted.fetch_add(1, Ordering::SeqCst);
                Pass::Idle
            })
            .unwrap();
        let ended = Arc::new(AtomicBool::new(false));
        let flag = ended.clone();
        tasks.spawn_async("waiter", |cancel| async move {
            cancel.cancelled().await;
            flag.store(true, Ordering::SeqCst);
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while passes.load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tasks.shutdown().await;
        assert_eq!(passes.load(Ordering::SeqCst), 2, "one pass at start, one at shutdown, none between");
        assert!(ended.load(Ordering::SeqCst));
    }
}
