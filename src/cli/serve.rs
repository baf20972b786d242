//! `dbtape serve`.

use std::path::Path;
use std::sync::Arc;

use super::Failure;
use crate::config::{Config, LogFormat};
use crate::proxy::builtin_engines;
use crate::recording::upload::Uploader;
use crate::server::{shutdown_signal, Server};
use crate::tasks::BackgroundTasks;

pub fn run(config_path: &Path) -> Result<(), Failure> {
    crate::tasks::heap_trim::keep_thresholds_fixed();
    let config = Config::load(config_path)?;
    super::init_logging(true, config.server.log_format == LogFormat::Json);
    // Sessions run on the server's own worker threads; this runtime only accepts and signals.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async move {
        let registry = builtin_engines(&config)?;
        let config = Arc::new(config);
        let server = Server::bind(config.clone(), &registry).await?;
        let metrics = server.recorder().metrics().clone();
        let mut background = BackgroundTasks::new();
        if let Some(s3) = &config.storage.s3 {
            let store = crate::recording::RecordingStore::new(&config.recording.dir);
            let public_key = crate::signing::public_key_path(&config.recording.signing_key);
            let uploader = Uploader::new(s3, store, public_key, config.server.server_id.clone(), metrics.clone()).await;
            background.spawn_async("uploader", |cancel| uploader.run(cancel));
        }
        if !config.server.admin_listen.is_empty() {
            // Shared like the database listeners, so a restarting proxy's successor can bind it too.
            let listener = crate::server::bind_shared(&config.server.admin_listen).map_err(|e| Failure {
                code: 1,
                message: format!(
                    "{}: server.admin_listen {:?}: cannot listen there: {e}; name a free address such as \"127.0.0.1:9187\", or leave it empty",
                    config_path.display(),
                    config.server.admin_listen
                ),
            })?;
            let health = crate::server::admin::Health { recordings: config.recording.dir.clone(), min_free_bytes: config.recording.min_free_bytes };
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(%addr, "admin listener: /metrics and /healthz");
            }
            background.spawn_async("admin", |cancel| crate::server::admin::serve(listener, metrics, health, cancel));
        }
        if let (true, Some(s3)) = (config.lake.enabled, config.storage.s3.clone()) {
            let store = crate::recording::RecordingStore::new(&config.recording.dir);
            let settings = crate::lake::LakeSettings::from_config(&config.lake, &config.server.server_id, &s3.region);
            // Opened in its own thread: the writer runs its uploads on a runtime of its own.
            let mut writer = None;
            background.spawn_periodic("lake", crate::lake::writer::PASS_EVERY, move || {
                if writer.is_none() {
                    match crate::lake::LakeWriter::open(store.clone(), &s3, settings.clone()) {
                        Ok(opened) => writer = Some(opened),
                        Err(e) => {
                            tracing::error!(error = %e, "the lake writer cannot start; retried at the next pass");
                            return crate::tasks::Pass::Idle;
                        }
                    }
                }
                writer.as_mut().map_or(crate::tasks::Pass::Idle, crate::lake::LakeWriter::pass)
            })?;
        }
        let index_store = crate::recording::RecordingStore::new(&config.recording.dir);
        background.spawn_periodic("indexer", crate::search::indexer::PASS_EVERY, {
            let mut indexer = crate::search::indexer::Indexer::default();
            move || indexer.pass(&index_store)
        })?;
        for (name, addr) in server.local_addrs() {
            tracing::info!(database = %name, %addr, "serving");
        }
        let shutdown = shutdown_signal();
        let reloads = super::reload::watch(config_path.to_path_buf(), config.clone(), registry)?;
        super::reload::write_pid(&config);
        tracing::info!("dbtape ready");
        server.run_reloading(shutdown, reloads).await;
        super::reload::remove_pid(&config);
        // Every session is sealed now: the background jobs' last passes take them along.
        background.shutdown().await;
        Ok::<(), Failure>(())
    })
}

/// `dbtape upload`: one upload pass now, for recordings the running proxy has not sent yet
/// (or with no proxy running). Exits non-zero if any upload failed.
pub fn upload(config_path: &Path, all: bool) -> Result<(), Failure> {
    let (recording, s3, server_id) = Config::load_upload_settings(config_path)?;
    let Some(s3) = s3 else {
        return Err(Failure {
            code: 2,
            message: format!("{}: no [storage.s3] section, so there is nowhere to upload to", config_path.display()),
        });
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async move {
        let store = crate::recording::RecordingStore::new(&recording.dir);
        let public_key = crate::signing::public_key_path(&recording.signing_key);
        let mut uploader = Uploader::new(&s3, store.clone(), public_key, server_id, Default::default()).await;
        if all {
            uploader.forget_uploads();
        }
        let bytes: u64 = uploader
            .pending()
            .unwrap_or_default()
            .iter()
            .filter_map(|sid| std::fs::metadata(store.recording_path(sid)).ok())
            .map(|m| m.len())
            .sum::<u64>()
            + uploader.pending_segment_bytes();
        let progress = super::progress::bar(bytes, "upload", true);
        uploader.show_progress(progress.clone());
        let report = uploader.pass_waiting().await;
        progress.finish_and_clear();
        for sid in &report.uploaded {
            println!("uploaded {sid}");
        }
        for (sid, error) in &report.failed {
            eprintln!("failed {sid}: {error}");
        }
        println!("{} uploaded, {} failed", report.uploaded.len(), report.failed.len());
        if report.failed.is_empty() {
            Ok(())
        } else {
            Err(Failure { code: 1, message: String::new() })
        }
    })
}
