//! The bad-input corpus: each `tests/bad/<case>/` is a broken stack (or key)
//! and its expected output, `expected.snap` (insta). A case runs
//! `stackc <args>` in a temporary copy of its folder: `args` holds one
//! argument per line (default: `check`, `prod.ncl`), `modes` optional lines
//! `0644 FILE` (git does not keep modes). Every case must exit 1 with a
//! coded diagnostic and a help line, and never panic.
//!
//! Bless (after reading the diff): `INSTA_UPDATE=always cargo test --test bad`

mod common;

use std::os::unix::fs::PermissionsExt;

use common::*;

#[test]
fn bad_inputs_give_coded_diagnostics() {
    let corpus = repo().join("tests/bad");
    let mut cases: Vec<_> = std::fs::read_dir(&corpus)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir() && p.file_name().unwrap() != "snapshots")
        .collect();
    cases.sort();
    assert!(
        cases.len() >= 10,
        "the corpus should hold at least 10 cases, found {}",
        cases.len()
    );
    let mut failures = Vec::new();
    for case in &cases {
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        let tmp = TempDir::new("bad");
        let dir = tmp.path().join(&name);
        std::fs::create_dir_all(&dir).unwrap();
        copy_tree(case, &dir);
        // The committed TEST keys, for cases that build (`keys/…` in `args`).
        let keys = dir.join("keys");
        copy_tree(&repo().join("tests/keys"), &keys);
        std::fs::set_permissions(
            keys.join("TEST-ONLY-master.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        if let Ok(modes) = std::fs::read_to_string(case.join("modes")) {
            for line in modes.lines().filter(|l| !l.trim().is_empty()) {
                let (mode, file) = line.split_once(' ').expect("`modes` lines are `MODE FILE`");
                let mode = u32::from_str_radix(mode, 8).expect("octal mode");
                std::fs::set_permissions(dir.join(file.trim()), std::fs::Permissions::from_mode(mode)).unwrap();
            }
        }
        let args: Vec<String> = std::fs::read_to_string(case.join("args"))
            .map(|s| s.lines().map(str::to_owned).filter(|l| !l.is_empty()).collect())
            .unwrap_or_else(|_| vec!["check".into(), "prod.ncl".into()]);
        // No identity unless `args` names one: a case shows what a user sees.
        let o = stackc()
            .env_remove("STACKC_AGE_IDENTITY")
            .args(&args)
            .current_dir(&dir)
            .output()
            .unwrap();
        let (stdout, stderr) = text(&o);
        let code = o.status.code();
        if code != Some(1) {
            failures.push(format!("{name}: exit {code:?}, expected 1\n{stderr}"));
        }
        if stderr.contains("panicked") || !stderr.contains("SC0") {
            failures.push(format!("{name}: no coded diagnostic, or a panic:\n{stderr}"));
        }
        if !stderr.contains("help:") {
            failures.push(format!("{name}: no help line:\n{stderr}"));
        }
        let snapshot = format!(
            "args: {}\nexit: {}\n--- stdout\n{stdout}--- stderr\n{stderr}",
            args.join(" "),
            code.map_or("signal".into(), |c| c.to_string())
        );
        insta::with_settings!({
            snapshot_path => case.clone(),
            prepend_module_to_snapshot => false,
            omit_expression => true,
        }, {
            insta::assert_snapshot!("expected", snapshot);
        });
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Copies a case's files and folders (a project's `secrets/`, say).
fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let dest = to.join(p.file_name().unwrap());
        if p.is_dir() {
            if p.file_name().unwrap() != "snapshots" {
                copy_tree(&p, &dest);
            }
        } else if p.is_file() {
            std::fs::copy(&p, &dest).unwrap();
        }
    }
}
