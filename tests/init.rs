//! The first hour with stackc: `stackc init` (templates, `--from` a compose
//! file, refusing to overwrite), the master key found without a flag, and
//! every documented shell command that builds or checks a stack, run as
//! written.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;

use common::*;

fn run(dir: &Path, args: &[&str]) -> Output {
    stackc().args(args).current_dir(dir).output().unwrap()
}

fn ok(o: &Output) {
    assert_eq!(o.status.code(), Some(0), "{}", text(o).1);
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn init_gives_a_project_that_checks_and_builds_without_flags() {
    let tmp = TempDir::new("init");
    ok(&run(tmp.path(), &["init", "shop"]));
    let p = tmp.path().join("shop");
    for f in ["prod.ncl", ".gitignore", ".pre-commit-config.yaml", "secrets/README.md"] {
        assert!(p.join(f).is_file(), "{f} missing");
    }
    assert_eq!(mode(&p.join(".stackc/master.key")), 0o600);
    assert_eq!(mode(&p.join(".stackc")), 0o700);
    let ignore = std::fs::read_to_string(p.join(".gitignore")).unwrap();
    assert!(ignore.contains("/.stackc/") && ignore.contains("/out/"), "{ignore}");
    // No recipients list yet: an empty one would be refused by check.
    assert!(!p.join("secrets/recipients.txt").exists());
    let prod = std::fs::read_to_string(p.join("prod.ncl")).unwrap();
    assert!(prod.contains("name = \"shop\""), "{prod}");

    ok(&run(&p, &["check", "prod.ncl"]));
    let o = run(&p, &["build", "prod.ncl"]);
    ok(&o);
    assert!(
        text(&o).1.contains("using master key .stackc/master.key"),
        "{}",
        text(&o).1
    );
    assert!(p.join("out/manifest.json").is_file());
    // From elsewhere, the key beside the stack file is found too; quiet is quiet.
    let o = run(tmp.path(), &["build", "-q", "shop/prod.ncl", "-o", "shop/out"]);
    ok(&o);
    assert_eq!(text(&o).1, "");
    // The mode check still holds for a key that was found.
    std::fs::set_permissions(p.join(".stackc/master.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = run(&p, &["build", "prod.ncl"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("SC0302"), "{}", text(&o).1);
}

#[test]
fn init_refuses_to_overwrite_and_writes_nothing() {
    let tmp = TempDir::new("init-exists");
    std::fs::write(tmp.path().join(".gitignore"), "mine\n").unwrap();
    let o = run(tmp.path(), &["init"]);
    assert_eq!(o.status.code(), Some(2));
    let err = text(&o).1;
    assert!(
        err.contains("SC0905") && err.contains("`.gitignore`") && err.contains("help:"),
        "{err}"
    );
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from(".gitignore")]);
    assert_eq!(
        std::fs::read_to_string(tmp.path().join(".gitignore")).unwrap(),
        "mine\n"
    );
}

#[test]
fn init_matrix_template_checks() {
    let tmp = TempDir::new("init-matrix");
    ok(&run(tmp.path(), &["init", "--template", "matrix", "--name", "chat"]));
    ok(&run(tmp.path(), &["check", "prod.ncl"]));
}

const COMPOSE: &str = r#"
services:
  db:
    image: postgres:16.4-alpine
    restart: unless-stopped
    environment:
      POSTGRES_USER: app
      POSTGRES_DB: app
      POSTGRES_PASSWORD: hunter2-canary-password
    volumes:
      - pgdata:/var/lib/postgresql/data
    healthcheck:
      test: ["CMD", "pg_isready", "-U", "app"]
  web:
    image: ghcr.io/example/web:1.2.3
    command: ["serve", "--port", "8000"]
    ports:
      - "8080:8000"
      - "127.0.0.1:9090:9090"
    environment:
      - DATABASE_HOST=db
      - DB_PASSWORD=hunter2-canary-password
      - API_TOKEN=ghp_canarytoken
      - KEYCLOAK_URL=https://kc.example.com
      - 'GREETING=50% off %{x} "quoted"'
    depends_on:
      db:
        condition: service_healthy
    volumes:
      - ./data:/data:ro
  builder:
    build: .
volumes:
  pgdata: {}
"#;

#[test]
fn init_from_compose_keeps_secrets_out_and_builds() {
    let tmp = TempDir::new("init-compose");
    std::fs::write(tmp.path().join("compose.yaml"), COMPOSE).unwrap();
    let o = run(tmp.path(), &["init", "--from", "compose.yaml"]);
    ok(&o);
    assert!(!text(&o).1.contains("canary"));
    let prod = std::fs::read_to_string(tmp.path().join("prod.ncl")).unwrap();
    assert!(!prod.contains("canary"), "a secret value was copied:\n{prod}");
    // One value shared by two services stays one secret.
    assert!(
        prod.contains("POSTGRES_PASSWORD = secret_1") && prod.contains("DB_PASSWORD = secret_1"),
        "{prod}"
    );
    assert!(
        prod.contains("stackc.secret.external { name = \"web-api-token\" }"),
        "{prod}"
    );
    assert!(prod.contains("KEYCLOAK_URL = \"https://kc.example.com\""), "{prod}");
    assert!(
        prod.contains("p8080 = { port = 8080, container_port = 8000, public = true }"),
        "{prod}"
    );
    assert!(prod.contains("depends_on = { db = 'healthy }"), "{prod}");
    assert!(prod.contains("`builder` has no `image`"), "{prod}");
    ok(&run(tmp.path(), &["check", "prod.ncl"]));
    ok(&run(tmp.path(), &["build", "prod.ncl"]));
    let compose = std::fs::read_to_string(tmp.path().join("out/main/compose.yaml")).unwrap();
    assert!(compose.contains("8080:8000"), "{compose}");
}

#[test]
fn init_from_a_file_that_is_not_compose_is_a_finding() {
    let tmp = TempDir::new("init-compose-bad");
    std::fs::write(tmp.path().join("compose.yaml"), "version: '3'\nnot_services: 1\n").unwrap();
    let o = run(tmp.path(), &["init", "--from", "compose.yaml"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("SC0906"), "{}", text(&o).1);
    assert!(!tmp.path().join("prod.ncl").exists() && !tmp.path().join(".stackc").exists());
}

#[test]
fn secrets_init_then_build_as_documented() {
    let tmp = TempDir::new("secrets-init");
    std::fs::copy(repo().join("examples/lair-chat/prod.ncl"), tmp.path().join("prod.ncl")).unwrap();
    ok(&run(tmp.path(), &["secrets", "init"]));
    assert_eq!(mode(&tmp.path().join(".stackc/master.key")), 0o600);
    ok(&run(tmp.path(), &["build", "prod.ncl", "-o", "out"]));
    // The bundle never replaces the key it was built with.
    let o = run(tmp.path(), &["build", "prod.ncl", "-o", ".stackc"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o).1);
}

/// Shell commands of README.md and docs/*.md that build, check or plan a
/// stack, or start a project, in the order written.
fn documented_commands(md: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_sh = false;
    // A block that makes the project's recipients list is a whole flow: its
    // `secrets add` lines run too (elsewhere they illustrate a stack of the
    // reader's, with secrets the test's stack does not have).
    let mut flow = false;
    let mut pending = String::new();
    for line in md.lines() {
        if line.starts_with("```") {
            in_sh = !in_sh && matches!(line.trim_start_matches('`'), "sh" | "bash" | "shell");
            flow = false;
            continue;
        }
        if !in_sh {
            continue;
        }
        if let Some(head) = line.strip_suffix('\\') {
            pending.push_str(head);
            continue;
        }
        let mut cmd = std::mem::take(&mut pending) + line;
        if let Some(i) = cmd.find("  #").or_else(|| cmd.find(" # ")) {
            cmd.truncate(i);
        }
        let cmd = cmd.trim().replace("cargo run --release -- ", "stackc ");
        let stackc = [
            "stackc init",
            "stackc secrets init",
            "stackc build",
            "stackc check",
            "stackc plan",
        ];
        let relative_cd = (cmd.starts_with("cd ") || cmd.starts_with("mkdir ")) && !cmd.contains(" /");
        // A project's recipients list from the (test) identity in the home.
        let recipients = cmd.starts_with("mkdir -p secrets && age-keygen -y ~/");
        flow |= recipients;
        let add = flow && cmd.contains("stackc secrets add");
        if stackc.iter().any(|s| cmd.contains(s))
            || cmd.starts_with("cp path/to/stackc/")
            || relative_cd
            || recipients
            || add
        {
            out.push(cmd);
        }
    }
    out
}

/// Every documented command runs as written, each file's in one session:
/// in a directory holding a copy of the examples and, as the docs' running
/// example, the lair-chat stack as `prod.ncl` in a git repository; a home
/// whose `~/.config/stackc/prod.key` is the test key and whose age
/// identities are the test identity; `path/to/stackc` is this repository.
#[test]
fn documented_commands_run_as_written() {
    let docs = std::fs::read_dir(repo().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"));
    let mut files: Vec<_> = docs.chain([repo().join("README.md")]).collect();
    files.sort();
    let bin = TempDir::new("docs-bin");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_stackc"), bin.path().join("stackc")).unwrap();
    let path = format!("{}:{}", bin.path().display(), std::env::var("PATH").unwrap_or_default());
    let mut ran = 0;
    for md in files {
        let cmds = documented_commands(&std::fs::read_to_string(&md).unwrap());
        if cmds.is_empty() {
            continue;
        }
        let tmp = TempDir::new("docs");
        let (home, work) = (tmp.path().join("home"), tmp.path().join("work"));
        std::fs::create_dir_all(home.join(".config/stackc")).unwrap();
        std::fs::create_dir_all(home.join(".config/age")).unwrap();
        let key = test_key(&home.join(".config/stackc"));
        std::fs::rename(key, home.join(".config/stackc/prod.key")).unwrap();
        for id in ["stackc.txt", "me.txt"] {
            std::fs::copy(
                repo().join("tests/keys/TEST-ONLY-age-identity.txt"),
                home.join(".config/age").join(id),
            )
            .unwrap();
        }
        std::fs::create_dir_all(&work).unwrap();
        let cp = std::process::Command::new("cp")
            .arg("-R")
            .arg(repo().join("examples"))
            .arg(work.join("examples"))
            .status()
            .unwrap();
        assert!(cp.success());
        std::fs::copy(repo().join("examples/lair-chat/prod.ncl"), work.join("prod.ncl")).unwrap();
        let git = std::process::Command::new("sh")
            .arg("-c")
            .arg("git init -q && git add -A && git -c user.name=t -c user.email=t@example.org commit -qm init")
            .current_dir(&work)
            .status()
            .unwrap();
        assert!(git.success());
        let repo_dir = repo().display().to_string();
        for cmd in cmds {
            let cmd = cmd.replace("path/to/stackc", &repo_dir);
            ran += 1;
            let o = stackc_shell(&cmd, &work, &home, &path);
            assert_eq!(
                o.status.code(),
                Some(0),
                "{}: `{cmd}` failed:\n{}",
                md.display(),
                text(&o).1
            );
        }
    }
    assert!(ran >= 8, "only {ran} documented commands found");
}

/// One documented command, in a shell whose state (`cd`) is kept in a file.
fn stackc_shell(cmd: &str, work: &Path, home: &Path, path: &str) -> Output {
    let cwd_file = work.join("../cwd");
    let cwd =
        std::fs::read_to_string(&cwd_file).map_or_else(|_| work.display().to_string(), |c| c.trim_end().to_owned());
    let script = format!("set -e\ncd '{cwd}'\n{cmd}\npwd > '{}'\n", cwd_file.display());
    std::process::Command::new("sh")
        .arg("-c")
        .arg(script)
        .env_clear()
        .env("PATH", path)
        .env("HOME", home)
        .env("NO_COLOR", "1")
        // Third-party credentials the docs pipe in (docs/matrix.md).
        .env("TELEGRAM_API_HASH", "0123456789abcdef0123456789abcdef")
        .env("SMTP_PASSWORD", "an-smtp-password")
        .env("AWS_ACCESS_KEY_ID", "TEST-ONLY-KEY-ID")
        .env("AWS_SECRET_ACCESS_KEY", "TEST-ONLY-SECRET")
        .output()
        .unwrap()
}
