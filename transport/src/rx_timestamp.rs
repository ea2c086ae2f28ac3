//! Kernel receive timestamps (`SO_TIMESTAMPING`): the time a datagram reached the network
//! stack (software) or the NIC (hardware), read from the `recvmsg` control data instead of
//! the clock after the receiving thread wakes up, so scheduling jitter stays out of one-way
//! delay and clock-offset measurements (the PTP backend's Δ and ε).
//!
//! The kernel switches timestamping on in the background, so the first datagrams after
//! [`enable`] may arrive without a stamp; callers fall back to reading their clock.
//!
//! Hardware timestamps also need the NIC's timestamping switched on (`hwstamp_ctl -i IF -r 1`,
//! or `ptp4l`, which does it); without that only software timestamps arrive, and
//! [`try_recv_from`] reports which kind it got.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::AsRawFd;

/// `SO_TIMESTAMPING` (and `SCM_TIMESTAMPING`) on 64-bit Linux, which `libc` does not export
/// for every target.
const SO_TIMESTAMPING: libc::c_int = 37;

/// Where a receive timestamp was taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// When the kernel's network stack received the packet.
    Software,
    /// When the NIC received it, on the NIC's clock (a PTP hardware clock).
    Hardware,
}

/// Asks the kernel to timestamp every datagram `socket` receives: in hardware if `want` is
/// [`Source::Hardware`] (falling back to software per packet where the NIC gives none),
/// otherwise in software.
pub fn enable(socket: &UdpSocket, want: Source) -> io::Result<()> {
    let mut flags = libc::SOF_TIMESTAMPING_RX_SOFTWARE | libc::SOF_TIMESTAMPING_SOFTWARE;
    if want == Source::Hardware {
        flags |= libc::SOF_TIMESTAMPING_RX_HARDWARE | libc::SOF_TIMESTAMPING_RAW_HARDWARE;
    }
    // SAFETY: a valid socket fd and a c_uint option value of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_TIMESTAMPING,
            (&flags as *const libc::c_uint).cast(),
            size_of::<libc::c_uint>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// One received datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Received {
    /// Bytes written into the buffer.
    pub len: usize,
    /// The sender.
    pub from: SocketAddr,
    /// The kernel's timestamp, in nanoseconds since the Unix epoch (hardware timestamps are
    /// on the NIC's clock), and where it was taken; `None` if timestamping is off.
    pub stamp: Option<(i64, Source)>,
}

/// Waits until `socket` has a datagram queued or `timeout` passed (to the microsecond,
/// unlike `SO_RCVTIMEO`, which counts in scheduler ticks of several ms). Returns whether
/// one is queued.
pub fn wait_readable(socket: &UdpSocket, timeout: std::time::Duration) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd: socket.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
    };
    // SAFETY: one valid pollfd and a valid timespec; no signal mask.
    let n = unsafe { libc::ppoll(&mut pfd, 1, &ts, std::ptr::null()) };
    match n {
        n if n < 0 => {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(e)
            }
        }
        0 => Ok(false),
        _ => Ok(true),
    }
}

/// Receives one queued datagram into `buf` with its kernel timestamp, or `WouldBlock` at
/// once when nothing is queued: callers wait with [`wait_readable`], whose timeouts are far
/// finer than a socket's.
pub fn try_recv_from(socket: &UdpSocket, buf: &mut [u8]) -> io::Result<Received> {
    // SAFETY: plain C structs, zero-initialized, filled in by recvmsg; every pointer in
    // `msg` points at a live local of the size given.
    unsafe {
        let mut addr: libc::sockaddr_storage = zeroed();
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // Room for one scm_timestamping (three timespecs) and some slack.
        let mut control = [0u64; 16];
        let mut msg: libc::msghdr = zeroed();
        msg.msg_name = (&mut addr as *mut libc::sockaddr_storage).cast();
        msg.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = size_of::<[u64; 16]>();
        let n = libc::recvmsg(socket.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut stamp = None;
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == SO_TIMESTAMPING {
                let ts: [libc::timespec; 3] =
                    std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                stamp = pick(&ts);
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
        Ok(Received {
            len: n as usize,
            from: to_socket_addr(&addr)?,
            stamp,
        })
    }
}

/// The hardware timestamp (`ts[2]`) if the NIC gave one, else the software one (`ts[0]`).
fn pick(ts: &[libc::timespec; 3]) -> Option<(i64, Source)> {
    let ns = |t: &libc::timespec| t.tv_sec * 1_000_000_000 + t.tv_nsec;
    let given = |t: &libc::timespec| t.tv_sec != 0 || t.tv_nsec != 0;
    if given(&ts[2]) {
        Some((ns(&ts[2]), Source::Hardware))
    } else if given(&ts[0]) {
        Some((ns(&ts[0]), Source::Software))
    } else {
        None
    }
}

fn to_socket_addr(a: &libc::sockaddr_storage) -> io::Result<SocketAddr> {
    match libc::c_int::from(a.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let v4: &libc::sockaddr_in = unsafe { &*(a as *const _ as *const libc::sockaddr_in) };
            let ip = u32::from_be(v4.sin_addr.s_addr).into();
            Ok(SocketAddrV4::new(ip, u16::from_be(v4.sin_port)).into())
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let v6: &libc::sockaddr_in6 = unsafe { &*(a as *const _ as *const libc::sockaddr_in6) };
            let ip = v6.sin6_addr.s6_addr.into();
            let port = u16::from_be(v6.sin6_port);
            Ok(SocketAddrV6::new(ip, port, v6.sin6_flowinfo, v6.sin6_scope_id).into())
        }
        f => Err(io::Error::other(format!(
            "datagram from address family {f}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Waits up to a second for a datagram, the way the ptp backend receives.
    fn recv_from(socket: &UdpSocket, buf: &mut [u8]) -> io::Result<Received> {
        wait_readable(socket, std::time::Duration::from_secs(1))?;
        try_recv_from(socket, buf)
    }
    use std::time::{SystemTime, UNIX_EPOCH};

    fn now_ns() -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as i64
    }

    #[test]
    fn loopback_datagrams_carry_software_timestamps_taken_before_the_read() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        enable(&rx, Source::Software).unwrap();
        // The kernel turns timestamping on asynchronously: wait for the first stamp.
        let mut buf = [0u8; 256];
        let ready = (0..200).any(|_| {
            tx.send_to(b"warm-up", rx.local_addr().unwrap()).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(5));
            recv_from(&rx, &mut buf).unwrap().stamp.is_some()
        });
        assert!(ready, "no timestamp within a second of enabling");
        for i in 0..20u8 {
            let sent = now_ns();
            tx.send_to(&[i; 100], rx.local_addr().unwrap()).unwrap();
            // Read late on purpose: the kernel's stamp must predate the read.
            std::thread::sleep(std::time::Duration::from_millis(2));
            let before_read = now_ns();
            let r = recv_from(&rx, &mut buf).unwrap();
            assert_eq!((r.len, r.from), (100, tx.local_addr().unwrap()));
            assert_eq!(buf[..100], [i; 100]);
            let (at, source) = r.stamp.expect("a kernel timestamp");
            assert_eq!(source, Source::Software);
            assert!(
                sent <= at && at < before_read,
                "{sent} <= {at} < {before_read}"
            );
            assert!(
                before_read - at >= 1_000_000,
                "the stamp is the arrival, not the read"
            );
        }
    }

    #[test]
    fn without_timestamping_no_stamp_is_reported() {
        let rx = UdpSocket::bind("[::1]:0").unwrap();
        let tx = UdpSocket::bind("[::1]:0").unwrap();
        tx.send_to(b"x", rx.local_addr().unwrap()).unwrap();
        let mut buf = [0u8; 8];
        let r = recv_from(&rx, &mut buf).unwrap();
        assert_eq!(
            (r.len, r.from, r.stamp),
            (1, tx.local_addr().unwrap(), None)
        );
    }

    #[test]
    fn a_hardware_stamp_wins_over_the_software_one() {
        let t = |s, n| libc::timespec {
            tv_sec: s,
            tv_nsec: n,
        };
        assert_eq!(
            pick(&[t(1, 5), t(0, 0), t(2, 7)]),
            Some((2_000_000_007, Source::Hardware))
        );
        assert_eq!(
            pick(&[t(1, 5), t(0, 0), t(0, 0)]),
            Some((1_000_000_005, Source::Software))
        );
        assert_eq!(pick(&[t(0, 0), t(0, 0), t(0, 0)]), None);
    }
}
