//! Environment files (`EnvironmentFile=`): `KEY=value` lines, sorted.

use serde_json::Value;

use super::{ContentError, HEADER, scalar};

pub fn render(content: &Value) -> Result<String, Vec<ContentError>> {
    render_vars(content, "a one-line scalar", |s| {
        (!s.contains(['\n', '\0'])).then(|| quote(s))
    })
}

/// `KEY=<value>` lines, one per variable, sorted, after the header. `value`
/// quotes a value for the file's reader, or refuses it (`None`); `rule`
/// says what it accepts, for the diagnostic (which never quotes the value).
pub(super) fn render_vars(
    content: &Value,
    rule: &str,
    value: impl Fn(&str) -> Option<String>,
) -> Result<String, Vec<ContentError>> {
    let vars = content
        .as_object()
        .ok_or_else(|| vec![ContentError::new("", "an environment file needs a record of variables")])?;
    let mut out = format!("{HEADER}\n");
    let mut errors = Vec::new();
    for (k, v) in vars {
        if !valid_name(k) {
            errors.push(ContentError::new(
                format!("/{k}"),
                format!("`{k}` is not a valid environment variable name"),
            ));
            continue;
        }
        match scalar(v, "true", "false").as_deref().and_then(&value) {
            Some(quoted) => out.push_str(&format!("{k}={quoted}\n")),
            None => errors.push(ContentError::new(format!("/{k}"), format!("`{k}` must be {rule}"))),
        }
    }
    if errors.is_empty() { Ok(out) } else { Err(errors) }
}

pub(super) fn valid_name(k: &str) -> bool {
    let mut b = k.bytes();
    b.next().is_some_and(|c| c.is_ascii_alphabetic() || c == b'_') && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// Bare when every character is plainly safe, else double-quoted with
/// `\`, `"`, `` ` `` and `$` escaped (systemd's env-file rules).
fn quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+/=._-:@,".contains(&b))
    {
        return s.to_owned();
    }
    let mut out = String::from("\"");
    for c in s.chars() {
        if matches!(c, '\\' | '"' | '`' | '$') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn quoting() {
        let text = render(&json!({ "B": "a b$c", "A": "YWJj+/=" })).unwrap();
        assert_eq!(text, format!("{HEADER}\nA=YWJj+/=\nB=\"a b\\$c\"\n"));
        assert!(render(&json!({ "1X": "v" })).is_err());
    }
}
