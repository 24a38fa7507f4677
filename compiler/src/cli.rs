//! The command line: argument parsing, output formats, exit statuses. The
//! only place that reads the environment (`NO_COLOR`, `STACKC_SECRETS_KEY`)
//! or writes to the terminal.
//!
//! Exit statuses: 0 ok, 1 findings in the user's input, 2 usage, I/O or
//! internal errors (docs/cli.md).

// The CLI is where the environment is read (NO_COLOR, CLICOLOR_FORCE).
#![allow(clippy::disallowed_methods)]

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use crate::diag::{self, Code, Diagnostic};
use crate::secrets::{Keying, MasterKey};

mod graph;
mod init;
mod options;
mod secrets;
mod stdlib;

#[derive(Parser)]
#[command(
    name = "stackc",
    version,
    about = "Compile a typed Nickel description of a self-hosted stack into per-machine config bundles"
)]
pub struct Cli {
    /// When to use colour in diagnostics. `auto` honours NO_COLOR and CLICOLOR_FORCE.
    #[arg(long, value_enum, default_value_t = Color::Auto, global = true)]
    color: Color,
    /// Seconds an evaluation of the stack may take before it is stopped (SC0113).
    #[arg(long, value_name = "SECONDS", global = true, env = "STACKC_MAX_EVAL_TIME",
          default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    max_eval_time: u64,
    /// Memory, in MiB, an evaluation of the stack may hold before it is stopped (SC0114).
    #[arg(long, value_name = "MIB", global = true, env = "STACKC_MAX_EVAL_MEMORY",
          default_value_t = 4096, value_parser = clap::value_parser!(u64).range(16..=1 << 30))]
    max_eval_memory: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Color {
    Auto,
    Always,
    Never,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum OutputFormat {
    Dir,
    Tar,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Human,
    Json,
}

/// `check` also speaks the CI formats.
#[derive(Clone, Copy, ValueEnum)]
enum CheckFormat {
    Human,
    Json,
    /// GitHub Actions workflow commands: annotations on the diff.
    Github,
    /// SARIF 2.1.0, for code scanning.
    Sarif,
}

#[derive(Subcommand)]
enum Command {
    /// Evaluate, check and write the bundle: one folder per machine and manifest.json.
    Build {
        /// The stack file (for example prod.ncl).
        file: PathBuf,
        /// Output: the bundle directory (default `out`), replaced atomically if it holds a
        /// previous bundle; for `--format tar|json`, a file (default: standard output).
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// `dir`: a directory; `tar`: a deterministic tar; `json`: one JSON document.
        #[arg(long, value_enum, default_value_t = OutputFormat::Dir)]
        format: OutputFormat,
        /// Only this machine's folder, for `--format tar|json` (paths relative to it).
        #[arg(long, conflicts_with = "check")]
        machine: Option<String>,
        /// Write nothing: exit 1 if the bundle in the output directory is not what this
        /// build would write (for pre-commit hooks and CI).
        #[arg(long, conflicts_with = "format")]
        check: bool,
        #[command(flatten)]
        keys: KeyArgs,
        /// Emit obvious, invalid placeholders instead of secrets (for review and CI);
        /// wins over a key given by STACKC_SECRETS_KEY.
        #[arg(long)]
        placeholder_secrets: bool,
        /// Project directory imports must stay in (default: the stack file's directory).
        #[arg(long)]
        project_root: Option<PathBuf>,
        #[command(flatten)]
        cache: CacheArgs,
        /// Print nothing on success.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Evaluate and check the stack; write nothing. Needs no key.
    Check {
        file: PathBuf,
        #[arg(long, value_enum, default_value_t = CheckFormat::Human)]
        format: CheckFormat,
        #[arg(long)]
        project_root: Option<PathBuf>,
        #[command(flatten)]
        cache: CacheArgs,
        #[arg(short, long)]
        quiet: bool,
    },
    /// Print, as Markdown, what the stack needs outside the bundle: DNS records,
    /// firewall openings, connections between machines, and each machine's files.
    Plan {
        file: PathBuf,
        #[arg(long)]
        project_root: Option<PathBuf>,
    },
    /// Compare two bundles, per machine and per file; secrets are never shown.
    /// Each side is a bundle directory, a stack file (built on the fly), or
    /// `git:REV:path/to/prod.ncl` (the stack at that revision).
    /// Exit 0 without changes, 1 with changes, 2 on error.
    Diff {
        old: String,
        new: String,
        /// git-style per-file counts.
        #[arg(long, conflicts_with_all = ["name_only", "format"])]
        stat: bool,
        /// Only the paths of changed files.
        #[arg(long, conflicts_with = "format")]
        name_only: bool,
        #[arg(long, value_enum, default_value_t = Format::Human)]
        format: Format,
        /// Keys for sides that are built; without a master key, they are built with
        /// placeholder secrets.
        #[command(flatten)]
        keys: KeyArgs,
    },
    /// Start a project: a commented prod.ncl that builds, the master key
    /// (.stackc/master.key, git-ignored), .gitignore, a pre-commit configuration
    /// and secrets/README.md. Writes nothing if any of these files exists.
    Init {
        /// The project directory (created if missing).
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// The starting point.
        #[arg(long, value_enum, default_value_t = init::Template::Service)]
        template: init::Template,
        /// A docker compose file whose services become the first prod.ncl
        /// (secret-looking values are replaced by derived secrets, never copied).
        #[arg(long, value_name = "COMPOSE_FILE", conflicts_with = "template")]
        from: Option<PathBuf>,
        /// The stack's name (default: the directory's name).
        #[arg(long)]
        name: Option<String>,
    },
    /// Print the documentation page of a diagnostic code (for example SC0201); list all codes without one.
    Explain { code: Option<String> },
    /// Print an option of the stdlib modules: type, default, documentation
    /// (`stackc option matrix.client_auth_method`); without a path, every option.
    #[command(name = "option")]
    Opt(options::OptionArgs),
    /// The stack's topology: machines, networks, services, ports, connections and what
    /// the internet reaches, as Graphviz DOT or SVG.
    Graph(graph::GraphArgs),
    /// The embedded stdlib, for editors: `--write DIR` writes its files for the Nickel
    /// language server (NICKEL_IMPORT_PATH=DIR); without it, list them.
    Stdlib(stdlib::StdlibArgs),
    /// The master key, and the stack's secrets: list them, add external ones, show one.
    #[command(subcommand)]
    Secrets(secrets::SecretsCommand),
}

/// stackc's caches (build, check): evaluations of unchanged stacks, and
/// secrets that are slow to derive.
#[derive(clap::Args, Clone, Default)]
pub(crate) struct CacheArgs {
    /// Cache directory: evaluations in `eval/`, slow-to-derive secrets (RSA keys,
    /// digests) in `keys/`; default $XDG_CACHE_HOME/stackc or ~/.cache/stackc.
    #[arg(long, env = "STACKC_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// Evaluate and derive everything afresh; use no cache (also STACKC_NO_CACHE=1).
    #[arg(long, env = "STACKC_NO_CACHE", value_parser = clap::builder::FalseyValueParser::new())]
    no_cache: bool,
}

impl CacheArgs {
    /// The cache root: the flag, else the XDG cache, else none.
    fn root(&self) -> Option<PathBuf> {
        if self.no_cache {
            return None;
        }
        self.cache_dir.clone().or_else(|| {
            let xdg = std::env::var_os("XDG_CACHE_HOME")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from);
            let home = std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".cache"));
            xdg.or(home).map(|d| d.join("stackc"))
        })
    }

    fn keys(&self) -> Option<crate::cache::DirCache> {
        crate::cache::DirCache::open(self.root()?.join("keys"))
    }

    fn evaluations(&self) -> Option<crate::cache::EvalCache> {
        crate::cache::EvalCache::open(self.root()?.join("eval"))
    }
}

/// Where the master key and the age identity come from (build, diff, secrets).
#[derive(clap::Args, Clone, Default)]
pub(crate) struct KeyArgs {
    /// Master key file every derived secret comes from: base64 of 32 bytes (mode 0600),
    /// or that text age-encrypted (decrypted with --identity).
    #[arg(long, env = "STACKC_SECRETS_KEY", value_name = "FILE")]
    secrets_key: Option<PathBuf>,
    /// A command that prints the master key, run with `sh -c` (a password manager:
    /// `pass show stackc/prod`). Instead of --secrets-key.
    #[arg(long, env = "STACKC_SECRETS_KEY_COMMAND", value_name = "COMMAND")]
    secrets_key_command: Option<String>,
    /// age identity file (`AGE-SECRET-KEY-1…` lines): decrypts the project's external
    /// secrets (`secrets/<name>.age`) and an age-encrypted master key.
    #[arg(long, env = "STACKC_AGE_IDENTITY", value_name = "FILE")]
    identity: Option<PathBuf>,
}

/// What `KeyArgs` gave: the master key, if any, and the identities, if any.
pub(crate) struct Keys {
    key: Option<MasterKey>,
    identities: Option<crate::secrets::external::Identities>,
    /// The master key file used: given, or found beside a stack file.
    path: Option<PathBuf>,
}

impl KeyArgs {
    /// The keys given, with no master key looked for.
    pub(crate) fn load(&self) -> Result<Keys, Diagnostic> {
        self.load_for(&[], true)
    }

    /// The keys given; without a master key file or command, the project's
    /// `.stackc/master.key` beside the first of `stacks` that has one
    /// (named on stderr unless `quiet`).
    pub(crate) fn load_for(&self, stacks: &[&Path], quiet: bool) -> Result<Keys, Diagnostic> {
        if self.secrets_key.is_none()
            && self.secrets_key_command.is_none()
            && let Some(found) = stacks.iter().find_map(|s| init::discover_key(s))
        {
            if !quiet {
                eprintln!("using master key {}", diag::escape(&found.display().to_string()));
            }
            let args = KeyArgs {
                secrets_key: Some(found),
                ..self.clone()
            };
            return args.load_for(&[], quiet);
        }
        let identities = match &self.identity {
            None => None,
            Some(path) => Some(load_identity(path)?),
        };
        let key = match (&self.secrets_key, &self.secrets_key_command) {
            (Some(_), Some(_)) => {
                return Err(Diagnostic::error(
                    Code::NoSecretsKey,
                    "both a master key file and a key command are given",
                )
                .with_help("give one: --secrets-key (STACKC_SECRETS_KEY) or --secrets-key-command (STACKC_SECRETS_KEY_COMMAND)"));
            }
            (Some(path), None) => Some(MasterKey::load_with(path, identities.as_ref())?),
            (None, Some(command)) => Some(key_from_command(command)?),
            (None, None) => None,
        };
        Ok(Keys {
            key,
            identities,
            path: self.secrets_key.clone(),
        })
    }
}

fn load_identity(path: &Path) -> Result<crate::secrets::external::Identities, Diagnostic> {
    let shown = path.display();
    let fail = |why: String| {
        Diagnostic::error(
            Code::NoIdentity,
            format!("the age identity `{shown}` cannot be used: {why}"),
        )
        .with_help("pass a file made by `age-keygen` (lines `AGE-SECRET-KEY-1…`)")
    };
    let text = crate::secrets::external::read_project_file(path).map_err(|e| fail(e.to_string()))?;
    crate::secrets::external::Identities::parse(&text).map_err(fail)
}

/// Runs the key command with `sh -c`: standard error and input stay the
/// terminal's (a password manager may prompt), standard output is the key.
/// Nothing it prints is ever shown.
fn key_from_command(command: &str) -> Result<MasterKey, Diagnostic> {
    // `output()` would also capture standard error and close standard
    // input: a password manager could neither prompt nor explain a failure.
    let out = std::process::Command::new("/bin/sh")
        .args(["-c", command])
        .stdin(std::process::Stdio::inherit())
        .stderr(std::process::Stdio::inherit())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|child| child.wait_with_output())
        .map_err(|e| {
            Diagnostic::error(Code::KeyCommand, format!("cannot run the key command: {e}"))
                .with_help("--secrets-key-command is run with /bin/sh -c")
        })?;
    if !out.status.success() {
        let how = match out.status.code() {
            Some(c) => format!("exit status {c}"),
            None => "a signal".into(),
        };
        return Err(
            Diagnostic::error(Code::KeyCommand, format!("the key command ended with {how}"))
                .with_help("run it by hand: it must print the base64 master key and exit 0"),
        );
    }
    let text = String::from_utf8(out.stdout).unwrap_or_default();
    MasterKey::from_text(&text).ok_or_else(|| {
        Diagnostic::error(Code::KeyMalformed, "the key command did not print a stackc master key").with_help(format!(
            "it must print {} random bytes in base64 on one line, as in a key file",
            crate::secrets::KEY_LEN
        ))
    })
}

/// The evaluation budget every command uses, set once from the options.
static LIMITS: std::sync::OnceLock<crate::eval::Limits> = std::sync::OnceLock::new();

fn limits() -> crate::eval::Limits {
    LIMITS.get().copied().unwrap_or_default()
}

pub fn main() -> ExitCode {
    std::panic::set_hook(Box::new(panic_hook));
    // Test hook (tests/README.md): prove the panic hook prints no path of
    // the build machine. The payload carries one on purpose.
    if std::env::var_os("STACKC_TEST_PANIC").is_some_and(|v| v == "1") {
        panic!("deliberate panic (STACKC_TEST_PANIC) in /root/.cargo/registry/src/x/y.rs");
    }
    let cli = Cli::parse();
    let _ = LIMITS.set(crate::eval::Limits {
        time: std::time::Duration::from_secs(cli.max_eval_time),
        memory: usize::try_from(cli.max_eval_memory << 20).unwrap_or(usize::MAX),
    });
    let color = match cli.color {
        Color::Always => true,
        Color::Never => false,
        Color::Auto => {
            let set = |v: &str| std::env::var_os(v).is_some_and(|s| !s.is_empty());
            if set("NO_COLOR") {
                false
            } else {
                set("CLICOLOR_FORCE") || std::io::stderr().is_terminal()
            }
        }
    };
    let status = match cli.command {
        Command::Build {
            file,
            output,
            format,
            machine,
            check,
            keys,
            placeholder_secrets,
            project_root,
            cache,
            quiet,
        } => {
            let evaluations = cache.evaluations();
            let keys_cache = cache.keys();
            let key_cache: &dyn crate::secrets::Cache = match &keys_cache {
                Some(c) => c,
                None => &crate::secrets::NoCache,
            };
            let req = BuildRequest {
                file: &file,
                output: output.as_deref(),
                format,
                machine: machine.as_deref(),
                check,
                keys: &keys,
                placeholders: placeholder_secrets,
                root: project_root.as_deref(),
                quiet,
                eval_cache: evaluations.as_ref(),
            };
            build(&req, key_cache, color)
        }
        Command::Check {
            file,
            format,
            project_root,
            cache,
            quiet,
        } => check(
            &file,
            format,
            project_root.as_deref(),
            cache.evaluations().as_ref(),
            quiet,
            color,
        ),
        Command::Plan { file, project_root } => plan(&file, project_root.as_deref(), color),
        Command::Diff {
            old,
            new,
            stat,
            name_only,
            format,
            keys,
        } => diff(&old, &new, stat, name_only, format, &keys, color),
        Command::Init {
            dir,
            template,
            from,
            name,
        } => init::run(&dir, template, from.as_deref(), name.as_deref(), color),
        Command::Explain { code: Some(code) } => explain(&code),
        Command::Explain { code: None } => {
            for c in Code::ALL {
                println!("{c}  {}", c.title());
            }
            0
        }
        Command::Secrets(cmd) => secrets::run(cmd, color),
        Command::Opt(args) => options::run(args, color),
        Command::Graph(args) => graph::run(args, color),
        Command::Stdlib(args) => stdlib::run(args, color),
    };
    ExitCode::from(status)
}

/// Replaces Rust's panic message, which names the panicking source file by
/// its absolute path on the build machine (`/root/.cargo/registry/…`): a
/// short SC0999 diagnostic, the place relative to its crate, and the
/// message with absolute paths left out. The exit status stays 101. A panic
/// on the evaluation thread is also reported by `eval` as SC0999.
fn panic_hook(info: &std::panic::PanicHookInfo<'_>) {
    let payload = info
        .payload()
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| info.payload().downcast_ref::<String>().cloned())
        .unwrap_or_default();
    let at = info
        .location()
        .map(|l| format!(" at {}:{}:{}", source_place(l.file()), l.line(), l.column()))
        .unwrap_or_default();
    let thread = match std::thread::current().name() {
        Some("main") | None => String::new(),
        Some(name) => format!(" (thread `{}`)", diag::escape(name)),
    };
    let mut message = diag::escape(&without_absolute_paths(&payload)).into_owned();
    if message.chars().count() > 300 {
        message = message.chars().take(300).collect::<String>() + "…";
    }
    let _ = writeln!(
        std::io::stderr().lock(),
        "{}\n\n  × internal error: stackc panicked{thread}{at}: {message}\n  help: this is a bug in stackc: please report it; `stackc explain {}` says what to include\n",
        Code::Internal,
        Code::Internal,
    );
}

/// A source file named in a panic location, without the build machine's
/// directories: stackc's own files are relative already
/// (`compiler/src/diag.rs`); a dependency's is shown from its crate
/// directory (`miette-7.6.0/src/…`), the standard library's from
/// `library/`, anything else by its file name.
fn source_place(file: &str) -> String {
    let path = Path::new(file);
    if !path.is_absolute() {
        return file.to_owned();
    }
    let parts: Vec<&str> = file.split('/').filter(|p| !p.is_empty()).collect();
    let is_crate_dir = |p: &&str| {
        p.rsplit_once('-').is_some_and(|(name, version)| {
            !name.is_empty() && version.starts_with(|c: char| c.is_ascii_digit()) && version.contains('.')
        })
    };
    let from = parts
        .iter()
        .rposition(is_crate_dir)
        .or_else(|| parts.iter().rposition(|p| *p == "library"));
    match from {
        Some(i) => parts[i..].join("/"),
        None => format!("<…>/{}", parts.last().copied().unwrap_or_default()),
    }
}

/// `text` with every absolute path (a `/` at the start of a word, followed
/// by more of the path) replaced by `<path>`.
fn without_absolute_paths(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    let mut prev: Option<char> = None;
    while let Some(c) = rest.chars().next() {
        let starts_word = prev.is_none_or(|p| p.is_whitespace() || "\"'`([{<=:,".contains(p));
        if c == '/' && starts_word {
            let mut end = rest
                .find(|ch: char| ch.is_whitespace() || "\"'`)]}>,".contains(ch))
                .unwrap_or(rest.len());
            // Punctuation after a path is the sentence's.
            end = rest[..end].trim_end_matches([':', ';', '.', '!', '?']).len().max(1);
            if rest[1..end].contains(|ch: char| ch.is_alphanumeric()) {
                out.push_str("<path>");
                prev = rest[..end].chars().last();
                rest = &rest[end..];
                continue;
            }
        }
        out.push(c);
        prev = Some(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// Prints findings to stderr, then a one-line summary; returns the status.
fn report(diags: &[Diagnostic], color: bool, what_happened: &str) -> u8 {
    let mut err = std::io::stderr().lock();
    for d in diags {
        let _ = write!(err, "{}", diag::render_human(d, color));
        let _ = writeln!(err);
    }
    let n = diags.len();
    let _ = writeln!(
        err,
        "error: {n} finding{}; {what_happened}",
        if n == 1 { "" } else { "s" }
    );
    diag::exit_status(diags).max(1)
}

/// Prints warnings to stderr: findings that did not stop the build.
fn warn(diags: &[Diagnostic], color: bool) {
    let mut err = std::io::stderr().lock();
    for d in diags {
        let _ = write!(err, "{}", diag::render_human(d, color));
        let _ = writeln!(err);
    }
}

struct BuildRequest<'a> {
    file: &'a Path,
    output: Option<&'a Path>,
    format: OutputFormat,
    machine: Option<&'a str>,
    check: bool,
    keys: &'a KeyArgs,
    placeholders: bool,
    root: Option<&'a Path>,
    quiet: bool,
    eval_cache: Option<&'a crate::cache::EvalCache>,
}

fn build(req: &BuildRequest, cache: &dyn crate::secrets::Cache, color: bool) -> u8 {
    let keys = if req.placeholders {
        Keys {
            key: None,
            identities: None,
            path: None,
        }
    } else {
        match req.keys.load_for(&[req.file], req.quiet) {
            Ok(k) => k,
            Err(d) => return report(&[d], color, "nothing written"),
        }
    };
    let key_path = keys.path.clone();
    let keying = match (keys.key, req.placeholders) {
        (_, true) => Keying::Placeholder,
        (Some(k), false) => Keying::Master(k),
        (None, false) => {
            let d = Diagnostic::error(Code::NoSecretsKey, "no master key: secrets cannot be derived")
                .with_help("create one with `stackc secrets init` beside the stack file (.stackc/master.key, found without a flag), pass --secrets-key FILE (or set STACKC_SECRETS_KEY, or --secrets-key-command), or use --placeholder-secrets for a review build");
            return report(&[d], color, "nothing written");
        }
    };
    if req.machine.is_some() && req.format == OutputFormat::Dir {
        let d = Diagnostic::error(Code::Io, "--machine needs --format tar or json")
            .with_help("a bundle directory holds every machine: write one machine's folder as a tar or JSON stream");
        return report(&[d], color, "nothing written").max(2);
    }
    let opts = crate::Options {
        limits: limits(),
        project_root: req.root,
        keying: &keying,
        identities: keys.identities.as_ref(),
        cache,
        machine: req.machine,
        eval_cache: req.eval_cache,
    };
    let compiled = match crate::compile(req.file, &opts) {
        Ok(c) => c,
        Err(diags) => return report(&diags, color, "nothing written"),
    };
    warn(&compiled.warnings, color);
    let default_dir = PathBuf::from("out");
    let external: Vec<String> = compiled.secrets.inputs.keys().cloned().collect();
    let inputs = build_inputs(req, key_path.as_deref(), &compiled.manifest, &external);
    if req.check {
        return check_bundle(
            req.output.unwrap_or(&default_dir),
            &compiled,
            req.placeholders,
            req.quiet,
            color,
        );
    }
    // A tar of one machine holds its folder's contents, ready to unpack at
    // the machine's deploy_root; otherwise the whole bundle with its manifest.
    let (files, manifest) = match req.machine {
        Some(m) if req.format != OutputFormat::Dir => {
            let prefix = format!("{m}/");
            let files: crate::render::Rendered = compiled
                .files
                .iter()
                .filter_map(|(p, f)| p.strip_prefix(&prefix).map(|rel| (rel.to_owned(), f.clone())))
                .collect();
            (files, None)
        }
        _ => (compiled.files.clone(), Some(compiled.manifest.as_slice())),
    };
    let stream = match req.format {
        OutputFormat::Dir => None,
        OutputFormat::Json => Some(crate::archive::json(&files, manifest).into_bytes()),
        OutputFormat::Tar => {
            let mtime = match source_date_epoch() {
                Ok(t) => t,
                Err(d) => return report(&[d], color, "nothing written"),
            };
            match crate::archive::tar(&files, manifest, mtime) {
                Ok(t) => Some(t),
                Err(e) => return report(&[Diagnostic::error(Code::UnsafePath, e)], color, "nothing written"),
            }
        }
    };
    match stream {
        Some(bytes) => {
            let secret = files.values().any(|f| f.secret);
            let written = match req.output {
                Some(path) => match crate::bundle::write_stream(path, &bytes, secret, &inputs) {
                    Ok(()) => Ok(()),
                    Err(d) => return report(&[d], color, "nothing written"),
                },
                None if req.format == OutputFormat::Tar && std::io::stdout().is_terminal() => {
                    let d = Diagnostic::error(Code::Io, "refusing to write a tar archive to a terminal")
                        .with_help("redirect standard output, or pass -o FILE");
                    return report(&[d], color, "nothing written");
                }
                None => emit(&bytes),
            };
            if let Err(e) = written {
                return report(
                    &[Diagnostic::error(Code::Io, format!("cannot write the bundle: {e}"))],
                    color,
                    "the output may be incomplete",
                );
            }
        }
        None => {
            let out = req.output.unwrap_or(&default_dir);
            // Test hooks (tests/README.md): the fallback swap, and a kill in it.
            let set = |v: &str| std::env::var_os(v).is_some_and(|s| s == "1");
            let hooks = crate::bundle::TestHooks {
                no_exchange: set("STACKC_TEST_NO_EXCHANGE"),
                abort_mid_swap: set("STACKC_TEST_ABORT_MID_SWAP"),
            };
            if let Err(d) = crate::bundle::write(out, &compiled.files, &compiled.manifest, &inputs, &hooks) {
                return report(&[d], color, "the previous bundle, if any, is untouched");
            }
            if !req.quiet {
                let machines = compiled.stack.machines.len();
                eprintln!(
                    "wrote {} ({} file{} for {} machine{}{})",
                    out.display(),
                    compiled.files.len(),
                    if compiled.files.len() == 1 { "" } else { "s" },
                    machines,
                    if machines == 1 { "" } else { "s" },
                    if req.placeholders { ", placeholder secrets" } else { "" },
                );
            }
        }
    }
    0
}

/// The files this build read, which its output must never replace: the
/// stack file, every project file Nickel read (listed in the manifest,
/// relative to the project directory) and the master key.
fn build_inputs(
    req: &BuildRequest,
    key: Option<&Path>,
    manifest: &[u8],
    external: &[String],
) -> Vec<crate::bundle::Input> {
    use crate::bundle::Input;
    let mut inputs = vec![Input {
        path: req.file.to_path_buf(),
        what: "the stack file".into(),
    }];
    if let Some(key) = key {
        inputs.push(Input {
            path: key.to_path_buf(),
            what: "the master key".into(),
        });
    }
    if let Some(id) = &req.keys.identity {
        inputs.push(Input {
            path: id.clone(),
            what: "the age identity".into(),
        });
    }
    let root = match req.root {
        Some(r) => r.to_path_buf(),
        None => match req.file.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        },
    };
    let manifest: serde_json::Value = serde_json::from_slice(manifest).unwrap_or_default();
    let listed = manifest["inputs"]["files"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f["path"].as_str());
    for p in listed.chain(external.iter().map(String::as_str)) {
        inputs.push(Input {
            path: root.join(p),
            what: format!("a file the stack reads (`{}`)", diag::escape(p)),
        });
    }
    inputs
}

/// Data to standard output. A closed pipe (`stackc diff … | head`) is the
/// reader's choice, not an error.
fn emit(bytes: &[u8]) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// SOURCE_DATE_EPOCH (reproducible-builds.org) for tar mtimes; 0 if unset.
fn source_date_epoch() -> Result<u64, Diagnostic> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Err(_) => Ok(0),
        Ok(v) => v.trim().parse().map_err(|_| {
            Diagnostic::error(Code::Io, format!("SOURCE_DATE_EPOCH is `{v}`, not a number of seconds"))
                .with_help("set it to a Unix timestamp, such as `git log -1 --format=%ct`, or unset it")
        }),
    }
}

/// `build --check`: is the bundle on disk what this build would write?
/// With placeholder secrets, secret files are compared by presence only.
fn check_bundle(dir: &Path, compiled: &crate::Compiled, placeholders: bool, quiet: bool, color: bool) -> u8 {
    let on_disk = match crate::bundle::read(dir) {
        Ok(b) => b,
        Err(d) => return report(&[d], color, "nothing compared"),
    };
    let mut stale = Vec::new();
    for (path, f) in &compiled.files {
        match on_disk.get(path) {
            None => stale.push(format!("missing: {path}")),
            Some(old) if f.secret && placeholders => {
                if !old.secret {
                    stale.push(format!("not marked secret: {path}"));
                }
            }
            Some(old) if old.bytes != f.bytes || old.mode != f.mode => stale.push(format!("differs: {path}")),
            Some(_) => {}
        }
    }
    for path in on_disk.keys().filter(|p| !compiled.files.contains_key(*p)) {
        stale.push(format!("not built any more: {path}"));
    }
    // The manifest (addresses, units, input hashes) is compared too. Its
    // secret digests only match for the same keying: with placeholders
    // against a bundle built with a key, it cannot be compared.
    let on_disk_manifest = std::fs::read(dir.join(crate::bundle::MANIFEST)).unwrap_or_default();
    let disk_placeholders = serde_json::from_slice::<serde_json::Value>(&on_disk_manifest)
        .map(|v| v["secrets"]["placeholders"] == true)
        .unwrap_or(false);
    if (!placeholders || disk_placeholders) && on_disk_manifest != compiled.manifest {
        stale.push(format!("differs: {}", crate::bundle::MANIFEST));
    }
    if stale.is_empty() {
        if !quiet {
            eprintln!("ok: {} is up to date", dir.display());
        }
        return 0;
    }
    for s in &stale {
        eprintln!("{s}");
    }
    eprintln!(
        "error: {} is out of date ({} file{}); run `stackc build` to update it",
        dir.display(),
        stale.len(),
        if stale.len() == 1 { "" } else { "s" }
    );
    1
}

fn check(
    file: &Path,
    format: CheckFormat,
    root: Option<&Path>,
    eval_cache: Option<&crate::cache::EvalCache>,
    quiet: bool,
    color: bool,
) -> u8 {
    // Placeholders exercise the whole pipeline (resolve, render, verify)
    // without a key; nothing is written.
    let opts = crate::Options {
        limits: limits(),
        project_root: root,
        keying: &Keying::Placeholder,
        identities: None,
        cache: &crate::secrets::NoCache,
        machine: None,
        eval_cache,
    };
    let result = crate::compile(file, &opts);
    let machine = |render: fn(&[Diagnostic]) -> String, r: Result<crate::Compiled, Vec<Diagnostic>>| {
        let failed = r.is_err();
        let diags = match r {
            Ok(c) => c.warnings,
            Err(d) => d,
        };
        let _ = emit(render(&diags).as_bytes());
        if failed { diag::exit_status(&diags).max(1) } else { 0 }
    };
    match (format, result) {
        (CheckFormat::Json, r) => machine(diag::render_json, r),
        (CheckFormat::Github, r) => machine(diag::render_github, r),
        (CheckFormat::Sarif, r) => machine(diag::render_sarif, r),
        (CheckFormat::Human, Ok(c)) => {
            warn(&c.warnings, color);
            if !quiet {
                let machines = c.stack.machines.len();
                eprintln!(
                    "ok: `{}`, {machines} machine{}, {} file{}",
                    diag::escape(&c.stack.name),
                    if machines == 1 { "" } else { "s" },
                    c.files.len(),
                    if c.files.len() == 1 { "" } else { "s" }
                );
            }
            0
        }
        (CheckFormat::Human, Err(diags)) => report(&diags, color, "the stack does not build"),
    }
}

fn plan(file: &Path, root: Option<&Path>, color: bool) -> u8 {
    let opts = crate::Options {
        identities: None,
        limits: limits(),
        project_root: root,
        keying: &Keying::Placeholder,
        cache: &crate::secrets::NoCache,
        machine: None,
        eval_cache: None,
    };
    match crate::compile(file, &opts) {
        Ok(c) => {
            let _ = emit(crate::plan::markdown(&c).as_bytes());
            0
        }
        Err(diags) => report(&diags, color, "the stack does not build"),
    }
}

fn diff(old: &str, new: &str, stat: bool, name_only: bool, format: Format, keys: &KeyArgs, color: bool) -> u8 {
    // A side that is a stack file (in the working tree or at a revision)
    // names the project whose key is looked for.
    let stacks: Vec<&Path> = [old, new]
        .iter()
        .map(|s| match s.strip_prefix("git:").and_then(|r| r.split_once(':')) {
            Some((_, path)) => Path::new(path),
            None => Path::new(*s),
        })
        .filter(|p| !p.is_dir())
        .collect();
    let keys = match keys.load_for(&stacks, false) {
        Ok(k) => k,
        Err(d) => return report(&[d], color, "nothing compared"),
    };
    let keying = match keys.key {
        Some(k) => Keying::Master(k),
        None => Keying::Placeholder,
    };
    let ids = keys.identities.as_ref();
    let side = |spec: &str| -> Result<crate::render::Rendered, Vec<Diagnostic>> { diff_side(spec, &keying, ids) };
    // One side after the other: a side stopped by its evaluation budget
    // leaves its thread halted (possibly holding Nickel's global interner),
    // so the other is not evaluated after it.
    let a = match side(old) {
        Ok(a) => a,
        Err(d) => return report(&d, color, "nothing compared").max(2),
    };
    let b = match side(new) {
        Ok(b) => b,
        Err(d) => return report(&d, color, "nothing compared").max(2),
    };
    let d = crate::diff::diff(&a, &b);
    let text = match (format, stat, name_only) {
        (Format::Json, _, _) => crate::diff::render_json(&d),
        (_, true, _) => crate::diff::render_stat(&d),
        (_, _, true) => crate::diff::render_name_only(&d),
        _ => crate::diff::render_human(&d, color && std::io::stdout().is_terminal()),
    };
    if let Err(e) = emit(text.as_bytes()) {
        eprintln!("error: cannot write the diff: {e}");
        return 2;
    }
    if d.is_empty() { 0 } else { 1 }
}

/// One side of a diff, as bundle files.
fn diff_side(
    spec: &str,
    keying: &Keying,
    identities: Option<&crate::secrets::external::Identities>,
) -> Result<crate::render::Rendered, Vec<Diagnostic>> {
    let build = |entry: &Path, root: Option<&Path>| {
        let opts = crate::Options {
            limits: limits(),
            project_root: root,
            keying,
            identities,
            cache: &crate::secrets::NoCache,
            machine: None,
            eval_cache: None,
        };
        crate::compile(entry, &opts).map(|c| c.files)
    };
    if let Some(rest) = spec.strip_prefix("git:") {
        let (rev, path) = parse_git_side(spec, rest)?;
        let tree = GitTree::export(rev)?;
        let entry = tree.dir.join(path);
        return build(&entry, None);
    }
    let p = Path::new(spec);
    if p.is_dir() {
        return crate::bundle::read(p).map_err(|d| vec![d]);
    }
    build(p, None)
}

/// `git:REV:PATH` → (REV, PATH), or SC0903. A revision is handed to git,
/// so one that git could read as an option (`--output=FILE`) is refused
/// here, before git runs; git also gets `--end-of-options` before it.
fn parse_git_side<'a>(spec: &str, rest: &'a str) -> Result<(&'a str, &'a str), Vec<Diagnostic>> {
    let refuse = |what: String, help: &str| vec![Diagnostic::error(Code::DiffSide, what).with_help(help)];
    let shown = diag::escape(spec);
    let (rev, path) = rest.split_once(':').ok_or_else(|| {
        refuse(
            format!("`{shown}` is not `git:REV:path/to/stack.ncl`"),
            "name a revision and the stack file's path in it, as in `git:HEAD~1:prod.ncl`",
        )
    })?;
    if rev.is_empty() || rev.starts_with('-') {
        return Err(refuse(
            format!(
                "`{}` is not a revision: a revision cannot be empty or start with `-`",
                diag::escape(rev)
            ),
            "name a commit, branch or tag (`HEAD~1`, `main`, `v1.2`); a revision starting with `-` would be read by git as an option",
        ));
    }
    if path.is_empty()
        || Path::new(path).is_absolute()
        || Path::new(path)
            .components()
            .any(|c| c == std::path::Component::ParentDir)
    {
        return Err(refuse(
            format!(
                "`{}` must be a path inside the repository, relative to its top directory",
                diag::escape(path)
            ),
            "give the stack file's path as git shows it, as in `git:HEAD:deploy/prod.ncl`",
        ));
    }
    Ok((rev, path))
}

/// A revision of the current git repository, exported to a temporary
/// directory (removed on drop) so its stack can be built as it was.
struct GitTree {
    dir: PathBuf,
}

impl GitTree {
    fn export(rev: &str) -> Result<GitTree, Vec<Diagnostic>> {
        use std::process::{Command, Stdio};
        let fail = |what: String| {
            vec![
                Diagnostic::error(Code::Io, what)
                    .with_help("run stackc diff inside the git repository that holds the stack"),
            ]
        };
        let top = Command::new("git")
            .args(["rev-parse", "--show-toplevel"])
            .output()
            .map_err(|e| fail(format!("cannot run git: {e}")))?;
        if !top.status.success() {
            return Err(fail("not inside a git repository".into()));
        }
        let top = PathBuf::from(String::from_utf8_lossy(&top.stdout).trim());
        // `create_dir` fails on anything already there (a symlink included),
        // so the directory is ours; a counter makes names unique per process.
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("stackc-diff-{}-{n}", std::process::id()));
        // The path is the build machine's: not shown, only where it was.
        std::fs::create_dir(&dir).map_err(|e| {
            fail(format!(
                "cannot create a temporary directory for `{shown_rev}` (in TMPDIR): {e}",
                shown_rev = diag::escape(rev)
            ))
        })?;
        let tree = GitTree { dir };
        // The revision is user input: `--end-of-options` (git ≥ 2.24) keeps
        // git from reading it as an option, whatever `parse_git_side` let
        // through, and only the object id it resolves to reaches `archive`.
        let shown = diag::escape(rev);
        let tree_id = Command::new("git")
            .args(["rev-parse", "--verify", "--quiet", "--end-of-options"])
            .arg(format!("{rev}^{{tree}}"))
            .current_dir(&top)
            .output()
            .map_err(|e| fail(format!("cannot run git rev-parse: {e}")))?;
        let tree_id = String::from_utf8_lossy(&tree_id.stdout).trim().to_owned();
        if tree_id.is_empty() || !tree_id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(fail(format!("`{shown}` is not a revision of this repository")));
        }
        let archive = Command::new("git")
            .args(["archive", "--format=tar", "--end-of-options", &tree_id])
            .current_dir(&top)
            .output()
            .map_err(|e| fail(format!("cannot run git archive: {e}")))?;
        if !archive.status.success() {
            return Err(fail(format!(
                "git archive {shown}: {}",
                diag::escape(String::from_utf8_lossy(&archive.stderr).trim())
            )));
        }
        let mut tar = Command::new("tar")
            .args(["-x", "-C"])
            .arg(&tree.dir)
            .stdin(Stdio::piped())
            .spawn()
            .map_err(|e| fail(format!("cannot run tar: {e}")))?;
        tar.stdin
            .take()
            .expect("piped")
            .write_all(&archive.stdout)
            .map_err(|e| fail(format!("tar: {e}")))?;
        if !tar.wait().map(|s| s.success()).unwrap_or(false) {
            return Err(fail(format!("cannot unpack revision `{shown}`")));
        }
        Ok(tree)
    }
}

impl Drop for GitTree {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn explain(code: &str) -> u8 {
    let Some(c) = Code::parse(code) else {
        eprintln!("error: `{code}` is not a stackc diagnostic code");
        eprintln!("help: codes look like SC0201; run `stackc explain` to list them");
        return 2;
    };
    let page = crate::load::DIAGNOSTIC_PAGES
        .iter()
        .find(|(name, _)| name.trim_end_matches(".md") == c.as_str())
        .map(|(_, text)| *text);
    match page {
        Some(text) => {
            let _ = emit(text.as_bytes());
            0
        }
        None => {
            eprintln!("error: no page for {c} ({}); this is a bug", c.title());
            2
        }
    }
}

pub(crate) fn secrets_init(path: &Path, color: bool) -> u8 {
    match init::write_new_key(path) {
        Ok(()) => {
            eprintln!(
                "wrote master key {} (mode 0600): keep it out of git, and back it up",
                path.display()
            );
            0
        }
        Err(e) => {
            let d = Diagnostic::error(Code::Io, format!("cannot create `{}`: {e}", path.display()))
                .with_help("secrets init never overwrites a key: every secret is derived from it");
            let _ = write!(std::io::stderr(), "{}", diag::render_human(&d, color));
            2
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panic_places_name_no_directory_of_the_build_machine() {
        assert_eq!(source_place("compiler/src/diag.rs"), "compiler/src/diag.rs");
        assert_eq!(
            source_place(
                "/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/miette-7.6.0/src/handlers/graphical.rs"
            ),
            "miette-7.6.0/src/handlers/graphical.rs"
        );
        assert_eq!(
            source_place("/rustc/59807616e1fa2540724bfbac14d7976d7e4a3860/library/core/src/fmt/rt.rs"),
            "library/core/src/fmt/rt.rs"
        );
        assert_eq!(source_place("/home/me/src/thing.rs"), "<…>/thing.rs");
    }

    #[test]
    fn panic_messages_lose_absolute_paths() {
        assert_eq!(
            without_absolute_paths("cannot open /home/me/.ssh/id_rsa: denied"),
            "cannot open <path>: denied"
        );
        assert_eq!(
            without_absolute_paths("at \"/tmp/x\" and (/etc/passwd), 1/2 and a/b stay, / too"),
            "at \"<path>\" and (<path>), 1/2 and a/b stay, / too"
        );
    }
}
