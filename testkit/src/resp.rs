//! A minimal blocking RESP2 client: encodes a command, reads one reply. Enough for the
//! harness's own few commands (PING, FLUSHALL, SET/GET in tests); not a general client.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Largest bulk string the reader accepts, checked before allocating.
pub const MAX_BULK_LEN: usize = 64 * 1024 * 1024;
/// Largest array (element count) the reader accepts, checked before allocating.
pub const MAX_ARRAY_LEN: usize = 1024 * 1024;
/// Deepest nesting of arrays the reader accepts.
pub const MAX_DEPTH: usize = 8;

/// One RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`
    Simple(String),
    /// `-ERR ...`
    Error(String),
    /// `:42`
    Integer(i64),
    /// `$3\r\nfoo` (`None`: the null bulk string `$-1`).
    Bulk(Option<Vec<u8>>),
    /// `*2\r\n...` (`None`: the null array `*-1`).
    Array(Option<Vec<Reply>>),
}

/// Encodes `args` as a RESP array of bulk strings (how clients send commands).
pub fn encode_command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + args.iter().map(|a| a.len() + 16).sum::<usize>());
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// Reads one line without its `\r\n`.
fn read_line(r: &mut impl BufRead) -> io::Result<String> {
    let mut line = Vec::new();
    // Bounded: a reply header line is short; anything longer is not RESP.
    r.take(64 * 1024).read_until(b'\n', &mut line)?;
    if line.is_empty() {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed"));
    }
    if !line.ends_with(b"\r\n") {
        return Err(invalid("reply line without CRLF"));
    }
    line.truncate(line.len() - 2);
    String::from_utf8(line).map_err(|_| invalid("reply line is not UTF-8"))
}

fn parse_len(s: &str, max: usize) -> io::Result<Option<usize>> {
    let n: i64 = s.parse().map_err(|_| invalid(format!("bad length {s:?}")))?;
    if n == -1 {
        return Ok(None);
    }
    let n = usize::try_from(n).map_err(|_| invalid(format!("bad length {n}")))?;
    if n > max {
        return Err(invalid(format!("length {n} over the limit {max}")));
    }
    Ok(Some(n))
}

/// Reads one reply from `r`.
pub fn read_reply(r: &mut impl BufRead) -> io::Result<Reply> {
    read_reply_at(r, 0)
}

fn read_reply_at(r: &mut impl BufRead, depth: usize) -> io::Result<Reply> {
    let line = read_line(r)?;
    let (kind, rest) = line.split_at_checked(1).ok_or_else(|| invalid("empty reply line"))?;
    match kind {
        "+" => Ok(Reply::Simple(rest.to_owned())),
        "-" => Ok(Reply::Error(rest.to_owned())),
        ":" => rest.parse().map(Reply::Integer).map_err(|_| invalid(format!("bad integer {rest}"))),
        "$" => {
            let Some(n) = parse_len(rest, MAX_BULK_LEN)? else {
                return Ok(Reply::Bulk(None));
            };
            let mut data = vec![0; n + 2];
            r.read_exact(&mut data)?;
            if !data.ends_with(b"\r\n") {
                return Err(invalid("bulk string without CRLF"));
            }
            data.truncate(n);
            Ok(Reply::Bulk(Some(data)))
        }
        "*" => {
            if depth >= MAX_DEPTH {
                return Err(invalid("arrays nested too deep"));
            }
            let Some(n) = parse_len(rest, MAX_ARRAY_LEN)? else {
                return Ok(Reply::Array(None));
            };
            let mut items = Vec::with_capacity(n.min(1024));
            for _ in 0..n {
                items.push(read_reply_at(r, depth + 1)?);
            }
            Ok(Reply::Array(Some(items)))
        }
        other => Err(invalid(format!("unknown reply type {other:?}"))),
    }
}

/// Connects to `addr`, sends one command and reads its reply, every step bounded by `timeout`.
pub fn command(addr: SocketAddr, args: &[&[u8]], timeout: Duration) -> io::Result<Reply> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(&encode_command(args))?;
    read_reply(&mut BufReader::new(stream))
}

/// Sends the inline command `PING` and returns the reply line (`+PONG` when the server is
/// ready; `-LOADING ...` while it replays its AOF).
pub fn ping(addr: SocketAddr, timeout: Duration) -> io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(b"PING\r\n")?;
    read_line(&mut BufReader::new(stream))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8]) -> io::Result<Reply> {
        read_reply(&mut io::Cursor::new(bytes))
    }

    #[test]
    fn encodes_commands_as_bulk_arrays() {
        assert_eq!(
            encode_command(&[b"SET", b"k", b""]),
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n"
        );
    }

    #[test]
    fn parses_every_reply_type() {
        assert_eq!(parse(b"+OK\r\n").unwrap(), Reply::Simple("OK".into()));
        assert_eq!(parse(b"-ERR no\r\n").unwrap(), Reply::Error("ERR no".into()));
        assert_eq!(parse(b":-7\r\n").unwrap(), Reply::Integer(-7));
        assert_eq!(parse(b"$-1\r\n").unwrap(), Reply::Bulk(None));
        assert_eq!(parse(b"$4\r\na\r\nb\r\n").unwrap(), Reply::Bulk(Some(b"a\r\nb".to_vec())));
        assert_eq!(
            parse(b"*2\r\n$1\r\nx\r\n*-1\r\n").unwrap(),
            Reply::Array(Some(vec![Reply::Bulk(Some(b"x".to_vec())), Reply::Array(None)]))
        );
    }

    #[test]
    fn rejects_bad_input_before_allocating() {
        for bad in [
            &b"$999999999999\r\n"[..],
            b"*99999999\r\n",
            b"$3\r\nabcXY",
            b"?\r\n",
            b"+OK\n",
            b":x\r\n",
            b"",
            b"$5\r\nab",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        let deep = b"*1\r\n".repeat(MAX_DEPTH + 1);
        assert_eq!(parse(&deep).unwrap_err().kind(), io::ErrorKind::InvalidData);
    }
}
