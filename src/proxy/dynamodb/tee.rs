//! The upstream's response body on its way to the client, unchanged, with a bounded copy
//! taken for the result event: the first `cap` bytes and the last few.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::oneshot;

use super::summary::{Captured, TAIL_BYTES};

pub struct Tee {
    inner: hyper::body::Incoming,
    captured: Captured,
    cap: usize,
    done: Option<oneshot::Sender<Captured>>,
}

impl Tee {
    pub fn new(inner: hyper::body::Incoming, cap: usize, gzip: bool) -> (Self, oneshot::Receiver<Captured>) {
        let (tx, rx) = oneshot::channel();
        let captured = Captured { gzip, ..Captured::default() };
        (Tee { inner, captured, cap, done: Some(tx) }, rx)
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
            let _ = done.send(std::mem::take(&mut self.captured));
        }
    }
}

impl Body for Tee {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
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
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Tee {
    fn drop(&mut self) {
        // hyper may drop a body it saw end (by its length) without polling it to `None`.
        let complete = self.inner.is_end_stream();
        self.finish(complete);
    }
}
