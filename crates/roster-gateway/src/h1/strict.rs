//! The connection hyper serves, read strictly: every HTTP/1.1 request head
//! on it passes the fast path's RFC 9112 checks (`super::request`) before
//! hyper sees a byte of it, so both engines refuse the same heads.
//!
//! The reader follows the stream: a head (checked whole), then its body by
//! `Content-Length` or chunked framing, then the next head. A head that
//! fails gets what the fast path answers (400, 408 or 431 and a closed
//! connection): hyper is told the client has finished (end of stream, with
//! half-close on, so an answer in flight still goes out), and the refusal
//! is written when hyper shuts the connection. HTTP/2 (the prior-knowledge
//! preface) and tunnels (`Upgrade`, `CONNECT`) pass through unread.

use super::ChunkedEnd;
use super::request::{BodyFraming, Parsed, parse_request};
use crate::pipeline::ErrorReply;
use bytes::{Buf, BytesMut};
use http::StatusCode;
use std::io::{self, Write as _};
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;

enum State {
    Head,
    Body(u64),
    Chunked(ChunkedEnd),
    Passthrough,
}

/// A client connection for hyper, starting with the bytes the fast path
/// had already read.
pub struct StrictIo {
    stream: TcpStream,
    /// Read from the client, not yet checked or given to hyper.
    pending: BytesMut,
    /// Checked, for hyper to read.
    ready: BytesMut,
    state: State,
    max_head: usize,
    header_timeout: Duration,
    head_deadline: Option<Pin<Box<Sleep>>>,
    /// The answer to a refused head, and how much of it is written.
    refusal: Option<(Vec<u8>, usize)>,
}

impl StrictIo {
    pub fn new(prefix: BytesMut, stream: TcpStream, max_head: usize, header_timeout: Duration) -> StrictIo {
        let state = if prefix.starts_with(b"PRI ") { State::Passthrough } else { State::Head };
        StrictIo {
            stream,
            pending: prefix,
            ready: BytesMut::new(),
            state,
            max_head,
            header_timeout,
            head_deadline: None,
            refusal: None,
        }
    }

    fn refuse(&mut self, status: StatusCode, why: &str) {
        tracing::debug!(%status, why, "request refused on the hyper path");
        let reply = ErrorReply::plain(status, why);
        let mut text = Vec::with_capacity(160 + reply.body.len());
        let _ = write!(text, "HTTP/1.1 {} {}\r\n", status.as_u16(), status.canonical_reason().unwrap_or(""));
        for (name, value) in &reply.headers {
            super::request::header_line(&mut text, name.as_bytes(), value.as_bytes());
        }
        let _ = write!(text, "content-length: {}\r\nconnection: close\r\n\r\n", reply.body.len());
        text.extend_from_slice(&reply.body);
        self.refusal = Some((text, 0));
        self.pending.clear();
    }

    /// Moves what is checked from `pending` to `ready`, as far as it can.
    fn check(&mut self) {
        loop {
            if self.pending.is_empty() {
                return;
            }
            match &mut self.state {
                State::Passthrough => {
                    let all = self.pending.split();
                    self.ready.unsplit(all);
                    return;
                }
                State::Body(left) => {
                    let n = (*left).min(self.pending.len() as u64);
                    *left -= n;
                    if *left == 0 {
                        self.state = State::Head;
                    }
                    let part = self.pending.split_to(n as usize);
                    self.ready.unsplit(part);
                }
                State::Chunked(end) => match end.feed(&self.pending) {
                    Ok(Some(n)) => {
                        let part = self.pending.split_to(n);
                        self.ready.unsplit(part);
                        self.state = State::Head;
                    }
                    Ok(None) => {
                        let all = self.pending.split();
                        self.ready.unsplit(all);
                    }
                    Err(()) => {
                        self.refuse(StatusCode::BAD_REQUEST, "malformed chunked body");
                        return;
                    }
                },
                State::Head => {
                    let (head_len, next) = match parse_request(&self.pending) {
                        Parsed::Complete(head) => (head.head_len, State::Body(head.content_length.unwrap_or(0))),
                        Parsed::Hyper { head_len, body: BodyFraming::Length(n) } => (head_len, State::Body(n)),
                        Parsed::Hyper { head_len, body: BodyFraming::Chunked } => {
                            (head_len, State::Chunked(ChunkedEnd::default()))
                        }
                        Parsed::Hyper { head_len, body: BodyFraming::Tunnel } => (head_len, State::Passthrough),
                        Parsed::Partial if self.pending.len() >= self.max_head => {
                            self.refuse(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "request head too large");
                            return;
                        }
                        Parsed::Partial => {
                            if self.head_deadline.is_none() {
                                self.head_deadline = Some(Box::pin(tokio::time::sleep(self.header_timeout)));
                            }
                            return;
                        }
                        Parsed::TooManyHeaders => {
                            self.refuse(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "too many header fields");
                            return;
                        }
                        Parsed::Bad(why) => {
                            self.refuse(StatusCode::BAD_REQUEST, why);
                            return;
                        }
                    };
                    if head_len > self.max_head {
                        self.refuse(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "request head too large");
                        return;
                    }
                    self.head_deadline = None;
                    let head = self.pending.split_to(head_len);
                    self.ready.unsplit(head);
                    self.state = next;
                }
            }
        }
    }
}

impl AsyncRead for StrictIo {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.ready.is_empty() {
                let n = this.ready.len().min(out.remaining());
                out.put_slice(&this.ready[..n]);
                this.ready.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.refusal.is_some() {
                // hyper sees the client finish; the refusal goes out at shutdown.
                return Poll::Ready(Ok(()));
            }
            this.check();
            if !this.ready.is_empty() || this.refusal.is_some() {
                continue;
            }
            if matches!(this.state, State::Passthrough) && this.pending.is_empty() {
                return Pin::new(&mut this.stream).poll_read(cx, out);
            }
            let mut chunk = [0u8; 8192];
            let mut buf = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.stream).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) => {
                    if buf.filled().is_empty() {
                        // The client is done; hyper makes of a cut head what it will.
                        let rest = this.pending.split();
                        this.ready.unsplit(rest);
                        if this.ready.is_empty() {
                            return Poll::Ready(Ok(()));
                        }
                        continue;
                    }
                    this.pending.extend_from_slice(buf.filled());
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    if let Some(deadline) = this.head_deadline.as_mut()
                        && deadline.as_mut().poll(cx).is_ready()
                    {
                        this.refuse(StatusCode::REQUEST_TIMEOUT, "request head not received in time");
                        continue;
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

impl AsyncWrite for StrictIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some((text, written)) = &mut this.refusal {
            while *written < text.len() {
                match ready!(Pin::new(&mut this.stream).poll_write(cx, &text[*written..])) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => *written += n,
                }
            }
            *written = text.len();
        }
        Pin::new(&mut this.stream).poll_shutdown(cx)
    }
}

impl Drop for StrictIo {
    fn drop(&mut self) {
        // hyper ended without a shutdown (an error, a timeout): the refusal
        // is small and the socket's buffer takes it.
        if let Some((text, written)) = &self.refusal
            && *written < text.len()
        {
            let _ = self.stream.try_write(&text[*written..]);
        }
    }
}
