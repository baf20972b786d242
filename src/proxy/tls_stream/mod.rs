//! TLS over a TCP socket (or any byte stream: the fuzz target uses an in-memory one), driven
//! through rustls's unbuffered API.
//!
//! Why not tokio-rustls: rustls's buffered connection keeps a 4 KiB receive buffer for every
//! TLS connection for its whole life, two per proxied session, and reads at most 4 KiB per
//! call. Here the socket is read into one scratch buffer per thread and the records are
//! decrypted there; a connection keeps received bytes only while a record is half-arrived,
//! and encrypted bytes only while the socket will not take them. An idle connection holds
//! its TLS state and nothing else.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::ops::DerefMut;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::pki_types::ServerName;
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedConnectionCommon, UnbufferedStatus};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

#[cfg(feature = "fuzzing")]
pub mod fuzz;

/// What one socket read takes at most: enough for a few full records at once.
const READ_SCRATCH: usize = 32 * 1024;
/// Plaintext encrypted per write call: four full records.
const MAX_WRITE: usize = 64 * 1024;
/// Room per record for header, tag and padding when sizing an encryption buffer.
const RECORD_OVERHEAD: usize = 64;
/// Encrypted bytes held for a peer that is not reading, beyond which reading from it waits.
/// Above what one write can leave behind.
const MAX_UNSENT: usize = 2 * MAX_WRITE;
/// The write scratch is kept at most this big between writes.
const KEEP_WRITE_SCRATCH: usize = MAX_WRITE + 8 * RECORD_OVERHEAD;

thread_local! {
    static READ: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; READ_SCRATCH].into_boxed_slice());
    static WRITE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The client or server side of an unbuffered rustls connection.
pub trait Side: DerefMut<Target = UnbufferedConnectionCommon<Self::Data>> + Unpin {
    type Data;
    fn process<'c, 'i>(&'c mut self, incoming: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, Self::Data>;
}

impl Side for UnbufferedServerConnection {
    type Data = ServerConnectionData;
    fn process<'c, 'i>(&'c mut self, incoming: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(incoming)
    }
}

impl Side for UnbufferedClientConnection {
    type Data = ClientConnectionData;
    fn process<'c, 'i>(&'c mut self, incoming: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(incoming)
    }
}

/// The byte stream under TLS.
pub trait Io: AsyncRead + AsyncWrite + Unpin {}
impl<T: AsyncRead + AsyncWrite + Unpin> Io for T {}

pub type ServerTlsStream = TlsStream<UnbufferedServerConnection>;
pub type ClientTlsStream = TlsStream<UnbufferedClientConnection>;

pub struct TlsStream<C, S = TcpStream> {
    tcp: S,
    conn: C,
    /// Received bytes rustls has not used yet: the start of a record still arriving.
    incoming: Vec<u8>,
    /// Encrypted bytes the socket has not taken yet, sent before anything else.
    outgoing: Vec<u8>,
    outgoing_at: usize,
    /// Decrypted bytes the reader had no room for.
    plaintext: Vec<u8>,
    plaintext_at: usize,
    /// The peer sent close_notify: what it sent is all there is.
    read_closed: bool,
    /// The socket ended, with or without close_notify.
    tcp_eof: bool,
    close_sent: bool,
    /// rustls reported an error: the connection is dead, and rustls is not called again
    /// (it would meet the same bad bytes and fail once more).
    failed: bool,
}

/// Accepts a TLS client on `tcp`.
pub async fn accept<S: Io>(config: Arc<rustls::ServerConfig>, tcp: S) -> io::Result<TlsStream<UnbufferedServerConnection, S>> {
    let conn = UnbufferedServerConnection::new(config).map_err(invalid)?;
    TlsStream::handshake(tcp, conn).await
}

/// Connects as a TLS client to `name` over `tcp`.
pub async fn connect<S: Io>(
    config: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
    tcp: S,
) -> io::Result<TlsStream<UnbufferedClientConnection, S>> {
    let conn = UnbufferedClientConnection::new(config, name).map_err(invalid)?;
    TlsStream::handshake(tcp, conn).await
}

fn invalid(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// What one call into rustls came to.
enum Turn {
    /// Something was done; call again.
    More,
    /// Nothing more without bytes from the peer (and nothing asked to be encrypted).
    Idle,
    /// The payload was encrypted.
    Encrypted,
    /// The peer's close_notify, reported once.
    PeerClosed,
    /// Both sides have sent close_notify; reported on every call from then on.
    Closed,
}

enum Payload<'a> {
    Data(&'a [u8]),
    CloseNotify,
}

/// Grows `out` by what `fill` writes, retrying with the size rustls asks for.
fn append_with(out: &mut Vec<u8>, mut room: usize, mut fill: impl FnMut(&mut [u8]) -> Result<usize, Option<usize>>) -> io::Result<()> {
    let start = out.len();
    loop {
        out.resize(start + room, 0);
        match fill(&mut out[start..]) {
            Ok(n) => {
                out.truncate(start + n);
                return Ok(());
            }
            Err(Some(required)) if required > room => room = required,
            Err(_) => {
                out.truncate(start);
                return Err(invalid("TLS record could not be encoded"));
            }
        }
    }
}

/// The buffer size an encryption asked for, if too little room was its only trouble.
fn room_needed(e: EncryptError) -> Option<usize> {
    match e {
        EncryptError::InsufficientSize(s) => Some(s.required_size),
        _ => None,
    }
}

/// One call into rustls over `incoming`. Handshake records it wants sent are appended to
/// `out`; application data goes to `direct` while it has room, then to `spill`. Returns how
/// many bytes to drop from the front of `incoming`, and what came of it.
fn turn<C: Side>(
    conn: &mut C,
    incoming: &mut [u8],
    out: &mut Vec<u8>,
    mut direct: Option<&mut ReadBuf<'_>>,
    spill: &mut Vec<u8>,
    payload: Option<&Payload<'_>>,
) -> (usize, io::Result<Turn>) {
    let status = conn.process(incoming);
    let mut discard = status.discard;
    let turn = match status.state {
        Err(e) => Err(invalid(e)),
        Ok(ConnectionState::ReadTraffic(mut traffic)) => {
            let mut result = Ok(Turn::More);
            while let Some(record) = traffic.next_record() {
                match record {
                    Ok(record) => {
                        discard += record.discard;
                        let mut data = record.payload;
                        if let Some(buf) = direct.as_deref_mut() {
                            let n = data.len().min(buf.remaining());
                            buf.put_slice(&data[..n]);
                            data = &data[n..];
                        }
                        spill.extend_from_slice(data);
                    }
                    Err(e) => {
                        result = Err(invalid(e));
                        break;
                    }
                }
            }
            result
        }
        Ok(ConnectionState::EncodeTlsData(mut encode)) => append_with(out, 4096, |buf| {
            encode.encode(buf).map_err(|e| match e {
                EncodeError::InsufficientSize(s) => Some(s.required_size),
                _ => None,
            })
        })
        .map(|()| Turn::More),
        // `out` is sent before anything this connection writes later, so it counts as sent.
        Ok(ConnectionState::TransmitTlsData(transmit)) => {
            transmit.done();
            Ok(Turn::More)
        }
        Ok(ConnectionState::BlockedHandshake) => Ok(Turn::Idle),
        Ok(ConnectionState::WriteTraffic(mut traffic)) => match payload {
            None => Ok(Turn::Idle),
            Some(Payload::Data(data)) => {
                let room = data.len() + (data.len() / (16 * 1024) + 1) * RECORD_OVERHEAD;
                append_with(out, room, |buf| traffic.encrypt(data, buf).map_err(room_needed)).map(|()| Turn::Encrypted)
            }
            Some(Payload::CloseNotify) => {
                append_with(out, RECORD_OVERHEAD, |buf| traffic.queue_close_notify(buf).map_err(room_needed)).map(|()| Turn::Encrypted)
            }
        },
        Ok(ConnectionState::PeerClosed) => Ok(Turn::PeerClosed),
        Ok(ConnectionState::Closed) => Ok(Turn::Closed),
        // Early data is never enabled; anything else is a state this code does not know.
        Ok(_) => Err(invalid("unexpected TLS state")),
    };
    (discard, turn)
}

/// Runs rustls over `incoming` until it needs more bytes. Returns how many bytes it used,
/// and whether the peer closed.
fn digest<C: Side>(
    conn: &mut C,
    incoming: &mut [u8],
    out: &mut Vec<u8>,
    mut direct: Option<&mut ReadBuf<'_>>,
    spill: &mut Vec<u8>,
) -> io::Result<(usize, bool)> {
    let mut used = 0;
    loop {
        let (discard, turned) = turn(conn, &mut incoming[used..], out, direct.as_deref_mut(), spill, None);
        used += discard;
        match turned? {
            Turn::More => {}
            Turn::Idle | Turn::Encrypted => return Ok((used, false)),
            Turn::PeerClosed | Turn::Closed => return Ok((used, true)),
        }
    }
}

impl<C: Side, S: Io> TlsStream<C, S> {
    async fn handshake(tcp: S, conn: C) -> io::Result<Self> {
        let mut stream = TlsStream {
            tcp,
            conn,
            incoming: Vec::new(),
            outgoing: Vec::new(),
            outgoing_at: 0,
            plaintext: Vec::new(),
            plaintext_at: 0,
            read_closed: false,
            tcp_eof: false,
            close_sent: false,
            failed: false,
        };
        loop {
            if let Err(e) = stream.digest_incoming(None) {
                stream.send_alert().await;
                return Err(e);
            }
            poll_fn(|cx| stream.poll_flush_outgoing(cx)).await?;
            if !stream.conn.is_handshaking() {
                return Ok(stream);
            }
            if stream.read_closed || stream.tcp_eof {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the peer closed the connection during the TLS handshake"));
            }
            poll_fn(|cx| stream.poll_read_into_incoming(cx)).await?;
        }
    }

    /// Sends the alert rustls queued on failing, so the peer hears why. One turn only: rustls
    /// hands queued records out before it looks at the input again, and the input is what
    /// failed.
    async fn send_alert(&mut self) {
        let _ = turn(&mut self.conn, &mut self.incoming, &mut self.outgoing, None, &mut self.plaintext, None);
        let _ = poll_fn(|cx| self.poll_flush_outgoing(cx)).await;
    }

    fn dead() -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, "the TLS connection failed earlier")
    }

    pub fn get_ref(&self) -> (&S, &C) {
        (&self.tcp, &self.conn)
    }

    /// Buffer capacity this connection holds besides its TLS state: none while it is idle.
    pub fn held_bytes(&self) -> usize {
        self.incoming.capacity() + self.outgoing.capacity() + self.plaintext.capacity()
    }

    /// Runs rustls over the kept incoming bytes and drops what it used.
    fn digest_incoming(&mut self, direct: Option<&mut ReadBuf<'_>>) -> io::Result<()> {
        let digested = digest(&mut self.conn, &mut self.incoming, &mut self.outgoing, direct, &mut self.plaintext);
        self.failed |= digested.is_err();
        let (used, closed) = digested?;
        self.read_closed |= closed;
        if used >= self.incoming.len() || closed {
            self.incoming = Vec::new();
        } else if used > 0 {
            self.incoming.drain(..used);
        }
        Ok(())
    }

    /// Reads into the kept bytes: during the handshake, which holds few connections at once.
    fn poll_read_into_incoming(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let start = self.incoming.len();
        self.incoming.resize(start + READ_SCRATCH, 0);
        let mut buf = ReadBuf::new(&mut self.incoming[start..]);
        let polled = Pin::new(&mut self.tcp).poll_read(cx, &mut buf);
        let n = buf.filled().len();
        self.incoming.truncate(start + n);
        ready!(polled)?;
        if n == 0 {
            self.tcp_eof = true;
        }
        Poll::Ready(Ok(()))
    }

    /// Reads from the socket and decrypts what arrived, into `direct` as far as it has room.
    fn poll_read_tls(&mut self, cx: &mut Context<'_>, direct: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        READ.with(|scratch| {
            let Ok(mut scratch) = scratch.try_borrow_mut() else {
                // Only if one stream were polled from inside another's poll.
                ready!(self.poll_read_into_incoming(cx))?;
                return Poll::Ready(self.digest_incoming(Some(direct)));
            };
            let mut buf = ReadBuf::new(&mut scratch[..]);
            ready!(Pin::new(&mut self.tcp).poll_read(cx, &mut buf))?;
            let n = buf.filled().len();
            if n == 0 {
                self.tcp_eof = true;
                return Poll::Ready(Ok(()));
            }
            if !self.incoming.is_empty() {
                // The rest of a record that arrived in part.
                self.incoming.extend_from_slice(&scratch[..n]);
                return Poll::Ready(self.digest_incoming(Some(direct)));
            }
            let digested = digest(&mut self.conn, &mut scratch[..n], &mut self.outgoing, Some(direct), &mut self.plaintext);
            self.failed |= digested.is_err();
            let (used, closed) = digested?;
            self.read_closed |= closed;
            if !closed && used < n {
                self.incoming.extend_from_slice(&scratch[used..n]);
            }
            Poll::Ready(Ok(()))
        })
    }

    fn poll_flush_outgoing(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.outgoing_at < self.outgoing.len() {
            let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, &self.outgoing[self.outgoing_at..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.outgoing_at += n;
        }
        self.outgoing = Vec::new();
        self.outgoing_at = 0;
        Poll::Ready(Ok(()))
    }

    /// Encrypts `payload` into `out`, after any handshake record rustls has waiting.
    fn encrypt(&mut self, payload: &Payload<'_>, out: &mut Vec<u8>) -> io::Result<()> {
        let encrypted_at = loop {
            let before = out.len();
            let (discard, turned) = turn(&mut self.conn, &mut self.incoming, out, None, &mut self.plaintext, Some(payload));
            if discard > 0 {
                self.incoming.drain(..discard.min(self.incoming.len()));
            }
            match turned? {
                Turn::More => {}
                Turn::Encrypted => break before,
                Turn::Idle => return Err(io::Error::new(io::ErrorKind::NotConnected, "the TLS handshake is not complete")),
                Turn::PeerClosed => self.read_closed = true,
                Turn::Closed => return Err(io::ErrorKind::BrokenPipe.into()),
            }
        };
        // Encrypting may have renewed the keys (TLS 1.3, after very many records). rustls
        // queues the KeyUpdate, under the old key, for its next turn, but the peer must see it
        // before the records under the new key.
        let mut late = Vec::new();
        let (used, closed) = digest(&mut self.conn, &mut self.incoming, &mut late, None, &mut self.plaintext)?;
        self.read_closed |= closed;
        self.incoming.drain(..used.min(self.incoming.len()));
        if !late.is_empty() {
            out.splice(encrypted_at..encrypted_at, late);
        }
        Ok(())
    }

    /// Encrypts `payload` and writes as much as the socket takes; the rest waits in `outgoing`.
    fn poll_send(&mut self, cx: &mut Context<'_>, payload: &Payload<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_flush_outgoing(cx))?;
        WRITE.with(|scratch| {
            let mut fallback = Vec::new();
            let mut borrowed = scratch.try_borrow_mut();
            let out = match borrowed.as_deref_mut() {
                Ok(out) => out,
                Err(_) => &mut fallback,
            };
            out.clear();
            if let Err(e) = self.encrypt(payload, out) {
                self.failed = true;
                return Poll::Ready(Err(e));
            }
            let mut at = 0;
            while at < out.len() {
                match Pin::new(&mut self.tcp).poll_write(cx, &out[at..]) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Poll::Ready(Ok(n)) => at += n,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => break,
                }
            }
            self.outgoing.extend_from_slice(&out[at..]);
            if out.capacity() > KEEP_WRITE_SCRATCH {
                *out = Vec::new();
            }
            Poll::Ready(Ok(()))
        })
    }
}

impl<C: Side, S: Io> AsyncRead for TlsStream<C, S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.failed {
                return Poll::Ready(Err(Self::dead()));
            }
            if this.plaintext_at < this.plaintext.len() {
                let n = buf.remaining().min(this.plaintext.len() - this.plaintext_at);
                buf.put_slice(&this.plaintext[this.plaintext_at..this.plaintext_at + n]);
                this.plaintext_at += n;
                if this.plaintext_at == this.plaintext.len() {
                    this.plaintext = Vec::new();
                    this.plaintext_at = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.read_closed || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            // Send what is waiting (a KeyUpdate reply, or data the socket would not take), but
            // read on even if the peer is not taking it: a peer that writes before it reads
            // would otherwise wait on us while we wait on it. Only past MAX_UNSENT (replies
            // to a peer that asks for key updates and never reads) does reading wait.
            let unsent = this.outgoing.len() - this.outgoing_at;
            match this.poll_flush_outgoing(cx) {
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending if unsent > MAX_UNSENT => return Poll::Pending,
                _ => {}
            }
            if this.tcp_eof {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the peer closed the connection without a TLS close_notify",
                )));
            }
            let before = buf.filled().len();
            ready!(this.poll_read_tls(cx, buf))?;
            if buf.filled().len() > before {
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl<C: Side, S: Io> AsyncWrite for TlsStream<C, S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.failed {
            return Poll::Ready(Err(Self::dead()));
        }
        if this.close_sent {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let data = &buf[..buf.len().min(MAX_WRITE)];
        ready!(this.poll_send(cx, &Payload::Data(data)))?;
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_flush_outgoing(cx))?;
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.failed {
            return Pin::new(&mut this.tcp).poll_shutdown(cx);
        }
        if !this.close_sent {
            ready!(this.poll_send(cx, &Payload::CloseNotify))?;
            this.close_sent = true;
        }
        ready!(this.poll_flush_outgoing(cx))?;
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}
