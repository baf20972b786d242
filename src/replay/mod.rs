//! Playback and export of recordings.

pub mod cursor;
pub mod export;
pub mod player;
pub mod render;
pub mod screen;
pub mod yaml;
