//! `load`: find the stack file and its project, check that every import stays
//! inside the project, and hand out the embedded standard library.
//!
//! The project is the directory of the entry file (or `--project-root`).
//! Imports resolve relative to the importing file, then in the embedded
//! stdlib; an import that leaves the project is refused before evaluation so
//! a build never depends on files outside the repository it is reviewed in.

use std::fs;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use crate::diag::{Code, Diagnostic, SourceFile, Span};

include!(concat!(env!("OUT_DIR"), "/embedded.rs"));

/// Absolute path under which the embedded stdlib is registered with Nickel.
/// Nothing is read from there: in-memory sources win over the file system.
pub const STDLIB_ROOT: &str = "/__stackc_stdlib__";
/// How diagnostics name stdlib files.
pub const STDLIB_DISPLAY: &str = "<stackc>";

pub struct Project {
    /// Canonical project directory.
    pub root: PathBuf,
    /// Canonical path of the stack file.
    pub entry: PathBuf,
}

/// How a file path is shown to the user: relative to the project, or
/// `<stackc>/…` for the stdlib. Never an absolute path of the build machine.
pub fn display_name(root: &Path, name: &str) -> String {
    if let Some(rest) = name.strip_prefix(STDLIB_ROOT) {
        return format!("{STDLIB_DISPLAY}{rest}");
    }
    let p = Path::new(name);
    match p.strip_prefix(root) {
        Ok(rel) => rel.to_string_lossy().into_owned(),
        Err(_) => name.to_owned(),
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

pub fn load(entry: &Path, root: Option<&Path>) -> Result<Project, Vec<Diagnostic>> {
    let unreadable = |e: std::io::Error| {
        vec![
            Diagnostic::error(Code::InputUnreadable, format!("cannot read `{}`: {e}", entry.display()))
                .with_help("check the path of the stack file"),
        ]
    };
    let entry = fs::canonicalize(entry).map_err(unreadable)?;
    let text = fs::read_to_string(&entry).map_err(unreadable)?;
    let root = match root {
        Some(r) => fs::canonicalize(r).map_err(|e| {
            vec![Diagnostic::error(
                Code::InputUnreadable,
                format!("cannot use `{}` as the project root: {e}", r.display()),
            )]
        })?,
        None => entry.parent().expect("a file has a parent").to_path_buf(),
    };
    if !entry.starts_with(&root) {
        return Err(vec![
            Diagnostic::error(
                Code::ImportEscapes,
                format!("the stack file `{}` is outside the project root", entry.display()),
            )
            .with_help("pass a --project-root that contains the stack file"),
        ]);
    }
    let project = Project { root, entry };
    if text
        .lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
    {
        let name = display_name(&project.root, &project.entry.to_string_lossy());
        return Err(vec![
            Diagnostic::error(Code::EmptyFile, format!("`{name}` is empty (or only comments)"))
                .with_help("a stack file starts with `let stackc = import \"stackc.ncl\" in stackc.stack { … }`"),
        ]);
    }
    let mut diags = Vec::new();
    let mut seen = Vec::new();
    check_imports(&project, &project.entry, text, &mut seen, &mut diags);
    if diags.is_empty() { Ok(project) } else { Err(diags) }
}

/// Follows the static imports of a project file, refusing any that resolves
/// outside the project root (symlinks included: paths are canonicalised).
fn check_imports(project: &Project, file: &Path, text: String, seen: &mut Vec<PathBuf>, diags: &mut Vec<Diagnostic>) {
    if seen.iter().any(|s| s == file) {
        return;
    }
    seen.push(file.to_path_buf());
    let source = Arc::new(SourceFile {
        name: display_name(&project.root, &file.to_string_lossy()),
        text: Arc::from(text.as_str()),
    });
    let dir = file.parent().expect("a file has a parent");
    for (target, range) in static_imports(&text) {
        let candidate = dir.join(&target);
        let resolved = match fs::canonicalize(&candidate) {
            Ok(p) => p,
            // Not on disk: either the stdlib or a missing file, which Nickel
            // reports with its own diagnostic. A missing path that would
            // still leave the project is refused here.
            Err(_) => {
                let lexical = normalize(&candidate);
                if lexical.starts_with(&project.root) || is_stdlib_name(&target) {
                    continue;
                }
                lexical
            }
        };
        if !resolved.starts_with(&project.root) {
            diags.push(
                Diagnostic::error(Code::ImportEscapes, format!("import of `{target}` leaves the project directory"))
                    .with_label(
                        Some(Span { file: source.clone(), range }),
                        "this file is outside the project",
                    )
                    .with_help(
                        "keep every imported file inside the project directory, so the stack builds the same from any checkout",
                    ),
            );
            continue;
        }
        if resolved.extension().is_some_and(|e| e == "ncl")
            && let Ok(t) = fs::read_to_string(&resolved)
        {
            check_imports(project, &resolved, t, seen, diags);
        }
    }
}

/// The bytes of the project files Nickel evaluated, for the manifest.
pub fn read_inputs(
    inputs: &std::collections::BTreeMap<String, PathBuf>,
) -> Result<std::collections::BTreeMap<String, Vec<u8>>, Vec<Diagnostic>> {
    inputs
        .iter()
        .map(|(name, path)| {
            fs::read(path).map(|b| (name.clone(), b)).map_err(|e| {
                vec![Diagnostic::error(
                    Code::InputUnreadable,
                    format!("cannot re-read input `{name}`: {e}"),
                )]
            })
        })
        .collect()
}

fn is_stdlib_name(target: &str) -> bool {
    STDLIB.iter().any(|(name, _)| *name == target)
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

/// `import "path"` occurrences outside comments, with the byte range of the
/// string literal. Nickel only accepts a plain string literal after
/// `import`, so a lexical scan finds every static import.
fn static_imports(text: &str) -> Vec<(String, std::ops::Range<usize>)> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let mut in_string = false;
    while i < bytes.len() {
        let b = bytes[i];
        if in_string {
            match b {
                b'\\' => i += 1,
                b'"' => in_string = false,
                _ => {}
            }
            i += 1;
            continue;
        }
        match b {
            b'#' => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            // Multi-line string `m%"…"%`: quotes inside do not end it.
            b'm' if text[i..].starts_with("m%\"") && (i == 0 || !is_ident(bytes[i - 1])) => {
                i = text[i + 3..].find("\"%").map_or(bytes.len(), |end| i + 3 + end + 2);
            }
            b'"' => {
                in_string = true;
                i += 1;
            }
            b'i' if text[i..].starts_with("import")
                && (i == 0 || !is_ident(bytes[i - 1]))
                && !bytes.get(i + 6).copied().is_some_and(is_ident) =>
            {
                let mut j = i + 6;
                while j < bytes.len() && bytes[j].is_ascii_whitespace() {
                    j += 1;
                }
                if bytes.get(j) == Some(&b'"') {
                    let start = j;
                    let mut k = j + 1;
                    while k < bytes.len() && bytes[k] != b'"' && bytes[k] != b'\n' {
                        k += if bytes[k] == b'\\' { 2 } else { 1 };
                    }
                    if k < bytes.len() && bytes[k] == b'"' {
                        out.push((text[start + 1..k].to_owned(), start..k + 1));
                        i = k + 1;
                        continue;
                    }
                }
                i += 6;
            }
            _ => i += 1,
        }
    }
    out
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'\''
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_imports_but_not_in_comments_or_strings() {
        let src = "let a = import \"a.ncl\" in\n# import \"no.ncl\"\nlet s = \"import \\\"x\\\"\" in\nlet d = m%\"import \"z.ncl\" \"% in\nimport  \"../b.ncl\"";
        let found: Vec<_> = static_imports(src).into_iter().map(|(p, _)| p).collect();
        assert_eq!(found, vec!["a.ncl", "../b.ncl"]);
    }

    #[test]
    fn import_range_covers_the_literal() {
        let src = "import \"x.ncl\"";
        let (_, r) = &static_imports(src)[0];
        assert_eq!(&src[r.clone()], "\"x.ncl\"");
    }

    #[test]
    fn display_names_are_relative() {
        let root = Path::new("/p/proj");
        assert_eq!(display_name(root, "/p/proj/prod.ncl"), "prod.ncl");
        assert_eq!(
            display_name(root, &format!("{STDLIB_ROOT}/caddy.ncl")),
            "<stackc>/caddy.ncl"
        );
    }
}
