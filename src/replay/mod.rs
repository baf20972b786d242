//! Playback and export of recordings.

pub mod export;
pub mod follow;
pub mod player;
pub mod render;
pub mod screen;
pub mod yaml;
