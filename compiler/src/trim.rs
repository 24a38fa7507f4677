//! Nickel's `std.ncl` trimmed to what a stack can name, positions kept.
//!
//! Nickel parses, compiles and transforms all of its `std.ncl` on every
//! run (8 ms of a small stack's 35), yet a stack calls a few dozen of its
//! 170 functions. A function that none of the texts evaluation reads (the
//! project's files, the loaded stackc modules, the kept functions
//! themselves) names by a qualified name (`S.f`, `std.f`) has its body
//! replaced by [`MARKER`], an unbound name, and spaces, every newline kept.
//! A stack that reaches one anyway (`std.record.get "x" std.array`) fails
//! on the marker, and `eval` evaluates it again with the whole `std.ncl`:
//! a result is always the full stdlib's.
//!
//! stackc's own modules are unloaded the same way ([`unload`]), value by
//! value, where a `# load-body-when:` line says which words a stack names
//! when it may need that value ([`bodies_loaded_when`], run by `build.rs`):
//! their reachability over names would keep almost everything, since the
//! lowering names every module's functions behind conditions only
//! evaluation decides.

use std::ops::Range;
use std::sync::Arc;

/// What a trimmed body says; unbound, so forcing it is an error that
/// names it.
pub const MARKER: &str = "stackc_unloaded";

/// `std.ncl`'s functions, read once a process.
pub struct Std {
    /// `std.ncl` as evaluation reads it (documentation blanked).
    text: Arc<str>,
    tokens: Vec<Token>,
    fields: Vec<Field>,
    /// `key(section, name)` (section `std` at the top) to field, sorted. A
    /// collision keeps one field more, never one less.
    index: Vec<(u64, usize)>,
    /// The section names, and `std`: the only qualifiers worth a lookup.
    sections: Vec<Vec<u8>>,
    /// What Nickel's `internals.ncl` reaches: always kept.
    roots: Vec<usize>,
}

/// A field of `std.ncl` with a value: `std.NAME` or `std.SECTION.NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: Range<usize>,
    /// From the value's first byte to its last, the `=` and `,` outside.
    pub body: Range<usize>,
    /// The section's name (`array`), `None` at the top.
    section: Option<Range<usize>>,
    /// Its tokens, name to value.
    tokens: Range<usize>,
}

const TOP: &[u8] = b"std";

impl Std {
    /// Reads the functions of `text` (`std.ncl`, documentation blanked);
    /// whatever `internals` (Nickel's `internals.ncl`) names is kept.
    pub fn new(text: Arc<str>, internals: &str) -> Std {
        let b = text.as_bytes();
        let tokens = lex(b);
        let mut fields = Vec::new();
        if let Some(open) = tokens.iter().position(|t| t.kind == Kind::Punct(b'{')) {
            record(b, &tokens, open, None, &mut fields);
        }
        let mut std = Std {
            text: text.clone(),
            tokens,
            fields,
            index: Vec::new(),
            sections: Vec::new(),
            roots: Vec::new(),
        };
        std.index = (0..std.fields.len())
            .map(|i| (key(std.section_of(i), &b[std.fields[i].name.clone()]), i))
            .collect();
        std.index.sort_unstable();
        std.sections = (0..std.fields.len()).map(|i| std.section_of(i).to_vec()).collect();
        std.sections.sort_unstable();
        std.sections.dedup();
        std.roots = std.reached([internals], []);
        std
    }

    fn section_of(&self, i: usize) -> &[u8] {
        self.fields[i].section.clone().map_or(TOP, |r| &self.text.as_bytes()[r])
    }

    /// The fields `section.name` may be (see `index`).
    fn lookup(&self, section: &[u8], name: &[u8]) -> impl Iterator<Item = usize> + '_ {
        let k = key(section, name);
        let from = self.index.partition_point(|(x, _)| *x < k);
        self.index[from..]
            .iter()
            .take_while(move |(x, _)| *x == k)
            .map(|(_, i)| *i)
    }

    /// The fields that `texts` and `accesses` (`a.b` pairs read before)
    /// name directly: `S.f` names `std.S.f`, and `std.f` names `std.f`.
    fn reached<'a, 'b>(
        &self,
        texts: impl IntoIterator<Item = &'a str>,
        accesses: impl IntoIterator<Item = &'b (&'b str, &'b str)>,
    ) -> Vec<usize> {
        let mut out = Vec::new();
        let mut named = |qualifier: &[u8], name: &[u8]| {
            if self.sections.iter().any(|s| s == qualifier) {
                out.extend(self.lookup(qualifier, name));
            }
        };
        for t in texts {
            each_access(t.as_bytes(), &mut named);
        }
        for (q, n) in accesses {
            named(q.as_bytes(), n.as_bytes());
        }
        out
    }

    /// What field `i`'s annotations and value name: `S.f` and `std.f`
    /// anywhere; a bare `f` is a field of its own section or of the top
    /// record (both recursive records; a local name may keep one more).
    fn refs(&self, i: usize, out: &mut Vec<usize>) {
        let b = self.text.as_bytes();
        let ts = &self.tokens[self.fields[i].tokens.clone()];
        let own = self.section_of(i);
        for (k, t) in ts.iter().enumerate().filter(|(_, t)| t.kind == Kind::Ident) {
            let w = &b[t.range.clone()];
            if k >= 2 && ts[k - 1].kind == Kind::Punct(b'.') && ts[k - 2].kind == Kind::Ident {
                out.extend(self.lookup(&b[ts[k - 2].range.clone()], w));
            } else {
                out.extend(self.lookup(TOP, w));
                out.extend(self.lookup(own, w));
            }
        }
    }

    /// `std.ncl` with the body of every function none of `texts` (and
    /// `accesses`, their `a.b` pairs read before) reaches replaced by
    /// [`MARKER`] and spaces, newlines kept (see the module's comment).
    pub fn trim<'a, 'b>(
        &self,
        texts: impl IntoIterator<Item = &'a str>,
        accesses: impl IntoIterator<Item = &'b (&'b str, &'b str)>,
    ) -> String {
        let mut kept = vec![false; self.fields.len()];
        let mut todo = self.reached(texts, accesses);
        todo.extend(&self.roots);
        while let Some(i) = todo.pop() {
            if !std::mem::replace(&mut kept[i], true) {
                self.refs(i, &mut todo);
            }
        }
        let mut out = self.text.as_bytes().to_vec();
        for (f, _) in self.fields.iter().zip(&kept).filter(|(_, k)| !**k) {
            unload(&mut out[f.body.clone()]);
        }
        String::from_utf8(out).expect("only ASCII replaced whole tokens")
    }

    #[cfg(test)]
    pub fn fields(&self) -> &[Field] {
        &self.fields
    }
}

/// Replaces a definition's `body` (its value, whole tokens) by [`MARKER`]
/// and spaces, newlines kept; the marker goes on one line of the body
/// long enough to hold it, else the body stays.
pub fn unload(body: &mut [u8]) {
    let Some(at) = marker_at(body) else {
        return;
    };
    for x in body.iter_mut().filter(|x| **x != b'\n') {
        *x = b' ';
    }
    body[at..at + MARKER.len()].copy_from_slice(MARKER.as_bytes());
}

/// Where [`unload`] puts the marker in `body`: the start of its first line
/// long enough to hold it.
fn marker_at(body: &[u8]) -> Option<usize> {
    body.split(|&x| x == b'\n')
        .scan(0, |start, line| {
            let here = *start;
            *start += line.len() + 1;
            Some((here, line.len()))
        })
        .find(|(_, len)| *len >= MARKER.len())
        .map(|(at, _)| at)
}

/// What a stackc module says of the bodies it loads only for some stacks:
/// a `# load-body-when: WORD…` line just above a definition (a record
/// field, `name = …`, or a `let name = … in`) names the words one of which
/// a project file must contain for that definition's value to be read.
/// Returns each such definition's words and value (byte range); an
/// annotation above anything else is an error, for `build.rs` to report.
#[allow(dead_code)] // used by `build.rs`, which shares this file
pub fn bodies_loaded_when(text: &str) -> Result<Vec<(String, Range<usize>)>, String> {
    const TAG: &str = "# load-body-when:";
    let b = text.as_bytes();
    let tokens = lex(b);
    let mut out = Vec::new();
    let mut line_start = 0;
    for line in text.split_inclusive('\n') {
        let here = line_start;
        line_start += line.len();
        let Some(words) = line.trim_start().strip_prefix(TAG) else {
            continue;
        };
        let line_no = text[..here].lines().count() + 1;
        let fail = |what: &str| Err(format!("line {line_no}: `{TAG}` {what}"));
        if words.split_whitespace().next().is_none() {
            return fail("names no word");
        }
        // A word is matched as a substring of the project's files: `#` or
        // `,` would match nearly every file, and the value never unload.
        if let Some(w) = words
            .split_whitespace()
            .find(|w| !w.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-'))
        {
            return fail(&format!("names `{w}`, which is not a word (letters, digits, `_`, `-`)"));
        }
        let mut i = tokens.partition_point(|t| t.range.start < line_start);
        for keyword in [&b"let"[..], b"rec"] {
            if tokens
                .get(i)
                .is_some_and(|t| t.kind == Kind::Ident && &b[t.range.clone()] == keyword)
            {
                i += 1;
            }
        }
        if tokens.get(i).is_none_or(|t| t.kind != Kind::Ident) {
            return fail("is not followed by a definition");
        }
        i = past_annotations(&tokens, i);
        if tokens.get(i).is_none_or(|t| t.kind != Kind::Equals) {
            return fail("is followed by a definition without a value");
        }
        let end = body_end(b, &tokens, i + 1);
        if end <= i + 1 {
            return fail("is followed by a definition without a value");
        }
        let body = tokens[i + 1].range.start..tokens[end - 1].range.end;
        if marker_at(&b[body.clone()]).is_none() {
            return fail("is above a value too short to unload (no line holds the marker)");
        }
        out.push((words.split_whitespace().collect::<Vec<_>>().join(" "), body));
    }
    Ok(out)
}

/// Every distinct `a.b` of a text, for `Std::trim`'s `accesses`.
#[allow(dead_code)] // used by `build.rs`, which shares this file
pub fn accesses(text: &str) -> std::collections::BTreeSet<(&str, &str)> {
    let mut out = std::collections::BTreeSet::new();
    each_access(text.as_bytes(), &mut |a, b| {
        if let (Ok(a), Ok(b)) = (std::str::from_utf8(a), std::str::from_utf8(b)) {
            out.insert((a, b));
        }
    });
    out
}

/// Calls `f(a, b)` for every `a.b` of a text, in interpolations too (and
/// in the text around them: a pair too many keeps a function too many).
fn each_access<'t>(b: &'t [u8], f: &mut impl FnMut(&'t [u8], &'t [u8])) {
    let (mut before, mut last) = (None::<Token>, None::<Token>);
    for t in (Lexer { b, i: 0 }) {
        if t.kind == Kind::Str && b[t.range.clone()].windows(2).any(|w| w == b"%{") {
            // Between the delimiters: `"` or `m%…%"`, and `"` or `"%…%` if closed.
            let percents = crate::blank::string_start(b, t.range.start).unwrap_or(0);
            let open = if percents == 0 { 1 } else { 2 + percents };
            let closed = b[..t.range.end].ends_with(b"\"") || b[..t.range.end].ends_with(b"%");
            let close = if closed { 1 + percents } else { 0 };
            if let Some(inner) = b.get(t.range.start + open..t.range.end.saturating_sub(close)) {
                each_access(inner, f);
            }
        }
        if let (Some(q), Some(dot), Kind::Ident) = (&before, &last, t.kind)
            && q.kind == Kind::Ident
            && dot.kind == Kind::Punct(b'.')
        {
            f(&b[q.range.clone()], &b[t.range.clone()]);
        }
        before = last.replace(t);
    }
}

/// FNV-1a of `section`, a separator, then `name`.
fn key(section: &[u8], name: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for &x in section.iter().chain(&[0xff]).chain(name) {
        h = (h ^ u64::from(x)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Ident,
    Str,
    /// `=` alone: not `==`, `=>`, `!=`, `<=` or `>=` (those are `Op`).
    Equals,
    Op,
    Punct(u8),
}

#[derive(Debug, Clone)]
struct Token {
    kind: Kind,
    range: Range<usize>,
}

/// Nickel's tokens as far as fields need them: identifiers, strings
/// (interpolations and all, one token), brackets, `,`, `.` and a lone `=`.
fn lex(b: &[u8]) -> Vec<Token> {
    Lexer { b, i: 0 }.collect()
}

struct Lexer<'t> {
    b: &'t [u8],
    i: usize,
}

impl Iterator for Lexer<'_> {
    type Item = Token;

    fn next(&mut self) -> Option<Token> {
        let b = self.b;
        let mut i = self.i;
        loop {
            let c = *b.get(i)?;
            if c == b'#' {
                i += b[i..].iter().position(|&x| x == b'\n').unwrap_or(b.len() - i);
            } else if c.is_ascii_whitespace() {
                i += 1;
            } else {
                break;
            }
        }
        let (start, c) = (i, b[i]);
        let kind = if let Some(end) = crate::blank::string_end(b, i) {
            i = end;
            Kind::Str
        } else if c.is_ascii_alphabetic() || c == b'_' {
            i += b[i..]
                .iter()
                .position(|&x| !(x.is_ascii_alphanumeric() || matches!(x, b'_' | b'-' | b'\'')))
                .unwrap_or(b.len() - i);
            Kind::Ident
        } else if matches!(c, b'=' | b'!' | b'<' | b'>') && b.get(i + 1) == Some(&b'=')
            || (c == b'=' && b.get(i + 1) == Some(&b'>'))
        {
            i += 2;
            Kind::Op
        } else {
            i += 1;
            if c == b'=' { Kind::Equals } else { Kind::Punct(c) }
        };
        self.i = i;
        Some(Token { kind, range: start..i })
    }
}

/// The fields of the record whose `{` is `tokens[open]`; a field whose value is a record literal is a
/// section (`std.array`, `std.contract.unstable`), read for its own
/// fields.
/// Returns the index of the closing `}`.
fn record(b: &[u8], tokens: &[Token], open: usize, section: Option<Range<usize>>, out: &mut Vec<Field>) -> usize {
    let mut i = open + 1;
    while i < tokens.len() && tokens[i].kind != Kind::Punct(b'}') {
        let start = i;
        i = past_annotations(tokens, i);
        if i >= tokens.len() || tokens[i].kind != Kind::Equals {
            // Past a `,` (or a stray `)`/`]`: never stuck); a `}` ends the record.
            i += usize::from(i < tokens.len() && tokens[i].kind != Kind::Punct(b'}'));
            continue;
        }
        let first = i + 1;
        let end = body_end(b, tokens, first);
        let is_section = tokens[first].kind == Kind::Punct(b'{') && matching(tokens, first) == end - 1;
        if is_section {
            record(b, tokens, first, Some(tokens[start].range.clone()), out);
        } else if end > first {
            out.push(Field {
                name: tokens[start].range.clone(),
                body: tokens[first].range.start..tokens[end - 1].range.end,
                section: section.clone(),
                tokens: start..end,
            });
        }
        i = end + usize::from(end < tokens.len() && tokens[end].kind == Kind::Punct(b','));
    }
    i
}

/// From a definition's name at `i`, past its annotations: the index of its
/// lone `=`, or of the `,`, `}` (or stray `)`, `]`) ending a field without
/// a value, or the end.
fn past_annotations(tokens: &[Token], mut i: usize) -> usize {
    let mut depth = 0i32;
    while let Some(t) = tokens.get(i) {
        match t.kind {
            Kind::Punct(b'{' | b'[' | b'(') => depth += 1,
            Kind::Punct(b'}' | b']' | b')') if depth == 0 => break,
            Kind::Punct(b'}' | b']' | b')') => depth -= 1,
            Kind::Punct(b',') | Kind::Equals if depth == 0 => break,
            _ => {}
        }
        i += 1;
    }
    i
}

/// The index just after a field's value starting at `first`: its `,` or
/// the record's `}` (a `let`'s value: its `in`). A `let` block's own
/// commas (`let a = 1, b = 2 in`) are inside the value.
fn body_end(b: &[u8], tokens: &[Token], first: usize) -> usize {
    let (mut depth, mut lets) = (0i32, 0i32);
    let mut i = first;
    while i < tokens.len() {
        let t = &tokens[i];
        match t.kind {
            Kind::Punct(b'{' | b'[' | b'(') => depth += 1,
            Kind::Punct(b'}' | b']' | b')') if depth == 0 => return i,
            Kind::Punct(b'}' | b']' | b')') => depth -= 1,
            Kind::Punct(b',') if depth == 0 && lets == 0 => return i,
            Kind::Ident if depth == 0 && &b[t.range.clone()] == b"let" => lets += 1,
            Kind::Ident if depth == 0 && &b[t.range.clone()] == b"in" => {
                if lets == 0 {
                    return i;
                }
                lets -= 1;
            }
            _ => {}
        }
        i += 1;
    }
    i
}

/// The index of the bracket closing the one at `open`.
fn matching(tokens: &[Token], open: usize) -> usize {
    let mut depth = 0i32;
    for (i, t) in tokens.iter().enumerate().skip(open) {
        match t.kind {
            Kind::Punct(b'{' | b'[' | b'(') => depth += 1,
            Kind::Punct(b'}' | b']' | b')') => {
                depth -= 1;
                if depth == 0 {
                    return i;
                }
            }
            _ => {}
        }
    }
    tokens.len()
}

#[cfg(test)]
mod tests {
    use nickel_lang_core::cache::{CacheHub, SourcePath};
    use nickel_lang_parser::ast::{Ast, Node};

    use super::{MARKER, Std};

    /// (name, value) byte ranges of the fields the scanner reads as
    /// functions, as Nickel's own parser finds them: the fields of the top
    /// record and of every record literal that is a field's value there.
    fn fields_by_nickel_parser(text: &str) -> Vec<(std::ops::Range<usize>, std::ops::Range<usize>)> {
        fn walk(ast: &Ast<'_>, out: &mut Vec<(std::ops::Range<usize>, std::ops::Range<usize>)>) {
            let Node::Record(record) = &ast.node else {
                panic!("not a record")
            };
            for def in record.field_defs {
                let Some(value) = &def.value else { continue };
                if matches!(value.node, Node::Record(_)) {
                    walk(value, out);
                    continue;
                }
                let name = def.path[0].pos().into_opt().expect("a named field").to_range();
                out.push((name, value.pos.into_opt().expect("a parsed value").to_range()));
            }
        }
        let mut cache = CacheHub::new();
        let id = cache.sources.add_string(
            SourcePath::Path("fields.ncl".into(), nickel_lang_core::cache::InputFormat::Nickel),
            text.to_owned(),
        );
        cache.parse_to_ast(id).expect("parses");
        let mut out = Vec::new();
        walk(cache.asts.get(id).expect("parsed"), &mut out);
        out
    }

    fn scanned(text: &str) -> Vec<(std::ops::Range<usize>, std::ops::Range<usize>)> {
        Std::new(text.into(), "")
            .fields()
            .iter()
            .map(|f| (f.name.clone(), f.body.clone()))
            .collect()
    }

    /// The scanner finds exactly the fields, names and values, that Nickel's
    /// parser finds in `std.ncl` (documentation blanked, as evaluation reads
    /// it, and as written).
    #[test]
    fn fields_agree_with_nickel_on_its_std() {
        let std = nickel_lang_core::stdlib::StdlibModule::Std.content();
        for text in [std.to_owned(), crate::blank::blank_docs(std)] {
            let expected = fields_by_nickel_parser(&text);
            assert!(expected.len() > 150, "only {} functions in std.ncl", expected.len());
            assert_eq!(scanned(&text), expected);
        }
    }

    /// … and on syntax `std.ncl` does not use today.
    #[test]
    fn fields_agree_with_nickel_on_tricky_syntax() {
        let cases = [
            // let blocks, nested records, field without a value, comparisons.
            "{ a = let x = 1, y = 2 in x + y, s = { b | Number = 1 == 2, c, d = { e = 3 } }, f = fun x => x >= 1 }",
            // Annotations with brackets and arrows, strings with commas and braces.
            "{ g | { _ : Number } -> Array (Number) = fun r => \"a, }\", h = m%\"%{ \"{\" }, x\"%, i = [1, 2] }",
            // Matches, enum rows, comments.
            "{ j | [| 'a, 'b |] = match { 'a => 1, 'b => 2 } # , = }\n 'a, k = 'x }",
        ];
        for case in cases {
            assert_eq!(scanned(case), fields_by_nickel_parser(case), "{case}");
        }
    }

    /// `# load-body-when:` names the value of the definition below it: a
    /// record field's or a `let`'s, nested `let`s, records and commas
    /// inside; an annotation above anything else is an error.
    #[test]
    fn bodies_loaded_when_are_the_values_below() {
        let text = "let a =\n  # load-body-when: x y\n  let rec f | Dyn = fun v => let w = v, u = 1 in { p = w, q = u } in\n{\n  # load-body-when: z\n  g : Number -> Number = fun n => n + 1 + 2,\n  h = 2,\n}\n";
        let found = super::bodies_loaded_when(text).unwrap();
        let values: Vec<_> = found.iter().map(|(w, r)| (w.as_str(), &text[r.clone()])).collect();
        assert_eq!(
            values,
            [
                ("x y", "fun v => let w = v, u = 1 in { p = w, q = u }"),
                ("z", "fun n => n + 1 + 2")
            ]
        );
        for bad in [
            "{\n  # load-body-when: z\n}\n",
            "{\n  # load-body-when:\n  a = fun x => x + 1 + 2 + 3,\n}\n",
            "{\n  # load-body-when: z\n  a,\n}\n",
            // Too short to hold the marker; a comment in the words.
            "{\n  # load-body-when: z\n  a = 1,\n}\n",
            "{\n  # load-body-when: z # why\n  a = fun x => x + 1 + 2 + 3,\n}\n",
        ] {
            assert!(super::bodies_loaded_when(bad).is_err(), "{bad}");
        }
    }

    /// Trimming keeps every byte position and line, keeps what a live text
    /// names (and what that names), and replaces the rest by the marker.
    #[test]
    fn trimming_keeps_what_is_named_and_its_dependencies() {
        let text = "{ a = { used = fun x => helper x, helper = fun x => x + 1, unused_one = fun x => x * 2 * 3 * 4 * 5 }, tiny = 1 }";
        let trimmed = Std::new(text.into(), "").trim(["std.a.used 1"], []);
        assert_eq!(trimmed.len(), text.len());
        assert!(trimmed.contains("used = fun x => helper x,"), "{trimmed}");
        assert!(trimmed.contains("helper = fun x => x + 1,"), "{trimmed}");
        assert!(trimmed.contains(&format!("unused_one = {MARKER}")), "{trimmed}");
        // Too short to hold the marker: kept.
        assert!(trimmed.contains("tiny = 1"), "{trimmed}");
        // Named in an interpolation, of a plain or a multiline string.
        for live in ["\"x %{std.a.used 1} y\"", "m%%\"x %%{std.a.used 1}\"%%"] {
            let trimmed = Std::new(text.into(), "").trim([live], []);
            assert!(trimmed.contains("used = fun x => helper x,"), "{live}: {trimmed}");
        }
        // Syntax the scanner does not know (a stray bracket) never stalls it.
        assert_eq!(Std::new("{ a ) ] , b = 1 }".into(), "").fields().len(), 1);
        // A project file Nickel will reject is read without a panic.
        assert_eq!(
            super::accesses("x.y \"never closed %{a.b"),
            [("x", "y"), ("a", "b")].into()
        );
        // The marker takes a line of the body long enough to hold it, and
        // a body without one stays.
        let multiline = "{\n  f = fun x =>\n    x + 1 + 2 + 3 + 4,\n  g = fun x =>\n    x\n    + 1,\n}\n";
        let trimmed = Std::new(multiline.into(), "").trim([], &[("a", "b")]);
        let expected = format!("{{\n  f =         \n{MARKER}      ,\n  g = fun x =>\n    x\n    + 1,\n}}\n");
        assert_eq!(trimmed, expected);
    }
}
