//! Per-connection buffers: the output queue of shared frame bytes and the input reassembly of a
//! frame split across reads. Both hold no heap memory while idle.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};

use crate::codec::{self, ClientFrame, CodecError, FrameSet, Header, HEADER_LEN};
use crate::core::SharedBytes;

/// Most slices handed to one `write_vectored` call.
pub const MAX_IOV: usize = 64;
/// Most emptied queue buffers [`OutputPool`] keeps.
const MAX_SPARE: usize = 1024;
/// Largest buffer (in chunks) worth keeping: a burst's big buffer is given back to the allocator.
const MAX_SPARE_CHUNKS: usize = 256;
/// Most bytes [`OutQueue::flush`] gathers into one contiguous write.
const GATHER_BYTES: usize = 64 * 1024;

/// Outcome of [`OutQueue::flush`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flushed {
    /// Everything queued was written.
    Drained,
    /// The socket would block with bytes still queued: wait for WRITABLE.
    Blocked,
}

/// Frames waiting to be written to one connection: the very `Rc` bytes the core produced (a
/// delivery to N members queues N pointers to one buffer), plus how much of the front chunk
/// was already written.
#[derive(Debug, Default)]
pub struct OutQueue {
    chunks: VecDeque<SharedBytes>,
    /// Bytes of `chunks[0]` already written.
    offset: usize,
    /// Bytes still to write across all chunks.
    queued: usize,
}

impl OutQueue {
    /// An empty queue (no allocation).
    pub fn new() -> OutQueue {
        OutQueue::default()
    }

    /// Queues `bytes` behind what is already queued (no copy).
    fn push(&mut self, bytes: SharedBytes) {
        if bytes.is_empty() {
            return;
        }
        self.queued += bytes.len();
        self.chunks.push_back(bytes);
    }

    /// `OutQueue::push`, taking an idle queue's buffer from `pool` rather than growing a new
    /// one.
    pub fn push_reusing(&mut self, bytes: SharedBytes, pool: &mut OutputPool) {
        if self.chunks.capacity() == 0 {
            if let Some(buf) = pool.bufs.pop() {
                self.chunks = buf;
            }
        }
        self.push(bytes);
    }

    /// Bytes still to write.
    pub fn queued(&self) -> usize {
        self.queued
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.queued == 0
    }

    /// True when the next byte to write starts a frame (nothing is half written).
    pub fn at_frame_boundary(&self) -> bool {
        self.offset == 0
    }

    /// Heap capacity held, in chunks (0 when idle).
    pub fn capacity(&self) -> usize {
        self.chunks.capacity()
    }

    /// Writes until the queue is empty or the writer would block. `Interrupted` is retried; any
    /// other error is returned and the connection should be dropped. Two savings from `pool`:
    /// - small frames are first gathered into one buffer (up to `GATHER_BYTES`) and written
    ///   with one plain write, because the kernel's per-slice cost of a vectored write of
    ///   many small frames is larger than the copy; big frames go out with `write_vectored`
    ///   (up to [`MAX_IOV`] a call), uncopied;
    /// - an emptied queue's buffer goes to the pool for the next [`OutQueue::push_reusing`]
    ///   (an idle connection holds none): a busy connection empties and refills its queue
    ///   every loop turn, and growing a fresh buffer each time costs several allocations.
    pub fn flush<W: Write>(&mut self, w: &mut W, pool: &mut OutputPool) -> io::Result<Flushed> {
        let flushed = self.write_all(w, &mut pool.gather)?;
        if self.chunks.is_empty() {
            pool.keep(std::mem::take(&mut self.chunks));
        }
        Ok(flushed)
    }

    /// Copies the unwritten front of the queue into `gather`, whole chunks up to
    /// [`GATHER_BYTES`]; false (use a vectored write) unless at least two chunks fit.
    fn gather_front(&self, gather: &mut Vec<u8>) -> bool {
        gather.clear();
        let mut count = 0;
        for (i, chunk) in self.chunks.iter().enumerate() {
            let part = &chunk[if i == 0 { self.offset } else { 0 }..];
            if gather.len() + part.len() > GATHER_BYTES {
                break;
            }
            gather.extend_from_slice(part);
            count += 1;
        }
        count >= 2
    }

    /// One `write_vectored` of up to [`MAX_IOV`] chunks from the front of the queue.
    fn write_front_vectored<W: Write>(&self, w: &mut W) -> io::Result<usize> {
        let mut iov = [IoSlice::new(&[]); MAX_IOV];
        let mut count = 0;
        for (i, chunk) in self.chunks.iter().take(MAX_IOV).enumerate() {
            let from = if i == 0 { self.offset } else { 0 };
            iov[i] = IoSlice::new(&chunk[from..]);
            count += 1;
        }
        w.write_vectored(&iov[..count])
    }

    fn write_all<W: Write>(&mut self, w: &mut W, gather: &mut Vec<u8>) -> io::Result<Flushed> {
        while !self.chunks.is_empty() {
            let n = {
                let result = match self.gather_front(gather) {
                    true => w.write(gather),
                    false => self.write_front_vectored(w),
                };
                match result {
                    Ok(0) => {
                        return Err(io::Error::new(
                            io::ErrorKind::WriteZero,
                            "socket accepted no bytes",
                        ))
                    }
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Flushed::Blocked),
                    Err(e) => return Err(e),
                }
            };
            self.advance(n);
        }
        Ok(Flushed::Drained)
    }

    /// Marks `n` more bytes written.
    fn advance(&mut self, mut n: usize) {
        self.queued -= n.min(self.queued);
        while n > 0 {
            let Some(front) = self.chunks.front() else {
                break;
            };
            let left = front.len() - self.offset;
            if n >= left {
                n -= left;
                self.offset = 0;
                self.chunks.pop_front();
            } else {
                self.offset += n;
                n = 0;
            }
        }
        if self.chunks.is_empty() {
            self.offset = 0;
            self.queued = 0;
        }
    }

    /// Drops everything queued and frees the memory.
    pub fn clear(&mut self) {
        *self = OutQueue::new();
    }
}

/// Memory the loop's output queues share: buffers of emptied queues, for reuse by the next
/// queue that fills (so idle connections hold none, yet busy ones do not reallocate every
/// turn), and the buffer that gathers a write's small frames.
#[derive(Debug, Default)]
pub struct OutputPool {
    bufs: Vec<VecDeque<SharedBytes>>,
    gather: Vec<u8>,
}

impl OutputPool {
    /// Keeps `buf` (emptied) unless enough are kept or it is too big to be worth keeping.
    fn keep(&mut self, mut buf: VecDeque<SharedBytes>) {
        let cap = buf.capacity();
        if cap > 0 && cap <= MAX_SPARE_CHUNKS && self.bufs.len() < MAX_SPARE {
            buf.clear();
            self.bufs.push(buf);
        }
    }

    /// Buffers kept.
    pub fn len(&self) -> usize {
        self.bufs.len()
    }

    /// True when none are kept.
    pub fn is_empty(&self) -> bool {
        self.bufs.is_empty()
    }
}

/// Reassembles client frames from reads. Frames are decoded straight from the read buffer the
/// loop shares between connections; only a trailing partial frame is copied into `partial`.
#[derive(Debug, Default)]
pub struct InBuf {
    partial: Vec<u8>,
}

impl InBuf {
    /// An empty buffer (no allocation).
    pub fn new() -> InBuf {
        InBuf::default()
    }

    /// Bytes of an incomplete frame held.
    pub fn len(&self) -> usize {
        self.partial.len()
    }

    /// True when no partial frame is held.
    pub fn is_empty(&self) -> bool {
        self.partial.is_empty()
    }

    /// Heap capacity held, in bytes (0 when idle).
    pub fn capacity(&self) -> usize {
        self.partial.capacity()
    }

    /// Frees the memory of a partial frame.
    pub fn clear(&mut self) {
        self.partial = Vec::new();
    }

    /// Feeds freshly read client `data`, calling `on_frame` for every complete frame in order.
    /// On an error, frames before the bad one were delivered; the stream is unusable.
    pub fn feed(
        &mut self,
        data: &[u8],
        on_frame: impl FnMut(ClientFrame),
    ) -> Result<(), CodecError> {
        self.feed_frames::<ClientFrame>(data, on_frame)
    }

    /// [`InBuf::feed`] for any frame family (peer links decode [`crate::codec::PeerFrame`]).
    pub fn feed_frames<F: FrameSet>(
        &mut self,
        mut data: &[u8],
        mut on_frame: impl FnMut(F),
    ) -> Result<(), CodecError> {
        if !self.partial.is_empty() {
            // Complete the held frame with just the bytes it is missing.
            if self.partial.len() < HEADER_LEN {
                let take = (HEADER_LEN - self.partial.len()).min(data.len());
                self.partial.extend_from_slice(&data[..take]);
                data = &data[take..];
                if self.partial.len() < HEADER_LEN {
                    return Ok(());
                }
            }
            let head: &[u8; HEADER_LEN] = self.partial[..HEADER_LEN]
                .try_into()
                .expect("header length checked");
            let header = Header::parse(head, F::MAX_PAYLOAD)?;
            let total = HEADER_LEN + header.length as usize;
            let take = (total - self.partial.len()).min(data.len());
            self.partial.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.partial.len() < total {
                return Ok(());
            }
            let held = std::mem::take(&mut self.partial);
            // `total` bytes were gathered for a header announcing exactly that: never None.
            if let Some((frame, _)) = codec::decode::<F>(&held)? {
                on_frame(frame);
            }
        }
        let mut pos = 0;
        while let Some((frame, used)) = codec::decode::<F>(&data[pos..])? {
            on_frame(frame);
            pos += used;
        }
        if pos < data.len() {
            self.partial.extend_from_slice(&data[pos..]);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{Hello, Ping};
    use std::rc::Rc;

    /// A writer that accepts at most `budget` bytes in total, then would block; it records the
    /// number of slices of each call.
    struct Fake {
        out: Vec<u8>,
        budget: usize,
        per_call: usize,
        calls: Vec<usize>,
        interrupt_once: bool,
    }

    impl Fake {
        fn new(budget: usize, per_call: usize) -> Fake {
            Fake {
                out: Vec::new(),
                budget,
                per_call,
                calls: Vec::new(),
                interrupt_once: false,
            }
        }
    }

    impl Write for Fake {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.write_vectored(&[IoSlice::new(buf)])
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            if self.interrupt_once {
                self.interrupt_once = false;
                return Err(io::ErrorKind::Interrupted.into());
            }
            self.calls.push(bufs.len());
            if self.budget == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(self.budget).min(self.per_call - n);
                self.out.extend_from_slice(&b[..take]);
                self.budget -= take;
                n += take;
                if take < b.len() {
                    break;
                }
            }
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn chunk(byte: u8, len: usize) -> SharedBytes {
        vec![byte; len].into()
    }

    #[test]
    fn partial_writes_resume_at_the_right_offset() {
        let mut pool = OutputPool::default();
        let mut q = OutQueue::new();
        assert_eq!(q.capacity(), 0);
        q.push(chunk(1, 10));
        q.push(chunk(2, 10));
        q.push(chunk(3, 10));
        assert_eq!(q.queued(), 30);
        let mut w = Fake::new(15, usize::MAX);
        assert_eq!(q.flush(&mut w, &mut pool).unwrap(), Flushed::Blocked);
        assert_eq!(q.queued(), 15);
        assert!(!q.at_frame_boundary());
        w.budget = 3;
        assert_eq!(q.flush(&mut w, &mut pool).unwrap(), Flushed::Blocked);
        assert_eq!(q.queued(), 12);
        w.budget = 100;
        w.per_call = 4; // short writes without blocking
        assert_eq!(q.flush(&mut w, &mut pool).unwrap(), Flushed::Drained);
        let mut want = vec![1u8; 10];
        want.extend([2u8; 10]);
        want.extend([3u8; 10]);
        assert_eq!(w.out, want);
        assert_eq!(
            (q.queued(), q.capacity()),
            (0, 0),
            "idle queue frees memory"
        );
        assert!(q.at_frame_boundary());
    }

    #[test]
    fn an_emptied_buffer_is_kept_for_the_next_queue_that_fills() {
        let mut pool = OutputPool::default();
        let (mut a, mut b) = (OutQueue::new(), OutQueue::new());
        for _ in 0..20 {
            a.push_reusing(chunk(1, 4), &mut pool);
        }
        let grown = a.capacity();
        assert!(grown >= 20);
        let mut w = Fake::new(40, usize::MAX);
        assert_eq!(a.flush(&mut w, &mut pool).unwrap(), Flushed::Blocked);
        assert!(pool.is_empty(), "a queue with bytes left keeps its buffer");
        w.budget = usize::MAX;
        assert_eq!(a.flush(&mut w, &mut pool).unwrap(), Flushed::Drained);
        assert_eq!(
            (a.capacity(), pool.len()),
            (0, 1),
            "idle queue holds no memory"
        );
        b.push_reusing(chunk(2, 4), &mut pool);
        assert_eq!((b.capacity(), pool.len()), (grown, 0), "reused, not grown");
        assert_eq!(w.out.len(), 80);
    }

    #[test]
    fn a_buffer_grown_by_a_burst_is_not_kept() {
        let mut pool = OutputPool::default();
        let mut q = OutQueue::new();
        for _ in 0..=MAX_SPARE_CHUNKS {
            q.push_reusing(chunk(1, 1), &mut pool);
        }
        let mut w = Fake::new(usize::MAX, usize::MAX);
        assert_eq!(q.flush(&mut w, &mut pool).unwrap(), Flushed::Drained);
        assert_eq!((q.capacity(), pool.len()), (0, 0));
    }

    #[test]
    fn vectored_batches_of_at_most_64_slices() {
        let mut pool = OutputPool::default();
        let mut q = OutQueue::new();
        // Frames too big to gather two at a time go out vectored.
        let shared = chunk(7, GATHER_BYTES);
        for _ in 0..150 {
            q.push(shared.clone());
        }
        assert_eq!(Rc::strong_count(&shared), 151, "queued without copying");
        let mut w = Fake::new(usize::MAX, usize::MAX);
        assert_eq!(q.flush(&mut w, &mut pool).unwrap(), Flushed::Drained);
        assert_eq!(w.calls, vec![64, 64, 22]);
        assert_eq!(w.out.len(), 150 * GATHER_BYTES);
        assert_eq!(Rc::strong_count(&shared), 1);
    }

    #[test]
    fn the_fan_out_flush_gathers_small_frames_into_one_write() {
        let mut pool = OutputPool::default();
        let mut q = OutQueue::new();
        for b in 1..=5 {
            q.push_reusing(chunk(b, 100), &mut pool);
        }
        // The socket takes 250 bytes, then would block; later it takes the rest. Every call
        // is one plain write of one buffer.
        let mut w = Fake::new(250, usize::MAX);
        assert_eq!(q.flush(&mut w, &mut pool).unwrap(), Flushed::Blocked);
        assert_eq!((w.calls.as_slice(), q.queued()), (&[1, 1][..], 250));
        w.budget = usize::MAX;
        assert_eq!(q.flush(&mut w, &mut pool).unwrap(), Flushed::Drained);
        assert_eq!(w.calls, vec![1, 1, 1]);
        let want: Vec<u8> = (1..=5).flat_map(|b| [b; 100]).collect();
        assert_eq!(w.out, want);

        // A frame too big to gather with the next goes out vectored, without a copy.
        q.push_reusing(chunk(8, GATHER_BYTES), &mut pool);
        q.push_reusing(chunk(9, 10), &mut pool);
        let mut w = Fake::new(usize::MAX, usize::MAX);
        q.flush(&mut w, &mut pool).unwrap();
        assert_eq!(w.calls, vec![2]);
        assert_eq!(w.out.len(), GATHER_BYTES + 10);
    }

    #[test]
    fn interrupted_is_retried_and_errors_surface() {
        let mut pool = OutputPool::default();
        let mut q = OutQueue::new();
        q.push(chunk(1, 5));
        let mut w = Fake::new(100, 100);
        w.interrupt_once = true;
        assert_eq!(q.flush(&mut w, &mut pool).unwrap(), Flushed::Drained);
        assert_eq!(w.out.len(), 5);

        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        q.push(chunk(1, 5));
        assert!(q.flush(&mut Broken, &mut pool).is_err());
        q.clear();
        assert_eq!((q.queued(), q.capacity()), (0, 0));
    }

    #[test]
    fn queued_bytes_track_the_bound() {
        let mut pool = OutputPool::default();
        let mut q = OutQueue::new();
        for _ in 0..10 {
            q.push(chunk(0, 1000));
        }
        q.push(chunk(0, 0));
        assert_eq!(q.queued(), 10_000);
        let mut w = Fake::new(2500, usize::MAX);
        q.flush(&mut w, &mut pool).unwrap();
        assert_eq!(q.queued(), 7500);
        assert!(
            q.queued() > 5000,
            "a driver with a 5000-byte bound drops it"
        );
    }

    fn frames() -> (Vec<ClientFrame>, Vec<u8>) {
        let fs = vec![
            ClientFrame::Hello(Hello {
                user: "alice".into(),
                client_id: 9,
            }),
            ClientFrame::Ping(Ping { nonce: 1 }),
            ClientFrame::Ping(Ping { nonce: 2 }),
        ];
        let mut bytes = Vec::new();
        for f in &fs {
            codec::encode_into(f, &mut bytes).unwrap();
        }
        (fs, bytes)
    }

    #[test]
    fn frames_split_at_every_point_are_reassembled() {
        let (want, bytes) = frames();
        for cut1 in 0..=bytes.len() {
            for cut2 in [cut1, (cut1 + 7).min(bytes.len()), bytes.len()] {
                let mut ib = InBuf::new();
                let mut got = Vec::new();
                for part in [&bytes[..cut1], &bytes[cut1..cut2], &bytes[cut2..]] {
                    ib.feed(part, |f| got.push(f)).unwrap();
                }
                assert_eq!(got, want, "cuts {cut1} {cut2}");
                assert!(ib.is_empty());
            }
        }
    }

    #[test]
    fn only_the_trailing_partial_frame_is_held_and_freed_after() {
        let (_, bytes) = frames();
        let mut ib = InBuf::new();
        let mut n = 0;
        ib.feed(&bytes[..bytes.len() - 3], |_| n += 1).unwrap();
        assert_eq!(n, 2);
        assert_eq!(ib.len(), 16 + 8 - 3, "just the partial Ping");
        ib.feed(&bytes[bytes.len() - 3..], |_| n += 1).unwrap();
        assert_eq!(n, 3);
        assert_eq!(ib.capacity(), 0, "idle buffer freed");
    }

    #[test]
    fn bad_bytes_are_an_error_after_the_good_frames() {
        let (_, mut bytes) = frames();
        bytes.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        let mut ib = InBuf::new();
        let mut n = 0;
        assert_eq!(ib.feed(&bytes, |_| n += 1), Err(CodecError::BadMagic));
        assert_eq!(n, 3);
        // An oversized header held as a partial is rejected as soon as its header is complete.
        let mut ib = InBuf::new();
        let mut big = [0u8; HEADER_LEN];
        Header {
            kind: 1,
            flags: 0,
            length: u32::MAX,
            crc: 0,
        }
        .emit(&mut big);
        ib.feed(&big[..5], |_| ()).unwrap();
        assert!(matches!(
            ib.feed(&big[5..], |_| ()),
            Err(CodecError::TooLarge { .. })
        ));
    }
}
