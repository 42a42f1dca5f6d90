//! Any HTTP/2 `:authority` on the unix socket.
//!
//! gRPC clients send what they were given as the target's authority: kubelet before 1.26,
//! grpc-java and `csc` send the socket path (`/var/lib/kubelet/plugins/<driver>/csi.sock`),
//! grpcio since 1.57 the percent-encoded path, newer kubelets `localhost`. The HTTP/2 server
//! under tonic (h2) parses `:authority` as a URI authority and resets the stream with
//! PROTOCOL_ERROR when it is not one, so kubelet's registration never completes. A node plugin
//! on a unix socket has no use for the authority: [`AnyAuthority`] wraps each accepted
//! connection and rewrites every request's `:authority` to `localhost` before h2 sees it.
//!
//! It reads the client's byte stream frame by frame: the connection preface and every frame
//! other than HEADERS/CONTINUATION pass through unchanged; a header block (a HEADERS frame and
//! its CONTINUATIONs) is decoded with the connection's HPACK decoder, the authority replaced,
//! and re-encoded with an HPACK encoder whose dynamic table the server's decoder mirrors (both
//! start at the protocol's default 4096 bytes, which h2's server keeps). What the server writes
//! back is untouched. A block that does not decode is passed on as it came, and the rewrite
//! stops for that connection: h2 then reports the compression error itself.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const PREFACE_LEN: usize = 24;
const FRAME_HEADER_LEN: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// SETTINGS_MAX_FRAME_SIZE's initial value: what the server accepts unless it says more.
const MAX_FRAME: usize = 16_384;
/// What replaces the client's authority.
pub const AUTHORITY: &[u8] = b"localhost";

/// A header block being collected: HEADERS flags and priority, stream, fragments so far.
struct Block {
    stream: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
    /// The frames as received, for the pass-through when the block does not decode.
    raw: Vec<u8>,
}

/// The client-to-server rewriting state of one connection (sans-IO: bytes in, bytes out).
pub struct Rewriter {
    preface_left: usize,
    pending: Vec<u8>,
    block: Option<Block>,
    decoder: hpack::Decoder<'static>,
    encoder: hpack::Encoder<'static>,
    /// Off after a block that did not decode: bytes pass through unchanged from then on.
    active: bool,
    /// Requests whose authority was replaced (for the log and tests).
    pub rewritten: u64,
}

impl Default for Rewriter {
    fn default() -> Self {
        Self {
            preface_left: PREFACE_LEN,
            pending: Vec::new(),
            block: None,
            decoder: hpack::Decoder::new(),
            encoder: hpack::Encoder::new(),
            active: true,
            rewritten: 0,
        }
    }
}

fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = payload.len() as u32;
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
}

impl Rewriter {
    /// Feed bytes read from the client; append what the server must read to `out`.
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        if !self.active {
            out.extend_from_slice(input);
            return;
        }
        if self.preface_left > 0 {
            let n = self.preface_left.min(input.len());
            out.extend_from_slice(&input[..n]);
            self.preface_left -= n;
            input = &input[n..];
        }
        self.pending.extend_from_slice(input);
        let mut at = 0;
        while self.active {
            let rest = &self.pending[at..];
            if rest.len() < FRAME_HEADER_LEN {
                break;
            }
            let len = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
            if len > MAX_FRAME {
                // Over the size the server allows: h2 refuses it itself; never buffer it.
                self.active = false;
                if let Some(b) = self.block.take() {
                    out.extend_from_slice(&b.raw);
                }
                break;
            }
            if rest.len() < FRAME_HEADER_LEN + len {
                break;
            }
            let (kind, flags) = (rest[3], rest[4]);
            let stream = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]) & 0x7fff_ffff;
            let whole = rest[..FRAME_HEADER_LEN + len].to_vec();
            at += FRAME_HEADER_LEN + len;
            self.frame(kind, flags, stream, whole, out);
        }
        self.pending.drain(..at);
        if !self.active {
            // Whatever is left goes through as it is.
            out.append(&mut self.pending);
        }
    }

    /// The client closed its side: pass on anything incomplete as it is.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if let Some(b) = self.block.take() {
            out.extend_from_slice(&b.raw);
        }
        out.append(&mut self.pending);
    }

    fn frame(&mut self, kind: u8, flags: u8, stream: u32, whole: Vec<u8>, out: &mut Vec<u8>) {
        let payload = &whole[FRAME_HEADER_LEN..];
        match (kind, self.block.as_mut()) {
            (HEADERS, None) => {
                let mut p = payload;
                let mut pad = 0usize;
                if flags & PADDED != 0 {
                    let Some((&n, r)) = p.split_first() else {
                        return self.give_up(whole, out);
                    };
                    pad = n as usize;
                    p = r;
                }
                let mut priority = None;
                if flags & PRIORITY != 0 {
                    if p.len() < 5 {
                        return self.give_up(whole, out);
                    }
                    priority = Some([p[0], p[1], p[2], p[3], p[4]]);
                    p = &p[5..];
                }
                if p.len() < pad {
                    return self.give_up(whole, out);
                }
                let fragment = p[..p.len() - pad].to_vec();
                self.block = Some(Block {
                    stream,
                    end_stream: flags & END_STREAM != 0,
                    priority,
                    fragment,
                    raw: whole.clone(),
                });
                if flags & END_HEADERS != 0 {
                    self.complete(out);
                }
            }
            (CONTINUATION, Some(b)) if b.stream == stream => {
                b.fragment.extend_from_slice(payload);
                b.raw.extend_from_slice(&whole);
                if flags & END_HEADERS != 0 {
                    self.complete(out);
                }
            }
            // Anything else inside a header block is a protocol error h2 reports itself.
            (_, Some(_)) => self.give_up(whole, out),
            _ => out.extend_from_slice(&whole),
        }
    }

    fn give_up(&mut self, whole: Vec<u8>, out: &mut Vec<u8>) {
        if let Some(b) = self.block.take() {
            out.extend_from_slice(&b.raw);
        }
        out.extend_from_slice(&whole);
        self.active = false;
        tracing::debug!("an HTTP/2 frame sequence the authority rewrite does not follow: passing the connection through");
    }

    fn complete(&mut self, out: &mut Vec<u8>) {
        let Some(b) = self.block.take() else { return };
        let headers = match self.decoder.decode(&b.fragment) {
            Ok(h) => h,
            Err(e) => {
                tracing::debug!(error = ?e, "a header block did not decode: passing the connection through");
                out.extend_from_slice(&b.raw);
                self.active = false;
                return;
            }
        };
        let mut replaced = false;
        let headers: Vec<(Vec<u8>, Vec<u8>)> = headers
            .into_iter()
            .map(|(n, v)| {
                if n == b":authority" && v != AUTHORITY {
                    replaced = true;
                    (n, AUTHORITY.to_vec())
                } else {
                    (n, v)
                }
            })
            .collect();
        if replaced {
            self.rewritten += 1;
        }
        let block = self
            .encoder
            .encode(headers.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
        // HEADERS (with the priority it came with), then CONTINUATIONs, each within the
        // server's initial frame size.
        let first_room = MAX_FRAME - if b.priority.is_some() { 5 } else { 0 };
        let (first, mut rest) = block.split_at(block.len().min(first_room));
        let mut flags = if b.end_stream { END_STREAM } else { 0 };
        if rest.is_empty() {
            flags |= END_HEADERS;
        }
        let mut payload = Vec::with_capacity(first.len() + 5);
        if let Some(p) = b.priority {
            flags |= PRIORITY;
            payload.extend_from_slice(&p);
        }
        payload.extend_from_slice(first);
        frame(out, HEADERS, flags, b.stream, &payload);
        while !rest.is_empty() {
            let (chunk, r) = rest.split_at(rest.len().min(MAX_FRAME));
            rest = r;
            let flags = if rest.is_empty() { END_HEADERS } else { 0 };
            frame(out, CONTINUATION, flags, b.stream, chunk);
        }
    }
}

/// An accepted connection whose requests reach the server with `:authority: localhost`.
pub struct AnyAuthority<S> {
    inner: S,
    rewriter: Rewriter,
    ready: Vec<u8>,
    ready_at: usize,
    eof: bool,
}

impl<S> AnyAuthority<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            rewriter: Rewriter::default(),
            ready: Vec::new(),
            ready_at: 0,
            eof: false,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AnyAuthority<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.ready_at < this.ready.len() {
                let n = buf.remaining().min(this.ready.len() - this.ready_at);
                buf.put_slice(&this.ready[this.ready_at..this.ready_at + n]);
                this.ready_at += n;
                if this.ready_at == this.ready.len() {
                    this.ready.clear();
                    this.ready_at = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            let mut raw = [0u8; 16 * 1024];
            let mut rb = ReadBuf::new(&mut raw);
            match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) if rb.filled().is_empty() => {
                    this.eof = true;
                    this.rewriter.finish(&mut this.ready);
                }
                Poll::Ready(Ok(())) => this.rewriter.feed(rb.filled(), &mut this.ready),
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AnyAuthority<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected
    for AnyAuthority<S>
{
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(enc: &mut hpack::Encoder<'static>, authority: &[u8]) -> Vec<u8> {
        let block = enc.encode(vec![
            (&b":method"[..], &b"POST"[..]),
            (b":scheme", b"http"),
            (b":path", b"/csi.v1.Identity/GetPluginInfo"),
            (b":authority", authority),
            (b"content-type", b"application/grpc"),
        ]);
        let mut out = Vec::new();
        // Split the block over HEADERS + CONTINUATION, padded and with priority, to walk
        // every path.
        let (a, b) = block.split_at(block.len() / 2);
        let mut p = vec![2u8];
        p.extend_from_slice(&[0, 0, 0, 0, 16]);
        p.extend_from_slice(a);
        p.extend_from_slice(&[0, 0]);
        frame(&mut out, HEADERS, PADDED | PRIORITY, 1, &p);
        frame(&mut out, CONTINUATION, END_HEADERS, 1, b);
        frame(&mut out, 0x0, END_STREAM, 1, &[0, 0, 0, 0, 0]);
        out
    }

    fn headers_of(bytes: &[u8]) -> Vec<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut dec = hpack::Decoder::new();
        let mut at = PREFACE_LEN;
        let mut found = Vec::new();
        let mut block = Vec::new();
        while at + FRAME_HEADER_LEN <= bytes.len() {
            let len = u32::from_be_bytes([0, bytes[at], bytes[at + 1], bytes[at + 2]]) as usize;
            let (kind, flags) = (bytes[at + 3], bytes[at + 4]);
            let mut p = &bytes[at + FRAME_HEADER_LEN..at + FRAME_HEADER_LEN + len];
            if kind == HEADERS {
                assert_eq!(flags & PADDED, 0);
                if flags & PRIORITY != 0 {
                    p = &p[5..];
                }
            }
            if kind == HEADERS || kind == CONTINUATION {
                block.extend_from_slice(p);
                if flags & END_HEADERS != 0 {
                    found.push(dec.decode(&block).unwrap());
                    block.clear();
                }
            }
            at += FRAME_HEADER_LEN + len;
        }
        found
    }

    #[test]
    fn every_authority_form_reaches_the_server_as_localhost() {
        let mut enc = hpack::Encoder::new();
        let mut input = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        let forms: [&[u8]; 4] = [
            b"/var/lib/kubelet/plugins/rds.csi.srvlab.io/csi.sock",
            b"%2Fvar%2Flib%2Fkubelet%2Fplugins%2Frds.csi.srvlab.io%2Fcsi.sock",
            b"localhost",
            b"/var/lib/kubelet/plugins/rds.csi.srvlab.io/csi.sock",
        ];
        for f in forms {
            input.extend(request(&mut enc, f));
        }
        // Fed in awkward pieces, as a socket may deliver them.
        let mut rw = Rewriter::default();
        let mut out = Vec::new();
        for chunk in input.chunks(7) {
            rw.feed(chunk, &mut out);
        }
        rw.finish(&mut out);
        assert_eq!(&out[..PREFACE_LEN], &input[..PREFACE_LEN]);
        let blocks = headers_of(&out);
        assert_eq!(blocks.len(), 4);
        for h in &blocks {
            let auth = h.iter().find(|(n, _)| n == b":authority").unwrap();
            assert_eq!(auth.1, AUTHORITY);
            assert!(h
                .iter()
                .any(|(n, v)| n == b":path" && v == b"/csi.v1.Identity/GetPluginInfo"));
        }
        assert_eq!(rw.rewritten, 3);
    }

    #[test]
    fn a_frame_over_the_size_limit_is_passed_on_not_buffered() {
        let mut input = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        let mut big = Vec::new();
        frame(&mut big, 0x0, 0, 1, &vec![0u8; MAX_FRAME + 1]);
        input.extend_from_slice(&big[..FRAME_HEADER_LEN + 10]);
        let mut rw = Rewriter::default();
        let mut out = Vec::new();
        rw.feed(&input, &mut out);
        assert_eq!(out, input, "everything so far reaches the server at once");
    }

    #[test]
    fn a_block_that_does_not_decode_passes_through_unchanged() {
        let mut input = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        let mut bad = Vec::new();
        frame(&mut bad, HEADERS, END_HEADERS, 1, &[0xff, 0xff, 0xff, 0xff]);
        input.extend_from_slice(&bad);
        let mut rw = Rewriter::default();
        let mut out = Vec::new();
        rw.feed(&input, &mut out);
        rw.finish(&mut out);
        assert_eq!(out, input);
    }
}
