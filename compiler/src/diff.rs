//! `diff`: compares two bundles and renders the result (`stackc diff`).
//!
//! Pure: the caller reads both bundles (a directory, or a build of a git
//! ref) into [`Bundle`] maps; nothing here touches the file system, the
//! environment or the clock, and every output is deterministic (sorted maps,
//! no hashing, no `HashMap`).
//!
//! Conventions (docs: research "What `stackc diff` should show"):
//! - summary first, per machine, then a grand total (nix, Terraform);
//! - JSON and YAML compared as data, not lines: changes are addressed by
//!   dyff-style paths (`clients[client_id=mas].redirect_uris[0]`), key
//!   order is ignored and list items with a natural key are matched by it,
//!   so reordering is not a change;
//! - everything else gets a unified text diff (3 lines of context);
//! - secrets are redacted everywhere: no byte of a secret file's content,
//!   nor any digest of it, reaches any rendering, only whether it changed.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use similar::TextDiff;

/// A bundle file and the bundle: the same types `render` produces and
/// `bundle::read` reads back, so built and on-disk sides compare directly.
pub use crate::render::{Rendered as Bundle, RenderedFile as BundleFile};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Added,
    Removed,
    Modified,
}

impl Change {
    fn as_str(self) -> &'static str {
        match self {
            Change::Added => "added",
            Change::Removed => "removed",
            Change::Modified => "modified",
        }
    }
}

/// A file's mode before and after, when both sides have the file and the
/// modes differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModeChange {
    pub old: u32,
    pub new: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FileDiff {
    pub path: String,
    pub change: Change,
    /// Either side marks the file secret.
    pub secret: bool,
    pub detail: Detail,
    /// Set whenever the mode changed, whatever `detail` says about the
    /// content (`Detail` alone cannot carry both a content and a mode change).
    pub mode: Option<ModeChange>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Detail {
    /// Secret file: never any content, only whether it changed.
    Secret { changed: bool },
    /// JSON or YAML compared structurally: one entry per changed leaf/subtree.
    Structured(Vec<PathChange>),
    /// Unified text diff (3 lines of context), for line formats (Caddyfile,
    /// units, nft, env...). Also used for added and removed files (diffed
    /// against nothing), and [`BINARY`] for content that is not UTF-8.
    Text(String),
    /// Same content, only the mode differs.
    ModeOnly { old: u32, new: u32 },
}

/// The `Detail::Text` of a file that is not valid UTF-8 on either side.
pub const BINARY: &str = "binary files differ";

#[derive(Debug, Clone, PartialEq)]
pub struct PathChange {
    /// dyff-style path; empty for the document root.
    pub path: String,
    /// `None`: the path was added.
    pub old: Option<Value>,
    /// `None`: the path was removed.
    pub new: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Diff {
    /// Sorted by path; unchanged files are not listed (a secret file whose
    /// bytes and mode are unchanged is not listed either).
    pub files: Vec<FileDiff>,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

// ---------------------------------------------------------------------------
// Comparison

/// Compares two bundles. A file whose content is equal as data (JSON/YAML
/// differing only in key order, formatting or the order of naturally keyed
/// list items) and whose mode is unchanged counts as unchanged.
pub fn diff(old: &Bundle, new: &Bundle) -> Diff {
    let paths: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    let files = paths
        .into_iter()
        .filter_map(|path| diff_file(path, old.get(path), new.get(path)))
        .collect();
    Diff { files }
}

fn diff_file(path: &str, old: Option<&BundleFile>, new: Option<&BundleFile>) -> Option<FileDiff> {
    let secret = old.is_some_and(|f| f.secret) || new.is_some_and(|f| f.secret);
    let (change, detail, mode) = match (old, new) {
        (None, None) => return None,
        (None, Some(n)) => (Change::Added, whole_file(path, secret, None, Some(&n.bytes)), None),
        (Some(o), None) => (Change::Removed, whole_file(path, secret, Some(&o.bytes), None), None),
        (Some(o), Some(n)) => {
            let mode = (o.mode != n.mode).then_some(ModeChange {
                old: o.mode,
                new: n.mode,
            });
            let content = if secret {
                // Comparing is fine; only the verdict leaves this function.
                (o.bytes != n.bytes).then_some(Detail::Secret { changed: true })
            } else {
                content_detail(path, &o.bytes, &n.bytes)
            };
            let detail = match (content, mode) {
                (Some(d), _) => d,
                (None, None) => return None,
                // The mode is not secret: report it, but keep the secret marker.
                (None, Some(_)) if secret => Detail::Secret { changed: false },
                (None, Some(m)) => Detail::ModeOnly { old: m.old, new: m.new },
            };
            (Change::Modified, detail, mode)
        }
    };
    Some(FileDiff {
        path: path.to_owned(),
        change,
        secret,
        detail,
        mode,
    })
}

/// Detail for an added or removed file: diffed against nothing, so the
/// stat counts its lines (the human rendering only prints the count).
fn whole_file(path: &str, secret: bool, old: Option<&[u8]>, new: Option<&[u8]>) -> Detail {
    if secret {
        return Detail::Secret { changed: true };
    }
    // The missing side is empty text; a side that is not UTF-8 is binary.
    match (utf8_or_empty(old), utf8_or_empty(new)) {
        (Some(o), Some(n)) => {
            // `/dev/null` as in git, so the text is a patch `patch -p1` applies.
            let a = old.map_or_else(|| "/dev/null".to_owned(), |_| format!("a/{path}"));
            let b = new.map_or_else(|| "/dev/null".to_owned(), |_| format!("b/{path}"));
            Detail::Text(unified(o, n, &a, &b))
        }
        _ => Detail::Text(BINARY.to_owned()),
    }
}

fn utf8_or_empty(bytes: Option<&[u8]>) -> Option<&str> {
    bytes.map_or(Some(""), |b| std::str::from_utf8(b).ok())
}

/// Detail for a non-secret file present on both sides, `None` if equal.
fn content_detail(path: &str, old: &[u8], new: &[u8]) -> Option<Detail> {
    if old == new {
        return None;
    }
    let (Ok(o), Ok(n)) = (std::str::from_utf8(old), std::str::from_utf8(new)) else {
        return Some(Detail::Text(BINARY.to_owned()));
    };
    if let Some(format) = DataFormat::of(path)
        && let (Some(a), Some(b)) = (format.parse(o), format.parse(n))
    {
        let mut changes = Vec::new();
        compare(&mut Vec::new(), &a, &b, &mut changes);
        return (!changes.is_empty()).then_some(Detail::Structured(changes));
    }
    Some(Detail::Text(unified(o, n, &format!("a/{path}"), &format!("b/{path}"))))
}

fn unified(old: &str, new: &str, a: &str, b: &str) -> String {
    // No deadline is configured: similar's default never reads the clock,
    // so the diff is the same on every run.
    TextDiff::from_lines(old, new)
        .unified_diff()
        .context_radius(3)
        .header(a, b)
        .to_string()
}

#[derive(Clone, Copy)]
enum DataFormat {
    Json,
    Yaml,
}

impl DataFormat {
    fn of(path: &str) -> Option<DataFormat> {
        let (_, ext) = path.rsplit_once('.')?;
        if ext.eq_ignore_ascii_case("json") {
            Some(DataFormat::Json)
        } else if ext.eq_ignore_ascii_case("yaml") || ext.eq_ignore_ascii_case("yml") {
            Some(DataFormat::Yaml)
        } else {
            None
        }
    }

    /// `None` when the text does not parse: the caller falls back to a text
    /// diff, which shows exactly what broke.
    fn parse(self, text: &str) -> Option<Value> {
        match self {
            DataFormat::Json => serde_json::from_str(text).ok(),
            DataFormat::Yaml => {
                // A multi-document stream compares as a list of documents
                // (paths `[0].x`); a single document as itself.
                let mut docs = yaml_serde::Deserializer::from_str(text)
                    .map(Value::deserialize)
                    .collect::<Result<Vec<_>, _>>()
                    .ok()?;
                match docs.len() {
                    0 => Some(Value::Null),
                    1 => docs.pop(),
                    _ => Some(Value::Array(docs)),
                }
            }
        }
    }
}

/// One step of a path into a document.
enum Seg {
    Key(String),
    Index(usize),
    /// A list item matched by its natural key: `[client_id=mas]`.
    Item {
        key: &'static str,
        value: String,
    },
}

/// Candidate natural keys for list items, in order of preference.
const NATURAL_KEYS: [&str; 5] = ["name", "id", "client_id", "path", "key"];

/// Appends the changes between `old` and `new` (at path `at`) to `out`, in
/// structural order: object keys sorted, list items by index or natural key.
fn compare(at: &mut Vec<Seg>, old: &Value, new: &Value, out: &mut Vec<PathChange>) {
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for key in keys {
                at.push(Seg::Key(key.clone()));
                compare_opt(at, a.get(key), b.get(key), out);
                at.pop();
            }
        }
        (Value::Array(a), Value::Array(b)) => match natural_key(a, b) {
            Some(key) => {
                // Canonical JSON of the key value -> (display, old item, new item).
                let mut items: BTreeMap<String, (String, Option<&Value>, Option<&Value>)> = BTreeMap::new();
                for (side, list) in [(0, a), (1, b)] {
                    for item in list {
                        let k = &item[key];
                        let entry = items
                            .entry(k.to_string())
                            .or_insert_with(|| (key_value_display(k), None, None));
                        if side == 0 {
                            entry.1 = Some(item);
                        } else {
                            entry.2 = Some(item);
                        }
                    }
                }
                for (display, o, n) in items.into_values() {
                    at.push(Seg::Item { key, value: display });
                    compare_opt(at, o, n, out);
                    at.pop();
                }
            }
            None => {
                for i in 0..a.len().max(b.len()) {
                    at.push(Seg::Index(i));
                    compare_opt(at, a.get(i), b.get(i), out);
                    at.pop();
                }
            }
        },
        _ if old != new => out.push(PathChange {
            path: render_path(at),
            old: Some(old.clone()),
            new: Some(new.clone()),
        }),
        _ => {}
    }
}

fn compare_opt(at: &mut Vec<Seg>, old: Option<&Value>, new: Option<&Value>, out: &mut Vec<PathChange>) {
    match (old, new) {
        (Some(o), Some(n)) => compare(at, o, n, out),
        (None, None) => {}
        _ => out.push(PathChange {
            path: render_path(at),
            old: old.cloned(),
            new: new.cloned(),
        }),
    }
}

/// The first of [`NATURAL_KEYS`] that every item of both lists has, with a
/// string or number value unique within each list. Lists of anything but
/// such objects are compared index by index.
fn natural_key(a: &[Value], b: &[Value]) -> Option<&'static str> {
    if a.is_empty() && b.is_empty() {
        return None;
    }
    let keyed_by = |items: &[Value], key: &str| {
        let mut seen = BTreeSet::new();
        items.iter().all(|item| match item.get(key) {
            // Canonical JSON, so that "1" and 1 stay distinct.
            Some(v @ (Value::String(_) | Value::Number(_))) => seen.insert(v.to_string()),
            _ => false,
        })
    };
    NATURAL_KEYS
        .into_iter()
        .find(|key| keyed_by(a, key) && keyed_by(b, key))
}

fn render_path(at: &[Seg]) -> String {
    let mut s = String::new();
    for seg in at {
        match seg {
            Seg::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(&quote_if(k, |c| matches!(c, '.' | '[' | ']' | '"' | '\\')));
            }
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
            Seg::Item { key, value } => s.push_str(&format!("[{key}={value}]")),
        }
    }
    s
}

/// A natural key's value as shown in `[name=value]`: bare when unambiguous.
fn key_value_display(v: &Value) -> String {
    match v {
        Value::String(s) => quote_if(s, |c| matches!(c, '[' | ']' | '"' | '=' | '\\')),
        other => other.to_string(),
    }
}

/// `s` as a JSON string literal if it is empty, contains whitespace or a
/// control character, or a character `special` to the path syntax.
fn quote_if(s: &str, special: impl Fn(char) -> bool) -> String {
    if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control() || special(c)) {
        Value::from(s).to_string()
    } else {
        s.to_owned()
    }
}

// ---------------------------------------------------------------------------
// Counting, shared by the renderings

#[derive(Serialize, Default, Clone, Copy)]
struct Counts {
    added: usize,
    removed: usize,
    modified: usize,
}

impl Counts {
    fn add(&mut self, change: Change) {
        match change {
            Change::Added => self.added += 1,
            Change::Removed => self.removed += 1,
            Change::Modified => self.modified += 1,
        }
    }
}

/// The machine a bundle path belongs to: its first component.
fn machine(path: &str) -> &str {
    path.split('/').next().unwrap_or(path)
}

fn per_machine(d: &Diff) -> (Counts, BTreeMap<&str, Counts>) {
    let mut total = Counts::default();
    let mut machines: BTreeMap<&str, Counts> = BTreeMap::new();
    for f in &d.files {
        total.add(f.change);
        machines.entry(machine(&f.path)).or_default().add(f.change);
    }
    (total, machines)
}

/// Lines inserted and deleted by a unified diff: the `+`/`-` lines after the
/// first hunk header (the `---`/`+++` file header comes before it).
fn text_counts(unified: &str) -> (usize, usize) {
    let (mut ins, mut del) = (0, 0);
    for line in hunk_lines(unified) {
        match line.as_bytes().first() {
            Some(b'+') => ins += 1,
            Some(b'-') => del += 1,
            _ => {}
        }
    }
    (ins, del)
}

/// The lines of a unified diff from the first hunk header on. Split on `\n`
/// only, so a `\r` stays part of its line and a CRLF change stays visible.
fn hunk_lines(unified: &str) -> impl Iterator<Item = &str> {
    unified
        .strip_suffix('\n')
        .unwrap_or(unified)
        .split('\n')
        .skip_while(|l| !l.starts_with("@@"))
}

/// (added, removed, modified) paths of a structured diff.
fn path_counts(changes: &[PathChange]) -> (usize, usize, usize) {
    changes.iter().fold((0, 0, 0), |(a, r, m), c| match (&c.old, &c.new) {
        (None, Some(_)) => (a + 1, r, m),
        (Some(_), None) => (a, r + 1, m),
        _ => (a, r, m + 1),
    })
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("{n} {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// Control characters (escape sequences, `\r`) and bidi formatting
/// characters from file names and text lines are shown escaped, so a file
/// cannot drive the user's terminal or make a line read as another.
fn sanitize(s: &str) -> String {
    let escaped = |c: char| (c.is_control() && c != '\t') || crate::diag::is_bidi(c);
    if !s.chars().any(escaped) {
        return s.to_owned();
    }
    s.chars()
        .map(|c| {
            if c.is_control() && c != '\t' {
                c.escape_default().to_string()
            } else if escaped(c) {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Human rendering

/// ANSI styling, or none at all.
#[derive(Clone, Copy)]
struct Paint(bool);

const BOLD: &str = "1";
const BOLD_GREEN: &str = "1;32";
const BOLD_RED: &str = "1;31";
const GREEN: &str = "32";
const RED: &str = "31";
const CYAN: &str = "36";

impl Paint {
    fn wrap(self, sgr: &str, s: &str) -> String {
        if self.0 {
            format!("\x1b[{sgr}m{s}\x1b[0m")
        } else {
            s.to_owned()
        }
    }
}

/// Summary first (per machine, then the total), then each file with its
/// changes. `color` adds ANSI styles; without it the output has no escape.
pub fn render_human(d: &Diff, color: bool) -> String {
    Human {
        diff: d,
        paint: Paint(color),
    }
    .to_string()
}

struct Human<'a> {
    diff: &'a Diff,
    paint: Paint,
}

impl fmt::Display for Human<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.diff.is_empty() {
            return writeln!(f, "no changes");
        }
        let (total, machines) = per_machine(self.diff);
        for (name, c) in &machines {
            writeln!(
                f,
                "{}: {} added, {} removed, {} changed",
                sanitize(name),
                c.added,
                c.removed,
                c.modified
            )?;
        }
        let files = total.added + total.removed + total.modified;
        writeln!(
            f,
            "{} changed on {}",
            plural(files, "file"),
            plural(machines.len(), "machine")
        )?;
        for file in &self.diff.files {
            writeln!(f)?;
            self.file(f, file)?;
        }
        Ok(())
    }
}

impl Human<'_> {
    fn file(&self, f: &mut fmt::Formatter<'_>, file: &FileDiff) -> fmt::Result {
        let p = self.paint;
        let (sigil, style) = match file.change {
            Change::Added => ('+', BOLD_GREEN),
            Change::Removed => ('-', BOLD_RED),
            Change::Modified => ('~', BOLD),
        };
        writeln!(f, "{}", p.wrap(style, &format!("{sigil} {}", sanitize(&file.path))))?;
        // First, so a long content diff cannot bury it.
        let mode = match file.detail {
            Detail::ModeOnly { old, new } => Some(ModeChange { old, new }),
            _ => file.mode,
        };
        if let Some(m) = mode {
            writeln!(f, "  mode {:04o} → {:04o}", m.old, m.new)?;
        }
        match &file.detail {
            Detail::Secret { changed } => {
                let what = match (file.change, changed) {
                    (Change::Added, _) => "added",
                    (Change::Removed, _) => "removed",
                    (Change::Modified, true) => "changed",
                    (Change::Modified, false) => "unchanged",
                };
                writeln!(f, "  <secret {what}>")
            }
            Detail::ModeOnly { .. } => Ok(()),
            Detail::Structured(changes) => changes.iter().try_for_each(|c| self.path_change(f, c)),
            Detail::Text(text) => self.text(f, file.change, text),
        }
    }

    fn path_change(&self, f: &mut fmt::Formatter<'_>, c: &PathChange) -> fmt::Result {
        let p = self.paint;
        let path = if c.path.is_empty() {
            "(root)".to_owned()
        } else {
            sanitize(&c.path)
        };
        // `Value`'s Display is compact JSON, with control characters escaped.
        match (&c.old, &c.new) {
            (Some(o), Some(n)) => {
                writeln!(
                    f,
                    "  {path}: {} → {}",
                    p.wrap(RED, &o.to_string()),
                    p.wrap(GREEN, &n.to_string())
                )
            }
            (None, Some(n)) => writeln!(f, "  {}", p.wrap(GREEN, &format!("+ {path}: {n}"))),
            (Some(o), None) => writeln!(f, "  {}", p.wrap(RED, &format!("- {path}: {o}"))),
            (None, None) => Ok(()),
        }
    }

    fn text(&self, f: &mut fmt::Formatter<'_>, change: Change, text: &str) -> fmt::Result {
        let p = self.paint;
        let binary = text == BINARY;
        // An added or removed file is named with its size, not dumped.
        match change {
            Change::Added if binary => return writeln!(f, "  (new file, binary)"),
            Change::Removed if binary => return writeln!(f, "  (removed, binary)"),
            Change::Added => return writeln!(f, "  (new file, {})", plural(text_counts(text).0, "line")),
            Change::Removed => return writeln!(f, "  (removed, {})", plural(text_counts(text).1, "line")),
            Change::Modified if binary => return writeln!(f, "  {BINARY}"),
            Change::Modified => {}
        }
        // The file header already names the file: skip the `---`/`+++` lines.
        for line in hunk_lines(text) {
            let shown = sanitize(line);
            let styled = match line.as_bytes().first() {
                Some(b'+') => p.wrap(GREEN, &shown),
                Some(b'-') => p.wrap(RED, &shown),
                Some(b'@') => p.wrap(CYAN, &shown),
                _ => shown,
            };
            writeln!(f, "  {styled}")?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// --stat

/// Widest change bar, in characters (git scales to the terminal; a fixed
/// width keeps the output independent of the environment).
const BAR_WIDTH: usize = 40;

enum StatCell {
    /// A count and its bar segments, e.g. (3, [('+', 2), ('-', 1)]).
    Counted(usize, Vec<(char, usize)>),
    Word(String),
}

/// git-style `--stat`: ` path | 3 ++-` per file, then the totals. Text
/// files count lines; structured files count changed paths (`+` added,
/// `-` removed, `~` changed; in the totals a changed path is one insertion
/// and one deletion); secret files show `secret`.
pub fn render_stat(d: &Diff) -> String {
    if d.is_empty() {
        return String::new();
    }
    let (mut insertions, mut deletions) = (0, 0);
    let rows: Vec<(String, StatCell)> = d
        .files
        .iter()
        .map(|file| {
            let cell = match &file.detail {
                Detail::Secret { .. } => StatCell::Word("secret".to_owned()),
                Detail::ModeOnly { old, new } => StatCell::Word(format!("mode {old:04o} → {new:04o}")),
                Detail::Text(t) if t == BINARY => StatCell::Word("Bin".to_owned()),
                Detail::Text(t) => {
                    let (ins, del) = text_counts(t);
                    insertions += ins;
                    deletions += del;
                    StatCell::Counted(ins + del, vec![('+', ins), ('-', del)])
                }
                Detail::Structured(changes) => {
                    let (a, r, m) = path_counts(changes);
                    insertions += a + m;
                    deletions += r + m;
                    StatCell::Counted(a + r + m, vec![('+', a), ('-', r), ('~', m)])
                }
            };
            (sanitize(&file.path), cell)
        })
        .collect();

    let path_width = rows.iter().map(|(p, _)| p.chars().count()).max().unwrap_or(0);
    let counted = || {
        rows.iter().filter_map(|(_, c)| match c {
            StatCell::Counted(n, _) => Some(*n),
            StatCell::Word(_) => None,
        })
    };
    let count_width = counted().map(|n| n.to_string().len()).max().unwrap_or(0);
    let max_count = counted().max().unwrap_or(0);

    let mut out = String::new();
    for (path, cell) in &rows {
        let shown = match cell {
            StatCell::Word(w) => w.clone(),
            StatCell::Counted(n, parts) => {
                let bar = bar(parts, max_count);
                if bar.is_empty() {
                    format!("{n:>count_width$}")
                } else {
                    format!("{n:>count_width$} {bar}")
                }
            }
        };
        out.push_str(&format!(" {path:<path_width$} | {shown}\n"));
    }
    // git's wording: zero counts are left out unless both are zero.
    let mut summary = format!(" {} changed", plural(d.files.len(), "file"));
    if insertions > 0 || deletions == 0 {
        summary.push_str(&format!(", {}(+)", plural(insertions, "insertion")));
    }
    if deletions > 0 || insertions == 0 {
        summary.push_str(&format!(", {}(-)", plural(deletions, "deletion")));
    }
    out.push_str(&summary);
    out.push('\n');
    out
}

/// The bar for one file, scaled so the largest file's bar fits
/// [`BAR_WIDTH`]; every non-zero part keeps at least one character.
fn bar(parts: &[(char, usize)], max_count: usize) -> String {
    let total: usize = parts.iter().map(|(_, n)| n).sum();
    let width = if max_count <= BAR_WIDTH {
        total
    } else {
        (total * BAR_WIDTH).div_ceil(max_count)
    };
    let mut lens: Vec<usize> = parts
        .iter()
        .map(|&(_, n)| if n == 0 { 0 } else { (n * width / total.max(1)).max(1) })
        .collect();
    // Rounding and the one-character minimum can overshoot: trim the longest.
    while lens.iter().sum::<usize>() > width.max(lens.iter().filter(|&&l| l > 0).count()) {
        if let Some(longest) = lens.iter_mut().max() {
            *longest -= 1;
        }
    }
    parts
        .iter()
        .zip(lens)
        .map(|(&(c, _), len)| c.to_string().repeat(len))
        .collect()
}

// ---------------------------------------------------------------------------
// --name-only, --format json

/// One changed path per line, sorted.
pub fn render_name_only(d: &Diff) -> String {
    d.files.iter().map(|f| format!("{}\n", sanitize(&f.path))).collect()
}

#[derive(Serialize)]
struct JsonDoc<'a> {
    version: u32,
    summary: JsonSummary<'a>,
    files: Vec<JsonFile<'a>>,
}

#[derive(Serialize)]
struct JsonSummary<'a> {
    #[serde(flatten)]
    total: Counts,
    machines: BTreeMap<&'a str, Counts>,
}

#[derive(Serialize)]
struct JsonFile<'a> {
    path: &'a str,
    change: &'static str,
    secret: bool,
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    changed: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    changes: Option<Vec<JsonPathChange<'a>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    diff: Option<&'a str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    binary: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    old_mode: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    new_mode: Option<String>,
}

/// `old`/`new` are omitted (not `null`) when absent: `null` is a value.
#[derive(Serialize)]
struct JsonPathChange<'a> {
    path: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    old: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    new: Option<&'a Value>,
}

/// A versioned JSON document (for bots posting PR comments), pretty-printed
/// with a final newline. Modes are octal strings, as in `manifest.json`.
pub fn render_json(d: &Diff) -> String {
    let (total, machines) = per_machine(d);
    let files = d
        .files
        .iter()
        .map(|f| {
            let mut j = JsonFile {
                path: &f.path,
                change: f.change.as_str(),
                secret: f.secret,
                kind: "",
                changed: None,
                changes: None,
                diff: None,
                binary: false,
                old_mode: None,
                new_mode: None,
            };
            let mut mode = f.mode;
            match &f.detail {
                Detail::Secret { changed } => {
                    j.kind = "secret";
                    j.changed = Some(*changed);
                }
                Detail::Structured(changes) => {
                    j.kind = "structured";
                    j.changes = Some(
                        changes
                            .iter()
                            .map(|c| JsonPathChange {
                                path: &c.path,
                                old: c.old.as_ref(),
                                new: c.new.as_ref(),
                            })
                            .collect(),
                    );
                }
                Detail::Text(t) => {
                    j.kind = "text";
                    j.binary = t == BINARY;
                    j.diff = Some(t);
                }
                Detail::ModeOnly { old, new } => {
                    j.kind = "mode";
                    mode = Some(ModeChange { old: *old, new: *new });
                }
            }
            if let Some(m) = mode {
                j.old_mode = Some(format!("{:04o}", m.old));
                j.new_mode = Some(format!("{:04o}", m.new));
            }
            j
        })
        .collect();
    let doc = JsonDoc {
        version: 1,
        summary: JsonSummary { total, machines },
        files,
    };
    let mut out = serde_json::to_string_pretty(&doc).expect("plain data serializes to JSON");
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    fn file(content: &str) -> BundleFile {
        BundleFile {
            bytes: content.as_bytes().to_vec(),
            secret: false,
            owner: (0, 0),
            mode: 0o644,
        }
    }

    fn secret(content: &str) -> BundleFile {
        BundleFile {
            bytes: content.as_bytes().to_vec(),
            secret: true,
            owner: (0, 0),
            mode: 0o600,
        }
    }

    fn bundle<const N: usize>(files: [(&str, BundleFile); N]) -> Bundle {
        files.into_iter().map(|(p, f)| (p.to_owned(), f)).collect()
    }

    /// The structured changes of the only file in the diff.
    fn structured(d: &Diff) -> &[PathChange] {
        assert_eq!(d.files.len(), 1, "{d:?}");
        match &d.files[0].detail {
            Detail::Structured(c) => c,
            other => panic!("expected a structured diff, got {other:?}"),
        }
    }

    fn one(path: &str, old: &str, new: &str) -> Diff {
        diff(&bundle([(path, file(old))]), &bundle([(path, file(new))]))
    }

    fn all_renderings(d: &Diff) -> Vec<String> {
        vec![
            render_human(d, false),
            render_human(d, true),
            render_stat(d),
            render_name_only(d),
            render_json(d),
        ]
    }

    #[test]
    fn json_key_order_and_formatting_are_not_changes() {
        let d = one(
            "chat/a.json",
            r#"{"a": 1, "b": {"x": [1, 2], "y": null}}"#,
            "{\"b\":{\"y\":null,\"x\":[1,2]},\"a\":1}\n",
        );
        assert!(d.is_empty(), "{d:?}");
    }

    #[test]
    fn reordered_lists_with_a_natural_key_are_not_changes() {
        let old = r#"{"clients": [{"client_id": "mas", "n": 1}, {"client_id": "grafana", "n": 2}],
                      "users": [{"name": "a"}, {"name": "b"}]}"#;
        let new = r#"{"users": [{"name": "b"}, {"name": "a"}],
                      "clients": [{"client_id": "grafana", "n": 2}, {"client_id": "mas", "n": 1}]}"#;
        assert!(one("chat/oidc.json", old, new).is_empty());

        let yaml_old = "clients:\n  - client_id: mas\n    public: false\n  - client_id: grafana\n    public: true\n";
        let yaml_new = "clients:\n  - client_id: grafana\n    public: true\n  - client_id: mas\n    public: false\n";
        assert!(one("chat/authelia/configuration.yml", yaml_old, yaml_new).is_empty());
    }

    #[test]
    fn natural_key_prefers_name_then_id() {
        // Both `name` and `id` everywhere: `name` wins.
        let d = one(
            "m/x.json",
            r#"[{"name": "a", "id": 1, "v": 1}]"#,
            r#"[{"name": "a", "id": 1, "v": 2}]"#,
        );
        assert_eq!(structured(&d)[0].path, "[name=a].v");
        // `name` not unique: falls through to `id`.
        let d = one(
            "m/x.json",
            r#"[{"name": "a", "id": 1, "v": 1}, {"name": "a", "id": 2}]"#,
            r#"[{"name": "a", "id": 2}, {"name": "a", "id": 1, "v": 2}]"#,
        );
        assert_eq!(structured(&d)[0].path, "[id=1].v");
    }

    #[test]
    fn nested_change_is_rendered_with_its_dotted_path() {
        let old = "services:\n  authelia:\n    image: authelia:4.38\n    environment:\n      LOG_LEVEL: info\n";
        let new = "services:\n  authelia:\n    image: authelia:4.39\n    environment:\n      LOG_LEVEL: debug\n";
        let d = one("chat/compose.yaml", old, new);
        let changes = structured(&d);
        assert_eq!(
            changes,
            [
                PathChange {
                    path: "services.authelia.environment.LOG_LEVEL".into(),
                    old: Some("info".into()),
                    new: Some("debug".into()),
                },
                PathChange {
                    path: "services.authelia.image".into(),
                    old: Some("authelia:4.38".into()),
                    new: Some("authelia:4.39".into()),
                },
            ]
        );
        let human = render_human(&d, false);
        assert!(human.contains("\n~ chat/compose.yaml\n"), "{human}");
        assert!(
            human.contains("\n  services.authelia.environment.LOG_LEVEL: \"info\" → \"debug\"\n"),
            "{human}"
        );
    }

    #[test]
    fn list_items_are_addressed_by_natural_key_or_index() {
        let old = r#"{"clients": [{"client_id": "mas", "redirect_uris": ["https://a/cb"]}],
                      "listeners": [{"port": 8008}, {"port": 9000}]}"#;
        let new = r#"{"clients": [{"client_id": "mas", "redirect_uris": ["https://b/cb"]},
                                  {"client_id": "grafana"}],
                      "listeners": [{"port": 8009}]}"#;
        let d = one("chat/x.json", old, new);
        let paths: Vec<&str> = structured(&d).iter().map(|c| c.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "clients[client_id=grafana]",
                "clients[client_id=mas].redirect_uris[0]",
                "listeners[0].port",
                "listeners[1]"
            ]
        );
        let human = render_human(&d, false);
        assert!(
            human.contains("\n  + clients[client_id=grafana]: {\"client_id\":\"grafana\"}\n"),
            "{human}"
        );
        assert!(human.contains("\n  listeners[0].port: 8008 → 8009\n"), "{human}");
        assert!(human.contains("\n  - listeners[1]: {\"port\":9000}\n"), "{human}");
    }

    #[test]
    fn keys_with_special_characters_are_quoted() {
        let d = one(
            "edge/sites.json",
            r#"{"sites": {"chat.example.com": {"port": 1}, "a[b]": 1, "": 1}, "list": [{"name": "x y", "v": 1}]}"#,
            r#"{"sites": {"chat.example.com": {"port": 2}, "a[b]": 2, "": 2}, "list": [{"name": "x y", "v": 2}]}"#,
        );
        let paths: Vec<&str> = structured(&d).iter().map(|c| c.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                r#"list[name="x y"].v"#,
                r#"sites."""#,
                r#"sites."a[b]""#,
                r#"sites."chat.example.com".port"#
            ]
        );
    }

    #[test]
    fn root_and_type_changes() {
        let d = one("m/x.json", r#"{"a": [1]}"#, r#"{"a": {"b": 1}}"#);
        assert_eq!(structured(&d)[0].path, "a");
        let d = one("m/x.json", "1", "2");
        assert_eq!(structured(&d)[0].path, "");
        assert!(render_human(&d, false).contains("\n  (root): 1 → 2\n"));
        // null is a value: a key set to null is a change, not a removal.
        let d = one("m/x.json", r#"{"a": 1}"#, r#"{"a": null}"#);
        assert_eq!(structured(&d)[0].new, Some(Value::Null));
    }

    #[test]
    fn yaml_multiple_documents_and_empty() {
        let d = one("m/k.yaml", "a: 1\n---\nb: 1\n", "a: 1\n---\nb: 2\n");
        assert_eq!(structured(&d)[0].path, "[1].b");
        let d = one("m/k.yaml", "", "a: 1\n");
        assert_eq!(
            structured(&d),
            [PathChange {
                path: "".into(),
                old: Some(Value::Null),
                new: Some(serde_json::json!({"a": 1}))
            }]
        );
    }

    #[test]
    fn unparsable_data_falls_back_to_text() {
        let d = one("m/x.json", "{\"a\": 1}\n", "{\"a\": \n");
        assert!(
            matches!(&d.files[0].detail, Detail::Text(t) if t.contains("+{\"a\": \n")),
            "{d:?}"
        );
        let d = one("m/x.yml", "a: 1\n", "a: [\n");
        assert!(matches!(&d.files[0].detail, Detail::Text(_)));
    }

    #[test]
    fn added_and_removed_files() {
        let old = bundle([
            ("chat/old.service", file("[Unit]\nA=1\nB=2\n")),
            ("chat/same", file("x")),
        ]);
        let new = bundle([("chat/same", file("x")), ("edge/new.json", file("{\n  \"a\": 1\n}\n"))]);
        let d = diff(&old, &new);
        assert_eq!(d.files.len(), 2);
        assert_eq!(
            (d.files[0].path.as_str(), d.files[0].change),
            ("chat/old.service", Change::Removed)
        );
        assert_eq!(
            (d.files[1].path.as_str(), d.files[1].change),
            ("edge/new.json", Change::Added)
        );

        let human = render_human(&d, false);
        assert_eq!(
            human,
            "chat: 0 added, 1 removed, 0 changed\n\
             edge: 1 added, 0 removed, 0 changed\n\
             2 files changed on 2 machines\n\
             \n\
             - chat/old.service\n  (removed, 3 lines)\n\
             \n\
             + edge/new.json\n  (new file, 3 lines)\n"
        );
        assert_eq!(render_name_only(&d), "chat/old.service\nedge/new.json\n");
        assert_eq!(
            render_stat(&d),
            " chat/old.service | 3 ---\n edge/new.json    | 3 +++\n 2 files changed, 3 insertions(+), 3 deletions(-)\n"
        );
        // The text of an added file is a patch against /dev/null.
        let Detail::Text(t) = &d.files[1].detail else { panic!() };
        assert!(
            t.starts_with("--- /dev/null\n+++ b/edge/new.json\n@@ -0,0 +1,3 @@\n"),
            "{t}"
        );
    }

    #[test]
    fn secret_content_never_appears_in_any_output() {
        const OLD: &str = "hunter2-OLD-SECRET-5f1e";
        const NEW: &str = "hunter2-NEW-SECRET-9ac3";
        let old = bundle([
            ("chat/secrets/mas.json", secret(&format!("{{\"key\": \"{OLD}\"}}\n"))),
            // Marked secret on one side only: still secret.
            ("chat/env/mas.env", file(&format!("PASSWORD={OLD}\nA=1\n"))),
            ("chat/secrets/gone", secret(OLD)),
            ("chat/secrets/same", secret(OLD)),
        ]);
        let new = bundle([
            ("chat/secrets/mas.json", secret(&format!("{{\"key\": \"{NEW}\"}}\n"))),
            ("chat/env/mas.env", secret(&format!("PASSWORD={NEW}\nA=1\n"))),
            ("chat/secrets/new", secret(NEW)),
            ("chat/secrets/same", secret(OLD)),
        ]);
        let d = diff(&old, &new);
        let paths: Vec<&str> = d.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "chat/env/mas.env",
                "chat/secrets/gone",
                "chat/secrets/mas.json",
                "chat/secrets/new"
            ]
        );
        assert!(
            d.files
                .iter()
                .all(|f| f.secret && f.detail == Detail::Secret { changed: true })
        );

        let mut outputs = all_renderings(&d);
        outputs.push(format!("{d:?}"));
        outputs.push(format!("{old:?}{new:?}"));
        // Fragments too: a distinctive substring of either value, or its digest.
        let needles: Vec<String> = [OLD, NEW]
            .iter()
            .flat_map(|s| {
                [
                    s.to_string(),
                    s[8..].to_string(),
                    format!("{:x}", Sha256::digest(s.as_bytes())),
                ]
            })
            .collect();
        for out in &outputs {
            for needle in &needles {
                assert!(!out.contains(needle.as_str()), "secret leaked: {needle} in\n{out}");
            }
        }
        let human = render_human(&d, false);
        assert!(
            human.contains("~ chat/secrets/mas.json\n  <secret changed>\n"),
            "{human}"
        );
        assert!(human.contains("+ chat/secrets/new\n  <secret added>\n"), "{human}");
        assert!(human.contains("- chat/secrets/gone\n  <secret removed>\n"), "{human}");
        assert!(render_stat(&d).contains(" chat/secrets/mas.json | secret\n"));
        let json: Value = serde_json::from_str(&render_json(&d)).unwrap();
        assert_eq!(json["files"][2]["kind"], "secret");
        assert_eq!(json["files"][2]["changed"], true);
    }

    #[test]
    fn unchanged_secret_with_a_new_mode_is_listed_without_content() {
        let mut new_file = secret("s3cr3t-value");
        new_file.mode = 0o400;
        let d = diff(
            &bundle([("m/secrets/k", secret("s3cr3t-value"))]),
            &bundle([("m/secrets/k", new_file)]),
        );
        assert_eq!(d.files[0].detail, Detail::Secret { changed: false });
        assert_eq!(d.files[0].mode, Some(ModeChange { old: 0o600, new: 0o400 }));
        let human = render_human(&d, false);
        assert!(
            human.ends_with("~ m/secrets/k\n  mode 0600 → 0400\n  <secret unchanged>\n"),
            "{human}"
        );
    }

    #[test]
    fn mode_only_change() {
        let mut new_file = file("A=1\n");
        new_file.mode = 0o600;
        let d = diff(&bundle([("m/a.env", file("A=1\n"))]), &bundle([("m/a.env", new_file)]));
        assert_eq!(d.files[0].detail, Detail::ModeOnly { old: 0o644, new: 0o600 });
        assert!(render_human(&d, false).ends_with("\n~ m/a.env\n  mode 0644 → 0600\n"));
        assert_eq!(
            render_stat(&d),
            " m/a.env | mode 0644 → 0600\n 1 file changed, 0 insertions(+), 0 deletions(-)\n"
        );
        let json: Value = serde_json::from_str(&render_json(&d)).unwrap();
        assert_eq!(json["files"][0]["kind"], "mode");
        assert_eq!(
            (&json["files"][0]["old_mode"], &json["files"][0]["new_mode"]),
            (&"0644".into(), &"0600".into())
        );
    }

    #[test]
    fn mode_and_content_change_are_both_shown() {
        let mut new_file = file("A=2\n");
        new_file.mode = 0o600;
        let d = diff(&bundle([("m/a.env", file("A=1\n"))]), &bundle([("m/a.env", new_file)]));
        let human = render_human(&d, false);
        assert!(
            human.ends_with("~ m/a.env\n  mode 0644 → 0600\n  @@ -1 +1 @@\n  -A=1\n  +A=2\n"),
            "{human}"
        );
        let json: Value = serde_json::from_str(&render_json(&d)).unwrap();
        assert_eq!(json["files"][0]["kind"], "text");
        assert_eq!(json["files"][0]["new_mode"], "0600");
    }

    #[test]
    fn caddyfile_gets_a_unified_diff() {
        let old = "chat.example.com {\n\tencode gzip\n\theader X-A 1\n\theader X-B 2\n\treverse_proxy localhost:8008\n\tlog\n}\n";
        let new = old.replace("8008", "8009");
        let d = one("chat/caddy/Caddyfile", old, &new);
        let Detail::Text(t) = &d.files[0].detail else {
            panic!("{d:?}")
        };
        assert!(
            t.starts_with("--- a/chat/caddy/Caddyfile\n+++ b/chat/caddy/Caddyfile\n@@ -2,6 +2,6 @@\n"),
            "{t}"
        );

        let human = render_human(&d, false);
        let expected = [
            "chat: 0 added, 0 removed, 1 changed",
            "1 file changed on 1 machine",
            "",
            "~ chat/caddy/Caddyfile",
            "  @@ -2,6 +2,6 @@",
            "   \tencode gzip",
            "   \theader X-A 1",
            "   \theader X-B 2",
            "  -\treverse_proxy localhost:8008",
            "  +\treverse_proxy localhost:8009",
            "   \tlog",
            "   }",
            "",
        ];
        assert_eq!(human, expected.join("\n"));
        assert_eq!(
            render_stat(&d),
            " chat/caddy/Caddyfile | 2 +-\n 1 file changed, 1 insertion(+), 1 deletion(-)\n"
        );
    }

    #[test]
    fn binary_files() {
        let mut d = diff(
            &bundle([(
                "m/a.bin",
                BundleFile {
                    bytes: vec![0xff, 0],
                    secret: false,
                    owner: (0, 0),
                    mode: 0o644,
                },
            )]),
            &bundle([(
                "m/a.bin",
                BundleFile {
                    bytes: vec![0xfe, 0],
                    secret: false,
                    owner: (0, 0),
                    mode: 0o644,
                },
            )]),
        );
        assert_eq!(d.files[0].detail, Detail::Text(BINARY.into()));
        assert!(render_human(&d, false).ends_with("~ m/a.bin\n  binary files differ\n"));
        assert!(render_stat(&d).starts_with(" m/a.bin | Bin\n"));
        let json: Value = serde_json::from_str(&render_json(&d)).unwrap();
        assert_eq!(json["files"][0]["binary"], true);
        d.files[0].change = Change::Added;
        assert!(render_human(&d, false).ends_with("+ m/a.bin\n  (new file, binary)\n"));
    }

    #[test]
    fn control_characters_are_escaped_in_human_output() {
        let d = one("m/motd", "hello\n", "hello \x1b[2Jworld\r\n");
        let human = render_human(&d, false);
        assert!(!human.contains('\x1b') && !human.contains('\r'), "{human:?}");
        assert!(human.contains("+hello \\u{1b}[2Jworld\\r\n"), "{human:?}");
        let d = one("m/motd", "hello\n", "if admin \u{202e} \u{2066}then\n");
        let human = render_human(&d, false);
        assert!(human.contains("+if admin \\u{202e} \\u{2066}then\n"), "{human:?}");
    }

    #[test]
    fn color_only_when_asked() {
        let old = bundle([
            ("m/a.json", file(r#"{"a": 1, "b": 1}"#)),
            ("m/c", file("1\n")),
            ("m/gone", file("x\n")),
        ]);
        let new = bundle([
            ("m/a.json", file(r#"{"a": 2, "c": 1}"#)),
            ("m/c", file("2\n")),
            ("m/new", file("x\n")),
        ]);
        let d = diff(&old, &new);
        let plain = render_human(&d, false);
        assert!(!plain.contains('\x1b'), "{plain}");
        for out in [render_stat(&d), render_name_only(&d), render_json(&d)] {
            assert!(!out.contains('\x1b'), "{out}");
        }
        let colored = render_human(&d, true);
        assert!(colored.contains("\x1b[1m~ m/a.json\x1b[0m"), "{colored}");
        assert!(colored.contains("\x1b[32m+ c: 1\x1b[0m"), "{colored}");
        assert!(colored.contains("\x1b[31m- b: 1\x1b[0m"), "{colored}");
        assert!(colored.contains("a: \x1b[31m1\x1b[0m → \x1b[32m2\x1b[0m"), "{colored}");
        assert!(colored.contains("\x1b[32m+2\x1b[0m"), "{colored}");
        assert!(colored.contains("\x1b[1;32m+ m/new\x1b[0m"), "{colored}");
        assert!(colored.contains("\x1b[1;31m- m/gone\x1b[0m"), "{colored}");
    }

    #[test]
    fn empty_diff() {
        let b = bundle([("m/a", file("x")), ("m/s", secret("y"))]);
        let d = diff(&b, &b);
        assert!(d.is_empty());
        assert_eq!(render_human(&d, false), "no changes\n");
        assert_eq!(render_human(&d, true), "no changes\n");
        assert_eq!(render_stat(&d), "");
        assert_eq!(render_name_only(&d), "");
        assert_eq!(
            render_json(&d),
            "{\n  \"version\": 1,\n  \"summary\": {\n    \"added\": 0,\n    \"removed\": 0,\n    \"modified\": 0,\n    \
             \"machines\": {}\n  },\n  \"files\": []\n}\n"
        );
    }

    #[test]
    fn json_document_shape() {
        let old = bundle([
            ("chat/a.json", file(r#"{"a": 1, "b": 1}"#)),
            ("chat/u.service", file("A\n")),
        ]);
        let new = bundle([
            ("chat/a.json", file(r#"{"a": 2, "c": null}"#)),
            ("chat/u.service", file("B\n")),
            ("edge/x", file("x\n")),
        ]);
        let d = diff(&old, &new);
        let out = render_json(&d);
        assert!(out.ends_with("}\n"));
        let json: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "version": 1,
                "summary": {
                    "added": 1, "removed": 0, "modified": 2,
                    "machines": {
                        "chat": {"added": 0, "removed": 0, "modified": 2},
                        "edge": {"added": 1, "removed": 0, "modified": 0},
                    },
                },
                "files": [
                    {"path": "chat/a.json", "change": "modified", "secret": false, "kind": "structured",
                     "changes": [
                        {"path": "a", "old": 1, "new": 2},
                        {"path": "b", "old": 1},
                        {"path": "c", "new": null},
                     ]},
                    {"path": "chat/u.service", "change": "modified", "secret": false, "kind": "text",
                     "diff": "--- a/chat/u.service\n+++ b/chat/u.service\n@@ -1 +1 @@\n-A\n+B\n"},
                    {"path": "edge/x", "change": "added", "secret": false, "kind": "text",
                     "diff": "--- /dev/null\n+++ b/edge/x\n@@ -0,0 +1 @@\n+x\n"},
                ],
            })
        );
    }

    #[test]
    fn stat_counts_structured_paths_and_scales_bars() {
        let d = one("m/a.json", r#"{"a": 1, "b": 1}"#, r#"{"a": 2, "c": 1}"#);
        assert_eq!(
            render_stat(&d),
            " m/a.json | 3 +-~\n 1 file changed, 2 insertions(+), 2 deletions(-)\n"
        );

        let long: String = (0..100).map(|i| format!("{i}\n")).collect();
        let old = bundle([("m/big", file(&long)), ("m/small", file("a\n"))]);
        let new = bundle([("m/big", file("")), ("m/small", file("b\n"))]);
        let stat = render_stat(&diff(&old, &new));
        let lines: Vec<&str> = stat.lines().collect();
        assert_eq!(lines[0], format!(" m/big   | 100 {}", "-".repeat(BAR_WIDTH)));
        assert_eq!(lines[1], " m/small |   2 +-");
        assert_eq!(lines[2], " 2 files changed, 1 insertion(+), 101 deletions(-)");
    }

    #[test]
    fn bundle_file_debug_hides_bytes() {
        assert_eq!(
            format!("{:?}", secret("topsecret")),
            "RenderedFile { len: 9, mode: 0600, secret: true }"
        );
    }
}
