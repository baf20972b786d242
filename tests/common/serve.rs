//! The real `dbtape serve` binary as a child process.

use std::io::BufRead;
use std::process::{Child, Stdio};

/// `dbtape serve`, once it says it is ready; its log lines go on to `log`.
pub fn serve(config: &std::path::Path, log: std::path::PathBuf) -> Child {
    let mut child = super::dbtape_bin().args(["serve", "--config"]).arg(config).stderr(Stdio::piped()).spawn().unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let ready = line.contains("dbtape ready");
        seen.push(line);
        if ready {
            std::thread::spawn(move || {
                let mut out = std::fs::File::create(log).unwrap();
                for line in lines.map_while(Result::ok) {
                    let _ = std::io::Write::write_all(&mut out, format!("{line}\n").as_bytes());
                }
            });
            return child;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("serve never said it was ready: {seen:#?}");
}

/// Kills the process when dropped (a test that panics must not leave a proxy running);
/// harmless once it has exited and been waited for.
pub struct KillOnDrop(pub u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(pid) = libc::pid_t::try_from(self.0) {
            // SAFETY: a signal to a child the test started; after its exit and wait this
            // fails harmlessly (ESRCH) unless the pid was reused within the test's lifetime.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

pub fn sigterm(child: &Child) {
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    // SAFETY: a signal to a child this test started and still owns.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
}
