//! The evaluation cache (`compiler/src/cache.rs`, `EvalCache`): a repeated
//! `check` or `build` of an unchanged stack answers from it, and no change
//! of an input, no damaged, forged or misplaced entry ever gives a stale or
//! wrong answer. Its address covers the stdlib, the binary and the limits
//! too: unit tests in `cache.rs` show each of them changes it.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::*;
use sha2::{Digest, Sha256};

const STACK: &str = r#"let stackc = import "stackc.ncl" in
let svc = import "service.ncl" in
stackc.stack {
  name = "cached",
  machines.box = {
    address = "192.0.2.10",
    native.app = svc,
  },
}
"#;

fn service(port: u32) -> String {
    format!(
        "{{\n  description = \"An app\",\n  command = \"/usr/bin/app\",\n  ports.http = {{ port = {port}, public = true }},\n}}\n"
    )
}

fn project(dir: &Path) -> PathBuf {
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join("prod.ncl"), STACK).unwrap();
    fs::write(dir.join("service.ncl"), service(8080)).unwrap();
    dir.join("prod.ncl")
}

fn check(entry: &Path, cache: &Path) -> (bool, String) {
    let o = stackc()
        .env_remove("STACKC_NO_CACHE")
        .args(["check", "--cache-dir"])
        .arg(cache)
        .arg(entry)
        .output()
        .unwrap();
    (o.status.success(), text(&o).1)
}

fn entries(cache: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(cache.join("eval"))
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// An entry rewritten with `edit` applied to its body and a digest that
/// matches the new body: what only a correct address can protect against.
fn rewrite(path: &Path, edit: impl Fn(&str) -> String) {
    let text = fs::read_to_string(path).unwrap();
    let (header, body) = text.split_once('\n').unwrap();
    let magic = header.rsplit_once(' ').unwrap().0;
    let body = edit(body);
    let digest: String = Sha256::digest(body.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    fs::write(path, format!("{magic} {digest}\n{body}")).unwrap();
}

#[test]
fn a_repeated_check_answers_from_the_cache() {
    let tmp = TempDir::new("cache-hit");
    let entry = project(&tmp.path().join("p"));
    let cache = tmp.path().join("cache");

    let first = check(&entry, &cache);
    assert!(first.0, "{}", first.1);
    assert!(first.1.contains("`cached`"), "{}", first.1);
    let kept = entries(&cache);
    assert_eq!(kept.len(), 1, "one evaluation kept: {kept:?}");
    assert_eq!(check(&entry, &cache), first, "the same answer again");
    assert_eq!(entries(&cache), kept, "and no second entry");

    // The answer really comes from the entry: one altered under its own
    // address, with a matching digest, is believed.
    rewrite(&kept[0], |b| b.replace("\"cached\"", "\"from-the-cache\""));
    let (ok, err) = check(&entry, &cache);
    assert!(ok && err.contains("`from-the-cache`"), "{err}");

    // --no-cache evaluates afresh and keeps nothing new.
    let o = stackc()
        .args(["check", "--no-cache", "--cache-dir"])
        .arg(&cache)
        .arg(&entry)
        .output()
        .unwrap();
    assert!(text(&o).1.contains("`cached`"), "{}", text(&o).1);
    assert_eq!(entries(&cache), kept);
}

#[test]
fn a_changed_import_is_never_answered_from_the_cache() {
    let tmp = TempDir::new("cache-change");
    let entry = project(&tmp.path().join("p"));
    let cache = tmp.path().join("cache");
    assert!(check(&entry, &cache).0);

    // The imported file, not the stack file, changes: the port is out of
    // range, so the stack no longer checks.
    fs::write(entry.with_file_name("service.ncl"), service(70000)).unwrap();
    let (ok, err) = check(&entry, &cache);
    assert!(!ok, "a stale answer: {err}");
    assert!(err.contains("SC0102") && err.contains("service.ncl"), "{err}");
    assert_eq!(entries(&cache).len(), 1, "findings are not kept");

    // Back to a good file with another port: a new evaluation, a new entry.
    fs::write(entry.with_file_name("service.ncl"), service(8081)).unwrap();
    assert!(check(&entry, &cache).0);
    assert_eq!(entries(&cache).len(), 2);
    let o = stackc().args(["plan"]).arg(&entry).output().unwrap();
    assert!(text(&o).0.contains("8081"), "{}", text(&o).0);
}

#[test]
fn damaged_forged_or_misplaced_entries_are_misses() {
    let tmp = TempDir::new("cache-damage");
    let entry = project(&tmp.path().join("p"));
    let cache = tmp.path().join("cache");
    let first = check(&entry, &cache);
    assert!(first.0);
    let path = entries(&cache).remove(0);
    let good = fs::read(&path).unwrap();

    // A changed byte with the old digest; a truncated entry; garbage; an
    // empty file: each is evaluated afresh and replaced by a good entry.
    let mut flipped = good.clone();
    let at = flipped.len() - 10;
    flipped[at] ^= 0x01;
    let damaged: Vec<Vec<u8>> = vec![
        flipped,
        good[..good.len() / 2].to_vec(),
        b"not an entry".to_vec(),
        Vec::new(),
    ];
    for bytes in damaged {
        fs::write(&path, &bytes).unwrap();
        assert_eq!(check(&entry, &cache), first);
        assert_eq!(fs::read(&path).unwrap(), good, "the damaged entry is replaced");
    }

    // A body whose digest matches but that names another address (an
    // entry copied or planted under this name) is not believed either.
    rewrite(&path, |b| {
        let v: serde_json::Value = serde_json::from_str(b).unwrap();
        let mut v = v;
        v["address"] = serde_json::Value::String("0".repeat(64));
        v["value"]["name"] = serde_json::Value::String("planted".into());
        v.to_string()
    });
    assert_eq!(check(&entry, &cache), first);

    // Another stack's good entry under this stack's address.
    let other = project(&tmp.path().join("q"));
    fs::write(other.with_file_name("service.ncl"), service(9090)).unwrap();
    let cache2 = tmp.path().join("cache2");
    assert!(check(&other, &cache2).0);
    fs::copy(entries(&cache2).remove(0), &path).unwrap();
    assert_eq!(check(&entry, &cache), first);
    let o = stackc().args(["plan"]).arg(&entry).output().unwrap();
    assert!(!text(&o).0.contains("9090"));
}

#[test]
fn the_cache_directory_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = TempDir::new("cache-mode");
    let entry = project(&tmp.path().join("p"));
    let cache = tmp.path().join("cache");
    assert!(check(&entry, &cache).0);
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&cache.join("eval")), 0o700);
    assert_eq!(mode(&entries(&cache)[0]), 0o600);

    // A cache directory open to others is not used: nothing is kept there.
    let open = tmp.path().join("open");
    fs::create_dir_all(open.join("eval")).unwrap();
    fs::set_permissions(open.join("eval"), fs::Permissions::from_mode(0o777)).unwrap();
    assert!(check(&entry, &open).0);
    assert!(entries(&open).is_empty());
}
