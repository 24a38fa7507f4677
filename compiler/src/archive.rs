//! Bundles as one stream, for deploy tools: a deterministic tar (sorted
//! entries, fixed mtime, numeric owners, modes kept) or a JSON document.

use serde::Serialize;

use crate::render::Rendered;

/// POSIX ustar archive of `files` (and `manifest`, if given): sorted
/// entries, mtime `mtime`, each file's owner (root's by name, others by
/// number), modes as on disk (directories by
/// `bundle::dir_modes`). The same bundle gives the same bytes.
pub fn tar(files: &Rendered, manifest: Option<&[u8]>, mtime: u64) -> Result<Vec<u8>, String> {
    // (path, mode, owner, content; none for a directory)
    type Entry<'a> = (String, u32, (u32, u32), Option<&'a [u8]>);
    let mut entries: Vec<Entry> = Vec::new();
    for (dir, mode) in crate::bundle::dir_modes(files) {
        entries.push((format!("{}/", dir.display()), mode, (0, 0), None));
    }
    for (path, f) in files {
        entries.push((path.clone(), f.mode, f.owner, Some(&f.bytes)));
    }
    if let Some(m) = manifest {
        entries.push((
            crate::bundle::MANIFEST.to_owned(),
            crate::render::MODE_FILE,
            (0, 0),
            Some(m),
        ));
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = Vec::new();
    for (path, mode, owner, data) in entries {
        out.extend_from_slice(&header(
            &path,
            mode,
            owner,
            data.map_or(0, <[u8]>::len),
            mtime,
            data.is_none(),
        )?);
        if let Some(d) = data {
            out.extend_from_slice(d);
            out.resize(out.len().next_multiple_of(512), 0);
        }
    }
    // End of archive: two zero blocks.
    out.resize(out.len() + 1024, 0);
    Ok(out)
}

fn header(path: &str, mode: u32, owner: (u32, u32), size: usize, mtime: u64, dir: bool) -> Result<[u8; 512], String> {
    let mut h = [0u8; 512];
    // ustar splits long names into prefix (155) and name (100) at a `/`.
    let (prefix, name) = if path.len() <= 100 {
        ("", path)
    } else {
        // A directory's own trailing `/` cannot be the split point.
        let cut = path
            .trim_end_matches('/')
            .rmatch_indices('/')
            .map(|(i, _)| i)
            .find(|&i| i <= 155 && path.len() - i - 1 <= 100)
            .ok_or_else(|| format!("path too long for a tar archive: {path}"))?;
        (&path[..cut], &path[cut + 1..])
    };
    let put = |h: &mut [u8; 512], at: usize, bytes: &[u8]| h[at..at + bytes.len()].copy_from_slice(bytes);
    // Numeric fields are octal with a NUL: 11 digits at most for size and mtime.
    const MAX_OCTAL_11: u64 = 0o77777777777;
    if owner.0 > 0o7777777 || owner.1 > 0o7777777 {
        return Err(format!(
            "{path}: owner {}:{} too large for a ustar header",
            owner.0, owner.1
        ));
    }
    if size as u64 > MAX_OCTAL_11 || mtime > MAX_OCTAL_11 {
        return Err(format!("{path}: size or mtime too large for a ustar header"));
    }
    let octal = |h: &mut [u8; 512], at: usize, width: usize, v: u64| {
        let s = format!("{v:0w$o}\0", w = width - 1);
        h[at..at + width].copy_from_slice(s.as_bytes());
    };
    put(&mut h, 0, name.as_bytes());
    octal(&mut h, 100, 8, u64::from(mode & 0o7777));
    octal(&mut h, 108, 8, u64::from(owner.0));
    octal(&mut h, 116, 8, u64::from(owner.1));
    octal(&mut h, 124, 12, size as u64);
    octal(&mut h, 136, 12, mtime);
    h[156] = if dir { b'5' } else { b'0' };
    put(&mut h, 257, b"ustar\0");
    put(&mut h, 263, b"00");
    // Names only for root: another uid is a container's user, which need
    // not exist by name on the target (tar then uses the number).
    if owner.0 == 0 {
        put(&mut h, 265, b"root");
    }
    if owner.1 == 0 {
        put(&mut h, 297, b"root");
    }
    put(&mut h, 345, prefix.as_bytes());
    // The checksum is computed with its own field as spaces.
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    Ok(h)
}

#[derive(Serialize)]
struct JsonBundle<'a> {
    version: u32,
    files: Vec<JsonFile<'a>>,
}

#[derive(Serialize)]
struct JsonFile<'a> {
    path: &'a str,
    mode: String,
    /// Numeric `uid:gid`, when not root's.
    #[serde(skip_serializing_if = "Option::is_none")]
    owner: Option<String>,
    secret: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content_base64: Option<String>,
}

/// The bundle as one JSON document: paths, modes, secret flags, contents
/// (text as is, anything else in base64). Secrets are included: this is the
/// bundle itself, for a deploy tool reading stdout.
pub fn json(files: &Rendered, manifest: Option<&[u8]>) -> String {
    let mut list: Vec<JsonFile> = files
        .iter()
        .map(|(path, f)| {
            let text = std::str::from_utf8(&f.bytes).ok();
            JsonFile {
                path,
                mode: format!("{:04o}", f.mode),
                owner: (f.owner != (0, 0)).then(|| format!("{}:{}", f.owner.0, f.owner.1)),
                secret: f.secret,
                content: text,
                content_base64: text.is_none().then(|| crate::secrets::b64(&f.bytes)),
            }
        })
        .collect();
    if let Some(m) = manifest {
        list.push(JsonFile {
            path: crate::bundle::MANIFEST,
            mode: "0644".into(),
            owner: None,
            secret: false,
            content: std::str::from_utf8(m).ok(),
            content_base64: None,
        });
    }
    let mut s = serde_json::to_string_pretty(&JsonBundle {
        version: 1,
        files: list,
    })
    .expect("serialisable");
    s.push('\n');
    s
}

/// Is `bytes` a tar `tar` wrote? Every header is a ustar header exactly as
/// `header` fills it (owner `0`/`0` and `root`/`root`, no link name, no
/// device numbers, stackc's checksum layout, one mtime for all), entries
/// strictly sorted, data padded with zeros, and the archive ends with exactly
/// the two zero blocks. GNU tar and others differ in at least one of these
/// (device fields, per-file mtimes, padding to 10 KiB records), so a foreign
/// tar is not replaced by `build --format tar -o`.
pub fn is_stackc_tar(bytes: &[u8]) -> bool {
    if bytes.len() < 1024 || !bytes.len().is_multiple_of(512) {
        return false;
    }
    let octal = |field: &[u8]| -> Option<u64> {
        let (digits, rest) = field.split_at(field.len() - 1);
        (rest == [0] && !digits.is_empty() && digits.iter().all(|b| (b'0'..=b'7').contains(b)))
            .then(|| digits.iter().fold(0u64, |n, d| n * 8 + u64::from(d - b'0')))
    };
    let padded = |field: &[u8], text: &[u8]| field.starts_with(text) && field[text.len()..].iter().all(|&b| b == 0);
    let mut at = 0;
    let mut mtime: Option<&[u8]> = None;
    let mut last: Option<Vec<u8>> = None;
    loop {
        let h = &bytes[at..at + 512];
        if h.iter().all(|&b| b == 0) {
            // The end: the two zero blocks, and nothing after them.
            return at + 1024 == bytes.len() && bytes[at..].iter().all(|&b| b == 0);
        }
        let mut blank = h.to_vec();
        blank[148..156].fill(b' ');
        let sum: u64 = blank.iter().map(|&b| u64::from(b)).sum();
        let well_formed = &h[257..263] == b"ustar\0"
            && &h[263..265] == b"00"
            && octal(&h[148..155]) == Some(sum)
            && h[155] == b' '
            && octal(&h[100..108]).is_some_and(|m| m <= 0o7777)
            && octal(&h[108..116]).is_some_and(|u| padded(&h[265..297], if u == 0 { b"root" } else { b"" }))
            && octal(&h[116..124]).is_some_and(|g| padded(&h[297..329], if g == 0 { b"root" } else { b"" }))
            && h[157..257].iter().all(|&b| b == 0)
            && h[329..345].iter().all(|&b| b == 0)
            && h[500..512].iter().all(|&b| b == 0)
            && h[0] != 0
            && matches!(h[156], b'0' | b'5')
            && mtime.is_none_or(|m| m == &h[136..148])
            && octal(&h[136..148]).is_some();
        let Some(size) = octal(&h[124..136]).filter(|_| well_formed) else {
            return false;
        };
        mtime = Some(&h[136..148]);
        let field = |r: std::ops::Range<usize>| {
            let f = &h[r];
            f[..f.iter().position(|&b| b == 0).unwrap_or(f.len())].to_vec()
        };
        let (prefix, name) = (field(345..500), field(0..100));
        let path = if prefix.is_empty() {
            name
        } else {
            [prefix, b"/".to_vec(), name].concat()
        };
        if last.as_ref().is_some_and(|l| *l >= path) || (h[156] == b'5' && size != 0) {
            return false;
        }
        last = Some(path);
        let Some(data_end) = usize::try_from(size).ok().and_then(|s| (at + 512).checked_add(s)) else {
            return false;
        };
        let next = data_end.next_multiple_of(512);
        if next + 1024 > bytes.len() || bytes[data_end..next].iter().any(|&b| b != 0) {
            return false;
        }
        at = next;
    }
}

/// Is `bytes` a document `json` wrote? It starts as `json` writes it, and
/// has its shape: `version` 1 and `files`, each with a path, an octal
/// mode, a secret flag, one of `content` and `content_base64`, maybe an
/// `owner`, nothing else.
/// Numeric `uid:gid`, as `json` writes owners.
fn is_owner(s: &str) -> bool {
    s.split_once(':').is_some_and(|(u, g)| {
        [u, g]
            .iter()
            .all(|n| !n.is_empty() && n.len() <= 10 && n.bytes().all(|b| b.is_ascii_digit()))
    })
}

pub fn is_stackc_json(bytes: &[u8]) -> bool {
    if !bytes.starts_with(b"{\n  \"version\": 1,\n  \"files\": [") || !bytes.ends_with(b"}\n") {
        return false;
    }
    let Ok(serde_json::Value::Object(doc)) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        return false;
    };
    let Some(files) = doc.get("files").and_then(serde_json::Value::as_array) else {
        return false;
    };
    doc.len() == 2
        && doc["version"] == 1
        && files.iter().all(|f| {
            let Some(f) = f.as_object() else { return false };
            let mode = f.get("mode").and_then(serde_json::Value::as_str);
            f.get("path").is_some_and(serde_json::Value::is_string)
                && mode.is_some_and(|m| m.len() == 4 && m.bytes().all(|b| (b'0'..=b'7').contains(&b)))
                && f.get("secret").is_some_and(serde_json::Value::is_boolean)
                && (f.get("content").is_some_and(serde_json::Value::is_string)
                    ^ f.get("content_base64").is_some_and(serde_json::Value::is_string))
                && f.len() == 4 + usize::from(f.get("owner").is_some_and(|o| o.as_str().is_some_and(is_owner)))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::RenderedFile;

    fn files() -> Rendered {
        let mut r = Rendered::new();
        r.insert(
            "m/a.txt".into(),
            RenderedFile {
                bytes: b"hello\n".to_vec(),
                mode: 0o644,
                secret: false,
                owner: (0, 0),
            },
        );
        r.insert(
            "m/secrets/k".into(),
            RenderedFile {
                bytes: b"s3cret".to_vec(),
                mode: 0o600,
                secret: true,
                owner: (0, 0),
            },
        );
        r
    }

    #[test]
    fn tar_is_deterministic_and_well_formed() {
        let a = tar(&files(), Some(b"{}\n"), 0).unwrap();
        assert_eq!(a, tar(&files(), Some(b"{}\n"), 0).unwrap());
        assert_eq!(a.len() % 512, 0);
        // First entry: the directory `m/`, a ustar header with a valid checksum.
        assert_eq!(&a[0..2], b"m/");
        assert_eq!(a[156], b'5');
        assert_eq!(&a[257..263], b"ustar\0");
        let stored = u32::from_str_radix(std::str::from_utf8(&a[148..154]).unwrap(), 8).unwrap();
        let mut h = a[..512].to_vec();
        h[148..156].fill(b' ');
        assert_eq!(stored, h.iter().map(|&b| u32::from(b)).sum::<u32>());
        assert_ne!(a, tar(&files(), Some(b"{}\n"), 1).unwrap(), "mtime is recorded");
    }

    #[test]
    fn long_paths_use_the_prefix_field() {
        let mut r = Rendered::new();
        let long = format!("{}/{}/{}", "d".repeat(60), "e".repeat(59), "f".repeat(90));
        r.insert(
            long.clone(),
            RenderedFile {
                bytes: vec![],
                mode: 0o644,
                secret: false,
                owner: (0, 0),
            },
        );
        let t = tar(&r, None, 0).unwrap();
        // Entries: d/, d/e/ (121 characters: split too), then the file.
        let file_header = &t[1024..1536];
        assert_eq!(&file_header[0..90], "f".repeat(90).as_bytes());
        assert_eq!(
            &file_header[345..465],
            format!("{}/{}", "d".repeat(60), "e".repeat(59)).as_bytes()
        );
    }

    #[test]
    fn own_streams_are_recognised_and_foreign_ones_are_not() {
        let t = tar(&files(), Some(b"{}\n"), 1_700_000_000).unwrap();
        assert!(is_stackc_tar(&t));
        assert!(is_stackc_tar(&tar(&files(), None, 0).unwrap()));
        assert!(
            is_stackc_tar(&tar(&Rendered::new(), None, 0).unwrap()),
            "an empty bundle"
        );
        // One byte changed anywhere in a header, trailing bytes, a GNU-style
        // 10 KiB record, a truncated archive: not ours.
        for at in [0, 101, 110, 140, 150, 156, 158, 266, 300, 330, 501] {
            let mut bad = t.clone();
            bad[at] ^= 0x01;
            assert!(!is_stackc_tar(&bad), "byte {at} changed");
        }
        let mut padded = t.clone();
        padded.resize(10_240, 0);
        assert!(!is_stackc_tar(&padded));
        assert!(!is_stackc_tar(&t[..t.len() - 512]));
        assert!(!is_stackc_tar(b"precious notes\n"));
        assert!(!is_stackc_tar(&[0; 2048]));

        let j = json(&files(), Some(b"{}\n"));
        assert!(is_stackc_json(j.as_bytes()));
        let mut owned = files();
        owned.values_mut().for_each(|f| f.owner = (991, 991));
        assert!(is_stackc_json(json(&owned, None).as_bytes()), "files with owners");
        assert!(is_stackc_tar(&tar(&owned, None, 0).unwrap()), "files with owners");
        assert!(is_stackc_json(json(&Rendered::new(), None).as_bytes()));
        for foreign in [
            "{\"version\": 1, \"files\": []}\n".to_owned(),
            j.replace("\"secret\": false", "\"secret\": \"no\""),
            j.replace("\"mode\": \"0644\"", "\"mode\": \"0644\", \"owner\": \"me\""),
            j.replace("  \"files\": [", "  \"files\": [], \"x\": ["),
            "{\"name\": \"My PWA\"}\n".to_owned(),
            String::new(),
        ] {
            assert!(!is_stackc_json(foreign.as_bytes()), "{foreign}");
        }
    }
}
