//! `verify`: checks on the rendered bytes, after every writer ran.
//!
//! No derived secret value appears in a file that is not marked secret (the
//! writers make this impossible by construction; this stage makes it
//! impossible by check, so a future writer bug cannot leak), and every
//! config that names a schema satisfies it.

use std::collections::BTreeMap;

use crate::check::Positions;
use crate::diag::{Code, Diagnostic};
use crate::eval::pointer_escape;
use crate::load::SCHEMAS;
use crate::model::{Format, Stack};
use crate::render::Rendered;
use crate::secrets::Resolved;
use jsonschema::error::ValidationErrorKind;

pub fn verify(files: &Rendered, secrets: &Resolved) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    // One automaton for every value, one pass over each file: searching
    // value by value costs files × secrets (minutes at 10 000 services).
    let names: Vec<&String> = secrets.values.keys().collect();
    let Ok(finder) = aho_corasick::AhoCorasick::new(secrets.values.values()) else {
        return vec![
            Diagnostic::error(Code::Internal, "the secrets are too many to look for in the bundle")
                .with_help("this is a bug in stackc: please report it; nothing was written"),
        ];
    };
    for (path, f) in files.iter().filter(|(_, f)| !f.secret) {
        let text = String::from_utf8_lossy(&f.bytes);
        // The secrets found, in name order; not a flag per secret for each
        // file (files × secrets again).
        let mut found: Vec<usize> = finder
            .find_overlapping_iter(text.as_ref())
            .map(|m| m.pattern().as_usize())
            .collect();
        found.sort_unstable();
        found.dedup();
        for name in found.into_iter().map(|i| names[i]) {
            // The name only: a diagnostic never carries a secret value.
            out.push(
                Diagnostic::error(
                    Code::Internal,
                    format!("secret `{name}` would be written to `{path}`, which is not a secret file"),
                )
                .with_help("this is a bug in stackc: please report it; nothing was written"),
            );
        }
    }
    out
}

/// Every file that names a schema is parsed back from the bytes written and
/// checked against that schema of `schemas/`: a user override that breaks
/// a config is caught at build time, on any machine. Messages are masked
/// (no instance values): a secret file's content never reaches a diagnostic.
pub fn schemas(stack: &Stack, files: &Rendered, pos: &Positions) -> Vec<Diagnostic> {
    let mut validators: BTreeMap<&str, jsonschema::Validator> = BTreeMap::new();
    let mut out = Vec::new();
    for (mname, m) in &stack.machines {
        for (path, spec) in &m.files {
            let Some(name) = spec.schema.as_deref() else { continue };
            let file_ptr = crate::eval::file_ptr(mname, path);
            let Some(written) = files.get(&format!("{mname}/{path}")) else {
                continue;
            };
            let validator = match validators.get(name) {
                Some(v) => v,
                None => match compile_schema(name) {
                    Ok(v) => validators.entry(name).or_insert(v),
                    Err(why) => {
                        out.push(
                            Diagnostic::error(Code::BadContent, format!("`{mname}/{path}`: {why}"))
                                .with_label(pos.at(&format!("{file_ptr}/schema")), "this schema")
                                .with_help(format!("schemas: {}", schema_names().join(", "))),
                        );
                        continue;
                    }
                },
            };
            let parsed: Option<serde_json::Value> = match spec.format {
                Format::Json => serde_json::from_slice(&written.bytes).ok(),
                _ => yaml_serde::from_slice(&written.bytes).ok(),
            };
            let Some(value) = parsed else {
                out.push(
                    Diagnostic::error(
                        Code::Internal,
                        format!("`{mname}/{path}` does not parse back as what it was written as"),
                    )
                    .with_help("this is a bug in stackc: please report it; nothing was written"),
                );
                continue;
            };
            let schema = schema_value(name);
            for e in validator.iter_errors(&value) {
                let at = e.instance_path().to_string();
                if let ValidationErrorKind::AdditionalProperties { unexpected } = e.kind() {
                    // Known keys at that level: the `properties` next to the
                    // failing `additionalProperties` (a key whose schema is
                    // `false` is known only to be refused: never suggested).
                    let known = e
                        .schema_path()
                        .as_str()
                        .strip_suffix("/additionalProperties")
                        .and_then(|parent| schema.as_ref()?.pointer(parent)?.get("properties")?.as_object())
                        .map(|props| {
                            props
                                .iter()
                                .filter(|(_, s)| **s != serde_json::Value::Bool(false))
                                .map(|(k, _)| k.as_str())
                                .collect::<Vec<_>>()
                        })
                        .unwrap_or_default();
                    let list_at = e.schema_path().as_str().replace("/additionalProperties", "/properties");
                    for key in unexpected {
                        let key_ptr = format!("{file_ptr}/content{at}/{}", pointer_escape(key));
                        let level = if at.is_empty() {
                            "the top level".to_owned()
                        } else {
                            format!("`{at}`")
                        };
                        let help = match closest(key, &known) {
                            Some(k) => format!("did you mean `{k}`?"),
                            None => "remove it, or correct its spelling".to_owned(),
                        };
                        out.push(
                            Diagnostic::error(
                                Code::UnknownKey,
                                format!("`{mname}/{path}` has an unknown key `{key}` at {level} (schema `{name}`)"),
                            )
                            .with_label(
                                pos.at(&key_ptr)
                                    .or_else(|| pos.at(&format!("{file_ptr}/content{at}")))
                                    .or_else(|| pos.at(&file_ptr)),
                                "the unknown key is set here",
                            )
                            .with_help(format!(
                                "{help} The keys known there are listed in schemas/{name}.schema.json at `{list_at}`."
                            )),
                        );
                    }
                    continue;
                }
                let shown = if at.is_empty() {
                    "the top level".to_owned()
                } else {
                    format!("`{at}`")
                };
                // A pattern says nothing to a reader: the schema's sentence for
                // the value, where it has one, says what to write instead.
                let schema_at = e.schema_path().as_str().to_owned();
                let why = schema_at
                    .strip_suffix("/pattern")
                    .and_then(|parent| schema.as_ref()?.pointer(parent))
                    .and_then(|s| s.get("description"))
                    .and_then(serde_json::Value::as_str)
                    .map_or_else(|| e.masked().to_string(), str::to_owned);
                out.push(
                    Diagnostic::error(
                        Code::SchemaViolation,
                        format!("`{mname}/{path}` breaks schema `{name}` at {shown}: {why}"),
                    )
                    .with_label(
                        pos.at(&format!("{file_ptr}/content{at}")).or_else(|| pos.at(&file_ptr)),
                        "this value",
                    )
                    .with_help(format!(
                        "see schemas/{name}.schema.json at `{}`: change the override or the module option that set it",
                        e.schema_path()
                    )),
                );
            }
        }
    }
    out
}

fn schema_names() -> Vec<String> {
    SCHEMAS
        .iter()
        .filter_map(|(f, _)| f.strip_suffix(".schema.json"))
        .map(|n| format!("`{n}`"))
        .collect()
}

/// The closest of `known` to `key`, if it is close enough to be a typo of
/// it: optimal string alignment distance (a swap of two neighbours counts
/// once) over the names lower-cased without `_` and `-` (so `maxUploadSize`
/// finds `max_upload_size`), at most a third of the key's length (at least
/// one). Ties go to the smaller raw distance, then to the first in order.
fn closest<'k>(key: &str, known: &[&'k str]) -> Option<&'k str> {
    let norm = |s: &str| -> String {
        s.chars()
            .filter(|c| *c != '_' && *c != '-')
            .flat_map(char::to_lowercase)
            .collect()
    };
    let nkey = norm(key);
    let limit = (nkey.chars().count() / 3).max(1);
    known
        .iter()
        .map(|k| (strsim::osa_distance(&nkey, &norm(k)), strsim::osa_distance(key, k), *k))
        .filter(|(d, _, _)| *d <= limit)
        .min()
        .map(|(_, _, k)| k)
}

fn schema_value(name: &str) -> Option<serde_json::Value> {
    let file = format!("{name}.schema.json");
    let (_, text) = SCHEMAS.iter().find(|(f, _)| *f == file)?;
    serde_json::from_str(text).ok()
}

fn compile_schema(name: &str) -> Result<jsonschema::Validator, String> {
    let file = format!("{name}.schema.json");
    let (_, text) = SCHEMAS
        .iter()
        .find(|(f, _)| *f == file)
        .ok_or_else(|| format!("there is no schema `{name}`"))?;
    let schema: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("schema `{name}`: {e}"))?;
    jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .map_err(|e| format!("schema `{name}` does not compile: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closest_suggests_typos_only() {
        let known = [
            "max_upload_size",
            "brand",
            "branding",
            "public_base",
            "session",
            "server",
        ];
        assert_eq!(closest("max_upload_sise", &known), Some("max_upload_size"));
        assert_eq!(closest("maxUploadSize", &known), Some("max_upload_size"));
        assert_eq!(closest("brnad", &known), Some("brand"));
        assert_eq!(closest("public_bse", &known), Some("public_base"));
        assert_eq!(closest("sesion", &known), Some("session"));
        assert_eq!(closest("completely_else", &known), None);
        assert_eq!(closest("x", &known), None);
    }

    #[test]
    fn the_leak_guard_finds_every_secret_in_every_plain_file() {
        use crate::render::RenderedFile;
        let file = |text: &str, secret: bool| RenderedFile {
            bytes: text.as_bytes().to_vec(),
            mode: 0o644,
            secret,
            owner: (0, 0),
        };
        let mut files = Rendered::new();
        // `abc` lies inside `xabcx`: both are found, overlapping.
        files.insert("m/a.conf".into(), file("key=xabcx\nother=hunter2\n", false));
        files.insert("m/b.conf".into(), file("nothing here", false));
        files.insert("m/secrets/c.env".into(), file("PASS=hunter2 xabcx", true));
        files.insert(
            "m/d.bin".into(),
            RenderedFile {
                bytes: vec![0xff, b'a', b'b', b'c', 0xfe],
                ..file("", false)
            },
        );
        let mut resolved = Resolved::default();
        for (n, v) in [
            ("inner", "abc"),
            ("outer", "xabcx"),
            ("pw", "hunter2"),
            ("unused", "zzz"),
        ] {
            resolved.values.insert(n.into(), v.into());
        }
        let found: Vec<String> = verify(&files, &resolved).into_iter().map(|d| d.message).collect();
        assert_eq!(
            found,
            [
                "secret `inner` would be written to `m/a.conf`, which is not a secret file",
                "secret `outer` would be written to `m/a.conf`, which is not a secret file",
                "secret `pw` would be written to `m/a.conf`, which is not a secret file",
                "secret `inner` would be written to `m/d.bin`, which is not a secret file",
            ]
        );
        assert!(verify(&files, &Resolved::default()).is_empty());
    }

    #[test]
    fn every_schema_compiles() {
        assert!(!SCHEMAS.is_empty());
        for (file, _) in SCHEMAS {
            let name = file.strip_suffix(".schema.json").expect("schemas/*.schema.json");
            compile_schema(name).unwrap_or_else(|e| panic!("{e}"));
        }
    }
}
