//! stackc's own schemas (`schemas/`) against the official upstream ones.
//!
//! stackc closes its schemas (`"additionalProperties": false`) at the levels
//! where it checks keys (SC0404): an override with a key the program does
//! not know is refused. That must never refuse a valid key: at every level
//! stackc closes, every property the official schema knows (through `$ref`,
//! `allOf`, `anyOf`, `oneOf`) must be listed in stackc's schema.
//!
//! The official schemas are read from `STACKC_UPSTREAM_SCHEMAS` (default
//! `<repo>/../shared/acceptance/schemas`, see its `SOURCES.md`), never
//! copied into the repo. A missing file fails the test; outside CI,
//! `STACKC_SKIP_MISSING_TOOLS=1` turns that into a printed note, as in
//! `conformance.rs`. Element Web has no official schema: its key list is
//! checked by reading (docs/diagnostics/SC0404.md says where it comes from).

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde_json::Value;

/// stackc's schema, and the official one it is checked against (relative to
/// the upstream schema dir).
const PAIRS: &[(&str, &str)] = &[
    ("authelia-configuration", "authelia-v4.39/configuration.json"),
    ("mas-config", "mas/config.schema.json"),
    ("synapse-homeserver", "synapse/synapse-config.schema.yaml"),
];

fn upstream_dir() -> PathBuf {
    match std::env::var("STACKC_UPSTREAM_SCHEMAS") {
        Ok(d) if !d.is_empty() => PathBuf::from(d),
        _ => common::repo().join("../shared/acceptance/schemas"),
    }
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty())
}

fn may_skip_missing() -> bool {
    !in_ci() && std::env::var("STACKC_SKIP_MISSING_TOOLS").is_ok_and(|v| v == "1")
}

/// A path into an instance: object keys, and `[]` for "any array item".
type Path = Vec<String>;

/// Every level stackc's schema closes, with the keys it lists there.
fn closed_levels(node: &Value, path: &mut Path, out: &mut Vec<(Path, BTreeSet<String>)>) {
    let Some(obj) = node.as_object() else { return };
    let props = obj.get("properties").and_then(Value::as_object);
    if obj.get("additionalProperties") == Some(&Value::Bool(false)) {
        out.push((
            path.clone(),
            props.map(|p| p.keys().cloned().collect()).unwrap_or_default(),
        ));
    }
    for (k, sub) in props.into_iter().flatten() {
        path.push(k.clone());
        closed_levels(sub, path, out);
        path.pop();
    }
    if let Some(items) = obj.get("items") {
        path.push("[]".into());
        closed_levels(items, path, out);
        path.pop();
    }
}

/// `node` and every schema it stands for: `$ref` (local pointers) followed,
/// `allOf`/`anyOf`/`oneOf` branches included.
fn expand<'a>(root: &'a Value, node: &'a Value, out: &mut Vec<&'a Value>, depth: usize) {
    assert!(depth < 64, "a `$ref` loop in the official schema");
    let Some(obj) = node.as_object() else { return };
    out.push(node);
    if let Some(r) = obj.get("$ref").and_then(Value::as_str) {
        let target = r
            .strip_prefix('#')
            .and_then(|p| root.pointer(p))
            .unwrap_or_else(|| panic!("the official schema's `$ref` {r} does not resolve"));
        expand(root, target, out, depth + 1);
    }
    for kw in ["allOf", "anyOf", "oneOf"] {
        for branch in obj.get(kw).and_then(Value::as_array).into_iter().flatten() {
            expand(root, branch, out, depth + 1);
        }
    }
}

/// The property keys the official schema knows at `path`, or `None` when
/// it has no schema there.
fn upstream_keys(root: &Value, path: &Path) -> Option<BTreeSet<String>> {
    let mut nodes = Vec::new();
    expand(root, root, &mut nodes, 0);
    for step in path {
        let mut next = Vec::new();
        for n in &nodes {
            let sub = if step == "[]" {
                n.get("items")
            } else {
                n.get("properties").and_then(|p| p.get(step))
            };
            if let Some(sub) = sub {
                expand(root, sub, &mut next, 0);
            }
        }
        if next.is_empty() {
            return None;
        }
        nodes = next;
    }
    Some(
        nodes
            .iter()
            .filter_map(|n| n.get("properties").and_then(Value::as_object))
            .flat_map(|p| p.keys().cloned())
            .collect(),
    )
}

fn shown(path: &Path) -> String {
    if path.is_empty() {
        "the top level".into()
    } else {
        format!("`{}`", path.join("."))
    }
}

#[test]
fn every_official_key_is_known_where_stackc_closes() {
    let dir = upstream_dir();
    let mut failures = Vec::new();
    let mut checked = 0;
    for (ours, theirs) in PAIRS {
        let ours_file = common::repo().join(format!("schemas/{ours}.schema.json"));
        let ours_value: Value = serde_json::from_str(&std::fs::read_to_string(&ours_file).unwrap()).unwrap();
        let file = dir.join(theirs);
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) if may_skip_missing() => {
                eprintln!(
                    "NOT CHECKED: schemas/{ours}.schema.json, the official schema {} cannot be read ({e})",
                    file.display()
                );
                continue;
            }
            Err(e) => {
                failures.push(format!(
                    "the official schema {} cannot be read ({e}): set STACKC_UPSTREAM_SCHEMAS to the acceptance kit's \
                     schemas/ dir (outside CI, STACKC_SKIP_MISSING_TOOLS=1 skips it)",
                    file.display()
                ));
                continue;
            }
        };
        let theirs_value: Value = if theirs.ends_with(".json") {
            serde_json::from_str(&text).unwrap()
        } else {
            yaml_serde::from_str(&text).unwrap()
        };
        let mut levels = Vec::new();
        closed_levels(&ours_value, &mut Vec::new(), &mut levels);
        assert!(!levels.is_empty(), "schemas/{ours}.schema.json closes no level");
        for (path, known) in levels {
            checked += 1;
            let Some(upstream) = upstream_keys(&theirs_value, &path) else {
                failures.push(format!(
                    "schemas/{ours}.schema.json closes {}, which {theirs} does not describe: nothing to check it against",
                    shown(&path)
                ));
                continue;
            };
            let missing: Vec<_> = upstream.difference(&known).cloned().collect();
            if !missing.is_empty() {
                failures.push(format!(
                    "schemas/{ours}.schema.json refuses at {} keys {theirs} knows: {}",
                    shown(&path),
                    missing.join(", ")
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(checked > 0 || may_skip_missing(), "no level was checked");
}

/// The walk itself, on a small schema: `$ref`, `allOf` and `items` are
/// followed; a key missing at a closed level is found.
#[test]
fn the_walk_follows_refs_and_branches() {
    let theirs = serde_json::json!({
        "$ref": "#/$defs/Root",
        "$defs": {
            "Root": { "properties": { "a": { "allOf": [{ "$ref": "#/$defs/A" }] }, "b": {} } },
            "A": { "type": "array", "items": { "anyOf": [{ "properties": { "x": {} } }, { "properties": { "y": {} } }] } }
        }
    });
    assert_eq!(
        upstream_keys(&theirs, &vec![]).unwrap(),
        BTreeSet::from(["a".to_owned(), "b".to_owned()])
    );
    assert_eq!(
        upstream_keys(&theirs, &vec!["a".into(), "[]".into()]).unwrap(),
        BTreeSet::from(["x".to_owned(), "y".to_owned()])
    );
    assert_eq!(upstream_keys(&theirs, &vec!["c".into()]), None);
    let ours = serde_json::json!({
        "properties": { "a": { "items": { "properties": { "x": true }, "additionalProperties": false } } },
        "additionalProperties": false
    });
    let mut levels = Vec::new();
    closed_levels(&ours, &mut Vec::new(), &mut levels);
    assert_eq!(levels.len(), 2);
    assert_eq!(levels[1].0, vec!["a".to_owned(), "[]".to_owned()]);
}
