//! Snapshot files: one file per snapshot, written to a temporary name, fsynced, renamed
//! into place, and the directory fsynced.
//!
//! Layout: `[magic "WEFTSNP\0"][version u32][node u32][cluster u64][payload len u64]`
//! `[payload: MessagePack of the Snapshot][crc32c u32 of everything before it]`, all
//! little-endian.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::record::FORMAT_VERSION;
use super::{io_error, sync_dir, StorageError};
use crate::{Index, Snapshot, Term};

const SNAP_MAGIC: [u8; 8] = *b"WEFTSNP\0";
const SNAP_HEADER_LEN: usize = 8 + 4 + 4 + 8 + 8;

/// The file name of the snapshot at (`index`, `term`).
pub(crate) fn file_name(index: Index, term: Term) -> String {
    format!("snap-{index:016x}-{term:016x}.snap")
}

/// The (index, term) a snapshot file name stands for, if it is one.
pub(crate) fn parse_name(name: &str) -> Option<(Index, Term)> {
    let rest = name.strip_prefix("snap-")?.strip_suffix(".snap")?;
    let (i, t) = rest.split_once('-')?;
    Some((super::parse_hex16(i)?, super::parse_hex16(t)?))
}

/// Whether `name` is a temporary file left by an interrupted snapshot write.
pub(crate) fn is_temp_name(name: &str) -> bool {
    name.starts_with("snap-") && name.ends_with(".snap.tmp")
}

/// Writes `snap` durably into `dir` and returns its path.
pub(crate) fn write(
    dir: &Path,
    cluster: u64,
    node: u32,
    snap: &Snapshot,
) -> Result<PathBuf, StorageError> {
    let name = file_name(snap.meta.index, snap.meta.term);
    let path = dir.join(&name);
    let tmp = dir.join(format!("{name}.tmp"));
    let payload = rmp_serde::to_vec(snap)?;
    let mut bytes = Vec::with_capacity(SNAP_HEADER_LEN + payload.len() + 4);
    bytes.extend_from_slice(&SNAP_MAGIC);
    bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    bytes.extend_from_slice(&node.to_le_bytes());
    bytes.extend_from_slice(&cluster.to_le_bytes());
    bytes.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&payload);
    let crc = crc32c::crc32c(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    let mut f = File::create(&tmp).map_err(io_error(&tmp))?;
    f.write_all(&bytes).map_err(io_error(&tmp))?;
    f.sync_all().map_err(io_error(&tmp))?;
    drop(f);
    fs::rename(&tmp, &path).map_err(io_error(&path))?;
    sync_dir(dir)?;
    Ok(path)
}

/// Reads and verifies the snapshot file at `path`.
pub(crate) fn read(path: &Path, cluster: u64, node: u32) -> Result<Snapshot, StorageError> {
    let data = fs::read(path).map_err(io_error(path))?;
    let corrupt = |offset: usize, reason: String| StorageError::Corrupt {
        path: path.to_path_buf(),
        offset: offset as u64,
        reason,
    };
    if data.len() < SNAP_HEADER_LEN + 4 {
        return Err(corrupt(0, format!("snapshot file of {} bytes", data.len())));
    }
    if data[0..8] != SNAP_MAGIC {
        return Err(corrupt(0, "bad snapshot magic".into()));
    }
    let version = u32::from_le_bytes(data[8..12].try_into().unwrap_or_default());
    let found_node = u32::from_le_bytes(data[12..16].try_into().unwrap_or_default());
    let found_cluster = u64::from_le_bytes(data[16..24].try_into().unwrap_or_default());
    let len = u64::from_le_bytes(data[24..32].try_into().unwrap_or_default());
    let body_end = data.len() - 4;
    if len != (body_end - SNAP_HEADER_LEN) as u64 {
        return Err(corrupt(
            24,
            format!(
                "payload length {len} does not match the file ({} bytes)",
                body_end - SNAP_HEADER_LEN
            ),
        ));
    }
    let crc = u32::from_le_bytes(data[body_end..].try_into().unwrap_or_default());
    if crc32c::crc32c(&data[..body_end]) != crc {
        return Err(corrupt(0, "snapshot checksum mismatch".into()));
    }
    if version != FORMAT_VERSION {
        return Err(StorageError::UnsupportedVersion {
            path: path.to_path_buf(),
            found: version,
        });
    }
    if found_cluster != cluster || found_node != node {
        return Err(StorageError::WrongIdentity {
            path: path.to_path_buf(),
            cluster,
            node,
            found_cluster,
            found_node,
        });
    }
    rmp_serde::from_slice(&data[SNAP_HEADER_LEN..body_end]).map_err(|e| {
        corrupt(
            SNAP_HEADER_LEN,
            format!("snapshot payload does not decode: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Membership, NodeId, SnapshotMeta};
    use bytes::Bytes;

    fn snap() -> Snapshot {
        Snapshot {
            meta: SnapshotMeta {
                index: 17,
                term: 3,
                membership: Membership::with_voters([NodeId(1), NodeId(2)]),
            },
            data: Bytes::from_static(b"state machine"),
        }
    }

    #[test]
    fn names_round_trip() {
        assert_eq!(parse_name(&file_name(17, 3)), Some((17, 3)));
        assert_eq!(parse_name("snap-xyz-1.snap"), None);
        assert_eq!(
            parse_name("snap-+000000000000001-0000000000000001.snap"),
            None
        );
        assert!(is_temp_name(&format!("{}.tmp", file_name(1, 1))));
    }

    #[test]
    fn round_trip_and_damage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), 9, 1, &snap()).unwrap();
        assert_eq!(read(&path, 9, 1).unwrap(), snap());
        assert!(matches!(
            read(&path, 8, 1),
            Err(StorageError::WrongIdentity { .. })
        ));
        assert!(matches!(
            read(&path, 9, 2),
            Err(StorageError::WrongIdentity { .. })
        ));
        let good = fs::read(&path).unwrap();
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x04;
            fs::write(&path, &bad).unwrap();
            assert!(read(&path, 9, 1).is_err(), "flip at {i}");
            fs::write(&path, &good[..i]).unwrap();
            assert!(read(&path, 9, 1).is_err(), "cut at {i}");
        }
    }
}
