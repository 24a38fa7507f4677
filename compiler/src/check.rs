//! `check`: topology checks on the lowered stack — names, ports, binds,
//! proxy routes. Every check runs; all findings come back together, each
//! naming every party, pointing into the `.ncl` sources where it can.

use std::collections::BTreeMap;

use crate::diag::{Code, Diagnostic, Span};
use crate::eval::{Locs, pointer_escape};
use crate::load::STDLIB_DISPLAY;
use crate::model::{Listen, Stack};

/// Source positions by JSON pointer, preferring places in the user's files.
pub struct Positions<'a>(pub &'a Locs);

impl Positions<'_> {
    /// Where the value at `ptr` was written. Values computed by the stdlib
    /// point into it; the field name in the user's file is more useful then.
    pub fn at(&self, ptr: &str) -> Option<Span> {
        let loc = self.0.get(ptr)?;
        let in_user = |s: &Span| !s.file.name.starts_with(STDLIB_DISPLAY);
        match (&loc.value, &loc.key) {
            (Some(v), _) if in_user(v) => Some(v.clone()),
            (_, Some(k)) if in_user(k) => Some(k.clone()),
            _ => loc.best(),
        }
    }
}

fn machine_ptr(machine: &str) -> String {
    format!("/machines/{}", pointer_escape(machine))
}

/// Names become file names and unit names: keep them to a safe alphabet.
pub fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-' || *c == b'_')
}

pub fn check(stack: &Stack, locs: &Locs) -> Vec<Diagnostic> {
    let pos = Positions(locs);
    let mut out = Vec::new();
    names(stack, &pos, &mut out);
    ports(stack, &pos, &mut out);
    routes(stack, &pos, &mut out);
    connections(stack, &pos, &mut out);
    sites(stack, &pos, &mut out);
    networks(stack, &pos, &mut out);
    owners(stack, &pos, &mut out);
    out
}

/// A secret file is written 0600 and owned by the user of the container
/// that mounts it (`render::owner_of`): a second container running as
/// another user and mounting it too could not read it.
fn owners(stack: &Stack, pos: &Positions, out: &mut Vec<Diagnostic>) {
    for (mname, m) in &stack.machines {
        for path in m.files.iter().filter(|(_, f)| f.secret).map(|(p, _)| p) {
            let covering: Vec<&crate::model::Mount> = m.mounts.iter().filter(|mt| mt.covers(path)).collect();
            let Some(first) = covering.first() else { continue };
            if let Some(other) = covering.iter().find(|mt| mt.user != first.user) {
                out.push(
                    Diagnostic::error(
                        Code::SecretOwner,
                        format!(
                            "secret file `{mname}/{path}` (mode 0600) is mounted into `{}`, which runs as {}, and into `{}`, which runs as {}: one of them cannot read it",
                            first.service, first.user, other.service, other.user
                        ),
                    )
                    .with_label(pos.at(&crate::eval::file_ptr(mname, path)), "this file")
                    .with_help("give each container its own copy of the secret in its own folder (`stackc.secret.file_in`), or run both as one user"),
                );
            }
        }
    }
}

/// `10.0.0.0/24` as an address and a prefix length.
pub fn parse_cidr(cidr: &str) -> Option<(std::net::IpAddr, u8)> {
    let (addr, len) = cidr.split_once('/')?;
    let addr: std::net::IpAddr = addr.parse().ok()?;
    let len: u8 = len.parse().ok()?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    (len <= max).then_some((addr, len))
}

/// An address as 128 bits, IPv4 in the top 32: one prefix mask serves both
/// families.
fn ip_bits(a: std::net::IpAddr) -> u128 {
    match a {
        std::net::IpAddr::V4(v) => u128::from(u32::from(v)) << 96,
        std::net::IpAddr::V6(v) => u128::from(v),
    }
}

/// The mask of a prefix length (1..=128 for IPv6, 1..=32 for IPv4).
fn prefix_mask(len: u8) -> u128 {
    u128::MAX << (128 - u32::from(len))
}

/// A network literal nft takes as it is: a valid prefix length and no bits
/// set past it (`10.0.0.0/24`, not `10.0.0.5/24`).
pub fn valid_cidr(cidr: &str) -> bool {
    parse_cidr(cidr).is_some_and(|(net, len)| len == 0 || ip_bits(net) & !prefix_mask(len) == 0)
}

/// An address or a network literal: what a firewall source may be.
pub fn valid_source_literal(s: &str) -> bool {
    s.parse::<std::net::IpAddr>().is_ok() || valid_cidr(s)
}

/// Whether `addr` lies in `net/len` (a `/0` of either family holds all).
pub fn in_cidr(addr: std::net::IpAddr, (net, len): (std::net::IpAddr, u8)) -> bool {
    len == 0 || (addr.is_ipv4() == net.is_ipv4() && ip_bits(addr) & prefix_mask(len) == ip_bits(net) & prefix_mask(len))
}

/// Networks and addresses: every machine has one, each on a declared
/// network and inside its prefix; declared networks do not overlap;
/// machines a proxy route joins share a network; every firewall opening
/// names something the stack knows.
fn networks(stack: &Stack, pos: &Positions, out: &mut Vec<Diagnostic>) {
    let nets: BTreeMap<&str, Option<(std::net::IpAddr, u8)>> = stack
        .networks
        .iter()
        .map(|(n, net)| (n.as_str(), parse_cidr(&net.cidr)))
        .collect();
    let known_nets = || nets.keys().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ");
    for (n, net) in &stack.networks {
        if !valid_cidr(&net.cidr) {
            out.push(
                Diagnostic::error(Code::NetworkAddress, format!("network `{n}` has prefix `{}`, which is not a network", net.cidr))
                    .with_label(pos.at(&format!("/networks/{}/cidr", pointer_escape(n))), "this prefix")
                    .with_help("write the network address and its prefix length, with no host bits set: `10.0.0.0/24`, `2001:db8::/64`"),
            );
        }
    }
    let declared = nets.iter().filter_map(|(n, c)| c.map(|c| (*n, c))).collect::<Vec<_>>();
    for (i, (a, ca)) in declared.iter().enumerate() {
        for (b, cb) in &declared[i + 1..] {
            if in_cidr(ca.0, *cb) || in_cidr(cb.0, *ca) {
                out.push(
                    Diagnostic::error(
                        Code::NetworkAddress,
                        format!(
                            "networks `{a}` ({}) and `{b}` ({}) overlap",
                            stack.networks[*a].cidr, stack.networks[*b].cidr
                        ),
                    )
                    .with_primary(pos.at(&format!("/networks/{}/cidr", pointer_escape(b))), "this network")
                    .with_secondary(
                        pos.at(&format!("/networks/{}/cidr", pointer_escape(a))),
                        "overlaps this one",
                    )
                    .with_help("give each network its own prefix: an address must say which network it is on"),
                );
            }
        }
    }
    for (mname, m) in &stack.machines {
        let mp = machine_ptr(mname);
        if m.addresses.is_empty() {
            let help = if nets.len() > 1 {
                format!(
                    "the stack declares several networks ({}): give the machine `addresses.<network> = \"…\"` for each it is on",
                    known_nets()
                )
            } else {
                "give the machine an `address`".to_owned()
            };
            out.push(
                Diagnostic::error(
                    Code::NetworkAddress,
                    format!("machine `{mname}` has no address on any network"),
                )
                .with_label(
                    pos.at(&format!("{mp}/address"))
                        .or_else(|| pos.0.get(&mp).and_then(|l| l.key.clone())),
                    "this machine",
                )
                .with_help(help),
            );
            continue;
        }
        for (net, addr) in &m.addresses {
            let ap = format!("{mp}/addresses/{}", pointer_escape(net));
            if addr.parse::<std::net::IpAddr>().is_err() {
                out.push(
                    Diagnostic::error(
                        Code::NetworkAddress,
                        format!("machine `{mname}`'s address `{addr}` is not an IP address"),
                    )
                    .with_label(pos.at(&ap), "this address")
                    .with_help("write an IPv4 (`192.0.2.10`) or IPv6 (`2001:db8::10`) address"),
                );
                continue;
            }
            let Some(cidr) = nets.get(net.as_str()) else {
                out.push(
                    Diagnostic::error(
                        Code::NetworkAddress,
                        format!(
                            "machine `{mname}` has an address on network `{net}`, which the stack does not declare"
                        ),
                    )
                    .with_label(
                        pos.0.get(&ap).and_then(|l| l.key.clone()).or_else(|| pos.at(&ap)),
                        "no network of this name",
                    )
                    .with_help(format!("declared networks: {}", known_nets())),
                );
                continue;
            };
            if let (Some(cidr), Ok(ip)) = (cidr, addr.parse::<std::net::IpAddr>())
                && !in_cidr(ip, *cidr)
            {
                out.push(
                    Diagnostic::error(
                        Code::NetworkAddress,
                        format!(
                            "machine `{mname}`'s address {addr} is not inside network `{net}` ({})",
                            stack.networks[net].cidr
                        ),
                    )
                    .with_primary(pos.at(&ap), "this address")
                    .with_secondary(pos.at(&format!("/networks/{}/cidr", pointer_escape(net))), "the network's prefix")
                    .with_help("fix the address or the network's prefix: the firewall and routing assume the address is on that network"),
                );
            }
        }
        if !m.address.is_empty() && !m.addresses.values().any(|a| *a == m.address) {
            out.push(
                Diagnostic::error(
                    Code::NetworkAddress,
                    format!("machine `{mname}`'s `address` {} is none of its `addresses`", m.address),
                )
                .with_label(pos.at(&format!("{mp}/address")), "the address DNS records use")
                .with_help(
                    "`address` names the one of `addresses` DNS records use: copy it from there, or leave it out",
                ),
            );
        }
        // A port bound to one address binds one of the machine's own.
        if m.namespace.is_none() {
            for (i, l) in m.listens.iter().enumerate() {
                if l.is_specific() && !m.addresses.values().any(|a| *a == l.bind) {
                    out.push(
                        Diagnostic::error(
                            Code::NetworkAddress,
                            format!(
                                "`{}.{}` on machine `{mname}` binds {}, which is none of `{mname}`'s addresses",
                                l.service, l.name, l.bind
                            ),
                        )
                        .with_label(pos.at(&format!("{mp}/listens/{i}/bind")), "this address")
                        .with_help(format!(
                            "bind one of {} (the one on the network its clients use), `0.0.0.0` for all, or `127.0.0.1` for the machine alone",
                            m.addresses.values().map(|a| format!("`{a}`")).collect::<Vec<_>>().join(", ")
                        )),
                    );
                }
            }
        }
        // Openings of ports that listen on loopback admit nobody.
        for (i, o) in m.openings.iter().enumerate().filter(|(_, o)| !o.ssh) {
            if let Some(li) = m
                .listens
                .iter()
                .position(|l| l.port == o.port && l.protocol.as_str() == o.protocol && l.is_loopback())
            {
                let l = &m.listens[li];
                out.push(
                    Diagnostic::error(
                        Code::OpeningToLoopback,
                        format!(
                            "{} port {} on machine `{mname}` is opened to `{}`, but `{}.{}` listens on {} only",
                            o.protocol, o.port, o.source, l.service, l.name, l.bind
                        ),
                    )
                    .with_primary(pos.at(&format!("{mp}/openings/{i}/source")), "opened to this source")
                    .with_secondary(pos.at(&format!("{mp}/listens/{li}/bind")), "bound here")
                    .with_help(format!(
                        "bind `{}.{}` to the machine's address on the network `{}` connects over, or to `0.0.0.0`",
                        l.service, l.name, o.source
                    )),
                );
            }
        }
        // Proxy routes to other machines need a network in common — the
        // one of the bound address, for a port bound to one address.
        for (i, r) in m.routes.iter().enumerate() {
            let Some(target) = stack.machines.get(&r.machine) else {
                continue;
            };
            if r.machine == *mname || target.namespace.is_some() || target.addresses.is_empty() {
                continue;
            }
            let bound = target
                .listens
                .iter()
                .find(|l| l.service == r.service && l.name == r.port)
                .filter(|l| l.is_specific());
            if let Some(l) = bound
                && let Some((net, _)) = target.addresses.iter().find(|(_, a)| **a == l.bind)
                && !m.addresses.contains_key(net)
            {
                out.push(
                    Diagnostic::error(
                        Code::NoSharedNetwork,
                        format!(
                            "site `{}` on machine `{mname}` proxies to `{}.{}` on `{}`, which binds {} on network `{net}` only; `{mname}` is not on `{net}`",
                            r.site, r.service, r.port, r.machine, l.bind
                        ),
                    )
                    .with_label(pos.at(&format!("{mp}/routes/{i}/machine")), "cannot reach that address")
                    .with_help(format!(
                        "bind `{}.{}` to `0.0.0.0` or to `{}`'s address on a network `{mname}` is on",
                        r.service, r.port, r.machine
                    )),
                );
                continue;
            }
            if !m.addresses.keys().any(|n| target.addresses.contains_key(n)) {
                let on = |x: &crate::model::Machine| {
                    x.addresses
                        .keys()
                        .map(|k| format!("`{k}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                out.push(
                    Diagnostic::error(
                        Code::NoSharedNetwork,
                        format!(
                            "site `{}` on machine `{mname}` proxies to machine `{}`, but they share no network (`{mname}` is on {}, `{}` on {})",
                            r.site, r.machine, on(m), r.machine, on(target)
                        ),
                    )
                    .with_label(pos.at(&format!("{mp}/routes/{i}/machine")), "this machine cannot be reached")
                    .with_help(format!(
                        "put both machines on one network (an address for each in `addresses`), or serve the site from `{}`",
                        r.machine
                    )),
                );
            }
        }
        // A literal source must be an address or a network nft can load:
        // anything else would make the whole ruleset fail at boot.
        for (i, o) in m.openings.iter().enumerate().filter(|(_, o)| o.resolved) {
            let named =
                o.source == "any" || stack.machines.contains_key(&o.source) || stack.networks.contains_key(&o.source);
            if !named && !valid_source_literal(&o.source) {
                out.push(
                    Diagnostic::error(
                        Code::UnknownSource,
                        format!("`{}` (an opening of machine `{mname}`) is not an address or a network", o.source),
                    )
                    .with_label(pos.at(&format!("{mp}/openings/{i}/source")), "this source")
                    .with_help("write an address (`192.0.2.7`, `2001:db8::7`) or a network with no host bits set (`192.0.2.0/24`); nft would refuse anything else and load no rules at all"),
                );
            }
        }
        for (i, o) in m.openings.iter().enumerate().filter(|(_, o)| !o.resolved) {
            let what = if o.ssh {
                "SSH".to_owned()
            } else {
                format!("{} port {}", o.protocol, o.port)
            };
            let why = match stack.machines.get(&o.source) {
                Some(_) => format!("machine `{}` shares no network with `{mname}`", o.source),
                None => format!("`{}` is no machine, network, address or CIDR of the stack", o.source),
            };
            let machines = stack
                .machines
                .keys()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", ");
            out.push(
                Diagnostic::error(
                    Code::UnknownSource,
                    format!("{what} on machine `{mname}` is opened to `{}`: {why}", o.source),
                )
                .with_label(pos.at(&format!("{mp}/openings/{i}/source")), "this source")
                .with_help(format!(
                    "sources: `any`, machines ({machines}), networks ({}), addresses or CIDRs",
                    known_nets()
                )),
            );
        }
    }
}

fn names(stack: &Stack, pos: &Positions, out: &mut Vec<Diagnostic>) {
    const HELP: &str =
        "use lower-case letters, digits, `-` and `_`, starting with a letter or digit (at most 63 characters)";
    for (mname, m) in &stack.machines {
        let mp = machine_ptr(mname);
        if !valid_name(mname) {
            out.push(
                Diagnostic::error(
                    Code::InvalidName,
                    format!("machine name `{mname}` cannot be used in file names"),
                )
                .with_label(pos.0.get(&mp).and_then(|l| l.key.clone()), "this machine")
                .with_help(HELP)
                .with_path(format!("machines.{mname}")),
            );
        }
        // Every service has a unit; ports and routes name services too.
        for (i, unit) in m.units.iter().enumerate() {
            let name = unit.rsplit_once('.').map_or(unit.as_str(), |(n, _)| n);
            if !valid_name(name) {
                out.push(
                    Diagnostic::error(
                        Code::InvalidName,
                        format!("service name `{name}` on machine `{mname}` cannot be used in file names"),
                    )
                    .with_label(pos.at(&format!("{mp}/units/{i}")), "this service")
                    .with_help(HELP),
                );
            }
        }
        let mut seen: Vec<&String> = m.units.iter().collect();
        for (i, l) in m.listens.iter().enumerate() {
            if !seen
                .iter()
                .any(|u| u.strip_suffix(".service") == Some(l.service.as_str()))
                && !seen.contains(&&l.service)
                && !valid_name(&l.service)
            {
                seen.push(&l.service);
                out.push(
                    Diagnostic::error(
                        Code::InvalidName,
                        format!(
                            "service name `{}` on machine `{mname}` cannot be used in file names",
                            l.service
                        ),
                    )
                    .with_label(pos.at(&format!("{mp}/listens/{i}/service")), "this service")
                    .with_help(HELP),
                );
            }
        }
    }
}

/// Two listeners clash when protocol and a port are equal (ranges that
/// overlap) and their bind addresses overlap (equal, or either is a
/// wildcard).
fn overlaps(a: &Listen, b: &Listen) -> bool {
    let wildcard = |s: &str| s == "0.0.0.0" || s == "::" || s == "*";
    a.protocol == b.protocol
        && a.port <= b.last()
        && b.port <= a.last()
        && (a.bind == b.bind || wildcard(&a.bind) || wildcard(&b.bind))
}

fn ports(stack: &Stack, pos: &Positions, out: &mut Vec<Diagnostic>) {
    for (mname, m) in &stack.machines {
        let mp = machine_ptr(mname);
        for (j, l) in m.listens.iter().enumerate() {
            let Some(to) = l.to else { continue };
            let why = if to < l.port {
                format!("ends at {to}, before it starts")
            } else if m.namespace.is_some() {
                "is on a Kubernetes machine, whose Services and container ports have no ranges".to_owned()
            } else {
                continue;
            };
            out.push(
                Diagnostic::error(
                    Code::PortRange,
                    format!(
                        "port range {}-{to}/{} of `{}.{}` on machine `{mname}` {why}",
                        l.port,
                        l.protocol.as_str(),
                        l.service,
                        l.name
                    ),
                )
                .with_label(pos.at(&format!("{mp}/listens/{j}/to")), "this range")
                .with_help(if to < l.port {
                    "give `to` the last port of the range, at least `port`"
                } else {
                    "run the service on a machine with compose or systemd, or give it single ports (a media server's muxed UDP port, say)"
                })
                .with_path(format!("machines.{mname}")),
            );
        }
        if m.namespace.is_some() {
            // Every pod of a namespace has its own address: equal ports
            // of two services do not clash.
            continue;
        }
        for (j, b) in m.listens.iter().enumerate() {
            // Report each clash once, at the later listener, naming the first.
            if let Some((i, a)) = m.listens[..j].iter().enumerate().find(|(_, a)| overlaps(a, b)) {
                out.push(
                    Diagnostic::error(
                        Code::PortConflict,
                        format!(
                            "port {}/{} on machine `{mname}` is used by both `{}.{}` and `{}.{}`",
                            b.port,
                            b.protocol.as_str(),
                            a.service,
                            a.name,
                            b.service,
                            b.name
                        ),
                    )
                    .with_label(
                        pos.at(&format!("{mp}/listens/{j}/port")),
                        format!("`{}.{}` listens here", b.service, b.name),
                    )
                    .with_secondary(
                        pos.at(&format!("{mp}/listens/{i}/port")),
                        format!("`{}.{}` already listens on {}", a.service, a.name, a.ports()),
                    )
                    .with_help("give one of the services another port, or bind them to different addresses")
                    .with_path(format!("machines.{mname}")),
                );
            }
            if b.public && b.is_loopback() {
                out.push(
                    Diagnostic::error(
                        Code::PublicOnLoopback,
                        format!(
                            "`{}.{}` on machine `{mname}` is public but bound to {}",
                            b.service, b.name, b.bind
                        ),
                    )
                    .with_label(
                        pos.at(&format!("{mp}/listens/{j}/bind")),
                        "loopback: unreachable from outside",
                    )
                    .with_secondary(pos.at(&format!("{mp}/listens/{j}/public")), "marked public here")
                    .with_help("bind a non-loopback address (such as `0.0.0.0`), or make the port not public"),
                );
            }
        }
    }
}

fn routes(stack: &Stack, pos: &Positions, out: &mut Vec<Diagnostic>) {
    for (mname, m) in &stack.machines {
        let mp = machine_ptr(mname);
        for (i, r) in m.routes.iter().enumerate() {
            let rp = format!("{mp}/routes/{i}");
            let Some(target) = stack.machines.get(&r.machine) else {
                let known: Vec<_> = stack.machines.keys().map(|k| format!("`{k}`")).collect();
                out.push(
                    Diagnostic::error(
                        Code::UnknownMachine,
                        format!(
                            "site `{}` on machine `{mname}` points to machine `{}`, which is not declared",
                            r.site, r.machine
                        ),
                    )
                    .with_label(pos.at(&format!("{rp}/machine")), "no machine of this name")
                    .with_help(format!("declared machines: {}", known.join(", ")))
                    .with_path(format!("machines.{mname}.proxy.sites.\"{}\".upstream.machine", r.site)),
                );
                continue;
            };
            let listen = match port_of(target, &r.service, &r.port) {
                Ok(listen) => listen,
                Err(of_service) => {
                    let (what, label_at, help) = if of_service.is_empty() {
                        let services: BTreeMap<&str, ()> =
                            target.listens.iter().map(|l| (l.service.as_str(), ())).collect();
                        let names: Vec<_> = services.keys().map(|k| format!("`{k}`")).collect();
                        (
                            format!("service `{}` does not exist on machine `{}`", r.service, r.machine),
                            format!("{rp}/service"),
                            format!(
                                "services with ports on `{}`: {}",
                                r.machine,
                                if names.is_empty() {
                                    "none".into()
                                } else {
                                    names.join(", ")
                                }
                            ),
                        )
                    } else {
                        let names: Vec<_> = of_service.iter().map(|l| format!("`{}`", l.name)).collect();
                        (
                            format!(
                                "service `{}` on machine `{}` has no port named `{}`",
                                r.service, r.machine, r.port
                            ),
                            format!("{rp}/port"),
                            format!("ports of `{}`: {}", r.service, names.join(", ")),
                        )
                    };
                    out.push(
                        Diagnostic::error(
                            Code::UnknownUpstream,
                            format!("site `{}` points nowhere: {what}", r.site),
                        )
                        .with_label(pos.at(&label_at), "not found")
                        .with_help(help)
                        .with_path(format!("machines.{mname}.proxy.sites.\"{}\".upstream", r.site)),
                    );
                    continue;
                }
            };
            if r.machine != *mname && target.namespace.is_some() && !listen.public {
                out.push(
                    Diagnostic::error(
                        Code::UnreachableUpstream,
                        format!(
                            "site `{}` on machine `{mname}` proxies to `{}.{}` on Kubernetes machine `{}`, a ClusterIP Service only the cluster reaches",
                            r.site, r.service, r.port, r.machine
                        ),
                    )
                    .with_label(pos.at(&format!("{rp}/machine")), format!("another machine than `{mname}`"))
                    .with_help(format!(
                        "serve the site from `{}` itself (its proxy sites become Ingresses), or set `kubernetes.expose = 'load_balancer` on `{}`",
                        r.machine, r.service
                    )),
                );
            } else if r.machine != *mname && listen.is_loopback() {
                out.push(
                    Diagnostic::error(
                        Code::UnreachableUpstream,
                        format!(
                            "site `{}` on machine `{mname}` proxies to `{}.{}` on machine `{}`, which only listens on {}",
                            r.site, r.service, r.port, r.machine, listen.bind
                        ),
                    )
                    .with_label(pos.at(&format!("{rp}/machine")), format!("another machine than `{mname}`"))
                    .with_help(format!(
                        "bind `{}.{}` to an address `{mname}` can reach, or run the proxy on `{}`",
                        r.service, r.port, r.machine
                    )),
                );
            }
        }
    }
}

/// Listener `service`.`port` of machine `m`, or else every port `service`
/// has there (none: no service of that name listens there).
pub(crate) fn port_of<'a>(
    m: &'a crate::model::Machine,
    service: &str,
    port: &str,
) -> Result<&'a Listen, Vec<&'a Listen>> {
    let of_service: Vec<&Listen> = m.listens.iter().filter(|l| l.service == service).collect();
    of_service.iter().find(|l| l.name == port).copied().ok_or(of_service)
}

/// Connections a service declares (`target`, `target_port`, and
/// `target_machine` when on another machine, on an endpoint or a database
/// client): the target's firewall opens that port to the caller, so a name
/// that matches nothing would silently open nothing.
fn connections(stack: &Stack, pos: &Positions, out: &mut Vec<Diagnostic>) {
    for (mname, m) in &stack.machines {
        for (i, role) in m.roles.iter().enumerate() {
            let Some(crate::model::Connection {
                service,
                name,
                target,
                machine,
                port,
            }) = role.connection()
            else {
                continue;
            };
            // Without `target_machine`, the caller's own.
            let machine = machine.unwrap_or(mname);
            let rp = format!("{}/roles/{i}", machine_ptr(mname));
            let Some(there) = stack.machines.get(machine) else {
                let known: Vec<_> = stack.machines.keys().map(|k| format!("`{k}`")).collect();
                out.push(
                    Diagnostic::error(
                        Code::UnknownMachine,
                        format!("`{name}` of `{service}` on machine `{mname}` connects to machine `{machine}`, which is not declared"),
                    )
                    .with_label(pos.at(&format!("{rp}/target_machine")), "no machine of this name")
                    .with_help(format!("declared machines: {}", known.join(", "))),
                );
                continue;
            };
            let Err(ports) = port_of(there, target, port) else {
                continue;
            };
            let (what, label, help) = if ports.is_empty() {
                (
                    format!("machine `{machine}` has no service `{target}` with ports"),
                    format!("{rp}/target"),
                    "name the service as `target` and its machine as `target_machine`".to_owned(),
                )
            } else {
                let names: Vec<_> = ports.iter().map(|l| format!("`{}`", l.name)).collect();
                (
                    format!("`{target}` on machine `{machine}` has no port named `{port}`"),
                    format!("{rp}/target_port"),
                    format!("ports of `{target}`: {}", names.join(", ")),
                )
            };
            out.push(
                Diagnostic::error(
                    Code::UnknownConnection,
                    format!(
                        "`{name}` of `{service}` on machine `{mname}` connects nowhere: {what}{}",
                        if machine == mname {
                            ""
                        } else {
                            ", so no firewall opens it"
                        }
                    ),
                )
                .with_label(pos.at(&label), "not found")
                .with_help(help),
            );
        }
    }
}

/// A DNS name Caddy can get a certificate for: lower-case labels of
/// letters, digits and inner hyphens, at least two labels.
pub fn valid_host(host: &str) -> bool {
    let labels: Vec<&str> = host.split('.').collect();
    host.len() <= 253
        && labels.len() >= 2
        && labels.iter().all(|l| {
            let b = l.as_bytes();
            !b.is_empty()
                && b.len() <= 63
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
                && b[0] != b'-'
                && b[b.len() - 1] != b'-'
        })
}

/// `host` or `host:port` as a site address: the host and the port.
pub fn split_site(addr: &str) -> (&str, Option<&str>) {
    match addr.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (addr, None),
    }
}

fn sites(stack: &Stack, pos: &Positions, out: &mut Vec<Diagnostic>) {
    for (mname, m) in &stack.machines {
        for (i, addr) in m.sites.iter().enumerate() {
            let (host, port) = split_site(addr);
            let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|n| n > 0) && !p.starts_with('0'));
            if !valid_host(host) || !port_ok {
                out.push(
                    Diagnostic::error(
                        Code::InvalidHost,
                        format!("site `{addr}` on machine `{mname}` is not a valid host name (with an optional port)"),
                    )
                    .with_label(pos.at(&format!("{}/sites/{i}", machine_ptr(mname))), "this site")
                    .with_help("name sites by their fully qualified, lower-case DNS name, such as `chat.example.com`, or `host:port`"),
                );
            }
        }
    }
    let mut by_addr: BTreeMap<&str, Vec<(&str, usize)>> = BTreeMap::new();
    for (mname, m) in &stack.machines {
        for (i, addr) in m.sites.iter().enumerate() {
            by_addr.entry(addr).or_default().push((mname, i));
        }
    }
    for (addr, users) in by_addr {
        if let [(m1, i1), (m2, i2), ..] = users[..] {
            out.push(
                Diagnostic::error(
                    Code::DuplicateSite,
                    format!("host `{addr}` is served by the proxies of both `{m1}` and `{m2}`"),
                )
                .with_label(
                    pos.at(&format!("{}/sites/{i2}", machine_ptr(m2))),
                    format!("served on `{m2}`"),
                )
                .with_secondary(
                    pos.at(&format!("{}/sites/{i1}", machine_ptr(m1))),
                    format!("served on `{m1}`"),
                )
                .with_help("DNS can point a host name at one of them only: keep the site on one machine"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid_name("lair-chat"));
        assert!(valid_name("db_1"));
        assert!(!valid_name(""));
        assert!(!valid_name("../etc"));
        assert!(!valid_name("Chat"));
        assert!(!valid_name("-x"));
    }

    #[test]
    fn hosts() {
        assert!(valid_host("chat.example.com"));
        assert!(valid_host("xn--bcher-kva.example"));
        for bad in [
            "localhost",
            "Chat.example.com",
            "a..b",
            "-a.b",
            "a b.c",
            "*.example.com",
            "a.b/c",
        ] {
            assert!(!valid_host(bad), "{bad}");
        }
    }
}

#[cfg(test)]
mod network_tests {
    use super::*;

    #[test]
    fn cidr_membership() {
        let net = |s| parse_cidr(s).unwrap();
        let ip = |s: &str| s.parse().unwrap();
        assert!(in_cidr(ip("10.0.0.3"), net("10.0.0.0/24")));
        assert!(!in_cidr(ip("10.0.1.3"), net("10.0.0.0/24")));
        assert!(in_cidr(ip("203.0.113.10"), net("203.0.113.0/24")));
        assert!(in_cidr(ip("10.1.2.3"), net("10.0.0.0/8")));
        assert!(in_cidr(ip("2001:db8::5"), net("2001:db8::/64")));
        assert!(!in_cidr(ip("2001:db9::5"), net("2001:db8::/64")));
        assert!(!in_cidr(ip("10.0.0.3"), net("2001:db8::/64")));
        assert!(in_cidr(ip("2001:db8::5"), net("0.0.0.0/0")));
        assert!(parse_cidr("10.0.0.0/33").is_none());
    }
}
