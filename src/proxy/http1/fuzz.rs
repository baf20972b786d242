//! Entry point for the `http1_message` fuzz target: arbitrary bytes read as a stream of
//! pipelined requests, and as a response, through the heads' parser, the framing rules and
//! the chunked decoder. Nothing may panic, and a decoded body never outgrows its input.

use bytes::BytesMut;

use super::body::{request_framing, response_framing, ChunkedDecoder, Decoded, Framing};
use super::head::{parse_request, parse_response};

pub fn message(data: &[u8]) {
    let mut buf = BytesMut::from(data);
    // Requests, one after another, as a pipelining client sends them.
    while let Ok(Some(head)) = parse_request(&mut buf) {
        let _ = (head.method(), head.path(), head.query(), head.keep_alive(), head.fields.get_str("authorization"));
        match request_framing(&head) {
            Ok(Framing::Length(n)) => {
                let n = usize::try_from(n).unwrap_or(usize::MAX).min(buf.len());
                let _ = buf.split_to(n);
            }
            Ok(Framing::Chunked) => {
                if !decoded_fits(&mut buf) {
                    return;
                }
            }
            Ok(_) => {}
            Err(_) => return,
        }
    }
    let mut buf = BytesMut::from(data);
    if let Ok(Some(head)) = parse_response(&mut buf) {
        if response_framing(&head, false) == Ok(Framing::Chunked) {
            decoded_fits(&mut buf);
        }
    }
}

/// Decodes a chunked body from `buf`; false if it is malformed or incomplete.
fn decoded_fits(buf: &mut BytesMut) -> bool {
    let before = buf.len();
    let mut decoder = ChunkedDecoder::default();
    let mut decoded = 0;
    loop {
        match decoder.decode(buf) {
            Ok(Decoded::Data(data)) => decoded += data.len(),
            Ok(Decoded::End) => break,
            Ok(Decoded::NeedMore) | Err(_) => return false,
        }
        assert!(decoded <= before, "decoded more than was read");
    }
    assert!(decoded + buf.len() <= before);
    true
}
