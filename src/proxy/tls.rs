//! TLS set-up shared by the protocol engines: the proxy's server side (with optional client
//! certificates) and verified client connections to upstreams.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

use crate::config::{ClientTlsConfig, UpstreamTlsConfig, UpstreamTlsMode};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("TLS configuration: {0}")]
    Config(String),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let file_err = |reason: String| TlsError::File { path: path.display().to_string(), reason };
    let bytes = std::fs::read(path).map_err(|e| file_err(e.to_string()))?;
    let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut bytes.as_slice()).collect();
    let certs = certs.map_err(|e| file_err(e.to_string()))?;
    if certs.is_empty() {
        return Err(file_err("no PEM certificates found".into()));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let file_err = |reason: String| TlsError::File { path: path.display().to_string(), reason };
    let bytes = std::fs::read(path).map_err(|e| file_err(e.to_string()))?;
    rustls_pemfile::private_key(&mut bytes.as_slice())
        .map_err(|e| file_err(e.to_string()))?
        .ok_or_else(|| file_err("no PEM private key found".into()))
}

fn roots(ca: Option<&Path>) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    match ca {
        Some(path) => {
            for cert in read_certs(path)? {
                store.add(cert).map_err(|e| TlsError::Config(e.to_string()))?;
            }
        }
        None => {
            let loaded = rustls_native_certs::load_native_certs();
            for cert in loaded.certs {
                let _ = store.add(cert);
            }
        }
    }
    Ok(store)
}

/// The proxy's server-side TLS, or `None` when the client leg has no certificate.
pub struct ServerTls {
    pub config: Arc<ServerConfig>,
    /// Checks a client certificate after the handshake (mTLS), when `client_ca` is set.
    pub client_verifier: Option<Arc<dyn ClientCertVerifier>>,
}

/// The listener's TLS, or none when `client_tls` has no certificate or its mode is
/// `disabled` (a certificate kept in the file does not turn TLS back on).
pub fn server_config(tls: &ClientTlsConfig) -> Result<Option<ServerTls>, TlsError> {
    if tls.effective_mode() == crate::config::ClientTlsMode::Disabled {
        return Ok(None);
    }
    let (Some(cert), Some(key)) = (&tls.cert, &tls.key) else { return Ok(None) };
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let (builder, client_verifier) = match &tls.client_ca {
        Some(ca) => {
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots(Some(ca))?), provider())
                // A certificate is one way to prove identity; SCRAM is the other.
                .allow_unauthenticated()
                .build()
                .map_err(|e| TlsError::Config(e.to_string()))?;
            let permissive = Arc::new(DeferredClientVerifier { inner: verifier.clone() });
            (builder.with_client_cert_verifier(permissive), Some(verifier))
        }
        None => (builder.with_no_client_auth(), None),
    };
    let mut config = builder.with_single_cert(read_certs(cert)?, read_key(key)?).map_err(|e| TlsError::Config(e.to_string()))?;
    // No TLS 1.3 session tickets: libpq, pgjdbc, mongosh, pymongo and the aws CLI never
    // resume a session, and two tickets per connection cost both ends work and the client
    // a packet to read on every login of a connection storm.
    config.send_tls13_tickets = 0;
    Ok(Some(ServerTls { config: Arc::new(config), client_verifier }))
}

/// Lets any client certificate through the handshake (still proving key possession) so
/// that an untrusted one is refused afterwards in the client's own protocol, with an audit
/// event, instead of as an opaque TLS alert.
#[derive(Debug)]
struct DeferredClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
}

impl ClientCertVerifier for DeferredClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Verifies a client's certificate chain against the configured CA.
/// The CN of the client certificate `client` presented, verified against the listener's
/// `client_ca`; an error if one was presented but is not trusted; none without one (or
/// without a `client_ca`, when certificates identify no one).
pub fn client_certificate_cn(client: &crate::proxy::stream::Stream, tls: Option<&ServerTls>) -> Option<Result<String, String>> {
    let crate::proxy::stream::Stream::Server(session) = client else { return None };
    let chain = session.get_ref().1.peer_certificates()?.to_vec();
    let verifier = tls?.client_verifier.as_ref()?;
    if chain.is_empty() {
        return None;
    }
    if let Err(e) = verify_client_chain(verifier.as_ref(), &chain) {
        return Some(Err(format!("client certificate not trusted: {e}")));
    }
    chain.first().and_then(subject_cn).map(Ok)
}

pub fn verify_client_chain(verifier: &dyn ClientCertVerifier, chain: &[CertificateDer<'static>]) -> Result<(), String> {
    let (end_entity, intermediates) = chain.split_first().ok_or("no certificate")?;
    verifier.verify_client_cert(end_entity, intermediates, UnixTime::now()).map(|_| ()).map_err(|e| e.to_string())
}

/// Verified (or, for `require`, encrypted-only) client TLS to an upstream.
pub fn client_config(tls: &UpstreamTlsConfig) -> Result<Option<Arc<ClientConfig>>, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    if tls.mode == UpstreamTlsMode::Disable {
        return Ok(None);
    }
    let pinned = match tls.ca.as_deref() {
        Some(path) => read_certs(path)?,
        None => Vec::new(),
    };
    let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots(tls.ca.as_deref())?), provider())
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let verifier = UpstreamVerifier { inner: webpki, pinned, mode: tls.mode };
    Ok(Some(Arc::new(builder.dangerous().with_custom_certificate_verifier(Arc::new(verifier)).with_no_client_auth())))
}

/// WebPKI verification in libpq's modes (`verify-full`; `verify-ca` checks the chain but not
/// the name; `require` only encrypts), plus pinning: a self-signed server certificate (which
/// carries CA:TRUE, so WebPKI refuses it as an end entity) is accepted when `upstream_tls.ca`
/// holds exactly that certificate, as psql accepts it with `sslmode=verify-full` and that file
/// as its root. Its validity period, and for `verify-full` its name, are still checked.
#[derive(Debug)]
struct UpstreamVerifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    pinned: Vec<CertificateDer<'static>>,
    mode: UpstreamTlsMode,
}

impl UpstreamVerifier {
    fn verify_pinned(&self, end_entity: &CertificateDer<'_>, server_name: &ServerName<'_>, now: UnixTime) -> Result<(), rustls::Error> {
        let (_, cert) = x509_parser::parse_x509_certificate(end_entity.as_ref())
            .map_err(|e| rustls::Error::General(format!("cannot parse the pinned certificate: {e}")))?;
        let now = x509_parser::time::ASN1Time::from_timestamp(now.as_secs() as i64)
            .map_err(|e| rustls::Error::General(format!("bad clock: {e}")))?;
        if !cert.validity().is_valid_at(now) {
            return Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Expired));
        }
        if self.mode != UpstreamTlsMode::VerifyFull {
            return Ok(());
        }
        let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_name(&parsed, server_name)
    }
}

impl ServerCertVerifier for UpstreamVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.mode == UpstreamTlsMode::Require {
            return Ok(ServerCertVerified::assertion());
        }
        let error = match self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(error)) => error,
            other => return other,
        };
        // Exactly a certificate the operator configured: pinned, whatever WebPKI thought of
        // it as an end entity.
        if self.pinned.iter().any(|p| p.as_ref() == end_entity.as_ref()) {
            return self.verify_pinned(end_entity, server_name, now).map(|()| ServerCertVerified::assertion());
        }
        match error {
            rustls::CertificateError::NotValidForName | rustls::CertificateError::NotValidForNameContext { .. }
                if self.mode == UpstreamTlsMode::VerifyCa =>
            {
                Ok(ServerCertVerified::assertion())
            }
            // webpki's CaUsedAsEndEntity reaches rustls only as an "other" error.
            error if format!("{error:?}").contains("CaUsedAsEndEntity") => Err(rustls::Error::General(
                "the upstream's certificate is a CA certificate (CA:TRUE), as self-signed ones are; to trust it, \
                 set upstream_tls.ca to a file holding exactly that certificate"
                    .into(),
            )),
            error => Err(rustls::Error::InvalidCertificate(error)),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The subject CN of a verified client certificate.
pub fn subject_cn(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let cn = parsed.subject().iter_common_name().next()?.as_str().ok()?.to_string();
    Some(cn)
}
