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
    NoSecretsKey = "SC0301", 2, "build needs a master key or --placeholder-secrets";
    KeyPermissions = "SC0302", 1, "the master key file is readable by others";
    KeyMalformed = "SC0303", 1, "the master key file is not a stackc key";
    KeyUnreadable = "SC0304", 2, "the master key file cannot be read";
    SecretConflict = "SC0305", 1, "one secret name is used with two different definitions";
    UnsafePath = "SC0401", 1, "an emitted file path is not a safe relative path";
    BadContent = "SC0402", 1, "a file's content cannot be rendered in its format";
    SchemaViolation = "SC0403", 1, "a written config breaks its schema";
    OidcRedirect = "SC0501", 1, "an OpenID client does not allow the callback its relying party sends";
    OidcSecret = "SC0502", 1, "an OpenID client's secret digest does not verify the secret its relying party sends";
    OidcAuthMethod = "SC0503", 1, "the two sides of an OpenID client use different token endpoint auth methods";
    IssuerMismatch = "SC0504", 1, "an issuer URL differs from the one the provider answers with";
    Unreachable = "SC0505", 1, "a URL one service uses for another does not reach it";
    SharedSecret = "SC0506", 1, "Synapse and MAS hold different shared secrets";
    HomeserverMismatch = "SC0507", 1, "a client or MAS disagrees with Synapse's public URL or server name";
    AppserviceMismatch = "SC0508", 1, "an appservice registration and its bridge's config disagree";
    AppserviceDuplicate = "SC0509", 1, "two appservice registrations share an id or a token";
    DatabaseMismatch = "SC0510", 1, "a database client names a database, role or password its server does not create";
    NoTlsSite = "SC0511", 1, "a public URL's host has no TLS site";
    Federation = "SC0512", 1, "federation does not reach Synapse's federation listener";
    CompatLogin = "SC0513", 1, "the legacy login API is not routed to MAS";
    MissingClaim = "SC0514", 1, "a claim the relying party requires is not in the ID token";
    Msc4190 = "SC0515", 1, "an encrypting bridge next to MAS lacks MSC4190";
    MissingFile = "SC0516", 1, "a config names a file its service cannot read";
    SigningKeyVersion = "SC0517", 1, "the federation signing key has an unusable version";
    NotABundle = "SC0901", 2, "the output directory exists and is not a stackc bundle";
    Io = "SC0902", 2, "input/output error";
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

/// Sort and deduplicate, so a run prints the same findings in the same order.
pub fn sort(diags: &mut Vec<Diagnostic>) {
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
// Human rendering (miette)
// ---------------------------------------------------------------------------

/// One file's worth of a diagnostic, as miette wants it: miette shows one
/// source per diagnostic, so labels in other files become related entries.
#[derive(Debug)]
struct MietteView {
    code: Option<Code>,
    message: String,
    severity: miette::Severity,
    source: Option<miette::NamedSource<Arc<str>>>,
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

fn miette_label(l: &Label) -> miette::LabeledSpan {
    let span = miette::SourceSpan::from(l.span.range.clone());
    let msg = (!l.message.is_empty()).then(|| l.message.clone());
    if l.primary {
        miette::LabeledSpan::new_primary_with_span(msg, span)
    } else {
        miette::LabeledSpan::new_with_span(msg, span)
    }
}

fn named_source(file: &SourceFile) -> miette::NamedSource<Arc<str>> {
    miette::NamedSource::new(file.name.clone(), file.text.clone()).with_language("nickel")
}

fn miette_view(d: &Diagnostic) -> MietteView {
    let main = d.primary().map(|l| l.span.file.clone());
    let mut labels = Vec::new();
    // Other files, in order of first appearance.
    let mut others: Vec<(Arc<SourceFile>, Vec<miette::LabeledSpan>)> = Vec::new();
    for l in &d.labels {
        if main
            .as_ref()
            .is_some_and(|m| Arc::ptr_eq(m, &l.span.file) || m.name == l.span.file.name)
        {
            labels.push(miette_label(l));
        } else if let Some((_, v)) = others.iter_mut().find(|(f, _)| f.name == l.span.file.name) {
            v.push(miette_label(l));
        } else {
            others.push((l.span.file.clone(), vec![miette_label(l)]));
        }
    }
    let mut related: Vec<MietteView> = others
        .into_iter()
        .map(|(file, labels)| MietteView {
            code: None,
            message: format!("see also {}", file.name),
            severity: miette::Severity::Advice,
            source: Some(named_source(&file)),
            labels,
            help: None,
            related: vec![],
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
        source: main.as_deref().map(named_source),
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
    let report = JsonReport {
        version: JSON_VERSION,
        diagnostics: diags
            .iter()
            .map(|d| JsonDiagnostic {
                code: d.code,
                severity: d.severity,
                message: &d.message,
                help: d.help_line(),
                notes: &d.notes,
                path: d.path.as_deref(),
                labels: d
                    .labels
                    .iter()
                    .map(|l| JsonLabel {
                        file: &l.span.file.name,
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
    for d in diags {
        let level = d.severity.as_str();
        let mut props = vec![format!("title={}", prop(&format!("{} {}", d.code, d.code.title())))];
        if let Some(l) = annotation_label(d) {
            let (line, col) = l.span.line_col(l.span.range.start);
            let (end_line, end_col) = l.span.line_col(l.span.range.end);
            props.push(format!("file={}", prop(&l.span.file.name)));
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
        .map(|d| {
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
