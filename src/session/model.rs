//! The session (Tomcat's `DeltaSession`): attributes as self-describing bytes with typed access
//! (MessagePack with field names, `attr.rs`, so a session type can gain and lose fields), the
//! times that decide expiry, the authenticated principal, and a per-session version that orders
//! replicated changes.
//!
//! The type system plays the role of `java.io.Serializable`: any `T: Serialize` can be stored,
//! and `#[serde(skip)]` on a field is Java's `transient`. Every change made through this API is
//! also recorded in the session's pending delta (Tomcat's `DeltaRequest`), which the manager
//! takes at the end of the request and sends as one message.

use super::id::SessionId;
use crate::member::MemberId;
pub use attributes::{Attributes, AttributesIter};
use cached::Fingerprinted;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

mod attributes;
mod cached;
#[cfg(test)]
mod fingerprint_tests;

/// Default `max_inactive` (Tomcat's `<session-timeout>` 30 minutes).
pub const DEFAULT_MAX_INACTIVE: Duration = Duration::from_secs(30 * 60);
/// Longest attribute name accepted.
pub const MAX_NAME_LEN: usize = 1024;
/// What a session's encoded state takes beyond its strings, at most: five integers of up to
/// 10 bytes, the length prefixes of the id and the principal's strings, the option tags.
const STATE_OVERHEAD: usize = 96;
/// What one attribute takes beyond its name and value bytes, at most: two length prefixes.
const ATTRIBUTE_OVERHEAD: usize = 20;

/// Why an attribute could not be stored or read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionError {
    /// The value could not be serialized.
    Encode {
        /// The attribute.
        name: String,
        /// The encoder's message.
        reason: String,
    },
    /// The stored bytes are not a `T`: another type was stored under this name, the type changed
    /// in a way that is not compatible (a field added without `#[serde(default)]`, a field renamed
    /// or retyped, an enum variant this version does not know), or the bytes are of an attribute
    /// encoding this version does not read. `reason` says which.
    Decode {
        /// The attribute.
        name: String,
        /// The decoder's message.
        reason: String,
    },
    /// The name is empty or longer than `MAX_NAME_LEN`.
    BadName(usize),
    /// The session was invalidated.
    Invalidated,
    /// Storing the value would make the session larger than its limit
    /// (`ManagerConfig::max_session_size`, lowered to fit one `max_frame_size` frame): nothing
    /// was stored, the session is as it was, and nothing is sent.
    TooLarge {
        /// The attribute.
        name: String,
        /// What the session would have measured ([`Session::size`], with the names this
        /// request removed).
        size: usize,
        /// The limit.
        max: usize,
    },
}

impl fmt::Display for SessionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionError::Encode { name, reason } => {
                write!(f, "cannot serialize attribute '{name}': {reason}")
            }
            SessionError::Decode { name, reason } => write!(
                f,
                "attribute '{name}' is not of the requested type: {reason}"
            ),
            SessionError::BadName(n) => write!(
                f,
                "attribute name of {n} bytes (must be 1 to {MAX_NAME_LEN})"
            ),
            SessionError::Invalidated => write!(f, "session was invalidated"),
            SessionError::TooLarge { name, size, max } => write!(
                f,
                "attribute '{name}' not stored: the session would be {size} bytes, more than \
                 max_session_size ({max} bytes)"
            ),
        }
    }
}

impl std::error::Error for SessionError {}

/// One change to a session, as replicated.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum DeltaOp {
    SetAttribute(String, #[serde(with = "crate::wire::bytes")] Vec<u8>),
    RemoveAttribute(String),
    MaxInactive(u64),
    /// Principal name and auth type (login, logout).
    Principal(Option<String>, Option<String>),
}

impl DeltaOp {
    /// Ops on the same key replace each other within one request (Tomcat's
    /// `recordAllActions=false`): only the last set or remove of a name is sent.
    fn key(&self) -> (u8, &str) {
        match self {
            DeltaOp::SetAttribute(n, _) | DeltaOp::RemoveAttribute(n) => (0, n),
            DeltaOp::MaxInactive(_) => (1, ""),
            DeltaOp::Principal(..) => (2, ""),
        }
    }
}

/// Everything replicated about a session (for CREATED and full state transfer).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionState {
    /// Its id.
    pub id: SessionId,
    /// Its attributes, each the bytes of its encoded value, by name.
    pub attributes: Attributes,
    /// When it was created, in ms since the epoch.
    pub creation_ms: u64,
    /// When it was last used, in ms since the epoch.
    pub last_accessed_ms: u64,
    /// 0: never expires.
    pub max_inactive_ms: u64,
    /// The authenticated user's name, if any (Tomcat's `principal`).
    pub principal: Option<String>,
    /// How the user authenticated (`BASIC`, `FORM`, ...), if any.
    pub auth_type: Option<String>,
    /// Changes applied so far; a replica applies a delta only on top of the version it was made
    /// from.
    pub version: u64,
}

impl SessionState {
    /// The value of attribute `name` in this state, if any, as a `T` (what `Session::get`
    /// reads; a `SessionMerger` sees states, not sessions).
    pub fn attribute<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, SessionError> {
        self.attributes
            .get(name)
            .map(|b| {
                super::attr::decode(b).map_err(|reason| SessionError::Decode {
                    name: name.into(),
                    reason,
                })
            })
            .transpose()
    }

    /// Sets attribute `name` to `value` in this state, encoded as `Session::set` encodes it: how
    /// a `SessionMerger` builds the surviving copy (a request uses `Session::set`).
    pub fn set_attribute<T: Serialize + ?Sized>(
        &mut self,
        name: &str,
        value: &T,
    ) -> Result<(), SessionError> {
        let bytes = super::attr::encode(value).map_err(|reason| SessionError::Encode {
            name: name.into(),
            reason,
        })?;
        self.attributes.insert(name, bytes);
        Ok(())
    }
}

/// What became of a replicated delta.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(clippy::enum_variant_names)] // `Applied::Applied` reads as the outcome it is
pub(crate) enum Applied {
    Applied,
    /// Made from an older version than this copy has: a duplicate or an overtaken change.
    Stale,
    /// Made from a newer version than this copy has: changes are missing; ask for the session.
    Gap,
}

/// What [`Session::apply_delta_checked`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Checked {
    Applied,
    /// This copy is already at the change's version, with the content the change names.
    Duplicate,
    /// Made from an older version than this copy has.
    Stale,
    /// Made from a newer version than this copy has: changes are missing.
    Gap,
    /// Made from, or resulting in, another state at a version this copy has: the copies forked.
    Differs,
}

/// What the DeltaManager keeps about a session beside its state (not replicated). Kept in the
/// session rather than in a map of its own beside the store: that map held every id a third
/// time and about 100 bytes a session (docs/PERFORMANCE.md, "Footprint of one node").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Served {
    /// This node served the session's last request: it expires it on time and tells the others.
    pub(crate) here: bool,
    /// Last access time sent to the others.
    pub(crate) replicated_access_ms: u64,
    /// The member whose message brought this copy's version (none: made here).
    pub(crate) writer: Option<MemberId>,
    /// That member left since (died, or restarted): a version only it and this node hold may
    /// be its change that failed, never acknowledged.
    pub(crate) writer_left: bool,
}

/// A live session.
#[derive(Clone, Debug)]
pub struct Session {
    /// The state, with its content fingerprint computed once per content.
    state: Fingerprinted,
    /// Whether this node serves it (DeltaManager); a copy from another member starts with the
    /// default (not served here).
    pub(crate) served: Served,
    is_new: bool,
    valid: bool,
    pending: Vec<DeltaOp>,
    /// The largest [`size`](Self::size) `set` may make it (a request's working copy has its
    /// manager's limit; other copies none).
    max_size: usize,
}

impl Session {
    /// A new session, created at `now_ms` (ms since the epoch).
    pub(crate) fn new(id: SessionId, now_ms: u64, max_inactive: Duration) -> Session {
        Session {
            state: Fingerprinted::new(SessionState {
                id,
                attributes: Attributes::new(),
                creation_ms: now_ms,
                last_accessed_ms: now_ms,
                max_inactive_ms: max_inactive.as_millis().min(u64::MAX as u128) as u64,
                principal: None,
                auth_type: None,
                version: 0,
            }),
            served: Served::default(),
            is_new: true,
            valid: true,
            pending: Vec::new(),
            max_size: usize::MAX,
        }
    }

    /// A replica made from replicated state.
    pub(crate) fn from_state(state: SessionState) -> Session {
        Session {
            state: Fingerprinted::new(state),
            served: Served::default(),
            is_new: false,
            valid: true,
            pending: Vec::new(),
            max_size: usize::MAX,
        }
    }

    /// Its replicated state (id, version, attributes, times).
    pub fn state(&self) -> &SessionState {
        &self.state
    }

    /// The content fingerprint of its state ([`super::reconcile::fingerprint`]), computed once
    /// per content.
    pub(crate) fn fingerprint(&self) -> u64 {
        self.state.fingerprint()
    }

    /// Its id.
    pub fn id(&self) -> &SessionId {
        &self.state.id
    }

    /// Its version: one more for every change replicated.
    pub fn version(&self) -> u64 {
        self.state.version
    }

    /// True until the client has sent the session's id back once.
    pub fn is_new(&self) -> bool {
        self.is_new
    }

    /// Whether it is still live (not invalidated or expired).
    pub fn is_valid(&self) -> bool {
        self.valid
    }

    /// When it was created, in ms since the epoch.
    pub fn creation_ms(&self) -> u64 {
        self.state.creation_ms
    }

    /// When it was last used, in ms since the epoch.
    pub fn last_accessed_ms(&self) -> u64 {
        self.state.last_accessed_ms
    }

    /// How long it may stay unused before it expires.
    pub fn max_inactive(&self) -> Duration {
        Duration::from_millis(self.state.max_inactive_ms)
    }

    /// The authenticated user's name, if any.
    pub fn principal(&self) -> Option<&str> {
        self.state.principal.as_deref()
    }

    /// How the user authenticated, if any.
    pub fn auth_type(&self) -> Option<&str> {
        self.state.auth_type.as_deref()
    }

    /// Whether the session has been idle longer than its max inactive interval at `now_ms`.
    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.state.max_inactive_ms > 0
            && now_ms.saturating_sub(self.state.last_accessed_ms) > self.state.max_inactive_ms
    }

    /// Whether the others' view of the access time, last sent at `replicated_ms`, needs a
    /// refresh at `now_ms`: after half the max inactive interval (never for a session that never
    /// expires), so a replica never expires a session in use.
    pub(crate) fn access_refresh_due(&self, replicated_ms: u64, now_ms: u64) -> bool {
        let throttle = match self.state.max_inactive_ms {
            0 => u64::MAX,
            max => max / 2,
        };
        now_ms.saturating_sub(replicated_ms) >= throttle
    }

    /// Records a request's access (not a replicated change by itself).
    pub(crate) fn access(&mut self, now_ms: u64) {
        let ms = self.state.last_accessed_ms.max(now_ms);
        self.state.set_last_accessed_ms(ms);
    }

    /// The client came back with the id: the session is no longer new.
    pub(crate) fn mark_not_new(&mut self) {
        self.is_new = false;
    }

    fn check(&self, name: &str) -> Result<(), SessionError> {
        if !self.valid {
            return Err(SessionError::Invalidated);
        }
        if name.is_empty() || name.len() > MAX_NAME_LEN {
            return Err(SessionError::BadName(name.len()));
        }
        Ok(())
    }

    fn record(&mut self, op: DeltaOp) {
        let key = op.key();
        if let Some(i) = self.pending.iter().position(|p| p.key() == key) {
            self.pending.remove(i);
        }
        self.pending.push(op);
    }

    /// Its size in bytes as a replication message carries it, at most: its attributes' names
    /// and encoded values, id, principal, and a fixed overhead. What
    /// `ManagerConfig::max_session_size` bounds.
    pub fn size(&self) -> usize {
        let st = &self.state;
        let strings = [&st.principal, &st.auth_type]
            .iter()
            .map(|s| s.as_ref().map_or(0, String::len))
            .sum::<usize>();
        let attributes: usize = st
            .attributes
            .iter()
            .map(|(n, v)| attribute_size(n, v.len()))
            .sum();
        STATE_OVERHEAD + st.id.as_str().len() + strings + attributes
    }

    /// The limit `set` keeps this copy within (see [`SessionError::TooLarge`]).
    pub(crate) fn limit_size(&mut self, max: usize) {
        self.max_size = max;
    }

    /// Whether `name` may be set to `len` bytes: the session with it, plus the names this
    /// request removed (its change carries them too), stays within the limit.
    fn check_size(&self, name: &str, len: usize) -> Result<(), SessionError> {
        if self.max_size == usize::MAX {
            return Ok(());
        }
        let old = self
            .state
            .attributes
            .get(name)
            .map_or(0, |v| attribute_size(name, v.len()));
        let removed: usize = self
            .pending
            .iter()
            .map(|op| match op {
                DeltaOp::RemoveAttribute(n) if n != name => attribute_size(n, 0),
                _ => 0,
            })
            .sum();
        let size = (self.size() - old)
            .saturating_add(attribute_size(name, len))
            .saturating_add(removed);
        if size > self.max_size {
            return Err(SessionError::TooLarge {
                name: name.into(),
                size,
                max: self.max_size,
            });
        }
        Ok(())
    }

    /// Stores `value` under `name`. Refused with [`SessionError::TooLarge`] when the session
    /// would grow past its limit (nothing stored, nothing sent).
    pub fn set<T: Serialize + ?Sized>(
        &mut self,
        name: &str,
        value: &T,
    ) -> Result<(), SessionError> {
        self.check(name)?;
        let bytes = super::attr::encode(value).map_err(|reason| SessionError::Encode {
            name: name.into(),
            reason,
        })?;
        self.check_size(name, bytes.len())?;
        self.state.content_mut().attributes.insert(name, &bytes);
        self.record(DeltaOp::SetAttribute(name.to_string(), bytes));
        Ok(())
    }

    /// The value under `name`, if any, as a `T`.
    pub fn get<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, SessionError> {
        if !self.valid {
            return Err(SessionError::Invalidated);
        }
        self.state.attribute(name)
    }

    /// Removes attribute `name` (nothing happens if it is not there).
    pub fn remove(&mut self, name: &str) -> Result<(), SessionError> {
        self.check(name)?;
        // Looked up first: a remove of a missing name keeps the fingerprint.
        if self.state.attributes.contains_key(name) {
            self.state.content_mut().attributes.remove(name);
            self.record(DeltaOp::RemoveAttribute(name.to_string()));
        }
        Ok(())
    }

    /// The names of its attributes, in alphabetical order.
    pub fn attribute_names(&self) -> impl Iterator<Item = &str> {
        self.state.attributes.keys()
    }

    /// Sets how long it may stay unused before it expires (Servlet `setMaxInactiveInterval`).
    pub fn set_max_inactive(&mut self, d: Duration) {
        let ms = d.as_millis().min(u64::MAX as u128) as u64;
        if ms != self.state.max_inactive_ms {
            self.state.content_mut().max_inactive_ms = ms;
            self.record(DeltaOp::MaxInactive(ms));
        }
    }

    /// Sets (login) or clears (logout) the authenticated principal.
    pub fn set_principal(&mut self, principal: Option<&str>, auth_type: Option<&str>) {
        let st = self.state.content_mut();
        st.principal = principal.map(str::to_string);
        st.auth_type = auth_type.map(str::to_string);
        self.record(DeltaOp::Principal(
            self.state.principal.clone(),
            self.state.auth_type.clone(),
        ));
    }

    /// Ends the session: every later use fails with `Invalidated`. On a request's session
    /// (`SessionRequest::session`) the session ends on every member when the request ends (`finish` or
    /// drop), as `HttpSession.invalidate()` does in a Tomcat cluster.
    pub fn invalidate(&mut self) {
        self.valid = false;
        self.pending.clear();
    }

    /// Takes the changes recorded since the last call, without touching the version: a
    /// request's working copy hands them to the stored session this way.
    pub(crate) fn take_pending(&mut self) -> Vec<DeltaOp> {
        std::mem::take(&mut self.pending)
    }

    fn apply_op(&mut self, op: &DeltaOp) {
        let st = self.state.content_mut();
        match op {
            DeltaOp::SetAttribute(n, v) => {
                st.attributes.insert(n, v);
            }
            DeltaOp::RemoveAttribute(n) => {
                st.attributes.remove(n);
            }
            DeltaOp::MaxInactive(ms) => st.max_inactive_ms = *ms,
            DeltaOp::Principal(p, a) => {
                st.principal = p.clone();
                st.auth_type = a.clone();
            }
        }
    }

    /// Applies changes made elsewhere on this node (a request's working copy) as local changes:
    /// the state takes them and they are recorded for replication.
    pub(crate) fn record_ops(&mut self, ops: Vec<DeltaOp>) {
        for op in ops {
            self.apply_op(&op);
            self.record(op);
        }
    }

    /// Whether changes wait to be replicated (a working copy's own, not yet taken).
    pub(crate) fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Takes the changes made since the last call, bumping the version: returns the version the
    /// changes apply to, the new version and the changes. `None` when nothing changed.
    pub(crate) fn take_delta(&mut self) -> Option<(u64, u64, Vec<DeltaOp>)> {
        if self.pending.is_empty() {
            return None;
        }
        let base = self.state.version;
        // Saturating: a replica adopted at u64::MAX (from the network) must not panic here.
        self.state.set_version(base.saturating_add(1));
        Some((base, self.state.version, std::mem::take(&mut self.pending)))
    }

    /// Applies a replicated delta made from version `base` (giving `version`), if this copy is
    /// at `base`; a stale or duplicate delta changes nothing.
    pub(crate) fn apply_delta(&mut self, base: u64, version: u64, ops: &[DeltaOp]) -> Applied {
        if base < self.state.version || version <= self.state.version {
            return Applied::Stale;
        }
        if base > self.state.version {
            return Applied::Gap;
        }
        for op in ops {
            self.apply_op(op);
        }
        self.state.set_version(version);
        Applied::Applied
    }

    /// [`apply_delta`](Self::apply_delta) for a change that names the content fingerprint of
    /// its result ([`super::reconcile::fingerprint`]): a change made from another state than
    /// this copy's at the same version (its result here would not be the sender's), or a
    /// duplicate by version whose content is not this copy's, is [`Checked::Differs`] and
    /// changes nothing: this copy and the sender's forked.
    pub(crate) fn apply_delta_checked(
        &mut self,
        base: u64,
        version: u64,
        ops: &[DeltaOp],
        result: u64,
    ) -> Checked {
        if version == self.state.version && base < version {
            return if self.state.fingerprint() == result {
                Checked::Duplicate
            } else {
                Checked::Differs
            };
        }
        if base < self.state.version || version <= self.state.version {
            return Checked::Stale;
        }
        if base > self.state.version {
            return Checked::Gap;
        }
        // What the ops replace, to put back if the result is not the sender's.
        let undo: Vec<DeltaOp> = ops.iter().rev().map(|op| self.inverse(op)).collect();
        for op in ops {
            self.apply_op(op);
        }
        if self.state.fingerprint() != result {
            for op in &undo {
                self.apply_op(op);
            }
            return Checked::Differs;
        }
        self.state.set_version(version);
        Checked::Applied
    }

    /// The op that puts back what `op` replaces.
    fn inverse(&self, op: &DeltaOp) -> DeltaOp {
        let st = &self.state;
        match op {
            DeltaOp::SetAttribute(n, _) | DeltaOp::RemoveAttribute(n) => {
                match st.attributes.get(n) {
                    Some(v) => DeltaOp::SetAttribute(n.clone(), v.to_vec()),
                    None => DeltaOp::RemoveAttribute(n.clone()),
                }
            }
            DeltaOp::MaxInactive(_) => DeltaOp::MaxInactive(st.max_inactive_ms),
            DeltaOp::Principal(..) => {
                DeltaOp::Principal(st.principal.clone(), st.auth_type.clone())
            }
        }
    }

    /// Replaces the id (fixation protection after login); the caller re-keys its map.
    pub(crate) fn change_id(&mut self, new: SessionId) -> SessionId {
        self.state.replace_id(new)
    }
}

/// What attribute `name` with a value of `len` bytes adds to [`Session::size`].
fn attribute_size(name: &str, len: usize) -> usize {
    ATTRIBUTE_OVERHEAD
        .saturating_add(name.len())
        .saturating_add(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct User {
        id: u64,
        name: String,
        #[serde(skip)]
        cache: Vec<u8>, // transient: not stored, not replicated
    }

    fn session() -> Session {
        Session::new(
            SessionId::generate("n1").unwrap(),
            1_000,
            DEFAULT_MAX_INACTIVE,
        )
    }

    #[test]
    fn typed_attributes_round_trip_and_transient_fields_are_not_stored() {
        let mut s = session();
        s.set(
            "user",
            &User {
                id: 7,
                name: "ann".into(),
                cache: vec![1, 2, 3],
            },
        )
        .unwrap();
        let u: User = s.get("user").unwrap().unwrap();
        assert_eq!((u.id, u.name.as_str(), u.cache.len()), (7, "ann", 0));
        assert_eq!(s.get::<User>("nobody").unwrap(), None);
        s.set("n", &300u32).unwrap();
        assert!(matches!(
            s.get::<String>("n"),
            Err(SessionError::Decode { .. })
        ));
        assert!(
            matches!(s.get::<u8>("n"), Err(SessionError::Decode { .. })),
            "out of range"
        );
        assert_eq!(s.set("", &1u8), Err(SessionError::BadName(0)));
    }

    #[test]
    fn bytes_that_are_not_a_value_are_a_decode_error() {
        let mut state = session().state().clone();
        for (name, bytes) in [
            ("empty", vec![]),
            ("unknown encoding", vec![0x7f, 1]),
            (
                "truncated",
                vec![super::super::attr::TAG_MSGPACK_NAMED, 0x92, 1],
            ),
        ] {
            state.attributes.insert(name, bytes);
        }
        let s = Session::from_state(state);
        for name in ["empty", "unknown encoding", "truncated"] {
            assert!(
                matches!(s.get::<Vec<u8>>(name), Err(SessionError::Decode { .. })),
                "{name}"
            );
        }
    }

    #[test]
    fn a_request_sends_only_the_last_change_per_name_and_bumps_the_version() {
        let mut s = session();
        s.set("a", &1u32).unwrap();
        s.set("a", &2u32).unwrap();
        s.set("b", &3u32).unwrap();
        s.remove("b").unwrap();
        s.set_principal(Some("ann"), Some("FORM"));
        let (base, version, ops) = s.take_delta().unwrap();
        assert_eq!((base, version), (0, 1));
        assert_eq!(ops.len(), 3, "{ops:?}");
        assert!(s.take_delta().is_none());
        let mut replica = Session::from_state(SessionState {
            version: 0,
            attributes: Attributes::new(),
            ..s.state().clone()
        });
        assert_eq!(replica.apply_delta(base, version, &ops), Applied::Applied);
        assert_eq!(replica.get::<u32>("a").unwrap(), Some(2));
        assert_eq!(replica.get::<u32>("b").unwrap(), None);
        assert_eq!(replica.principal(), Some("ann"));
        // A duplicate, and an overtaken change, change nothing.
        assert_eq!(
            replica.apply_delta(base, version, &[DeltaOp::SetAttribute("a".into(), vec![9])]),
            Applied::Stale
        );
        assert_eq!(replica.get::<u32>("a").unwrap(), Some(2));
        // A change made on a version this copy has not seen yet is a gap.
        assert_eq!(replica.apply_delta(5, 6, &[]), Applied::Gap);
    }

    #[test]
    fn expiry_and_invalidation() {
        let mut s = Session::new(SessionId::generate("").unwrap(), 0, Duration::from_secs(10));
        assert!(!s.is_expired(10_000));
        assert!(s.is_expired(10_001));
        s.access(5_000);
        assert!(!s.is_expired(15_000));
        s.set_max_inactive(Duration::ZERO);
        assert!(!s.is_expired(u64::MAX), "0 never expires");
        s.invalidate();
        assert_eq!(s.set("a", &1u8), Err(SessionError::Invalidated));
        assert_eq!(s.get::<u8>("a"), Err(SessionError::Invalidated));
    }

    #[test]
    fn a_working_copy_hands_its_changes_to_the_stored_session() {
        let mut stored = session();
        let mut copy = stored.clone();
        copy.set("a", &1u8).unwrap();
        copy.remove("missing").unwrap();
        stored.record_ops(copy.take_pending());
        assert_eq!(stored.get::<u8>("a").unwrap(), Some(1));
        let (_, _, ops) = stored.take_delta().unwrap();
        assert_eq!(
            ops,
            vec![DeltaOp::SetAttribute(
                "a".into(),
                vec![super::super::attr::TAG_MSGPACK_NAMED, 1]
            )]
        );
    }

    #[test]
    fn change_id_keeps_the_state() {
        let mut s = session();
        s.set("k", &1u8).unwrap();
        let old = s.change_id(SessionId::generate("n2").unwrap());
        assert_ne!(&old, s.id());
        assert_eq!(s.get::<u8>("k").unwrap(), Some(1));
    }

    /// A replica adopted at version u64::MAX (from the network), then changed by a request
    /// here: bumping the version overflowed.
    #[test]
    fn a_change_to_a_copy_at_the_highest_version_does_not_overflow() {
        let mut s = Session::from_state(SessionState {
            version: u64::MAX,
            ..session().state().clone()
        });
        s.set("a", &1u8).unwrap();
        let (base, version, ops) = s.take_delta().unwrap();
        assert_eq!((base, version, ops.len()), (u64::MAX, u64::MAX, 1));
    }

    #[test]
    fn size_bounds_the_encoded_state() {
        let mut s = session();
        let small = crate::wire::encode_body(s.state()).len();
        assert!(small <= s.size(), "{small} > {}", s.size());
        s.set("user", &"ann".repeat(100)).unwrap();
        s.set("cart", &vec![7u64; 5000]).unwrap();
        s.set(&"n".repeat(MAX_NAME_LEN), &u64::MAX).unwrap();
        s.set_principal(Some("ann"), Some("FORM"));
        let mut st = s.state().clone();
        st.version = u64::MAX;
        st.creation_ms = u64::MAX;
        st.last_accessed_ms = u64::MAX;
        st.max_inactive_ms = u64::MAX;
        let encoded = crate::wire::encode_body(&st).len();
        assert!(encoded <= s.size(), "{encoded} > {}", s.size());
        // Not far above either: the overhead is per session and per attribute, not per byte.
        assert!(s.size() - encoded < 200, "{} vs {encoded}", s.size());
    }

    #[test]
    fn a_set_past_the_limit_is_refused_and_changes_nothing() {
        let mut s = session();
        s.set("a", &"x".repeat(100)).unwrap();
        s.take_delta();
        let max = s.size() + 200;
        s.limit_size(max);
        let before = s.state().clone();
        let big = "y".repeat(10 << 20); // 10 MiB
        match s.set("big", &big) {
            Err(SessionError::TooLarge { name, size, max: m }) => {
                assert_eq!((name.as_str(), m), ("big", max));
                assert!(size > 10 << 20, "{size}");
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
        assert_eq!(s.state(), &before, "nothing stored");
        assert!(s.take_delta().is_none(), "nothing to send");
        // Within the limit: stored. Replacing an attribute counts its new size only.
        s.set("b", &"z".repeat(100)).unwrap();
        s.set("a", &"x".repeat(150)).unwrap();
        assert!(s.size() <= max);
        assert!(matches!(
            s.set("a", &"x".repeat(400)),
            Err(SessionError::TooLarge { .. })
        ));
        // A removal travels in the request's change: its name still counts in this request.
        s.take_delta();
        s.remove("b").unwrap();
        let room = max - s.size();
        let size_of = |n: usize| {
            let v = super::super::attr::encode(&"w".repeat(n)).unwrap();
            attribute_size("new", v.len())
        };
        // The longest value that fits the room left, were the removal not counted.
        let n = (0..room).rev().find(|n| size_of(*n) <= room).unwrap();
        assert!(size_of(n) + attribute_size("b", 0) > room);
        assert!(matches!(
            s.set("new", &"w".repeat(n)),
            Err(SessionError::TooLarge { .. })
        ));
        s.take_delta();
        s.set("new", &"w".repeat(n)).unwrap();
        assert!(s.size() <= max);
    }
}
