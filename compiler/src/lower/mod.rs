//! `lower`: the compiler's half of lowering, for output that is the same
//! function of the checked options in every stack. The stdlib checks the
//! options against their contracts and derives the facts the checks read;
//! here, from those:
//!
//! - every native service's files, and the user's services' listens and
//!   units (`native.rs`);
//! - every machine's nftables ruleset, its fallback and their unit, the
//!   ports other machines reach and the openings (`firewall.rs`, with
//!   `network.rs`);
//! - the block of every site of a proxy whose module leaves them to the
//!   compiler, its route facts and handlers (`proxy.rs`; the handlers are
//!   read back from the block, `site_handlers`).
//!
//! Nickel's interpreter spends microseconds on every operation; building
//! this for each service of a large stack was most of its evaluation
//! (bench/NOTES.md). Whatever is written here gets the source positions of
//! what it comes from (`Locs` aliases): a diagnostic about a unit points at
//! the option in the user's file, one about a route at its directive.

mod firewall;
mod native;
mod network;
mod proxy;

use serde_json::Value;

use crate::diag::{Code, Diagnostic, Span};
use crate::eval::{Loc, Locs, file_ptr, pointer_escape};
use crate::model::{FileSpec, Machine, Protocol, Stack, Then};

/// One file written here, and where its values come from: (pointer below
/// what it is written from, pointer below the file's content) pairs.
type Lowered = (String, FileSpec, Vec<(String, String)>);

/// What writes a file, for messages, and where it was written.
#[derive(Clone)]
struct Writer {
    part: Part,
    ptr: String,
}

#[derive(Clone, PartialEq)]
enum Part {
    /// A native service: the user's, or one a module runs (`by_module`).
    Service {
        name: String,
        by_module: bool,
    },
    Firewall,
}

impl Writer {
    fn what(&self) -> String {
        match &self.part {
            Part::Service { name, .. } => format!("native service `{name}`"),
            Part::Firewall => "its firewall".into(),
        }
    }
}

/// Every part, in order, then the overrides merged on the result. A file
/// that two parts of a machine write is SC0215, once for each later
/// writer, naming both.
pub fn lower(stack: &mut Stack, locs: &mut Locs) -> Result<(), Vec<Diagnostic>> {
    let mut out = Vec::new();
    // Before the native services are lowered: upstreams name their ports.
    proxy::sites(stack, locs);
    for (mname, m) in &mut stack.machines {
        native::facts(mname, m, locs);
    }
    // Ports other machines reach read every machine's routes and roles;
    // openings, every machine's addresses and this one's listens.
    let mut incoming = firewall::incoming(stack);
    let derived: Vec<_> = stack
        .machines
        .iter()
        .map(|(mname, m)| {
            (
                incoming.remove(mname.as_str()).unwrap_or_default(),
                firewall::openings(stack, mname, m),
            )
        })
        .collect();
    for ((mname, m), (incoming, openings)) in stack.machines.iter_mut().zip(derived) {
        if let Some(fw) = &mut m.firewall {
            fw.incoming = incoming;
        }
        let mp = format!("/machines/{}", pointer_escape(mname));
        for (i, (opening, record, source)) in openings.into_iter().enumerate() {
            let at = format!("{mp}/openings/{i}");
            copy_loc(locs, &format!("{mp}{record}"), &at);
            copy_loc(locs, &format!("{mp}{source}"), &format!("{at}/source"));
            m.openings.push(opening);
        }
    }
    // The rulesets read every machine's addresses: computed before any is written.
    let rulesets: Vec<Vec<(String, FileSpec)>> = stack
        .machines
        .iter()
        .map(|(mname, m)| match &m.firewall {
            Some(fw) => firewall::files(stack, mname, &m.deploy_root, &m.listens, fw),
            None => Vec::new(),
        })
        .collect();
    for ((mname, m), ruleset) in stack.machines.iter_mut().zip(rulesets) {
        let mp = format!("/machines/{}", pointer_escape(mname));
        let mut written: Vec<(String, Writer)> = Vec::new();
        let user = std::mem::take(&mut m.native);
        let modules = std::mem::take(&mut m.module_native);
        for (field, services) in [("native", user), ("module_native", modules)] {
            for (sname, svc) in services {
                let files = native::files_of(&sname, &svc, &m.deploy_root);
                let writer = Writer {
                    ptr: format!("{mp}/{field}/{}", pointer_escape(&sname)),
                    part: Part::Service {
                        name: sname,
                        by_module: field == "module_native",
                    },
                };
                place(m, mname, writer, files, &mut written, locs, &mut out);
            }
        }
        if m.firewall.take().is_some() {
            let writer = Writer {
                part: Part::Firewall,
                ptr: format!("{mp}/firewall/options"),
            };
            let files = ruleset.into_iter().map(|(p, f)| (p, f, Vec::new())).collect();
            place(m, mname, writer, files, &mut written, locs, &mut out);
        }
    }
    for (mname, m) in &mut stack.machines {
        for (path, over) in std::mem::take(&mut m.file_overrides) {
            if let Err(d) = apply_override(mname, m, &path, &over, locs) {
                out.push(d);
            }
        }
    }
    if !out.is_empty() {
        return Err(out);
    }
    site_handlers(stack, locs);
    Ok(())
}

/// Fields merged on the result of `stackc.stack` for `path`, a file the
/// compiler wrote: its values win, leaf by leaf (their positions were
/// kept, see `place`). An entry without `format` for a file nobody writes
/// is not a file: SC0109, as before the compiler wrote any.
fn apply_override(mname: &str, m: &mut Machine, path: &str, over: &Value, locs: &Locs) -> Result<(), Diagnostic> {
    let at = || crate::check::Positions(locs).at(&file_ptr(mname, path));
    let Some(file) = m.files.get_mut(path) else {
        return Err(Diagnostic::error(
            Code::NotAStack,
            format!("file `{path}` of machine `{mname}` has no `format`, and stackc writes no file there to change"),
        )
        .with_label(at(), "this file")
        .with_help(
            "give a new file its `format` (`'systemd`, `'env`, `'lines`, …), or fix the path of the file to change",
        ));
    };
    let fields = over.as_object().into_iter().flatten();
    for (key, value) in fields {
        match (key.as_str(), value) {
            ("content", Value::Object(new)) if file.content.is_object() => {
                if let Value::Object(content) = &mut file.content {
                    update(content, new);
                }
            }
            ("content", new) => file.content = new.clone(),
            ("secret", Value::Bool(secret)) => file.secret |= secret,
            ("schema", Value::String(schema)) => file.schema = Some(schema.clone()),
            _ => {
                return Err(Diagnostic::error(
                    Code::NotAStack,
                    format!("file `{path}` of machine `{mname}`: `{key}` cannot be changed this way"),
                )
                .with_label(at(), "this file")
                .with_help("merge `content` fields (or `secret = true`) on a file stackc writes"));
            }
        }
    }
    Ok(())
}

/// Puts `files` into machine `m`'s, each pointing where `writer` was
/// written and its values where theirs were; none of them if one is
/// already there (SC0215).
fn place(
    m: &mut Machine,
    mname: &str,
    writer: Writer,
    files: Vec<Lowered>,
    written: &mut Vec<(String, Writer)>,
    locs: &mut Locs,
    out: &mut Vec<Diagnostic>,
) {
    if let Some((path, ..)) = files.iter().find(|(p, ..)| m.files.contains_key(p)) {
        let first = written.iter().find(|(p, _)| p == path).map(|(_, w)| w);
        out.push(clash(mname, path, &writer, first, locs));
        return;
    }
    for (path, file, aliases) in files {
        let dst = file_ptr(mname, &path);
        // The file itself points at its writer, not at the options below
        // it. Positions already there are an override's (`apply_override`):
        // they are the user's, and stay.
        if let Some(loc) = locs.get(&writer.ptr).cloned() {
            locs.entry(format!("{dst}/content")).or_insert_with(|| loc.clone());
            locs.entry(dst.clone()).or_insert(loc);
        }
        for (from, to) in aliases {
            alias(locs, &format!("{}{from}", writer.ptr), &format!("{dst}/content{to}"));
        }
        m.files.insert(path.clone(), file);
        written.push((path, writer.clone()));
    }
}

/// SC0215: `writer` would write `path`, which `first` (written here
/// before: the user's native service, when `writer` is one a module runs)
/// or the stdlib's lowering (the machine's `files`, a module's units)
/// already wrote.
fn clash(mname: &str, path: &str, writer: &Writer, first: Option<&Writer>, locs: &Locs) -> Diagnostic {
    let pos = crate::check::Positions(locs);
    if let (
        Some(Writer {
            part: Part::Service { name: theirs, .. },
            ptr: their_ptr,
        }),
        Part::Service { name, by_module: true },
    ) = (first, &writer.part)
        && theirs == name
    {
        return Diagnostic::error(
            Code::FileClash,
            format!("machine `{mname}` runs two native services named `{name}`: yours and one a module runs for it (`{path}`)"),
        )
        .with_label(pos.at(their_ptr), "your service")
        // Inside the stdlib the module's service is noise: the path names it.
        .with_label(pos.at(&writer.ptr).filter(Span::in_user), "the module's service")
        .with_help(format!("rename your native service `{name}`: its files are named after it"));
    }
    let (other, at) = match first {
        Some(other) => (other.what(), pos.at(&other.ptr)),
        None => ("another part of the machine".to_owned(), pos.at(&file_ptr(mname, path))),
    };
    let (label, help) = match &writer.part {
        Part::Service { by_module: true, .. } => (
            "this service",
            "a module runs this service for the machine: to change its file, merge `content` fields on the result of `stackc.stack` (docs/modules.md)",
        ),
        Part::Service { .. } => (
            "this service",
            "rename the service or the other file: a native service's files are named after it",
        ),
        Part::Firewall => (
            "this firewall",
            "move the other file: the firewall writes `firewall/rules.nft`, `firewall/fallback.nft` and `systemd/stackc-firewall.service`",
        ),
    };
    Diagnostic::error(
        Code::FileClash,
        format!(
            "machine `{mname}` gets `{path}` twice: from {} and from {other}",
            writer.what()
        ),
    )
    .with_label(pos.at(&writer.ptr).filter(Span::in_user), label)
    .with_label(at, "also written here")
    .with_help(help)
}

/// Copies the positions of the value at `from` and everything below it to
/// `to`: the file written from an option points where the option was written.
fn alias(locs: &mut Locs, from: &str, to: &str) {
    let copies: Vec<(String, Loc)> = locs
        .range::<str, _>((std::ops::Bound::Included(from), std::ops::Bound::Unbounded))
        .take_while(|(k, _)| k.starts_with(from))
        .filter(|(k, _)| k.len() == from.len() || k.as_bytes()[from.len()] == b'/')
        .map(|(k, l)| (format!("{to}{}", &k[from.len()..]), l.clone()))
        .collect();
    for (k, l) in copies {
        locs.entry(k).or_insert(l);
    }
}

/// `overrides` wins, leaf by leaf, recursing into records (`lib.update`).
fn update(base: &mut serde_json::Map<String, Value>, overrides: &serde_json::Map<String, Value>) {
    for (key, new) in overrides {
        match (base.get_mut(key), new) {
            (Some(Value::Object(old)), Value::Object(new)) => update(old, new),
            _ => {
                base.insert(key.clone(), new.clone());
            }
        }
    }
}

/// Moves the positions below `prefix<i>` to `prefix<i + by>` for each of
/// the `existing` entries of a list, so that `by` entries can go before them.
fn shift(locs: &mut Locs, prefix: &str, by: usize, existing: usize) {
    if by == 0 || existing == 0 {
        return;
    }
    let moved: Vec<(String, Loc)> = locs
        .range::<str, _>((std::ops::Bound::Included(prefix), std::ops::Bound::Unbounded))
        .take_while(|(k, _)| k.starts_with(prefix))
        .map(|(k, l)| (k.clone(), l.clone()))
        .collect();
    for (k, _) in &moved {
        locs.remove(k);
    }
    for (k, l) in moved {
        let rest = &k[prefix.len()..];
        let (index, below) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        match index.parse::<usize>() {
            Ok(i) if i < existing => locs.insert(format!("{prefix}{}{below}", i + by), l),
            _ => locs.insert(k, l),
        };
    }
}

/// A port of a machine's service by name, as `lib.service_of` finds it: a
/// native service's first, then a container's; with `own`, else one of
/// its proxy's own ports (metrics, which other machines may reach).
struct PortOf<'a> {
    port: u16,
    protocol: Protocol,
    bind: &'a str,
    /// Its port inside the container (a native service's: `port`).
    inside: u16,
}

fn port_of<'a>(m: &'a Machine, service: &str, name: &str, own: bool) -> Option<PortOf<'a>> {
    let of = |p: &'a crate::model::NativePort| PortOf {
        port: p.port,
        protocol: p.protocol,
        bind: &p.bind,
        inside: p.container_port.unwrap_or(p.port),
    };
    if let Some(svc) = m.native.get(service) {
        return svc.ports.get(name).map(of);
    }
    if m.container_names.iter().any(|c| c == service) {
        // A container's ports are its listens (`container.ncl`).
        return m
            .listens
            .iter()
            .find(|l| l.service == service && l.name == name)
            .map(|l| PortOf {
                port: l.port,
                protocol: l.protocol,
                bind: &l.bind,
                inside: l.container_port.unwrap_or(l.port),
            });
    }
    match &m.proxy {
        Some(p) if own && p.service == service => p.ports.get(name).map(of),
        _ => None,
    }
}

fn copy_loc(locs: &mut Locs, from: &str, to: &str) {
    if let Some(loc) = locs.get(from).cloned() {
        locs.insert(to.to_owned(), loc);
    }
}

/// Reads the handlers of every proxy site whose module left them to the
/// compiler (`block`): from the site's block in the config it wrote, as the
/// format's writer understands it (`render::site_handlers`), each pointing
/// where its directive was written.
pub fn site_handlers(stack: &mut Stack, locs: &mut Locs) {
    for (mname, m) in &mut stack.machines {
        let mp = format!("/machines/{}", pointer_escape(mname));
        for (k, routes) in m.site_routes.iter_mut().enumerate() {
            let Some(from) = routes.block.take() else { continue };
            let Some(file) = m.files.get(&from.file) else { continue };
            let block = file
                .content
                .get("sites")
                .and_then(|s| s.get(&routes.site))
                .unwrap_or(&Value::Null);
            let Some(handlers) = crate::render::site_handlers(file.format, block, &from.targets) else {
                continue;
            };
            let block_ptr = format!(
                "{}/content/sites/{}",
                file_ptr(mname, &from.file),
                pointer_escape(&routes.site)
            );
            let here = format!("{mp}/site_routes/{k}/handlers");
            for (i, (handler, at)) in handlers.into_iter().enumerate() {
                let h = format!("{here}/{i}");
                copy_loc(locs, &format!("{block_ptr}{}", at.directive), &h);
                copy_loc(locs, &format!("{block_ptr}{}", at.then), &format!("{h}/then"));
                for (p, path) in at.paths.iter().enumerate() {
                    copy_loc(locs, &format!("{block_ptr}{path}"), &format!("{h}/match/paths/{p}"));
                }
                if let Some(arg) = &at.arg {
                    let leaf = match handler.then {
                        Then::Respond { .. } => "respond/body",
                        _ => "proxy/upstream",
                    };
                    copy_loc(locs, &format!("{block_ptr}{arg}"), &format!("{h}/then/{leaf}"));
                }
                routes.handlers.push(handler);
            }
        }
    }
}
