//! The Matrix pairs: Synapse ↔ MAS, Element and the well-known files ↔
//! Synapse, federation, the legacy login API, appservice registrations ↔
//! bridges, the files a config names, the signing key.
//! F9, F10, F13, F14, F16, F17, F18, F19, F26.

use serde_json::Value;

use super::{Conf, Index, Kind, Place, Reached, Url, list, same_base};
use crate::diag::{Code, Diagnostic};

pub(super) fn check(ix: &Index, out: &mut Vec<Diagnostic>) {
    files_exist(ix, out);
    public_urls(ix, out);
    for syn in ix.of(Kind::Synapse) {
        clients(ix, syn, out);
        federation(ix, syn, out);
        appservices(ix, syn, out);
        signing_key(ix, syn, out);
    }
}

/// Ports a Synapse listens on, with the resources each serves.
fn synapse_ports(c: &Conf) -> Vec<(u16, Vec<String>)> {
    let listeners = c.get("/listeners").and_then(Value::as_array);
    listeners
        .into_iter()
        .flatten()
        .filter_map(|l| {
            let port = u16::try_from(l.get("port")?.as_u64()?).ok()?;
            let names = l
                .get("resources")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .flat_map(|r| r.get("names").and_then(Value::as_array).into_iter().flatten())
                .filter_map(|n| n.as_str().map(str::to_owned))
                .collect();
            Some((port, names))
        })
        .collect()
}

/// Ports MAS listens on, with the resources each serves.
fn mas_ports(c: &Conf) -> Vec<(u16, Vec<String>)> {
    let listeners = c.get("/http/listeners").and_then(Value::as_array);
    let mut out = Vec::new();
    for l in listeners.into_iter().flatten() {
        let names: Vec<String> = l
            .get("resources")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|r| r.get("name")?.as_str().map(str::to_owned))
            .collect();
        for b in l.get("binds").and_then(Value::as_array).into_iter().flatten() {
            let port = match (
                b.get("address").and_then(Value::as_str),
                b.get("port").and_then(Value::as_u64),
            ) {
                (Some(a), _) => a.rsplit_once(':').and_then(|(_, p)| p.parse().ok()),
                (None, Some(p)) => u16::try_from(p).ok(),
                _ => None,
            };
            if let Some(port) = port {
                out.push((port, names.clone()));
            }
        }
    }
    out
}

/// Does a config's service answer on `r` with every resource of `needs`?
/// `Err` says what is wrong, for the message.
fn serves(ports: &[(u16, Vec<String>)], r: &Reached, needs: &[&str]) -> Result<(), String> {
    let Some((_, names)) = ports.iter().find(|(p, _)| *p == r.port) else {
        let have: Vec<String> = ports.iter().map(|(p, _)| p.to_string()).collect();
        return Err(format!(
            "`{}` does not listen on port {} (it listens on {})",
            r.service,
            r.port,
            list(have.iter().map(String::as_str))
        ));
    };
    let missing: Vec<&str> = needs
        .iter()
        .copied()
        .filter(|n| !names.iter().any(|h| h == n))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "the listener of `{}` on port {} does not serve {}",
            r.service,
            r.port,
            list(missing.iter().copied())
        ))
    }
}

fn is(c: &Conf, r: &Reached) -> bool {
    c.machine == r.machine && c.service.as_deref() == Some(r.service.as_str())
}

/// Why a connection that should land on `target` does not: `Err` from
/// the way there, `other` when it lands on another service, `then` to judge
/// the port it lands on.
fn judge(
    got: Result<Reached, String>,
    target: &Conf,
    other: impl FnOnce(&Reached) -> String,
    then: impl FnOnce(&Reached) -> Result<(), String>,
) -> Option<String> {
    match got {
        Err(why) => Some(why),
        Ok(r) if !is(target, &r) => Some(other(&r)),
        Ok(r) => then(&r).err(),
    }
}

/// Why a URL a service uses for `target` (named `name`) does not reach it.
fn endpoint(
    ix: &Index,
    from: &Conf,
    url: &str,
    target: &Conf,
    name: &str,
    then: impl FnOnce(&Reached) -> Result<(), String>,
) -> Option<String> {
    let Some(u) = Url::parse(url) else {
        return Some(format!("`{url}` is not a URL"));
    };
    let other = |r: &Reached| format!("it reaches `{}` on `{}`, not {name}", r.service, r.machine);
    judge(ix.reach(from, &u), target, other, then)
}

/// The MAS a Synapse delegates to: the one its endpoint reaches, else the
/// one serving its server name.
fn mas_of<'c, 'a>(ix: &'c Index<'a>, syn: &Conf) -> Option<&'c Conf<'a>> {
    let reached = syn
        .str("/matrix_authentication_service/endpoint")
        .and_then(Url::parse)
        .and_then(|u| ix.reach(syn, &u).ok());
    ix.of(Kind::Mas)
        .find(|m| reached.as_ref().is_some_and(|r| is(m, r)))
        .or_else(|| {
            ix.of(Kind::Mas)
                .find(|m| m.str("/matrix/homeserver") == syn.str("/server_name"))
        })
}

fn mas_enabled(syn: &Conf) -> bool {
    syn.get("/matrix_authentication_service/enabled")
        .and_then(Value::as_bool)
        == Some(true)
}

/// Element and the well-known files ↔ Synapse and MAS (F9, F14, F17).
fn clients(ix: &Index, syn: &Conf, out: &mut Vec<Diagnostic>) {
    let (Some(base), Some(sn)) = (syn.str("/public_baseurl"), syn.str("/server_name")) else {
        return;
    };
    let single = ix.of(Kind::Synapse).count() == 1;
    for el in ix.of(Kind::Element) {
        let hs = "/default_server_config/m.homeserver";
        let el_sn = el.str(&format!("{hs}/server_name"));
        if !(single || el_sn == Some(sn)) {
            continue;
        }
        if let Some(b) = el.str(&format!("{hs}/base_url"))
            && !same_base(b, base)
        {
            out.push(ix.pair(
                    Code::HomeserverMismatch,
                    format!("Element ({}) sends clients to `{b}`, but Synapse's public_baseurl is `{base}`", el.who()),
                    (el, &format!("{hs}/base_url"), format!("`{b}`").as_str()),
                    (syn, "/public_baseurl", format!("`{base}`").as_str()),
                    "make Element's `m.homeserver.base_url` Synapse's `public_baseurl` (the matrix module writes both from one record)",
                ));
        }
        if let Some(s) = el_sn.filter(|s| *s != sn) {
            out.push(ix.pair(
                Code::HomeserverMismatch,
                format!(
                    "Element ({}) names server `{s}`, but Synapse's server_name is `{sn}`",
                    el.who()
                ),
                (el, &format!("{hs}/server_name"), format!("`{s}`").as_str()),
                (syn, "/server_name", format!("`{sn}`").as_str()),
                "make Element's `m.homeserver.server_name` Synapse's `server_name`",
            ));
        }
    }
    let mas = if mas_enabled(syn) { mas_of(ix, syn) } else { None };
    for caddy in ix.of(Kind::Caddy) {
        let Some((site, i, body)) = well_known(caddy, sn, "client") else {
            continue;
        };
        let rptr = format!("/sites/{}/{i}", crate::eval::pointer_escape(site));
        if let Some(b) = body.pointer("/m.homeserver/base_url").and_then(Value::as_str)
            && !same_base(b, base)
        {
            out.push(ix.pair(
                    Code::HomeserverMismatch,
                    format!("`https://{site}/.well-known/matrix/client` sends clients to `{b}`, but Synapse's public_baseurl is `{base}`"),
                    (caddy, &rptr, format!("`{b}`").as_str()),
                    (syn, "/public_baseurl", format!("`{base}`").as_str()),
                    "make the well-known `m.homeserver.base_url` Synapse's `public_baseurl`",
                ));
        }
        let issuer = body
            .pointer("/org.matrix.msc2965.authentication/issuer")
            .and_then(Value::as_str);
        if let (Some(w), Some(mas)) = (issuer, mas) {
            let (mas_issuer, mptr) = match mas.str("/http/issuer") {
                Some(i) => (i, "/http/issuer"),
                None => (mas.str("/http/public_base").unwrap_or_default(), "/http/public_base"),
            };
            let mas_issuer = &serialised(mas_issuer);
            if w != mas_issuer.as_str() {
                out.push(ix.pair(
                    Code::IssuerMismatch,
                    format!(
                        "`https://{site}/.well-known/matrix/client` advertises issuer `{w}`, but MAS ({}) issues as `{mas_issuer}`{}",
                        mas.who(),
                        if same_base(w, mas_issuer) { " (the trailing slash differs)" } else { "" }
                    ),
                    (caddy, &rptr, format!("`{w}`").as_str()),
                    (mas, mptr, format!("`{mas_issuer}`").as_str()),
                    "issuers are compared as exact strings: advertise MAS's `http.issuer` (by default its `public_base`) as it is",
                ));
            }
        }
    }
    // F14: the legacy login API must reach MAS's compat resource.
    if let (Some(mas), Some(u)) = (mas, Url::parse(base)) {
        let login = "/_matrix/client/v3/login";
        let sites = ix.sites_for(u.host, u.port);
        let Some((pname, site)) = sites.first() else { return };
        let other = |r: &Reached| format!("site `{site}` forwards `{login}` to `{}` on `{}`", r.service, r.machine);
        let why = judge(ix.route(pname, site, login), mas, other, |r| {
            serves(&mas_ports(mas), r, &["compat"])
        });
        if let (Some(why), Some(c)) = (why, ix.of(Kind::Caddy).find(|c| c.machine == *pname)) {
            // The site's first path as the user wrote it, when they did.
            let written = ix
                .span(c, &format!("/sites/{}/0/args/1", crate::eval::pointer_escape(site)))
                .filter(crate::diag::Span::in_user);
            out.push(
                ix.pair(
                    Code::CompatLogin,
                    format!("the legacy login API of `{site}` is not answered by MAS ({}): {why}", mas.who()),
                    (c, &format!("/sites/{}", crate::eval::pointer_escape(site)), "this site"),
                    (mas, "/http/listeners", "MAS's listeners"),
                    "route `/_matrix/client/*/login`, `/logout` and `/refresh` (and their sub-paths) to MAS's `compat` listener before Synapse's `/_matrix/*`",
                )
                .with_primary(written, "these routes"),
            );
        }
    }
}

/// A URL as MAS serialises it (the `url` crate): an empty path is `/`.
fn serialised(url: &str) -> String {
    match url.split_once("://") {
        Some((_, rest)) if !rest.is_empty() && !rest.contains(['/', '?', '#']) => format!("{url}/"),
        _ => url.to_owned(),
    }
}

/// The JSON a Caddy site answers at `/.well-known/matrix/<which>` for a
/// server name: (site, index of the handle, parsed body).
fn well_known<'c>(caddy: &'c Conf, server_name: &str, which: &str) -> Option<(&'c str, usize, Value)> {
    let sites = caddy.get("/sites")?.as_object()?;
    let (site, block) = sites
        .iter()
        .find(|(s, _)| s.as_str() == server_name || **s == format!("{server_name}:443"))?;
    let block = block.as_array()?;
    let path = format!("/.well-known/matrix/{which}");
    let handler = super::caddy_handler(block, &path)?;
    if handler.get("name")?.as_str()? != "respond" {
        return None;
    }
    let i = block.iter().position(|d| {
        d.get("body")
            .and_then(Value::as_array)
            .is_some_and(|b| b.iter().any(|x| std::ptr::eq(x, handler)))
    })?;
    let body: Value = serde_json::from_str(handler.get("args")?.get(0)?.as_str()?).ok()?;
    Some((site.as_str(), i, body))
}

/// F16: other servers must reach Synapse's federation listener, through
/// `/.well-known/matrix/server` or on `server_name:8448`.
fn federation(ix: &Index, syn: &Conf, out: &mut Vec<Diagnostic>) {
    let Some(sn) = syn.str("/server_name") else { return };
    let caddies: Vec<&Conf> = ix.of(Kind::Caddy).collect();
    let delegated = caddies
        .iter()
        .find_map(|c| well_known(c, sn, "server").map(|w| (*c, w)));
    // `serve_server_wellknown`: Synapse answers the well-known itself, if
    // the server name routes it there.
    let self_delegated = delegated.is_none()
        && syn.get("/serve_server_wellknown").and_then(Value::as_bool) == Some(true)
        && ix
            .sites_for(sn, 443)
            .first()
            .is_some_and(|(p, s)| ix.route(p, s, "/.well-known/matrix/server").is_ok_and(|r| is(syn, &r)));
    // A server name with a port is connected to there; Synapse's own
    // well-known answers it on 443.
    let sn_port = sn.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok());
    let target = match &delegated {
        None if sn_port => sn.to_owned(),
        None if self_delegated => format!("{sn}:443"),
        Some((_, (_, _, body))) => match body.get("m.server").and_then(Value::as_str) {
            Some(t) if t.contains(':') && !t.ends_with(']') => t.to_owned(),
            Some(t) => format!("{t}:8448"),
            None => return,
        },
        None => format!("{sn}:8448"),
    };
    let via = if self_delegated {
        format!("Synapse's own `/.well-known/matrix/server` on `{sn}` delegates federation to `{target}`")
    } else if delegated.is_some() {
        format!("`/.well-known/matrix/server` of `{sn}` delegates federation to `{target}`")
    } else {
        format!("without `/.well-known/matrix/server` on `{sn}`, other servers connect to `{target}`")
    };
    let target_url = format!("https://{target}/");
    let Some(u) = Url::parse(&target_url) else { return };
    let path = "/_matrix/federation/v1/version";
    let sites = ix.sites_for(u.host, u.port);
    let why = match sites.first() {
        // Synapse itself may terminate TLS on the federation port.
        None if synapse_ports(syn).iter().any(|(p, _)| *p == u.port) => None,
        None => Some("no proxy site serves it".to_owned()),
        Some((pname, site)) => {
            let other = |r: &Reached| format!("site `{site}` forwards `{path}` to `{}` on `{}`", r.service, r.machine);
            judge(ix.route(pname, site, path), syn, other, |r| {
                serves(&synapse_ports(syn), r, &["federation"])
            })
        }
    };
    if let Some(why) = why {
        let d = match &delegated {
            Some((c, (site, i, _))) => ix.pair(
                Code::Federation,
                format!("federation does not reach Synapse ({}): {via}, but {why}", syn.who()),
                (c, &format!("/sites/{}/{i}", crate::eval::pointer_escape(site)), "the delegation"),
                (syn, "/listeners", "Synapse's listeners"),
                "serve the federation target with a TLS site that forwards `/_matrix/*` to a Synapse listener with the `federation` resource",
            ),
            None => ix.one(
                Code::Federation,
                format!("federation does not reach Synapse ({}): {via}, but {why}", syn.who()),
                (syn, "/server_name", "this server name"),
                "serve `/.well-known/matrix/server` on the server name, or a TLS site on `<server_name>:8448` that forwards to Synapse's `federation` listener",
            ),
        };
        out.push(d);
    }
}

/// F18, F19: registrations Synapse loads ↔ the bridges they describe.
fn appservices(ix: &Index, syn: &Conf, out: &mut Vec<Diagnostic>) {
    let files = syn.get("/app_service_config_files").and_then(Value::as_array);
    let mut regs: Vec<(usize, &Conf)> = Vec::new();
    for (i, f) in files.into_iter().flatten().enumerate() {
        let Some(Place::Bundle(p)) = f.as_str().map(|f| ix.place(syn, f)) else {
            continue;
        };
        if let Some(r) = ix.conf_at(&p).filter(|c| c.kind == Kind::Registration) {
            regs.push((i, r));
        }
    }
    // Synapse refuses two registrations with one id or one token.
    for (b, (j, second)) in regs.iter().enumerate() {
        for (i, first) in &regs[..b] {
            let shared: Vec<String> = ["id", "as_token", "hs_token"]
                .iter()
                .filter(|k| {
                    first
                        .str(&format!("/{k}"))
                        .is_some_and(|v| second.str(&format!("/{k}")) == Some(v))
                })
                .map(|k| match (*k, first.str("/id")) {
                    ("id", Some(id)) => format!("id `{id}`"),
                    (k, _) => format!("its `{k}`"),
                })
                .collect();
            if shared.is_empty() {
                continue;
            }
            let files = if first.file() == second.file() {
                format!("`{}`, twice", first.file())
            } else {
                format!("`{}` and `{}`", first.file(), second.file())
            };
            out.push(ix.pair(
                Code::AppserviceDuplicate,
                format!(
                    "Synapse ({}) loads registrations that share {}: {files}",
                    syn.who(),
                    shared.join(", "),
                ),
                (syn, &format!("/app_service_config_files/{j}"), "this registration"),
                (syn, &format!("/app_service_config_files/{i}"), "the first one"),
                "give each bridge its own registration: ids and tokens must be unique",
            ));
        }
    }
    let sn = syn.str("/server_name");
    let mut done: Vec<&str> = Vec::new();
    for (_, reg) in &regs {
        let Some(id) = reg.str("/id") else { continue };
        if done.contains(&id) {
            continue;
        }
        done.push(id);
        let Some(br) = ix.of(Kind::Bridge).find(|b| b.str("/appservice/id") == Some(id)) else {
            continue;
        };
        let mismatch = |what: &str, a: &str, b: &str, shown: bool| {
            let vals = if shown {
                format!(": `{a}` and `{b}`")
            } else {
                String::new()
            };
            format!(
                "the registration of appservice `{id}` ({}) and its bridge ({}) disagree on {what}{vals}",
                reg.file(),
                br.who()
            )
        };
        for (rk, bk, shown) in [
            ("/as_token", "/appservice/as_token", false),
            ("/hs_token", "/appservice/hs_token", false),
            ("/url", "/appservice/address", true),
            ("/sender_localpart", "/appservice/bot/username", true),
        ] {
            let (a, b) = (reg.str(rk), br.str(bk));
            // A trailing slash does not change where Synapse connects.
            if let (Some(a), Some(b)) = (a, b)
                && (if rk == "/url" { !same_base(a, b) } else { a != b })
            {
                out.push(ix.pair(
                    Code::AppserviceMismatch,
                    mismatch(&super::dotted(rk), a, b, shown),
                    (br, bk, "the bridge's value"),
                    (reg, rk, "the registration's value"),
                    "write the registration and the bridge config from one record (`stackc.modules.mautrix` does)",
                ));
            }
        }
        if let (Some(d), Some(sn)) = (br.str("/homeserver/domain"), sn)
            && d != sn
        {
            out.push(ix.pair(
                Code::AppserviceMismatch,
                format!(
                    "bridge `{id}` ({}) serves domain `{d}`, but Synapse's server_name is `{sn}`",
                    br.who()
                ),
                (br, "/homeserver/domain", format!("`{d}`").as_str()),
                (syn, "/server_name", format!("`{sn}`").as_str()),
                "set the bridge's `homeserver.domain` to Synapse's `server_name`",
            ));
        }
        // Synapse pushes to the registration URL; the bridge calls Synapse.
        if let Some(url) = reg.str("/url") {
            let port = br.get("/appservice/port").and_then(Value::as_u64);
            let why = endpoint(ix, syn, url, br, "the bridge", |r| match port {
                Some(p) if p != u64::from(r.port) => Err(format!("the bridge listens on port {p}, not {}", r.port)),
                _ => Ok(()),
            });
            if let Some(why) = why {
                out.push(ix.pair(
                    Code::Unreachable,
                    format!(
                        "Synapse ({}) cannot reach appservice `{id}` at `{url}`: {why}",
                        syn.who()
                    ),
                    (reg, "/url", "this URL"),
                    (br, "/appservice", "the bridge's listener"),
                    "set the registration `url` to the bridge's compose service and `appservice.port`",
                ));
            }
        }
        if let Some(addr) = br.str("/homeserver/address") {
            let why = endpoint(ix, br, addr, syn, "Synapse", |r| {
                serves(&synapse_ports(syn), r, &["client"])
            });
            if let Some(why) = why {
                out.push(ix.pair(
                    Code::Unreachable,
                    format!("bridge `{id}` ({}) cannot reach Synapse at `{addr}`: {why}", br.who()),
                    (br, "/homeserver/address", "this address"),
                    (syn, "/listeners", "Synapse's listeners"),
                    "set the bridge's `homeserver.address` to Synapse's compose service and `client` listener port",
                ));
            }
        }
        // F19: encryption through MAS needs MSC4190 on both sides.
        let encrypts = br.get("/encryption/allow").and_then(Value::as_bool) == Some(true);
        if mas_enabled(syn) && encrypts {
            let on_bridge = br.get("/encryption/msc4190").and_then(Value::as_bool) == Some(true);
            let on_reg = reg.get("/io.element.msc4190").and_then(Value::as_bool) == Some(true);
            if !(on_bridge && on_reg) {
                let (c, ptr, side): (&Conf, _, _) = if on_bridge {
                    (*reg, "/io.element.msc4190", "its registration")
                } else {
                    (br, "/encryption/msc4190", "the bridge config")
                };
                out.push(ix.pair(
                    Code::Msc4190,
                    format!("bridge `{id}` allows encryption next to MAS, but {side} does not turn on MSC4190"),
                    (c, ptr, "not `true`"),
                    (syn, "/matrix_authentication_service/enabled", "MAS handles logins"),
                    "set `encryption.msc4190: true` in the bridge config and `io.element.msc4190: true` in its registration, or disallow encryption",
                ));
            }
        }
    }
}

/// F26: version `0` signing keys are the ones tools generate by default
/// and ESS rotates; a key's version must be stable and distinct.
fn signing_key(ix: &Index, syn: &Conf, out: &mut Vec<Diagnostic>) {
    let Some(Place::Bundle(file)) = syn.str("/signing_key_path").map(|p| ix.place(syn, p)) else {
        return;
    };
    let Some(text) = ix.text(&file) else { return };
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let parts: Vec<&str> = line.split_whitespace().collect();
        let version = match parts[..] {
            [_, v, _] => v,
            _ => "",
        };
        let valid = !version.is_empty() && version.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if version == "0" || !valid {
            // Only a checked version is shown: the other fields are key material.
            let what = if valid {
                format!("has version `{version}`")
            } else {
                format!(
                    "line {} is not `<algorithm> <version> <key>` with a version of letters, digits and `_`",
                    n + 1
                )
            };
            out.push(
                Diagnostic::error(
                    Code::SigningKeyVersion,
                    format!("Synapse's signing key `{file}` ({}) {what}", syn.who()),
                )
                .with_label(ix.file_span(&file), "this key")
                .with_secondary(ix.span(syn, "/signing_key_path"), "Synapse reads it from here")
                .with_help("use a stackc `ed25519` secret (version `a_` + 4 characters); never version `0`, and never change a published version"),
            );
        }
    }
}

/// Files a config names must exist where its process looks (F18's
/// registration paths, secret files, keys).
fn files_exist(ix: &Index, out: &mut Vec<Diagnostic>) {
    for c in &ix.confs {
        let mut named: Vec<String> = Vec::new();
        match c.kind {
            Kind::Synapse => {
                for p in [
                    "/signing_key_path",
                    "/log_config",
                    "/matrix_authentication_service/secret_path",
                    "/database/args/passfile",
                    "/registration_shared_secret_path",
                    "/macaroon_secret_key_path",
                    "/form_secret_path",
                ] {
                    named.push(p.into());
                }
                let n = c
                    .get("/app_service_config_files")
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len);
                named.extend((0..n).map(|i| format!("/app_service_config_files/{i}")));
                let n = c.get("/oidc_providers").and_then(Value::as_array).map_or(0, Vec::len);
                named.extend((0..n).map(|i| format!("/oidc_providers/{i}/client_secret_path")));
            }
            Kind::Mas => {
                for p in [
                    "/database/password_file",
                    "/matrix/secret_file",
                    "/secrets/encryption_file",
                ] {
                    named.push(p.into());
                }
                let n = c.get("/secrets/keys").and_then(Value::as_array).map_or(0, Vec::len);
                named.extend((0..n).map(|i| format!("/secrets/keys/{i}/key_file")));
                let n = c
                    .get("/upstream_oauth2/providers")
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len);
                named.extend((0..n).map(|i| format!("/upstream_oauth2/providers/{i}/client_secret_file")));
            }
            Kind::Authelia => named.push("/authentication_backend/file/path".into()),
            _ => {}
        }
        for ptr in named {
            let Some(path) = c.str(&ptr) else { continue };
            let why = match ix.place(c, path) {
                Place::Bundle(p) if ix.files.contains_key(&p) => continue,
                // In a named volume or outside the bundle: not ours to judge.
                Place::Runtime => continue,
                Place::Bundle(p) => format!("the bundle has no `{p}`"),
                Place::Unmounted => match &c.service {
                    Some(s) => format!("no volume of `{s}` contains it"),
                    None => "it is outside the machine's bundle".into(),
                },
            };
            out.push(ix.one(
                Code::MissingFile,
                format!("{} names `{path}`, which {} cannot read: {why}", c.at(&ptr), c.who()),
                (c, &ptr, "this path"),
                "name a file the stack emits, as the service sees it through its volumes",
            ));
        }
    }
}

/// Every URL clients or other servers are given is `https://` and served
/// by a proxy site with a publicly trusted certificate.
fn public_urls(ix: &Index, out: &mut Vec<Diagnostic>) {
    // (config, pointer, URL, whether the stack must serve it)
    let mut urls: Vec<(&Conf, String, &str, bool)> = Vec::new();
    for c in &ix.confs {
        let ptrs: Vec<String> = match c.kind {
            Kind::Synapse => vec!["/public_baseurl".into()],
            Kind::Mas => {
                let n = c
                    .get("/upstream_oauth2/providers")
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len);
                let mut v = vec!["/http/public_base".to_owned(), "/http/issuer".to_owned()];
                v.extend((0..n).map(|i| format!("/upstream_oauth2/providers/{i}/issuer")));
                v
            }
            Kind::Element => vec!["/default_server_config/m.homeserver/base_url".into()],
            _ => continue,
        };
        for p in ptrs {
            if let Some(u) = c.str(&p) {
                // A provider's issuer may be outside the stack (Google, …).
                let ours = !p.starts_with("/upstream_oauth2/");
                urls.push((c, p, u, ours));
            }
        }
    }
    for (c, ptr, url, ours) in urls {
        let what = c.at(&ptr);
        let Some(u) = Url::parse(url).filter(|u| u.scheme == "https") else {
            out.push(ix.one(
                Code::NoTlsSite,
                format!("{what} is `{url}`, which is not an `https://` URL"),
                (c, &ptr, "not https"),
                "public URLs are served over TLS by the proxy: write `https://<host>/`",
            ));
            continue;
        };
        let sites = ix.sites_for(u.host, u.port);
        let why = match sites.first() {
            None if !ours => continue,
            None => format!("no proxy site serves `{}`", site_of(&u)),
            Some((pname, site)) => {
                let internal = ix.site_block(pname, site).is_some_and(|b| {
                    b.iter().any(|d| {
                        d.get("name").and_then(Value::as_str) == Some("tls")
                            && d.pointer("/args/0").and_then(Value::as_str) == Some("internal")
                    })
                });
                if !internal {
                    continue;
                }
                format!(
                    "site `{site}` on `{pname}` uses Caddy's internal CA, which clients and other servers do not trust"
                )
            }
        };
        out.push(ix.one(
            Code::NoTlsSite,
            format!("{what} is `{url}`, but {why}"),
            (c, &ptr, "this URL"),
            "add a proxy site for the host with a public certificate (`tls = 'acme`), or use a host the proxy serves",
        ));
    }
}

fn site_of(u: &Url) -> String {
    if u.port == 443 {
        u.host.to_owned()
    } else {
        format!("{}:{}", u.host, u.port)
    }
}

#[cfg(test)]
mod tests {
    use super::serialised;

    #[test]
    fn urls_as_mas_serialises_them() {
        assert_eq!(serialised("https://mas.example.com"), "https://mas.example.com/");
        assert_eq!(serialised("https://mas.example.com/"), "https://mas.example.com/");
        assert_eq!(serialised("https://example.com/mas"), "https://example.com/mas");
        assert_eq!(serialised("https://x?y"), "https://x?y");
    }
}
