//! [`Endpoint`]: one node's attachment to a switch, in this process or over a socket.

use std::io::{BufReader, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::mailbox::Mailbox;
use super::outbox::{Outbox, WhenFull};
use super::switch::{Group, Sink, Switch};
use super::wire::{self, Frame};
use super::{DvError, API_VERSION};

/// A message as delivered at an epoch close.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    /// The sender, as stamped by the switch.
    pub source: u32,
    /// The epoch the message was injected in and delivered at the close of.
    pub epoch: u64,
    /// The message.
    pub bytes: Arc<[u8]>,
}

/// The positive acknowledgement of one injected message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ack {
    /// The ticket `send`/`multicast` returned.
    pub ticket: u64,
    /// The epoch whose close delivered the message.
    pub epoch: u64,
    /// Recipients that took the message.
    pub delivered: u32,
    /// Recipients that were not attached at the close.
    pub refused: u32,
}

/// What a barrier returns: the epoch it closed and the members attached at the close.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EpochClose {
    /// The closed epoch.
    pub epoch: u64,
    /// Attached node ids, ascending.
    pub members: Vec<u32>,
}

/// What the fabric guarantees and its limits (`dv_query`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FabricInfo {
    /// The API version the fabric implements.
    pub api_version: u32,
    /// `DV_CAP_*` bits.
    pub caps: u32,
    /// Largest message, in bytes.
    pub max_message: u32,
}

/// Every guarantee of `dv_api.h`: reliable, per-source FIFO, total order, barrier,
/// source stamping, positive acknowledgement.
pub const ALL_CAPS: u32 = 0x3f;

/// Bytes of frames an endpoint queues for a switch that reads slowly before its sends
/// wait (a barrier entry never waits: its timeout must hold).
const SEND_QUEUE: usize = 16 << 20;

/// How long a closing endpoint waits for its queued frames to reach the switch, so that
/// what it injected before closing is still delivered (`dv_close`).
const CLOSE_FLUSH: Duration = Duration::from_secs(1);

enum Link {
    Local {
        switch: Arc<Switch>,
        incarnation: u64,
    },
    Remote {
        out: Option<Outbox>,
        stream: UnixStream,
        reader: Option<JoinHandle<()>>,
    },
}

/// One node's attachment to an emulated switch. Dropping it leaves the fabric in order.
pub struct Endpoint {
    node: u32,
    mailbox: Arc<Mailbox>,
    link: Link,
    next_ticket: AtomicU64,
    first_epoch: u64,
    max_message: usize,
}

impl Endpoint {
    /// Attaches as `node` to the fabric named `fabric` (`local:NAME` or `unix:PATH`).
    pub fn open(fabric: &str, node: u32) -> Result<Endpoint, DvError> {
        if let Some(name) = fabric.strip_prefix("local:") {
            return Endpoint::attach(&Switch::local(name), node);
        }
        let Some(path) = fabric.strip_prefix("unix:") else {
            return Err(DvError::Invalid);
        };
        let mut stream = UnixStream::connect(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::PermissionDenied => DvError::Denied,
            _ => DvError::NoFabric,
        })?;
        let io = |_| DvError::Io;
        stream
            .write_all(&wire::frame(&Frame::Hello {
                version: API_VERSION,
                node,
            }))
            .map_err(io)?;
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(io)?;
        let mut reader = BufReader::new(stream.try_clone().map_err(io)?);
        let (first_epoch, max_message) = match wire::read(&mut reader).map_err(io)? {
            Some(Frame::Welcome { epoch, max_message }) => (epoch, max_message as usize),
            Some(Frame::Refused { code }) => {
                return Err(DvError::from_code(code).unwrap_or(DvError::Io))
            }
            _ => return Err(DvError::Io),
        };
        stream.set_read_timeout(None).map_err(io)?;
        let mailbox = Arc::new(Mailbox::default());
        let mb = mailbox.clone();
        let reader = std::thread::Builder::new()
            .name(format!("dv-endpoint-{node}"))
            .spawn(move || {
                while let Ok(Some(f)) = wire::read(&mut reader) {
                    if let Some(events) = f.into_events() {
                        mb.apply(events);
                    } else {
                        break;
                    }
                }
                mb.disconnect();
            })
            .map_err(io)?;
        let out = stream
            .try_clone()
            .and_then(|s| Outbox::start(s, SEND_QUEUE, format!("dv-endpoint-out-{node}")))
            .map_err(io)?;
        Ok(Endpoint {
            node,
            mailbox,
            link: Link::Remote {
                out: Some(out),
                stream,
                reader: Some(reader),
            },
            next_ticket: AtomicU64::new(1),
            first_epoch,
            max_message,
        })
    }

    /// Attaches as `node` to `switch` in this process (tests use it to keep a handle on
    /// the switch for fault injection).
    pub fn attach(switch: &Arc<Switch>, node: u32) -> Result<Endpoint, DvError> {
        let mailbox = Arc::new(Mailbox::default());
        let (first_epoch, incarnation) = switch.attach(node, Sink::Local(mailbox.clone()))?;
        Ok(Endpoint {
            node,
            mailbox,
            link: Link::Local {
                switch: switch.clone(),
                incarnation,
            },
            next_ticket: AtomicU64::new(1),
            first_epoch,
            max_message: switch.max_message(),
        })
    }

    /// This endpoint's node id.
    pub fn node(&self) -> u32 {
        self.node
    }

    /// The fabric's guarantees and limits.
    pub fn info(&self) -> FabricInfo {
        FabricInfo {
            api_version: API_VERSION,
            caps: ALL_CAPS,
            max_message: self.max_message as u32,
        }
    }

    fn inject(&self, group: Group, bytes: &[u8]) -> Result<u64, DvError> {
        if bytes.len() > self.max_message {
            return Err(DvError::TooLarge);
        }
        if self.mailbox.crashed() {
            return Err(DvError::Closed);
        }
        let ticket = self.next_ticket.fetch_add(1, Ordering::Relaxed);
        match &self.link {
            Link::Local { switch, .. } => switch.inject(self.node, ticket, group, bytes.into())?,
            Link::Remote { .. } => self.write(
                &Frame::Inject {
                    ticket,
                    group,
                    bytes: bytes.to_vec(),
                },
                WhenFull::Wait,
            )?,
        }
        Ok(ticket)
    }

    /// Queues `f` for the switch: the caller waits on the switch reading only when
    /// `when_full` says so, never on a socket write.
    fn write(&self, f: &Frame, when_full: WhenFull) -> Result<(), DvError> {
        let Link::Remote { out: Some(out), .. } = &self.link else {
            return Ok(());
        };
        out.push(wire::frame(f), when_full)
            .map_err(|_| DvError::Closed)
    }

    /// Injects a message to `dst` (this node itself allowed: it comes back in the global
    /// order). Returns the ticket its acknowledgement will carry.
    pub fn send(&self, dst: u32, bytes: &[u8]) -> Result<u64, DvError> {
        self.inject(Group::Nodes(vec![dst]), bytes)
    }

    /// Injects one message to every node of `group`, or to every other attached node when
    /// `group` is `None`.
    pub fn multicast(&self, group: Option<&[u32]>, bytes: &[u8]) -> Result<u64, DvError> {
        let group = match group {
            Some(g) => Group::Nodes(g.to_vec()),
            None => Group::All,
        };
        self.inject(group, bytes)
    }

    /// Enters the barrier and waits for the open epoch to close (`timeout` `None`: forever).
    /// On a timeout the endpoint stays in the barrier; the next call waits for the same
    /// close. The timeout holds whatever the switch or the endpoint's own sends are doing:
    /// entering the barrier is queued behind them, never waited on.
    pub fn barrier(&self, timeout: Option<Duration>) -> Result<EpochClose, DvError> {
        let after = self
            .mailbox
            .last_close()
            .map_or(self.first_epoch - 1, |c| c.epoch);
        match &self.link {
            Link::Local { switch, .. } => switch.enter_barrier(self.node)?,
            Link::Remote { .. } => self.write(&Frame::Barrier, WhenFull::Exceed)?,
        }
        self.mailbox.wait_close(after, timeout)
    }

    /// The next delivered message (`timeout` zero: poll, `None`: block).
    pub fn recv(&self, timeout: Option<Duration>) -> Result<Received, DvError> {
        self.mailbox.recv(usize::MAX, timeout).map_err(|(e, _)| e)
    }

    /// Like [`Endpoint::recv`], but refuses (leaving it queued) a message longer than
    /// `cap`, returning its length with [`DvError::Truncated`].
    pub fn recv_at_most(
        &self,
        cap: usize,
        timeout: Option<Duration>,
    ) -> Result<Received, (DvError, usize)> {
        self.mailbox.recv(cap, timeout)
    }

    /// The next acknowledgement of this endpoint's messages.
    pub fn poll_ack(&self, timeout: Option<Duration>) -> Result<Ack, DvError> {
        self.mailbox.poll_ack(timeout)
    }

    /// Members as of the last epoch close (empty before the first).
    pub fn members(&self) -> Vec<u32> {
        self.mailbox
            .last_close()
            .map(|c| c.members)
            .unwrap_or_default()
    }

    /// Messages delivered and not yet received.
    pub fn queued(&self) -> usize {
        self.mailbox.queued()
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        match &mut self.link {
            Link::Local {
                switch,
                incarnation,
            } => switch.detach(self.node, *incarnation),
            Link::Remote {
                out,
                stream,
                reader,
            } => {
                if let Some(out) = out.take() {
                    let _ = out.push(wire::frame(&Frame::Leave), WhenFull::Exceed);
                    out.finish(CLOSE_FLUSH);
                }
                let _ = stream.shutdown(std::net::Shutdown::Both);
                if let Some(r) = reader.take() {
                    let _ = r.join();
                }
            }
        }
    }
}
