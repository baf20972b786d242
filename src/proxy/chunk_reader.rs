//! Reads a connection's next chunk through one scratch buffer per thread, so that a session
//! parked between statements holds no read buffer of its own: an idle connection costs its
//! TLS state and little else. The bytes are copied out of the scratch within the same poll,
//! before the caller can await, because the next connection this thread polls reads into it.

use std::cell::RefCell;
use std::future::poll_fn;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::Poll;

use tokio::io::{AsyncRead, ReadBuf};

/// The most one read takes: a TLS record's worth of plaintext.
pub const SCRATCH_BYTES: usize = 16 * 1024;
/// A connection keeps a chunk buffer this small across idle time; a bigger one (a result
/// set streaming through) is given back as soon as the connection has nothing to read.
const KEEP_WHEN_IDLE: usize = 2 * 1024;

thread_local! {
    static SCRATCH: RefCell<Box<[MaybeUninit<u8>]>> = RefCell::new(Box::new_uninit_slice(SCRATCH_BYTES));
}

#[derive(Default)]
pub struct ChunkReader {
    held: Vec<u8>,
}

impl ChunkReader {
    pub fn new() -> Self {
        ChunkReader::default()
    }

    /// The next chunk `from` has; empty at end of stream.
    pub async fn read<R: AsyncRead + Unpin>(&mut self, from: &mut R) -> std::io::Result<&[u8]> {
        let held = &mut self.held;
        held.clear();
        poll_fn(|cx| {
            let polled = SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
                Ok(mut scratch) => {
                    let mut buf = ReadBuf::uninit(&mut scratch[..]);
                    let polled = Pin::new(&mut *from).poll_read(cx, &mut buf);
                    if let Poll::Ready(Ok(())) = polled {
                        held.extend_from_slice(buf.filled());
                    }
                    polled
                }
                // Only if a reader were polled from inside another's poll.
                Err(_) => {
                    let mut local = vec![0u8; SCRATCH_BYTES];
                    let mut buf = ReadBuf::new(&mut local);
                    let polled = Pin::new(&mut *from).poll_read(cx, &mut buf);
                    if let Poll::Ready(Ok(())) = polled {
                        held.extend_from_slice(buf.filled());
                    }
                    polled
                }
            });
            if polled.is_pending() && held.capacity() > KEEP_WHEN_IDLE {
                *held = Vec::new();
            }
            polled
        })
        .await?;
        Ok(&self.held[..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn chunks_arrive_whole_and_a_big_buffer_is_given_back_when_idle() {
        let (mut near, mut far) = tokio::io::duplex(64 * 1024);
        let mut reader = ChunkReader::new();
        far.write_all(b"hello").await.unwrap();
        assert_eq!(reader.read(&mut near).await.unwrap(), b"hello");
        let big = vec![7u8; 12 * 1024];
        far.write_all(&big).await.unwrap();
        assert_eq!(reader.read(&mut near).await.unwrap(), &big[..]);
        assert!(reader.held.capacity() >= big.len());
        // Nothing to read: the next read waits, and gives the big buffer back meanwhile.
        let waiting = tokio::time::timeout(std::time::Duration::from_millis(20), reader.read(&mut near)).await;
        assert!(waiting.is_err());
        assert_eq!(reader.held.capacity(), 0);
        drop(far);
        assert!(reader.read(&mut near).await.unwrap().is_empty(), "end of stream");
    }
}
