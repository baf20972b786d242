//! The servers `scripts/services` started. A missing env file is a failure, never a skip.

use std::collections::HashMap;
use std::path::PathBuf;

pub struct Services {
    vars: HashMap<String, String>,
}

impl Services {
    pub fn load() -> Services {
        let path = std::env::var("DBTAPE_SERVICES_ENV")
            .map(PathBuf::from)
            .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".services/env"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!("{}: {e}; start the test services with `scripts/services start` (scripts/test does this)", path.display())
        });
        let vars = text.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Services { vars }
    }

    pub fn get(&self, key: &str) -> &str {
        self.vars.get(key).unwrap_or_else(|| panic!("services env has no {key}"))
    }

    pub fn python(&self) -> std::process::Command {
        std::process::Command::new(format!("{}/bin/python", self.get("SERVICES_VENV")))
    }
}
