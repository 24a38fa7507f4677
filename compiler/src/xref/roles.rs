//! The roles engine: pairs what modules declare their services' files say
//! (`modules/roles.ncl`) across the whole stack, reading every value from
//! the written bytes. It knows roles, never services: an OpenID Connect
//! provider and its relying parties, URLs a service calls and the listener
//! that must answer them, values two services must share.

use serde_json::Value;

use super::{Index, Reached, Url, list};
use crate::diag::{Code, Diagnostic, Span};
use crate::model::{ProviderClient, Ref, Role};
use crate::secrets::derive::pbkdf2_sha512_verifies;

/// Where a value was read: a bundle file (`<machine>/<path>`) and a JSON
/// pointer into its content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct At {
    pub file: String,
    pub ptr: String,
}

/// A value read through a `Ref`, and where (a literal is nowhere).
#[derive(Debug, Clone)]
pub(crate) struct Got {
    pub value: Value,
    pub at: Option<At>,
}

impl Got {
    pub fn str(&self) -> Option<&str> {
        self.value.as_str()
    }

    /// A string, or a number written as one.
    pub(crate) fn text(&self) -> Option<String> {
        match &self.value {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    }
}

/// A service of a machine: who reads a `Ref`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Who<'a> {
    pub machine: &'a str,
    pub service: &'a str,
}

impl Who<'_> {
    /// Clients and other servers on the internet.
    pub const INTERNET: Who<'static> = Who {
        machine: "",
        service: "",
    };

    /// `` `mas` on `matrix` ``; a service named `""` is the machine's proxy.
    pub fn show(&self) -> String {
        if self.machine.is_empty() {
            return "clients on the internet".to_owned();
        }
        if self.service.is_empty() {
            return format!("the proxy of `{}`", self.machine);
        }
        format!("`{}` on `{}`", self.service, self.machine)
    }
}

impl<'a> Index<'a> {
    /// The value a `Ref` names, as service `who` reads it.
    pub(crate) fn eval(&self, who: Who, r: &Ref) -> Option<Got> {
        if let Some(ptr) = &r.ptr {
            let file = format!("{}/{}", who.machine, r.file.as_deref()?);
            // A whole file that is not YAML or JSON: only where it is.
            if ptr.is_empty() && !self.values.contains_key(&file) && self.files.contains_key(&file) {
                return Some(Got {
                    value: Value::Null,
                    at: Some(At {
                        file,
                        ptr: String::new(),
                    }),
                });
            }
            let value = self.values.get(&file)?.pointer(ptr)?.clone();
            return Some(Got {
                value,
                at: Some(At { file, ptr: ptr.clone() }),
            });
        }
        if let Some(name) = &r.env {
            let (value, at) = self.env(who, name)?;
            return Some(Got {
                value: Value::String(value),
                at: Some(at),
            });
        }
        if let Some(v) = &r.value {
            return Some(Got {
                value: v.clone(),
                at: None,
            });
        }
        if let Some(parts) = &r.concat {
            let got: Option<Vec<Got>> = parts.iter().map(|p| self.eval(who, p)).collect();
            let got = got?;
            let text: Option<String> = got.iter().map(Got::text).collect();
            return Some(Got {
                value: Value::String(text?),
                at: got.into_iter().find_map(|g| g.at),
            });
        }
        if let Some(parts) = &r.join {
            let [base, rel] = parts.as_slice() else { return None };
            let (base, rel) = (self.eval(who, base)?, self.eval(who, rel)?);
            return Some(Got {
                value: Value::String(join_url(&base.text()?, &rel.text()?)),
                at: base.at.or(rel.at),
            });
        }
        if let Some(inner) = &r.dir {
            let g = self.eval(who, inner)?;
            let t = g.text()?;
            let t = if t.ends_with('/') { t } else { format!("{t}/") };
            return Some(Got {
                value: Value::String(t),
                at: g.at,
            });
        }
        if let Some(m) = &r.map {
            let g = self.eval(who, &m.of)?;
            let key = g.text()?.to_ascii_lowercase();
            let value =
                m.to.iter()
                    .find(|(k, _)| k.to_ascii_lowercase() == key)
                    .map(|(_, v)| v.clone())?;
            return Some(Got { value, at: g.at });
        }
        if let Some(j) = &r.json {
            let g = self.eval(who, &j.of)?;
            let doc: Value = serde_json::from_str(g.str()?).ok()?;
            return Some(Got {
                value: doc.pointer(&j.ptr)?.clone(),
                at: g.at,
            });
        }
        if let Some(rs) = &r.respond {
            let site = self.eval(who, &rs.site)?.text()?;
            let (body, at) = self.respond_body(&site, &rs.path)?;
            return Some(Got {
                value: Value::String(body),
                at: Some(at),
            });
        }
        if let Some(sp) = &r.split {
            let g = self.eval(who, &sp.of)?;
            let text = g.text()?;
            let rest = text.splitn(sp.skip + 1, sp.sep.as_str()).nth(sp.skip)?;
            return Some(Got {
                value: Value::String(rest.trim_end_matches(['\n', '\r']).to_owned()),
                at: g.at,
            });
        }
        if let Some(m) = &r.address {
            let machine = self.stack.machines.get(m)?;
            if machine.address.is_empty() {
                return None;
            }
            return Some(Got {
                value: Value::String(machine.address.clone()),
                at: None,
            });
        }
        if let Some(w) = &r.when {
            let test = self.eval(who, &w.test)?;
            return if test.value == Value::Bool(true) {
                self.eval(who, &w.give)
            } else {
                None
            };
        }
        if let Some(options) = &r.first {
            return options.iter().find_map(|o| self.eval(who, o));
        }
        if let Some(path) = &r.read {
            let g = self.eval(who, path)?;
            let text = self.read_as(who, g.str()?)?;
            // Secret files hold the bare value; a trailing newline is not part of it.
            return Some(Got {
                value: Value::String(text.trim_end_matches(['\n', '\r']).to_owned()),
                at: g.at,
            });
        }
        None
    }

    /// The body a proxy site answers for `path` with a `respond` handler,
    /// and where the handler is (its route fact). `site` is a host, or
    /// `host:port`.
    pub(crate) fn respond_body(&self, site: &str, path: &str) -> Option<(String, At)> {
        for (mname, m) in &self.stack.machines {
            let Some((k, routes)) = m
                .site_routes
                .iter()
                .enumerate()
                .find(|(_, r)| r.site == site || r.site == format!("{site}:443"))
            else {
                continue;
            };
            let (_, handler) = self.handler(mname, &routes.site, path).ok()?;
            let crate::model::Then::Respond { body, .. } = &handler.then else {
                return None;
            };
            let i = routes.handlers.iter().position(|h| std::ptr::eq(h, handler))?;
            let at = At {
                file: String::new(),
                ptr: format!(
                    "/machines/{}/site_routes/{k}/handlers/{i}/then",
                    crate::eval::pointer_escape(mname)
                ),
            };
            return Some((body.clone(), at));
        }
        None
    }

    /// A site host of the stack one or two letters off `host` (a typo).
    pub(crate) fn near_site(&self, host: &str) -> Option<String> {
        self.stack
            .machines
            .values()
            .flat_map(|m| m.sites.iter())
            .map(|s| crate::check::split_site(s).0)
            .filter(|h| *h != host)
            .map(|h| (strsim::damerau_levenshtein(h, host), h))
            .filter(|(d, _)| *d <= 2)
            .min()
            .map(|(_, h)| h.to_owned())
    }

    /// Where a proxy site is written: its route facts, whose first handler's
    /// paths are the user's when the user wrote the routes.
    pub(crate) fn site_at(&self, machine: &str, site: &str) -> Option<At> {
        let m = self.stack.machines.get(machine)?;
        let k = m.site_routes.iter().position(|r| r.site == site)?;
        Some(At {
            file: String::new(),
            ptr: format!(
                "/machines/{}/site_routes/{k}/handlers",
                crate::eval::pointer_escape(machine)
            ),
        })
    }

    /// Where a request from the internet to `url` lands: a proxy site and
    /// its route, else a public port of the machine with that address.
    pub(crate) fn reach_public(&self, url: &Url) -> Result<Reached<'a>, String> {
        if let Some((pname, site)) = self.sites_for(url.host, url.port).first() {
            return self.route(pname, site, url.path);
        }
        let served = |m: &crate::model::Machine| {
            m.listens.iter().any(|l| l.contains(url.port) && l.public)
                && self
                    .sites_for(url.host, 443)
                    .iter()
                    .any(|(p, _)| self.stack.machines.get(*p).is_some_and(|pm| std::ptr::eq(pm, m)))
        };
        // A public port on the machine that serves the host's sites (Synapse
        // terminating TLS on 8448 itself).
        for (mname, m) in &self.stack.machines {
            if served(m) {
                return self
                    .on_machine(mname, None, url.port)
                    .ok_or_else(|| format!("nothing on `{mname}` listens on port {}", url.port));
            }
        }
        Err(format!("no proxy site serves `{}:{}`", url.host, url.port))
    }

    /// The text of a bundle file at `path` as service `who` sees it.
    fn read_as(&self, who: Who, path: &str) -> Option<&'a str> {
        let container = self.is_container(who.machine, who.service).then_some(who.service);
        match self.place_in(who.machine, container, path) {
            super::Place::Bundle(p) => self.text(&p),
            _ => None,
        }
    }

    pub(crate) fn is_container(&self, machine: &str, service: &str) -> bool {
        self.services(machine).is_some_and(|s| s.contains_key(service))
    }

    /// An environment variable of a service: compose `environment` and
    /// `env_file`s for a container, `Environment=` and `EnvironmentFile=`
    /// for a native service. Later sources win, as they do at run time.
    fn env(&self, who: Who, name: &str) -> Option<(String, At)> {
        let m = self.stack.machines.get(who.machine)?;
        let mut found = None;
        let from_file = |bundle: String| -> Option<(String, At)> {
            let text = self.text(&bundle)?;
            text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
                let (k, v) = l.split_once('=')?;
                (k.trim() == name).then(|| {
                    (
                        env_value(v),
                        At {
                            file: bundle.clone(),
                            ptr: format!("/{}", crate::eval::pointer_escape(name)),
                        },
                    )
                })
            })
        };
        if let Some(svc) = self.services(who.machine).and_then(|s| s.get(who.service)) {
            let env_files: Vec<&str> = match svc.get("env_file") {
                Some(Value::String(f)) => vec![f.as_str()],
                Some(Value::Array(a)) => a
                    .iter()
                    .filter_map(|f| f.as_str().or_else(|| f.get("path")?.as_str()))
                    .collect(),
                _ => Vec::new(),
            };
            for f in env_files {
                if let Some(hit) = from_file(format!("{}/{}", who.machine, f.trim_start_matches("./"))) {
                    found = Some(hit);
                }
            }
            // `environment` wins over `env_file`. `$$` is compose's `$`.
            let compose = m
                .files
                .iter()
                .find(|(_, f)| f.format == crate::model::Format::Compose)
                .map(|(p, _)| format!("{}/{p}", who.machine));
            let at = |ptr: String| At {
                file: compose.clone().unwrap_or_default(),
                ptr,
            };
            let base = format!("/services/{}/environment", crate::eval::pointer_escape(who.service));
            match svc.get("environment") {
                Some(Value::Object(e)) => {
                    if let Some(v) = e.get(name).and_then(Value::as_str) {
                        found = Some((
                            v.replace("$$", "$"),
                            at(format!("{base}/{}", crate::eval::pointer_escape(name))),
                        ));
                    }
                }
                Some(Value::Array(a)) => {
                    for (i, e) in a.iter().enumerate() {
                        if let Some((k, v)) = e.as_str().and_then(|e| e.split_once('='))
                            && k == name
                        {
                            found = Some((v.replace("$$", "$"), at(format!("{base}/{i}"))));
                        }
                    }
                }
                _ => {}
            }
            return found;
        }
        // A native service: its unit's `Environment=` and `EnvironmentFile=`.
        let unit_path = format!("systemd/{}.service", who.service);
        let unit = m.files.get(&unit_path)?;
        let service = unit.content.get("Service")?;
        if let Some(file) = service.get("EnvironmentFile").and_then(Value::as_str) {
            let root = format!("{}/", m.deploy_root.trim_end_matches('/'));
            if let Some(rel) = file.trim_start_matches('-').strip_prefix(&root) {
                found = from_file(format!("{}/{rel}", who.machine));
            }
        }
        if let Some(v) = service.pointer(&format!("/Environment/{}", crate::eval::pointer_escape(name))) {
            let v = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            found = Some((
                v,
                At {
                    file: format!("{}/{unit_path}", who.machine),
                    ptr: format!("/Service/Environment/{}", crate::eval::pointer_escape(name)),
                },
            ));
        }
        found
    }

    /// The `.ncl` position behind a value read through a `Ref`.
    pub(crate) fn span_at(&self, at: &Option<At>) -> Option<Span> {
        let at = at.as_ref()?;
        // A fact of the lowered stack (no file): its own position.
        if at.file.is_empty() {
            return self.pos.at(&at.ptr).filter(|s| !s.in_primitive());
        }
        let (machine, path) = at.file.split_once('/')?;
        let base = crate::eval::file_ptr(machine, path);
        let mut p = format!("{base}/content{}", at.ptr);
        loop {
            if let Some(s) = self.pos.at(&p).filter(|s| !s.in_primitive()) {
                return Some(s);
            }
            match p.rfind('/') {
                Some(i) if p.len() > base.len() => p.truncate(i),
                _ => return None,
            }
        }
    }

    /// A finding about two values: the side in the user's files is primary.
    pub(crate) fn pair_at(
        &self,
        code: Code,
        message: String,
        a: (&Option<At>, &str),
        b: (&Option<At>, &str),
        help: impl Into<String>,
    ) -> Diagnostic {
        let (sa, sb) = (self.span_at(a.0), self.span_at(b.0));
        let mut d = Diagnostic::error(code, message);
        if sa.is_none()
            && sb.is_none()
            && let Some(at) = a.0.as_ref().or(b.0.as_ref())
        {
            d = d.with_path(at_path(at));
        }
        let in_user = |s: &Option<Span>| s.as_ref().is_some_and(Span::in_user);
        if !in_user(&sa) && in_user(&sb) {
            return d.with_label(sb, b.1).with_secondary(sa, a.1).with_help(help);
        }
        d.with_label(sa, a.1).with_secondary(sb, b.1).with_help(help)
    }

    /// Roles of the whole stack, with the machine each is on.
    pub(crate) fn roles(&self) -> impl Iterator<Item = (&'a str, &'a Role)> {
        self.stack
            .machines
            .iter()
            .flat_map(|(m, mach)| mach.roles.iter().map(move |r| (m.as_str(), r)))
    }

    /// Whether the service that `r` reached answers on its port with
    /// `needs`, from `caller`'s namespace, as its declared listeners say.
    /// Services that declare no listeners are taken at their word.
    pub(crate) fn listener_admits(&self, caller: Who, r: &Reached, needs: &[String]) -> Result<(), String> {
        let who = Who {
            machine: r.machine,
            service: &r.service,
        };
        let listeners: Vec<Listening> = self
            .roles()
            .filter(|(m, role)| *m == r.machine && role.service() == r.service)
            .filter_map(|(_, role)| match role {
                Role::Listener {
                    port, bind, resources, ..
                } => {
                    let (host, port) = listen_port(&self.eval(who, port)?.value)?;
                    let mut binds: Vec<String> = match bind.as_ref().and_then(|b| self.eval(who, b)) {
                        Some(Got {
                            value: Value::Array(a), ..
                        }) => a.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
                        Some(Got {
                            value: Value::String(s),
                            ..
                        }) => vec![s],
                        _ => Vec::new(),
                    };
                    if binds.is_empty()
                        && let Some(h) = host.filter(|h| !h.is_empty())
                    {
                        binds.push(h);
                    }
                    // No `resources`: what the listener serves is not known.
                    let names = resources.as_ref().map(|x| {
                        self.eval(who, x)
                            .and_then(|g| g.value.as_array().cloned())
                            .unwrap_or_default()
                            .iter()
                            .filter_map(|n| n.as_str().map(str::to_owned))
                            .collect::<Vec<String>>()
                    });
                    Some((port, binds, names))
                }
                _ => None,
            })
            .collect();
        if listeners.is_empty() {
            return Ok(());
        }
        let on_port: Vec<&Listening> = listeners.iter().filter(|(p, _, _)| *p == r.port).collect();
        if on_port.is_empty() {
            let mut have: Vec<String> = listeners.iter().map(|(p, _, _)| p.to_string()).collect();
            have.dedup();
            return Err(format!(
                "`{}` does not listen on port {} (it listens on {})",
                r.service,
                r.port,
                list(have.iter().map(String::as_str))
            ));
        }
        // Loopback is the caller's own namespace: the same container, or
        // the host for two native services of one machine.
        let same_namespace = !caller.machine.is_empty()
            && caller.machine == r.machine
            && (caller.service == r.service
                || (!self.is_container(caller.machine, caller.service) && !self.is_container(r.machine, &r.service)));
        let reachable: Vec<_> = on_port
            .iter()
            .filter(|(_, binds, _)| {
                same_namespace || binds.is_empty() || binds.iter().any(|b| !crate::model::is_loopback(b))
            })
            .collect();
        if reachable.is_empty() {
            let binds: Vec<&str> = on_port
                .iter()
                .flat_map(|(_, b, _)| b.iter().map(String::as_str))
                .collect();
            let inside = if self.is_container(r.machine, &r.service) {
                "inside its container"
            } else {
                "on its machine"
            };
            return Err(format!(
                "`{}` binds port {} to {} {inside}, which {} cannot reach",
                r.service,
                r.port,
                list(binds),
                caller.show()
            ));
        }
        let missing: Vec<&str> = needs
            .iter()
            .map(String::as_str)
            .filter(|n| {
                !reachable
                    .iter()
                    .any(|(_, _, names)| names.as_ref().is_none_or(|names| names.iter().any(|h| h == n)))
            })
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
}

/// A listener's port as its config writes it: a number, or `host:port`
/// (the host, brackets removed, is then its bind).
fn listen_port(value: &Value) -> Option<(Option<String>, u16)> {
    match value {
        Value::Number(n) => Some((None, u16::try_from(n.as_u64()?).ok()?)),
        Value::String(s) => match s.rsplit_once(':') {
            Some((h, p)) => Some((Some(h.trim_matches(['[', ']']).to_owned()), p.parse().ok()?)),
            None => Some((None, s.parse().ok()?)),
        },
        _ => None,
    }
}

/// A listener as its config says: port, bind addresses (none: every
/// address), and what it serves (`None`: not known).
type Listening = (u16, Vec<String>, Option<Vec<String>>);

fn at_path(at: &At) -> String {
    let (m, p) = at.file.split_once('/').unwrap_or((&at.file, ""));
    let d = super::dotted(&at.ptr);
    format!(
        "machines.{m}.files.\"{p}\".content{}{d}",
        if d.is_empty() { "" } else { "." }
    )
}

/// A URL as URL libraries serialise it: a bare origin gets its `/`.
fn serialised(url: &str) -> String {
    match url.split_once("://") {
        Some((_, rest)) if !rest.is_empty() && !rest.contains(['/', '?', '#']) => format!("{url}/"),
        _ => url.to_owned(),
    }
}

/// A URL as messages show it: a password in its user info is never shown.
pub(crate) fn shown_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rsplit_once('@') {
        Some((info, host)) => {
            let user = info.split_once(':').map_or(info, |(u, _)| u);
            let pw = if info.contains(':') { ":…" } else { "" };
            format!("{scheme}://{user}{pw}@{host}{}", &rest[authority_end..])
        }
        None => url.to_owned(),
    }
}

/// A value of an env file line: single quotes are literal, double quotes
/// are stripped, bare values end at ` #`.
pub(crate) fn env_value(v: &str) -> String {
    let v = v.trim();
    if let Some(inner) = v.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')) {
        return inner.to_owned();
    }
    if let Some(inner) = v.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
        return inner.replace("\\\"", "\"");
    }
    v.split(" #").next().unwrap_or(v).to_owned()
}

/// A relative URL reference resolved against a base, as URL libraries do
/// (RFC 3986 §5.2, without dot segments): a base without a trailing slash
/// loses its last segment.
pub(crate) fn join_url(base: &str, rel: &str) -> String {
    if rel.contains("://") {
        return rel.to_owned();
    }
    let start = base.find("://").map_or(0, |i| i + 3);
    let origin_end = base[start..].find('/').map_or(base.len(), |i| start + i);
    if let Some(abs) = rel.strip_prefix('/') {
        return format!("{}/{abs}", &base[..origin_end]);
    }
    match base[origin_end..].rfind('/') {
        None => format!("{base}/{rel}"),
        Some(i) => format!("{}{rel}", &base[..=origin_end + i]),
    }
}

pub(super) fn check(ix: &Index, out: &mut Vec<Diagnostic>) {
    assertions(ix, out);
    files_named(ix, out);
    public_urls(ix, out);
    lines(ix, out);
    routes(ix, out);
    endpoints(ix, out);
    shares(ix, out);
    oidc(ix, out);
}

/// Every URL a service calls reaches the service it is for, on a listener
/// that admits the caller and serves what it needs.
fn endpoints(ix: &Index, out: &mut Vec<Diagnostic>) {
    for (machine, role) in ix.roles() {
        let Role::Endpoint {
            service,
            what,
            url,
            target,
            target_machine,
            needs,
            public,
            code,
            help: module_help,
            ..
        } = role
        else {
            continue;
        };
        let who = Who { machine, service };
        let Some(got) = ix.eval(who, url) else { continue };
        let tm = target_machine.as_deref().unwrap_or(machine);
        let Some(raw) = got.str() else { continue };
        let text = &shown_url(raw);
        let caller = if *public { Who::INTERNET } else { who };
        let mut landed = None;
        let why = match Url::parse(raw) {
            None => Some(format!("`{text}` is not a URL")),
            Some(u) => match if *public {
                ix.reach_public(&u)
            } else {
                ix.reach_as(who, &u)
            } {
                Err(why) => Some(why),
                Ok(r) if r.machine != tm || r.service != *target => {
                    Some(format!("it reaches `{}` on `{}`, not `{target}`", r.service, r.machine))
                }
                Ok(r) => {
                    landed = Some(r.port);
                    ix.listener_admits(caller, &r, needs).err()
                }
            },
        };
        let Some(why) = why else { continue };
        // The listener it lands on, else where the listeners are.
        let theirs = landed
            .and_then(|p| bind_at(ix, tm, target, p))
            .or_else(|| listener_at(ix, tm, target));
        let serving = if needs.is_empty() {
            String::new()
        } else {
            format!(" serving {}", list(needs.iter().map(String::as_str)))
        };
        let help = if *public {
            format!("serve the URL from a proxy site that forwards it to a listener of `{target}`{serving}")
        } else {
            format!(
                "point the URL at `{target}` as {} reaches it: from a container of the same machine, its compose service name and a port it listens on{serving}; from elsewhere, a proxy site, or its machine's address on a shared network with a port it publishes and opens to the caller (`firewall.allow`)",
                who.show()
            )
        };
        let code = code.as_deref().and_then(Code::parse).unwrap_or(Code::Unreachable);
        let mut d = ix.pair_at(
            code,
            format!(
                "{what} `{text}` ({}) does not reach `{target}` on `{tm}`: {why}",
                caller.show()
            ),
            (&got.at, "this URL"),
            (&theirs, "its listeners"),
            module_help.clone().unwrap_or(help),
        );
        // From the internet, the site the request enters by is where the
        // user routes it: its routes as written, when the user wrote them.
        if *public
            && let Some(u) = Url::parse(raw)
            && let Some((pname, site)) = ix.sites_for(u.host, u.port).first()
            && let Some(at) = ix.site_at(pname, site)
        {
            // The handler the request path is matched by, as written.
            let i = ix
                .handler(pname, site, u.path)
                .ok()
                .and_then(|(r, h)| r.handlers.iter().position(|x| std::ptr::eq(x, h)))
                .unwrap_or(0);
            let routes = At {
                file: String::new(),
                ptr: format!("{}/{i}/match/paths/0", at.ptr),
            };
            match ix.span_at(&Some(routes)).filter(Span::in_user) {
                Some(s) => d = d.with_primary(Some(s), "these routes"),
                None => d = d.with_secondary(ix.span_at(&Some(at)), "this site"),
            }
        }
        out.push(d);
    }
}

/// Files a config names exist where its process looks.
fn files_named(ix: &Index, out: &mut Vec<Diagnostic>) {
    for (machine, r) in ix.roles() {
        let Role::FileNamed { service, path, .. } = r else {
            continue;
        };
        let who = Who { machine, service };
        let Some(g) = ix.eval(who, path) else { continue };
        let Some(p) = g.str() else { continue };
        let container = ix.is_container(machine, service).then_some(service.as_str());
        let why = match ix.place_in(machine, container, p) {
            super::Place::Bundle(b) if ix.files.contains_key(&b) => continue,
            // In a named volume or outside the bundle: made at run time.
            super::Place::Runtime => continue,
            super::Place::Bundle(b) => format!("the bundle has no `{b}`"),
            super::Place::Unmounted => match container {
                Some(s) => format!("no volume of `{s}` contains it"),
                None => "it is outside the machine's bundle".into(),
            },
        };
        let file =
            g.at.as_ref()
                .map(|a| format!("`{}` (`{}`) names ", a.file, super::dotted(&a.ptr)))
                .unwrap_or_default();
        out.push(ix.pair_at(
            Code::MissingFile,
            format!("{file}`{p}`, which {} cannot read: {why}", who.show()),
            (&g.at, "this path"),
            (&None, ""),
            "name a file the stack emits, as the service sees it through its volumes",
        ));
    }
}

/// URLs clients and other servers are given are https, and served by a
/// proxy site with a publicly trusted certificate.
fn public_urls(ix: &Index, out: &mut Vec<Diagnostic>) {
    for (machine, r) in ix.roles() {
        let Role::PublicUrl { service, url, ours, .. } = r else {
            continue;
        };
        let who = Who { machine, service };
        let Some(g) = ix.eval(who, url) else { continue };
        let Some(text) = g.str() else { continue };
        let shown = shown_url(text);
        let what = g.at.as_ref().map_or_else(
            || "a public URL".to_owned(),
            |a| format!("`{}` (`{}`)", a.file, super::dotted(&a.ptr)),
        );
        let Some(u) = Url::parse(text).filter(|u| u.scheme == "https") else {
            out.push(ix.pair_at(
                Code::NoTlsSite,
                format!("{what} is `{shown}`, which is not an `https://` URL"),
                (&g.at, "not https"),
                (&None, ""),
                "public URLs are served over TLS by the proxy: write `https://<host>/`",
            ));
            continue;
        };
        let sites = ix.sites_for(u.host, u.port);
        let why = match sites.first() {
            None if !ours => continue,
            None => format!(
                "no proxy site serves `{}`",
                if u.port == 443 {
                    u.host.to_owned()
                } else {
                    format!("{}:{}", u.host, u.port)
                }
            ),
            Some((pname, site)) => {
                if ix.site_routes(pname, site).is_none_or(|r| r.trusted_tls) {
                    continue;
                }
                format!("site `{site}` on `{pname}` uses a local CA, which clients and other servers do not trust")
            }
        };
        out.push(ix.pair_at(
            Code::NoTlsSite,
            format!("{what} is `{shown}`, but {why}"),
            (&g.at, "this URL"),
            (&None, ""),
            "add a proxy site for the host with a public certificate (`tls = 'acme`), or use a host the proxy serves",
        ));
    }
}

/// Line rules of a file, on its bytes; only line numbers are shown.
fn lines(ix: &Index, out: &mut Vec<Diagnostic>) {
    for (machine, r) in ix.roles() {
        let Role::Lines {
            service,
            what,
            path,
            must,
            must_not,
            help,
            code,
            ..
        } = r
        else {
            continue;
        };
        let who = Who { machine, service };
        let Some(g) = ix.eval(who, path) else { continue };
        let Some(p) = g.str() else { continue };
        let container = ix.is_container(machine, service).then_some(service.as_str());
        let super::Place::Bundle(file) = ix.place_in(machine, container, p) else {
            continue;
        };
        let Some(text) = ix.text(&file) else { continue };
        let (Ok(must), Ok(not)) = (
            regex::Regex::new(must),
            must_not.as_deref().map(regex::Regex::new).transpose(),
        ) else {
            continue;
        };
        let bad: Vec<String> = text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .filter(|(_, l)| !must.is_match(l) || not.as_ref().is_some_and(|n| n.is_match(l)))
            .map(|(n, _)| (n + 1).to_string())
            .collect();
        if bad.is_empty() {
            continue;
        }
        let code = code.as_deref().and_then(Code::parse).unwrap_or(Code::StartupRule);
        out.push(
            Diagnostic::error(
                code,
                format!(
                    "{what} `{file}` ({}) breaks its format on line {}",
                    who.show(),
                    bad.join(", ")
                ),
            )
            .with_label(ix.file_span(&file), "this file")
            .with_secondary(ix.span_at(&g.at), "read from here")
            .with_help(help.clone()),
        );
    }
}

/// Start-up rules the modules found broken, pointed at the value.
fn assertions(ix: &Index, out: &mut Vec<Diagnostic>) {
    for (machine, m) in &ix.stack.machines {
        for (i, a) in m.assertions.iter().enumerate() {
            let who = Who {
                machine,
                service: &a.service,
            };
            let at = a.at.as_ref().and_then(|r| ix.eval(who, r)).and_then(|g| g.at);
            // The user's own option value, when the written one was computed.
            let origin = a
                .origin
                .as_ref()
                .and_then(|_| {
                    ix.pos.at(&format!(
                        "/machines/{}/assertions/{i}/origin",
                        crate::eval::pointer_escape(machine)
                    ))
                })
                .filter(Span::in_user);
            let span = origin.or_else(|| ix.span_at(&at));
            let code = a.code.as_deref().and_then(Code::parse).unwrap_or(Code::StartupRule);
            let mut d = Diagnostic::error(code, format!("{} ({})", a.message, who.show()));
            if span.is_none()
                && let Some(at) = &at
            {
                d = d.with_path(at_path(at));
            }
            out.push(d.with_label(span, "here").with_help(a.help.clone()));
        }
    }
}

/// Every proxy route lands on a listener that admits the proxy: a port a
/// container publishes or a proxy forwards to must not be bound to the
/// container's own loopback.
fn routes(ix: &Index, out: &mut Vec<Diagnostic>) {
    for (pname, p) in &ix.stack.machines {
        for route in &p.routes {
            let Some((tname, t)) = ix.stack.machines.get_key_value(&route.machine) else {
                continue;
            };
            let Some(listen) = t
                .listens
                .iter()
                .find(|l| l.service == route.service && l.name == route.port)
            else {
                continue;
            };
            let Some(reached) = ix.on_machine(tname, Some(&listen.bind), listen.port) else {
                continue;
            };
            let proxy = Who {
                machine: pname,
                service: "",
            };
            if let Err(why) = ix.listener_admits(proxy, &reached, &[]) {
                let at = listener_at(ix, tname, &reached.service);
                let bind = bind_at(ix, tname, &reached.service, reached.port).or(at);
                let d = Diagnostic::error(
                    Code::Unreachable,
                    format!(
                        "site `{}` of `{pname}` forwards to `{}` on `{tname}`, which it cannot reach: {why}",
                        route.site, reached.service
                    ),
                )
                .with_label(ix.span_at(&bind), "bound here")
                .with_help(format!(
                    "bind the listener of `{}` to every address of its container (`0.0.0.0` or `::`): loopback inside a container is the container's own",
                    reached.service
                ));
                out.push(d);
            }
        }
    }
}

/// Where the bind of a service's listener on `port` is written.
fn bind_at(ix: &Index, machine: &str, service: &str, port: u16) -> Option<At> {
    let who = Who { machine, service };
    ix.roles()
        .filter(|(m, r)| *m == machine && r.service() == service)
        .find_map(|(_, r)| match r {
            Role::Listener { port: p, bind, .. } => {
                let g = ix.eval(who, p)?;
                let (_, n) = listen_port(&g.value)?;
                (n == port).then(|| bind.as_ref().and_then(|b| ix.eval(who, b)).and_then(|b| b.at).or(g.at))?
            }
            _ => None,
        })
}

/// Where a service's listeners are written (its first listener's port).
fn listener_at(ix: &Index, machine: &str, service: &str) -> Option<At> {
    ix.roles()
        .filter(|(m, r)| *m == machine && r.service() == service)
        .find_map(|(_, r)| match r {
            Role::Listener { port, .. } => ix.eval(Who { machine, service }, port).and_then(|g| g.at),
            _ => None,
        })
}

/// Values two services must hold alike.
fn shares(ix: &Index, out: &mut Vec<Diagnostic>) {
    for (machine, role) in ix.roles() {
        let Role::Share {
            service,
            what,
            mine,
            target,
            target_machine,
            theirs,
            secret,
            code,
            compare,
            help: module_help,
            ..
        } = role
        else {
            continue;
        };
        let tm = target_machine.as_deref().unwrap_or(machine);
        let a = Who { machine, service };
        let b = Who {
            machine: tm,
            service: target.as_deref().unwrap_or(service),
        };
        let (Some(x), Some(y)) = (ix.eval(a, mine), ix.eval(b, theirs)) else {
            continue;
        };
        let same = match (compare.as_deref(), x.str(), y.str()) {
            (Some("base"), Some(p), Some(q)) => super::same_base(p, q),
            // `mine` as URL libraries write it, `theirs` as written.
            (Some("url"), Some(p), Some(q)) => serialised(p) == q,
            _ => x.value == y.value,
        };
        if same {
            continue;
        }
        // The other side: a service, or the file that holds the value.
        let b_name = match (target, &y.at) {
            (None, Some(at)) if at.file != x.at.as_ref().map_or(String::new(), |a| a.file.clone()) => {
                format!("`{}`", at.file)
            }
            // A fact of the stack itself (a machine's address).
            (None, None) => "the stack".to_owned(),
            _ => b.show(),
        };
        let b_label = match target {
            Some(t) => format!("{t}'s value"),
            None => "the other value".to_owned(),
        };
        let shown = |g: &Got| match (secret, g.str()) {
            (true, Some(s)) => ix.secret_label(s),
            (true, None) => "a value".to_owned(),
            (false, _) => format!("`{}`", g.text().unwrap_or_else(|| g.value.to_string())),
        };
        let code = code.as_deref().and_then(Code::parse).unwrap_or(Code::ShareMismatch);
        out.push(
            ix.pair_at(
                code,
                format!(
                    "{} and {b_name} hold different values of {what}: {} and {}",
                    a.show(),
                    shown(&x),
                    shown(&y)
                ),
                (&x.at, &format!("{}'s value", a.service)),
                (&y.at, &b_label),
                module_help.clone().unwrap_or_else(|| {
                    format!("write {what} to both from one value (a module option or a stackc secret)")
                }),
            ),
        );
    }
}

/// One relying party, read.
struct Rp<'a> {
    who: Who<'a>,
    what: &'a str,
    client_id: Got,
    issuer: Option<Got>,
    callback: Got,
    method: Option<Got>,
    secret: Option<Got>,
    required: Vec<(&'a str, Option<At>)>,
    urls: Vec<Got>,
    scopes: Option<Got>,
}

/// Scopes as a list: an array of names, or names separated by spaces.
fn scope_list(g: &Got) -> Vec<String> {
    match &g.value {
        Value::Array(a) => a.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
        Value::String(s) => s
            .split([' ', ','])
            .filter(|x| !x.is_empty())
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

/// A provider: the service, and its clients read.
struct Op<'a> {
    who: Who<'a>,
    served_path: String,
    /// Endpoint paths below the issuer (empty: not said).
    paths: Vec<String>,
    /// Each client, its id, and the pointer of its `origin` fact.
    clients: Vec<(&'a ProviderClient, Option<String>, String)>,
}

fn oidc(ix: &Index, out: &mut Vec<Diagnostic>) {
    let ops: Vec<Op> = ix
        .roles()
        .filter_map(|(machine, r)| match r {
            Role::OidcProvider {
                service,
                served_path,
                clients,
                paths,
                ..
            } => {
                let who = Who { machine, service };
                Some(Op {
                    who,
                    served_path: served_path
                        .as_ref()
                        .and_then(|p| ix.eval(who, p))
                        .and_then(|g| g.text())
                        .unwrap_or_default(),
                    paths: paths.clone(),
                    clients: clients
                        .iter()
                        .enumerate()
                        .map(|(j, c)| {
                            let ri = ix.stack.machines[machine]
                                .roles
                                .iter()
                                .position(|x| std::ptr::eq(x, r))
                                .unwrap_or_default();
                            let origin = format!(
                                "/machines/{}/roles/{ri}/clients/{j}/origin",
                                crate::eval::pointer_escape(machine)
                            );
                            (c, ix.eval(who, &c.id).and_then(|g| g.text()), origin)
                        })
                        .collect(),
                })
            }
            _ => None,
        })
        .collect();
    for (machine, r) in ix.roles() {
        let Role::OidcClient {
            service,
            what,
            client_id,
            issuer,
            provider_urls,
            callback,
            secret,
            auth_method,
            required_claims,
            scopes,
            ..
        } = r
        else {
            continue;
        };
        let who = Who { machine, service };
        let (Some(client_id), Some(callback)) = (ix.eval(who, client_id), ix.eval(who, callback)) else {
            continue;
        };
        let rp = Rp {
            who,
            what,
            client_id,
            issuer: issuer.as_ref().and_then(|i| ix.eval(who, i)),
            callback,
            method: auth_method.as_ref().and_then(|m| ix.eval(who, m)),
            secret: secret.as_ref().and_then(|s| ix.eval(who, s)),
            required: required_claims
                .iter()
                .map(|c| (c.claim.as_str(), ix.eval(who, &c.at).and_then(|g| g.at)))
                .collect(),
            urls: provider_urls.iter().filter_map(|u| ix.eval(who, u)).collect(),
            scopes: scopes.as_ref().and_then(|r| ix.eval(who, r)),
        };
        relying_party(ix, &ops, &rp, out);
    }
}

fn relying_party(ix: &Index, ops: &[Op], rp: &Rp, out: &mut Vec<Diagnostic>) {
    let cid = rp.client_id.text().unwrap_or_default();
    let party = format!("{} (client `{cid}`, {})", rp.what, rp.who.show());
    // The provider the relying party talks to: the one its URLs reach.
    let urls: Vec<(&Got, String, Result<Reached, String>)> = rp
        .issuer
        .iter()
        .chain(&rp.urls)
        .filter_map(|g| {
            let raw = g.str()?;
            let text = shown_url(raw);
            let r = Url::parse(raw)
                .ok_or_else(|| format!("`{text}` is not a URL"))
                .and_then(|u| ix.reach_as(rp.who, &u));
            Some((g, text, r))
        })
        .collect();
    let op_of = |r: &Reached| {
        ops.iter()
            .find(|o| o.who.machine == r.machine && o.who.service == r.service)
    };
    let reached: Option<&Op> = urls.iter().find_map(|(_, _, r)| r.as_ref().ok().and_then(op_of));
    for (g, text, r) in &urls {
        let why = match (r, reached) {
            (Ok(r), Some(op)) => match op_of(r) {
                Some(o) if std::ptr::eq(o, op) => match endpoint_problem(o, g.str().unwrap_or_default()) {
                    None => continue,
                    Some(why) => why,
                },
                Some(o) => format!("it reaches {}, another provider than {}", o.who.show(), op.who.show()),
                None => format!("it reaches `{}` on `{}`, not {}", r.service, r.machine, op.who.show()),
            },
            (Ok(r), None) => format!(
                "it reaches `{}` on `{}`, which is not an OpenID Connect provider of the stack",
                r.service, r.machine
            ),
            (Err(why), Some(op)) => format!("{why}; its other URLs reach {}", op.who.show()),
            // A provider outside the stack (a public one) is its own business,
            // unless the host is one letter off a site of the stack.
            (Err(_), None) => match g.str().and_then(Url::parse).and_then(|u| ix.near_site(u.host)) {
                Some(near) => format!("no site of the stack serves its host; did you mean `{near}`?"),
                None => continue,
            },
        };
        out.push(ix.pair_at(
            Code::Unreachable,
            format!("the {party} calls its provider at `{text}`, which does not reach it: {why}"),
            (&g.at, "this URL"),
            (&rp.client_id.at, "the client"),
            "use the URLs of the proxy site that serves the provider (its issuer and the endpoints its discovery document lists)",
        ));
    }
    // URLs that all lead outside the stack: the provider is not ours to pair
    // (a host one letter off a site was reported above).
    let external = reached.is_none() && !urls.is_empty();
    if external
        && urls.iter().any(|(g, _, _)| {
            g.str()
                .and_then(Url::parse)
                .and_then(|u| ix.near_site(u.host))
                .is_some()
        })
    {
        return;
    }
    let with_id: Vec<(&Op, &ProviderClient, &str)> = ops
        .iter()
        .filter(|o| !external && reached.is_none_or(|p| std::ptr::eq(p, *o)))
        .flat_map(|o| {
            o.clients
                .iter()
                .filter(|(_, id, _)| id.as_deref() == Some(cid.as_str()))
                .map(move |(c, _, origin)| (o, *c, origin.as_str()))
        })
        .collect();
    if with_id.is_empty() {
        match reached {
            Some(op) => out.push(ix.pair_at(
                Code::OidcUnpaired,
                format!(
                    "the {party} logs in through {}, which has no client `{cid}` (its clients: {})",
                    op.who.show(),
                    list(op.clients.iter().filter_map(|(_, id, _)| id.as_deref()))
                ),
                (&rp.client_id.at, "this client id"),
                (&op.clients.first().and_then(|(c, _, _)| ix.eval(op.who, &c.at)).and_then(|g| g.at), "the provider's clients"),
                "register the client at the provider (its module's `clients`), with the relying party's redirect URI",
            )),
            None => {
                let d = Diagnostic::warning(
                    Code::OidcExternal,
                    format!(
                        "the {party} names no provider of the stack: its client cannot be checked{}",
                        rp.issuer
                            .as_ref()
                            .and_then(|i| i.str())
                            .map(|i| format!(" (issuer `{i}`)"))
                            .unwrap_or_default()
                    ),
                )
                .with_label(ix.span_at(&rp.client_id.at), "this client")
                .with_help("nothing to do for a provider outside the stack; for one inside it, give the relying party the provider's issuer");
                out.push(d);
            }
        }
        return;
    }
    for (op, client, origin) in with_id {
        pair(ix, rp, op, client, origin, &party, out);
    }
}

/// Why a URL a relying party calls is no endpoint of its provider: it must
/// be https (a proxy site), and its path one the provider serves below its
/// issuer, when the provider says which.
fn endpoint_problem(op: &Op, url: &str) -> Option<String> {
    let u = Url::parse(url)?;
    if u.scheme != "https" {
        return Some(format!(
            "`{}` is not https: the provider is served by a TLS site",
            shown_url(url)
        ));
    }
    if op.paths.is_empty() {
        return None;
    }
    let base = op.served_path.trim_end_matches('/');
    let rel = u.path.strip_prefix(base).unwrap_or(u.path);
    let rel = if rel.is_empty() { "/" } else { rel };
    // The issuer itself is fine.
    if rel == "/" || op.paths.iter().any(|p| p == rel) {
        return None;
    }
    let near = op
        .paths
        .iter()
        .min_by_key(|p| strsim::levenshtein(p, rel))
        .map(|p| format!("; did you mean `{base}{p}`?"))
        .unwrap_or_default();
    Some(format!("{} serves no endpoint `{}`{near}", op.who.show(), u.path))
}

fn pair(ix: &Index, rp: &Rp, op: &Op, client: &ProviderClient, origin: &str, party: &str, out: &mut Vec<Diagnostic>) {
    let cid = rp.client_id.text().unwrap_or_default();
    let op_client = format!("the client `{cid}` of {}", op.who.show());
    // A value the module computed points into the stdlib; the option the
    // user gave for it, when there is one, is the better label.
    let ev = |r: &Ref, option: &str| {
        ix.eval(op.who, r).map(|mut g| {
            let user = |a: &Option<At>| ix.span_at(a).is_some_and(|s| s.in_user());
            let theirs = Some(At {
                file: String::new(),
                ptr: format!("{origin}/{option}"),
            });
            if !user(&g.at) && client.origin.is_some() && user(&theirs) {
                g.at = theirs;
            }
            g
        })
    };
    // F1: the callback the relying party sends must be registered exactly.
    let callback = rp.callback.text().unwrap_or_default();
    let uris = ev(&client.redirect_uris, "redirect_uris");
    let listed: Vec<&str> = uris
        .as_ref()
        .and_then(|g| g.value.as_array())
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if !listed.contains(&callback.as_str()) {
        out.push(ix.pair_at(
            Code::OidcRedirect,
            format!(
                "{op_client} does not allow the callback `{callback}` that the {party} sends; its redirect URIs: {}",
                list(listed.iter().copied())
            ),
            (&uris.as_ref().and_then(|g| g.at.clone()), "redirect URIs without the callback"),
            (&rp.callback.at, "the callback is made from this"),
            format!("add `{callback}` to the client's redirect URIs, or set the relying party's base URL to the one the client expects"),
        ));
    }
    // F3: one token endpoint authentication method on both sides.
    let op_method = ev(&client.auth_method, "token_endpoint_auth_method");
    if let (Some(m), Some(om)) = (&rp.method, &op_method)
        && m.value != om.value
    {
        let (a, b) = (m.text().unwrap_or_default(), om.text().unwrap_or_default());
        out.push(ix.pair_at(
            Code::OidcAuthMethod,
            format!("the {party} authenticates with `{a}`, but {op_client} expects `{b}`"),
            (&m.at, &format!("`{a}`")),
            (&om.at, &format!("`{b}`")),
            "write one method to both sides, from one option",
        ));
    }
    // F4: the digest the provider holds must verify what the relying party sends.
    let uses_secret = op_method
        .as_ref()
        .and_then(Got::str)
        .is_none_or(|m| matches!(m, "client_secret_basic" | "client_secret_post"));
    let digest = client.secret.as_ref().and_then(|r| ev(r, "secret"));
    if let (Some(digest), Some(plain), true) = (&digest, &rp.secret, uses_secret)
        && let (Some(d), Some(p)) = (digest.str(), plain.str())
        && let Some(why) = digest_mismatch(ix, d, p)
    {
        out.push(ix.pair_at(
            Code::OidcSecret,
            format!("{op_client} holds a digest of another secret than the {party} sends: {why}"),
            (&digest.at, "this digest"),
            (&plain.at, "the secret sent"),
            "derive both from one secret: its digest (`stackc.secret.pbkdf2_sha512`) for the provider, its value or file for the relying party",
        ));
    }
    // F9: the issuer the relying party expects must be one the provider answers with.
    let served = ix.issuers(op.who, &op.served_path);
    if let Some(issuer) = rp.issuer.as_ref()
        && let Some(i) = issuer.str()
        && !served.is_empty()
        && !served.iter().any(|s| s == i)
    {
        let slash = served.iter().any(|s| super::same_base(s, i));
        out.push(ix.pair_at(
            Code::IssuerMismatch,
            format!(
                "the {party} expects issuer `{i}`, but {} answers as {}{}",
                op.who.show(),
                list(served.iter().map(String::as_str)),
                if slash { " (the trailing slash differs)" } else { "" }
            ),
            (&issuer.at, "the expected issuer"),
            (&ev(&client.at, "").and_then(|g| g.at), "the provider's client"),
            "issuers are compared as exact strings: write the URL of the proxy site that serves the provider, without a trailing slash",
        ));
    }
    // Scopes it requests must be ones the client may request (`openid` is
    // implied by some relying parties, and always allowed to be asked for).
    if let (Some(want), Some(allowed)) = (&rp.scopes, client.scopes.as_ref().and_then(|r| ev(r, "scopes"))) {
        let may = scope_list(&allowed);
        let missing: Vec<String> = scope_list(want).into_iter().filter(|s| !may.contains(s)).collect();
        if !missing.is_empty() {
            out.push(ix.pair_at(
                Code::OidcScope,
                format!(
                    "the {party} requests {}, which {op_client} does not allow (it allows {})",
                    list(missing.iter().map(String::as_str)),
                    list(may.iter().map(String::as_str))
                ),
                (&want.at, "the scopes requested"),
                (&allowed.at, "the scopes allowed"),
                format!(
                    "add {} to the client's scopes, or stop requesting them",
                    list(missing.iter().map(String::as_str))
                ),
            ));
        }
    }
    // F7: claims the relying party requires must be in the ID token.
    if !rp.required.is_empty() {
        let in_token = client.id_token_claims.as_ref().and_then(|r| ev(r, "id_token_claims"));
        let names: Vec<&str> = in_token
            .as_ref()
            .and_then(|g| g.value.as_array())
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let where_ = in_token
            .as_ref()
            .and_then(|g| g.at.clone())
            .or_else(|| ev(&client.at, "").and_then(|g| g.at));
        for (claim, at) in &rp.required {
            if ALWAYS_IN_ID_TOKEN.contains(claim) || names.contains(claim) {
                continue;
            }
            out.push(ix.pair_at(
                Code::MissingClaim,
                format!(
                    "the {party} requires claim `{claim}` from the ID token, but {op_client} does not put it there (ID token claims: {})",
                    list(names.iter().copied())
                ),
                (&where_, "ID token claims"),
                (at, &format!("requires `{claim}`")),
                format!("add `{claim}` to the client's ID token claims, or let the relying party read userinfo"),
            ));
        }
    }
}

/// Claims every ID token carries.
const ALWAYS_IN_ID_TOKEN: &[&str] = &[
    "sub",
    "iss",
    "aud",
    "exp",
    "iat",
    "auth_time",
    "nonce",
    "amr",
    "azp",
    "acr",
];

/// Why a digest does not verify a plaintext; `None` if it does, or if the
/// digest is of a kind stackc cannot check (said in the docs).
fn digest_mismatch(ix: &Index, digest: &str, plain: &str) -> Option<String> {
    let plain_name = || ix.secret_label(plain);
    if let Some(name) = ix.secrets.digests.get(digest) {
        let ok = ix.secrets.values.get(name).is_some_and(|v| v == plain);
        return (!ok).then(|| {
            format!(
                "the digest is of secret `{name}`, the relying party sends {}",
                plain_name()
            )
        });
    }
    if let Some(p) = digest.strip_prefix("$plaintext$") {
        return (p != plain).then(|| format!("`$plaintext$` value differs from {}", plain_name()));
    }
    match pbkdf2_sha512_verifies(digest, plain.as_bytes()) {
        Some(false) => Some(format!("the pbkdf2-sha512 digest does not verify {}", plain_name())),
        Some(true) => None,
        None if !digest.starts_with('$') => {
            (digest != plain).then(|| format!("the plaintext value differs from {}", plain_name()))
        }
        None => None,
    }
}

impl Index<'_> {
    /// The issuers a provider answers with: `https://<site><path>` for every
    /// proxy site that reaches it.
    fn issuers(&self, op: Who, path: &str) -> Vec<String> {
        let path = path.trim_end_matches('/');
        let mut out = Vec::new();
        for (pname, p) in &self.stack.machines {
            for site in &p.sites {
                let reached = self.route(pname, site, &format!("{path}/"));
                if reached.is_ok_and(|r| r.machine == op.machine && r.service == op.service) {
                    let (host, port) = crate::check::split_site(site);
                    let port = port
                        .filter(|p| *p != "443")
                        .map(|p| format!(":{p}"))
                        .unwrap_or_default();
                    out.push(format!("https://{host}{port}{path}"));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_like_a_url() {
        assert_eq!(
            join_url("https://m.example/", "upstream/callback/X"),
            "https://m.example/upstream/callback/X"
        );
        assert_eq!(
            join_url("https://m.example", "upstream/callback/X"),
            "https://m.example/upstream/callback/X"
        );
        assert_eq!(join_url("https://e.org/mas/", "a"), "https://e.org/mas/a");
        assert_eq!(join_url("https://e.org/mas", "a"), "https://e.org/a");
        assert_eq!(join_url("https://e.org/x/y", "/a"), "https://e.org/a");
        assert_eq!(join_url("https://e.org/x/", "https://o.org/b"), "https://o.org/b");
    }

    #[test]
    fn env_file_values() {
        assert_eq!(env_value(" 'a b' "), "a b");
        assert_eq!(env_value("\"x\\\"y\""), "x\"y");
        assert_eq!(env_value("v # note"), "v");
    }
}
