//! Node configuration files: TOML laid out like Tomcat's `server.xml` (engine, connector,
//! cluster, manager, channel with membership, receiver, sender and interceptors, valve,
//! listener), mapped onto [`ClusterConfig`]. docs/configuration.md lists every key.
//!
//! The loader walks the parsed document itself instead of deriving `Deserialize`, so that every
//! error names the full key path and its line, and so that each Tomcat element we do not
//! support gets its own explanation rather than a generic "unknown field".
//!
//! Durations are integers of milliseconds in keys ending in `_ms`, like Tomcat's attributes.

#[cfg(feature = "server-xml")]
mod convert;

#[cfg(feature = "server-xml")]
pub use convert::{convert_server_xml, Conversion};

use crate::cluster::{compile_filter, ClusterConfig, ManagerKind, RebindRoute};
use crate::config::{QueueFullPolicy, StaticMember};
use crate::member::MemberId;
use crate::options::SendOptions;
use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::ops::Range;
use std::path::Path;
use std::time::Duration;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// One server's configuration file.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct NodeConfig {
    /// Where the application's HTTP server listens (`[connector]`, Tomcat `<Connector port>`);
    /// `None` when the file has no `[connector]`.
    pub http: Option<SocketAddr>,
    /// The application path (`[context] path`, Tomcat `<Context path>`), default `/app`.
    pub context: String,
    /// Everything else.
    pub cluster: ClusterConfig,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            http: None,
            context: DEFAULT_CONTEXT.into(),
            cluster: ClusterConfig::default(),
        }
    }
}

const DEFAULT_CONTEXT: &str = "/app";

/// What kind of mistake a [`ConfigFileError`] reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigFileErrorKind {
    /// The file could not be read.
    Io,
    /// Not valid TOML, or not well-formed XML for the converter.
    Syntax,
    /// A key this format does not have.
    UnknownKey,
    /// A value of the wrong TOML type (a string where a number belongs, ...).
    WrongType,
    /// A number outside the range its key allows.
    OutOfRange,
    /// An address, port or host that does not parse or resolve.
    BadAddress,
    /// A valve filter that is not a valid regular expression.
    BadRegex,
    /// Send options that are neither a number nor Tomcat's option names.
    BadSendOptions,
    /// Any other value that does not parse (a unique id, a class name, a policy name).
    BadValue,
    /// A Tomcat element or class tribecast does not implement.
    Unsupported,
    /// Values that parse but do not work together (`validate()` refused them).
    Invalid,
}

/// A configuration file mistake: the key at fault, its line when known, and what is wrong.
///
/// Displays as `server1.toml line 12: cluster.channel.receiver.max_threads: expected a positive
/// integer, got -3`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigFileError {
    /// The file, when loaded from one.
    pub file: Option<String>,
    /// Dotted key path (`cluster.channel.receiver.port`); array elements as `interceptor[2]`.
    /// Empty for a syntax error.
    pub key: String,
    /// 1-based line of the key or value, when known.
    pub line: Option<usize>,
    /// What kind of mistake it is.
    pub kind: ConfigFileErrorKind,
    /// The file's path and key, and what is wrong with it.
    pub message: String,
}

impl fmt::Display for ConfigFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sep = "";
        if let Some(file) = &self.file {
            write!(f, "{file}")?;
            sep = " ";
        }
        if let Some(line) = self.line {
            write!(f, "{sep}line {line}")?;
            sep = " ";
        }
        if !sep.is_empty() {
            write!(f, ": ")?;
        }
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        write!(f, "{}", self.message)
    }
}

impl std::error::Error for ConfigFileError {}

impl NodeConfig {
    /// Parses a configuration file's text. Absent keys keep their defaults (Tomcat's where
    /// Tomcat has one); the result has passed `ChannelConfig::validate()` and the valve filter
    /// compiles.
    pub fn from_toml_str(text: &str) -> Result<NodeConfig, ConfigFileError> {
        let doc = DeTable::parse(text).map_err(|e| {
            let line = e.span().map(|s| line_of(text, s.start));
            ConfigFileError {
                file: None,
                key: String::new(),
                line,
                kind: ConfigFileErrorKind::Syntax,
                message: format!("not valid TOML: {}", e.message().trim_end()),
            }
        })?;
        let mut w = Walker {
            text,
            origin: HashMap::new(),
        };
        let cfg = w.node(doc.get_ref())?;
        w.validate(&cfg)?;
        Ok(cfg)
    }

    /// Reads and parses a file; errors name the file.
    pub fn from_file(path: &Path) -> Result<NodeConfig, ConfigFileError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigFileError {
            file: Some(name.clone()),
            key: String::new(),
            line: None,
            kind: ConfigFileErrorKind::Io,
            message: format!("cannot read: {e}"),
        })?;
        NodeConfig::from_toml_str(&text).map_err(|mut e| {
            e.file = Some(name);
            e
        })
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Tomcat elements we know but do not implement, with why (shared with the converter).
pub(crate) fn unsupported_interceptor(class: &str) -> Option<&'static str> {
    Some(match class {
        "OrderInterceptor" => "not needed: messages from one member are always delivered in order",
        "FragmentationInterceptor" => {
            "not supported: frames up to cluster.channel.max_frame_size are sent whole"
        }
        "EncryptInterceptor" => "not supported in configuration files yet",
        "ThroughputInterceptor" => "not supported: statistics come from the channel's counters",
        "SimpleCoordinator" | "NonBlockingCoordinator" => {
            "not supported: no coordinator election (Tomcat's docs: not for Tomcat use)"
        }
        "TwoPhaseCommitInterceptor" => {
            "not supported (Tomcat's docs: not for Tomcat use); use channel_send_options = 6"
        }
        _ => return None,
    })
}

/// The last segment of a (possibly fully qualified) Java class name.
pub(crate) fn short_class(name: &str) -> &str {
    name.rsplit('.').next().unwrap_or(name).trim()
}

pub(crate) const INTERCEPTORS: &[&str] = &[
    "TcpFailureDetector",
    "TcpPingInterceptor",
    "MessageDispatchInterceptor",
    "StaticMembershipInterceptor",
    "DomainFilterInterceptor",
    "GzipInterceptor",
];

/// Parses Tomcat's `{0,0,...,15}` form (Java bytes: -128..=255 accepted) or 32 hex digits.
pub(crate) fn parse_unique_id(s: &str) -> Result<MemberId, String> {
    let t = s.trim();
    let mut out = [0u8; 16];
    if let Some(inner) = t.strip_prefix('{').and_then(|r| r.strip_suffix('}')) {
        let parts: Vec<&str> = inner.split(',').map(str::trim).collect();
        if parts.len() != 16 {
            return Err(format!("expected 16 bytes, got {}", parts.len()));
        }
        for (o, p) in out.iter_mut().zip(&parts) {
            let v: i16 = p
                .parse()
                .map_err(|_| format!("'{p}' is not a byte value"))?;
            if !(-128..=255).contains(&v) {
                return Err(format!("{v} is not a byte value (-128 to 255)"));
            }
            // Java bytes are signed: -1 is 0xff.
            *o = v as u8;
        }
        return Ok(MemberId(out));
    }
    if t.len() == 32 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&t[2 * i..2 * i + 2], 16).map_err(|e| e.to_string())?;
        }
        return Ok(MemberId(out));
    }
    Err("expected Tomcat's form {0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,1} or 32 hex digits".into())
}

type Kind = ConfigFileErrorKind;

/// One element of an array of tables: its indexed path, the value (for its span), the table.
type Entry<'t, 'i> = (String, &'t Spanned<DeValue<'i>>, &'t DeTable<'i>);

/// One table being read: its key path and its entries.
#[derive(Clone, Copy)]
struct Tbl<'t, 'i> {
    path: &'t str,
    t: &'t DeTable<'i>,
}

struct Walker<'s> {
    text: &'s str,
    /// Where each value `validate()` may name came from: validate's key → (TOML path, line).
    origin: HashMap<&'static str, (String, Option<usize>)>,
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn describe(v: &DeValue<'_>) -> String {
    match v {
        DeValue::String(s) => format!("the string \"{}\"", s.escape_debug()),
        DeValue::Integer(i) => format!("the integer {i}"),
        DeValue::Float(x) => format!("the float {x}"),
        DeValue::Boolean(b) => format!("the boolean {b}"),
        DeValue::Datetime(d) => format!("the datetime {d}"),
        DeValue::Array(_) => "an array".into(),
        DeValue::Table(_) => "a table".into(),
    }
}

impl<'s> Walker<'s> {
    fn err(
        &self,
        kind: Kind,
        key: String,
        span: Option<Range<usize>>,
        msg: String,
    ) -> ConfigFileError {
        ConfigFileError {
            file: None,
            key,
            line: span.map(|s| line_of(self.text, s.start)),
            kind,
            message: msg,
        }
    }

    /// Refuses keys not in `known` (the first in file order), with the list of known keys.
    fn only(&self, tbl: Tbl<'_, '_>, known: &[&str]) -> Result<(), ConfigFileError> {
        let first = tbl
            .t
            .iter()
            .filter(|(k, _)| !known.contains(&k.get_ref().as_ref()))
            .min_by_key(|(k, _)| k.span().start);
        match first {
            None => Ok(()),
            Some((k, _)) => {
                let msg = match suggest(k.get_ref(), known) {
                    Some(s) => format!("unknown key; did you mean `{s}`?"),
                    None => format!("unknown key (known here: {})", known.join(", ")),
                };
                Err(self.err(
                    Kind::UnknownKey,
                    join(tbl.path, k.get_ref()),
                    Some(k.span()),
                    msg,
                ))
            }
        }
    }

    fn get<'t, 'i>(
        &self,
        tbl: Tbl<'t, 'i>,
        name: &str,
    ) -> Option<(String, &'t Spanned<DeValue<'i>>)> {
        tbl.t
            .iter()
            .find(|(k, _)| k.get_ref().as_ref() == name)
            .map(|(_, v)| (join(tbl.path, name), v))
    }

    fn note(&mut self, vkey: &'static str, path: &str, span: Range<usize>) {
        if !vkey.is_empty() {
            let line = line_of(self.text, span.start);
            self.origin.insert(vkey, (path.to_string(), Some(line)));
        }
    }

    fn wrong_type(&self, path: String, v: &Spanned<DeValue<'_>>, want: &str) -> ConfigFileError {
        self.err(
            Kind::WrongType,
            path,
            Some(v.span()),
            format!("expected {want}, got {}", describe(v.get_ref())),
        )
    }

    /// An integer in `lo..=hi`; `what` says the range in words ("a positive integer").
    fn int(
        &mut self,
        tbl: Tbl<'_, '_>,
        name: &str,
        lo: i64,
        hi: i64,
        what: &str,
        vkey: &'static str,
    ) -> Result<Option<i64>, ConfigFileError> {
        let Some((path, v)) = self.get(tbl, name) else {
            return Ok(None);
        };
        let DeValue::Integer(i) = v.get_ref() else {
            return Err(self.wrong_type(path, v, what));
        };
        let n = i64::from_str_radix(i.as_str(), i.radix()).ok();
        match n {
            Some(n) if (lo..=hi).contains(&n) => {
                self.note(vkey, &path, v.span());
                Ok(Some(n))
            }
            _ => Err(self.err(
                Kind::OutOfRange,
                path,
                Some(v.span()),
                format!("expected {what}, got {i}"),
            )),
        }
    }

    fn usize_pos(
        &mut self,
        tbl: Tbl<'_, '_>,
        name: &str,
        vkey: &'static str,
    ) -> Result<Option<usize>, ConfigFileError> {
        let max = i64::try_from(usize::MAX).unwrap_or(i64::MAX);
        Ok(self
            .int(tbl, name, 1, max, "a positive integer", vkey)?
            .and_then(|n| usize::try_from(n).ok()))
    }

    /// A bound on something counted: `-1` (Tomcat's "no bound") is `Some(None)`, a positive
    /// integer `Some(Some(n))`; 0 is refused (it would refuse everything).
    fn bound(
        &mut self,
        tbl: Tbl<'_, '_>,
        name: &str,
    ) -> Result<Option<Option<usize>>, ConfigFileError> {
        let what = "-1 (no bound) or a positive integer";
        if let Some((path, v)) = self.get(tbl, name) {
            if let DeValue::Integer(i) = v.get_ref() {
                if i64::from_str_radix(i.as_str(), i.radix()) == Ok(0) {
                    let msg = format!("expected {what}, got 0 (which would refuse everything)");
                    return Err(self.err(Kind::OutOfRange, path, Some(v.span()), msg));
                }
            }
        }
        let max = i64::try_from(usize::MAX).unwrap_or(i64::MAX);
        Ok(self
            .int(tbl, name, -1, max, what, "")?
            .map(|n| usize::try_from(n).ok()))
    }

    fn port(
        &mut self,
        tbl: Tbl<'_, '_>,
        name: &str,
        lo: i64,
    ) -> Result<Option<u16>, ConfigFileError> {
        let what = if lo == 0 {
            "a port number from 0 to 65535"
        } else {
            "a port number from 1 to 65535"
        };
        let Some((path, v)) = self.get(tbl, name) else {
            return Ok(None);
        };
        let n = match v.get_ref() {
            DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix()).ok(),
            _ => return Err(self.wrong_type(path, v, what)),
        };
        match n.filter(|n| (lo..=65535).contains(n)) {
            Some(n) => Ok(u16::try_from(n).ok()),
            None => Err(self.err(
                Kind::BadAddress,
                path,
                Some(v.span()),
                format!("expected {what}, got {}", describe(v.get_ref())),
            )),
        }
    }

    /// A duration as a non-negative integer of milliseconds (keys ending in `_ms`).
    fn ms(
        &mut self,
        tbl: Tbl<'_, '_>,
        name: &str,
        vkey: &'static str,
    ) -> Result<Option<Duration>, ConfigFileError> {
        // Up to ~31 years: far past any sane timeout, and safe for Instant arithmetic.
        Ok(self
            .int(
                tbl,
                name,
                0,
                1 << 40,
                "a duration in milliseconds (an integer >= 0)",
                vkey,
            )?
            .map(|n| Duration::from_millis(n.unsigned_abs())))
    }

    fn boolean(&mut self, tbl: Tbl<'_, '_>, name: &str) -> Result<Option<bool>, ConfigFileError> {
        let Some((path, v)) = self.get(tbl, name) else {
            return Ok(None);
        };
        match v.get_ref() {
            DeValue::Boolean(b) => Ok(Some(*b)),
            _ => Err(self.wrong_type(path, v, "true or false")),
        }
    }

    /// A string, with its key path and span for later errors.
    fn string(
        &mut self,
        tbl: Tbl<'_, '_>,
        name: &str,
        vkey: &'static str,
    ) -> Result<Option<(String, String, Range<usize>)>, ConfigFileError> {
        let Some((path, v)) = self.get(tbl, name) else {
            return Ok(None);
        };
        match v.get_ref() {
            DeValue::String(s) => {
                self.note(vkey, &path, v.span());
                Ok(Some((s.to_string(), path, v.span())))
            }
            _ => Err(self.wrong_type(path, v, "a string")),
        }
    }

    fn ip(&mut self, tbl: Tbl<'_, '_>, name: &str) -> Result<Option<IpAddr>, ConfigFileError> {
        let Some((s, path, span)) = self.string(tbl, name, "")? else {
            return Ok(None);
        };
        s.trim().parse::<IpAddr>().map(Some).map_err(|_| {
            let hint = if s.trim() == "auto" {
                " (\"auto\" is not supported: give the address other members reach this one on)"
            } else {
                ""
            };
            self.err(
                Kind::BadAddress,
                path,
                Some(span),
                format!("expected an IP address, got \"{}\"{hint}", s.escape_debug()),
            )
        })
    }

    fn ipv4(&mut self, tbl: Tbl<'_, '_>, name: &str) -> Result<Option<Ipv4Addr>, ConfigFileError> {
        let Some((s, path, span)) = self.string(tbl, name, "")? else {
            return Ok(None);
        };
        s.trim().parse::<Ipv4Addr>().map(Some).map_err(|_| {
            self.err(
                Kind::BadAddress,
                path,
                Some(span),
                format!("expected an IPv4 address, got \"{}\"", s.escape_debug()),
            )
        })
    }

    /// A number (`8`) or Tomcat's names (`"async"`, `"use_ack,sync"`), or a number as a string.
    fn send_options(
        &mut self,
        tbl: Tbl<'_, '_>,
        name: &str,
    ) -> Result<Option<SendOptions>, ConfigFileError> {
        let Some((path, v)) = self.get(tbl, name) else {
            return Ok(None);
        };
        let parsed = match v.get_ref() {
            DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix())
                .ok()
                .and_then(|n| u32::try_from(n).ok())
                .map(SendOptions)
                .ok_or_else(|| format!("expected send option bits (0 to 4294967295), got {i}")),
            DeValue::String(s) => SendOptions::parse(s).map_err(|e| {
                format!("{e} (expected a number like 8 or names like \"async\", \"use_ack,sync\")")
            }),
            _ => return Err(self.wrong_type(path, v, "a number or a string of option names")),
        };
        parsed
            .map(Some)
            .map_err(|m| self.err(Kind::BadSendOptions, path, Some(v.span()), m))
    }

    fn table<'t, 'i>(
        &self,
        tbl: Tbl<'t, 'i>,
        name: &str,
    ) -> Result<Option<(String, &'t DeTable<'i>)>, ConfigFileError> {
        let Some((path, v)) = self.get(tbl, name) else {
            return Ok(None);
        };
        match v.get_ref() {
            DeValue::Table(t) => Ok(Some((path, t))),
            _ => {
                let want = format!("a table ([{path}])");
                Err(self.wrong_type(path, v, &want))
            }
        }
    }

    /// An array of tables (`[[path.name]]`); each with its indexed path.
    fn tables<'t, 'i>(
        &self,
        tbl: Tbl<'t, 'i>,
        name: &str,
    ) -> Result<Vec<Entry<'t, 'i>>, ConfigFileError> {
        let Some((path, v)) = self.get(tbl, name) else {
            return Ok(Vec::new());
        };
        let DeValue::Array(a) = v.get_ref() else {
            return Err(self.wrong_type(
                path.clone(),
                v,
                &format!("an array of tables ([[{path}]])"),
            ));
        };
        let mut out = Vec::new();
        for (i, e) in a.iter().enumerate() {
            let p = format!("{path}[{i}]");
            match e.get_ref() {
                DeValue::Table(t) => out.push((p, e, t)),
                _ => return Err(self.wrong_type(p, e, "a table")),
            }
        }
        Ok(out)
    }

    fn node(&mut self, root: &DeTable<'_>) -> Result<NodeConfig, ConfigFileError> {
        let top = Tbl { path: "", t: root };
        self.only(top, &["engine", "connector", "context", "cluster"])?;
        let mut node = NodeConfig::default();
        if let Some((p, t)) = self.table(top, "engine")? {
            let e = Tbl { path: &p, t };
            self.only(e, &["jvm_route"])?;
            if let Some((s, _, _)) = self.string(e, "jvm_route", "local_name")? {
                node.cluster.jvm_route = s;
            }
        }
        if let Some((p, t)) = self.table(top, "connector")? {
            let c = Tbl { path: &p, t };
            self.only(c, &["address", "port"])?;
            let ip = self
                .ip(c, "address")?
                .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
            let Some(port) = self.port(c, "port", 0)? else {
                return Err(self.err(
                    Kind::BadAddress,
                    join(&p, "port"),
                    self.get(top, "connector").map(|(_, v)| v.span()),
                    "missing: [connector] needs a port".into(),
                ));
            };
            node.http = Some(SocketAddr::new(ip, port));
        }
        if let Some((p, t)) = self.table(top, "context")? {
            let c = Tbl { path: &p, t };
            self.only(
                c,
                &[
                    "path",
                    "session_cookie_name",
                    "session_cookie_path",
                    "session_cookie_domain",
                    "use_http_only",
                    "session_cookie_secure",
                    "same_site_cookies",
                ],
            )?;
            self.cookie(c, &mut node.cluster.manager.cookie)?;
            if let Some((s, path, span)) = self.string(c, "path", "")? {
                if !s.starts_with('/') || s.chars().any(char::is_whitespace) {
                    return Err(self.err(
                        Kind::BadValue,
                        path,
                        Some(span),
                        format!(
                            "expected a path starting with '/', got \"{}\"",
                            s.escape_debug()
                        ),
                    ));
                }
                node.context = s;
            }
        }
        if let Some((p, t)) = self.table(top, "cluster")? {
            self.cluster(Tbl { path: &p, t }, &mut node.cluster)?;
        }
        Ok(node)
    }

    fn cluster(&mut self, c: Tbl<'_, '_>, cfg: &mut ClusterConfig) -> Result<(), ConfigFileError> {
        self.only(
            c,
            &[
                "cluster_name",
                "channel_send_options",
                "manager",
                "channel",
                "valve",
                "listener",
            ],
        )?;
        if let Some((s, _, _)) = self.string(c, "cluster_name", "cluster_name")? {
            cfg.channel.cluster_name = s;
        }
        if let Some(o) = self.send_options(c, "channel_send_options")? {
            cfg.channel_send_options = o;
        }
        if let Some((p, t)) = self.table(c, "manager")? {
            self.manager(Tbl { path: &p, t }, cfg)?;
        }
        if let Some((p, t)) = self.table(c, "channel")? {
            self.channel(Tbl { path: &p, t }, cfg)?;
        }
        if let Some((p, t)) = self.table(c, "valve")? {
            let v = Tbl { path: &p, t };
            self.only(v, &["class_name", "filter"])?;
            self.class_is(v, &["ReplicationValve"])?;
            if let Some((s, path, span)) = self.string(v, "filter", "")? {
                compile_filter(&s)
                    .map_err(|e| self.err(Kind::BadRegex, path, Some(span), e.reason))?;
                cfg.valve_filter = s;
            }
        }
        if let Some((p, t)) = self.table(c, "listener")? {
            let l = Tbl { path: &p, t };
            self.only(l, &["class_name"])?;
            // The ClusterSessionListener is always in place; the table only documents it.
            self.class_is(l, &["ClusterSessionListener"])?;
        }
        Ok(())
    }

    /// An optional `class_name` that must be one of `allowed` (short or fully qualified).
    fn class_is(
        &mut self,
        t: Tbl<'_, '_>,
        allowed: &[&str],
    ) -> Result<Option<String>, ConfigFileError> {
        let Some((s, path, span)) = self.string(t, "class_name", "")? else {
            return Ok(None);
        };
        let short = short_class(&s);
        if allowed.contains(&short) {
            Ok(Some(short.to_string()))
        } else {
            Err(self.err(
                Kind::Unsupported,
                path,
                Some(span),
                format!(
                    "\"{}\" is not supported here (expected {})",
                    s.escape_debug(),
                    allowed.join(" or ")
                ),
            ))
        }
    }

    fn manager(&mut self, m: Tbl<'_, '_>, cfg: &mut ClusterConfig) -> Result<(), ConfigFileError> {
        self.only(
            m,
            &[
                "class_name",
                "backups",
                "map_send_options",
                "rpc_timeout_ms",
                "max_inactive_ms",
                "expire_frequency_ms",
                "state_transfer_timeout_ms",
                "send_all_sessions_size",
                "expire_sessions_on_shutdown",
                "notify_listeners_on_replication",
                "rebind_route",
                "max_active_sessions",
                "max_session_size",
            ],
        )?;
        if let Some((s, path, span)) = self.string(m, "rebind_route", "")? {
            cfg.manager.rebind_route = match s.to_ascii_lowercase().as_str() {
                "never" => RebindRoute::Never,
                "when_route_gone" => RebindRoute::WhenRouteGone,
                "always" => RebindRoute::Always,
                _ => {
                    return Err(self.err(
                        Kind::BadValue,
                        path,
                        Some(span),
                        format!(
                            "expected \"never\", \"when_route_gone\" or \"always\", got \"{}\"",
                            s.escape_debug()
                        ),
                    ))
                }
            };
        }
        let mc = &mut cfg.manager;
        if let Some(k) = self.class_is(m, &["DeltaManager", "BackupManager"])? {
            mc.kind = if k == "BackupManager" {
                ManagerKind::Backup
            } else {
                ManagerKind::Delta
            };
        }
        if let Some(n) = self.int(m, "backups", 1, 64, "an integer from 1 to 64", "")? {
            mc.backups = usize::try_from(n).unwrap_or(1);
        }
        if let Some(o) = self.send_options(m, "map_send_options")? {
            mc.map_send_options = o;
        }
        if let Some(d) = self.positive_ms(m, "rpc_timeout_ms")? {
            mc.rpc_timeout = d;
        }
        if let Some(d) = self.ms(m, "max_inactive_ms", "")? {
            mc.max_inactive = d;
        }
        if let Some(d) = self.positive_ms(m, "expire_frequency_ms")? {
            mc.expire_frequency = d;
        }
        if let Some(d) = self.ms(m, "state_transfer_timeout_ms", "")? {
            mc.state_transfer_timeout = d;
        }
        if let Some(n) = self.usize_pos(m, "send_all_sessions_size", "")? {
            mc.send_all_sessions_size = n;
        }
        if let Some(b) = self.boolean(m, "expire_sessions_on_shutdown")? {
            mc.expire_sessions_on_shutdown = b;
        }
        if let Some(b) = self.boolean(m, "notify_listeners_on_replication")? {
            mc.notify_listeners_on_replication = b;
        }
        if let Some(n) = self.bound(m, "max_active_sessions")? {
            mc.max_active_sessions = n;
        }
        if let Some(n) = self.bound(m, "max_session_size")? {
            mc.max_session_size = n;
        }
        Ok(())
    }

    /// The session cookie's keys of `[context]` (Tomcat's `Context` attributes), checked as
    /// `CookieConfig::validate` checks them.
    fn cookie(
        &mut self,
        c: Tbl<'_, '_>,
        cookie: &mut crate::session::CookieConfig,
    ) -> Result<(), ConfigFileError> {
        use crate::session::SameSite;
        let mut last = None;
        if let Some((s, path, span)) = self.string(c, "session_cookie_name", "")? {
            cookie.name = s;
            last = Some((path, span));
        }
        if let Some((s, path, span)) = self.string(c, "session_cookie_path", "")? {
            cookie.path = Some(s);
            last = Some((path, span));
        }
        if let Some((s, path, span)) = self.string(c, "session_cookie_domain", "")? {
            cookie.domain = Some(s);
            last = Some((path, span));
        }
        if let Some(b) = self.boolean(c, "use_http_only")? {
            cookie.http_only = b;
        }
        if let Some(b) = self.boolean(c, "session_cookie_secure")? {
            cookie.secure = b;
        }
        if let Some((s, path, span)) = self.string(c, "same_site_cookies", "")? {
            cookie.same_site = match s.to_ascii_lowercase().as_str() {
                "unset" => SameSite::Unset,
                "none" => SameSite::None,
                "lax" => SameSite::Lax,
                "strict" => SameSite::Strict,
                _ => {
                    return Err(self.err(
                        Kind::BadValue,
                        path,
                        Some(span),
                        format!(
                            "expected \"unset\", \"none\", \"lax\" or \"strict\", got \"{}\"",
                            s.escape_debug()
                        ),
                    ))
                }
            };
            last = Some((path, span));
        }
        if let Err(e) = cookie.validate() {
            let (path, span) = last
                .map_or((join(c.path, "session_cookie_name"), None), |(p, s)| {
                    (p, Some(s))
                });
            return Err(self.err(Kind::BadValue, path, span, e.reason));
        }
        Ok(())
    }

    /// A duration that must not be 0 (checked here as validate() does not see the manager).
    fn positive_ms(
        &mut self,
        t: Tbl<'_, '_>,
        name: &str,
    ) -> Result<Option<Duration>, ConfigFileError> {
        Ok(self
            .int(
                t,
                name,
                1,
                1 << 40,
                "a positive duration in milliseconds",
                "",
            )?
            .map(|n| Duration::from_millis(n.unsigned_abs())))
    }

    fn channel(&mut self, ch: Tbl<'_, '_>, cfg: &mut ClusterConfig) -> Result<(), ConfigFileError> {
        self.only(
            ch,
            &[
                "heartbeat_interval_ms",
                "max_frame_size",
                "unique_id",
                "cluster_key_file",
                "cluster_key_env",
                "replay_window_ms",
                "membership",
                "receiver",
                "sender",
                "interceptor",
            ],
        )?;
        let c = &mut cfg.channel;
        if let Some(d) = self.ms(ch, "heartbeat_interval_ms", "heartbeat_interval")? {
            c.heartbeat_interval = d;
        }
        if let Some(n) = self.int(
            ch,
            "max_frame_size",
            0,
            i64::from(u32::MAX),
            "a size in bytes (0 to 4294967295)",
            "max_frame_size",
        )? {
            c.max_frame_size = u32::try_from(n).unwrap_or(u32::MAX);
        }
        if let Some((s, path, span)) = self.string(ch, "unique_id", "")? {
            let id =
                parse_unique_id(&s).map_err(|m| self.err(Kind::BadValue, path, Some(span), m))?;
            c.unique_id = Some(id);
        }
        // The cluster key (EncryptInterceptor's encryptionKey) is read from a file or an
        // environment variable, never written in this file; errors never show key text.
        if let Some((s, path, span)) = self.string(ch, "cluster_key_file", "")? {
            let key = crate::crypto::ClusterKey::from_file(&s)
                .map_err(|e| self.err(Kind::BadValue, path, Some(span), e.to_string()))?;
            c.cluster_key = Some(key);
        }
        if let Some((s, path, span)) = self.string(ch, "cluster_key_env", "")? {
            if c.cluster_key.is_some() {
                let m = "give the cluster key by cluster_key_file or cluster_key_env, not both";
                return Err(self.err(Kind::BadValue, path, Some(span), m.to_string()));
            }
            let key = crate::crypto::ClusterKey::from_env(&s)
                .map_err(|e| self.err(Kind::BadValue, path, Some(span), e.to_string()))?;
            c.cluster_key = Some(key);
        }
        if let Some(d) = self.ms(ch, "replay_window_ms", "replay_window")? {
            c.replay_window = d;
        }
        let mut domain_from: Option<(String, String)> = None;
        if let Some((p, t)) = self.table(ch, "membership")? {
            self.membership(Tbl { path: &p, t }, cfg, &mut domain_from)?;
        }
        let c = &mut cfg.channel;
        if let Some((p, t)) = self.table(ch, "receiver")? {
            let r = Tbl { path: &p, t };
            self.only(
                r,
                &[
                    "address",
                    "port",
                    "auto_bind",
                    "selector_timeout_ms",
                    "max_threads",
                    "max_connections",
                    "max_queued_bytes_per_connection",
                    "handshake_timeout_ms",
                ],
            )?;
            let rc = &mut c.receiver;
            if let Some(ip) = self.ip(r, "address")? {
                rc.address = ip;
            }
            if let Some(port) = self.port(r, "port", 0)? {
                rc.port = port;
            }
            if let Some(n) = self.int(
                r,
                "auto_bind",
                1,
                65535,
                "an integer from 1 to 65535",
                "receiver.auto_bind",
            )? {
                rc.auto_bind = u16::try_from(n).unwrap_or(1);
            }
            if let Some(d) = self.ms(r, "selector_timeout_ms", "receiver.selector_timeout")? {
                rc.selector_timeout = d;
            }
            if let Some(n) = self.usize_pos(r, "max_threads", "receiver.max_threads")? {
                rc.max_threads = n;
            }
            if let Some(n) = self.usize_pos(r, "max_connections", "receiver.max_connections")? {
                rc.max_connections = n;
            }
            if let Some(n) = self.usize_pos(
                r,
                "max_queued_bytes_per_connection",
                "receiver.max_queued_bytes_per_connection",
            )? {
                rc.max_queued_bytes_per_connection = n;
            }
            if let Some(d) = self.ms(r, "handshake_timeout_ms", "receiver.handshake_timeout")? {
                rc.handshake_timeout = d;
            }
        }
        if let Some((p, t)) = self.table(ch, "sender")? {
            let s = Tbl { path: &p, t };
            self.only(
                s,
                &[
                    "timeout_ms",
                    "pool_size",
                    "max_retry_attempts",
                    "coalesce_bytes",
                    "max_queued_bytes_per_member",
                ],
            )?;
            let sc = &mut c.sender;
            if let Some(d) = self.ms(s, "timeout_ms", "sender.timeout")? {
                sc.timeout = d;
            }
            if let Some(n) = self.usize_pos(s, "pool_size", "sender.pool_size")? {
                sc.pool_size = n;
            }
            if let Some(n) = self.int(
                s,
                "max_retry_attempts",
                0,
                i64::from(u32::MAX),
                "an integer >= 0",
                "sender.max_retry_attempts",
            )? {
                sc.max_retry_attempts = u32::try_from(n).unwrap_or(u32::MAX);
            }
            if let Some(n) = self.usize_pos(s, "coalesce_bytes", "sender.coalesce_bytes")? {
                sc.coalesce_bytes = n;
            }
            if let Some(n) = self.usize_pos(
                s,
                "max_queued_bytes_per_member",
                "sender.max_queued_bytes_per_member",
            )? {
                sc.max_queued_bytes_per_member = n;
            }
        }
        self.interceptors(ch, cfg, &mut domain_from)
    }

    fn set_domain(
        &mut self,
        cfg: &mut ClusterConfig,
        value: String,
        path: String,
        span: Range<usize>,
        domain_from: &mut Option<(String, String)>,
    ) -> Result<(), ConfigFileError> {
        if let Some((prev, prev_path)) = domain_from {
            if *prev != value {
                return Err(self.err(
                    Kind::Invalid,
                    path,
                    Some(span),
                    format!("\"{value}\" differs from \"{prev}\" set at {prev_path}: one member has one domain"),
                ));
            }
        }
        self.note("domain", &path, span);
        cfg.channel.domain = value.clone();
        *domain_from = Some((value, path));
        Ok(())
    }

    fn membership(
        &mut self,
        m: Tbl<'_, '_>,
        cfg: &mut ClusterConfig,
        domain_from: &mut Option<(String, String)>,
    ) -> Result<(), ConfigFileError> {
        const MCAST: &[&str] = &[
            "address",
            "port",
            "frequency_ms",
            "drop_time_ms",
            "bind",
            "ttl",
        ];
        self.only(
            m,
            &[
                "kind",
                "address",
                "port",
                "frequency_ms",
                "drop_time_ms",
                "bind",
                "ttl",
                "domain",
                "expiration_time_ms",
                "member",
            ],
        )?;
        let multicast = match self.string(m, "kind", "")? {
            None => false,
            Some((s, _, _)) if s == "static" => false,
            Some((s, _, _)) if s == "multicast" => true,
            Some((s, path, span)) => {
                return Err(self.err(
                    Kind::BadValue,
                    path,
                    Some(span),
                    format!(
                        "expected \"multicast\" or \"static\", got \"{}\"",
                        s.escape_debug()
                    ),
                ))
            }
        };
        if !multicast {
            // A multicast key without multicast would silently do nothing: refuse it.
            if let Some((k, _)) =
                m.t.iter()
                    .filter(|(k, _)| MCAST.contains(&k.get_ref().as_ref()))
                    .min_by_key(|(k, _)| k.span().start)
            {
                return Err(self.err(
                    Kind::Invalid,
                    join(m.path, k.get_ref()),
                    Some(k.span()),
                    "a multicast setting, but kind is not \"multicast\" (set kind = \"multicast\" or remove it)".into(),
                ));
            }
        } else {
            let mut mc = crate::config::McastConfig::default();
            if let Some(a) = self.ipv4(m, "address")? {
                if let Some((path, v)) = self.get(m, "address") {
                    self.note("membership.mcast.address", &path, v.span());
                }
                mc.address = a;
            }
            if let Some(p) = self.port(m, "port", 1)? {
                mc.port = p;
            }
            if let Some(d) = self.ms(m, "frequency_ms", "membership.mcast.frequency")? {
                mc.frequency = d;
            }
            if let Some(d) = self.ms(m, "drop_time_ms", "membership.mcast.drop_time")? {
                mc.drop_time = d;
            }
            mc.bind = self.ipv4(m, "bind")?;
            if let Some(n) = self.int(m, "ttl", 0, 255, "an integer from 0 to 255", "")? {
                mc.ttl = u32::try_from(n).ok();
            }
            cfg.channel.membership.mcast = Some(mc);
        }
        if let Some((s, path, span)) = self.string(m, "domain", "")? {
            self.set_domain(cfg, s, path, span, domain_from)?;
        }
        if let Some(d) = self.ms(m, "expiration_time_ms", "membership.expiration_time")? {
            cfg.channel.membership.expiration_time = d;
        }
        self.members(m, cfg)
    }

    /// `[[...member]]` entries (Tomcat `<Member>`): host, port, unique_id.
    fn members(
        &mut self,
        parent: Tbl<'_, '_>,
        cfg: &mut ClusterConfig,
    ) -> Result<(), ConfigFileError> {
        for (p, v, t) in self.tables(parent, "member")? {
            let e = Tbl { path: &p, t };
            self.only(e, &["host", "port", "unique_id"])?;
            let Some((host, hpath, hspan)) = self.string(e, "host", "")? else {
                return Err(self.err(
                    Kind::BadAddress,
                    join(&p, "host"),
                    Some(v.span()),
                    "missing: a member needs a host".into(),
                ));
            };
            let Some(port) = self.port(e, "port", 1)? else {
                return Err(self.err(
                    Kind::BadAddress,
                    join(&p, "port"),
                    Some(v.span()),
                    "missing: a member needs a port".into(),
                ));
            };
            let addr = resolve(&host, port)
                .map_err(|m| self.err(Kind::BadAddress, hpath, Some(hspan), m))?;
            let unique_id = match self.string(e, "unique_id", "")? {
                None => None,
                Some((s, path, span)) => Some(
                    parse_unique_id(&s)
                        .map_err(|m| self.err(Kind::BadValue, path, Some(span), m))?,
                ),
            };
            cfg.channel
                .static_members
                .push(StaticMember { addr, unique_id });
        }
        Ok(())
    }

    fn interceptors(
        &mut self,
        ch: Tbl<'_, '_>,
        cfg: &mut ClusterConfig,
        domain_from: &mut Option<(String, String)>,
    ) -> Result<(), ConfigFileError> {
        let list = self.tables(ch, "interceptor")?;
        if list.is_empty() {
            return Ok(());
        }
        // Like Tomcat, a listed stack replaces the default one: no TcpFailureDetector in the
        // list means none in the stack.
        let mut detector = false;
        for (p, v, t) in list {
            let it = Tbl { path: &p, t };
            let Some((name, cpath, cspan)) = self.string(it, "class_name", "")? else {
                return Err(self.err(
                    Kind::BadValue,
                    join(&p, "class_name"),
                    Some(v.span()),
                    format!(
                        "missing: an interceptor needs a class_name ({})",
                        INTERCEPTORS.join(", ")
                    ),
                ));
            };
            let short = short_class(&name);
            let ms = &mut cfg.channel.membership;
            match short {
                "TcpFailureDetector" => {
                    self.only(
                        it,
                        &["class_name", "connect_timeout_ms", "perform_read_test"],
                    )?;
                    detector = true;
                    if let Some(d) =
                        self.ms(it, "connect_timeout_ms", "membership.connect_timeout")?
                    {
                        ms.connect_timeout = d;
                    }
                    if let Some(b) = self.boolean(it, "perform_read_test")? {
                        ms.perform_read_test = b;
                    }
                }
                "TcpPingInterceptor" => {
                    self.only(it, &["class_name", "interval_ms"])?;
                    if let Some(d) = self.ms(it, "interval_ms", "membership.ping_interval")? {
                        ms.ping_interval = d;
                    }
                }
                "MessageDispatchInterceptor" => {
                    self.only(it, &["class_name", "max_queue_size", "full_policy"])?;
                    if let Some(n) =
                        self.usize_pos(it, "max_queue_size", "dispatch.max_queue_size")?
                    {
                        cfg.channel.dispatch.max_queue_size = n;
                    }
                    if let Some((s, path, span)) = self.string(it, "full_policy", "")? {
                        cfg.channel.dispatch.full_policy = match s.as_str() {
                            "block" => QueueFullPolicy::Block,
                            "fail" => QueueFullPolicy::Fail,
                            _ => {
                                return Err(self.err(
                                    Kind::BadValue,
                                    path,
                                    Some(span),
                                    format!(
                                        "expected \"block\" or \"fail\", got \"{}\"",
                                        s.escape_debug()
                                    ),
                                ))
                            }
                        };
                    }
                }
                "StaticMembershipInterceptor" => {
                    self.only(it, &["class_name", "member"])?;
                    self.members(it, cfg)?;
                }
                "GzipInterceptor" => {
                    self.only(it, &["class_name", "compression_min_size"])?;
                    let min = self.int(
                        it,
                        "compression_min_size",
                        0,
                        i64::from(u32::MAX),
                        "a size in bytes (0 to 4294967295)",
                        "compression_min_size",
                    )?;
                    // Tomcat's default: every payload is a candidate.
                    let min = min.map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX));
                    cfg.channel.compression_min_size = Some(min);
                }
                "DomainFilterInterceptor" => {
                    self.only(it, &["class_name", "domain"])?;
                    if let Some((s, path, span)) = self.string(it, "domain", "")? {
                        self.set_domain(cfg, s, path, span, domain_from)?;
                    }
                }
                other => {
                    let why = unsupported_interceptor(other).map_or_else(
                        || {
                            format!(
                                "unknown interceptor (supported: {})",
                                INTERCEPTORS.join(", ")
                            )
                        },
                        |w| format!("{other}: {w}"),
                    );
                    return Err(self.err(Kind::Unsupported, cpath, Some(cspan), why));
                }
            }
        }
        cfg.channel.membership.failure_detector = detector;
        Ok(())
    }

    /// Runs `validate()` and the filter check, naming the TOML key (and line) of the value.
    fn validate(&self, node: &NodeConfig) -> Result<(), ConfigFileError> {
        let mut ch = node.cluster.channel.clone();
        if ch.local_name.is_empty() {
            ch.local_name = node.cluster.jvm_route.clone();
        }
        ch.validate().map_err(|e| {
            let (key, line) = match self.origin.get(e.key) {
                Some((p, l)) => (p.clone(), *l),
                None => (default_path(e.key), None),
            };
            ConfigFileError {
                file: None,
                key,
                line,
                kind: Kind::Invalid,
                message: e.reason,
            }
        })
    }
}

/// The file's name for a Tomcat attribute name written by habit: `maxThreads` → `max_threads`,
/// `selectorTimeout` → `selector_timeout_ms`.
fn suggest<'k>(key: &str, known: &[&'k str]) -> Option<&'k str> {
    let mut snake = String::new();
    for c in key.chars() {
        if c.is_ascii_uppercase() {
            snake.push('_');
        }
        snake.push(c.to_ascii_lowercase());
    }
    let ms = format!("{snake}_ms");
    known
        .iter()
        .find(|k| **k != key && (**k == snake || **k == ms))
        .copied()
}

/// The TOML key of a `validate()` key whose value came from the defaults.
fn default_path(vkey: &str) -> String {
    match vkey {
        "cluster_name" => "cluster.cluster_name".into(),
        "local_name" => "engine.jvm_route".into(),
        "domain" => "cluster.channel.membership.domain".into(),
        "dispatch.max_queue_size" => {
            "cluster.channel.interceptor (MessageDispatchInterceptor).max_queue_size".into()
        }
        "membership.connect_timeout" => {
            "cluster.channel.interceptor (TcpFailureDetector).connect_timeout_ms".into()
        }
        "membership.ping_interval" => {
            "cluster.channel.interceptor (TcpPingInterceptor).interval_ms".into()
        }
        k => {
            let k = k.replace("membership.mcast.", "membership.");
            let timed = [
                "heartbeat_interval",
                "selector_timeout",
                "timeout",
                "expiration_time",
                "frequency",
                "drop_time",
                "replay_window",
            ];
            let ms = timed.iter().any(|t| k.ends_with(t));
            format!("cluster.channel.{k}{}", if ms { "_ms" } else { "" })
        }
    }
}

/// A member's address: an IP literal or a name resolved now (e.g. `localhost`).
fn resolve(host: &str, port: u16) -> Result<SocketAddr, String> {
    let h = host.trim();
    if let Ok(ip) = h.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    // Tomcat's `{127,0,0,1}` byte form.
    if let Some(inner) = h.strip_prefix('{').and_then(|r| r.strip_suffix('}')) {
        let b: Vec<u8> = inner
            .split(',')
            .map(|p| p.trim().parse::<u8>())
            .collect::<Result<_, _>>()
            .map_err(|_| {
                format!(
                    "\"{}\" is not {{a,b,c,d}} with bytes 0-255",
                    h.escape_debug()
                )
            })?;
        let [a, b2, c, d] = b[..] else {
            return Err(format!("\"{}\" is not {{a,b,c,d}}", h.escape_debug()));
        };
        return Ok(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(a, b2, c, d)),
            port,
        ));
    }
    // Only a well-formed name is looked up.
    let name_ok = h.split('.').all(|l| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    if h.is_empty() || h.len() > 253 || !name_ok {
        return Err(format!(
            "expected an IP address or a host name, got \"{}\"",
            h.escape_debug()
        ));
    }
    (h, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve \"{}\": {e}", h.escape_debug()))?
        .next()
        .ok_or_else(|| format!("\"{}\" resolves to no address", h.escape_debug()))
}
