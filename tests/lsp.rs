//! Editor support: the REAL Nickel language server (`nls`, crate
//! nickel-lang-lsp 1.18.0, installed by tests/tools/install.sh under
//! /opt/stackc-tools/nls) sees the stdlib `stackc stdlib --write DIR`
//! writes, through `NICKEL_IMPORT_PATH=DIR`: completion after `stackc.`
//! offers the stdlib's entries with their docs, and completion inside a
//! record annotated with a stackc contract (`{ … } | stackc.contracts.Machine`)
//! offers its options with their docs.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{TempDir, require_tool, stackc};
use serde_json::{Value, json};

fn nls_path() -> PathBuf {
    std::env::var_os("STACKC_NLS").map_or_else(|| PathBuf::from("/opt/stackc-tools/nls/bin/nls"), PathBuf::from)
}

struct Lsp {
    child: Child,
    stdin: ChildStdin,
    rx: mpsc::Receiver<Value>,
    next: u64,
}

impl Lsp {
    fn start(nls: &PathBuf, import_path: &std::path::Path) -> Lsp {
        let mut child = Command::new(nls)
            .env("NICKEL_IMPORT_PATH", import_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting nls");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || read_messages(stdout, tx));
        Lsp {
            child,
            stdin,
            rx,
            next: 1,
        }
    }

    fn send(&mut self, msg: Value) {
        let body = msg.to_string();
        write!(self.stdin, "Content-Length: {}\r\n\r\n{body}", body.len()).unwrap();
        self.stdin.flush().unwrap();
    }

    fn notify(&mut self, method: &str, params: Value) {
        self.send(json!({"jsonrpc": "2.0", "method": method, "params": params}));
    }

    /// Sends a request and waits for its response (other messages are skipped).
    fn request(&mut self, method: &str, params: Value) -> Value {
        let id = self.next;
        self.next += 1;
        self.send(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        loop {
            let msg = self
                .rx
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|_| panic!("no answer from nls to {method} within 60 s"));
            if msg.get("id") == Some(&json!(id)) && msg.get("method").is_none() {
                assert!(msg.get("error").is_none(), "nls answered {method} with an error: {msg}");
                return msg["result"].clone();
            }
        }
    }
}

impl Drop for Lsp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_messages(stdout: ChildStdout, tx: mpsc::Sender<Value>) {
    let mut r = BufReader::new(stdout);
    loop {
        let mut len = None;
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some(v) = line.strip_prefix("Content-Length:") {
                len = v.trim().parse::<usize>().ok();
            }
        }
        let Some(len) = len else { return };
        let mut body = vec![0; len];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        if let Ok(v) = serde_json::from_slice(&body)
            && tx.send(v).is_err()
        {
            return;
        }
    }
}

fn labels(result: &Value) -> Vec<(String, String)> {
    let items = result.get("items").unwrap_or(result);
    items
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| {
            let doc = match &i["documentation"] {
                Value::String(s) => s.clone(),
                Value::Object(o) => o.get("value").and_then(Value::as_str).unwrap_or("").to_owned(),
                _ => String::new(),
            };
            (i["label"].as_str().unwrap_or("").to_owned(), doc)
        })
        .collect()
}

/// (line, character) of the end of `marker`'s first occurrence.
fn after(text: &str, marker: &str) -> (usize, usize) {
    let at = text.find(marker).expect("marker in text") + marker.len();
    let before = &text[..at];
    let line = before.matches('\n').count();
    let col = before.rsplit('\n').next().unwrap().chars().count();
    (line, col)
}

#[test]
fn nls_completes_stackc_options_from_the_written_stdlib() {
    let Some(nls) = require_tool(nls_path(), "the Nickel language server (nls 1.18.0)") else {
        return;
    };
    let t = TempDir::new("lsp");
    let lib = t.0.join("stdlib");
    let o = stackc().args(["stdlib", "--write"]).arg(&lib).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(lib.join("stackc.ncl").is_file());
    let project = t.0.join("project");
    std::fs::create_dir_all(&project).unwrap();
    // A record annotated with a stackc contract (`{ … } | C`: nls reads
    // the contract of the record itself), and a field access on `stackc`.
    let text = "let stackc = import \"stackc.ncl\" in\n\
                let web = { deploy_ } | stackc.contracts.Machine in\n\
                let s = stackc.st in\n\
                stackc.stack { name = \"demo\", machines.web = web }\n";
    let file = project.join("prod.ncl");
    std::fs::write(&file, text).unwrap();
    let uri = format!("file://{}", file.display());

    let mut lsp = Lsp::start(&nls, &lib);
    lsp.request(
        "initialize",
        json!({"processId": null, "rootUri": format!("file://{}", project.display()), "capabilities": {}}),
    );
    lsp.notify("initialized", json!({}));
    lsp.notify(
        "textDocument/didOpen",
        json!({"textDocument": {"uri": uri, "languageId": "nickel", "version": 1, "text": text}}),
    );

    // After `stackc.`: the stdlib's entries, with their docs.
    let (line, character) = after(text, "stackc.st");
    let result = lsp.request(
        "textDocument/completion",
        json!({"textDocument": {"uri": uri}, "position": {"line": line, "character": character}}),
    );
    let got = labels(&result);
    let stack = got.iter().find(|(l, _)| l == "stack");
    assert!(stack.is_some(), "`stack` not offered after `stackc.`: {got:?}");
    assert!(
        stack.unwrap().1.contains("Check a stack description"),
        "`stack` offered without its doc: {stack:?}"
    );
    assert!(got.iter().any(|(l, _)| l == "matrix"), "`matrix` not offered: {got:?}");

    // Inside a record under the Machine contract: its options.
    let (line, character) = after(text, "{ deploy_");
    let result = lsp.request(
        "textDocument/completion",
        json!({"textDocument": {"uri": uri}, "position": {"line": line, "character": character}}),
    );
    let got = labels(&result);
    let root = got.iter().find(|(l, _)| l == "deploy_root");
    assert!(root.is_some(), "`deploy_root` (a Machine option) not offered: {got:?}");
    assert!(
        root.unwrap()
            .1
            .contains("Where the machine's bundle folder is installed"),
        "`deploy_root` offered without its doc: {root:?}"
    );
    assert!(got.iter().any(|(l, _)| l == "native"), "`native` not offered: {got:?}");
}

#[test]
fn stdlib_write_updates_its_own_folder_and_refuses_others() {
    let t = TempDir::new("stdlib-write");
    let lib = t.0.join("lib");
    let o = stackc().args(["stdlib", "--write"]).arg(&lib).output().unwrap();
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("NICKEL_IMPORT_PATH="));
    // A file of an older stdlib goes; a second write is fine.
    std::fs::write(lib.join("gone.ncl"), "{}").unwrap();
    let o = stackc().args(["stdlib", "--write"]).arg(&lib).output().unwrap();
    assert!(o.status.success());
    assert!(!lib.join("gone.ncl").exists());
    let listed = stackc().arg("stdlib").output().unwrap();
    let names: Vec<String> = String::from_utf8(listed.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert!(names.contains(&"stackc.ncl".to_owned()));
    for n in &names {
        assert!(lib.join(n).is_file(), "{n} not written");
    }
    // A folder of other files is left alone.
    let other = t.0.join("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("notes.txt"), "mine").unwrap();
    let o = stackc().args(["stdlib", "--write"]).arg(&other).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("SC0902"));
    assert!(!other.join("stackc.ncl").exists());
}
