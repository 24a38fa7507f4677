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

pub fn verify(files: &Rendered, secrets: &Resolved) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for (path, f) in files.iter().filter(|(_, f)| !f.secret) {
        let text = String::from_utf8_lossy(&f.bytes);
        for name in secrets
            .values
            .iter()
            .filter(|(_, v)| text.contains(v.as_str()))
            .map(|(n, _)| n)
        {
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
            let file_ptr = format!("/machines/{}/files/{}", pointer_escape(mname), pointer_escape(path));
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
                _ => serde_yaml::from_slice(&written.bytes).ok(),
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
            for e in validator.iter_errors(&value) {
                let at = e.instance_path().to_string();
                let shown = if at.is_empty() {
                    "the top level".to_owned()
                } else {
                    format!("`{at}`")
                };
                out.push(
                    Diagnostic::error(
                        Code::SchemaViolation,
                        format!("`{mname}/{path}` breaks schema `{name}` at {shown}: {}", e.masked()),
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
    fn every_schema_compiles() {
        assert!(!SCHEMAS.is_empty());
        for (file, _) in SCHEMAS {
            let name = file.strip_suffix(".schema.json").expect("schemas/*.schema.json");
            compile_schema(name).unwrap_or_else(|e| panic!("{e}"));
        }
    }
}
