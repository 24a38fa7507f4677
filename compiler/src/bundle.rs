//! `bundle`: the manifest, and the atomic write of the bundle directory.
//!
//! The bundle is written to a temporary sibling directory and swapped into
//! place with one `renameat2(RENAME_EXCHANGE)`: a build that fails or is
//! interrupted never leaves a half-written bundle and never destroys the
//! previous one. Modes are set explicitly, never taken from the umask.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::diag::{Code, Diagnostic, escape};
use crate::load::hex;
use crate::model::Stack;
use crate::render::{MODE_FILE, Rendered};
use crate::secrets::{self, Keying};

pub const MANIFEST: &str = "manifest.json";
pub const MANIFEST_VERSION: u32 = 1;
const MODE_DIR: u32 = 0o755;
const MODE_SECRET_DIR: u32 = 0o700;
/// A secret folder whose files belong to a container's user: traversable.
const MODE_SECRET_DIR_SHARED: u32 = 0o711;

#[derive(Serialize)]
struct Manifest<'a> {
    manifest_version: u32,
    stackc_version: &'static str,
    nickel_lang_core: &'static str,
    stack: &'a str,
    secrets: SecretsInfo<'a>,
    inputs: Inputs,
    /// Network prefixes and which are public, for deploy tools and tests.
    networks: BTreeMap<&'a str, NetworkInfo<'a>>,
    machines: BTreeMap<&'a str, MachineInfo<'a>>,
    files: Vec<FileEntry<'a>>,
}

#[derive(Serialize)]
struct SecretsInfo<'a> {
    scheme: &'static str,
    /// The scope derived secrets are bound to (v2).
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<&'a str>,
    /// Names of the secrets that came from the project's age files.
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    external: &'a [String],
    placeholders: bool,
}

#[derive(Serialize)]
struct Inputs {
    stdlib_sha256: String,
    files: Vec<InputEntry>,
}

#[derive(Serialize)]
struct InputEntry {
    path: String,
    sha256: String,
}

#[derive(Serialize)]
struct NetworkInfo<'a> {
    cidr: &'a str,
    public: bool,
}

#[derive(Serialize)]
struct MachineInfo<'a> {
    address: &'a str,
    /// The machine's address on each network, for deploy tools.
    addresses: &'a std::collections::BTreeMap<String, String>,
    deploy_root: &'a str,
    units: &'a [String],
}

#[derive(Serialize)]
struct FileEntry<'a> {
    path: &'a str,
    size: usize,
    mode: String,
    /// Numeric `uid:gid` to apply on deploy (`0:0` unless a container runs
    /// as another user and mounts the file).
    owner: String,
    secret: bool,
    /// Plain sha256 for ordinary files, keyed `hmac_sha256` for secrets.
    #[serde(flatten)]
    digest: BTreeMap<String, String>,
}

/// Version of nickel-lang-core the stdlib is evaluated with (pinned in Cargo.toml).
pub const NICKEL_LANG_CORE: &str = "0.19.0";

/// `manifest.json`: every file with size, mode, secret flag and digest; the
/// inputs' hashes; versions. Sorted, no timestamps, no absolute paths.
pub fn manifest(
    stack: &Stack,
    files: &Rendered,
    inputs: &BTreeMap<String, Vec<u8>>,
    keying: &Keying,
    external: &[String],
) -> Vec<u8> {
    let derivation = secrets::Derivation::of(&stack.secrets);
    let m = Manifest {
        manifest_version: MANIFEST_VERSION,
        stackc_version: env!("CARGO_PKG_VERSION"),
        nickel_lang_core: NICKEL_LANG_CORE,
        stack: &stack.name,
        secrets: SecretsInfo {
            scheme: derivation.scheme(),
            scope: derivation.scope(),
            external,
            placeholders: matches!(keying, Keying::Placeholder),
        },
        inputs: Inputs {
            stdlib_sha256: crate::load::stdlib_digest(),
            files: inputs
                .iter()
                .map(|(path, bytes)| InputEntry {
                    path: path.clone(),
                    sha256: hex(&Sha256::digest(bytes)),
                })
                .collect(),
        },
        networks: stack
            .networks
            .iter()
            .map(|(n, net)| {
                (
                    n.as_str(),
                    NetworkInfo {
                        cidr: &net.cidr,
                        public: net.public,
                    },
                )
            })
            .collect(),
        machines: stack
            .machines
            .iter()
            .map(|(name, m)| {
                (
                    name.as_str(),
                    MachineInfo {
                        address: &m.address,
                        addresses: &m.addresses,
                        deploy_root: &m.deploy_root,
                        units: &m.units,
                    },
                )
            })
            .collect(),
        files: files
            .iter()
            .map(|(path, f)| {
                let (algo, digest) = f.digest(keying);
                FileEntry {
                    path,
                    size: f.bytes.len(),
                    mode: format!("{:04o}", f.mode),
                    owner: format!("{}:{}", f.owner.0, f.owner.1),
                    secret: f.secret,
                    digest: BTreeMap::from([(algo, digest)]),
                }
            })
            .collect(),
    };
    let mut out = serde_json::to_vec_pretty(&m).expect("the manifest always serialises");
    out.push(b'\n');
    out
}

/// A `manifest.json` that stackc wrote: a JSON object with stackc's version
/// fields. Another program's `manifest.json` (a web app's, say) is not one,
/// and its directory is never replaced.
fn is_stackc_manifest(path: &Path) -> bool {
    // A regular file, not a link to a manifest elsewhere.
    if !fs::symlink_metadata(path).is_ok_and(|m| m.is_file()) {
        return false;
    }
    let Ok(bytes) = fs::read(path) else { return false };
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return false;
    };
    v.get("manifest_version").is_some_and(serde_json::Value::is_u64)
        && v.get("stackc_version").is_some_and(serde_json::Value::is_string)
        && v.get("files").is_some_and(serde_json::Value::is_array)
}

/// A file the build read: its output never replaces it.
pub struct Input {
    pub path: PathBuf,
    /// What it is, for the message: `the stack file`, `the master key`, …
    pub what: String,
}

/// A path as the user gave it, for messages (relative stays relative).
fn shown(path: &Path) -> String {
    escape(&path.display().to_string()).into_owned()
}

fn same_file(a: &fs::Metadata, b: &fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    a.dev() == b.dev() && a.ino() == b.ino()
}

/// The input `meta` is, if any (compared by device and inode, so a hard
/// link or a symlinked spelling of an input is caught too).
fn input_at<'a>(meta: &fs::Metadata, inputs: &'a [Input]) -> Option<&'a Input> {
    inputs
        .iter()
        .find(|i| fs::metadata(&i.path).is_ok_and(|m| same_file(&m, meta)))
}

fn clobber(message: String, help: &str) -> Diagnostic {
    Diagnostic::error(Code::OutputClobbers, message).with_help(help)
}

/// The largest file `write_stream` reads to see whether it is its own.
const MAX_OWN_STREAM: u64 = 256 << 20;

/// Is the regular file at `path` (`meta`, from `symlink_metadata`) a tar or
/// JSON bundle stackc wrote? Opened without following links and without
/// blocking, and checked to be the file `meta` describes.
fn is_own_stream(path: &Path, meta: &fs::Metadata) -> bool {
    use std::io::Read;
    if meta.len() > MAX_OWN_STREAM {
        return false;
    }
    let Ok(mut f) = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    else {
        return false;
    };
    if !f.metadata().is_ok_and(|m| m.is_file() && same_file(&m, meta)) {
        return false;
    }
    let mut bytes = Vec::new();
    if Read::take(&mut f, MAX_OWN_STREAM + 1).read_to_end(&mut bytes).is_err() {
        return false;
    }
    crate::archive::is_stackc_tar(&bytes) || crate::archive::is_stackc_json(&bytes)
}

/// Writes a tar or JSON stream to the file `out`, atomically: a temporary
/// sibling (0600 when the stream holds secrets, else 0644), then a rename.
/// Refused (SC0904) when `out` is a symbolic link, not a regular file, one
/// of the build's `inputs`, or a file that is not a tar or JSON bundle
/// stackc wrote; SC0902, naming the path, when its directory is missing.
pub fn write_stream(out: &Path, bytes: &[u8], secret: bool, inputs: &[Input]) -> Result<(), Diagnostic> {
    let name = out.file_name().ok_or_else(|| {
        Diagnostic::error(Code::Io, format!("`{}` names no file to write", shown(out)))
            .with_help("give the path of a file with -o, such as `bundle.tar`")
    })?;
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    // Temporary files of killed runs (they may hold secrets).
    recover(&parent, name, out);
    const ELSEWHERE: &str = "choose another file with -o, or leave -o out to write to standard output";
    let replace = match fs::symlink_metadata(out) {
        Ok(meta) if meta.file_type().is_symlink() => {
            return Err(clobber(
                format!("`{}` is a symbolic link: stackc does not write through one", shown(out)),
                "give the path of the file itself with -o (the link and its target are left alone)",
            ));
        }
        Ok(meta) if !meta.is_file() => {
            return Err(clobber(
                format!("`{}` exists and is not a regular file", shown(out)),
                ELSEWHERE,
            ));
        }
        Ok(meta) => {
            if let Some(input) = input_at(&meta, inputs) {
                return Err(clobber(
                    format!(
                        "`{}` is {}, an input of this build: the bundle would replace it",
                        shown(out),
                        input.what
                    ),
                    ELSEWHERE,
                ));
            }
            if !is_own_stream(out, &meta) {
                return Err(clobber(
                    format!(
                        "`{}` exists and is not a tar or JSON bundle written by stackc",
                        shown(out)
                    ),
                    "choose another file with -o, or remove this one yourself if it is not needed",
                ));
            }
            true
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            match fs::metadata(&parent) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(Diagnostic::error(
                        Code::Io,
                        format!("cannot write `{}`: `{}` is not a directory", shown(out), shown(&parent)),
                    )
                    .with_help("choose another path with -o"));
                }
                Err(e) => {
                    return Err(Diagnostic::error(
                        Code::Io,
                        format!("cannot write `{}`: directory `{}`: {e}", shown(out), shown(&parent)),
                    )
                    .with_help("create the directory first, or choose another path with -o"));
                }
            }
            false
        }
        Err(e) => return Err(io_error(format!("cannot inspect `{}`", shown(out)), e)),
    };
    let tmp = out.with_file_name(sibling(name, TMP, std::process::id()));
    let written = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(&tmp)
        .and_then(|mut f| {
            use std::os::fd::AsRawFd;
            // Held until the file is closed, after the rename (see `stale`).
            // SAFETY: the descriptor is valid for the lifetime of `f`.
            unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            f.write_all(bytes).and_then(|()| f.sync_all())?;
            Ok(f)
        })
        .map_err(|e| io_error(format!("cannot write `{}`", shown(&tmp)), e))
        .and_then(|_locked| {
            // A file that appeared since it was checked is not replaced.
            let moved = if replace {
                fs::rename(&tmp, out)
            } else {
                rename_noreplace(&tmp, out)
            };
            moved.map_err(|e| io_error(format!("cannot move the bundle to `{}`", shown(out)), e))
        });
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// `rename`, but failing if `to` exists (Linux `renameat2` with
/// `RENAME_NOREPLACE`); a plain rename where the file system lacks it.
fn rename_noreplace(from: &Path, to: &Path) -> std::io::Result<()> {
    match renameat2(from, to, libc::RENAME_NOREPLACE) {
        Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOSYS)) => fs::rename(from, to),
        other => other,
    }
}

fn io_error(what: String, e: std::io::Error) -> Diagnostic {
    Diagnostic::error(Code::Io, format!("{what}: {e}")).with_help("nothing was changed in the output directory")
}

/// Writes `files` and the manifest as directory `out`, atomically. `out`
/// must not exist, be empty, or hold a bundle stackc wrote that holds none
/// of the build's `inputs` (SC0901, SC0904 otherwise).
pub fn write(
    out: &Path,
    files: &Rendered,
    manifest: &[u8],
    inputs: &[Input],
    hooks: &TestHooks,
) -> Result<(), Diagnostic> {
    let name = out.file_name().ok_or_else(|| {
        Diagnostic::error(
            Code::NotABundle,
            format!("`{}` cannot be an output directory", shown(out)),
        )
    })?;
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    // What builds killed before us left: a previous bundle set aside, to put
    // back if `out` is missing; temporary folders, often with secret files.
    recover(&parent, name, out);
    let not_a_bundle = |why: String| {
        Diagnostic::error(
            Code::NotABundle,
            format!("`{}` exists and is not a stackc bundle: {why}", shown(out)),
        )
        .with_help("choose another directory with -o, or remove this one yourself")
    };
    let existing = match fs::symlink_metadata(out) {
        Ok(meta) if meta.file_type().is_symlink() => {
            return Err(
                not_a_bundle("it is a symbolic link, and stackc does not replace one".into())
                    .with_help("give the directory itself with -o (the link and what it points to are left alone)"),
            );
        }
        Ok(meta) if !meta.is_dir() => return Err(not_a_bundle("it is not a directory".into())),
        Ok(_) => {
            let manifest = out.join(MANIFEST);
            let is_empty = fs::read_dir(out).map(|mut d| d.next().is_none()).unwrap_or(false);
            if !is_empty && !is_stackc_manifest(&manifest) {
                let why = match fs::symlink_metadata(&manifest) {
                    Err(_) => format!("it has no {MANIFEST}"),
                    Ok(m) if !m.is_file() => format!("its {MANIFEST} is not a regular file"),
                    Ok(_) => format!("its {MANIFEST} was not written by stackc"),
                };
                return Err(not_a_bundle(why));
            }
            // Replacing the bundle removes everything in it: no input of
            // this build may live there (a key kept next to the bundle).
            if let Ok(dir) = fs::canonicalize(out) {
                let inside = inputs
                    .iter()
                    .find(|i| fs::canonicalize(&i.path).is_ok_and(|p| p.starts_with(&dir)));
                if let Some(input) = inside {
                    return Err(clobber(
                        format!(
                            "`{}` holds `{}`, {}, an input of this build: replacing the bundle would delete it",
                            shown(out),
                            shown(&input.path),
                            input.what
                        ),
                        "move the file out of the bundle directory, or choose another directory with -o",
                    ));
                }
            }
            true
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(io_error(format!("cannot inspect `{}`", shown(out)), e)),
    };
    fs::create_dir_all(&parent).map_err(|e| io_error(format!("cannot create `{}`", parent.display()), e))?;

    let pid = std::process::id();
    let tmp = out.with_file_name(sibling(name, TMP, pid));
    let old = out.with_file_name(sibling(name, OLD, pid));
    // Ours by pid: left by a process that had our pid before.
    let _ = fs::remove_dir_all(&tmp);
    let _ = fs::remove_dir_all(&old);
    let result = make_locked_dir(&tmp).and_then(|lock| {
        fill(&tmp, files, manifest, existing.then_some(out))?;
        swap(&tmp, out, &old, existing, hooks)?;
        drop(lock);
        Ok(())
    });
    if result.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    result
}

/// Test hooks (tests/README.md), set by the CLI from `STACKC_TEST_*`
/// variables: the fallback swap, and a kill in its middle.
#[derive(Debug, Default, Clone, Copy)]
pub struct TestHooks {
    /// Behave as on a file system without `RENAME_EXCHANGE`.
    pub no_exchange: bool,
    /// Stop at once (status 137, as after `kill -9`; no clean-up runs)
    /// between the fallback's two renames.
    pub abort_mid_swap: bool,
}

/// Kinds of siblings of an output: `.<name>.stackc-tmp-<pid>` (a bundle or
/// stream being written, or after the exchange the previous bundle, being
/// removed) and `.<name>.stackc-old-<pid>` (the previous bundle, set aside
/// by the fallback swap).
const TMP: &str = "tmp";
const OLD: &str = "old";

fn sibling(name: &std::ffi::OsStr, kind: &str, pid: u32) -> String {
    format!(".{}.stackc-{kind}-{pid}", name.to_string_lossy())
}

/// In a temporary bundle directory while it is filled; removed just before
/// the swap, so it never reaches a bundle (bundle paths are never hidden).
const PARTIAL: &str = ".stackc-partial";

/// Creates `dir` (0755), with the partial marker, and holds an exclusive
/// `flock` on it until the returned handle drops: a build in another pid
/// namespace that cannot see our pid still sees the lock.
fn make_locked_dir(dir: &Path) -> Result<fs::File, Diagnostic> {
    fs::create_dir(dir).map_err(|e| io_error(format!("cannot create `{}`", shown(dir)), e))?;
    set_mode(dir, MODE_DIR)?;
    let handle = open_nofollow(dir, true).map_err(|e| io_error(format!("cannot open `{}`", shown(dir)), e))?;
    use std::os::fd::AsRawFd;
    // Best effort: where the file system has no locks, the pid still says
    // the directory is in use.
    // SAFETY: the descriptor is valid for the lifetime of `handle`.
    unsafe { libc::flock(handle.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    write_file(&dir.join(PARTIAL), b"", MODE_FILE)?;
    Ok(handle)
}

fn open_nofollow(path: &Path, dir: bool) -> std::io::Result<fs::File> {
    let flags = libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC | if dir { libc::O_DIRECTORY } else { 0 };
    fs::OpenOptions::new().read(true).custom_flags(flags).open(path)
}

/// Is the process `pid` alive (or not ours to signal, which says it is)?
fn alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return true;
    }
    // SAFETY: signal 0 only checks that the process exists.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// A sibling of the output left by a killed build, ready to remove or
/// restore: its name is ours (`.<name>.stackc-<kind>-<pid>`), the pid is
/// not ours and not alive, it is a directory (a regular file for a stream)
/// and not a symbolic link, it belongs to our user, nobody holds its lock,
/// and it is recognisably stackc's: empty, marked partial, or holding a
/// stackc manifest (a stream's temporary file has no marker).
fn stale(path: &Path, kind: &str, name: &std::ffi::OsStr) -> Option<fs::Metadata> {
    use std::os::unix::fs::MetadataExt;
    let file = path.file_name()?.to_str()?;
    let digits = file.strip_prefix(&format!(".{}.stackc-{kind}-", name.to_string_lossy()))?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let pid: u32 = digits.parse().ok()?;
    if pid == std::process::id() || alive(pid) {
        return None;
    }
    let meta = fs::symlink_metadata(path).ok()?;
    // SAFETY: geteuid cannot fail.
    if meta.uid() != unsafe { libc::geteuid() } || !(meta.is_dir() || (meta.is_file() && kind == TMP)) {
        return None;
    }
    let handle = open_nofollow(path, meta.is_dir()).ok()?;
    use std::os::fd::AsRawFd;
    // Locked by a running build. (A file system without locks answers
    // with another error: the pid is the only sign then.)
    // SAFETY: the descriptor is valid for the lifetime of `handle`.
    if unsafe { libc::flock(handle.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0
        && std::io::Error::last_os_error().raw_os_error() == Some(libc::EWOULDBLOCK)
    {
        return None;
    }
    let ours = meta.is_file()
        || fs::read_dir(path).is_ok_and(|mut d| d.next().is_none())
        || fs::symlink_metadata(path.join(PARTIAL)).is_ok_and(|m| m.is_file())
        || is_stackc_manifest(&path.join(MANIFEST));
    ours.then_some(meta)
}

/// Cleans up after builds of `out` that were killed: if `out` is missing
/// and a previous bundle was set aside by the fallback swap, it goes back
/// (the interrupted build never finished, so the bundle before it stands);
/// then every stale temporary sibling is removed (`remove_dir_all` does
/// not follow symbolic links). Best effort: what cannot be done is left,
/// with a warning.
fn recover(parent: &Path, name: &std::ffi::OsStr, out: &Path) {
    let Ok(entries) = fs::read_dir(parent) else { return };
    let prefix = format!(".{}.stackc-", name.to_string_lossy());
    let mut tmps = Vec::new();
    let mut olds = Vec::new();
    for entry in entries.flatten() {
        let file = entry.file_name();
        if !file.to_str().is_some_and(|f| f.starts_with(&prefix)) {
            continue;
        }
        let path = out.with_file_name(&file);
        if let Some(meta) = stale(&path, OLD, name).filter(|_| is_stackc_manifest(&path.join(MANIFEST))) {
            olds.push((meta.modified().ok(), path));
        } else if stale(&path, TMP, name).is_some() {
            tmps.push(path);
        }
    }
    if fs::symlink_metadata(out).is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound) {
        // The latest one set aside, if there are several.
        olds.sort();
        if let Some((_, old)) = olds.pop() {
            match fs::rename(&old, out) {
                Ok(()) => eprintln!(
                    "warning: restored the previous bundle `{}` from `{}`, set aside by an interrupted build",
                    shown(out),
                    shown(&old)
                ),
                Err(e) => eprintln!("warning: cannot restore `{}` from `{}`: {e}", shown(out), shown(&old)),
            }
        }
    }
    for path in olds.into_iter().map(|(_, p)| p).chain(tmps) {
        let removed = match fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => fs::remove_dir_all(&path),
            Ok(_) => fs::remove_file(&path),
            Err(_) => continue,
        };
        if let Err(e) = removed {
            eprintln!(
                "warning: cannot remove `{}`, left by an interrupted build: {e}",
                shown(&path)
            );
        }
    }
}

/// Fills the temporary directory `tmp` (made by `make_locked_dir`). A
/// file the `previous` bundle holds with the same bytes and mode is
/// hard-linked from it instead of written (see `reusable`).
fn fill(tmp: &Path, files: &Rendered, manifest: &[u8], previous: Option<&Path>) -> Result<(), Diagnostic> {
    let dirs = dir_modes(files);
    for (dir, mode) in &dirs {
        let full = tmp.join(dir);
        fs::create_dir(&full).map_err(|e| io_error(format!("cannot create `{}`", full.display()), e))?;
        set_mode(&full, *mode)?;
    }
    // The previous bundle's folders files may be reused from: real
    // directories, as are all their parents (a folder replaced by a
    // symbolic link would link files from elsewhere). Sorted, so a
    // parent is judged before its children.
    let mut real: std::collections::BTreeSet<&Path> = std::collections::BTreeSet::new();
    if let Some(prev) = previous {
        real.insert(Path::new(""));
        for dir in dirs.keys() {
            let parent = dir.parent().unwrap_or(Path::new(""));
            if real.contains(parent) && fs::symlink_metadata(prev.join(dir)).is_ok_and(|m| m.is_dir()) {
                real.insert(dir);
            }
        }
    }
    // Creating a file costs a round trip to the file system (about 1 ms
    // on a virtual disk), not bandwidth: several threads overlap them.
    // The first failure in path order is the one reported.
    let all: Vec<(&String, &crate::render::RenderedFile)> = files.iter().collect();
    in_parallel(&all, |(path, f)| {
        let to = tmp.join(path);
        let folder = Path::new(path.as_str()).parent().unwrap_or(Path::new(""));
        let reused = match previous {
            Some(prev) if real.contains(folder) => link_unchanged(&prev.join(path), &to, &f.bytes, f.mode),
            _ => false,
        };
        if reused {
            Ok(())
        } else {
            write_file(&to, &f.bytes, f.mode)
        }
    })?;
    write_file(&tmp.join(MANIFEST), manifest, MODE_FILE)?;
    // Complete: from here on, the manifest says it is stackc's.
    fs::remove_file(tmp.join(PARTIAL)).map_err(|e| io_error(format!("cannot remove `{}`", PARTIAL), e))?;
    // Everything must be on disk before the swap makes it the bundle. One
    // syncfs for the whole file system beats an fsync per file (hundreds
    // of files for a large stack).
    let dir = fs::File::open(tmp).map_err(|e| io_error(format!("cannot open `{}`", tmp.display()), e))?;
    use std::os::fd::AsRawFd;
    // SAFETY: the descriptor is valid for the lifetime of `dir`.
    if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
        return Err(io_error(
            format!("cannot sync `{}`", tmp.display()),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Every directory of the bundle with its mode: 0755, except a directory
/// whose files are all secret, which is 0700. Sorted, so a parent comes
/// before its children.
pub fn dir_modes(files: &Rendered) -> BTreeMap<&Path, u32> {
    // Per directory: whether it holds only secret files, and whether one of
    // them belongs to a user other than root (a container's).
    let mut dirs: BTreeMap<&Path, (Option<bool>, bool)> = BTreeMap::new();
    for (path, f) in files {
        let parent = Path::new(path).parent().unwrap_or(Path::new(""));
        for dir in parent.ancestors().filter(|d| !d.as_os_str().is_empty()) {
            dirs.entry(dir).or_insert((None, false));
        }
        if let Some((only_secret, foreign)) = dirs.get_mut(parent) {
            *only_secret = Some(only_secret.unwrap_or(true) && f.secret);
            *foreign |= f.owner != (0, 0);
        }
    }
    dirs.into_iter()
        .map(|(d, (only_secret, foreign))| {
            (
                d,
                match (only_secret == Some(true), foreign) {
                    // The container's user must pass through to its own
                    // 0600 files: traverse, but not list.
                    (true, true) => MODE_SECRET_DIR_SHARED,
                    (true, false) => MODE_SECRET_DIR,
                    _ => MODE_DIR,
                },
            )
        })
        .collect()
}

/// Threads that create the bundle's files, and remove a previous bundle.
const WRITERS: usize = 8;

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), Diagnostic> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| io_error(format!("cannot create `{}`", path.display()), e))?;
    f.write_all(bytes)
        .map_err(|e| io_error(format!("cannot write `{}`", path.display()), e))?;
    // Explicit mode, whatever the umask or a default ACL did at creation
    // (on the open file). Set only when it differs: reading the mode is
    // cheaper than changing it.
    use std::os::unix::fs::MetadataExt;
    if f.metadata().is_ok_and(|m| m.mode() & 0o7777 == mode) {
        return Ok(());
    }
    f.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(|e| io_error(format!("cannot set the mode of `{}`", path.display()), e))
}

/// Links the previous bundle's file `from` to `to` if it is `reusable`,
/// and only if the name made is that very file with no third name (it
/// could have been replaced between the check and the link: another
/// build swapping its bundle in). Otherwise nothing is left at `to`.
fn link_unchanged(from: &Path, to: &Path, bytes: &[u8], mode: u32) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(checked) = reusable(from, bytes, mode) else {
        return false;
    };
    if fs::hard_link(from, to).is_err() {
        return false;
    }
    let same = fs::symlink_metadata(to).is_ok_and(|m| m.dev() == checked.dev && m.ino() == checked.ino);
    if same && checked.file.metadata().is_ok_and(|m| m.nlink() == 2) {
        return true;
    }
    let _ = fs::remove_file(to);
    false
}

/// The previous bundle's file at `from`, still open, if it can become the
/// new one as it is (a hard link instead of a new file: on a warm build
/// most files are unchanged, and creating a file, then removing the old
/// one, are each a round trip to the file system): a regular file, not a
/// link, of this process's user and group, with exactly `mode` and
/// `bytes`, and no other name (a second name could change it from outside
/// the bundle). A file that changed, or was edited, is written anew.
fn reusable(from: &Path, bytes: &[u8], mode: u32) -> Option<Checked> {
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    // Not blocking on a FIFO put there; not following a link.
    let mut f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(from)
        .ok()?;
    let meta = f.metadata().ok()?;
    // SAFETY: plain getters without arguments.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    if !meta.is_file()
        || meta.nlink() != 1
        || meta.uid() != uid
        || meta.gid() != gid
        || meta.mode() & 0o7777 != mode
        || meta.len() != bytes.len() as u64
    {
        return None;
    }
    let mut held = Vec::with_capacity(bytes.len() + 1);
    // One byte more than expected: a file that grew meanwhile differs.
    let same = (&mut f).take(bytes.len() as u64 + 1).read_to_end(&mut held).is_ok() && held == bytes;
    same.then_some(Checked {
        file: f,
        dev: meta.dev(),
        ino: meta.ino(),
    })
}

/// A previous bundle's file `reusable` judged, still open.
struct Checked {
    file: fs::File,
    dev: u64,
    ino: u64,
}

/// `work` on every item, by `WRITERS` threads each taking a contiguous
/// share (each stops at its first failure); the failure of the first item
/// in order is the result.
fn in_parallel<T: Sync, E: Send>(items: &[T], work: impl Fn(&T) -> Result<(), E> + Sync) -> Result<(), E> {
    let chunk = items.len().div_ceil(WRITERS).max(1);
    let work = &work;
    let failures: Vec<(usize, E)> = std::thread::scope(|scope| {
        let workers: Vec<_> = items
            .chunks(chunk)
            .enumerate()
            .map(|(n, part)| {
                scope.spawn(move || {
                    part.iter()
                        .enumerate()
                        .find_map(|(i, item)| work(item).err().map(|e| (n * chunk + i, e)))
                })
            })
            .collect();
        workers
            .into_iter()
            .filter_map(|w| w.join().expect("a bundle thread panicked"))
            .collect()
    });
    match failures.into_iter().min_by_key(|(i, _)| *i) {
        Some((_, e)) => Err(e),
        None => Ok(()),
    }
}

/// `remove_dir_all`, with the top-level entries removed by several threads
/// (a bundle's machines): removing a file is a round trip too.
fn remove_tree(dir: &Path) -> std::io::Result<()> {
    let entries: Vec<PathBuf> = fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    in_parallel(&entries, |p| match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p),
        Ok(_) => fs::remove_file(p),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    })?;
    fs::remove_dir(dir)
}

/// Explicit mode, whatever the umask did at creation.
fn set_mode(path: &Path, mode: u32) -> Result<(), Diagnostic> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| io_error(format!("cannot set the mode of `{}`", path.display()), e))
}

fn swap(tmp: &Path, out: &Path, old: &Path, existing: bool, hooks: &TestHooks) -> Result<(), Diagnostic> {
    if !existing {
        // Not over a directory that appeared since it was checked.
        return rename_noreplace(tmp, out)
            .map_err(|e| io_error(format!("cannot move the bundle to `{}`", shown(out)), e));
    }
    let exchanged = if hooks.no_exchange {
        Err(std::io::Error::from_raw_os_error(libc::EINVAL))
    } else {
        exchange(tmp, out)
    };
    match exchanged {
        Ok(()) => {
            // `tmp` now holds the previous bundle. The new one is in place
            // whatever happens here: leftovers are only worth a warning
            // (and the next build removes them).
            if let Err(e) = remove_tree(tmp) {
                eprintln!(
                    "warning: cannot remove the previous bundle, now at `{}`: {e} (it shares its unchanged files with the new bundle: remove it, do not edit it)",
                    shown(tmp)
                );
            }
            Ok(())
        }
        Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOSYS)) => {
            // No atomic exchange on this file system: set the old bundle
            // aside under a name of our own (pid-unique), then move the new
            // one in. Killed in between, `out` is missing for a moment; the
            // next build puts the old bundle back (`recover`).
            fs::rename(out, old).map_err(|e| io_error(format!("cannot move `{}` aside", shown(out)), e))?;
            if hooks.abort_mid_swap {
                // As a kill would: no clean-up runs (exit unwinds nothing).
                std::process::exit(137);
            }
            if let Err(e) = fs::rename(tmp, out) {
                let _ = fs::rename(old, out);
                return Err(io_error(format!("cannot move the bundle to `{}`", shown(out)), e));
            }
            if let Err(e) = fs::remove_dir_all(old) {
                eprintln!(
                    "warning: cannot remove the previous bundle, now at `{}`: {e} (it shares its unchanged files with the new bundle: remove it, do not edit it)",
                    shown(old)
                );
            }
            Ok(())
        }
        Err(e) => Err(io_error(format!("cannot replace `{}`", shown(out)), e)),
    }
}

/// Atomically exchanges two paths (Linux `renameat2` with `RENAME_EXCHANGE`).
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    renameat2(a, b, libc::RENAME_EXCHANGE)
}

/// Linux `renameat2` (relative paths from the working directory).
fn renameat2(a: &Path, b: &Path, flags: libc::c_uint) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let ca = CString::new(a.as_os_str().as_bytes())?;
    let cb = CString::new(b.as_os_str().as_bytes())?;
    // SAFETY: both arguments are valid NUL-terminated paths that outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            flags,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Reads a bundle directory back (for `build --check` and `diff`): every
/// file but the manifest, with its mode, and the secret flags the manifest
/// records; a file the manifest does not list counts as secret, so `diff`
/// names it and never shows its content.
pub fn read(dir: &Path) -> Result<Rendered, Diagnostic> {
    let not_a_bundle = |why: String| {
        Diagnostic::error(
            Code::NotABundle,
            format!("`{}` is not a stackc bundle: {why}", dir.display()),
        )
        .with_help("give a directory written by `stackc build`")
    };
    if !is_stackc_manifest(&dir.join(MANIFEST)) {
        return Err(not_a_bundle(format!("no {MANIFEST} written by stackc")));
    }
    let manifest = fs::read(dir.join(MANIFEST)).map_err(|e| not_a_bundle(format!("no readable {MANIFEST} ({e})")))?;
    let manifest: serde_json::Value =
        serde_json::from_slice(&manifest).map_err(|e| not_a_bundle(format!("{MANIFEST} is not JSON ({e})")))?;
    let listed = manifest["files"]
        .as_array()
        .ok_or_else(|| not_a_bundle(format!("{MANIFEST} lists no files")))?;
    let secret: std::collections::BTreeSet<&str> = listed
        .iter()
        .filter(|f| f["secret"] == true)
        .filter_map(|f| f["path"].as_str())
        .collect();
    let listed: std::collections::BTreeSet<&str> = listed.iter().filter_map(|f| f["path"].as_str()).collect();
    let mut out = Rendered::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = fs::read_dir(&d).map_err(|e| io_error(format!("cannot read `{}`", d.display()), e))?;
        for entry in entries {
            let path = entry
                .map_err(|e| io_error(format!("cannot read `{}`", d.display()), e))?
                .path();
            let meta =
                fs::symlink_metadata(&path).map_err(|e| io_error(format!("cannot read `{}`", path.display()), e))?;
            let rel = path
                .strip_prefix(dir)
                .expect("below dir")
                .to_string_lossy()
                .into_owned();
            if meta.is_dir() {
                stack.push(path);
            } else if !meta.is_file() {
                // A symlink could make `diff` print any file of this machine
                // (a key), a FIFO could hang it: bundles hold regular files.
                return Err(not_a_bundle(format!("`{rel}` is not a regular file")));
            } else if rel != MANIFEST {
                let bytes = fs::read(&path).map_err(|e| io_error(format!("cannot read `{}`", path.display()), e))?;
                // A file the manifest does not list is not stackc's (a
                // key dropped into the bundle, a deploy tool's state): it
                // is opaque like a secret, compared but never shown.
                let secret = secret.contains(rel.as_str()) || !listed.contains(rel.as_str());
                out.insert(
                    rel,
                    crate::render::RenderedFile {
                        bytes,
                        mode: meta.permissions().mode() & 0o7777,
                        secret,
                        // The build does not chown: owners are the
                        // manifest's, applied on deploy.
                        owner: (0, 0),
                    },
                );
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pid no process has: one that just exited.
    fn dead_pid() -> u32 {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(!alive(pid));
        pid
    }

    fn temp(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("stackc-bundle-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn fake_bundle(dir: &Path, content: &str) {
        fs::create_dir_all(dir.join("m")).unwrap();
        fs::write(dir.join("m/f"), content).unwrap();
        fs::write(
            dir.join(MANIFEST),
            "{\"manifest_version\": 1, \"stackc_version\": \"0\", \"files\": []}\n",
        )
        .unwrap();
    }

    #[test]
    fn a_bundle_set_aside_by_a_killed_build_goes_back() {
        let dir = temp("recover");
        let out = dir.join("out");
        let pid = dead_pid();
        let old = dir.join(format!(".out.stackc-old-{pid}"));
        let tmp = dir.join(format!(".out.stackc-tmp-{pid}"));
        fake_bundle(&old, "previous");
        fake_bundle(&tmp, "interrupted");
        recover(&dir, "out".as_ref(), &out);
        assert_eq!(fs::read_to_string(out.join("m/f")).unwrap(), "previous", "rolled back");
        assert!(!old.exists() && !tmp.exists());
        // With `out` in place, a set-aside bundle is only removed.
        fake_bundle(&old, "older");
        recover(&dir, "out".as_ref(), &out);
        assert_eq!(fs::read_to_string(out.join("m/f")).unwrap(), "previous");
        assert!(!old.exists());
        // A live process's sibling is left alone.
        let mine = dir.join(format!(".out.stackc-old-{}", std::process::id()));
        fake_bundle(&mine, "in use");
        fs::remove_dir_all(&out).unwrap();
        recover(&dir, "out".as_ref(), &out);
        assert!(mine.exists() && !out.exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_fallback_swap_replaces_the_bundle_and_leaves_nothing() {
        let dir = temp("fallback");
        let out = dir.join("out");
        let mut files = Rendered::new();
        let file = |s: &str| crate::render::RenderedFile {
            bytes: s.as_bytes().to_vec(),
            mode: 0o644,
            secret: false,
            owner: (0, 0),
        };
        files.insert("m/f".into(), file("one"));
        let manifest = b"{\"manifest_version\": 1, \"stackc_version\": \"0\", \"files\": []}\n";
        let hooks = TestHooks {
            no_exchange: true,
            abort_mid_swap: false,
        };
        write(&out, &files, manifest, &[], &hooks).unwrap();
        files.insert("m/f".into(), file("two"));
        write(&out, &files, manifest, &[], &hooks).unwrap();
        assert_eq!(fs::read_to_string(out.join("m/f")).unwrap(), "two");
        let names: Vec<_> = fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["out"], "no temporary sibling, no marker in the bundle");
        assert!(!out.join(PARTIAL).exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_warm_build_keeps_unchanged_files_and_rewrites_the_rest() {
        for no_exchange in [false, true] {
            warm_build(TestHooks {
                no_exchange,
                abort_mid_swap: false,
            });
        }
    }

    fn warm_build(hooks: TestHooks) {
        use std::os::unix::fs::MetadataExt;
        let dir = temp(if hooks.no_exchange { "reuse-fallback" } else { "reuse" });
        let out = dir.join("out");
        let file = |s: &str, mode: u32| crate::render::RenderedFile {
            bytes: s.as_bytes().to_vec(),
            mode,
            secret: mode == 0o600,
            owner: (0, 0),
        };
        let names = ["same", "changed", "edited", "chmodded", "linked", "secret"];
        let mut files = Rendered::new();
        for name in names {
            files.insert(
                format!("m/{name}"),
                file(name, if name == "secret" { 0o600 } else { 0o644 }),
            );
        }
        files.insert("l/via-link".into(), file("via-link", 0o644));
        let manifest = b"{\"manifest_version\": 1, \"stackc_version\": \"0\", \"files\": []}\n";
        write(&out, &files, manifest, &[], &hooks).unwrap();
        let ino = |path: &str| fs::symlink_metadata(out.join(path)).unwrap().ino();
        let before: BTreeMap<&str, u64> = names.into_iter().map(|n| (n, ino(&format!("m/{n}")))).collect();
        // Hand edits the next build must undo: same length other bytes, a
        // mode, a second name outside the bundle, a folder replaced by a
        // link to one outside holding a file with the same bytes and mode.
        fs::write(out.join("m/edited"), "EDITED").unwrap();
        fs::set_permissions(out.join("m/chmodded"), fs::Permissions::from_mode(0o666)).unwrap();
        fs::hard_link(out.join("m/linked"), dir.join("outside")).unwrap();
        let elsewhere = dir.join("elsewhere");
        fs::rename(out.join("l"), &elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, out.join("l")).unwrap();
        files.insert("m/changed".into(), file("changed again", 0o644));
        // A new folder: files elsewhere are still reused.
        files.insert("n/new".into(), file("new", 0o644));
        write(&out, &files, manifest, &[], &hooks).unwrap();

        for (name, f) in &files {
            let path = out.join(name);
            let meta = fs::symlink_metadata(&path).unwrap();
            assert_eq!(fs::read(&path).unwrap(), f.bytes, "{name}: content");
            assert_eq!(meta.mode() & 0o7777, f.mode, "{name}: mode");
            assert_eq!(meta.nlink(), 1, "{name}: the previous bundle is gone");
        }
        assert!(
            fs::symlink_metadata(out.join("l")).unwrap().is_dir(),
            "a real folder again"
        );
        assert_eq!(
            fs::symlink_metadata(elsewhere.join("via-link")).unwrap().nlink(),
            1,
            "the file behind the link is not linked"
        );
        assert_eq!(ino("m/same"), before["same"], "an unchanged file is kept");
        assert_eq!(ino("m/secret"), before["secret"], "an unchanged secret file is kept");
        for name in ["changed", "edited", "chmodded", "linked"] {
            assert_ne!(ino(&format!("m/{name}")), before[name], "{name}: written anew");
        }
        assert_eq!(
            fs::read_to_string(dir.join("outside")).unwrap(),
            "linked",
            "the outside name is left alone"
        );
        let names: Vec<_> = fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 3, "out, outside and elsewhere only: {names:?}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
