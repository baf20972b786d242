//! Playback and export of recordings.

pub mod enrich;
pub mod events;
pub mod export;
pub mod follow;
pub mod player;
pub mod render;
pub mod yaml;
