//! Upstream connection steps every engine shares: the host and port of a URI's authority,
//! a TCP connection that cannot hang, and the TLS handshake over it.

use std::sync::Arc;

use tokio::net::TcpStream;

use super::stream::Stream;

/// A blackholed upstream must not hold a client forever.
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// `host`, `host:port`, `[v6]` or `[v6]:port`, with `default_port` when none is given.
pub fn host_port(authority: &str, default_port: u16) -> Option<(String, u16)> {
    match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => Some((h.trim_matches(['[', ']']).to_string(), p.parse().ok()?)),
        _ => Some((authority.trim_matches(['[', ']']).to_string(), default_port)),
    }
}

/// Connects with `CONNECT_TIMEOUT`, Nagle off. The error names the address.
pub async fn connect_tcp(host: &str, port: u16) -> Result<TcpStream, (String, std::io::Error)> {
    let addr = format!("{host}:{port}");
    let tcp = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&addr)).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => return Err((addr, e)),
        Err(_) => return Err((addr, std::io::ErrorKind::TimedOut.into())),
    };
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// The client side of a TLS handshake with the upstream, verified by `config`.
pub async fn tls_connect(config: &Arc<rustls::ClientConfig>, server_name: &str, tcp: TcpStream) -> Result<Stream, String> {
    let name = rustls::pki_types::ServerName::try_from(server_name.to_string()).map_err(|e| e.to_string())?;
    let tls = super::tls_stream::connect(config.clone(), name, tcp).await.map_err(|e| e.to_string())?;
    Ok(Stream::Client(Box::new(tls)))
}

/// Accepts a client whose protocol has no request to upgrade (MongoDB, HTTP): TLS starts at
/// the first byte or not at all. A TLS handshake record begins 0x16 0x03, which neither a
/// MongoDB message length nor an HTTP method does.
pub async fn accept_tls(tcp: TcpStream, tls: Option<&crate::proxy::tls::ServerTls>, mode: crate::config::ClientTlsMode) -> Option<Stream> {
    use crate::config::ClientTlsMode;
    let Some(tls) = tls.filter(|_| mode != ClientTlsMode::Disabled) else {
        return Some(Stream::Plain(tcp));
    };
    let mut first = [0u8; 2];
    let looks_tls = match tcp.peek(&mut first).await {
        Ok(2) => first == [0x16, 0x03],
        Ok(_) => {
            // One byte so far: wait for the second before deciding.
            let _ = tcp.readable().await;
            matches!(tcp.peek(&mut first).await, Ok(2)) && first == [0x16, 0x03]
        }
        Err(_) => return None,
    };
    if !looks_tls {
        if mode == ClientTlsMode::Required {
            tracing::info!("plaintext client on a TLS-only database; connection closed");
            return None;
        }
        return Some(Stream::Plain(tcp));
    }
    match super::tls_stream::accept(tls.config.clone(), tcp).await {
        Ok(s) => Some(Stream::Server(Box::new(s))),
        Err(e) => {
            tracing::info!(error = %e, "client TLS handshake failed");
            None
        }
    }
}
