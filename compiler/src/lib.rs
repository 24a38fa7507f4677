//! stackc: a reproducible config compiler and validator for self-hosted
//! stacks. One module per stage, a typed value crossing each boundary
//! (docs/ARCHITECTURE.md):
//!
//! load → eval → model → lower → check → secrets → render → verify + xref → bundle

// Diagnostics are the error type everywhere; they are built once per
// finding, so their size on the error path does not matter.
#![allow(clippy::result_large_err)]

pub mod archive;
mod blank;
pub mod budget;
pub mod bundle;
pub mod cache;
pub mod check;
pub mod cli;
pub mod diag;
pub mod diff;
pub mod eval;
pub mod graph;
pub mod load;
pub mod lower;
pub mod model;
pub mod options;
pub mod plan;
pub mod render;
pub mod secrets;
mod trim;
pub mod verify;
pub mod xref;

use std::path::Path;

/// Every allocation of an evaluation thread counts against its budget
/// (`budget`); other threads allocate as usual.
#[global_allocator]
static ALLOCATOR: budget::Counting = budget::Counting;

use diag::Diagnostic;
use render::Rendered;
use secrets::Keying;

/// Everything a build produces, before anything touches the disk.
pub struct Compiled {
    pub stack: model::Stack,
    pub files: Rendered,
    pub manifest: Vec<u8>,
    pub secrets: secrets::Resolved,
    /// Findings that do not stop the build (warnings), sorted.
    pub warnings: Vec<Diagnostic>,
}

/// What to compile, and with which secrets.
pub struct Options<'a> {
    /// Directory imports must stay in (default: the stack file's).
    pub project_root: Option<&'a Path>,
    pub keying: &'a Keying,
    /// What decrypts the project's external secrets (`None`: placeholders
    /// for them, after checking their files are there).
    pub identities: Option<&'a secrets::external::Identities>,
    pub cache: &'a dyn secrets::Cache,
    /// Only this machine's files (and manifest entries).
    pub machine: Option<&'a str>,
    /// Time and memory the evaluation may use.
    pub limits: eval::Limits,
    /// Where evaluations of unchanged stacks are kept (`None`: evaluate).
    pub eval_cache: Option<&'a cache::EvalCache>,
}

fn evaluate(project: &load::Project, opts: &Options) -> Result<eval::Evaluated, Vec<Diagnostic>> {
    match opts.eval_cache {
        Some(c) => c.evaluate(project, opts.limits),
        None => eval::evaluate(project, opts.limits),
    }
}

/// The pure core: from a stack file to bundle bytes. Reads the project's
/// files (through `load` and Nickel) and the key cache it is given, nothing
/// else: no clock, no environment, no randomness. Returns every finding of
/// the stage that failed, sorted.
pub fn compile(entry: &Path, opts: &Options) -> Result<Compiled, Vec<Diagnostic>> {
    let sorted = |mut d: Vec<Diagnostic>| {
        diag::sort(&mut d);
        d
    };
    let project = load::load(entry, opts.project_root, opts.limits).map_err(sorted)?;
    let mut evaluated = evaluate(&project, opts).map_err(sorted)?;
    let mut stack = model::from_value(&evaluated.value).map_err(sorted)?;
    lower::lower(&mut stack, &mut evaluated.locs).map_err(sorted)?;
    let pos = check::Positions(&evaluated.locs);
    let findings = check::check(&stack, &evaluated.locs);
    if !findings.is_empty() {
        return Err(sorted(findings));
    }
    if let Some(name) = opts.machine
        && !stack.machines.contains_key(name)
    {
        let known: Vec<String> = stack.machines.keys().map(|k| format!("`{k}`")).collect();
        return Err(vec![
            Diagnostic::error(
                diag::Code::UnknownMachine,
                format!("there is no machine `{name}` in the stack"),
            )
            .with_help(format!("machines: {}", known.join(", "))),
        ]);
    }
    // Derived secrets are scoped as the stack says (its `secrets` options).
    let keying = &opts.keying.for_stack(&stack.secrets);
    let externals = externals(&project, &stack.secrets, opts.identities).map_err(|d| vec![d])?;
    // A recipients list that exists is checked on every build and check: a
    // private key pasted into it must fail the commit that adds it.
    if externals.dir.join(secrets::recipients::FILE).exists() {
        secrets::recipients::load(&externals.dir, &externals.shown_dir).map_err(|d| vec![d])?;
    }
    let resolved = secrets::resolve(&mut stack, keying, &externals, opts.cache, &pos).map_err(sorted)?;
    let mut files = render::render(&stack, &pos, keying).map_err(sorted)?;
    let mut problems = verify::verify(&files, &resolved);
    if problems.is_empty() {
        // Schemas and cross-references together: all findings in one run.
        problems = verify::schemas(&stack, &files, &pos);
        problems.extend(xref::check(&stack, &files, &resolved, &pos));
    }
    resolved.mask(&mut problems);
    if problems.iter().any(|d| d.severity != diag::Severity::Warning) {
        return Err(sorted(problems));
    }
    let warnings = sorted(problems);
    // Git-safe Kubernetes secrets (secrets/sops.rs): encrypted once every
    // check has read them, then the leak guard again on what is written.
    let sealed_inputs = secrets::sops::seal(&stack, &mut files, keying, &externals, &pos).map_err(sorted)?;
    let leaks = verify::verify(&files, &resolved);
    if !leaks.is_empty() {
        return Err(sorted(leaks));
    }
    // One machine's output is cut from the whole stack's, after every check
    // ran on all of it: cross-machine facts (routes, firewalls) need them all.
    if let Some(name) = opts.machine {
        stack.machines.retain(|k, _| k == name);
        let prefix = format!("{name}/");
        files.retain(|path, _| path.starts_with(&prefix));
    }
    let mut inputs = evaluated.inputs.clone();
    // The external secrets' age files are not listed: their ciphertext
    // changes with every `secrets rekey` while the bundle does not; what
    // they hold reaches the manifest as the keyed digests of the secret
    // files. `build` still protects them from being overwritten
    // (`Compiled.secrets.inputs`).
    inputs.extend(sealed_inputs);
    let manifest = bundle::manifest(&stack, &files, &inputs, keying, &resolved.external);
    Ok(Compiled {
        stack,
        files,
        manifest,
        secrets: resolved,
        warnings,
    })
}

/// The stack as evaluated and checked, before secrets are resolved: what
/// `stackc secrets` commands work on (they must run when an external secret
/// is still missing, which `compile` would refuse).
pub fn evaluate_stack(entry: &Path, opts: &Options) -> Result<(model::Stack, load::Project), Vec<Diagnostic>> {
    let sorted = |mut d: Vec<Diagnostic>| {
        diag::sort(&mut d);
        d
    };
    let project = load::load(entry, opts.project_root, opts.limits).map_err(sorted)?;
    let mut evaluated = evaluate(&project, opts).map_err(sorted)?;
    let mut stack = model::from_value(&evaluated.value).map_err(sorted)?;
    lower::lower(&mut stack, &mut evaluated.locs).map_err(sorted)?;
    let findings = check::check(&stack, &evaluated.locs);
    if !findings.is_empty() {
        return Err(sorted(findings));
    }
    Ok((stack, project))
}

/// Where the stack's external secrets live, for `stackc secrets` commands.
pub fn secrets_dir<'a>(
    project: &load::Project,
    stack: &model::Stack,
    identities: Option<&'a secrets::external::Identities>,
) -> Result<secrets::Externals<'a>, Diagnostic> {
    externals(project, &stack.secrets, identities)
}

/// The stack's secrets folder: `secrets.dir` (a relative path the stdlib's
/// contract checked) under the stack file's folder, reached through no
/// symbolic link, so an encrypted file is always the project's own.
fn externals<'a>(
    project: &load::Project,
    opts: &model::SecretsOptions,
    identities: Option<&'a secrets::external::Identities>,
) -> Result<secrets::Externals<'a>, Diagnostic> {
    let base = project.entry.parent().unwrap_or(Path::new("."));
    let mut dir = base.to_path_buf();
    for part in opts.dir.split('/') {
        dir.push(part);
        if std::fs::symlink_metadata(&dir).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(Diagnostic::error(
                diag::Code::ExternalUnreadable,
                format!("the secrets folder `{}` is reached through a symbolic link", opts.dir),
            )
            .with_help("keep the encrypted secrets in a real folder of the project"));
        }
    }
    let rel = base.strip_prefix(&project.root).unwrap_or(Path::new(""));
    let shown_dir = rel.join(&opts.dir).to_string_lossy().into_owned();
    let stack_file = project
        .entry
        .strip_prefix(&project.root)
        .unwrap_or(&project.entry)
        .to_string_lossy()
        .into_owned();
    Ok(secrets::Externals {
        dir,
        shown_dir,
        stack_file,
        identities,
    })
}
