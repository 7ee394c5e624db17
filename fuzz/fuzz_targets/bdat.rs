//! BDAT chunk accounting: `BdatChunk` and `MessageSize` under sizes up to `u64::MAX`.
//!
//! Two checks per input:
//! - a script decoded with `arbitrary` (BDAT sizes of any u64, data chunks, empty takes)
//!   against a saturating model;
//! - the input read as a client stream (raw and remapped into BDAT commands): command lines
//!   framed by `LineReader` and parsed by `Command::parse`, each `BDAT <size>` followed by
//!   `BdatChunk::take` on the bytes after it, fed at split points derived from the input.
//!
//! Invariants: nothing panics; bytes taken == min(size, bytes given) and are the front of what
//! was given; `remaining`, `is_complete` and the message total agree with the model; the
//! stream gives the same events whatever the split; and no call into the codec allocates more
//! than a small constant plus the bytes it was handed (never in proportion to a declared size).
#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use xshadow_core::wire::{BdatChunk, Command, Frame, LineReader, MessageSize};
use xshadow_fuzz::{alphabet, hash, remap, split};

/// Records the largest single allocation made while [`WATCHING`] is set.
struct Watching;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static WATCHING: Cell<bool> = const { Cell::new(false) };
}

fn note(size: usize) {
    if WATCHING.try_with(Cell::get).unwrap_or(false) {
        LARGEST.fetch_max(size, Ordering::Relaxed);
    }
}

// SAFETY: every call is forwarded unchanged to the system allocator.
unsafe impl GlobalAlloc for Watching {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Watching = Watching;

/// Runs `f` (calls into the codec) and checks that it allocated no block larger than
/// `64 + handed` bytes, `handed` being the length of the input it was given.
fn codec<T>(handed: usize, f: impl FnOnce() -> T) -> T {
    LARGEST.store(0, Ordering::Relaxed);
    WATCHING.with(|w| w.set(true));
    let result = f();
    WATCHING.with(|w| w.set(false));
    let largest = LARGEST.load(Ordering::Relaxed);
    assert!(
        largest <= 64 + handed,
        "the codec allocated {largest} bytes when handed {handed}"
    );
    result
}

fuzz_target!(|data: &[u8]| {
    script(data);
    stream(data);
    stream(&remap(data, alphabet::BDAT));
});

/// A declared size, biased towards the edges.
#[derive(Debug, Arbitrary)]
enum Size {
    Zero,
    Tiny(u8),
    Small(u16),
    Any(u64),
    NearMax(u8),
    Max,
}

impl Size {
    fn value(&self) -> u64 {
        match *self {
            Size::Zero => 0,
            Size::Tiny(n) => u64::from(n),
            Size::Small(n) => u64::from(n),
            Size::Any(n) => n,
            Size::NearMax(n) => u64::MAX - u64::from(n),
            Size::Max => u64::MAX,
        }
    }
}

#[derive(Debug, Arbitrary)]
enum Op {
    /// `BDAT <size> [LAST]`: a new chunk (and a new message after a LAST one).
    Bdat { size: Size, last: bool },
    /// `len` bytes arrive.
    Data { len: u16 },
    /// These bytes arrive.
    Bytes(Vec<u8>),
    /// A read that brought nothing.
    Empty,
    /// RSET: forget the message.
    Reset,
}

static FILL: [u8; 65536] = [b'x'; 65536];

/// One chunk being read and what the model expects of it.
struct Open {
    chunk: BdatChunk,
    size: u64,
    last: bool,
    given: u64,
    taken: u64,
}

fn script(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(limit) = Size::arbitrary(&mut u) else {
        return;
    };
    let limit = limit.value();
    let mut message = MessageSize::new(limit);
    let mut total: u64 = 0;
    let mut open: Option<Open> = None;
    let mut message_ended = false;
    let mut ops = 0;
    while let Ok(op) = Op::arbitrary(&mut u) {
        ops += 1;
        if ops > 4096 {
            break;
        }
        match op {
            Op::Bdat { size, last } => {
                if message_ended {
                    message = MessageSize::new(limit);
                    total = 0;
                }
                let size = size.value();
                let exceed = codec(0, || message.would_exceed(size));
                assert_eq!(exceed, total.saturating_add(size) > limit);
                codec(0, || message.add(size));
                total = total.saturating_add(size);
                assert_eq!(message.total(), total);
                assert_eq!(message.limit(), limit);
                assert_eq!(message.is_over_limit(), total > limit);
                let chunk = codec(0, || BdatChunk::new(size, last));
                assert_eq!(chunk.size(), size);
                assert_eq!(chunk.remaining(), size);
                assert_eq!(chunk.is_last(), last);
                assert_eq!(chunk.is_complete(), size == 0);
                open = Some(Open {
                    chunk,
                    size,
                    last,
                    given: 0,
                    taken: 0,
                });
                message_ended = last;
            }
            Op::Data { len } => give(&mut open, &FILL[..usize::from(len)]),
            Op::Bytes(bytes) => give(&mut open, &bytes),
            Op::Empty => give(&mut open, &[]),
            Op::Reset => {
                open = None;
                message = MessageSize::new(limit);
                total = 0;
                message_ended = false;
            }
        }
    }
}

fn give(open: &mut Option<Open>, input: &[u8]) {
    let Some(o) = open else {
        return;
    };
    let (mine, complete) = codec(input.len(), || o.chunk.take(input));
    let remaining_before = o.size - o.taken;
    let expected = remaining_before.min(input.len() as u64) as usize;
    assert_eq!(mine.len(), expected, "took the wrong number of bytes");
    assert!(
        std::ptr::eq(mine.as_ptr(), input.as_ptr()),
        "took bytes not at the front"
    );
    o.given = o.given.saturating_add(input.len() as u64);
    o.taken += mine.len() as u64;
    assert_eq!(o.taken, o.size.min(o.given), "taken != min(size, given)");
    assert_eq!(o.chunk.remaining(), o.size - o.taken);
    assert_eq!(complete, o.taken == o.size);
    assert_eq!(o.chunk.is_complete(), complete);
    assert_eq!(o.chunk.size(), o.size);
    assert_eq!(o.chunk.is_last(), o.last);
}

/// What a server reading the stream sees.
#[derive(Debug, PartialEq, Eq)]
enum Event {
    Line(Vec<u8>),
    TooLong,
    /// A BDAT chunk ended (complete) or the stream ended inside it.
    Chunk {
        size: u64,
        last: bool,
        taken: u64,
        complete: bool,
        total: u64,
        over: bool,
    },
}

fn stream(data: &[u8]) {
    let seed = hash(data);
    let limit = match seed % 4 {
        0 => u64::MAX,
        1 => 0,
        _ => (seed >> 8) % 100_000,
    };
    let whole = serve(&[data], limit);
    let chunked = serve(&split(data, seed >> 2), limit);
    assert_eq!(whole, chunked, "the stream depends on the split");
}

fn serve(pieces: &[&[u8]], limit: u64) -> Vec<Event> {
    let mut events = Vec::new();
    let mut reader = LineReader::default();
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk: Option<(BdatChunk, u64)> = None;
    let mut message = MessageSize::new(limit);
    let mut total: u64 = 0;
    for piece in pieces {
        buf.extend_from_slice(piece);
        loop {
            if let Some((c, taken)) = chunk.as_mut() {
                let before = buf.len();
                let (mine, complete) = codec(before, || c.take(&buf));
                let n = mine.len();
                assert_eq!(n as u64, (c.size() - *taken).min(before as u64));
                *taken += n as u64;
                assert_eq!(c.remaining(), c.size() - *taken);
                buf.drain(..n);
                if !complete {
                    assert!(buf.is_empty(), "an incomplete chunk left bytes");
                    break;
                }
                events.push(Event::Chunk {
                    size: c.size(),
                    last: c.is_last(),
                    taken: *taken,
                    complete,
                    total: message.total(),
                    over: message.is_over_limit(),
                });
                if c.is_last() {
                    message = MessageSize::new(limit);
                    total = 0;
                }
                chunk = None;
                continue;
            }
            let (frame, consumed) = codec(buf.len(), || reader.read(&buf));
            let line = match frame {
                Frame::NeedMore => {
                    buf.drain(..consumed);
                    break;
                }
                Frame::TooLong => {
                    events.push(Event::TooLong);
                    buf.drain(..consumed);
                    continue;
                }
                Frame::Line(line) => line.to_vec(),
            };
            buf.drain(..consumed);
            match Command::parse(&line) {
                Ok(Command::Bdat { size, last }) => {
                    assert_eq!(
                        message.would_exceed(size),
                        total.saturating_add(size) > limit
                    );
                    codec(0, || message.add(size));
                    total = total.saturating_add(size);
                    assert_eq!(message.total(), total);
                    chunk = Some((codec(0, || BdatChunk::new(size, last)), 0));
                }
                Ok(Command::Rset) => {
                    message = MessageSize::new(limit);
                    total = 0;
                }
                _ => {}
            }
            events.push(Event::Line(line));
        }
    }
    if let Some((c, taken)) = chunk {
        assert!(taken < c.size());
        events.push(Event::Chunk {
            size: c.size(),
            last: c.is_last(),
            taken,
            complete: false,
            total: message.total(),
            over: message.is_over_limit(),
        });
    }
    events
}
