//! `dbtape play`: renders a session as a screen (pty with timing, or text at once), or
//! prints its events as JSON or YAML.

use std::io::{IsTerminal, Write};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::screen::{ScreenStep, ScreenSteps};
use crate::recording::events::{EventStream, StreamEnd};
use crate::recording::RecordingStore;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlayFormat {
    Pty,
    Text,
    Json,
    Yaml,
}

#[derive(Debug, Clone, Copy)]
pub struct PlayOptions {
    pub format: PlayFormat,
    pub speed: f64,
    pub skip_idle: bool,
    pub follow: bool,
    /// Show events from this index on (a search hit's `ei`); earlier ones still set the
    /// renderer's state (the current database, say) but are not shown.
    pub from_ei: u64,
}

fn event_index(line: &[u8]) -> u64 {
    #[derive(serde::Deserialize)]
    struct Ei {
        ei: u64,
    }
    serde_json::from_slice::<Ei>(line).map_or(u64::MAX, |e| e.ei)
}

/// Longest pause `--skip-idle` keeps, as `tsh play` does.
const IDLE_CAP_MS: i64 = 500;
const SEEK_STEP_MS: f64 = 5_000.0;

pub fn play(store: &RecordingStore, sid: &str, protocol: &str, options: PlayOptions, out: &mut dyn Write) -> std::io::Result<StreamEnd> {
    let mut stream = EventStream::open(store, sid, options.follow)?;
    match options.format {
        PlayFormat::Json => stream.for_each_event(|line| {
            if options.from_ei > 0 && event_index(line) < options.from_ei {
                return Ok(true);
            }
            out.write_all(line)?;
            out.write_all(b"\n")?;
            if options.follow {
                out.flush()?;
            }
            Ok(true)
        }),
        PlayFormat::Yaml => stream.for_each_event(|line| {
            if options.from_ei > 0 && event_index(line) < options.from_ei {
                return Ok(true);
            }
            let value: serde_json::Value = serde_json::from_slice(line).map_err(std::io::Error::other)?;
            let mut text = String::new();
            super::yaml::write_document_item(&value, &mut text);
            out.write_all(text.as_bytes())?;
            Ok(true)
        }),
        PlayFormat::Text => {
            let mut steps = ScreenSteps::new(stream, protocol, options.from_ei);
            for step in steps.by_ref() {
                out.write_all(step?.text.replace("\r\n", "\n").as_bytes())?;
                if options.follow {
                    out.flush()?;
                }
            }
            Ok(steps.end().cloned().unwrap_or(StreamEnd::Sealed))
        }
        PlayFormat::Pty => {
            if !std::io::stdout().is_terminal() {
                eprintln!("note: stdout is not a terminal; printing as --format text");
                return play(store, sid, protocol, PlayOptions { format: PlayFormat::Text, ..options }, out);
            }
            play_pty(ScreenSteps::new(stream, protocol, options.from_ei), options, &mut std::io::stdout())
        }
    }
}

enum Feed {
    Step(ScreenStep),
    End(std::io::Result<StreamEnd>),
}

/// Plays `steps` with their recorded timing on `out`, a terminal in raw mode: the steps are
/// read on their own thread, so a slow disk or a followed session never stalls the keys.
fn play_pty(mut steps: ScreenSteps, options: PlayOptions, out: &mut dyn Write) -> std::io::Result<StreamEnd> {
    let (tx, rx) = mpsc::channel::<Feed>();
    std::thread::spawn(move || {
        for step in steps.by_ref() {
            let feed = match step {
                Ok(step) => Feed::Step(step),
                Err(e) => Feed::End(Err(e)),
            };
            if tx.send(feed).is_err() {
                return;
            }
        }
        let _ = tx.send(Feed::End(Ok(steps.end().cloned().unwrap_or(StreamEnd::Sealed))));
    });
    crossterm::terminal::enable_raw_mode()?;
    let result = pty_loop(&rx, options, out);
    let _ = crossterm::terminal::disable_raw_mode();
    result
}

fn pty_loop(rx: &mpsc::Receiver<Feed>, options: PlayOptions, stdout: &mut dyn Write) -> std::io::Result<StreamEnd> {
    use crossterm::event::{self, Event, KeyCode, KeyModifiers};
    let mut chunks: Vec<(f64, String)> = Vec::new();
    let mut first_ms: Option<i64> = None;
    let mut prev_ms = 0i64;
    let mut offset_ms = 0i64;
    let mut end: Option<StreamEnd> = None;
    let mut position = 0.0f64;
    let mut printed = 0usize;
    let mut playing = true;
    let mut last = Instant::now();
    let speed = if options.speed > 0.0 { options.speed } else { 1.0 };
    loop {
        while let Ok(feed) = rx.try_recv() {
            match feed {
                Feed::Step(ScreenStep { time_ms, text, .. }) => {
                    let first = *first_ms.get_or_insert(time_ms);
                    let mut gap = (time_ms - first) - prev_ms;
                    prev_ms = time_ms - first;
                    if options.skip_idle {
                        gap = gap.min(IDLE_CAP_MS);
                    }
                    offset_ms += gap.max(0);
                    chunks.push((offset_ms as f64, text));
                }
                Feed::End(result) => end = Some(result?),
            }
        }
        while let Some((at, text)) = chunks.get(printed) {
            if *at > position {
                break;
            }
            stdout.write_all(text.as_bytes())?;
            printed += 1;
        }
        stdout.flush()?;
        if printed == chunks.len() {
            if let Some(end) = end.clone() {
                stdout.write_all(b"\r\nend of session playback\r\n")?;
                stdout.flush()?;
                return Ok(end);
            }
        }
        let wait = chunks.get(printed).map(|(at, _)| ((at - position) / speed).clamp(1.0, 50.0)).unwrap_or(50.0);
        if event::poll(Duration::from_millis(wait as u64))? {
            if let Event::Key(key) = event::read()? {
                let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
                match key.code {
                    KeyCode::Char('c') | KeyCode::Char('d') if ctrl => return Ok(StreamEnd::Stopped),
                    KeyCode::Char('q') => return Ok(StreamEnd::Stopped),
                    KeyCode::Char(' ') => playing = !playing,
                    KeyCode::Right | KeyCode::Up => position += SEEK_STEP_MS,
                    KeyCode::Left | KeyCode::Down => {
                        position = (position - SEEK_STEP_MS).max(0.0);
                        // Redraw from the start up to the new position.
                        stdout.write_all(b"\x1b[2J\x1b[H")?;
                        printed = 0;
                    }
                    _ => {}
                }
            }
        }
        let now = Instant::now();
        if playing {
            position += now.duration_since(last).as_secs_f64() * 1000.0 * speed;
        }
        last = now;
    }
}
