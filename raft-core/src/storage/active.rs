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

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use tracing::{debug, warn};

use super::{io_error, StorageError, StorageOptions};

/// The open, newest segment file.
#[derive(Debug)]
pub(crate) struct ActiveFile {
    file: File,
    path: PathBuf,
    /// Where the next write goes: everything before it has been handed to the OS.
    end: u64,
    /// Everything before this is durable (or was found on disk when the log opened).
    synced: u64,
    /// The file's length: `end` and the reserved zeros after it.
    len: u64,
    /// How far reservations reach at most (the segment's size limit).
    limit: u64,
    /// How much to reserve at once; 0 once reserving is off or has failed.
    step: u64,
}

impl ActiveFile {
    /// Opens the segment at `path`, whose log ends at `end` (as recovery found it).
    pub fn open(path: &Path, end: u64, opts: &StorageOptions) -> Result<ActiveFile, StorageError> {
        let file = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(io_error(path))?;
        let len = file.metadata().map_err(io_error(path))?.len();
        Ok(ActiveFile::new(file, path, end, len, opts))
    }

    /// Creates the segment at `path`, which must not exist.
    pub fn create(path: &Path, opts: &StorageOptions) -> Result<ActiveFile, StorageError> {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(io_error(path))?;
        Ok(ActiveFile::new(file, path, 0, 0, opts))
    }

    fn new(file: File, path: &Path, end: u64, len: u64, opts: &StorageOptions) -> ActiveFile {
        ActiveFile {
            file,
            path: path.to_path_buf(),
            end,
            synced: end,
            len: len.max(end),
            limit: opts.segment_bytes,
            step: opts.preallocate_bytes,
        }
    }

    /// Writes `buf` at the end of the log, reserving space first if it runs past it.
    pub fn append(&mut self, buf: &[u8]) -> Result<(), StorageError> {
        let end = self.end + buf.len() as u64;
        if end > self.len {
            self.reserve(end);
        }
        self.file
            .write_all_at(buf, self.end)
            .map_err(io_error(&self.path))?;
        self.end = end;
        self.len = self.len.max(end);
        Ok(())
    }

    /// Reserves space past `end` up to the next step (at most to the segment's limit).
    /// Reserving only speeds syncs up: if the file system refuses, the log goes on
    /// without it.
    fn reserve(&mut self, end: u64) {
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
                let file = self.path.display();
                if e.kind() == io::ErrorKind::Unsupported {
                    debug!(%file, "no file space reservation here; writing without");
                } else {
                    warn!(%file, error = %e, "cannot reserve log space; writing without");
                }
                self.step = 0;
            }
        }
    }

    /// Makes what was written since the last sync durable (`fdatasync`), if anything was.
    pub fn sync(&mut self) -> Result<(), StorageError> {
        if self.end > self.synced {
            self.file.sync_data().map_err(io_error(&self.path))?;
            self.synced = self.end;
        }
        Ok(())
    }

    /// Makes the file durable with its length and metadata (`fsync`): for a new segment.
    pub fn sync_all(&mut self) -> Result<(), StorageError> {
        self.file.sync_all().map_err(io_error(&self.path))?;
        self.synced = self.end;
        Ok(())
    }

    /// Cuts off the unused reservation and syncs, before the log moves on to a new
    /// segment: a sealed segment ends at its last record, so that recovery can still
    /// refuse any damage in it, zeros included.
    pub fn seal(&mut self) -> Result<(), StorageError> {
        if self.len > self.end {
            self.file.set_len(self.end).map_err(io_error(&self.path))?;
            self.len = self.end;
        }
        self.sync_all()
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
