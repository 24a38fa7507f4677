//! Which network two machines talk over, and the addresses they use on it
//! (`modules/network.ncl` has the same rules for the stdlib's own use).

use std::collections::BTreeMap;

use crate::model::{Listen, Network, Protocol};

/// The network machine addresses `a` and `b` (by network name) talk over:
/// shared, highest `prefer`, private before public, then by name; `None`
/// if they share none.
pub(super) fn via<'a>(
    networks: &BTreeMap<String, Network>,
    a: &'a BTreeMap<String, String>,
    b: &BTreeMap<String, String>,
) -> Option<&'a str> {
    let rank = |n: &str| networks.get(n).map_or((0.0, true), |x| (x.prefer, x.public));
    a.keys()
        .filter(|n| b.contains_key(*n))
        .map(String::as_str)
        .fold(None, |best, n| match best {
            None => Some(n),
            Some(b) => {
                let ((px, ux), (py, uy)) = (rank(n), rank(b));
                let better = if px != py {
                    px > py
                } else if ux != uy {
                    !ux
                } else {
                    n < b
                };
                Some(if better { n } else { b })
            }
        })
}

pub(super) fn is_wildcard(bind: &str) -> bool {
    bind == "0.0.0.0" || bind == "::"
}

pub(super) fn is_loopback(bind: &str) -> bool {
    bind == "::1" || bind.starts_with("127.")
}

/// The bind of port `port`/`protocol` among `listens` (a wildcard if none
/// listens there).
pub(super) fn bind_of(listens: &[Listen], port: u16, protocol: Protocol) -> &str {
    listens
        .iter()
        .find(|l| l.port == port && l.protocol == protocol)
        .map_or("0.0.0.0", |l| l.bind.as_str())
}

/// The address machine `a` connects from to a port of machine `b` bound
/// to `bind`: over the shared network for a wildcard bind, over the
/// network of the bound address otherwise; `None` if `a` is not on it.
pub(super) fn source_for<'a>(
    networks: &BTreeMap<String, Network>,
    a: &'a BTreeMap<String, String>,
    b: &BTreeMap<String, String>,
    bind: &str,
) -> Option<&'a str> {
    // A loopback bind reaches nobody outside: the checks report that
    // (SC0212); resolved like a wildcard so that is the only finding.
    if is_wildcard(bind) || is_loopback(bind) {
        let net = via(networks, a, b)?;
        return a.get(net).map(String::as_str);
    }
    b.iter()
        .find(|(n, addr)| *addr == bind && a.contains_key(*n))
        .and_then(|(n, _)| a.get(n))
        .map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(n, a)| (n.to_string(), a.to_string())).collect()
    }

    #[test]
    fn machines_talk_over_the_preferred_then_private_then_first_network() {
        let net = |public, prefer| Network {
            cidr: "10.0.0.0/8".into(),
            public,
            prefer,
        };
        let networks: BTreeMap<String, Network> = [
            ("a-public".to_string(), net(true, 0.0)),
            ("b-lan".to_string(), net(false, 0.0)),
            ("c-lan".to_string(), net(false, 0.0)),
            ("d-vpn".to_string(), net(true, 5.0)),
        ]
        .into_iter()
        .collect();
        let a = addrs(&[
            ("a-public", "203.0.113.1"),
            ("b-lan", "10.0.0.1"),
            ("c-lan", "10.1.0.1"),
        ]);
        let b = addrs(&[
            ("a-public", "203.0.113.2"),
            ("b-lan", "10.0.0.2"),
            ("c-lan", "10.1.0.2"),
        ]);
        // Private before public; among equals, by name.
        assert_eq!(via(&networks, &a, &b), Some("b-lan"));
        let mut a2 = a.clone();
        a2.insert("d-vpn".into(), "100.64.0.1".into());
        let mut b2 = b.clone();
        b2.insert("d-vpn".into(), "100.64.0.2".into());
        // A higher `prefer` wins over privacy.
        assert_eq!(via(&networks, &a2, &b2), Some("d-vpn"));
        assert_eq!(
            via(
                &networks,
                &addrs(&[("b-lan", "10.0.0.1")]),
                &addrs(&[("c-lan", "10.1.0.2")])
            ),
            None
        );
        // A specific bind is reached on its own network; loopback like a wildcard.
        assert_eq!(source_for(&networks, &a, &b, "10.1.0.2"), Some("10.1.0.1"));
        assert_eq!(source_for(&networks, &a, &b, "127.0.0.1"), Some("10.0.0.1"));
        assert_eq!(source_for(&networks, &a, &b, "192.0.2.9"), None);
    }
}
