//! `plan`: what a stack asks of the world outside the bundle, as Markdown:
//! the DNS records, what each machine's firewall opens and to whom, the
//! connections between machines, and what each machine receives. Computed
//! from the lowered stack (the same facts the checks and the firewall use),
//! so the deployment guide in docs/ is generated, not written by hand.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::Compiled;
use crate::check::split_site;
use crate::model::{Listen, Machine, Stack};

/// The network machine `from` reaches a port of machine `to` over, much as
/// the firewall chooses it (`lower/network.rs` `source_for`): the network of the port's
/// address when it is bound to one, else the shared network with the highest
/// `prefer`, private before public, then by name — with both addresses.
fn over(stack: &Stack, from: &Machine, to: &Machine, port: Option<&Listen>) -> String {
    let bind = port.filter(|l| l.is_specific()).map(|l| l.bind.as_str());
    to.addresses
        .iter()
        .filter(|(n, a)| from.addresses.contains_key(*n) && bind.is_none_or(|b| b == a.as_str()))
        .min_by_key(|(n, _)| {
            let net = stack.networks.get(*n);
            (net.map_or(0, |x| -(x.prefer as i64)), net.is_some_and(|x| x.public), *n)
        })
        .map_or("none shared".into(), |(n, a)| {
            format!("`{n}`: {} → {a}", from.addresses[n])
        })
}

pub fn markdown(c: &Compiled) -> String {
    let stack = &c.stack;
    // Every address of every machine, with the network it is on.
    let by_address: BTreeMap<&str, (&str, &str)> = stack
        .machines
        .iter()
        .flat_map(|(n, m)| {
            m.addresses
                .iter()
                .map(move |(net, a)| (a.as_str(), (n.as_str(), net.as_str())))
        })
        .collect();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "### Networks

| network | prefix | public | machines |
| --- | --- | --- | --- |"
    );
    for (name, net) in &stack.networks {
        let on: Vec<String> = stack
            .machines
            .iter()
            .filter_map(|(m, mm)| mm.addresses.get(name).map(|a| format!("{m} `{a}`")))
            .collect();
        let prefix = if net.cidr == "0.0.0.0/0" {
            "any"
        } else {
            net.cidr.as_str()
        };
        let _ = writeln!(
            out,
            "| `{name}` | {prefix} | {} | {} |",
            if net.public { "yes" } else { "no" },
            on.join(", ")
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "### DNS\n\n| name | type | points at |\n| --- | --- | --- |");
    let mut names: BTreeMap<&str, &str> = BTreeMap::new();
    for (mname, m) in &stack.machines {
        for site in &m.sites {
            names.insert(split_site(site).0, mname);
        }
    }
    for (name, mname) in &names {
        let addr = &stack.machines[*mname].address;
        let kind = if addr.contains(':') { "AAAA" } else { "A" };
        let _ = writeln!(out, "| `{name}` | {kind} | `{addr}` ({mname}) |");
    }
    let _ = writeln!(
        out,
        "\n### Connections between machines\n\n| from | to | port | over | for |\n| --- | --- | --- | --- | --- |"
    );
    // A row once: a site whose route and default upstream name the same
    // port is one connection.
    let mut seen = std::collections::BTreeSet::new();
    let mut row = |out: &mut String, from: &str, m: &Machine, to: &str, service: &str, port: &str, why: String| {
        let target = stack.machines.get(to);
        let bound = target.and_then(|t| crate::check::port_of(t, service, port).ok());
        let port = bound.map_or_else(|| "?".into(), |l| format!("{}/{}", l.protocol.as_str(), l.port));
        let over = target.map_or("none shared".into(), |t| over(stack, m, t, bound));
        let line = format!("| {from} | {to} ({service}) | {port} | {over} | {why} |");
        if seen.insert(line.clone()) {
            let _ = writeln!(out, "{line}");
        }
    };
    for (mname, m) in &stack.machines {
        for r in m.routes.iter().filter(|r| r.machine != *mname) {
            row(
                &mut out,
                mname,
                m,
                &r.machine,
                &r.service,
                &r.port,
                format!("proxy site `{}`", r.site),
            );
        }
        // Connections a service declares to another machine's port (a
        // database, a URL it calls): the firewall opens them like routes.
        for c in m.roles.iter().filter_map(|r| r.connection()) {
            if let Some(to) = c.machine.filter(|to| to != mname) {
                row(
                    &mut out,
                    mname,
                    m,
                    to,
                    c.target,
                    c.port,
                    format!("`{}` of `{}`", c.name, c.service),
                );
            }
        }
    }
    // Openings a machine's firewall gives another machine by name.
    for (mname, m) in &stack.machines {
        for o in m.openings.iter().filter(|o| !o.ssh && o.resolved) {
            let Some(from) = stack.machines.get(&o.source) else {
                continue;
            };
            let bound = m
                .listens
                .iter()
                .find(|l| l.port == o.port && l.protocol.as_str() == o.protocol);
            let service = bound.map_or("?", |l| l.service.as_str());
            let over = over(stack, from, m, bound);
            let _ = writeln!(
                out,
                "| {} | {mname} ({service}) | {}/{} | {over} | firewall opening |",
                o.source, o.protocol, o.port
            );
        }
    }
    for (mname, m) in &stack.machines {
        let _ = writeln!(out, "\n### Machine `{mname}` ({})\n", m.address);
        if let Some(fw) = m.files.get("firewall/rules.nft") {
            let ports = |key: &str| -> Vec<String> {
                fw.content[key]
                    .as_array()
                    .map(|a| a.iter().map(|p| p.to_string()).collect())
                    .unwrap_or_default()
            };
            let (tcp, udp) = (ports("tcp_ports"), ports("udp_ports"));
            let mut open = Vec::new();
            if !tcp.is_empty() {
                open.push(format!("tcp {}", tcp.join(", ")));
            }
            if !udp.is_empty() {
                open.push(format!("udp {}", udp.join(", ")));
            }
            match fw.content.get("ssh").filter(|v| !v.is_null()) {
                Some(ssh) => {
                    let from: Vec<&str> = ssh["from"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|v| v.as_str())
                        .collect();
                    let _ = writeln!(out, "- SSH (tcp/{}) open to: {}", ssh["port"], from.join(", "));
                }
                None => {
                    let _ = writeln!(out, "- SSH: closed (deliberately, `firewall.ssh.enable = false`)");
                }
            }
            let _ = writeln!(
                out,
                "- firewall, open to everyone: {}",
                if open.is_empty() {
                    "nothing".into()
                } else {
                    open.join("; ")
                }
            );
            let mut from: BTreeMap<String, std::collections::BTreeSet<(String, u64)>> = BTreeMap::new();
            for a in fw.content["allow_from"].as_array().into_iter().flatten() {
                let src = a["source"].as_str().unwrap_or("?");
                let who = match (src, by_address.get(src)) {
                    ("any", _) => "everyone (by opening)".to_owned(),
                    (_, Some((n, net))) => format!("{n} ({src} on `{net}`)"),
                    _ => src.to_owned(),
                };
                from.entry(who).or_default().insert((
                    a["protocol"].as_str().unwrap_or("?").to_owned(),
                    a["port"].as_u64().unwrap_or(0),
                ));
            }
            for (who, ports) in from {
                let ports: Vec<String> = ports.iter().map(|(p, n)| format!("{p}/{n}")).collect();
                let _ = writeln!(out, "- firewall, open to {who} only: {}", ports.join(", "));
            }
        } else {
            let _ = writeln!(out, "- no firewall emitted");
        }
        let mut services: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for l in &m.listens {
            services.entry(&l.service).or_default().push(format!(
                "{} {}/{} on {}",
                l.name,
                l.protocol.as_str(),
                l.ports(),
                l.bind
            ));
        }
        for (svc, ls) in services {
            let _ = writeln!(out, "- `{svc}` listens: {}", ls.join(", "));
        }
        let prefix = format!("{mname}/");
        let files: Vec<(&String, &crate::render::RenderedFile)> =
            c.files.iter().filter(|(p, _)| p.starts_with(&prefix)).collect();
        let secret = files.iter().filter(|(_, f)| f.secret).count();
        let _ = writeln!(
            out,
            "- receives {} files ({secret} of them secret, mode 0600), installed at `{}`:",
            files.len(),
            m.deploy_root
        );
        for (p, f) in files {
            let _ = writeln!(
                out,
                "  - `{}`{}",
                &p[prefix.len()..],
                if f.secret { " (secret)" } else { "" }
            );
        }
    }
    out
}
