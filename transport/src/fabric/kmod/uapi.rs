//! The user API of the kernel mailbox driver (`/dev/rdmasock`): a Rust binding of
//! `mailbox-driver/include/uapi/rdmasock.h`. Every struct is `repr(C)` with its size
//! and field offsets asserted at compile time against the header; the ioctl numbers
//! are computed as the kernel's `_IOC` macros do. Every call is a raw `syscall(2)`
//! (the preload intercepts libc's `ioctl` and `read`).
//!
//! Layout rules of the header, kept here: fixed-width fields, explicit padding,
//! 64-bit fields at 8-byte offsets, sizes multiples of 8.
#![allow(unsafe_code)]

use std::io;
use std::mem::{offset_of, size_of};
use std::os::fd::RawFd;

pub const DEVICE: &str = "/dev/rdmasock";
pub const ABI_VERSION: u32 = 2;
pub const MAX_REGIONS: usize = 4;

/// Endpoint states.
pub mod state {
    pub const IDLE: u32 = 0;
    pub const OFFERED: u32 = 1;
    pub const CONNECTED: u32 = 2;
    pub const REFUSED: u32 = 3;
    pub const CLOSED: u32 = 4;
}

/// Message types.
pub mod msg {
    pub const ACCEPTED: u16 = 1;
    pub const REFUSED: u16 = 2;
    pub const WRITE: u16 = 3;
    pub const NOTIFY: u16 = 4;
    pub const REGION: u16 = 5;
    pub const CLOSE: u16 = 6;
}

/// Message flags.
pub mod msgf {
    pub const COALESCE: u16 = 0x1;
    pub const MERGED: u16 = 0x2;
    pub const REPLACE: u16 = 0x4;
    /// CLOSE: `imm` is the peer's close value.
    pub const VALUE: u16 = 0x8;
}

/// Region flag: a close value (not writable by the peer; its first u64 is sent to the
/// peer in our CLOSE message when our endpoint is released, even if we die).
pub const REG_CLOSE_VALUE: u32 = 0x1;

pub const CLOSE_RELEASED: u32 = 1;
pub const ACCEPT_REFUSE: u32 = 0x1;
pub const WRITE_COALESCE: u32 = 0x1;
pub const NOTIFY_REPLACE: u32 = 0x1;
/// Endpoint flag: read(2) is a doorbell (one byte while mail is queued, 0 once the
/// peer is gone), mail is taken with RECV.
pub const EPF_DOORBELL: u32 = 0x1;

/// `struct rdmasock_msg`
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Msg {
    pub kind: u16,
    pub flags: u16,
    pub info: u32,
    pub offset: u64,
    pub len: u64,
    pub imm: u64,
}

/// `struct rdmasock_reg`
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Reg {
    pub addr: u64,
    pub len: u64,
    pub flags: u32,
    pub id: u32,
}

/// `struct rdmasock_offer`
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct OfferArg {
    pub sock_fd: i32,
    pub flags: u32,
    pub sock_ino: u64,
}

/// `struct rdmasock_accept`
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct AcceptArg {
    pub sock_fd: i32,
    pub flags: u32,
    pub peer_ino: u64,
    pub peer_uid: u32,
    pub peer_pid: u32,
}

/// `struct rdmasock_write`
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct WriteArg {
    pub addr: u64,
    pub len: u64,
    pub offset: u64,
    pub imm: u64,
    pub region: u32,
    pub flags: u32,
}

/// `struct rdmasock_notify`
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct NotifyArg {
    pub imm: u64,
    pub tag: u32,
    pub flags: u32,
}

/// `struct rdmasock_recv`
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct RecvArg {
    pub msgs: u64,
    pub max: u32,
    pub count: u32,
    pub state: u32,
    pub pending: u32,
    pub peer_cpu: u32,
    pub peer_sleeping: u32,
    pub reserved: u32,
    pub pad: u32,
}

/// `struct rdmasock_info`
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Info {
    pub state: u32,
    pub flags: u32,
    pub peer_uid: u32,
    pub peer_pid: u32,
    pub peer_region_len: [u64; MAX_REGIONS],
    pub mbox_depth: u32,
    pub pad: u32,
}

/// `struct rdmasock_listen`
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ListenArg {
    pub sock_fd: i32,
    pub flags: u32,
}

/// `struct rdmasock_find`
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FindArg {
    /// IPv4 as IPv4-mapped IPv6.
    pub addr: [u8; 16],
    /// Host order.
    pub port: u16,
    pub pad: u16,
    pub flags: u32,
    pub uid: u32,
    pub pid: u32,
}

macro_rules! layout {
    ($t:ty, $size:expr, $($field:ident @ $off:expr),* $(,)?) => {
        const _: () = assert!(size_of::<$t>() == $size);
        $(const _: () = assert!(offset_of!($t, $field) == $off);)*
    };
}

layout!(Msg, 32, kind @ 0, flags @ 2, info @ 4, offset @ 8, len @ 16, imm @ 24);
layout!(Reg, 24, addr @ 0, len @ 8, flags @ 16, id @ 20);
layout!(OfferArg, 16, sock_fd @ 0, flags @ 4, sock_ino @ 8);
layout!(AcceptArg, 24, sock_fd @ 0, flags @ 4, peer_ino @ 8, peer_uid @ 16, peer_pid @ 20);
layout!(WriteArg, 40, addr @ 0, len @ 8, offset @ 16, imm @ 24, region @ 32, flags @ 36);
layout!(NotifyArg, 16, imm @ 0, tag @ 8, flags @ 12);
layout!(RecvArg, 40, msgs @ 0, max @ 8, count @ 12, state @ 16, pending @ 20, peer_cpu @ 24,
    peer_sleeping @ 28, reserved @ 32, pad @ 36);
layout!(ListenArg, 8, sock_fd @ 0, flags @ 4);
layout!(FindArg, 32, addr @ 0, port @ 16, pad @ 18, flags @ 20, uid @ 24, pid @ 28);
layout!(Info, 56, state @ 0, flags @ 4, peer_uid @ 8, peer_pid @ 12, peer_region_len @ 16,
    mbox_depth @ 48, pad @ 52);

/// The kernel's `_IOC(dir, type, nr, size)` (x86, arm, riscv: 2 direction bits at 30,
/// 14 size bits at 16).
const fn ioc(dir: u32, nr: u32, size: usize) -> u64 {
    ((dir << 30) | ((size as u32) << 16) | (MAGIC << 8) | nr) as u64
}
const NONE: u32 = 0;
const W: u32 = 1;
const R: u32 = 2;
pub const MAGIC: u32 = 0xDA;

pub const IOC_VERSION: u64 = ioc(R, 0, size_of::<u32>());
pub const IOC_SET_FLAGS: u64 = ioc(W, 1, size_of::<u32>());
pub const IOC_REG: u64 = ioc(R | W, 2, size_of::<Reg>());
pub const IOC_UNREG: u64 = ioc(W, 3, size_of::<u32>());
pub const IOC_OFFER: u64 = ioc(R | W, 4, size_of::<OfferArg>());
pub const IOC_ACCEPT: u64 = ioc(R | W, 5, size_of::<AcceptArg>());
pub const IOC_WITHDRAW: u64 = ioc(NONE, 6, 0);
pub const IOC_WRITE: u64 = ioc(W, 7, size_of::<WriteArg>());
pub const IOC_NOTIFY: u64 = ioc(W, 8, size_of::<NotifyArg>());
pub const IOC_RECV: u64 = ioc(R | W, 9, size_of::<RecvArg>());
pub const IOC_INFO: u64 = ioc(R, 10, size_of::<Info>());
pub const IOC_RING_SELF: u64 = ioc(NONE, 11, 0);
pub const IOC_LISTEN: u64 = ioc(W, 12, size_of::<ListenArg>());
pub const IOC_FIND: u64 = ioc(R | W, 13, size_of::<FindArg>());

/// Every ioctl number with its name, for comparing with the C header (see the test).
pub const IOCTLS: [(&str, u64); 14] = [
    ("RDMASOCK_IOC_VERSION", IOC_VERSION),
    ("RDMASOCK_IOC_SET_FLAGS", IOC_SET_FLAGS),
    ("RDMASOCK_IOC_REG", IOC_REG),
    ("RDMASOCK_IOC_UNREG", IOC_UNREG),
    ("RDMASOCK_IOC_OFFER", IOC_OFFER),
    ("RDMASOCK_IOC_ACCEPT", IOC_ACCEPT),
    ("RDMASOCK_IOC_WITHDRAW", IOC_WITHDRAW),
    ("RDMASOCK_IOC_WRITE", IOC_WRITE),
    ("RDMASOCK_IOC_NOTIFY", IOC_NOTIFY),
    ("RDMASOCK_IOC_RECV", IOC_RECV),
    ("RDMASOCK_IOC_INFO", IOC_INFO),
    ("RDMASOCK_IOC_RING_SELF", IOC_RING_SELF),
    ("RDMASOCK_IOC_LISTEN", IOC_LISTEN),
    ("RDMASOCK_IOC_FIND", IOC_FIND),
];

/// Sizes and offsets as `abi_dump` (mailbox-driver/test/abi_dump.c) names them.
pub fn layout_table() -> Vec<(&'static str, u64)> {
    vec![
        ("sizeof(rdmasock_msg)", size_of::<Msg>() as u64),
        ("offsetof(rdmasock_msg.info)", offset_of!(Msg, info) as u64),
        ("offsetof(rdmasock_msg.imm)", offset_of!(Msg, imm) as u64),
        ("sizeof(rdmasock_reg)", size_of::<Reg>() as u64),
        ("offsetof(rdmasock_reg.id)", offset_of!(Reg, id) as u64),
        ("sizeof(rdmasock_offer)", size_of::<OfferArg>() as u64),
        ("offsetof(rdmasock_offer.sock_ino)", offset_of!(OfferArg, sock_ino) as u64),
        ("sizeof(rdmasock_accept)", size_of::<AcceptArg>() as u64),
        ("offsetof(rdmasock_accept.peer_pid)", offset_of!(AcceptArg, peer_pid) as u64),
        ("sizeof(rdmasock_write)", size_of::<WriteArg>() as u64),
        ("offsetof(rdmasock_write.region)", offset_of!(WriteArg, region) as u64),
        ("offsetof(rdmasock_write.flags)", offset_of!(WriteArg, flags) as u64),
        ("sizeof(rdmasock_notify)", size_of::<NotifyArg>() as u64),
        ("offsetof(rdmasock_notify.tag)", offset_of!(NotifyArg, tag) as u64),
        ("sizeof(rdmasock_recv)", size_of::<RecvArg>() as u64),
        ("offsetof(rdmasock_recv.peer_sleeping)", offset_of!(RecvArg, peer_sleeping) as u64),
        ("offsetof(rdmasock_recv.pad)", offset_of!(RecvArg, pad) as u64),
        ("sizeof(rdmasock_listen)", size_of::<ListenArg>() as u64),
        ("sizeof(rdmasock_find)", size_of::<FindArg>() as u64),
        ("offsetof(rdmasock_find.port)", offset_of!(FindArg, port) as u64),
        ("offsetof(rdmasock_find.uid)", offset_of!(FindArg, uid) as u64),
        ("offsetof(rdmasock_find.pid)", offset_of!(FindArg, pid) as u64),
        ("sizeof(rdmasock_info)", size_of::<Info>() as u64),
        ("offsetof(rdmasock_info.peer_region_len)", offset_of!(Info, peer_region_len) as u64),
        ("offsetof(rdmasock_info.mbox_depth)", offset_of!(Info, mbox_depth) as u64),
    ]
}

/// ioctl(2) through a raw system call.
///
/// # Safety
/// `arg` must be what the driver expects for `cmd` (a pointer to the right struct,
/// valid for reads and writes, or 0).
pub unsafe fn ioctl(fd: RawFd, cmd: u64, arg: usize) -> io::Result<i64> {
    let r = libc::syscall(libc::SYS_ioctl, fd as libc::c_long, cmd as libc::c_ulong, arg);
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as i64)
    }
}

fn io_ptr<T>(v: &mut T) -> usize {
    v as *mut T as usize
}

pub fn version(fd: RawFd) -> io::Result<u32> {
    let mut v = 0u32;
    // SAFETY: VERSION writes one u32.
    unsafe { ioctl(fd, IOC_VERSION, io_ptr(&mut v))? };
    Ok(v)
}

pub fn set_flags(fd: RawFd, flags: u32) -> io::Result<()> {
    let mut v = flags;
    // SAFETY: SET_FLAGS reads one u32.
    unsafe { ioctl(fd, IOC_SET_FLAGS, io_ptr(&mut v)) }.map(drop)
}

/// Register `len` bytes at `addr` (memory of ours that stays mapped while registered).
pub fn reg(fd: RawFd, addr: *mut u8, len: u64) -> io::Result<u32> {
    reg_with(fd, addr, len, 0)
}

/// Register with `REG_*` flags.
pub fn reg_with(fd: RawFd, addr: *mut u8, len: u64, flags: u32) -> io::Result<u32> {
    let mut r = Reg { addr: addr as u64, len, flags, id: 0 };
    // SAFETY: REG reads and writes a Reg; the driver pins the user range itself and
    // fails with EFAULT on a bad one.
    unsafe { ioctl(fd, IOC_REG, io_ptr(&mut r))? };
    Ok(r.id)
}

pub fn unreg(fd: RawFd, id: u32) -> io::Result<()> {
    let mut v = id;
    // SAFETY: UNREG reads one u32.
    unsafe { ioctl(fd, IOC_UNREG, io_ptr(&mut v)) }.map(drop)
}

/// Offer our TCP socket `sock_fd`; returns its inode number.
pub fn offer(fd: RawFd, sock_fd: RawFd) -> io::Result<u64> {
    let mut o = OfferArg { sock_fd, ..Default::default() };
    // SAFETY: OFFER reads and writes an OfferArg.
    unsafe { ioctl(fd, IOC_OFFER, io_ptr(&mut o))? };
    Ok(o.sock_ino)
}

/// Accept (or, with [`ACCEPT_REFUSE`], refuse) the offer of the other end of our
/// connected socket `sock_fd`.
pub fn accept(fd: RawFd, sock_fd: RawFd, flags: u32, peer_ino: u64) -> io::Result<AcceptArg> {
    let mut a = AcceptArg { sock_fd, flags, peer_ino, ..Default::default() };
    // SAFETY: ACCEPT reads and writes an AcceptArg.
    unsafe { ioctl(fd, IOC_ACCEPT, io_ptr(&mut a))? };
    Ok(a)
}

pub fn withdraw(fd: RawFd) -> io::Result<()> {
    // SAFETY: WITHDRAW takes no argument.
    unsafe { ioctl(fd, IOC_WITHDRAW, 0) }.map(drop)
}

/// Copy `len` bytes at `src` into the peer's region `region` at `offset`.
///
/// # Safety
/// None needed for memory safety of this process: the kernel reads `src` with
/// copy_from_user (EFAULT on a bad range). Marked unsafe because `src` is a raw
/// pointer the caller vouches for.
pub unsafe fn write(fd: RawFd, src: *const u8, len: usize, offset: u64, imm: u64, region: u32, flags: u32) -> io::Result<()> {
    let mut w = WriteArg { addr: src as u64, len: len as u64, offset, imm, region, flags };
    ioctl(fd, IOC_WRITE, io_ptr(&mut w)).map(drop)
}

pub fn notify(fd: RawFd, tag: u32, imm: u64, flags: u32) -> io::Result<()> {
    let mut n = NotifyArg { imm, tag, flags };
    // SAFETY: NOTIFY reads a NotifyArg.
    unsafe { ioctl(fd, IOC_NOTIFY, io_ptr(&mut n)) }.map(drop)
}

/// Take up to `out.len()` messages without blocking; the returned RecvArg has the
/// count, the state after them and the peer's hints.
pub fn recv(fd: RawFd, out: &mut [Msg]) -> io::Result<RecvArg> {
    let mut r = RecvArg { msgs: out.as_mut_ptr() as u64, max: out.len() as u32, ..Default::default() };
    // SAFETY: RECV writes at most `max` messages into `out`, and the RecvArg.
    unsafe { ioctl(fd, IOC_RECV, io_ptr(&mut r))? };
    Ok(r)
}

pub fn info(fd: RawFd) -> io::Result<Info> {
    let mut i = Info::default();
    // SAFETY: INFO writes an Info.
    unsafe { ioctl(fd, IOC_INFO, io_ptr(&mut i))? };
    Ok(i)
}

/// Make the endpoint `fd` the listener endpoint of our listening socket `sock_fd`.
pub fn listen(fd: RawFd, sock_fd: RawFd) -> io::Result<()> {
    let mut l = ListenArg { sock_fd, flags: 0 };
    // SAFETY: LISTEN reads a ListenArg.
    unsafe { ioctl(fd, IOC_LISTEN, io_ptr(&mut l)) }.map(drop)
}

/// The uid and pid of a listener endpoint that takes connections to `addr` (IPv4 as
/// IPv4-mapped IPv6) port `port`; ENOENT: none.
pub fn find(fd: RawFd, addr: [u8; 16], port: u16) -> io::Result<(u32, u32)> {
    let mut f = FindArg { addr, port, ..Default::default() };
    // SAFETY: FIND reads and writes a FindArg.
    unsafe { ioctl(fd, IOC_FIND, io_ptr(&mut f))? };
    Ok((f.uid, f.pid))
}

pub fn ring_self(fd: RawFd) -> io::Result<()> {
    // SAFETY: RING_SELF takes no argument.
    unsafe { ioctl(fd, IOC_RING_SELF, 0) }.map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_follow_the_ioc_encoding() {
        // Values of the C macros on x86_64 (checked against the header in the VM test).
        assert_eq!(IOC_VERSION, 0x8004_DA00);
        assert_eq!(IOC_SET_FLAGS, 0x4004_DA01);
        assert_eq!(IOC_REG, 0xC018_DA02);
        assert_eq!(IOC_WITHDRAW, 0x0000_DA06);
        assert_eq!(IOC_WRITE, 0x4028_DA07);
        assert_eq!(IOC_RECV, 0xC028_DA09);
        assert_eq!(IOC_INFO, 0x8038_DA0A);
    }
}
