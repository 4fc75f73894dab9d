//! An answer for HTTP/2 with prior knowledge.
//!
//! The service speaks HTTP/1.1 (and HTTP/1.0). A client that opens a connection with HTTP/2's
//! connection preface (`PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`, "prior knowledge", as
//! `curl --http2-prior-knowledge` and gRPC clients send) gets nothing from hyper: it recognises
//! the preface and closes the connection without a word, which reads as a network fault. This
//! adapter sits on the connection's read side, under hyper: when the connection's first 24 bytes
//! are the preface, it answers `505 http_version_not_supported` in the service's JSON error shape
//! itself, closes its side, and hands hyper the end of the stream, so hyper closes the connection
//! quietly as if the client had gone.
//!
//! What it costs every other connection: the first read is compared with the preface, and is
//! handed on at once when it differs (every HTTP/1 request does at its first or second byte). A
//! connection whose first bytes could still be the preface is held until they decide, within
//! hyper's header read timeout, which keeps running (hyper is waiting for its first read).
//!
//! After the answer the rest of what the client sent (its SETTINGS frame, maybe a request) is
//! read and dropped for up to [`LINGER`]: closing a socket with unread bytes sends a reset, and a
//! client's kernel may drop the answer it had not yet read when the reset arrives.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// HTTP/2's connection preface (RFC 9113, section 3.4).
pub const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// How long a refused connection is read (and what it sends dropped) before it closes.
pub const LINGER: Duration = Duration::from_secs(1);
/// The most bytes read and dropped from a refused connection.
const LINGER_BYTES: usize = 64 << 10;

/// An I/O stream that answers an HTTP/2 connection preface with a 505 and the end of stream.
pub struct RefuseH2Preface<T> {
    inner: T,
    state: State,
}

enum State {
    /// Nothing decided yet: the connection's first bytes so far are `H2_PREFACE[..n]`, held
    /// back from the reader.
    Sniffing(usize),
    /// Not the preface: what was held back (and what arrived with it) goes to the reader first.
    Replaying(Bytes),
    /// Not the preface, nothing held: reads pass straight through.
    Passing,
    /// The preface: the answer, and how much of it is written.
    Answering(Bytes, usize),
    /// The answer written: closing the write side.
    Closing,
    /// Reading and dropping what the client still sends, until it closes, `until` or `left`
    /// more bytes.
    Lingering { until: Pin<Box<Sleep>>, left: usize },
    /// Refused and closed: reads see the end of the stream.
    Done,
}

impl<T> RefuseH2Preface<T> {
    pub fn new(inner: T) -> Self {
        Self { inner, state: State::Sniffing(0) }
    }
}

/// What the bytes read so far say.
#[derive(Debug, PartialEq, Eq)]
enum Sniff {
    /// Not the preface (or the end of the stream).
    Other,
    /// Still a prefix of it, `n` bytes long.
    Prefix(usize),
    /// The whole preface.
    Preface,
}

/// `new` read after `seen` bytes that matched the preface.
fn sniff(seen: usize, new: &[u8]) -> Sniff {
    let want = &H2_PREFACE[seen..];
    let n = new.len().min(want.len());
    if new.is_empty() || new[..n] != want[..n] {
        Sniff::Other
    } else if seen + n == H2_PREFACE.len() {
        Sniff::Preface
    } else {
        Sniff::Prefix(seen + n)
    }
}

/// The answer to the preface: an HTTP/1.1 505 with the service's error body.
fn refusal() -> Bytes {
    let body = serde_json::json!({ "error": {
        "code": "http_version_not_supported",
        "message": "this service speaks HTTP/1.1 only; HTTP/2 (prior knowledge) is not served",
    }})
    .to_string();
    format!(
        "HTTP/1.1 505 HTTP Version Not Supported\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    )
    .into()
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for RefuseH2Preface<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            match &mut this.state {
                State::Passing => return Pin::new(&mut this.inner).poll_read(cx, buf),
                State::Sniffing(seen) => {
                    let seen = *seen;
                    // Read straight into the reader's buffer: in the common case (a request, not
                    // the preface) the bytes stay there and nothing is copied.
                    let before = buf.filled().len();
                    ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
                    let outcome = sniff(seen, &buf.filled()[before..]);
                    match outcome {
                        Sniff::Other if seen == 0 => {
                            this.state = State::Passing;
                            return Poll::Ready(Ok(()));
                        }
                        Sniff::Other => {
                            let mut held = BytesMut::with_capacity(seen + buf.filled().len() - before);
                            held.extend_from_slice(&H2_PREFACE[..seen]);
                            held.extend_from_slice(&buf.filled()[before..]);
                            buf.set_filled(before);
                            this.state = State::Replaying(held.freeze());
                        }
                        Sniff::Prefix(n) => {
                            // Held back; read on (an empty read would say end of stream).
                            buf.set_filled(before);
                            this.state = State::Sniffing(n);
                        }
                        Sniff::Preface => {
                            // What came with the preface (its SETTINGS frame) is dropped.
                            buf.set_filled(before);
                            tracing::debug!("an HTTP/2 connection preface: answered 505 and closed");
                            this.state = State::Answering(refusal(), 0);
                        }
                    }
                }
                State::Replaying(held) => {
                    let n = held.len().min(buf.remaining());
                    buf.put_slice(&held.split_to(n));
                    if held.is_empty() {
                        this.state = State::Passing;
                    }
                    return Poll::Ready(Ok(()));
                }
                State::Answering(answer, written) => {
                    while *written < answer.len() {
                        let n = ready!(Pin::new(&mut this.inner).poll_write(cx, &answer[*written..]))?;
                        if n == 0 {
                            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                        }
                        *written += n;
                    }
                    this.state = State::Closing;
                }
                State::Closing => {
                    ready!(Pin::new(&mut this.inner).poll_shutdown(cx))?;
                    this.state = State::Lingering { until: Box::pin(tokio::time::sleep(LINGER)), left: LINGER_BYTES };
                }
                State::Lingering { until, left } => {
                    if until.as_mut().poll(cx).is_ready() {
                        this.state = State::Done;
                        continue;
                    }
                    let before = buf.filled().len();
                    let read = ready!(Pin::new(&mut this.inner).poll_read(cx, buf));
                    let n = buf.filled().len() - before;
                    buf.set_filled(before);
                    match read {
                        Ok(()) if n > 0 && n < *left => *left -= n,
                        // The client closed, failed, or sent more than is worth reading.
                        _ => this.state = State::Done,
                    }
                }
                State::Done => return Poll::Ready(Ok(())),
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for RefuseH2Preface<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // A refused connection's write side is already shut (a second shutdown can fail with
        // `NotConnected` once the client has closed too).
        if matches!(self.state, State::Lingering { .. } | State::Done) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn the_first_bytes_decide() {
        assert_eq!(sniff(0, b"GET / HTTP/1.1\r\n"), Sniff::Other);
        assert_eq!(sniff(0, b"PUT /notes/a HTTP/1.1\r\n"), Sniff::Other);
        assert_eq!(sniff(0, b"PRI /x HTTP/1.1\r\n"), Sniff::Other);
        assert_eq!(sniff(0, b""), Sniff::Other);
        assert_eq!(sniff(0, b"P"), Sniff::Prefix(1));
        assert_eq!(sniff(1, b"RI * HTTP/2.0"), Sniff::Prefix(14));
        assert_eq!(sniff(14, b"\r\n\r\nSM\r\n\r\n"), Sniff::Preface);
        assert_eq!(sniff(0, H2_PREFACE), Sniff::Preface);
        let with_settings = [&H2_PREFACE[..], &b"\0\0\0\x04\0\0\0\0\0"[..]].concat();
        assert_eq!(sniff(0, &with_settings), Sniff::Preface);
        assert_eq!(sniff(3, b"x"), Sniff::Other);
    }

    /// What a reader of the adapter gets when the client sends `chunks` (a pause between
    /// them) and closes.
    async fn read_through(chunks: &[&[u8]]) -> Vec<u8> {
        let chunks: Vec<Vec<u8>> = chunks.iter().map(|c| c.to_vec()).collect();
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let writer = tokio::spawn(async move {
            for c in &chunks {
                client.write_all(c).await.unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            client.shutdown().await.unwrap();
            client
        });
        let mut out = Vec::new();
        RefuseH2Preface::new(server).read_to_end(&mut out).await.unwrap();
        drop(writer.await.unwrap());
        out
    }

    #[tokio::test]
    async fn requests_pass_unchanged() {
        let req: &[u8] = b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n";
        assert_eq!(read_through(&[b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n"]).await, req);
        // Held while they could be the preface, then handed on in order.
        let pri: &[u8] = b"PRI /x HTTP/1.1\r\nhost: x\r\n\r\n";
        assert_eq!(read_through(&[b"P", b"RI", b" /x HTTP/1.1\r\nhost: x\r\n\r\n"]).await, pri);
        assert_eq!(read_through(&[b"PUT /notes/a HTTP/1.1\r\n", b"\r\n"]).await, b"PUT /notes/a HTTP/1.1\r\n\r\n");
        // A prefix of the preface, then the end of the stream: handed on, then the end.
        assert_eq!(read_through(&[b"PRI * HTTP/2"]).await, b"PRI * HTTP/2");
        assert_eq!(read_through(&[]).await, b"");
    }

    #[tokio::test]
    async fn the_preface_is_answered_505_in_json() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            RefuseH2Preface::new(server).read_to_end(&mut got).await.unwrap();
            got
        });
        // The preface and an empty SETTINGS frame, as a client sends them.
        client.write_all(H2_PREFACE).await.unwrap();
        client.write_all(b"\0\0\0\x04\0\0\0\0\0").await.unwrap();
        let mut answer = String::new();
        client.read_to_string(&mut answer).await.unwrap();
        drop(client);
        assert!(reader.await.unwrap().is_empty(), "the reader sees only the end of the stream");
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 505 HTTP Version Not Supported\r\n"), "{answer}");
        assert!(head.contains("\r\nconnection: close"), "{answer}");
        assert!(head.contains(&format!("\r\ncontent-length: {}", body.len())), "{answer}");
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], "http_version_not_supported");
    }
}
