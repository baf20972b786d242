//! Playback as data: a session's events rendered into screen steps (`ei`, time, text), as
//! `play --format text` prints them, the pty player times them and the review console will
//! show them. The text is terminal-safe, with CRLF line ends.

use std::collections::VecDeque;

use super::render::{renderer_for, screen_safe, Renderer};
use crate::audit::RecordedEvent;
use crate::recording::events::{EventStream, StreamEnd};

/// What the screen shows for one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScreenStep {
    pub ei: u64,
    pub time_ms: i64,
    pub text: String,
}

/// Renders event lines into steps, keeping the renderer's state (the current database, the
/// statements results answer) from one event to the next.
pub struct Screen {
    renderer: Box<dyn Renderer + Send>,
    from_ei: u64,
    scratch: String,
}

impl Screen {
    /// For a session of `protocol`, showing events from `from_ei` on: earlier ones still set
    /// the renderer's state but give no step.
    pub fn new(protocol: &str, from_ei: u64) -> Self {
        Screen { renderer: renderer_for(protocol), from_ei, scratch: String::new() }
    }

    /// The step for one recorded event line; none for an event before `from_ei`, one that
    /// shows nothing (driver chatter), or a line that is not an event.
    pub fn step(&mut self, line: &[u8]) -> Option<ScreenStep> {
        let event: RecordedEvent = serde_json::from_slice(line).ok()?;
        self.scratch.clear();
        self.renderer.render(&event, line, &mut self.scratch);
        if event.ei < self.from_ei || self.scratch.is_empty() {
            return None;
        }
        Some(ScreenStep { ei: event.ei, time_ms: event.time_ms().unwrap_or_default(), text: screen_safe(&self.scratch).into_owned() })
    }
}

/// One event as `play` shows it, on its own (no earlier event sets the renderer's state):
/// how a search hit reads, in the console and in `dbtape search`.
pub fn render_event(protocol: &str, line: &[u8]) -> Option<String> {
    let event: RecordedEvent = serde_json::from_slice(line).ok()?;
    Screen::new(protocol, event.ei).step(line).map(|step| step.text)
}

/// A recording's steps, read a frame at a time: memory stays bounded by one frame whatever
/// the session's length, and a followed live session yields steps as they are recorded.
pub struct ScreenSteps {
    stream: EventStream,
    screen: Screen,
    ready: VecDeque<ScreenStep>,
    end: Option<StreamEnd>,
}

impl ScreenSteps {
    pub fn new(stream: EventStream, protocol: &str, from_ei: u64) -> Self {
        ScreenSteps { stream, screen: Screen::new(protocol, from_ei), ready: VecDeque::new(), end: None }
    }

    /// How the recording ended, once every step has been taken.
    pub fn end(&self) -> Option<&StreamEnd> {
        self.end.as_ref()
    }

    /// Reads frames until one gives steps or the recording ends.
    fn fill(&mut self) -> std::io::Result<()> {
        let (screen, ready) = (&mut self.screen, &mut self.ready);
        let mut paused = false;
        let end = self.stream.for_each_frame(|_, data| {
            ready.extend(crate::recording::reader::event_lines(data).filter_map(|line| screen.step(line)));
            paused = !ready.is_empty();
            Ok(!paused)
        })?;
        if !paused {
            self.end = Some(end);
        }
        Ok(())
    }
}

impl Iterator for ScreenSteps {
    type Item = std::io::Result<ScreenStep>;

    fn next(&mut self) -> Option<Self::Item> {
        while self.ready.is_empty() && self.end.is_none() {
            if let Err(e) = self.fill() {
                self.end = Some(StreamEnd::Damaged(e.to_string()));
                return Some(Err(e));
            }
        }
        self.ready.pop_front().map(Ok)
    }
}
