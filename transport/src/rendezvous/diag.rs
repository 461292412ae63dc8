//! Asking the kernel who is on the other end of a local TCP connection (sock_diag /
//! NETLINK_SOCK_DIAG, an exact-match INET_DIAG query). The answer is kernel-verified: the
//! peer socket's inode (which names its offer in the registry) and its owner's uid.
//! When the peer socket is not on this host (or not in this network namespace), the
//! kernel has no such socket and the lookup finds nothing.
#![allow(unsafe_code)]

use crate::addr::SockAddr;
use std::io;
use std::mem::size_of;
use std::net::IpAddr;

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NETLINK_SOCK_DIAG: i32 = 4;

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct NlMsgHdr {
    len: u32,
    ty: u16,
    flags: u16,
    seq: u32,
    pid: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct InetDiagSockId {
    sport: [u8; 2],
    dport: [u8; 2],
    src: [u8; 16],
    dst: [u8; 16],
    ifindex: u32,
    cookie: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct InetDiagReqV2 {
    family: u8,
    protocol: u8,
    ext: u8,
    pad: u8,
    states: u32,
    id: InetDiagSockId,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct InetDiagMsg {
    family: u8,
    state: u8,
    timer: u8,
    retrans: u8,
    id: InetDiagSockId,
    expires: u32,
    rqueue: u32,
    wqueue: u32,
    uid: u32,
    inode: u32,
}

const _: () = {
    assert!(size_of::<NlMsgHdr>() == 16);
    assert!(size_of::<InetDiagSockId>() == 48);
    assert!(size_of::<InetDiagReqV2>() == 56);
    assert!(size_of::<InetDiagMsg>() == 72);
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerSocket {
    pub uid: u32,
    pub inode: u64,
}

/// Find the TCP socket whose local address is `src` and remote address `dst` (for the
/// accepting side: `src` = the client's address, `dst` = our own).
pub fn lookup(src: SockAddr, dst: SockAddr) -> io::Result<Option<PeerSocket>> {
    // A client socket of either family may carry an IPv4 connection (IPv6 sockets use
    // mapped addresses); ask as the address's own family first.
    let v4 = matches!((src.ip(), dst.ip()), (IpAddr::V4(_), IpAddr::V4(_)));
    let families: &[u8] = if v4 { &[libc::AF_INET as u8, libc::AF_INET6 as u8] } else { &[libc::AF_INET6 as u8] };
    for &fam in families {
        if let Some((p, _)) = query(fam, src, dst, 0)? {
            return Ok(Some(p));
        }
    }
    Ok(None)
}

/// The kernel's byte counts of the TCP socket with local address `local` and remote
/// `peer` (tcp_info's bytes_received; bytes_sent less bytes_retrans), for `rdmasock stat`: what went over
/// kernel TCP, whoever holds the socket. None: no such socket here.
pub fn tcp_bytes(local: SockAddr, peer: SockAddr) -> Option<(u64, u64)> {
    let v4 = matches!((local.ip(), peer.ip()), (IpAddr::V4(_), IpAddr::V4(_)));
    let families: &[u8] = if v4 { &[libc::AF_INET as u8, libc::AF_INET6 as u8] } else { &[libc::AF_INET6 as u8] };
    families.iter().find_map(|&fam| query(fam, local, peer, 1 << (INET_DIAG_INFO - 1)).ok().flatten()).and_then(|(_, b)| b)
}

const INET_DIAG_INFO: u16 = 2;
/// Offsets in struct tcp_info (include/uapi/linux/tcp.h, Linux 4.19 on) of
/// tcpi_bytes_received, tcpi_bytes_sent and tcpi_bytes_retrans (bytes_acked would count
/// the active opener's SYN).
const TCPI_BYTES_RECEIVED: usize = 128;
const TCPI_BYTES_SENT: usize = 200;
const TCPI_BYTES_RETRANS: usize = 208;

type Answer = (PeerSocket, Option<(u64, u64)>);

fn query(family: u8, src: SockAddr, dst: SockAddr, ext: u8) -> io::Result<Option<Answer>> {
    let mut id = InetDiagSockId { cookie: [u32::MAX; 2], ..Default::default() };
    id.sport = src.port().to_be_bytes();
    id.dport = dst.port().to_be_bytes();
    let put = |a: SockAddr, out: &mut [u8; 16]| {
        if family == libc::AF_INET as u8 {
            if let IpAddr::V4(v4) = a.ip() {
                out[..4].copy_from_slice(&v4.octets());
            }
        } else {
            *out = a.ip_bytes();
        }
    };
    put(src, &mut id.src);
    put(dst, &mut id.dst);
    let req = InetDiagReqV2 { family, protocol: libc::IPPROTO_TCP as u8, ext, pad: 0, states: u32::MAX, id };
    #[repr(C)]
    struct Msg {
        hdr: NlMsgHdr,
        req: InetDiagReqV2,
    }
    let msg = Msg {
        hdr: NlMsgHdr {
            len: size_of::<Msg>() as u32,
            ty: SOCK_DIAG_BY_FAMILY,
            flags: libc::NLM_F_REQUEST as u16,
            seq: 1,
            pid: 0,
        },
        req,
    };
    NL.with(|msg_seq, fd| {
        let mut msg = msg;
        msg.hdr.seq = msg_seq;
        // SAFETY: msg is plain old data of the given size.
        let bytes = unsafe { std::slice::from_raw_parts(&msg as *const Msg as *const u8, size_of::<Msg>()) };
        crate::sys::send(fd, bytes, 0)?;
        // The kernel answers within the send; an answer to an earlier question that was
        // never read (its reader was interrupted) is skipped by its sequence number.
        let mut buf = [0u8; 2048];
        loop {
            let n = crate::sys::recv(fd, &mut buf, 0)?;
            if seq_of(&buf[..n]) == Some(msg_seq) {
                return parse_reply(&buf[..n]);
            }
        }
    })
}

/// The process's sock_diag socket: opened on first use, kept (hidden, close-on-exec),
/// replaced in a forked child, which must not read its parent's answers.
struct NlCache(parking_lot::Mutex<Option<(u32, u32, crate::sys::Fd)>>);

static NL: NlCache = NlCache(parking_lot::Mutex::new(None));

impl NlCache {
    fn with<T>(&self, f: impl FnOnce(u32, i32) -> io::Result<T>) -> io::Result<T> {
        use std::os::fd::AsRawFd;
        // Busy (another thread is asking, or a fork left the lock taken): a socket of
        // our own for this one question.
        let Some(mut g) = self.0.try_lock() else {
            let fd = nl_socket()?;
            return f(1, fd.as_raw_fd());
        };
        let pid = crate::sys::pid();
        if !matches!(g.as_ref(), Some((owner, _, _)) if *owner == pid) {
            // A forked child closes its copy of the parent's socket.
            *g = None;
            *g = Some((pid, 0, crate::wait::hide_fd(nl_socket()?)));
        }
        let (_, seq, fd) = g.as_mut().expect("set above");
        *seq = seq.wrapping_add(1).max(2);
        let r = f(*seq, fd.as_raw_fd());
        if r.is_err() {
            // A broken socket is not kept.
            *g = None;
        }
        r
    }
}

fn seq_of(b: &[u8]) -> Option<u32> {
    (b.len() >= size_of::<NlMsgHdr>()).then(|| {
        // SAFETY: length checked; read_unaligned copes with any alignment.
        unsafe { std::ptr::read_unaligned(b.as_ptr() as *const NlMsgHdr) }.seq
    })
}

fn parse_reply(b: &[u8]) -> io::Result<Option<Answer>> {
    if b.len() < size_of::<NlMsgHdr>() {
        return Err(io::Error::from_raw_os_error(libc::EPROTO));
    }
    // SAFETY: length checked; read_unaligned copes with any alignment.
    let hdr: NlMsgHdr = unsafe { std::ptr::read_unaligned(b.as_ptr() as *const NlMsgHdr) };
    if hdr.ty == libc::NLMSG_ERROR as u16 {
        // ENOENT: no such socket here.
        return Ok(None);
    }
    if hdr.ty != SOCK_DIAG_BY_FAMILY || b.len() < size_of::<NlMsgHdr>() + size_of::<InetDiagMsg>() {
        return Err(io::Error::from_raw_os_error(libc::EPROTO));
    }
    // SAFETY: length checked above.
    let m: InetDiagMsg = unsafe { std::ptr::read_unaligned(b.as_ptr().add(size_of::<NlMsgHdr>()) as *const InetDiagMsg) };
    // Attributes (struct rtattr: u16 len, u16 type, 4-byte aligned) up to the message's end.
    let end = (hdr.len as usize).min(b.len());
    let mut at = size_of::<NlMsgHdr>() + size_of::<InetDiagMsg>();
    let mut bytes = None;
    while at + 4 <= end {
        let len = u16::from_ne_bytes([b[at], b[at + 1]]) as usize;
        let ty = u16::from_ne_bytes([b[at + 2], b[at + 3]]);
        if len < 4 || at + len > end {
            break;
        }
        let val = &b[at + 4..at + len];
        if ty == INET_DIAG_INFO && val.len() >= TCPI_BYTES_RETRANS + 8 {
            let u = |o: usize| u64::from_ne_bytes(val[o..o + 8].try_into().expect("8 bytes"));
            bytes = Some((u(TCPI_BYTES_RECEIVED), u(TCPI_BYTES_SENT).saturating_sub(u(TCPI_BYTES_RETRANS))));
        }
        at += (len + 3) & !3;
    }
    Ok(Some((PeerSocket { uid: m.uid, inode: m.inode as u64 }, bytes)))
}

fn nl_socket() -> io::Result<crate::sys::Fd> {
    // Raw system call: socket() is intercepted by the preload library.
    // SAFETY: plain syscall.
    let r = unsafe {
        libc::syscall(libc::SYS_socket, libc::AF_NETLINK, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, NETLINK_SOCK_DIAG)
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(crate::sys::owned(r as i32))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    #[test]
    fn finds_the_client_socket_of_a_loopback_connection() {
        for host in ["127.0.0.1:0", "[::1]:0"] {
            let l = TcpListener::bind(host).unwrap();
            let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
            let (_s, peer) = l.accept().unwrap();
            let found = lookup(SockAddr(peer), SockAddr(l.local_addr().unwrap())).unwrap().unwrap();
            let st = crate::sys::fstat(c.as_raw_fd()).unwrap();
            assert_eq!(found.inode, st.st_ino);
            assert_eq!(found.uid, crate::sys::getuid());
        }
    }

    #[test]
    fn tcp_byte_counts_of_a_loopback_connection() {
        use std::io::{Read, Write};
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut s, _) = l.accept().unwrap();
        c.write_all(&[7u8; 5000]).unwrap();
        let mut b = vec![0u8; 5000];
        s.read_exact(&mut b).unwrap();
        s.write_all(&[1u8; 300]).unwrap();
        c.read_exact(&mut b[..300]).unwrap();
        let (l_addr, c_addr) = (SockAddr(c.local_addr().unwrap()), SockAddr(c.peer_addr().unwrap()));
        // Both counts are taken as segments are sent and received: every byte was read
        // above, so they are final.
        assert_eq!(tcp_bytes(l_addr, c_addr), Some((300, 5000)));
        assert_eq!(tcp_bytes(c_addr, l_addr), Some((5000, 300)));
    }

    #[test]
    fn nothing_for_a_socket_that_does_not_exist() {
        let a = SockAddr("127.0.0.1:1".parse().unwrap());
        let b = SockAddr("127.0.0.1:2".parse().unwrap());
        assert_eq!(lookup(a, b).unwrap(), None);
    }
}
