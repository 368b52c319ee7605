//! A whole cluster node of the demo application on rouille: tribecast's session replication in
//! a synchronous server, in one file to copy. Three of them on one host:
//!
//!     cargo run --release --example rouille_node -- --name node1 --http 127.0.0.1:8081 \
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

use rouille::{input::post::raw_urlencoded_post_input, router, Request, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tribecast::{
    http, ClusterConfig, ClusterManager, ManagerKind, SessionRequest, SessionRequestError,
    SimpleTcpCluster, StaticMember,
};

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
            eprintln!("rouille_node: {e}\nusage: rouille_node --name NAME --http ADDR --receiver ADDR [--member ADDR]... [--manager delta|backup] [--static DIR]");
            std::process::exit(2)
        }
    };
    let (name, kind) = (cfg.jvm_route.clone(), cfg.manager.kind);
    let cluster = SimpleTcpCluster::new(cfg)?;
    let app = cluster.add_application("/app");
    cluster.start()?;
    let rx = cluster.channel().local_member().map(|m| m.addr);
    let banner = format!("rouille_node {name} listening on");
    let node = Node {
        name,
        kind,
        cluster,
        app,
        static_dir,
    };
    let server = rouille::Server::new(http_addr, move |request| node.handle(request))?.pool_size(4);
    println!(
        "{banner} http://{} (cluster receiver {})",
        server.server_addr(),
        rx.map_or("?".into(), |a| a.to_string())
    );
    server.run();
    Ok(())
}

impl Node {
    fn handle(&self, request: &Request) -> Response {
        let result = router!(request,
            (POST) (/app/login) => { self.login(request) },
            (POST) (/app/logout) => { self.logout(request) },
            (GET) (/app/profile) => { self.profile(request) },
            (GET) (/app/counter) => { self.counter(request) },
            (GET) (/app/health) => { Ok(self.health()) },
            (GET) (/app/metrics) => { Ok(Response::text(self.cluster.prometheus_text())) },
            (GET) (/app/) => { Ok(self.index()) },
            _ => {
                let assets = request.remove_prefix("/app/static").filter(|_| request.method() == "GET");
                Ok(assets.map_or_else(|| error(404, "not found"), |r| rouille::match_assets(&r, &self.static_dir)))
            }
        );
        result.unwrap_or_else(|e| {
            log::warn!("{} {}: {e}", request.method(), request.url());
            error(e.http_status(), &e.to_string())
        })
    }

    /// The request's session, once the node is ready, by the `Cookie` headers.
    fn begin(&self, request: &Request) -> Result<SessionRequest, SessionRequestError> {
        http::begin(
            &self.app,
            &request.url(),
            request.headers(),
            http::READY_WAIT,
        )
    }

    fn login(&self, request: &Request) -> Result<Response, SessionRequestError> {
        let Ok(form) = raw_urlencoded_post_input(request) else {
            return Ok(error(
                415,
                "send the form as application/x-www-form-urlencoded",
            ));
        };
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
        let mut req = self.begin(request)?;
        req.change_id()?; // an existing session gets a new id at login (fixation defence)
        let session = req.session_or_create()?;
        session.set("user", &record)?;
        session.set_principal(Some(user), Some("FORM"));
        let set_cookie = req.set_cookie();
        req.finish()?; // the change goes to the other members
        Ok(with_cookie(Response::json(&record), set_cookie))
    }

    fn logout(&self, request: &Request) -> Result<Response, SessionRequestError> {
        let mut req = self.begin(request)?;
        if let Some(session) = req.session() {
            session.invalidate(); // on every member, when the request ends
        }
        let set_cookie = req.set_cookie(); // expires the cookie
        req.finish()?;
        Ok(with_cookie(
            Response::json(&json!({"logged_out": true})),
            set_cookie,
        ))
    }

    fn profile(&self, request: &Request) -> Result<Response, SessionRequestError> {
        let mut req = self.begin(request)?;
        let user: Option<User> = req.session().map(|s| s.get("user")).transpose()?.flatten();
        let set_cookie = req.set_cookie(); // Some after a route rebinding, else None
        req.finish()?;
        let response = match user {
            Some(u) => Response::json(&u),
            None => error(401, "not logged in"),
        };
        Ok(with_cookie(response, set_cookie))
    }

    /// Only with a session (made at login): an anonymous request gets 401, not a session.
    fn counter(&self, request: &Request) -> Result<Response, SessionRequestError> {
        let mut req = self.begin(request)?;
        let Some(session) = req.session() else {
            let set_cookie = req.set_cookie();
            req.finish()?;
            return Ok(with_cookie(error(401, "not logged in"), set_cookie));
        };
        let mut n = session.get::<u64>("counter")?.unwrap_or(0);
        if request.get_param("peek").is_none() {
            n += 1;
            session.set("counter", &n)?;
        }
        let id = req.session_id().map(|id| id.as_str().to_string());
        let set_cookie = req.set_cookie();
        req.finish()?;
        Ok(with_cookie(
            Response::json(&json!({"counter": n, "node": self.name, "session": id})),
            set_cookie,
        ))
    }

    /// 200 once the node has the cluster's sessions, 503 before (balancers read the status).
    fn health(&self) -> Response {
        let mut members = self.cluster.channel().members();
        members.sort_by(|a, b| a.name.cmp(&b.name));
        let ready = self.app.is_ready();
        let stats = self.app.stats();
        Response::json(&json!({
            "node": self.name,
            "manager": match self.kind { ManagerKind::Backup => "backup", _ => "delta" },
            "ready": ready,
            "members": members.iter().map(|m| json!({"name": m.name, "addr": m.addr.to_string()})).collect::<Vec<_>>(),
            "sessions": stats.sessions,
            "messages_sent": stats.messages_sent,
            "messages_received": stats.messages_received,
        }))
        .with_status_code(if ready { 200 } else { 503 })
    }

    fn index(&self) -> Response {
        match std::fs::File::open(self.static_dir.join("index.html")) {
            Ok(f) => Response::from_file("text/html; charset=utf-8", f),
            Err(_) => error(404, "not found"),
        }
    }
}

fn error(status: u16, message: &str) -> Response {
    Response::json(&json!({ "error": message })).with_status_code(status)
}

/// `response` with the `Set-Cookie` the request decided (the library's cookie policy).
fn with_cookie(response: Response, set_cookie: Option<String>) -> Response {
    match set_cookie {
        Some(c) => response.with_additional_header(http::SET_COOKIE, c),
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
