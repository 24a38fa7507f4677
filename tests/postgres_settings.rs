//! PostgreSQL server settings (`stackc.modules.postgres` `settings`) are
//! checked by the real server: every `command` in the golden bundles that
//! starts the image's entrypoint with `postgres` (compose services and
//! Kubernetes containers alike) has its `-c name=value` arguments read by
//! Debian's `postgres -C` (as the `postgres` user, against an empty
//! `postgresql.conf`), which refuses an unknown parameter or a value it
//! cannot parse. A self-test shows it refuses a misspelt name.
//!
//! Needs the `postgresql` package (`tests/tools/install.sh`) and root (for
//! `setpriv` to the `postgres` user).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use yaml_serde::Value as Yaml;

/// Every `command` list in `v` that starts `docker-entrypoint.sh postgres`:
/// the arguments after those two.
fn postgres_commands(v: &Yaml, out: &mut Vec<Vec<String>>) {
    match v {
        Yaml::Mapping(m) => {
            for (k, val) in m {
                if k.as_str() == Some("command")
                    && let Some(seq) = val.as_sequence()
                {
                    let words: Vec<String> = seq.iter().filter_map(|w| w.as_str().map(str::to_owned)).collect();
                    if words.len() == seq.len()
                        && words.len() >= 2
                        && words[0] == "docker-entrypoint.sh"
                        && words[1] == "postgres"
                    {
                        out.push(words[2..].to_vec());
                    }
                }
                postgres_commands(val, out);
            }
        }
        Yaml::Sequence(s) => s.iter().for_each(|x| postgres_commands(x, out)),
        _ => {}
    }
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            yaml_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(p);
        }
    }
}

/// Debian's newest `postgres` binary.
fn postgres_bin() -> PathBuf {
    let mut bins: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin/postgres"))
                .filter(|p| p.exists())
                .collect()
        })
        .unwrap_or_default();
    bins.sort_by_key(|p| {
        let v = p
            .parent()
            .and_then(Path::parent)
            .and_then(Path::file_name)
            .and_then(|n| n.to_str())
            .unwrap_or("");
        v.parse::<u32>().unwrap_or(0)
    });
    bins.pop()
        .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/<version>/bin/postgres"))
}

/// `postgres -C <first name> <args>` as the postgres user, in a scratch data
/// directory holding an empty postgresql.conf: its status and stderr.
fn server_reads(bin: &Path, setpriv: &Path, scratch: &Path, args: &[String]) -> (bool, String) {
    let data = scratch.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("postgresql.conf"), "").unwrap();
    let id = |flag: &str| -> u32 {
        let o = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .expect("id postgres");
        String::from_utf8_lossy(&o.stdout)
            .trim()
            .parse()
            .expect("the postgres user exists (package postgresql)")
    };
    let (uid, gid) = (id("-u"), id("-g"));
    for p in [scratch, data.as_path(), data.join("postgresql.conf").as_path()] {
        std::os::unix::fs::chown(p, Some(uid), Some(gid)).unwrap();
    }
    let first = args
        .iter()
        .skip(1)
        .step_by(2)
        .next()
        .and_then(|a| a.split('=').next())
        .expect("at least one `-c name=value`")
        .to_owned();
    let o = Command::new(setpriv)
        .args(["--reuid=postgres", "--regid=postgres", "--init-groups"])
        .arg(bin)
        .arg("-D")
        .arg(&data)
        .args(["-C", &first])
        .args(args)
        .output()
        .unwrap();
    (o.status.success(), String::from_utf8_lossy(&o.stderr).into_owned())
}

#[test]
fn golden_postgres_settings_are_read_by_postgres() {
    let Some(bin) = require_tool(postgres_bin(), "PostgreSQL's server (package postgresql)") else {
        return;
    };
    let Some(setpriv) = require_tool(on_path("setpriv"), "setpriv (package util-linux)") else {
        return;
    };
    let tmp = TempDir::new("pg-settings");

    // The server refuses what it does not know: the check can fail.
    let (ok, err) = server_reads(
        &bin,
        &setpriv,
        &tmp.path().join("self"),
        &["-c".into(), "shared_bufers=256MB".into()],
    );
    assert!(
        !ok && err.contains("unrecognized configuration parameter"),
        "self-test: a misspelt name was accepted: {err}"
    );
    let (ok, err) = server_reads(
        &bin,
        &setpriv,
        &tmp.path().join("self2"),
        &["-c".into(), "shared_buffers=256XB".into()],
    );
    assert!(
        !ok && err.contains("invalid value"),
        "self-test: a bad unit was accepted: {err}"
    );

    let mut files = Vec::new();
    yaml_files(&repo().join("golden"), &mut files);
    let mut checked = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let text = std::fs::read_to_string(f).unwrap();
        let mut cmds = Vec::new();
        for doc in yaml_serde::Deserializer::from_str(&text) {
            let Ok(v) = <Yaml as serde::Deserialize>::deserialize(doc) else {
                continue;
            };
            postgres_commands(&v, &mut cmds);
        }
        for (j, args) in cmds.iter().enumerate() {
            assert!(
                args.len() >= 2
                    && args
                        .chunks(2)
                        .all(|c| c.len() == 2 && c[0] == "-c" && c[1].contains('=')),
                "{}: the server's arguments are not `-c name=value` pairs: {args:?}",
                f.display()
            );
            let (ok, err) = server_reads(&bin, &setpriv, &tmp.path().join(format!("{i}-{j}")), args);
            assert!(ok, "{}: postgres refuses {args:?}:\n{err}", f.display());
            checked.push(format!("{} {args:?}", f.strip_prefix(repo()).unwrap().display()));
        }
    }
    assert!(
        !checked.is_empty(),
        "no PostgreSQL server with settings in golden/: the check checked nothing"
    );
    println!("checked by {}:\n  {}", bin.display(), checked.join("\n  "));
}
