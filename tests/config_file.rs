//! Configuration files (src/config_file): the example files load, and every kind of mistake is
//! a typed error naming its key and line, never a panic.
//!
//! Run: `cargo test --release --test config_file`.

use proptest::prelude::*;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tribecast::config_file::{convert_server_xml, ConfigFileErrorKind as Kind};
use tribecast::{ManagerKind, MemberId, NodeConfig, SendOptions, StaticMember};

fn example_configs() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/config");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_example_config_loads() {
    let files = example_configs();
    assert!(files.len() >= 3, "{files:?}");
    for f in &files {
        if let Err(e) = NodeConfig::from_file(f) {
            panic!("{e}");
        }
    }
}

#[test]
fn server1_is_the_reference_setup() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/config");
    for i in 1..=3u8 {
        let n = NodeConfig::from_file(&dir.join(format!("server{i}.toml"))).unwrap();
        let c = &n.cluster;
        assert_eq!(c.jvm_route, format!("node{i}"));
        assert_eq!(
            n.http,
            Some(SocketAddr::from(([127, 0, 0, 1], 8080 + u16::from(i))))
        );
        assert_eq!(n.context, "/app");
        assert_eq!(c.channel_send_options, SendOptions::ASYNCHRONOUS);
        assert_eq!(c.manager.kind, ManagerKind::Delta);
        assert!(!c.manager.expire_sessions_on_shutdown);
        assert!(c.manager.notify_listeners_on_replication);
        let r = &c.channel.receiver;
        assert_eq!(r.port, 4000 + u16::from(i));
        assert_eq!(r.max_threads, 6);
        assert_eq!(r.selector_timeout, Duration::from_millis(5000));
        let mut id = [0u8; 16];
        id[15] = i;
        assert_eq!(c.channel.unique_id, Some(MemberId(id)));
        assert!(c.channel.membership.mcast.is_none());
        assert!(c.channel.membership.failure_detector);
        let ports: Vec<u16> = c
            .channel
            .static_members
            .iter()
            .map(|m| m.addr.port())
            .collect();
        let want: Vec<u16> = (1..=3u16)
            .filter(|&j| j != u16::from(i))
            .map(|j| 4000 + j)
            .collect();
        assert_eq!(ports, want);
        assert!(c.valve_filter.contains(r".*\.css"));
    }
}

#[test]
fn empty_file_is_all_defaults() {
    let n = NodeConfig::from_toml_str("").unwrap();
    assert_eq!(n.http, None);
    assert_eq!(n.context, "/app");
    assert_eq!(n.cluster.channel.receiver.port, 4000);
    assert_eq!(n.cluster.channel.receiver.max_threads, 15);
}

#[test]
fn bad_value_names_key_and_line() {
    let text = "[cluster.channel.receiver]\nport = 4000\nmax_threads = -3\n";
    let e = NodeConfig::from_toml_str(text).unwrap_err();
    assert_eq!(e.kind, Kind::OutOfRange);
    assert_eq!(e.key, "cluster.channel.receiver.max_threads");
    assert_eq!(e.line, Some(3));
    assert_eq!(
        e.to_string(),
        "line 3: cluster.channel.receiver.max_threads: expected a positive integer, got -3"
    );
}

fn err(text: &str) -> tribecast::ConfigFileError {
    match NodeConfig::from_toml_str(text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e,
    }
}

/// The error's kind, key and line; its message must name the key too.
fn check(text: &str, kind: Kind, key: &str, line: usize) -> tribecast::ConfigFileError {
    let e = err(text);
    assert_eq!(
        (e.kind, e.key.as_str(), e.line),
        (kind, key, Some(line)),
        "{e}"
    );
    assert!(e.to_string().contains(key), "{e}");
    e
}

#[test]
fn numbers_in_any_toml_form() {
    let n = NodeConfig::from_toml_str(
        "[cluster.channel]\nmax_frame_size = 4_194_304\n[cluster.channel.receiver]\nmax_threads = 0x10\n",
    )
    .unwrap();
    assert_eq!(n.cluster.channel.max_frame_size, 4 << 20);
    assert_eq!(n.cluster.channel.receiver.max_threads, 16);
}

/// `max_active_sessions` and `max_session_size`: a positive integer, or -1 (Tomcat's "no
/// bound"); 0 would refuse everything and is an error naming key and line.
#[test]
fn session_bounds() {
    let d = NodeConfig::from_toml_str("").unwrap().cluster.manager;
    assert_eq!(d.max_active_sessions, Some(10_000));
    assert_eq!(d.max_session_size, Some(1 << 20));
    let n = NodeConfig::from_toml_str(
        "[cluster.manager]\nmax_active_sessions = 500\nmax_session_size = 65_536\n",
    )
    .unwrap()
    .cluster
    .manager;
    assert_eq!(
        (n.max_active_sessions, n.max_session_size),
        (Some(500), Some(65_536))
    );
    let n = NodeConfig::from_toml_str(
        "[cluster.manager]\nmax_active_sessions = -1\nmax_session_size = -1\n",
    )
    .unwrap()
    .cluster
    .manager;
    assert_eq!((n.max_active_sessions, n.max_session_size), (None, None));
    for key in ["max_active_sessions", "max_session_size"] {
        for bad in ["0", "-2"] {
            let e = check(
                &format!("[cluster.manager]\n{key} = {bad}\n"),
                Kind::OutOfRange,
                &format!("cluster.manager.{key}"),
                2,
            );
            assert!(e.message.contains("-1 (no bound)"), "{e}");
        }
    }
}

#[test]
fn unknown_keys_name_key_and_line() {
    let e = check("colour = 1\n", Kind::UnknownKey, "colour", 1);
    assert!(
        e.message.contains("engine, connector, context, cluster"),
        "{e}"
    );
    check(
        "[cluster.channel.receiver]\nport = 4000\nmax_thread = 6\n",
        Kind::UnknownKey,
        "cluster.channel.receiver.max_thread",
        3,
    );
    check(
        "[cluster.manager]\nclass_name = \"DeltaManager\"\n\n  stateTransferTimeout = 60\n",
        Kind::UnknownKey,
        "cluster.manager.stateTransferTimeout",
        4,
    );
    check(
        "[[cluster.channel.interceptor]]\nclass_name = \"TcpFailureDetector\"\nremove_suspects_timeout_ms = 1\n",
        Kind::UnknownKey,
        "cluster.channel.interceptor[0].remove_suspects_timeout_ms",
        3,
    );
    check(
        "[[cluster.channel.interceptor]]\nclass_name = \"StaticMembershipInterceptor\"\n[[cluster.channel.interceptor.member]]\nhost = \"127.0.0.1\"\nport = 4001\nsecure_port = 1\n",
        Kind::UnknownKey,
        "cluster.channel.interceptor[0].member[0].secure_port",
        6,
    );
    // Tomcat's attribute names get the file's name suggested.
    let e = check(
        "[cluster.channel.receiver]\nselectorTimeout = 5000\n",
        Kind::UnknownKey,
        "cluster.channel.receiver.selectorTimeout",
        2,
    );
    assert!(
        e.message.contains("did you mean `selector_timeout_ms`?"),
        "{e}"
    );
    // The first unknown key in file order is reported, not the first in key order.
    check(
        "[engine]\nzzz = 1\naaa = 2\n",
        Kind::UnknownKey,
        "engine.zzz",
        2,
    );
}

#[test]
fn wrong_types_name_key() {
    check(
        "[cluster.channel.receiver]\nport = \"4000\"\n",
        Kind::WrongType,
        "cluster.channel.receiver.port",
        2,
    );
    check(
        "[cluster.manager]\nexpire_sessions_on_shutdown = \"no\"\n",
        Kind::WrongType,
        "cluster.manager.expire_sessions_on_shutdown",
        2,
    );
    check(
        "[cluster.channel]\nheartbeat_interval_ms = 1.5\n",
        Kind::WrongType,
        "cluster.channel.heartbeat_interval_ms",
        2,
    );
    check(
        "[engine]\njvm_route = 7\n",
        Kind::WrongType,
        "engine.jvm_route",
        2,
    );
    check("cluster = 5\n", Kind::WrongType, "cluster", 1);
    check(
        "[cluster.channel]\ninterceptor = 1\n",
        Kind::WrongType,
        "cluster.channel.interceptor",
        2,
    );
}

#[test]
fn out_of_range_names_key() {
    check(
        "[cluster.channel.membership]\nkind = \"multicast\"\nttl = 300\n",
        Kind::OutOfRange,
        "cluster.channel.membership.ttl",
        3,
    );
    check(
        "[cluster.channel.sender]\ntimeout_ms = -1\n",
        Kind::OutOfRange,
        "cluster.channel.sender.timeout_ms",
        2,
    );
    check(
        "[cluster.manager]\nbackups = 0\n",
        Kind::OutOfRange,
        "cluster.manager.backups",
        2,
    );
    check(
        "[cluster.manager]\nexpire_frequency_ms = 0\n",
        Kind::OutOfRange,
        "cluster.manager.expire_frequency_ms",
        2,
    );
    check(
        "[cluster.channel.receiver]\nauto_bind = 99999999999999999999\n",
        Kind::OutOfRange,
        "cluster.channel.receiver.auto_bind",
        2,
    );
}

#[test]
fn bad_addresses_name_key() {
    check(
        "[cluster.channel.receiver]\naddress = \"10.0.0\"\n",
        Kind::BadAddress,
        "cluster.channel.receiver.address",
        2,
    );
    let e = check(
        "[cluster.channel.receiver]\naddress = \"auto\"\n",
        Kind::BadAddress,
        "cluster.channel.receiver.address",
        2,
    );
    assert!(e.message.contains("auto"), "{e}");
    check(
        "[connector]\nport = 70000\n",
        Kind::BadAddress,
        "connector.port",
        2,
    );
    check(
        "[connector]\naddress = \"127.0.0.1\"\n",
        Kind::BadAddress,
        "connector.port",
        1,
    );
    check(
        "[cluster.channel.membership]\nkind = \"multicast\"\naddress = \"::1\"\n",
        Kind::BadAddress,
        "cluster.channel.membership.address",
        3,
    );
    check(
        "[cluster.channel.membership]\n[[cluster.channel.membership.member]]\nhost = \"127.0.0.1\"\nport = 0\n",
        Kind::BadAddress,
        "cluster.channel.membership.member[0].port",
        4,
    );
    check(
        "[cluster.channel.membership]\n[[cluster.channel.membership.member]]\nport = 4000\n",
        Kind::BadAddress,
        "cluster.channel.membership.member[0].host",
        2,
    );
}

#[test]
fn bad_regex_and_send_options_name_key() {
    check(
        "[cluster.valve]\nfilter = '.*\\.css;(unclosed'\n",
        Kind::BadRegex,
        "cluster.valve.filter",
        2,
    );
    check(
        "[cluster]\nchannel_send_options = \"fast\"\n",
        Kind::BadSendOptions,
        "cluster.channel_send_options",
        2,
    );
    check(
        "[cluster]\nchannel_send_options = -8\n",
        Kind::BadSendOptions,
        "cluster.channel_send_options",
        2,
    );
    check(
        "[cluster.manager]\nmap_send_options = \"use_ack,sometimes\"\n",
        Kind::BadSendOptions,
        "cluster.manager.map_send_options",
        2,
    );
    let n =
        NodeConfig::from_toml_str("[cluster]\nchannel_send_options = \"use_ack,sync\"\n").unwrap();
    assert_eq!(n.cluster.channel_send_options, SendOptions::SYNC_ACK);
}

#[test]
fn bad_values_and_unsupported_name_key() {
    check(
        "[cluster.channel]\nunique_id = \"{1,2,3}\"\n",
        Kind::BadValue,
        "cluster.channel.unique_id",
        2,
    );
    check(
        "[cluster.channel.membership]\nkind = \"udp\"\n",
        Kind::BadValue,
        "cluster.channel.membership.kind",
        2,
    );
    check(
        "[context]\npath = \"app\"\n",
        Kind::BadValue,
        "context.path",
        2,
    );
    check(
        "[[cluster.channel.interceptor]]\nclass_name = \"MessageDispatchInterceptor\"\nfull_policy = \"drop\"\n",
        Kind::BadValue,
        "cluster.channel.interceptor[0].full_policy",
        3,
    );
    check(
        "[cluster.manager]\nclass_name = \"PersistentManager\"\n",
        Kind::Unsupported,
        "cluster.manager.class_name",
        2,
    );
    let e = check(
        "[[cluster.channel.interceptor]]\nclass_name = \"TcpFailureDetector\"\n[[cluster.channel.interceptor]]\nclass_name = \"org.apache.catalina.tribes.group.interceptors.OrderInterceptor\"\n",
        Kind::Unsupported,
        "cluster.channel.interceptor[1].class_name",
        4,
    );
    assert!(e.message.contains("in order"), "{e}");
    check(
        "[cluster.listener]\nclass_name = \"JvmRouteSessionIDBinderListener\"\n",
        Kind::Unsupported,
        "cluster.listener.class_name",
        2,
    );
}

#[test]
fn validate_errors_name_the_toml_key() {
    check(
        "[cluster.channel]\nmax_frame_size = 10\n",
        Kind::Invalid,
        "cluster.channel.max_frame_size",
        2,
    );
    check(
        "[cluster.channel.membership]\nkind = \"multicast\"\nfrequency_ms = 500\ndrop_time_ms = 400\n",
        Kind::Invalid,
        "cluster.channel.membership.drop_time_ms",
        4,
    );
    check(
        "[cluster.channel.membership]\nkind = \"multicast\"\naddress = \"10.0.0.1\"\n",
        Kind::Invalid,
        "cluster.channel.membership.address",
        3,
    );
    check(
        "[cluster.channel.receiver]\nmax_threads = 5000\n",
        Kind::Invalid,
        "cluster.channel.receiver.max_threads",
        2,
    );
    check(
        "[[cluster.channel.interceptor]]\nclass_name = \"MessageDispatchInterceptor\"\nmax_queue_size = 100\n",
        Kind::Invalid,
        "cluster.channel.interceptor[0].max_queue_size",
        3,
    );
}

#[test]
fn mistakes_that_would_be_silent_are_refused() {
    // A multicast setting without multicast would do nothing.
    check(
        "[cluster.channel.membership]\nport = 45564\n",
        Kind::Invalid,
        "cluster.channel.membership.port",
        2,
    );
    // One member has one domain.
    check(
        "[cluster.channel.membership]\ndomain = \"a\"\n[[cluster.channel.interceptor]]\nclass_name = \"DomainFilterInterceptor\"\ndomain = \"b\"\n",
        Kind::Invalid,
        "cluster.channel.interceptor[0].domain",
        5,
    );
}

#[test]
fn interceptor_list_replaces_the_default_stack() {
    let n = NodeConfig::from_toml_str(
        "[[cluster.channel.interceptor]]\nclass_name = \"MessageDispatchInterceptor\"\nfull_policy = \"fail\"\n",
    )
    .unwrap();
    assert!(!n.cluster.channel.membership.failure_detector);
    assert_eq!(
        n.cluster.channel.dispatch.full_policy,
        tribecast::QueueFullPolicy::Fail
    );
    let n = NodeConfig::from_toml_str(
        "[[cluster.channel.interceptor]]\nclass_name = \"TcpFailureDetector\"\nconnect_timeout_ms = 250\nperform_read_test = true\n\
         [[cluster.channel.interceptor]]\nclass_name = \"TcpPingInterceptor\"\ninterval_ms = 300\n",
    )
    .unwrap();
    let m = &n.cluster.channel.membership;
    assert!(m.failure_detector && m.perform_read_test);
    assert_eq!(m.connect_timeout, Duration::from_millis(250));
    assert_eq!(m.ping_interval, Duration::from_millis(300));
}

#[test]
fn syntax_errors_have_a_line() {
    let e = err("[engine]\njvm_route = \"node1\"\n[cluster\n");
    assert_eq!(e.kind, Kind::Syntax);
    assert_eq!(e.line, Some(3), "{e}");
    let e = err("[engine]\njvm_route = \"a\"\njvm_route = \"b\"\n");
    assert_eq!(e.kind, Kind::Syntax, "{e}");
}

#[test]
fn file_errors_name_the_file() {
    let dir = std::env::temp_dir().join(format!("tribecast-config-file-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("server1.toml");
    std::fs::write(&path, "[engine]\njvm_route = \"node1\"\n\n[cluster.channel.receiver]\nport = 4001\n\n\n\n\n\n\nmax_threads = -3\n").unwrap();
    let e = NodeConfig::from_file(&path).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "{} line 12: cluster.channel.receiver.max_threads: expected a positive integer, got -3",
            path.display()
        )
    );
    let e = NodeConfig::from_file(&dir.join("absent.toml")).unwrap_err();
    assert_eq!(e.kind, Kind::Io);
    assert!(e.to_string().contains("absent.toml"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---------------------------------------------------------------------------------------------
// The server.xml converter
// ---------------------------------------------------------------------------------------------

fn data(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data")
            .join(name),
    )
    .unwrap()
}

/// Converts, and loads the result: the converter's output must always be a valid file.
fn convert(xml: &str) -> (tribecast::config_file::Conversion, NodeConfig) {
    let c = match convert_server_xml(xml) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
    match NodeConfig::from_toml_str(&c.toml) {
        Ok(n) => (c, n),
        Err(e) => panic!("{e}\n{}", c.toml),
    }
}

#[test]
fn converts_the_reference_delta_manager_multicast_cluster() {
    let (c, n) = convert(&data("reference-delta-multicast.xml"));
    assert_eq!(c.not_carried, Vec::<String>::new(), "{}", c.toml);
    assert_eq!(n.cluster.jvm_route, "server1");
    assert_eq!(n.http, None);
    let k = &n.cluster;
    assert_eq!(k.channel_send_options, SendOptions::ASYNCHRONOUS);
    assert_eq!(k.manager.kind, ManagerKind::Delta);
    assert!(!k.manager.expire_sessions_on_shutdown);
    assert!(k.manager.notify_listeners_on_replication);
    let m = k.channel.membership.mcast.as_ref().expect("multicast");
    assert_eq!(m.address, Ipv4Addr::new(228, 0, 0, 4));
    assert_eq!(m.port, 45564);
    assert_eq!(m.frequency, Duration::from_millis(500));
    assert_eq!(m.drop_time, Duration::from_millis(3000));
    let r = &k.channel.receiver;
    assert_eq!(r.address, IpAddr::from([10, 0, 0, 1]));
    assert_eq!(r.port, 4000);
    assert_eq!(r.auto_bind, 100);
    assert_eq!(r.selector_timeout, Duration::from_millis(5000));
    assert_eq!(r.max_threads, 6);
    assert!(k.channel.membership.failure_detector);
    assert!(k.channel.static_members.is_empty());
    assert_eq!(
        k.valve_filter,
        r".*\.gif;.*\.js;.*\.jpeg;.*\.jpg;.*\.png;.*\.htm;.*\.html;.*\.css;.*\.txt"
    );
    let f = tribecast::cluster::compile_filter(&k.valve_filter)
        .unwrap()
        .unwrap();
    assert!(f.is_match("/app/static/site.css") && !f.is_match("/app/profile"));
}

#[test]
fn converts_the_reference_static_unicast_channel() {
    let (c, n) = convert(&data("reference-static-unicast.xml"));
    assert_eq!(c.not_carried, Vec::<String>::new(), "{}", c.toml);
    // The snippet is a <Channel> alone: said so in the output.
    assert!(c.toml.contains("No <Cluster> element"), "{}", c.toml);
    let ch = &n.cluster.channel;
    assert!(ch.membership.mcast.is_none());
    assert!(ch.membership.failure_detector);
    assert_eq!(ch.receiver.address, IpAddr::from([10, 0, 0, 1]));
    assert_eq!(ch.receiver.port, 4000);
    assert_eq!(ch.receiver.auto_bind, 100);
    assert_eq!(ch.receiver.max_threads, 6);
    let id = |b: u8| {
        let mut a = [0u8; 16];
        a[15] = b;
        Some(MemberId(a))
    };
    assert_eq!(
        ch.static_members,
        vec![
            listed(SocketAddr::from(([10, 0, 0, 2], 4000)), id(2)),
            listed(SocketAddr::from(([10, 0, 0, 3], 4000)), id(3)),
        ]
    );
}

#[test]
fn converts_a_full_server_xml_and_names_what_it_drops() {
    let (c, n) = convert(&data("tomcat-full-cluster.xml"));
    let k = &n.cluster;
    // The commented-out <Cluster> is skipped; the AJP connector is not the HTTP one.
    assert_eq!(k.jvm_route, "tc7");
    assert_eq!(n.http, Some(SocketAddr::from(([127, 0, 0, 1], 8080))));
    assert_eq!(k.channel_send_options, SendOptions::SYNC_ACK);
    assert_eq!(k.manager.kind, ManagerKind::Backup);
    assert_eq!(k.manager.map_send_options, SendOptions::SYNC_ACK);
    assert_eq!(k.manager.rpc_timeout, Duration::from_millis(20000));
    assert!(!k.manager.notify_listeners_on_replication);
    assert_eq!(k.manager.max_active_sessions, Some(100));
    let m = k.channel.membership.mcast.as_ref().unwrap();
    assert_eq!(
        (m.address, m.port, m.ttl),
        (Ipv4Addr::new(228, 0, 0, 8), 45565, Some(2))
    );
    assert_eq!(m.bind, Some(Ipv4Addr::LOCALHOST));
    assert_eq!(k.channel.domain, "shop");
    assert_eq!(k.channel.receiver.port, 4100);
    assert_eq!(
        k.channel.receiver.max_threads, 15,
        "maxThreads=0 refused, default kept"
    );
    assert_eq!(k.channel.sender.timeout, Duration::from_millis(5000));
    assert_eq!(k.channel.sender.pool_size, 10);
    assert_eq!(k.channel.sender.max_retry_attempts, 2);
    assert_eq!(
        k.channel.membership.connect_timeout,
        Duration::from_millis(2000)
    );
    assert!(k.channel.membership.perform_read_test);
    assert_eq!(
        k.channel.membership.ping_interval,
        Duration::from_millis(750)
    );
    assert_eq!(k.channel.dispatch.max_queue_size, 128 << 20);
    assert_eq!(k.valve_filter, r".*\.gif;.*\.css");
    let dropped: Vec<&str> = c
        .not_carried
        .iter()
        .map(|s| s.split(':').next().unwrap_or(""))
        .collect();
    assert_eq!(
        dropped,
        [
            "Cluster channelStartOptions=\"3\"",
            "Cluster/Channel/Membership soTimeout=\"500\"",
            "Cluster/Channel/Receiver address=\"auto\"",
            "Cluster/Channel/Receiver rxBufSize=\"65536\"",
            "Cluster/Channel/Sender/Transport keepAliveCount=\"100\"",
            "Cluster/Channel/Interceptor[1] removeSuspectsTimeout=\"60\"",
            "Cluster/Channel/Interceptor[2] useThread=\"true\"",
            "Cluster/Channel/Interceptor[3] className=\"org.apache.catalina.tribes.group.interceptors.OrderInterceptor\"",
            "Cluster/Channel/Interceptor[4] alwaysSend=\"true\"",
            "Cluster/Channel/Interceptor[5] className=\"org.apache.catalina.tribes.group.interceptors.ThroughputInterceptor\"",
            "Cluster/Valve statistics=\"true\"",
            "Cluster/Valve className=\"org.apache.catalina.ha.session.JvmRouteBinderValve\"",
            "Cluster/Deployer className=\"org.apache.catalina.ha.deploy.FarmWarDeployer\"",
            "cluster.channel.receiver.max_threads",
        ]
    );
    // Each is also a comment in the file.
    for item in &c.not_carried {
        assert!(
            c.toml.contains(&format!("#   - {item}")),
            "{item}\n{}",
            c.toml
        );
    }
}

#[test]
fn converter_maps_tomcat_units() {
    let xml = r#"<Cluster className="org.apache.catalina.ha.tcp.SimpleTcpCluster">
      <Manager className="org.apache.catalina.ha.session.DeltaManager"
               stateTransferTimeout="30" processExpiresFrequency="3" sendAllSessionsSize="50"
               maxActiveSessions="2000"/>
      <Channel className="org.apache.catalina.tribes.group.GroupChannel" heartbeatSleeptime="2000">
        <Membership className="org.apache.catalina.tribes.membership.StaticMembershipService"
                    expirationTime="9000">
          <LocalMember className="org.apache.catalina.tribes.membership.StaticMember"
                       uniqueId="{1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,-1}"/>
          <Member className="org.apache.catalina.tribes.membership.StaticMember"
                  host="{127,0,0,1}" port="4002" uniqueId="{0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,2}"/>
        </Membership>
        <Interceptor className="org.apache.catalina.tribes.group.interceptors.MessageDispatchInterceptor"
                     alwaysSend="false"/>
      </Channel>
    </Cluster>"#;
    let (c, n) = convert(xml);
    assert_eq!(c.not_carried, Vec::<String>::new(), "{}", c.toml);
    let k = &n.cluster;
    assert_eq!(k.manager.state_transfer_timeout, Duration::from_secs(30));
    assert_eq!(k.manager.expire_frequency, Duration::from_secs(30));
    assert_eq!(k.manager.send_all_sessions_size, 50);
    assert_eq!(k.manager.max_active_sessions, Some(2000));
    assert_eq!(k.channel.heartbeat_interval, Duration::from_millis(2000));
    assert_eq!(
        k.channel.membership.expiration_time,
        Duration::from_millis(9000)
    );
    assert_eq!(k.channel.unique_id.map(|i| i.0[15]), Some(0xff));
    assert_eq!(
        k.channel.static_members[0].addr,
        SocketAddr::from(([127, 0, 0, 1], 4002))
    );
    assert_eq!(
        k.channel.dispatch.full_policy,
        tribecast::QueueFullPolicy::Fail
    );
    // No TcpFailureDetector in the listed stack: none, as in Tomcat.
    assert!(!k.channel.membership.failure_detector);
}

#[test]
fn converter_defaults_and_refusals() {
    // Tomcat's minimal cluster: multicast with every default.
    let (c, n) = convert(
        r#"<Engine name="Catalina" jvmRoute="a"><Cluster className="org.apache.catalina.ha.tcp.SimpleTcpCluster"/></Engine>"#,
    );
    assert!(c.not_carried.is_empty());
    assert_eq!(n.cluster.jvm_route, "a");
    assert_eq!(
        n.cluster.channel.membership.mcast.as_ref().map(|m| m.port),
        Some(45564)
    );
    // Property placeholders are not numbers: listed, not guessed.
    let (c, n) =
        convert(r#"<Cluster><Channel><Receiver port="${cluster.port}"/></Channel></Cluster>"#);
    assert_eq!(
        c.not_carried,
        ["Cluster/Channel/Receiver port=\"${cluster.port}\": not a number"]
    );
    assert_eq!(n.cluster.channel.receiver.port, 4000);
    let e = convert_server_xml("<Server><!-- <Cluster/> --></Server>").unwrap_err();
    assert_eq!(e.kind, Kind::Syntax);
    let e =
        convert_server_xml("<Server>\n\n<Cluster>\n<Channel>\n</Cluster>\n</Server>").unwrap_err();
    assert_eq!((e.kind, e.line), (Kind::Syntax, Some(5)), "{e}");
}

// ---------------------------------------------------------------------------------------------
// No input panics
// ---------------------------------------------------------------------------------------------

/// server1.toml without its member tables: mutations must not turn a host into a name that
/// would be looked up in DNS (tests stay off the network).
fn base_without_hosts() -> String {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/config/server1.toml"),
    )
    .unwrap();
    text.lines()
        .filter(|l| !l.starts_with("host"))
        .collect::<Vec<_>>()
        .join("\n")
}

const SECTIONS: &[&str] = &[
    "",
    "[engine]",
    "[connector]",
    "[context]",
    "[cluster]",
    "[cluster.manager]",
    "[cluster.channel]",
    "[cluster.channel.membership]",
    "[cluster.channel.receiver]",
    "[cluster.channel.sender]",
    "[[cluster.channel.interceptor]]",
    "[[cluster.channel.interceptor.member]]",
    "[[cluster.channel.membership.member]]",
    "[cluster.valve]",
    "[cluster.listener]",
];

const KEYS: &[&str] = &[
    "jvm_route",
    "address",
    "port",
    "path",
    "cluster_name",
    "channel_send_options",
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
    "max_active_sessions",
    "max_session_size",
    "heartbeat_interval_ms",
    "max_frame_size",
    "unique_id",
    "kind",
    "frequency_ms",
    "drop_time_ms",
    "bind",
    "ttl",
    "domain",
    "expiration_time_ms",
    "auto_bind",
    "selector_timeout_ms",
    "max_threads",
    "max_connections",
    "max_queued_bytes_per_connection",
    "handshake_timeout_ms",
    "timeout_ms",
    "pool_size",
    "max_retry_attempts",
    "coalesce_bytes",
    "max_queued_bytes_per_member",
    "connect_timeout_ms",
    "perform_read_test",
    "interval_ms",
    "max_queue_size",
    "full_policy",
    "filter",
    "member",
    "interceptor",
    "bogus",
];

fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        (0i64..70000).prop_map(|n| n.to_string()),
        any::<bool>().prop_map(|b| b.to_string()),
        any::<f64>().prop_map(|f| format!("{f:?}")),
        prop::sample::select(vec![
            "\"multicast\"",
            "\"static\"",
            "\"228.0.0.4\"",
            "\"127.0.0.1\"",
            "\"::1\"",
            "\"DeltaManager\"",
            "\"BackupManager\"",
            "\"TcpFailureDetector\"",
            "\"MessageDispatchInterceptor\"",
            "\"StaticMembershipInterceptor\"",
            "\"DomainFilterInterceptor\"",
            "\"TcpPingInterceptor\"",
            "\"OrderInterceptor\"",
            "\"async\"",
            "\"use_ack,sync\"",
            "\"(\"",
            "'.*\\.css'",
            "\"block\"",
            "\"fail\"",
            "\"{0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,1}\"",
            "\"/app\"",
            "[]",
            "{}",
            "[1, \"a\"]",
        ])
        .prop_map(str::to_string),
        "[a-z0-9 .{},-]{0,12}".prop_map(|s| format!("\"{s}\"")),
    ]
}

/// A document of known sections and keys with arbitrary values.
fn document() -> impl Strategy<Value = String> {
    prop::collection::vec(
        (
            prop::sample::select(SECTIONS),
            prop::collection::vec((prop::sample::select(KEYS), value()), 0..5),
        ),
        0..8,
    )
    .prop_map(|sections| {
        let mut out = String::new();
        for (header, kvs) in sections {
            out.push_str(header);
            out.push('\n');
            for (k, v) in kvs {
                out.push_str(&format!("{k} = {v}\n"));
            }
        }
        out
    })
}

/// Loads `text`: must not panic, and an error must be a readable line.
fn load_any(text: &str) {
    if let Err(e) = NodeConfig::from_toml_str(text) {
        assert!(!e.to_string().is_empty());
        if let Some(l) = e.line {
            assert!(
                l >= 1 && l <= text.lines().count().max(1) + 1,
                "{e} in\n{text}"
            );
        }
    }
}

proptest! {
    #[test]
    fn prop_arbitrary_text_never_panics(text in any::<String>()) {
        load_any(&text);
    }

    #[test]
    fn prop_generated_documents_never_panic(text in document()) {
        load_any(&text);
    }

    #[test]
    fn prop_mutated_example_never_panics(
        edits in prop::collection::vec((any::<prop::sample::Index>(), 0u8..4, any::<char>()), 1..6)
    ) {
        let mut chars: Vec<char> = base_without_hosts().chars().collect();
        for (at, op, c) in edits {
            let i = at.index(chars.len() + 1);
            match op {
                0 => chars.insert(i, c),
                1 if i < chars.len() => { chars.remove(i); }
                2 if i < chars.len() => chars[i] = c,
                _ => {
                    // Drop a whole line.
                    let start = chars[..i].iter().rposition(|&c| c == '\n').map_or(0, |p| p + 1);
                    let end = chars[i..].iter().position(|&c| c == '\n').map_or(chars.len(), |p| i + p);
                    chars.drain(start..end);
                }
            }
        }
        let text: String = chars.into_iter().collect();
        load_any(&text);
    }

    #[test]
    fn prop_converter_never_panics_and_its_output_loads(
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<char>()), 0..6),
        junk in any::<String>(),
    ) {
        let _ = convert_server_xml(&junk);
        let mut chars: Vec<char> = data("reference-delta-multicast.xml").chars().collect();
        for (at, c) in edits {
            let i = at.index(chars.len());
            chars[i] = c;
        }
        let xml: String = chars.into_iter().collect();
        if let Ok(c) = convert_server_xml(&xml) {
            prop_assert!(NodeConfig::from_toml_str(&c.toml).is_ok(), "{}", c.toml);
        }
    }
}

#[test]
fn the_sample_in_the_docs_loads() {
    let doc = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/configuration.md"),
    )
    .unwrap();
    let start = doc.find("```toml\n").expect("a toml sample") + "```toml\n".len();
    let len = doc[start..].find("```").unwrap();
    let n = NodeConfig::from_toml_str(&doc[start..start + len]).unwrap();
    assert_eq!(n.cluster.jvm_route, "node1");
    assert_eq!(n.cluster.channel.static_members.len(), 1);
}

#[test]
fn example_files_point_at_each_other() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/config");
    let nodes: Vec<NodeConfig> = (1..=3)
        .map(|i| NodeConfig::from_file(&dir.join(format!("server{i}.toml"))).unwrap())
        .collect();
    for (i, a) in nodes.iter().enumerate() {
        let held: Vec<StaticMember> = a.cluster.channel.static_members.clone();
        let others: Vec<StaticMember> = nodes
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, b)| {
                listed(
                    SocketAddr::new(
                        b.cluster.channel.receiver.address,
                        b.cluster.channel.receiver.port,
                    ),
                    b.cluster.channel.unique_id,
                )
            })
            .collect();
        assert_eq!(held, others, "server{}.toml", i + 1);
        assert_eq!(
            a.cluster.channel.receiver.auto_bind, 1,
            "fixed ports: others expect them"
        );
    }
}

#[test]
fn converter_drops_a_member_it_cannot_place() {
    // Hosts that cannot be used are refused without a DNS lookup (tests stay off the network).
    let xml = r#"<Cluster><Channel>
      <Interceptor className="org.apache.catalina.tribes.group.interceptors.StaticMembershipInterceptor">
        <Member className="org.apache.catalina.tribes.membership.StaticMember" host="{1,2}" port="4000"/>
        <Member className="org.apache.catalina.tribes.membership.StaticMember" host="127.0.0.1" port="4002"/>
        <Member className="org.apache.catalina.tribes.membership.StaticMember" host="bad host!" port="4003"/>
      </Interceptor>
      <Interceptor className="org.apache.catalina.tribes.group.interceptors.TcpFailureDetector"/>
    </Channel></Cluster>"#;
    let (c, n) = convert(xml);
    let ports: Vec<u16> = n
        .cluster
        .channel
        .static_members
        .iter()
        .map(|m| m.addr.port())
        .collect();
    assert_eq!(ports, [4002]);
    assert!(n.cluster.channel.membership.failure_detector);
    assert_eq!(c.not_carried.len(), 2, "{:?}", c.not_carried);
    assert!(
        c.not_carried
            .iter()
            .all(|n| n.contains("member[") && n.contains("refused")),
        "{:?}",
        c.not_carried
    );
    check(
        "[[cluster.channel.membership.member]]\nhost = \"{1,2,3,400}\"\nport = 4000\n",
        Kind::BadAddress,
        "cluster.channel.membership.member[0].host",
        2,
    );
}

/// Two nodes built from server1.toml and server2.toml (on OS-chosen ports, as tests must) find
/// each other through their static member lists and ids, as the files intend.
#[test]
fn example_files_form_a_cluster() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/config");
    let load = |i: u8| NodeConfig::from_file(&dir.join(format!("server{i}.toml"))).unwrap();
    let (mut a, mut b) = (load(1), load(2));
    a.cluster.channel.receiver.port = 0;
    a.cluster.channel.static_members.clear(); // node1 learns node2 when it connects
    let node1 = tribecast::SimpleTcpCluster::new(a.cluster).unwrap();
    node1.add_application(&a.context);
    node1.start().unwrap();
    let addr1 = node1.channel().local_member().unwrap().addr;
    b.cluster.channel.receiver.port = 0;
    // Keep server2.toml's entry for node1 (and its id); only the port is the OS's.
    b.cluster
        .channel
        .static_members
        .retain(|m| m.addr.port() == 4001);
    b.cluster.channel.static_members[0].addr = addr1;
    let node2 = tribecast::SimpleTcpCluster::new(b.cluster).unwrap();
    node2.add_application(&b.context);
    node2.start().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let names = |c: &tribecast::SimpleTcpCluster| -> Vec<String> {
        c.channel().members().into_iter().map(|m| m.name).collect()
    };
    while (names(&node1) != ["node2"] || names(&node2) != ["node1"])
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(names(&node1), ["node2"]);
    assert_eq!(names(&node2), ["node1"]);
    node2.stop();
    node1.stop();
}

#[test]
fn the_cluster_key_comes_from_a_file_or_the_environment_and_is_never_shown() {
    let dir = std::env::temp_dir().join(format!("tribecast-key-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("cluster.key");
    let secret = "a1".repeat(32);
    std::fs::write(&file, &secret).unwrap();
    let text = format!(
        "[cluster.channel]\ncluster_key_file = {:?}\nreplay_window_ms = 5000\n",
        file.display().to_string()
    );
    let n = NodeConfig::from_toml_str(&text).unwrap();
    assert!(n.cluster.channel.cluster_key.is_some());
    assert_eq!(n.cluster.channel.replay_window, Duration::from_secs(5));
    assert!(!format!("{:?}", n.cluster.channel).contains(&secret));
    // The environment variable form.
    let var = format!("TRIBECAST_TEST_KEY_{}", std::process::id());
    std::env::set_var(&var, &secret);
    let n = NodeConfig::from_toml_str(&format!("[cluster.channel]\ncluster_key_env = {var:?}\n"));
    assert!(n.unwrap().cluster.channel.cluster_key.is_some());
    // A missing file, a bad key, both forms at once, an empty window: typed errors naming the
    // key, and never the key text.
    let missing = format!(
        "[cluster.channel]\ncluster_key_file = {:?}\n",
        dir.join("nope").display().to_string()
    );
    check(
        &missing,
        Kind::BadValue,
        "cluster.channel.cluster_key_file",
        2,
    );
    std::fs::write(&file, "not a key").unwrap();
    let e = check(&text, Kind::BadValue, "cluster.channel.cluster_key_file", 2);
    assert!(!e.to_string().contains("not a key"), "{e}");
    std::fs::write(&file, &secret).unwrap();
    let both = format!("{text}cluster_key_env = {var:?}\n");
    check(&both, Kind::BadValue, "cluster.channel.cluster_key_env", 4);
    let zero = "[cluster.channel]\nreplay_window_ms = 0\n";
    check(zero, Kind::Invalid, "cluster.channel.replay_window_ms", 2);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The session cookie (Tomcat's `Context` attributes, in `[context]`) and route rebinding
/// (`JvmRouteBinderValve`, `[cluster.manager] rebind_route`); a cookie that cannot be written and
/// an unknown policy are errors naming their key.
#[test]
fn cookie_policy_and_route_rebinding_from_a_file() {
    use tribecast::{RebindRoute, SameSite};
    let n = NodeConfig::from_toml_str(
        r#"
[context]
path = "/shop"
session_cookie_name = "SID"
session_cookie_path = "/"
session_cookie_domain = "example.com"
use_http_only = true
session_cookie_secure = true
same_site_cookies = "strict"

[cluster.manager]
rebind_route = "always"
"#,
    )
    .expect("loads");
    let c = &n.cluster.manager.cookie;
    assert_eq!(c.name, "SID");
    assert_eq!(c.path.as_deref(), Some("/"));
    assert_eq!(c.domain.as_deref(), Some("example.com"));
    assert!(c.http_only && c.secure);
    assert_eq!(c.same_site, SameSite::Strict);
    assert_eq!(n.cluster.manager.rebind_route, RebindRoute::Always);
    let defaults = NodeConfig::from_toml_str("").expect("empty");
    assert_eq!(defaults.cluster.manager.rebind_route, RebindRoute::Never);
    assert_eq!(defaults.cluster.manager.cookie.same_site, SameSite::Lax);
    for (text, key) in [
        (
            "[context]\nsame_site_cookies = \"sometimes\"\n",
            "same_site_cookies",
        ),
        (
            "[context]\nsame_site_cookies = \"none\"\n",
            "same_site_cookies",
        ),
        (
            "[context]\nsession_cookie_name = \"a b\"\n",
            "session_cookie_name",
        ),
        (
            "[cluster.manager]\nrebind_route = \"maybe\"\n",
            "rebind_route",
        ),
    ] {
        let e = NodeConfig::from_toml_str(text).expect_err(text);
        assert_eq!(e.kind, Kind::BadValue, "{e}");
        assert!(e.to_string().contains(key), "{text}: {e}");
    }
}

/// A static member entry as the config file gives it.
fn listed(addr: SocketAddr, unique_id: Option<tribecast::MemberId>) -> StaticMember {
    let mut m = StaticMember::new(addr);
    m.unique_id = unique_id;
    m
}

#[test]
fn gzip_interceptor_turns_compression_on() {
    let n = NodeConfig::from_toml_str("").unwrap();
    assert_eq!(
        n.cluster.channel.compression_min_size, None,
        "off by default"
    );
    let n = NodeConfig::from_toml_str(
        "[[cluster.channel.interceptor]]\nclass_name = \"GzipInterceptor\"\ncompression_min_size = 1024\n",
    )
    .unwrap();
    assert_eq!(n.cluster.channel.compression_min_size, Some(1024));
    let n = NodeConfig::from_toml_str(
        "[[cluster.channel.interceptor]]\nclass_name = \"org.apache.catalina.tribes.group.interceptors.GzipInterceptor\"\n",
    )
    .unwrap();
    assert_eq!(
        n.cluster.channel.compression_min_size,
        Some(0),
        "Tomcat's default"
    );
    let e = err(
        "[[cluster.channel.interceptor]]\nclass_name = \"GzipInterceptor\"\ncompression_min_size = -1\n",
    );
    assert_eq!(e.kind, Kind::OutOfRange, "{e}");
    assert!(e.key.ends_with("compression_min_size"), "{e}");
    let (c, n) = convert(
        r#"<Server><Service><Engine jvmRoute="n1"><Cluster className="org.apache.catalina.ha.tcp.SimpleTcpCluster"><Channel className="org.apache.catalina.tribes.group.GroupChannel"><Interceptor className="org.apache.catalina.tribes.group.interceptors.GzipInterceptor" compressionMinSize="2048"/></Channel></Cluster></Engine></Service></Server>"#,
    );
    assert_eq!(
        n.cluster.channel.compression_min_size,
        Some(2048),
        "{}",
        c.toml
    );
}
