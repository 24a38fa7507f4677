//! The project's age recipients: who can decrypt its external secrets (and
//! the encrypted Kubernetes secrets of its bundles).
//!
//! `<secrets dir>/recipients.txt` holds one age X25519 recipient
//! (`age1…`) per line; `#` starts a comment, blank lines are ignored — the
//! format of `age -R`. It is the project's list, committed with the
//! encrypted files, as agenix's `secrets.nix` and sops's `.sops.yaml` are.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use crate::diag::{Code, Diagnostic, SourceFile, Span};

/// File name of the recipients list inside the secrets directory.
pub const FILE: &str = "recipients.txt";

/// One recipient as written, with its line (for diagnostics).
#[derive(Clone)]
pub struct Recipient {
    pub text: String,
    pub key: age::x25519::Recipient,
}

/// Parses a recipients list. `shown` is the file's name as diagnostics show
/// it. An empty list is an error: nothing could ever be decrypted.
pub fn parse(shown: &str, text: &str) -> Result<Vec<Recipient>, Diagnostic> {
    let source = Arc::new(SourceFile {
        name: shown.to_owned(),
        text: Arc::from(text),
    });
    let mut out = Vec::new();
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let start = offset;
        offset += line.len();
        let body = line.split('#').next().unwrap_or("").trim();
        if body.is_empty() {
            continue;
        }
        let at = start + line.find(body).unwrap_or(0);
        match age::x25519::Recipient::from_str(body) {
            Ok(key) => out.push(Recipient {
                text: body.to_owned(),
                key,
            }),
            Err(_) if body.to_ascii_uppercase().starts_with("AGE-SECRET-KEY-") => {
                // A private key: named by its line, never quoted (a label
                // would print the line, into a terminal or a CI log).
                let line = text[..start].matches('\n').count() + 1;
                return Err(Diagnostic::error(
                    Code::RecipientsMalformed,
                    format!("line {line} of `{shown}` is an age identity (a private key), not a recipient"),
                )
                .with_help(
                    "replace it with its public key (`age-keygen -y IDENTITY_FILE`), and treat the identity as leaked if the file was shared or committed",
                ));
            }
            Err(_) => {
                let span = Span {
                    file: source.clone(),
                    range: at..at + body.len(),
                };
                let what = if body.starts_with("ssh-") {
                    "an SSH key; stackc takes age X25519 recipients only"
                } else {
                    "not an age X25519 recipient"
                };
                return Err(Diagnostic::error(
                    Code::RecipientsMalformed,
                    format!("`{shown}` lists something that is not a recipient"),
                )
                .with_label(Some(span), what)
                .with_help("one `age1…` public key per line: print yours with `age-keygen -y IDENTITY_FILE`"));
            }
        }
    }
    if out.is_empty() {
        return Err(Diagnostic::error(
            Code::RecipientsMalformed,
            format!("`{shown}` lists no recipient: nobody could decrypt the secrets"),
        )
        .with_help("add one `age1…` public key per line (`age-keygen -y IDENTITY_FILE` prints yours)"));
    }
    Ok(out)
}

/// Reads and parses `<dir>/recipients.txt`; `shown_dir` is the directory
/// as diagnostics show it (relative to the project).
pub fn load(dir: &Path, shown_dir: &str) -> Result<Vec<Recipient>, Diagnostic> {
    let shown = format!("{}/{FILE}", shown_dir.trim_end_matches('/'));
    let text = super::external::read_project_file(&dir.join(FILE)).map_err(|e| {
        Diagnostic::error(Code::RecipientsMalformed, format!("cannot read `{shown}`: {e}")).with_help(format!(
            "create `{shown}` with one `age1…` public key per line (`age-keygen -y IDENTITY_FILE` prints yours)"
        ))
    })?;
    parse(&shown, &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    // A test recipient (its identity is tests/keys/TEST-ONLY-age-identity.txt).
    const R: &str = "age1l50vvsrmz2q6tq2vfh30l7e6969hx8lat78uz9dx7k7mxe8ej4fsrcggux";

    #[test]
    fn comments_and_blank_lines_are_ignored() {
        let list = parse("secrets/recipients.txt", &format!("# ops team\n\n{R}  # alice\n")).unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].text, R);
    }

    #[test]
    fn an_identity_is_refused_by_its_line_and_never_quoted() {
        let text = format!("{R}\nAGE-SECRET-KEY-1QQQQ\n");
        let d = parse("secrets/recipients.txt", &text).err().unwrap();
        assert_eq!(d.code, Code::RecipientsMalformed);
        assert!(d.message.starts_with("line 2 of"), "{}", d.message);
        assert!(d.labels.is_empty(), "a label would print the private key");
        let d = parse("r", "not-a-key\n").err().unwrap();
        let span = &d.labels[0].span;
        assert_eq!(span.line_col(span.range.start), (1, 1));
    }

    #[test]
    fn an_empty_list_is_refused() {
        assert!(parse("r", "# nobody\n").is_err());
    }
}
