//! `stackc diff`: known changes between stack pairs (insta snapshots, every
//! format), bundle directories and git revisions as sides, exit statuses,
//! and no secret in any output.

mod common;

use std::path::Path;

use common::*;

fn diff(args: &[&str], cwd: &Path, key: &Path) -> std::process::Output {
    stackc()
        .arg("diff")
        .args(args)
        .arg("--secrets-key")
        .arg(key)
        .current_dir(cwd)
        .output()
        .unwrap()
}

fn secrets_of(entry: &Path, key: &Path) -> Vec<String> {
    let c = compile_with_key(entry, key, &stackc::secrets::NoCache)
        .unwrap_or_else(|d| panic!("{}: {}", entry.display(), d[0].message));
    c.secrets.values.values().flat_map(|v| forms(v)).collect()
}

#[test]
fn known_changes_in_every_format() {
    let tmp = TempDir::new("diff");
    let key = test_key(tmp.path());
    let cases = repo().join("tests/diff");
    let mut names: Vec<String> = std::fs::read_dir(&cases)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("old.ncl").is_file())
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(names.len() >= 2);
    for name in names {
        let dir = cases.join(&name);
        let secrets: Vec<String> = [
            secrets_of(&dir.join("old.ncl"), &key),
            secrets_of(&dir.join("new.ncl"), &key),
        ]
        .concat();
        assert!(!secrets.is_empty());
        let mut snapshot = String::new();
        for format in [&[][..], &["--stat"], &["--name-only"], &["--format", "json"]] {
            let o = diff(&[&["old.ncl", "new.ncl"][..], format].concat(), &dir, &key);
            let (stdout, stderr) = text(&o);
            assert_eq!(o.status.code(), Some(1), "{name} {format:?}: changes exit 1\n{stderr}");
            for s in &secrets {
                assert!(
                    !stdout.contains(s.as_str()) && !stderr.contains(s.as_str()),
                    "{name} {format:?}: a secret leaked"
                );
            }
            snapshot.push_str(&format!(
                "$ stackc diff old.ncl new.ncl {}\n{stdout}{stderr}\n",
                format.join(" ")
            ));
        }
        insta::with_settings!({ snapshot_path => repo().join("tests/diff/snapshots"), prepend_module_to_snapshot => false, omit_expression => true }, {
            insta::assert_snapshot!(name.clone(), snapshot);
        });
        // Same stack on both sides: no changes, exit 0.
        let o = diff(&["old.ncl", "old.ncl"], &dir, &key);
        assert_eq!(o.status.code(), Some(0));
        assert_eq!(text(&o).0.trim(), "no changes");
    }
}

#[test]
fn bundle_directories_and_git_revisions_as_sides() {
    let tmp = TempDir::new("diff-sides");
    let key = test_key(tmp.path());
    let project = tmp.path().join("project");
    std::fs::create_dir(&project).unwrap();
    let case = repo().join("tests/diff/lair-chat-change");
    std::fs::copy(case.join("old.ncl"), project.join("prod.ncl")).unwrap();
    git(&project, &["init", "-q"]);
    git(&project, &["add", "prod.ncl"]);
    git(&project, &["commit", "-qm", "old"]);
    // Build the committed stack as a bundle directory, then change the stack.
    let o = stackc()
        .args(["build", "-q", "-o", "bundle", "prod.ncl", "--secrets-key"])
        .arg(&key)
        .current_dir(&project)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o).1);
    std::fs::copy(case.join("new.ncl"), project.join("prod.ncl")).unwrap();

    let by_dir = diff(&["bundle", "prod.ncl"], &project, &key);
    let by_git = diff(&["git:HEAD:prod.ncl", "prod.ncl"], &project, &key);
    assert_eq!(by_dir.status.code(), Some(1), "{}", text(&by_dir).1);
    assert_eq!(by_git.status.code(), Some(1), "{}", text(&by_git).1);
    assert_eq!(
        text(&by_dir).0,
        text(&by_git).0,
        "a bundle dir and the revision it was built from diff alike"
    );
    assert!(text(&by_git).0.contains("chat/caddy/Caddyfile"));
    // Errors exit 2: a bad revision, a missing side.
    assert_eq!(
        diff(&["git:no-such-rev:prod.ncl", "prod.ncl"], &project, &key)
            .status
            .code(),
        Some(2)
    );
    assert_eq!(
        diff(&["missing.ncl", "prod.ncl"], &project, &key).status.code(),
        Some(2)
    );
}

#[test]
fn a_revision_never_becomes_an_option_of_git() {
    let tmp = TempDir::new("diff-option");
    let key = test_key(tmp.path());
    let project = tmp.path().join("project");
    std::fs::create_dir(&project).unwrap();
    std::fs::copy(
        repo().join("tests/diff/lair-chat-change/old.ncl"),
        project.join("prod.ncl"),
    )
    .unwrap();
    std::fs::write(project.join("victim.txt"), "precious\n").unwrap();
    git(&project, &["init", "-q"]);
    git(&project, &["add", "prod.ncl"]);
    git(&project, &["commit", "-qm", "old"]);
    // `git archive --output=victim.txt` would truncate the file.
    for side in [
        "git:--output=victim.txt:prod.ncl",
        "git:-o:prod.ncl",
        "git::prod.ncl",
        "git:HEAD:",
        "git:HEAD:../prod.ncl",
        "git:HEAD",
    ] {
        for args in [[side, "prod.ncl"], ["prod.ncl", side]] {
            let o = diff(&args, &project, &key);
            let (stdout, stderr) = text(&o);
            assert_eq!(o.status.code(), Some(2), "{side}: {stderr}");
            assert!(
                stderr.contains("SC0903") && stderr.contains("help:"),
                "{side}: {stderr}"
            );
            assert!(stdout.is_empty(), "{side}: {stdout}");
        }
    }
    assert_eq!(
        std::fs::read_to_string(project.join("victim.txt")).unwrap(),
        "precious\n"
    );
    let left: Vec<_> = std::fs::read_dir(&project)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(left.len(), 3, "git wrote nothing: {left:?}");
    // A revision that only looks odd is still a revision.
    let o = diff(&["git:HEAD~0:prod.ncl", "prod.ncl"], &project, &key);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o).1);
}

#[test]
fn files_the_manifest_does_not_list_are_named_never_shown() {
    let tmp = TempDir::new("diff-unlisted");
    let key = test_key(tmp.path());
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    for out in [&a, &b] {
        let o = stackc()
            .args(["build", "-q", "-o"])
            .arg(out)
            .arg(lair())
            .arg("--secrets-key")
            .arg(&key)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o).1);
    }
    // Dropped into a bundle by hand or by a tool: stackc did not write them.
    std::fs::write(b.join("chat/notes.txt"), "UNLISTED-ADDED-CONTENT\n").unwrap();
    std::fs::write(a.join("chat/state.json"), "{\"token\": \"UNLISTED-OLD\"}\n").unwrap();
    std::fs::write(b.join("chat/state.json"), "{\"token\": \"UNLISTED-NEW\"}\n").unwrap();
    let a_s = a.to_str().unwrap();
    let b_s = b.to_str().unwrap();
    for format in [&[][..], &["--stat"], &["--name-only"], &["--format", "json"]] {
        let o = diff(&[&[a_s, b_s][..], format].concat(), tmp.path(), &key);
        let (stdout, stderr) = text(&o);
        assert_eq!(o.status.code(), Some(1), "{format:?}: {stderr}");
        assert!(
            stdout.contains("chat/notes.txt") && stdout.contains("chat/state.json"),
            "{stdout}"
        );
        assert!(
            !stdout.contains("UNLISTED") && !stderr.contains("UNLISTED"),
            "{format:?}: {stdout}"
        );
    }
    let o = diff(&[a_s, b_s, "--format", "json"], tmp.path(), &key);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for f in v["files"].as_array().unwrap() {
        assert_eq!(f["secret"], true, "{f}");
        assert!(f.get("diff").is_none() && f.get("changes").is_none(), "{f}");
    }
}
