//! `eval`: run the stack file through nickel-lang-core and hand back plain
//! data (a `serde_json::Value`), the source positions of its fields, and
//! every Nickel error converted into a stackc diagnostic.
//!
//! The value goes through `serde_json` on purpose: Nickel's own deserializer
//! turns 8080 into 8080.0 and silently saturates out-of-range integers.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use codespan_reporting::diagnostic::Severity as CsSeverity;
use nickel_lang_core::{
    cache::{AstEntryState, CacheHub, SourcePath},
    error::NullReporter,
    error::{Error as NickelError, EvalErrorKind, ImportErrorKind, IntoDiagnostics, LabelStyle, TypecheckErrorKind},
    eval::{
        VirtualMachine, VmContext,
        cache::CacheImpl,
        value::{Container, NickelValue, ValueContentRef},
    },
    files::{FileId, Files},
    position::{PosTable, RawSpan},
};

use crate::budget;
use crate::diag::{Code, Diagnostic, Label, Severity, SourceFile, Span};
use crate::load::{self, InputFormat, Project};
use crate::trim;

/// Where a field of the evaluated value was written.
#[derive(Debug, Clone, Default)]
pub struct Loc {
    /// The field name in the record literal that defined it.
    pub key: Option<Span>,
    /// The value itself: exact for literals, the computing expression otherwise.
    pub value: Option<Span>,
}

impl Loc {
    /// Best single place to point at: the value, else the field name.
    pub fn best(&self) -> Option<Span> {
        self.value.clone().or_else(|| self.key.clone())
    }
}

/// Field locations by JSON pointer (`/machines/chat/listens/0/port`).
pub type Locs = BTreeMap<String, Loc>;

pub struct Evaluated {
    pub value: serde_json::Value,
    pub locs: Locs,
    /// Bytes of the project files Nickel evaluated, by display name
    /// (relative to the project), for the manifest.
    pub inputs: BTreeMap<String, Vec<u8>>,
}

/// An evaluation as the evaluation cache (`cache::EvalCache`) keeps it:
/// plain data, each source file once, spans as (file, start, end).
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct Stored {
    pub(crate) address: String,
    /// Each file's name and text; no text for an embedded file (the
    /// stackc stdlib, Nickel's own) whose text is this binary's: the
    /// address covers the stdlib, and an entry only names it.
    files: Vec<(String, Option<String>)>,
    value: serde_json::Value,
    locs: Vec<(String, Option<StoredSpan>, Option<StoredSpan>)>,
    inputs: BTreeMap<String, String>,
}

type StoredSpan = (usize, usize, usize);

impl Stored {
    pub(crate) fn of(address: &str, e: &Evaluated) -> Stored {
        let mut files: Vec<(String, Option<String>)> = Vec::new();
        let mut index: BTreeMap<*const SourceFile, usize> = BTreeMap::new();
        let mut span = |s: &Option<Span>| {
            s.as_ref().map(|s| {
                let i = *index.entry(Arc::as_ptr(&s.file)).or_insert_with(|| {
                    let text = &*s.file.text;
                    let embedded = embedded_text(&s.file.name) == Some(text);
                    files.push((s.file.name.clone(), (!embedded).then(|| text.to_owned())));
                    files.len() - 1
                });
                (i, s.range.start, s.range.end)
            })
        };
        let locs = e
            .locs
            .iter()
            .map(|(k, l)| (k.clone(), span(&l.key), span(&l.value)))
            .collect();
        Stored {
            address: address.to_owned(),
            files,
            value: e.value.clone(),
            locs,
            inputs: e
                .inputs
                .iter()
                .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
                .collect(),
        }
    }

    /// `None` if a span names a file or range that is not there.
    pub(crate) fn into_evaluated(self) -> Option<Evaluated> {
        let files: Vec<Arc<SourceFile>> = self
            .files
            .into_iter()
            .map(|(name, text)| {
                let text = match text {
                    Some(text) => Arc::from(text),
                    None => Arc::from(embedded_text(&name)?),
                };
                Some(Arc::new(SourceFile { name, text }))
            })
            .collect::<Option<_>>()?;
        let span = |s: Option<StoredSpan>| -> Option<Option<Span>> {
            match s {
                None => Some(None),
                Some((i, start, end)) => {
                    let file = files.get(i)?.clone();
                    (start <= end && end <= file.text.len()).then_some(Some(Span {
                        file,
                        range: start..end,
                    }))
                }
            }
        };
        let mut locs = Locs::new();
        for (k, key, value) in self.locs {
            locs.insert(
                k,
                Loc {
                    key: span(key)?,
                    value: span(value)?,
                },
            );
        }
        Some(Evaluated {
            value: self.value,
            locs,
            inputs: self.inputs.into_iter().map(|(k, v)| (k, v.into_bytes())).collect(),
        })
    }
}

/// The text of an embedded source by its display name: a stackc stdlib
/// module (`<stackc>/caddy.ncl`) or a module of Nickel's own stdlib.
fn embedded_text(name: &str) -> Option<&'static str> {
    if let Some(module) = name
        .strip_prefix(load::STDLIB_DISPLAY)
        .and_then(|n| n.strip_prefix('/'))
    {
        return load::STDLIB.iter().find(|(n, _)| *n == module).map(|(_, text)| *text);
    }
    nickel_lang_core::stdlib::modules()
        .into_iter()
        .find(|m| m.file_name() == name)
        .map(|m| m.content())
}

/// The original text of an embedded module (`name` is its display name:
/// `<stackc>/caddy.ncl`, `<stdlib/std.ncl>`) if `text` is the one evaluation
/// read, its documentation blanked; a stub, or any other text, is not the
/// module's.
fn original_stdlib_text(name: &str, text: &str) -> Option<&'static str> {
    if let Some(module) = name
        .strip_prefix(load::STDLIB_DISPLAY)
        .and_then(|n| n.strip_prefix('/'))
    {
        let i = load::STDLIB_EVAL.iter().position(|(n, t)| *n == module && *t == text)?;
        return Some(load::STDLIB[i].1);
    }
    nickel_std_blanked()
        .iter()
        .find(|m| m.name == name && *m.blanked == *text)
        .map(|m| m.original)
}

/// A module of Nickel's own stdlib, as evaluation reads it.
struct NickelStd {
    name: String,
    original: &'static str,
    blanked: Arc<str>,
    /// `std.ncl`'s functions (`trim`); `None` for a module kept whole.
    fields: Option<trim::Std>,
}

/// Nickel's stdlib modules with their documentation blanked (`blank`),
/// like stackc's: three fifths of `std.ncl` is documentation, which Nickel
/// would otherwise lex and unindent on every run. Computed once a process.
fn nickel_std_blanked() -> &'static [NickelStd] {
    static BLANKED: std::sync::OnceLock<Vec<NickelStd>> = std::sync::OnceLock::new();
    BLANKED.get_or_init(|| {
        let internals = nickel_lang_core::stdlib::StdlibModule::Internals.content();
        nickel_lang_core::stdlib::modules()
            .into_iter()
            .map(|m| {
                let blanked: Arc<str> = Arc::from(crate::blank::blank_docs(m.content()));
                NickelStd {
                    name: m.file_name().to_owned(),
                    original: m.content(),
                    fields: (m == nickel_lang_core::stdlib::StdlibModule::Std)
                        .then(|| trim::Std::new(blanked.clone(), internals)),
                    blanked,
                }
            })
            .collect()
    })
}

/// What one evaluation may use. The defaults leave room for stacks far
/// larger than any real deployment (10 000 services take about 2 GiB and a
/// minute) while stopping a runaway recursion long before the machine's
/// memory is gone.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub time: Duration,
    pub memory: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            time: Duration::from_secs(300),
            memory: 4 << 30,
        }
    }
}

/// Evaluates on a thread with a large stack (Nickel recurses deeply on big
/// records, and its values are `!Send`, so everything Nickel-typed stays on
/// that thread and only plain data comes back), within `limits`: a thread
/// over its budget is stopped (see `budget`) and the budget is the finding.
pub fn evaluate(project: &Project, limits: Limits) -> Result<Evaluated, Vec<Diagnostic>> {
    let root = project.root.clone();
    let sources = sources_of(project);
    // Parsing the whole stdlib is most of a small stack's check; a stack
    // that never names a module's domain gets a stub for it, a module's
    // values for other stacks are unloaded (`# load-body-when:`), and
    // Nickel's `std.ncl` keeps only the functions the rest names (`trim`).
    // A stub or unloaded value forced anyway (a miss of the heuristic)
    // fails with a marker, and the stack is evaluated again without that
    // shortcut only (a stub reached loads every module, an unloaded value
    // every value and all of `std.ncl`): a result is always the full
    // stdlib's.
    let mut stubs = unneeded_modules(sources.iter().map(|(_, _, text)| text.as_str()));
    // Copied here, outside the evaluation's budget, for the thread below.
    let for_beside = (sources.clone(), stubs.clone());
    bounded("nickel-eval", limits, move || {
        let missed = |r: &Result<Evaluated, Vec<Diagnostic>>, marker: &str| matches!(r, Err(found) if found.iter().any(|d| d.message.contains(marker)));
        // Trimming `std.ncl` (and, once a process, blanking it and finding
        // its functions: ~2.5 ms) reads none of Nickel's state: a thread of
        // its own does it while this one parses stackc's modules. Spawned
        // from here, not before this thread: a new thread takes a free
        // malloc arena, and this one must take the arena `load`'s thread
        // left, or a check of 1000 services holds 10 MiB more.
        let mut beside = {
            let (sources, stubs) = for_beside;
            std::thread::Builder::new()
                .name("stackc-std".into())
                .spawn(move || trimmed_std(&sources, &stubs))
                .ok()
        };
        let mut trimmed = true;
        loop {
            let std: Option<StdText> = trimmed.then(|| {
                let here = trimmed_now(&sources, &stubs);
                match beside.take() {
                    Some(thread) => Box::new(move || thread.join().unwrap_or_else(|_| here())),
                    None => here,
                }
            });
            let result = evaluate_here(root.clone(), sources.clone(), &stubs, std);
            if !stubs.is_empty() && missed(&result, NOT_LOADED) {
                stubs.clear();
            } else if trimmed && missed(&result, trim::MARKER) {
                trimmed = false;
            } else {
                return result;
            }
        }
    })
}

/// Gives the trimmed `std.ncl` an evaluation reads, when it needs it.
type StdText = Box<dyn FnOnce() -> Arc<str> + Send>;

/// `trimmed_std`, on the thread that asks for it.
fn trimmed_now(sources: &Sources, stubs: &[&'static str]) -> StdText {
    let (sources, stubs) = (sources.clone(), stubs.to_vec());
    Box::new(move || trimmed_std(&sources, &stubs))
}

/// `std.ncl` trimmed to what evaluation reads names (`trim`): the
/// project's files, the stub's text and the modules not in `stubs` (their
/// `a.b` pairs read at build time).
fn trimmed_std(sources: &Sources, stubs: &[&str]) -> Arc<str> {
    let std = nickel_std_blanked()
        .iter()
        .find_map(|m| m.fields.as_ref())
        .expect("Nickel's stdlib has a std.ncl");
    let stubbed = (!stubs.is_empty()).then(stub);
    let texts = sources.iter().map(|(_, _, t)| t.as_str()).chain(stubbed.as_deref());
    let accesses = load::STDLIB_EVAL
        .iter()
        .zip(load::STDLIB_ACCESSES)
        .filter(|((n, _), _)| !stubs.contains(n))
        .flat_map(|(_, a)| a.iter());
    Arc::from(std.trim(texts, accesses))
}

/// A project's files as evaluation takes them: Nickel path, format, text.
type Sources = Vec<(PathBuf, InputFormat, String)>;

fn sources_of(project: &Project) -> Sources {
    project
        .sources
        .iter()
        .map(|s| (s.nickel_path.clone(), s.format, s.text.clone()))
        .collect()
}

/// What a stub module says when forced (see `evaluate`).
const NOT_LOADED: &str = "stackc-internal: stdlib module left unloaded";

/// The text of a stub module: it names `std.fail_with`, so trimming keeps
/// that, and a stub reached is a stub's miss, not a trimmed function's.
fn stub() -> String {
    format!("std.fail_with \"{NOT_LOADED}\"\n")
}

/// The optional stdlib modules none of `texts` (the project's files)
/// names. A module is optional when it says so, beside its options, in a
/// `# load-when: WORD…` line: the option or library field that reaches it
/// (`matrix`, `modules`, `kubernetes`, …); one of the words in a project
/// file loads it. A miss costs a second evaluation, never a wrong result.
fn unneeded_modules<'t>(texts: impl Iterator<Item = &'t str> + Clone) -> Vec<&'static str> {
    load::STDLIB
        .iter()
        .zip(load::STDLIB_LOAD_WHEN)
        .filter_map(|((name, _), words)| (!named(words.as_ref()?, texts.clone())).then_some(*name))
        .collect()
}

/// Whether one of `words` (a `# load-when:` line's) is in one of `texts`.
fn named<'t>(words: &str, texts: impl Iterator<Item = &'t str> + Clone) -> bool {
    words.split_whitespace().any(|w| texts.clone().any(|t| t.contains(w)))
}

/// A loaded module's text as evaluation reads it: when `trimmed`, each
/// value its `# load-body-when:` words keep for other stacks (none of them
/// in `texts`, the project's files) is unloaded (`trim::unload`); a stack
/// that reaches one anyway is a trimming miss (see `evaluate`). `None`:
/// the text is the module's own.
fn module_text<'t>(i: usize, texts: impl Iterator<Item = &'t str> + Clone) -> Option<String> {
    let text = load::STDLIB_EVAL[i].1;
    let mut out: Option<Vec<u8>> = None;
    for (words, start, end) in load::STDLIB_BODIES[i] {
        if !named(words, texts.clone()) {
            let bytes = out.get_or_insert_with(|| text.as_bytes().to_vec());
            trim::unload(&mut bytes[*start..*end]);
        }
    }
    out.map(|b| String::from_utf8(b).expect("only whole ASCII tokens replaced"))
}

/// Runs `work` on a thread of its own with a 256 MiB stack, within
/// `limits` (see `budget`): a budget spent is the finding, and the thread
/// is left stopped. Parsing (in `load`) and evaluation both run this way.
pub fn bounded<T: Send + 'static>(
    name: &str,
    limits: Limits,
    work: impl FnOnce() -> Result<T, Vec<Diagnostic>> + Send + 'static,
) -> Result<T, Vec<Diagnostic>> {
    let slot = budget::Slot::new(limits.memory);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name(name.into())
        .stack_size(256 << 20)
        .spawn(move || {
            struct Finish(&'static budget::Slot);
            impl Drop for Finish {
                fn drop(&mut self) {
                    self.0.finish();
                }
            }
            slot.enter();
            let finish = Finish(slot);
            let _ = tx.send(work());
            drop(finish);
            slot.free_after_finish(|| drop(LEFTOVER.with(|l| l.borrow_mut().take())));
        })
        .expect("spawning a bounded thread");
    match slot.wait(limits.time) {
        budget::Outcome::OverMemory => Err(vec![
            Diagnostic::error(
                Code::EvalMemory,
                format!(
                    "evaluating the stack needed more than {} MiB of memory",
                    limits.memory >> 20
                ),
            )
            .with_help(
                "look for a recursion without an end, a huge generated array or a huge number; \
                 a stack that really is this large can raise the budget with `--max-eval-memory MIB`",
            ),
        ]),
        budget::Outcome::OverTime => Err(vec![
            Diagnostic::error(
                Code::EvalTime,
                format!("evaluating the stack took longer than {} s", limits.time.as_secs()),
            )
            .with_help(
                "look for a recursion without an end or a huge number; \
                 a stack that really is this large can raise the budget with `--max-eval-time SECONDS`",
            ),
        ]),
        budget::Outcome::OverStack => {
            Err(vec![too_deep_finding(MAX_DEPTH).with_note(
                "evaluation recursed past the end of its stack while building or exporting this value",
            )])
        }
        budget::Outcome::Done | budget::Outcome::Running => rx.recv().unwrap_or_else(|_| {
            Err(vec![
                Diagnostic::error(Code::Internal, "the Nickel evaluator panicked")
                    .with_help("this is a bug in stackc or Nickel: please report it with the stack file"),
            ])
        }),
    }
}

/// Evaluates the project with these stackc modules stubbed and, if
/// `trimmed` (giving the `std.ncl` to read), the modules' values for other
/// stacks unloaded (see `evaluate`).
fn evaluate_here(
    root: PathBuf,
    sources: Sources,
    stubs: &[&str],
    trimmed: Option<StdText>,
) -> Result<Evaluated, Vec<Diagnostic>> {
    let mut sources = sources.into_iter();
    let (entry, _, main_text) = sources.next().expect("load gives the stack file first");
    let mut texts: BTreeMap<PathBuf, Vec<u8>> = BTreeMap::new();
    texts.insert(entry.clone(), main_text.as_bytes().to_vec());
    // Nickel's `Program` would parse its own stdlib before any hook could
    // touch it; its parts, used directly, let every source be registered
    // first. The stdlib and the project files `load` read are in-memory
    // sources under two virtual roots (the stdlib's is also the import
    // path): Nickel finds every import in memory and never opens a file.
    let mut cache = CacheHub::new();
    let main_id = cache
        .sources
        .add_string(SourcePath::Path(entry, InputFormat::Nickel), main_text.clone());
    cache
        .sources
        .add_import_paths([PathBuf::from(load::STDLIB_ROOT)].into_iter());
    let mut unloaded = Vec::new();
    for (i, (name, text)) in load::STDLIB_EVAL.iter().enumerate() {
        let path = PathBuf::from(format!("{}/{name}", load::STDLIB_ROOT));
        let project = std::iter::once(main_text.as_str()).chain(sources.as_slice().iter().map(|(_, _, t)| t.as_str()));
        let text = if stubs.contains(name) {
            stub()
        } else if let Some(t) = trimmed.as_ref().and_then(|_| module_text(i, project)) {
            unloaded.push((
                format!("{}/{name}", load::STDLIB_DISPLAY),
                Arc::from(t.as_str()),
                load::STDLIB[i].1,
            ));
            t
        } else {
            (*text).to_owned()
        };
        let id = cache
            .sources
            .add_string(SourcePath::Path(path, InputFormat::Nickel), text);
        // The stdlib is fixed in the binary and typechecks (a test proves
        // it): walking its 7000 lines again on every run cost most of a
        // small stack's check. Parsed now and marked checked, Nickel skips
        // it; the user's files are still typechecked, and every contract
        // still applies at run time.
        if cache.parse_to_ast(id).is_ok() {
            let _ = cache.asts.update_state(id, AstEntryState::Typechecked);
        }
    }
    // Nickel's own stdlib last: it is trimmed beside (see `evaluate`)
    // while the stackc modules above are parsed.
    let mut trimmed = trimmed;
    for (module, id) in cache.sources.stdlib_modules() {
        if let Some(m) = nickel_std_blanked().iter().find(|m| m.name == module.file_name()) {
            let text = if m.fields.is_some()
                && let Some(std) = trimmed.take()
            {
                let t = std();
                unloaded.push((m.name.clone(), t.clone(), m.original));
                t
            } else {
                m.blanked.clone()
            };
            cache.sources.files.update(id, text);
        }
    }
    for (path, format, text) in sources {
        texts.insert(path.clone(), text.as_bytes().to_vec());
        cache.sources.add_string(SourcePath::Path(path, format), text);
    }
    let mut vm: VmContext<CacheHub, CacheImpl> = VmContext::new(cache, std::io::sink(), NullReporter {});

    let mut spans = SpanMaker::new(root.clone());
    spans.unloaded = unloaded;
    let fail = |err: NickelError, vm: &VmContext<CacheHub, CacheImpl>, spans: &mut SpanMaker| {
        let mut files = vm.import_resolver.sources.files().clone();
        // Defence in depth: if Nickel ever read a file `load` did not hand
        // it, its error may quote that file; say so without any of it.
        if let Some(leak) = outside_read(&files) {
            return vec![leak];
        }
        vec![convert_error(err, &mut files, spans)]
    };

    // What `Program::eval_full_for_export` does for a program without
    // overrides, extra contracts or a field path.
    let exported = vm.prepare_eval(main_id).and_then(|prepared| {
        VirtualMachine::new(&mut vm)
            .eval_full_for_export_closure(prepared.into())
            .map_err(NickelError::from)
    });
    let value = match exported {
        Ok(v) => v,
        Err(e) => return Err(fail(e, &vm, &mut spans)),
    };
    if let Err(e) = nickel_lang_core::serialize::validate(nickel_lang_core::serialize::ExportFormat::Json, &value) {
        let err = NickelError::ExportError(Box::new(e.with_pos_table(vm.pos_table.clone())));
        return Err(fail(err, &vm, &mut spans));
    }
    if let Some(depth) = too_deep_nickel(&value) {
        return Err(vec![too_deep_finding(depth)]);
    }
    let json = serde_json::to_value(&value).map_err(|e| {
        vec![Diagnostic::error(
            Code::NotExportable,
            format!("the stack cannot be exported as data: {e}"),
        )]
    })?;

    spans.files = vm.import_resolver.sources.files().clone();
    let mut locs = Locs::new();
    collect_locs(&value, &mut String::new(), &vm.pos_table, &mut spans, &mut locs);

    // The project files Nickel used, for the manifest (the bytes `load`
    // read). Every other name is the stdlib or a snippet Nickel generates:
    // `load` registered all files, and the virtual roots exist nowhere on
    // disk, so nothing else can have been read.
    if let Some(leak) = outside_read(&spans.files) {
        return Err(vec![leak]);
    }
    let mut inputs = BTreeMap::new();
    for name in spans.files.filenames() {
        let path = PathBuf::from(name);
        if let Some(bytes) = texts.get(&path) {
            inputs.insert(load::display_name(&root, &name.to_string_lossy()), bytes.clone());
        }
    }
    drop_after_reply((value, vm));
    Ok(Evaluated {
        value: json,
        locs,
        inputs,
    })
}

thread_local! {
    // What `bounded` frees after it has sent the result.
    static LEFTOVER: std::cell::RefCell<Option<Box<dyn std::any::Any>>> = const { std::cell::RefCell::new(None) };
}

/// Frees `value` after this evaluation thread has sent its result
/// (`bounded`, under `Slot::free_after_finish`): freeing Nickel's heap
/// (~3 % of a small stack's check) then runs beside the checks instead of
/// before them.
fn drop_after_reply(value: impl std::any::Any) {
    LEFTOVER.with(|slot| *slot.borrow_mut() = Some(Box::new(value)));
}

/// An internal finding if Nickel's file table names a real file: only the
/// virtual roots (and Nickel's own snippets) may appear there.
fn outside_read(files: &Files) -> Option<Diagnostic> {
    files
        .filenames()
        .map(PathBuf::from)
        .any(|p| p.is_absolute() && !p.starts_with(load::STDLIB_ROOT) && !p.starts_with(load::PROJECT_ROOT))
        .then(|| {
            Diagnostic::error(Code::Internal, "Nickel read a file that `load` did not hand it")
                .with_help("this is a bug in stackc: please report it with the stack file")
        })
}

fn too_deep_finding(depth: usize) -> Diagnostic {
    Diagnostic::error(
        Code::TooDeep,
        format!("the stack's value is nested more than {depth} levels deep"),
    )
    .with_help("configuration data this deep is a mistake (a recursive definition?); flatten it")
}

/// Deepest nesting later stages accept: they, and the export itself,
/// recurse over the value.
const MAX_DEPTH: usize = 128;

/// `Some(MAX_DEPTH)` if `v` nests deeper than that (checked without
/// recursion, before anything recursive walks the value).
fn too_deep_nickel(v: &NickelValue) -> Option<usize> {
    let mut stack = vec![(v, 0usize)];
    while let Some((v, d)) = stack.pop() {
        if d > MAX_DEPTH {
            return Some(MAX_DEPTH);
        }
        match v.content_ref() {
            ValueContentRef::Record(Container::Alloc(record)) => {
                stack.extend(
                    record
                        .fields
                        .values()
                        .filter_map(|f| f.value.as_ref())
                        .map(|c| (c, d + 1)),
                );
            }
            ValueContentRef::Array(Container::Alloc(array)) => stack.extend(array.array.iter().map(|c| (c, d + 1))),
            _ => {}
        }
    }
    None
}

/// Turns Nickel file ids and byte spans into stackc spans, sharing one
/// `SourceFile` per file.
struct SpanMaker {
    root: PathBuf,
    files: Files,
    /// The stdlib texts this evaluation read with values unloaded (`trim`):
    /// (display name, text, original).
    unloaded: Vec<(String, Arc<str>, &'static str)>,
    cache: BTreeMap<FileId, Arc<SourceFile>>,
}

impl SpanMaker {
    fn new(root: PathBuf) -> Self {
        SpanMaker {
            root,
            files: Files::empty(),
            unloaded: Vec::new(),
            cache: BTreeMap::new(),
        }
    }

    fn file(&mut self, id: FileId) -> Arc<SourceFile> {
        let (root, files, unloaded) = (&self.root, &self.files, &self.unloaded);
        self.cache
            .entry(id)
            .or_insert_with(|| {
                let name = load::display_name(root, &files.name(id).to_string_lossy());
                let mut text = files.clone_source(id);
                // Nickel parsed the stdlib with its documentation blanked;
                // a diagnostic quotes the original (the same positions).
                if let Some(original) = original_stdlib_text(&name, &text) {
                    text = Arc::from(original);
                } else if let Some((_, _, original)) = unloaded.iter().find(|(n, t, _)| *n == name && **t == *text) {
                    text = Arc::from(*original);
                }
                // Snippets Nickel generates print closures with their memory
                // address: mask it (same length, so spans stay valid).
                if name.starts_with('<') && text.contains("@0x") {
                    text = Arc::from(mask_addresses(&text));
                }
                Arc::new(SourceFile { name, text })
            })
            .clone()
    }

    fn span(&mut self, raw: RawSpan) -> Span {
        Span {
            file: self.file(raw.src_id),
            range: raw.to_range(),
        }
    }
}

/// A value Nickel prints back ("evaluated to this value") helps when it is
/// a scalar; a whole evaluated record (a secret reference with its
/// contract, a module's lowering) is a page of noise.
fn is_printed_record(span: &Span) -> bool {
    let printed = span.file.text.get(span.range.clone()).unwrap_or("");
    span.file.name.starts_with("<unknown>") && printed.lines().count() > 3
}

fn mask_addresses(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("@0x") {
        out.push_str(&rest[..i + 3]);
        rest = &rest[i + 3..];
        let n = rest.bytes().take_while(u8::is_ascii_hexdigit).count();
        out.extend(std::iter::repeat_n('_', n));
        rest = &rest[n..];
    }
    out.push_str(rest);
    out
}

/// JSON pointer escaping (RFC 6901), so keys with `/` or `.` stay unambiguous.
pub fn pointer_escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// Where file `path` of machine `machine` is in the lowered stack.
pub fn file_ptr(machine: &str, path: &str) -> String {
    format!("/machines/{}/files/{}", pointer_escape(machine), pointer_escape(path))
}

fn collect_locs(v: &NickelValue, path: &mut String, pos: &PosTable, spans: &mut SpanMaker, out: &mut Locs) {
    match v.content_ref() {
        ValueContentRef::Record(Container::Alloc(record)) => {
            for (id, field) in record.fields.iter() {
                if field.metadata.not_exported() {
                    continue;
                }
                let Some(value) = &field.value else { continue };
                let len = path.len();
                path.push('/');
                path.push_str(&pointer_escape(id.label()));
                let loc = Loc {
                    key: id.pos.into_opt().map(|s| spans.span(s)),
                    value: value.pos(pos).into_opt().map(|s| spans.span(s)),
                };
                out.insert(path.clone(), loc);
                collect_locs(value, path, pos, spans, out);
                path.truncate(len);
            }
        }
        ValueContentRef::Array(Container::Alloc(array)) => {
            for (i, elt) in array.array.iter().enumerate() {
                let len = path.len();
                path.push('/');
                path.push_str(&i.to_string());
                let loc = Loc {
                    key: None,
                    value: elt.pos(pos).into_opt().map(|s| spans.span(s)),
                };
                out.insert(path.clone(), loc);
                collect_locs(elt, path, pos, spans, out);
                path.truncate(len);
            }
        }
        _ => {}
    }
}

/// Which stackc code a Nickel error gets.
fn classify(err: &NickelError, message: &str) -> Code {
    match err {
        NickelError::ParseErrors(_) => Code::Syntax,
        // Nickel reports a missing import wherever it resolves it, even
        // during typechecking.
        _ if message.starts_with("import of ") && message.contains("could not find import") => Code::ImportNotFound,
        // Imports are resolved while typechecking: their errors arrive here.
        NickelError::TypecheckError(t) => match t.borrow_error() {
            TypecheckErrorKind::ImportError(ImportErrorKind::ParseErrors(..)) => Code::Syntax,
            TypecheckErrorKind::ImportError(_) => Code::ImportNotFound,
            _ => Code::Type,
        },
        NickelError::ImportError(k) => match **k {
            ImportErrorKind::ParseErrors(..) => Code::Syntax,
            _ => Code::ImportNotFound,
        },
        NickelError::ExportError(_) => Code::NotExportable,
        NickelError::IOError(_) => Code::InputUnreadable,
        NickelError::EvalError(data) => match &data.error {
            EvalErrorKind::ParseError(_) => Code::Syntax,
            EvalErrorKind::MissingFieldDef { .. } => Code::MissingField,
            EvalErrorKind::SerializationError(_) => Code::NotExportable,
            EvalErrorKind::BlameError { .. } if message.contains("extra field") => Code::UnknownField,
            EvalErrorKind::BlameError { .. } => Code::Contract,
            _ => Code::Eval,
        },
        NickelError::ReplError(_) => Code::Internal,
    }
}

fn default_help(code: Code) -> Option<&'static str> {
    Some(match code {
        Code::Syntax => "fix the Nickel syntax at the marked place",
        Code::Contract => "change the value so it fits the option's type, shown as `expected type`",
        Code::UnknownField => "check the option's spelling against `docs/modules.md`",
        Code::MissingField => "give the option a value: it has no default",
        Code::ImportNotFound => {
            "check the path: imports are relative to the importing file; the stdlib is `stackc.ncl`"
        }
        Code::Type => "fix the expression so its type matches the annotation",
        Code::NotExportable => "functions and other non-data values cannot be part of the stack's output",
        _ => return None,
    })
}

/// Nickel messages name files by absolute path; diagnostics must not show
/// the build machine's paths (they would also make output depend on where
/// the project is checked out).
fn sanitize(message: &str, root: &std::path::Path) -> String {
    let mut m = message.to_owned();
    if m.starts_with("import of ")
        && let Some(i) = m.find(" failed: could not find import")
    {
        m = format!("cannot find the imported file `{}`", &m["import of ".len()..i]);
    }
    let root = root.to_string_lossy();
    m.replace(&format!("{root}/"), "")
        .replace(root.as_ref(), ".")
        .replace(&format!("{}/", load::PROJECT_ROOT), "")
        .replace(load::STDLIB_ROOT, load::STDLIB_DISPLAY)
}

/// One Nickel error, as one stackc diagnostic: the first codespan diagnostic
/// is the error, further ones (call-stack notes) become notes.
fn convert_error(err: NickelError, files: &mut Files, spans: &mut SpanMaker) -> Diagnostic {
    // The message for classification comes before conversion consumes `err`.
    let cs = {
        let probe = err.clone();
        probe.into_diagnostics(files)
    };
    let first_message = cs.first().map(|d| d.message.clone()).unwrap_or_default();
    let code = classify(&err, &first_message);
    spans.files = files.clone();
    spans.cache.clear();

    let mut iter = cs.into_iter();
    let Some(main) = iter.next() else {
        return Diagnostic::error(code, "Nickel reported an error without a message");
    };
    // Codespan puts custom contract messages on an indented second line.
    let message = main
        .message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(": ");
    let mut d = Diagnostic::error(code, sanitize(&message, &spans.root));
    d.severity = match main.severity {
        CsSeverity::Warning | CsSeverity::Note | CsSeverity::Help => Severity::Warning,
        _ => Severity::Error,
    };
    if code == Code::Internal {
        d.severity = Severity::Error;
    }
    for l in main.labels {
        let span = Span {
            file: spans.file(l.file_id),
            range: l.range,
        };
        if l.style != LabelStyle::Primary && is_printed_record(&span) {
            continue;
        }
        d.labels.push(Label {
            span,
            message: l.message,
            primary: l.style == LabelStyle::Primary,
        });
    }
    // Point first at the user's own file: "in this record" at the use site
    // says more than "required here" inside the stdlib.
    let in_stdlib = |l: &Label| l.span.file.name.starts_with(load::STDLIB_DISPLAY);
    if d.labels.iter().any(|l| l.primary && in_stdlib(l))
        && let Some(user) = d.labels.iter().position(|l| l.span.in_user())
    {
        for l in d.labels.iter_mut() {
            l.primary = false;
        }
        d.labels[user].primary = true;
    }
    if !d.labels.iter().any(|l| l.primary)
        && let Some(first) = d.labels.first_mut()
    {
        first.primary = true;
    }
    // Advice for contract authors ("append `, ..`") misleads users of the
    // stdlib's closed contracts: a misspelt option is theirs to fix.
    let mut notes: Vec<String> = main
        .notes
        .into_iter()
        .filter(|n| !n.contains("record contract might also be too strict"))
        .map(|n| sanitize(&n, &spans.root))
        .collect();
    // Nickel's own hints (did-you-mean, expected values) make the best help
    // line; our per-code advice comes after.
    d.help = if notes.is_empty() && d.message.contains("infinite recursion") {
        // Nearly always a record field shadowing an outer `let` or argument.
        Some(
            "inside a record, a field's name means that field: `{ port = port }` is defined as itself; \
             rename the outer `let` or argument"
                .to_owned(),
        )
    } else if notes.is_empty() {
        default_help(code).map(str::to_owned)
    } else {
        Some(notes.remove(0))
    };
    d.notes = notes;
    for extra in iter {
        let msg = extra.message.lines().map(str::trim).collect::<Vec<_>>().join(" ");
        if !msg.is_empty() {
            d.notes.push(msg);
        }
        for l in extra.labels {
            let span = Span {
                file: spans.file(l.file_id),
                range: l.range,
            };
            if is_printed_record(&span) {
                continue;
            }
            d.labels.push(Label {
                span,
                message: l.message,
                primary: false,
            });
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use nickel_lang_core::{program::ProgramBuilder, typecheck::TypecheckMode};

    use super::{nickel_std_blanked, original_stdlib_text};
    use crate::load;

    /// `evaluate` marks the embedded stdlib as typechecked instead of
    /// walking it on every run: this is the check it skips, done once, on
    /// the texts it marks (the documentation blanked).
    #[test]
    fn the_embedded_stdlib_typechecks() {
        let dir = std::env::temp_dir().join(format!("stackc-stdlib-typecheck-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut all = String::from("[\n");
        for (name, text) in load::STDLIB_EVAL {
            std::fs::write(dir.join(name), text).unwrap();
            all += &format!("  import \"{name}\",\n");
        }
        all += "]\n";
        let main = dir.join("all-of-the-stdlib.ncl");
        std::fs::write(&main, all).unwrap();
        let mut program = ProgramBuilder::new()
            .add_path(&main)
            .build::<nickel_lang_core::eval::cache::CacheImpl>()
            .unwrap();
        let result = program.typecheck(TypecheckMode::Walk);
        let _ = std::fs::remove_dir_all(&dir);
        assert!(result.is_ok(), "the stdlib does not typecheck: {:?}", result.err());
    }

    /// `original` with exactly its documentation strings blanked, as
    /// Nickel's own lexer finds them: a plain or multiline string right
    /// after `| doc`, without interpolation. Also how many.
    fn blanked_by_nickel_lexer(name: &str, original: &str) -> (String, usize) {
        use nickel_lang_parser::lexer::{Lexer, MultiStringToken, NormalToken, StringToken, Token};
        let tokens: Vec<_> = Lexer::new(original)
            .map(|t| t.unwrap_or_else(|e| panic!("{name}: {e:?}")))
            .collect();
        let mut expected = original.as_bytes().to_vec();
        let (mut i, mut blanked) = (0, 0);
        while i + 1 < tokens.len() {
            let opens_string = matches!(
                tokens[i + 1].1,
                Token::Normal(NormalToken::DoubleQuote | NormalToken::MultiStringStart(_))
            );
            let annotation = i > 0 && matches!(tokens[i - 1].1, Token::Normal(NormalToken::Pipe));
            if !(annotation && matches!(tokens[i].1, Token::Normal(NormalToken::Doc)) && opens_string) {
                i += 1;
                continue;
            }
            let start = tokens[i + 1].0;
            // Open interpolations, each with its open braces: a closing
            // quote inside one belongs to a nested string.
            let (mut j, mut open, mut interpolated) = (i + 2, Vec::<usize>::new(), false);
            let end = loop {
                match (&tokens[j].1, open.last_mut()) {
                    (Token::Str(StringToken::Interpolation) | Token::MultiStr(MultiStringToken::Interpolation), _) => {
                        open.push(0);
                        interpolated = true;
                    }
                    (Token::Normal(NormalToken::LBrace), Some(braces)) => *braces += 1,
                    (Token::Normal(NormalToken::RBrace), Some(0)) => {
                        open.pop();
                    }
                    (Token::Normal(NormalToken::RBrace), Some(braces)) => *braces -= 1,
                    (Token::Normal(NormalToken::DoubleQuote) | Token::MultiStr(MultiStringToken::End), None) => {
                        break tokens[j].2;
                    }
                    _ => {}
                }
                j += 1;
            };
            if !interpolated {
                crate::blank::blank(&mut expected[start..end]);
                blanked += 1;
            }
            i = j + 1;
        }
        (String::from_utf8(expected).unwrap(), blanked)
    }

    /// The stdlib evaluation reads (stackc's, blanked by build.rs, and
    /// Nickel's, blanked at run time) is the original with exactly its
    /// documentation strings blanked: the scanner in `blank` agrees with
    /// Nickel's lexer (which, unlike the scanner, knows `doc` the keyword).
    #[test]
    fn evaluation_reads_the_stdlib_with_only_its_documentation_blanked() {
        let ours: Vec<(&str, &str, &str)> = load::STDLIB
            .iter()
            .zip(load::STDLIB_EVAL)
            .map(|((name, original), (eval_name, blanked))| {
                assert_eq!(name, eval_name);
                (*name, *original, *blanked)
            })
            .collect();
        let nickel: Vec<(&str, &str, &str)> = nickel_std_blanked()
            .iter()
            .map(|m| (m.name.as_str(), m.original, &*m.blanked))
            .collect();
        for (whose, modules) in [("stackc's", ours), ("Nickel's", nickel)] {
            let mut count = 0;
            for (name, original, blanked) in modules {
                let (expected, n) = blanked_by_nickel_lexer(name, original);
                assert!(
                    expected == blanked,
                    "{name}: not its original with the documentation blanked"
                );
                count += n;
            }
            assert!(
                count > 100,
                "only {count} documentation strings blanked in {whose} stdlib"
            );
        }
    }

    /// The scanner agrees with Nickel's lexer on the syntax near a
    /// documentation string that the stdlib does not use today.
    #[test]
    fn blanking_agrees_with_nickel_on_tricky_syntax() {
        let cases = [
            // Not documentation: a field named `doc`, an enum tag.
            "{ a = r.doc \"kept\", b | doc \"gone\" = 1 }",
            "{ a = 'doc \"kept\", b | doc \"gone\" }",
            // In a multiline string, `\"%{` is a quote and an interpolation.
            "{ a | doc m%\"say \"%{x}\" kept\"% = 1, b | doc m%\"gone\"% = 2 }",
            // Interpolating documentation is kept, nested strings and all.
            "{ a | doc \"%{ { k = \"}\" }.k } kept\" = 1, b | doc \"gone\" = 2 }",
            "{ a | doc m%%\"kept %%{x} and %{y} \"% \"%% = 1, b | doc m%%\"gone %{y}\"%% = 2 }",
            // Comments and escapes.
            "{ # | doc \"comment\"\n a | doc \"esc \\\" quote\" = 1, b | doc\n # between\n \"gone\" }",
        ];
        for case in cases {
            let (expected, n) = blanked_by_nickel_lexer(case, case);
            assert!(n >= 1, "{case}: nothing to blank");
            assert_eq!(crate::blank::blank_docs(case), expected, "{case}");
        }
    }

    /// A diagnostic quotes the stdlib as written: `SpanMaker` swaps the
    /// blanked text evaluation read for the original, and only that text.
    #[test]
    fn diagnostics_quote_the_original_stdlib() {
        let (name, text) = load::STDLIB_EVAL[0];
        let display = format!("{}/{name}", load::STDLIB_DISPLAY);
        assert_eq!(original_stdlib_text(&display, text), Some(load::STDLIB[0].1));
        assert_eq!(original_stdlib_text(&display, "std.fail_with \"stub\"\n"), None);
        let std = &nickel_std_blanked()[0];
        assert_eq!(original_stdlib_text(&std.name, &std.blanked), Some(std.original));
        assert_eq!(original_stdlib_text(&std.name, std.original), None);
        assert_ne!(*std.blanked, *std.original);
    }

    /// A cache entry names the embedded sources instead of holding them,
    /// and reads back the same spans; other texts (the user's, a stub)
    /// are kept whole.
    #[test]
    fn a_cache_entry_names_embedded_sources() {
        use std::sync::Arc;

        use super::{Evaluated, Loc, Locs, Stored};
        use crate::diag::{SourceFile, Span};
        let (module, text) = load::STDLIB[0];
        let file = |name: String, text: &str| {
            Arc::new(SourceFile {
                name,
                text: Arc::from(text),
            })
        };
        let stdlib = file(format!("{}/{module}", load::STDLIB_DISPLAY), text);
        let stub = file(
            format!("{}/{}", load::STDLIB_DISPLAY, load::STDLIB[1].0),
            "std.fail_with \"x\"\n",
        );
        let user = file("prod.ncl".into(), "{ a = 1 }\n");
        let mut locs = Locs::new();
        for (pointer, f) in [("/a", &stdlib), ("/b", &stub), ("/c", &user)] {
            let span = Span {
                file: f.clone(),
                range: 2..5,
            };
            locs.insert(
                pointer.into(),
                Loc {
                    key: Some(span.clone()),
                    value: Some(span),
                },
            );
        }
        let evaluated = Evaluated {
            value: serde_json::json!({}),
            locs,
            inputs: Default::default(),
        };
        let stored = Stored::of("addr", &evaluated);
        let texts: Vec<bool> = stored.files.iter().map(|(_, t)| t.is_some()).collect();
        assert_eq!(texts, [false, true, true], "only the embedded text is left out");
        let back = stored.into_evaluated().expect("reads back");
        for (pointer, f) in [("/a", &stdlib), ("/b", &stub), ("/c", &user)] {
            let span = back.locs[pointer].value.as_ref().unwrap();
            assert_eq!(
                (span.file.name.as_str(), &*span.file.text, span.range.clone()),
                (f.name.as_str(), &*f.text, 2..5)
            );
        }
    }
}

#[cfg(test)]
mod module_tests {
    use nickel_lang_core::cache::{CacheHub, SourcePath};

    use super::{evaluate_here, unneeded_modules};
    use crate::load::{self, InputFormat};

    /// A project of one file, `text`, and its sources as `evaluate_here`
    /// takes them.
    fn project_of(text: &str) -> (crate::load::Project, super::Sources) {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("stackc-miss-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let stack = dir.join("prod.ncl");
        std::fs::write(&stack, text).unwrap();
        let project = crate::load::load(&stack, None, super::Limits::default()).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let sources = super::sources_of(&project);
        (project, sources)
    }

    /// Runs `f` on a stack as large as `bounded` gives: Nickel recurses
    /// deeply.
    fn on_big_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::Builder::new()
            .stack_size(256 << 20)
            .spawn(f)
            .unwrap()
            .join()
            .unwrap()
    }

    /// The first diagnostic message of evaluating `sources` with the
    /// project's stubs and `std.ncl` trimmed.
    fn first_message(root: std::path::PathBuf, sources: super::Sources) -> String {
        on_big_stack(move || {
            let stubs = unneeded_modules(sources.iter().map(|(_, _, t)| t.as_str()));
            let std = super::trimmed_now(&sources, &stubs);
            match evaluate_here(root, sources, &stubs, Some(std)) {
                Err(found) => found[0].message.clone(),
                Ok(_) => String::new(),
            }
        })
    }

    /// A function reached where trimming cannot see it (through an alias)
    /// is a miss, and the stack is evaluated again with all of `std.ncl`.
    #[test]
    fn a_trimmed_function_reached_anyway_is_evaluated_whole() {
        let (project, sources) = project_of("let arr = std.array in { x = arr.reverse [1, 2] }\n");
        let message = first_message(project.root.clone(), sources);
        assert!(message.contains(crate::trim::MARKER), "not a trimming miss: {message}");
        let evaluated = super::evaluate(&project, super::Limits::default()).unwrap();
        assert_eq!(evaluated.value, serde_json::json!({ "x": [2, 1] }));
    }

    /// A value a module loads only for stacks naming its words
    /// (`# load-body-when: kubernetes`) reached anyway is a trimming miss,
    /// and the stack is evaluated again with every value loaded.
    #[test]
    fn a_body_unloaded_reached_anyway_is_evaluated_whole() {
        let backup = load::STDLIB.iter().position(|(n, _)| *n == "backup.ncl").unwrap();
        assert!(
            load::STDLIB_BODIES[backup].iter().any(|(w, _, _)| *w == "kubernetes"),
            "backup.ncl no longer unloads its Kubernetes lowering: pick another body"
        );
        let (project, sources) = project_of("let b = import \"backup.ncl\" in { x = std.typeof b.lower_k8s }\n");
        let message = first_message(project.root.clone(), sources);
        assert!(message.contains(crate::trim::MARKER), "not a trimming miss: {message}");
        let evaluated = super::evaluate(&project, super::Limits::default()).unwrap();
        assert_eq!(evaluated.value, serde_json::json!({ "x": "Function" }));
    }

    /// A diagnostic quoting a module read with a value unloaded quotes the
    /// module as written.
    #[test]
    fn diagnostics_quote_a_module_with_values_unloaded_as_written() {
        let stackc = load::STDLIB.iter().position(|(n, _)| *n == "stackc.ncl").unwrap();
        assert!(!load::STDLIB_BODIES[stackc].is_empty());
        let (project, sources) =
            project_of("let stackc = import \"stackc.ncl\" in\nstackc.stack { name = 5, machines = {} }\n");
        let found = on_big_stack(move || {
            let stubs = unneeded_modules(sources.iter().map(|(_, _, t)| t.as_str()));
            let std = super::trimmed_now(&sources, &stubs);
            match evaluate_here(project.root.clone(), sources, &stubs, Some(std)) {
                Err(found) => found,
                Ok(_) => panic!("a stack without machines evaluated"),
            }
        });
        let quoted: Vec<_> = found
            .iter()
            .flat_map(|d| &d.labels)
            .filter(|l| l.span.file.name == "<stackc>/stackc.ncl")
            .collect();
        assert!(!quoted.is_empty(), "{found:?}");
        for label in quoted {
            assert_eq!(*label.span.file.text, *load::STDLIB[stackc].1);
        }
    }

    /// Each `# load-body-when:` value is a whole expression: Nickel parses
    /// it alone, an `=` is just before it, and a `,`, `}` or `in` after.
    #[test]
    fn bodies_unloaded_are_whole_values() {
        let mut seen = 0;
        for (i, bodies) in load::STDLIB_BODIES.iter().enumerate() {
            let text = load::STDLIB_EVAL[i].1;
            for (_, start, end) in *bodies {
                seen += 1;
                let body = &text[*start..*end];
                let mut cache = CacheHub::new();
                let id = cache.sources.add_string(
                    SourcePath::Path("body.ncl".into(), InputFormat::Nickel),
                    body.to_owned(),
                );
                assert!(
                    cache.parse_to_ast(id).is_ok(),
                    "{}: not an expression:\n{body}",
                    load::STDLIB[i].0
                );
                assert!(
                    text[..*start].trim_end().ends_with('='),
                    "{}: {body}",
                    load::STDLIB[i].0
                );
                let after: String = text[*end..]
                    .lines()
                    .map(|l| l.split('#').next().unwrap_or(""))
                    .collect::<Vec<_>>()
                    .join(" ");
                let after = after.trim_start();
                assert!(
                    after.starts_with(',')
                        || after.starts_with('}')
                        || after
                            .strip_prefix("in")
                            .is_some_and(|r| r.starts_with(|c: char| !c.is_alphanumeric() && c != '_')),
                    "{}: {body}",
                    load::STDLIB[i].0
                );
            }
        }
        assert!(seen >= 3, "only {seen} values are loaded on demand");
    }

    /// A stub reached is a stub's miss (the stub's `std.fail_with` is
    /// kept), and every module is loaded again.
    #[test]
    fn a_stub_reached_anyway_is_a_stubs_miss() {
        let text =
            "let s = import \"stackc.ncl\" in { x = std.typeof (std.record.get \"mod%{\"ules\"}\" s).wellknown }\n";
        let (project, sources) = project_of(text);
        let message = first_message(project.root.clone(), sources);
        assert!(message.contains(super::NOT_LOADED), "not a stub's miss: {message}");
        let evaluated = super::evaluate(&project, super::Limits::default()).unwrap();
        assert_eq!(evaluated.value, serde_json::json!({ "x": "Record" }));
    }

    /// Every example evaluates with its unnamed modules stubbed and
    /// `std.ncl` trimmed, without a miss (a miss costs a second
    /// evaluation), to the value the whole stdlib gives.
    #[test]
    fn examples_evaluate_trimmed_without_a_miss() {
        let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let mut stacks: Vec<_> = std::fs::read_dir(&examples)
            .unwrap()
            .map(|e| e.unwrap().path().join("prod.ncl"))
            .filter(|p| p.exists())
            .collect();
        stacks.sort();
        assert!(stacks.len() >= 5, "{stacks:?}");
        on_big_stack(move || {
            for stack in stacks {
                let project = crate::load::load(&stack, None, super::Limits::default()).unwrap();
                let sources = super::sources_of(&project);
                let skip = unneeded_modules(sources.iter().map(|(_, _, t)| t.as_str()));
                let std = super::trimmed_now(&sources, &skip);
                let trimmed = evaluate_here(project.root.clone(), sources.clone(), &skip, Some(std))
                    .unwrap_or_else(|e| panic!("{}: {e:?}", stack.display()));
                let whole = evaluate_here(project.root.clone(), sources, &[], None).unwrap();
                assert!(trimmed.value == whole.value, "{}", stack.display());
            }
        });
    }

    /// No stack of the test suite or the examples (written for other
    /// purposes, many of them broken on purpose) reaches a stub or an
    /// unloaded value: the words are wide enough for them. A miss is never
    /// wrong, but costs a second evaluation.
    #[test]
    fn no_stack_of_the_tests_misses() {
        fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
            for e in std::fs::read_dir(dir).unwrap() {
                let path = e.unwrap().path();
                if path.is_dir() {
                    walk(&path, out);
                } else if path.extension().is_some_and(|x| x == "ncl") {
                    out.push(path);
                }
            }
        }
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut stacks = Vec::new();
        walk(&root.join("tests"), &mut stacks);
        walk(&root.join("examples"), &mut stacks);
        stacks.sort();
        assert!(stacks.len() > 100, "{}", stacks.len());
        on_big_stack(move || {
            let mut evaluated = 0;
            for stack in stacks {
                let Ok(project) = crate::load::load(&stack, None, super::Limits::default()) else {
                    continue;
                };
                let sources = super::sources_of(&project);
                let stubs = unneeded_modules(sources.iter().map(|(_, _, t)| t.as_str()));
                let std = super::trimmed_now(&sources, &stubs);
                evaluated += 1;
                if let Err(found) = evaluate_here(project.root.clone(), sources, &stubs, Some(std)) {
                    let missed = found
                        .iter()
                        .find(|d| d.message.contains(crate::trim::MARKER) || d.message.contains(super::NOT_LOADED));
                    assert!(missed.is_none(), "{} misses: {missed:?}", stack.display());
                }
            }
            assert!(evaluated > 100, "only {evaluated} stacks load");
        });
    }

    #[test]
    fn a_stack_loads_the_modules_its_files_name() {
        let lair = include_str!("../../examples/lair-chat/prod.ncl");
        let skip = unneeded_modules([lair].into_iter());
        for m in [
            "matrix.ncl",
            "synapse.ncl",
            "kubernetes.ncl",
            "nginx.ncl",
            "monitoring.ncl",
            "postgres.ncl",
        ] {
            assert!(skip.contains(&m), "lair-chat leaves {m} out: {skip:?}");
        }
        let with_modules =
            "let pg = stackc.modules.postgres.lower \"pg\" {} in stackc.stack { machines.a.backup = {} }";
        let skip = unneeded_modules([lair, with_modules].into_iter());
        for m in ["postgres.ncl", "matrix.ncl", "backup.ncl"] {
            assert!(
                !skip.contains(&m),
                "{m} is loaded when a file names its field: {skip:?}"
            );
        }
        assert!(skip.contains(&"kubernetes.ncl"), "{skip:?}");
    }
}
