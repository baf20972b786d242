//! The upstream's response body on its way to the client, unchanged, with a bounded copy
//! taken for the result event: the first `cap` bytes and the last few.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::summary::{Captured, TAIL_BYTES};

/// Called once with what was captured, when the body has ended (or was dropped).
pub type OnEnd = Box<dyn FnOnce(Captured) + Send>;

/// Bytes of a response read before it is handed to the client: a typical DynamoDB answer
/// whole, so its head and body leave in one write rather than two.
const PREFETCH: usize = 64 * 1024;

pub struct Tee {
    /// Read already, not yet given out.
    prefix: std::collections::VecDeque<Bytes>,
    /// The rest of the body; `None` once it has ended.
    inner: Option<hyper::body::Incoming>,
    captured: Captured,
    cap: usize,
    done: Option<OnEnd>,
}

impl Tee {
    /// Reads up to `PREFETCH` bytes of `inner` (all of a small response) before returning. If
    /// the body breaks off meanwhile, `on_end` hears of it (incomplete) before the error returns.
    pub async fn new(mut inner: hyper::body::Incoming, cap: usize, gzip: bool, on_end: OnEnd) -> Result<Self, hyper::Error> {
        use http_body_util::BodyExt;
        let mut prefix = std::collections::VecDeque::new();
        let mut read = 0;
        let mut rest = None;
        while read < PREFETCH {
            match inner.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        read += data.len();
                        prefix.push_back(data);
                    }
                }
                Some(Err(e)) => {
                    let total = read as u64;
                    on_end(Captured {
                        head: prefix.iter().flat_map(|b| b.iter().copied()).take(cap).collect(),
                        total,
                        gzip,
                        ..Captured::default()
                    });
                    return Err(e);
                }
                None => break,
            }
        }
        if read >= PREFETCH {
            rest = Some(inner);
        }
        let captured = Captured { gzip, ..Captured::default() };
        Ok(Tee { prefix, inner: rest, captured, cap, done: Some(on_end) })
    }

    /// Whether the body goes on past what was prefetched, so the endpoint connection must
    /// go on being driven while the client reads it.
    pub fn streams(&self) -> bool {
        self.inner.is_some()
    }

    fn keep(&mut self, data: &[u8]) {
        self.captured.total += data.len() as u64;
        let room = self.cap.saturating_sub(self.captured.head.len());
        self.captured.head.extend_from_slice(&data[..room.min(data.len())]);
        if data.len() > room {
            let tail = &mut self.captured.tail;
            tail.extend_from_slice(&data[data.len().saturating_sub(TAIL_BYTES)..]);
            if tail.len() > 2 * TAIL_BYTES {
                tail.drain(..tail.len() - TAIL_BYTES);
            }
        }
    }

    fn finish(&mut self, complete: bool) {
        if let Some(done) = self.done.take() {
            self.captured.complete = complete;
            done(std::mem::take(&mut self.captured));
        }
    }
}

impl Body for Tee {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        if let Some(data) = this.prefix.pop_front() {
            this.keep(&data);
            if this.prefix.is_empty() && this.inner.is_none() {
                this.finish(true);
            }
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        let Some(inner) = this.inner.as_mut() else {
            this.finish(true);
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.keep(data);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.finish(false);
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                this.finish(true);
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_empty() && self.inner.as_ref().is_none_or(|i| i.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let ready: u64 = self.prefix.iter().map(|b| b.len() as u64).sum();
        match &self.inner {
            None => SizeHint::with_exact(ready),
            Some(inner) => {
                let rest = inner.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(rest.lower() + ready);
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper + ready);
                }
                hint
            }
        }
    }
}

impl Drop for Tee {
    fn drop(&mut self) {
        // hyper may drop a body it saw end (by its length) without polling it to `None`.
        let complete = self.is_end_stream();
        self.finish(complete);
    }
}
