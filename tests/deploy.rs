//! Outputs for deploy tools and review: deterministic tar, JSON on stdout,
//! one machine at a time, `build --check`, and the pre-commit hooks run by
//! the real `pre-commit`.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

fn build_args(args: &[&str], key: &Path) -> std::process::Output {
    stackc()
        .args(["build"])
        .args(args)
        .arg("--secrets-key")
        .arg(key)
        .output()
        .unwrap()
}

#[test]
fn tar_is_deterministic_sorted_and_keeps_modes() {
    let tmp = TempDir::new("tar");
    let key = test_key(tmp.path());
    let entry = repo().join("examples/edge-and-app/prod.ncl");
    let entry = entry.to_str().unwrap();
    let a = build_args(&["--format", "tar", entry], &key);
    let b = build_args(&["--format", "tar", entry], &key);
    assert!(a.status.success(), "{}", text(&a).1);
    assert_eq!(a.stdout, b.stdout, "two tars of one bundle differ");
    let archive = tmp.path().join("b.tar");
    std::fs::write(&archive, &a.stdout).unwrap();
    // GNU tar reads it back: sorted entries, owner 0/0, mtime 0, modes kept.
    let o = Command::new("tar")
        .args(["--numeric-owner", "-tvf"])
        .arg(&archive)
        .env("TZ", "UTC")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o).1);
    let listing = text(&o).0;
    let names: Vec<&str> = listing.lines().map(|l| l.rsplit(' ').next().unwrap()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    assert!(names.contains(&"manifest.json"));
    for line in listing.lines() {
        assert!(line.contains(" 0/0 "), "{line}");
        assert!(line.contains("1970-01-01 00:00"), "{line}");
    }
    let secret = listing.lines().find(|l| l.ends_with("app/secrets/api.env")).unwrap();
    assert!(secret.starts_with("-rw-------"), "{secret}");
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with("drwx------") && l.ends_with("app/secrets/"))
    );

    // SOURCE_DATE_EPOCH sets the mtime; one machine's tar holds only its folder.
    let o = stackc()
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .args(["build", "--format", "tar", "--machine", "edge", entry, "--secrets-key"])
        .arg(&key)
        .output()
        .unwrap();
    std::fs::write(&archive, &o.stdout).unwrap();
    let listing = text(
        &Command::new("tar")
            .args(["--numeric-owner", "-tvf"])
            .arg(&archive)
            .env("TZ", "UTC")
            .output()
            .unwrap(),
    )
    .0;
    assert!(listing.lines().all(|l| l.contains("2023-11-14 22:13")), "{listing}");
    assert!(listing.lines().any(|l| l.ends_with(" caddy/Caddyfile")), "{listing}");
    assert!(
        !listing.contains("app/") && !listing.contains("manifest.json"),
        "{listing}"
    );
}

#[test]
fn json_output_carries_the_whole_bundle() {
    let tmp = TempDir::new("json-bundle");
    let key = test_key(tmp.path());
    let o = build_args(&["--format", "json", lair().to_str().unwrap()], &key);
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["version"], 1);
    let files = v["files"].as_array().unwrap();
    let out = tmp.path().join("out");
    assert!(
        build_args(&["-q", "-o", out.to_str().unwrap(), lair().to_str().unwrap()], &key)
            .status
            .success()
    );
    let on_disk = tree(&out);
    for f in files {
        let path = f["path"].as_str().unwrap();
        let (bytes, mode) = &on_disk[path];
        assert_eq!(f["content"].as_str().unwrap().as_bytes(), bytes.as_slice(), "{path}");
        assert_eq!(f["mode"].as_str().unwrap(), format!("{mode:04o}"), "{path}");
    }
    assert_eq!(files.len(), on_disk.keys().filter(|k| !k.ends_with('/')).count());
}

#[test]
fn unknown_machine_is_a_diagnostic() {
    let tmp = TempDir::new("machine");
    let key = test_key(tmp.path());
    let o = build_args(
        &["--machine", "nope", "--format", "json", lair().to_str().unwrap()],
        &key,
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).1.contains("SC0202") && text(&o).1.contains("`chat`"),
        "{}",
        text(&o).1
    );
}

#[test]
fn build_check_reports_stale_bundles() {
    let tmp = TempDir::new("check");
    let key = test_key(tmp.path());
    let out = tmp.path().join("bundle");
    let (lair, out_s) = (lair(), out.to_str().unwrap().to_owned());
    let args = ["-o", out_s.as_str(), lair.to_str().unwrap()];
    assert!(build_args(&[&["-q"][..], &args].concat(), &key).status.success());
    let o = build_args(&[&["--check"][..], &args].concat(), &key);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o).1);
    let before = tree(&out);
    std::fs::write(out.join("chat/caddy/Caddyfile"), "edited by hand\n").unwrap();
    let o = build_args(&[&["--check"][..], &args].concat(), &key);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("differs: chat/caddy/Caddyfile"), "{}", text(&o).1);
    assert_ne!(tree(&out), before, "--check must not repair the bundle");
    // No bundle there at all: cannot compare.
    let o = build_args(
        &[
            "--check",
            "-o",
            tmp.path().join("none").to_str().unwrap(),
            lair.to_str().unwrap(),
        ],
        &key,
    );
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn pre_commit_hooks_run_for_real() {
    let Some(pre_commit) = require_tool(tools_prefix().join("bin/pre-commit"), "pre-commit") else {
        return;
    };
    let tmp = TempDir::new("pre-commit");
    // The hook repository: this repo's hooks file, committed in a fresh repo.
    let hooks = tmp.path().join("hooks");
    std::fs::create_dir(&hooks).unwrap();
    std::fs::copy(
        repo().join(".pre-commit-hooks.yaml"),
        hooks.join(".pre-commit-hooks.yaml"),
    )
    .unwrap();
    git(&hooks, &["init", "-q"]);
    git(&hooks, &["add", "."]);
    git(&hooks, &["commit", "-qm", "hooks"]);
    let rev = String::from_utf8(
        Command::new("git")
            .args(["rev-parse", "HEAD"])
            .current_dir(&hooks)
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();

    // A stack repository with a committed placeholder bundle.
    let stack = tmp.path().join("stack");
    std::fs::create_dir(&stack).unwrap();
    std::fs::copy(lair(), stack.join("prod.ncl")).unwrap();
    let o = stackc()
        .args(["build", "-q", "--placeholder-secrets", "-o", "bundle", "prod.ncl"])
        .current_dir(&stack)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o).1);
    std::fs::write(
        stack.join(".pre-commit-config.yaml"),
        format!(
            "repos:\n  - repo: {}\n    rev: {}\n    hooks:\n      - id: stackc-check\n        args: [prod.ncl]\n      - id: stackc-bundle-up-to-date\n        args: [prod.ncl, -o, bundle, --placeholder-secrets]\n",
            hooks.display(),
            rev.trim()
        ),
    )
    .unwrap();
    git(&stack, &["init", "-q"]);
    git(&stack, &["add", "."]);
    git(&stack, &["commit", "-qm", "stack"]);

    let bin_dir = Path::new(env!("CARGO_BIN_EXE_stackc")).parent().unwrap().to_path_buf();
    let run = || {
        Command::new(&pre_commit)
            .args(["run", "--all-files", "--color", "never"])
            .current_dir(&stack)
            .env(
                "PATH",
                format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default()),
            )
            .env("PRE_COMMIT_HOME", tmp.path().join("pre-commit-home"))
            .env("NO_COLOR", "1")
            .env("STACKC_NO_CACHE", "1")
            .output()
            .unwrap()
    };
    let o = run();
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}\n{err}");
    assert!(out.contains("stackc check") && out.contains("Passed"), "{out}");

    // A hand edit to the committed bundle: the up-to-date hook fails.
    std::fs::write(stack.join("bundle/chat/caddy/Caddyfile"), "edited by hand\n").unwrap();
    let o = run();
    let (out, _) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("differs: chat/caddy/Caddyfile"), "{out}");

    // A broken stack: the check hook fails with the diagnostic.
    std::fs::write(
        stack.join("prod.ncl"),
        "let stackc = import \"stackc.ncl\" in stackc.stack { name = 1 }\n",
    )
    .unwrap();
    let o = run();
    let (out, _) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("SC0102") || out.contains("SC0104"), "{out}");
}

#[test]
fn a_stream_never_replaces_an_input_or_a_foreign_file() {
    let tmp = TempDir::new("clobber");
    let dir = tmp.path();
    let key = test_key(dir);
    std::fs::copy(repo().join("examples/lair-chat/prod.ncl"), dir.join("prod.ncl")).unwrap();
    // A project file the stack imports, through a variant of the example.
    std::fs::write(dir.join("name.ncl"), "\"lair-chat\"\n").unwrap();
    let prod = std::fs::read_to_string(dir.join("prod.ncl")).unwrap();
    let name_line = prod.lines().find(|l| l.trim_start().starts_with("name =")).unwrap();
    std::fs::write(
        dir.join("imports.ncl"),
        prod.replace(name_line, "  name = import \"name.ncl\","),
    )
    .unwrap();
    std::fs::hard_link(&key, dir.join("hard.key")).unwrap();
    std::fs::write(dir.join("notes.txt"), "precious\n").unwrap();
    std::fs::create_dir(dir.join("subdir")).unwrap();
    std::os::unix::fs::symlink("notes.txt", dir.join("link.tar")).unwrap();
    // A tar GNU tar wrote, as alike as it gets: not stackc's, so not replaced.
    let o = Command::new("tar")
        .args([
            "--format=ustar",
            "--owner=0",
            "--group=0",
            "--mtime=@0",
            "--sort=name",
            "-cf",
            "gnu.tar",
            "notes.txt",
        ])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o).1);
    let before = tree(dir);
    let run = |format: &str, out: &str, entry: &str| {
        stackc()
            .args(["build", "--format", format, "-o", out, entry, "--secrets-key"])
            .arg(&key)
            .current_dir(dir)
            .output()
            .unwrap()
    };
    for (out, entry, says) in [
        (
            "TEST-ONLY-master.key",
            "prod.ncl",
            "is the master key, an input of this build",
        ),
        ("hard.key", "prod.ncl", "is the master key, an input of this build"),
        ("prod.ncl", "prod.ncl", "is the stack file, an input of this build"),
        (
            "./imports.ncl",
            "imports.ncl",
            "is the stack file, an input of this build",
        ),
        ("name.ncl", "imports.ncl", "is a file the stack reads (`name.ncl`)"),
        (
            "notes.txt",
            "prod.ncl",
            "exists and is not a tar or JSON bundle written by stackc",
        ),
        (
            "gnu.tar",
            "prod.ncl",
            "exists and is not a tar or JSON bundle written by stackc",
        ),
        ("link.tar", "prod.ncl", "is a symbolic link"),
        ("subdir", "prod.ncl", "exists and is not a regular file"),
    ] {
        for format in ["tar", "json"] {
            let o = run(format, out, entry);
            let stderr = text(&o).1;
            assert_eq!(o.status.code(), Some(2), "{format} -o {out}: {stderr}");
            assert!(stderr.contains("SC0904"), "{format} -o {out}: {stderr}");
            assert!(
                stderr.contains(&format!("`{out}` {says}")),
                "{format} -o {out}: {stderr}"
            );
            assert!(stderr.contains("help: "), "{stderr}");
        }
    }
    assert_eq!(tree(dir), before, "nothing was changed, nothing was left behind");
    // The bundle's own earlier output is replaced, in either format.
    for format in ["tar", "json", "tar"] {
        let o = run(format, "bundle.out", "prod.ncl");
        assert_eq!(o.status.code(), Some(0), "{format}: {}", text(&o).1);
    }
    // A missing directory is named.
    let o = run("tar", "missing/bundle.tar", "prod.ncl");
    assert_eq!(o.status.code(), Some(2));
    let stderr = text(&o).1;
    assert!(
        stderr.contains("SC0902") && stderr.contains("`missing/bundle.tar`") && stderr.contains("`missing`"),
        "{stderr}"
    );
    assert!(!dir.join("missing").exists());
}
