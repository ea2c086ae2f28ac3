//! [`Outbox`]: the bytes bound for one socket, and the thread that writes them.
//!
//! Whoever produces bytes for a peer (the switch, under its one lock; an endpoint's caller,
//! within a barrier's timeout) must never wait on that peer reading them. A push first
//! tries a non-blocking send, which is all it takes while the peer keeps up (no thread hop
//! on the fast path); what the socket does not take is queued for a writer thread of the
//! connection's own, which does the blocking writes. The queue is bounded in bytes, and
//! what a full queue means is the producer's call ([`WhenFull`]).

use std::collections::VecDeque;
use std::io;
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What [`Outbox::push`] does with bytes that would take the queue over its bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WhenFull {
    /// Refuse them with [`OutboxError::Full`]: the switch drops a member that does not read
    /// rather than hold its events without end.
    Refuse,
    /// Wait for room: an endpoint's sends are held back by a switch that reads slowly.
    Wait,
    /// Queue them anyway: small control frames (entering a barrier) that must not wait.
    Exceed,
}

/// Why bytes were not queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum OutboxError {
    /// The peer has not read what is queued and the bytes would exceed the bound.
    #[error("{queued} bytes already wait for the peer (bound {limit})")]
    Full { queued: usize, limit: usize },
    /// The connection was closed or failed.
    #[error("the connection is closed")]
    Closed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Open,
    /// No more pushes; the writer writes what is queued, then shuts the socket down.
    Draining,
    Stopped,
}

struct Queue {
    bufs: VecDeque<Vec<u8>>,
    /// Bytes queued or taken by the writer and not yet written.
    bytes: usize,
    /// The writer holds a batch it is writing: a push must queue behind it.
    writing: bool,
    phase: Phase,
}

struct Shared {
    queue: Mutex<Queue>,
    cv: Condvar,
    stream: UnixStream,
    limit: usize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Discards the backlog and stops the writer; with `shutdown`, also ends the
    /// connection both ways (which wakes a writer blocked on a peer that does not read).
    fn stop(&self, shutdown: bool) {
        let mut q = self.lock();
        q.phase = Phase::Stopped;
        q.bufs.clear();
        q.bytes = 0;
        drop(q);
        if shutdown {
            let _ = self.stream.shutdown(Shutdown::Both);
        }
        self.cv.notify_all();
    }
}

/// One connection's outgoing side. Dropping it stops its writer and discards the backlog
/// but leaves the socket open (the owner may still write a last frame itself, as the
/// switch does to refuse an attachment); a closed one ([`Outbox::close`]) is left to
/// drain.
pub(crate) struct Outbox {
    shared: Arc<Shared>,
    writer: Option<JoinHandle<()>>,
}

impl Outbox {
    /// Starts the writer thread `name` for `stream`, whose queue holds up to `limit` bytes.
    pub(crate) fn start(stream: UnixStream, limit: usize, name: String) -> io::Result<Outbox> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                bufs: VecDeque::new(),
                bytes: 0,
                writing: false,
                phase: Phase::Open,
            }),
            cv: Condvar::new(),
            stream,
            limit,
        });
        let s = shared.clone();
        let writer = std::thread::Builder::new()
            .name(name)
            .spawn(move || write_loop(&s))?;
        Ok(Outbox {
            shared,
            writer: Some(writer),
        })
    }

    /// Sends `buf` after everything pushed before it, without waiting on the peer (except
    /// with [`WhenFull::Wait`] and a full queue).
    pub(crate) fn push(&self, buf: Vec<u8>, when_full: WhenFull) -> Result<(), OutboxError> {
        let sh = &*self.shared;
        let mut q = sh.lock();
        if q.phase != Phase::Open {
            return Err(OutboxError::Closed);
        }
        let mut buf = buf;
        if q.bufs.is_empty() && !q.writing {
            match send(&sh.stream, &buf, true) {
                Ok(n) if n == buf.len() => return Ok(()),
                Ok(n) => {
                    buf.drain(..n);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) => {}
                Err(_) => {
                    drop(q);
                    sh.stop(true);
                    return Err(OutboxError::Closed);
                }
            }
        }
        // An empty queue takes any one buffer, so that a batch larger than the bound is
        // not refused to a peer that keeps up.
        let fits = |q: &Queue| q.bytes == 0 || q.bytes + buf.len() <= sh.limit;
        while !fits(&q) {
            match when_full {
                WhenFull::Exceed => break,
                WhenFull::Refuse => {
                    return Err(OutboxError::Full {
                        queued: q.bytes,
                        limit: sh.limit,
                    })
                }
                WhenFull::Wait => {
                    q = sh.cv.wait(q).unwrap_or_else(|p| p.into_inner());
                    if q.phase != Phase::Open {
                        return Err(OutboxError::Closed);
                    }
                }
            }
        }
        q.bytes += buf.len();
        q.bufs.push_back(buf);
        drop(q);
        sh.cv.notify_all();
        Ok(())
    }

    /// Ends the connection now: the backlog is discarded and the socket shut down both
    /// ways, so the peer reads what it already has and then the end.
    pub(crate) fn cut(&self) {
        self.shared.stop(true);
    }

    /// Ends the connection after the backlog: the writer writes it, then shuts the socket
    /// down. Does not wait; nothing more may be pushed.
    pub(crate) fn close(&self) {
        let mut q = self.shared.lock();
        if q.phase == Phase::Open {
            q.phase = Phase::Draining;
        }
        drop(q);
        self.shared.cv.notify_all();
    }

    /// Like [`Outbox::close`], and waits up to `within` for the backlog to be written
    /// before cutting what is left; the writer thread has ended when this returns.
    pub(crate) fn finish(mut self, within: Duration) {
        self.close();
        let deadline = Instant::now() + within;
        let sh = &*self.shared;
        let mut q = sh.lock();
        while q.phase != Phase::Stopped {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            q = sh
                .cv
                .wait_timeout(q, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        drop(q);
        sh.stop(true);
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        if self.shared.lock().phase != Phase::Draining {
            self.shared.stop(false);
        }
    }
}

/// The writer thread: batch after batch, blocking writes, until stopped or drained.
fn write_loop(sh: &Shared) {
    loop {
        let batch = {
            let mut q = sh.lock();
            loop {
                if q.phase == Phase::Stopped {
                    return;
                }
                if !q.bufs.is_empty() {
                    break;
                }
                if q.phase == Phase::Draining {
                    drop(q);
                    sh.stop(true);
                    return;
                }
                q = sh.cv.wait(q).unwrap_or_else(|p| p.into_inner());
            }
            q.writing = true;
            std::mem::take(&mut q.bufs)
        };
        let mut written = 0;
        for buf in &batch {
            if write_all(&sh.stream, buf).is_err() {
                sh.stop(true);
                return;
            }
            written += buf.len();
        }
        let mut q = sh.lock();
        q.writing = false;
        q.bytes = q.bytes.saturating_sub(written);
        drop(q);
        sh.cv.notify_all();
    }
}

fn write_all(stream: &UnixStream, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        match send(stream, buf, false) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// One `send(2)`, never raising SIGPIPE on a closed peer (a C program linking the emulator
/// would die of it), and with `dontwait` never blocking.
fn send(stream: &UnixStream, buf: &[u8], dontwait: bool) -> io::Result<usize> {
    let flags = libc::MSG_NOSIGNAL | if dontwait { libc::MSG_DONTWAIT } else { 0 };
    // SAFETY: the descriptor is open for the stream's lifetime and `buf` is valid for
    // `buf.len()` bytes of reads.
    let n = unsafe { libc::send(stream.as_raw_fd(), buf.as_ptr().cast(), buf.len(), flags) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}
