//! zstd decompression with one context per thread, reused. Creating a context costs more
//! than decompressing a short session's frames: `ZSTD_createDCtx` was 2% of the pooled
//! storm profile, all of it the search indexer opening one reader per session.

use std::cell::RefCell;
use std::io;

thread_local! {
    static CONTEXT: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

/// Decompresses one zstd frame of at most `capacity` bytes, against `dictionary` (empty for
/// none).
pub fn decompress(data: &[u8], capacity: usize, dictionary: &[u8]) -> io::Result<Vec<u8>> {
    CONTEXT.with(|slot| {
        // Never re-entered; a fresh context serves if it ever were.
        let Ok(mut slot) = slot.try_borrow_mut() else {
            return zstd::bulk::Decompressor::with_dictionary(dictionary)?.decompress(data, capacity);
        };
        let context = match slot.as_mut() {
            Some(context) => context,
            None => slot.insert(zstd::bulk::Decompressor::new()?),
        };
        context.set_dictionary(dictionary)?;
        context.decompress(data, capacity)
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_reused_context_forgets_the_last_dictionary() {
        let dictionary = b"SELECT * FROM accounts WHERE id = ".repeat(8);
        let text = b"SELECT * FROM accounts WHERE id = 42".repeat(4);
        let with = zstd::bulk::Compressor::with_dictionary(3, &dictionary).unwrap().compress(&text).unwrap();
        let without = zstd::bulk::compress(&text, 3).unwrap();
        assert_eq!(super::decompress(&with, text.len(), &dictionary).unwrap(), text);
        assert_eq!(super::decompress(&without, text.len(), b"").unwrap(), text);
        assert!(super::decompress(&with, text.len(), b"").is_err(), "a frame compressed against a dictionary needs it");
        assert_eq!(super::decompress(&with, text.len(), &dictionary).unwrap(), text);
    }
}
