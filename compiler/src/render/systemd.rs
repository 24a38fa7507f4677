//! systemd unit files: `{ Section = { Key = value } }`.
//!
//! Sections come in systemd's conventional order, keys sorted. A list is one
//! space-separated line; a record is one line per entry (`Environment=`),
//! quoted and with `%` escaped so systemd's specifier expansion leaves the
//! value alone.

use serde_json::Value;

use super::{ContentError, HEADER, scalar};

const SECTION_ORDER: &[&str] = &["Unit", "Service", "Socket", "Timer", "Path", "Mount", "Install"];

pub fn render(content: &Value) -> Result<String, Vec<ContentError>> {
    let sections = content
        .as_object()
        .ok_or_else(|| vec![ContentError::new("", "a unit needs a record of sections")])?;
    let mut names: Vec<&String> = sections.keys().collect();
    names.sort_by_key(|n| {
        (
            SECTION_ORDER.iter().position(|s| s == n).unwrap_or(SECTION_ORDER.len()),
            n.as_str(),
        )
    });

    let mut out = format!("{HEADER}\n");
    let mut errors = Vec::new();
    for name in names {
        // A `]` or a control character would start a section of the user's
        // choosing: refuse rather than emit an injected unit.
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            errors.push(ContentError::new(
                format!("/{name}"),
                "a section name is letters, digits and `-`",
            ));
            continue;
        }
        let Some(keys) = sections[name].as_object() else {
            errors.push(ContentError::new(
                format!("/{name}"),
                format!("section [{name}] must be a record"),
            ));
            continue;
        };
        if keys.is_empty() {
            continue;
        }
        out.push_str(&format!("\n[{name}]\n"));
        for (key, value) in keys {
            let ptr = format!("/{name}/{key}");
            if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
                errors.push(ContentError::new(
                    &ptr,
                    "a setting name is letters, digits, `-` and `_`",
                ));
                continue;
            }
            match value {
                Value::Null => {}
                Value::Object(entries) => {
                    for (k, v) in entries {
                        match scalar(v, "yes", "no") {
                            Some(v) if one_line(&v) && name_ok(key, k) => {
                                out.push_str(&format!("{key}={}\n", quote(&format!("{k}={v}"))));
                            }
                            _ => errors.push(ContentError::new(
                                format!("{ptr}/{k}"),
                                format!("`{key}` entry `{k}` must be a one-line scalar with a name without `=`"),
                            )),
                        }
                    }
                }
                Value::Array(items) => {
                    let words: Option<Vec<String>> = items.iter().map(|i| scalar(i, "yes", "no")).collect();
                    match words {
                        Some(w) if w.iter().all(|w| one_line(w) && !w.contains(' ')) => {
                            if !w.is_empty() {
                                out.push_str(&format!("{key}={}\n", w.join(" ")));
                            }
                        }
                        _ => errors.push(ContentError::new(
                            &ptr,
                            format!("`{key}` must be a list of one-line scalars"),
                        )),
                    }
                }
                v => match scalar(v, "yes", "no") {
                    Some(s) if one_line(&s) => out.push_str(&format!("{key}={s}\n")),
                    _ => errors.push(ContentError::new(&ptr, format!("`{key}` must be on one line"))),
                },
            }
        }
    }
    if errors.is_empty() { Ok(out) } else { Err(errors) }
}

/// A value systemd reads as one line: no line break, and no trailing `\`
/// (a continuation that would swallow the next setting).
fn one_line(s: &str) -> bool {
    !s.contains(['\n', '\r']) && !s.ends_with('\\')
}

/// Entry names of a record-valued setting: no `=`; for `Environment=` a
/// proper variable name.
fn name_ok(key: &str, name: &str) -> bool {
    if key == "Environment" {
        super::env::valid_name(name)
    } else {
        !name.is_empty() && !name.contains('=')
    }
}

/// Double-quoted systemd string: `\` and `"` escaped, `%` doubled.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '%' => out.push_str("%%"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_sections_in_order() {
        let unit = json!({
            "Install": { "WantedBy": "multi-user.target" },
            "Service": { "ExecStart": "/bin/x", "NoNewPrivileges": true, "Environment": { "A": "1%", "B": "say \"hi\"" }, "ReadWritePaths": ["/a", "/b"] },
            "Unit": { "Description": "X" }
        });
        let text = render(&unit).unwrap();
        assert_eq!(
            text,
            format!(
                "{HEADER}\n\n[Unit]\nDescription=X\n\n[Service]\nEnvironment=\"A=1%%\"\nEnvironment=\"B=say \\\"hi\\\"\"\nExecStart=/bin/x\nNoNewPrivileges=yes\nReadWritePaths=/a /b\n\n[Install]\nWantedBy=multi-user.target\n"
            )
        );
    }

    #[test]
    fn refuses_injection_through_names_and_continuations() {
        for unit in [
            json!({ "Service": { "X=1\nExecStartPre": "/bin/evil" } }),
            json!({ "Evil]\n[Service": { "User": "root" } }),
            json!({ "Unit": { "Description": "ends in a backslash\\" } }),
            json!({ "Service": { "ReadWritePaths": ["/var/lib/my app"] } }),
        ] {
            assert!(render(&unit).is_err(), "{unit}");
        }
    }

    #[test]
    fn refuses_newlines() {
        let errs = render(&json!({ "Service": { "ExecStart": "/bin/x\nExecStartPre=/bin/evil" } })).unwrap_err();
        assert_eq!(errs[0].ptr, "/Service/ExecStart");
    }
}
