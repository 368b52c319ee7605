//! A small synchronous HTTP/1.1 server on `std::net` only: a fixed pool of threads, each
//! accepting on the shared listener and serving one connection at a time (keep-alive, bounded
//! head and body, a read deadline per request). Malformed input gets a 4xx answer and the
//! connection is closed; nothing a client sends can panic a thread or grow memory past the
//! limits. Enough for the demo node and for embedding tribecast in a server of your own; a
//! production server would put a real HTTP stack here.
#![allow(dead_code)] // shared by http_node and cluster_demo, which use different parts

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Bounds on what one client may send and how long it may take.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Request line and headers together.
    pub max_head_bytes: usize,
    pub max_body_bytes: usize,
    pub max_headers: usize,
    /// Time to receive one whole request once its first byte arrived, and to write an answer.
    pub request_timeout: Duration,
    /// How long an idle keep-alive connection holds a pool thread.
    pub keep_alive: Duration,
    /// Requests served on one connection before it is closed.
    pub max_requests_per_connection: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head_bytes: 8 * 1024,
            max_body_bytes: 64 * 1024,
            max_headers: 64,
            request_timeout: Duration::from_secs(10),
            keep_alive: Duration::from_secs(2),
            max_requests_per_connection: 100,
        }
    }
}

/// A parsed request.
#[derive(Debug)]
pub struct Request {
    pub method: String,
    /// The path part of the request target, not decoded.
    pub path: String,
    /// What follows `?`, not decoded; empty when none.
    pub query: String,
    /// HTTP/1.0 or HTTP/1.1.
    pub http10: bool,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The value of cookie `name` from any `Cookie` header.
    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("cookie"))
            .flat_map(|(_, v)| v.split(';'))
            .filter_map(|kv| kv.trim().split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.trim_matches('"'))
    }

    fn keep_alive(&self) -> bool {
        let conn = self.header("connection").unwrap_or("");
        let has = |t: &str| conn.split(',').any(|x| x.trim().eq_ignore_ascii_case(t));
        if self.http10 {
            has("keep-alive")
        } else {
            !has("close")
        }
    }
}

/// An answer.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn new(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status,
            headers: vec![("Content-Type".into(), content_type.into())],
            body: body.into(),
        }
    }

    pub fn text(status: u16, body: impl Into<String>) -> Response {
        let mut b = body.into();
        b.push('\n');
        Response::new(status, "text/plain; charset=utf-8", b)
    }

    pub fn json(status: u16, body: impl Into<String>) -> Response {
        let mut b = body.into();
        b.push('\n');
        Response::new(status, "application/json", b)
    }

    pub fn with_header(mut self, name: &str, value: impl Into<String>) -> Response {
        self.headers.push((name.into(), value.into()));
        self
    }
}

pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// What the application does with a request.
pub type Handler = dyn Fn(&Request) -> Response + Send + Sync;

/// A running server; stops (and joins its threads) on `stop` or drop.
pub struct HttpServer {
    addr: SocketAddr,
    stopping: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl HttpServer {
    /// Binds `addr` (port 0: the OS chooses) and serves with `threads` threads.
    pub fn start(
        addr: SocketAddr,
        threads: usize,
        limits: Limits,
        handler: Arc<Handler>,
    ) -> io::Result<HttpServer> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        // Built up thread by thread: should a spawn fail, dropping it stops those already running.
        let mut server = HttpServer {
            addr,
            stopping: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
        };
        for i in 0..threads.max(1) {
            let listener = listener.try_clone()?;
            let (stopping, handler, limits) =
                (server.stopping.clone(), handler.clone(), limits.clone());
            let t = std::thread::Builder::new()
                .name(format!("http-{i}"))
                // The handler's frames are small: a 256 KiB stack instead of 2 MiB keeps the footprint down.
                .stack_size(256 * 1024)
                .spawn(move || accept_loop(&listener, &stopping, &limits, &*handler))?;
            server.threads.push(t);
        }
        Ok(server)
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, wakes every thread blocked in `accept` and joins them. A thread busy with
    /// a keep-alive connection finishes it first (at most `keep_alive` idle).
    pub fn stop(&mut self) {
        if self.stopping.swap(true, Ordering::SeqCst) {
            return;
        }
        let mut wake = self.addr;
        if wake.ip().is_unspecified() {
            wake.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        for _ in &self.threads {
            let _ = TcpStream::connect_timeout(&wake, Duration::from_millis(200));
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept_loop(listener: &TcpListener, stopping: &AtomicBool, limits: &Limits, handler: &Handler) {
    while !stopping.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                if stopping.load(Ordering::SeqCst) {
                    return;
                }
                serve_connection(stream, limits, handler, stopping);
            }
            // Out of descriptors and the like: back off instead of spinning.
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// Why a request could not be read.
#[derive(Debug)]
enum ReadError {
    /// The client closed, or stayed idle past the keep-alive time: close quietly.
    Closed,
    /// Answer with this status and close.
    Reject(u16, &'static str),
    Io,
}

fn serve_connection(mut stream: TcpStream, limits: &Limits, handler: &Handler, stop: &AtomicBool) {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_write_timeout(Some(limits.request_timeout));
    let mut buf: Vec<u8> = Vec::new();
    for served in 1..=limits.max_requests_per_connection {
        match read_request(&mut stream, &mut buf, limits) {
            Ok(req) => {
                let keep = req.keep_alive()
                    && served < limits.max_requests_per_connection
                    && !stop.load(Ordering::SeqCst);
                // A bug in a handler answers 500 and costs this request, not the pool thread.
                let resp = catch_unwind(AssertUnwindSafe(|| handler(&req)))
                    .unwrap_or_else(|_| Response::text(500, "internal error"));
                if write_response(&mut stream, &resp, keep).is_err() || !keep {
                    break;
                }
            }
            Err(ReadError::Reject(status, why)) => {
                let _ = write_response(&mut stream, &Response::text(status, why), false);
                break;
            }
            Err(ReadError::Closed | ReadError::Io) => break,
        }
    }
    let _ = stream.shutdown(Shutdown::Both);
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n")
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Reads one request; `buf` carries bytes already read past the previous one.
fn read_request(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    limits: &Limits,
) -> Result<Request, ReadError> {
    let mut chunk = [0u8; 4096];
    let mut deadline: Option<Instant> = None;
    let head_end = loop {
        if let Some(end) = find_head_end(buf) {
            break end;
        }
        if buf.len() > limits.max_head_bytes {
            return Err(ReadError::Reject(431, "request head too large"));
        }
        // Idle between requests: the keep-alive time; once bytes came: the request deadline.
        let wait = match deadline {
            None if buf.is_empty() => limits.keep_alive,
            None => {
                deadline = Some(Instant::now() + limits.request_timeout);
                limits.request_timeout
            }
            Some(d) => d.saturating_duration_since(Instant::now()),
        };
        if wait.is_zero() {
            return Err(ReadError::Reject(408, "request not received in time"));
        }
        let _ = stream.set_read_timeout(Some(wait));
        match stream.read(&mut chunk) {
            Ok(0) if buf.is_empty() => return Err(ReadError::Closed),
            Ok(0) => return Err(ReadError::Reject(400, "connection closed mid-request")),
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                deadline.get_or_insert_with(|| Instant::now() + limits.request_timeout);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                if buf.is_empty() {
                    return Err(ReadError::Closed);
                }
                return Err(ReadError::Reject(408, "request not received in time"));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(ReadError::Io),
        }
    };
    if head_end > limits.max_head_bytes {
        return Err(ReadError::Reject(431, "request head too large"));
    }
    let head = std::str::from_utf8(&buf[..head_end])
        .map_err(|_| ReadError::Reject(400, "request head is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or("");
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ReadError::Reject(400, "malformed request line"));
    };
    if !is_token(method) {
        return Err(ReadError::Reject(400, "malformed method"));
    }
    if !target.starts_with('/') || target.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(ReadError::Reject(400, "malformed request target"));
    }
    let http10 = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        v if v.starts_with("HTTP/") => {
            return Err(ReadError::Reject(505, "only HTTP/1.0 and HTTP/1.1"))
        }
        _ => return Err(ReadError::Reject(400, "malformed HTTP version")),
    };
    let mut headers = Vec::new();
    for line in lines {
        if headers.len() == limits.max_headers {
            return Err(ReadError::Reject(431, "too many headers"));
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(ReadError::Reject(400, "malformed header line"));
        };
        // Also refuses obsolete line folding (a line starting with a space).
        if !is_token(name) {
            return Err(ReadError::Reject(400, "malformed header name"));
        }
        headers.push((name.to_string(), value.trim().to_string()));
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), q.to_string()),
        None => (target.to_string(), String::new()),
    };
    let mut req = Request {
        method: method.to_string(),
        path,
        query,
        http10,
        headers,
        body: Vec::new(),
    };
    if req.header("transfer-encoding").is_some() {
        return Err(ReadError::Reject(501, "chunked bodies are not supported"));
    }
    let mut lengths = req
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.as_str());
    let len = match lengths.next() {
        None => 0,
        Some(v) => {
            // Digits only: "+5" and "5, 6" are request-smuggling material.
            if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) || v.len() > 12 {
                return Err(ReadError::Reject(400, "malformed Content-Length"));
            }
            let n: usize = v
                .parse()
                .map_err(|_| ReadError::Reject(400, "malformed Content-Length"))?;
            if lengths.any(|other| other != v) {
                return Err(ReadError::Reject(400, "conflicting Content-Length"));
            }
            n
        }
    };
    if len > limits.max_body_bytes {
        return Err(ReadError::Reject(413, "request body too large"));
    }
    buf.drain(..head_end + 4);
    let deadline = deadline.unwrap_or_else(|| Instant::now() + limits.request_timeout);
    while buf.len() < len {
        let wait = deadline.saturating_duration_since(Instant::now());
        if wait.is_zero() {
            return Err(ReadError::Reject(408, "request body not received in time"));
        }
        let _ = stream.set_read_timeout(Some(wait));
        match stream.read(&mut chunk) {
            Ok(0) => return Err(ReadError::Reject(400, "connection closed mid-body")),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(ReadError::Reject(408, "request body not received in time"))
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(ReadError::Io),
        }
    }
    req.body = buf.drain(..len).collect();
    Ok(req)
}

fn write_response(stream: &mut TcpStream, resp: &Response, keep: bool) -> io::Result<()> {
    let mut out = Vec::with_capacity(256 + resp.body.len());
    write!(
        out,
        "HTTP/1.1 {} {}\r\nContent-Length: {}\r\nConnection: {}\r\n",
        resp.status,
        reason(resp.status),
        resp.body.len(),
        if keep { "keep-alive" } else { "close" }
    )?;
    for (n, v) in &resp.headers {
        write!(out, "{n}: {v}\r\n")?;
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&resp.body);
    stream.write_all(&out)?;
    stream.flush()
}

/// Decodes `application/x-www-form-urlencoded` text (also a query string): `+` is a space,
/// `%XX` a byte; a bad escape is kept as it is. Pairs without `=` get an empty value.
pub fn parse_form(s: &str) -> Vec<(String, String)> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A JSON string literal.
pub fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_decoding() {
        let f = parse_form("user=ad%6Din&pass=a+b%&x");
        assert_eq!(f[0], ("user".into(), "admin".into()));
        assert_eq!(f[1], ("pass".into(), "a b%".into()));
        assert_eq!(f[2], ("x".into(), "".into()));
    }
}
