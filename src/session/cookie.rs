//! The session cookie policy (Tomcat's `Context` cookie attributes, the Servlet
//! `SessionCookieConfig` and `Rfc6265CookieProcessor`'s `sameSiteCookies`), framework-neutral:
//! a `Cookie` header string in, a `Set-Cookie` header value out. No HTTP crate is involved; the
//! application copies the string into whatever its server calls a header.
//!
//! Which `Set-Cookie` a response needs is the request's decision ([`SessionRequest::set_cookie`](
//! super::manager::SessionRequest::set_cookie)): one for a new session, a changed id (login, or a
//! route rebound after failover), an expired cookie for a session the request ended, and none
//! when nothing changed.

use super::id::SessionId;
use crate::error::ConfigError;
use std::fmt::Write as _;
use std::time::Duration;

/// The cookie's `SameSite` attribute (Tomcat: `Rfc6265CookieProcessor` `sameSiteCookies`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SameSite {
    /// No `SameSite` attribute: the browser's default applies (Tomcat's default, `unset`).
    Unset,
    /// `SameSite=None`: sent on cross-site requests too; browsers require `Secure` with it.
    None,
    /// `SameSite=Lax` (our default): sent on top-level navigations from other sites, not on
    /// their sub-requests or form posts.
    Lax,
    /// `SameSite=Strict`: never sent on a request another site started.
    Strict,
}

/// How the session cookie is named and written (Tomcat: `sessionCookieName`,
/// `sessionCookiePath`, `sessionCookieDomain`, `useHttpOnly`, the Servlet `SessionCookieConfig`
/// `secure` and `maxAge`, and `sameSiteCookies`).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CookieConfig {
    /// The cookie's name (Tomcat: `sessionCookieName`, `JSESSIONID`).
    pub name: String,
    /// `Path`; `None` is the application's context path, `/` for the root context (Tomcat:
    /// `sessionCookiePath`, by default the context path).
    pub path: Option<String>,
    /// `Domain`; `None` leaves it out, so the cookie goes back to this host only (Tomcat:
    /// `sessionCookieDomain`).
    pub domain: Option<String>,
    /// `HttpOnly`: scripts in the page cannot read the cookie (Tomcat: `useHttpOnly`, true).
    /// Turning it off lets any script injected into the page steal the session.
    pub http_only: bool,
    /// `Secure`: the browser sends the cookie over HTTPS only (`SessionCookieConfig.secure`;
    /// Tomcat sets it on HTTPS requests). False by default; set it when users reach the server
    /// over HTTPS (the balancer's TLS counts).
    pub secure: bool,
    /// `SameSite` (Tomcat: `sameSiteCookies`, `unset` by default; ours is `Lax`).
    pub same_site: SameSite,
    /// `Max-Age`; `None` makes a browser-session cookie, gone when the browser closes
    /// (`SessionCookieConfig.maxAge`, -1). Like Tomcat's, the cookie is written when the id
    /// changes, not refreshed on every request: a `Max-Age` counts from the login.
    pub max_age: Option<Duration>,
}

impl Default for CookieConfig {
    fn default() -> Self {
        CookieConfig {
            name: "JSESSIONID".to_string(),
            path: None,
            domain: None,
            http_only: true,
            secure: false,
            same_site: SameSite::Lax,
            max_age: None,
        }
    }
}

/// A cookie name is an RFC 6265 token.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// An attribute value (path, domain): printable ASCII without `;`.
fn is_attr_value(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| (0x21..0x7f).contains(&b) && b != b';')
}

impl CookieConfig {
    /// Checks that the cookie can be written: the name is a token, the path and domain hold
    /// no `;` or control characters, and `SameSite=None` comes with `Secure` (browsers drop the
    /// cookie otherwise).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !is_token(&self.name) {
            return Err(ConfigError {
                key: "cookie.name",
                reason: format!("'{}' is not a cookie name (an RFC 6265 token)", self.name),
            });
        }
        for (key, v) in [("cookie.path", &self.path), ("cookie.domain", &self.domain)] {
            if let Some(v) = v.as_deref().filter(|v| !is_attr_value(v)) {
                return Err(ConfigError {
                    key,
                    reason: format!(
                        "'{}' is empty or holds ';', a space or a control character",
                        v.escape_debug()
                    ),
                });
            }
        }
        if self.same_site == SameSite::None && !self.secure {
            return Err(ConfigError {
                key: "cookie.same_site",
                reason: "SameSite=None needs secure = true (browsers refuse it otherwise)".into(),
            });
        }
        Ok(())
    }

    /// The session id in a `Cookie` request header (`a=1; JSESSIONID=…; b=2`): the value of
    /// the first cookie of this name that is a well-formed session id (a browser sends the
    /// cookie of the most specific path first). Several `Cookie` headers can be joined with
    /// `"; "` first. Returns the id as sent; `None` if there is none.
    pub fn session_id_from_cookie_header<'h>(&self, header: &'h str) -> Option<&'h str> {
        header
            .split(';')
            .filter_map(|pair| pair.split_once('='))
            .filter(|(name, _)| name.trim() == self.name)
            .map(|(_, value)| value.trim().trim_matches('"'))
            .find(|value| SessionId::parse(value).is_ok())
    }

    /// The `Set-Cookie` value that gives the client session `id`, for application `context`.
    pub fn set_cookie(&self, context: &str, id: &SessionId) -> String {
        let mut s = format!("{}={}", self.name, id);
        self.attributes(context, &mut s, self.max_age.map(|d| d.as_secs()));
        s
    }

    /// The `Set-Cookie` value that removes the session cookie (the session ended): an empty
    /// value with `Max-Age=0` and an `Expires` in the past, on the same path and domain.
    pub fn expire_cookie(&self, context: &str) -> String {
        let mut s = format!("{}=", self.name);
        self.attributes(context, &mut s, Some(0));
        s.push_str("; Expires=Thu, 01 Jan 1970 00:00:00 GMT");
        s
    }

    /// The cookie's path for `context`.
    pub fn path_for<'a>(&'a self, context: &'a str) -> &'a str {
        match self.path.as_deref() {
            Some(p) => p,
            None if context.is_empty() => "/",
            None => context,
        }
    }

    fn attributes(&self, context: &str, s: &mut String, max_age: Option<u64>) {
        let _ = write!(s, "; Path={}", self.path_for(context));
        if let Some(d) = &self.domain {
            let _ = write!(s, "; Domain={d}");
        }
        if let Some(secs) = max_age {
            let _ = write!(s, "; Max-Age={secs}");
        }
        if self.secure {
            s.push_str("; Secure");
        }
        if self.http_only {
            s.push_str("; HttpOnly");
        }
        match self.same_site {
            SameSite::Unset => {}
            SameSite::None => s.push_str("; SameSite=None"),
            SameSite::Lax => s.push_str("; SameSite=Lax"),
            SameSite::Strict => s.push_str("; SameSite=Strict"),
        }
    }
}

/// What a request's response must do with the session cookie.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum CookieChange {
    /// Nothing: the client's cookie is right.
    Keep,
    /// Give the client this id (a new session, a changed id, a rebound route).
    Set(SessionId),
    /// Remove the client's cookie (the session the request had was ended).
    Expire,
}

/// The decision: `sent` is the id the client's cookie named, `now` the request's session at
/// this point (`None` if it has none, or ended it), `ended` whether the request ended one.
pub(crate) fn cookie_change(
    sent: Option<&str>,
    now: Option<&SessionId>,
    ended: bool,
) -> CookieChange {
    match now {
        Some(id) if sent != Some(id.as_str()) => CookieChange::Set(id.clone()),
        Some(_) => CookieChange::Keep,
        None if ended && sent.is_some() => CookieChange::Expire,
        None => CookieChange::Keep,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789ABCDEF0123456789ABCDEF";

    fn id(route: &str) -> SessionId {
        SessionId::parse(&format!("{HEX}.{route}")).unwrap()
    }

    #[test]
    fn the_default_cookie_is_jsessionid_on_the_context_path_http_only_and_lax() {
        let c = CookieConfig::default();
        c.validate().unwrap();
        assert_eq!(
            c.set_cookie("/app", &id("node1")),
            format!("JSESSIONID={HEX}.node1; Path=/app; HttpOnly; SameSite=Lax")
        );
        assert_eq!(
            c.set_cookie("", &id("node1")),
            format!("JSESSIONID={HEX}.node1; Path=/; HttpOnly; SameSite=Lax"),
            "the root context's path is /"
        );
    }

    #[test]
    fn every_attribute_is_written_as_configured() {
        let c = CookieConfig {
            name: "SID".into(),
            path: Some("/".into()),
            domain: Some("example.com".into()),
            http_only: false,
            secure: true,
            same_site: SameSite::Strict,
            max_age: Some(Duration::from_secs(3600)),
        };
        c.validate().unwrap();
        assert_eq!(
            c.set_cookie("/app", &id("n2")),
            format!(
                "SID={HEX}.n2; Path=/; Domain=example.com; Max-Age=3600; Secure; SameSite=Strict"
            )
        );
        let none = CookieConfig {
            same_site: SameSite::None,
            secure: true,
            ..CookieConfig::default()
        };
        assert!(none
            .set_cookie("/a", &id("n"))
            .ends_with("; Secure; HttpOnly; SameSite=None"));
        let unset = CookieConfig {
            same_site: SameSite::Unset,
            ..CookieConfig::default()
        };
        assert!(!unset.set_cookie("/a", &id("n")).contains("SameSite"));
    }

    #[test]
    fn an_ended_session_expires_the_cookie_on_the_same_path_and_domain() {
        let c = CookieConfig {
            domain: Some("example.com".into()),
            secure: true,
            max_age: Some(Duration::from_secs(60)),
            ..CookieConfig::default()
        };
        assert_eq!(
            c.expire_cookie("/app"),
            "JSESSIONID=; Path=/app; Domain=example.com; Max-Age=0; Secure; HttpOnly; \
             SameSite=Lax; Expires=Thu, 01 Jan 1970 00:00:00 GMT"
        );
    }

    #[test]
    fn the_session_id_is_read_from_a_cookie_header() {
        let c = CookieConfig::default();
        let h = format!("theme=dark; JSESSIONID={HEX}.node1; other=x");
        let want = format!("{HEX}.node1");
        assert_eq!(c.session_id_from_cookie_header(&h), Some(want.as_str()));
        assert_eq!(
            c.session_id_from_cookie_header(&format!("JSESSIONID=\"{HEX}\"")),
            Some(HEX),
            "quoted"
        );
        // A malformed one is skipped for a well-formed one of the same name.
        let two = format!("JSESSIONID=garbage;JSESSIONID={HEX}.a");
        assert_eq!(
            c.session_id_from_cookie_header(&two).map(|s| &s[33..]),
            Some("a")
        );
        for none in [
            "",
            "theme=dark",
            "JSESSIONID",
            "JSESSIONID=",
            "XJSESSIONID=x; a",
        ] {
            assert_eq!(c.session_id_from_cookie_header(none), None, "{none}");
        }
        let long = format!("JSESSIONID={}", "A".repeat(1 << 20));
        assert_eq!(c.session_id_from_cookie_header(&long), None);
        let named = CookieConfig {
            name: "SID".into(),
            ..CookieConfig::default()
        };
        assert_eq!(named.session_id_from_cookie_header(&h), None);
    }

    #[test]
    fn a_cookie_that_cannot_be_written_is_refused() {
        for (c, key) in [
            (
                CookieConfig {
                    name: "a b".into(),
                    ..CookieConfig::default()
                },
                "cookie.name",
            ),
            (
                CookieConfig {
                    name: String::new(),
                    ..CookieConfig::default()
                },
                "cookie.name",
            ),
            (
                CookieConfig {
                    path: Some("/a;b".into()),
                    ..CookieConfig::default()
                },
                "cookie.path",
            ),
            (
                CookieConfig {
                    domain: Some("a\nb".into()),
                    ..CookieConfig::default()
                },
                "cookie.domain",
            ),
            (
                CookieConfig {
                    same_site: SameSite::None,
                    ..CookieConfig::default()
                },
                "cookie.same_site",
            ),
        ] {
            assert_eq!(c.validate().unwrap_err().key, key, "{c:?}");
        }
    }

    #[test]
    fn the_request_decides_which_set_cookie_its_response_needs() {
        let (a, b) = (id("node1"), id("node3"));
        // A new session.
        assert_eq!(
            cookie_change(None, Some(&a), false),
            CookieChange::Set(a.clone())
        );
        // A cookie for a session that is not here any more, and a new one made.
        assert_eq!(
            cookie_change(Some("x"), Some(&a), false),
            CookieChange::Set(a.clone())
        );
        // The same session: nothing to send.
        assert_eq!(
            cookie_change(Some(a.as_str()), Some(&a), false),
            CookieChange::Keep
        );
        // A changed id (login) or a rebound route.
        assert_eq!(
            cookie_change(Some(a.as_str()), Some(&b), false),
            CookieChange::Set(b)
        );
        // Ended by the request: the cookie goes.
        assert_eq!(
            cookie_change(Some(a.as_str()), None, true),
            CookieChange::Expire
        );
        // Made and ended in one request, with no cookie sent: nothing to remove.
        assert_eq!(cookie_change(None, None, true), CookieChange::Keep);
        // No session, none ended (a cookie naming an unknown session is left alone).
        assert_eq!(
            cookie_change(Some(a.as_str()), None, false),
            CookieChange::Keep
        );
        assert_eq!(cookie_change(None, None, false), CookieChange::Keep);
    }
}
