//! Progress bars for long exports, verifies and uploads, on stderr and only when stderr is
//! a terminal: piped or logged output never carries them.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar counting `len` items (or bytes, with `bytes`), labelled `what`.
pub fn bar(len: u64, what: &str, bytes: bool) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    let template = if bytes {
        "{prefix} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta} left)"
    } else {
        "{prefix} [{bar:30}] {pos}/{len} ({eta} left)"
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(what.to_string());
    bar
}
