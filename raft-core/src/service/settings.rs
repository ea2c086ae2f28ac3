//! The `[service]` section of a cluster file: the client service's limits and budgets,
//! checked against each other and against the entry limit below them when loaded.
//!
//! The sizes form one chain, each link checked here: a key and a value
//! ([`ServiceSettings::max_key`], [`ServiceSettings::max_value`]) fit a client frame
//! ([`ServiceSettings::max_frame`]) and, as a write command, a log entry
//! ([`crate::Config::max_entry_bytes`]), which fits a transport message
//! (`transport.max_message`, checked by [`crate::node::RaftSettings`]). So a write the
//! service accepts can always be replicated; one it cannot is refused at the door with
//! [`ErrorKind::TooLarge`](super::protocol::ErrorKind::TooLarge), naming the limit.

use std::net::SocketAddr;
use std::time::Duration;

use super::ServerConfig;
use crate::kv::KV_COMMAND_FIELDS;

/// Bytes of a request frame besides its key and value (ids, field names, headers).
pub const REQUEST_FIELDS: usize = 256;

/// The `[service]` section. Every field is optional; absent ones keep
/// [`ServerConfig::new`]'s defaults (the value limit defaults to what the entry limit
/// leaves beside the largest key).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceSettings {
    /// Largest client frame, in bytes (default 4 MiB).
    pub max_frame: Option<usize>,
    /// Largest key, in bytes (default 4 KiB).
    pub max_key: Option<usize>,
    /// Largest value, in bytes; for a compare-and-set, of its two values together.
    pub max_value: Option<usize>,
    /// Client connections served at once (default 4,096); one more is answered `Busy`
    /// and closed.
    pub max_connections: Option<usize>,
    /// Bytes of large frames being read, across all connections (default 256 MiB); past
    /// it connections wait before reading more.
    pub max_buffered_bytes: Option<usize>,
    /// How long a frame (its length prefix included, once its first byte arrived) may
    /// take to arrive, in milliseconds (default 10,000).
    pub frame_timeout_ms: Option<u64>,
    /// Worker threads of the service (default 2).
    pub workers: Option<usize>,
}

/// A `[service]` setting that does not fit; names the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("service.{key}: {why}")]
pub struct ServiceSettingError {
    /// The key, without the `service.` prefix.
    pub key: &'static str,
    /// What is wrong with its value.
    pub why: String,
}

impl ServiceSettings {
    /// The service's settings, listening on `listen`, for a node whose largest log entry
    /// is `max_entry` bytes; refuses values that cannot work together, naming the key.
    pub fn server_config(
        &self,
        listen: SocketAddr,
        max_entry: usize,
    ) -> Result<ServerConfig, ServiceSettingError> {
        let bad = |key, why: String| Err(ServiceSettingError { key, why });
        let mut cfg = ServerConfig::new(listen);
        if let Some(n) = self.max_frame {
            if n < 1024 || n > u32::MAX as usize {
                return bad("max_frame", format!("must be 1024 to 4294967295, not {n}"));
            }
            cfg.max_frame = n;
        }
        if let Some(n) = self.max_key {
            if n == 0 {
                return bad("max_key", "must be positive".into());
            }
            cfg.max_key = n;
        }
        let room = max_entry.saturating_sub(KV_COMMAND_FIELDS + cfg.max_key);
        let frame_room = cfg.max_frame.saturating_sub(REQUEST_FIELDS + cfg.max_key);
        cfg.max_value = match self.max_value {
            Some(n) if n > room => {
                return bad(
                    "max_value",
                    format!(
                        "{n} bytes with max_key = {} does not fit a log entry of {max_entry} bytes (raft.max_entry_bytes); at most {room}",
                        cfg.max_key
                    ),
                )
            }
            Some(n) if n > frame_room => {
                return bad(
                    "max_value",
                    format!(
                        "{n} bytes with max_key = {} does not fit a client frame of {} bytes (service.max_frame); at most {frame_room}",
                        cfg.max_key, cfg.max_frame
                    ),
                )
            }
            Some(n) => n,
            None => room.min(frame_room),
        };
        if cfg.max_value == 0 {
            return bad(
                "max_key",
                format!(
                    "{} bytes leaves no room for a value in a log entry of {max_entry} bytes or a frame of {}",
                    cfg.max_key, cfg.max_frame
                ),
            );
        }
        if let Some(n) = self.max_connections {
            if n == 0 {
                return bad("max_connections", "must be positive".into());
            }
            cfg.max_connections = n;
        }
        if let Some(n) = self.max_buffered_bytes {
            cfg.max_buffered_bytes = n;
        }
        if cfg.max_buffered_bytes < cfg.max_frame {
            return bad(
                "max_buffered_bytes",
                format!(
                    "must be at least max_frame ({} bytes), or the largest frame could never be read; is {}",
                    cfg.max_frame, cfg.max_buffered_bytes
                ),
            );
        }
        if let Some(ms) = self.frame_timeout_ms {
            if ms == 0 || ms > 600_000 {
                return bad(
                    "frame_timeout_ms",
                    format!("must be 1 to 600000 ms, not {ms}"),
                );
            }
            cfg.frame_timeout = Duration::from_millis(ms);
        }
        if let Some(n) = self.workers {
            if n == 0 || n > 256 {
                return bad("workers", format!("must be 1 to 256, not {n}"));
            }
            cfg.workers = n;
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 0))
    }

    #[test]
    fn defaults_fit_an_entry_and_a_frame() {
        let cfg = ServiceSettings::default()
            .server_config(any(), 1 << 20)
            .unwrap();
        assert!(cfg.max_key + cfg.max_value + KV_COMMAND_FIELDS <= 1 << 20);
        assert!(cfg.max_key + cfg.max_value + REQUEST_FIELDS <= cfg.max_frame);
        // A small entry limit shrinks the default value limit.
        let small = ServiceSettings::default()
            .server_config(any(), 8192)
            .unwrap();
        assert_eq!(small.max_value, 8192 - KV_COMMAND_FIELDS - small.max_key);
    }

    #[test]
    fn each_misfit_names_its_key() {
        let cases = [
            (
                ServiceSettings {
                    max_value: Some(2 << 20),
                    ..Default::default()
                },
                "service.max_value",
                "raft.max_entry_bytes",
            ),
            (
                ServiceSettings {
                    max_frame: Some(64 << 10),
                    max_value: Some(100 << 10),
                    ..Default::default()
                },
                "service.max_value",
                "service.max_frame",
            ),
            (
                ServiceSettings {
                    max_key: Some(1 << 20),
                    ..Default::default()
                },
                "service.max_key",
                "no room",
            ),
            (
                ServiceSettings {
                    max_buffered_bytes: Some(1024),
                    ..Default::default()
                },
                "service.max_buffered_bytes",
                "max_frame",
            ),
            (
                ServiceSettings {
                    frame_timeout_ms: Some(0),
                    ..Default::default()
                },
                "service.frame_timeout_ms",
                "not 0",
            ),
            (
                ServiceSettings {
                    max_connections: Some(0),
                    ..Default::default()
                },
                "service.max_connections",
                "positive",
            ),
        ];
        for (settings, key, says) in cases {
            let e = settings
                .server_config(any(), 1 << 20)
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(key) && e.contains(says), "{e}");
        }
    }
}
