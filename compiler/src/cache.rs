//! The on-disk key cache: one file per derived secret that is slow to make
//! (RSA keys, password digests), named by the hash of its derivation input.
//! Directory 0700, entries 0600, written atomically. Entries are verified
//! by the core (`secrets::cached`), so a damaged cache costs time, never
//! correctness.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;

use crate::secrets::Cache;

pub struct DirCache {
    dir: PathBuf,
}

impl DirCache {
    /// A cache in `dir`, created 0700 if missing. `None` if it cannot be
    /// used safely (not a directory, or open to other users).
    pub fn open(dir: PathBuf) -> Option<DirCache> {
        if fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir).is_err() {
            return None;
        }
        let meta = fs::metadata(&dir).ok()?;
        if !meta.is_dir() || meta.permissions().mode() & 0o077 != 0 {
            return None;
        }
        Some(DirCache { dir })
    }

    fn path(&self, address: &str) -> Option<PathBuf> {
        // Addresses are hex digests; anything else is refused outright.
        (address.len() == 64 && address.bytes().all(|b| b.is_ascii_hexdigit())).then(|| self.dir.join(address))
    }
}

impl Cache for DirCache {
    fn get(&self, address: &str) -> Option<String> {
        fs::read_to_string(self.path(address)?).ok()
    }

    fn put(&self, address: &str, entry: &str) {
        if let Some(path) = self.path(address) {
            write_entry(&path, entry.as_bytes(), true);
        }
    }
}

/// Writes a cache entry 0600 through a temporary sibling and a rename
/// (`sync`: to disk first). Whether it worked: a cache that cannot be
/// written only makes the next run slower.
fn write_entry(path: &std::path::Path, bytes: &[u8], sync: bool) -> bool {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let written = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(bytes)
                .and_then(|()| if sync { f.sync_all() } else { Ok(()) })
        })
        .and_then(|()| fs::rename(&tmp, path));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written.is_ok()
}

/// The evaluation cache: a stack's evaluation (value, field positions,
/// inputs) by the address of everything it depends on, so that a repeated
/// `check` or `build` of an unchanged stack skips Nickel.
///
/// Evaluation is a pure function of the project's sources (`load` read
/// them all; Nickel sees them under a virtual root and opens no file), the
/// embedded stdlib, the stackc binary (its evaluator and the Rust that
/// walks positions) and the limits. The address hashes exactly these; the
/// binary by its size and modification time, so a rebuilt stackc never
/// reads what another one wrote. Entries carry their address and a digest
/// of their body: a damaged, truncated or misplaced entry is a miss, never
/// a wrong answer. Only successful evaluations are kept (findings are
/// recomputed, so their text is always this binary's).
pub struct EvalCache {
    dir: PathBuf,
}

/// Entries kept; the oldest written go first (stackc reads no clock, so a
/// hit does not refresh an entry: an evicted one is evaluated again).
const EVAL_ENTRIES: usize = 32;
const EVAL_MAGIC: &str = "stackc-eval-cache 1";

impl EvalCache {
    /// A cache in `dir`, created 0700 if missing (project sources are in
    /// it); `None` if it cannot be used safely.
    pub fn open(dir: PathBuf) -> Option<EvalCache> {
        DirCache::open(dir).map(|c| EvalCache { dir: c.dir })
    }

    /// The address of an evaluation of `project` within `limits`.
    /// `None` when the running binary cannot be identified: then nothing
    /// is cached.
    pub fn address(project: &crate::load::Project, limits: crate::eval::Limits) -> Option<String> {
        Some(Self::address_with(
            project,
            limits,
            &crate::load::stdlib_digest(),
            &binary_identity()?,
        ))
    }

    fn address_with(project: &crate::load::Project, limits: crate::eval::Limits, stdlib: &str, binary: &str) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        let mut field = |b: &[u8]| {
            h.update((b.len() as u64).to_le_bytes());
            h.update(b);
        };
        field(EVAL_MAGIC.as_bytes());
        field(env!("CARGO_PKG_VERSION").as_bytes());
        field(binary.as_bytes());
        field(stdlib.as_bytes());
        field(&limits.time.as_millis().to_le_bytes());
        field(&(limits.memory as u64).to_le_bytes());
        for s in &project.sources {
            field(s.nickel_path.as_os_str().as_encoded_bytes());
            field(format!("{:?}", s.format).as_bytes());
            field(s.text.as_bytes());
        }
        crate::load::hex(&h.finalize())
    }

    /// Evaluates `project`, or answers from the cache.
    pub fn evaluate(
        &self,
        project: &crate::load::Project,
        limits: crate::eval::Limits,
    ) -> Result<crate::eval::Evaluated, Vec<crate::diag::Diagnostic>> {
        let Some(address) = Self::address(project, limits) else {
            return crate::eval::evaluate(project, limits);
        };
        if let Some(hit) = self.get(&address) {
            return Ok(hit);
        }
        let evaluated = crate::eval::evaluate(project, limits)?;
        self.put(&address, &evaluated);
        Ok(evaluated)
    }

    fn path(&self, address: &str) -> PathBuf {
        self.dir.join(address)
    }

    /// The entry at `address`, if it is intact and is that address's.
    pub fn get(&self, address: &str) -> Option<crate::eval::Evaluated> {
        let path = self.path(address);
        let bytes = fs::read(&path).ok()?;
        let (header, body) = bytes.split_at(bytes.iter().position(|&b| b == b'\n')? + 1);
        let header = std::str::from_utf8(header).ok()?.trim_end();
        let digest = header.strip_prefix(EVAL_MAGIC)?.strip_prefix(' ')?;
        if digest != body_digest(body) {
            return None;
        }
        let entry: crate::eval::Stored = serde_json::from_slice(body).ok()?;
        if entry.address != address {
            return None;
        }
        entry.into_evaluated()
    }

    /// Keeps `evaluated` at `address` (atomically), then drops the least
    /// recently written entries beyond the bound. Failures only cost time.
    pub fn put(&self, address: &str, evaluated: &crate::eval::Evaluated) {
        let Ok(body) = serde_json::to_vec(&crate::eval::Stored::of(address, evaluated)) else {
            return;
        };
        let mut bytes = format!("{EVAL_MAGIC} {}\n", body_digest(&body)).into_bytes();
        bytes.extend_from_slice(&body);
        // Not synced: a lost entry is evaluated again.
        if write_entry(&self.path(address), &bytes, false) {
            self.evict();
        }
    }

    fn evict(&self) {
        let Ok(entries) = fs::read_dir(&self.dir) else { return };
        let mut kept: Vec<(std::time::SystemTime, PathBuf)> = entries
            .flatten()
            .filter(|e| e.file_name().len() == 64)
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect();
        if kept.len() <= EVAL_ENTRIES {
            return;
        }
        kept.sort();
        for (_, path) in &kept[..kept.len() - EVAL_ENTRIES] {
            let _ = fs::remove_file(path);
        }
    }
}

fn body_digest(body: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    crate::load::hex(&Sha256::digest(body))
}

/// Which stackc binary this is: size and modification time of the running
/// executable.
fn binary_identity() -> Option<String> {
    let m = std::env::current_exe().and_then(fs::metadata).ok()?;
    let mtime = m.modified().ok()?.duration_since(std::time::UNIX_EPOCH).ok()?;
    Some(format!("{}:{}", m.len(), mtime.as_nanos()))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::EvalCache;
    use crate::eval::Limits;
    use crate::load::{InputFormat, Project, Source};

    fn project(files: &[(&str, InputFormat, &str)]) -> Project {
        Project {
            root: PathBuf::from("/p"),
            entry: PathBuf::from("/p/prod.ncl"),
            sources: files
                .iter()
                .map(|(path, format, text)| Source {
                    nickel_path: PathBuf::from(path),
                    format: *format,
                    text: (*text).to_owned(),
                })
                .collect(),
        }
    }

    #[test]
    fn every_input_of_an_evaluation_changes_its_address() {
        let base = [
            ("/v/prod.ncl", InputFormat::Nickel, "{ a = 1 }"),
            ("/v/x.ncl", InputFormat::Nickel, "2"),
        ];
        let at = |p: &Project, l: Limits, stdlib: &str, binary: &str| EvalCache::address_with(p, l, stdlib, binary);
        let l = Limits::default();
        let a = at(&project(&base), l, "stdlib", "bin");
        assert_eq!(a, at(&project(&base), l, "stdlib", "bin"), "stable");
        let mut variants = vec![
            at(&project(&base), l, "stdlib2", "bin"),
            at(&project(&base), l, "stdlib", "bin2"),
            at(
                &project(&base),
                Limits {
                    memory: l.memory / 2,
                    ..l
                },
                "stdlib",
                "bin",
            ),
            at(&project(&base), Limits { time: l.time / 2, ..l }, "stdlib", "bin"),
            at(&project(&base[..1]), l, "stdlib", "bin"),
        ];
        let mut changed = base;
        changed[1].2 = "3";
        variants.push(at(&project(&changed), l, "stdlib", "bin"));
        let mut renamed = base;
        renamed[1].0 = "/v/y.ncl";
        variants.push(at(&project(&renamed), l, "stdlib", "bin"));
        let mut reformatted = base;
        reformatted[1].1 = InputFormat::Json;
        variants.push(at(&project(&reformatted), l, "stdlib", "bin"));
        // Length prefixes: moving a byte from one field to the next is a change.
        let mut shifted = base;
        shifted[0].2 = "{ a = 1 }2";
        shifted[1].2 = "";
        variants.push(at(&project(&shifted), l, "stdlib", "bin"));
        for v in &variants {
            assert_ne!(&a, v);
        }
        variants.sort();
        variants.dedup();
        assert_eq!(variants.len(), 9);
    }
}
