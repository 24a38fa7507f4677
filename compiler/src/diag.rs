//! Diagnostics as data: every finding has a stable code, a terse message,
//! labels pointing into the `.ncl` sources, and a help line. Stages return
//! `Vec<Diagnostic>`; only the CLI renders them (human text via miette, or
//! JSON).

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use serde::Serialize;

/// Stable diagnostic codes. Each has a page `docs/diagnostics/<CODE>.md`
/// that `stackc explain` prints; a test keeps codes and pages in step.
macro_rules! codes {
    ($($variant:ident = $code:literal, $exit:literal, $title:literal;)*) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Code { $($variant),* }

        impl Code {
            pub const ALL: &'static [Code] = &[$(Code::$variant),*];

            pub fn as_str(self) -> &'static str {
                match self { $(Code::$variant => $code),* }
            }

            /// One line saying what the code is about.
            pub fn title(self) -> &'static str {
                match self { $(Code::$variant => $title),* }
            }

            /// Exit status when this is the worst finding: 1 for problems in
            /// the user's input, 2 for usage, I/O and internal errors.
            pub fn exit_status(self) -> u8 {
                match self { $(Code::$variant => $exit),* }
            }

            pub fn parse(s: &str) -> Option<Code> {
                let s = s.trim().to_ascii_uppercase();
                Code::ALL.iter().copied().find(|c| c.as_str() == s)
            }
        }
    };
}

codes! {
    InputUnreadable = "SC0100", 2, "the stack file cannot be read";
    Syntax = "SC0101", 1, "syntax error in a Nickel file";
    Contract = "SC0102", 1, "a value breaks its contract";
    Type = "SC0103", 1, "static type error";
    MissingField = "SC0104", 1, "a required option has no value";
    ImportNotFound = "SC0105", 1, "an imported file does not exist";
    ImportEscapes = "SC0106", 1, "an import leaves the project directory";
    Eval = "SC0107", 1, "evaluation error";
    NotExportable = "SC0108", 1, "the stack contains a value that cannot be exported";
    NotAStack = "SC0109", 1, "the file does not evaluate to a stack";
    UnknownField = "SC0110", 1, "unknown option (misspelt or misplaced)";
    EmptyFile = "SC0111", 1, "the stack file is empty";
    ImportUnreadable = "SC0112", 1, "an imported file is not a regular UTF-8 file of bounded size";
    EvalTime = "SC0113", 1, "evaluation took longer than its time budget";
    EvalMemory = "SC0114", 1, "evaluation needed more memory than its budget";
    TooDeep = "SC0115", 1, "the stack nests deeper than stackc accepts";
    PortConflict = "SC0201", 1, "two services listen on the same port of one machine";
    UnknownMachine = "SC0202", 1, "reference to a machine that is not declared";
    UnknownUpstream = "SC0203", 1, "a proxy site points to a service or port that does not exist";
    PublicOnLoopback = "SC0204", 1, "a public port is bound to loopback";
    UnreachableUpstream = "SC0205", 1, "a proxy site points to a port the proxy cannot reach";
    InvalidName = "SC0206", 1, "a machine or service name is not usable in file names";
    DuplicateSite = "SC0207", 1, "two proxy sites serve the same host name";
    InvalidHost = "SC0208", 1, "a proxy site is not a valid host name";
    NoSharedNetwork = "SC0209", 1, "two machines that must talk share no network";
    NetworkAddress = "SC0210", 1, "a machine's address does not fit the stack's networks";
    UnknownSource = "SC0211", 1, "a firewall opening names no machine, network or address";
    OpeningToLoopback = "SC0212", 1, "a firewall opening is for a port bound to loopback";
    SecretOwner = "SC0213", 1, "a secret file is mounted into containers that run as different users";
    PortRange = "SC0214", 1, "a port range is reversed, or on a machine that cannot publish ranges";
    FileClash = "SC0215", 1, "two parts of a machine write the same file";
    UnknownConnection = "SC0216", 1, "a connection names a service or port its machine does not have";
    NoSecretsKey = "SC0301", 2, "build needs a master key or --placeholder-secrets";
    KeyPermissions = "SC0302", 1, "the master key file is readable by others";
    KeyMalformed = "SC0303", 1, "the master key file is not a stackc key";
    KeyUnreadable = "SC0304", 2, "the master key file cannot be read";
    SecretConflict = "SC0305", 1, "one secret name is used with two different definitions";
    ExternalMissing = "SC0306", 1, "an external secret has no encrypted file in the project";
    ExternalUnreadable = "SC0307", 1, "an external secret's file is not age-encrypted to the identity given";
    ExternalShape = "SC0308", 1, "an external secret's value does not have the shape of its kind";
    ExternalClash = "SC0309", 1, "an encrypted file in the project names a secret the stack derives";
    NoIdentity = "SC0310", 2, "build needs an age identity to decrypt the external secrets";
    RecipientsMalformed = "SC0311", 1, "the project's recipients list is missing or malformed";
    KeyCommand = "SC0312", 2, "the command that prints the master key failed";
    ExternalUnused = "SC0313", 1, "`secrets.external` names a secret no service uses";
    UnsafePath = "SC0401", 1, "an emitted file path is not a safe relative path";
    BadContent = "SC0402", 1, "a file's content cannot be rendered in its format";
    SchemaViolation = "SC0403", 1, "a written config breaks its schema";
    UnknownKey = "SC0404", 1, "a written config has a key its program does not know";
    OidcRedirect = "SC0501", 1, "an OpenID client does not allow the callback its relying party sends";
    OidcSecret = "SC0502", 1, "an OpenID client's secret digest does not verify the secret its relying party sends";
    OidcAuthMethod = "SC0503", 1, "the two sides of an OpenID client use different token endpoint auth methods";
    IssuerMismatch = "SC0504", 1, "an issuer URL differs from the one the provider answers with";
    Unreachable = "SC0505", 1, "a URL one service uses for another does not reach it";
    SharedSecret = "SC0506", 1, "two services hold different shared secrets";
    HomeserverMismatch = "SC0507", 1, "a client disagrees with its server's public URL or name";
    AppserviceMismatch = "SC0508", 1, "an appservice registration and its bridge's config disagree";
    AppserviceDuplicate = "SC0509", 1, "two appservice registrations share an id or a token";
    DatabaseMismatch = "SC0510", 1, "a database client names a database, role or password its server does not create";
    NoTlsSite = "SC0511", 1, "a public URL's host has no TLS site";
    Federation = "SC0512", 1, "federation does not reach the homeserver's federation listener";
    CompatLogin = "SC0513", 1, "the legacy login API is not routed to the authentication service";
    MissingClaim = "SC0514", 1, "a claim the relying party requires is not in the ID token";
    Msc4190 = "SC0515", 1, "an encrypting bridge next to delegated authentication lacks MSC4190";
    MissingFile = "SC0516", 1, "a config names a file its service cannot read";
    SigningKeyVersion = "SC0517", 1, "the federation signing key has an unusable version";
    ShareMismatch = "SC0518", 1, "two services hold different values of one thing they must share";
    OidcUnpaired = "SC0519", 1, "a relying party logs in through a provider that has no client for it";
    OidcExternal = "SC0520", 1, "a relying party names no provider of the stack, so its client is not checked";
    OidcScope = "SC0522", 1, "a relying party requests a scope its client at the provider does not allow";
    SmtpMismatch = "SC0530", 1, "services of the stack send mail through different SMTP relays or logins";
    ScrapeUnreachable = "SC0531", 1, "a Prometheus scrape target does not reach the service's metrics";
    Unpaired = "SC0521", 1, "a client reaches a service that declares no matching role, so the pair is not checked";
    BodyLimit = "SC0523", 1, "a site's body-size limit is below what a service behind it accepts";
    DisruptionBudget = "SC0524", 1, "a disruption budget lets a drain take every pod of a workload";
    UnknownPeer = "SC0525", 1, "`connects_to` names no workload of the namespace";
    NonRootUser = "SC0526", 1, "a Kubernetes container runs as non-root but names no numeric user";
    StartupProbe = "SC0527", 1, "a startup probe has no probe to run";
    NobodyReaches = "SC0528", 1, "the NetworkPolicies let nobody reach a Service";
    AnnotationKey = "SC0529", 1, "an Ingress annotation key is not a Kubernetes annotation key";
    StartupRule = "SC0601", 1, "a program would refuse its configuration when it starts";
    NotABundle = "SC0901", 2, "the output directory exists and is not a stackc bundle";
    Io = "SC0902", 2, "input/output error";
    DiffSide = "SC0903", 2, "a `git:` side of `stackc diff` is malformed";
    OutputClobbers = "SC0904", 2, "the output would replace an input or a file stackc did not write";
    InitExists = "SC0905", 2, "`stackc init` would overwrite a file";
    ComposeUnreadable = "SC0906", 1, "the compose file given to `stackc init --from` cannot be converted";
    Graphviz = "SC0907", 2, "Graphviz `dot` is missing or failed";
    Internal = "SC0999", 2, "internal error";
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Code {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        }
    }
}

/// A source file as diagnostics show it: a display name (relative to the
/// project, or `<stackc>/…` for the embedded stdlib) and its text.
#[derive(Debug, Clone)]
pub struct SourceFile {
    pub name: String,
    pub text: Arc<str>,
}

/// A byte range in a source file.
#[derive(Debug, Clone)]
pub struct Span {
    pub file: Arc<SourceFile>,
    pub range: Range<usize>,
}

impl Span {
    /// In the user's own files, not in an embedded source (`<stackc>/…`,
    /// Nickel's `<stdlib/…>`).
    pub fn in_user(&self) -> bool {
        !self.file.name.starts_with('<')
    }

    /// Inside a primitive's code: Nickel's own std (`<stdlib/…>`), or the
    /// stdlib's untyped twins of it (`<stackc>/prim.ncl`). A value computed
    /// there has no place worth showing.
    pub fn in_primitive(&self) -> bool {
        self.file.name.starts_with("<stdlib") || self.file.name == "<stackc>/prim.ncl"
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let text = &self.file.text;
        let offset = offset.min(text.len());
        let before = &text[..offset];
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        (line, col)
    }
}

#[derive(Debug, Clone)]
pub struct Label {
    pub span: Span,
    pub message: String,
    pub primary: bool,
}

#[derive(Debug, Clone)]
pub struct Diagnostic {
    pub code: Code,
    pub severity: Severity,
    pub message: String,
    pub labels: Vec<Label>,
    pub help: Option<String>,
    pub notes: Vec<String>,
    /// Field path in the evaluated stack (`machines.chat.native.x`), when known.
    pub path: Option<String>,
}

impl Diagnostic {
    pub fn error(code: Code, message: impl Into<String>) -> Self {
        Diagnostic {
            code,
            severity: Severity::Error,
            message: message.into(),
            labels: Vec::new(),
            help: None,
            notes: Vec::new(),
            path: None,
        }
    }

    pub fn warning(code: Code, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(code, message)
        }
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    pub fn with_note(mut self, note: impl Into<String>) -> Self {
        self.notes.push(note.into());
        self
    }

    pub fn with_path(mut self, path: impl Into<String>) -> Self {
        self.path = Some(path.into());
        self
    }

    pub fn with_label(mut self, span: Option<Span>, message: impl Into<String>) -> Self {
        if let Some(span) = span {
            let primary = self.labels.iter().all(|l| !l.primary);
            self.labels.push(Label {
                span,
                message: message.into(),
                primary,
            });
        }
        self
    }

    /// A label that becomes the primary one (the others turn secondary).
    pub fn with_primary(mut self, span: Option<Span>, message: impl Into<String>) -> Self {
        if let Some(span) = span {
            self.labels.iter_mut().for_each(|l| l.primary = false);
            self.labels.insert(
                0,
                Label {
                    span,
                    message: message.into(),
                    primary: true,
                },
            );
        }
        self
    }

    pub fn with_secondary(mut self, span: Option<Span>, message: impl Into<String>) -> Self {
        if let Some(span) = span {
            self.labels.push(Label {
                span,
                message: message.into(),
                primary: false,
            });
        }
        self
    }

    /// The help line: the diagnostic's own, or a pointer to the code's page.
    pub fn help_line(&self) -> String {
        self.help
            .clone()
            .unwrap_or_else(|| format!("run `stackc explain {}` for details", self.code))
    }

    fn primary(&self) -> Option<&Label> {
        self.labels.iter().find(|l| l.primary).or(self.labels.first())
    }

    /// Sort key: file, position, code, message. Deterministic output order.
    fn sort_key(&self) -> (String, usize, Code, String) {
        let (file, start) = self
            .primary()
            .map_or((String::new(), 0), |l| (l.span.file.name.clone(), l.span.range.start));
        (file, start, self.code, self.message.clone())
    }
}

impl Diagnostic {
    /// The user's line first: where a finding has a label in the user's
    /// files, one of them is the primary label, and a label in the stdlib
    /// (or in a value evaluation generated) is only secondary, "see also".
    /// Each label keeps its own message, so what each one says stays true.
    pub fn user_first(&mut self) {
        let ours = |l: &Label| l.span.file.name.starts_with("<stackc>/") || l.span.file.name.starts_with("<unknown>");
        let Some(primary) = self
            .labels
            .iter()
            .position(|l| l.primary)
            .or((!self.labels.is_empty()).then_some(0))
        else {
            return;
        };
        if !ours(&self.labels[primary]) {
            return;
        }
        if let Some(user) = self.labels.iter().position(|l| !ours(l)) {
            self.labels.iter_mut().for_each(|l| l.primary = false);
            let label = self.labels.remove(user);
            self.labels.insert(0, Label { primary: true, ..label });
        }
    }
}

/// Sort and deduplicate, so a run prints the same findings in the same order;
/// each finding's primary label is on the user's line when it has one there.
pub fn sort(diags: &mut Vec<Diagnostic>) {
    diags.iter_mut().for_each(Diagnostic::user_first);
    diags.sort_by_cached_key(|d| d.sort_key());
    diags.dedup_by(|a, b| a.sort_key() == b.sort_key());
}

/// Worst exit status of a set of findings (0 if none).
pub fn exit_status(diags: &[Diagnostic]) -> u8 {
    diags
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .map(|d| d.code.exit_status())
        .max()
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------
// Escaping: no user string reaches the terminal raw
// ---------------------------------------------------------------------------

/// Characters that reorder text on screen (Unicode bidirectional formatting:
/// embeddings, overrides, isolates and marks), so a name can look like
/// something else ("Trojan Source").
pub fn is_bidi(c: char) -> bool {
    matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// A character a diagnostic never prints as is: a control character other
/// than a tab or a line break (NUL, escape sequences, `\r`), or a bidi
/// formatting character.
fn needs_escape(c: char) -> bool {
    (c.is_control() && c != '\n' && c != '\t') || is_bidi(c)
}

fn escape_char(c: char) -> String {
    if c.is_control() {
        c.escape_default().to_string()
    } else {
        c.escape_unicode().to_string()
    }
}

/// `s` with control characters (but tabs and line breaks) and bidi
/// formatting characters escaped (`\u{0}`, `\u{1b}`, `\u{202e}`): what a
/// diagnostic shows of any string it did not write itself (a stack or
/// machine name, a file name, a revision). Every renderer applies it to
/// messages, labels, help, notes, paths and file names.
pub fn escape(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return std::borrow::Cow::Borrowed(s);
    }
    std::borrow::Cow::Owned(
        s.chars()
            .map(|c| if needs_escape(c) { escape_char(c) } else { c.to_string() })
            .collect(),
    )
}

/// A copy of `d` whose texts are escaped (spans and sources untouched).
fn escaped(d: &Diagnostic) -> Diagnostic {
    let e = |s: &str| escape(s).into_owned();
    Diagnostic {
        code: d.code,
        severity: d.severity,
        message: e(&d.message),
        labels: d
            .labels
            .iter()
            .map(|l| Label {
                span: l.span.clone(),
                message: e(&l.message),
                primary: l.primary,
            })
            .collect(),
        help: d.help.as_deref().map(e),
        notes: d.notes.iter().map(|n| e(n)).collect(),
        path: d.path.as_deref().map(e),
    }
}

// ---------------------------------------------------------------------------
// Human rendering (miette)
// ---------------------------------------------------------------------------

/// One file's worth of a diagnostic, as miette wants it: miette shows one
/// source per diagnostic, so labels in other files become related entries.
#[derive(Debug)]
struct MietteView {
    code: Option<Code>,
    message: String,
    severity: miette::Severity,
    source: Option<Shown>,
    labels: Vec<miette::LabeledSpan>,
    help: Option<String>,
    related: Vec<MietteView>,
}

impl fmt::Display for MietteView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}
impl std::error::Error for MietteView {}

impl miette::Diagnostic for MietteView {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.code.map(|c| Box::new(c) as Box<dyn fmt::Display>)
    }
    fn severity(&self) -> Option<miette::Severity> {
        Some(self.severity)
    }
    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.help.as_ref().map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }
    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        self.source.as_ref().map(|s| s as &dyn miette::SourceCode)
    }
    fn labels(&self) -> Option<Box<dyn Iterator<Item = miette::LabeledSpan> + '_>> {
        (!self.labels.is_empty()).then(|| Box::new(self.labels.iter().cloned()) as _)
    }
    fn related<'a>(&'a self) -> Option<Box<dyn Iterator<Item = &'a dyn miette::Diagnostic> + 'a>> {
        (!self.related.is_empty()).then(|| Box::new(self.related.iter().map(|d| d as &dyn miette::Diagnostic)) as _)
    }
}

/// Lines longer than this (in bytes) are shown clipped to a window around
/// the labels: miette pads to a label's column with a formatting width,
/// which panics past 65 535, and a megabyte line helps no one.
const MAX_SHOWN_LINE: usize = 1000;
/// A window of a clipped line: from this many bytes before a label, this
/// many bytes long.
const CLIP_BEFORE: usize = 80;
const CLIP_WIDTH: usize = 240;
const MAX_WINDOWS: usize = 8;

/// A place where the shown text differs from the file: `orig` (bytes of
/// the file) is shown as `shown` (bytes of the shown text).
#[derive(Debug, Clone)]
struct Edit {
    orig: Range<usize>,
    shown: Range<usize>,
}

/// A source file as the human renderer shows it: control and bidi
/// characters escaped, long lines clipped (`…`), labels moved along. Line
/// numbers are unchanged (no line break is added or removed), and the
/// column miette prints in the header is the column in the file.
#[derive(Debug)]
struct Shown {
    name: String,
    orig: Arc<str>,
    text: String,
    /// Sorted, disjoint; empty when the text is the file's.
    edits: Vec<Edit>,
}

fn floor_boundary(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

impl Shown {
    /// `points`: the label offsets in `file`, to keep in clipped lines' windows.
    fn new(file: &SourceFile, points: &[usize]) -> Shown {
        let orig = file.text.clone();
        let name = escape(&file.name).into_owned();
        let quick = orig.len() <= MAX_SHOWN_LINE || !orig.split('\n').any(|l| l.len() > MAX_SHOWN_LINE);
        if quick && !orig.chars().any(|c| needs_escape(c) && c != '\r') && !has_lone_cr(&orig) {
            return Shown {
                name,
                text: orig.to_string(),
                orig,
                edits: Vec::new(),
            };
        }
        let mut b = Builder::default();
        let mut line_start = 0;
        for line in orig.split_inclusive('\n') {
            let body_len = line.strip_suffix('\n').map_or(line.len(), str::len);
            let (start, end) = (line_start, line_start + body_len);
            if body_len > MAX_SHOWN_LINE {
                // One window per group of nearby labels (at most
                // MAX_WINDOWS), `…` for what lies between.
                let mut starts: Vec<usize> = points.iter().copied().filter(|&p| p >= start && p <= end).collect();
                starts.sort_unstable();
                let mut windows: Vec<(usize, usize)> = Vec::new();
                for p in starts {
                    let a = floor_boundary(&orig, p.saturating_sub(CLIP_BEFORE).max(start));
                    let z = floor_boundary(&orig, (a + CLIP_WIDTH).min(end));
                    let full = windows.len() == MAX_WINDOWS;
                    match windows.last_mut() {
                        Some((_, last)) if a <= *last => *last = z.max(*last),
                        _ if full => {}
                        _ => windows.push((a, z)),
                    }
                }
                if windows.is_empty() {
                    windows.push((start, floor_boundary(&orig, start + CLIP_WIDTH)));
                }
                let mut at = start;
                for (a, z) in windows {
                    if a > at {
                        b.edit(at..a, "…");
                    }
                    b.copy(&orig, a.max(at)..z.max(at));
                    at = z.max(at);
                }
                if at < end {
                    b.edit(at..end, "…");
                }
            } else {
                b.copy(&orig, start..end);
            }
            if end < line_start + line.len() {
                b.copy(&orig, end..end + 1);
            }
            line_start += line.len();
        }
        Shown {
            name,
            orig,
            text: b.text,
            edits: b.edits,
        }
    }

    /// Where a byte offset of the file is in the shown text. An offset
    /// inside an edit goes to its start, or its end for the end of a span.
    fn to_shown(&self, off: usize, is_end: bool) -> usize {
        let off = off.min(self.orig.len());
        let i = self.edits.partition_point(|e| e.orig.start <= off);
        let Some(e) = i.checked_sub(1).map(|i| &self.edits[i]) else {
            return off;
        };
        if off == e.orig.start {
            e.shown.start
        } else if off < e.orig.end {
            if is_end { e.shown.end } else { e.shown.start }
        } else {
            e.shown.end + (off - e.orig.end)
        }
    }

    /// Where a byte offset of the shown text is in the file.
    fn to_orig(&self, off: usize) -> usize {
        let i = self.edits.partition_point(|e| e.shown.start <= off);
        let Some(e) = i.checked_sub(1).map(|i| &self.edits[i]) else {
            return off;
        };
        if off < e.shown.end {
            e.orig.start
        } else {
            e.orig.end + (off - e.shown.end)
        }
    }

    fn label(&self, l: &Label) -> miette::LabeledSpan {
        let start = self.to_shown(l.span.range.start, false);
        let end = self.to_shown(l.span.range.end, true).max(start);
        let span = miette::SourceSpan::from(start..end);
        let msg = (!l.message.is_empty()).then(|| l.message.clone());
        if l.primary {
            miette::LabeledSpan::new_primary_with_span(msg, span)
        } else {
            miette::LabeledSpan::new_with_span(msg, span)
        }
    }
}

/// A `\r` not followed by `\n`: miette would take it for a line break, and
/// a terminal returns to the start of the line.
fn has_lone_cr(s: &str) -> bool {
    s.match_indices('\r')
        .any(|(i, _)| s.as_bytes().get(i + 1) != Some(&b'\n'))
}

#[derive(Default)]
struct Builder {
    text: String,
    edits: Vec<Edit>,
}

impl Builder {
    fn edit(&mut self, orig: Range<usize>, with: &str) {
        let start = self.text.len();
        self.text.push_str(with);
        self.edits.push(Edit {
            orig,
            shown: start..self.text.len(),
        });
    }

    /// Copies `range` of `src`, escaping what must not be shown raw.
    fn copy(&mut self, src: &str, range: Range<usize>) {
        let mut done = range.start;
        for (i, c) in src[range.clone()].char_indices() {
            let at = range.start + i;
            let lone_cr = c == '\r' && src.as_bytes().get(at + 1) != Some(&b'\n');
            if (needs_escape(c) && c != '\r') || lone_cr {
                self.text.push_str(&src[done..at]);
                self.edit(at..at + c.len_utf8(), &escape_char(c));
                done = at + c.len_utf8();
            }
        }
        self.text.push_str(&src[done..range.end]);
    }
}

impl miette::SourceCode for Shown {
    fn read_span<'a>(
        &'a self,
        span: &miette::SourceSpan,
        before: usize,
        after: usize,
    ) -> Result<Box<dyn miette::SpanContents<'a> + 'a>, miette::MietteError> {
        let inner = miette::SourceCode::read_span(self.text.as_str(), span, before, after)?;
        // The header names the position in the file, not in the clipped line.
        let column = if before == 0 && !self.edits.is_empty() {
            let at = self.to_orig(inner.span().offset());
            at - self.orig[..at].rfind('\n').map_or(0, |i| i + 1)
        } else {
            inner.column()
        };
        Ok(Box::new(
            miette::MietteSpanContents::new_named(
                self.name.clone(),
                inner.data(),
                *inner.span(),
                inner.line(),
                column,
                inner.line_count(),
            )
            .with_language("nickel"),
        ))
    }
}

fn miette_view(d: &Diagnostic) -> MietteView {
    let d = &escaped(d);
    let main = d.primary().map(|l| l.span.file.clone());
    // Labels by file: the primary label's first, then others in order of
    // first appearance.
    let mut files: Vec<(Arc<SourceFile>, Vec<&Label>)> = Vec::new();
    if let Some(m) = &main {
        files.push((m.clone(), Vec::new()));
    }
    for l in &d.labels {
        let same = |f: &Arc<SourceFile>| Arc::ptr_eq(f, &l.span.file) || f.name == l.span.file.name;
        match files.iter_mut().find(|(f, _)| same(f)) {
            Some((_, v)) => v.push(l),
            None => files.push((l.span.file.clone(), vec![l])),
        }
    }
    let shown = |file: &SourceFile, labels: &[&Label]| {
        let points: Vec<usize> = labels
            .iter()
            .flat_map(|l| [l.span.range.start, l.span.range.end])
            .collect();
        let source = Shown::new(file, &points);
        let labels = labels.iter().map(|l| source.label(l)).collect();
        (source, labels)
    };
    let mut files = files.into_iter();
    let (source, labels) = match files.next() {
        Some((file, labels)) => {
            let (s, l) = shown(&file, &labels);
            (Some(s), l)
        }
        None => (None, Vec::new()),
    };
    let mut related: Vec<MietteView> = files
        .map(|(file, labels)| {
            let (source, labels) = shown(&file, &labels);
            MietteView {
                code: None,
                message: format!("see also {}", source.name),
                severity: miette::Severity::Advice,
                source: Some(source),
                labels,
                help: None,
                related: vec![],
            }
        })
        .collect();
    for note in &d.notes {
        related.push(MietteView {
            code: None,
            message: note.clone(),
            severity: miette::Severity::Advice,
            source: None,
            labels: vec![],
            help: None,
            related: vec![],
        });
    }
    let mut help = d.help_line();
    if let Some(path) = &d.path {
        help = format!("{help}\n(at `{path}`)");
    }
    MietteView {
        code: Some(d.code),
        message: d.message.clone(),
        severity: match d.severity {
            Severity::Error => miette::Severity::Error,
            Severity::Warning => miette::Severity::Warning,
        },
        source,
        labels,
        help: Some(help),
        related,
    }
}

/// Renders one diagnostic the way rustc would: code, message, annotated
/// source, help. `color` selects ANSI styling; width is fixed for stable
/// snapshots.
pub fn render_human(d: &Diagnostic, color: bool) -> String {
    let theme = if color {
        miette::GraphicalTheme::unicode()
    } else {
        miette::GraphicalTheme::unicode_nocolor()
    };
    let handler = miette::GraphicalReportHandler::new_themed(theme)
        .with_width(100)
        .with_wrap_lines(false)
        .with_links(false);
    let mut out = String::new();
    handler
        .render_report(&mut out, &miette_view(d))
        .expect("rendering to a String cannot fail");
    out
}

// ---------------------------------------------------------------------------
// JSON rendering
// ---------------------------------------------------------------------------

/// Version of the JSON document `--format json` prints (docs/cli.md).
pub const JSON_VERSION: u32 = 1;

#[derive(Serialize)]
struct JsonPos {
    line: usize,
    column: usize,
    offset: usize,
}

#[derive(Serialize)]
struct JsonLabel<'a> {
    file: &'a str,
    start: JsonPos,
    end: JsonPos,
    message: &'a str,
    primary: bool,
}

#[derive(Serialize)]
struct JsonDiagnostic<'a> {
    code: Code,
    severity: Severity,
    message: &'a str,
    help: String,
    notes: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<&'a str>,
    labels: Vec<JsonLabel<'a>>,
    rendered: String,
}

#[derive(Serialize)]
struct JsonSummary {
    errors: usize,
    warnings: usize,
}

#[derive(Serialize)]
struct JsonReport<'a> {
    version: u32,
    diagnostics: Vec<JsonDiagnostic<'a>>,
    summary: JsonSummary,
}

pub fn render_json(diags: &[Diagnostic]) -> String {
    let pos = |s: &Span, off: usize| {
        let (line, column) = s.line_col(off);
        JsonPos {
            line,
            column,
            offset: off,
        }
    };
    let shown: Vec<Diagnostic> = diags.iter().map(escaped).collect();
    let names: Vec<Vec<String>> = shown
        .iter()
        .map(|d| {
            d.labels
                .iter()
                .map(|l| escape(&l.span.file.name).into_owned())
                .collect()
        })
        .collect();
    let report = JsonReport {
        version: JSON_VERSION,
        diagnostics: shown
            .iter()
            .zip(&names)
            .map(|(d, names)| JsonDiagnostic {
                code: d.code,
                severity: d.severity,
                message: &d.message,
                help: d.help_line(),
                notes: &d.notes,
                path: d.path.as_deref(),
                labels: d
                    .labels
                    .iter()
                    .zip(names)
                    .map(|(l, name)| JsonLabel {
                        file: name,
                        start: pos(&l.span, l.span.range.start),
                        end: pos(&l.span, l.span.range.end),
                        message: &l.message,
                        primary: l.primary,
                    })
                    .collect(),
                rendered: render_human(d, false),
            })
            .collect(),
        summary: JsonSummary {
            errors: diags.iter().filter(|d| d.severity == Severity::Error).count(),
            warnings: diags.iter().filter(|d| d.severity == Severity::Warning).count(),
        },
    };
    let mut s = serde_json::to_string_pretty(&report).expect("serialising a report cannot fail");
    s.push('\n');
    s
}

// ---------------------------------------------------------------------------
// CI formats: GitHub workflow commands and SARIF
// ---------------------------------------------------------------------------

/// The label a CI annotation anchors to: the primary one if it is in the
/// user's files, else the first that is (stdlib files are not in the repo).
fn annotation_label(d: &Diagnostic) -> Option<&Label> {
    let user = |l: &&Label| l.span.in_user();
    d.primary().filter(user).or_else(|| d.labels.iter().find(user))
}

/// One GitHub Actions workflow command per finding (`::error file=…::…`),
/// so findings show as annotations on the pull request's diff. Paths are
/// relative to the project directory.
pub fn render_github(diags: &[Diagnostic]) -> String {
    let data = |s: &str| s.replace('%', "%25").replace('\r', "%0D").replace('\n', "%0A");
    let prop = |s: &str| data(s).replace(':', "%3A").replace(',', "%2C");
    let mut out = String::new();
    for d in &diags.iter().map(escaped).collect::<Vec<_>>() {
        let level = d.severity.as_str();
        let mut props = vec![format!("title={}", prop(&format!("{} {}", d.code, d.code.title())))];
        if let Some(l) = annotation_label(d) {
            let (line, col) = l.span.line_col(l.span.range.start);
            let (end_line, end_col) = l.span.line_col(l.span.range.end);
            props.push(format!("file={}", prop(&escape(&l.span.file.name))));
            props.push(format!("line={line}"));
            props.push(format!("col={col}"));
            props.push(format!("endLine={end_line}"));
            if end_line == line {
                props.push(format!("endColumn={end_col}"));
            }
        }
        let mut text = format!("{}: {}\nhelp: {}", d.code, d.message, d.help_line());
        if let Some(p) = &d.path {
            text.push_str(&format!("\n(at `{p}`)"));
        }
        out.push_str(&format!("::{level} {}::{}\n", props.join(","), data(&text)));
    }
    out
}

/// A relative URI reference for a display name (`<stackc>/x.ncl` → `%3Cstackc%3E/x.ncl`).
fn uri(name: &str) -> String {
    let mut out = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/!$&'()*+,;=:@".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// SARIF 2.1.0 (code scanning): every code is a rule, every finding a
/// result with its primary location and the others as related locations.
pub fn render_sarif(diags: &[Diagnostic]) -> String {
    use serde_json::json;
    let location = |l: &Label| {
        let (line, col) = l.span.line_col(l.span.range.start);
        let (end_line, end_col) = l.span.line_col(l.span.range.end);
        json!({
            "physicalLocation": {
                "artifactLocation": { "uri": uri(&l.span.file.name) },
                "region": { "startLine": line, "startColumn": col, "endLine": end_line, "endColumn": end_col }
            },
            "message": { "text": l.message }
        })
    };
    let rules: Vec<_> = Code::ALL
        .iter()
        .map(|c| {
            json!({
                "id": c.as_str(),
                "shortDescription": { "text": c.title() },
                "help": { "text": format!("run `stackc explain {c}`; docs/diagnostics/{c}.md") }
            })
        })
        .collect();
    let results: Vec<_> = diags
        .iter()
        .map(escaped)
        .map(|d| {
            let d = &d;
            let primary = annotation_label(d);
            let related: Vec<_> = d
                .labels
                .iter()
                .filter(|l| !primary.is_some_and(|p| std::ptr::eq(*l, p)))
                .map(location)
                .collect();
            let mut r = json!({
                "ruleId": d.code.as_str(),
                "ruleIndex": Code::ALL.iter().position(|c| *c == d.code),
                "level": d.severity.as_str(),
                "message": { "text": format!("{}\nhelp: {}", d.message, d.help_line()) },
                "locations": primary.map(location).into_iter().collect::<Vec<_>>(),
                "relatedLocations": related,
            });
            if let Some(p) = &d.path {
                r["properties"] = json!({ "path": p });
            }
            r
        })
        .collect();
    let doc = json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": { "driver": {
                "name": "stackc",
                "version": env!("CARGO_PKG_VERSION"),
                "rules": rules
            }},
            "columnKind": "unicodeCodePoints",
            "results": results
        }]
    });
    let mut s = serde_json::to_string_pretty(&doc).expect("serialising a report cannot fail");
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(name: &str, text: &str, range: Range<usize>) -> Span {
        Span {
            file: Arc::new(SourceFile {
                name: name.into(),
                text: text.into(),
            }),
            range,
        }
    }

    #[test]
    fn control_and_bidi_characters_are_escaped_everywhere() {
        let evil = "a\u{0}b\u{202e}c\u{2066}d\u{1b}[31m\re\u{200f}";
        assert_eq!(escape(evil), "a\\u{0}b\\u{202e}c\\u{2066}d\\u{1b}[31m\\re\\u{200f}");
        assert_eq!(escape("tab\tand\nline"), "tab\tand\nline", "tabs and line breaks stay");
        assert!(matches!(escape("plain `x`"), std::borrow::Cow::Borrowed(_)));
        assert_eq!(escape(&escape(evil)), escape(evil), "escaping is idempotent");
        let source = format!("name = \"{evil}\"\n");
        let d = Diagnostic::error(Code::InvalidName, format!("machine name `{evil}`"))
            .with_label(Some(span(&format!("f{evil}.ncl"), &source, 8..8 + evil.len())), evil)
            .with_help(evil)
            .with_note(evil)
            .with_path(evil);
        let raw = |s: &str| s.chars().any(|c| (c.is_control() && c != '\n') || is_bidi(c));
        for out in [
            render_human(&d, false),
            render_json(std::slice::from_ref(&d)),
            render_github(std::slice::from_ref(&d)),
            render_sarif(std::slice::from_ref(&d)),
        ] {
            assert!(!raw(&out), "a raw control or bidi character in\n{out}");
        }
        let human = render_human(&d, false);
        assert!(human.contains("machine name `a\\u{0}b\\u{202e}c"), "{human}");
        assert!(human.contains("[fa\\u{0}b\\u{202e}"), "the file name too: {human}");
    }

    #[test]
    fn a_label_past_column_65535_renders_clipped() {
        let text = format!("{}]\nnext\n", " ".repeat(70_000));
        let d = Diagnostic::error(Code::Syntax, "unexpected token")
            .with_label(Some(span("prod.ncl", &text, 70_000..70_001)), "here");
        let out = render_human(&d, false);
        assert!(
            out.contains("[prod.ncl:1:70001]"),
            "the header has the file's column:\n{out}"
        );
        assert!(out.contains("…"), "{out}");
        assert!(out.lines().all(|l| l.chars().count() < 400), "{out}");
        let line = out.lines().find(|l| l.contains('…')).unwrap();
        let under = out.lines().find(|l| l.contains('┬')).unwrap();
        assert_eq!(
            line.chars().position(|c| c == ']'),
            under.chars().position(|c| c == '┬'),
            "the label stays under its character:\n{out}"
        );
        // A label spanning the whole long line, and one at its very start.
        let d = Diagnostic::error(Code::Syntax, "x")
            .with_label(Some(span("prod.ncl", &text, 0..70_001)), "all")
            .with_label(Some(span("prod.ncl", &text, 70_002..70_006)), "next");
        assert!(render_human(&d, false).contains("[prod.ncl:1:1]"));
    }

    #[test]
    fn shown_offsets_map_both_ways() {
        let file = SourceFile {
            name: "f".into(),
            text: "a\u{0}b\u{202e}c".into(),
        };
        let s = Shown::new(&file, &[]);
        assert_eq!(s.text, "a\\u{0}b\\u{202e}c");
        assert_eq!(s.to_shown(0, false), 0);
        assert_eq!(s.to_shown(1, false), 1, "a span starting at NUL starts at its escape");
        assert_eq!(s.to_shown(2, true), 6, "and ends after it");
        assert_eq!(s.to_shown(3, false), 7);
        assert_eq!(s.to_shown(4, false), 7, "inside a character: its start");
        assert_eq!(s.to_shown(4, true), 15, "or its end, for the end of a span");
        assert_eq!(s.to_shown(6, false), 15);
        assert_eq!(s.to_orig(15), 6);
        assert_eq!(s.to_orig(8), 3);
        assert_eq!(s.to_orig(6), 2);
        let plain = Shown::new(
            &SourceFile {
                name: "g".into(),
                text: "abc\n".into(),
            },
            &[],
        );
        assert!(plain.edits.is_empty() && plain.text == "abc\n");
    }
}
