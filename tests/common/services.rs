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

    /// A TLS server config with the services' certificate for "localhost", signed by their CA.
    pub fn server_tls(&self) -> std::sync::Arc<rustls::ServerConfig> {
        let certs = self.get("CERTS");
        dbtape::proxy::tls::server_config(&dbtape::config::ClientTlsConfig {
            mode: None,
            cert: Some(format!("{certs}/server.crt").into()),
            key: Some(format!("{certs}/server.key").into()),
            client_ca: None,
        })
        .unwrap()
        .unwrap()
        .config
    }

    pub fn python(&self) -> std::process::Command {
        std::process::Command::new(format!("{}/bin/python", self.get("SERVICES_VENV")))
    }

    /// The environment that gives a process dbtape's own AWS identity (moto's IAM user
    /// "proxy") through the default credential chain, and nothing from this machine's AWS
    /// configuration.
    pub fn proxy_aws_vars(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", self.get("MOTO_ACCESS_KEY_ID").to_string()),
            ("AWS_SECRET_ACCESS_KEY", self.get("MOTO_SECRET_ACCESS_KEY").to_string()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
            ("AWS_CONFIG_FILE", "/nonexistent".into()),
            ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent".into()),
        ]
    }

    /// `proxy_aws_vars` for this test process, for dbtape run in-process (the credential chain
    /// reads the process environment).
    /// Set once per test process: each later call finds it done, so no test changes the
    /// environment while another reads it.
    pub fn use_proxy_aws_identity(&self) {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            for (name, value) in self.proxy_aws_vars() {
                std::env::set_var(name, value);
            }
            for name in ["AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_CA_BUNDLE"] {
                std::env::remove_var(name);
            }
        });
    }
}
