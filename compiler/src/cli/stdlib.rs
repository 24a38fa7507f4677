//! `stackc stdlib`: the embedded stdlib, for editors. `--write DIR` writes
//! its files to a folder, so the Nickel language server (`nls`, with
//! `NICKEL_IMPORT_PATH=DIR`) resolves `import "stackc.ncl"` as stackc does
//! and offers completion and hover docs from the modules' `doc` metadata.

use std::path::{Path, PathBuf};

use super::{emit, report};
use crate::diag::{Code, Diagnostic};
use crate::load::STDLIB;

/// Marks a folder `stdlib --write` wrote: only such a folder (or an empty
/// or missing one) is written to.
const MARKER: &str = ".stackc-stdlib";

#[derive(clap::Args)]
pub(crate) struct StdlibArgs {
    /// Write the stdlib's files to this folder (created if missing; a folder written
    /// before is brought up to date). Without it: list the files.
    #[arg(long, value_name = "DIR")]
    write: Option<PathBuf>,
}

pub(crate) fn run(args: StdlibArgs, color: bool) -> u8 {
    let Some(dir) = args.write else {
        let mut out = String::new();
        for (name, _) in STDLIB {
            out.push_str(name);
            out.push('\n');
        }
        let _ = emit(out.as_bytes());
        return 0;
    };
    match write(&dir) {
        Ok(n) => {
            eprintln!(
                "wrote {n} files of the stackc {} stdlib to {}; point the Nickel language server at it: NICKEL_IMPORT_PATH={}",
                env!("CARGO_PKG_VERSION"),
                dir.display(),
                dir.display()
            );
            0
        }
        Err(d) => report(&[d], color, "nothing written"),
    }
}

fn write(dir: &Path) -> Result<usize, Diagnostic> {
    let io = |what: String, e: std::io::Error| Diagnostic::error(Code::Io, format!("{what}: {e}"));
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.file_type().is_symlink() || !m.is_dir() => {
            return Err(
                Diagnostic::error(Code::Io, format!("`{}` is not a folder", dir.display()))
                    .with_help("name a new folder, or one `stackc stdlib --write` wrote before"),
            );
        }
        Ok(_) => {
            let empty = std::fs::read_dir(dir)
                .map_err(|e| io(format!("cannot read `{}`", dir.display()), e))?
                .next()
                .is_none();
            if !empty && !dir.join(MARKER).is_file() {
                return Err(Diagnostic::error(
                    Code::Io,
                    format!("`{}` holds files stackc did not write", dir.display()),
                )
                .with_help(
                    "name a new or empty folder: nothing in it is replaced unless `stackc stdlib --write` wrote it",
                ));
            }
        }
        Err(_) => std::fs::create_dir_all(dir).map_err(|e| io(format!("cannot create `{}`", dir.display()), e))?,
    }
    // Files of an older stdlib that this one no longer has.
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".ncl") && !STDLIB.iter().any(|(n, _)| *n == name) && e.path().is_file() {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    for (name, text) in STDLIB {
        let path = dir.join(name);
        if std::fs::read(&path).ok().as_deref() != Some(text.as_bytes()) {
            std::fs::write(&path, text).map_err(|e| io(format!("cannot write `{}`", path.display()), e))?;
        }
    }
    std::fs::write(
        dir.join(MARKER),
        format!(
            "stackc {} stdlib, written by `stackc stdlib --write`; sha256 {}\n",
            env!("CARGO_PKG_VERSION"),
            crate::load::stdlib_digest()
        ),
    )
    .map_err(|e| io(format!("cannot write `{}`", dir.join(MARKER).display()), e))?;
    Ok(STDLIB.len())
}
