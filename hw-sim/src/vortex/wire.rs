//! The switch protocol over a Unix stream socket: `[u32 length][u8 kind][fields]`, little
//! endian. Decoding checks every length and never panics; a connection that sends a bad
//! frame is closed.

use std::io::{self, Read};

use super::endpoint::Ack;
use super::switch::{Event, Group};
use super::MAX_MESSAGE;

/// Longest frame accepted: a maximal message plus its headers and a group list.
const MAX_FRAME: usize = MAX_MESSAGE + 64 * 1024;

/// One frame of the switch protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Frame {
    /// Endpoint → switch, first frame: attach as `node`.
    Hello { version: u32, node: u32 },
    /// Switch → endpoint: attached; the open epoch and the message limit.
    Welcome { epoch: u64, max_message: u32 },
    /// Switch → endpoint: attachment refused with a `DV_E*` code.
    Refused { code: i32 },
    /// Endpoint → switch: a message for the open epoch.
    Inject {
        ticket: u64,
        group: Group,
        bytes: Vec<u8>,
    },
    /// Endpoint → switch: enter the barrier.
    Barrier,
    /// Endpoint → switch: orderly leave.
    Leave,
    /// Switch → endpoint: a delivered message.
    Deliver {
        src: u32,
        epoch: u64,
        bytes: Vec<u8>,
    },
    /// Switch → endpoint: an acknowledgement.
    Ack(Ack),
    /// Switch → endpoint: an epoch closed.
    Closed { epoch: u64, members: Vec<u32> },
    /// Switch → endpoint: crashed by fault injection.
    Crashed,
}

const ALL_GROUP: u32 = u32::MAX;

impl Frame {
    fn kind(&self) -> u8 {
        match self {
            Frame::Hello { .. } => 1,
            Frame::Welcome { .. } => 2,
            Frame::Refused { .. } => 3,
            Frame::Inject { .. } => 4,
            Frame::Barrier => 5,
            Frame::Leave => 6,
            Frame::Deliver { .. } => 7,
            Frame::Ack(_) => 8,
            Frame::Closed { .. } => 9,
            Frame::Crashed => 10,
        }
    }

    /// A switch-to-endpoint frame as the events it carries; `None` for any other frame.
    pub(crate) fn into_events(self) -> Option<Vec<Event>> {
        Some(vec![match self {
            Frame::Deliver { src, epoch, bytes } => Event::Deliver {
                src,
                epoch,
                bytes: bytes.into(),
            },
            Frame::Ack(a) => Event::Ack(a),
            Frame::Closed { epoch, members } => Event::Closed {
                epoch,
                members: members.into(),
            },
            Frame::Crashed => Event::Crashed,
            _ => return None,
        }])
    }

    /// The frame that carries `e` to a remote endpoint.
    pub(crate) fn from_event(e: &Event) -> Frame {
        match e {
            Event::Attached { epoch, max_message } => Frame::Welcome {
                epoch: *epoch,
                max_message: *max_message,
            },
            Event::Deliver { src, epoch, bytes } => Frame::Deliver {
                src: *src,
                epoch: *epoch,
                bytes: bytes.to_vec(),
            },
            Event::Ack(a) => Frame::Ack(*a),
            Event::Closed { epoch, members } => Frame::Closed {
                epoch: *epoch,
                members: members.to_vec(),
            },
            Event::Crashed => Frame::Crashed,
        }
    }
}

/// `f` encoded with its length prefix.
pub(crate) fn frame(f: &Frame) -> Vec<u8> {
    let mut b = vec![0u8; 4];
    b.push(f.kind());
    let u32s = |b: &mut Vec<u8>, v: &[u32]| {
        b.extend((v.len() as u32).to_le_bytes());
        v.iter().for_each(|x| b.extend(x.to_le_bytes()));
    };
    match f {
        Frame::Hello { version, node } => {
            b.extend(version.to_le_bytes());
            b.extend(node.to_le_bytes());
        }
        Frame::Welcome { epoch, max_message } => {
            b.extend(epoch.to_le_bytes());
            b.extend(max_message.to_le_bytes());
        }
        Frame::Refused { code } => b.extend(code.to_le_bytes()),
        Frame::Inject {
            ticket,
            group,
            bytes,
        } => {
            b.extend(ticket.to_le_bytes());
            match group {
                Group::All => b.extend(ALL_GROUP.to_le_bytes()),
                Group::Nodes(n) => u32s(&mut b, n),
            }
            b.extend(bytes);
        }
        Frame::Barrier | Frame::Leave | Frame::Crashed => {}
        Frame::Deliver { src, epoch, bytes } => {
            b.extend(src.to_le_bytes());
            b.extend(epoch.to_le_bytes());
            b.extend(bytes);
        }
        Frame::Ack(a) => {
            b.extend(a.ticket.to_le_bytes());
            b.extend(a.epoch.to_le_bytes());
            b.extend(a.delivered.to_le_bytes());
            b.extend(a.refused.to_le_bytes());
        }
        Frame::Closed { epoch, members } => {
            b.extend(epoch.to_le_bytes());
            u32s(&mut b, members);
        }
    }
    let len = (b.len() - 4) as u32;
    b[..4].copy_from_slice(&len.to_le_bytes());
    b
}

/// Why a frame was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum WireError {
    #[error("frame truncated")]
    Truncated,
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("frame of {0} bytes exceeds the limit")]
    TooLong(usize),
    #[error("{0} trailing bytes after the frame")]
    Trailing(usize),
}

struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], WireError> {
        if self.0.len() < n {
            return Err(WireError::Truncated);
        }
        let (h, t) = self.0.split_at(n);
        self.0 = t;
        Ok(h)
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn u32s(&mut self, n: u32) -> Result<Vec<u32>, WireError> {
        if (n as usize).saturating_mul(4) > self.0.len() {
            return Err(WireError::Truncated);
        }
        (0..n).map(|_| self.u32()).collect()
    }
    fn rest(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.0).to_vec()
    }
    fn end(&self) -> Result<(), WireError> {
        match self.0.len() {
            0 => Ok(()),
            n => Err(WireError::Trailing(n)),
        }
    }
}

/// Decodes a frame body (kind byte and fields, without the length prefix).
pub(crate) fn decode(body: &[u8]) -> Result<Frame, WireError> {
    let (&kind, rest) = body.split_first().ok_or(WireError::Truncated)?;
    let mut c = Cursor(rest);
    let f = match kind {
        1 => Frame::Hello {
            version: c.u32()?,
            node: c.u32()?,
        },
        2 => Frame::Welcome {
            epoch: c.u64()?,
            max_message: c.u32()?,
        },
        3 => Frame::Refused {
            code: c.u32()? as i32,
        },
        4 => {
            let ticket = c.u64()?;
            let n = c.u32()?;
            let group = if n == ALL_GROUP {
                Group::All
            } else {
                Group::Nodes(c.u32s(n)?)
            };
            Frame::Inject {
                ticket,
                group,
                bytes: c.rest(),
            }
        }
        5 => Frame::Barrier,
        6 => Frame::Leave,
        7 => Frame::Deliver {
            src: c.u32()?,
            epoch: c.u64()?,
            bytes: c.rest(),
        },
        8 => Frame::Ack(Ack {
            ticket: c.u64()?,
            epoch: c.u64()?,
            delivered: c.u32()?,
            refused: c.u32()?,
        }),
        9 => {
            let epoch = c.u64()?;
            let n = c.u32()?;
            Frame::Closed {
                epoch,
                members: c.u32s(n)?,
            }
        }
        10 => Frame::Crashed,
        k => return Err(WireError::UnknownKind(k)),
    };
    c.end()?;
    Ok(f)
}

/// Reads one frame; `Ok(None)` at a clean end of stream. A malformed frame is an
/// `InvalidData` error.
pub(crate) fn read(r: &mut impl Read) -> io::Result<Option<Frame>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            WireError::TooLong(len),
        ));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    decode(&body)
        .map(Some)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<Frame> {
        vec![
            Frame::Hello {
                version: 1,
                node: 7,
            },
            Frame::Welcome {
                epoch: 9,
                max_message: 100,
            },
            Frame::Refused { code: -3 },
            Frame::Inject {
                ticket: 5,
                group: Group::All,
                bytes: b"abc".to_vec(),
            },
            Frame::Inject {
                ticket: 6,
                group: Group::Nodes(vec![1, 2]),
                bytes: vec![],
            },
            Frame::Barrier,
            Frame::Leave,
            Frame::Deliver {
                src: 3,
                epoch: 4,
                bytes: b"x".to_vec(),
            },
            Frame::Ack(Ack {
                ticket: 1,
                epoch: 2,
                delivered: 3,
                refused: 4,
            }),
            Frame::Closed {
                epoch: 8,
                members: vec![1, 2, 3],
            },
            Frame::Crashed,
        ]
    }

    #[test]
    fn every_frame_round_trips() {
        for f in samples() {
            let bytes = frame(&f);
            assert_eq!(read(&mut &bytes[..]).unwrap(), Some(f));
        }
    }

    #[test]
    fn truncations_and_bit_flips_are_errors_or_other_frames_never_panics() {
        for f in samples() {
            let bytes = frame(&f);
            for cut in 0..bytes.len() - 4 {
                let body = &bytes[4..4 + cut];
                if let Ok(g) = decode(body) {
                    // Only an Inject/Deliver cut inside its payload can still decode.
                    assert!(matches!(g, Frame::Inject { .. } | Frame::Deliver { .. }));
                }
            }
            for i in 4..bytes.len() {
                for bit in 0..8 {
                    let mut b = bytes[4..].to_vec();
                    b[i - 4] ^= 1 << bit;
                    let _ = decode(&b);
                }
            }
        }
        assert_eq!(decode(&[99]), Err(WireError::UnknownKind(99)));
        assert_eq!(decode(&[5, 0]), Err(WireError::Trailing(1)));
        // A group count far beyond the frame is rejected before allocating.
        let mut huge = vec![4u8];
        huge.extend(1u64.to_le_bytes());
        huge.extend(0x7fff_fff0u32.to_le_bytes());
        assert_eq!(decode(&huge), Err(WireError::Truncated));
        let mut long = (u32::MAX).to_le_bytes().to_vec();
        long.push(5);
        assert!(read(&mut &long[..]).is_err());
    }
}
