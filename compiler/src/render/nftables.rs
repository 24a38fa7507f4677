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
	}
}
"#;

pub fn render(content: &Value) -> Result<String, Vec<ContentError>> {
    let fw = Firewall::deserialize(content).map_err(|e| vec![ContentError::new("", format!("not a firewall: {e}"))])?;
    if fw.table.is_empty() || !fw.table.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(vec![ContentError::new(
            "/table",
            "the table name must be letters, digits and `_`",
        )]);
    }
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
