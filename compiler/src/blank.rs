//! Documentation strings blanked out of Nickel source, positions kept.
//!
//! Evaluation parses the embedded stdlib and Nickel's own on every run, and
//! their documentation (a fifth of stackc's text, three fifths of Nickel's
//! `std.ncl`) is lexed for nothing: it never changes a value. This file is
//! shared with `build.rs`, which blanks stackc's modules at build time; it
//! uses nothing outside `core`/`std`.

/// `text` with every documentation string (`| doc "…"`, `| doc m%"…"%`)
/// that does not interpolate replaced by `""` and spaces, each newline kept: the
/// same length and the same lines, so every position is the original's.
/// Diagnostics quote the original text (`eval::SpanMaker`); a unit test
/// checks this scanner against Nickel's own lexer.
pub fn blank_docs(text: &str) -> String {
    let mut out = text.as_bytes().to_vec();
    code(text.as_bytes(), 0, false, &mut Some(&mut out));
    String::from_utf8(out).expect("only whole strings are blanked")
}

/// One whole string literal, in place: `""`, then spaces, newlines kept.
pub fn blank(literal: &mut [u8]) {
    literal[0] = b'"';
    literal[1] = b'"';
    for x in &mut literal[2..] {
        if *x != b'\n' {
            *x = b' ';
        }
    }
}

/// Scans code from `i` to the end of the text, or, `in_interpolation`, to
/// the `}` that closes it (returned index: just after it).
fn code(b: &[u8], mut i: usize, in_interpolation: bool, out: &mut Option<&mut [u8]>) -> usize {
    let mut depth = 0usize;
    // The last character of code before the current token, whitespace and
    // comments aside: documentation is `| doc`, never `r.doc` or `'doc`.
    let mut previous = 0u8;
    let mut after_doc = false;
    while i < b.len() {
        let c = b[i];
        if c == b'#' {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if let Some(percents) = string_start(b, i) {
            let start = i;
            i += if c == b'"' { 1 } else { 1 + percents + 1 };
            let (end, interpolated) = string(b, i, percents, out);
            if let Some(out) = out.as_deref_mut().filter(|_| after_doc && !interpolated) {
                blank(&mut out[start..end]);
            }
            i = end;
            after_doc = false;
            previous = b'"';
        } else if c.is_ascii_alphabetic() || c == b'_' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || matches!(b[i], b'_' | b'-' | b'\'')) {
                i += 1;
            }
            after_doc = &b[start..i] == b"doc" && previous == b'|';
            previous = b'a';
        } else {
            if !c.is_ascii_whitespace() {
                after_doc = false;
                previous = c;
            }
            if c == b'{' {
                depth += 1;
            } else if c == b'}' {
                if depth == 0 && in_interpolation {
                    return i + 1;
                }
                depth = depth.saturating_sub(1);
            }
            i += 1;
        }
    }
    i
}

/// If a string starts at `i`: 0 for `"`, the number of `%` for `m%…%"`.
pub fn string_start(b: &[u8], i: usize) -> Option<usize> {
    match b[i] {
        b'"' => Some(0),
        b'm' => {
            let n = b[i + 1..].iter().take_while(|&&x| x == b'%').count();
            (n > 0 && b.get(i + 1 + n) == Some(&b'"')).then_some(n)
        }
        _ => None,
    }
}

/// If a string literal starts at `i`: the index just after its end.
pub fn string_end(b: &[u8], i: usize) -> Option<usize> {
    let percents = string_start(b, i)?;
    let body = if percents == 0 { i + 1 } else { i + percents + 2 };
    Some(string(b, body, percents, &mut None).0)
}

/// Scans a string body from `i`: a plain string when `percents` is 0, else
/// a multiline one closed by `"` and that many `%`. Returns the index just
/// after its end and whether it interpolates.
fn string(b: &[u8], mut i: usize, percents: usize, out: &mut Option<&mut [u8]>) -> (usize, bool) {
    let mut interpolated = false;
    while i < b.len() {
        if percents == 0 {
            match b[i] {
                b'\\' => i += 2,
                b'"' => return (i + 1, interpolated),
                b'%' if b.get(i + 1) == Some(&b'{') => {
                    interpolated = true;
                    i = code(b, i + 2, true, out);
                }
                _ => i += 1,
            }
        } else if b[i] == b'"'
            && b[i + 1..].iter().take_while(|&&x| x == b'%').count() == percents
            && b.get(i + 1 + percents) != Some(&b'{')
        {
            // `"%` closes `m%"`; `"%{` is a quote, then an interpolation
            // (Nickel's lexer; it rejects `"%%` there).
            return (i + 1 + percents, interpolated);
        } else if b[i..].iter().take(percents).all(|&x| x == b'%')
            && b.len() >= i + percents
            && b.get(i + percents) == Some(&b'{')
        {
            interpolated = true;
            i = code(b, i + percents + 1, true, out);
        } else {
            i += 1;
        }
    }
    // Unterminated: the text's end (a project file with this mistake is
    // Nickel's to report).
    (b.len(), interpolated)
}
