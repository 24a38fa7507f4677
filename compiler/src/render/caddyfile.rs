//! Caddyfile: a global options block and one block per site, each a list of
//! directives `{ name, args, body }`. Laid out as `caddy fmt` would (tabs,
//! a blank line between blocks), so `caddy validate` has nothing to say.

use serde::Deserialize;
use serde_json::Value;

use super::{ContentError, HEADER};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Directive {
    name: String,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    body: Vec<Directive>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Caddyfile {
    #[serde(default)]
    global: Vec<Directive>,
    sites: std::collections::BTreeMap<String, Vec<Directive>>,
}

pub fn render(content: &Value) -> Result<String, Vec<ContentError>> {
    // Serde's message would quote the offending value, which may be a
    // secret: name the shape expected, never the content.
    let file = Caddyfile::deserialize(content).map_err(|_| {
        vec![ContentError::new(
            "",
            "not a Caddyfile: expected `{ global = [directive], sites = { host = [directive] } }`, a directive being `{ name, args = [string], body = [directive] }`",
        )]
    })?;
    let mut errors = Vec::new();
    let mut out = format!("{HEADER}\n");
    if !file.global.is_empty() {
        out.push_str("{\n");
        block(&file.global, 1, "/global", &mut out, &mut errors);
        out.push_str("}\n");
    }
    for (addr, directives) in &file.sites {
        if !token_ok(addr) || addr.contains(char::is_whitespace) {
            errors.push(ContentError::new(
                format!("/sites/{addr}"),
                "a site address must be one line without spaces",
            ));
            continue;
        }
        // `caddy fmt`: blocks are separated by a blank line, the first one
        // follows the header comment directly.
        if out.len() > HEADER.len() + 1 {
            out.push('\n');
        }
        out.push_str(&format!("{addr} {{\n"));
        block(directives, 1, &format!("/sites/{addr}"), &mut out, &mut errors);
        out.push_str("}\n");
    }
    if errors.is_empty() { Ok(out) } else { Err(errors) }
}

fn block(ds: &[Directive], depth: usize, ptr: &str, out: &mut String, errors: &mut Vec<ContentError>) {
    let indent = "\t".repeat(depth);
    for (i, d) in ds.iter().enumerate() {
        let here = format!("{ptr}/{i}");
        if d.name.is_empty() || !d.name.bytes().all(|b| b.is_ascii_graphic() && !b"{}\"#".contains(&b)) {
            errors.push(ContentError::new(
                &here,
                "a directive name must be one word of visible characters, without `{}\"#`",
            ));
            continue;
        }
        let mut line = format!("{indent}{}", d.name);
        for (j, a) in d.args.iter().enumerate() {
            if !token_ok(a) {
                errors.push(ContentError::new(
                    format!("{here}/args/{j}"),
                    format!("argument {j} cannot be written in a Caddyfile (it spans lines)"),
                ));
            }
            line.push(' ');
            line.push_str(&quote(a));
        }
        if d.body.is_empty() {
            out.push_str(&line);
            out.push('\n');
        } else {
            out.push_str(&line);
            out.push_str(" {\n");
            block(&d.body, depth + 1, &format!("{here}/body"), out, errors);
            out.push_str(&format!("{indent}}}\n"));
        }
    }
}

fn token_ok(s: &str) -> bool {
    !s.contains('\n') && !s.contains('\r')
}

/// Quote a token when Caddy would otherwise split or misread it.
fn quote(s: &str) -> String {
    let plain = !s.is_empty()
        && !s.contains(char::is_whitespace)
        && !s.contains('"')
        && !s.starts_with('#')
        && s != "{"
        && s != "}";
    if plain {
        s.to_owned()
    } else {
        format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn site_with_nested_block() {
        let c = json!({
            "global": [{ "name": "email", "args": ["a@b.c"] }],
            "sites": { "x.example.com": [
                { "name": "header", "args": ["/x", "X-Frame-Options", "DENY"] },
                { "name": "reverse_proxy", "args": ["127.0.0.1:1"], "body": [{ "name": "header_up", "args": ["Host", "{host}"] }] }
            ]}
        });
        assert_eq!(
            render(&c).unwrap(),
            format!(
                "{HEADER}\n{{\n\temail a@b.c\n}}\n\nx.example.com {{\n\theader /x X-Frame-Options DENY\n\treverse_proxy 127.0.0.1:1 {{\n\t\theader_up Host {{host}}\n\t}}\n}}\n"
            )
        );
    }

    #[test]
    fn quotes_spaces() {
        assert_eq!(quote("a b"), "\"a b\"");
        assert_eq!(quote(""), "\"\"");
    }
}
