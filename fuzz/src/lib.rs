//! Helpers shared by every fuzz target.
//!
//! - [`remap`] turns arbitrary fuzz bytes into text over an SMTP alphabet (one token per
//!   input byte), so mutations reach the deep paths of the parsers (parameters, enhanced
//!   status codes, dot-stuffing, huge BDAT sizes) instead of dying at the first byte. Every
//!   target checks its input twice: as raw bytes and remapped through its alphabet.
//! - [`split`] cuts a buffer into pieces in a way chosen by a selector (whole, byte by byte,
//!   small, large, with empty pieces), for "same result at any split" checks.
//! - [`hash`] derives a stable selector from the input itself.
//! - [`session`]: the driver prologue of the session targets: the heap-counting allocator,
//!   the input's header bytes and the control stream.

/// Maps every byte of `data` to `alphabet[byte % alphabet.len()]` and concatenates the tokens.
pub fn remap(data: &[u8], alphabet: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() * 4);
    for &b in data {
        out.extend_from_slice(alphabet[usize::from(b) % alphabet.len()]);
    }
    out
}

/// FNV-1a: a stable 64-bit digest of the input, to derive split points and limits from it.
pub fn hash(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// A xorshift64 generator; deterministic for a given seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed` (any value, zero included).
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x9E37_79B9_7F4A_7C15 | 1)
    }

    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A value in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        let span = (hi - lo) as u64 + 1;
        lo + (self.next_u64() % span) as usize
    }
}

/// Cuts `data` into consecutive pieces (their concatenation is `data`). `selector % 8` picks
/// the pattern, the rest of it seeds the piece sizes:
///
/// 0. whole; 1. byte by byte; 2. pieces of 1 to 3 bytes; 3. pieces of 1 to 16 bytes;
/// 4. pieces of 0 to 64 bytes (empty pieces included); 5. pieces of any size;
/// 6. two pieces at one point; 7. a mix of single bytes and pieces of up to 512 bytes.
pub fn split(data: &[u8], selector: u64) -> Vec<&[u8]> {
    let mut rng = Rng::new(selector >> 3);
    let mut pieces = Vec::new();
    let mut at = 0;
    let mode = selector % 8;
    match mode {
        0 => pieces.push(data),
        6 => {
            let point = rng.range(0, data.len());
            pieces.push(&data[..point]);
            pieces.push(&data[point..]);
        }
        _ => {
            while at < data.len() {
                let left = data.len() - at;
                let len = match mode {
                    1 => 1,
                    2 => rng.range(1, 3),
                    3 => rng.range(1, 16),
                    4 => rng.range(0, 64),
                    5 => rng.range(1, left),
                    _ if rng.next_u64().is_multiple_of(2) => 1,
                    _ => rng.range(1, 512),
                }
                .min(left);
                pieces.push(&data[at..at + len]);
                at += len;
            }
        }
    }
    pieces
}

/// The alphabets the targets remap their input into.
pub mod alphabet {
    /// Client command lines: verbs, paths, parameters and the bytes that delimit them.
    pub const COMMAND: &[&[u8]] = &[
        b"\r\n",
        b"\r\n",
        b"\r",
        b"\n",
        b" ",
        b" ",
        b":",
        b"<",
        b">",
        b"@",
        b"=",
        b"+",
        b",",
        b";",
        b".",
        b"-",
        b"[",
        b"]",
        b"\"",
        b"\\",
        b"0",
        b"1",
        b"5",
        b"9",
        b"a",
        b"Z",
        b"\x00",
        b"\t",
        b"\xc3\xa9",
        b"\xff",
        b"EHLO ",
        b"HELO ",
        b"MAIL FROM:",
        b"mail from:",
        b"RCPT TO:",
        b"rcpt to:",
        b"DATA",
        b"BDAT ",
        b" LAST",
        b"RSET",
        b"NOOP",
        b"QUIT",
        b"VRFY ",
        b"HELP",
        b"STARTTLS",
        b"XSHADOW ",
        b"XQDISCARD ",
        b"XSHADOWREQUEST ",
        b"<>",
        b"<postmaster>",
        b"postmaster",
        b"<alice@example.org>",
        b"example.org",
        b"@a.example,@b.example:",
        b" SIZE=",
        b" BODY=8BITMIME",
        b" BODY=",
        b"7BIT",
        b"BINARYMIME",
        b" SMTPUTF8",
        b" RET=FULL",
        b" RET=HDRS",
        b" ENVID=",
        b" XSHADOW=",
        b" NOTIFY=",
        b"SUCCESS,FAILURE,DELAY",
        b"NEVER",
        b" ORCPT=rfc822;",
        b" X-OTHER=v",
        b"+2B",
        b"+3D",
        b"+C3+A9",
        b"+0",
        b"[192.0.2.1]",
        b"[IPv6:2001:db8::1]",
        b"[tag:x]",
        b"3f2504e0-4f89-41d3-9a0c-0305e82c3301",
        b"aHViMS5leGFtcGxl",
        b"18446744073709551615",
        b"18446744073709551616",
        b"4294967296",
        b"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    ];

    /// Server replies: codes with both separators, enhanced status codes, EHLO keywords and
    /// shadow ids.
    pub const REPLY: &[&[u8]] = &[
        b"\r\n",
        b"\r\n",
        b"\r\n",
        b"\r",
        b"\n",
        b" ",
        b"-",
        b".",
        b"250-",
        b"250-",
        b"250 ",
        b"250 ",
        b"250",
        b"251 ",
        b"220 ",
        b"221 ",
        b"354 ",
        b"421-",
        b"451 ",
        b"500 ",
        b"503-",
        b"550 ",
        b"599 ",
        b"199 ",
        b"600 ",
        b"25",
        b"2.1.0 ",
        b"2.0.0 ",
        b"2.0.0",
        b"2.6.0 ",
        b"5.5.1 ",
        b"4.4.0 ",
        b"2.01.000 ",
        b"2.1000.0 ",
        b"0",
        b"1",
        b"9",
        b"x",
        b"\xc3\xa9",
        b"\xff",
        b"\x00",
        b"\t",
        b"edge1.example",
        b"PIPELINING",
        b"SIZE",
        b"SIZE 36700160",
        b"SIZE 18446744073709551616",
        b"8BITMIME",
        b"CHUNKING",
        b"BINARYMIME",
        b"SMTPUTF8",
        b"DSN",
        b"STARTTLS",
        b"ENHANCEDSTATUSCODES",
        b"XSHADOW",
        b"XSHADOWREQUEST",
        b"AUTH PLAIN LOGIN",
        b"X+QUj+rOf0ag5pssHT5PUA==",
        b"3f2504e0-4f89-41d3-9a0c-0305e82c3301",
        b"OK, no discard events",
        b"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    ];

    /// Message bodies on the wire: line ends, dots and the smuggling sequences, weighted
    /// towards CR, LF and dot.
    pub const BODY: &[&[u8]] = &[
        b"\r",
        b"\r",
        b"\r",
        b"\n",
        b"\n",
        b"\n",
        b".",
        b".",
        b".",
        b"\r\n",
        b"\r\n",
        b"\r\n",
        b"x",
        b"x",
        b" ",
        b"..",
        b"\r\n.",
        b"\r\n.\r\n",
        b".\r\n",
        b"\n.\r\n",
        b"\r.\r\n",
        b"\n.\n",
        b"\r\n.\n",
        b"\r\n.\r",
        b"\x00",
        b"\xff",
        b"Subject: x",
        b"MAIL FROM:<a@b>\r\n",
    ];

    /// BDAT command streams: the verb, sizes from zero to past `u64::MAX`, LAST, data bytes.
    pub const BDAT: &[&[u8]] = &[
        b"BDAT ",
        b"BDAT ",
        b"bdat ",
        b" LAST",
        b" last",
        b" ",
        b"\r\n",
        b"\r\n",
        b"\r",
        b"\n",
        b"0",
        b"1",
        b"2",
        b"3",
        b"5",
        b"7",
        b"9",
        b"18446744073709551615",
        b"18446744073709551616",
        b"4096",
        b"65536",
        b"x",
        b"hello",
        b".",
        b"\r\n.\r\n",
        b"RSET\r\n",
        b"QUIT\r\n",
        b"BDAT 0 LAST\r\n",
        b"BDAT 5\r\n",
        b"BDAT 18446744073709551615\r\n",
    ];
}

/// What the session targets (`server_session`, `client_session`) share before their drivers
/// differ: a global allocator that counts the bytes live on the heap (to bound what a session
/// holds), the header bytes of an input and its control stream.
///
/// A target installs the allocator with
/// `#[global_allocator] static ALLOCATOR: CountingAllocator = CountingAllocator;`.
pub mod session {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::sync::atomic::{AtomicIsize, Ordering};

    /// Counts the bytes live on the heap, so a target can measure what a session holds.
    pub struct CountingAllocator;

    static LIVE: AtomicIsize = AtomicIsize::new(0);

    fn grew(by: usize) {
        LIVE.fetch_add(by as isize, Ordering::Relaxed);
    }

    fn shrank(by: usize) {
        LIVE.fetch_sub(by as isize, Ordering::Relaxed);
    }

    // SAFETY: every call is forwarded unchanged to the system allocator.
    unsafe impl GlobalAlloc for CountingAllocator {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            grew(layout.size());
            unsafe { System.alloc(layout) }
        }

        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            grew(layout.size());
            unsafe { System.alloc_zeroed(layout) }
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            let p = unsafe { System.realloc(ptr, layout, new_size) };
            if !p.is_null() {
                shrank(layout.size());
                grew(new_size);
            }
            p
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            shrank(layout.size());
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    /// Bytes live on the heap now, as counted by [`CountingAllocator`] (only meaningful in a
    /// target that installed it; compare two readings).
    pub fn live() -> isize {
        LIVE.load(Ordering::Relaxed)
    }

    /// The first byte of `data` (0 when empty) and the rest.
    pub fn take_byte(data: &[u8]) -> (u8, &[u8]) {
        data.split_first().map_or((0, data), |(&b, rest)| (b, rest))
    }

    /// The first `n` bytes of `data` (fewer when it is shorter) and the rest.
    pub fn take_bytes(data: &[u8], n: usize) -> (&[u8], &[u8]) {
        data.split_at(n.min(data.len()))
    }

    /// A count byte `n`, then the `n` bytes after it (fewer when the input ends): the control
    /// stream; returns it and the rest (the wire).
    pub fn take_controls(data: &[u8]) -> (Controls<'_>, &[u8]) {
        let (n, rest) = take_byte(data);
        let (controls, wire) = take_bytes(rest, usize::from(n));
        (Controls(controls), wire)
    }

    /// The control stream: one byte per driver step while it lasts.
    #[derive(Debug, Clone, Copy)]
    pub struct Controls<'a>(&'a [u8]);

    impl Controls<'_> {
        /// The next control byte, if any is left.
        pub fn next(&mut self) -> Option<u8> {
            let (&b, rest) = self.0.split_first()?;
            self.0 = rest;
            Some(b)
        }
    }
}
