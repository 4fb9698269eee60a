//! A minimal HTTP/1.1 client: one request per connection (`Connection: close`), bodies by
//! Content-Length, chunked or until close, and server-sent events on top. The workspace's one
//! HTTP/SSE client: the benchmark's OpenAI backend and the router's HTTP tests both use it.
//!
//! Why not hyper/reqwest: the benchmark needs plain HTTP and a byte stream, and the workspace
//! builds hyper without its client features; this keeps the dependency tree as it is. A fresh
//! connection per request is also what vLLM's `benchmark_serving` does (one aiohttp session per
//! request). HTTPS is not supported: point the benchmark at the server, not a TLS proxy.

use std::io;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// `http://host:port[/prefix]`, parsed once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// `host:port`, for connecting and the Host header.
    pub authority: String,
    /// Path prefix without a trailing slash (`""` or e.g. `/proxy`).
    pub prefix: String,
    /// Sent as `Authorization: Bearer …` with every request (a server's `--api-key`).
    pub bearer: Option<String>,
}

impl Target {
    /// Accepts `http://host[:port][/prefix]`; the port defaults to 80 and a trailing `/v1` is
    /// dropped (so both vLLM-style base URLs and OpenAI-style `…/v1` URLs work).
    pub fn parse(url: &str) -> Result<Target, String> {
        if url.starts_with("https://") {
            return Err(format!("{url}: HTTPS is not supported; give the server's plain http:// address"));
        }
        let rest = url.strip_prefix("http://").unwrap_or(url);
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.is_empty() {
            return Err(format!("{url}: no host"));
        }
        let authority = if authority.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        let prefix = path.trim_end_matches('/');
        let prefix = prefix.strip_suffix("/v1").unwrap_or(prefix).to_string();
        Ok(Target { authority, prefix, bearer: None })
    }

    /// Sends `method path` (prefixed) with an optional JSON body on a fresh connection.
    pub async fn request(&self, method: &str, path: &str, json: Option<&[u8]>) -> io::Result<Response> {
        self.send(method, path, json, json.map(|_| "application/json")).await
    }

    /// Sends `method path` (prefixed) with an optional body of any (or no) content type.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        content_type: Option<&str>,
    ) -> io::Result<Response> {
        let mut stream = TcpStream::connect(&self.authority).await?;
        stream.set_nodelay(true)?;
        let mut head = format!(
            "{method} {}{path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nAccept: */*\r\n",
            self.prefix, self.authority
        );
        if let Some(key) = &self.bearer {
            head.push_str(&format!("Authorization: Bearer {key}\r\n"));
        }
        if let Some(ct) = content_type {
            head.push_str(&format!("Content-Type: {ct}\r\n"));
        }
        if let Some(body) = body {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        out.extend_from_slice(body.unwrap_or_default());
        stream.write_all(&out).await?;
        Response::read_head(BufReader::new(stream)).await
    }
}

fn bad(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

enum BodyKind {
    Chunked,
    Length(usize),
    UntilClose,
}

/// A response whose body is read as it arrives.
pub struct Response {
    pub status: u16,
    /// Header names and values, in order.
    pub headers: Vec<(String, String)>,
    reader: BufReader<TcpStream>,
    kind: BodyKind,
    done: bool,
}

impl Response {
    async fn read_head(mut reader: BufReader<TcpStream>) -> io::Result<Response> {
        let mut line = String::new();
        reader.read_line(&mut line).await?;
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad(format!("bad status line {line:?}")))?;
        let mut kind = BodyKind::UntilClose;
        let mut headers = Vec::new();
        loop {
            line.clear();
            if reader.read_line(&mut line).await? == 0 {
                return Err(bad("connection closed in the headers"));
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let Some((name, value)) = l.split_once(':') else { continue };
            let value = value.trim();
            headers.push((name.trim().to_string(), value.to_string()));
            if name.eq_ignore_ascii_case("transfer-encoding") && value.to_ascii_lowercase().contains("chunked") {
                kind = BodyKind::Chunked;
            } else if name.eq_ignore_ascii_case("content-length") && !matches!(kind, BodyKind::Chunked) {
                kind = BodyKind::Length(value.parse().map_err(|_| bad(format!("bad Content-Length {value:?}")))?);
            }
        }
        Ok(Response { status, headers, reader, kind, done: false })
    }

    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The next piece of the body, or None at its end.
    pub async fn next_bytes(&mut self) -> io::Result<Option<Vec<u8>>> {
        if self.done {
            return Ok(None);
        }
        let mut line = String::new();
        match &mut self.kind {
            BodyKind::Chunked => {
                self.reader.read_line(&mut line).await?;
                let size_hex = line.trim().split(';').next().unwrap_or_default();
                let size = usize::from_str_radix(size_hex, 16).map_err(|_| bad(format!("bad chunk size {line:?}")))?;
                if size == 0 {
                    // Trailers, then the blank line.
                    loop {
                        line.clear();
                        if self.reader.read_line(&mut line).await? == 0 || line.trim().is_empty() {
                            break;
                        }
                    }
                    self.done = true;
                    return Ok(None);
                }
                let mut buf = vec![0; size];
                self.reader.read_exact(&mut buf).await?;
                line.clear();
                self.reader.read_line(&mut line).await?;
                Ok(Some(buf))
            }
            BodyKind::Length(left) => {
                if *left == 0 {
                    self.done = true;
                    return Ok(None);
                }
                let mut buf = vec![0; (*left).min(1 << 16)];
                let n = self.reader.read(&mut buf).await?;
                if n == 0 {
                    return Err(bad("connection closed before the body ended"));
                }
                *left -= n;
                buf.truncate(n);
                Ok(Some(buf))
            }
            BodyKind::UntilClose => {
                let mut buf = vec![0; 1 << 16];
                let n = self.reader.read(&mut buf).await?;
                self.done = n == 0;
                buf.truncate(n);
                Ok((n > 0).then_some(buf))
            }
        }
    }

    /// The whole (remaining) body.
    pub async fn bytes(mut self) -> io::Result<Vec<u8>> {
        let mut all = Vec::new();
        while let Some(b) = self.next_bytes().await? {
            all.extend(b);
        }
        Ok(all)
    }

    /// The whole (remaining) body as UTF-8 text.
    pub async fn text(self) -> io::Result<String> {
        String::from_utf8(self.bytes().await?).map_err(|e| bad(format!("the body is not UTF-8: {e}")))
    }

    /// The body as server-sent events.
    pub fn events(self) -> Events {
        Events { response: self, buf: Vec::new() }
    }
}

/// Server-sent events: yields each event's `data` (multi-line data joined with `\n`), skipping
/// events without data (keep-alive comments).
pub struct Events {
    response: Response,
    buf: Vec<u8>,
}

impl Events {
    pub async fn next_data(&mut self) -> io::Result<Option<String>> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let event: Vec<u8> = self.buf.drain(..i + 2).collect();
                let event = String::from_utf8_lossy(&event);
                let data: Vec<&str> = event
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(|d| d.strip_prefix(' ').unwrap_or(d))
                    .collect();
                if !data.is_empty() {
                    return Ok(Some(data.join("\n")));
                }
                continue;
            }
            match self.response.next_bytes().await? {
                // CRLF line ends are legal in SSE; dropping CRs leaves one separator to find.
                Some(b) => self.buf.extend(b.into_iter().filter(|&c| c != b'\r')),
                None => return Ok(None),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_with_defaults_and_prefixes() {
        let t = |a: &str, p: &str| Ok(Target { authority: a.into(), prefix: p.into(), bearer: None });
        assert_eq!(Target::parse("http://127.0.0.1:8000"), t("127.0.0.1:8000", ""));
        assert_eq!(Target::parse("http://127.0.0.1:8000/"), t("127.0.0.1:8000", ""));
        assert_eq!(Target::parse("http://localhost:8000/v1"), t("localhost:8000", ""));
        assert_eq!(Target::parse("localhost:9000/proxy/v1/"), t("localhost:9000", "/proxy"));
        assert_eq!(Target::parse("http://example.com"), t("example.com:80", ""));
        assert_eq!(Target::parse("http://[::1]:8000"), t("[::1]:8000", ""));
        assert!(Target::parse("https://api.openai.com").is_err());
        assert!(Target::parse("http:///v1").is_err());
    }

    /// A scripted server: answers one connection with `reply`, written `piece` bytes at a time
    /// so framing and events split anywhere.
    async fn serve_once(reply: String, piece: usize) -> Target {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0; 4096];
            let _ = s.read(&mut buf).await.unwrap();
            for part in reply.as_bytes().chunks(piece) {
                s.write_all(part).await.unwrap();
                s.flush().await.unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        });
        Target { authority: addr.to_string(), prefix: String::new(), bearer: None }
    }

    fn chunk(s: &str) -> String {
        format!("{:x}\r\n{s}\r\n", s.len())
    }

    #[tokio::test]
    async fn chunked_sse_split_anywhere_gives_whole_events() {
        let body = [
            chunk("data: {\"a\":1}\r\n\r\n"),
            chunk(": keep-alive\n\nd"),
            chunk("ata: {\"b\":2}\n"),
            chunk("\ndata: [DONE]\n\n"),
        ];
        let reply = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n{}0\r\n\r\n",
            body.concat()
        );
        for piece in [1, 7, 4096] {
            let target = serve_once(reply.clone(), piece).await;
            let mut events = target.request("POST", "/v1/completions", Some(b"{}")).await.unwrap().events();
            let mut got = Vec::new();
            while let Some(d) = events.next_data().await.unwrap() {
                got.push(d);
            }
            assert_eq!(got, ["{\"a\":1}", "{\"b\":2}", "[DONE]"], "written {piece} bytes at a time");
        }
    }

    #[tokio::test]
    async fn content_length_bodies_and_status() {
        let target = serve_once("HTTP/1.1 404 Not Found\r\nContent-Length: 5\r\n\r\nnope!".into(), 3).await;
        let r = target.request("GET", "/v1/models", None).await.unwrap();
        assert_eq!(r.status, 404);
        assert_eq!(r.header("content-length"), Some("5"));
        assert_eq!(r.bytes().await.unwrap(), b"nope!");
    }
}
