//! Proxy sites whose module leaves their blocks to the compiler (Caddy's):
//! each site's block is written into the proxy's config file from the
//! site's checked options, with every upstream's address as the proxy
//! reaches it, and the site gets its route facts (the checks) and its
//! handlers (the router, read back from the block by `site_handlers`).

use super::PortOf;
use super::network::{is_loopback, is_wildcard, via};
use crate::eval::{Locs, file_ptr, pointer_escape};
use crate::model::{FileSpec, Route, Select, Site, SiteBlock, SiteTls, SiteUpstream, Stack, Upstream, UpstreamTarget};

/// Written where an upstream names no port the stack knows: the checks
/// report the route (SC0206 and kin), and the block stays well-formed.
const UNRESOLVED: &str = "unresolved.invalid:1";

pub(super) fn sites(stack: &mut Stack, locs: &mut Locs) {
    // Every machine's proxy reads other machines' ports and addresses:
    // all addresses are resolved before any machine changes.
    let addresses: Vec<Vec<Vec<String>>> = stack
        .machines
        .iter()
        .map(|(mname, m)| match &m.proxy {
            Some(p) => p
                .sites
                .values()
                .map(|site| {
                    site.upstreams()
                        .into_iter()
                        .map(|(up, _)| {
                            address(stack, mname, p.in_container, up).unwrap_or_else(|| UNRESOLVED.to_owned())
                        })
                        .collect()
                })
                .collect(),
            None => Vec::new(),
        })
        .collect();
    for ((mname, m), addresses) in stack.machines.iter_mut().zip(addresses) {
        let Some(proxy) = &m.proxy else { continue };
        let mp = format!("/machines/{}", pointer_escape(mname));
        // The proxy's facts come first, as its module's part of the machine
        // did (another proxy's, nginx's, follow): theirs move up first.
        let upstreams: usize = proxy.sites.values().map(|s| s.upstreams().len()).sum();
        super::shift(locs, &format!("{mp}/routes/"), upstreams, m.routes.len());
        super::shift(
            locs,
            &format!("{mp}/site_routes/"),
            proxy.sites.len(),
            m.site_routes.len(),
        );
        let mut routes = Vec::with_capacity(upstreams + m.routes.len());
        let mut site_routes = Vec::with_capacity(proxy.sites.len() + m.site_routes.len());
        for ((name, site), addresses) in proxy.sites.iter().zip(addresses) {
            let opt = format!("{mp}/proxy/sites/{}", pointer_escape(name));
            if let Some(file) = m.files.get_mut(&proxy.file) {
                write_block(mname, &proxy.file, file, name, site, &addresses, &opt, locs);
            }
            // The facts come from the options, whatever the file became.
            let mut targets = Vec::new();
            for ((up, at), address) in site.upstreams().into_iter().zip(addresses) {
                let target = Upstream {
                    machine: up.machine.clone().unwrap_or_else(|| mname.clone()),
                    service: up.service.clone(),
                    port: up.port.clone(),
                };
                let fact = format!("{mp}/routes/{}", routes.len());
                super::alias(locs, &format!("{opt}{at}"), &fact);
                if up.machine.is_none() {
                    super::copy_loc(locs, &format!("{opt}{at}"), &format!("{fact}/machine"));
                }
                routes.push(Route {
                    site: name.clone(),
                    machine: target.machine.clone(),
                    service: target.service.clone(),
                    port: target.port.clone(),
                });
                targets.push(UpstreamTarget { address, target });
            }
            super::copy_loc(locs, &opt, &format!("{mp}/site_routes/{}", site_routes.len()));
            site_routes.push(crate::model::SiteRoutes {
                site: name.clone(),
                select: Select::First,
                // Clients and other servers trust its certificate.
                trusted_tls: site.tls != SiteTls::Internal,
                container: proxy.in_container.then(|| proxy.service.clone()),
                handlers: Vec::new(),
                block: Some(SiteBlock {
                    file: proxy.file.clone(),
                    targets,
                }),
            });
        }
        routes.append(&mut m.routes);
        m.routes = routes;
        site_routes.append(&mut m.site_routes);
        m.site_routes = site_routes;
    }
}

/// Writes site `name`'s block where the stdlib left it to the compiler: a
/// `null` under `content.sites`. A block the user merged on the result
/// with `| force` replaced that, and stays; so does a `content` replaced
/// whole, which has none.
#[allow(clippy::too_many_arguments)]
fn write_block(
    mname: &str,
    path: &str,
    file: &mut FileSpec,
    name: &str,
    site: &Site,
    addresses: &[String],
    opt: &str,
    locs: &mut Locs,
) {
    let Some(slot) = file.content.get_mut("sites").and_then(|s| s.get_mut(name)) else {
        return;
    };
    if !slot.is_null() {
        return;
    }
    let Some((block, origins)) = crate::render::site_block(file.format, site, addresses) else {
        return;
    };
    *slot = block;
    let to = format!("{}/content/sites/{}", file_ptr(mname, path), pointer_escape(name));
    super::copy_loc(locs, opt, &to);
    for o in origins {
        let (from, at) = (format!("{opt}{}", o.from), format!("{to}{}", o.to));
        if o.whole {
            super::alias(locs, &from, &at);
        } else {
            super::copy_loc(locs, &from, &at);
        }
    }
}

/// The address of port `up` as the proxy on machine `from` reaches it
/// (`in_container`: the proxy runs in a compose container), `None` when
/// it names no port of the stack (the checks say so). The rules of the
/// stdlib's `upstream_address_in` (modules/caddy.ncl, which nginx uses):
/// loopback means "this namespace", so from a container a container of the
/// same machine is reached by its compose service name and its port
/// inside, and a native service at `host.docker.internal`; a wildcard bind
/// on loopback from the same machine and on the machine's address on the
/// network they share from another; a specific bind only there.
fn address(stack: &Stack, from: &str, in_container: bool, up: &SiteUpstream) -> Option<String> {
    let target = up.machine.as_deref().unwrap_or(from);
    let m = stack.machines.get(target)?;
    let is_container = m.container_names.contains(&up.service);
    let PortOf { port, bind, inside, .. } = super::port_of(m, &up.service, &up.port, false)?;
    let here = target == from;
    let (host, port) = if here && in_container && is_container {
        (up.service.as_str(), inside)
    } else if here && in_container && (is_wildcard(bind) || is_loopback(bind)) {
        // (A loopback bind is unreachable from the container: the
        // cross-checks say so, naming the bind.)
        ("host.docker.internal", port)
    } else if !is_wildcard(bind) {
        (bind, port)
    } else if here {
        ("127.0.0.1", port)
    } else {
        let a = &stack.machines.get(from)?.addresses;
        let b = &m.addresses;
        match via(&stack.networks, a, b).and_then(|net| b.get(net)) {
            Some(to) => (to.as_str(), port),
            None => ("unreachable.invalid", port),
        }
    };
    Some(if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    })
}
