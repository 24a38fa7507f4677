//! `load`: find the stack file and its project, read every file the stack
//! imports, and hand out the embedded standard library.
//!
//! The project is the directory of the entry file (or `--project-root`).
//! Imports resolve relative to the importing file, then in the embedded
//! stdlib. `load` reads the project's files itself — only regular files
//! inside the project, after resolving every symbolic link — and Nickel gets
//! them from memory under a virtual root, so evaluation never opens a file:
//! an import that would leave the project is refused before a byte of it is
//! read, whatever its form.

use std::fs;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

pub use nickel_lang_core::cache::InputFormat;

use crate::diag::{Code, Diagnostic, SourceFile, Span};

include!(concat!(env!("OUT_DIR"), "/embedded.rs"));

/// Absolute path under which the embedded stdlib is registered with Nickel.
/// Nothing is read from there: in-memory sources win over the file system.
pub const STDLIB_ROOT: &str = "/__stackc_stdlib__";
/// How diagnostics name stdlib files.
pub const STDLIB_DISPLAY: &str = "<stackc>";
/// Absolute path under which the project's files are registered with
/// Nickel (`<PROJECT_ROOT>/prod.ncl`). Nothing exists there on disk, so an
/// import `load` did not read finds nothing.
pub const PROJECT_ROOT: &str = "/__stackc_project__";

/// How a file path is shown to the user: relative to the project, or
/// `<stackc>/…` for the stdlib. Never an absolute path of the build machine.
pub fn display_name(root: &Path, name: &str) -> String {
    if let Some(rest) = name.strip_prefix(STDLIB_ROOT) {
        return format!("{STDLIB_DISPLAY}{rest}");
    }
    if let Some(rest) = name.strip_prefix(PROJECT_ROOT) {
        return rest.trim_start_matches('/').to_owned();
    }
    let p = Path::new(name);
    match p.strip_prefix(root) {
        Ok(rel) => rel.to_string_lossy().into_owned(),
        // Nickel's own snippets (`<generated>`, `<stdlib/std.ncl>`).
        Err(_) if !p.is_absolute() => name.to_owned(),
        Err(_) => "<outside the project>".to_owned(),
    }
}

/// Hash of the embedded stdlib, recorded in the manifest as an input.
pub fn stdlib_digest() -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for (name, text) in STDLIB {
        h.update((name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update((text.len() as u64).to_le_bytes());
        h.update(text.as_bytes());
    }
    hex(&h.finalize())
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Largest file a stack may import (or be): configuration this large is a
/// mistake, and reading it must not exhaust memory.
pub const MAX_FILE_BYTES: u64 = 16 << 20;

/// Most files one stack may import, counting each path a file is imported
/// by (Nickel keys files by path).
pub const MAX_SOURCES: usize = 1024;

/// Deepest syntactic nesting accepted in a project file. Nickel's passes
/// recurse over the syntax tree: beyond a few tens of thousands of levels they
/// overflow the stack, and long before that their memory grows quadratically.
/// Real configuration stays far below this.
pub const MAX_SYNTAX_DEPTH: usize = 512;

/// One project file, read once by `load`. Nickel gets these bytes from memory
/// and never opens a file itself.
pub struct Source {
    /// Where Nickel knows the file: `PROJECT_ROOT/<path relative to the root>`.
    pub nickel_path: PathBuf,
    pub format: InputFormat,
    pub text: String,
}

pub struct Project {
    /// Canonical project directory.
    pub root: PathBuf,
    /// Canonical path of the stack file.
    pub entry: PathBuf,
    /// The stack file first, then every file it imports, transitively.
    pub sources: Vec<Source>,
}

/// Reads the stack file and every file it imports. Parsing runs within the
/// evaluation budget `limits` too: a literal such as `1e-2147483649` costs
/// Nickel's parser gigabytes.
pub fn load(entry: &Path, root: Option<&Path>, limits: crate::eval::Limits) -> Result<Project, Vec<Diagnostic>> {
    let shown = entry.display().to_string();
    let unreadable = |e: std::io::Error| {
        vec![
            Diagnostic::error(Code::InputUnreadable, format!("cannot read `{shown}`: {e}"))
                .with_help("check the path of the stack file"),
        ]
    };
    let canonical = fs::canonicalize(entry).map_err(unreadable)?;
    let root = match root {
        Some(r) => fs::canonicalize(r).map_err(|e| {
            vec![Diagnostic::error(
                Code::InputUnreadable,
                format!("cannot use `{}` as the project root: {e}", r.display()),
            )]
        })?,
        None => canonical.parent().expect("a file has a parent").to_path_buf(),
    };
    let Ok(rel) = canonical.strip_prefix(&root).map(Path::to_path_buf) else {
        return Err(vec![
            Diagnostic::error(
                Code::ImportEscapes,
                format!("the stack file `{shown}` is outside the project root"),
            )
            .with_help("pass a --project-root that contains the stack file"),
        ]);
    };
    let text = match read_regular(&canonical) {
        Ok(t) => t,
        Err(Refusal::Io(e)) => return Err(unreadable(e)),
        Err(why) => {
            return Err(vec![
                Diagnostic::error(
                    Code::ImportUnreadable,
                    format!("the stack file `{shown}` {}", why.says()),
                )
                .with_help(why.help()),
            ]);
        }
    };
    let project_path = Path::new(PROJECT_ROOT).join(&rel);
    if text
        .lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
    {
        return Err(vec![
            Diagnostic::error(
                Code::EmptyFile,
                format!("`{}` is empty (or only comments)", rel.display()),
            )
            .with_help("a stack file starts with `let stackc = import \"stackc.ncl\" in stackc.stack { … }`"),
        ]);
    }
    let project = Project {
        root,
        entry: canonical,
        sources: vec![Source {
            nickel_path: project_path,
            format: InputFormat::Nickel,
            text,
        }],
    };
    crate::eval::bounded("stackc-load", limits, move || {
        let mut project = project;
        let mut diags = Vec::new();
        // Breadth-first over the import graph; `sources` grows as it goes.
        let mut next = 0;
        while next < project.sources.len() {
            // Symbolic links to folders can make one file reachable by ever
            // longer paths (`d/d/d/x.ncl`): bound the import graph.
            if project.sources.len() > MAX_SOURCES {
                diags.push(
                    Diagnostic::error(
                        Code::TooDeep,
                        format!("the stack imports more than {MAX_SOURCES} files"),
                    )
                    .with_help("a symbolic link to a folder that contains it makes paths without end (`d/d/d/…`); import through real paths"),
                );
                break;
            }
            if project.sources[next].format == InputFormat::Nickel {
                scan(&mut project, next, &mut diags);
            }
            next += 1;
        }
        if diags.is_empty() { Ok(project) } else { Err(diags) }
    })
}

/// Why a file is not read.
enum Refusal {
    Io(std::io::Error),
    NotRegular(&'static str),
    TooLarge,
    NotUtf8,
}

impl Refusal {
    fn says(&self) -> String {
        match self {
            Refusal::Io(e) => format!("cannot be read: {e}"),
            Refusal::NotRegular(kind) => format!("is a {kind}, not a regular file"),
            Refusal::TooLarge => format!("is larger than {} MiB", MAX_FILE_BYTES >> 20),
            Refusal::NotUtf8 => "is not UTF-8 text".to_owned(),
        }
    }

    fn help(&self) -> &'static str {
        match self {
            Refusal::Io(_) => "check the file's permissions",
            Refusal::NotRegular(_) => {
                "stackc reads only regular files: a FIFO or device could hang the build or feed it endless data"
            }
            Refusal::TooLarge => "configuration this large is a mistake; import a smaller file",
            Refusal::NotUtf8 => "Nickel reads text as UTF-8: convert the file, or keep binary data out of the stack",
        }
    }
}

/// Reads a file that `canonicalize` resolved (no symbolic link left in the
/// path) if, once open, it is a regular file of bounded size holding UTF-8.
/// Opened non-blocking (a FIFO does not wait for a writer) and without
/// following a link swapped in since; the type is checked on the open file.
fn read_regular(path: &Path) -> Result<String, Refusal> {
    use std::io::Read;
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_NOCTTY)
        .open(path)
        .map_err(Refusal::Io)?;
    let meta = file.metadata().map_err(Refusal::Io)?;
    let ft = meta.file_type();
    if !ft.is_file() {
        return Err(Refusal::NotRegular(if ft.is_fifo() {
            "FIFO"
        } else if ft.is_socket() {
            "socket"
        } else if ft.is_char_device() || ft.is_block_device() {
            "device"
        } else if ft.is_dir() {
            "directory"
        } else {
            "special file"
        }));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(Refusal::TooLarge);
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(Refusal::Io)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(Refusal::TooLarge);
    }
    String::from_utf8(bytes).map_err(|_| Refusal::NotUtf8)
}

/// An import found in a project file: target (None if the lexer gave
/// something else than text in its literal), format, literal's byte range.
struct Import {
    path: Option<PathBuf>,
    format: InputFormat,
    range: std::ops::Range<usize>,
}

/// Parses source `index` with Nickel's own parser, refuses nesting past
/// [`MAX_SYNTAX_DEPTH`], and resolves each import exactly as Nickel will —
/// first next to the importing file, then in the stdlib — reading the
/// project files it lands on into `project.sources`. An import that would
/// make Nickel open anything else is refused here, before a byte is read.
/// Syntax errors are left to Nickel, which reports them better; the imports
/// of what did parse are still checked.
fn scan(project: &mut Project, index: usize, diags: &mut Vec<Diagnostic>) {
    let src = &project.sources[index];
    let file = Arc::new(SourceFile {
        name: display_name(&project.root, &src.nickel_path.to_string_lossy()),
        text: Arc::from(src.text.as_str()),
    });
    let (imports, too_deep) = syntax_facts(&src.text);
    if let Some(range) = too_deep {
        diags.push(
            Diagnostic::error(
                Code::TooDeep,
                format!(
                    "`{}` nests expressions more than {MAX_SYNTAX_DEPTH} levels deep",
                    file.name
                ),
            )
            .with_label(
                Some(Span {
                    file: file.clone(),
                    range,
                }),
                "this is where the limit is crossed",
            )
            .with_help(
                "configuration this deep is a mistake (generated?); flatten it, or build the structure with a function",
            ),
        );
        return;
    }
    let dir = src
        .nickel_path
        .parent()
        .expect("a project path has a parent")
        .to_path_buf();
    for import in imports {
        let span = || {
            Some(Span {
                file: file.clone(),
                range: import.range.clone(),
            })
        };
        let Some(import_path) = &import.path else {
            diags.push(
                Diagnostic::error(Code::ImportEscapes, "an import path stackc cannot read")
                    .with_label(span(), "this import")
                    .with_help("write the path with plain characters"),
            );
            continue;
        };
        let shown = import_path.to_string_lossy().into_owned();
        let beside = normalize(&dir.join(import_path));
        let in_stdlib = normalize(&Path::new(STDLIB_ROOT).join(import_path));
        let escapes = || {
            Diagnostic::error(
                Code::ImportEscapes,
                format!("import of `{shown}` leaves the project directory"),
            )
            .with_label(span(), "this file is outside the project")
            .with_help(
                "keep every imported file inside the project directory, so the stack builds the same from any checkout",
            )
        };
        let Ok(rel) = beside.strip_prefix(PROJECT_ROOT).map(Path::to_path_buf) else {
            diags.push(escapes());
            continue;
        };
        let real = project.root.join(&rel);
        if fs::symlink_metadata(&real).is_err() {
            // Not in the project: Nickel looks in the stdlib next, which
            // holds only in-memory files. A name that would climb out of it
            // would send Nickel to the real file system.
            if !in_stdlib.starts_with(STDLIB_ROOT) {
                diags.push(escapes());
            }
            continue;
        }
        match fs::canonicalize(&real) {
            Ok(c) if !c.starts_with(&project.root) => {
                diags.push(escapes().with_note(format!(
                    "`{}` is a symbolic link (or passes through one) to a file outside the project",
                    rel.display()
                )));
                continue;
            }
            Ok(c) => {
                if project
                    .sources
                    .iter()
                    .any(|s| s.nickel_path == beside && s.format == import.format)
                {
                    continue;
                }
                match read_regular(&c) {
                    Ok(text) => project.sources.push(Source {
                        nickel_path: beside,
                        format: import.format,
                        text,
                    }),
                    Err(why) => diags.push(
                        Diagnostic::error(
                            Code::ImportUnreadable,
                            format!("the imported file `{shown}` {}", why.says()),
                        )
                        .with_label(span(), "imported here")
                        .with_help(why.help()),
                    ),
                }
            }
            // A dangling link, or a loop: Nickel would fail on it too.
            Err(_) => diags.push(
                Diagnostic::error(
                    Code::ImportNotFound,
                    format!("cannot resolve the imported file `{shown}`"),
                )
                .with_label(span(), "imported here")
                .with_help("the path is a symbolic link that leads nowhere (or in a loop)"),
            ),
        }
    }
}

/// Every import of a Nickel source (with the byte range of its path
/// literal, from the lexer), and where nesting first exceeds
/// [`MAX_SYNTAX_DEPTH`], if it does (from the syntax tree).
fn syntax_facts(text: &str) -> (Vec<Import>, Option<std::ops::Range<usize>>) {
    use nickel_lang_parser::{
        ErrorTolerantParser,
        ast::AstAlloc,
        files::Files,
        grammar::TermParser,
        lexer::Lexer,
        traverse::{TraverseAlloc, TraverseControl},
    };
    if let Some(at) = bracket_depth_exceeded(text) {
        return (Vec::new(), Some(at..at + 1));
    }
    let imports = lexed_imports(text);
    let mut files = Files::empty();
    let id = files.add("scan", text);
    let alloc = AstAlloc::new();
    let Ok((ast, _errors)) = TermParser::new().parse_tolerant(&alloc, id, Lexer::new(text)) else {
        return (imports, None);
    };
    let deep = ast.traverse_ref(
        &mut |node: &nickel_lang_parser::ast::Ast<'_>, depth: &usize| {
            if *depth > MAX_SYNTAX_DEPTH {
                return TraverseControl::Return(node.pos.into_opt().map(|s| s.to_range()).unwrap_or(0..0));
            }
            TraverseControl::ContinueWithScope(depth + 1)
        },
        &0,
    );
    (imports, deep)
}

/// Every `import "path" [as 'Format]` of a source, found in the token
/// stream of Nickel's own lexer: an import is always the keyword followed by
/// a static string literal, wherever it sits — in a pattern's default, a
/// type, an interpolation — so no syntax-tree walk can miss one. A path
/// made of anything but literal text and escapes is `None` (refused).
fn lexed_imports(text: &str) -> Vec<Import> {
    use nickel_lang_parser::lexer::{Lexer, NormalToken, StringToken, Token};
    let tokens: Vec<(usize, Token<'_>, usize)> = Lexer::new(text).map_while(Result::ok).collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        if !matches!(tokens[i].1, Token::Normal(NormalToken::Import)) {
            i += 1;
            continue;
        }
        let Some((start, Token::Normal(NormalToken::DoubleQuote), _)) = tokens.get(i + 1) else {
            // `import pkg`: packages need a package map, which stackc never gives.
            i += 1;
            continue;
        };
        let mut path = Some(String::new());
        let mut j = i + 2;
        let mut end = *start;
        while let Some((_, tok, e)) = tokens.get(j) {
            j += 1;
            end = *e;
            match tok {
                // The lexer hands the closing quote back in normal mode.
                Token::Str(StringToken::DoubleQuote) | Token::Normal(NormalToken::DoubleQuote) => break,
                Token::Str(StringToken::Literal(s)) => path.iter_mut().for_each(|p| p.push_str(s)),
                // The modal lexer decodes every escape (`\n`, `\x41`,
                // `\u{…}`) into the character itself.
                Token::Str(StringToken::EscapedChar(c)) => path.iter_mut().for_each(|p| p.push(*c)),
                _ => path = None,
            }
        }
        // `as 'Format` (or `as '"Format"`), else the format of the extension.
        let mut format = None;
        if let Some((_, Token::Normal(NormalToken::As), _)) = tokens.get(j) {
            match tokens.get(j + 1) {
                Some((_, Token::Normal(NormalToken::RawEnumTag(tag)), _)) => format = tag.parse().ok(),
                Some((_, Token::Normal(NormalToken::StrEnumTagBegin), _)) => {
                    if let Some((_, Token::Str(StringToken::Literal(tag)), _)) = tokens.get(j + 2) {
                        format = tag.parse().ok();
                    }
                }
                _ => {}
            }
        }
        let range = *start..end;
        out.push(match path {
            Some(p) => {
                let format = format.unwrap_or_else(|| InputFormat::from_path(&p).unwrap_or_default());
                Import {
                    path: Some(PathBuf::from(p)),
                    format,
                    range,
                }
            }
            None => Import {
                path: None,
                format: InputFormat::Nickel,
                range,
            },
        });
        i = j;
    }
    out
}

/// Nickel's parser and passes recurse per level of brackets; a file with
/// tens of thousands of them must be refused before it is parsed. Counts
/// `(`, `[`, `{` (also `%{` of interpolations) against their closers,
/// outside comments, which is enough for a bound.
fn bracket_depth_exceeded(text: &str) -> Option<usize> {
    let mut depth = 0usize;
    let mut comment = false;
    for (i, b) in text.bytes().enumerate() {
        match b {
            b'\n' => comment = false,
            _ if comment => {}
            b'#' => comment = true,
            b'(' | b'[' | b'{' => {
                depth += 1;
                if depth > MAX_SYNTAX_DEPTH {
                    return Some(i);
                }
            }
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    None
}

fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn imported(src: &str) -> Vec<String> {
        syntax_facts(src)
            .0
            .into_iter()
            .map(|i| {
                i.path
                    .map_or("<undecodable>".into(), |p| p.to_string_lossy().into_owned())
            })
            .collect()
    }

    #[test]
    fn finds_imports_in_patterns_types_escapes_and_quoted_formats() {
        let src = "let { c ? import \"p.txt\" as 'Text } = {} in\nlet x | [| 'a (import \"t.json\") |] = 'a 1 in\n{ y = import \"e\\x41.ncl\" as '\"Nickel\", z = import \"q\\u{1F600}\" }";
        let facts = syntax_facts(src).0;
        let found: Vec<(String, InputFormat)> = facts
            .iter()
            .map(|i| {
                (
                    i.path
                        .as_ref()
                        .map_or("<none>".into(), |p| p.to_string_lossy().into_owned()),
                    i.format,
                )
            })
            .collect();
        assert_eq!(
            found,
            vec![
                ("p.txt".into(), InputFormat::Text),
                ("t.json".into(), InputFormat::Json),
                ("eA.ncl".into(), InputFormat::Nickel),
                ("q\u{1F600}".into(), InputFormat::Nickel),
            ]
        );
    }

    #[test]
    fn finds_imports_in_code_and_interpolations_but_not_comments_or_plain_strings() {
        let src = "let a = import \"a.ncl\" in\n# import \"no.ncl\"\nlet s = \"import \\\"x\\\"\" in\nlet d = m%\"import \"z.ncl\" %{import \"t.txt\" as 'Text} \"% in\n{ x = \"%{import \"../b.ncl\"}\" }";
        let mut found = imported(src);
        found.sort();
        assert_eq!(found, vec!["../b.ncl", "a.ncl", "t.txt"]);
    }

    #[test]
    fn import_range_covers_the_literal() {
        let src = "{ x = import \"x.ncl\" }";
        let facts = syntax_facts(src).0;
        assert_eq!(&src[facts[0].range.clone()], "\"x.ncl\"");
    }

    #[test]
    fn deep_nesting_is_refused_before_parsing() {
        let deep = "[".repeat(60_000);
        assert!(syntax_facts(&deep).1.is_some());
        let chain = "let x = 1 in ".repeat(MAX_SYNTAX_DEPTH + 10) + "x";
        assert!(syntax_facts(&chain).1.is_some(), "let chains nest without brackets");
        let fine = "let x = 1 in ".repeat(50) + "[[[x]]]";
        assert!(syntax_facts(&fine).1.is_none());
    }

    #[test]
    fn display_names_are_relative() {
        let root = Path::new("/p/proj");
        assert_eq!(display_name(root, &format!("{PROJECT_ROOT}/prod.ncl")), "prod.ncl");
        assert_eq!(display_name(root, &format!("{PROJECT_ROOT}/lib/a.ncl")), "lib/a.ncl");
        assert_eq!(
            display_name(root, &format!("{STDLIB_ROOT}/caddy.ncl")),
            "<stackc>/caddy.ncl"
        );
        assert_eq!(display_name(root, "/etc/passwd"), "<outside the project>");
    }
}
