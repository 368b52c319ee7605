//! Framework-neutral glue between an HTTP server and a [`ClusterManager`] (feature `http`, on by
//! default; no HTTP crate): the three things every adapter otherwise writes by hand.
//!
//! - [`begin`]: waits (a bounded time) for a starting node's state transfer, reads the session
//!   id from the request's `Cookie` headers by the manager's cookie policy, and starts the
//!   [`SessionRequest`].
//! - [`SET_COOKIE`]: the response header for [`SessionRequest::set_cookie`].
//! - [`SessionRequestError::http_status`]: the status an error answers with.
//!
//! With rouille (`examples/rouille_node.rs` is a whole node):
//!
//! ```no_run
//! use std::sync::Arc;
//! use tribecast::{http, ClusterManager, SessionRequestError};
//!
//! fn profile(app: &Arc<ClusterManager>, request: &rouille::Request)
//!     -> Result<rouille::Response, SessionRequestError>
//! {
//!     let mut req = http::begin(app, &request.url(), request.headers(), http::READY_WAIT)?;
//!     let user: Option<String> = req.session().map(|s| s.get("user")).transpose()?.flatten();
//!     let set_cookie = req.set_cookie();
//!     req.finish()?;
//!     let mut response = rouille::Response::text(user.unwrap_or_default());
//!     if let Some(c) = set_cookie {
//!         response = response.with_additional_header(http::SET_COOKIE, c);
//!     }
//!     Ok(response)
//! }
//! ```

use crate::session::{ClusterManager, SessionRequest, SessionRequestError};
use std::sync::Arc;
use std::time::Duration;

/// The response header that carries [`SessionRequest::set_cookie`].
pub const SET_COOKIE: &str = "Set-Cookie";

/// A reasonable bound for [`begin`]'s wait on a starting node: a request that comes in while
/// the node still receives the cluster's sessions waits this long, then gets 503.
pub const READY_WAIT: Duration = Duration::from_secs(5);

/// The session id a request names: the first `Cookie` header among `headers` (name, value; the
/// name in any case) that carries the manager's session cookie (`JSESSIONID` by default,
/// [`CookieConfig`](crate::CookieConfig)). A request may carry several `Cookie` headers.
pub fn session_id<'h>(
    app: &ClusterManager,
    headers: impl IntoIterator<Item = (&'h str, &'h str)>,
) -> Option<&'h str> {
    headers
        .into_iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case("cookie"))
        .find_map(|(_, value)| app.session_id_from_cookie_header(value))
}

/// Starts the session request of an HTTP request with path `path` (checked against the valve
/// filter) and headers `headers` (name, value): the session its cookie names, once the
/// manager is ready. A node that is still receiving the cluster's sessions is waited for at
/// most `ready_wait`, then [`SessionRequestError::NotReady`] (503) is returned: serving the
/// request before would not find sessions the cluster has.
pub fn begin<'h>(
    app: &Arc<ClusterManager>,
    path: &str,
    headers: impl IntoIterator<Item = (&'h str, &'h str)>,
    ready_wait: Duration,
) -> Result<SessionRequest, SessionRequestError> {
    if !app.is_ready() && !app.wait_ready(ready_wait) {
        return Err(SessionRequestError::NotReady);
    }
    Ok(app.request(session_id(app, headers), path))
}

impl SessionRequestError {
    /// The HTTP status a request that failed with this error answers with: 503 (Service
    /// Unavailable: try again, perhaps on another node) when the node is not ready, the
    /// request's change did not reach every member, or the node holds `max_active_sessions`
    /// and refused a new one; 500 for the rest (no session id could be made, an attribute did
    /// not serialize or would make the session larger than `max_session_size`).
    pub fn http_status(&self) -> u16 {
        match self {
            SessionRequestError::NotReady
            | SessionRequestError::Send(_)
            | SessionRequestError::TooManySessions(_) => 503,
            SessionRequestError::Id(_) | SessionRequestError::Attribute(_) => 500,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ClusterConfig, SimpleTcpCluster};

    #[test]
    fn the_session_cookie_is_found_in_any_cookie_header() {
        let cluster = SimpleTcpCluster::new(ClusterConfig::default()).expect("cluster");
        let app = cluster.add_application("/app");
        let id = "0123456789ABCDEF0123456789ABCDEF.node1";
        let second = format!("a=1; JSESSIONID={id}");
        let headers = [
            ("Host", "x"),
            ("cookie", "theme=dark"),
            ("Cookie", second.as_str()),
        ];
        assert_eq!(session_id(&app, headers), Some(id));
        assert_eq!(session_id(&app, [("Cookie", "a=1")]), None);
        assert_eq!(session_id(&app, [("Set-Cookie", "JSESSIONID=x")]), None);
    }

    #[test]
    fn begin_reads_the_cookie_once_ready() {
        let cluster = SimpleTcpCluster::new(ClusterConfig::default()).expect("cluster");
        let app = cluster.add_application("/app");
        // A node with no members has nothing to receive: ready at once.
        assert!(app.is_ready());
        let mut req = begin(
            &app,
            "/app/x",
            [("Cookie", "JSESSIONID=junk")],
            Duration::ZERO,
        )
        .expect("ready");
        assert!(req.session().is_none(), "no such session");
        assert_eq!(req.set_cookie(), None);
        req.finish().expect("nothing to send");
    }

    #[test]
    fn statuses() {
        assert_eq!(SessionRequestError::NotReady.http_status(), 503);
        let e = crate::SessionIdError::BadRandomPart;
        assert_eq!(SessionRequestError::Id(e).http_status(), 500);
        let full = crate::TooManySessions { active: 3, max: 3 };
        assert_eq!(
            SessionRequestError::TooManySessions(full).http_status(),
            503
        );
    }
}
