//! Secrets from outside (docs/secrets.md): external secrets in age files,
//! adoption, the operator commands, the master key's other sources, and
//! scoped derivation. The age files are cross-checked with the real `age`
//! CLI from Debian (tests/tools/install.sh), both ways.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::*;

const RECIPIENT: &str = "age1l50vvsrmz2q6tq2vfh30l7e6969hx8lat78uz9dx7k7mxe8ej4fsrcggux";

fn identity() -> PathBuf {
    repo().join("tests/keys/TEST-ONLY-age-identity.txt")
}

fn age_cli() -> Option<PathBuf> {
    require_tool(on_path("age"), "age (Debian package `age`)")
}

/// A project: a stack with a derived, an adopted and an external secret,
/// and the test recipient.
fn project(dir: &Path) -> PathBuf {
    fs::create_dir_all(dir.join("secrets")).unwrap();
    fs::write(dir.join("secrets/recipients.txt"), format!("# test\n{RECIPIENT}\n")).unwrap();
    let stack = dir.join("prod.ncl");
    fs::write(
        &stack,
        r#"let stackc = import "stackc.ncl" in
stackc.stack {
  name = "shop",
  secrets.external = ["api-rsa"],
  machines.web = {
    address = "203.0.113.20",
    native.api = {
      command = "/usr/local/bin/api",
      ports.http = { port = 8000 },
      secret_environment = {
        SESSION = stackc.secret.hex { name = "session", bytes = 16 },
        SMTP_PASSWORD = stackc.secret.external { name = "smtp-password" },
      },
    },
    files."api/key.pem" = { format = 'raw, content = stackc.secret.rsa { name = "api-rsa" } },
  },
}
"#,
    )
    .unwrap();
    stack
}

fn run(mut c: Command, stdin: &[u8]) -> Output {
    use std::io::Write;
    let mut child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

fn add(dir: &Path, name: &str, value: &[u8]) -> Output {
    let mut c = stackc();
    c.current_dir(dir).args(["secrets", "add", "prod.ncl", name]);
    run(c, value)
}

fn build(dir: &Path, out: &str, extra: &[&str]) -> Output {
    stackc()
        .current_dir(dir)
        .args(["build", "prod.ncl", "--no-cache", "-o", out])
        .args(extra)
        .output()
        .unwrap()
}

fn assert_ok(o: &Output, what: &str) {
    assert!(o.status.success(), "{what}: {:?}\n{}", o.status, text(o).1);
}

/// An RSA key in PKCS#1 (`BEGIN RSA PRIVATE KEY`), as older servers keep them.
fn pkcs1_key(dir: &Path) -> Vec<u8> {
    let Some(openssl) = require_tool(on_path("openssl"), "openssl") else {
        return Vec::new();
    };
    let path = dir.join("old.pem");
    let o = Command::new(openssl)
        .args(["genrsa", "-traditional", "-out"])
        .arg(&path)
        .arg("2048")
        .output()
        .unwrap();
    assert_ok(&o, "openssl genrsa");
    fs::read(path).unwrap()
}

#[test]
fn external_secrets_round_trip_with_the_real_age_cli() {
    let Some(age) = age_cli() else { return };
    let tmp = TempDir::new("external");
    let dir = tmp.path();
    project(dir);
    let key = test_key(dir);

    // `secrets add` writes what the real CLI decrypts, without the newline
    // `echo` adds.
    assert_ok(
        &add(dir, "smtp-password", b"correct horse battery staple\n"),
        "secrets add",
    );
    let o = Command::new(&age)
        .args(["-d", "-i"])
        .arg(identity())
        .arg(dir.join("secrets/smtp-password.age"))
        .output()
        .unwrap();
    assert_ok(&o, "age -d");
    assert_eq!(o.stdout, b"correct horse battery staple");

    // A file the real CLI encrypted (binary, not armoured) is read by stackc:
    // an adopted PKCS#1 key, re-encoded as PKCS#8 like a derived one.
    let old = pkcs1_key(dir);
    let o = run(
        {
            let mut c = Command::new(&age);
            c.args(["-e", "-R"])
                .arg(dir.join("secrets/recipients.txt"))
                .arg("-o")
                .arg(dir.join("secrets/api-rsa.age"));
            c
        },
        &old,
    );
    assert_ok(&o, "age -e");
    // check needs no identity.
    let o = stackc()
        .env_remove("STACKC_AGE_IDENTITY")
        .current_dir(dir)
        .args(["check", "prod.ncl"])
        .output()
        .unwrap();
    assert_ok(&o, "check without identity");

    let o = build(dir, "out", &["--secrets-key", key.to_str().unwrap()]);
    assert_ok(&o, "build");
    let env = fs::read_to_string(dir.join("out/web/secrets/api.env")).unwrap();
    assert!(env.contains("SMTP_PASSWORD=\"correct horse battery staple\""), "{env}");
    let pem = fs::read_to_string(dir.join("out/web/api/key.pem")).unwrap();
    assert!(
        pem.starts_with("-----BEGIN PRIVATE KEY-----\n"),
        "adopted key is PKCS#8: {pem}"
    );
    // The same key as the old server's: openssl says so.
    let pub_of = |path: &Path| {
        let o = Command::new(on_path("openssl"))
            .args(["pkey", "-pubout", "-in"])
            .arg(path)
            .output()
            .unwrap();
        assert_ok(&o, "openssl pkey");
        o.stdout
    };
    assert_eq!(pub_of(&dir.join("old.pem")), pub_of(&dir.join("out/web/api/key.pem")));
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.join("out/manifest.json")).unwrap()).unwrap();
    assert_eq!(
        manifest["secrets"]["external"],
        serde_json::json!(["api-rsa", "smtp-password"])
    );
    // Age files are not manifest inputs: a rekey must not change the bundle.
    let inputs = manifest["inputs"]["files"].to_string();
    assert!(!inputs.contains(".age"), "{inputs}");
    // Files of the key are secret files; the value is nowhere else.
    let manifest_text = fs::read_to_string(dir.join("out/manifest.json")).unwrap();
    assert!(!manifest_text.contains("correct horse"));
    for (path, (bytes, mode)) in tree(&dir.join("out")) {
        if String::from_utf8_lossy(&bytes).contains("correct horse") {
            assert_eq!(mode & 0o077, 0, "{path} holds the secret and is readable by others");
        }
    }
}

#[test]
fn the_master_key_from_a_file_an_age_file_or_a_command_gives_one_bundle() {
    let Some(age) = age_cli() else { return };
    let tmp = TempDir::new("keysources");
    let dir = tmp.path();
    project(dir);
    let key = test_key(dir);
    assert_ok(&add(dir, "smtp-password", b"pw"), "add");
    let old = pkcs1_key(dir);
    assert_ok(&add(dir, "api-rsa", &old), "add rsa");

    assert_ok(&build(dir, "a", &["--secrets-key", key.to_str().unwrap()]), "key file");
    // The key age-encrypted (world-readable: it is ciphertext).
    let o = Command::new(&age)
        .args(["-e", "-a", "-r", RECIPIENT, "-o"])
        .arg(dir.join("key.age"))
        .arg(&key)
        .output()
        .unwrap();
    assert_ok(&o, "age -e key");
    assert_ok(&build(dir, "b", &["--secrets-key", "key.age"]), "age-encrypted key");
    let cmd = format!("cat '{}'", key.display());
    let o = stackc()
        .current_dir(dir)
        .env("STACKC_SECRETS_KEY_COMMAND", &cmd)
        .args(["build", "prod.ncl", "--no-cache", "-o", "c"])
        .output()
        .unwrap();
    assert_ok(&o, "key command");
    let a = tree(&dir.join("a"));
    assert_eq!(a, tree(&dir.join("b")));
    assert_eq!(a, tree(&dir.join("c")));

    // The encrypted key without an identity, a failing command, a command
    // printing something else, and both sources at once: exit 2 or 1 with
    // their codes, nothing written, nothing of the output shown.
    let cases: [(&[&str], Option<&str>, i32, &str); 4] = [
        (&["--secrets-key", "key.age"], None, 2, "SC0310"),
        (
            &["--secrets-key-command", "echo sekrit-output >&2; exit 3"],
            Some("x"),
            2,
            "SC0312",
        ),
        (
            &["--secrets-key-command", "echo not-a-key-but-sekrit"],
            Some("x"),
            1,
            "SC0303",
        ),
        (
            &["--secrets-key", "key.age", "--secrets-key-command", "true"],
            Some("x"),
            2,
            "SC0301",
        ),
    ];
    for (args, id, status, code) in cases {
        let mut c = stackc();
        c.current_dir(dir).args(["build", "prod.ncl", "-o", "d"]).args(args);
        if id.is_none() {
            c.env_remove("STACKC_AGE_IDENTITY");
        }
        let o = c.output().unwrap();
        let (_, err) = text(&o);
        assert_eq!(o.status.code(), Some(status), "{args:?}: {err}");
        assert!(err.contains(code), "{args:?}: {err}");
        assert!(
            !err.contains("not-a-key-but-sekrit"),
            "the command's output is shown: {err}"
        );
        assert!(!dir.join("d").exists(), "{args:?} wrote a bundle");
    }
}

#[test]
fn builds_with_a_key_need_the_identity_and_show_refuses_a_pipe() {
    let tmp = TempDir::new("noident");
    let dir = tmp.path();
    project(dir);
    let key = test_key(dir);
    assert_ok(&add(dir, "smtp-password", b"hunter22"), "add");
    assert_ok(&add(dir, "api-rsa", &pkcs1_key(dir)), "add rsa");

    let o = stackc()
        .env_remove("STACKC_AGE_IDENTITY")
        .current_dir(dir)
        .args(["build", "prod.ncl", "-o", "out", "--secrets-key"])
        .arg(&key)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o).1);
    assert!(text(&o).1.contains("SC0310"));
    let o = stackc()
        .env_remove("STACKC_AGE_IDENTITY")
        .current_dir(dir)
        .args(["build", "prod.ncl", "-o", "out", "--placeholder-secrets"])
        .output()
        .unwrap();
    assert_ok(&o, "placeholder build without identity");
    assert!(
        !fs::read_to_string(dir.join("out/web/secrets/api.env"))
            .unwrap()
            .contains("hunter22")
    );

    // `show`: refused to a pipe, printed with --pipe; external needs no key.
    let show = |extra: &[&str]| {
        stackc()
            .current_dir(dir)
            .args(["secrets", "show", "prod.ncl"])
            .args(extra)
            .output()
            .unwrap()
    };
    let o = show(&["smtp-password"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(!text(&o).0.contains("hunter22") && !text(&o).1.contains("hunter22"));
    let o = show(&["smtp-password", "--pipe"]);
    assert_ok(&o, "show --pipe");
    assert_eq!(text(&o).0, "hunter22", "a pipe gets the value alone");
    // A derived one needs the master key, and equals what the build wrote.
    let o = show(&["session", "--pipe"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o).1);
    let o = show(&["session", "--pipe", "--secrets-key", key.to_str().unwrap()]);
    assert_ok(&o, "show derived");
    let value = text(&o).0.trim().to_owned();
    assert_ok(&build(dir, "real", &["--secrets-key", key.to_str().unwrap()]), "build");
    let env = fs::read_to_string(dir.join("real/web/secrets/api.env")).unwrap();
    assert!(
        value.len() == 32 && env.contains(&format!("SESSION={value}")),
        "{value} / {env}"
    );

    // `list` names sources and shows no value; a missing file fails it.
    let o = stackc()
        .current_dir(dir)
        .args(["secrets", "list", "prod.ncl"])
        .output()
        .unwrap();
    assert_ok(&o, "list");
    let out = text(&o).0;
    assert!(
        out.contains("derived, generation 1") && out.contains("external, secrets/smtp-password.age"),
        "{out}"
    );
    assert!(!out.contains("hunter22") && !out.contains(&value));
    fs::remove_file(dir.join("secrets/smtp-password.age")).unwrap();
    let o = stackc()
        .current_dir(dir)
        .args(["secrets", "list", "prod.ncl", "--format", "json"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let doc: serde_json::Value = serde_json::from_str(&text(&o).0).unwrap();
    let smtp = doc["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "smtp-password")
        .unwrap();
    assert_eq!(smtp["source"], "missing");
}

#[test]
fn rekey_reencrypts_to_the_new_recipients_or_nothing() {
    let Some(age) = age_cli() else { return };
    let tmp = TempDir::new("rekey");
    let dir = tmp.path();
    project(dir);
    assert_ok(&add(dir, "smtp-password", b"first"), "add");
    assert_ok(&add(dir, "api-rsa", &pkcs1_key(dir)), "add rsa");
    let second = dir.join("second.txt");
    assert_ok(
        &Command::new(on_path("age-keygen"))
            .arg("-o")
            .arg(&second)
            .output()
            .unwrap(),
        "age-keygen",
    );
    let o = Command::new(on_path("age-keygen"))
        .arg("-y")
        .arg(&second)
        .output()
        .unwrap();
    let mut list = fs::read_to_string(dir.join("secrets/recipients.txt")).unwrap();
    list.push_str(&text(&o).0);
    fs::write(dir.join("secrets/recipients.txt"), list).unwrap();

    // Before: the second operator cannot decrypt; after rekey, they can.
    let decrypt = |id: &Path| {
        Command::new(&age)
            .args(["-d", "-i"])
            .arg(id)
            .arg(dir.join("secrets/smtp-password.age"))
            .output()
            .unwrap()
    };
    assert!(!decrypt(&second).status.success());
    let key = test_key(dir);
    let key = key.to_str().unwrap();
    assert_ok(&build(dir, "before", &["--secrets-key", key]), "build");
    let o = stackc()
        .current_dir(dir)
        .args(["secrets", "rekey", "prod.ncl"])
        .output()
        .unwrap();
    assert_ok(&o, "rekey");
    assert_eq!(decrypt(&second).stdout, b"first");
    assert_eq!(decrypt(&identity()).stdout, b"first");
    // Same values, so the same bundle: `build --check` stays green.
    let o = stackc()
        .current_dir(dir)
        .args(["build", "prod.ncl", "--check", "-o", "before", "--secrets-key", key])
        .output()
        .unwrap();
    assert_ok(&o, "build --check after rekey");

    // One file that does not decrypt: nothing is rewritten.
    fs::write(dir.join("secrets/zz-stray.age"), b"not age at all").unwrap();
    let before = fs::read(dir.join("secrets/smtp-password.age")).unwrap();
    let o = stackc()
        .current_dir(dir)
        .args(["secrets", "rekey", "prod.ncl"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o).1);
    assert!(text(&o).1.contains("SC0307"));
    assert_eq!(fs::read(dir.join("secrets/smtp-password.age")).unwrap(), before);
}

#[test]
fn scopes_separate_stacks_and_v1_keeps_the_values_of_before() {
    let tmp = TempDir::new("scopes");
    let key = test_key(tmp.path());
    let src = fs::read_to_string(repo().join("examples/lair-chat/prod.ncl")).unwrap();
    let jwt = |name: &str, extra: &str| {
        let dir = tmp.path().join(name);
        fs::create_dir_all(&dir).unwrap();
        let text = src.replacen("name = \"lair-chat\",", &format!("name = \"{name}\",{extra}"), 1);
        assert_ne!(text, src, "the example names its stack");
        fs::write(dir.join("prod.ncl"), text).unwrap();
        let o = build(&dir, "out", &["--secrets-key", key.to_str().unwrap()]);
        assert_ok(&o, name);
        let env = fs::read_to_string(dir.join("out/chat/secrets/lair-chat.env")).unwrap();
        env.lines()
            .find(|l| l.starts_with("LAIR_JWT_SECRET="))
            .unwrap()
            .to_owned()
    };
    let prod = jwt("prod", "");
    let staging = jwt("staging", "");
    assert_ne!(prod, staging, "two stacks, one key: nothing shared");
    assert_eq!(
        prod,
        jwt("prod-too", " secrets.scope = \"prod\","),
        "one scope, one value"
    );
    // v1: the value the golden bundle had before scopes (the test key,
    // `stackc-hkdf-sha256-v1`), whatever the stack's name.
    let v1 = "LAIR_JWT_SECRET=pIoeoKBj8SSwY+fDcYINqdS+EOynYP+5qCgD5iI6o+M=";
    assert_eq!(jwt("old", " secrets.scheme = 'v1,"), v1);
    assert_eq!(jwt("old-too", " secrets.scheme = 'v1,"), v1);
}
