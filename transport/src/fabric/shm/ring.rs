//! The byte ring of one direction: single producer, single consumer, in shared memory.
//!
//! "RDMA write" on the shm fabric is the producer copying bytes into the ring, which only
//! the consumer reads; "completion" is publishing the new tail. Indices are free-running
//! u64 byte counts (they never wrap in practice: 2^64 bytes), the position in the data
//! area is `index & (cap - 1)`.
//!
//! Trust: each side keeps its own index locally and only *publishes* it; it never reads
//! its own index back from shared memory. The peer's index is loaded and checked: it may
//! only move forward, and the distance between the two indices may never exceed the
//! capacity. A violation is reported as [`Corrupt`] and the connection is reset; no
//! copy is ever computed from an unchecked value.
//!
//! Memory ordering:
//! * producer: copy bytes -> `tail.store(Release)`; pairs with the consumer's
//!   `tail.load(Acquire)`, which makes the bytes visible before it copies them out.
//! * consumer: copy bytes out -> `head.store(Release)`; pairs with the producer's
//!   `head.load(Acquire)`, so the producer never overwrites bytes still being read.
//! * peeking consumers do not publish anything.
//!
//! The copy itself reads or writes memory the peer can also write; a misbehaving peer can
//! only make us see garbage *data*, never an out-of-bounds access, because every offset
//! and length is computed from checked indices and the local capacity.
#![allow(unsafe_code)]

use crate::layout::DirCtl;
use std::io::{IoSlice, IoSliceMut};
use std::sync::atomic::Ordering;

/// The peer published an index that cannot be right.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Corrupt;

/// A view of one direction: its control lines and its data area.
#[derive(Clone, Copy)]
struct Raw {
    ctl: *const DirCtl,
    data: *mut u8,
    cap: u64,
}

// SAFETY: points into a shared mapping kept alive by the owner of the Producer/Consumer.
unsafe impl Send for Raw {}
unsafe impl Sync for Raw {}

impl Raw {
    fn ctl(&self) -> &DirCtl {
        // SAFETY: the mapping outlives every Raw (see Producer::new / Consumer::new).
        unsafe { &*self.ctl }
    }

    /// The data area as (offset, len) runs starting at index `at` for `len` bytes, split
    /// at the wrap point. `len <= cap` is checked by every caller.
    fn runs(&self, at: u64, len: u64) -> [(usize, usize); 2] {
        debug_assert!(len <= self.cap);
        let off = at & (self.cap - 1);
        let first = len.min(self.cap - off);
        [(off as usize, first as usize), (0, (len - first) as usize)]
    }
}

/// The writing half. Owns the direction's tail.
pub struct Producer {
    raw: Raw,
    /// How much of the ring may hold unconsumed bytes (≤ capacity): the connection's
    /// socket buffer sizes, when the application set them.
    window: u64,
    tail: u64,
    /// Last head seen; the real head is never behind it.
    head_seen: u64,
}

impl Producer {
    /// # Safety
    /// `ctl` and `data..data+cap` must stay mapped for the Producer's lifetime, `cap` a
    /// power of two, and only one Producer may exist per direction.
    pub unsafe fn new(ctl: *const DirCtl, data: *mut u8, cap: u64) -> Producer {
        Producer { raw: Raw { ctl, data, cap }, window: cap, tail: 0, head_seen: 0 }
    }

    pub fn capacity(&self) -> u64 {
        self.raw.cap
    }

    /// Bytes produced so far.
    pub fn tail(&self) -> u64 {
        self.tail
    }

    /// The consumer's head as last seen (checked).
    pub fn head_seen(&self) -> u64 {
        self.head_seen
    }

    /// Take up the tail as published (by another process of our side, after fork),
    /// checked: it may only have moved forward, and never past the consumer's head plus
    /// the capacity.
    pub fn resync(&mut self) -> Result<(), Corrupt> {
        // Acquire: pairs with the other producer process's Release in `publish`.
        let t = self.raw.ctl().prod.tail.load(Ordering::Acquire);
        if t < self.tail {
            return Err(Corrupt);
        }
        let old = self.tail;
        self.tail = t;
        match self.load_head() {
            Ok(_) => Ok(()),
            Err(e) => {
                self.tail = old;
                Err(e)
            }
        }
    }

    /// Bytes the consumer has not taken yet (checked).
    pub fn unconsumed(&mut self) -> Result<u64, Corrupt> {
        let head = self.load_head()?;
        Ok(self.tail - head)
    }

    /// Free space, from a fresh, checked read of the consumer's head.
    pub fn free(&mut self) -> Result<u64, Corrupt> {
        Ok(self.window.saturating_sub(self.unconsumed()?))
    }

    /// Bound the unconsumed bytes to `w` (clamped to 1 ..= capacity).
    pub fn set_window(&mut self, w: u64) {
        self.window = w.clamp(1, self.raw.cap);
    }

    fn load_head(&mut self) -> Result<u64, Corrupt> {
        // Acquire: pairs with the consumer's Release store in Consumer::advance.
        let head = self.raw.ctl().cons.head.load(Ordering::Acquire);
        if head < self.head_seen || head > self.tail || self.tail - head > self.raw.cap {
            return Err(Corrupt);
        }
        self.head_seen = head;
        Ok(head)
    }

    /// Copy as much of `bufs` as fits and publish it. Returns the bytes written (0 when
    /// the ring is full).
    pub fn write(&mut self, bufs: &[IoSlice<'_>]) -> Result<usize, Corrupt> {
        let mut free = self.window.saturating_sub(self.tail - self.head_seen);
        if free == 0 || (free as usize) < bufs.iter().map(|b| b.len()).sum::<usize>() {
            free = self.free()?;
        }
        let mut done = 0u64;
        for b in bufs {
            if done == free {
                break;
            }
            let n = (b.len() as u64).min(free - done);
            self.copy_in(self.tail + done, &b[..n as usize]);
            done += n;
        }
        if done > 0 {
            self.publish(done);
        }
        Ok(done as usize)
    }

    fn copy_in(&self, at: u64, src: &[u8]) {
        let mut from = 0usize;
        for (off, len) in self.raw.runs(at, src.len() as u64) {
            // SAFETY: off+len <= cap by construction of runs(); src has len bytes left.
            unsafe { std::ptr::copy_nonoverlapping(src.as_ptr().add(from), self.raw.data.add(off), len) };
            from += len;
        }
    }

    /// The consumer's head, freshly read and checked.
    pub fn head_checked(&mut self) -> Result<u64, Corrupt> {
        self.load_head()
    }

    /// The bytes from index `from` to our tail as up to two runs (what a move back to
    /// TCP has still to re-send). `from` must not be past the tail nor more than the
    /// capacity behind it.
    pub fn runs_from(&self, from: u64) -> Result<[(*const u8, usize); 2], Corrupt> {
        if from > self.tail || self.tail - from > self.raw.cap {
            return Err(Corrupt);
        }
        // SAFETY: runs() stays inside the data area (length checked above).
        Ok(self.raw.runs(from, self.tail - from).map(|(off, len)| (unsafe { self.raw.data.add(off) } as *const u8, len)))
    }

    /// The free space as up to two writable runs (for sources that write straight into
    /// the ring: sendfile, splice). Commit with [`Producer::publish`].
    pub fn free_runs(&mut self) -> Result<[(*mut u8, usize); 2], Corrupt> {
        let free = self.free()?;
        // SAFETY: runs() stays inside the data area.
        Ok(self.raw.runs(self.tail, free).map(|(off, len)| (unsafe { self.raw.data.add(off) }, len)))
    }

    /// Publish `n` more bytes written at the tail. `n` must not exceed the free space.
    pub fn publish(&mut self, n: u64) {
        self.tail += n;
        // Release: the bytes copied above become visible to the consumer's Acquire load.
        self.raw.ctl().prod.tail.store(self.tail, Ordering::Release);
    }

    /// Set producer flag bits (after the last publish; Release pairs with the consumer's
    /// Acquire load of the flags).
    pub fn set_flags(&self, bits: u32) {
        self.raw.ctl().prod.flags.fetch_or(bits, Ordering::Release);
    }
}

/// The reading half. Owns the direction's head.
pub struct Consumer {
    raw: Raw,
    head: u64,
    tail_seen: u64,
}

impl Consumer {
    /// # Safety
    /// As [`Producer::new`], for the consumer.
    pub unsafe fn new(ctl: *const DirCtl, data: *mut u8, cap: u64) -> Consumer {
        Consumer { raw: Raw { ctl, data, cap }, head: 0, tail_seen: 0 }
    }

    /// Bytes consumed so far.
    pub fn head(&self) -> u64 {
        self.head
    }

    /// The producer's tail as last seen (checked).
    pub fn tail_seen(&self) -> u64 {
        self.tail_seen
    }

    /// Take up the head as published (by another process of our side, after fork),
    /// checked as in [`Producer::resync`].
    pub fn resync(&mut self) -> Result<(), Corrupt> {
        // Acquire: pairs with the other consumer process's Release in `advance`.
        let h = self.raw.ctl().cons.head.load(Ordering::Acquire);
        if h < self.head {
            return Err(Corrupt);
        }
        let old = self.head;
        self.head = h;
        match self.available() {
            Ok(_) => Ok(()),
            Err(e) => {
                self.head = old;
                Err(e)
            }
        }
    }

    /// Bytes available, from a fresh, checked read of the producer's tail.
    pub fn available(&mut self) -> Result<u64, Corrupt> {
        // Acquire: pairs with the producer's Release store in Producer::publish.
        let tail = self.raw.ctl().prod.tail.load(Ordering::Acquire);
        if tail < self.tail_seen || tail < self.head || tail - self.head > self.raw.cap {
            return Err(Corrupt);
        }
        self.tail_seen = tail;
        Ok(tail - self.head)
    }

    /// Producer flags (Acquire: pairs with Producer::set_flags). Only meaningful once the
    /// ring has been seen empty after reading them: re-check `available` afterwards.
    pub fn peer_flags(&self) -> u32 {
        self.raw.ctl().prod.flags.load(Ordering::Acquire)
    }

    /// Copy up to the buffers' length out; advance (publish the head) unless `peek`.
    pub fn read(&mut self, bufs: &mut [IoSliceMut<'_>], peek: bool) -> Result<usize, Corrupt> {
        let avail = self.available()?;
        let mut done = 0u64;
        for b in bufs.iter_mut() {
            if done == avail {
                break;
            }
            let n = (b.len() as u64).min(avail - done);
            self.copy_out(self.head + done, &mut b[..n as usize]);
            done += n;
        }
        if done > 0 && !peek {
            self.advance(done);
        }
        Ok(done as usize)
    }

    fn copy_out(&self, at: u64, dst: &mut [u8]) {
        let mut to = 0usize;
        for (off, len) in self.raw.runs(at, dst.len() as u64) {
            // SAFETY: off+len <= cap; dst has len bytes left.
            unsafe { std::ptr::copy_nonoverlapping(self.raw.data.add(off), dst.as_mut_ptr().add(to), len) };
            to += len;
        }
    }

    /// The available bytes as up to two readable runs (for splice). Commit with
    /// [`Consumer::advance`].
    pub fn data_runs(&mut self) -> Result<[(*const u8, usize); 2], Corrupt> {
        let avail = self.available()?;
        // SAFETY: runs() stays inside the data area.
        Ok(self.raw.runs(self.head, avail).map(|(off, len)| (unsafe { self.raw.data.add(off) } as *const u8, len)))
    }

    /// Consume `n` bytes. `n` must not exceed what `available` returned.
    pub fn advance(&mut self, n: u64) {
        self.head += n;
        // Release: our copies out are done before the producer may reuse the space.
        self.raw.ctl().cons.head.store(self.head, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::DirCtl;

    struct TestRing {
        ctl: Box<DirCtl>,
        data: Vec<u8>,
    }

    fn ring(cap: usize) -> (TestRing, Producer, Consumer) {
        let mut t = TestRing { ctl: Box::new(unsafe { std::mem::zeroed() }), data: vec![0; cap] };
        let p = unsafe { Producer::new(&*t.ctl, t.data.as_mut_ptr(), cap as u64) };
        let c = unsafe { Consumer::new(&*t.ctl, t.data.as_mut_ptr(), cap as u64) };
        (t, p, c)
    }

    #[test]
    fn wraps_and_preserves_order() {
        let (_t, mut p, mut c) = ring(16);
        let mut out = Vec::new();
        let mut next = 0u8;
        for round in 0..100 {
            let chunk: Vec<u8> = (0..(round % 11 + 1)).map(|_| { next = next.wrapping_add(1); next }).collect();
            let mut off = 0;
            while off < chunk.len() {
                off += p.write(&[IoSlice::new(&chunk[off..])]).unwrap();
                let mut buf = [0u8; 7];
                let n = c.read(&mut [IoSliceMut::new(&mut buf)], false).unwrap();
                out.extend_from_slice(&buf[..n]);
            }
        }
        loop {
            let mut buf = [0u8; 7];
            let n = c.read(&mut [IoSliceMut::new(&mut buf)], false).unwrap();
            if n == 0 { break; }
            out.extend_from_slice(&buf[..n]);
        }
        let expect: Vec<u8> = (1..=out.len()).map(|i| i as u8).collect();
        assert_eq!(out, expect);
    }

    #[test]
    fn full_ring_accepts_nothing_and_peek_does_not_consume() {
        let (_t, mut p, mut c) = ring(8);
        assert_eq!(p.write(&[IoSlice::new(b"0123456789")]).unwrap(), 8);
        assert_eq!(p.write(&[IoSlice::new(b"x")]).unwrap(), 0);
        let mut buf = [0u8; 4];
        assert_eq!(c.read(&mut [IoSliceMut::new(&mut buf)], true).unwrap(), 4);
        assert_eq!(c.available().unwrap(), 8);
        assert_eq!(c.read(&mut [IoSliceMut::new(&mut buf)], false).unwrap(), 4);
        assert_eq!(&buf, b"0123");
        assert_eq!(p.free().unwrap(), 4);
    }

    #[test]
    fn hostile_indices_are_rejected() {
        // A tail beyond capacity, a tail moving backwards, a head beyond the tail.
        let (t, mut p, mut c) = ring(8);
        t.ctl.prod.tail.store(9, Ordering::Relaxed);
        assert_eq!(c.available(), Err(Corrupt));
        t.ctl.prod.tail.store(4, Ordering::Relaxed);
        assert_eq!(c.available(), Ok(4));
        t.ctl.prod.tail.store(3, Ordering::Relaxed);
        assert_eq!(c.available(), Err(Corrupt));
        t.ctl.cons.head.store(1, Ordering::Relaxed);
        assert_eq!(p.free(), Err(Corrupt), "head ahead of our tail (0)");
        // A write that fits the cached (already checked) space needs no fresh head; one
        // that does not re-reads it and finds it impossible.
        t.ctl.cons.head.store(u64::MAX, Ordering::Relaxed);
        assert_eq!(p.write(&[IoSlice::new(b"0123456789")]), Err(Corrupt));
    }

    /// Property test (issue 14.5): a peer that writes anything into the shared indices
    /// and flags, at any moment, never makes a copy leave the data area, a count exceed
    /// its buffer or the capacity, or anything panic. Deterministic seeds (SplitMix64),
    /// so a failure names its seed; every op is checked, not only the end state.
    #[test]
    fn a_hostile_peer_never_moves_a_copy_out_of_bounds() {
        fn next(s: &mut u64) -> u64 {
            *s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = *s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
        for seed in 0..300u64 {
            let mut r = seed;
            let cap = 8usize << (next(&mut r) % 10);
            let (t, mut p, mut c) = ring(cap);
            let lo = t.data.as_ptr() as usize;
            let hi = lo + cap;
            let inside = |ptr: usize, len: usize| len == 0 || (ptr >= lo && ptr + len <= hi);
            let mut src = vec![0u8; cap * 2];
            let mut dst = vec![0u8; cap * 2];
            for _ in 0..2000 {
                let v = next(&mut r);
                // A plausible or absurd value near what is there, or anything.
                let near = |cur: u64, v: u64| match v % 4 {
                    0 => cur.wrapping_add(v >> 60),
                    1 => cur.wrapping_sub(v >> 61),
                    2 => cur.wrapping_add(cap as u64 + (v >> 62)),
                    _ => v,
                };
                match v % 9 {
                    0 => t.ctl.prod.tail.store(near(t.ctl.prod.tail.load(Ordering::Relaxed), next(&mut r)), Ordering::Relaxed),
                    1 => t.ctl.cons.head.store(near(t.ctl.cons.head.load(Ordering::Relaxed), next(&mut r)), Ordering::Relaxed),
                    2 => t.ctl.prod.flags.store(next(&mut r) as u32, Ordering::Relaxed),
                    3 | 4 => {
                        let n = (next(&mut r) as usize) % src.len();
                        if let Ok(w) = p.write(&[IoSlice::new(&src[..n])]) {
                            assert!(w <= n && w as u64 <= cap as u64, "seed {seed}: wrote {w} of {n}");
                        }
                    }
                    5 | 6 => {
                        let n = (next(&mut r) as usize) % dst.len();
                        let peek = v & 1 << 20 != 0;
                        if let Ok(got) = c.read(&mut [IoSliceMut::new(&mut dst[..n])], peek) {
                            assert!(got <= n && got as u64 <= cap as u64, "seed {seed}: read {got} of {n}");
                        }
                    }
                    7 => {
                        if let Ok(runs) = c.data_runs() {
                            assert!(runs.iter().all(|&(ptr, len)| inside(ptr as usize, len)), "seed {seed}: data run outside");
                            assert!(runs.iter().map(|r| r.1).sum::<usize>() <= cap);
                        }
                        if let Ok(runs) = p.head_checked().and_then(|h| p.runs_from(h)) {
                            assert!(runs.iter().all(|&(ptr, len)| inside(ptr as usize, len)), "seed {seed}: unconsumed run outside");
                        }
                    }
                    _ => {
                        if let Ok(runs) = p.free_runs() {
                            assert!(runs.iter().all(|&(ptr, len)| inside(ptr as usize, len)), "seed {seed}: free run outside");
                            assert!(runs.iter().map(|r| r.1).sum::<usize>() <= cap);
                        }
                        if let Ok(u) = p.unconsumed() {
                            assert!(u <= cap as u64, "seed {seed}: {u} unconsumed in {cap}");
                        }
                        let _ = c.resync();
                        let _ = p.resync();
                    }
                }
                src.iter_mut().for_each(|b| *b = b.wrapping_add(1));
            }
        }
    }

    #[test]
    fn concurrent_stream_is_exact() {
        // One producer thread, one consumer thread, random chunk sizes, 4 MiB through a
        // 4 KiB ring; checks order and content byte for byte.
        let (t, mut p, mut c) = ring(4096);
        let total = 4 << 20;
        let prod = std::thread::spawn(move || {
            let mut x = 1u64;
            let mut sent = 0usize;
            let mut buf = vec![0u8; 3000];
            while sent < total {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                let n = ((x % 3000) as usize + 1).min(total - sent);
                for (i, b) in buf[..n].iter_mut().enumerate() { *b = ((sent + i) % 251) as u8; }
                let mut off = 0;
                while off < n {
                    off += p.write(&[IoSlice::new(&buf[off..n])]).unwrap();
                    std::hint::spin_loop();
                }
                sent += n;
            }
        });
        let mut got = 0usize;
        let mut buf = vec![0u8; 1777];
        while got < total {
            let n = c.read(&mut [IoSliceMut::new(&mut buf)], false).unwrap();
            for (i, b) in buf[..n].iter().enumerate() { assert_eq!(*b, ((got + i) % 251) as u8); }
            got += n;
        }
        prod.join().unwrap();
        drop(t);
    }
}
