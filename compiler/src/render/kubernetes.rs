//! Kubernetes manifests: YAML like any other, except that a manifest may
//! carry other files of its machine. `{"$stackc_file": "synapse/homeserver.yaml"}`
//! becomes that file's text (a ConfigMap or Secret value), and
//! `{"$stackc_digest": [paths]}` a digest of those files (a pod annotation,
//! so pods roll when what they carry changes). Both come from the rendered
//! bytes, so a manifest can never disagree with the file it carries.

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{ContentError, Rendered};
use crate::secrets::Keying;

const FILE: &str = "$stackc_file";
const DIGEST: &str = "$stackc_digest";

/// The machine a manifest belongs to and its files rendered so far.
pub struct Machine<'a> {
    pub name: &'a str,
    pub files: &'a Rendered,
    pub keying: &'a Keying,
}

impl Machine<'_> {
    /// A file of this machine rendered so far, by its path in the machine.
    fn file(&self, path: &str) -> Option<&super::RenderedFile> {
        self.files.get(&format!("{}/{path}", self.name))
    }
}

/// Whether `v` asks for a digest anywhere (rendered after the others).
pub fn digests(v: &Value) -> bool {
    match v {
        Value::Object(o) => o.contains_key(DIGEST) || o.values().any(digests),
        Value::Array(a) => a.iter().any(digests),
        _ => false,
    }
}

pub fn render(content: &Value, secret: bool, m: &Machine) -> Result<String, Vec<ContentError>> {
    let mut errors = Vec::new();
    let filled = fill(content, "", secret, m, &mut errors);
    if !errors.is_empty() {
        return Err(errors);
    }
    super::yaml(&filled)
}

fn fill(v: &Value, ptr: &str, secret: bool, m: &Machine, errors: &mut Vec<ContentError>) -> Value {
    match v {
        Value::Object(o) if o.len() == 1 && o.contains_key(FILE) => {
            let ptr = format!("{ptr}/{}", crate::eval::pointer_escape(FILE));
            let Some(path) = o[FILE].as_str() else {
                errors.push(ContentError::new(ptr, "`$stackc_file` needs a path"));
                return Value::Null;
            };
            match carried(path, secret, m) {
                Ok(f) => match std::str::from_utf8(&f.bytes) {
                    Ok(text) => Value::String(text.to_owned()),
                    Err(_) => {
                        errors.push(ContentError::new(ptr, format!("`{path}` is not UTF-8 text")));
                        Value::Null
                    }
                },
                Err(e) => {
                    errors.push(ContentError::new(ptr, e));
                    Value::Null
                }
            }
        }
        Value::Object(o) if o.len() == 1 && o.contains_key(DIGEST) => {
            let ptr = format!("{ptr}/{}", crate::eval::pointer_escape(DIGEST));
            let Some(paths) = o[DIGEST].as_array() else {
                errors.push(ContentError::new(ptr, "`$stackc_digest` needs an array of paths"));
                return Value::Null;
            };
            // One line per file: its path and its manifest digest.
            let mut h = Sha256::new();
            for (i, p) in paths.iter().enumerate() {
                let Some(path) = p.as_str() else {
                    errors.push(ContentError::new(format!("{ptr}/{i}"), "a path must be a string"));
                    continue;
                };
                match m.file(path) {
                    Some(f) => {
                        let (algo, digest) = f.digest(m.keying);
                        h.update(format!("{path} {algo}:{digest}\n"));
                    }
                    None => errors.push(ContentError::new(
                        format!("{ptr}/{i}"),
                        format!("there is no file `{path}` on machine `{}` to digest", m.name),
                    )),
                }
            }
            Value::String(format!("sha256:{}", crate::load::hex(&h.finalize())))
        }
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| {
                    let ptr = format!("{ptr}/{}", crate::eval::pointer_escape(k));
                    (k.clone(), fill(v, &ptr, secret, m, errors))
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(
            a.iter()
                .enumerate()
                .map(|(i, v)| fill(v, &format!("{ptr}/{i}"), secret, m, errors))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// The rendered file a manifest carries; a secret one only into a secret
/// manifest.
fn carried<'a>(path: &str, secret: bool, m: &'a Machine) -> Result<&'a super::RenderedFile, String> {
    let f = m
        .file(path)
        .ok_or_else(|| format!("there is no file `{path}` on machine `{}` to carry", m.name))?;
    if f.secret && !secret {
        return Err(format!(
            "`{path}` is a secret file: only a secret manifest (a Kubernetes Secret) may carry it"
        ));
    }
    Ok(f)
}
