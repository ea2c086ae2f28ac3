//! [`SwitchServer`]: a switch that endpoints in other processes attach to over a Unix
//! socket. The connection is the attachment: the switch stamps every message arriving on
//! it with the node id bound at `Hello`, and a connection that drops (a killed process)
//! is detached as crashed.
//!
//! Who may attach: the socket is created mode 0600, so only processes of the switch's
//! user (or root) can connect, whatever the umask; and a switch given a member list
//! ([`SwitchConfig::members`]) refuses every other node id.

use std::io::{self, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::outbox::Outbox;
use super::switch::{Sink, Switch, SwitchConfig};
use super::wire::{self, Frame};
use super::{DvError, API_VERSION};

/// A switch listening on a Unix socket. Dropping it stops accepting and removes the socket
/// file; attached endpoints keep working until they disconnect.
pub struct SwitchServer {
    switch: Arc<Switch>,
    path: PathBuf,
    stop: Arc<AtomicBool>,
    /// The accept thread's listener, kept to wake that thread when the server is dropped.
    listener: UnixListener,
    accept: Option<JoinHandle<()>>,
}

impl SwitchServer {
    /// Listens on `path` with a new switch. A stale socket file (nobody listening) is
    /// replaced; a live one is an `AddrInUse` error.
    pub fn bind(path: impl AsRef<Path>, cfg: SwitchConfig) -> io::Result<SwitchServer> {
        let path = path.as_ref().to_path_buf();
        if path.exists() {
            if UnixStream::connect(&path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("a switch already listens on {}", path.display()),
                ));
            }
            std::fs::remove_file(&path)?;
        }
        let listener = bind_private(&path)?;
        let accepting = listener.try_clone()?;
        let port_queue = cfg.port_queue;
        let switch = Switch::new(cfg);
        let stop = Arc::new(AtomicBool::new(false));
        let (sw, st) = (switch.clone(), stop.clone());
        let accept = std::thread::Builder::new()
            .name("dv-switch-accept".into())
            .spawn(move || {
                for conn in accepting.incoming() {
                    if st.load(Ordering::Acquire) {
                        return;
                    }
                    let Ok(conn) = conn else { continue };
                    let sw = sw.clone();
                    let _ = std::thread::Builder::new()
                        .name("dv-switch-port".into())
                        .spawn(move || serve(&sw, conn, port_queue));
                }
            })?;
        Ok(SwitchServer {
            switch,
            path,
            stop,
            listener,
            accept: Some(accept),
        })
    }

    /// The switch, for fault injection.
    pub fn switch(&self) -> &Arc<Switch> {
        &self.switch
    }

    /// The fabric name endpoints open to reach this switch (`unix:PATH`).
    pub fn fabric(&self) -> String {
        format!("unix:{}", self.path.display())
    }
}

impl Drop for SwitchServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Shutting a listening socket down fails its pending and later accepts (Linux),
        // which wakes the accept loop even when the socket file is already gone.
        // SAFETY: the descriptor is the listener's, open until it is dropped after this.
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
        if let Some(a) = self.accept.take() {
            let _ = a.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds a listener at `path` whose socket file is mode 0600 from the moment it appears
/// there: it is bound under a temporary name beside `path`, restricted, and renamed into
/// place (a rename keeps the listening socket), so no connection can slip in between the
/// bind and the restriction, whatever the umask.
fn bind_private(path: &Path) -> io::Result<UnixListener> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    // Short, so that the temporary path fits the socket address wherever `path` does.
    let tmp = path.with_file_name(format!(".dv{:x}-{n}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp)?;
    let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(listener)
}

/// One endpoint's connection, from `Hello` to its end. Events go out through an
/// [`Outbox`] of `port_queue` bytes, so that the switch never waits on this endpoint.
fn serve(switch: &Arc<Switch>, stream: UnixStream, port_queue: usize) {
    let Ok(clone) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(clone);
    let mut writer = stream;
    let _ = writer.set_read_timeout(Some(Duration::from_secs(5)));
    let refuse = |w: &mut UnixStream, e: DvError| {
        let _ = w.write_all(&wire::frame(&Frame::Refused { code: e.code() }));
    };
    let node = match wire::read(&mut reader) {
        Ok(Some(Frame::Hello { version, node })) if version == API_VERSION => node,
        Ok(Some(Frame::Hello { .. })) => return refuse(&mut writer, DvError::Version),
        _ => return refuse(&mut writer, DvError::Invalid),
    };
    let _ = writer.set_read_timeout(None);
    let Ok(out) = writer
        .try_clone()
        .and_then(|s| Outbox::start(s, port_queue, format!("dv-switch-out-{node}")))
    else {
        return refuse(&mut writer, DvError::Io);
    };
    // The switch sends `Welcome` and every later event through the outbox.
    let incarnation = match switch.attach(node, Sink::Remote(out)) {
        Ok((_, incarnation)) => incarnation,
        Err(e) => return refuse(&mut writer, e),
    };
    loop {
        let done = match wire::read(&mut reader) {
            Ok(Some(Frame::Inject {
                ticket,
                group,
                bytes,
            })) => switch.inject(node, ticket, group, bytes.into()).is_err(),
            Ok(Some(Frame::Barrier)) => switch.enter_barrier(node).is_err(),
            Ok(Some(Frame::Leave)) | Ok(None) => true,
            Ok(Some(other)) => {
                tracing::warn!(node, frame = ?other, "endpoint sent a switch-only frame; disconnecting it");
                true
            }
            Err(e) => {
                tracing::warn!(node, error = %e, "bad frame from endpoint; disconnecting it");
                true
            }
        };
        if done {
            break;
        }
    }
    switch.detach(node, incarnation);
    let _ = writer.shutdown(std::net::Shutdown::Both);
}
