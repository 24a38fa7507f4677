//! Golden bundles: every `examples/<name>/prod.ncl`, built with the test
//! key, must equal `golden/<name>/` byte for byte. On a mismatch the test
//! prints a unified diff per file.
//!
//! Bless (after reading the diff): `STACKC_BLESS=1 cargo test --test golden`

mod common;

use std::collections::BTreeSet;

use common::*;

#[test]
fn examples_match_golden_bundles() {
    let bless = std::env::var_os("STACKC_BLESS").is_some_and(|v| v == "1");
    let examples = examples();
    assert!(!examples.is_empty(), "no examples found");
    let mut report = String::new();
    for name in &examples {
        let tmp = TempDir::new("golden");
        let key = test_key(tmp.path());
        let out = tmp.path().join("out");
        let o = stackc()
            .args(["build", "--quiet", "-o"])
            .arg(&out)
            .arg("--secrets-key")
            .arg(&key)
            .arg(repo().join("examples").join(name).join("prod.ncl"))
            .output()
            .unwrap();
        let (_, stderr) = text(&o);
        assert!(o.status.success(), "building example {name} failed:\n{stderr}");

        let golden = repo().join("golden").join(name);
        if bless {
            let _ = std::fs::remove_dir_all(&golden);
            copy_tree(&out, &golden);
            eprintln!("blessed golden/{name}");
            continue;
        }
        report.push_str(&compare(name, &out, &golden));
    }
    assert!(
        report.is_empty(),
        "golden bundles differ (bless with STACKC_BLESS=1 after reading the diff):\n{report}"
    );
}

fn files(root: &std::path::Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    if !root.exists() {
        return Default::default();
    }
    tree(root)
        .into_iter()
        .filter(|(k, _)| !k.ends_with('/'))
        .map(|(k, (b, _))| (k, b))
        .collect()
}

fn compare(name: &str, built: &std::path::Path, golden: &std::path::Path) -> String {
    let (b, g) = (files(built), files(golden));
    let mut out = String::new();
    let all: BTreeSet<&String> = b.keys().chain(g.keys()).collect();
    for path in all {
        match (g.get(path), b.get(path)) {
            (Some(_), None) => out.push_str(&format!("--- {name}/{path}: in golden, not built\n")),
            (None, Some(_)) => out.push_str(&format!("+++ {name}/{path}: built, not in golden\n")),
            (Some(old), Some(new)) if old != new => {
                let (old, new) = (String::from_utf8_lossy(old), String::from_utf8_lossy(new));
                let diff = similar::TextDiff::from_lines(old.as_ref(), new.as_ref());
                out.push_str(
                    &diff
                        .unified_diff()
                        .context_radius(3)
                        .header(&format!("golden/{name}/{path}"), &format!("built/{name}/{path}"))
                        .to_string(),
                );
            }
            _ => {}
        }
    }
    out
}

fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    for (rel, (bytes, _)) in tree(from) {
        let dest = to.join(rel.trim_end_matches('/'));
        if rel.ends_with('/') {
            std::fs::create_dir_all(&dest).unwrap();
        } else {
            std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
            std::fs::write(&dest, bytes).unwrap();
        }
    }
}

/// Docs embed generated output between `<!-- stackc plan FILE -->` and
/// `<!-- end stackc plan -->`: it must equal what `stackc plan FILE` prints
/// now, so the deployment guides cannot drift from the topology. Bless
/// rewrites the blocks (`STACKC_BLESS=1`).
#[test]
fn docs_embed_current_plans() {
    const END: &str = "<!-- end stackc plan -->";
    let bless = std::env::var_os("STACKC_BLESS").is_some_and(|v| v == "1");
    let mut checked = 0;
    let mut stale = Vec::new();
    let mut docs: Vec<_> = std::fs::read_dir(repo().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    for doc in docs {
        let text = std::fs::read_to_string(&doc).unwrap();
        let mut out = String::new();
        let mut rest = text.as_str();
        while let Some(start) = rest.find("<!-- stackc plan ") {
            let open_end = start + rest[start..].find("-->").expect("marker closes") + 3;
            let file = rest[start + "<!-- stackc plan ".len()..open_end - 3].trim();
            let close = rest[open_end..].find(END).expect("block has an end marker") + open_end;
            let o = stackc().current_dir(repo()).args(["plan", file]).output().unwrap();
            assert!(o.status.success(), "stackc plan {file} failed:\n{}", text_of(&o.stderr));
            let want = format!("\n\n{}\n", text_of(&o.stdout).trim_end());
            if rest[open_end..close] != want {
                stale.push(format!("{} ({file})", doc.display()));
            }
            out.push_str(&rest[..open_end]);
            out.push_str(&want);
            out.push_str(END);
            rest = &rest[close + END.len()..];
            checked += 1;
        }
        out.push_str(rest);
        if bless && out != text {
            std::fs::write(&doc, out).unwrap();
        }
    }
    assert!(checked > 0, "no generated plan blocks found in docs/");
    assert!(
        bless || stale.is_empty(),
        "generated blocks are stale (bless with STACKC_BLESS=1 after reading the diff): {stale:?}"
    );
}

fn text_of(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}
