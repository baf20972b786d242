//! `dbtape lake ddl|verify|backfill`.

use std::io::Write;

use super::{DataFormat, Failure, LakeCommand};
use crate::config::Config;
use crate::lake::{LakeSettings, LakeWriter};

pub fn run(command: LakeCommand) -> Result<(), Failure> {
    match command {
        LakeCommand::Ddl { engine, config, table, location } => {
            let location = match location {
                Some(location) => location,
                None => {
                    let (_, s3, lake, _) = Config::load_lake_settings(&config.config)?;
                    let s3 = s3.ok_or_else(|| no_bucket(&config.config))?;
                    format!("s3://{}/{}", s3.bucket, lake.prefix)
                }
            };
            print!("{}", crate::lake::ddl::ddl(engine, &location, &table));
            Ok(())
        }
        LakeCommand::Backfill { config } => {
            let (recording, s3, lake, server_id) = Config::load_lake_settings(&config.config)?;
            let s3 = s3.ok_or_else(|| no_bucket(&config.config))?;
            let store = crate::recording::RecordingStore::new(&recording.dir);
            let mut writer = LakeWriter::open(store, &s3, LakeSettings::from_config(&lake, &server_id, &s3.region))?;
            let bar = super::progress::bar(0, "lake backfill", false);
            bar.set_style(
                indicatif::ProgressStyle::with_template("{prefix}: {msg}").unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
            );
            let written = writer.catch_up(|so_far| bar.set_message(format!("{} events in {} objects", so_far.events, so_far.objects)))?;
            bar.finish_and_clear();
            println!("{} event(s) written in {} object(s), {} bytes", written.events, written.objects, written.bytes);
            Ok(())
        }
        LakeCommand::Verify { store, since, until, format } => {
            let (since_ms, until_ms) = super::inspect::time_filter(since, until)?;
            let (_, s3, lake, server_id) = Config::load_lake_settings(&store.config.config)?;
            let s3 = s3.ok_or_else(|| no_bucket(&store.config.config))?;
            let located = super::inspect::locate(&store)?;
            // Against this host's recordings, this host's objects; against the bucket's (the
            // whole fleet's), every object.
            let host = LakeSettings::from_config(&lake, &server_id, &s3.region).server_id;
            let host = (store.source == super::Source::Local).then_some(host.as_str());
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let (objects, rows) = runtime.block_on(async {
                let client = crate::s3::s3_client(&s3).await;
                crate::lake::verify::read_lake(&client, &s3.bucket, &lake.prefix, host).await
            })?;
            let report = crate::lake::verify::compare(&located.store, rows, objects, since_ms, until_ms)?;
            let mut out = std::io::stdout().lock();
            match format {
                DataFormat::Json => writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?,
                DataFormat::Text => {
                    writeln!(out, "{} object(s), {} row(s); {} recorded event(s)", report.objects, report.rows, report.events)?;
                    for (what, list) in [
                        ("missing from the lake", &report.missing),
                        ("in the lake more than once", &report.duplicated),
                        ("different from the recording", &report.different),
                        ("in the lake but in no recording here", &report.unknown),
                    ] {
                        if !list.is_empty() {
                            writeln!(
                                out,
                                "{} event(s) {what}: {}",
                                list.len(),
                                list.iter().take(20).cloned().collect::<Vec<_>>().join(", ")
                            )?;
                        }
                    }
                    if report.is_clean() {
                        writeln!(out, "the lake holds every recorded event once, unchanged")?;
                    }
                }
            }
            if report.is_clean() {
                Ok(())
            } else {
                Err(Failure { code: 1, message: "the lake does not match the recordings".into() })
            }
        }
    }
}

fn no_bucket(config: &std::path::Path) -> Failure {
    Failure { code: 2, message: format!("{}: no [storage.s3] section, so there is no lake bucket", config.display()) }
}
