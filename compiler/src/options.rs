//! `options`: the option reference of the stdlib, read from Nickel itself.
//!
//! The stdlib is evaluated with nickel-lang-core (the same embedded copy a
//! build uses) and each module's options contract — a record of fields with
//! `doc`, contract annotations and `default` values — is walked field by
//! field: the annotation's types give the type, a `default` priority value
//! the default, `doc` the text. A field whose contract is itself a record
//! (directly, as `{ _ | R }` or `Array R`) is walked into; a record that is
//! one of the reference's top-level modules is named instead of repeated.
//!
//! Which modules, under which names: `modules/reference.ncl` (the compiler
//! names no service). `docs/options.md` is generated from this (`tests/options.rs` keeps it
//! current); `stackc option PATH` prints one entry.

use std::collections::BTreeSet;
use std::fmt::Write;
use std::path::PathBuf;

use nickel_lang_core::{
    cache::{InputFormat, SourcePath},
    eval::{
        Closure, Environment,
        cache::CacheImpl,
        value::{Container, NickelValue, ValueContentRef},
    },
    program::{Program, ProgramBuilder},
    term::{MergePriority, Term, record::RecordData},
    typ::{Type, TypeF},
};

use crate::diag::{Code, Diagnostic};
use crate::load;

/// The stdlib file that lists the modules of the reference (name, title,
/// options contract).
const LIST: &str = "reference.ncl";

/// The reference: the modules (name, title) in order, and their options.
pub struct Reference {
    pub modules: Vec<(String, String)>,
    pub options: Vec<Opt>,
}

/// One option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opt {
    /// `module.field.<name>.field`: `<name>` is a key the user chooses,
    /// `[]` an item of an array.
    pub path: String,
    /// The contract annotations as written (`c.Port`, `{ _ | String }`).
    pub typ: Option<String>,
    /// The default value, in Nickel syntax (`computed` when it depends on
    /// other options).
    pub default: Option<String>,
    /// Must be given: no default, not optional.
    pub required: bool,
    pub doc: Option<String>,
    /// A value the module defines (a function such as a secret
    /// constructor), not an option to set.
    pub function: bool,
    /// The module this option's value follows, when it is one of the
    /// reference's modules (described there).
    pub see: Option<String>,
}

/// Every option of every module `modules/reference.ncl` lists, in its order.
pub fn reference() -> Result<Reference, Vec<Diagnostic>> {
    crate::eval::bounded("nickel-options", crate::eval::Limits::default(), || {
        reference_here().map_err(|e| {
            vec![Diagnostic::error(
                Code::Internal,
                format!("cannot read the stdlib's options: {e}"),
            )]
        })
    })
}

/// Deepest nesting walked (contracts can be recursive).
const MAX_DEPTH: usize = 12;

struct Walker {
    program: Program<CacheImpl>,
    /// Fingerprints of the modules' records, by module name.
    modules: Vec<(String, String)>,
    out: Vec<Opt>,
}

fn reference_here() -> Result<Reference, String> {
    let text = format!("import \"{LIST}\"\n");
    let entry = PathBuf::from(format!("{}/<options>.ncl", load::STDLIB_ROOT));
    let mut program: Program<CacheImpl> = ProgramBuilder::new()
        .add_source_string(text, entry)
        .add_import_paths([PathBuf::from(load::STDLIB_ROOT)])
        .build()
        .map_err(|e| e.to_string())?;
    program.compile().map_err(|e| format!("{e:?}"))?;
    program
        .custom_transform(0, |cache, _pos, value| {
            for (name, text) in load::STDLIB {
                let path = PathBuf::from(format!("{}/{name}", load::STDLIB_ROOT));
                cache
                    .sources
                    .add_string(SourcePath::Path(path, InputFormat::Nickel), (*text).to_owned());
            }
            Ok::<_, std::convert::Infallible>(value)
        })
        .map_err(|_| "could not register the stdlib".to_owned())?;
    let roots = program.eval().map_err(|e| format!("{e:?}"))?;
    let ValueContentRef::Array(Container::Alloc(array)) = roots.content_ref() else {
        return Err(format!("{LIST} is not an array"));
    };
    let entries: Vec<NickelValue> = array.array.iter().cloned().collect();
    let mut walker = Walker {
        program,
        modules: Vec::new(),
        out: Vec::new(),
    };
    let mut listed = Vec::new();
    for (i, v) in entries.into_iter().enumerate() {
        let entry = walker
            .force(v, Environment::new())
            .ok_or_else(|| format!("entry {i} of {LIST} does not evaluate"))?;
        let field = |w: &mut Walker, name: &str| -> Result<NickelValue, String> {
            let value = record(&entry)
                .and_then(|r| r.fields.iter().find(|(id, _)| id.label() == name))
                .and_then(|(_, f)| f.value.clone())
                .ok_or_else(|| format!("entry {i} of {LIST} has no `{name}`"))?;
            w.force(value, Environment::new())
                .ok_or_else(|| format!("`{name}` of entry {i} of {LIST} does not evaluate"))
        };
        let text_of = |v: NickelValue| v.to_string().trim_matches('"').to_owned();
        let name = text_of(field(&mut walker, "name")?);
        let title = text_of(field(&mut walker, "title")?);
        let options = field(&mut walker, "options")?;
        let fp = record(&options)
            .map(fingerprint)
            .ok_or_else(|| format!("the options of `{name}` are not a record"))?;
        walker.modules.push((name.clone(), fp));
        listed.push((name, title, options));
    }
    let mut modules = Vec::new();
    for (name, title, v) in listed {
        let mut seen = BTreeSet::new();
        walker.walk(&v, &name, 0, &mut seen);
        modules.push((name, title));
    }
    Ok(Reference {
        modules,
        options: walker.out,
    })
}

fn record(v: &NickelValue) -> Option<&RecordData> {
    match v.content_ref() {
        ValueContentRef::Record(Container::Alloc(r)) => Some(r),
        _ => None,
    }
}

/// What identifies a contract record: its fields and their docs.
fn fingerprint(r: &RecordData) -> String {
    let mut s = String::new();
    for (id, f) in &r.fields {
        let doc = f.metadata.0.as_ref().and_then(|m| m.doc.as_deref()).unwrap_or("");
        let _ = write!(s, "{}\u{1}{doc}\u{2}", id.label());
    }
    s
}

impl Walker {
    fn force(&mut self, value: NickelValue, env: Environment) -> Option<NickelValue> {
        self.program.eval_closure(Closure { value, env }).ok()
    }

    fn walk(&mut self, v: &NickelValue, path: &str, depth: usize, seen: &mut BTreeSet<String>) {
        let Some(rec) = record(v) else { return };
        let fp = fingerprint(rec);
        if depth > MAX_DEPTH || !seen.insert(fp.clone()) {
            return;
        }
        let fields: Vec<_> = rec
            .fields
            .iter()
            .map(|(id, f)| (id.label().to_owned(), f.clone()))
            .collect();
        for (name, field) in fields {
            let meta = field.metadata.clone().into_inner();
            // Hidden fields, and the inside of marker records such as a
            // secret's `$stackc_secret` (made by constructors, not by hand).
            if (meta.not_exported && meta.doc.is_none()) || name.starts_with('$') {
                continue;
            }
            let here = format!("{path}.{}", quote_field(&name));
            let types: Vec<Type> = meta.annotation.iter().map(|lt| lt.typ.clone()).collect();
            let typ = (!types.is_empty()).then(|| types.iter().map(short_type).collect::<Vec<_>>().join(" | "));
            let env = field
                .pending_contracts
                .iter()
                .find_map(|c| c.contract.as_thunk().map(|t| t.get_owned().env))
                .unwrap_or_default();
            let mut function = false;
            let default = match &field.value {
                Some(value) if matches!(meta.priority, MergePriority::Bottom) => Some(self.show_default(value.clone())),
                Some(value) if types.is_empty() => {
                    let forced = self.force(value.clone(), Environment::new());
                    function = forced.as_ref().is_some_and(is_function);
                    None
                }
                _ => None,
            };
            let index = self.out.len();
            self.out.push(Opt {
                path: here.clone(),
                typ,
                default,
                required: !meta.opt && field.value.is_none(),
                doc: meta.doc.as_deref().map(str::to_owned),
                function,
                see: None,
            });
            for t in &types {
                let see = self.descend(t, &here, &env, depth + 1, seen);
                if see.is_some() {
                    self.out[index].see = see;
                }
            }
        }
        seen.remove(&fp);
    }

    /// Walks into the records a type names; returns the module it is, if
    /// it is one of the reference's (then not walked).
    fn descend(
        &mut self,
        t: &Type,
        path: &str,
        env: &Environment,
        depth: usize,
        seen: &mut BTreeSet<String>,
    ) -> Option<String> {
        match &t.typ {
            TypeF::Dict { type_fields, .. } => self.descend(type_fields, &format!("{path}.<name>"), env, depth, seen),
            TypeF::Array(t) => self.descend(t, &format!("{path}[]"), env, depth, seen),
            TypeF::Contract(term) => {
                let v = self.force(term.clone(), env.clone())?;
                let fp = record(&v).map(fingerprint)?;
                let root = path.split(['.', '[']).next().unwrap_or("");
                if let Some((name, _)) = self.modules.iter().find(|(n, f)| *f == fp && n != root) {
                    return Some(name.clone());
                }
                self.walk(&v, path, depth, seen);
                None
            }
            _ => None,
        }
    }

    /// A default as written in the module, else as evaluated.
    fn show_default(&mut self, value: NickelValue) -> String {
        if let Some(raw) = value.pos(self.program.pos_table()).into_opt() {
            let text = self.program.files().clone_source(raw.src_id);
            if let Some(src) = text.get(raw.to_range()) {
                return cap(&one_line(src));
            }
        }
        match self.program.eval_deep_closure(Closure {
            value,
            env: Environment::new(),
        }) {
            Ok(v) if is_function(&v) => "a function".into(),
            Ok(v) if v.to_string().contains("%<closure") => "computed".into(),
            Ok(v) => cap(&one_line(&v.to_string())),
            Err(_) => "computed".into(),
        }
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn cap(s: &str) -> String {
    if s.chars().count() > 120 {
        format!("{}…", s.chars().take(119).collect::<String>())
    } else {
        s.to_owned()
    }
}

/// A type for the reference: record contracts written inline as `{ … }`
/// (their fields are listed below it), the rest as Nickel prints it, on
/// one line, without the file ids of imports.
fn short_type(t: &Type) -> String {
    match &t.typ {
        TypeF::Dict { type_fields, .. } => format!("{{ _ | {} }}", short_type(type_fields)),
        TypeF::Array(t) => format!("Array {}", atom(short_type(t))),
        TypeF::Contract(term) if matches!(term.content_ref(), ValueContentRef::Record(_)) => "{ … }".into(),
        TypeF::Contract(term) if matches!(term.content_ref(), ValueContentRef::Term(Term::RecRecord(..))) => {
            "{ … }".into()
        }
        _ => cap(&strip_imports(&one_line(&t.to_string()))),
    }
}

fn atom(s: String) -> String {
    if s.contains(' ') && !s.starts_with('{') && !s.starts_with('[') && !s.starts_with('(') {
        format!("({s})")
    } else {
        s
    }
}

/// `(import <file_id: FileId(19)>).Roles` → `Roles`: the id is no name a
/// reader knows, and it changes with the order files are loaded.
fn strip_imports(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("(import <file_id:") {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        match rest.find(">)") {
            Some(j) => {
                rest = rest[j + 2..].strip_prefix('.').unwrap_or(&rest[j + 2..]);
            }
            None => break,
        }
    }
    out.push_str(rest);
    out
}

fn is_function(v: &NickelValue) -> bool {
    matches!(v.content_ref(), ValueContentRef::Term(t) if matches!(t, Term::Fun(..)))
}

/// A field name as a path element: quoted when it is no identifier.
fn quote_field(name: &str) -> String {
    if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        name.to_owned()
    } else {
        format!("{name:?}")
    }
}

/// Markers around the generated part of `docs/options.md`.
pub const BEGIN: &str = "<!-- BEGIN GENERATED by `stackc option --markdown`: edit the modules' `doc`, then bless -->";
pub const END: &str = "<!-- END GENERATED -->";

/// The reference as Markdown: one section per module, one entry per option.
pub fn markdown(r: &Reference) -> String {
    let opts = &r.options;
    let mut out = String::new();
    for (name, title) in &r.modules {
        let _ = writeln!(out, "## {title}\n");
        let _ = writeln!(out, "<a id=\"{name}\"></a>\n");
        for o in opts.iter().filter(|o| module_of(&o.path) == name) {
            let _ = writeln!(out, "- **`{}`**{}", o.path, summary(o, true));
            if let Some(doc) = &o.doc {
                for line in doc.trim_end().lines() {
                    if line.trim().is_empty() {
                        let _ = writeln!(out);
                    } else {
                        let _ = writeln!(out, "  {}", line.trim_end());
                    }
                }
            }
        }
        let _ = writeln!(out);
    }
    out.truncate(out.trim_end().len());
    out.push('\n');
    out
}

fn module_of(path: &str) -> &str {
    path.split(['.', '[']).next().unwrap_or("")
}

/// ` — type; default …; see …` for one option.
fn summary(o: &Opt, links: bool) -> String {
    let mut parts = Vec::new();
    if o.function {
        parts.push("function".to_owned());
    }
    if let Some(t) = &o.typ {
        parts.push(format!("`{}`", t.replace('`', "'")));
    }
    match &o.default {
        Some(d) => parts.push(format!("default `{}`", d.replace('`', "'"))),
        None if o.required => parts.push("required".into()),
        None if !o.function => parts.push("optional".into()),
        None => {}
    }
    if let Some(s) = &o.see {
        parts.push(if links {
            format!("see [{s}](#{s})")
        } else {
            format!("options under `{s}`")
        });
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!(" — {}", parts.join("; "))
    }
}

/// Options without `doc`, for the test's warning.
pub fn undocumented(opts: &[Opt]) -> Vec<&str> {
    opts.iter()
        .filter(|o| o.doc.is_none())
        .map(|o| o.path.as_str())
        .collect()
}

/// What `stackc option PATH` prints: the option, then the options below it.
/// A path may use a concrete name where the reference says `<name>`
/// (`machine.native.web.command`) and may leave out a leading `stack.`.
pub fn lookup<'a>(r: &'a Reference, path: &str) -> Result<(String, Vec<&'a Opt>), Vec<String>> {
    let opts = &r.options[..];
    let want = normalise(r, path);
    let hits: Vec<&Opt> = opts
        .iter()
        .filter(|o| {
            o.path == want || o.path.starts_with(&format!("{want}.")) || o.path.starts_with(&format!("{want}["))
        })
        .collect();
    if !hits.is_empty() {
        return Ok((want, hits));
    }
    let mut near: Vec<(f64, &str)> = opts
        .iter()
        .map(|o| (strsim::jaro_winkler(&want, &o.path), o.path.as_str()))
        .filter(|(s, _)| *s > 0.8)
        .collect();
    near.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(b.1)));
    let best = near.first().map_or(0.0, |n| n.0);
    Err(near
        .into_iter()
        .take_while(|(s, _)| *s > best - 0.03)
        .take(3)
        .map(|(_, p)| p.to_owned())
        .collect())
}

/// Replaces concrete names by `<name>` where the reference has a name
/// placeholder, and follows a path into the module an option refers to
/// (`stack.machines.web.native.app.ports` → `native.ports`).
fn normalise(r: &Reference, path: &str) -> String {
    let opts = &r.options[..];
    let mut parts: Vec<&str> = path.split('.').filter(|p| !p.is_empty()).collect();
    if parts.first().is_none_or(|p| !r.modules.iter().any(|(n, _)| n == p)) {
        parts.insert(0, "stack");
    }
    let mut cur = parts[0].to_owned();
    let mut i = 1;
    while i < parts.len() {
        let p = parts[i];
        let exact = format!("{cur}.{p}");
        let named = format!("{cur}.<name>");
        let elem = format!("{cur}[]");
        if opts
            .iter()
            .any(|o| o.path == exact || o.path.starts_with(&format!("{exact}.")))
        {
            cur = exact;
        } else if opts
            .iter()
            .any(|o| o.path.starts_with(&format!("{named}.")) || o.path == named)
        {
            cur = named;
        } else if opts.iter().any(|o| o.path.starts_with(&format!("{elem}."))) {
            cur = elem;
            continue;
        } else if let Some(o) = opts.iter().find(|o| o.path == cur && o.see.is_some()) {
            // The rest is an option of the module this one refers to; a
            // map of them (`machines.<name>`) takes the name first.
            let map = o.typ.as_deref().is_some_and(|t| t.starts_with("{ _ |"));
            cur = o.see.clone().unwrap_or_default();
            if !map {
                continue;
            }
        } else {
            cur = exact;
        }
        i += 1;
    }
    // A path that ends on a `<name>` key of another module's records.
    if let Some(see) = opts.iter().find(|o| o.path == cur).and_then(|o| o.see.clone())
        && !opts.iter().any(|o| o.path.starts_with(&format!("{cur}.")))
    {
        return see;
    }
    cur
}

/// One option, for the terminal.
pub fn describe(o: &Opt) -> String {
    let mut out = format!("{}\n", o.path);
    if o.function {
        let _ = writeln!(out, "  a function");
    }
    if let Some(t) = &o.typ {
        let _ = writeln!(out, "  type:    {t}");
    }
    match &o.default {
        Some(d) => {
            let _ = writeln!(out, "  default: {d}");
        }
        None if o.required => {
            let _ = writeln!(out, "  required");
        }
        None if !o.function => {
            let _ = writeln!(out, "  optional (no default)");
        }
        None => {}
    }
    if let Some(s) = &o.see {
        let _ = writeln!(out, "  options: see `stackc option {s}`");
    }
    if let Some(doc) = &o.doc {
        let _ = writeln!(out);
        for line in doc.trim_end().lines() {
            let _ = writeln!(out, "  {}", line.trim_end());
        }
    }
    out
}

/// One line per option below the first, for `stackc option PATH`.
pub fn brief(o: &Opt) -> String {
    format!("{}{}", o.path, summary(o, false))
}
