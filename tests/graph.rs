//! `stackc graph`: the topology pictures in `docs/examples/` are current.
//! For every example, `docs/examples/<name>.dot` equals `stackc graph
//! --format dot` byte for byte (deterministic: one is run twice), and
//! `docs/examples/<name>.svg` equals `stackc graph --format svg` (Graphviz
//! `dot`, from tests/tools/install.sh). Bless (after looking at the
//! pictures): `STACKC_BLESS=1 cargo test --test graph`.

mod common;

use common::{TempDir, on_path, repo, require_tool, stackc};

fn examples() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(repo().join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("prod.ncl").is_file())
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn graph(name: &str, format: &str) -> Vec<u8> {
    let o = stackc()
        .current_dir(repo())
        .args(["graph", &format!("examples/{name}/prod.ncl"), "--format", format])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "stackc graph {name} --format {format} failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    o.stdout
}

#[test]
fn example_pictures_are_current() {
    let bless = std::env::var_os("STACKC_BLESS").is_some_and(|v| v == "1");
    let dot_tool = require_tool(on_path("dot"), "Graphviz `dot`");
    let dir = repo().join("docs/examples");
    std::fs::create_dir_all(&dir).unwrap();
    let mut stale = Vec::new();
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    for name in examples() {
        let dot = graph(&name, "dot");
        if name == "vaultwarden-sso" {
            assert_eq!(dot, graph(&name, "dot"), "{name}: DOT differs between two runs");
        }
        let text = String::from_utf8(dot.clone()).unwrap();
        assert!(
            text.starts_with("digraph ") && text.ends_with("}\n"),
            "{name}: not a DOT graph"
        );
        let mut wanted = vec![(dir.join(format!("{name}.dot")), dot)];
        if dot_tool.is_some() {
            wanted.push((dir.join(format!("{name}.svg")), graph(&name, "svg")));
        }
        for (path, want) in wanted {
            if std::fs::read(&path).ok().as_deref() != Some(&want[..]) {
                if bless {
                    std::fs::write(&path, &want).unwrap();
                } else {
                    stale.push(path.display().to_string());
                }
            }
        }
        assert!(
            readme.contains(&format!("docs/examples/{name}.svg")),
            "README.md does not show docs/examples/{name}.svg"
        );
    }
    assert!(
        stale.is_empty(),
        "topology pictures are stale (look at them, then bless with STACKC_BLESS=1 cargo test --test graph): {stale:?}"
    );
}

#[test]
fn graph_shows_machines_services_ports_and_exposure() {
    let text = String::from_utf8(graph("vaultwarden-sso", "dot")).unwrap();
    for want in [
        "subgraph \"cluster_edge\"",
        "subgraph \"cluster_vault\"",
        "\"net:lan\"",
        "http tcp/8080",
        "https auth.example.com, vault.example.com",
        "vault.example.com → tcp/8080 over lan",
        "internet -> \"svc:edge/caddy\"",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
}

#[test]
fn graph_of_a_bad_stack_is_a_coded_finding() {
    let t = TempDir::new("graph-bad");
    std::fs::write(
        t.0.join("prod.ncl"),
        "let stackc = import \"stackc.ncl\" in stackc.stack { name = 1, machines = {} }\n",
    )
    .unwrap();
    let o = stackc().args(["graph"]).arg(t.0.join("prod.ncl")).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(o.stdout.is_empty());
    assert!(String::from_utf8_lossy(&o.stderr).contains("SC0"));
}

#[test]
fn svg_without_graphviz_is_sc0905() {
    let o = stackc()
        .current_dir(repo())
        .env("STACKC_DOT", "/nonexistent/dot")
        .args(["graph", "examples/lair-chat/prod.ncl", "--format", "svg"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(o.stdout.is_empty());
    assert!(String::from_utf8_lossy(&o.stderr).contains("SC0907"));
}
