//! `xref`: cross-reference checks on the rendered bundle.
//!
//! Every YAML and JSON file is parsed back from the bytes that will be
//! written, so a user override that breaks one side of a pair is caught
//! even when the module wiring is right. A check pairs two configs
//! (MAS ↔ Authelia, Synapse ↔ MAS, a registration ↔ its bridge, a client ↔
//! its database server), names both parties, shows both values when they
//! differ, and points at the `.ncl` value behind each side. Secret values
//! are compared, never shown.
//!
//! Services are found by what their files are (the `schema` a file names,
//! or the shape of a bridge config), and placed by the compose service that
//! mounts them: container paths in a config resolve to bundle files through
//! that service's volumes, URLs resolve through compose service names,
//! published ports, machine addresses, firewalls and proxy sites.

mod db;
pub(crate) mod roles;
pub(crate) mod router;

use std::collections::BTreeMap;

use serde_json::Value;

use crate::check::Positions;
use crate::diag::{Diagnostic, Span};
use crate::model::{Format, Handler, SiteRoutes, Stack, Then, is_loopback};
use crate::render::Rendered;
use crate::secrets::Resolved;

pub fn check(stack: &Stack, files: &Rendered, secrets: &Resolved, pos: &Positions) -> Vec<Diagnostic> {
    let ix = Index::new(stack, files, secrets, pos);
    let mut out = Vec::new();
    roles::check(&ix, &mut out);
    db::check(&ix, &mut out);
    out
}

/// `/upstream_oauth2/providers/0/id` → `upstream_oauth2.providers[0].id`
pub(crate) fn dotted(ptr: &str) -> String {
    let mut s = String::new();
    for seg in ptr.split('/').skip(1) {
        let seg = seg.replace("~1", "/").replace("~0", "~");
        if !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) {
            s.push_str(&format!("[{seg}]"));
        } else {
            if !s.is_empty() {
                s.push('.');
            }
            s.push_str(&seg);
        }
    }
    s
}

/// Where a container path of a service's config lives.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Place {
    /// A file of the bundle: `<machine>/<path>`.
    Bundle(String),
    /// In a named volume or outside the bundle: made at run time.
    Runtime,
    /// Under no mount of the service: the process cannot see it.
    Unmounted,
}

/// A URL, split as far as the checks need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Url<'a> {
    pub scheme: &'a str,
    pub host: &'a str,
    pub port: u16,
    pub path: &'a str,
}

impl<'a> Url<'a> {
    pub fn parse(s: &'a str) -> Option<Url<'a>> {
        let (scheme, rest) = s.split_once("://")?;
        let (authority, path) = rest
            .find(['/', '?', '#'])
            .map_or((rest, "/"), |i| (&rest[..i], &rest[i..]));
        let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6.split_once(']')?;
            (h, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        let default = match scheme {
            "https" | "wss" => 443,
            "http" | "ws" => 80,
            "postgres" | "postgresql" => 5432,
            _ => 0,
        };
        let port = match port {
            Some(p) => p.parse().ok()?,
            None => default,
        };
        (!host.is_empty()).then_some(Url {
            scheme,
            host,
            port,
            path: path.split(['?', '#']).next().unwrap_or("/"),
        })
    }
}

/// Where a connection from a machine ends up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reached<'a> {
    pub machine: &'a str,
    /// Compose service or native service name.
    pub service: String,
    /// The port as the service itself listens on it (container port).
    pub port: u16,
}

pub(crate) struct Index<'a> {
    pub stack: &'a Stack,
    pub files: &'a Rendered,
    pub secrets: &'a Resolved,
    pub pos: &'a Positions<'a>,
    /// Parsed compose file per machine.
    pub compose: BTreeMap<&'a str, Value>,
    /// Every YAML and JSON file of the bundle, parsed back, by bundle path.
    pub values: BTreeMap<String, Value>,
}

impl<'a> Index<'a> {
    fn new(stack: &'a Stack, files: &'a Rendered, secrets: &'a Resolved, pos: &'a Positions<'a>) -> Self {
        let mut compose = BTreeMap::new();
        let mut values = BTreeMap::new();
        for (mname, m) in &stack.machines {
            // A namespace's pods resolve Service names and mount files as
            // compose services do: the same index serves both.
            if m.namespace.is_some() {
                let services: serde_json::Map<String, Value> = m
                    .workloads
                    .iter()
                    .map(|(name, w)| (name.clone(), serde_json::json!({ "volumes": w.volumes })))
                    .collect();
                compose.insert(mname.as_str(), serde_json::json!({ "services": services }));
            }
            for (path, spec) in &m.files {
                let Some(written) = files.get(&format!("{mname}/{path}")) else {
                    continue;
                };
                let value: Option<Value> = match spec.format {
                    Format::Json => serde_json::from_slice(&written.bytes).ok(),
                    Format::Yaml | Format::Compose => yaml_serde::from_slice(&written.bytes).ok(),
                    Format::KeyValue => crate::render::parse_key_value(&written.bytes),
                    _ => None,
                };
                let Some(value) = value else { continue };
                if spec.format == Format::Compose {
                    compose.insert(mname.as_str(), value.clone());
                }
                values.insert(format!("{mname}/{path}"), value);
            }
        }
        Index {
            stack,
            files,
            secrets,
            pos,
            compose,
            values,
        }
    }

    pub fn services(&self, machine: &str) -> Option<&serde_json::Map<String, Value>> {
        self.compose.get(machine)?.get("services")?.as_object()
    }

    /// Bind mounts of a compose service: (source in the bundle or volume name, target).
    pub fn volumes(&self, machine: &str, service: &str) -> Vec<(String, String)> {
        let Some(svc) = self.services(machine).and_then(|s| s.get(service)) else {
            return Vec::new();
        };
        svc.get("volumes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .filter_map(|v| {
                let mut parts = v.split(':');
                Some((parts.next()?.to_owned(), parts.next()?.to_owned()))
            })
            .collect()
    }

    /// Where a path lives for a process of `machine`: in `container`, or
    /// on the host.
    pub fn place_in(&self, machine: &str, container: Option<&str>, path: &str) -> Place {
        let Some(service) = container else {
            let root = &self.stack.machines[machine].deploy_root;
            return match path.strip_prefix(&format!("{}/", root.trim_end_matches('/'))) {
                Some(rest) => Place::Bundle(format!("{machine}/{rest}")),
                None => Place::Runtime,
            };
        };
        let mut vols = self.volumes(machine, service);
        // The deepest mount wins, as in the container.
        vols.sort_by_key(|(_, dst)| std::cmp::Reverse(dst.len()));
        for (src, dst) in vols {
            let dst = dst.trim_end_matches('/');
            let rest = if path == dst {
                Some("")
            } else {
                path.strip_prefix(&format!("{dst}/"))
            };
            let Some(rest) = rest else { continue };
            return match src.strip_prefix("./") {
                Some(s) if rest.is_empty() => Place::Bundle(format!("{machine}/{}", s.trim_end_matches('/'))),
                Some(s) => Place::Bundle(format!("{machine}/{}/{rest}", s.trim_end_matches('/'))),
                None => Place::Runtime,
            };
        }
        Place::Unmounted
    }

    pub fn text(&self, bundle_path: &str) -> Option<&'a str> {
        self.files
            .get(bundle_path)
            .and_then(|f| std::str::from_utf8(&f.bytes).ok())
    }

    /// The name of the stackc secret whose value this is, if any.
    pub fn secret_name(&self, value: &str) -> Option<&'a str> {
        self.secrets
            .values
            .iter()
            .find(|(_, v)| v.as_str() == value)
            .map(|(n, _)| n.as_str())
    }

    /// A secret value as messages name it: by its stackc name, never itself.
    pub fn secret_label(&self, value: &str) -> String {
        match self.secret_name(value) {
            Some(n) => format!("secret `{n}`"),
            None => "a value that is not a stackc secret".to_owned(),
        }
    }

    /// The `.ncl` position of a whole bundle file (`<machine>/<path>`).
    pub fn file_span(&self, bundle_path: &str) -> Option<Span> {
        let (m, p) = bundle_path.split_once('/')?;
        let base = crate::eval::file_ptr(m, p);
        self.pos.at(&format!("{base}/content")).or_else(|| self.pos.at(&base))
    }

    /// Where a connection from a service (container or native) to `url`
    /// lands, on a listener that admits it.
    pub(crate) fn reach_as(&self, who: roles::Who, url: &Url) -> Result<Reached<'a>, String> {
        let container = self.is_container(who.machine, who.service).then_some(who.service);
        self.reach_from(who.machine, container, url.host, url.port, url.path, 0)
    }

    fn reach_from(
        &self,
        machine: &str,
        container: Option<&str>,
        host: &str,
        port: u16,
        path: &str,
        depth: u8,
    ) -> Result<Reached<'a>, String> {
        let (mname, m) = self
            .stack
            .machines
            .get_key_value(machine)
            .ok_or_else(|| format!("there is no machine `{machine}`"))?;
        // 1. A compose service of the same machine, by name: its own port.
        if let Some(services) = self.services(mname)
            && services.contains_key(host)
        {
            if container.is_none() {
                return Err(format!(
                    "`{host}` is a service name, which only containers of `{mname}` can resolve"
                ));
            }
            return Ok(Reached {
                machine: mname,
                service: host.to_owned(),
                port,
            });
        }
        // 2b. The host, from one of its containers: a native service there,
        // which must not listen on loopback only.
        if host == "host.docker.internal" {
            if container.is_none() {
                return Err(format!(
                    "`{host}` only resolves inside a container (with `extra_hosts`)"
                ));
            }
            if let Some(l) = m.listens.iter().find(|l| l.contains(port))
                && l.is_loopback()
            {
                return Err(format!(
                    "`{}` on `{mname}` binds port {port} to {} only, which containers cannot reach",
                    l.service, l.bind
                ));
            }
            return self
                .on_machine(mname, None, port)
                .ok_or_else(|| format!("nothing on `{mname}` listens on port {port}"));
        }
        // 2. This machine, by loopback or by its own address.
        if is_loopback(host) || m.has_address(host) {
            if let (Some(c), true) = (container, is_loopback(host)) {
                return Err(format!(
                    "inside container `{c}`, `{host}` is the container itself; name the compose service instead"
                ));
            }
            // The socket bound where the connection goes; one bound
            // elsewhere on the machine does not take it.
            return self.on_machine(mname, Some(host), port).ok_or_else(|| {
                match m.listens.iter().find(|l| l.contains(port)) {
                    Some(l) => format!("`{}` on `{mname}` binds port {port} to {} only", l.service, l.bind),
                    None => format!("nothing on `{mname}` listens on port {port}"),
                }
            });
        }
        // 3. Another machine, by address: bind and firewall must let us in.
        if let Some((tname, t)) = self.stack.machines.iter().find(|(_, t)| t.has_address(host)) {
            // The caller connects from its address on the network `host` is
            // on; a machine not on that network cannot reach it at all.
            let net = t.addresses.iter().find(|(_, a)| *a == host).map(|(n, _)| n);
            let source = match net {
                Some(n) => match m.addresses.get(n) {
                    Some(a) => a.as_str(),
                    None => {
                        return Err(format!(
                            "`{host}` is `{tname}`'s address on network `{n}`, which `{mname}` is not on"
                        ));
                    }
                },
                None => m.address.as_str(),
            };
            // The socket the connection lands on; else, for the message,
            // one bound elsewhere.
            let reached = self
                .on_machine(tname, Some(host), port)
                .or_else(|| self.on_machine(tname, None, port))
                .ok_or_else(|| format!("nothing on `{tname}` listens on port {port}"))?;
            let on_port = || t.listens.iter().filter(|l| l.contains(port));
            let listen = on_port().find(|l| l.answers(host)).or_else(|| on_port().next());
            if let Some(l) = listen {
                if !l.answers(host) {
                    return Err(format!(
                        "`{}` on `{tname}` binds port {port} to {} only",
                        l.service, l.bind
                    ));
                }
                if !l.public && !self.firewall_allows(tname, source, port) {
                    return Err(format!(
                        "the firewall of `{tname}` does not open port {port} to `{mname}` ({source})",
                    ));
                }
            }
            return Ok(reached);
        }
        // 4. A site of a proxy: follow its route for the path.
        if depth == 0
            && let Some((pname, site)) = self.sites_for(host, port).first()
        {
            return self.route(pname, site, path);
        }
        Err(format!(
            "`{host}` is not a service of `{mname}`, the address of a machine, or a proxy site"
        ))
    }

    /// Where a proxy site sends a request path: through the handler the
    /// router picks from the site's route facts to the upstream, as the
    /// proxy (its container, or on the host) connects; or, for a backend
    /// named by service and port (an Ingress), to that service's listener.
    pub fn route(&self, proxy: &str, site: &str, path: &str) -> Result<Reached<'a>, String> {
        let (routes, handler) = self.handler(proxy, site, path)?;
        let to = match &handler.then {
            Then::Proxy(to) => to,
            Then::Respond { status, .. } => {
                return Err(format!(
                    "site `{site}` of `{proxy}` does not forward `{path}`: it answers it itself (status {status})"
                ));
            }
            Then::Files(root) => {
                return Err(format!(
                    "site `{site}` of `{proxy}` does not forward `{path}`: it serves files from `{root}`"
                ));
            }
            Then::Other(what) => {
                return Err(format!(
                    "site `{site}` of `{proxy}` does not forward `{path}`: it runs {what}"
                ));
            }
        };
        let Some(upstream) = &to.upstream else {
            return self.backend(proxy, site, path, to);
        };
        let target = format!("http://{upstream}/");
        let url = Url::parse(&target).ok_or_else(|| format!("site `{site}` forwards to `{upstream}`"))?;
        self.reach_from(proxy, routes.container.as_deref(), url.host, url.port, path, 1)
            .map_err(|why| format!("site `{site}` of `{proxy}` forwards `{path}` to `{upstream}`: {why}"))
    }

    /// A backend named by service and port name: the service's listener of
    /// that name on its machine.
    fn backend(&self, proxy: &str, site: &str, path: &str, to: &crate::model::ProxyTo) -> Result<Reached<'a>, String> {
        let machine = to.machine.as_deref().unwrap_or(proxy);
        let service = to.service.as_deref().unwrap_or_default();
        let port_name = to.port.as_deref().unwrap_or_default();
        let (mname, m) = self.stack.machines.get_key_value(machine).ok_or_else(|| {
            format!("site `{site}` of `{proxy}` sends `{path}` to machine `{machine}`, which is not declared")
        })?;
        let port = m
            .listens
            .iter()
            .find(|l| l.service == service && l.name == port_name)
            .map(|l| l.port)
            .ok_or_else(|| {
                format!(
                    "site `{site}` of `{proxy}` sends `{path}` to `{service}:{port_name}`, which nothing on `{mname}` serves"
                )
            })?;
        Ok(Reached {
            machine: mname,
            service: service.to_owned(),
            port,
        })
    }

    /// The route facts of a proxy site.
    pub fn site_routes(&self, machine: &str, site: &str) -> Option<&'a SiteRoutes> {
        self.stack
            .machines
            .get(machine)?
            .site_routes
            .iter()
            .find(|r| r.site == site)
    }

    /// The handler a proxy site runs for a request path (see `router`).
    pub fn handler(&self, machine: &str, site: &str, path: &str) -> Result<(&'a SiteRoutes, &'a Handler), String> {
        let routes = self
            .site_routes(machine, site)
            .ok_or_else(|| format!("`{machine}` serves no site `{site}`"))?;
        let handler = router::select(routes, path)
            .ok_or_else(|| format!("site `{site}` of `{machine}` does not forward `{path}`"))?;
        Ok((routes, handler))
    }

    /// What listens on a host port of a machine: a published container
    /// port (then the container's own port) or a native listener.
    /// What answers `port` on `machine`; with `host`, only a socket bound
    /// where a connection to that address lands (another service may hold
    /// the same port on another address).
    pub(crate) fn on_machine(&self, machine: &'a str, host: Option<&str>, port: u16) -> Option<Reached<'a>> {
        let lands = |bind: &str| host.is_none_or(|h| crate::model::answers(bind, h));
        if let Some(services) = self.services(machine) {
            for (name, svc) in services {
                for p in svc.get("ports").and_then(Value::as_array).into_iter().flatten() {
                    let Some(p) = p.as_str() else { continue };
                    let parts: Vec<&str> = p.split('/').next().unwrap_or(p).rsplitn(3, ':').collect();
                    if let [cp, hp, ..] = parts[..]
                        && hp.parse() == Ok(port)
                        && lands(parts.get(2).copied().unwrap_or(""))
                    {
                        return Some(Reached {
                            machine,
                            service: name.clone(),
                            port: cp.parse().ok()?,
                        });
                    }
                }
            }
        }
        let m = &self.stack.machines[machine];
        m.listens
            .iter()
            .find(|l| l.port == port && !l.published && lands(&l.bind))
            .map(|l| Reached {
                machine,
                service: l.service.clone(),
                port,
            })
    }

    fn firewall_allows(&self, machine: &str, source: &str, port: u16) -> bool {
        let m = &self.stack.machines[machine];
        let mut rules = m.files.values().filter(|f| f.format == Format::Nftables).peekable();
        // No rules written: nothing filters.
        if rules.peek().is_none() {
            return true;
        }
        rules.any(|f| {
            let c = &f.content;
            let open = |key: &str| {
                c.get(key)
                    .and_then(Value::as_array)
                    .is_some_and(|a| a.iter().any(|p| p.as_u64() == Some(port.into())))
            };
            open("tcp_ports")
                || c.get("allow_from").and_then(Value::as_array).is_some_and(|a| {
                    a.iter().any(|r| {
                        r.get("port").and_then(Value::as_u64) == Some(port.into())
                            && r.get("source")
                                .and_then(Value::as_str)
                                .is_some_and(|s| source_admits(s, source))
                    })
                })
        })
    }

    /// The sites (`host` or `host:port`) serving a host and port.
    pub fn sites_for(&self, host: &str, port: u16) -> Vec<(&'a str, &'a str)> {
        let mut out = Vec::new();
        for (pname, p) in &self.stack.machines {
            for s in &p.sites {
                let (h, sp) = crate::check::split_site(s);
                let port_ok = match sp {
                    Some(sp) => sp == port.to_string(),
                    None => port == 443 || port == 80,
                };
                if h == host && port_ok {
                    out.push((pname.as_str(), s.as_str()));
                }
            }
        }
        out
    }
}

/// `https://x/` and `https://x` name the same base for clients.
pub(crate) fn same_base(a: &str, b: &str) -> bool {
    a.trim_end_matches('/') == b.trim_end_matches('/')
}

/// A list of values for a message: `` `a`, `b` `` (or `none`).
pub(crate) fn list<'v>(items: impl IntoIterator<Item = &'v str>) -> String {
    let v: Vec<String> = items.into_iter().map(|s| format!("`{s}`")).collect();
    if v.is_empty() { "none".into() } else { v.join(", ") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = Url::parse("http://mas:8080/").unwrap();
        assert_eq!((u.scheme, u.host, u.port, u.path), ("http", "mas", 8080, "/"));
        let u = Url::parse("https://auth.example.com").unwrap();
        assert_eq!((u.host, u.port, u.path), ("auth.example.com", 443, "/"));
        let u = Url::parse("postgres://u:p@db/x?sslmode=disable").unwrap();
        assert_eq!((u.host, u.port, u.path), ("db", 5432, "/x"));
        let u = Url::parse("http://[::1]:8008").unwrap();
        assert_eq!((u.host, u.port), ("::1", 8008));
        assert!(Url::parse("mas:8080").is_none());
    }

    #[test]
    fn dotted_paths() {
        assert_eq!(
            dotted("/upstream_oauth2/providers/0/id"),
            "upstream_oauth2.providers[0].id"
        );
        assert_eq!(dotted("/a~1b"), "a/b");
    }
}

/// Whether an nft source (`any`, an address, a CIDR) admits `addr`.
fn source_admits(rule: &str, addr: &str) -> bool {
    if rule == "any" || rule == addr {
        return true;
    }
    match (crate::check::parse_cidr(rule), addr.parse()) {
        (Some(cidr), Ok(ip)) => crate::check::in_cidr(ip, cidr),
        _ => false,
    }
}
