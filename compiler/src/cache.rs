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
        let Some(path) = self.path(address) else { return };
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let written = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| f.write_all(entry.as_bytes()).and_then(|()| f.sync_all()))
            .and_then(|()| fs::rename(&tmp, &path));
        // A cache that cannot be written only makes the next build slower.
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
    }
}
