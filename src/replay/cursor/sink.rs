//! Where a cursor export's batches go. A sink confirms a batch only once it holds it
//! durably; only then is the cursor moved past it.

use std::io::Write;
use std::path::Path;

use super::reader::BatchLine;

pub trait BatchSink {
    /// Writes `lines` and returns once they are as safe as the sink can make them: the
    /// cursor is saved past them right after.
    fn write_batch(&mut self, lines: &[BatchLine]) -> std::io::Result<()>;

    /// How much the sink holds, saved with the cursor so that a restart can cut away what
    /// was written after it (a file's length); none where that cannot be done.
    fn committed_len(&self) -> Option<u64> {
        None
    }
}

/// Standard output: at-least-once (a collector drops repeats by `uid`).
pub struct StdoutSink;

impl BatchSink for StdoutSink {
    fn write_batch(&mut self, lines: &[BatchLine]) -> std::io::Result<()> {
        let mut out = std::io::stdout().lock();
        for line in lines {
            out.write_all(&line.line)?;
        }
        out.flush()
    }
}

/// A file that holds every event exactly once: each batch is fsynced before the cursor
/// records the file's length, and a restart cuts the file back to that length first.
pub struct FileSink {
    file: std::fs::File,
    len: u64,
}

impl FileSink {
    /// Opens `path` cut back to `committed_len`, what the cursor last recorded.
    pub fn open(path: &Path, committed_len: u64) -> std::io::Result<FileSink> {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        file.set_len(committed_len)?;
        Ok(FileSink { file, len: committed_len })
    }
}

impl BatchSink for FileSink {
    fn write_batch(&mut self, lines: &[BatchLine]) -> std::io::Result<()> {
        let mut out = std::io::BufWriter::with_capacity(1 << 20, &self.file);
        for line in lines {
            out.write_all(&line.line)?;
        }
        out.flush()?;
        drop(out);
        self.file.sync_data()?;
        self.len = self.file.metadata()?.len();
        Ok(())
    }

    fn committed_len(&self) -> Option<u64> {
        Some(self.len)
    }
}
