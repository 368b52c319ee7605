//! Session ids (Tomcat's `SessionIdGenerator`): 128 random bits from the operating system,
//! written as 32 upper-case hex digits, with a `.jvmRoute` suffix naming the node that made it so
//! a sticky load balancer can route by it.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Random bytes in an id: 128 bits, as the issue asks and Tomcat's default `sessionIdLength` (16).
const ID_BYTES: usize = 16;
/// Longest id accepted from outside (a cookie): the hex part plus a route of up to 64 characters.
const MAX_ID_LEN: usize = ID_BYTES * 2 + 1 + 64;

/// A session id such as `5F1C…9A0B.server1`.
///
/// Ids read from the network are checked as [`SessionId::parse`] checks a cookie's: every id
/// this library makes passes, and a hostile one (megabytes long, say) cannot make the bounded
/// memories of ids (tombstones, claims, pending digests) hold more than their bound implies.
// A boxed `str`, not a `String`: 16 bytes instead of 24 and no spare capacity, in every session,
// tombstone and message (docs/PERFORMANCE.md, "Footprint of one node").
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String")]
pub struct SessionId(Box<str>);

/// Why a string is not a session id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionIdError {
    /// Longer than any id this library makes.
    TooLong(usize),
    /// The random part is not 32 upper-case hex digits.
    BadRandomPart,
    /// The route holds characters other than ASCII letters, digits, `-` and `_`.
    BadRoute,
    /// The operating system's random source failed.
    NoRandomness(String),
}

impl fmt::Display for SessionIdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionIdError::TooLong(n) => write!(f, "session id of {n} characters is too long"),
            SessionIdError::BadRandomPart => {
                write!(f, "session id must start with 32 upper-case hex digits")
            }
            SessionIdError::BadRoute => write!(
                f,
                "session id route may hold only letters, digits, '-' and '_'"
            ),
            SessionIdError::NoRandomness(e) => write!(f, "no randomness for a session id: {e}"),
        }
    }
}

impl std::error::Error for SessionIdError {}

fn valid_route(route: &str) -> bool {
    !route.is_empty()
        && route.len() <= 64
        && route
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The rules of an id from outside: the length first, so a long one costs nothing to refuse.
fn check(s: &str) -> Result<(), SessionIdError> {
    if s.len() > MAX_ID_LEN {
        return Err(SessionIdError::TooLong(s.len()));
    }
    let (random, route) = match s.split_once('.') {
        Some((r, route)) => (r, Some(route)),
        None => (s, None),
    };
    if random.len() != ID_BYTES * 2
        || !random
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
    {
        return Err(SessionIdError::BadRandomPart);
    }
    if route.is_some_and(|r| !valid_route(r)) {
        return Err(SessionIdError::BadRoute);
    }
    Ok(())
}

/// Deserialization (ids in messages from other members) checks as [`SessionId::parse`] does.
impl TryFrom<String> for SessionId {
    type Error = SessionIdError;

    fn try_from(s: String) -> Result<SessionId, SessionIdError> {
        check(&s)?;
        Ok(SessionId(s.into_boxed_str()))
    }
}

/// Where the random part of new session ids comes from. A manager core is given one: the
/// operating system's ([`OsRandom`]) in production, a seeded one in the simulation, so that a
/// seed replays the same ids (and so the same placements and message order).
pub trait IdSource: Send {
    /// Fills `bytes` with random bytes.
    fn fill(&mut self, bytes: &mut [u8]) -> Result<(), SessionIdError>;
}

/// The operating system's random source (`getrandom`), as Tomcat's `SecureRandom`.
#[derive(Clone, Copy, Debug, Default)]
pub struct OsRandom;

impl IdSource for OsRandom {
    fn fill(&mut self, bytes: &mut [u8]) -> Result<(), SessionIdError> {
        getrandom::fill(bytes).map_err(|e| SessionIdError::NoRandomness(e.to_string()))
    }
}

impl SessionId {
    /// A new id with `route` as suffix (none when empty), from the operating system's random.
    pub fn generate(route: &str) -> Result<SessionId, SessionIdError> {
        SessionId::generate_from(route, &mut OsRandom)
    }

    /// A new id with `route` as suffix (none when empty), its random part from `source`.
    pub fn generate_from(
        route: &str,
        source: &mut dyn IdSource,
    ) -> Result<SessionId, SessionIdError> {
        if !route.is_empty() && !valid_route(route) {
            return Err(SessionIdError::BadRoute);
        }
        let mut bytes = [0u8; ID_BYTES];
        source.fill(&mut bytes)?;
        let route_len = if route.is_empty() { 0 } else { 1 + route.len() };
        let mut s = String::with_capacity(ID_BYTES * 2 + route_len);
        for b in bytes {
            s.push(char::from(b"0123456789ABCDEF"[(b >> 4) as usize]));
            s.push(char::from(b"0123456789ABCDEF"[(b & 15) as usize]));
        }
        if !route.is_empty() {
            s.push('.');
            s.push_str(route);
        }
        Ok(SessionId(s.into_boxed_str()))
    }

    /// Checks an id that came from outside (a cookie, a URL).
    pub fn parse(s: &str) -> Result<SessionId, SessionIdError> {
        check(s)?;
        Ok(SessionId(s.into()))
    }

    /// The id as text (what the cookie carries).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The node suffix, if any.
    pub fn route(&self) -> Option<&str> {
        self.0.split_once('.').map(|(_, r)| r)
    }

    /// The random part, without the route.
    pub(crate) fn random_part(&self) -> &str {
        self.0.split_once('.').map_or(&*self.0, |(r, _)| r)
    }

    /// Whether `other` is this id with another route (route rebinding keeps the random part;
    /// a change of id draws a new one).
    pub(crate) fn same_random_part(&self, other: &SessionId) -> bool {
        self.random_part() == other.random_part()
    }

    /// The same random part with another route: what a failover node answers with so the load
    /// balancer sticks the user to it (Tomcat's `JvmRouteBinderValve`).
    pub fn with_route(&self, route: &str) -> Result<SessionId, SessionIdError> {
        if !valid_route(route) {
            return Err(SessionIdError::BadRoute);
        }
        Ok(SessionId(
            format!("{}.{route}", self.random_part()).into_boxed_str(),
        ))
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_random_url_safe_and_carry_the_route() {
        let a = SessionId::generate("server1").unwrap();
        let b = SessionId::generate("server1").unwrap();
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), 32 + 1 + 7);
        assert_eq!(a.route(), Some("server1"));
        assert_eq!(SessionId::parse(a.as_str()), Ok(a.clone()));
        assert!(a
            .as_str()
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'.'));
        let moved = a.with_route("server3").unwrap();
        assert_eq!(moved.route(), Some("server3"));
        assert_eq!(moved.as_str()[..32], a.as_str()[..32]);
        assert_eq!(SessionId::generate("").unwrap().route(), None);
    }

    #[test]
    fn hostile_ids_are_refused() {
        assert_eq!(SessionId::parse("abc"), Err(SessionIdError::BadRandomPart));
        assert_eq!(
            SessionId::parse(&"A".repeat(500)),
            Err(SessionIdError::TooLong(500))
        );
        let hex = "0123456789ABCDEF0123456789ABCDEF";
        assert!(SessionId::parse(hex).is_ok());
        assert_eq!(
            SessionId::parse(&format!("{hex}.a b")),
            Err(SessionIdError::BadRoute)
        );
        assert_eq!(
            SessionId::parse(&format!("{hex}.")),
            Err(SessionIdError::BadRoute)
        );
        assert_eq!(
            SessionId::parse(&hex.to_lowercase()),
            Err(SessionIdError::BadRandomPart)
        );
        assert_eq!(
            SessionId::generate("../x").unwrap_err(),
            SessionIdError::BadRoute
        );
    }

    /// Ids in messages were taken as any string: one of megabytes passed, and every bounded
    /// memory of ids (tombstones, claims, pending digests) could hold that much per entry.
    #[test]
    fn ids_from_the_network_are_checked_like_cookies() {
        use crate::wire::{decode_body, encode_body};
        let id = SessionId::generate("server1").unwrap();
        let bytes = encode_body(&id);
        assert_eq!(bytes, encode_body(&id.as_str()), "encoded as a string");
        assert_eq!(decode_body::<SessionId>(&bytes), Ok(id));
        let long = format!("{}.{}", "A".repeat(32), "r".repeat(1 << 20));
        assert!(decode_body::<SessionId>(&encode_body(&long)).is_err());
        assert_eq!(
            SessionId::try_from(long.clone()),
            Err(SessionIdError::TooLong(long.len()))
        );
        for bad in ["", "abc", "0123456789abcdef0123456789abcdef"] {
            assert!(
                decode_body::<SessionId>(&encode_body(&bad)).is_err(),
                "{bad}"
            );
        }
        let no_route = "0123456789ABCDEF0123456789ABCDEF";
        assert!(decode_body::<SessionId>(&encode_body(&no_route)).is_ok());
    }
}
