//! nftables ruleset: one `inet` table with an input chain that drops what
//! is not explicitly opened. Loading it replaces the table atomically (the
//! create-delete-create idiom), and leaves other tables alone.

use serde::Deserialize;
use serde_json::Value;

use super::{ContentError, HEADER};

#[derive(Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
struct Firewall {
    table: String,
    tcp_ports: Vec<u16>,
    udp_ports: Vec<u16>,
    allow_ping: bool,
    /// Port ranges open to everyone, beside `tcp_ports` and `udp_ports`.
    #[serde(default)]
    ranges: Vec<Published>,
    #[serde(default)]
    allow_from: Vec<Allow>,
    /// Container ports docker publishes that are not public: guarded in the
    /// forward chain, where DNAT-ed connections to them pass.
    #[serde(default)]
    published: Vec<Published>,
    /// Ports of native services this machine's containers reach through
    /// the host: admitted from docker's bridges only.
    #[serde(default)]
    from_containers: Vec<Published>,
    /// Operator access; absent when SSH is closed deliberately.
    #[serde(default)]
    ssh: Option<Ssh>,
}

#[derive(Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
struct Ssh {
    port: u16,
    /// Addresses, CIDRs or `any`.
    from: Vec<String>,
}

#[derive(Deserialize, serde::Serialize, PartialEq, Eq, PartialOrd, Ord, Clone)]
#[serde(deny_unknown_fields)]
struct Published {
    protocol: String,
    port: u16,
    /// Last port of a range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    to: Option<u16>,
}

impl Published {
    /// `port` or `port-to`, as nft writes a port or a range.
    fn dport(&self) -> String {
        match self.to {
            Some(to) => format!("{}-{to}", self.port),
            None => self.port.to_string(),
        }
    }
}

/// The elements of one protocol's `dport { … }` set: single ports and
/// ranges, sorted, a port inside a range (or ranges that overlap) merged,
/// since nft refuses overlapping intervals in a set.
fn port_set(singles: &[u16], ranges: &[(u16, u16)]) -> Vec<String> {
    let mut all: Vec<(u16, u16)> = singles.iter().map(|&p| (p, p)).chain(ranges.iter().copied()).collect();
    all.sort();
    let mut merged: Vec<(u16, u16)> = Vec::new();
    for (a, b) in all {
        match merged.last_mut() {
            Some(last) if a <= last.1 => last.1 = last.1.max(b),
            _ => merged.push((a, b)),
        }
    }
    merged
        .into_iter()
        .map(|(a, b)| if a == b { a.to_string() } else { format!("{a}-{b}") })
        .collect()
}

/// A port opened to one source: an address, a CIDR or `any`.
#[derive(Deserialize, serde::Serialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(deny_unknown_fields)]
struct Allow {
    source: String,
    protocol: String,
    port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    to: Option<u16>,
}

const TEMPLATE: &str = r#"#!/usr/sbin/nft -f
{{ header }}
# Load with `nft -f`: replaces table inet {{ table }} in one transaction.

table inet {{ table }}
delete table inet {{ table }}

table inet {{ table }} {
	chain input {
		type filter hook input priority filter; policy drop;

		ct state established,related accept
		ct state invalid drop
		iifname "lo" accept

		# ICMP that IPv4 and IPv6 need to work (path MTU, neighbour discovery).
		icmp type { destination-unreachable, time-exceeded, parameter-problem } accept
		icmpv6 type { destination-unreachable, packet-too-big, time-exceeded, parameter-problem, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert } accept
{% if allow_ping %}
		icmp type echo-request accept
		icmpv6 type echo-request accept
{% endif %}
{% if ssh %}

		# Operator access (SSH): kept open so that loading this ruleset never
		# locks the operator out.
{% for r in ssh %}
		{{ r }} accept
{% endfor %}
{% endif %}
{% if tcp_ports %}

		tcp dport { {{ tcp_ports | join(", ") }} } accept
{% endif %}
{% if udp_ports %}
		udp dport { {{ udp_ports | join(", ") }} } accept
{% endif %}
{% if from_containers %}

		# Native services the machine's own containers reach through the host
		# (`host.docker.internal`), from docker's bridges only.
{% for p in from_containers %}
		iifname "docker0" {{ p.protocol }} dport {{ p.port }} accept
		iifname "br-*" {{ p.protocol }} dport {{ p.port }} accept
{% endfor %}
{% endif %}
{% if allow_from %}

		# Ports other machines use (proxy routes, connections, openings), open to them only.
{% for a in allow_from %}
		{{ a.match }}{{ a.protocol }} dport {{ a.port }} accept
{% endfor %}
{% endif %}
	}
{% if published %}

	# Docker publishes container ports by DNAT: connections to them are
	# forwarded, not delivered, and never reach the input chain. The same
	# openings apply here, matched on the port as published.
	chain forward {
		type filter hook forward priority filter - 1; policy accept;

		ct state established,related accept
{% for a in published_allow %}
		{{ a.match }}ct status dnat meta l4proto {{ a.protocol }} ct original proto-dst {{ a.port }} accept
{% endfor %}
{% for p in published %}
		ct status dnat meta l4proto {{ p.protocol }} ct original proto-dst {{ p.port }} drop
{% endfor %}
	}
{% endif %}
}
"#;

pub fn render(content: &Value) -> Result<String, Vec<ContentError>> {
    let fw = Firewall::deserialize(content).map_err(|_| {
        vec![ContentError::new(
            "",
            "not a firewall: expected `{ table, tcp_ports, udp_ports, allow_ping, allow_from }`",
        )]
    })?;
    if fw.table.is_empty() || !fw.table.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(vec![ContentError::new(
            "/table",
            "the table name must be letters, digits and `_`",
        )]);
    }
    let mut allow = fw.allow_from;
    allow.sort();
    allow.dedup();
    let mut errors = Vec::new();
    for (i, a) in allow.iter().enumerate() {
        let ok_source = valid_source(&a.source);
        if !ok_source || !["tcp", "udp"].contains(&a.protocol.as_str()) {
            errors.push(ContentError::new(
                format!("/allow_from/{i}"),
                format!("cannot open {} {} to `{}`", a.protocol, a.port, a.source),
            ));
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let mut published = fw.published;
    published.sort();
    published.dedup();
    if let Some(i) = fw
        .ranges
        .iter()
        .chain(&published)
        .position(|p| p.to.is_some_and(|to| to < p.port))
    {
        return Err(vec![ContentError::new(
            if i < fw.ranges.len() {
                format!("/ranges/{i}")
            } else {
                "/published".to_owned()
            },
            "a port range ends before it starts",
        )]);
    }
    if published
        .iter()
        .chain(&fw.ranges)
        .any(|p| !["tcp", "udp"].contains(&p.protocol.as_str()))
    {
        return Err(vec![ContentError::new(
            "/published",
            "published ports are `tcp` or `udp`",
        )]);
    }
    let allow_ctx = |a: &Allow| {
        let port = Published {
            protocol: a.protocol.clone(),
            port: a.port,
            to: a.to,
        }
        .dport();
        minijinja::context! { match => source_match(&a.source), protocol => a.protocol, port }
    };
    // Extra ports opened to everyone count as openings from `any` here: a
    // port docker publishes is forwarded, never delivered to `input`.
    let extra: Vec<Allow> = [("tcp", &fw.tcp_ports), ("udp", &fw.udp_ports)]
        .into_iter()
        .flat_map(|(protocol, ports)| {
            ports.iter().map(move |&port| Allow {
                source: "any".into(),
                protocol: protocol.into(),
                port,
                to: None,
            })
        })
        .chain(fw.ranges.iter().map(|r| Allow {
            source: "any".into(),
            protocol: r.protocol.clone(),
            port: r.port,
            to: r.to,
        }))
        .collect();
    let published_allow: Vec<_> = allow
        .iter()
        .chain(&extra)
        .filter(|a| {
            published
                .iter()
                .any(|p| p.protocol == a.protocol && p.port == a.port && p.to == a.to)
        })
        .map(allow_ctx)
        .collect();
    let set_of = |protocol: &str, singles: &[u16]| {
        let ranges: Vec<(u16, u16)> = fw
            .ranges
            .iter()
            .filter(|r| r.protocol == protocol)
            .map(|r| (r.port, r.to.unwrap_or(r.port)))
            .collect();
        port_set(singles, &ranges)
    };
    let tcp_ports = set_of("tcp", &fw.tcp_ports);
    let udp_ports = set_of("udp", &fw.udp_ports);
    let ssh: Vec<String> = match &fw.ssh {
        None => Vec::new(),
        Some(ssh) => {
            if let Some(bad) = ssh.from.iter().find(|s| !valid_source(s)) {
                return Err(vec![ContentError::new(
                    "/ssh/from",
                    format!("cannot admit SSH from `{bad}`"),
                )]);
            }
            if ssh.from.is_empty() {
                return Err(vec![ContentError::new(
                    "/ssh/from",
                    "SSH is enabled with no source: the ruleset would lock the operator out",
                )]);
            }
            if ssh.from.iter().any(|s| s == "any") {
                vec![format!("tcp dport {}", ssh.port)]
            } else {
                let (v6, v4): (Vec<&String>, Vec<&String>) = ssh.from.iter().partition(|s| s.contains(':'));
                [("ip", v4), ("ip6", v6)]
                    .into_iter()
                    .filter(|(_, set)| !set.is_empty())
                    .map(|(family, set)| {
                        let set: Vec<&str> = set.iter().map(|s| s.as_str()).collect();
                        format!("{family} saddr {{ {} }} tcp dport {}", set.join(", "), ssh.port)
                    })
                    .collect()
            }
        }
    };
    let mut from_containers = fw.from_containers;
    from_containers.sort();
    from_containers.dedup();
    if from_containers
        .iter()
        .any(|p| !["tcp", "udp"].contains(&p.protocol.as_str()))
    {
        return Err(vec![ContentError::new("/from_containers", "ports are `tcp` or `udp`")]);
    }
    let from_containers: Vec<_> = from_containers
        .iter()
        .map(|p| minijinja::context! { protocol => p.protocol, port => p.port })
        .collect();
    let published: Vec<_> = published
        .iter()
        .map(|p| minijinja::context! { protocol => p.protocol, port => p.dport() })
        .collect();
    let allow_from: Vec<_> = allow.iter().map(allow_ctx).collect();
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.add_template("rules.nft", TEMPLATE).expect("the template is valid");
    let ctx = minijinja::context! {
        header => HEADER,
        table => fw.table,
        tcp_ports,
        udp_ports,
        allow_ping => fw.allow_ping,
        ssh,
        from_containers,
        allow_from,
        published,
        published_allow,
    };
    let text = env
        .get_template("rules.nft")
        .and_then(|t| t.render(ctx))
        .map_err(|e| vec![ContentError::new("", format!("rendering the ruleset failed: {e}"))])?;
    Ok(if text.ends_with('\n') { text } else { text + "\n" })
}

/// An address, a CIDR or `any`: nothing nft would have to resolve.
fn valid_source(s: &str) -> bool {
    s == "any" || crate::check::valid_source_literal(s)
}

/// The `ip saddr X ` prefix of a rule (with its trailing space), or nothing
/// for `any`.
fn source_match(source: &str) -> String {
    match source {
        "any" => String::new(),
        s if s.contains(':') => format!("ip6 saddr {s} "),
        s => format!("ip saddr {s} "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn opens_exactly_the_ports_given() {
        let text = render(&json!({ "table": "stackc", "tcp_ports": [80, 443], "udp_ports": [], "allow_ping": false }))
            .unwrap();
        assert!(text.contains("tcp dport { 80, 443 } accept\n"));
        assert!(!text.contains("udp dport"));
        assert!(!text.contains("echo-request"));
        assert!(text.contains("policy drop;"));
        assert!(!text.contains("dport 22"), "no SSH unless asked for");
    }

    #[test]
    fn ssh_is_admitted_from_its_sources_per_family() {
        let fw = |from: serde_json::Value| {
            render(
                &json!({ "table": "t", "tcp_ports": [], "udp_ports": [], "allow_ping": true,
                            "ssh": { "port": 2222, "from": from } }),
            )
        };
        assert!(fw(json!(["any"])).unwrap().contains("\t\ttcp dport 2222 accept\n"));
        let text = fw(json!(["192.0.2.0/24", "2001:db8::/64", "198.51.100.7"])).unwrap();
        assert!(
            text.contains("ip saddr { 192.0.2.0/24, 198.51.100.7 } tcp dport 2222 accept"),
            "{text}"
        );
        assert!(
            text.contains("ip6 saddr { 2001:db8::/64 } tcp dport 2222 accept"),
            "{text}"
        );
        assert!(
            fw(json!([])).is_err(),
            "an empty source list would lock the operator out"
        );
        assert!(
            fw(json!(["bastion.example.com"])).is_err(),
            "names are never resolved by nft"
        );
    }

    #[test]
    fn ranges_are_opened_and_merged_with_the_ports_they_contain() {
        let text = render(
            &json!({ "table": "t", "tcp_ports": [3478], "udp_ports": [3478, 49170], "allow_ping": false,
            "ranges": [{ "protocol": "udp", "port": 49160, "to": 49200 }],
            "published": [{ "protocol": "udp", "port": 49160, "to": 49200 }] }),
        )
        .unwrap();
        assert!(text.contains("\t\ttcp dport { 3478 } accept\n"), "{text}");
        assert!(text.contains("\t\tudp dport { 3478, 49160-49200 } accept\n"), "{text}");
        assert!(
            text.contains("\t\tct status dnat meta l4proto udp ct original proto-dst 49160-49200 accept\n"),
            "a public range docker publishes is forwarded: {text}"
        );
        assert!(
            render(
                &json!({ "table": "t", "tcp_ports": [], "udp_ports": [], "allow_ping": false,
                "ranges": [{ "protocol": "udp", "port": 50000, "to": 49000 }] })
            )
            .is_err(),
            "a reversed range"
        );
        assert_eq!(port_set(&[1, 5, 9], &[(4, 6), (6, 8)]), ["1", "4-8", "9"]);
    }

    #[test]
    fn extra_ports_open_published_ports_in_the_forward_chain() {
        let text = render(
            &json!({ "table": "t", "tcp_ports": [5432], "udp_ports": [], "allow_ping": false,
            "allow_from": [{ "source": "10.0.0.0/24", "protocol": "tcp", "port": 6379 }],
            "published": [{ "protocol": "tcp", "port": 5432 }, { "protocol": "tcp", "port": 6379 }] }),
        )
        .unwrap();
        assert!(
            text.contains("\t\tct status dnat meta l4proto tcp ct original proto-dst 5432 accept"),
            "{text}"
        );
        assert!(
            text.contains("ip saddr 10.0.0.0/24 ct status dnat meta l4proto tcp ct original proto-dst 6379 accept"),
            "{text}"
        );
    }
}
