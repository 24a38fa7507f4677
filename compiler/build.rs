//! Embeds the Nickel standard library (`modules/`) and the diagnostic pages
//! (`docs/diagnostics/`) into the binary, so `stackc` works from any
//! directory with no install step; and the stdlib as evaluation reads it,
//! its documentation strings blanked (see `blank_docs`), with what each
//! module names of Nickel's `std.ncl` (see `trim`).
use std::{
    env, fs,
    path::{Path, PathBuf},
};

#[path = "src/blank.rs"]
mod blank;
#[path = "src/trim.rs"]
#[allow(dead_code)] // only `accesses` and `bodies_loaded_when` run at build time
mod trim;
use blank::blank_docs;

/// The files of `dir` ending in `.ext`, sorted, so the generated tables
/// (and the stdlib hash) are deterministic; cargo reruns this script when
/// one changes.
fn listed(dir: &Path, ext: &str) -> Vec<PathBuf> {
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut entries: Vec<_> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    entries.sort();
    for p in &entries {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    entries
}

/// `pub const KONST: &[(&str, &str)]`: each file's name and the text of
/// the file `include_str!` reads for it.
fn table(out: &mut String, konst: &str, files: impl IntoIterator<Item = (PathBuf, PathBuf)>) {
    out.push_str(&format!("pub const {konst}: &[(&str, &str)] = &[\n"));
    for (file, included) in files {
        let name = file.file_name().unwrap().to_str().expect("UTF-8 file name");
        out.push_str(&format!("    ({name:?}, include_str!({included:?})),\n"));
    }
    out.push_str("];\n");
}

#[allow(clippy::disallowed_methods)] // cargo passes OUT_DIR through the environment
fn main() {
    println!("cargo:rerun-if-changed=src/blank.rs");
    println!("cargo:rerun-if-changed=src/trim.rs");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out_dir = PathBuf::from(env::var("OUT_DIR").unwrap());
    let as_is = |files: Vec<PathBuf>| files.into_iter().map(|p| (p.clone(), p.canonicalize().unwrap()));
    let modules = listed(&root.join("modules"), "ncl");
    let mut out = String::new();
    table(&mut out, "STDLIB", as_is(modules.clone()));
    table(
        &mut out,
        "DIAGNOSTIC_PAGES",
        as_is(listed(&root.join("docs/diagnostics"), "md")),
    );
    table(&mut out, "SCHEMAS", as_is(listed(&root.join("schemas"), "json")));
    // The stdlib as evaluation reads it, in `STDLIB`'s order.
    let blanked = out_dir.join("stdlib-eval");
    fs::create_dir_all(&blanked).unwrap();
    let mut accesses = String::from("pub const STDLIB_ACCESSES: &[&[(&str, &str)]] = &[\n");
    let mut load_when = String::from("pub const STDLIB_LOAD_WHEN: &[Option<&str>] = &[\n");
    let mut bodies = String::from("pub const STDLIB_BODIES: &[&[(&str, usize, usize)]] = &[\n");
    let eval: Vec<_> = modules
        .into_iter()
        .map(|p| {
            let dest = blanked.join(p.file_name().unwrap());
            let text = blank_docs(&fs::read_to_string(&p).unwrap());
            accesses.push_str("    &[");
            for (a, b) in trim::accesses(&text) {
                accesses.push_str(&format!("({a:?}, {b:?}), "));
            }
            accesses.push_str("],\n");
            let words = text.lines().find_map(|l| l.strip_prefix("# load-when:")).map(str::trim);
            load_when.push_str(&format!("    {words:?},\n"));
            bodies.push_str("    &[");
            let found = trim::bodies_loaded_when(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            for (words, body) in found {
                bodies.push_str(&format!("({words:?}, {}, {}), ", body.start, body.end));
            }
            bodies.push_str("],\n");
            fs::write(&dest, text).unwrap();
            (p, dest)
        })
        .collect();
    accesses.push_str("];\n");
    load_when.push_str("];\n");
    bodies.push_str("];\n");
    table(&mut out, "STDLIB_EVAL", eval);
    // Each module's `a.b` pairs, in `STDLIB`'s order: what it may reach of
    // Nickel's `std.ncl` (`trim`), read here instead of on every run.
    out.push_str(&accesses);
    // Each module's `# load-when:` words, and the values it loads only
    // for some stacks (`# load-body-when:`, see `trim::bodies_loaded_when`):
    // byte ranges in the text evaluation reads.
    out.push_str(&load_when);
    out.push_str(&bodies);
    fs::write(out_dir.join("embedded.rs"), out).unwrap();
}
