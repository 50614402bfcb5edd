//! The threads that run the query routes' store reads (state by key,
//! latest): a few, fed in order from one queue.
//!
//! fjall is synchronous, so reads stay off the async runtime's workers. A
//! read takes microseconds; through `spawn_blocking` every request under
//! load could start a thread of its own (the runtime grew past a hundred of
//! them at 20,000 requests/s), and on a small machine they only fought for
//! the cores. Here at most `threads` reads run at once and the rest wait
//! their turn; when even the queue is full, a read goes to the runtime's
//! blocking pool as before, so nothing is refused.

type Job = Box<dyn FnOnce() + Send>;

/// The read pool; cheap to share.
pub struct Reads {
    jobs: flume::Sender<Job>,
}

/// Reads waiting for a thread before the blocking pool takes the overflow.
const QUEUE: usize = 4096;

impl Reads {
    /// Starts `threads` reader threads (they end when the pool is dropped).
    ///
    /// # Errors
    /// When a thread cannot be spawned.
    pub fn start(threads: usize) -> std::io::Result<Self> {
        let (jobs, queue) = flume::bounded::<Job>(QUEUE);
        for i in 0..threads.max(1) {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("eddy-reads-{i}"))
                .spawn(move || {
                    while let Ok(job) = queue.recv() {
                        // A panicking read fails its request (its answer is
                        // dropped), never the thread.
                        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                    }
                })?;
        }
        Ok(Reads { jobs })
    }

    /// Runs `f` on a reader thread; `None` if it panicked.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
        });
        if let Err(flume::TrySendError::Full(job) | flume::TrySendError::Disconnected(job)) =
            self.jobs.try_send(job)
        {
            tokio::task::spawn_blocking(job).await.ok()?;
        }
        rx.await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::Reads;

    #[tokio::test]
    async fn reads_run_in_order_of_arrival_and_survive_a_panic() {
        let reads = Reads::start(1).expect("threads start");
        assert_eq!(reads.run(|| 1 + 1).await, Some(2));
        assert_eq!(reads.run(|| -> u32 { panic!("a read failed") }).await, None);
        let name = reads
            .run(|| std::thread::current().name().map(str::to_owned))
            .await;
        assert_eq!(name, Some(Some("eddy-reads-0".to_owned())));
    }
}
