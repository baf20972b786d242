//! Reloading the configuration of a running `dbtape serve`: SIGHUP (what `dbtape reload`
//! and systemd's `ExecReload` send, found through the pid file in the recordings folder).
//! A file with any error is rejected whole and the running configuration stays.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::Failure;
use crate::config::Config;
use crate::server::{EngineRegistry, Reload, Reloaded};

/// `<recordings>/dbtape.pid`: the newest `dbtape serve` on that folder.
pub fn pid_path(config: &Config) -> PathBuf {
    config.recording.dir.join("dbtape.pid")
}

/// Writes this process's pid, so `dbtape reload` finds the proxy (during a restart, the
/// newer one).
pub fn write_pid(config: &Config) {
    let path = pid_path(config);
    if let Err(e) = crate::recording::store::write_atomic(&path, format!("{}\n", std::process::id()).as_bytes()) {
        tracing::warn!(path = %path.display(), error = %e, "cannot write the pid file; `dbtape reload` will not find this process");
    }
}

/// Removes the pid file if it is still this process's.
pub fn remove_pid(config: &Config) {
    let path = pid_path(config);
    if std::fs::read_to_string(&path).is_ok_and(|text| text.trim() == std::process::id().to_string()) {
        let _ = std::fs::remove_file(&path);
    }
}

/// Listens for SIGHUP; each one reads the file again and, if it is whole, sends what was
/// built from it to the server.
pub fn watch(path: PathBuf, running: Arc<Config>, registry: EngineRegistry) -> Result<tokio::sync::mpsc::Receiver<Reload>, Failure> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangups = signal(SignalKind::hangup()).map_err(|e| Failure { code: 1, message: format!("cannot listen for SIGHUP: {e}") })?;
    let (sender, receiver) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        let (mut running, mut registry) = (running, registry);
        while hangups.recv().await.is_some() {
            tracing::info!(config = %path.display(), "SIGHUP: reading the configuration again");
            // Reading certificates and secrets is blocking work; the runtime has one thread.
            let (file, current, engines) = (path.clone(), running.clone(), registry.clone());
            let checked = tokio::task::spawn_blocking(move || check(&file, &current, &engines)).await;
            match checked.unwrap_or_else(|e| Err(vec![format!("the check stopped: {e}")])) {
                Ok(reloaded) => {
                    running = reloaded.config.clone();
                    registry = reloaded.registry.clone();
                    if sender.send(Reload::Apply(Box::new(reloaded))).await.is_err() {
                        break;
                    }
                }
                Err(problems) => {
                    for problem in &problems {
                        tracing::error!(config = %path.display(), problem = %problem, "configuration rejected; the running one stays");
                    }
                    if sender.send(Reload::Reject { file: path.display().to_string(), problems }).await.is_err() {
                        break;
                    }
                }
            }
        }
    });
    Ok(receiver)
}

fn check(path: &Path, running: &Config, registry: &EngineRegistry) -> Result<Reloaded, Vec<String>> {
    let new = Config::load(path).map_err(|e| e.issues.iter().map(ToString::to_string).collect::<Vec<_>>())?;
    let (new, kept) = running.reloadable(new);
    for key in &kept {
        tracing::warn!(config = %path.display(), key, "changed in the file, but only a restart applies it; the running value stays");
    }
    let directory = crate::auth::Directory::from_config(&new.users).map_err(|e| vec![format!("{}: users: {e}", path.display())])?;
    let registry = crate::proxy::builtin_engines_after(&new, Some(registry)).map_err(|e| vec![format!("{}: {e}", path.display())])?;
    Ok(Reloaded { config: Arc::new(new), registry, directory, kept })
}

/// `dbtape reload`: checks the file as the proxy will, then signals the proxy.
pub fn send(config_path: &Path) -> Result<(), Failure> {
    let config = Config::load(config_path)?;
    let path = pid_path(&config);
    let text = std::fs::read_to_string(&path).map_err(|e| Failure {
        code: 1,
        message: format!("{}: {e}; is `dbtape serve --config {}` running?", path.display(), config_path.display()),
    })?;
    let pid: libc::pid_t = text.trim().parse().map_err(|_| Failure { code: 1, message: format!("{}: not a pid", path.display()) })?;
    // SAFETY: a signal to the pid the proxy wrote; SIGHUP makes it read its configuration.
    if unsafe { libc::kill(pid, libc::SIGHUP) } != 0 {
        return Err(Failure { code: 1, message: format!("cannot signal pid {pid}: {}", std::io::Error::last_os_error()) });
    }
    println!("configuration checked; SIGHUP sent to dbtape (pid {pid}): new connections use it, open sessions go on");
    Ok(())
}
