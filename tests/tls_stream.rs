//! dbtape's TLS stream (rustls's unbuffered API) against tokio-rustls as the peer, both
//! ways round: data of every size arrives whole and in order, a KeyUpdate from the peer is
//! answered, close_notify ends the stream cleanly, and an idle connection holds no buffers.

mod common;

use std::sync::Arc;

use common::services::Services;
use dbtape::proxy::tls_stream;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn client_config(s: &Services) -> Arc<rustls::ClientConfig> {
    dbtape::proxy::tls::client_config(&dbtape::config::UpstreamTlsConfig {
        mode: Default::default(),
        ca: Some(format!("{}/ca.crt", s.get("CERTS")).into()),
        server_name: None,
    })
    .unwrap()
    .unwrap()
}

async fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
    (client.unwrap(), server.unwrap().0)
}

/// A tokio-rustls client and dbtape's server side, handshaken over loopback.
async fn tokio_client_and_our_server() -> (tokio_rustls::client::TlsStream<TcpStream>, tls_stream::ServerTlsStream) {
    let s = Services::load();
    let (client_tcp, server_tcp) = tcp_pair().await;
    let connector = tokio_rustls::TlsConnector::from(client_config(&s));
    let name = ServerName::try_from("localhost").unwrap();
    let (client, server) = tokio::join!(connector.connect(name, client_tcp), tls_stream::accept(s.server_tls(), server_tcp));
    (client.unwrap(), server.unwrap())
}

/// Bytes whose every position differs from its neighbours', so a reordering shows.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0] ^ seed).collect()
}

/// Sends `data` in writes of the given sizes, then flushes.
async fn send_in<W: AsyncWrite + Unpin>(to: &mut W, data: &[u8], sizes: &[usize]) {
    let mut at = 0;
    for size in sizes.iter().cycle() {
        if at == data.len() {
            break;
        }
        let end = (at + size).min(data.len());
        to.write_all(&data[at..end]).await.unwrap();
        at = end;
    }
    to.flush().await.unwrap();
}

async fn receive<R: AsyncRead + Unpin>(from: &mut R, len: usize) -> Vec<u8> {
    let mut got = vec![0u8; len];
    from.read_exact(&mut got).await.unwrap();
    got
}

/// Writes in sizes from one byte to more than four records at once.
const SIZES: [usize; 6] = [1, 100, 5_000, 16_384, 16_385, 70_000];

#[tokio::test]
async fn our_server_side_against_a_tokio_rustls_client() {
    let (mut client, mut server) = tokio_client_and_our_server().await;

    let up = pattern(300_000, 1);
    let down = pattern(300_000, 2);
    let (_, got) = tokio::join!(send_in(&mut client, &up, &SIZES), receive(&mut server, up.len()));
    assert!(got == up, "client to server");
    let (_, got) = tokio::join!(send_in(&mut server, &down, &SIZES), receive(&mut client, down.len()));
    assert!(got == down, "server to client");
    assert_eq!(server.held_bytes(), 0, "an idle connection keeps no buffers");

    // The peer renews its keys and asks for ours to be renewed: traffic goes on both ways.
    client.get_mut().1.refresh_traffic_keys().unwrap();
    let (_, got) = tokio::join!(send_in(&mut client, b"after key update", &[100]), receive(&mut server, 16));
    assert_eq!(got, b"after key update");
    let (_, got) = tokio::join!(send_in(&mut server, b"reply", &[100]), receive(&mut client, 5));
    assert_eq!(got, b"reply");

    // close_notify: the server reads a clean end of stream, not an error.
    client.shutdown().await.unwrap();
    let mut rest = Vec::new();
    assert_eq!(server.read_to_end(&mut rest).await.unwrap(), 0);
}

#[tokio::test]
async fn our_client_side_against_a_tokio_rustls_server() {
    let s = Services::load();
    let (client_tcp, server_tcp) = tcp_pair().await;
    let acceptor = tokio_rustls::TlsAcceptor::from(s.server_tls());
    let name = ServerName::try_from("localhost").unwrap();
    let (client, server) = tokio::join!(tls_stream::connect(client_config(&s), name, client_tcp), acceptor.accept(server_tcp));
    let (mut client, mut server) = (client.unwrap(), server.unwrap());

    let up = pattern(200_000, 3);
    let down = pattern(200_000, 4);
    // Both directions at once, so neither side only ever reads or only writes.
    let (client_read, mut client_write) = tokio::io::split(&mut client);
    let mut client_read = client_read;
    let (server_read, mut server_write) = tokio::io::split(&mut server);
    let mut server_read = server_read;
    let (_, _, got_down, got_up) = tokio::join!(
        send_in(&mut client_write, &up, &SIZES),
        send_in(&mut server_write, &down, &SIZES),
        receive(&mut client_read, down.len()),
        receive(&mut server_read, up.len()),
    );
    assert!(got_up == up && got_down == down);
    assert_eq!(client.held_bytes(), 0, "an idle connection keeps no buffers");

    // Our close_notify reaches the server as a clean end of stream.
    client.shutdown().await.unwrap();
    let mut rest = Vec::new();
    assert_eq!(server.read_to_end(&mut rest).await.unwrap(), 0);
}

#[tokio::test]
async fn a_peer_that_is_not_tls_gets_an_error_not_a_hang() {
    let s = Services::load();
    let (mut client_tcp, server_tcp) = tcp_pair().await;
    client_tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let accepted = tokio::time::timeout(std::time::Duration::from_secs(10), tls_stream::accept(s.server_tls(), server_tcp)).await;
    assert!(accepted.expect("the handshake must fail, not wait").is_err());
    // A TLS alert went back before the socket closed.
    let mut reply = Vec::new();
    let _ = client_tcp.read_to_end(&mut reply).await;
    assert_eq!(reply.first(), Some(&0x15), "expected a TLS alert record, got {reply:?}");
}

#[tokio::test]
async fn reading_goes_on_while_the_peer_is_not_taking_what_we_write() {
    let (mut client, server) = tokio_client_and_our_server().await;
    // Far more than the sockets' buffers hold, so writes stall until the other side reads.
    let up = pattern(8 << 20, 5);
    let down = pattern(8 << 20, 6);
    let (mut server_read, mut server_write) = tokio::io::split(server);
    let server_side = async {
        let (_, got) = tokio::join!(send_in(&mut server_write, &down, &[65_536]), receive(&mut server_read, up.len()));
        got
    };
    // The client writes everything before it reads anything: the proxy's relay must keep
    // reading from it while its own writes to it are stalled.
    let client_side = async {
        send_in(&mut client, &up, &[65_536]).await;
        receive(&mut client, down.len()).await
    };
    let both = async { tokio::join!(server_side, client_side) };
    let (got_up, got_down) = tokio::time::timeout(std::time::Duration::from_secs(60), both).await.expect("deadlocked");
    assert!(got_up == up && got_down == down);
}
