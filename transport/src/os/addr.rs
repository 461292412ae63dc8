//! Socket addresses as the shim reasons about them: IPv4 and IPv6 only, with IPv4-mapped
//! IPv6 addresses normalised to IPv4 so that a dual-stack listener and an IPv4 client
//! agree on who is who.
#![allow(unsafe_code)]

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockAddr(pub SocketAddr);

impl SockAddr {
    /// Parse a kernel socket address; `None` for families other than AF_INET/AF_INET6.
    pub fn from_storage(ss: &libc::sockaddr_storage) -> Option<SockAddr> {
        // SAFETY: sockaddr_storage is large enough and aligned for both views; the family
        // field says which one the kernel wrote.
        unsafe { Self::from_ptr(ss as *const _ as *const libc::sockaddr, std::mem::size_of_val(ss)) }
    }

    /// Parse `len` bytes at `sa` supplied by an application.
    ///
    /// # Safety
    /// `sa` must point to at least `len` readable bytes.
    pub unsafe fn from_ptr(sa: *const libc::sockaddr, len: usize) -> Option<SockAddr> {
        if sa.is_null() || len < std::mem::size_of::<libc::sa_family_t>() {
            return None;
        }
        match (*sa).sa_family as i32 {
            libc::AF_INET if len >= std::mem::size_of::<libc::sockaddr_in>() => {
                let a = std::ptr::read_unaligned(sa as *const libc::sockaddr_in);
                let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
                Some(SockAddr(SocketAddr::new(IpAddr::V4(ip), u16::from_be(a.sin_port))))
            }
            libc::AF_INET6 if len >= std::mem::size_of::<libc::sockaddr_in6>() => {
                let a = std::ptr::read_unaligned(sa as *const libc::sockaddr_in6);
                let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
                Some(SockAddr(SocketAddr::new(IpAddr::V6(ip), u16::from_be(a.sin6_port))))
            }
            _ => None,
        }
    }

    pub fn port(&self) -> u16 {
        self.0.port()
    }

    /// The address with IPv4-mapped IPv6 turned into IPv4.
    pub fn ip(&self) -> IpAddr {
        match self.0.ip() {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(v6)),
            v4 => v4,
        }
    }

    pub fn is_unspecified(&self) -> bool {
        self.ip().is_unspecified()
    }

    pub fn is_loopback(&self) -> bool {
        self.ip().is_loopback()
    }

    /// 16 bytes for fixed layouts: IPv4 as the mapped form.
    pub fn ip_bytes(&self) -> [u8; 16] {
        match self.ip() {
            IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            IpAddr::V6(v6) => v6.octets(),
        }
    }

    pub fn from_bytes(ip: [u8; 16], port: u16) -> SockAddr {
        let v6 = Ipv6Addr::from(ip);
        let ip = v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(v6));
        SockAddr(SocketAddr::new(ip, port))
    }
}

impl fmt::Display for SockAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ip() {
            IpAddr::V4(ip) => write!(f, "{}:{}", ip, self.port()),
            IpAddr::V6(ip) => write!(f, "[{}]:{}", ip, self.port()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_addresses_normalise_to_v4() {
        let a = SockAddr(SocketAddr::new(IpAddr::V6(Ipv4Addr::LOCALHOST.to_ipv6_mapped()), 80));
        assert_eq!(a.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert!(a.is_loopback());
        assert_eq!(a.to_string(), "127.0.0.1:80");
        assert_eq!(SockAddr::from_bytes(a.ip_bytes(), 80), SockAddr("127.0.0.1:80".parse().unwrap()));
        let b = SockAddr("[::1]:9".parse().unwrap());
        assert_eq!(b.to_string(), "[::1]:9");
        assert_eq!(SockAddr::from_bytes(b.ip_bytes(), 9), b);
    }

    #[test]
    fn parses_kernel_layouts() {
        let mut sin: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        sin.sin_family = libc::AF_INET as u16;
        sin.sin_port = 8080u16.to_be();
        sin.sin_addr.s_addr = u32::from(Ipv4Addr::new(127, 0, 0, 2)).to_be();
        let a = unsafe { SockAddr::from_ptr(&sin as *const _ as *const libc::sockaddr, std::mem::size_of_val(&sin)) };
        assert_eq!(a.unwrap().to_string(), "127.0.0.2:8080");
        // Too short: rejected, never read past the caller's length.
        let short = unsafe { SockAddr::from_ptr(&sin as *const _ as *const libc::sockaddr, 4) };
        assert!(short.is_none());
    }
}
