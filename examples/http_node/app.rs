//! The demo application at `/app`, embedded in one cluster node: a `SimpleTcpCluster` with the
//! application's session manager, and the small HTTP server of `http.rs` in front of it. Every
//! session-using handler follows the same three steps: `mgr.request(cookie, uri)`, read or change
//! the session, `finish()` (which replicates the changes, unless the valve filter matched).
#![allow(dead_code)] // shared by http_node and cluster_demo, which use different parts

use crate::http::{self, HttpServer, Limits, Request, Response};
use log::{info, warn};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tribecast::{
    ChannelError, ClusterConfig, ClusterManager, ManagerError, ManagerKind, Member,
    MembershipListener, SimpleTcpCluster,
};

/// Tomcat's `ReplicationValve` filter from the reference server.xml.
pub const REFERENCE_VALVE_FILTER: &str =
    r".*\.gif;.*\.js;.*\.jpeg;.*\.jpg;.*\.png;.*\.htm;.*\.html;.*\.css;.*\.txt";

/// Largest static file served.
const MAX_STATIC_FILE: u64 = 1 << 20;
/// How long a request waits for a starting manager's state transfer before answering 503.
const READY_WAIT: Duration = Duration::from_secs(5);

/// The user record kept in the session (the reference document's `UserSession`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub user_id: u64,
    pub username: String,
    pub role: String,
    /// Login time, ms since the epoch (UTC).
    pub login_time_ms: u64,
}

impl User {
    /// The record as the JSON endpoints show it, with the node that answered.
    fn to_json(&self, node: &str) -> serde_json::Value {
        json!({
            "user_id": self.user_id,
            "username": self.username,
            "role": self.role,
            "login_time": iso_utc(self.login_time_ms),
            "node": node,
        })
    }
}

/// The demo's accounts: (user, password, id, role).
const ACCOUNTS: &[(&str, &str, u64, &str)] = &[
    ("admin", "secret", 1, "admin"),
    ("guest", "guest", 2, "user"),
];

/// Everything a node needs.
#[derive(Clone, Debug)]
pub struct NodeOptions {
    /// HTTP address; port 0 lets the OS choose.
    pub http: SocketAddr,
    pub http_threads: usize,
    /// HTTP connections open at once.
    pub http_max_connections: usize,
    /// The application's context path, e.g. `/app`.
    pub context: String,
    pub cluster: ClusterConfig,
    /// Where `/app/static/*` files come from.
    pub static_dir: PathBuf,
    /// When the process started: the first member seen is logged relative to it.
    pub started: Instant,
    /// A request that changed the session (login, counter) answers 503 instead of 200 when
    /// its change was not applied by every member (`SessionRequest::finish` returned an error), so a
    /// 200 means what synchronized ack promises. Off (Tomcat's `ReplicationValve`): the error
    /// is logged and the answer is 200.
    pub strict_replication: bool,
}

#[derive(Debug)]
pub enum NodeError {
    Cluster(ChannelError),
    Http(SocketAddr, std::io::Error),
}

impl fmt::Display for NodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeError::Cluster(e) => write!(f, "cluster: {e}"),
            NodeError::Http(a, e) => write!(f, "HTTP server on {a}: {e}"),
        }
    }
}

impl std::error::Error for NodeError {}

/// One running node: cluster and HTTP server.
pub struct Node {
    pub name: String,
    cluster: Arc<SimpleTcpCluster>,
    app: Arc<ClusterManager>,
    server: Option<HttpServer>,
}

/// Logs membership as this node sees it, and how long after start the first member came.
struct MemberLog {
    node: String,
    started: Instant,
    first_seen: AtomicBool,
}

impl MembershipListener for MemberLog {
    fn member_added(&self, m: &Member) {
        if !self.first_seen.swap(true, Ordering::SeqCst) {
            info!(
                "Node {}: first member [{}] seen {} ms after start",
                self.node,
                m.name,
                self.started.elapsed().as_millis()
            );
        }
        info!("Node {}: member {} joined ({})", self.node, m.name, m.addr);
    }
    fn member_disappeared(&self, m: &Member) {
        info!("Node {}: member {} left ({})", self.node, m.name, m.addr);
    }
}

struct App {
    node: String,
    context: String,
    kind: ManagerKind,
    cluster: Arc<SimpleTcpCluster>,
    mgr: Arc<ClusterManager>,
    static_dir: PathBuf,
    strict_replication: bool,
}

impl Node {
    pub fn start(opts: NodeOptions) -> Result<Node, NodeError> {
        let name = opts.cluster.jvm_route.clone();
        let kind = opts.cluster.manager.kind;
        let cluster = Arc::new(SimpleTcpCluster::new(opts.cluster).map_err(NodeError::Cluster)?);
        let app = cluster.add_application(&opts.context);
        cluster
            .channel()
            .add_membership_listener(Arc::new(MemberLog {
                node: name.clone(),
                started: opts.started,
                first_seen: AtomicBool::new(false),
            }));
        cluster.start().map_err(NodeError::Cluster)?;
        let state = Arc::new(App {
            node: name.clone(),
            context: opts.context.trim_end_matches('/').to_string(),
            kind,
            cluster: cluster.clone(),
            mgr: app.clone(),
            static_dir: opts.static_dir,
            strict_replication: opts.strict_replication,
        });
        let handler: Arc<http::Handler> = Arc::new(move |req: &Request| state.handle(req));
        let limits = Limits {
            max_connections: opts.http_max_connections,
            ..Limits::default()
        };
        let server =
            HttpServer::start(opts.http, opts.http_threads, limits, handler).map_err(|e| {
                cluster.stop();
                NodeError::Http(opts.http, e)
            })?;
        Ok(Node {
            name,
            cluster,
            app,
            server: Some(server),
        })
    }

    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.server.as_ref().map(HttpServer::local_addr)
    }

    pub fn receiver_addr(&self) -> Option<SocketAddr> {
        self.cluster.channel().local_member().map(|m| m.addr)
    }

    pub fn cluster(&self) -> &SimpleTcpCluster {
        &self.cluster
    }

    pub fn app(&self) -> &Arc<ClusterManager> {
        &self.app
    }

    /// Creates `n` sessions holding `size` bytes each (replicated as usual), for footprint
    /// measurements. Stops at `max_active_sessions` (logged).
    pub fn preload(&self, n: usize, size: usize) -> Result<(), ChannelError> {
        // Like a request, wait for the state transfer: a session made before the members are
        // known is announced to nobody, and members that already have their state never ask.
        if !self.app.wait_ready(Duration::from_secs(30)) {
            warn!("preload: manager not ready after 30 s; sessions may miss members");
        }
        let data = "x".repeat(size); // a string, as user records are
        for _ in 0..n {
            let mut req = self
                .app
                .request(None, &format!("{}/preload", self.app.context()));
            match req.session_or_create() {
                Ok(s) => {
                    if let Err(e) = s.set("data", &data) {
                        warn!("preload: {e}");
                    }
                }
                Err(e @ ManagerError::TooManySessions(_)) => {
                    warn!("preload: stopped: {e} (--max-active-sessions raises it)");
                    return Ok(());
                }
                Err(e) => warn!("preload: {e}"),
            }
            req.finish()?;
        }
        Ok(())
    }

    /// Stops the HTTP server, then the cluster (whose members keep the sessions). Safe twice.
    pub fn stop(&mut self) {
        if let Some(mut s) = self.server.take() {
            s.stop();
        }
        self.cluster.stop();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `2026-11-26T06:12:00.123Z` (RFC 3339, UTC) from ms since the epoch.
pub fn iso_utc(ms: u64) -> String {
    i64::try_from(ms)
        .ok()
        .and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok())
        .map_or_else(|| "?".to_string(), |t| format!("{t:.3}"))
}

fn content_type(name: &str) -> &'static str {
    match name.rsplit_once('.').map(|(_, e)| e) {
        Some("css") => "text/css; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("html" | "htm") => "text/html; charset=utf-8",
        Some("txt") => "text/plain; charset=utf-8",
        Some("png") => "image/png",
        Some("gif") => "image/gif",
        Some("jpg" | "jpeg") => "image/jpeg",
        _ => "application/octet-stream",
    }
}

fn error_json(status: u16, msg: &str) -> Response {
    Response::json(status, &json!({ "error": msg }))
}

/// The answer when no session could be made: 503 when the node holds `max_active_sessions`
/// (a balancer or the client may retry, on another node or later), 500 otherwise.
fn no_session(e: &ManagerError) -> Response {
    let status = match e {
        ManagerError::TooManySessions(_) => 503,
        _ => 500,
    };
    error_json(status, &format!("no session: {e}"))
}

impl App {
    fn handle(&self, req: &Request) -> Response {
        let method_ok = |m: &str| req.method == m;
        if req.path == self.context && method_ok("GET") {
            let to = format!("{}/", self.context);
            return Response::text(301, to.clone()).with_header("Location", to);
        }
        let Some(rest) = req
            .path
            .strip_prefix(&self.context)
            .and_then(|r| r.strip_prefix('/'))
        else {
            return error_json(404, "not found");
        };
        match rest {
            // The page: a static file that calls the JSON endpoints below. Served without
            // touching the session, as any static file.
            "" | "index.html" if method_ok("GET") => self.page(),
            "health" if method_ok("GET") => self.health(),
            "metrics" if method_ok("GET") => Response::new(
                200,
                "text/plain; version=0.0.4",
                self.cluster.prometheus_text(),
            ),
            "login" if method_ok("POST") => self.ready_then(|| self.login(req)),
            "logout" if method_ok("POST") => self.ready_then(|| self.logout(req)),
            "profile" if method_ok("GET") => self.ready_then(|| self.profile(req)),
            "counter" if method_ok("GET") => self.ready_then(|| self.counter(req)),
            "" | "index.html" | "health" | "metrics" | "profile" | "counter" => {
                error_json(405, "method not allowed").with_header("Allow", "GET")
            }
            "login" | "logout" => {
                error_json(405, "method not allowed").with_header("Allow", "POST")
            }
            r if r.starts_with("static/") && method_ok("GET") => {
                self.static_file(req, &r["static/".len()..])
            }
            _ => error_json(404, "not found"),
        }
    }

    /// Sessions are served once the state transfer from an existing member is done, as Tomcat
    /// does not accept requests before its DeltaManager has the cluster's sessions.
    fn ready_then(&self, f: impl FnOnce() -> Response) -> Response {
        if self.mgr.is_ready() || self.mgr.wait_ready(READY_WAIT) {
            f()
        } else {
            error_json(503, "session state transfer still running")
        }
    }

    fn uri(&self, req: &Request) -> String {
        req.path.clone()
    }

    /// The session a request names: the library reads it from the `Cookie` headers by the
    /// manager's cookie policy (`JSESSIONID` by default).
    fn session_cookie<'r>(&self, req: &'r Request) -> Option<&'r str> {
        req.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("cookie"))
            .find_map(|(_, v)| self.mgr.session_id_from_cookie_header(v))
    }

    /// A session request for `req`: a session whose node is gone is rebound to this node's
    /// route here (the library's `rebind_route`: `Never` by default, `WhenRouteGone` in the
    /// demo's config files and without one; `--rebind-route` sets it).
    fn begin(&self, req: &Request) -> tribecast::SessionRequest {
        self.mgr.request(self.session_cookie(req), &self.uri(req))
    }

    /// `resp` with the `Set-Cookie` the request decided (new session, changed id, rebound
    /// route, ended session), written by the library's cookie policy.
    fn with_cookie(resp: Response, set_cookie: Option<String>) -> Response {
        match set_cookie {
            Some(c) => resp.with_header("Set-Cookie", c),
            None => resp,
        }
    }

    fn finish(&self, r: tribecast::SessionRequest) {
        let _ = self.finish_changed(r);
    }

    /// Ends a request that changed the session. `Some(503)` when the change was not applied by
    /// every member and `strict_replication` is on; the caller still sends the request's
    /// `Set-Cookie` with it (a new id, or a rebound route, holds either way).
    fn finish_changed(&self, r: tribecast::SessionRequest) -> Option<Response> {
        let e = r.finish().err()?;
        warn!(
            "Node {}: session change not replicated everywhere: {e}",
            self.node
        );
        self.strict_replication.then(|| {
            error_json(
                503,
                &format!("session change not replicated to every member: {e}"),
            )
        })
    }

    fn login(&self, req: &Request) -> Response {
        let ct = req.header("content-type").unwrap_or("");
        if !ct.split(';').next().is_some_and(|t| {
            t.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        }) {
            return error_json(415, "send the form as application/x-www-form-urlencoded");
        }
        let Ok(body) = std::str::from_utf8(&req.body) else {
            return error_json(400, "form is not UTF-8");
        };
        let form = http::parse_form(body);
        let field = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        let (Some(user), Some(pass)) = (field("user"), field("pass")) else {
            return error_json(400, "form fields user and pass are required");
        };
        let Some(&(_, _, user_id, role)) = ACCOUNTS
            .iter()
            .find(|(u, p, _, _)| *u == user && *p == pass)
        else {
            return error_json(401, "bad user or password");
        };
        let record = User {
            user_id,
            username: user.to_string(),
            role: role.to_string(),
            login_time_ms: now_ms(),
        };
        let mut r = self.begin(req);
        // An existing session gets a new id at login (session fixation protection).
        let had_session = r.session().is_some();
        if had_session {
            if let Err(e) = r.change_id() {
                return error_json(500, &format!("cannot change the session id: {e}"));
            }
        }
        // The one place the application makes sessions: a real application makes them where
        // it has something to keep (here, the user who logged in), never for anonymous visitors.
        let session = match r.session_or_create() {
            Ok(s) => s,
            Err(e) => return no_session(&e),
        };
        if let Err(e) = session.set("user", &record) {
            return error_json(500, &e.to_string());
        }
        session.set_principal(Some(user), Some("FORM"));
        let cookie = r.set_cookie();
        if let Some(refused) = self.finish_changed(r) {
            return Self::with_cookie(refused, cookie);
        }
        Self::with_cookie(Response::json(200, &record.to_json(&self.node)), cookie)
    }

    fn logout(&self, req: &Request) -> Response {
        let mut r = self.begin(req);
        // The Servlet way: the session ends on every member when the request ends, and the
        // response expires the cookie.
        if let Some(session) = r.session() {
            session.invalidate();
        }
        let cookie = r.set_cookie();
        if let Some(refused) = self.finish_changed(r) {
            return Self::with_cookie(refused, cookie);
        }
        Self::with_cookie(
            Response::json(200, &json!({ "logged_out": true, "node": self.node })),
            cookie,
        )
    }

    fn profile(&self, req: &Request) -> Response {
        let mut r = self.begin(req);
        let user = r
            .session()
            .and_then(|s| s.get::<User>("user").ok().flatten());
        let cookie = r.set_cookie();
        self.finish(r);
        let resp = match user {
            Some(u) => Response::json(200, &u.to_json(&self.node)),
            None => error_json(401, "not logged in"),
        };
        Self::with_cookie(resp, cookie)
    }

    /// Increments the session's counter (`?peek` reads it without a change). Only with a
    /// session (made at login): an anonymous request gets 401 and no session.
    fn counter(&self, req: &Request) -> Response {
        let peek = http::parse_form(&req.query)
            .iter()
            .any(|(k, _)| k == "peek");
        let mut r = self.begin(req);
        let Some(s) = r.session() else {
            let cookie = r.set_cookie();
            self.finish(r);
            return Self::with_cookie(error_json(401, "not logged in"), cookie);
        };
        let mut n = s.get::<u64>("counter").ok().flatten().unwrap_or(0);
        if !peek {
            n += 1;
            if let Err(e) = s.set("counter", &n) {
                return error_json(500, &e.to_string());
            }
        }
        let id = r.session_id().cloned();
        let cookie = r.set_cookie();
        if peek {
            self.finish(r);
        } else if let Some(refused) = self.finish_changed(r) {
            // The session was renamed (route rebinding) even if the change was not replicated
            // everywhere: without the new cookie the user would ask for the retired id.
            return Self::with_cookie(refused, cookie);
        }
        let body = json!({
            "counter": n,
            "node": self.node,
            "session": id.as_ref().map(|i| i.as_str()),
        });
        Self::with_cookie(Response::json(200, &body), cookie)
    }

    /// What the node sees; `503` until the manager is ready (the state transfer from an
    /// existing member done), so a balancer sends no user here before then.
    fn health(&self) -> Response {
        let mut members: Vec<Member> = self.cluster.channel().members();
        members.sort_by(|a, b| a.name.cmp(&b.name));
        let members: Vec<serde_json::Value> = members
            .iter()
            .map(|m| json!({ "name": m.name, "addr": m.addr.to_string() }))
            .collect();
        let stats = &self.mgr.stats;
        let ready = self.mgr.is_ready();
        let body = json!({
            "node": self.node,
            "manager": match self.kind {
                ManagerKind::Delta => "delta",
                ManagerKind::Backup => "backup",
            },
            "ready": ready,
            "members": members,
            "sessions": self.mgr.session_count(),
            "rejected_sessions": stats.rejected_sessions.load(Ordering::Relaxed),
            "messages_sent": stats.messages_sent.load(Ordering::Relaxed),
            "messages_received": stats.messages_received.load(Ordering::Relaxed),
        });
        Response::json(if ready { 200 } else { 503 }, &body)
    }

    /// The page at `/app/`: `index.html` of the static directory.
    fn page(&self) -> Response {
        match read_small(&self.static_dir.join("index.html")) {
            Some(b) => Response::new(200, "text/html; charset=utf-8", b)
                .with_header("Cache-Control", "no-store"),
            None => error_json(404, "no index.html in the static directory"),
        }
    }

    /// A file of the static directory. The request still goes through the session manager, as
    /// any request under the application does, but its URI matches the valve filter: the access
    /// time is kept locally and nothing is replicated.
    fn static_file(&self, req: &Request, name: &str) -> Response {
        // Plain file names only: no directories, no `..`, no escapes.
        let plain = !name.is_empty()
            && !name.starts_with('.')
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !plain {
            return error_json(404, "not found");
        }
        let path = self.static_dir.join(name);
        let body = match read_small(&path) {
            Some(b) => b,
            None => return error_json(404, "not found"),
        };
        let mut cookie = None;
        if self.session_cookie(req).is_some() {
            let r = self.begin(req);
            cookie = r.set_cookie();
            self.finish(r);
        }
        Self::with_cookie(Response::new(200, content_type(name), body), cookie)
    }
}

fn read_small(path: &Path) -> Option<Vec<u8>> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_file() || meta.len() > MAX_STATIC_FILE {
        return None;
    }
    std::fs::read(path).ok()
}
