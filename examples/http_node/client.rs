//! A minimal HTTP/1.1 client with a cookie jar, for the demo and the tests: one request per
//! connection (`Connection: close`), a deadline on every step, cookies stored from `Set-Cookie`
//! and sent back by path. Like a browser, the jar ignores the port: the nodes of a cluster on
//! one host share the cookie, which is what the failover scenario needs.
#![allow(dead_code)] // shared by cluster_demo and the tests, which use different parts

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Largest answer read.
const MAX_RESPONSE: usize = 1 << 20;

#[derive(Debug)]
pub enum ClientError {
    Io(io::Error),
    /// The answer is not HTTP/1.x.
    BadResponse(String),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Io(e) => write!(f, "I/O: {e}"),
            ClientError::BadResponse(why) => write!(f, "bad response: {why}"),
        }
    }
}

impl std::error::Error for ClientError {}

impl From<io::Error> for ClientError {
    fn from(e: io::Error) -> Self {
        ClientError::Io(e)
    }
}

#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Clone, Debug)]
struct Cookie {
    name: String,
    value: String,
    path: String,
}

/// A client with a cookie jar.
#[derive(Clone)]
pub struct Client {
    jar: Vec<Cookie>,
    pub timeout: Duration,
}

impl Default for Client {
    fn default() -> Self {
        Client::new()
    }
}

impl Client {
    pub fn new() -> Client {
        Client {
            jar: Vec::new(),
            timeout: Duration::from_secs(20),
        }
    }

    /// The value of cookie `name`, if the jar has it.
    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.jar
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.value.as_str())
    }

    pub fn get(&mut self, addr: SocketAddr, path: &str) -> Result<Reply, ClientError> {
        self.request(addr, "GET", path, None)
    }

    pub fn post_form(
        &mut self,
        addr: SocketAddr,
        path: &str,
        form: &[(&str, &str)],
    ) -> Result<Reply, ClientError> {
        let body: Vec<String> = form
            .iter()
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect();
        self.request(addr, "POST", path, Some(body.join("&")))
    }

    fn request(
        &mut self,
        addr: SocketAddr,
        method: &str,
        path: &str,
        form: Option<String>,
    ) -> Result<Reply, ClientError> {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
        let cookies: Vec<String> = self
            .jar
            .iter()
            .filter(|c| path.starts_with(&c.path))
            .map(|c| format!("{}={}", c.name, c.value))
            .collect();
        if !cookies.is_empty() {
            req.push_str(&format!("Cookie: {}\r\n", cookies.join("; ")));
        }
        if let Some(body) = &form {
            req.push_str("Content-Type: application/x-www-form-urlencoded\r\n");
            req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        } else {
            req.push_str("\r\n");
        }
        let reply = exchange(addr, req.as_bytes(), self.timeout)?;
        for (n, v) in &reply.headers {
            if n.eq_ignore_ascii_case("set-cookie") {
                self.store(v);
            }
        }
        Ok(reply)
    }

    /// Keeps (or, when expired, removes) the cookie of a `Set-Cookie` header, parsed by the
    /// `cookie` crate; a malformed header is ignored, as a browser does.
    fn store(&mut self, set_cookie: &str) {
        let Ok(c) = cookie::Cookie::parse(set_cookie) else {
            return;
        };
        let path = c.path().unwrap_or("/").to_string();
        self.jar.retain(|k| !(k.name == c.name() && k.path == path));
        // `Max-Age=0` (or less) removes the cookie, as a browser does.
        let expired = c
            .max_age()
            .is_some_and(|age| age.is_zero() || age.is_negative());
        if expired {
            return;
        }
        self.jar.push(Cookie {
            name: c.name().to_string(),
            value: c.value().to_string(),
            path,
        });
    }
}

fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Sends `raw` bytes as they are and reads the answer up to the server's close: also how the
/// tests send malformed requests.
pub fn exchange(addr: SocketAddr, raw: &[u8], timeout: Duration) -> Result<Reply, ClientError> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(raw)?;
    let mut data = Vec::new();
    s.take(MAX_RESPONSE as u64).read_to_end(&mut data)?;
    parse_reply(&data)
}

pub fn parse_reply(data: &[u8]) -> Result<Reply, ClientError> {
    let bad = |why: &str| ClientError::BadResponse(why.to_string());
    let end = data
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of head"))?;
    let head = std::str::from_utf8(&data[..end]).map_err(|_| bad("head not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut words = status_line.splitn(3, ' ');
    let (Some(version), Some(code)) = (words.next(), words.next()) else {
        return Err(bad(status_line));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(bad(status_line));
    }
    let status = code.parse().map_err(|_| bad(status_line))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = &data[end + 4..];
    if let Some(len) = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok())
    {
        body = &body[..len.min(body.len())];
    }
    Ok(Reply {
        status,
        headers,
        body: String::from_utf8_lossy(body).into_owned(),
    })
}
