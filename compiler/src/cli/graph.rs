//! `stackc graph FILE`: the topology picture (`crate::graph`), as DOT, or
//! as SVG laid out by Graphviz `dot`.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use clap::ValueEnum;

use super::{emit, limits, report};
use crate::diag::{Code, Diagnostic};
use crate::secrets::Keying;

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum GraphFormat {
    Dot,
    Svg,
}

#[derive(clap::Args)]
pub(crate) struct GraphArgs {
    /// The stack file.
    file: PathBuf,
    /// `dot`: Graphviz DOT text (deterministic); `svg`: laid out by Graphviz `dot -Tsvg`
    /// (`$STACKC_DOT`, else `dot` on PATH).
    #[arg(long, value_enum, default_value_t = GraphFormat::Dot)]
    format: GraphFormat,
    #[arg(long)]
    project_root: Option<PathBuf>,
}

pub(crate) fn run(args: GraphArgs, color: bool) -> u8 {
    let opts = crate::Options {
        identities: None,
        limits: limits(),
        project_root: args.project_root.as_deref(),
        keying: &Keying::Placeholder,
        cache: &crate::secrets::NoCache,
        machine: None,
        eval_cache: None,
    };
    let compiled = match crate::compile(&args.file, &opts) {
        Ok(c) => c,
        Err(diags) => return report(&diags, color, "the stack does not build"),
    };
    let dot = crate::graph::dot(&compiled.stack);
    match args.format {
        GraphFormat::Dot => {
            let _ = emit(dot.as_bytes());
            0
        }
        GraphFormat::Svg => {
            let program = std::env::var_os("STACKC_DOT").map_or_else(|| PathBuf::from("dot"), PathBuf::from);
            match svg(&program, &dot) {
                Ok(bytes) => {
                    let _ = emit(&bytes);
                    0
                }
                Err(d) => report(&[d], color, "no picture"),
            }
        }
    }
}

/// `dot -Tsvg` on the text.
pub(crate) fn svg(program: &Path, dot: &str) -> Result<Vec<u8>, Diagnostic> {
    let fail = |what: String| {
        Diagnostic::error(Code::Graphviz, what).with_help(
            "install Graphviz (`apt-get install graphviz`), or print DOT with `--format dot` and render it elsewhere",
        )
    };
    let mut child = Command::new(program)
        .arg("-Tsvg")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("cannot run Graphviz `dot`: {e}")))?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let text = dot.to_owned();
    // Written from a thread: dot may fill its output pipe before it has
    // read all of its input.
    let writer = std::thread::spawn(move || stdin.write_all(text.as_bytes()));
    let mut out = Vec::new();
    let mut err = Vec::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_end(&mut out);
    }
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_end(&mut err);
    }
    let _ = writer.join();
    let status = child
        .wait()
        .map_err(|e| fail(format!("Graphviz `dot` did not finish: {e}")))?;
    if !status.success() {
        let msg = String::from_utf8_lossy(&err);
        return Err(fail(format!("Graphviz `dot` failed ({status}): {}", msg.trim())));
    }
    Ok(out)
}
