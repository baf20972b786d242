//! The PROXY protocol (HAProxy's, versions 1 and 2): the header a load balancer such as an
//! AWS Network Load Balancer or HAProxy sends first on a connection, naming the client it
//! accepted. Only a listener configured for it reads one, only from `trusted_proxies`, and
//! only the header's own bytes: what follows belongs to the database protocol.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

pub use crate::config::ProxyProtocol;

/// The 12 bytes every version 2 header starts with.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
const V1_PREFIX: &[u8] = b"PROXY ";
/// The longest version 1 line, CRLF included (the specification's bound).
const V1_MAX: usize = 107;
/// The most a version 2 header may take here. Balancers add TLVs (AWS: the VPC endpoint);
/// a few hundred bytes cover them.
pub const V2_MAX: usize = 4096;

/// What a header says about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// The client the balancer accepted, and the address it accepted it on.
    Proxied { source: SocketAddr, destination: SocketAddr },
    /// The balancer's own connection (a health check), or one it gives no address for: the
    /// connection's own addresses stand.
    Local,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("no PROXY protocol {0} header")]
    Missing(&'static str),
    #[error("malformed PROXY header: {0}")]
    Malformed(&'static str),
    #[error("PROXY header longer than {0} bytes")]
    TooLong(usize),
}

/// What the bytes read so far make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// Not a whole header yet: at least this many bytes in all are needed.
    Need(usize),
    /// A whole header of `len` bytes.
    Done { header: Header, len: usize },
}

/// Parses the start of a connection. Never asks for more bytes than the header holds, so a
/// reader that reads only what `Need` says leaves the database protocol's bytes unread.
pub fn parse(version: ProxyProtocol, buf: &[u8]) -> Result<Parsed, HeaderError> {
    match version {
        ProxyProtocol::V1 => parse_v1(buf),
        ProxyProtocol::V2 => parse_v2(buf),
        ProxyProtocol::Off => Ok(Parsed::Done { header: Header::Local, len: 0 }),
    }
}

fn parse_v2(buf: &[u8]) -> Result<Parsed, HeaderError> {
    let seen = buf.len().min(V2_SIGNATURE.len());
    if buf[..seen] != V2_SIGNATURE[..seen] {
        return Err(HeaderError::Missing("v2"));
    }
    if buf.len() < 16 {
        return Ok(Parsed::Need(16));
    }
    let (version, command) = (buf[12] >> 4, buf[12] & 0x0f);
    if version != 2 {
        return Err(HeaderError::Malformed("version is not 2"));
    }
    let len = 16 + usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if len > V2_MAX {
        return Err(HeaderError::TooLong(V2_MAX));
    }
    if buf.len() < len {
        return Ok(Parsed::Need(len));
    }
    let body = &buf[16..len];
    let header = match command {
        0 => Header::Local,
        1 => {
            let (family, transport) = (buf[13] >> 4, buf[13] & 0x0f);
            match (family, transport) {
                // UNSPEC and AF_UNIX carry no client address to use.
                (0 | 3, _) => Header::Local,
                (1 | 2, 1) => v2_addresses(family, body)?,
                (1 | 2, _) => return Err(HeaderError::Malformed("not a stream connection")),
                _ => return Err(HeaderError::Malformed("unknown address family")),
            }
        }
        _ => return Err(HeaderError::Malformed("unknown command")),
    };
    Ok(Parsed::Done { header, len })
}

fn v2_addresses(family: u8, body: &[u8]) -> Result<Header, HeaderError> {
    let short = HeaderError::Malformed("addresses cut short");
    let port = |at: usize| u16::from_be_bytes([body[at], body[at + 1]]);
    if family == 1 {
        if body.len() < 12 {
            return Err(short);
        }
        let ip = |at: usize| IpAddr::V4(Ipv4Addr::new(body[at], body[at + 1], body[at + 2], body[at + 3]));
        Ok(Header::Proxied { source: SocketAddr::new(ip(0), port(8)), destination: SocketAddr::new(ip(4), port(10)) })
    } else {
        if body.len() < 36 {
            return Err(short);
        }
        let ip = |at: usize| {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&body[at..at + 16]);
            IpAddr::V6(Ipv6Addr::from(octets))
        };
        Ok(Header::Proxied { source: SocketAddr::new(ip(0), port(32)), destination: SocketAddr::new(ip(16), port(34)) })
    }
}

fn parse_v1(buf: &[u8]) -> Result<Parsed, HeaderError> {
    let seen = buf.len().min(V1_PREFIX.len());
    if buf[..seen] != V1_PREFIX[..seen] {
        return Err(HeaderError::Missing("v1"));
    }
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX { Err(HeaderError::TooLong(V1_MAX)) } else { Ok(Parsed::Need(buf.len() + 1)) };
    };
    let len = end + 2;
    if len > V1_MAX {
        return Err(HeaderError::TooLong(V1_MAX));
    }
    let line = std::str::from_utf8(&buf[V1_PREFIX.len()..end]).map_err(|_| HeaderError::Malformed("not text"))?;
    let fields: Vec<&str> = line.split(' ').collect();
    let header = match fields.as_slice() {
        ["UNKNOWN", ..] => Header::Local,
        [family @ ("TCP4" | "TCP6"), source, destination, source_port, destination_port] => {
            let v6 = *family == "TCP6";
            Header::Proxied {
                source: SocketAddr::new(v1_ip(source, v6)?, v1_port(source_port)?),
                destination: SocketAddr::new(v1_ip(destination, v6)?, v1_port(destination_port)?),
            }
        }
        _ => return Err(HeaderError::Malformed("not TCP4, TCP6 or UNKNOWN with two addresses and two ports")),
    };
    Ok(Parsed::Done { header, len })
}

fn v1_ip(text: &str, v6: bool) -> Result<IpAddr, HeaderError> {
    let ip = if v6 { text.parse::<Ipv6Addr>().map(IpAddr::V6) } else { text.parse::<Ipv4Addr>().map(IpAddr::V4) };
    ip.map_err(|_| HeaderError::Malformed("an address is not of its family"))
}

fn v1_port(text: &str) -> Result<u16, HeaderError> {
    // Digits only: Rust's parser would take a leading "+".
    if text.is_empty() || text.len() > 5 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HeaderError::Malformed("a port is not a number"));
    }
    text.parse().map_err(|_| HeaderError::Malformed("a port is out of range"))
}

/// Reads the header from the start of `stream`, never past its end.
pub async fn read_header<S>(stream: &mut S, version: ProxyProtocol) -> Result<Header, ReadError>
where
    S: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::with_capacity(64);
    loop {
        match parse(version, &buf)? {
            Parsed::Done { header, .. } => return Ok(header),
            Parsed::Need(total) => {
                let start = buf.len();
                buf.resize(total, 0);
                let n = stream.read(&mut buf[start..]).await?;
                if n == 0 {
                    return Err(ReadError::Closed);
                }
                buf.truncate(start + n);
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Header(#[from] HeaderError),
    #[error("the connection closed before its PROXY header ended")]
    Closed,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(version: ProxyProtocol, bytes: &[u8]) -> Result<(Header, usize), HeaderError> {
        match parse(version, bytes)? {
            Parsed::Done { header, len } => Ok((header, len)),
            Parsed::Need(n) => panic!("needs {n} bytes"),
        }
    }

    fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut bytes = V2_SIGNATURE.to_vec();
        bytes.extend([0x20 | command, family]);
        bytes.extend(u16::try_from(body.len()).unwrap().to_be_bytes());
        bytes.extend(body);
        bytes
    }

    #[test]
    fn version_1_lines() {
        let line = b"PROXY TCP4 127.0.0.2 10.0.0.1 40000 5432\r\nrest";
        let (header, len) = done(ProxyProtocol::V1, line).unwrap();
        assert_eq!(len, line.len() - 4);
        assert_eq!(header, Header::Proxied { source: "127.0.0.2:40000".parse().unwrap(), destination: "10.0.0.1:5432".parse().unwrap() });
        let (header, _) = done(ProxyProtocol::V1, b"PROXY TCP6 ::1 2001:db8::1 1 2\r\n").unwrap();
        assert_eq!(header, Header::Proxied { source: "[::1]:1".parse().unwrap(), destination: "[2001:db8::1]:2".parse().unwrap() });
        assert_eq!(done(ProxyProtocol::V1, b"PROXY UNKNOWN\r\n").unwrap().0, Header::Local);
        assert_eq!(parse(ProxyProtocol::V1, b"PROXY TCP4 1.2").unwrap(), Parsed::Need(15));
        for bad in [
            &b"PROXY TCP4 ::1 10.0.0.1 1 2\r\n"[..],
            b"PROXY TCP4 1.2.3.4 10.0.0.1 +1 2\r\n",
            b"PROXY TCP4 1.2.3.4 10.0.0.1 1 70000\r\n",
            b"PROXY TCP4 1.2.3.4 10.0.0.1 1\r\n",
            b"PROXY UDP4 1.2.3.4 10.0.0.1 1 2\r\n",
        ] {
            assert!(matches!(parse(ProxyProtocol::V1, bad), Err(HeaderError::Malformed(_))), "{}", String::from_utf8_lossy(bad));
        }
        assert_eq!(parse(ProxyProtocol::V1, b"\0\0\0\x08\x04\xd2\x16\x2f"), Err(HeaderError::Missing("v1")));
        assert_eq!(parse(ProxyProtocol::V1, &[b'P', b'R', b'O', b'X', b'Y', b' ', b'A'].repeat(20)), Err(HeaderError::TooLong(V1_MAX)));
    }

    #[test]
    fn version_2_headers() {
        let mut body = vec![127, 0, 0, 3, 10, 0, 0, 1];
        body.extend(40001u16.to_be_bytes());
        body.extend(5432u16.to_be_bytes());
        body.extend([0x04, 0, 2, b'x', b'y']); // a TLV, skipped
        let mut bytes = v2(1, 0x11, &body);
        let header_len = bytes.len();
        bytes.extend(b"\0\0\0\x08");
        let (header, len) = done(ProxyProtocol::V2, &bytes).unwrap();
        assert_eq!(len, header_len);
        assert_eq!(header, Header::Proxied { source: "127.0.0.3:40001".parse().unwrap(), destination: "10.0.0.1:5432".parse().unwrap() });
        assert_eq!(parse(ProxyProtocol::V2, &bytes[..10]).unwrap(), Parsed::Need(16));
        assert_eq!(parse(ProxyProtocol::V2, &bytes[..16]).unwrap(), Parsed::Need(header_len));
        assert_eq!(done(ProxyProtocol::V2, &v2(0, 0, &[])).unwrap().0, Header::Local, "LOCAL: a health check");
        assert_eq!(parse(ProxyProtocol::V2, &v2(1, 0x11, &[1, 2, 3])), Err(HeaderError::Malformed("addresses cut short")));
        assert_eq!(parse(ProxyProtocol::V2, &v2(1, 0x12, &body)), Err(HeaderError::Malformed("not a stream connection")));
        assert_eq!(parse(ProxyProtocol::V2, &v2(7, 0x11, &body)), Err(HeaderError::Malformed("unknown command")));
        let mut long = V2_SIGNATURE.to_vec();
        long.extend([0x21, 0x11, 0xff, 0xff]);
        assert_eq!(parse(ProxyProtocol::V2, &long), Err(HeaderError::TooLong(V2_MAX)));
        assert_eq!(parse(ProxyProtocol::V2, b"PROXY TCP4 1.2.3.4"), Err(HeaderError::Missing("v2")));
    }

    #[tokio::test]
    async fn reading_stops_at_the_headers_end() {
        let mut bytes = b"PROXY TCP4 127.0.0.2 127.0.0.1 5 6\r\n".to_vec();
        bytes.extend(b"SSLREQ");
        let mut reader = std::io::Cursor::new(bytes);
        let header = read_header(&mut reader, ProxyProtocol::V1).await.unwrap();
        assert!(matches!(header, Header::Proxied { .. }));
        let mut rest = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut reader, &mut rest).await.unwrap();
        assert_eq!(rest, b"SSLREQ");
        let mut short = std::io::Cursor::new(b"PROXY TCP4".to_vec());
        assert!(matches!(read_header(&mut short, ProxyProtocol::V1).await, Err(ReadError::Closed)));
    }
}
