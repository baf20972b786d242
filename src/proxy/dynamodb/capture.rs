//! A bounded copy of the endpoint's answer, taken as it streams to the client, for the result
//! event: the first `cap` bytes and the last few.

use super::summary::{Captured, TAIL_BYTES};

pub struct Capture {
    captured: Captured,
    cap: usize,
}

impl Capture {
    pub fn new(cap: usize, gzip: bool) -> Self {
        Capture { captured: Captured { gzip, ..Captured::default() }, cap }
    }

    pub fn keep(&mut self, data: &[u8]) {
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

    /// What was kept; `complete` if the body ended as its framing said it would.
    pub fn finish(mut self, complete: bool) -> Captured {
        self.captured.complete = complete;
        self.captured
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_head_and_the_last_bytes_are_kept_and_no_more() {
        let mut capture = Capture::new(10, false);
        capture.keep(b"0123456789abc");
        for _ in 0..10 {
            capture.keep(&[b'x'; TAIL_BYTES]);
        }
        capture.keep(b"END");
        let captured = capture.finish(true);
        assert_eq!(captured.head, b"0123456789");
        assert_eq!(captured.total, 16 + 10 * TAIL_BYTES as u64);
        assert!(captured.tail.ends_with(b"xEND") && captured.tail.len() <= 2 * TAIL_BYTES);
        assert!(captured.complete);
    }
}
