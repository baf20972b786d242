//! The fuzz target of the TLS stream (`fuzz/fuzz_targets/tls_stream.rs`, replayed by
//! `tests/fuzz_corpus.rs`). rustls parses the records; what is fuzzed is this module's glue
//! around it: records split across reads at any byte, partial records kept between reads,
//! bytes flipped in flight, a peer that stops at any point, and arbitrary bytes where a peer
//! should be.
//!
//! The checks go beyond "no panic": the receiver never gets bytes that were not sent, a clean
//! end (close_notify) only ever follows everything that was sent, and a session left alone
//! delivers everything both ways.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_util::sync::CancellationToken;

use super::{accept, connect};

/// Both ends' TLS configurations, made once from a test CA's PEM files (the key stays in the
/// fuzz crate and the tests, out of the product).
pub struct Setup {
    server: Arc<rustls::ServerConfig>,
    /// The client offering TLS 1.3 and 1.2, and one offering 1.2 alone.
    client: Arc<rustls::ClientConfig>,
    client_tls12: Arc<rustls::ClientConfig>,
}

impl Setup {
    pub fn from_pem(ca: &[u8], cert: &[u8], key: &[u8]) -> Result<Setup, String> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let certs = rustls_pemfile::certs(&mut &cert[..]).collect::<Result<Vec<_>, _>>().map_err(|e| e.to_string())?;
        let key = rustls_pemfile::private_key(&mut &key[..]).map_err(|e| e.to_string())?.ok_or("no private key")?;
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| e.to_string())?;
        let mut roots = rustls::RootCertStore::empty();
        for ca in rustls_pemfile::certs(&mut &ca[..]) {
            roots.add(ca.map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
        }
        let roots = Arc::new(roots);
        let client = |versions: &[&'static rustls::SupportedProtocolVersion]| {
            rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(versions)
                .map(|b| Arc::new(b.with_root_certificates(roots.clone()).with_no_client_auth()))
                .map_err(|e| e.to_string())
        };
        Ok(Setup { server: Arc::new(server), client: client(rustls::DEFAULT_VERSIONS)?, client_tls12: client(&[&rustls::version::TLS12])? })
    }
}

/// The fuzz input, read front to back; past its end every number is zero.
struct Script<'a>(&'a [u8]);

impl Script<'_> {
    fn byte(&mut self) -> u8 {
        let (first, rest) = self.0.split_first().map_or((0, &[][..]), |(b, rest)| (*b, rest));
        self.0 = rest;
        first
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    /// A read size: mostly small (every byte boundary inside a record), sometimes large.
    fn read_size(&mut self) -> usize {
        match self.byte() {
            b @ 0..=127 => 1 + b as usize,
            b => (b as usize - 127) * 512,
        }
    }

    fn read_sizes(&mut self) -> Vec<usize> {
        (0..4).map(|_| self.read_size()).collect()
    }
}

/// Runs one input. Its first byte picks the case: arbitrary bytes sent to a TLS server, or
/// to a TLS client, or a real session between the two with its bytes cut up and tampered with.
pub fn session(setup: &Setup, data: &[u8]) {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_time().build() else { return };
    let mut script = Script(data);
    let case = script.byte() % 3;
    let run = async {
        match case {
            0 => hostile_peer(setup, script, true).await,
            1 => hostile_peer(setup, script, false).await,
            _ => tampered_session(setup, script).await,
        }
    };
    // Every case ends by itself, whatever the bytes: a stall is a finding.
    let finished = runtime.block_on(async { tokio::time::timeout(Duration::from_secs(20), run).await });
    assert!(finished.is_ok(), "the TLS stream stalled on this input");
}

/// A stream whose reads return at most the next of a few sizes, cycling.
struct Chunked<S> {
    inner: S,
    sizes: Vec<usize>,
    next: usize,
}

impl<S> Chunked<S> {
    fn new(inner: S, sizes: Vec<usize>) -> Self {
        Chunked { inner, sizes, next: 0 }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Chunked<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let limit = this.sizes.get(this.next % this.sizes.len().max(1)).copied().unwrap_or(1).min(buf.remaining());
        let mut part = vec![0; limit];
        let mut part = ReadBuf::new(&mut part);
        ready!(Pin::new(&mut this.inner).poll_read(cx, &mut part))?;
        buf.put_slice(part.filled());
        this.next += 1;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Chunked<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

const PIPE: usize = 64 * 1024;
/// How long a tampered session may run before the network between its ends hangs up.
const PATIENCE: Duration = Duration::from_millis(200);

/// The rest of the input, as what a peer sends to our server (`server`) or our client.
async fn hostile_peer(setup: &Setup, mut script: Script<'_>, server: bool) {
    let sizes = script.read_sizes();
    let sent = script.0;
    let (peer, ours) = tokio::io::duplex(PIPE);
    let ours = Chunked::new(ours, sizes);
    let (mut peer_reads, mut peer_writes) = tokio::io::split(peer);
    let send = async {
        let _ = peer_writes.write_all(sent).await;
        let _ = peer_writes.shutdown().await;
    };
    let drain = async {
        let mut sink = vec![0; 4096];
        while matches!(peer_reads.read(&mut sink).await, Ok(n) if n > 0) {}
    };
    let target = async {
        // What comes out of the handshake, if it ever completes, is read to the end.
        let mut plain = Vec::new();
        if server {
            if let Ok(mut tls) = accept(setup.server.clone(), ours).await {
                let _ = tls.read_to_end(&mut plain).await;
            }
        } else if let Ok(name) = ServerName::try_from("fuzz.invalid") {
            if let Ok(mut tls) = connect(setup.client.clone(), name, ours).await {
                let _ = tls.read_to_end(&mut plain).await;
            }
        }
    };
    tokio::join!(send, drain, target);
}

#[derive(Clone, Copy)]
enum Fault {
    /// XOR the byte at this offset of the stream with a nonzero mask.
    Flip { at: usize, mask: u8 },
    /// Stop forwarding at this offset, and end the stream there.
    Cut { at: usize },
}

/// Forwards one direction, applying `fault`. After a cut, a hang-up, or once the far side is
/// gone, it reads on and discards, so that the sender never waits on a reader that left.
async fn forward(mut from: impl AsyncRead + Unpin, mut to: impl AsyncWrite + Unpin, fault: Option<Fault>, hang_up: &CancellationToken) {
    let mut buf = vec![0; 4096];
    let mut offset = 0;
    let mut forwarding = true;
    loop {
        let read = tokio::select! {
            read = from.read(&mut buf) => read,
            () = hang_up.cancelled(), if forwarding => {
                forwarding = false;
                let _ = to.shutdown().await;
                continue;
            }
        };
        let n = match read {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = &mut buf[..n];
        let mut keep = n;
        match fault {
            Some(Fault::Flip { at, mask }) if (offset..offset + n).contains(&at) => chunk[at - offset] ^= mask,
            Some(Fault::Cut { at }) if at < offset + n => keep = at.saturating_sub(offset),
            _ => {}
        }
        if forwarding && (to.write_all(&chunk[..keep]).await.is_err() || keep < n) {
            forwarding = false;
            let _ = to.shutdown().await;
        }
        offset += n;
    }
    if forwarding {
        let _ = to.shutdown().await;
    }
}

/// How one end's reading came out.
struct Received {
    data: Vec<u8>,
    /// Ended by the peer's close_notify.
    clean: bool,
}

/// Reads until `limit` bytes have come (not an end), or the stream ends.
async fn read_up_to(tls: &mut (impl AsyncRead + Unpin), limit: usize) -> Received {
    let mut data = Vec::new();
    let mut buf = vec![0; 16 * 1024];
    while data.len() < limit {
        match tls.read(&mut buf).await {
            Ok(0) => return Received { data, clean: true },
            Ok(n) => data.extend_from_slice(&buf[..n]),
            Err(_) => return Received { data, clean: false },
        }
    }
    Received { data, clean: false }
}

/// Bytes that differ from place to place, so a misplaced or repeated byte shows.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed).wrapping_add((i >> 8) as u8)).collect()
}

/// A client and a server of this module talk through a forwarder that cuts their bytes into
/// reads of the input's sizes and may flip or cut one byte stream at one offset. The client
/// sends some messages and reads the answer; the server reads the messages, answers, and
/// reads on to the client's close_notify; then each closes.
async fn tampered_session(setup: &Setup, mut script: Script<'_>) {
    let tls12 = script.byte().is_multiple_of(4);
    let messages: Vec<Vec<u8>> = (0..script.byte() % 5).map(|i| pattern(script.u16() as usize % 8_000 + 1, i)).collect();
    let reply = pattern(script.u16() as usize % 16_000, 7);
    let (client_sizes, server_sizes) = (script.read_sizes(), script.read_sizes());
    let fault_kind = script.byte();
    let at = (script.u16() as usize) << (script.byte() % 3);
    let fault = match fault_kind % 4 {
        0 => Some(Fault::Flip { at, mask: script.byte() | 1 }),
        1 => Some(Fault::Cut { at }),
        _ => None,
    };
    let towards_server = fault_kind & 4 == 0;
    let (c2s, s2c) = if towards_server { (fault, None) } else { (None, fault) };

    let (client_end, client_far) = tokio::io::duplex(PIPE);
    let (server_far, server_end) = tokio::io::duplex(PIPE);
    let (client_far_reads, client_far_writes) = tokio::io::split(client_far);
    let (server_far_reads, server_far_writes) = tokio::io::split(server_far);
    let sent: Vec<u8> = messages.concat();

    // Neither end reads after sending its own close_notify: rustls 0.23 trips a debug
    // assertion if it then meets a bad record (rustls issue 959; release builds just send
    // the alert), and the fuzz build has debug assertions on.
    let client = async {
        let config = if tls12 { setup.client_tls12.clone() } else { setup.client.clone() };
        let name = ServerName::try_from("fuzz.invalid").map_err(|_| ())?;
        let mut tls = connect(config, name, Chunked::new(client_end, client_sizes)).await.map_err(|_| ())?;
        for message in &messages {
            tls.write_all(message).await.map_err(|_| ())?;
        }
        let got = read_up_to(&mut tls, reply.len()).await;
        if got.data.len() == reply.len() {
            tls.shutdown().await.map_err(|_| ())?;
        }
        Ok::<_, ()>(got)
    };
    let server = async {
        let mut tls = accept(setup.server.clone(), Chunked::new(server_end, server_sizes)).await.map_err(|_| ())?;
        let mut got = read_up_to(&mut tls, sent.len()).await;
        if got.data.len() == sent.len() && !got.clean {
            tls.write_all(&reply).await.map_err(|_| ())?;
            let rest = read_up_to(&mut tls, usize::MAX).await;
            got.data.extend_from_slice(&rest.data);
            got.clean = rest.clean;
            if got.clean {
                tls.shutdown().await.map_err(|_| ())?;
            }
        }
        Ok::<_, ()>(got)
    };
    let hang_up = CancellationToken::new();
    let everything = async {
        tokio::join!(
            client,
            server,
            forward(client_far_reads, server_far_writes, c2s, &hang_up),
            forward(server_far_reads, client_far_writes, s2c, &hang_up)
        )
    };
    let mut everything = std::pin::pin!(everything);
    // A flipped length (of a record, or of a handshake message inside one) leaves each end
    // waiting for bytes the other will never send: a stall of the protocol, which in service
    // the login and idle timeouts end. Here the network hangs up instead, and from then on
    // both ends must finish.
    let patience = async {
        match fault {
            Some(_) => tokio::time::sleep(PATIENCE).await,
            None => std::future::pending().await,
        }
    };
    let (client, server, (), ()) = tokio::select! {
        all = &mut everything => all,
        () = patience => {
            hang_up.cancel();
            everything.await
        }
    };

    if let Ok(got) = &server {
        check("server", got, &sent);
    }
    if let Ok(got) = &client {
        check("client", got, &reply);
    }
    if fault.is_none() {
        assert!(server.as_ref().is_ok_and(|got| got.clean), "untouched session: the server did not get a clean end");
        assert!(client.as_ref().is_ok_and(|got| got.data == reply), "untouched session: the client did not get the whole answer");
    }
}

/// What one end received is what the other sent, up to where it stopped; all of it if the
/// end was clean.
fn check(who: &str, got: &Received, sent: &[u8]) {
    assert!(sent.starts_with(&got.data), "{who} received {} bytes that were not what was sent", got.data.len());
    if got.clean {
        assert_eq!(got.data.len(), sent.len(), "{who} saw a clean end after {} of {} bytes", got.data.len(), sent.len());
    }
}
