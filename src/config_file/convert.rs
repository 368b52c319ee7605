//! Tomcat `server.xml` `<Cluster>` → TOML converter.
//!
//! Only the `<Cluster>` element (or, in a snippet without one, the first `<Channel>`), the
//! enclosing `<Engine jvmRoute>` and the first HTTP `<Connector>` are read. They are cut out of
//! the text before parsing, so a server.xml that is not well-formed elsewhere (an elided
//! `<Host ...>` in documentation, say) still converts, and commented-out elements are skipped.

use super::{
    line_of, parse_unique_id, short_class, unsupported_interceptor, ConfigFileError,
    ConfigFileErrorKind, NodeConfig,
};
use roxmltree::{Document, Node};
use std::fmt::Write as _;

/// The TOML equivalent of a `server.xml` cluster, and what could not be carried over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conversion {
    /// A configuration file that `NodeConfig::from_toml_str` loads; what was not carried over
    /// is listed in it as comments.
    pub toml: String,
    /// Each element or attribute not carried over, with why, e.g.
    /// `Cluster/Channel/Receiver rxBufSize="65536": no equivalent`.
    pub not_carried: Vec<String>,
}

/// Converts the first `<Cluster>` element of a `server.xml` (with its `<Engine jvmRoute>` and
/// HTTP `<Connector>`). A snippet holding only a `<Channel>` is converted as a cluster with
/// that channel. Fails only when there is neither, or the element is not well-formed XML.
pub fn convert_server_xml(xml: &str) -> Result<Conversion, ConfigFileError> {
    let (root_name, range) = match find_element(xml, "Cluster") {
        Some(r) => ("Cluster", r),
        None => match find_element(xml, "Channel") {
            Some(r) => ("Channel", r),
            None => {
                return Err(xml_error(
                    None,
                    "no <Cluster> (or <Channel>) element outside comments".into(),
                ))
            }
        },
    };
    let frag = &xml[range.clone()];
    let doc = Document::parse(frag).map_err(|e| {
        let line = line_of(xml, range.start) + e.pos().row as usize - 1;
        xml_error(
            Some(line),
            format!("<{root_name}> is not well-formed XML: {e}"),
        )
    })?;
    let mut c = Converter::default();
    // The Engine whose start tag comes last before the cluster encloses it.
    if let Some(engine) = last_start_tag_before(xml, "Engine", range.start) {
        if let Some(r) = engine.attribute("jvmRoute") {
            c.engine.push(format!("jvm_route = {}", quote(r)));
        }
    }
    c.connector(xml);
    let root = doc.root_element();
    if root_name == "Cluster" {
        c.cluster(root);
    } else {
        c.header_notes.push(
            "No <Cluster> element: the <Channel> was converted alone; cluster settings are defaults."
                .into(),
        );
        c.channel(root, "Channel");
    }
    c.finish()
}

fn xml_error(line: Option<usize>, message: String) -> ConfigFileError {
    ConfigFileError {
        file: None,
        key: String::new(),
        line,
        kind: ConfigFileErrorKind::Syntax,
        message,
    }
}

/// TOML string literal.
fn quote(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// Byte ranges of `<!-- ... -->` comments, CDATA sections and processing instructions.
fn skipped_ranges(xml: &str) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(p) = xml[i..].find('<') {
        let s = i + p;
        let rest = &xml[s..];
        let close = if rest.starts_with("<!--") {
            Some("-->")
        } else if rest.starts_with("<![CDATA[") {
            Some("]]>")
        } else if rest.starts_with("<?") {
            Some("?>")
        } else {
            None
        };
        match close {
            Some(end) => {
                let e = rest.find(end).map_or(xml.len(), |q| s + q + end.len());
                out.push(s..e);
                i = e;
            }
            None => i = s + 1,
        }
    }
    out
}

/// Start offsets of `<Name` start tags outside comments.
fn start_tags(xml: &str, name: &str) -> Vec<usize> {
    let skip = skipped_ranges(xml);
    let open = format!("<{name}");
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(p) = xml[i..].find(&open) {
        let s = i + p;
        i = s + open.len();
        let next = xml[i..].chars().next();
        let is_tag = matches!(next, Some(c) if c.is_whitespace() || c == '>' || c == '/');
        if is_tag && !skip.iter().any(|r| r.contains(&s)) {
            out.push(s);
        }
    }
    out
}

/// End (exclusive) of the start tag at `s`, quotes respected, and whether it is `/>`.
fn start_tag_end(xml: &str, s: usize) -> Option<(usize, bool)> {
    let mut quote: Option<char> = None;
    let mut prev = ' ';
    for (k, ch) in xml[s..].char_indices() {
        match quote {
            Some(q) if ch == q => quote = None,
            Some(_) => {}
            None if ch == '"' || ch == '\'' => quote = Some(ch),
            None if ch == '>' => return Some((s + k + 1, prev == '/')),
            None => {}
        }
        prev = ch;
    }
    None
}

/// The byte range of the first `<name ...>...</name>` (or `<name .../>`) outside comments.
fn find_element(xml: &str, name: &str) -> Option<std::ops::Range<usize>> {
    let s = *start_tags(xml, name).first()?;
    let (end, empty) = start_tag_end(xml, s)?;
    if empty {
        return Some(s..end);
    }
    let skip = skipped_ranges(xml);
    let close = format!("</{name}");
    let mut i = end;
    while let Some(p) = xml[i..].find(&close) {
        let c = i + p;
        i = c + close.len();
        if skip.iter().any(|r| r.contains(&c)) {
            continue;
        }
        let e = xml[c..].find('>').map_or(xml.len(), |q| c + q + 1);
        return Some(s..e);
    }
    // Unclosed: hand the parser the rest, which reports the error with its line.
    Some(s..xml.len())
}

/// The attributes of a start tag, parsed on their own as an empty element.
struct StartTag {
    attrs: Vec<(String, String)>,
}

impl StartTag {
    fn parse(xml: &str, s: usize) -> Option<StartTag> {
        let (end, empty) = start_tag_end(xml, s)?;
        let text = if empty {
            xml[s..end].to_string()
        } else {
            format!("{}/>", &xml[s..end - 1])
        };
        let doc = Document::parse(&text).ok()?;
        let attrs = doc
            .root_element()
            .attributes()
            .map(|a| (a.name().to_string(), a.value().to_string()))
            .collect();
        Some(StartTag { attrs })
    }
    fn attribute(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

fn last_start_tag_before(xml: &str, name: &str, before: usize) -> Option<StartTag> {
    let s = start_tags(xml, name).into_iter().rfind(|&s| s < before)?;
    StartTag::parse(xml, s)
}

/// How an attribute's text becomes a TOML value.
#[derive(Clone, Copy)]
enum As {
    Str,
    Int,
    Bool,
    /// Milliseconds, times this factor (1 for Tomcat's ms attributes, 1000 for seconds).
    Ms(i64),
    SendOptions,
}

#[derive(Default)]
struct Converter {
    not_carried: Vec<String>,
    header_notes: Vec<String>,
    engine: Vec<String>,
    connector: Vec<String>,
    cluster: Vec<String>,
    manager: Vec<String>,
    channel: Vec<String>,
    membership: Vec<String>,
    membership_members: Vec<Vec<String>>,
    receiver: Vec<String>,
    sender: Vec<String>,
    /// Each interceptor's lines and its members' lines.
    interceptors: Vec<(Vec<String>, Vec<Vec<String>>)>,
    valve: Vec<String>,
    listener: Vec<String>,
    has_static_interceptor: bool,
    has_membership: bool,
}

impl Converter {
    /// Records what is not carried, both in the list and as a comment in `lines`.
    fn drop(&mut self, lines: Option<&mut Vec<String>>, what: String, why: &str) {
        let item = one_line(&format!("{what}: {why}"));
        if let Some(l) = lines {
            l.push(format!("# not carried: {item}"));
        }
        self.not_carried.push(item);
    }

    /// Converts one attribute into `key = value` in `lines`, or records why not.
    fn attr(
        &mut self,
        lines: &mut Vec<String>,
        path: &str,
        name: &str,
        value: &str,
        key: &str,
        how: As,
    ) {
        let v = value.trim();
        let out = match how {
            As::Str => Ok(quote(value)),
            As::Int => v
                .parse::<i64>()
                .map(|n| n.to_string())
                .map_err(|_| "not a number"),
            As::Bool => match v {
                "true" => Ok("true".into()),
                "false" => Ok("false".into()),
                _ => Err("not true or false"),
            },
            As::Ms(f) => v
                .parse::<i64>()
                .ok()
                .and_then(|n| n.checked_mul(f))
                .map(|n| n.to_string())
                .ok_or("not a number"),
            As::SendOptions => Ok(match v.parse::<u32>() {
                Ok(n) => n.to_string(),
                Err(_) => quote(v),
            }),
        };
        match out {
            Ok(val) => lines.push(format!("{key} = {val}")),
            Err(why) => self.drop(Some(lines), format!("{path} {name}=\"{value}\""), why),
        }
    }

    /// Every attribute of `node` not in `handled` (and not className) is not carried.
    fn rest(
        &mut self,
        lines: Option<&mut Vec<String>>,
        node: Node<'_, '_>,
        path: &str,
        handled: &[&str],
    ) {
        let mut lines = lines;
        for a in node.attributes() {
            if a.name() == "className" || handled.contains(&a.name()) {
                continue;
            }
            let what = format!("{path} {}=\"{}\"", a.name(), a.value());
            self.drop(lines.as_deref_mut(), what, "no equivalent in tribecast");
        }
    }

    /// A className other than `expected` is noted; attributes are still read by name.
    fn class(
        &mut self,
        lines: &mut Vec<String>,
        node: Node<'_, '_>,
        path: &str,
        expected: &[&str],
    ) {
        if let Some(c) = node.attribute("className") {
            if !expected.contains(&short_class(c)) {
                self.drop(
                    Some(lines),
                    format!("{path} className=\"{c}\""),
                    &format!("tribecast has only {}", expected.join(", ")),
                );
            }
        }
    }

    /// Maps the attributes listed in `map` (Tomcat name, TOML key, how), then drops the rest.
    fn attrs(
        &mut self,
        lines: &mut Vec<String>,
        node: Node<'_, '_>,
        path: &str,
        map: &[(&str, &str, As)],
    ) {
        self.attrs_but(lines, node, path, map, &[]);
    }

    /// As `attrs`, with `also` handled by the caller.
    fn attrs_but(
        &mut self,
        lines: &mut Vec<String>,
        node: Node<'_, '_>,
        path: &str,
        map: &[(&str, &str, As)],
        also: &[&str],
    ) {
        for &(name, key, how) in map {
            if let Some(v) = node.attribute(name) {
                self.attr(lines, path, name, v, key, how);
            }
        }
        let mut handled: Vec<&str> = map.iter().map(|m| m.0).collect();
        handled.extend_from_slice(also);
        self.rest(Some(lines), node, path, &handled);
    }

    fn connector(&mut self, xml: &str) {
        let http = start_tags(xml, "Connector")
            .into_iter()
            .filter_map(|s| StartTag::parse(xml, s))
            .find(|t| {
                t.attribute("protocol")
                    .is_none_or(|p| p.to_ascii_uppercase().contains("HTTP"))
            });
        let Some(t) = http else { return };
        let Some(port) = t.attribute("port") else {
            return;
        };
        let mut lines = Vec::new();
        if let Some(a) = t.attribute("address") {
            lines.push(format!("address = {}", quote(a)));
        }
        match port.trim().parse::<u16>() {
            Ok(p) => lines.push(format!("port = {p}")),
            Err(_) => {
                self.drop(
                    None,
                    format!("Connector port=\"{port}\""),
                    "not a port number",
                );
                return;
            }
        }
        self.connector = lines;
    }

    fn cluster(&mut self, node: Node<'_, '_>) {
        let mut lines = Vec::new();
        self.class(&mut lines, node, "Cluster", &["SimpleTcpCluster"]);
        self.attrs(
            &mut lines,
            node,
            "Cluster",
            &[
                ("clusterName", "cluster_name", As::Str),
                (
                    "channelSendOptions",
                    "channel_send_options",
                    As::SendOptions,
                ),
            ],
        );
        self.cluster = lines;
        for child in node.children().filter(Node::is_element) {
            let class = child.attribute("className").map(short_class).unwrap_or("");
            match child.tag_name().name() {
                "Manager" => self.manager(child),
                "Channel" => self.channel(child, "Cluster/Channel"),
                "Valve" if class == "ReplicationValve" => {
                    let mut l = Vec::new();
                    self.attrs(
                        &mut l,
                        child,
                        "Cluster/Valve",
                        &[("filter", "filter", As::Str)],
                    );
                    self.valve = l;
                }
                "Valve" => {
                    let why = if class == "JvmRouteBinderValve" {
                        "not supported: session ids keep the jvmRoute of the member that made them"
                    } else {
                        "not supported"
                    };
                    let full = child.attribute("className").unwrap_or("");
                    self.drop(None, format!("Cluster/Valve className=\"{full}\""), why);
                }
                "ClusterListener" if class == "ClusterSessionListener" => {
                    self.listener = vec!["class_name = \"ClusterSessionListener\"".into()];
                    self.rest(None, child, "Cluster/ClusterListener", &[]);
                }
                other => {
                    let what = match child.attribute("className") {
                        Some(c) => format!("Cluster/{other} className=\"{c}\""),
                        None => format!("Cluster/{other}"),
                    };
                    self.drop(None, what, "not supported");
                }
            }
        }
    }

    fn manager(&mut self, node: Node<'_, '_>) {
        let class = node
            .attribute("className")
            .map(short_class)
            .unwrap_or("DeltaManager");
        let mut l = Vec::new();
        if class != "DeltaManager" && class != "BackupManager" {
            self.drop(
                None,
                format!("Cluster/Manager className=\"{class}\""),
                "tribecast has DeltaManager and BackupManager only; its attributes were skipped",
            );
            return;
        }
        l.push(format!("class_name = \"{class}\""));
        self.attrs_but(
            &mut l,
            node,
            "Cluster/Manager",
            &[
                (
                    "expireSessionsOnShutdown",
                    "expire_sessions_on_shutdown",
                    As::Bool,
                ),
                (
                    "notifyListenersOnReplication",
                    "notify_listeners_on_replication",
                    As::Bool,
                ),
                ("sendAllSessionsSize", "send_all_sessions_size", As::Int),
                // -1 (Tomcat's default, no bound) is carried as is: the file reads it so.
                ("maxActiveSessions", "max_active_sessions", As::Int),
                ("mapSendOptions", "map_send_options", As::SendOptions),
                ("rpcTimeout", "rpc_timeout_ms", As::Ms(1)),
                // Tomcat: runs of the 10 s background processor.
                (
                    "processExpiresFrequency",
                    "expire_frequency_ms",
                    As::Ms(10_000),
                ),
            ],
            &["stateTransferTimeout"],
        );
        // Seconds in Tomcat; -1 (wait forever) has no equivalent.
        if let Some(v) = node.attribute("stateTransferTimeout") {
            if v.trim().starts_with('-') {
                self.drop(
                    Some(&mut l),
                    format!("Cluster/Manager stateTransferTimeout=\"{v}\""),
                    "waiting forever is not supported; the default (60 s) applies",
                );
            } else {
                self.attr(
                    &mut l,
                    "Cluster/Manager",
                    "stateTransferTimeout",
                    v,
                    "state_transfer_timeout_ms",
                    As::Ms(1000),
                );
            }
        }
        for child in node.children().filter(Node::is_element) {
            self.drop(
                Some(&mut l),
                format!("Cluster/Manager/{}", child.tag_name().name()),
                "not supported",
            );
        }
        self.manager = l;
    }

    fn channel(&mut self, node: Node<'_, '_>, path: &str) {
        let mut l = Vec::new();
        self.class(&mut l, node, path, &["GroupChannel"]);
        self.attrs(
            &mut l,
            node,
            path,
            &[("heartbeatSleeptime", "heartbeat_interval_ms", As::Ms(1))],
        );
        self.channel = l;
        let mut n_int = 0;
        for child in node.children().filter(Node::is_element) {
            let name = child.tag_name().name();
            match name {
                "Membership" => self.membership(child, &format!("{path}/Membership")),
                "Receiver" => {
                    let p = format!("{path}/Receiver");
                    let mut r = Vec::new();
                    self.class(&mut r, child, &p, &["NioReceiver"]);
                    if child
                        .attribute("address")
                        .is_some_and(|a| a.trim() == "auto")
                    {
                        self.drop(
                            Some(&mut r),
                            format!("{p} address=\"auto\""),
                            "not supported: set the address other members reach this one on (default 127.0.0.1)",
                        );
                    } else if let Some(a) = child.attribute("address") {
                        self.attr(&mut r, &p, "address", a, "address", As::Str);
                    }
                    self.attrs_but(
                        &mut r,
                        child,
                        &p,
                        &[
                            ("port", "port", As::Int),
                            ("autoBind", "auto_bind", As::Int),
                            ("selectorTimeout", "selector_timeout_ms", As::Ms(1)),
                            ("maxThreads", "max_threads", As::Int),
                        ],
                        &["address"],
                    );
                    self.receiver = r;
                }
                "Sender" => {
                    let p = format!("{path}/Sender");
                    let mut s = Vec::new();
                    self.class(&mut s, child, &p, &["ReplicationTransmitter"]);
                    self.rest(Some(&mut s), child, &p, &[]);
                    for t in child.children().filter(Node::is_element) {
                        let tp = format!("{p}/{}", t.tag_name().name());
                        if t.tag_name().name() != "Transport" {
                            self.drop(Some(&mut s), tp, "not supported");
                            continue;
                        }
                        self.class(&mut s, t, &tp, &["PooledParallelSender"]);
                        self.attrs(
                            &mut s,
                            t,
                            &tp,
                            &[
                                ("timeout", "timeout_ms", As::Ms(1)),
                                ("poolSize", "pool_size", As::Int),
                                ("maxRetryAttempts", "max_retry_attempts", As::Int),
                            ],
                        );
                    }
                    self.sender = s;
                }
                "Interceptor" => {
                    n_int += 1;
                    self.interceptor(child, &format!("{path}/Interceptor[{n_int}]"));
                }
                other => {
                    let what = match child.attribute("className") {
                        Some(c) => format!("{path}/{other} className=\"{c}\""),
                        None => format!("{path}/{other}"),
                    };
                    self.drop(None, what, "not supported");
                }
            }
        }
    }

    fn membership(&mut self, node: Node<'_, '_>, path: &str) {
        self.has_membership = true;
        let class = node
            .attribute("className")
            .map(short_class)
            .unwrap_or("McastService");
        let mut l = Vec::new();
        match class {
            "McastService" => {
                l.push("kind = \"multicast\"".into());
                self.attrs(
                    &mut l,
                    node,
                    path,
                    &[
                        ("address", "address", As::Str),
                        ("port", "port", As::Int),
                        ("frequency", "frequency_ms", As::Ms(1)),
                        ("dropTime", "drop_time_ms", As::Ms(1)),
                        ("bind", "bind", As::Str),
                        ("ttl", "ttl", As::Int),
                        ("domain", "domain", As::Str),
                    ],
                );
            }
            "StaticMembershipService" => {
                l.push("kind = \"static\"".into());
                let moved = [
                    ("connectTimeout", "TcpFailureDetector connect_timeout_ms"),
                    ("pingInterval", "TcpPingInterceptor interval_ms"),
                ];
                self.attrs_but(
                    &mut l,
                    node,
                    path,
                    &[("expirationTime", "expiration_time_ms", As::Ms(1))],
                    &moved.map(|m| m.0),
                );
                // These live on interceptor entries in the file; guessing the stack is worse.
                for (name, key) in moved {
                    if let Some(v) = node.attribute(name) {
                        let why = format!("set it as {key} in the interceptor list");
                        self.drop(Some(&mut l), format!("{path} {name}=\"{v}\""), &why);
                    }
                }
            }
            other => {
                self.drop(
                    None,
                    format!("{path} className=\"{other}\""),
                    "not supported: use static members (kind = \"static\") or multicast",
                );
                self.has_membership = false;
                return;
            }
        }
        let mut members = Vec::new();
        for child in node.children().filter(Node::is_element) {
            self.member_or_local(child, path, &mut members, &mut l);
        }
        self.membership = l;
        self.membership_members = members;
    }

    /// A `<Member>` becomes a member table; a `<LocalMember uniqueId>` this member's id.
    fn member_or_local(
        &mut self,
        child: Node<'_, '_>,
        path: &str,
        members: &mut Vec<Vec<String>>,
        lines: &mut Vec<String>,
    ) {
        let name = child.tag_name().name();
        let p = format!("{path}/{name}");
        match name {
            "Member" => {
                let mut m = Vec::new();
                self.attrs(
                    &mut m,
                    child,
                    &p,
                    &[
                        ("host", "host", As::Str),
                        ("port", "port", As::Int),
                        ("uniqueId", "unique_id", As::Str),
                    ],
                );
                members.push(m);
            }
            "LocalMember" => {
                if let Some(id) = child.attribute("uniqueId") {
                    match parse_unique_id(id) {
                        Ok(_) => self.channel.push(format!("unique_id = {}", quote(id))),
                        Err(e) => self.drop(Some(lines), format!("{p} uniqueId=\"{id}\""), &e),
                    }
                }
                self.rest(Some(lines), child, &p, &["uniqueId"]);
            }
            other => self.drop(Some(lines), format!("{path}/{other}"), "not supported"),
        }
    }

    fn interceptor(&mut self, node: Node<'_, '_>, path: &str) {
        let full = node.attribute("className").unwrap_or("");
        let class = short_class(full).to_string();
        let mut l = vec![format!("class_name = \"{class}\"")];
        let mut members = Vec::new();
        match class.as_str() {
            "TcpFailureDetector" => self.attrs(
                &mut l,
                node,
                path,
                &[
                    ("connectTimeout", "connect_timeout_ms", As::Ms(1)),
                    ("performReadTest", "perform_read_test", As::Bool),
                ],
            ),
            "TcpPingInterceptor" => self.attrs(
                &mut l,
                node,
                path,
                &[("interval", "interval_ms", As::Ms(1))],
            ),
            "MessageDispatchInterceptor" => {
                self.attrs_but(
                    &mut l,
                    node,
                    path,
                    &[("maxQueueSize", "max_queue_size", As::Int)],
                    &["alwaysSend"],
                );
                match node.attribute("alwaysSend").map(str::trim) {
                    Some("false") => l.push("full_policy = \"fail\"".into()),
                    Some(v) => self.drop(
                        Some(&mut l),
                        format!("{path} alwaysSend=\"{v}\""),
                        "a full queue makes the sender wait (full_policy = \"block\"), it never sends on the caller's thread",
                    ),
                    None => {}
                }
            }
            "StaticMembershipInterceptor" => {
                self.has_static_interceptor = true;
                self.rest(Some(&mut l), node, path, &[]);
                for child in node.children().filter(Node::is_element) {
                    self.member_or_local(child, path, &mut members, &mut l);
                }
            }
            "DomainFilterInterceptor" => {
                self.attrs(&mut l, node, path, &[("domain", "domain", As::Str)])
            }
            "GzipInterceptor" => self.attrs(
                &mut l,
                node,
                path,
                &[("compressionMinSize", "compression_min_size", As::Int)],
            ),
            other => {
                let why = unsupported_interceptor(other).unwrap_or("unknown interceptor");
                self.drop(None, format!("{path} className=\"{full}\""), why);
                return;
            }
        }
        self.interceptors.push((l, members));
    }

    fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# Converted from a Tomcat server.xml by tribecast (server_xml_to_toml).\n");
        out.push_str(
            "# Keys and defaults: docs/configuration.md. Durations are milliseconds (_ms).\n",
        );
        for n in &self.header_notes {
            let _ = writeln!(out, "# {n}");
        }
        if !self.not_carried.is_empty() {
            out.push_str("#\n# Not carried over:\n");
            for n in &self.not_carried {
                let _ = writeln!(out, "#   - {n}");
            }
        }
        let section = |out: &mut String, header: &str, lines: &[String], always: bool| {
            if lines.is_empty() && !always {
                return;
            }
            let _ = writeln!(out, "\n{header}");
            for l in lines {
                let _ = writeln!(out, "{l}");
            }
        };
        section(&mut out, "[engine]", &self.engine, false);
        section(&mut out, "[connector]", &self.connector, false);
        section(&mut out, "[cluster]", &self.cluster, true);
        section(&mut out, "[cluster.manager]", &self.manager, false);
        section(&mut out, "[cluster.channel]", &self.channel, false);
        let mut membership = self.membership.clone();
        if !self.has_membership {
            if self.has_static_interceptor {
                membership.push("kind = \"static\"".into());
                membership.push(
                    "# Tomcat would also start its default McastService here unless channelStartOptions=\"3\"."
                        .into(),
                );
            } else {
                // No <Membership>: Tomcat's default is McastService with its defaults.
                membership.push("kind = \"multicast\"".into());
            }
        }
        section(&mut out, "[cluster.channel.membership]", &membership, false);
        for m in &self.membership_members {
            section(&mut out, "[[cluster.channel.membership.member]]", m, true);
        }
        section(
            &mut out,
            "[cluster.channel.receiver]",
            &self.receiver,
            false,
        );
        section(&mut out, "[cluster.channel.sender]", &self.sender, false);
        for (l, members) in &self.interceptors {
            section(&mut out, "[[cluster.channel.interceptor]]", l, true);
            for m in members {
                section(&mut out, "[[cluster.channel.interceptor.member]]", m, true);
            }
        }
        section(&mut out, "[cluster.valve]", &self.valve, false);
        section(&mut out, "[cluster.listener]", &self.listener, false);
        out
    }

    /// Renders, then comments out any value the loader refuses (out of range, unresolvable
    /// host, ...), so the output always loads and every loss is listed.
    fn finish(mut self) -> Result<Conversion, ConfigFileError> {
        let mut text = self.render();
        let mut refused: Vec<String> = Vec::new();
        for _ in 0..64 {
            match NodeConfig::from_toml_str(&text) {
                Ok(_) => {
                    if !refused.is_empty() {
                        text = with_header_items(&text, &refused, self.not_carried.is_empty());
                    }
                    self.not_carried.extend(refused);
                    return Ok(Conversion {
                        toml: text,
                        not_carried: self.not_carried,
                    });
                }
                Err(e) => {
                    let Some(line) = e.line else { return Err(e) };
                    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
                    let Some(l) = lines.get(line - 1) else {
                        return Err(e);
                    };
                    if e.kind == ConfigFileErrorKind::Syntax {
                        return Err(e); // in our own output: a bug, not a value to drop
                    }
                    let value_line =
                        !l.starts_with('[') && !l.starts_with('#') && l.contains(" = ");
                    // A member is all or nothing: without its host or port it is no member.
                    let in_member = lines[..line]
                        .iter()
                        .rfind(|l| l.starts_with('['))
                        .is_some_and(|h| h.ends_with(".member]]"));
                    let message = one_line(&e.message);
                    if value_line && !in_member && !l.starts_with("class_name") {
                        let item = format!("{}: {message} (value `{}` refused)", e.key, l.trim());
                        lines[line - 1] = format!("# not carried: {l}  # {message}");
                        refused.push(item);
                    } else {
                        // A table that cannot stand: comment it out whole, from its header to
                        // the next one.
                        let Some(h) = lines[..line].iter().rposition(|l| l.starts_with('[')) else {
                            return Err(e);
                        };
                        let end = lines[h + 1..]
                            .iter()
                            .position(|l| l.starts_with('['))
                            .map_or(lines.len(), |p| h + 1 + p);
                        refused.push(format!(
                            "{}: {message} (table `{}` refused)",
                            e.key, lines[h]
                        ));
                        for l in &mut lines[h..end] {
                            if !l.is_empty() {
                                *l = format!("# not carried: {l}");
                            }
                        }
                    }
                    text = lines.join("\n") + "\n";
                }
            }
        }
        Err(xml_error(None, "too many values refused".into()))
    }
}

/// Adds `items` to the "Not carried over" list at the end of the leading comment block.
fn with_header_items(text: &str, items: &[String], start_list: bool) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let at = lines
        .iter()
        .position(|l| !l.starts_with('#'))
        .unwrap_or(lines.len());
    let mut add = Vec::new();
    if start_list {
        add.push("#".to_string());
        add.push("# Not carried over:".to_string());
    }
    add.extend(items.iter().map(|i| format!("#   - {i}")));
    lines.splice(at..at, add);
    lines.join("\n") + "\n"
}

/// `s` on one line, for a TOML comment (attribute values and regex errors may hold newlines).
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
