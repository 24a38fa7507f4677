//! Caddyfile: a global options block and one block per site, each a list of
//! directives `{ name, args, body }`. Laid out as `caddy fmt` would (tabs,
//! a blank line between blocks), so `caddy validate` has nothing to say.

use serde::Deserialize;
use serde_json::{Value, json};

use super::{ContentError, HEADER, HandlerAt, Origin};
use crate::eval::pointer_escape;
use crate::model::{Handler, MatchKind, Matcher, ProxyTo, Site, SiteTls, Then, UpstreamTarget};

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
            if a.contains('\r') {
                errors.push(ContentError::new(
                    format!("{here}/args/{j}"),
                    format!("argument {j} cannot be written in a Caddyfile (it holds a carriage return)"),
                ));
            }
            line.push(' ');
            if a.contains('\n') {
                line.push_str(&heredoc(a, &format!("{indent}\t")));
            } else {
                line.push_str(&quote(a));
            }
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

/// Text that spans lines as a Caddy heredoc: `<<BODY`, the lines, then the
/// marker, indented by `padding`, which Caddy strips from every line (a
/// blank line may keep it or not). The marker is one the text does not
/// hold: Caddy ends the heredoc at the first line that is the marker,
/// however indented. What follows the marker on its line is the next
/// argument, as after any token.
fn heredoc(text: &str, padding: &str) -> String {
    let marker = (0..)
        .map(|n| if n == 0 { "BODY".to_owned() } else { format!("BODY{n}") })
        .find(|m| !text.contains(m.as_str()))
        .unwrap_or_default();
    let mut out = format!("<<{marker}\n");
    for line in text.split('\n') {
        if !line.is_empty() {
            out.push_str(padding);
            out.push_str(line);
        }
        out.push('\n');
    }
    out.push_str(padding);
    out.push_str(&marker);
    out
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

/// A site's block: `tls internal` if asked, the user's directives, a
/// `handle` per fixed response (exact path), a named `path` matcher and a
/// `handle` per route (named, so Caddy keeps them in the order written:
/// it sorts `handle` blocks with a single path by specificity), then the
/// default upstream, in a `handle` of its own when anything precedes it.
/// `addresses[i]` is the `i`th of `site.upstreams()` as the proxy reaches
/// it. `handlers` reads such a block back.
pub fn site_block(site: &Site, addresses: &[String]) -> (Value, Vec<Origin>) {
    let mut block: Vec<Value> = Vec::new();
    let mut from: Vec<Origin> = Vec::new();
    let here = |block: &Vec<Value>| format!("/{}", block.len());
    let proxy_to = |address: &str, headers: &std::collections::BTreeMap<String, String>| {
        let mut d = json!({ "name": "reverse_proxy", "args": [address] });
        if !headers.is_empty() {
            let body: Vec<Value> = headers
                .iter()
                .map(|(k, v)| json!({ "name": "header_up", "args": [k, v] }))
                .collect();
            d["body"] = Value::Array(body);
        }
        d
    };
    if site.tls == SiteTls::Internal {
        from.push(Origin::one("/tls", here(&block)));
        block.push(json!({ "name": "tls", "args": ["internal"] }));
    }
    for (k, d) in site.directives.iter().enumerate() {
        from.push(Origin::all(format!("/directives/{k}"), here(&block)));
        block.push(d.clone());
    }
    for (path, r) in &site.respond {
        let (opt, to) = (format!("/respond/{}", pointer_escape(path)), here(&block));
        let mut body: Vec<Value> = Vec::new();
        for (j, (h, v)) in r.headers.iter().enumerate() {
            let header = format!("{opt}/headers/{}", pointer_escape(h));
            from.push(Origin::one(&header, format!("{to}/body/{j}")));
            from.push(Origin::one(&header, format!("{to}/body/{j}/args/1")));
            body.push(json!({ "name": "header", "args": [h, v] }));
        }
        let at = format!("{to}/body/{}", body.len());
        from.push(Origin::one(&opt, &at));
        from.push(Origin::one(format!("{opt}/body"), format!("{at}/args/0")));
        from.push(Origin::one(format!("{opt}/status"), format!("{at}/args/1")));
        body.push(json!({ "name": "respond", "args": [r.body, r.status.to_string()] }));
        from.push(Origin::one(&opt, &to));
        block.push(json!({ "name": "handle", "args": [path], "body": body }));
    }
    for (i, (r, address)) in site.routes.iter().zip(addresses).enumerate() {
        let opt = format!("/routes/{i}");
        let matcher = format!("@route{i}");
        let to = here(&block);
        from.push(Origin::one(&opt, &to));
        for j in 0..r.paths.len() {
            from.push(Origin::one(format!("{opt}/paths/{j}"), format!("{to}/args/{}", j + 1)));
        }
        let args: Vec<&str> = std::iter::once("path")
            .chain(r.paths.iter().map(String::as_str))
            .collect();
        block.push(json!({ "name": matcher, "args": args }));
        let to = here(&block);
        from.push(Origin::one(&opt, &to));
        from.push(Origin::one(format!("{opt}/upstream"), format!("{to}/body/0")));
        from.push(Origin::one(format!("{opt}/upstream"), format!("{to}/body/0/args/0")));
        for (k, h) in r.headers_up.keys().enumerate() {
            let header = format!("{opt}/headers_up/{}", pointer_escape(h));
            from.push(Origin::one(&header, format!("{to}/body/0/body/{k}")));
            from.push(Origin::one(&header, format!("{to}/body/0/body/{k}/args/1")));
        }
        block.push(json!({ "name": "handle", "args": [matcher], "body": [proxy_to(address, &r.headers_up)] }));
    }
    if let (Some(_), Some(last)) = (&site.upstream, addresses.last()) {
        let to = here(&block);
        from.push(Origin::one("/upstream", &to));
        let none = std::collections::BTreeMap::new();
        if site.routes.is_empty() && site.respond.is_empty() {
            from.push(Origin::one("/upstream", format!("{to}/args/0")));
            block.push(proxy_to(last, &none));
        } else {
            from.push(Origin::one("/upstream", format!("{to}/body/0")));
            from.push(Origin::one("/upstream", format!("{to}/body/0/args/0")));
            block.push(json!({ "name": "handle", "body": [proxy_to(last, &none)] }));
        }
    }
    (Value::Array(block), from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn text_that_spans_lines_is_a_heredoc() {
        let c = json!({ "sites": { "x.example.com": [
            { "name": "handle", "args": ["/robots.txt"], "body": [
                { "name": "respond", "args": ["User-agent: *\n\nDisallow: / BODY\n", "200"] },
            ] },
        ]}});
        assert_eq!(
            render(&c).unwrap(),
            format!(
                "{HEADER}\nx.example.com {{\n\thandle /robots.txt {{\n\t\trespond <<BODY1\n\t\t\tUser-agent: *\n\n\t\t\tDisallow: / BODY\n\n\t\t\tBODY1 200\n\t}}\n}}\n"
            )
        );
        let cr = json!({ "sites": { "x.example.com": [{ "name": "respond", "args": ["a\r\nb"] }] } });
        assert!(render(&cr).is_err(), "a carriage return is refused");
    }

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

/// A directive of a block: its place, name and string arguments (with
/// their places).
struct Written<'a> {
    at: String,
    name: &'a str,
    args: Vec<(usize, &'a str)>,
    value: &'a Value,
}

fn directives<'a>(list: &'a Value, at: &str) -> Vec<Written<'a>> {
    let Some(list) = list.as_array() else { return Vec::new() };
    list.iter()
        .enumerate()
        .filter(|(_, d)| d.is_object())
        .map(|(j, d)| Written {
            at: format!("{at}/{j}"),
            name: d.get("name").and_then(Value::as_str).unwrap_or(""),
            args: match d.get("args").and_then(Value::as_array) {
                Some(a) => a
                    .iter()
                    .enumerate()
                    .filter_map(|(i, v)| Some((i, v.as_str()?)))
                    .collect(),
                None => Vec::new(),
            },
            value: d,
        })
        .collect()
}

/// `@name`, `/path…` and `*…` are matcher tokens in a directive's first argument.
fn is_matcher(arg: &str) -> bool {
    arg.starts_with(['@', '/', '*'])
}

/// The handlers of a Caddy site block (a list of `{ name, args, body }`
/// directives, as written), in the order Caddy tries them: `handle` blocks
/// with a matcher in written order, those without one last (Caddy sorts
/// them last), then a top-level `respond` (before `reverse_proxy` in
/// Caddy's directive order), then a top-level `reverse_proxy`. The router
/// takes the first that matches (`select = 'first`). A named matcher that
/// is not a `path` matcher matches nothing here. `targets` names the
/// service behind an upstream address the module wrote.
pub fn handlers(block: &Value, targets: &[UpstreamTarget]) -> Vec<(Handler, HandlerAt)> {
    let all = directives(block, "");
    // Named path matchers (`@api path /api/*`): a later one of a name wins.
    let mut named: std::collections::BTreeMap<&str, &Written> = std::collections::BTreeMap::new();
    for d in &all {
        if d.name.starts_with('@') && d.args.first().is_some_and(|(_, a)| *a == "path") {
            named.insert(d.name, d);
        }
    }
    let match_of = |d: &Written| -> (Matcher, Vec<String>) {
        let any = (
            Matcher {
                kind: MatchKind::Any,
                paths: Vec::new(),
            },
            Vec::new(),
        );
        let Some((i, first)) = d.args.first() else { return any };
        if !is_matcher(first) {
            any
        } else if first.starts_with('@') {
            let (paths, at) = named.get(first).map_or((Vec::new(), Vec::new()), |m| {
                let args = &m.args[1..];
                let paths = args.iter().map(|(_, a)| (*a).to_owned()).collect();
                (paths, args.iter().map(|(j, _)| format!("{}/args/{j}", m.at)).collect())
            });
            (
                Matcher {
                    kind: MatchKind::Glob,
                    paths,
                },
                at,
            )
        } else {
            let at = vec![format!("{}/args/{i}", d.at)];
            (
                Matcher {
                    kind: MatchKind::Glob,
                    paths: vec![(*first).to_owned()],
                },
                at,
            )
        }
    };
    let then_of = |d: &Written| -> (Then, Option<String>) {
        let rest = match d.args.first() {
            Some((_, a)) if is_matcher(a) => &d.args[1..],
            _ => &d.args[..],
        };
        let status = |a: &str| {
            let b = a.as_bytes();
            (b.len() == 3 && (b'1'..=b'5').contains(&b[0]) && b[1..].iter().all(u8::is_ascii_digit))
                .then(|| a.parse::<u16>().ok())
                .flatten()
        };
        let arg_at = |i: usize| format!("{}/args/{i}", d.at);
        if d.name == "respond" {
            return match rest {
                [] => (
                    Then::Respond {
                        status: 200,
                        body: String::new(),
                    },
                    None,
                ),
                [(_, only)] if status(only).is_some() => (
                    Then::Respond {
                        status: status(only).unwrap_or(200),
                        body: String::new(),
                    },
                    None,
                ),
                [(i, body), more @ ..] => {
                    let code = more.first().and_then(|(_, s)| status(s)).unwrap_or(200);
                    (
                        Then::Respond {
                            status: code,
                            body: (*body).to_owned(),
                        },
                        Some(arg_at(*i)),
                    )
                }
            };
        }
        let Some((i, written)) = rest.first() else {
            return (Then::Other("`reverse_proxy` without an upstream".into()), None);
        };
        // The first upstream, without its scheme: `host:port` as written.
        let addr = written.rsplit("://").next().unwrap_or(written).trim_end_matches('/');
        let known = targets.iter().find(|t| t.address == addr).map(|t| &t.target);
        let proxy = ProxyTo {
            machine: known.map(|t| t.machine.clone()),
            service: known.map(|t| t.service.clone()),
            port: known.map(|t| t.port.clone()),
            upstream: Some(addr.to_owned()),
        };
        (Then::Proxy(proxy), Some(arg_at(*i)))
    };
    let mut out = Vec::new();
    let mut push = |d: &Written, answer: Option<&Written>, other: Option<String>| {
        let (matcher, paths) = match_of(d);
        let (then, arg) = match (answer, other) {
            (Some(a), _) => then_of(a),
            (None, Some(what)) => (Then::Other(what), None),
            (None, None) => then_of(d),
        };
        let at = HandlerAt {
            directive: d.at.clone(),
            then: answer.map_or_else(|| d.at.clone(), |a| a.at.clone()),
            arg,
            paths,
        };
        out.push((Handler { matcher, then }, at));
    };
    let handles: Vec<&Written> = all
        .iter()
        .filter(|d| d.name == "handle" || d.name == "handle_path")
        .collect();
    let (with_args, bare): (Vec<&Written>, Vec<&Written>) = handles.into_iter().partition(|d| !d.args.is_empty());
    for d in with_args.into_iter().chain(bare) {
        let body = d
            .value
            .get("body")
            .map_or(Vec::new(), |b| directives(b, &format!("{}/body", d.at)));
        match body.iter().find(|b| b.name == "reverse_proxy" || b.name == "respond") {
            Some(inner) => push(d, Some(inner), None),
            None => push(
                d,
                None,
                Some(format!("`{}` without `reverse_proxy` or `respond`", d.name)),
            ),
        }
    }
    for name in ["respond", "reverse_proxy"] {
        for d in all.iter().filter(|d| d.name == name) {
            push(d, None, None);
        }
    }
    out
}
