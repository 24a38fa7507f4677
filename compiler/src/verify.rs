//! `verify`: checks on the rendered bytes, after every writer ran.
//!
//! For now: no derived secret value appears in a file that is not marked
//! secret. The writers make this impossible by construction; this stage
//! makes it impossible by check, so a future writer bug cannot leak.

use crate::diag::{Code, Diagnostic};
use crate::render::Rendered;
use crate::secrets::Resolved;

pub fn verify(files: &Rendered, secrets: &Resolved) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for (path, f) in files.iter().filter(|(_, f)| !f.secret) {
        let text = String::from_utf8_lossy(&f.bytes);
        for name in secrets
            .values
            .iter()
            .filter(|(_, v)| text.contains(v.as_str()))
            .map(|(n, _)| n)
        {
            // The name only: a diagnostic never carries a secret value.
            out.push(
                Diagnostic::error(
                    Code::Internal,
                    format!("secret `{name}` would be written to `{path}`, which is not a secret file"),
                )
                .with_help("this is a bug in stackc: please report it; nothing was written"),
            );
        }
    }
    out
}
