//! Embeds the Nickel standard library (`modules/`) and the diagnostic pages
//! (`docs/diagnostics/`) into the binary, so `stackc` works from any
//! directory with no install step; and the stdlib as evaluation reads it,
//! its documentation strings blanked (see `blank_docs`).
use std::{env, fs, path::Path};

#[path = "src/blank.rs"]
mod blank;
use blank::blank_docs;

fn embed(out: &mut String, konst: &str, dir: &Path, ext: &str) {
    println!("cargo:rerun-if-changed={}", dir.display());
    println!("cargo:rerun-if-changed=src/blank.rs");
    let mut entries: Vec<_> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    // Sorted, so the generated table (and the stdlib hash) is deterministic.
    entries.sort();
    out.push_str(&format!("pub const {konst}: &[(&str, &str)] = &[\n"));
    for p in entries {
        println!("cargo:rerun-if-changed={}", p.display());
        let name = p.file_name().unwrap().to_str().expect("UTF-8 file name");
        out.push_str(&format!(
            "    ({name:?}, include_str!({:?})),\n",
            p.canonicalize().unwrap()
        ));
    }
    out.push_str("];\n");
}

#[allow(clippy::disallowed_methods)] // cargo passes OUT_DIR through the environment
fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut out = String::new();
    embed(&mut out, "STDLIB", &root.join("modules"), "ncl");
    embed(&mut out, "DIAGNOSTIC_PAGES", &root.join("docs/diagnostics"), "md");
    embed(&mut out, "SCHEMAS", &root.join("schemas"), "json");
    embed_blanked(
        &mut out,
        &root.join("modules"),
        Path::new(&env::var("OUT_DIR").unwrap()),
    );
    let dest = Path::new(&env::var("OUT_DIR").unwrap()).join("embedded.rs");
    fs::write(dest, out).unwrap();
}

/// `STDLIB_EVAL`: the stdlib modules, in `STDLIB`'s order, with
/// `blank_docs` applied.
fn embed_blanked(out: &mut String, dir: &Path, out_dir: &Path) {
    let blanked = out_dir.join("stdlib-eval");
    fs::create_dir_all(&blanked).unwrap();
    let mut entries: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "ncl"))
        .collect();
    entries.sort();
    out.push_str("pub const STDLIB_EVAL: &[(&str, &str)] = &[\n");
    for p in entries {
        let name = p.file_name().unwrap().to_str().expect("UTF-8 file name");
        let text = fs::read_to_string(&p).unwrap();
        let dest = blanked.join(name);
        fs::write(&dest, blank_docs(&text)).unwrap();
        out.push_str(&format!("    ({name:?}, include_str!({:?})),\n", dest));
    }
    out.push_str("];\n");
}
