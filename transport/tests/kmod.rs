//! The kmod fabric over the real driver (/dev/rdmasock): rendezvous, streams, flow
//! control, half-close, teardown and the move back to kernel TCP, death of a peer.
//!
//! Run by mailbox-driver/test/run.sh inside a VM with the module loaded
//! (RDMASOCK_KMOD_REQUIRED=1 makes a missing device a failure). Without the device
//! (an ordinary `cargo test`), every device test passes as skipped.

use rdmasock_transport::conn::{wait_stream, WaitEnd};
use rdmasock_transport::fabric::{interest, Fabric, Reason, Shutdown, Stream, StreamError};
use rdmasock_transport::kmod::{uapi, Kmod};
use rdmasock_transport::wait::SpinPolicy;
use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn device() -> bool {
    if Kmod::available() {
        return true;
    }
    if std::env::var_os("RDMASOCK_KMOD_REQUIRED").is_some() {
        panic!("/dev/rdmasock is required (RDMASOCK_KMOD_REQUIRED) but not usable");
    }
    eprintln!("skipped: /dev/rdmasock is not available");
    false
}

fn ino(fd: RawFd) -> u64 {
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::fstat(fd, &mut st) }, 0);
    st.st_ino
}

fn block() -> SpinPolicy {
    SpinPolicy { budget: Duration::ZERO, cpus: 2 }
}

fn spin() -> SpinPolicy {
    SpinPolicy { budget: Duration::from_micros(50), cpus: 2 }
}

struct Conn {
    client: TcpStream,
    server: TcpStream,
    c: Arc<dyn Stream>,
    s: Arc<dyn Stream>,
}

/// A TCP connection on loopback, upgraded: the client offers before connect (as the
/// preload does), the server claims after accept.
fn connect(fabric: &Kmod, v6: bool) -> Conn {
    let l = TcpListener::bind(if v6 { "[::1]:0" } else { "127.0.0.1:0" }).unwrap();
    let addr = l.local_addr().unwrap();
    let fam = if v6 { libc::AF_INET6 } else { libc::AF_INET };
    let fd = unsafe { libc::socket(fam, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0);
    let client = unsafe { TcpStream::from_raw_fd(fd) };
    let offer = fabric.offer(fd, None).expect("offer");
    let sa = socket2_addr(&addr);
    assert_eq!(unsafe { libc::connect(fd, sa.0.as_ptr() as *const libc::sockaddr, sa.1) }, 0);
    let (server, _) = l.accept().unwrap();
    let s = fabric.claim(ino(fd), server.as_raw_fd()).map_err(|r| r.as_str()).expect("claim");
    assert_eq!(offer.decision(Duration::from_secs(2)), Some(true));
    let c = offer.into_stream();
    Conn { client, server, c, s }
}

/// A sockaddr for connect(2).
fn socket2_addr(a: &std::net::SocketAddr) -> (Vec<u8>, libc::socklen_t) {
    match a {
        std::net::SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(v4.ip().octets()) },
                sin_zero: [0; 8],
            };
            let b = unsafe { std::slice::from_raw_parts(&sin as *const _ as *const u8, std::mem::size_of_val(&sin)) };
            (b.to_vec(), std::mem::size_of_val(&sin) as u32)
        }
        std::net::SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as u16,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr { s6_addr: v6.ip().octets() },
                sin6_scope_id: 0,
            };
            let b = unsafe { std::slice::from_raw_parts(&sin6 as *const _ as *const u8, std::mem::size_of_val(&sin6)) };
            (b.to_vec(), std::mem::size_of_val(&sin6) as u32)
        }
    }
}

fn send_all(s: &dyn Stream, mut data: &[u8], policy: &SpinPolicy) {
    while !data.is_empty() {
        match s.enqueue(&[IoSlice::new(data)]) {
            Ok(n) => data = &data[n..],
            Err(StreamError::WouldBlock) => {
                assert_eq!(wait_stream(s, interest::SPACE, Some(Duration::from_secs(20)), policy), WaitEnd::Ready, "space");
            }
            Err(e) => panic!("enqueue: {e:?}"),
        }
    }
}

fn recv_exact(s: &dyn Stream, len: usize, policy: &SpinPolicy) -> Vec<u8> {
    let mut out = vec![0u8; len];
    let mut got = 0;
    while got < len {
        match s.dequeue(&mut [IoSliceMut::new(&mut out[got..])], false) {
            Ok(0) => panic!("EOF after {got} of {len}"),
            Ok(n) => got += n,
            Err(StreamError::WouldBlock) => {
                assert_eq!(wait_stream(s, interest::DATA, Some(Duration::from_secs(20)), policy), WaitEnd::Ready, "data");
            }
            Err(e) => panic!("dequeue: {e:?}"),
        }
    }
    out
}

/// Wait (bounded) until `cond`, probing the stream meanwhile.
fn eventually(s: &dyn Stream, what: &str, cond: impl Fn() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < Duration::from_secs(10), "timed out waiting: {what}");
        s.probe();
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn abi_matches_the_c_header() {
    // RDMASOCK_ABI_DUMP: the output of mailbox-driver/test/abi_dump (run.sh sets it).
    let Some(path) = std::env::var_os("RDMASOCK_ABI_DUMP") else {
        eprintln!("skipped: RDMASOCK_ABI_DUMP not set");
        return;
    };
    let text = std::fs::read_to_string(path).unwrap();
    let c: std::collections::HashMap<&str, u64> = text
        .lines()
        .filter_map(|l| l.rsplit_once(' '))
        .map(|(k, v)| (k, v.parse().unwrap()))
        .collect();
    let mut checked = 0;
    for (name, v) in uapi::IOCTLS.iter().copied().chain(uapi::layout_table()) {
        assert_eq!(c.get(name).copied(), Some(v), "{name}");
        checked += 1;
    }
    assert_eq!(checked, c.len(), "every C value has a Rust twin");
}

#[test]
fn send_receive_both_ways() {
    if !device() {
        return;
    }
    let k = Kmod::new(64 << 10);
    assert_eq!(k.name(), "kmod");
    let conn = connect(&k, false);
    let (c, s) = (&*conn.c, &*conn.s);
    assert!(!s.has_data());
    assert!(c.has_space() && s.has_space());
    assert_eq!(c.poll_events() & libc::POLLIN, 0);
    assert_ne!(c.poll_events() & libc::POLLOUT, 0);

    assert_eq!(c.enqueue(&[IoSlice::new(b"hello, "), IoSlice::new(b"kernel")]).unwrap(), 13);
    assert_eq!(c.tx_pending(), 13);
    assert!(s.has_data());
    assert_ne!(s.poll_events() & libc::POLLIN, 0);
    assert_eq!(s.rx_pending(), 13);
    let mut peek = [0u8; 5];
    assert_eq!(s.dequeue(&mut [IoSliceMut::new(&mut peek)], true).unwrap(), 5);
    assert_eq!(&peek, b"hello");
    assert_eq!(recv_exact(s, 13, &block()), b"hello, kernel");
    assert!(!s.has_data());
    assert_eq!(s.dequeue(&mut [IoSliceMut::new(&mut peek)], false), Err(StreamError::WouldBlock));

    assert_eq!(s.enqueue(&[IoSlice::new(b"back")]).unwrap(), 4);
    assert_eq!(recv_exact(c, 4, &block()), b"back");
    // The reply carried the server's credit: the client's bytes count as consumed.
    assert_eq!(c.tx_pending(), 0);
    assert_eq!(c.progress(), (4, 13));
    assert!(!c.peer_gone() && !c.moved());
}

#[test]
fn bulk_transfer_both_ways_with_flow_control() {
    if !device() {
        return;
    }
    for (ring, policy) in [(4096u64, block()), (16 << 10, spin())] {
        let k = Kmod::new(ring);
        let conn = connect(&k, false);
        let a = pattern(1, 3 << 20);
        let b = pattern(2, 1 << 20);
        // one thread per direction and side, as full duplex needs
        let (c1, s1, a1) = (conn.c.clone(), conn.s.clone(), a.clone());
        let c_tx = std::thread::spawn(move || {
            // odd-sized vectored writes
            for chunk in a1.chunks(5000) {
                let (x, y) = chunk.split_at(chunk.len() / 3);
                let mut done = 0;
                while done < chunk.len() {
                    let bufs: Vec<IoSlice> = if done < x.len() {
                        vec![IoSlice::new(&x[done..]), IoSlice::new(y)]
                    } else {
                        vec![IoSlice::new(&y[done - x.len()..])]
                    };
                    match c1.enqueue(&bufs) {
                        Ok(n) => done += n,
                        Err(StreamError::WouldBlock) => {
                            assert_eq!(wait_stream(&*c1, interest::SPACE, Some(Duration::from_secs(30)), &policy), WaitEnd::Ready);
                        }
                        Err(e) => panic!("{e:?}"),
                    }
                }
            }
        });
        let b1 = b.clone();
        let s_tx = std::thread::spawn(move || send_all(&*s1, &b1, &policy));
        let (c2, b_len) = (conn.c.clone(), b.len());
        let c_rx = std::thread::spawn(move || recv_exact(&*c2, b_len, &policy));
        let (s2, a_len) = (conn.s.clone(), a.len());
        let s_rx = std::thread::spawn(move || recv_exact(&*s2, a_len, &policy));
        c_tx.join().unwrap();
        s_tx.join().unwrap();
        assert!(s_rx.join().unwrap() == a, "client to server bytes intact (ring {ring})");
        assert!(c_rx.join().unwrap() == b, "server to client bytes intact (ring {ring})");
    }
}

#[test]
fn ipv6() {
    if !device() {
        return;
    }
    let k = Kmod::new(8192);
    let conn = connect(&k, true);
    send_all(&*conn.c, b"over v6", &block());
    assert_eq!(recv_exact(&*conn.s, 7, &block()), b"over v6");
}

#[test]
fn refuse_withdraw_and_no_offer() {
    if !device() {
        return;
    }
    let k = Kmod::new(8192);
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    // refused: the client hears at once
    let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let offer = k.offer(c.as_raw_fd(), None).unwrap();
    let (s, _) = l.accept().unwrap();
    assert_eq!(offer.decision(Duration::ZERO), None);
    k.refuse(ino(c.as_raw_fd()), s.as_raw_fd());
    assert_eq!(offer.decision(Duration::from_secs(2)), Some(false));
    assert!(offer.withdraw());
    assert_eq!(k.claim(ino(c.as_raw_fd()), s.as_raw_fd()).err(), Some(Reason::PeerNotShim));
    // withdrawn before the server looked
    let c2 = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let offer2 = k.offer(c2.as_raw_fd(), None).unwrap();
    let (s2, _) = l.accept().unwrap();
    assert!(offer2.withdraw());
    assert_eq!(k.claim(ino(c2.as_raw_fd()), s2.as_raw_fd()).err(), Some(Reason::PeerNotShim));
    // never offered
    let c3 = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (s3, _) = l.accept().unwrap();
    assert_eq!(k.claim(ino(c3.as_raw_fd()), s3.as_raw_fd()).err(), Some(Reason::PeerNotShim));
    // claimed first: the withdraw loses
    let c4 = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let offer4 = k.offer(c4.as_raw_fd(), None).unwrap();
    let (s4, _) = l.accept().unwrap();
    let st = k.claim(ino(c4.as_raw_fd()), s4.as_raw_fd()).unwrap();
    assert!(!offer4.withdraw());
    let ct = offer4.into_stream();
    send_all(&*st, b"x", &block());
    assert_eq!(recv_exact(&*ct, 1, &block()), b"x");
    // a wrong inode never matches
    let c5 = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let _offer5 = k.offer(c5.as_raw_fd(), None).unwrap();
    let (s5, _) = l.accept().unwrap();
    assert_eq!(k.claim(ino(c5.as_raw_fd()) + 1, s5.as_raw_fd()).err(), Some(Reason::PeerNotShim));
}

/// A listener announced to the driver is found by its address while it listens, at a
/// wildcard's any address of its family, and no more once the announcement's fd closes.
#[test]
fn an_announced_listener_is_found_while_announced() {
    if !device() {
        return;
    }
    use rdmasock_transport::addr::SockAddr;
    let k = Kmod::new(8192);
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let at = SockAddr(l.local_addr().unwrap());
    assert_eq!(k.find(&at), None);
    let held = k.announce(l.as_raw_fd()).expect("announced");
    assert_eq!(k.find(&at), Some(unsafe { libc::getuid() }));
    assert_eq!(k.find(&SockAddr(format!("127.0.0.2:{}", at.port()).parse().unwrap())), None);
    let wild = TcpListener::bind("[::]:0").unwrap();
    let _held2 = k.announce(wild.as_raw_fd()).unwrap();
    let port = wild.local_addr().unwrap().port();
    assert!(k.find(&SockAddr(format!("[::1]:{port}").parse().unwrap())).is_some());
    assert!(k.find(&SockAddr(format!("127.0.0.1:{port}").parse().unwrap())).is_some());
    drop(held);
    assert_eq!(k.find(&at), None);
    // Only a listening socket can be announced.
    let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    assert!(k.announce(c.as_raw_fd()).is_err());
}

#[test]
fn half_close_gives_eof_and_the_other_way_goes_on() {
    if !device() {
        return;
    }
    let k = Kmod::new(8192);
    let conn = connect(&k, false);
    let (c, s) = (&*conn.c, &*conn.s);
    send_all(c, b"last words", &block());
    c.shutdown(Shutdown::Write);
    assert_eq!(c.enqueue(&[IoSlice::new(b"more")]), Err(StreamError::Pipe));
    assert_eq!(recv_exact(s, 10, &block()), b"last words");
    let mut buf = [0u8; 8];
    assert_eq!(wait_stream(s, interest::DATA, Some(Duration::from_secs(5)), &block()), WaitEnd::Ready);
    assert_eq!(s.dequeue(&mut [IoSliceMut::new(&mut buf)], false), Ok(0));
    assert_ne!(s.poll_events() & libc::POLLRDHUP, 0);
    send_all(s, b"reply", &block());
    assert_eq!(recv_exact(c, 5, &block()), b"reply");
}

#[test]
fn peer_close_moves_to_kernel_tcp_with_eof() {
    if !device() {
        return;
    }
    let k = Kmod::new(8192);
    let conn = connect(&k, false);
    let Conn { mut client, server, c, s } = conn;
    send_all(&*s, b"bye", &block());
    send_all(&*c, b"read", &block());
    assert_eq!(recv_exact(&*s, 4, &block()), b"read");
    drop(s);
    drop(server);
    // the client still reads what was in its ring, then the kernel socket's EOF
    assert_eq!(recv_exact(&*c, 3, &block()), b"bye");
    eventually(&*c, "peer gone", || c.peer_gone());
    let mut buf = [0u8; 4];
    assert_eq!(c.dequeue(&mut [IoSliceMut::new(&mut buf)], false), Err(StreamError::Moved));
    assert!(c.moved());
    assert_eq!(c.enqueue(&[IoSlice::new(b"x")]), Err(StreamError::Moved));
    assert_eq!(client.read(&mut buf).unwrap(), 0);
}

#[test]
fn peer_close_with_unread_bytes_is_a_reset() {
    if !device() {
        return;
    }
    let k = Kmod::new(8192);
    let Conn { mut client, server, c, s } = connect(&k, false);
    send_all(&*c, b"never read", &block());
    assert!(s.has_data());
    drop(s); // unread bytes: the server's kernel socket closes with a reset
    drop(server);
    eventually(&*c, "peer gone", || c.peer_gone());
    let mut buf = [0u8; 4];
    let r = c.dequeue(&mut [IoSliceMut::new(&mut buf)], false);
    assert!(matches!(r, Err(StreamError::Moved) | Err(StreamError::Reset)), "{r:?}");
    if r == Err(StreamError::Moved) {
        let e = client.read(&mut buf).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset);
    }
}

#[test]
fn leaving_peer_gets_its_unread_bytes_over_tcp() {
    if !device() {
        return;
    }
    let k = Kmod::new(8192);
    let Conn { client: _client, mut server, c, s } = connect(&k, false);
    send_all(&*c, b"in flight", &block());
    // the server's socket is passed on: it leaves the ring without reading
    s.leave();
    assert!(s.moved());
    assert_eq!(s.dequeue(&mut [IoSliceMut::new(&mut [0u8; 4])], false), Err(StreamError::Moved));
    // the client re-sends what the server never consumed, over TCP
    eventually(&*c, "peer left", || c.peer_gone());
    assert_eq!(c.enqueue(&[IoSlice::new(b"x")]), Err(StreamError::Moved));
    let mut buf = [0u8; 9];
    server.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    server.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"in flight");
}

#[test]
fn death_of_the_peer_reports_its_exact_consumption() {
    if !device() {
        return;
    }
    let k = Kmod::new(8192);
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    struct Reap(std::process::Child);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Reap(
        std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "child_client", "--nocapture", "--test-threads=1"])
            .env("KMOD_CHILD_PORT", port.to_string())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let (server, _) = l.accept().unwrap();
    // the child's socket inode is not known here: match by the 4-tuple alone
    let s = k.claim(0, server.as_raw_fd()).map_err(|r| r.as_str()).expect("claim the child's offer");
    send_all(&*s, &pattern(7, 3000), &block());
    // the child reads 1000 bytes, then says so
    let mut out = std::io::BufReader::new(child.0.stdout.take().unwrap());
    let mut said = String::new();
    loop {
        let mut line = String::new();
        if std::io::BufRead::read_line(&mut out, &mut line).unwrap() == 0 {
            panic!("the child ended before reading: {said}");
        }
        said.push_str(&line);
        if line.contains("read 1000") {
            break;
        }
    }
    drop(child); // SIGKILL
    eventually(&*s, "peer gone", || s.peer_gone());
    // the driver read the dead child's consumed count from its memory
    assert_eq!(s.tx_pending(), 2000);
    // its kernel socket closed with a FIN while our bytes were unread: a reset
    let mut buf = [0u8; 4];
    assert_eq!(s.dequeue(&mut [IoSliceMut::new(&mut buf)], false), Err(StreamError::Reset));
}

/// The child of `death_of_the_peer_reports_its_exact_consumption` (does nothing unless
/// started by it).
#[test]
fn child_client() {
    let Ok(port) = std::env::var("KMOD_CHILD_PORT") else { return };
    let k = Kmod::new(8192);
    // offer, then connect, as the preload does (the server claims right after accept)
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    let _c = unsafe { TcpStream::from_raw_fd(fd) };
    let offer = k.offer(fd, None).unwrap();
    let sa = socket2_addr(&std::net::SocketAddr::from(([127, 0, 0, 1], port.parse::<u16>().unwrap())));
    assert_eq!(unsafe { libc::connect(fd, sa.0.as_ptr() as *const libc::sockaddr, sa.1) }, 0);
    assert_eq!(offer.decision(Duration::from_secs(5)), Some(true));
    let st = offer.into_stream();
    assert_eq!(recv_exact(&*st, 1000, &block()), pattern(7, 3000)[..1000]);
    println!("read 1000");
    std::io::stdout().flush().unwrap();
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[test]
fn endpoint_fds_close_with_the_stream() {
    if !device() {
        return;
    }
    let k = Kmod::new(8192);
    let count = || std::fs::read_dir("/proc/self/fd").unwrap().count();
    let before = count();
    let conn = connect(&k, false);
    assert!(count() > before);
    drop(conn);
    assert_eq!(count(), before);
}

#[test]
fn poll_step_watches_the_doorbell_beside_kernel_fds() {
    use rdmasock_transport::conn::{poll_step, PollItem};
    if !device() {
        return;
    }
    let k = Kmod::new(8192);
    let conn = connect(&k, false);
    let mut p = [0 as RawFd; 2];
    assert_eq!(unsafe { libc::pipe(p.as_mut_ptr()) }, 0);
    let items = [PollItem { stream: &*conn.s, interest: interest::DATA, events: libc::POLLIN }];
    // nothing yet: times out
    let mut kfds = [libc::pollfd { fd: p[0], events: libc::POLLIN, revents: 0 }];
    assert_eq!(poll_step(&items, &mut kfds, Some(Duration::from_millis(20)), None).unwrap(), 0);
    assert!(!items[0].ready());
    // the peer writes a little later: the doorbell wakes the poll
    let c = conn.c.clone();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        send_all(&*c, b"ding", &block());
    });
    let start = Instant::now();
    while !items[0].ready() {
        assert!(start.elapsed() < Duration::from_secs(10), "poll never saw the data");
        let mut kfds = [libc::pollfd { fd: p[0], events: libc::POLLIN, revents: 0 }];
        assert_eq!(poll_step(&items, &mut kfds, Some(Duration::from_secs(5)), None).unwrap(), 0);
    }
    t.join().unwrap();
    assert_eq!(recv_exact(&*conn.s, 4, &block()), b"ding");
    // a kernel fd that turns ready first is reported as such
    assert_eq!(unsafe { libc::write(p[1], b"k".as_ptr() as *const libc::c_void, 1) }, 1);
    let mut kfds = [libc::pollfd { fd: p[0], events: libc::POLLIN, revents: 0 }];
    assert_eq!(poll_step(&items, &mut kfds, Some(Duration::from_secs(5)), None).unwrap(), 1);
    assert_ne!(kfds[0].revents & libc::POLLIN, 0);
    // the peer's close shows as a hang-up of the doorbell: the stream turns readable
    let Conn { client, c, .. } = conn;
    drop(c);
    drop(client);
    let start = Instant::now();
    while !items[0].ready() {
        assert!(start.elapsed() < Duration::from_secs(10), "poll never saw the close");
        let mut kfds: [libc::pollfd; 0] = [];
        poll_step(&items, &mut kfds, Some(Duration::from_secs(5)), None).unwrap();
    }
    assert!(conn_s_gone(&items));
    unsafe {
        libc::close(p[0]);
        libc::close(p[1]);
    }
}

fn conn_s_gone(items: &[rdmasock_transport::conn::PollItem<'_>]) -> bool {
    eventually(items[0].stream, "peer gone", || items[0].stream.peer_gone());
    true
}
