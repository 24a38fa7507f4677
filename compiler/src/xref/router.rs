//! The router: which handler of a proxy site takes a request path.
//!
//! Proxy modules (Caddy, nginx, Kubernetes Ingress) lower each site to route
//! facts (`model::SiteRoutes`): its handlers in the order the proxy tries
//! them, each a matcher and what it does, and the rule that picks one
//! (`Select`). The router follows the facts and knows no proxy: how to
//! match is in the data.

use crate::model::{Handler, MatchKind, Matcher, Select, SiteRoutes};

/// The handler a site runs for a request path, by the site's rule; `None`
/// when no handler takes the path.
pub(crate) fn select<'r>(site: &'r SiteRoutes, path: &str) -> Option<&'r Handler> {
    let mut hits = site
        .handlers
        .iter()
        .filter_map(|h| specificity(&h.matcher, path).map(|rank| (rank, h)));
    match site.select {
        Select::First => hits.next().map(|(_, h)| h),
        // The first of the most specific: an exact match, else the longest.
        Select::MostSpecific => hits
            .fold(None, |best: Option<((bool, usize), &Handler)>, (rank, h)| match best {
                Some((b, _)) if b >= rank => best,
                _ => Some((rank, h)),
            })
            .map(|(_, h)| h),
    }
}

/// Whether a matcher takes `path`, and how specifically: (an exact match,
/// the length of the longest pattern that matched).
fn specificity(m: &Matcher, path: &str) -> Option<(bool, usize)> {
    if m.kind == MatchKind::Any {
        return Some((false, 0));
    }
    m.paths
        .iter()
        .filter(|p| matches(m.kind, p, path))
        .map(|p| match m.kind {
            MatchKind::PathPrefix => p.trim_end_matches('/').len(),
            _ => p.len(),
        })
        .max()
        .map(|len| (m.kind == MatchKind::Exact, len))
}

fn matches(kind: MatchKind, pattern: &str, path: &str) -> bool {
    match kind {
        MatchKind::Any => true,
        MatchKind::Exact => pattern == path,
        MatchKind::Prefix => path.starts_with(pattern),
        MatchKind::PathPrefix => {
            let prefix = pattern.trim_end_matches('/');
            prefix.is_empty() || path == prefix || path.strip_prefix(prefix).is_some_and(|rest| rest.starts_with('/'))
        }
        MatchKind::Glob => path_matches(pattern, path),
    }
}

/// Caddy's path matcher: `*` only at the end is a prefix, only at the start
/// a suffix, at both ends a substring; anywhere else a glob whose `*` does
/// not cross `/`.
pub(crate) fn path_matches(pattern: &str, path: &str) -> bool {
    let stars = pattern.matches('*').count();
    if stars == 0 {
        return pattern == path;
    }
    if stars == 1 && pattern.ends_with('*') {
        return path.starts_with(&pattern[..pattern.len() - 1]);
    }
    if stars == 1 && pattern.starts_with('*') {
        return path.ends_with(&pattern[1..]);
    }
    if stars == 2 && pattern.starts_with('*') && pattern.ends_with('*') && pattern.len() > 1 {
        return path.contains(&pattern[1..pattern.len() - 1]);
    }
    glob(pattern.as_bytes(), path.as_bytes())
}

fn glob(p: &[u8], s: &[u8]) -> bool {
    match p.split_first() {
        None => s.is_empty(),
        Some((b'*', rest)) => (0..=s.len())
            .take_while(|i| *i == 0 || s[i - 1] != b'/')
            .any(|i| glob(rest, &s[i..])),
        Some((c, rest)) => s.first() == Some(c) && glob(rest, &s[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Then;
    use serde_json::json;

    fn site(v: serde_json::Value) -> SiteRoutes {
        serde_json::from_value(v).unwrap()
    }

    /// Where a site sends a path: the upstream, a response's status, files, or nothing.
    fn to(s: &SiteRoutes, path: &str) -> Option<String> {
        select(s, path).map(|h| match &h.then {
            Then::Proxy(p) => p
                .upstream
                .clone()
                .or_else(|| Some(format!("{}:{}", p.service.as_deref()?, p.port.as_deref()?)))
                .unwrap_or_default(),
            Then::Respond { status, .. } => status.to_string(),
            Then::Files(root) => root.clone(),
            Then::Other(what) => what.clone(),
        })
    }

    fn proxy(kind: &str, path: &str, upstream: &str) -> serde_json::Value {
        json!({ "match": { "kind": kind, "paths": [path] }, "then": { "proxy": { "upstream": upstream } } })
    }

    /// The route facts the compiler reads from a Caddy site block.
    fn caddy_facts(block: &serde_json::Value) -> SiteRoutes {
        let mut s = site(json!({ "site": "x", "select": "first", "container": null }));
        s.handlers = crate::render::site_handlers(crate::model::Format::Caddyfile, block, &[])
            .unwrap()
            .into_iter()
            .map(|(h, _)| h)
            .collect();
        s
    }

    #[test]
    fn caddy_handlers_in_caddys_order() {
        let block = json!([
            { "name": "handle", "body": [{ "name": "reverse_proxy", "args": ["fallback:80"] }] },
            { "name": "reverse_proxy", "args": ["/_matrix/*", "http://synapse:8008"] },
            { "name": "@compat", "args": ["path", "/_matrix/client/*/login"] },
            { "name": "handle", "args": ["@compat"], "body": [{ "name": "reverse_proxy", "args": ["mas:8080"] }] },
            { "name": "respond", "args": ["/.well-known/matrix/server", "{}"] },
        ]);
        let s = caddy_facts(&block);
        // A handle with a matcher wins over the bare one written before it.
        assert_eq!(to(&s, "/_matrix/client/v3/login").as_deref(), Some("mas:8080"));
        // The bare handle catches the rest; top-level directives come after handles.
        assert_eq!(to(&s, "/_matrix/client/v3/sync").as_deref(), Some("fallback:80"));
        let only_top = caddy_facts(&json!([block[1]]));
        assert_eq!(
            to(&only_top, "/_matrix/federation/v1/version").as_deref(),
            Some("synapse:8008")
        );
        assert_eq!(to(&only_top, "/other"), None);
        // A top-level `respond` runs before a top-level `reverse_proxy`.
        let both = caddy_facts(&json!([block[1], block[4]]));
        assert_eq!(to(&both, "/.well-known/matrix/server").as_deref(), Some("200"));
        let Some(Then::Respond { body, .. }) = select(&both, "/.well-known/matrix/server").map(|h| &h.then) else {
            panic!("not a response");
        };
        assert_eq!(body, "{}");
        // A named matcher that is not a path matcher matches nothing; a
        // handle without a proxy or response is terminal.
        let odd = caddy_facts(&json!([
            { "name": "@h", "args": ["header", "X-A", "b"] },
            { "name": "handle", "args": ["@h"], "body": [{ "name": "reverse_proxy", "args": ["h:1"] }] },
            { "name": "handle", "args": ["/files/*"], "body": [{ "name": "file_server" }] },
            { "name": "reverse_proxy", "args": ["https://app:8443/"] },
        ]));
        assert_eq!(to(&odd, "/x").as_deref(), Some("app:8443"));
        assert!(to(&odd, "/files/a").is_some_and(|w| w.contains("without")));
    }

    #[test]
    fn nginx_exact_then_longest_prefix() {
        let s = site(json!({
            "site": "app.example.com", "select": "most_specific", "container": null,
            "handlers": [
                { "match": { "kind": "prefix", "paths": ["/"] }, "then": { "files": "/var/www/app" } },
                proxy("prefix", "/api/", "127.0.0.1:3000"),
                proxy("prefix", "/api/admin", "127.0.0.1:4000"),
                proxy("exact", "/api/", "127.0.0.1:5000"),
                proxy("prefix", "/ap", "127.0.0.1:6000"),
            ],
        }));
        assert_eq!(to(&s, "/index.html").as_deref(), Some("/var/www/app"));
        assert_eq!(to(&s, "/api/users").as_deref(), Some("127.0.0.1:3000"));
        // Longest prefix, whatever the order; plain string prefixes.
        assert_eq!(to(&s, "/api/administrators").as_deref(), Some("127.0.0.1:4000"));
        assert_eq!(to(&s, "/apple").as_deref(), Some("127.0.0.1:6000"));
        // An exact location wins over a longer-or-equal prefix.
        assert_eq!(to(&s, "/api/").as_deref(), Some("127.0.0.1:5000"));
        let no_root = site(json!({
            "site": "a", "select": "most_specific", "container": null,
            "handlers": [proxy("prefix", "/api/", "127.0.0.1:3000")],
        }));
        assert_eq!(to(&no_root, "/"), None);
    }

    #[test]
    fn ingress_exact_then_longest_path_prefix() {
        let backend = |kind: &str, path: &str, service: &str| {
            json!({ "match": { "kind": kind, "paths": [path] },
                    "then": { "proxy": { "machine": "k", "service": service, "port": "http", "upstream": null } } })
        };
        let s = site(json!({
            "site": "a", "select": "most_specific", "container": null,
            "handlers": [
                backend("path_prefix", "/", "web"),
                backend("path_prefix", "/_matrix", "synapse"),
                backend("exact", "/_matrix/client/v3/login", "mas"),
                backend("path_prefix", "/_matrix/client", "client"),
            ],
        }));
        assert_eq!(to(&s, "/_matrix/client/v3/login").as_deref(), Some("mas:http"));
        assert_eq!(to(&s, "/_matrix/client/v3/sync").as_deref(), Some("client:http"));
        assert_eq!(to(&s, "/_matrix/federation").as_deref(), Some("synapse:http"));
        assert_eq!(to(&s, "/_matrix").as_deref(), Some("synapse:http"));
        // Element by element: `/_matrix` does not take `/_matrixx`.
        assert_eq!(to(&s, "/_matrixx").as_deref(), Some("web:http"));
    }

    #[test]
    fn caddy_paths() {
        assert!(path_matches("/_matrix/*", "/_matrix/client/v3/login"));
        assert!(path_matches("/_matrix/client/*/login", "/_matrix/client/v3/login"));
        assert!(!path_matches("/_matrix/client/*/login", "/_matrix/client/v3/x/login"));
        assert!(path_matches(
            "/_matrix/client/*/login/*",
            "/_matrix/client/v3/login/sso"
        ));
        assert!(path_matches("*.php", "/a/b.php"));
        assert!(!path_matches("/a", "/a/b"));
    }
}
