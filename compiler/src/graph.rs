//! `graph`: the stack's topology as a Graphviz DOT document — machines
//! (one cluster each, with their addresses per network), the networks they
//! are on, the services and the ports they listen on, the connections
//! between them (proxy routes, the URLs and databases services call, the
//! firewall openings one machine gives another) and what the internet
//! reaches (public ports, proxy sites, SSH). Computed from the lowered
//! stack, like `plan`; the text is deterministic (sorted maps, no clock),
//! so a committed picture can be compared byte for byte.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use crate::check::split_site;
use crate::model::{Listen, Machine, Role, Stack};

const PUBLIC: &str = "#c0392b";
const PRIVATE: &str = "#2c6fbb";
const MUTED: &str = "#7f8c8d";

/// A DOT string literal.
fn q(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn host_id(m: &str) -> String {
    q(&format!("host:{m}"))
}

fn svc_id(m: &str, s: &str) -> String {
    q(&format!("svc:{m}/{s}"))
}

fn net_id(n: &str) -> String {
    q(&format!("net:{n}"))
}

/// The service that answers the machine's proxy sites: the one with a
/// public listener on 443 (else 80). `None`: the sites are served by
/// something outside the machine's listeners (a cluster's ingress).
fn site_server(m: &Machine) -> Option<&str> {
    [443u16, 80].iter().find_map(|p| {
        m.listens
            .iter()
            .find(|l| l.port == *p && l.public)
            .map(|l| l.service.as_str())
    })
}

/// Where the internet enters a machine's sites.
fn site_node(mname: &str, m: &Machine) -> String {
    match site_server(m) {
        Some(s) => svc_id(mname, s),
        None => q(&format!("sites:{mname}")),
    }
}

/// The network a connection from `from` to `to` uses (see `plan::over`).
fn network_between(stack: &Stack, from: &Machine, to: &Machine, port: Option<&Listen>) -> Option<String> {
    let bind = port.filter(|l| l.is_specific()).map(|l| l.bind.as_str());
    to.addresses
        .iter()
        .filter(|(n, a)| from.addresses.contains_key(*n) && bind.is_none_or(|b| b == a.as_str()))
        .min_by_key(|(n, _)| {
            let net = stack.networks.get(*n);
            (net.map_or(0, |x| -(x.prefer as i64)), net.is_some_and(|x| x.public), *n)
        })
        .map(|(n, _)| n.clone())
}

/// Where SSH is open from, per the machine's firewall (`None`: closed, or
/// no firewall).
fn ssh_from(m: &Machine) -> Option<Vec<&str>> {
    let ssh = m
        .files
        .get("firewall/rules.nft")?
        .content
        .get("ssh")
        .filter(|v| !v.is_null())?;
    Some(
        ssh["from"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str())
            .collect(),
    )
}

fn ssh_text(m: &Machine) -> String {
    let port = m
        .files
        .get("firewall/rules.nft")
        .and_then(|f| f.content.get("ssh"))
        .and_then(|s| s.get("port"))
        .map_or("22".into(), |p| p.to_string());
    match ssh_from(m) {
        Some(from) if from.iter().any(|f| matches!(*f, "any" | "0.0.0.0/0" | "::/0")) => {
            format!("ssh tcp/{port} from anywhere")
        }
        Some(from) => format!("ssh tcp/{port} from {}", from.join(", ")),
        None if m.files.contains_key("firewall/rules.nft") => "ssh closed".into(),
        None => "no firewall".into(),
    }
}

fn listen_text(l: &Listen) -> String {
    let bind = if l.is_loopback() {
        " (loopback)".to_owned()
    } else if l.is_wildcard() {
        String::new()
    } else {
        format!(" on {}", l.bind)
    };
    format!("{} {}/{}{}", l.name, l.protocol.as_str(), l.port, bind)
}

/// An edge between two services, with the labels of everything it carries.
#[derive(Default)]
struct Edges(BTreeMap<(String, String, &'static str), BTreeSet<String>>);

impl Edges {
    fn add(&mut self, from: String, to: String, kind: &'static str, label: String) {
        self.0.entry((from, to, kind)).or_default().insert(label);
    }
}

pub fn dot(stack: &Stack) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "digraph {} {{", q(&stack.name));
    let _ = writeln!(
        out,
        "  graph [rankdir=LR, compound=true, newrank=true, nodesep=0.3, ranksep=0.9, fontname=\"Helvetica\", fontsize=12, labelloc=t, label={}];",
        q(&format!(
            "stack `{}`: machines, networks, services and ports; red: reached from the internet",
            stack.name
        ))
    );
    let _ = writeln!(
        out,
        "  node [fontname=\"Helvetica\", fontsize=10, shape=box, style=\"rounded\"];"
    );
    let _ = writeln!(out, "  edge [fontname=\"Helvetica\", fontsize=9];");
    let _ = writeln!(
        out,
        "  internet [label=\"internet\", shape=doublecircle, style=filled, fillcolor=\"#fdecea\", color={}];",
        q(PUBLIC)
    );

    // Networks, as nodes the machines' hosts are attached to.
    for (name, net) in &stack.networks {
        let cidr = if net.cidr == "0.0.0.0/0" {
            "any address"
        } else {
            net.cidr.as_str()
        };
        let (kind, color) = if net.public {
            ("public", PUBLIC)
        } else {
            ("private", PRIVATE)
        };
        let _ = writeln!(
            out,
            "  {} [label={}, shape=hexagon, color={}, fontcolor={}];",
            net_id(name),
            q(&format!("network {name}\n{cidr}\n{kind}")),
            q(color),
            q(color)
        );
    }

    let mut edges = Edges::default();
    let mut public: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (mname, m) in &stack.machines {
        // Every service the machine runs that the lowered stack names.
        let mut services: BTreeMap<&str, Vec<&Listen>> = BTreeMap::new();
        for l in &m.listens {
            services.entry(&l.service).or_default().push(l);
        }
        for r in &m.roles {
            services.entry(r.service()).or_default();
        }
        for mount in &m.mounts {
            services.entry(&mount.service).or_default();
        }
        let _ = writeln!(out, "  subgraph {} {{", q(&format!("cluster_{mname}")));
        let kind = if m.namespace.is_some() {
            "Kubernetes namespace"
        } else {
            "machine"
        };
        let _ = writeln!(
            out,
            "    label={}; style=\"rounded,filled\"; fillcolor=\"#f7f9fb\"; color=\"#95a5a6\"; fontsize=12;",
            q(&format!("{kind} {mname}"))
        );
        let mut host = vec![mname.clone()];
        for (net, addr) in &m.addresses {
            host.push(format!("{addr} ({net})"));
        }
        if m.addresses.is_empty() && !m.address.is_empty() {
            host.push(m.address.clone());
        }
        host.push(ssh_text(m));
        let _ = writeln!(
            out,
            "    {} [label={}, shape=box3d, style=\"\", color=\"#34495e\"];",
            host_id(mname),
            q(&host.join("\n"))
        );
        for (svc, ls) in &services {
            let mut lines = vec![(*svc).to_owned()];
            let mut sorted = ls.clone();
            sorted.sort_by_key(|l| (l.port, l.protocol, l.name.clone()));
            lines.extend(sorted.iter().map(|l| listen_text(l)));
            let exposed = ls.iter().any(|l| l.public);
            let color = if exposed { PUBLIC } else { "#2c3e50" };
            let _ = writeln!(
                out,
                "    {} [label={}, color={}{}];",
                svc_id(mname, svc),
                q(&lines.join("\n")),
                q(color),
                if exposed { ", penwidth=2" } else { "" }
            );
            for l in ls.iter().filter(|l| l.public) {
                public
                    .entry(svc_id(mname, svc))
                    .or_default()
                    .insert(format!("{}/{}", l.protocol.as_str(), l.port));
            }
        }
        if !m.sites.is_empty() && site_server(m).is_none() {
            let _ = writeln!(
                out,
                "    {} [label=\"ingress\", shape=cds, color={}];",
                q(&format!("sites:{mname}")),
                q(PUBLIC)
            );
        }
        let _ = writeln!(out, "  }}");

        // The host on its networks.
        for (net, addr) in &m.addresses {
            let color = if stack.networks.get(net).is_some_and(|n| n.public) {
                PUBLIC
            } else {
                PRIVATE
            };
            let _ = addr;
            let _ = writeln!(
                out,
                "  {} -> {} [dir=none, style=dotted, color={}];",
                net_id(net),
                host_id(mname),
                q(color)
            );
        }
    }

    for (mname, m) in &stack.machines {
        // The internet: sites, public ports, SSH.
        if !m.sites.is_empty() {
            let hosts: BTreeSet<&str> = m.sites.iter().map(|s| split_site(s).0).collect();
            let hosts: Vec<&str> = hosts.into_iter().collect();
            edges.add(
                "internet".into(),
                site_node(mname, m),
                "public",
                format!("https {}", hosts.join(", ")),
            );
        }
        if ssh_from(m).is_some_and(|from| from.iter().any(|f| matches!(*f, "any" | "0.0.0.0/0" | "::/0"))) {
            edges.add("internet".into(), host_id(mname), "ssh", String::new());
        }

        // Proxy routes: from the service that serves the sites to the
        // upstream service, with its port and the network used.
        for r in &m.routes {
            let target = stack.machines.get(&r.machine);
            let bound = target.and_then(|t| crate::check::port_of(t, &r.service, &r.port).ok());
            let port = bound.map_or(r.port.clone(), |l| format!("{}/{}", l.protocol.as_str(), l.port));
            let mut label = format!("{} → {port}", split_site(&r.site).0);
            if r.machine != *mname
                && let Some(t) = target
            {
                match network_between(stack, m, t, bound) {
                    Some(n) => label.push_str(&format!(" over {n}")),
                    None => label.push_str(" (no shared network)"),
                }
            }
            edges.add(site_node(mname, m), svc_id(&r.machine, &r.service), "route", label);
        }

        // What services call: URLs and databases.
        for role in &m.roles {
            let (target, target_machine, port, what) = match role {
                Role::Endpoint {
                    target,
                    target_machine,
                    target_port,
                    public: false,
                    what,
                    ..
                } => (Some(target), target_machine, target_port, what),
                Role::DbClient {
                    target,
                    target_machine,
                    target_port,
                    what,
                    ..
                } => (target.as_ref(), target_machine, target_port, what),
                _ => continue,
            };
            let Some(target) = target else { continue };
            let tm = target_machine.clone().unwrap_or_else(|| mname.clone());
            let Some(tmach) = stack.machines.get(&tm) else { continue };
            if !tmach.listens.iter().any(|l| l.service == *target)
                && !tmach.roles.iter().any(|r| r.service() == target)
                && !tmach.mounts.iter().any(|x| x.service == *target)
            {
                continue;
            }
            let from = svc_id(mname, role.service());
            let to = svc_id(&tm, target);
            if from == to {
                continue;
            }
            let bound = port.as_ref().and_then(|p| crate::check::port_of(tmach, target, p).ok());
            let mut label = what.clone();
            if let Some(l) = bound {
                label.push_str(&format!(" ({}/{})", l.protocol.as_str(), l.port));
            }
            if tm != *mname {
                match network_between(stack, m, tmach, bound) {
                    Some(n) => label.push_str(&format!(" over {n}")),
                    None => label.push_str(" (no shared network)"),
                }
            }
            edges.add(from, to, "call", label);
        }

        // Firewall openings another machine or network is given by name.
        for o in m.openings.iter().filter(|o| !o.ssh && o.resolved) {
            let bound = m
                .listens
                .iter()
                .find(|l| l.port == o.port && l.protocol.as_str() == o.protocol);
            let to = bound.map_or(host_id(mname), |l| svc_id(mname, &l.service));
            let from = if stack.machines.contains_key(&o.source) {
                host_id(&o.source)
            } else if stack.networks.contains_key(&o.source) {
                net_id(&o.source)
            } else if o.source == "any" {
                "internet".into()
            } else {
                continue;
            };
            edges.add(from, to, "opening", format!("firewall opens {}/{}", o.protocol, o.port));
        }
    }
    for (svc, ports) in &public {
        let ports: Vec<&str> = ports.iter().map(String::as_str).collect();
        edges.add("internet".into(), svc.clone(), "public", ports.join(", "));
    }

    for ((from, to, kind), labels) in &edges.0 {
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        let style = match *kind {
            "public" => format!("color={PUBLIC:?}, fontcolor={PUBLIC:?}, penwidth=1.6"),
            "ssh" => format!("color={MUTED:?}, fontcolor={MUTED:?}, style=dashed"),
            "route" => "color=\"#27ae60\", fontcolor=\"#1e8449\"".into(),
            "opening" => format!("color={PRIVATE:?}, fontcolor={PRIVATE:?}, style=dashed"),
            _ => "color=\"#34495e\"".into(),
        };
        let _ = writeln!(out, "  {from} -> {to} [label={}, {style}];", q(&labels.join("\n")));
    }
    let _ = writeln!(out, "}}");
    out
}
