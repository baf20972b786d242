//! The review console (`dbtape review`, the real binary) over a proxy's recordings, and
//! HTTPS requests to it with curl.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::proxy::Proxy;

pub const ANA_PASSWORD: &str = "ana-reviews-everything";
pub const RUI_PASSWORD: &str = "rui-sees-one-database";

pub struct Console {
    pub root: PathBuf,
    pub config: PathBuf,
    pub port: u16,
    pub ca: String,
    child: Child,
}

pub struct Reply {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

impl Console {
    /// `dbtape review` over the proxy's recordings, with ana (auditor) and rui (reviewer of
    /// database "other" only).
    pub fn start(proxy: &Proxy) -> Console {
        Self::start_trusting(proxy, &[])
    }

    /// As `start`, trusting the signing keys (their `.pub` files) of other proxies whose
    /// recordings were copied into this proxy's folder.
    pub fn start_trusting(proxy: &Proxy, trusted: &[PathBuf]) -> Console {
        Self::start_with(proxy, trusted, free_port(), "")
    }

    /// As `start_trusting`, on `port`, with `review_extra` (TOML, e.g. `[review.oidc]`)
    /// after the `[review]` keys.
    pub fn start_with(proxy: &Proxy, trusted: &[PathBuf], port: u16, review_extra: &str) -> Console {
        let root = proxy.root.path().to_path_buf();
        let certs = proxy.services.get("CERTS").to_string();
        let config = root.join("review.toml");
        let text = format!(
            "[recording]\ndir = \"{root}/recordings\"\nsigning_key = \"{root}/key\"\ntrusted_keys = {trusted:?}\n\n[review]\nlisten = \"127.0.0.1:{port}\"\ntls_cert = \"{certs}/server.crt\"\ntls_key = \"{certs}/server.key\"\nreviewers_file = \"{root}/reviewers.toml\"\naccess_signing_key = \"{root}/review-key\"\n{review_extra}",
            root = root.display(),
            trusted = trusted.iter().map(|p| p.display().to_string()).collect::<Vec<_>>()
        );
        std::fs::write(&config, text).unwrap();
        for (name, password, extra) in
            [("ana", ANA_PASSWORD, vec![]), ("rui", RUI_PASSWORD, vec!["--role", "reviewer", "--database", "other"])]
        {
            let mut add = super::dbtape_bin()
                .args(["reviewer", "add", name, "--password-stdin", "--config"])
                .arg(&config)
                .args(extra)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            std::io::Write::write_all(add.stdin.as_mut().unwrap(), format!("{password}\n").as_bytes()).unwrap();
            assert!(add.wait().unwrap().success());
        }
        let reviewers = std::fs::read_to_string(root.join("reviewers.toml")).unwrap();
        assert!(!reviewers.contains(ANA_PASSWORD) && reviewers.contains("SCRAM-SHA-256$"), "only verifiers are stored");
        let log = std::fs::File::create(root.join("review.log")).unwrap();
        let child = super::dbtape_bin().arg("review").arg("--config").arg(&config).stderr(log).spawn().unwrap();
        let console = Console { root, config, port, ca: format!("{certs}/ca.crt"), child };
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return console;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("dbtape review never listened on {port}");
    }

    pub fn jar(&self, name: &str) -> PathBuf {
        self.root.join(format!("{name}.cookies"))
    }

    /// One request with curl (the cookie jar `jar`, if given), following no redirect.
    pub fn request(&self, jar: Option<&Path>, method: &str, path: &str, form: &[(&str, &str)], headers: &[&str]) -> Reply {
        let mut curl = Command::new("curl");
        curl.args(["-s", "-i", "--cacert", &self.ca, "-X", method]);
        if let Some(jar) = jar {
            curl.arg("-b").arg(jar).arg("-c").arg(jar);
        }
        for header in headers {
            curl.args(["-H", header]);
        }
        for (key, value) in form {
            curl.arg("--data-urlencode").arg(format!("{key}={value}"));
        }
        curl.arg(format!("https://localhost:{}{path}", self.port));
        let out = curl.output().unwrap();
        assert!(out.status.success(), "curl {path}: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        Reply { status, headers: head.to_lowercase(), body: body.to_string() }
    }

    pub fn get(&self, jar: &Path, path: &str) -> Reply {
        self.request(Some(jar), "GET", path, &[], &[])
    }

    /// Logs `name` in; the jar then holds the console's session cookie.
    pub fn login(&self, name: &str, password: &str) -> (PathBuf, Reply) {
        let jar = self.jar(name);
        let page = self.get(&jar, "/login");
        let csrf = field(&page.body, "csrf");
        let reply = self.request(Some(&jar), "POST", "/login", &[("name", name), ("password", password), ("csrf", &csrf)], &[]);
        (jar, reply)
    }

    /// `dbtape <args> --config review.toml`: (success, stdout, stderr).
    pub fn dbtape(&self, args: &[&str]) -> (bool, String, String) {
        let out = super::dbtape_bin().args(args).arg("--config").arg(&self.config).output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

impl Console {
    /// Stops the console as an operator would (SIGTERM), so it seals its recordings.
    pub fn stop(&mut self) {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: a signal to the child this helper started and still owns.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        for _ in 0..100 {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("dbtape review did not stop on SIGTERM");
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A real OpenID Connect provider (`oidc-provider` from npm, in `tests/oidc`, installed by
/// scripts/services) over HTTPS with the test CA's certificate, for one console client.
pub struct OidcProvider {
    pub issuer: String,
    child: Child,
}

pub const OIDC_CLIENT_SECRET: &str = "console-client-secret-for-tests";

impl OidcProvider {
    pub fn start(certs: &str, redirect_uri: &str) -> OidcProvider {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oidc");
        assert!(
            dir.join("node_modules/oidc-provider").is_dir(),
            "oidc-provider is not installed in {}: run scripts/services start",
            dir.display()
        );
        let port = free_port();
        // Its output goes to a file: a pipe closed after "ready" would kill it at its next line.
        let log_path = std::env::temp_dir().join(format!("dbtape-oidc-provider-{port}.log"));
        let log = std::fs::File::create(&log_path).unwrap();
        let child = Command::new("node")
            .current_dir(&dir)
            .arg("provider.mjs")
            .arg(port.to_string())
            .arg(format!("{certs}/server.crt"))
            .arg(format!("{certs}/server.key"))
            .arg(redirect_uri)
            .arg(OIDC_CLIENT_SECRET)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("node (Node.js), for the OIDC provider");
        let provider = OidcProvider { issuer: format!("https://localhost:{port}"), child };
        for _ in 0..200 {
            if std::fs::read_to_string(&log_path).unwrap_or_default().contains("ready https://") {
                return provider;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("the OIDC provider did not start: {}", std::fs::read_to_string(&log_path).unwrap_or_default());
    }

    /// The console's `[review.oidc]` for this provider; the client secret goes in a file.
    pub fn review_config(&self, root: &Path, certs: &str, console_port: u16) -> String {
        let secret = root.join("oidc-secret");
        std::fs::write(&secret, OIDC_CLIENT_SECRET).unwrap();
        format!(
            "\n[review.oidc]\nissuer = \"{}\"\nclient_id = \"dbtape-review\"\nclient_secret = {{ file = \"{}\" }}\nredirect_url = \"https://localhost:{console_port}/login/oidc/callback\"\nca_file = \"{certs}/ca.crt\"\nlabel = \"Test IdP\"\nscopes = [\"openid\", \"email\", \"groups\"]\nauditor_groups = [\"security-auditors\"]\n",
            self.issuer,
            secret.display()
        )
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of the hidden input `name` in a page.
pub fn field(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html.find(&marker).unwrap_or_else(|| panic!("no {name} field in {html}")) + marker.len();
    html[start..].split('"').next().unwrap().to_string()
}

pub fn assert_security_headers(reply: &Reply) {
    for header in [
        "content-security-policy: default-src 'none'; script-src 'self'",
        "frame-ancestors 'none'",
        "x-content-type-options: nosniff",
        "strict-transport-security: max-age=31536000",
        "cache-control: no-store",
    ] {
        assert!(reply.headers.contains(header), "{header} missing from\n{}", reply.headers);
    }
}
