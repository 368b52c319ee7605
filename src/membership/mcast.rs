//! The multicast socket (Tribes' `McastServiceImpl`): socket2 sets the options std cannot
//! (address and port reuse before bind, so several nodes share a host).

use crate::config::McastConfig;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::time::Duration;

/// Opens a socket joined to the group, sending to it with the configured TTL and interface.
/// Without `bind`, the interface is the one of `receiver` (this member's advertised address):
/// heartbeats then leave from the address they announce, which receivers check.
pub fn open(
    cfg: &McastConfig,
    receiver: std::net::IpAddr,
    read_timeout: Duration,
) -> io::Result<UdpSocket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    // Bound to the group address, the socket sees only this group's datagrams on Linux.
    s.bind(&SockAddr::from(SocketAddrV4::new(cfg.address, cfg.port)))?;
    let iface = cfg.bind.or(match receiver {
        std::net::IpAddr::V4(a) if !a.is_unspecified() => Some(a),
        _ => None,
    });
    s.join_multicast_v4(&cfg.address, &iface.unwrap_or(Ipv4Addr::UNSPECIFIED))?;
    if let Some(iface) = iface {
        s.set_multicast_if_v4(&iface)?;
    }
    // Other nodes on this host must hear us.
    s.set_multicast_loop_v4(true)?;
    if let Some(ttl) = cfg.ttl {
        s.set_multicast_ttl_v4(ttl)?;
    }
    s.set_read_timeout(Some(read_timeout))?;
    Ok(s.into())
}

pub fn group(cfg: &McastConfig) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(cfg.address, cfg.port))
}
