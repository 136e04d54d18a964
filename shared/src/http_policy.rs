//! Which addresses the `http.request` tool may connect to.
//!
//! Three classes, checked on every address a request would connect to (each resolved address of every
//! connection, and IP literals in URLs), so a DNS answer that changes between the check and the connection
//! (rebinding) cannot slip through:
//! - **never**: link-local (`169.254.0.0/16`, `fe80::/10`, where cloud metadata services live), known metadata
//!   addresses (`fd00:ec2::254`, `100.100.100.200`), unspecified (`0.0.0.0/8`, `::`), multicast and broadcast.
//!   No configuration allows them.
//! - **only when allowed**: loopback (`127.0.0.0/8`, `::1`), private (`10/8`, `172.16/12`, `192.168/16`,
//!   `fc00::/7`), shared (`100.64.0.0/10`) and benchmarking (`198.18.0.0/15`) ranges. `WORKER_HTTP_ALLOW_CIDRS`
//!   (comma-separated CIDRs) opens those that fall inside one of its networks.
//! - everything else (public addresses) is allowed.
//!
//! IPv4-mapped (`::ffff:a.b.c.d`) and NAT64 (`64:ff9b::a.b.c.d`) IPv6 addresses are judged as the IPv4 address
//! they carry.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// An address the policy refuses, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyDenied {
    pub addr: IpAddr,
    pub reason: &'static str,
    /// The host name that resolved to it, when there was one.
    pub host: Option<String>,
}

impl fmt::Display for PolicyDenied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Some(h) => write!(f, "{h} resolves to {}, {}", self.addr, self.reason),
            None => write!(f, "{} is {}", self.addr, self.reason),
        }
    }
}

impl std::error::Error for PolicyDenied {}

#[derive(Debug, Clone, Default)]
pub struct HttpPolicy {
    allow: Vec<IpNet>,
}

const NEVER: &str =
    "a link-local, cloud metadata, unspecified, multicast or broadcast address, which the \
                     http.request tool never calls";
const UNLESS_ALLOWED: &str =
    "a loopback or private address, which the http.request tool calls only when \
                              WORKER_HTTP_ALLOW_CIDRS includes it";

impl HttpPolicy {
    pub fn new(allow: Vec<IpNet>) -> Self {
        Self { allow }
    }

    /// Parses `WORKER_HTTP_ALLOW_CIDRS`: comma-separated CIDRs (`127.0.0.0/8, 10.1.0.0/16`) or single addresses.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut allow = Vec::new();
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let net = item
                .parse::<IpNet>()
                .or_else(|_| item.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| format!("{item:?} is not a CIDR such as 10.0.0.0/8 or ::1/128"))?;
            allow.push(net);
        }
        Ok(Self { allow })
    }

    /// The networks `WORKER_HTTP_ALLOW_CIDRS` opened.
    pub fn allowed(&self) -> &[IpNet] {
        &self.allow
    }

    pub fn check(&self, addr: IpAddr) -> Result<(), PolicyDenied> {
        let judged = canonical(addr);
        let deny = |reason| {
            Err(PolicyDenied {
                addr,
                reason,
                host: None,
            })
        };
        if is_never(judged) {
            return deny(NEVER);
        }
        if is_internal(judged) && !self.allow.iter().any(|n| n.contains(&judged)) {
            return deny(UNLESS_ALLOWED);
        }
        Ok(())
    }
}

/// The IPv4 address inside an IPv4-mapped or NAT64 IPv6 address, else the address itself.
fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return IpAddr::V4(v4);
            }
            let s = v6.segments();
            if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
                let [a, b] = s[6].to_be_bytes();
                let [c, d] = s[7].to_be_bytes();
                return IpAddr::V4(Ipv4Addr::new(a, b, c, d));
            }
            addr
        }
        v4 => v4,
    }
}

fn is_never(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_link_local()
                || o[0] == 0
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4 == Ipv4Addr::new(100, 100, 100, 200)
        }
        IpAddr::V6(v6) => {
            (v6.segments()[0] & 0xffc0) == 0xfe80
                || v6.is_unspecified()
                || v6.is_multicast()
                || v6 == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)
        }
    }
}

fn is_internal(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                || (o[0] == 198 && (o[1] & 0xfe) == 18)
        }
        IpAddr::V6(v6) => v6.is_loopback() || (v6.segments()[0] & 0xfe00) == 0xfc00,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn metadata_and_link_local_addresses_are_never_allowed_even_when_listed() {
        let p = HttpPolicy::parse("0.0.0.0/0, ::/0").unwrap();
        for a in [
            "169.254.169.254",
            "169.254.0.1",
            "fe80::1",
            "fd00:ec2::254",
            "100.100.100.200",
            "0.0.0.0",
            "::",
            "224.0.0.1",
            "255.255.255.255",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
        ] {
            let d = p.check(ip(a)).unwrap_err();
            assert_eq!(d.reason, NEVER, "{a}");
        }
    }

    #[test]
    fn loopback_and_private_ranges_need_an_allowing_cidr() {
        let closed = HttpPolicy::default();
        for a in [
            "127.0.0.1",
            "::1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "fd12::1",
            "100.64.0.1",
            "::ffff:127.0.0.1",
        ] {
            assert_eq!(
                closed.check(ip(a)).unwrap_err().reason,
                UNLESS_ALLOWED,
                "{a}"
            );
        }
        let open = HttpPolicy::parse("127.0.0.0/8,::1/128, 10.1.0.0/16").unwrap();
        for a in [
            "127.0.0.1",
            "127.9.9.9",
            "::1",
            "10.1.2.3",
            "::ffff:127.0.0.1",
        ] {
            assert!(open.check(ip(a)).is_ok(), "{a}");
        }
        assert!(
            open.check(ip("10.2.0.1")).is_err(),
            "outside the allowed /16"
        );
        assert!(open.check(ip("192.168.1.1")).is_err());
    }

    #[test]
    fn public_addresses_are_allowed() {
        let p = HttpPolicy::default();
        for a in [
            "93.184.216.34",
            "2606:2800:220:1:248:1893:25c8:1946",
            "8.8.8.8",
        ] {
            assert!(p.check(ip(a)).is_ok(), "{a}");
        }
    }

    #[test]
    fn the_allow_list_is_parsed_strictly() {
        assert!(HttpPolicy::parse("").unwrap().allowed().is_empty());
        assert_eq!(HttpPolicy::parse("127.0.0.1").unwrap().allowed().len(), 1);
        assert!(HttpPolicy::parse("127.0.0.0/33").is_err());
        assert!(HttpPolicy::parse("localhost").is_err());
    }
}
