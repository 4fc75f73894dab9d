//! JSON bodies for the answers hyper gives by itself.
//!
//! A request hyper cannot parse (a URI past its 64 KiB limit, a header block past its buffer, a
//! malformed request line) never reaches the router: hyper answers it with a bare `400`, `414`
//! or `431` (`connection: close`, `content-length: 0`) and closes the connection. This adapter
//! sits on the connection's write side and gives exactly those answers the service's error
//! shape, `{"error": {"code", "message"}}`, so that every rejection a client sees is JSON.
//!
//! How it knows them: a response head of status 400, 414 or 431 with `content-length: 0` and
//! `connection: close`, written on its own. Every answer the router gives with those statuses
//! has a JSON body, so none of its answers matches; everything else passes through untouched.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// An I/O stream whose parse-error answers get a JSON body.
pub struct JsonParseErrors<T> {
    inner: T,
    /// A rewritten answer not yet fully written, and how much of it was.
    pending: Option<(Bytes, usize)>,
}

impl<T> JsonParseErrors<T> {
    pub fn new(inner: T) -> Self {
        Self { inner, pending: None }
    }
}

/// The code and message of a parse-error status hyper answers itself.
fn error_of(status: &[u8]) -> Option<(&'static str, &'static str)> {
    match status {
        b"400" => Some(("malformed_request", "the request could not be parsed as HTTP/1.1")),
        b"414" => Some(("uri_too_long", "the URI is over 64 KiB")),
        b"431" => Some(("headers_too_large", "the request's header block is too large")),
        _ => None,
    }
}

/// The answer `head` with a JSON body, when `head` is one of hyper's bare parse-error answers.
fn rewrite(head: &[u8]) -> Option<Bytes> {
    const EMPTY: &[u8] = b"\r\ncontent-length: 0\r\n";
    let status = head.strip_prefix(b"HTTP/1.1 ")?.get(..3)?;
    let (code, message) = error_of(status)?;
    if !head.ends_with(b"\r\n\r\n") || !contains(head, b"\r\nconnection: close\r\n") {
        return None;
    }
    let at = find(head, EMPTY)?;
    let body = serde_json::json!({ "error": { "code": code, "message": message } }).to_string();
    let mut out = Vec::with_capacity(head.len() + body.len() + 64);
    out.extend_from_slice(&head[..at]);
    out.extend_from_slice(
        format!("\r\ncontent-type: application/json\r\ncontent-length: {}\r\n", body.len()).as_bytes(),
    );
    out.extend_from_slice(&head[at + EMPTY.len()..]);
    out.extend_from_slice(body.as_bytes());
    Some(out.into())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    find(hay, needle).is_some()
}

impl<T: AsyncWrite + Unpin> JsonParseErrors<T> {
    /// Writes what is left of a rewritten answer.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, done)) = &mut self.pending {
            if *done == bytes.len() {
                self.pending = None;
                break;
            }
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &bytes[*done..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *done += n;
        }
        Poll::Ready(Ok(()))
    }

    /// Takes `buf` as written when it is an answer to rewrite (the rewrite goes out on the next
    /// writes and flushes).
    fn poll_take(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Option<Poll<io::Result<usize>>> {
        let rewritten = rewrite(buf)?;
        self.pending = Some((rewritten, 0));
        Some(match self.poll_drain(cx) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            // Taken either way: the rest is written by the flush that follows.
            _ => Poll::Ready(Ok(buf.len())),
        })
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for JsonParseErrors<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for JsonParseErrors<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_drain(cx))?;
        if let Some(taken) = this.poll_take(cx, buf) {
            return taken;
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_drain(cx))?;
        let mut nonempty = bufs.iter().filter(|b| !b.is_empty());
        if let (Some(only), None) = (nonempty.next(), nonempty.next()) {
            if let Some(taken) = this.poll_take(cx, only) {
                return taken;
            }
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const BARE_414: &[u8] =
        b"HTTP/1.1 414 URI Too Long\r\nconnection: close\r\ncontent-length: 0\r\ndate: Thu, 03 Dec 2026 12:55:12 GMT\r\n\r\n";

    async fn through(writes: &[&[u8]]) -> String {
        let (a, mut b) = tokio::io::duplex(1 << 16);
        let mut w = JsonParseErrors::new(a);
        for chunk in writes {
            w.write_all(chunk).await.unwrap();
        }
        w.shutdown().await.unwrap();
        drop(w);
        let mut out = String::new();
        b.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn hypers_bare_parse_error_answers_get_a_json_body() {
        let out = through(&[BARE_414]).await;
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 414 URI Too Long\r\n"), "{out}");
        assert!(head.contains("\r\nconnection: close\r\n") && head.contains("\r\ndate: "), "{out}");
        assert!(head.contains("\r\ncontent-type: application/json\r\n"), "{out}");
        assert!(head.contains(&format!("\r\ncontent-length: {}\r\n", body.len())), "{out}");
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], "uri_too_long");
        for (status, code) in
            [("400 Bad Request", "malformed_request"), ("431 Request Header Fields Too Large", "headers_too_large")]
        {
            let bare = format!("HTTP/1.1 {status}\r\nconnection: close\r\ncontent-length: 0\r\n\r\n");
            let out = through(&[bare.as_bytes()]).await;
            assert!(out.contains(&format!("\"code\":\"{code}\"")), "{out}");
        }
    }

    #[tokio::test]
    async fn every_other_answer_passes_untouched() {
        let cases: Vec<&[u8]> = vec![
            // The router's own JSON 414 and 400.
            b"HTTP/1.1 414 URI Too Long\r\ncontent-type: application/json\r\ncontent-length: 9\r\n\r\n{\"e\":\"x\"}",
            b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 2\r\n\r\n{}",
            // Empty answers of other statuses, and a keep-alive 400 with no body.
            b"HTTP/1.1 204 No Content\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n",
            // A head and its body in one write.
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        ];
        for c in cases {
            assert_eq!(through(&[c]).await.as_bytes(), c);
        }
        // Split writes pass as they are.
        assert_eq!(through(&[&BARE_414[..20], &BARE_414[20..]]).await.as_bytes(), BARE_414);
    }
}
