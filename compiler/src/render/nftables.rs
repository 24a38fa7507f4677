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
    #[serde(default)]
    allow_from: Vec<Allow>,
    /// Container ports docker publishes that are not public: guarded in the
    /// forward chain, where DNAT-ed connections to them pass.
    #[serde(default)]
    published: Vec<Published>,
}

#[derive(Deserialize, serde::Serialize, PartialEq, Eq, PartialOrd, Ord, Clone)]
#[serde(deny_unknown_fields)]
struct Published {
    protocol: String,
    port: u16,
}

/// A port opened to one source address (another machine's proxy).
#[derive(Deserialize, serde::Serialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(deny_unknown_fields)]
struct Allow {
    source: String,
    protocol: String,
    port: u16,
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
{% if tcp_ports %}

		tcp dport { {{ tcp_ports | join(", ") }} } accept
{% endif %}
{% if udp_ports %}
		udp dport { {{ udp_ports | join(", ") }} } accept
{% endif %}
{% if allow_from %}

		# Ports other machines' proxies forward to, open to them only.
{% for a in allow_from %}
		{{ a.family }} saddr {{ a.source }} {{ a.protocol }} dport {{ a.port }} accept
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
		{{ a.family }} saddr {{ a.source }} ct status dnat meta l4proto {{ a.protocol }} ct original proto-dst {{ a.port }} accept
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
        let ok_source = !a.source.is_empty()
            && a.source
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".:-".contains(&b));
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
    if published.iter().any(|p| !["tcp", "udp"].contains(&p.protocol.as_str())) {
        return Err(vec![ContentError::new(
            "/published",
            "published ports are `tcp` or `udp`",
        )]);
    }
    let allow_ctx = |a: &Allow| {
        let family = if a.source.contains(':') { "ip6" } else { "ip" };
        minijinja::context! { family, source => a.source, protocol => a.protocol, port => a.port }
    };
    let published_allow: Vec<_> = allow
        .iter()
        .filter(|a| published.iter().any(|p| p.protocol == a.protocol && p.port == a.port))
        .map(allow_ctx)
        .collect();
    let published: Vec<_> = published
        .iter()
        .map(|p| minijinja::context! { protocol => p.protocol, port => p.port })
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
        tcp_ports => fw.tcp_ports,
        udp_ports => fw.udp_ports,
        allow_ping => fw.allow_ping,
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
    }
}
