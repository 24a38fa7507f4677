//! A machine's nftables ruleset, its fallback and the unit that loads them,
//! from its `firewall` options and the machine's facts: every public port,
//! the ports other machines' proxies and clients reach (`incoming`, derived
//! here from every machine's routes and roles), the host ports its
//! containers reach (`container_access`, from the stdlib); and the
//! `openings` the checks read. Sources name machines, networks, addresses
//! or CIDRs; a machine is admitted by its address on the network it
//! connects over (`network`).

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::network;
use crate::model::{FileSpec, Firewall, Format, Listen, Machine, Opening, Stack};

/// The ports of each machine that other machines reach, as
/// `{ source, protocol, port }`, by machine: the port of every proxy route
/// from another machine (`routes`), and of every connection another
/// machine's service declares (an endpoint or database client naming
/// `target_machine` and `target_port`), opened to the address that machine
/// connects from. A reference that names no port is left to the checks.
/// One pass over every machine's facts (per target, it was quadratic).
pub(super) fn incoming(stack: &Stack) -> BTreeMap<&str, Vec<Value>> {
    let mut out: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
    for (from, f) in &stack.machines {
        let routes = f
            .routes
            .iter()
            .map(|r| (r.machine.as_str(), r.service.as_str(), r.port.as_str()));
        let connections = f
            .roles
            .iter()
            .filter_map(|r| r.connection())
            .filter_map(|c| Some((c.machine?, c.target, c.port)));
        for (to, service, port) in routes.chain(connections) {
            let Some((to, m)) = stack
                .machines
                .get_key_value(to)
                .filter(|(to, m)| *to != from && m.firewall.is_some())
            else {
                continue;
            };
            let Some(p) = super::port_of(m, service, port, true) else {
                continue;
            };
            let Some(source) = network::source_for(&stack.networks, &f.addresses, &m.addresses, p.bind) else {
                continue;
            };
            out.entry(to.as_str())
                .or_default()
                .push(json!({ "source": source, "protocol": p.protocol.as_str(), "port": p.port }));
        }
    }
    out
}

/// Every source machine `mname`'s firewall names, as written, and whether
/// it names addresses the stack knows (the checks report those that do
/// not, and SSH left with no source): SSH's own or the stack's admin
/// sources, then each `allow`'s. With each, where its record and its
/// source were written (pointers below the machine).
pub(super) fn openings(stack: &Stack, mname: &str, m: &Machine) -> Vec<(Opening, String, String)> {
    let Some(fw) = m.firewall.as_ref().filter(|fw| fw.options.enable) else {
        return Vec::new();
    };
    let o = &fw.options;
    let mut out = Vec::new();
    if o.ssh.enable {
        let (sources, at) = match &o.ssh.from {
            Some(from) => (from, "/firewall/options/ssh/from"),
            None => (&fw.admin_sources, "/firewall/admin_sources"),
        };
        for (k, source) in sources.iter().enumerate() {
            let opening = Opening {
                source: source.clone(),
                port: o.ssh.port,
                protocol: "tcp".into(),
                ssh: true,
                resolved: resolve(stack, fw, mname, source, "0.0.0.0").is_some(),
            };
            out.push((opening, "/firewall/options/ssh".into(), format!("{at}/{k}")));
        }
    }
    for (j, a) in o.allow.iter().enumerate() {
        let bind = network::bind_of(&m.listens, a.port, a.protocol);
        for (k, source) in a.from.iter().enumerate() {
            let opening = Opening {
                source: source.clone(),
                port: a.port,
                protocol: a.protocol.as_str().into(),
                ssh: false,
                resolved: resolve(stack, fw, mname, source, bind).is_some(),
            };
            let at = format!("/firewall/options/allow/{j}");
            out.push((opening, at.clone(), format!("{at}/from/{k}")));
        }
    }
    out
}

/// The ruleset files of machine `mname` (none when its firewall is off).
pub(super) fn files(
    stack: &Stack,
    mname: &str,
    deploy_root: &str,
    listens: &[Listen],
    fw: &Firewall,
) -> Vec<(String, FileSpec)> {
    let o = &fw.options;
    if !o.enable {
        return Vec::new();
    }
    let public: Vec<&Listen> = listens.iter().filter(|l| l.public).collect();
    let ports_of = |protocol: &str, extra: &[u16]| {
        let mut ports: Vec<u16> = public
            .iter()
            .filter(|l| l.protocol.as_str() == protocol && l.to.is_none())
            .map(|l| l.port)
            .chain(extra.iter().copied())
            .collect();
        ports.sort_unstable();
        ports.dedup();
        ports
    };
    let published_of = |l: &Listen| {
        let mut p = json!({ "protocol": l.protocol.as_str(), "port": l.port });
        if let Some(to) = l.to {
            p["to"] = json!(to);
        }
        p
    };
    let ssh = if o.ssh.enable {
        let sources = o.ssh.from.as_ref().unwrap_or(&fw.admin_sources);
        let mut from: Vec<String> = sources
            .iter()
            .filter_map(|s| resolve(stack, fw, mname, s, "0.0.0.0"))
            .flatten()
            .collect();
        from.sort();
        from.dedup();
        json!({ "port": o.ssh.port, "from": from })
    } else {
        Value::Null
    };
    let mut allow_from = fw.incoming.clone();
    for a in &o.allow {
        let bind = network::bind_of(listens, a.port, a.protocol);
        for s in a
            .from
            .iter()
            .filter_map(|src| resolve(stack, fw, mname, src, bind))
            .flatten()
        {
            allow_from.push(json!({ "source": s, "protocol": a.protocol.as_str(), "port": a.port }));
        }
    }
    let mut rules = json!({
        "table": "stackc",
        "tcp_ports": ports_of("tcp", &o.extra_tcp_ports),
        "udp_ports": ports_of("udp", &o.extra_udp_ports),
        "allow_ping": o.allow_ping,
        "from_containers": fw.container_access,
        "allow_from": allow_from,
        "ssh": ssh,
        "published": listens.iter().filter(|l| l.published && !l.public).map(published_of).collect::<Vec<_>>(),
    });
    let ranges: Vec<Value> = public
        .iter()
        .filter_map(|l| Some(json!({ "protocol": l.protocol.as_str(), "port": l.port, "to": l.to? })))
        .collect();
    if !ranges.is_empty() {
        rules["ranges"] = Value::Array(ranges);
    }
    // Loaded only if rules.nft fails to load: closed but for SSH. Every
    // port docker publishes, public or not, is dropped in the forward
    // chain: DNAT would bypass the input chain.
    let fallback = json!({
        "table": "stackc",
        "tcp_ports": [],
        "udp_ports": [],
        "allow_ping": true,
        "ssh": ssh,
        "published": listens.iter().filter(|l| l.published).map(published_of).collect::<Vec<_>>(),
    });
    // A ruleset that fails to load must not leave the machine open: the
    // fallback drops everything but SSH, and the unit fails so the
    // operator sees it.
    let unit = json!({
        "Unit": {
            "Description": "stackc firewall (nftables table inet stackc)",
            "DefaultDependencies": false,
            "Before": "network-pre.target",
            "Wants": "network-pre.target",
        },
        "Service": {
            "Type": "oneshot",
            "RemainAfterExit": true,
            "ExecStart": format!(
                "/bin/sh -c \"/usr/sbin/nft -f {deploy_root}/firewall/rules.nft || {{ /usr/sbin/nft -f {deploy_root}/firewall/fallback.nft; exit 1; }}\""
            ),
            "ExecStop": "/usr/sbin/nft delete table inet stackc",
        },
        "Install": { "WantedBy": "sysinit.target" },
    });
    vec![
        ("firewall/rules.nft".into(), FileSpec::new(Format::Nftables, rules)),
        (
            "firewall/fallback.nft".into(),
            FileSpec::new(Format::Nftables, fallback),
        ),
        (
            "systemd/stackc-firewall.service".into(),
            FileSpec::new(Format::Systemd, unit),
        ),
    ]
}

/// `source` as nft address expressions, from machine `mname`'s point of
/// view, for a port bound to `bind`; `None` when it names nothing the stack
/// knows (the checks report it, pointing at the literal).
fn resolve(stack: &Stack, fw: &Firewall, mname: &str, source: &str, bind: &str) -> Option<Vec<String>> {
    if source == "any" {
        return Some(vec!["any".into()]);
    }
    if let Some(other) = stack.machines.get(source) {
        let here = &stack.machines.get(mname)?.addresses;
        return network::source_for(&stack.networks, &other.addresses, here, bind).map(|a| vec![a.to_owned()]);
    }
    if let Some(net) = stack.networks.get(source) {
        // The implicit network of a stack without `networks` is everywhere.
        return Some(vec![if fw.networks_declared {
            net.cidr.clone()
        } else {
            "any".into()
        }]);
    }
    let address_chars = |s: &str| {
        let (addr, len) = s.split_once('/').unwrap_or((s, "0"));
        !addr.is_empty()
            && addr.bytes().all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
            && !len.is_empty()
            && len.bytes().all(|b| b.is_ascii_digit())
    };
    (address_chars(source) && source.contains(['.', ':'])).then(|| vec![source.to_owned()])
}
