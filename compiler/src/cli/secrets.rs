//! `stackc secrets …`: the master key, and the operator's view of a stack's
//! secrets — where each comes from, adding the external ones, showing one,
//! re-encrypting them to a changed list of recipients. Values are printed
//! only by `show`, and only to a terminal unless asked otherwise.

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};

use clap::{Subcommand, ValueEnum};

use super::{KeyArgs, limits, report};
use crate::diag::{Code, Diagnostic};
use crate::secrets::{self, Keying, external, recipients};

#[derive(Subcommand)]
pub(crate) enum SecretsCommand {
    /// Write a new random master key (mode 0600). Refuses to overwrite a file.
    Init {
        /// Where: by default `.stackc/master.key` (git-ignored), where build, diff and
        /// `secrets show` find it for a stack file in the current directory.
        #[arg(default_value = super::init::KEY_PATH)]
        path: PathBuf,
    },
    /// List the stack's secrets: kind, where each comes from (derived, external,
    /// missing) and which files use it. Shows no value; needs no key.
    List {
        file: PathBuf,
        #[arg(long, value_enum, default_value_t = ListFormat::Human)]
        format: ListFormat,
        #[arg(long)]
        project_root: Option<PathBuf>,
    },
    /// Add or replace an external secret: its value is read from standard input
    /// (one trailing newline dropped), checked for its kind's shape, and written
    /// age-encrypted to `secrets/<name>.age` for the recipients in
    /// `secrets/recipients.txt`.
    Add {
        file: PathBuf,
        name: String,
        #[arg(long)]
        project_root: Option<PathBuf>,
    },
    /// Print one secret's value, derived (needs the master key) or external (needs
    /// the identity). Refuses when standard output is not a terminal, unless --pipe.
    Show {
        file: PathBuf,
        name: String,
        /// Print even when standard output is a pipe or a file.
        #[arg(long)]
        pipe: bool,
        #[command(flatten)]
        keys: KeyArgs,
        #[arg(long)]
        project_root: Option<PathBuf>,
    },
    /// Re-encrypt every external secret to the recipients now in
    /// `secrets/recipients.txt` (after adding or removing one), and the master key
    /// if --secrets-key names an age-encrypted one. Needs an identity that decrypts
    /// them all; writes nothing unless every file decrypts.
    Rekey {
        file: PathBuf,
        #[command(flatten)]
        keys: KeyArgs,
        #[arg(long)]
        project_root: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum ListFormat {
    Human,
    Json,
}

pub(crate) fn run(cmd: SecretsCommand, color: bool) -> u8 {
    match cmd {
        SecretsCommand::Init { path } => super::secrets_init(&path, color),
        SecretsCommand::List {
            file,
            format,
            project_root,
        } => list(&file, format, project_root.as_deref(), color),
        SecretsCommand::Add {
            file,
            name,
            project_root,
        } => add(&file, &name, project_root.as_deref(), color),
        SecretsCommand::Show {
            file,
            name,
            pipe,
            keys,
            project_root,
        } => show(&file, &name, pipe, &keys, project_root.as_deref(), color),
        SecretsCommand::Rekey {
            file,
            keys,
            project_root,
        } => rekey(&file, &keys, project_root.as_deref(), color),
    }
}

/// The stack evaluated (no secret resolved) and where its secrets live.
struct Stacked {
    stack: crate::model::Stack,
    project: crate::load::Project,
}

fn evaluate(file: &Path, root: Option<&Path>) -> Result<Stacked, Vec<Diagnostic>> {
    let opts = crate::Options {
        limits: limits(),
        project_root: root,
        keying: &Keying::Placeholder,
        identities: None,
        cache: &secrets::NoCache,
        machine: None,
        eval_cache: None,
    };
    let (stack, project) = crate::evaluate_stack(file, &opts)?;
    Ok(Stacked { stack, project })
}

/// One line of `secrets list`.
struct Row {
    name: String,
    kind: String,
    source: String,
    /// `derived`, `external`, `missing` or `broken`.
    state: &'static str,
    used_by: Vec<String>,
}

/// Where a secret's value comes from, as `list` says it.
fn source(entry: &secrets::Entry, dir: &Path, shown_dir: &str) -> (String, &'static str) {
    if !entry.external {
        return (format!("derived, generation {}", entry.spec.generation), "derived");
    }
    let file = format!("{shown_dir}/{}.age", entry.spec.name);
    match external::read_project_bytes(&dir.join(format!("{}.age", entry.spec.name))) {
        Ok(bytes) if external::is_age(&bytes) => (format!("external, {file}"), "external"),
        Ok(_) => (format!("external, {file} is not an age file"), "broken"),
        Err(_) => (format!("external, missing: {file}"), "missing"),
    }
}

fn list(file: &Path, format: ListFormat, root: Option<&Path>, color: bool) -> u8 {
    let s = match evaluate(file, root) {
        Ok(s) => s,
        Err(d) => return report(&d, color, "nothing listed"),
    };
    let ext = match crate::secrets_dir(&s.project, &s.stack, None) {
        Ok(e) => e,
        Err(d) => return report(&[d], color, "nothing listed"),
    };
    let entries = secrets::inventory(&s.stack);
    let rows: Vec<Row> = entries
        .values()
        .map(|e| {
            let (source, state) = source(e, &ext.dir, &ext.shown_dir);
            Row {
                name: e.spec.name.clone(),
                // An adopted secret takes any value of its kind, like a
                // declared external one: its derived size no longer applies.
                kind: secrets::Spec {
                    external: e.external,
                    ..e.spec.clone()
                }
                .describe_size(),
                source,
                state,
                used_by: e.used_by.iter().cloned().collect(),
            }
        })
        .collect();
    // Files no secret of the stack uses: left over, or a typo in a name.
    let unused: Vec<String> = secrets::age_files(&ext.dir)
        .into_iter()
        .filter(|n| !entries.contains_key(n))
        .map(|n| format!("{}/{n}.age", ext.shown_dir))
        .collect();
    let text = match format {
        ListFormat::Json => {
            let secrets: Vec<serde_json::Value> = rows
                .iter()
                .map(|r| {
                    serde_json::json!({
                        "name": r.name,
                        "kind": r.kind,
                        "source": r.state,
                        "file": (r.state != "derived").then(|| format!("{}/{}.age", ext.shown_dir, r.name)),
                        "used_by": r.used_by,
                    })
                })
                .collect();
            let doc = serde_json::json!({ "secrets": secrets, "unused_files": unused });
            format!(
                "{}\n",
                serde_json::to_string_pretty(&doc).expect("JSON values serialise")
            )
        }
        ListFormat::Human => {
            let width = |f: fn(&Row) -> usize, h: &str| rows.iter().map(f).chain([h.len()]).max().unwrap_or(0);
            let (w0, w1, w2) = (
                width(|r| r.name.len(), "NAME"),
                width(|r| r.kind.len(), "KIND"),
                width(|r| r.source.len(), "SOURCE"),
            );
            let mut out = format!("{:w0$}  {:w1$}  {:w2$}  USED BY\n", "NAME", "KIND", "SOURCE");
            for r in &rows {
                out.push_str(&format!(
                    "{:w0$}  {:w1$}  {:w2$}  {}\n",
                    r.name,
                    r.kind,
                    r.source,
                    r.used_by.join(", ")
                ));
            }
            for u in &unused {
                out.push_str(&format!("\n{u}: no secret of the stack has this name\n"));
            }
            out
        }
    };
    let text = crate::diag::escape(&text).into_owned();
    if let Err(e) = super::emit(text.as_bytes()) {
        eprintln!("error: cannot write the list: {e}");
        return 2;
    }
    // Missing or broken files fail a pre-commit check the way `check` would.
    let bad = rows.iter().filter(|r| matches!(r.state, "missing" | "broken")).count();
    u8::from(bad > 0)
}

/// The stack's entry for `name`, or a finding that names the near miss.
fn entry_for<'a>(
    entries: &'a std::collections::BTreeMap<String, secrets::Entry>,
    name: &str,
) -> Result<&'a secrets::Entry, Diagnostic> {
    entries.get(name).ok_or_else(|| {
        let near = entries
            .keys()
            .min_by_key(|k| strsim::levenshtein(k, name))
            .filter(|k| strsim::levenshtein(k, name) <= 3);
        let d = Diagnostic::error(Code::ExternalUnused, format!("the stack has no secret named `{name}`"));
        match near {
            Some(k) => d.with_help(format!("did you mean `{k}`? `stackc secrets list` shows them all")),
            None => d.with_help("`stackc secrets list` shows every secret of the stack"),
        }
    })
}

fn add(file: &Path, name: &str, root: Option<&Path>, color: bool) -> u8 {
    let s = match evaluate(file, root) {
        Ok(s) => s,
        Err(d) => return report(&d, color, "nothing written"),
    };
    let ext = match crate::secrets_dir(&s.project, &s.stack, None) {
        Ok(e) => e,
        Err(d) => return report(&[d], color, "nothing written"),
    };
    let entries = secrets::inventory(&s.stack);
    let entry = match entry_for(&entries, name) {
        Ok(e) => e,
        Err(d) => return report(&[d], color, "nothing written"),
    };
    if !entry.external {
        let d = Diagnostic::error(
            Code::ExternalClash,
            format!("secret `{name}` is derived from the master key, so a file for it would be ignored"),
        )
        .with_help(format!(
            "to supply its value (adopting an existing one), first add it to the stack: `secrets.external = [\"{name}\"]`"
        ));
        return report(&[d], color, "nothing written");
    }
    let recipients = match recipients::load(&ext.dir, &ext.shown_dir) {
        Ok(r) => r,
        Err(d) => return report(&[d], color, "nothing written"),
    };
    let raw = match read_value(name) {
        Ok(v) => v,
        Err(d) => return report(&[d], color, "nothing written"),
    };
    // What is stored is what the service will get: the value as its kind
    // normalises it (no trailing newline, keys as PKCS#8).
    let value = match external::shape(&entry.spec, &raw) {
        Ok(v) => v,
        Err(why) => {
            let d = Diagnostic::error(
                Code::ExternalShape,
                format!("the value given for `{name}` has the wrong shape: {why}"),
            )
            .with_help(format!("nothing was written; give {}", entry.spec.kind_noun()));
            return report(&[d], color, "nothing written");
        }
    };
    let sealed = external::encrypt(value.as_bytes(), &recipients);
    let shown = format!("{}/{name}.age", ext.shown_dir);
    if let Err(e) =
        std::fs::create_dir_all(&ext.dir).and_then(|()| write_atomic(&ext.dir, &format!("{name}.age"), &sealed))
    {
        let d = Diagnostic::error(Code::Io, format!("cannot write `{shown}`: {e}"));
        return report(&[d], color, "nothing written").max(2);
    }
    eprintln!(
        "wrote {shown} (encrypted to {} recipient{}); commit it",
        recipients.len(),
        if recipients.len() == 1 { "" } else { "s" }
    );
    0
}

/// The value from standard input: piped as is, or typed at a terminal with
/// echo off (so it never shows on screen or in a scrollback).
fn read_value(name: &str) -> Result<Vec<u8>, Diagnostic> {
    let stdin = std::io::stdin();
    let io = |e: std::io::Error| Diagnostic::error(Code::Io, format!("cannot read standard input: {e}"));
    let mut buf = Vec::new();
    if stdin.is_terminal() {
        // Typed blind, so typed twice (as passwd does); a one-line read, so a
        // multi-line value must come through a pipe.
        let mut again = Vec::new();
        {
            let _echo = EchoOff::new();
            eprint!("value of `{name}` (not echoed): ");
            let _ = std::io::stderr().flush();
            stdin.lock().read_until_newline(&mut buf).map_err(io)?;
            eprint!("again: ");
            let _ = std::io::stderr().flush();
            stdin.lock().read_until_newline(&mut again).map_err(io)?;
        }
        if buf != again {
            return Err(Diagnostic::error(Code::Io, "the two values typed differ")
                .with_help("type it again, or pipe it: `printf '%s' \"$VALUE\" | stackc secrets add …`"));
        }
    } else {
        stdin.lock().take(1 << 20).read_to_end(&mut buf).map_err(io)?;
    }
    Ok(buf)
}

trait ReadLine {
    fn read_until_newline(&mut self, buf: &mut Vec<u8>) -> std::io::Result<usize>;
}

impl<R: std::io::BufRead> ReadLine for R {
    fn read_until_newline(&mut self, buf: &mut Vec<u8>) -> std::io::Result<usize> {
        self.read_until(b'\n', buf)
    }
}

/// Turns terminal echo off for its lifetime (restored on drop, also when
/// reading fails).
struct EchoOff(Option<libc::termios>);

impl EchoOff {
    fn new() -> EchoOff {
        // SAFETY: tcgetattr/tcsetattr on fd 0 with a termios we own.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut t) != 0 {
                return EchoOff(None);
            }
            let saved = t;
            t.c_lflag &= !libc::ECHO;
            t.c_lflag |= libc::ECHONL;
            libc::tcsetattr(0, libc::TCSANOW, &t);
            EchoOff(Some(saved))
        }
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            // SAFETY: restores the attributes read in `new`.
            unsafe {
                libc::tcsetattr(0, libc::TCSANOW, t);
            }
        }
    }
}

/// Writes `dir/name` through a temporary file and a rename: a reader sees
/// the old file or the new one, never half of one.
fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = dir.join(format!(".{name}.stackc-tmp-{}", std::process::id()));
    let result = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::rename(&tmp, dir.join(name)));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn show(file: &Path, name: &str, pipe: bool, keys: &KeyArgs, root: Option<&Path>, color: bool) -> u8 {
    if !pipe && !std::io::stdout().is_terminal() {
        let d = Diagnostic::error(Code::Io, "refusing to print a secret to a pipe or a file")
            .with_help("pass --pipe if that is what you want (the value ends up wherever standard output goes)");
        return report(&[d], color, "nothing shown");
    }
    let s = match evaluate(file, root) {
        Ok(s) => s,
        Err(d) => return report(&d, color, "nothing shown"),
    };
    let entries = secrets::inventory(&s.stack);
    let entry = match entry_for(&entries, name) {
        Ok(e) => e,
        Err(d) => return report(&[d], color, "nothing shown"),
    };
    // A derived secret needs the master key: the project's, if none is given.
    let loaded = if entry.external {
        keys.load()
    } else {
        keys.load_for(&[file], false)
    };
    let keys = match loaded {
        Ok(k) => k,
        Err(d) => return report(&[d], color, "nothing shown"),
    };
    let keying = match (keys.key, entry.external) {
        (Some(k), _) => Keying::Master(k).for_stack(&s.stack.secrets),
        // An external secret needs no master key; `Master` only says "real".
        (None, true) => Keying::Master(secrets::MasterKey::from_bytes([0; secrets::KEY_LEN])),
        (None, false) => {
            let d = Diagnostic::error(
                Code::NoSecretsKey,
                format!("secret `{name}` is derived: showing it needs the master key"),
            )
            .with_help("create .stackc/master.key beside the stack file with `stackc secrets init`, or pass --secrets-key FILE or --secrets-key-command COMMAND");
            return report(&[d], color, "nothing shown");
        }
    };
    let ext = match crate::secrets_dir(&s.project, &s.stack, keys.identities.as_ref()) {
        Ok(e) => e,
        Err(d) => return report(&[d], color, "nothing shown"),
    };
    match secrets::value_of(&entry.spec, entry.external, &keying, &ext) {
        Ok(v) => {
            // A newline for the terminal's sake; a pipe gets the value alone
            // (`| wl-copy` must not copy a newline that is not in it).
            let line = if std::io::stdout().is_terminal() && !v.ends_with('\n') {
                format!("{v}\n")
            } else {
                v
            };
            if let Err(e) = super::emit(line.as_bytes()) {
                eprintln!("error: cannot write the value: {e}");
                return 2;
            }
            0
        }
        Err(d) => report(&[d], color, "nothing shown"),
    }
}

fn rekey(file: &Path, keys_args: &KeyArgs, root: Option<&Path>, color: bool) -> u8 {
    let keys = keys_args;
    let s = match evaluate(file, root) {
        Ok(s) => s,
        Err(d) => return report(&d, color, "nothing written"),
    };
    let keys = match keys.load() {
        Ok(k) => k,
        Err(d) => return report(&[d], color, "nothing written"),
    };
    let Some(ids) = keys.identities.as_ref() else {
        let d = Diagnostic::error(
            Code::NoIdentity,
            "re-encrypting needs an age identity that decrypts the files",
        )
        .with_help("pass --identity FILE (or set STACKC_AGE_IDENTITY)");
        return report(&[d], color, "nothing written");
    };
    let ext = match crate::secrets_dir(&s.project, &s.stack, Some(ids)) {
        Ok(e) => e,
        Err(d) => return report(&[d], color, "nothing written"),
    };
    let recipients = match recipients::load(&ext.dir, &ext.shown_dir) {
        Ok(r) => r,
        Err(d) => return report(&[d], color, "nothing written"),
    };
    // Decrypt everything first: one file that does not decrypt stops the
    // whole operation before anything is rewritten.
    let mut plain = Vec::new();
    let mut diags = Vec::new();
    for name in secrets::age_files(&ext.dir) {
        let shown = format!("{}/{name}.age", ext.shown_dir);
        match external::read_project_bytes(&ext.dir.join(format!("{name}.age")))
            .map_err(|e| e.to_string())
            .and_then(|b| external::decrypt(&b, ids))
        {
            Ok(p) => plain.push((name, p)),
            Err(why) => diags.push(
                Diagnostic::error(
                    Code::ExternalUnreadable,
                    format!("`{shown}` cannot be decrypted: {why}"),
                )
                .with_help("pass an identity that decrypts every file (several are allowed in one identity file)"),
            ),
        }
    }
    let mut targets: Vec<(PathBuf, String, Vec<u8>)> = plain
        .into_iter()
        .map(|(name, p)| (ext.dir.clone(), format!("{name}.age"), p))
        .collect();
    // An age-encrypted master key given with --secrets-key goes to the new
    // recipients too: a new operator needs it as much as the secrets.
    if let Some(key) = &keys_args.secrets_key
        && let Ok(bytes) = external::read_project_bytes(key)
        && external::is_age(&bytes)
    {
        match external::decrypt(&bytes, ids) {
            Ok(p) => targets.push((
                key.parent().unwrap_or(Path::new(".")).to_path_buf(),
                key.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                p,
            )),
            Err(why) => diags.push(
                Diagnostic::error(
                    Code::KeyMalformed,
                    format!("the master key `{}` cannot be decrypted: {why}", key.display()),
                )
                .with_help("pass an identity it is encrypted to"),
            ),
        }
    }
    if !diags.is_empty() {
        return report(&diags, color, "nothing written");
    }
    for (dir, file, p) in &targets {
        if let Err(e) = write_atomic(dir, file, &external::encrypt(p, &recipients)) {
            let d = Diagnostic::error(Code::Io, format!("cannot write `{}`: {e}", dir.join(file).display()));
            return report(&[d], color, "some files may be re-encrypted, the others unchanged").max(2);
        }
    }
    let plain = &targets;
    eprintln!(
        "re-encrypted {} file{} in {} to {} recipient{}",
        plain.len(),
        if plain.len() == 1 { "" } else { "s" },
        ext.shown_dir,
        recipients.len(),
        if recipients.len() == 1 { "" } else { "s" }
    );
    0
}
