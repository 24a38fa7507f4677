//! Helpers shared by the integration tests: the binary, the repo, temp dirs.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

pub fn stackc() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_stackc"));
    // Tests see what a user without a terminal sees. The identity is the
    // committed TEST one, which the examples' external secrets are
    // encrypted to: a build with the test key needs it, as a user's would.
    c.env_remove("STACKC_SECRETS_KEY")
        .env_remove("STACKC_SECRETS_KEY_COMMAND")
        .env(
            "STACKC_AGE_IDENTITY",
            repo().join("tests/keys/TEST-ONLY-age-identity.txt"),
        )
        .env_remove("CLICOLOR_FORCE")
        .env("NO_COLOR", "1");
    c
}

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "stackc-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The committed test key, copied with mode 0600 (git does not keep modes).
pub fn test_key(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dest = dir.join("TEST-ONLY-master.key");
    std::fs::copy(repo().join("tests/keys/TEST-ONLY-master.key"), &dest).unwrap();
    std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o600)).unwrap();
    dest
}

pub fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Every file below `root`, relative path → (bytes, mode), sorted.
pub fn tree(root: &Path) -> std::collections::BTreeMap<String, (Vec<u8>, u32)> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let meta = std::fs::metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            if meta.is_dir() {
                out.insert(format!("{rel}/"), (Vec::new(), meta.permissions().mode() & 0o7777));
                stack.push(p);
            } else {
                out.insert(rel, (std::fs::read(&p).unwrap(), meta.permissions().mode() & 0o7777));
            }
        }
    }
    out
}

/// The examples that have a golden bundle: `examples/<name>/prod.ncl`.
pub fn examples() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(repo().join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("prod.ncl").is_file())
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The tools venv (`tests/tools/install.sh`).
pub fn tools_prefix() -> PathBuf {
    std::env::var_os("STACKC_TOOLS_PREFIX")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/stackc-tools"))
}

/// A tool the test needs: `Some(path)` if present; if missing, a failure
/// (always under CI; elsewhere unless STACKC_SKIP_MISSING_TOOLS=1, which
/// returns `None` after saying so). Never a silent pass.
pub fn require_tool(path: PathBuf, what: &str) -> Option<PathBuf> {
    if path.exists() {
        return Some(path);
    }
    let ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty());
    let skip = std::env::var("STACKC_SKIP_MISSING_TOOLS").is_ok_and(|v| v == "1");
    let msg = format!(
        "{what} is missing ({}): run `sudo tests/tools/install.sh`",
        path.display()
    );
    if ci || !skip {
        panic!("{msg}");
    }
    eprintln!("NOT CHECKED (STACKC_SKIP_MISSING_TOOLS=1): {msg}");
    None
}

/// `which`, for tools from the distribution.
pub fn on_path(name: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/sbin", "/bin", "/sbin", "/usr/local/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    PathBuf::from(format!("/usr/bin/{name}"))
}

/// Every way a secret can be spelt in output: as is, base64, hex.
pub fn forms(value: &str) -> Vec<String> {
    use base64::Engine as _;
    let hex: String = value.bytes().map(|b| format!("{b:02x}")).collect();
    vec![
        value.to_owned(),
        base64::engine::general_purpose::STANDARD.encode(value),
        hex,
    ]
}

/// `git ARGS` in `dir` with a fixed identity; fails the test on error.
pub fn git(dir: &Path, args: &[&str]) {
    let o = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.org")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.org")
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The Lair Chat example, the stack most tests build.
pub fn lair() -> PathBuf {
    repo().join("examples/lair-chat/prod.ncl")
}

/// Compiles `entry` through the library with the master key in `key`: the
/// secret values a build derives, for tests that look for leaks.
/// The committed TEST age identity (tests/keys/), which the examples'
/// external secrets are encrypted to.
pub fn test_identities() -> stackc::secrets::external::Identities {
    let text = std::fs::read_to_string(repo().join("tests/keys/TEST-ONLY-age-identity.txt")).unwrap();
    stackc::secrets::external::Identities::parse(&text).expect("a valid test identity")
}

pub fn compile_with_key(
    entry: &Path,
    key: &Path,
    cache: &dyn stackc::secrets::Cache,
) -> Result<stackc::Compiled, Vec<stackc::diag::Diagnostic>> {
    let keying = stackc::secrets::Keying::Master(stackc::secrets::MasterKey::load(key).expect("a valid test key"));
    let ids = test_identities();
    let opts = stackc::Options {
        project_root: None,
        keying: &keying,
        identities: Some(&ids),
        cache,
        machine: None,
        eval_cache: None,
        limits: Default::default(),
    };
    stackc::compile(entry, &opts)
}
