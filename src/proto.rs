//! The application-level echo protocol of `weft transport ping` and `weft transport echo`.
//!
//! A message is one kind byte ([`PING`] or [`PONG`]), a big-endian `u64` sequence number,
//! then zero padding up to the size the pinger asked for. A pong is its ping with the kind
//! byte flipped, so it has the same size and the round trip carries the payload both ways.

use bytes::{BufMut, Bytes, BytesMut};

/// Kind byte of a ping.
pub const PING: u8 = 0;
/// Kind byte of a pong.
pub const PONG: u8 = 1;
/// Bytes before the padding: the kind byte and the sequence number.
pub const HEADER_LEN: usize = 1 + 8;

/// The two message kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A request to echo.
    Ping,
    /// The echo.
    Pong,
}

/// Builds a message of `kind` with sequence number `seq`, padded to `size` bytes (or to
/// [`HEADER_LEN`] if `size` is smaller).
pub fn encode(kind: Kind, seq: u64, size: usize) -> Bytes {
    let size = size.max(HEADER_LEN);
    let mut buf = BytesMut::with_capacity(size);
    buf.put_u8(match kind {
        Kind::Ping => PING,
        Kind::Pong => PONG,
    });
    buf.put_u64(seq);
    buf.resize(size, 0);
    buf.freeze()
}

/// Reads the kind and sequence number of a message; `None` if it is too short or its kind
/// byte is unknown (it is then not part of this protocol and is ignored).
pub fn decode(msg: &[u8]) -> Option<(Kind, u64)> {
    if msg.len() < HEADER_LEN {
        return None;
    }
    let kind = match msg[0] {
        PING => Kind::Ping,
        PONG => Kind::Pong,
        _ => return None,
    };
    let seq = u64::from_be_bytes(msg[1..HEADER_LEN].try_into().ok()?);
    Some((kind, seq))
}

/// The pong answering `ping`: the same bytes with the kind byte set to [`PONG`]. `None` if
/// `ping` is not a ping.
pub fn pong_for(ping: &[u8]) -> Option<Bytes> {
    match decode(ping)? {
        (Kind::Ping, _) => {
            let mut pong = BytesMut::from(ping);
            pong[0] = PONG;
            Some(pong.freeze())
        }
        (Kind::Pong, _) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_with_padding() {
        let msg = encode(Kind::Ping, 0x0102_0304_0506_0708, 64);
        assert_eq!(msg.len(), 64);
        assert_eq!(&msg[..HEADER_LEN], &[0, 1, 2, 3, 4, 5, 6, 7, 8]);
        assert!(msg[HEADER_LEN..].iter().all(|b| *b == 0));
        assert_eq!(decode(&msg), Some((Kind::Ping, 0x0102_0304_0506_0708)));
    }

    #[test]
    fn small_sizes_still_carry_the_header() {
        let msg = encode(Kind::Pong, 7, 0);
        assert_eq!(msg.len(), HEADER_LEN);
        assert_eq!(decode(&msg), Some((Kind::Pong, 7)));
    }

    #[test]
    fn rejects_short_and_foreign_messages() {
        assert_eq!(decode(&[]), None);
        assert_eq!(decode(&[PING, 0, 0, 0]), None);
        assert_eq!(decode(&[9; 16]), None);
    }

    #[test]
    fn pong_mirrors_the_ping() {
        let ping = encode(Kind::Ping, 42, 100);
        let pong = pong_for(&ping).unwrap();
        assert_eq!(pong.len(), 100);
        assert_eq!(decode(&pong), Some((Kind::Pong, 42)));
        assert_eq!(&pong[1..], &ping[1..]);
        assert_eq!(pong_for(&pong), None, "pongs are not answered");
    }
}
