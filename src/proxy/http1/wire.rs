//! One HTTP/1.1 connection's bytes: a read buffer that heads and bodies are taken from, and
//! writes that go out as they are given.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::body::{ChunkError, ChunkedDecoder, Decoded, Framing};
use super::head::{parse_request, parse_response, HeadError, RequestHead, ResponseHead};

/// Bytes asked of the socket per read.
const READ_SIZE: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Head(#[from] HeadError),
    #[error(transparent)]
    Chunk(#[from] ChunkError),
    #[error("the connection closed in the middle of a message")]
    Truncated,
    #[error("the body is over {0} bytes")]
    TooLarge(usize),
    #[error("no bytes for {0:?}")]
    Stalled(Duration),
}

pub struct Wire<S> {
    pub stream: S,
    pub buf: BytesMut,
}

/// Where a body being read stands.
#[derive(Debug)]
pub enum BodyState {
    Length(u64),
    Chunked(ChunkedDecoder),
    UntilClose,
    Done,
}

impl BodyState {
    /// The body has been read to its end, so nothing more will be read for it.
    pub fn is_done(&self) -> bool {
        matches!(self, BodyState::Done | BodyState::Length(0))
    }

    pub fn new(framing: Framing) -> Self {
        match framing {
            Framing::Empty => BodyState::Done,
            Framing::Length(n) => BodyState::Length(n),
            Framing::Chunked => BodyState::Chunked(ChunkedDecoder::default()),
            Framing::UntilClose => BodyState::UntilClose,
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Wire<S> {
    pub fn new(stream: S) -> Self {
        Wire { stream, buf: BytesMut::new() }
    }

    /// Reads more into the buffer; 0 at the end of the stream.
    async fn fill(&mut self) -> std::io::Result<usize> {
        self.buf.reserve(READ_SIZE);
        self.stream.read_buf(&mut self.buf).await
    }

    /// Like `fill`, but an error if nothing comes within `stall`.
    async fn fill_within(&mut self, stall: Duration) -> Result<usize, WireError> {
        tokio::time::timeout(stall, self.fill()).await.map_err(|_| WireError::Stalled(stall))?.map_err(WireError::from)
    }

    /// The next request head; `None` if the peer closed the connection between requests.
    pub async fn read_request_head(&mut self) -> Result<Option<RequestHead>, WireError> {
        let mut parse_from = 0;
        loop {
            if self.head_may_be_whole(parse_from)? {
                if let Some(head) = parse_request(&mut self.buf)? {
                    return Ok(Some(head));
                }
            }
            parse_from = self.buf.len();
            if self.fill().await? == 0 {
                return if self.buf.iter().all(|b| b.is_ascii_whitespace()) { Ok(None) } else { Err(WireError::Truncated) };
            }
        }
    }

    /// The next response head, interim (1xx) responses skipped.
    pub async fn read_response_head(&mut self, stall: Duration) -> Result<ResponseHead, WireError> {
        let mut parse_from = 0;
        loop {
            if self.head_may_be_whole(parse_from)? {
                if let Some(head) = parse_response(&mut self.buf)? {
                    // 101 would switch protocols, which no request dbtape sends asks for.
                    if (100..200).contains(&head.status) && head.status != 101 {
                        parse_from = 0;
                        continue;
                    }
                    return Ok(head);
                }
            }
            parse_from = self.buf.len();
            if self.fill_within(stall).await? == 0 {
                return Err(WireError::Truncated);
            }
        }
    }

    /// Whether the buffer may hold a whole head: a blank line has ended a line since byte
    /// `from`. Parsing only then keeps a peer that sends its head a byte at a time from
    /// making each byte cost a parse of everything before it.
    fn head_may_be_whole(&self, from: usize) -> Result<bool, WireError> {
        let recent = &self.buf[from.saturating_sub(3).min(self.buf.len())..];
        // "\n\n" or "\n\r\n", found from each line end (memmem would build two searchers
        // for every head read).
        let blank_line = memchr::memchr_iter(b'\n', recent).any(|at| match recent.get(at + 1) {
            Some(b'\n') => true,
            Some(b'\r') => recent.get(at + 2) == Some(&b'\n'),
            _ => false,
        });
        if blank_line {
            return Ok(true);
        }
        if self.buf.len() >= super::head::MAX_HEAD_BYTES {
            return Err(HeadError::TooLarge.into());
        }
        Ok(false)
    }

    /// A whole body of at most `max` bytes; a body framed by its length and already read
    /// with its head is taken from the buffer without a copy.
    pub async fn read_body(&mut self, framing: Framing, max: usize, stall: Duration) -> Result<Bytes, WireError> {
        match framing {
            Framing::Empty => Ok(Bytes::new()),
            Framing::Length(n) => {
                let n = usize::try_from(n).ok().filter(|&n| n <= max).ok_or(WireError::TooLarge(max))?;
                self.buf.reserve(n.saturating_sub(self.buf.len()));
                while self.buf.len() < n {
                    if self.fill_within(stall).await? == 0 {
                        return Err(WireError::Truncated);
                    }
                }
                Ok(self.buf.split_to(n).freeze())
            }
            Framing::Chunked | Framing::UntilClose => {
                let mut state = BodyState::new(framing);
                let mut body = BytesMut::new();
                while let Some(data) = self.next_chunk(&mut state, stall).await? {
                    if body.len() + data.len() > max {
                        return Err(WireError::TooLarge(max));
                    }
                    body.extend_from_slice(&data);
                }
                Ok(body.freeze())
            }
        }
    }

    /// The next piece of a body, or `None` at its end.
    pub async fn next_chunk(&mut self, state: &mut BodyState, stall: Duration) -> Result<Option<Bytes>, WireError> {
        loop {
            match state {
                BodyState::Done => return Ok(None),
                BodyState::Length(0) => {
                    *state = BodyState::Done;
                    return Ok(None);
                }
                BodyState::Length(left) => {
                    if !self.buf.is_empty() {
                        let take = usize::try_from(*left).unwrap_or(usize::MAX).min(self.buf.len());
                        *left -= take as u64;
                        return Ok(Some(self.buf.split_to(take).freeze()));
                    }
                    if self.fill_within(stall).await? == 0 {
                        return Err(WireError::Truncated);
                    }
                }
                BodyState::Chunked(decoder) => match decoder.decode(&mut self.buf)? {
                    Decoded::Data(data) => return Ok(Some(data)),
                    Decoded::End => {
                        *state = BodyState::Done;
                        return Ok(None);
                    }
                    Decoded::NeedMore => {
                        if self.fill_within(stall).await? == 0 {
                            return Err(WireError::Truncated);
                        }
                    }
                },
                BodyState::UntilClose => {
                    if !self.buf.is_empty() {
                        return Ok(Some(self.buf.split().freeze()));
                    }
                    if self.fill_within(stall).await? == 0 {
                        *state = BodyState::Done;
                        return Ok(None);
                    }
                }
            }
        }
    }

    pub async fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    /// Whether the peer has closed (or sent anything) while the connection sat idle: one
    /// read that does not wait.
    pub fn closed_while_idle(&mut self) -> bool {
        use futures_util::FutureExt;
        if !self.buf.is_empty() {
            return true;
        }
        let mut probe = [0u8; 1];
        match self.stream.read(&mut probe).now_or_never() {
            None => false,
            Some(Ok(_)) | Some(Err(_)) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STALL: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn pipelined_requests_and_their_bodies_are_taken_in_turn() {
        let (client, server) = tokio::io::duplex(64);
        let mut wire = Wire::new(server);
        let writer = tokio::spawn(async move {
            let mut client = client;
            client
                .write_all(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloPOST /2 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
                .await
                .unwrap();
            client
        });
        let first = wire.read_request_head().await.unwrap().unwrap();
        let body = wire.read_body(super::super::body::request_framing(&first).unwrap(), 100, STALL).await.unwrap();
        assert_eq!(&body[..], b"hello");
        let second = wire.read_request_head().await.unwrap().unwrap();
        assert_eq!(second.target(), "/2");
        let body = wire.read_body(super::super::body::request_framing(&second).unwrap(), 100, STALL).await.unwrap();
        assert_eq!(&body[..], b"abc");
        drop(writer.await.unwrap());
        assert!(wire.read_request_head().await.unwrap().is_none(), "a close between requests is not an error");
    }

    #[tokio::test]
    async fn bodies_over_the_limit_and_cut_off_ones_are_errors() {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut wire = Wire::new(server);
        client.write_all(b"3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n").await.unwrap();
        assert!(matches!(wire.read_body(Framing::Chunked, 5, STALL).await, Err(WireError::TooLarge(5))));
        assert!(matches!(wire.read_body(Framing::Length(6), 5, STALL).await, Err(WireError::TooLarge(5))));
        let (mut client, server) = tokio::io::duplex(1024);
        let mut wire = Wire::new(server);
        client.write_all(b"abc").await.unwrap();
        drop(client);
        assert!(matches!(wire.read_body(Framing::Length(6), 100, STALL).await, Err(WireError::Truncated)));
    }

    /// A head sent a byte at a time is parsed once, when its blank line arrives, and one
    /// that never ends is refused at the size limit.
    #[tokio::test]
    async fn heads_arriving_a_byte_at_a_time_are_read_and_endless_ones_refused() {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let mut wire = Wire::new(server);
        let reader = tokio::spawn(async move { wire.read_request_head().await.map(|h| h.map(|h| h.target().to_string())) });
        for byte in b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n" {
            client.write_all(&[*byte]).await.unwrap();
            tokio::task::yield_now().await;
        }
        let read = tokio::time::timeout(STALL, reader).await.expect("the head is read once its blank line is in");
        assert_eq!(read.unwrap().unwrap().as_deref(), Some("/slow"));
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let mut wire = Wire::new(server);
        let endless = format!("GET / HTTP/1.1\r\nx: {}", "a".repeat(super::super::head::MAX_HEAD_BYTES));
        client.write_all(endless.as_bytes()).await.unwrap();
        assert!(matches!(wire.read_request_head().await, Err(WireError::Head(HeadError::TooLarge))));
    }

    #[tokio::test]
    async fn a_stalled_body_times_out() {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut wire = Wire::new(server);
        client.write_all(b"ab").await.unwrap();
        let stall = Duration::from_millis(50);
        assert!(matches!(wire.read_body(Framing::Length(6), 100, stall).await, Err(WireError::Stalled(_))));
    }
}
