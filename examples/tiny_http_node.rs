//! A whole cluster node of the demo application on tiny_http: tribecast's session replication
//! in a synchronous server, in one file to copy. Three of them on one host:
//!
//!     cargo run --release --example tiny_http_node -- --name node1 --http 127.0.0.1:8081 \
//!         --receiver 127.0.0.1:4001 --member 127.0.0.1:4002 --member 127.0.0.1:4003
//!
//! (node2 and node3 likewise). Flags, as `http_node`'s: `--name NAME` (the jvmRoute, the
//! cookie's `.node1` suffix), `--http ADDR`, `--receiver ADDR` (port 0: the OS chooses),
//! `--member ADDR` (repeat), `--manager delta|backup`, `--static DIR`; `--flag=value` works too.
//!
//! The application at `/app`: `POST /app/login` (form `user`, `pass`: admin/secret,
//! guest/guest; the only place a session is made), `GET /app/profile`, `GET /app/counter`
//! (`?peek` reads it; 401 without a session), `POST /app/logout`,
//! `GET /app/health` (503 until the node has the cluster's sessions), `GET /app/metrics`,
//! `/app/` and `/app/static/*` (files of examples/static). Every session handler is the same
//! three steps: `http::begin` (ready check, cookie in), read or change the session, then
//! `set_cookie()` and `finish()`; errors are one type, `SessionRequestError`, mapped to a
//! status by `http_status()`.

use serde::{Deserialize, Serialize};
use serde_json::json;
use std::io::{Cursor, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tiny_http::{Header, Method, Request, Server};
use tribecast::{
    http, ClusterConfig, ClusterManager, ManagerKind, SessionRequestError, SimpleTcpCluster,
    StaticMember,
};

type Response = tiny_http::Response<Cursor<Vec<u8>>>;

/// The user record kept in the session, as JSON.
#[derive(Serialize, Deserialize)]
struct User {
    user_id: u64,
    username: String,
    role: String,
    login_time: String,
}

const ACCOUNTS: &[(&str, &str, u64, &str)] = &[
    ("admin", "secret", 1, "admin"),
    ("guest", "guest", 2, "user"),
];
const MAX_BODY: u64 = 64 * 1024;

struct Node {
    name: String,
    kind: ManagerKind,
    cluster: SimpleTcpCluster,
    app: Arc<ClusterManager>,
    static_dir: PathBuf,
}

fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let (cfg, http_addr, static_dir) = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("tiny_http_node: {e}\nusage: tiny_http_node --name NAME --http ADDR --receiver ADDR [--member ADDR]... [--manager delta|backup] [--static DIR]");
            std::process::exit(2)
        }
    };
    let (name, kind) = (cfg.jvm_route.clone(), cfg.manager.kind);
    let cluster = SimpleTcpCluster::new(cfg)?;
    let app = cluster.add_application("/app");
    cluster.start()?;
    let server = Arc::new(Server::http(http_addr)?);
    let rx = cluster.channel().local_member().map(|m| m.addr);
    println!(
        "tiny_http_node {name} listening on http://{} (cluster receiver {})",
        server.server_addr(),
        rx.map_or("?".into(), |a| a.to_string())
    );
    let node = Arc::new(Node {
        name,
        kind,
        cluster,
        app,
        static_dir,
    });
    // A few threads take requests off the one server; each answers its request to the end.
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (server, node) = (server.clone(), node.clone());
            std::thread::spawn(move || {
                for mut request in server.incoming_requests() {
                    let response = node.handle(&mut request);
                    let _ = request.respond(response); // the client may be gone
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    Ok(())
}

impl Node {
    fn handle(&self, request: &mut Request) -> Response {
        let url = request.url().to_string();
        let (path, query) = url.split_once('?').unwrap_or((&url, ""));
        let get = *request.method() == Method::Get;
        let post = *request.method() == Method::Post;
        let result = match path {
            "/app/login" if post => self.login(request, path),
            "/app/logout" if post => self.logout(request, path),
            "/app/profile" if get => self.profile(request, path),
            "/app/counter" if get => {
                self.counter(request, path, query.split('&').any(|p| p == "peek"))
            }
            "/app/health" if get => Ok(self.health()),
            "/app/metrics" if get => Ok(text(
                200,
                "text/plain; version=0.0.4",
                self.cluster.prometheus_text(),
            )),
            "/app/" | "/app" if get => Ok(self.static_file("index.html")),
            p if get && p.starts_with("/app/static/") => {
                Ok(self.static_file(&p["/app/static/".len()..]))
            }
            "/app/login" | "/app/logout" | "/app/profile" | "/app/counter" | "/app/health" => {
                Ok(error(405, "method not allowed"))
            }
            _ => Ok(error(404, "not found")),
        };
        result.unwrap_or_else(|e| {
            log::warn!("{} {path}: {e}", request.method());
            error(e.http_status(), &e.to_string())
        })
    }

    /// The request's session, once the node is ready, by the `Cookie` headers.
    fn begin(
        &self,
        request: &Request,
        path: &str,
    ) -> Result<tribecast::SessionRequest, SessionRequestError> {
        let headers = request
            .headers()
            .iter()
            .map(|h| (h.field.as_str().as_str(), h.value.as_str()));
        http::begin(&self.app, path, headers, http::READY_WAIT)
    }

    fn login(&self, request: &mut Request, path: &str) -> Result<Response, SessionRequestError> {
        let form_ok = request.headers().iter().any(|h| {
            h.field.equiv("Content-Type")
                && h.value
                    .as_str()
                    .starts_with("application/x-www-form-urlencoded")
        });
        if !form_ok {
            return Ok(error(
                415,
                "send the form as application/x-www-form-urlencoded",
            ));
        }
        let mut body = Vec::new();
        let mut reader = request.as_reader().take(MAX_BODY);
        if reader.read_to_end(&mut body).is_err() {
            return Ok(error(400, "unreadable request body"));
        }
        let form: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
        let field = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        let Some(&(user, _, user_id, role)) = ACCOUNTS
            .iter()
            .find(|(u, p, _, _)| Some(*u) == field("user") && Some(*p) == field("pass"))
        else {
            return Ok(error(401, "bad user or password"));
        };
        let record = User {
            user_id,
            username: user.into(),
            role: role.into(),
            login_time: format!("{:.3}", jiff::Timestamp::now()),
        };
        let mut req = self.begin(request, path)?;
        req.change_id()?; // an existing session gets a new id at login (fixation defence)
        let session = req.session_or_create()?;
        session.set("user", &record)?;
        session.set_principal(Some(user), Some("FORM"));
        let set_cookie = req.set_cookie();
        req.finish()?; // the change goes to the other members
        Ok(with_cookie(json(200, &record), set_cookie))
    }

    fn logout(&self, request: &Request, path: &str) -> Result<Response, SessionRequestError> {
        let mut req = self.begin(request, path)?;
        if let Some(session) = req.session() {
            session.invalidate(); // on every member, when the request ends
        }
        let set_cookie = req.set_cookie(); // expires the cookie
        req.finish()?;
        Ok(with_cookie(
            json(200, &json!({"logged_out": true})),
            set_cookie,
        ))
    }

    fn profile(&self, request: &Request, path: &str) -> Result<Response, SessionRequestError> {
        let mut req = self.begin(request, path)?;
        let user: Option<User> = req.session().map(|s| s.get("user")).transpose()?.flatten();
        let set_cookie = req.set_cookie(); // Some after a route rebinding, else None
        req.finish()?;
        let response = match user {
            Some(u) => json(200, &u),
            None => error(401, "not logged in"),
        };
        Ok(with_cookie(response, set_cookie))
    }

    fn counter(
        &self,
        request: &Request,
        path: &str,
        peek: bool,
    ) -> Result<Response, SessionRequestError> {
        let mut req = self.begin(request, path)?;
        // Only with a session (made at login): an anonymous request gets 401, not a session.
        let Some(session) = req.session() else {
            let set_cookie = req.set_cookie();
            req.finish()?;
            return Ok(with_cookie(error(401, "not logged in"), set_cookie));
        };
        let mut n = session.get::<u64>("counter")?.unwrap_or(0);
        if !peek {
            n += 1;
            session.set("counter", &n)?;
        }
        let id = req.session_id().map(|id| id.as_str().to_string());
        let set_cookie = req.set_cookie();
        req.finish()?;
        Ok(with_cookie(
            json(
                200,
                &json!({"counter": n, "node": self.name, "session": id}),
            ),
            set_cookie,
        ))
    }

    /// 200 once the node has the cluster's sessions, 503 before (balancers read the status).
    fn health(&self) -> Response {
        let mut members = self.cluster.channel().members();
        members.sort_by(|a, b| a.name.cmp(&b.name));
        let ready = self.app.is_ready();
        let stats = self.app.stats();
        let body = json!({
            "node": self.name,
            "manager": match self.kind { ManagerKind::Backup => "backup", _ => "delta" },
            "ready": ready,
            "members": members.iter().map(|m| json!({"name": m.name, "addr": m.addr.to_string()})).collect::<Vec<_>>(),
            "sessions": stats.sessions,
            "messages_sent": stats.messages_sent,
            "messages_received": stats.messages_received,
        });
        json(if ready { 200 } else { 503 }, &body)
    }

    /// A file of the static directory: plain names only (no `/`, no `..`).
    fn static_file(&self, name: &str) -> Response {
        let plain = !name.starts_with('.')
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        let kind = match name.rsplit_once('.').map(|(_, ext)| ext) {
            Some("html") => "text/html; charset=utf-8",
            Some("css") => "text/css; charset=utf-8",
            Some("js") => "text/javascript; charset=utf-8",
            _ => "application/octet-stream",
        };
        match std::fs::read(self.static_dir.join(name)) {
            Ok(data) if plain && !name.is_empty() => text(200, kind, data),
            _ => error(404, "not found"),
        }
    }
}

fn text(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Response {
    let header = Header::from_bytes("Content-Type", content_type).expect("a valid header");
    tiny_http::Response::from_data(body.into())
        .with_status_code(status)
        .with_header(header)
}

fn json(status: u16, value: &impl Serialize) -> Response {
    text(
        status,
        "application/json",
        serde_json::to_vec(value).unwrap_or_default(),
    )
}

fn error(status: u16, message: &str) -> Response {
    json(status, &json!({ "error": message }))
}

/// `response` with the `Set-Cookie` the request decided (the library's cookie policy).
fn with_cookie(response: Response, set_cookie: Option<String>) -> Response {
    match set_cookie.and_then(|c| Header::from_bytes(http::SET_COOKIE, c).ok()) {
        Some(header) => response.with_header(header),
        None => response,
    }
}

/// http_node's flags: the cluster's settings, the HTTP address and the static directory.
fn parse_args() -> Result<(ClusterConfig, SocketAddr, PathBuf), String> {
    let mut cfg = ClusterConfig::default();
    cfg.jvm_route = "node1".into();
    cfg.valve_filter = r".*\.css;.*\.js;.*\.html".into(); // static files are never replicated
    let mut http = SocketAddr::from(([127, 0, 0, 1], 8080));
    let mut static_dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/static"));
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) => (f.to_string(), Some(v.to_string())),
            None => (arg, None),
        };
        let value = inline
            .or_else(|| args.next())
            .ok_or(format!("{flag} needs a value"))?;
        let addr = |v: &str| {
            v.parse::<SocketAddr>()
                .map_err(|e| format!("{flag} {v}: {e}"))
        };
        match flag.as_str() {
            "--name" => cfg.jvm_route = value,
            "--http" => http = addr(&value)?,
            "--receiver" => {
                let a = addr(&value)?;
                (cfg.channel.receiver.address, cfg.channel.receiver.port) = (a.ip(), a.port());
                if a.port() == 0 {
                    cfg.channel.receiver.auto_bind = 1; // the OS's port, no probing
                }
            }
            "--member" => cfg
                .channel
                .static_members
                .push(StaticMember::new(addr(&value)?)),
            "--manager" if value == "delta" => cfg.manager.kind = ManagerKind::Delta,
            "--manager" if value == "backup" => cfg.manager.kind = ManagerKind::Backup,
            "--static" => static_dir = value.into(),
            _ => return Err(format!("unknown flag or value: {flag} {value}")),
        }
    }
    cfg.channel.local_name = cfg.jvm_route.clone();
    Ok((cfg, http, static_dir))
}
