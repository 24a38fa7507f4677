//! Hostile and careless stack files: files outside the project are never
//! read (whatever the import's form), evaluation stays within its time,
//! memory and depth budgets, and nothing of an outside file or of the build
//! machine's paths reaches any output. Each case runs the real binary.

mod common;

use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{TempDir, stackc, text};

/// A string planted where an escaping import would find it: it must never
/// appear in any output.
const CANARY: &str = "canary-7f3a9c1e-outside-the-project";

const HEAD: &str = "let stackc = import \"stackc.ncl\" in\n";

fn stack_with(content: &str) -> String {
    format!(
        "{HEAD}stackc.stack {{ name = \"s\", machines.web = {{ address = \"192.0.2.1\",\n  files.\"x/y\" = {{ format = 'raw, content = {content} }} }} }}\n"
    )
}

/// A project directory `proj/` inside a temp dir whose sibling `outside/`
/// holds the canary.
fn project(tag: &str) -> (TempDir, std::path::PathBuf) {
    let t = TempDir::new(tag);
    let proj = t.path().join("proj");
    std::fs::create_dir_all(&proj).unwrap();
    std::fs::create_dir_all(t.path().join("outside")).unwrap();
    std::fs::write(t.path().join("outside/secret.txt"), CANARY).unwrap();
    (t, proj)
}

/// Runs with a watchdog: a hang is a failure, not a stuck suite. The
/// output is drained while the process runs (a full pipe would block it).
fn run(mut cmd: Command, limit: Duration) -> Output {
    use std::io::Read;
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            r.read_to_end(&mut v).unwrap();
            v
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("stackc did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// `check` in both output formats and `build`: exit 1 with `code`, nothing
/// written, no canary and no absolute path of the test machine anywhere.
fn refused(proj: &Path, file: &str, code: &str) {
    let root = proj.parent().unwrap().to_string_lossy().into_owned();
    for args in [
        vec!["check", file],
        vec!["check", file, "--format", "json"],
        vec!["build", file, "--placeholder-secrets", "-o", "out"],
    ] {
        let mut cmd = stackc();
        cmd.args(&args).current_dir(proj).env("STACKC_TEST_CANARY", CANARY);
        let o = run(cmd, Duration::from_secs(120));
        let (out, err) = text(&o);
        let all = format!("{out}{err}");
        assert_eq!(o.status.code(), Some(1), "{args:?}: {all}");
        assert!(all.contains(code), "{args:?}: expected {code}: {all}");
        assert!(!all.contains(CANARY), "{args:?}: outside content printed: {all}");
        assert!(!all.contains(&root), "{args:?}: absolute path printed: {all}");
        assert!(!proj.join("out").exists(), "{args:?}: a bundle was written");
    }
}

#[test]
fn an_interpolated_import_through_a_symlink_is_refused_before_reading() {
    let (_t, proj) = project("symlink");
    symlink("../outside/secret.txt", proj.join("data.txt")).unwrap();
    std::fs::write(proj.join("prod.ncl"), stack_with("\"%{import \"data.txt\" as 'Text}\"")).unwrap();
    refused(&proj, "prod.ncl", "SC0106");
    // A link to a directory outside, and a file below it.
    symlink("../outside", proj.join("lib")).unwrap();
    std::fs::write(proj.join("p2.ncl"), stack_with("import \"lib/secret.txt\" as 'Text")).unwrap();
    refused(&proj, "p2.ncl", "SC0106");
}

#[test]
fn absolute_and_parent_imports_are_refused_in_every_form() {
    let (_t, proj) = project("absolute");
    let cases = [
        "\"%{import \"/proc/self/environ\" as 'Text}\"",
        "import \"../outside/secret.txt\" as 'Text",
        "m%\"%{import \"../outside/secret.txt\" as 'Text}\"%",
        "\"%{\"%{import \"../outside/secret.txt\" as 'Text}\"}\"",
        "std.string.length (import \"./../outside/secret.txt\" as 'Text) |> std.to_string",
        // Places a syntax-tree walk skips: a pattern's default, an enum
        // row's argument type. The lexer sees them all.
        "(let { c ? import \"../outside/secret.txt\" as 'Text } = {} in c)",
        "(let x | [| 'a (std.fail_with (import \"../outside/secret.txt\" as 'Text)) |] = 'a 1 in \"x\")",
    ];
    for (i, case) in cases.iter().enumerate() {
        let file = format!("p{i}.ncl");
        std::fs::write(proj.join(&file), stack_with(case)).unwrap();
        refused(&proj, &file, "SC0106");
    }
    // From a subdirectory: `..` that stays inside is fine, one more is not;
    // a missing file whose stdlib fallback would climb out is refused too.
    std::fs::create_dir_all(proj.join("sub")).unwrap();
    std::fs::write(proj.join("ok.txt"), "fine").unwrap();
    std::fs::write(proj.join("sub/a.ncl"), "import \"../ok.txt\" as 'Text").unwrap();
    std::fs::write(proj.join("sub/b.ncl"), "import \"../../outside/secret.txt\" as 'Text").unwrap();
    std::fs::write(proj.join("sub/c.ncl"), "import \"../missing/../../x.txt\" as 'Text").unwrap();
    std::fs::write(proj.join("good.ncl"), stack_with("import \"sub/a.ncl\"")).unwrap();
    let o = stackc()
        .args(["check", "good.ncl"])
        .current_dir(&proj)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));
    std::fs::write(proj.join("bad1.ncl"), stack_with("import \"sub/b.ncl\"")).unwrap();
    refused(&proj, "bad1.ncl", "SC0106");
    std::fs::write(proj.join("bad2.ncl"), stack_with("import \"sub/c.ncl\"")).unwrap();
    refused(&proj, "bad2.ncl", "SC0106");
}

#[test]
fn fifos_devices_and_directories_are_never_opened_for_reading() {
    let (_t, proj) = project("fifo");
    let fifo = proj.join("pipe.txt");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    std::fs::write(proj.join("p1.ncl"), stack_with("import \"pipe.txt\" as 'Text")).unwrap();
    refused(&proj, "p1.ncl", "SC0112");
    symlink("/dev/zero", proj.join("zero.txt")).unwrap();
    std::fs::write(proj.join("p2.ncl"), stack_with("import \"zero.txt\" as 'Text")).unwrap();
    refused(&proj, "p2.ncl", "SC0106");
    std::fs::create_dir_all(proj.join("dir.txt")).unwrap();
    std::fs::write(proj.join("p3.ncl"), stack_with("import \"dir.txt\" as 'Text")).unwrap();
    refused(&proj, "p3.ncl", "SC0112");
    std::fs::write(proj.join("bin.txt"), [0xffu8, 0xfe, 0x00, 0x80]).unwrap();
    std::fs::write(proj.join("p4.ncl"), stack_with("import \"bin.txt\" as 'Text")).unwrap();
    refused(&proj, "p4.ncl", "SC0112");
    // The stack file itself as a FIFO: no hang either.
    let entry = proj.join("entry.ncl");
    assert!(Command::new("mkfifo").arg(&entry).status().unwrap().success());
    let mut cmd = stackc();
    cmd.args(["check", "entry.ncl"]).current_dir(&proj);
    let o = run(cmd, Duration::from_secs(30));
    assert_eq!(o.status.code(), Some(1), "{:?}", text(&o));
    assert!(text(&o).1.contains("SC0112"), "{:?}", text(&o));
}

#[test]
fn a_runaway_recursion_stops_at_the_memory_budget() {
    let (_t, proj) = project("memory");
    std::fs::write(
        proj.join("prod.ncl"),
        stack_with("(let rec f = fun n => f (n + 1) in f 0)"),
    )
    .unwrap();
    let mut cmd = stackc();
    cmd.args(["check", "prod.ncl", "--max-eval-memory", "256"])
        .current_dir(&proj);
    let o = run(cmd, Duration::from_secs(120));
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("SC0114") && err.contains("256 MiB"), "{err}");
}

#[test]
fn a_long_evaluation_stops_at_the_time_budget() {
    let (_t, proj) = project("time");
    let slow = "(let rec f = fun n => if n == 0 then \"\" else f (n - 1) in f 1000000000)";
    std::fs::write(proj.join("prod.ncl"), stack_with(slow)).unwrap();
    let mut cmd = stackc();
    cmd.args(["check", "prod.ncl", "--max-eval-time", "2"])
        .current_dir(&proj);
    let start = Instant::now();
    let o = run(cmd, Duration::from_secs(60));
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("SC0113") && err.contains("2 s"), "{err}");
    assert!(start.elapsed() < Duration::from_secs(30), "took {:?}", start.elapsed());
}

#[test]
fn deep_nesting_is_a_finding_not_a_crash() {
    let (_t, proj) = project("deep");
    // Syntax: brackets and `let` chains, refused before parsing.
    std::fs::write(proj.join("p1.ncl"), "[".repeat(50_000)).unwrap();
    refused(&proj, "p1.ncl", "SC0115");
    let chain = format!(
        "{HEAD}{}stackc.stack {{ name = \"s\" }}",
        "let x = 1 in ".repeat(20_000)
    );
    std::fs::write(proj.join("p2.ncl"), chain).unwrap();
    refused(&proj, "p2.ncl", "SC0115");
    // A value a function nests 30 000 levels deep: without the stack guard
    // the export overflows the evaluation thread's stack and aborts.
    let nest = "(std.array.fold_left (fun acc _ => [acc]) [] (std.array.range 0 30000))";
    std::fs::write(proj.join("p3.ncl"), stack_with(nest).replace("'raw", "'json")).unwrap();
    refused(&proj, "p3.ncl", "SC0115");
}
