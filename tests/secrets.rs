//! Secrets end to end: every kind checked by the reader its consumer uses,
//! reproducibility across cold and warm builds, the key cache (modes,
//! verification of hits), and no secret in any plain file or output of any
//! example.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::*;

fn build(entry: &Path, out: &Path, key: &Path, cache: &Path) -> std::process::Output {
    stackc()
        .env_remove("STACKC_NO_CACHE")
        .args(["build", "--quiet", "-o"])
        .arg(out)
        .arg("--secrets-key")
        .arg(key)
        .arg("--cache-dir")
        .arg(cache)
        .arg(entry)
        .output()
        .unwrap()
}

fn files_only(t: std::collections::BTreeMap<String, (Vec<u8>, u32)>) -> std::collections::BTreeMap<String, Vec<u8>> {
    t.into_iter()
        .filter(|(k, _)| !k.ends_with('/'))
        .map(|(k, (b, _))| (k, b))
        .collect()
}

#[test]
fn every_kind_is_read_by_its_consumer_and_the_cache_is_sound() {
    let tmp = TempDir::new("secrets");
    let key = test_key(tmp.path());
    let cache = tmp.path().join("cache");
    let fixture = repo().join("tests/secrets/prod.ncl");

    let cold = tmp.path().join("cold");
    let o = build(&fixture, &cold, &key, &cache);
    assert!(o.status.success(), "{}", text(&o).1);

    // The key cache (`keys/` of the cache directory): 0700 directory, 0600
    // entries, and a warm build gives the same bytes.
    let keys = cache.join("keys");
    assert_eq!(std::fs::metadata(&keys).unwrap().permissions().mode() & 0o777, 0o700);
    let entries: Vec<_> = std::fs::read_dir(&keys).unwrap().map(|e| e.unwrap().path()).collect();
    assert!(entries.len() >= 5, "RSA keys and digests are cached: {entries:?}");
    for e in &entries {
        assert_eq!(std::fs::metadata(e).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let warm = tmp.path().join("warm");
    assert!(build(&fixture, &warm, &key, &cache).status.success());
    assert_eq!(files_only(tree(&cold)), files_only(tree(&warm)));

    // A damaged or forged cache entry is detected and replaced, not used.
    for e in &entries {
        let text = std::fs::read_to_string(e).unwrap();
        let (tag, _) = text.split_once('\n').unwrap();
        std::fs::write(e, format!("{tag}\n-----BEGIN PRIVATE KEY-----\nforged\n")).unwrap();
    }
    let forged = tmp.path().join("forged");
    assert!(build(&fixture, &forged, &key, &cache).status.success());
    assert_eq!(files_only(tree(&cold)), files_only(tree(&forged)));

    // Without a cache, the same bytes too.
    let nocache = tmp.path().join("nocache");
    let o = stackc()
        .args(["build", "--quiet", "--no-cache", "-o"])
        .arg(&nocache)
        .arg("--secrets-key")
        .arg(&key)
        .arg(&fixture)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o).1);
    assert_eq!(files_only(tree(&cold)), files_only(tree(&nocache)));

    // Each secret, read by what consumes it.
    let Some(python) = require_tool(tools_prefix().join("bin/python"), "the tools venv's python") else {
        return;
    };
    let Some(openssl) = require_tool(on_path("openssl"), "openssl") else {
        return;
    };
    let path = format!(
        "{}:{}",
        openssl.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let o = std::process::Command::new(python)
        .arg(repo().join("tests/secrets/verify.py"))
        .arg(cold.join("vault"))
        .env("PATH", path)
        .output()
        .unwrap();
    let (stdout, stderr) = text(&o);
    println!("{stdout}");
    assert!(o.status.success(), "verify.py failed:\n{stdout}\n{stderr}");
    assert_eq!(stdout.lines().filter(|l| l.starts_with("ok ")).count(), 10, "{stdout}");
}

#[test]
fn the_same_key_gives_the_same_secrets_another_key_others() {
    let tmp = TempDir::new("keys");
    let key = test_key(tmp.path());
    let other = tmp.path().join("other.key");
    std::fs::write(&other, "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n").unwrap();
    std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o600)).unwrap();
    let lair = repo().join("examples/lair-chat/prod.ncl");
    let cache = tmp.path().join("cache");
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    assert!(build(&lair, &a, &key, &cache).status.success());
    assert!(build(&lair, &b, &other, &cache).status.success());
    let (ta, tb) = (files_only(tree(&a)), files_only(tree(&b)));
    assert_ne!(ta["chat/secrets/lair-chat.env"], tb["chat/secrets/lair-chat.env"]);
    assert_eq!(
        ta["chat/systemd/lair-chat.service"],
        tb["chat/systemd/lair-chat.service"]
    );
}

#[test]
fn failed_builds_do_not_print_secrets() {
    // Secrets put where a Caddyfile wants a list of arguments: the writer
    // refuses them, and its messages must not quote the values.
    let tmp = TempDir::new("leak-errors");
    let key = test_key(tmp.path());
    let head = "let stackc = import \"stackc.ncl\" in\nlet tok = stackc.secret.password { name = \"tok\" } in\nlet sig = stackc.secret.ed25519 { name = \"sig\" } in\n";
    let broken = tmp.path().join("broken.ncl");
    std::fs::write(
        &broken,
        format!("{head}stackc.stack {{ name = \"x\", machines.m = {{ address = \"192.0.2.1\",\n  native.app = {{ command = \"/bin/app\", ports.http = {{ port = 8080 }} }},\n  proxy.sites.\"a.example.org\" = {{ upstream = {{ service = \"app\", port = \"http\" }},\n    directives = [{{ name = \"header_up\", args = tok }}, {{ name = \"header_up\", args = [\"X\", sig] }}] }} }} }}\n"),
    )
    .unwrap();
    // The same secrets in a stack that builds: their values, to look for.
    let fine = tmp.path().join("fine.ncl");
    std::fs::write(
        &fine,
        format!("{head}stackc.stack {{ name = \"x\", machines.m = {{ address = \"192.0.2.1\",\n  native.app = {{ command = \"/bin/app\", secret_environment.TOK = tok, environment.SIG = stackc.secret.file sig }} }} }}\n"),
    )
    .unwrap();
    let values = compile_with_key(&fine, &key, &stackc::secrets::NoCache)
        .unwrap()
        .secrets
        .values;
    assert_eq!(values.len(), 2);
    let diags = compile_with_key(&broken, &key, &stackc::secrets::NoCache)
        .err()
        .expect("the stack must not build");
    let o = stackc()
        .args(["build", "-o"])
        .arg(tmp.path().join("out"))
        .arg("--secrets-key")
        .arg(&key)
        .arg(&broken)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o).1);
    let rendered: String = diags.iter().map(|d| stackc::diag::render_human(d, false)).collect();
    let all = format!("{}{}{rendered}", text(&o).0, text(&o).1);
    for (name, value) in &values {
        for s in forms(value) {
            assert!(!all.contains(&s), "secret `{name}` leaked into an error:\n{all}");
        }
    }
}

#[test]
fn no_secret_leaks_into_plain_files_output_or_the_manifest() {
    let tmp = TempDir::new("leaks");
    let key = test_key(tmp.path());
    let mut entries: Vec<_> = examples()
        .iter()
        .map(|e| repo().join("examples").join(e).join("prod.ncl"))
        .collect();
    entries.push(repo().join("tests/secrets/prod.ncl"));
    // One cache for the library and the CLI: RSA keys are made once.
    let cache_dir = tmp.path().join("cache");
    let cache = stackc::cache::DirCache::open(cache_dir.join("keys")).unwrap();
    for entry in entries {
        let compiled =
            compile_with_key(&entry, &key, &cache).unwrap_or_else(|d| panic!("{}: {}", entry.display(), d[0].message));
        let secrets: Vec<String> = compiled.secrets.values.values().flat_map(|v| forms(v)).collect();
        assert!(
            !secrets.is_empty(),
            "{}: every example has secrets to look for",
            entry.display()
        );

        let out = tmp.path().join("out");
        let build = stackc()
            .env_remove("STACKC_NO_CACHE")
            .args(["build", "-o"])
            .arg(&out)
            .arg("--secrets-key")
            .arg(&key)
            .arg("--cache-dir")
            .arg(&cache_dir)
            .arg(&entry)
            .output()
            .unwrap();
        assert!(build.status.success());
        let check = stackc()
            .args(["check", "--format", "json"])
            .arg(&entry)
            .output()
            .unwrap();
        let check_human = stackc().args(["check"]).arg(&entry).output().unwrap();
        let mut haystacks: Vec<(String, String)> = vec![
            (
                "build stdout+stderr".into(),
                format!("{}{}", text(&build).0, text(&build).1),
            ),
            (
                "check --format json".into(),
                format!("{}{}", text(&check).0, text(&check).1),
            ),
            (
                "check".into(),
                format!("{}{}", text(&check_human).0, text(&check_human).1),
            ),
        ];
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
        let secret_paths: Vec<&str> = manifest["files"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["secret"] == true)
            .map(|f| f["path"].as_str().unwrap())
            .collect();
        for (path, bytes) in files_only(tree(&out)) {
            if !secret_paths.contains(&path.as_str()) {
                haystacks.push((path, String::from_utf8_lossy(&bytes).into_owned()));
            }
        }
        for (where_, hay) in &haystacks {
            for s in &secrets {
                assert!(
                    !hay.contains(s.as_str()),
                    "{}: a secret leaked into {where_}",
                    entry.display()
                );
            }
        }
        // Secret files carry no plain hash in the manifest.
        for f in manifest["files"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["secret"] == true)
        {
            assert!(f.get("sha256").is_none() && f.get("hmac_sha256").is_some(), "{f}");
        }
        std::fs::remove_dir_all(&out).unwrap();
    }
}

/// A finding that quotes a value holding a secret (a database URL with its
/// password) names the secret instead: built with a real key, the password
/// appears in the env file of the good stack and nowhere in the findings
/// of the broken one.
#[test]
fn findings_never_show_a_secret_inside_a_value() {
    let tmp = TempDir::new("secret-in-finding");
    let key = test_key(tmp.path());
    let cache = tmp.path().join("cache");
    let stack = |port: u16| {
        format!(
            r#"let stackc = import "stackc.ncl" in
let pw = stackc.secret.password {{ name = "app-db", length = 32 }} in
let pg = stackc.modules.postgres.lower "postgres" {{
  superuser_password = stackc.secret.password {{ name = "pg-super", length = 32 }},
  databases.app = {{ owner = "app", password = pw }},
}} in
stackc.stack {{
  name = "leak",
  machines.m = {{
    address = "203.0.113.9",
    containers = pg.containers & {{
      app = {{
        image = "example/app:1.0.0",
        secret_environment.DATABASE_URL = stackc.secret.join ["postgres://app:", pw, "@postgres:{port}/app"],
        roles.endpoints.db = {{ what = "the app's database", url.env = "DATABASE_URL", target = "postgres" }},
      }},
    }},
    files = pg.files,
  }},
}}
"#
        )
    };
    let good = tmp.path().join("good.ncl");
    std::fs::write(&good, stack(5432)).unwrap();
    let out = tmp.path().join("out");
    let o = build(&good, &out, &key, &cache);
    assert!(o.status.success(), "{}", text(&o).1);
    let env = std::fs::read_to_string(out.join("m/secrets/app.env")).unwrap();
    let password = env
        .split("postgres://app:")
        .nth(1)
        .and_then(|r| r.split('@').next())
        .expect("the env file holds the URL");
    assert!(password.len() >= 32, "{env}");

    let bad = tmp.path().join("bad.ncl");
    std::fs::write(&bad, stack(5433)).unwrap();
    let o = build(&bad, &tmp.path().join("out2"), &key, &cache);
    let (stdout, stderr) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("SC0505"), "{stderr}");
    assert!(
        !stderr.contains(password) && !stdout.contains(password),
        "the password leaked: {stderr}"
    );
    assert!(stderr.contains("postgres://app:…@postgres:5433/app"), "{stderr}");
}
