//! Log lines leave the process through a bounded queue and a thread of their own, so a log
//! pipe that nobody reads (a stalled container runtime, a full log disk) never blocks the
//! thread that logs. The kernel-notification thread logs every condition change, and it must
//! not be wedged by its own logs.
//!
//! When the queue is full a line is dropped and counted; before the next line written, a
//! line says how many were lost. At exit, [`Flush`] waits a bounded time for the queue to drain.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// Lines queued at most (a few MiB of text at worst).
pub const QUEUE_LINES: usize = 8192;
/// How long [`Flush`] waits at exit for the queued lines to be written.
pub const FLUSH_WAIT: Duration = Duration::from_secs(2);

/// The writer side: hand it to the fmt subscriber.
#[derive(Clone)]
pub struct Lines {
    tx: SyncSender<Vec<u8>>,
    dropped: Arc<AtomicU64>,
}

/// Dropped at exit: waits (bounded) until the thread wrote out every line queued before.
pub struct Flush {
    tx: SyncSender<Vec<u8>>,
    done: Receiver<()>,
}

impl Drop for Flush {
    fn drop(&mut self) {
        // The subscriber keeps its writer in the global dispatcher, so the queue never closes:
        // an empty line is the marker the thread answers once it got there.
        let deadline = std::time::Instant::now() + FLUSH_WAIT;
        loop {
            match self.tx.try_send(Vec::new()) {
                Ok(()) => break,
                Err(TrySendError::Full(_)) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => return,
            }
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let _ = self.done.recv_timeout(left);
    }
}

impl Lines {
    /// Start the writer thread over `sink`. Returns the writer and the exit guard.
    pub fn start<W: Write + Send + 'static>(
        sink: W,
        capacity: usize,
    ) -> std::io::Result<(Lines, Flush)> {
        let (tx, rx) = sync_channel::<Vec<u8>>(capacity.max(1));
        let (done_tx, done) = sync_channel::<()>(1);
        let dropped = Arc::new(AtomicU64::new(0));
        let lost = dropped.clone();
        std::thread::Builder::new()
            .name("rds-log".into())
            .spawn(move || {
                let mut sink = sink;
                for line in rx {
                    // Lines lost since the last one written are told before the next.
                    let n = lost.swap(0, Ordering::Relaxed);
                    if n > 0 {
                        let _ = writeln!(
                            sink,
                            "rds-csi-node: {n} log line(s) dropped: the log output was not read"
                        );
                    }
                    if line.is_empty() {
                        // The flush marker.
                        let _ = sink.flush();
                        let _ = done_tx.try_send(());
                        continue;
                    }
                    let _ = sink.write_all(&line);
                }
            })?;
        Ok((
            Lines {
                tx: tx.clone(),
                dropped,
            },
            Flush { tx, done },
        ))
    }

    fn send(&self, line: Vec<u8>) {
        match self.tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

/// One event's text, sent as one line when the formatter is done with it.
pub struct LineWriter<'a> {
    lines: &'a Lines,
    buf: Vec<u8>,
}

impl Write for LineWriter<'_> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter<'_> {
    fn drop(&mut self) {
        if !self.buf.is_empty() {
            self.lines.send(std::mem::take(&mut self.buf));
        }
    }
}

impl<'a> MakeWriter<'a> for Lines {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter {
            lines: self,
            buf: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A sink that holds every write until released, as a log pipe nobody reads.
    #[derive(Clone, Default)]
    struct HeldSink {
        gate: Arc<(Mutex<bool>, std::sync::Condvar)>,
        out: Arc<Mutex<Vec<u8>>>,
    }

    impl HeldSink {
        fn release(&self) {
            *self.gate.0.lock().unwrap() = true;
            self.gate.1.notify_all();
        }
        fn text(&self) -> String {
            String::from_utf8(self.out.lock().unwrap().clone()).unwrap()
        }
    }

    impl Write for HeldSink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            let (open, cv) = &*self.gate;
            let mut g = open.lock().unwrap();
            while !*g {
                g = cv.wait(g).unwrap();
            }
            self.out.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn log(lines: &Lines, text: &str) {
        let mut w = lines.make_writer();
        w.write_all(text.as_bytes()).unwrap();
    }

    #[test]
    fn a_log_output_nobody_reads_never_blocks_the_logger_and_the_loss_is_told() {
        let sink = HeldSink::default();
        let (lines, flush) = Lines::start(sink.clone(), 4).unwrap();
        // Far more lines than the queue holds, with the output held: none of these calls
        // may wait for it. They run on a thread of their own, so a logger that blocks fails
        // this test on a (generous) deadline instead of hanging it.
        let (logged, all_logged) = std::sync::mpsc::channel();
        let logger = lines.clone();
        std::thread::spawn(move || {
            for i in 0..100 {
                log(&logger, &format!("line {i}\n"));
            }
            let _ = logged.send(());
        });
        all_logged
            .recv_timeout(Duration::from_secs(60))
            .expect("logging never waits for a held output");
        sink.release();
        drop(flush);
        let text = sink.text();
        assert_eq!(
            text.lines().find(|l| l.starts_with("line ")),
            Some("line 0"),
            "the first lines are kept: {text}"
        );
        assert!(
            text.contains("log line(s) dropped: the log output was not read"),
            "the loss is told: {text}"
        );
        assert!(
            text.lines().count() < 100,
            "lines were dropped, not queued without end"
        );
    }

    #[test]
    fn every_line_logged_before_exit_is_written_by_the_flush() {
        let sink = HeldSink::default();
        sink.release();
        let (lines, flush) = Lines::start(sink.clone(), QUEUE_LINES).unwrap();
        for i in 0..1000 {
            log(&lines, &format!("line {i}\n"));
        }
        drop(flush);
        let text = sink.text();
        assert_eq!(text.lines().count(), 1000, "all lines written");
        assert!(text.ends_with("line 999\n"));
    }
}
