//! [`SwitchServer`]: a switch that endpoints in other processes attach to over a Unix
//! socket. The connection is the attachment: the switch stamps every message arriving on
//! it with the node id bound at `Hello`, and a connection that drops (a killed process)
//! is detached as crashed.

use std::io::{self, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::switch::{Sink, Switch, SwitchConfig};
use super::wire::{self, Frame};
use super::{DvError, API_VERSION};

/// A switch listening on a Unix socket. Dropping it stops accepting and removes the socket
/// file; attached endpoints keep working until they disconnect.
pub struct SwitchServer {
    switch: Arc<Switch>,
    path: PathBuf,
    stop: Arc<AtomicBool>,
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
        let listener = UnixListener::bind(&path)?;
        let switch = Switch::new(cfg);
        let stop = Arc::new(AtomicBool::new(false));
        let (sw, st) = (switch.clone(), stop.clone());
        let accept = std::thread::Builder::new()
            .name("dv-switch-accept".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if st.load(Ordering::Acquire) {
                        return;
                    }
                    let Ok(conn) = conn else { continue };
                    let sw = sw.clone();
                    let _ = std::thread::Builder::new()
                        .name("dv-switch-port".into())
                        .spawn(move || serve(&sw, conn));
                }
            })?;
        Ok(SwitchServer {
            switch,
            path,
            stop,
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
        let _ = UnixStream::connect(&self.path); // wakes the accept loop
        if let Some(a) = self.accept.take() {
            let _ = a.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// One endpoint's connection, from `Hello` to its end.
fn serve(switch: &Arc<Switch>, stream: UnixStream) {
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
    let Ok(out) = writer.try_clone() else {
        return;
    };
    // The switch writes `Welcome` and every later event onto the socket itself.
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
