//! The segment being written: positional writes at the log's end, with file space
//! reserved ahead of it.
//!
//! Why reserve: an `fdatasync` after a write that grows the file must also commit the
//! file's new size; after a write into space reserved with `fallocate` it need not. On
//! the ext4 disk this project is measured on, that made a small synced append about a
//! fifth cheaper with three processes syncing at once (as a local cluster does). The
//! reserved rest of the newest segment reads as zeros, which recovery takes as the end of
//! the log; a segment is cut back to its last record when the log moves on (see the
//! [storage docs](super)).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use tracing::{debug, warn};

use super::{io_error, StorageError, StorageOptions};

/// The open, newest segment file.
#[derive(Debug)]
pub(crate) struct ActiveFile {
    file: File,
    /// Where the next write goes: everything before it has been handed to the OS.
    end: u64,
    /// The file's length: `end` and the reserved zeros after it.
    len: u64,
    /// How far reservations reach at most (the segment's size limit).
    limit: u64,
    /// How much to reserve at once; 0 once reserving is off or has failed.
    step: u64,
}

impl ActiveFile {
    /// Wraps `file`, whose log ends at `end` and whose length is `len`.
    pub fn new(file: File, end: u64, len: u64, opts: &StorageOptions) -> ActiveFile {
        ActiveFile {
            file,
            end,
            len: len.max(end),
            limit: opts.segment_bytes,
            step: opts.preallocate_bytes,
        }
    }

    /// Writes `buf` at the end of the log, reserving space first if it runs past it.
    pub fn append(&mut self, buf: &[u8], path: &Path) -> Result<(), StorageError> {
        let end = self.end + buf.len() as u64;
        if end > self.len {
            self.reserve(end, path);
        }
        self.file
            .write_all_at(buf, self.end)
            .map_err(io_error(path))?;
        self.end = end;
        self.len = self.len.max(end);
        Ok(())
    }

    /// Reserves space past `end` up to the next step (at most to the segment's limit).
    /// Reserving only speeds syncs up: if the file system refuses, the log goes on
    /// without it.
    fn reserve(&mut self, end: u64, path: &Path) {
        if self.step == 0 {
            return;
        }
        let target = self.len.saturating_add(self.step).min(self.limit);
        if target <= end {
            return;
        }
        match preallocate(&self.file, self.len, target - self.len) {
            Ok(()) => self.len = target,
            Err(e) => {
                if e.kind() == io::ErrorKind::Unsupported {
                    debug!(file = %path.display(), "no file space reservation here; writing without");
                } else {
                    warn!(file = %path.display(), error = %e, "cannot reserve log space; writing without");
                }
                self.step = 0;
            }
        }
    }

    /// Cuts off the unused reservation and syncs, before the log moves on to a new
    /// segment: a sealed segment ends at its last record, so that recovery can still
    /// refuse any damage in it, zeros included.
    pub fn seal(&mut self, path: &Path) -> Result<(), StorageError> {
        if self.len > self.end {
            self.file.set_len(self.end).map_err(io_error(path))?;
            self.len = self.end;
        }
        self.file.sync_all().map_err(io_error(path))
    }

    /// The file, for syncing.
    pub fn file(&self) -> &File {
        &self.file
    }
}

/// Reserves `len` bytes of `file` from `offset` (`fallocate`, growing the file), as the
/// log does ahead of its end; elsewhere than on Linux it fails with `Unsupported`. Public
/// so that a benchmark's floor can sync the same kind of write the log makes.
#[cfg(target_os = "linux")]
pub fn preallocate(file: &File, offset: u64, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return Err(io::ErrorKind::InvalidInput.into());
    };
    // SAFETY: the descriptor is open for the whole call; fallocate takes plain integers.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, offset, len) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Reserves file space: not available here (see the Linux version).
#[cfg(not(target_os = "linux"))]
pub fn preallocate(_file: &File, _offset: u64, _len: u64) -> io::Result<()> {
    Err(io::ErrorKind::Unsupported.into())
}
