//! `stackc option [PATH]`: the stdlib's options, from their `doc` metadata
//! and contracts (`crate::options`).

use super::{emit, report};
use crate::options;

#[derive(clap::Args)]
pub(crate) struct OptionArgs {
    /// An option path: `matrix.client_auth_method`, `native.ports`,
    /// `machines.web.native.app.command` (concrete names and a leading `stack.`
    /// are fine). Without one: every option path.
    path: Option<String>,
    /// The whole reference as Markdown (the generated part of docs/options.md).
    #[arg(long, conflicts_with = "path")]
    markdown: bool,
}

pub(crate) fn run(args: OptionArgs, color: bool) -> u8 {
    let opts = match options::reference() {
        Ok(o) => o,
        Err(diags) => return report(&diags, color, "no option reference"),
    };
    if args.markdown {
        let _ = emit(options::markdown(&opts).as_bytes());
        return 0;
    }
    let Some(path) = args.path else {
        let mut out = String::new();
        for o in &opts.options {
            out.push_str(&options::brief(o));
            out.push('\n');
        }
        let _ = emit(out.as_bytes());
        return 0;
    };
    match options::lookup(&opts, &path) {
        Ok((want, hits)) => {
            let (mut out, rest) = match hits.split_first() {
                Some((first, rest)) if first.path == want => (options::describe(first), rest),
                _ => (format!("{want}\n"), &hits[..]),
            };
            if !rest.is_empty() {
                out.push_str("\noptions below it:\n");
                for o in rest {
                    out.push_str("  ");
                    out.push_str(&options::brief(o));
                    out.push('\n');
                }
            }
            let _ = emit(out.as_bytes());
            0
        }
        Err(near) => {
            eprintln!("error: `{path}` is no option of the stackc modules");
            match near.as_slice() {
                [] => eprintln!("help: `stackc option` lists every option"),
                [one] => eprintln!("help: did you mean `{one}`?"),
                more => eprintln!(
                    "help: did you mean one of: {}?",
                    more.iter().map(|p| format!("`{p}`")).collect::<Vec<_>>().join(", ")
                ),
            }
            2
        }
    }
}
