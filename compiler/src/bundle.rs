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

use crate::diag::{Code, Diagnostic};
use crate::load::hex;
use crate::model::Stack;
use crate::render::{MODE_FILE, Rendered};
use crate::secrets::{self, Keying};

pub const MANIFEST: &str = "manifest.json";
pub const MANIFEST_VERSION: u32 = 1;
const MODE_DIR: u32 = 0o755;
const MODE_SECRET_DIR: u32 = 0o700;

#[derive(Serialize)]
struct Manifest<'a> {
    manifest_version: u32,
    stackc_version: &'static str,
    nickel_lang_core: &'static str,
    stack: &'a str,
    secrets: SecretsInfo,
    inputs: Inputs,
    /// Network prefixes and which are public, for deploy tools and tests.
    networks: BTreeMap<&'a str, NetworkInfo<'a>>,
    machines: BTreeMap<&'a str, MachineInfo<'a>>,
    files: Vec<FileEntry<'a>>,
}

#[derive(Serialize)]
struct SecretsInfo {
    scheme: &'static str,
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
    secret: bool,
    /// Plain sha256 for ordinary files, keyed `hmac_sha256` for secrets.
    #[serde(flatten)]
    digest: BTreeMap<String, String>,
}

/// Version of nickel-lang-core the stdlib is evaluated with (pinned in Cargo.toml).
pub const NICKEL_LANG_CORE: &str = "0.19.0";

/// `manifest.json`: every file with size, mode, secret flag and digest; the
/// inputs' hashes; versions. Sorted, no timestamps, no absolute paths.
pub fn manifest(stack: &Stack, files: &Rendered, inputs: &BTreeMap<String, Vec<u8>>, keying: &Keying) -> Vec<u8> {
    let m = Manifest {
        manifest_version: MANIFEST_VERSION,
        stackc_version: env!("CARGO_PKG_VERSION"),
        nickel_lang_core: NICKEL_LANG_CORE,
        stack: &stack.name,
        secrets: SecretsInfo {
            scheme: secrets::SCHEME,
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
    let Ok(bytes) = fs::read(path) else { return false };
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return false;
    };
    v.get("manifest_version").is_some_and(serde_json::Value::is_u64)
        && v.get("stackc_version").is_some_and(serde_json::Value::is_string)
        && v.get("files").is_some_and(serde_json::Value::is_array)
}

fn io_error(what: String, e: std::io::Error) -> Diagnostic {
    Diagnostic::error(Code::Io, format!("{what}: {e}")).with_help("nothing was changed in the output directory")
}

/// Writes `files` and the manifest as directory `out`, atomically.
pub fn write(out: &Path, files: &Rendered, manifest: &[u8]) -> Result<(), Diagnostic> {
    let name = out.file_name().ok_or_else(|| {
        Diagnostic::error(
            Code::NotABundle,
            format!("`{}` cannot be an output directory", out.display()),
        )
    })?;
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let existing = match fs::symlink_metadata(out) {
        Ok(meta) => {
            let is_bundle = meta.is_dir() && is_stackc_manifest(&out.join(MANIFEST));
            let is_empty = meta.is_dir() && fs::read_dir(out).map(|mut d| d.next().is_none()).unwrap_or(false);
            if !is_bundle && !is_empty {
                return Err(Diagnostic::error(
                    Code::NotABundle,
                    format!(
                        "`{}` exists and is not a stackc bundle (it has no {MANIFEST})",
                        out.display()
                    ),
                )
                .with_help("choose another directory with -o, or remove this one yourself"));
            }
            true
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(io_error(format!("cannot inspect `{}`", out.display()), e)),
    };
    fs::create_dir_all(&parent).map_err(|e| io_error(format!("cannot create `{}`", parent.display()), e))?;

    let tmp = parent.join(format!(".{}.stackc-tmp-{}", name.to_string_lossy(), std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    let result = fill(&tmp, files, manifest).and_then(|()| swap(&tmp, out, existing));
    if result.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    result
}

fn fill(tmp: &Path, files: &Rendered, manifest: &[u8]) -> Result<(), Diagnostic> {
    let mkdir = |dir: &Path| -> Result<(), Diagnostic> {
        fs::create_dir(dir).map_err(|e| io_error(format!("cannot create `{}`", dir.display()), e))?;
        set_mode(dir, MODE_DIR)
    };
    mkdir(tmp)?;
    for (dir, mode) in dir_modes(files) {
        let full = tmp.join(dir);
        mkdir(&full)?;
        set_mode(&full, mode)?;
    }
    for (path, f) in files {
        write_file(&tmp.join(path), &f.bytes, f.mode)?;
    }
    write_file(&tmp.join(MANIFEST), manifest, MODE_FILE)?;
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
    let mut dirs: BTreeMap<&Path, Option<bool>> = BTreeMap::new();
    for (path, f) in files {
        let parent = Path::new(path).parent().unwrap_or(Path::new(""));
        for dir in parent.ancestors().filter(|d| !d.as_os_str().is_empty()) {
            dirs.entry(dir).or_insert(None);
        }
        if let Some(only_secret) = dirs.get_mut(parent) {
            *only_secret = Some(only_secret.unwrap_or(true) && f.secret);
        }
    }
    dirs.into_iter()
        .map(|(d, only_secret)| {
            (
                d,
                if only_secret == Some(true) {
                    MODE_SECRET_DIR
                } else {
                    MODE_DIR
                },
            )
        })
        .collect()
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), Diagnostic> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| io_error(format!("cannot create `{}`", path.display()), e))?;
    f.write_all(bytes)
        .map_err(|e| io_error(format!("cannot write `{}`", path.display()), e))?;
    set_mode(path, mode)
}

/// Explicit mode, whatever the umask did at creation.
fn set_mode(path: &Path, mode: u32) -> Result<(), Diagnostic> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| io_error(format!("cannot set the mode of `{}`", path.display()), e))
}

fn swap(tmp: &Path, out: &Path, existing: bool) -> Result<(), Diagnostic> {
    if !existing {
        return fs::rename(tmp, out).map_err(|e| io_error(format!("cannot move the bundle to `{}`", out.display()), e));
    }
    match exchange(tmp, out) {
        Ok(()) => {
            // `tmp` now holds the previous bundle. The new one is in place
            // whatever happens here: leftovers are only worth a warning.
            if let Err(e) = fs::remove_dir_all(tmp) {
                eprintln!(
                    "warning: cannot remove the previous bundle, now at `{}`: {e}",
                    tmp.display()
                );
            }
            Ok(())
        }
        Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOSYS)) => {
            // No atomic exchange on this file system: keep the old bundle
            // aside until the new one is in place.
            // Set aside under a name of our own (pid-unique, and `rename`
            // refuses to replace a non-empty directory).
            let old = tmp.with_extension("old");
            fs::rename(out, &old).map_err(|e| io_error(format!("cannot move `{}` aside", out.display()), e))?;
            if let Err(e) = fs::rename(tmp, out) {
                let _ = fs::rename(&old, out);
                return Err(io_error(format!("cannot move the bundle to `{}`", out.display()), e));
            }
            let _ = fs::remove_dir_all(&old);
            Ok(())
        }
        Err(e) => Err(io_error(format!("cannot replace `{}`", out.display()), e)),
    }
}

/// Atomically exchanges two paths (Linux `renameat2` with `RENAME_EXCHANGE`).
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
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
            libc::RENAME_EXCHANGE,
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
/// records.
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
    let secret: std::collections::BTreeSet<&str> = manifest["files"]
        .as_array()
        .ok_or_else(|| not_a_bundle(format!("{MANIFEST} lists no files")))?
        .iter()
        .filter(|f| f["secret"] == true)
        .filter_map(|f| f["path"].as_str())
        .collect();
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
                let secret = secret.contains(rel.as_str());
                out.insert(
                    rel,
                    crate::render::RenderedFile {
                        bytes,
                        mode: meta.permissions().mode() & 0o7777,
                        secret,
                    },
                );
            }
        }
    }
    Ok(out)
}
