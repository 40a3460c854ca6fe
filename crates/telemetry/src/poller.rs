//! A background poll on its own thread: the remote sampler's strategies and the agent's
//! baggage restrictions are both fetched now and then every interval, off the request path.

use std::time::Duration;

/// A thread running a poll every interval until stopped (or dropped).
#[derive(Debug)]
pub(crate) struct Poller {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Poller {
    /// Runs `poll` at once, then `interval` after each poll ends, on a thread named `name` with
    /// its own single-threaded runtime (so it works whatever runtime the application uses).
    /// The thread is marked as an export thread: nothing it does is traced.
    pub(crate) fn start<F>(name: &str, interval: Duration, mut poll: F) -> Result<Poller, String>
    where
        F: AsyncFnMut() + Send + 'static,
    {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("{name} runtime: {e}"))?;
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                crate::export::queue::mark_export_thread();
                runtime.block_on(async move {
                    loop {
                        tokio::select! {
                            () = poll() => {}
                            _ = &mut stop_rx => return,
                        }
                        tokio::select! {
                            () = tokio::time::sleep(interval) => {}
                            _ = &mut stop_rx => return,
                        }
                    }
                });
            })
            .map_err(|e| format!("{name} thread: {e}"))?;
        Ok(Poller {
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// Stops polling at once (a poll in flight is abandoned) and joins the thread.
    pub(crate) fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.stop();
    }
}
