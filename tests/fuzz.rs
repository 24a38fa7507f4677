//! A mutation fuzzer over the examples and the bad-input corpus, run as part
//! of the suite (see `fuzz/README.md`). Each iteration copies one source
//! (`examples/<name>/` or `tests/bad/<case>/`) into a fresh project under a
//! temporary directory whose name holds a marker, mutates its `prod.ncl`
//! (lines deleted, duplicated, swapped; bytes flipped; huge numbers; deep
//! nesting; 1 MB strings; NUL bytes; unicode and invalid UTF-8; imports of
//! outside files, symlinks and FIFOs; unbounded recursion), and runs the
//! real binary on it under a wall-clock watchdog and an address-space cap.
//!
//! Every run must: exit 0, 1 or 2 (no panic, no abort, no signal); finish
//! within the budget; print no absolute path of this machine; show no byte
//! of a planted canary (an outside file, a symlink's target, the
//! environment) in stdout, stderr or any file written; and, for
//! `check --format json`, print one JSON document.
//!
//! Knobs (environment): `STACKC_FUZZ_SEED`, `STACKC_FUZZ_RUNS`,
//! `STACKC_FUZZ_JOBS`, `STACKC_FUZZ_TIMEOUT` (seconds per command),
//! `STACKC_FUZZ_MEM_MIB` (address-space cap per command), `STACKC_FUZZ_ONLY`
//! (comma-separated iteration numbers, to replay a failure).

mod common;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;

/// Part of every temporary directory name: any output holding it prints a
/// path of the build machine.
const MARKER: &str = "FZMARK7q3k";
/// Planted outside the project (files, symlink targets) and in the child's
/// environment; never in any input. Any output holding it leaked.
const CANARY: &str = "stackc-fuzz-canary-Vx9LmP2wQe";
/// The start of /etc/passwd on every Linux machine.
const PASSWD: &str = "root:x:0:0:";

const DEFAULT_SEED: u64 = 0x5eed_0016;
const DEFAULT_RUNS: usize = 250;
const DEFAULT_JOBS: usize = 2;
const DEFAULT_TIMEOUT_SECS: u64 = 15;
/// The evaluation budgets the fuzzed commands run with (SC0113, SC0114).
const EVAL_TIME_SECS: u64 = 6;
const EVAL_MEMORY_MIB: u64 = 1536;
const DEFAULT_MEM_MIB: u64 = 6 * 1024;
/// A run killed by the watchdog above this peak was still allocating: no
/// bound on memory rather than a blocked read.
const GROWING_KIB: u64 = 1 << 20;

// ---------------------------------------------------------------------------
// Deterministic randomness: splitmix64, one stream per iteration.

struct Rng(u64);

impl Rng {
    fn for_iteration(seed: u64, n: usize) -> Rng {
        let mut r = Rng(seed ^ (n as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03));
        r.next();
        r
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    /// True with probability `num/den`.
    fn chance(&mut self, num: u64, den: u64) -> bool {
        self.next() % den < num
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
}

// ---------------------------------------------------------------------------
// Sources and the fixtures planted around each project.

#[derive(Clone)]
struct Source {
    name: String,
    files: Vec<(String, Vec<u8>)>,
    /// `MODE FILE` lines of a bad case's `modes` (git does not keep modes).
    modes: Vec<(u32, String)>,
}

fn load_source(name: String, dir: &Path) -> Source {
    let mut files = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let f = p.file_name().unwrap().to_string_lossy().into_owned();
        if p.is_file() && !matches!(f.as_str(), "expected.snap" | "args" | "modes") {
            files.push((f, std::fs::read(&p).unwrap()));
        } else if p.is_dir() && f == "secrets" {
            // The project's age files: without them a mutant of a stack with
            // external secrets would stop at SC0306 every time.
            for e in std::fs::read_dir(&p).unwrap() {
                let q = e.unwrap().path();
                if q.is_file() {
                    let g = q.file_name().unwrap().to_string_lossy().into_owned();
                    files.push((format!("secrets/{g}"), std::fs::read(&q).unwrap()));
                }
            }
        }
    }
    files.sort();
    let modes = std::fs::read_to_string(dir.join("modes"))
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (m, f) = l.split_once(' ').expect("`modes` lines are `MODE FILE`");
            (u32::from_str_radix(m, 8).expect("octal mode"), f.trim().to_owned())
        })
        .collect();
    Source { name, files, modes }
}

/// Every example and every bad case with a `prod.ncl`, examples first.
fn sources() -> (Vec<Source>, Vec<Source>) {
    let examples = common::examples()
        .into_iter()
        .map(|n| load_source(format!("examples/{n}"), &repo().join("examples").join(&n)))
        .collect();
    let mut bad: Vec<_> = std::fs::read_dir(repo().join("tests/bad"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("prod.ncl").is_file())
        .collect();
    bad.sort();
    let bad = bad
        .iter()
        .map(|p| {
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            load_source(format!("tests/bad/{n}"), p)
        })
        .collect();
    (examples, bad)
}

/// What is planted in a run directory `$run`: the project is `$run/proj`,
/// the outside world `$run/outside`. Paths are relative to `$run`; a
/// symlink target starting with `@` is relative to `$run` too (made
/// absolute), any other is taken as is.
enum Fixture {
    Dir(&'static str),
    File(&'static str, String),
    Symlink(&'static str, &'static str),
    Fifo(&'static str),
}

fn fixtures() -> Vec<Fixture> {
    use Fixture::*;
    vec![
        Dir("proj/sub"),
        Dir("outside"),
        Dir("home"),
        Dir("tmp"),
        File("outside/canary.txt", format!("{CANARY}\n")),
        File("outside/canary.ncl", format!("\"{CANARY}\"\n")),
        File("outside/canary.json", format!("{{\"a\": \"{CANARY}\"}}\n")),
        File("x", format!("{CANARY}\n")),
        Symlink("proj/data.txt", "@outside/canary.txt"),
        Symlink("proj/data.ncl", "@outside/canary.ncl"),
        Symlink("proj/outlink", "@outside"),
        Symlink("proj/host.txt", "/etc/hostname"),
        Symlink("proj/passwd.txt", "/etc/passwd"),
        Symlink("proj/env.txt", "/proc/self/environ"),
        Fifo("proj/fifo.txt"),
        Fifo("proj/fifo.ncl"),
    ]
}

fn plant(run: &Path) {
    for f in fixtures() {
        match f {
            Fixture::Dir(d) => std::fs::create_dir_all(run.join(d)).unwrap(),
            Fixture::File(p, c) => std::fs::write(run.join(p), c).unwrap(),
            Fixture::Symlink(p, t) => {
                let target = match t.strip_prefix('@') {
                    Some(rel) => run.join(rel),
                    None => PathBuf::from(t),
                };
                std::os::unix::fs::symlink(target, run.join(p)).unwrap();
            }
            Fixture::Fifo(p) => {
                let c = std::ffi::CString::new(run.join(p).into_os_string().into_encoded_bytes()).unwrap();
                // SAFETY: a valid NUL-terminated path.
                assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0, "mkfifo {p}");
            }
        }
    }
}

/// The same fixtures as shell commands, for `repro.sh`.
fn plant_sh() -> String {
    let mut s = String::new();
    for f in fixtures() {
        match f {
            Fixture::Dir(d) => writeln!(s, "mkdir -p \"$run/{d}\"").unwrap(),
            Fixture::File(p, c) => writeln!(s, "printf '%s' '{}' > \"$run/{p}\"", c.replace('\'', "'\\''")).unwrap(),
            Fixture::Symlink(p, t) => match t.strip_prefix('@') {
                Some(rel) => writeln!(s, "ln -s \"$run/{rel}\" \"$run/{p}\"").unwrap(),
                None => writeln!(s, "ln -s '{t}' \"$run/{p}\"").unwrap(),
            },
            Fixture::Fifo(p) => writeln!(s, "mkfifo \"$run/{p}\"").unwrap(),
        }
    }
    s
}

// ---------------------------------------------------------------------------
// Mutations.

/// Targets of outside (or non-regular) imports, as written in the stack.
const IMPORT_TARGETS: &[&str] = &[
    "/etc/passwd",
    "/proc/self/environ",
    "/proc/self/cwd/../outside/canary.txt",
    "/dev/zero",
    "/dev/urandom",
    "../../x",
    "../x",
    "../outside/canary.txt",
    "../outside/canary.ncl",
    "../outside/canary.json",
    "./sub/../../outside/canary.txt",
    "data.txt",
    "data.ncl",
    "outlink/canary.txt",
    "outlink/canary.ncl",
    "host.txt",
    "passwd.txt",
    "env.txt",
    "fifo.txt",
    "fifo.ncl",
    "sub",
    ".",
];

const HUGE_NUMBERS: &[&str] = &[
    "1e400",
    "-1e400",
    "1e-400",
    "99999999999999999999999",
    "-99999999999999999999999",
    "18446744073709551616",
    "340282366920938463463374607431768211457",
    "-0",
    "-0.0",
    "NaN",
    "nan",
    "inf",
    "-inf",
    "Infinity",
    "0x7fffffffffffffff",
    "1_000_000",
    "1e2147483648",
    "1e-2147483649",
    "0.1e99999999999",
    "(1 / 0)",
    "(1e300 * 1e300)",
];

/// Expressions that, evaluated, run forever or take all memory unless
/// evaluation is bounded.
const RESOURCE_HOGS: &[&str] = &[
    "let rec f = fun n => f (n + 1) in f 0",
    "std.array.generate (fun i => i) 100000000",
    "let rec d = fun s n => if n == 0 then s else d (s ++ s) (n - 1) in d \"x\" 40",
    "let rec f = fun n => [f (n + 1)] in f 0",
    "let rec r = { a = r.a } in r.a",
    "std.number.pow 10 1000000000000",
    "std.string.length (std.array.fold_left (fun acc x => acc ++ \"xxxxxxxxxxxxxxxx\") \"\" (std.array.range 0 100000000))",
];

/// Strings with control, bidi, invisible and invalid bytes.
const ODD_BYTES: &[&[u8]] = &[
    b"a\0b",
    b"\0",
    "\u{202E}gnp.exe".as_bytes(),
    "\u{2066}x\u{2069}\u{202D}y".as_bytes(),
    "\u{200B}\u{FEFF}\u{00AD}".as_bytes(),
    "e\u{0301}\u{0301}\u{0301}\u{0301}".as_bytes(),
    "\u{1F600}\u{1F9D1}\u{200D}\u{1F4BB}".as_bytes(),
    "\u{2028}\u{2029}\u{0085}".as_bytes(),
    b"\r",
    b"\x1b[31mred\x1b[0m",
    b"\xff\xfe",
    b"\xc0\xaf",
    b"\xed\xa0\x80",
    b"\xe2\x82",
    b"\xf4\x90\x80\x80",
];

/// One thing to insert: as an expression, and (when it makes sense) as the
/// body of a string literal.
struct Payload {
    label: String,
    expr: Vec<u8>,
    body: Option<Vec<u8>>,
}

fn repeat(s: &str, n: usize) -> String {
    s.repeat(n)
}

fn payload(rng: &mut Rng) -> Payload {
    let depth = *rng.pick(&[500usize, 2_000, 10_000, 50_000]);
    match rng.below(10) {
        0 => {
            let t = *rng.pick(HUGE_NUMBERS);
            Payload {
                label: format!("number {t}"),
                expr: t.into(),
                body: Some(format!("%{{std.to_string ({t})}}").into()),
            }
        }
        1 => {
            let (open, close, leaf) =
                *rng.pick(&[("[", "]", "1"), ("{a=", "}", "1"), ("(", ")", "1"), ("[{a=", "}]", "1")]);
            Payload {
                label: format!("nesting {open}…{close} x{depth}"),
                expr: format!("{}{leaf}{}", repeat(open, depth), repeat(close, depth)).into(),
                body: None,
            }
        }
        2 => {
            let n = depth.min(20_000);
            let mut e = String::from("(let x0 = 0 in ");
            for i in 1..=n {
                write!(e, "let x{i} = x{} + 1 in ", i - 1).unwrap();
            }
            write!(e, "x{n})").unwrap();
            Payload {
                label: format!("let chain x{n}"),
                expr: e.into(),
                body: None,
            }
        }
        3 => {
            let n = depth * 2;
            Payload {
                label: format!("sum chain x{n}"),
                expr: format!("(0{})", repeat(" + 1", n)).into(),
                body: None,
            }
        }
        4 => {
            let len = 1 << 20;
            let c = *rng.pick(&["a", "%", "\\n", " "]);
            let body = repeat(c, len / c.len());
            Payload {
                label: format!("1 MB string of {c:?}"),
                expr: format!("\"{body}\"").into(),
                body: Some(body.into()),
            }
        }
        5 | 6 => {
            let b = *rng.pick(ODD_BYTES);
            let mut expr = b"\"".to_vec();
            expr.extend_from_slice(b);
            expr.push(b'"');
            Payload {
                label: format!("bytes {}", String::from_utf8_lossy(b).escape_debug()),
                expr,
                body: Some(b.to_vec()),
            }
        }
        7 | 8 => {
            let t = *rng.pick(IMPORT_TARGETS);
            let form = *rng.pick(&[" as 'Text", "", " as 'Json", " as 'Yaml", " as 'Toml"]);
            Payload {
                label: format!("import \"{t}\"{form}"),
                expr: format!("(import \"{t}\"{form})").into(),
                body: Some(format!("%{{import \"{t}\" as 'Text}}").into()),
            }
        }
        _ => {
            let e = *rng.pick(RESOURCE_HOGS);
            Payload {
                label: format!("resource hog `{e}`"),
                expr: format!("({e})").into(),
                body: Some(format!("%{{std.to_string ({e})}}").into()),
            }
        }
    }
}

/// A short payload as written, a long one by its label.
fn describe(bytes: &[u8], label: &str) -> String {
    if bytes.len() <= 80 {
        String::from_utf8_lossy(bytes).escape_debug().to_string()
    } else {
        label.to_owned()
    }
}

fn lines(text: &[u8]) -> Vec<Vec<u8>> {
    text.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect()
}

fn unlines(ls: &[Vec<u8>]) -> Vec<u8> {
    ls.join(&b'\n')
}

/// Byte ranges of the one-line `"…"` literals (contents, without quotes).
fn string_literals(text: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = None;
    let mut i = 0;
    while i < text.len() {
        match (text[i], start) {
            (b'\n', _) => start = None,
            (b'\\', Some(_)) => i += 1,
            (b'"', None) => start = Some(i + 1),
            (b'"', Some(s)) => {
                out.push((s, i));
                start = None;
            }
            _ => {}
        }
        i += 1;
    }
    out
}

/// Byte ranges of digit runs.
fn numbers(text: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < text.len() {
        if text[i].is_ascii_digit() {
            let s = i;
            while i < text.len() && text[i].is_ascii_digit() {
                i += 1;
            }
            out.push((s, i));
        } else {
            i += 1;
        }
    }
    out
}

/// The line that opens a machine's record: `machines.NAME = {`, or the
/// first `NAME = {` after `machines = {`.
fn machine_line(ls: &[Vec<u8>]) -> Option<usize> {
    let s: Vec<String> = ls
        .iter()
        .map(|l| String::from_utf8_lossy(l).trim().to_owned())
        .collect();
    if let Some(i) = s.iter().position(|l| l.starts_with("machines.") && l.ends_with("= {")) {
        return Some(i);
    }
    let open = s.iter().position(|l| l.starts_with("machines") && l.ends_with("= {"))?;
    (open + 1..s.len()).find(|&i| {
        s[i].ends_with("= {")
            && s[i]
                .split(' ')
                .next()
                .is_some_and(|w| w.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
    })
}

/// Wraps the whole stack so `expr` is evaluated in full before it.
fn force(text: &[u8], expr: &[u8]) -> Vec<u8> {
    let mut t = b"let fuzz_payload = ".to_vec();
    t.extend_from_slice(expr);
    t.extend_from_slice(b" in std.deep_seq fuzz_payload (\n");
    t.extend_from_slice(text);
    t.extend_from_slice(b"\n)\n");
    t
}

fn splice(text: &[u8], at: (usize, usize), with: &[u8]) -> Vec<u8> {
    let mut t = text[..at.0].to_vec();
    t.extend_from_slice(with);
    t.extend_from_slice(&text[at.1..]);
    t
}

/// One mutation of `text`, and what it did.
fn mutate_once(rng: &mut Rng, text: &[u8]) -> (Vec<u8>, String) {
    let mut ls = lines(text);
    let n = ls.len();
    match rng.below(13) {
        0 => {
            let i = rng.below(n);
            let k = (1 + rng.below(3)).min(n - i);
            ls.drain(i..i + k);
            (unlines(&ls), format!("deleted lines {}..{}", i + 1, i + k))
        }
        1 => {
            let i = rng.below(n);
            let l = ls[i].clone();
            ls.insert(i, l);
            (unlines(&ls), format!("duplicated line {}", i + 1))
        }
        2 => {
            let (i, j) = (rng.below(n), rng.below(n));
            ls.swap(i, j);
            (unlines(&ls), format!("swapped lines {} and {}", i + 1, j + 1))
        }
        3 => {
            let mut t = text.to_vec();
            if t.is_empty() {
                t.push(b' ');
            }
            let k = 1 + rng.below(8);
            for _ in 0..k {
                let i = rng.below(t.len());
                t[i] ^= 1 << rng.below(8);
            }
            (t, format!("flipped {k} bits"))
        }
        4 => {
            let tok = *rng.pick(HUGE_NUMBERS);
            let ns = numbers(text);
            if ns.is_empty() {
                return (force(text, tok.as_bytes()), format!("forced number {tok}"));
            }
            let at = *rng.pick(&ns);
            (
                splice(text, at, tok.as_bytes()),
                format!("number {:?} -> {tok}", String::from_utf8_lossy(&text[at.0..at.1])),
            )
        }
        5 => {
            // A diagnostic past column 65 535.
            let i = rng.below(n);
            let pad = *rng.pick(&[65_530usize, 65_536, 70_000, 200_000]);
            let mut l = vec![b' '; pad];
            if rng.chance(1, 2) {
                l.extend_from_slice(&ls[i]);
                ls[i] = l;
                (unlines(&ls), format!("indented line {} by {pad} spaces", i + 1))
            } else {
                l.push(b']');
                ls.insert(i, l);
                (
                    unlines(&ls),
                    format!("inserted {pad} spaces and `]` before line {}", i + 1),
                )
            }
        }
        6 => {
            // A raw file of a machine whose content is an import: a build
            // that succeeds writes it into the bundle.
            let t = *rng.pick(IMPORT_TARGETS);
            let content = if rng.chance(1, 2) {
                format!("\"%{{import \"{t}\" as 'Text}}\"")
            } else {
                format!("import \"{t}\" as 'Text")
            };
            let line = format!("files.\"fuzz/planted\" = {{ format = 'raw, content = {content} }},");
            match machine_line(&ls) {
                Some(i) => {
                    ls.insert(i + 1, line.clone().into_bytes());
                    (unlines(&ls), format!("planted file after line {}: {line}", i + 1))
                }
                None => (force(text, content.as_bytes()), format!("forced {content}")),
            }
        }
        _ => {
            let p = payload(rng);
            let lits = string_literals(text);
            match rng.below(5) {
                0 | 1 => (force(text, &p.expr), format!("forced {}", p.label)),
                2 if p.body.is_some() && !lits.is_empty() => {
                    let at = *rng.pick(&lits);
                    (
                        splice(text, at, p.body.as_deref().unwrap()),
                        format!(
                            "string at byte {} -> \"{}\"",
                            at.0,
                            describe(p.body.as_deref().unwrap(), &p.label)
                        ),
                    )
                }
                2 | 3 if !lits.is_empty() => {
                    let at = *rng.pick(&lits);
                    let mut with = b"(".to_vec();
                    with.extend_from_slice(&p.expr);
                    with.push(b')');
                    (
                        splice(text, (at.0 - 1, at.1 + 1), &with),
                        format!("literal at byte {} -> ({})", at.0 - 1, p.label),
                    )
                }
                _ => {
                    let at = rng.below(text.len() + 1);
                    (
                        splice(text, (at, at), &p.expr),
                        format!("inserted {} at byte {at}", p.label),
                    )
                }
            }
        }
    }
}

fn mutate(rng: &mut Rng, text: &[u8]) -> (Vec<u8>, Vec<String>) {
    let k = *rng.pick(&[1usize, 1, 1, 2, 2, 3]);
    let mut t = text.to_vec();
    let mut what = Vec::new();
    for _ in 0..k {
        let (nt, w) = mutate_once(rng, &t);
        t = nt;
        what.push(w);
    }
    (t, what)
}

// ---------------------------------------------------------------------------
// Running the binary.

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Exit {
    Code(i32),
    Signal(i32),
    Timeout,
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exit {c}"),
            Exit::Signal(s) => write!(f, "signal {s}"),
            Exit::Timeout => write!(f, "killed after the time budget"),
        }
    }
}

struct Limits {
    timeout: Duration,
    mem_bytes: u64,
}

struct Ran {
    label: &'static str,
    args: Vec<String>,
    exit: Exit,
    peak_kib: u64,
    wall: Duration,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    /// Files written under `$run/out`, relative path → bytes.
    written: Vec<(String, Vec<u8>)>,
}

/// `stackc ARGS` in `$run/proj`, in its own process group, with a clean
/// environment, the canary in it, the address space capped; killed (the
/// whole group) after the time budget. Peak memory from `wait4`.
fn run_stackc(run: &Path, label: &'static str, args: &[&str], lim: &Limits) -> Ran {
    let so = run.join(format!("{label}.stdout"));
    let se = run.join(format!("{label}.stderr"));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_stackc"));
    cmd.args(args)
        .current_dir(run.join("proj"))
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", run.join("home"))
        .env("TMPDIR", run.join("tmp"))
        .env("LANG", "C.UTF-8")
        .env("NO_COLOR", "1")
        .env("STACKC_FUZZ_CANARY", CANARY)
        // stackc's own evaluation budgets, well inside the watchdog and the
        // address-space cap: a runaway stack must end as SC0113/SC0114, and
        // the fuzzer only sees a hang or a blown cap if the budgets fail.
        .env("STACKC_MAX_EVAL_TIME", EVAL_TIME_SECS.to_string())
        .env("STACKC_MAX_EVAL_MEMORY", EVAL_MEMORY_MIB.to_string())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&so).unwrap())
        .stderr(std::fs::File::create(&se).unwrap())
        .process_group(0);
    let mem = lim.mem_bytes;
    // SAFETY: only async-signal-safe calls (setrlimit) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let cap = |res, v| {
                let r = libc::rlimit {
                    rlim_cur: v,
                    rlim_max: v,
                };
                if libc::setrlimit(res, &r) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            };
            cap(libc::RLIMIT_AS, mem)?;
            cap(libc::RLIMIT_CORE, 0)?;
            cap(libc::RLIMIT_FSIZE, 1 << 30)?;
            Ok(())
        });
    }
    let start = Instant::now();
    let child = cmd.spawn().expect("spawn stackc");
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: zeroed rusage is a valid value; the pointers outlive the calls.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let mut timed_out = false;
    loop {
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut ru) };
        if r == pid {
            break;
        }
        assert!(r == 0, "wait4: {}", std::io::Error::last_os_error());
        if !timed_out && start.elapsed() > lim.timeout {
            timed_out = true;
            unsafe { libc::kill(-pid, libc::SIGKILL) };
            let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
            assert_eq!(r, pid, "wait4: {}", std::io::Error::last_os_error());
            break;
        }
        std::thread::sleep(Duration::from_millis(if start.elapsed() < Duration::from_secs(1) {
            5
        } else {
            25
        }));
    }
    let wall = start.elapsed();
    // Anything the child left in its group (it should spawn nothing).
    unsafe { libc::kill(-pid, libc::SIGKILL) };
    drop(child);
    let exit = if timed_out {
        Exit::Timeout
    } else if libc::WIFEXITED(status) {
        Exit::Code(libc::WEXITSTATUS(status))
    } else {
        Exit::Signal(libc::WTERMSIG(status))
    };
    let mut written = Vec::new();
    collect(&run.join("out"), &run.join("out"), &mut written);
    Ran {
        label,
        args: args.iter().map(|s| s.to_string()).collect(),
        exit,
        peak_kib: ru.ru_maxrss as u64,
        wall,
        stdout: std::fs::read(&so).unwrap(),
        stderr: std::fs::read(&se).unwrap(),
        written,
    }
}

/// Regular files below `dir` (symlinks not followed).
fn collect(root: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        let Ok(m) = std::fs::symlink_metadata(&p) else { continue };
        if m.is_dir() {
            collect(root, &p, out);
        } else if m.is_file() {
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            out.push((rel, std::fs::read(&p).unwrap_or_default()));
        }
    }
}

// ---------------------------------------------------------------------------
// Judging a run.

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The path-like token around `hay[at..at + len]`.
fn token(hay: &[u8], at: usize, len: usize) -> &[u8] {
    let stop = |b: u8| b.is_ascii_whitespace() || b"\"'`<>()[]{},;|".contains(&b);
    let mut s = at;
    while s > 0 && !stop(hay[s - 1]) {
        s -= 1;
    }
    let mut e = at + len;
    while e < hay.len() && !stop(hay[e]) {
        e += 1;
    }
    &hay[s..e]
}

/// Failures of one run: (class, detail). Details never quote leaked bytes.
fn judge(r: &Ran, input: &[u8], mem_cap_kib: u64) -> Vec<(String, String)> {
    let mut f = Vec::new();
    let err = String::from_utf8_lossy(&r.stderr);
    let oom = err.contains("memory allocation of") || err.contains("out of memory");
    // ` (memory allocation of N bytes failed)`, when stderr says so.
    let alloc_line = || {
        err.lines()
            .find(|l| l.contains("memory allocation of") || l.contains("out of memory"))
            .map(|l| format!(" ({})", l.trim()))
            .unwrap_or_default()
    };
    let first_panic = || {
        err.lines()
            .skip_while(|l| !l.contains("panicked at"))
            .take(2)
            .collect::<Vec<_>>()
            .join(" / ")
    };
    match r.exit {
        Exit::Code(0..=2) => {}
        Exit::Timeout if oom || r.peak_kib * 10 >= mem_cap_kib * 9 => f.push((
            "unbounded memory".into(),
            format!(
                "hit the address-space cap{}, then killed by the watchdog; peak {} MiB",
                alloc_line(),
                r.peak_kib >> 10
            ),
        )),
        Exit::Timeout if r.peak_kib >= GROWING_KIB => f.push((
            "unbounded memory".into(),
            format!(
                "still running after {:.0?}, still growing at {} MiB",
                r.wall,
                r.peak_kib >> 10
            ),
        )),
        Exit::Timeout => f.push((
            "hang".into(),
            format!("still running after {:.0?}; peak {} MiB", r.wall, r.peak_kib >> 10),
        )),
        Exit::Signal(_) | Exit::Code(_) if err.contains("has overflowed its stack") => f.push((
            "stack overflow".into(),
            format!("{}; peak {} MiB", r.exit, r.peak_kib >> 10),
        )),
        Exit::Signal(_) | Exit::Code(_) if oom => f.push((
            "unbounded memory".into(),
            format!(
                "{} on the address-space cap{}; peak {} MiB",
                r.exit,
                alloc_line(),
                r.peak_kib >> 10
            ),
        )),
        Exit::Code(101) => f.push(("panic".into(), first_panic())),
        e => f.push(("crash".into(), format!("{e}"))),
    }
    if err.contains("panicked at") && r.exit != Exit::Code(101) && !oom {
        f.push(("panic".into(), first_panic()));
    }
    let mut outputs: Vec<(String, &[u8])> = vec![("stdout".into(), &r.stdout), ("stderr".into(), &r.stderr)];
    for (p, b) in &r.written {
        outputs.push((format!("out/{p}"), b));
    }
    for (name, bytes) in &outputs {
        for (needle, what) in [(CANARY, "the canary"), (PASSWD, "/etc/passwd's first line")] {
            if let Some(at) = find(bytes, needle.as_bytes()) {
                f.push((
                    "outside content in output".into(),
                    format!("{what} in {name} at byte {at}"),
                ));
            }
        }
        if let Some(at) = find(bytes, MARKER.as_bytes()) {
            f.push((
                "absolute path in output".into(),
                format!("the temporary directory in {name} at byte {at}"),
            ));
        }
    }
    // Machine paths in what stackc prints, unless the token is in the input.
    let repo = repo().to_string_lossy().into_owned();
    for (name, bytes) in &outputs[..2] {
        for needle in ["/root/", "/home/", "/tmp/", ".cargo/registry", repo.as_str()] {
            let mut from = 0;
            while let Some(at) = find(&bytes[from..], needle.as_bytes()).map(|a| a + from) {
                let tok = token(bytes, at, needle.len());
                // `/home/` inside a relative path (`srv/home/x`) is not absolute.
                let inside = at > 0
                    && needle.starts_with('/')
                    && !b":=".contains(&bytes[at - 1])
                    && !tok.starts_with(needle.as_bytes());
                // The marker is reported above; a token the input holds is quoted.
                if !inside && find(tok, MARKER.as_bytes()).is_none() && find(input, tok).is_none() {
                    f.push((
                        "absolute path in output".into(),
                        format!("{:?} in {name}", String::from_utf8_lossy(tok)),
                    ));
                    break;
                }
                from = at + needle.len();
            }
        }
    }
    if r.label == "check-json" && matches!(r.exit, Exit::Code(0..=2)) {
        match serde_json::from_slice::<serde_json::Value>(&r.stdout) {
            Ok(v) if v.get("diagnostics").is_some_and(|d| d.is_array()) => {}
            Ok(_) => f.push(("bad JSON output".into(), "no `diagnostics` array".into())),
            Err(e) => f.push(("bad JSON output".into(), format!("stdout is not JSON: {e}"))),
        }
    }
    f.sort();
    f.dedup();
    f
}

// ---------------------------------------------------------------------------
// Reproducers.

fn failures_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("fuzz-failures")
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// `target/fuzz-failures/<n>/`: the mutated project, each command's output,
/// and `repro.sh`, which rebuilds the run directory and runs the command.
fn write_reproducer(n: usize, src: &Source, input: &[u8], what: &[String], rans: &[Ran], lim: &Limits) -> PathBuf {
    let dir = failures_dir().join(n.to_string());
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("proj")).unwrap();
    for (f, b) in &src.files {
        let to = dir.join("proj").join(f);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::write(to, if f == "prod.ncl" { input } else { b }).unwrap();
    }
    for r in rans {
        std::fs::write(dir.join(format!("{}.stdout", r.label)), &r.stdout).unwrap();
        std::fs::write(dir.join(format!("{}.stderr", r.label)), &r.stderr).unwrap();
    }
    std::fs::write(dir.join("prod.ncl"), input).unwrap();
    let mut sh = String::new();
    writeln!(sh, "#!/bin/sh").unwrap();
    writeln!(sh, "# stackc fuzz failure {n}: {}", src.name).unwrap();
    for w in what {
        writeln!(sh, "#   {}", w.replace('\n', " ")).unwrap();
    }
    writeln!(sh, "# Usage: sh repro.sh [STACKC]  (default: the binary the test ran)").unwrap();
    writeln!(sh, "set -u").unwrap();
    writeln!(sh, "here=$(cd \"$(dirname \"$0\")\" && pwd)").unwrap();
    writeln!(sh, "bin=${{1:-{}}}", sh_quote(env!("CARGO_BIN_EXE_stackc"))).unwrap();
    writeln!(sh, "run=$(mktemp -d /tmp/stackc-fuzz-repro-XXXXXX)").unwrap();
    writeln!(sh, "mkdir -p \"$run/proj\" && cp \"$here\"/proj/* \"$run/proj/\"").unwrap();
    for (m, f) in &src.modes {
        writeln!(sh, "chmod {m:o} \"$run/proj/{f}\"").unwrap();
    }
    sh.push_str(&plant_sh());
    writeln!(sh, "cd \"$run/proj\"").unwrap();
    for r in rans {
        let args: Vec<String> = r.args.iter().map(|a| sh_quote(a)).collect();
        writeln!(sh, "echo \"+ stackc {}\"", args.join(" ").replace('"', "\\\"")).unwrap();
        writeln!(
            sh,
            "env -i PATH=/usr/bin:/bin HOME=\"$run/home\" TMPDIR=\"$run/tmp\" LANG=C.UTF-8 NO_COLOR=1 STACKC_FUZZ_CANARY={CANARY} \\\n  timeout -s KILL {} prlimit --as={} \"$bin\" {}",
            lim.timeout.as_secs(),
            lim.mem_bytes,
            args.join(" ")
        )
        .unwrap();
        writeln!(sh, "echo \"exit: $?\"").unwrap();
    }
    writeln!(sh, "echo \"run directory: $run (canary: {CANARY})\"").unwrap();
    std::fs::write(dir.join("repro.sh"), sh).unwrap();
    dir
}

// ---------------------------------------------------------------------------
// The test.

fn env_num(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => {
            let v = v.trim();
            let n = match v.strip_prefix("0x") {
                Some(h) => u64::from_str_radix(h, 16),
                None => v.parse(),
            };
            n.unwrap_or_else(|_| panic!("{name}={v}: not a number"))
        }
        Err(_) => default,
    }
}

struct Record {
    n: usize,
    source: String,
    what: Vec<String>,
    rans: Vec<(&'static str, Exit, u64, Duration)>,
    failures: Vec<(String, String)>,
    repro: Option<PathBuf>,
}

#[test]
fn mutated_inputs_never_panic_hang_or_leak() {
    let seed = env_num("STACKC_FUZZ_SEED", DEFAULT_SEED);
    let runs = env_num("STACKC_FUZZ_RUNS", DEFAULT_RUNS as u64) as usize;
    let jobs = env_num("STACKC_FUZZ_JOBS", DEFAULT_JOBS as u64).max(1) as usize;
    let lim = Limits {
        timeout: Duration::from_secs(env_num("STACKC_FUZZ_TIMEOUT", DEFAULT_TIMEOUT_SECS)),
        mem_bytes: env_num("STACKC_FUZZ_MEM_MIB", DEFAULT_MEM_MIB) << 20,
    };
    let only: Option<Vec<usize>> = std::env::var("STACKC_FUZZ_ONLY").ok().map(|s| {
        s.split(',')
            .map(|x| x.trim().parse().expect("STACKC_FUZZ_ONLY: numbers"))
            .collect()
    });
    let iterations: Vec<usize> = only.clone().unwrap_or_else(|| (0..runs).collect());
    let (examples, bad) = sources();
    assert!(!examples.is_empty() && bad.len() >= 10, "sources missing");
    if only.is_none() {
        let _ = std::fs::remove_dir_all(failures_dir());
    }
    println!(
        "fuzz: seed {seed:#x}, {} iterations over {} examples and {} bad cases, {jobs} jobs, {:?} and {} MiB per command",
        iterations.len(),
        examples.len(),
        bad.len(),
        lim.timeout,
        lim.mem_bytes >> 20
    );

    let base = std::env::temp_dir();
    let next = AtomicUsize::new(0);
    let records = Mutex::new(Vec::<Record>::new());
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| {
                loop {
                    let k = next.fetch_add(1, Ordering::SeqCst);
                    let Some(&n) = iterations.get(k) else { break };
                    let rec = iteration(n, seed, &examples, &bad, &base, &lim);
                    records.lock().unwrap().push(rec);
                }
            });
        }
    });
    let wall = started.elapsed();
    let mut records = records.into_inner().unwrap();
    records.sort_by_key(|r| r.n);

    // Summary.
    let mut by_exit: BTreeMap<(&str, Exit), usize> = BTreeMap::new();
    let mut peaks = Vec::new();
    let mut slowest: Option<(Duration, usize, &str, &str)> = None;
    let mut slowest_done = slowest;
    for r in &records {
        for &(label, exit, peak, w) in &r.rans {
            *by_exit.entry((label, exit)).or_default() += 1;
            peaks.push(peak);
            if slowest.is_none_or(|s| w > s.0) {
                slowest = Some((w, r.n, label, &r.source));
            }
            if exit != Exit::Timeout && slowest_done.is_none_or(|s| w > s.0) {
                slowest_done = Some((w, r.n, label, &r.source));
            }
        }
    }
    peaks.sort();
    let commands = peaks.len();
    println!("\n=== fuzz summary ===");
    println!(
        "iterations {}, commands {commands}, wall time {wall:.1?}",
        records.len()
    );
    for ((label, exit), c) in &by_exit {
        println!("  {label:<11} {exit:<30} {c}");
    }
    if let (Some(max), Some(med)) = (peaks.last(), peaks.get(commands / 2)) {
        println!("peak memory: max {} MiB, median {} MiB", max >> 10, med >> 10);
    }
    if let Some((w, n, label, src)) = slowest {
        println!("slowest: #{n} {label} ({src}) {w:.2?}");
    }
    if let Some((w, n, label, src)) = slowest_done {
        println!("slowest not killed: #{n} {label} ({src}) {w:.2?}");
    }

    let failed: Vec<&Record> = records.iter().filter(|r| !r.failures.is_empty()).collect();
    let mut classes: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for r in &failed {
        let mut seen: Vec<&str> = r.failures.iter().map(|(c, _)| c.as_str()).collect();
        seen.sort();
        seen.dedup();
        for c in seen {
            classes.entry(c).or_default().push(r.n);
        }
    }
    if failed.is_empty() {
        println!("no failures");
        return;
    }
    println!("\n=== {} failing iterations ===", failed.len());
    for (c, ns) in &classes {
        println!(
            "  {c}: {} (#{})",
            ns.len(),
            ns.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(", #")
        );
    }
    let mut report = String::new();
    for r in &failed {
        writeln!(report, "\n--- #{n} {} ---", r.source, n = r.n).unwrap();
        for w in &r.what {
            writeln!(report, "  mutation: {w}").unwrap();
        }
        for (class, detail) in &r.failures {
            writeln!(report, "  FAIL [{class}] {detail}").unwrap();
        }
        if let Some(d) = &r.repro {
            writeln!(report, "  input:      {}", d.join("prod.ncl").display()).unwrap();
            writeln!(report, "  reproduce:  sh {}", d.join("repro.sh").display()).unwrap();
        }
        writeln!(
            report,
            "  or:         STACKC_FUZZ_SEED={seed:#x} STACKC_FUZZ_ONLY={} cargo test --test fuzz -- --nocapture",
            r.n
        )
        .unwrap();
    }
    println!("{report}");
    panic!(
        "{} of {} iterations failed: {}",
        failed.len(),
        records.len(),
        classes
            .iter()
            .map(|(c, ns)| format!("{c} ({})", ns.len()))
            .collect::<Vec<_>>()
            .join(", ")
    );
}

/// Iteration `n`: pick the source, mutate, run, judge.
fn iteration(n: usize, seed: u64, examples: &[Source], bad: &[Source], base: &Path, lim: &Limits) -> Record {
    let src = if n % 2 == 0 {
        &examples[(n / 2) % examples.len()]
    } else {
        &bad[(n / 2) % bad.len()]
    };
    let mut rng = Rng::for_iteration(seed, n);
    let prod = &src.files.iter().find(|(f, _)| f == "prod.ncl").unwrap().1;
    let (input, what) = mutate(&mut rng, prod);

    let run = base.join(format!("stackc-fuzz-{MARKER}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&run);
    std::fs::create_dir_all(run.join("proj")).unwrap();
    for (f, b) in &src.files {
        let to = run.join("proj").join(f);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::write(to, if f == "prod.ncl" { &input } else { b }).unwrap();
    }
    for (m, f) in &src.modes {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(run.join("proj").join(f), std::fs::Permissions::from_mode(*m)).unwrap();
    }
    plant(&run);

    let mut plan: Vec<(&'static str, Vec<&str>)> = vec![("check-json", vec!["check", "prod.ncl", "--format", "json"])];
    if rng.chance(1, 3) || what.iter().any(|w| w.starts_with("planted file")) {
        plan.push((
            "build",
            vec!["build", "prod.ncl", "--placeholder-secrets", "-o", "../out"],
        ));
    }
    if rng.chance(1, 4) {
        plan.push(("check-human", vec!["check", "prod.ncl"]));
    }
    let mut rans = Vec::new();
    let mut failures = Vec::new();
    for (label, args) in plan {
        let r = run_stackc(&run, label, &args, lim);
        for (c, d) in judge(&r, &input, lim.mem_bytes >> 10) {
            failures.push((c, format!("{label}: {d}")));
        }
        let fatal = !matches!(r.exit, Exit::Code(_));
        rans.push(r);
        if fatal {
            // The other commands would only repeat the hang or the abort.
            break;
        }
    }
    let repro = (!failures.is_empty()).then(|| write_reproducer(n, src, &input, &what, &rans, lim));
    let _ = std::fs::remove_dir_all(&run);
    Record {
        n,
        source: src.name.clone(),
        what,
        rans: rans.iter().map(|r| (r.label, r.exit, r.peak_kib, r.wall)).collect(),
        failures,
        repro,
    }
}
