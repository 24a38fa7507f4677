//! Git-safe Kubernetes secrets (`kubernetes.secret_manifests = 'sops`,
//! compiler/src/secrets/sops.rs), checked with implementations that are not
//! stackc's:
//!
//! - the real `age` CLI (Debian) decrypts each SOPS file's data key and each
//!   `.age` file, with the committed TEST identity;
//! - `sops-age` (npm, a JavaScript SOPS decrypter) decrypts every value, and
//!   tests/tools/sops_check.mjs checks the MAC with @noble's AES-GCM and
//!   SHA-512 (sops-age does not check it);
//! - what they decrypt equals what the same stack writes in plain mode.
//!
//! Tools come from tests/tools/install.sh; a missing one fails (always under
//! `CI`; elsewhere `STACKC_SKIP_MISSING_TOOLS=1` skips with a message).

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{TempDir, on_path, repo, require_tool, stackc, test_key, text, tools_prefix, tree};

const IDENTITY: &str = "tests/keys/TEST-ONLY-age-identity.txt";

/// The example copied into `dir` with its secrets folder, `'sops` replaced
/// by `mode`.
fn example_copy(dir: &Path, mode: &str) -> PathBuf {
    let src = repo().join("examples/synapse-k8s");
    std::fs::create_dir_all(dir.join("secrets")).unwrap();
    let ncl = std::fs::read_to_string(src.join("prod.ncl")).unwrap();
    assert!(ncl.contains("secret_manifests = 'sops"), "the example is in SOPS mode");
    std::fs::write(
        dir.join("prod.ncl"),
        ncl.replace("secret_manifests = 'sops", &format!("secret_manifests = '{mode}")),
    )
    .unwrap();
    // The recipients and the example's external secrets (its backup credentials).
    for e in std::fs::read_dir(src.join("secrets")).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, dir.join("secrets").join(p.file_name().unwrap())).unwrap();
    }
    dir.join("prod.ncl")
}

fn build(entry: &Path, key: &Path, out: &Path) {
    let o = stackc()
        .args(["build", "-o"])
        .arg(out)
        .arg("--secrets-key")
        .arg(key)
        .arg(entry)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o).1);
}

fn age_decrypt(age: &Path, input: &[u8]) -> Vec<u8> {
    let mut child = Command::new(age)
        .arg("-d")
        .arg("-i")
        .arg(repo().join(IDENTITY))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "age -d: {}", text(&o).1);
    o.stdout
}

fn yaml_as_json(bytes: &[u8]) -> serde_json::Value {
    yaml_serde::from_slice(bytes).unwrap()
}

#[test]
fn sops_files_decrypt_with_age_and_sops_age_to_the_plain_manifests() {
    let Some(age) = require_tool(on_path("age"), "the age CLI (apt `age`)") else {
        return;
    };
    let Some(node) = require_tool(on_path("node"), "node (apt `nodejs`)") else {
        return;
    };
    let modules = tools_prefix().join("node/node_modules");
    let Some(_) = require_tool(modules.join("sops-age/package.json"), "npm sops-age") else {
        return;
    };
    let tmp = TempDir::new("sops");
    let key = test_key(tmp.path());
    let sealed_out = tmp.path().join("sealed-out");
    let plain_out = tmp.path().join("plain-out");
    build(&example_copy(&tmp.path().join("sealed"), "sops"), &key, &sealed_out);
    build(&example_copy(&tmp.path().join("plain"), "plain"), &key, &plain_out);
    // The checker next to a node_modules link, so its imports resolve.
    let checker_dir = tmp.path().join("checker");
    std::fs::create_dir_all(&checker_dir).unwrap();
    std::fs::copy(
        repo().join("tests/tools/sops_check.mjs"),
        checker_dir.join("sops_check.mjs"),
    )
    .unwrap();
    std::os::unix::fs::symlink(&modules, checker_dir.join("node_modules")).unwrap();

    let sealed = tree(&sealed_out);
    let plain = tree(&plain_out);
    let (mut sops_files, mut age_files) = (0, 0);
    for (path, (bytes, mode)) in &sealed {
        if path.ends_with('/') || path == "manifest.json" {
            continue;
        }
        assert_eq!(*mode, 0o644, "{path}: nothing of a SOPS-mode machine is secret");
        if let Some(orig) = path.strip_suffix(".age") {
            // A secret file other than a manifest: age, to the recipients.
            assert_eq!(&age_decrypt(&age, bytes), &plain[orig].0, "{path}");
            assert_eq!(plain[orig].1, 0o600, "{orig} is a secret file in plain mode");
            age_files += 1;
            continue;
        }
        let (plain_bytes, plain_mode) = &plain[path.as_str()];
        // Only manifests can be SOPS files; scripts and configs of other
        // formats must be as in plain mode.
        if !(path.ends_with(".yaml") || path.ends_with(".yml")) {
            assert_eq!(bytes, plain_bytes, "{path}: not sealed, so as in plain mode");
            continue;
        }
        let doc = yaml_as_json(bytes);
        if doc.get("sops").is_none() {
            assert_eq!(bytes, plain_bytes, "{path}: not sealed, so as in plain mode");
            continue;
        }
        assert_eq!(*plain_mode, 0o600, "{path} is a secret file in plain mode");
        // The data key, by the real age CLI, for each recipient.
        let recipients = doc["sops"]["age"].as_array().unwrap();
        assert_eq!(recipients.len(), 1);
        let data_key = age_decrypt(&age, recipients[0]["enc"].as_str().unwrap().as_bytes());
        assert_eq!(data_key.len(), 32, "{path}: a SOPS data key is 32 bytes");
        let hex: String = data_key.iter().map(|b| format!("{b:02x}")).collect();
        // The values by sops-age, the MAC by the checker.
        let o = Command::new(&node)
            .arg(checker_dir.join("sops_check.mjs"))
            .arg(repo().join(IDENTITY))
            .arg(&hex)
            .arg(sealed_out.join(path))
            .output()
            .unwrap();
        assert!(o.status.success(), "{path}: {}", text(&o).1);
        let decrypted: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(decrypted["doc"], yaml_as_json(plain_bytes), "{path}");
        // Only values are hidden: names and labels stay readable for review.
        assert_eq!(doc["metadata"], yaml_as_json(plain_bytes)["metadata"], "{path}");
        sops_files += 1;
    }
    // Four Secrets in `matrix`, two in `authentif`; seven other secret files.
    assert_eq!((sops_files, age_files), (6, 7));
    // Nothing is lost or added but the `.age` names.
    let names = |t: &BTreeMap<String, (Vec<u8>, u32)>| -> Vec<String> {
        t.keys().map(|k| k.trim_end_matches(".age").to_owned()).collect()
    };
    assert_eq!(names(&sealed), names(&plain));
    // The manifest: sealed files are plain files with a plain digest.
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(sealed_out.join("manifest.json")).unwrap()).unwrap();
    for f in manifest["files"].as_array().unwrap() {
        assert_eq!(f["secret"], false, "{f}");
        assert!(f.get("sha256").is_some(), "{f}");
    }
    assert!(
        manifest["inputs"]["files"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["path"] == "secrets/recipients.txt"),
        "the recipients list is a build input"
    );
}

#[test]
fn a_missing_or_malformed_recipients_list_is_sc0311() {
    let tmp = TempDir::new("sops-recipients");
    let entry = example_copy(tmp.path(), "sops");
    let list = tmp.path().join("secrets/recipients.txt");
    let check = || stackc().arg("check").arg(&entry).output().unwrap();

    std::fs::remove_file(&list).unwrap();
    let o = check();
    let err = text(&o).1;
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("SC0311") && err.contains("cannot read `secrets/recipients.txt`"),
        "{err}"
    );
    // Labelled where the stack asks for SOPS, naming the machines.
    assert!(err.contains("secret_manifests = 'sops"), "{err}");
    assert!(err.contains("`authentif`, `matrix` encrypt their secrets"), "{err}");
    assert!(err.contains("help: create `secrets/recipients.txt`"), "{err}");

    // An identity instead of a recipient: named by its line, never quoted.
    std::fs::copy(repo().join(IDENTITY), &list).unwrap();
    let o = check();
    let err = text(&o).1;
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("SC0311")
            && err.contains("line 4 of `secrets/recipients.txt` is an age identity (a private key), not a recipient"),
        "{err}"
    );
    assert!(!err.contains("AGE-SECRET-KEY-1"), "the private key is printed: {err}");
    assert!(!err.contains("panicked"), "{err}");

    // Plain mode needs no list.
    let plain = example_copy(&tmp.path().join("plain"), "plain");
    std::fs::remove_file(tmp.path().join("plain/secrets/recipients.txt")).unwrap();
    let o = stackc().arg("check").arg(&plain).output().unwrap();
    assert!(o.status.success(), "{}", text(&o).1);
}
