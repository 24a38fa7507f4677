//! `stackc init`: a new project in a directory — a commented `prod.ncl`
//! that builds as it is, the master key where build finds it, `.gitignore`,
//! a pre-commit configuration and the guide to the secrets folder. From a
//! template (one service, the Matrix stack) or from a docker compose file.
//! Nothing is overwritten: if any file it would write exists, it writes none.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clap::ValueEnum;

use crate::diag::{self, Code, Diagnostic};

/// Where `stackc secrets init` writes a new key and where build, diff and
/// `secrets show` look for one: relative to the stack file's directory.
pub(crate) const KEY_PATH: &str = ".stackc/master.key";

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum Template {
    /// One container behind Caddy with automatic HTTPS.
    Service,
    /// Synapse, MAS, Element Web, Authelia, PostgreSQL and Caddy on one machine.
    Matrix,
}

pub(crate) fn run(dir: &Path, template: Template, from: Option<&Path>, name: Option<&str>, color: bool) -> u8 {
    let fail = |d: Diagnostic| {
        eprint!("{}", diag::render_human(&d, color));
        eprintln!("error: 1 finding; nothing written");
        diag::exit_status(std::slice::from_ref(&d)).max(1)
    };
    let name = match name {
        Some(n) => n.to_owned(),
        None => default_name(dir),
    };
    let stack = match from {
        None => match template {
            Template::Service => include_str!("../../templates/service.ncl"),
            Template::Matrix => include_str!("../../templates/matrix.ncl"),
        }
        .replace("@NAME@", &nickel_string(&name)),
        Some(compose) => match from_compose(compose, &name) {
            Ok(text) => text,
            Err(d) => return fail(d),
        },
    };
    let files: Vec<(&str, String)> = vec![
        ("prod.ncl", stack),
        (".gitignore", GITIGNORE.to_owned()),
        (".pre-commit-config.yaml", PRE_COMMIT.to_owned()),
        ("secrets/README.md", SECRETS_README.to_owned()),
    ];
    let mut taken: Vec<String> = files
        .iter()
        .map(|(p, _)| *p)
        .chain([KEY_PATH])
        .filter(|p| std::fs::symlink_metadata(dir.join(p)).is_ok())
        .map(|p| format!("`{}`", diag::escape(p)))
        .collect();
    taken.sort();
    if !taken.is_empty() {
        return fail(
            Diagnostic::error(
                Code::InitExists,
                format!("`{}` already holds {}", diag::escape(&dir.display().to_string()), taken.join(", ")),
            )
            .with_help("stackc init writes only into a directory that has none of its files: choose another directory, or move those files away"),
        );
    }
    let written = (|| -> std::io::Result<()> {
        std::fs::create_dir_all(dir.join("secrets"))?;
        for (path, text) in &files {
            write_new(&dir.join(path), text.as_bytes(), 0o644)?;
        }
        write_new_key(&dir.join(KEY_PATH))
    })();
    if let Err(e) = written {
        return fail(Diagnostic::error(
            Code::Io,
            format!(
                "cannot write the project into `{}`: {e}",
                diag::escape(&dir.display().to_string())
            ),
        ));
    }
    let shown = dir.display();
    eprintln!("wrote {shown}/prod.ncl, .gitignore, .pre-commit-config.yaml, secrets/README.md");
    eprintln!("wrote master key {shown}/{KEY_PATH} (mode 0600): git ignores it; back it up");
    let cd = if dir == Path::new(".") {
        String::new()
    } else {
        format!("cd {shown} && ")
    };
    eprintln!("next: {cd}stackc check prod.ncl && stackc build prod.ncl");
    0
}

/// The stack's name: the directory's, in lower case letters, digits and `-`.
fn default_name(dir: &Path) -> String {
    let abs = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    let raw = abs
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut name: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    name = name.trim_matches('-').to_owned();
    if name.is_empty() { "my-stack".into() } else { name }
}

/// Creates `path` (never replacing a file) with `mode`.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// A new master key at `path`, mode 0600: 32 bytes from `/dev/urandom` in
/// base64. Its directory is created (0700) if missing; a `.stackc`
/// directory gets a `.gitignore` of its own, so git ignores the key in any
/// project. Never replaces a file.
pub(crate) fn write_new_key(path: &Path) -> std::io::Result<()> {
    use base64::Engine as _;
    use std::os::unix::fs::DirBuilderExt;
    let mut key = [0u8; crate::secrets::KEY_LEN];
    // The one place stackc uses OS randomness: a new master key.
    std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut key))?;
    let text = format!("{}\n", base64::engine::general_purpose::STANDARD.encode(key));
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.exists() {
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(parent)?;
        }
        let ignore = parent.join(".gitignore");
        if parent.file_name().is_some_and(|n| n == ".stackc") && std::fs::symlink_metadata(&ignore).is_err() {
            write_new(&ignore, b"# stackc: the master key never goes into git\n*\n", 0o644)?;
        }
    }
    write_new(path, text.as_bytes(), 0o600)
}

/// The key `build`, `diff` and `secrets show` use when none is given: the
/// project's `.stackc/master.key` beside the stack file, if there is one.
pub(crate) fn discover_key(stack_file: &Path) -> Option<PathBuf> {
    let key = match stack_file.parent() {
        Some(p) if !p.as_os_str().is_empty() && p != Path::new(".") => p.join(KEY_PATH),
        _ => PathBuf::from(KEY_PATH),
    };
    std::fs::symlink_metadata(&key).is_ok().then_some(key)
}

const GITIGNORE: &str = "\
# stackc: the master key and the bundles built with it stay out of git.
/.stackc/
/out/
";

const PRE_COMMIT: &str = "\
# pre-commit (https://pre-commit.com): `pre-commit install` once, then every
# commit runs `stackc check` on the stack (the stackc on PATH). stackc's own
# repository also ships the hooks `stackc-check` and `stackc-bundle-up-to-date`
# (see stackc's docs/pre-commit.md).
repos:
  - repo: local
    hooks:
      - id: stackc-check
        name: stackc check
        entry: stackc check prod.ncl
        language: system
        pass_filenames: false
        files: '\\.ncl$|^secrets/'
";

const SECRETS_README: &str = "\
# secrets/

Most secrets of this stack are *derived* from the master key
(`.stackc/master.key`, never committed): `stackc.secret.password { name = … }`
and its siblings in prod.ncl. Nothing needs to be stored for them.

Secrets stackc cannot derive — an SMTP password, a token another service
issued — are *external*: `stackc.secret.external { name = \"smtp-password\" }`
in prod.ncl, and their values live here, age-encrypted, committed:

1. Make an age identity once per operator: `age-keygen -o ~/.config/age/me.txt`.
2. Put its public key (`age-keygen -y ~/.config/age/me.txt`, a line `age1…`) in
   `secrets/recipients.txt`, one recipient per line (`#` starts a comment).
   Never put an `AGE-SECRET-KEY-…` line there.
3. `printf '%s' \"$VALUE\" | stackc secrets add prod.ncl smtp-password` writes
   `secrets/smtp-password.age`.
4. Build with `--identity ~/.config/age/me.txt` (or `STACKC_AGE_IDENTITY`).

`stackc secrets list prod.ncl` shows every secret and where it comes from.
";

/// `s` as a Nickel string literal.
fn nickel_string(s: &str) -> String {
    let mut out = String::from("\"");
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '%' if chars.peek() == Some(&'{') => out.push_str("\\%"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A record field name: bare when Nickel reads it as an identifier.
fn field(name: &str) -> String {
    const KEYWORDS: &[&str] = &[
        "let",
        "in",
        "if",
        "then",
        "else",
        "fun",
        "import",
        "null",
        "true",
        "false",
        "match",
        "forall",
        "rec",
        "default",
        "doc",
        "optional",
        "priority",
        "force",
        "not_exported",
        "include",
    ];
    let ident = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && !KEYWORDS.contains(&name);
    if ident { name.to_owned() } else { nickel_string(name) }
}

/// Does an environment variable of this name hold a secret?
fn looks_secret(var: &str) -> bool {
    let upper = var.to_ascii_uppercase();
    if upper.ends_with("_FILE") {
        return false; // a path to a secret, not the secret
    }
    upper.split('_').any(|part| {
        ["PASSWORD", "PASSWD", "SECRET", "TOKEN"]
            .iter()
            .any(|w| part.contains(w))
            || part.ends_with("KEY")
            || part == "PASS"
            || part == "PWD"
    })
}

fn text(v: &yaml_serde::Value) -> Option<String> {
    match v {
        yaml_serde::Value::String(s) => Some(s.clone()),
        yaml_serde::Value::Number(n) => Some(n.to_string()),
        yaml_serde::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn compose_error(file: &Path, why: impl std::fmt::Display) -> Diagnostic {
    Diagnostic::error(
        Code::ComposeUnreadable,
        format!(
            "`{}` cannot be read as a docker compose file: {why}",
            diag::escape(&file.display().to_string())
        ),
    )
    .with_help("give a compose file with a top-level `services:` mapping (as `docker compose config` prints it)")
}

/// One published port of a compose service.
struct Published {
    host: u16,
    container: u16,
    bind: Option<String>,
    udp: bool,
}

fn parse_port(v: &yaml_serde::Value) -> Result<Published, String> {
    if let yaml_serde::Value::Mapping(m) = v {
        let get = |k: &str| m.get(k).and_then(text);
        let container = get("target").and_then(|t| t.parse().ok()).ok_or("no `target`")?;
        let host = get("published").map_or(Ok(container), |p| p.parse().map_err(|_| "a `published` range"))?;
        return Ok(Published {
            host,
            container,
            bind: get("host_ip"),
            udp: get("protocol").as_deref() == Some("udp"),
        });
    }
    let s = text(v).ok_or("not a string")?;
    let (spec, proto) = s.split_once('/').unwrap_or((&s, "tcp"));
    let parts: Vec<&str> = spec.rsplitn(3, ':').collect();
    let num = |p: &str| p.parse::<u16>().map_err(|_| format!("`{p}` is not a single port"));
    let (host, container, bind) = match parts.as_slice() {
        [c] => return Err(format!("`{c}` has no host port (compose picks one at random)")),
        [c, h] => (num(h)?, num(c)?, None),
        [c, h, ip] => (num(h)?, num(c)?, Some(ip.trim_matches(['[', ']']).to_owned())),
        _ => return Err("empty".into()),
    };
    Ok(Published {
        host,
        container,
        bind,
        udp: proto == "udp",
    })
}

/// A first `prod.ncl` from a compose file: services, images, published
/// ports, volumes, environment, commands, dependencies, health checks.
/// Values of secret-looking variables are never copied: each becomes a
/// derived secret (one per distinct value, so services that shared a
/// password still share one).
fn from_compose(file: &Path, name: &str) -> Result<String, Diagnostic> {
    use yaml_serde::Value;
    let raw = std::fs::read_to_string(file).map_err(|e| {
        Diagnostic::error(
            Code::Io,
            format!("cannot read `{}`: {e}", diag::escape(&file.display().to_string())),
        )
    })?;
    let doc: Value = yaml_serde::from_str(&raw).map_err(|e| compose_error(file, e))?;
    let Some(Value::Mapping(services)) = doc.get("services") else {
        return Err(compose_error(file, "it has no `services:` mapping"));
    };
    let services: BTreeMap<String, &Value> = services.iter().filter_map(|(k, v)| Some((text(k)?, v))).collect();
    if services.is_empty() {
        return Err(compose_error(file, "it has no services"));
    }
    let shown = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Secret values, by value: the name of the secret each became.
    let mut secret_names: BTreeMap<String, String> = BTreeMap::new();
    let mut lets = String::new();
    let mut body = String::new();
    for (svc, def) in &services {
        let mut notes: Vec<String> = Vec::new();
        let Some(image) = def.get("image").and_then(text) else {
            let _ = writeln!(
                body,
                "    # `{}` has no `image` (it is built): push the image it builds, then add it here.",
                svc.replace('\n', " ")
            );
            continue;
        };
        let _ = writeln!(body, "    {} = {{", field(svc));
        let _ = writeln!(body, "      image = {},", nickel_string(&image));
        match def.get("command") {
            Some(Value::Sequence(args)) => {
                let args: Vec<String> = args.iter().filter_map(text).map(|a| nickel_string(&a)).collect();
                let _ = writeln!(body, "      command = [{}],", args.join(", "));
            }
            Some(Value::String(s)) if !s.contains(['"', '\'', '\\', '$']) => {
                let args: Vec<String> = s.split_whitespace().map(nickel_string).collect();
                let _ = writeln!(body, "      command = [{}],", args.join(", "));
            }
            Some(_) => notes.push("`command` (quoted shell words: write it as a list)".into()),
            None => {}
        }
        // Environment: a mapping or a list of `NAME=value`.
        let mut env: BTreeMap<String, Option<String>> = BTreeMap::new();
        match def.get("environment") {
            Some(Value::Mapping(m)) => {
                for (k, v) in m {
                    if let Some(k) = text(k) {
                        env.insert(k, text(v));
                    }
                }
            }
            Some(Value::Sequence(items)) => {
                for item in items.iter().filter_map(text) {
                    match item.split_once('=') {
                        Some((k, v)) => env.insert(k.to_owned(), Some(v.to_owned())),
                        None => env.insert(item, None),
                    };
                }
            }
            _ => {}
        }
        let mut plain = Vec::new();
        let mut secret = Vec::new();
        for (k, v) in &env {
            if looks_secret(k) {
                let value = v.clone().unwrap_or_else(|| format!("\u{0}{svc}\u{0}{k}"));
                let next: String = format!("{svc}-{k}")
                    .to_ascii_lowercase()
                    .chars()
                    .map(|c| {
                        if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                            c
                        } else {
                            '-'
                        }
                    })
                    .collect();
                let next = next.trim_matches(['-', '.']).to_owned();
                let count = secret_names.len() + 1;
                let secret_name = secret_names.entry(value).or_insert_with(|| {
                    let binding = format!("secret_{count}");
                    let _ = writeln!(
                        lets,
                        "# `{k}` of `{svc}` was set in {shown}: its value is not copied here. A password\n# derived from the master key takes its place; if it must stay the value it\n# was (a token another service issued), use\n# `stackc.secret.external {{ name = {n} }}` and `stackc secrets add prod.ncl {next}`.\nlet {binding} = stackc.secret.password {{ name = {n} }} in",
                        k = k.replace('\n', " "),
                        svc = svc.replace('\n', " "),
                        n = nickel_string(&next),
                    );
                    binding
                });
                secret.push(format!("        {} = {secret_name},", field(k)));
            } else if let Some(v) = v {
                plain.push(format!("        {} = {},", field(k), nickel_string(v)));
            } else {
                notes.push(format!("`{k}` (taken from the shell's environment by compose)"));
            }
        }
        if !plain.is_empty() {
            let _ = writeln!(body, "      environment = {{\n{}\n      }},", plain.join("\n"));
        }
        if !secret.is_empty() {
            let _ = writeln!(body, "      secret_environment = {{\n{}\n      }},", secret.join("\n"));
        }
        if def.get("env_file").is_some() {
            notes.push("`env_file` (move its variables into `environment`, secrets into `secret_environment`)".into());
        }
        // Ports.
        let mut ports = Vec::new();
        if let Some(Value::Sequence(items)) = def.get("ports") {
            for item in items {
                match parse_port(item) {
                    Ok(p) => {
                        let mut rec = format!("port = {}", p.host);
                        if p.container != p.host {
                            let _ = write!(rec, ", container_port = {}", p.container);
                        }
                        if p.udp {
                            rec.push_str(", protocol = 'udp");
                        }
                        match p.bind.as_deref() {
                            Some("127.0.0.1") => {}
                            Some(ip) => {
                                let _ = write!(rec, ", bind = {}, public = true", nickel_string(ip));
                            }
                            None => rec.push_str(", public = true"),
                        }
                        ports.push(format!(
                            "        p{}{} = {{ {rec} }},",
                            p.host,
                            if p.udp { "-udp" } else { "" }
                        ));
                    }
                    Err(why) => notes.push(format!("a port: {why}")),
                }
            }
        }
        if !ports.is_empty() {
            let _ = writeln!(
                body,
                "      # A port compose published on every address is public (the firewall opens it);\n      # behind the proxy instead: drop `public` and add a site in `proxy.sites`.\n      ports = {{\n{}\n      }},",
                ports.join("\n")
            );
        }
        // Volumes.
        let mut volumes = Vec::new();
        if let Some(Value::Sequence(items)) = def.get("volumes") {
            for item in items {
                let v = match item {
                    Value::Mapping(m) => {
                        let get = |k: &str| m.get(k).and_then(text);
                        match (get("source"), get("target")) {
                            (Some(s), Some(t)) => Some(format!(
                                "{s}:{t}{}",
                                if get("read_only").as_deref() == Some("true") {
                                    ":ro"
                                } else {
                                    ""
                                }
                            )),
                            _ => None,
                        }
                    }
                    other => text(other),
                };
                match v {
                    Some(v) => volumes.push(nickel_string(&v)),
                    None => notes.push("a volume without `source` and `target`".into()),
                }
            }
        }
        if !volumes.is_empty() {
            let _ = writeln!(body, "      volumes = [{}],", volumes.join(", "));
        }
        // Dependencies.
        let mut deps = Vec::new();
        match def.get("depends_on") {
            Some(Value::Sequence(items)) => {
                for d in items.iter().filter_map(text) {
                    deps.push(format!("{} = 'started", field(&d)));
                }
            }
            Some(Value::Mapping(m)) => {
                for (k, v) in m {
                    let Some(k) = text(k) else { continue };
                    let healthy = v.get("condition").and_then(text).as_deref() == Some("service_healthy");
                    deps.push(format!(
                        "{} = '{}",
                        field(&k),
                        if healthy { "healthy" } else { "started" }
                    ));
                }
            }
            _ => {}
        }
        if !deps.is_empty() {
            let _ = writeln!(body, "      depends_on = {{ {} }},", deps.join(", "));
        }
        match def.get("healthcheck").and_then(|h| h.get("test")) {
            Some(Value::Sequence(args)) => {
                let args: Vec<String> = args.iter().filter_map(text).map(|a| nickel_string(&a)).collect();
                let _ = writeln!(body, "      healthcheck.test = [{}],", args.join(", "));
            }
            Some(Value::String(s)) => {
                let _ = writeln!(body, "      healthcheck.test = [\"CMD-SHELL\", {}],", nickel_string(s));
            }
            _ => {}
        }
        if let Value::Mapping(m) = def {
            let known = [
                "image",
                "command",
                "environment",
                "env_file",
                "ports",
                "volumes",
                "depends_on",
                "healthcheck",
                "container_name",
            ];
            let mut rest: Vec<String> = m
                .keys()
                .filter_map(text)
                .filter(|k| !known.contains(&k.as_str()))
                .map(|k| format!("`{}`", k.replace('\n', " ")))
                .collect();
            rest.sort();
            if !rest.is_empty() {
                notes.push(format!(
                    "{} (see docs/modules.md for stackc's options)",
                    rest.join(", ")
                ));
            }
        }
        for n in notes {
            let _ = writeln!(body, "      # Not converted: {n}.");
        }
        let _ = writeln!(body, "    }},");
    }
    if secret_names.is_empty() {
        lets.clear();
    }
    let body: String = body.lines().map(|l| format!("  {l}\n")).collect();
    Ok(format!(
        r#"# Converted from {shown} by `stackc init --from`: its services, images, published
# ports, volumes and environment. Review it, then `stackc check prod.ncl` and
# `stackc build prod.ncl` (the bundle in out/, its compose file in
# out/main/compose/). Every option: docs/modules.md of stackc.
let stackc = import "stackc.ncl" in
{lets}stackc.stack {{
  name = {name},
  machines.main = {{
    # The machine's public address: replace it with your server's.
    address = "203.0.113.10",
    containers = {{
{body}    }},
  }},
}}
"#,
        name = nickel_string(name),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_names_are_recognised() {
        for s in [
            "POSTGRES_PASSWORD",
            "API_KEY",
            "JWT_SECRET",
            "GITHUB_TOKEN",
            "APIKEY",
            "DB_PASS",
            "MEILI_MASTER_KEY",
        ] {
            assert!(looks_secret(s), "{s}");
        }
        for s in [
            "KEYCLOAK_URL",
            "POSTGRES_PASSWORD_FILE",
            "POSTGRES_USER",
            "TZ",
            "PASSTHROUGH",
        ] {
            assert!(!looks_secret(s), "{s}");
        }
    }

    #[test]
    fn strings_and_fields_are_nickel() {
        assert_eq!(nickel_string("a\"b%{c}\\"), r#""a\"b\%{c}\\""#);
        assert_eq!(field("POSTGRES_USER"), "POSTGRES_USER");
        assert_eq!(field("a.b"), "\"a.b\"");
        assert_eq!(field("let"), "\"let\"");
    }
}
