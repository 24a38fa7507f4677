//! docker compose files. YAML is written by yaml_serde from the structured
//! content (keys sorted), never templated. Compose interpolates `$` in
//! every value of the file, so each `$` is written `$$`: a password or a
//! digest (`$pbkdf2-sha512$…`) reaches the container unchanged.

use serde_json::Value;

use super::ContentError;

pub fn render(content: &Value) -> Result<String, Vec<ContentError>> {
    if !content.is_object() || !content.get("services").is_some_and(Value::is_object) {
        return Err(vec![ContentError::new(
            "",
            "a compose file needs a record with `services`",
        )]);
    }
    super::yaml(&escape(content))
}

/// `$` → `$$` in every string value (keys are names, not interpolated).
fn escape(v: &Value) -> Value {
    match v {
        Value::String(s) => Value::String(s.replace('$', "$$")),
        Value::Array(items) => Value::Array(items.iter().map(escape).collect()),
        Value::Object(map) => Value::Object(map.iter().map(|(k, v)| (k.clone(), escape(v))).collect()),
        other => other.clone(),
    }
}

/// `env_file:` contents: `KEY='value'`. Single quotes make compose take the
/// value literally (no `$` interpolation, no escapes).
pub fn render_env(content: &Value) -> Result<String, Vec<ContentError>> {
    super::env::render_vars(
        content,
        "a one-line scalar without `'` to be taken literally by compose",
        |s| (!s.contains(['\n', '\r', '\''])).then(|| format!("'{s}'")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::HEADER;
    use serde_json::json;

    #[test]
    fn dollars_are_escaped_and_keys_sorted() {
        let c = json!({ "services": { "db": { "image": "postgres:16", "environment": { "B": "p$ss", "A": "$pbkdf2-sha512$1$x$y" } } }, "name": "n" });
        let text = render(&c).unwrap();
        assert!(text.contains("A: $$pbkdf2-sha512$$1$$x$$y\n"), "{text}");
        assert!(text.contains("B: p$$ss\n"), "{text}");
        assert!(text.find("name: n").unwrap() < text.find("services:").unwrap());
    }

    #[test]
    fn env_values_are_literal() {
        assert_eq!(
            render_env(&json!({ "P": "a$b c" })).unwrap(),
            format!("{HEADER}\nP='a$b c'\n")
        );
        assert!(render_env(&json!({ "P": "it's" })).is_err());
    }
}
