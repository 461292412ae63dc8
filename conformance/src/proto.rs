//! The byte generator, stream hash, size distribution and `stream` protocol
//! shared with the C programs. This is a bit-for-bit mirror of
//! `conformance/c/common.h` and the protocol described in
//! `conformance/c/stream.c`: change both or neither.

/// Largest single read or write the programs issue.
pub const MAX_CHUNK: usize = 256 * 1024;

/// Magic at the start of a `stream` connection: "RSTREAM1" little-endian.
pub const STREAM_MAGIC: u64 = 0x314D_4145_5254_5352;
/// Length of the `stream` header: magic, bytes_back, seed_back.
pub const HEADER_LEN: usize = 24;
/// Salts the server's read-size and write-size generators with.
pub const SERVER_READ_SALT: u64 = 0x5EED_0000_0000_0001;
pub const SERVER_WRITE_SALT: u64 = 0x5EED_0000_0000_0002;

/// One step of splitmix64.
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The payload stream for a seed: the little-endian bytes of successive
/// splitmix64 outputs, independent of how it is cut.
pub struct Gen {
    state: u64,
    word: u64,
    left: u32,
}

impl Gen {
    pub fn new(seed: u64) -> Gen {
        Gen {
            state: seed,
            word: 0,
            left: 0,
        }
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut p = buf;
        while !p.is_empty() && self.left > 0 {
            p[0] = self.word as u8;
            self.word >>= 8;
            self.left -= 1;
            p = &mut p[1..];
        }
        let mut words = p.chunks_exact_mut(8);
        for w in &mut words {
            w.copy_from_slice(&splitmix64(&mut self.state).to_le_bytes());
        }
        let tail = words.into_remainder();
        if !tail.is_empty() {
            self.word = splitmix64(&mut self.state);
            self.left = 8;
            for b in tail {
                *b = self.word as u8;
                self.word >>= 8;
                self.left -= 1;
            }
        }
    }
}

/// The 64-bit stream hash of `common.h`: independent of how the stream is cut.
pub struct Hash {
    h: u64,
    word: u64,
    have: u32,
    len: u64,
}

fn hash_round(h: u64, w: u64) -> u64 {
    let h = h ^ w.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    h.rotate_left(29)
        .wrapping_mul(0xC2B2_AE3D_27D4_EB4F)
        .wrapping_add(0x1656_67B1_9E37_79F9)
}

impl Default for Hash {
    fn default() -> Hash {
        Hash {
            h: 0x243F_6A88_85A3_08D3,
            word: 0,
            have: 0,
            len: 0,
        }
    }
}

impl Hash {
    pub fn update(&mut self, data: &[u8]) {
        self.len += data.len() as u64;
        let mut p = data;
        while !p.is_empty() && self.have > 0 {
            self.word |= u64::from(p[0]) << (8 * self.have);
            p = &p[1..];
            self.have += 1;
            if self.have == 8 {
                self.h = hash_round(self.h, self.word);
                self.word = 0;
                self.have = 0;
            }
        }
        let mut words = p.chunks_exact(8);
        for w in &mut words {
            self.h = hash_round(self.h, u64::from_le_bytes(w.try_into().unwrap()));
        }
        for &b in words.remainder() {
            self.word |= u64::from(b) << (8 * self.have);
            self.have += 1;
        }
    }

    /// Total bytes hashed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn finish(&self) -> u64 {
        let mut h = self.h;
        if self.have > 0 {
            h = hash_round(h, self.word);
        }
        h ^= self.len;
        h = (h ^ (h >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        h = (h ^ (h >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        h ^ (h >> 31)
    }
}

/// A random I/O size in 1 ..= MAX_CHUNK, log-uniform over the power of two.
pub fn rand_size(rng: &mut u64) -> usize {
    let bits = splitmix64(rng) % 19;
    1 + (splitmix64(rng) & ((1u64 << bits) - 1)) as usize
}

/// Parses a byte count with an optional binary suffix: 123, 64K, 16M, 1G.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let (digits, shift) = match s.as_bytes().last() {
        Some(b'K') => (&s[..s.len() - 1], 10),
        Some(b'M') => (&s[..s.len() - 1], 20),
        Some(b'G') => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    digits
        .parse::<u64>()
        .map(|v| v << shift)
        .map_err(|_| format!("bad size '{s}'"))
}

/// A byte count from a `stream` command line: fixed, or (with a leading
/// `~`) random per connection, uniform in 0 ..= the value.
#[derive(Clone, Copy)]
pub struct Spec {
    max: u64,
    random: bool,
}

impl Spec {
    pub fn parse(s: &str) -> Result<Spec, String> {
        match s.strip_prefix('~') {
            Some(rest) => Ok(Spec {
                max: parse_size(rest)?,
                random: true,
            }),
            None => Ok(Spec {
                max: parse_size(s)?,
                random: false,
            }),
        }
    }

    fn value(self, r: u64) -> u64 {
        if self.random {
            r % (self.max + 1)
        } else {
            self.max
        }
    }
}

/// What one client connection does, derived from (SEED, thread, connection).
pub struct Plan {
    pub up_seed: u64,
    pub back_seed: u64,
    pub io_seed: u64,
    pub bytes_out: u64,
    pub bytes_in: u64,
}

impl Plan {
    pub fn new(seed: u64, thread: u64, conn: u64, out: Spec, back: Spec) -> Plan {
        let mut st = seed ^ (thread << 40) ^ (conn << 20);
        let up_seed = splitmix64(&mut st);
        let back_seed = splitmix64(&mut st);
        let io_seed = splitmix64(&mut st);
        let bytes_out = out.value(splitmix64(&mut st));
        let bytes_in = back.value(splitmix64(&mut st));
        Plan {
            up_seed,
            back_seed,
            io_seed,
            bytes_out,
            bytes_in,
        }
    }

    pub fn header(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[..8].copy_from_slice(&STREAM_MAGIC.to_le_bytes());
        h[8..16].copy_from_slice(&self.bytes_in.to_le_bytes());
        h[16..].copy_from_slice(&self.back_seed.to_le_bytes());
        h
    }
}

/// A parsed `stream` header: what the server must send back.
pub struct Header {
    pub bytes_back: u64,
    pub seed_back: u64,
}

impl Header {
    pub fn parse(b: &[u8; HEADER_LEN]) -> Result<Header, String> {
        let word = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
        if word(0) != STREAM_MAGIC {
            return Err(format!("bad header magic {:016x}", word(0)));
        }
        Ok(Header {
            bytes_back: word(8),
            seed_back: word(16),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generator_and_hash_do_not_depend_on_chunking() {
        let mut whole = vec![0u8; 100_003];
        Gen::new(42).fill(&mut whole);
        let mut whole_hash = Hash::default();
        whole_hash.update(&whole);

        let mut pieces = vec![0u8; whole.len()];
        let mut g = Gen::new(42);
        let mut h = Hash::default();
        let mut rng = 7u64;
        let mut off = 0;
        while off < pieces.len() {
            let n = (rand_size(&mut rng) % 37).min(pieces.len() - off);
            g.fill(&mut pieces[off..off + n]);
            h.update(&pieces[off..off + n]);
            off += n;
        }
        assert_eq!(whole, pieces);
        assert_eq!(whole_hash.finish(), h.finish());
        assert_eq!(h.len(), whole.len() as u64);
    }

    #[test]
    fn hash_sees_length_and_order() {
        let digest = |b: &[u8]| {
            let mut h = Hash::default();
            h.update(b);
            h.finish()
        };
        assert_ne!(digest(b""), digest(b"\0"));
        assert_ne!(digest(b"abcdefgh12345678"), digest(b"12345678abcdefgh"));
        assert_ne!(digest(b"abc"), digest(b"abd"));
    }

    #[test]
    fn sizes_cover_the_whole_range() {
        let mut rng = 1u64;
        let sizes: Vec<usize> = (0..100_000).map(|_| rand_size(&mut rng)).collect();
        assert!(sizes.iter().all(|&s| (1..=MAX_CHUNK).contains(&s)));
        assert!(sizes.contains(&1));
        assert!(sizes.iter().any(|&s| s > MAX_CHUNK / 2));
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("64K"), Ok(65536));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("17"), Ok(17));
        assert!(parse_size("1T").is_err());
        assert!(Spec::parse("~").is_err());
    }
}
