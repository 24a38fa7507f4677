//! Git-safe Kubernetes secrets: a Kubernetes machine with
//! `kubernetes.secret_manifests = 'sops` gets every Secret manifest written
//! as a SOPS file (YAML store, age recipients) and every other secret file
//! as an armoured age file `<path>.age`, both to the project's recipients
//! (`<secrets dir>/recipients.txt`). Nothing of such a machine's folder is
//! then secret: it can be committed and applied by a GitOps tool (Flux
//! decrypts SOPS natively; `sops -d … | kubectl apply -f -` by hand).
//!
//! The SOPS format as written here (getsops/sops 3.x, YAML store):
//!
//! - every value under a key matching `encrypted_regex`
//!   (`^(data|stringData)$`, the Flux convention) is replaced by
//!   `ENC[AES256_GCM,data:…,iv:…,tag:…,type:str]`: AES-256-GCM with a
//!   32-byte IV, the additional data being the value's path, map keys
//!   joined by `:` with a final `:` (list indices are not part of it);
//!   empty strings stay empty; other values stay as they are;
//! - `sops.mac` is the upper-case hex SHA-512 of every value of the
//!   document in order (encrypted or not, nulls and comments skipped),
//!   itself encrypted with the data key, the additional data being
//!   `lastmodified`;
//! - `sops.age` holds, per recipient, the 32-byte data key age-encrypted
//!   (armoured) to that recipient.
//!
//! SOPS draws the data key and IVs at random; here they are derived from
//! the master key (the stack's derivation scope, the file's bundle path and
//! the recipients list) and, for an IV, from the value and its path — a
//! deterministic, SIV-like scheme: the same inputs give the same bytes, a
//! different value never reuses an IV under a data key. The data key does
//! not depend on the values, so changing one value changes that value's
//! ciphertext and the MAC, not the rest of the file. `lastmodified` is fixed
//! (the Unix epoch): no clock reaches a bundle, and SOPS only uses it as the
//! MAC's additional data.

use aes_gcm::AesGcm;
use std::collections::BTreeMap;

use aes_gcm::aead::consts::U32;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::aes::Aes256;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::{Digest, Sha256, Sha512};

use super::{Externals, Keying, age_det, recipients};
use crate::check::Positions;
use crate::diag::{Code, Diagnostic};
use crate::eval::pointer_escape;
use crate::model::{Format, Stack};
use crate::render::{MODE_FILE, Rendered, RenderedFile};

/// `kubernetes.secret_manifests` value that turns this on.
pub const SOPS: &str = "sops";
/// Which keys' values are encrypted: those of a Secret (Flux's advice).
pub const ENCRYPTED_REGEX: &str = "^(data|stringData)$";
/// Fixed: see the module's comment.
pub const LASTMODIFIED: &str = "1970-01-01T00:00:00Z";
/// The SOPS release whose file format this writes (age keys, regexes, the
/// MAC over all values).
pub const VERSION: &str = "3.9.0";

type Aes256Gcm32 = AesGcm<Aes256, U32>;

fn hkdf32(salt: &[u8], ikm: &[u8], info: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    hkdf::Hkdf::<Sha256>::new(Some(salt), ikm)
        .expand(info.as_bytes(), &mut out)
        .expect("32 bytes is a valid HKDF-SHA-256 length");
    out
}

/// The secret every derived value of one encrypted file starts from:
/// `what` (`sops` or `age-file`), the file's bundle path and the digest of
/// the recipients list, under the stack's derivation (scheme and scope).
/// Placeholder builds use a fixed, public key: their values are not secret.
fn file_seed(keying: &Keying, what: &str, path: &str, recipients_digest: &str) -> [u8; 32] {
    let tail = format!("{what}/{}:{path}/recipients/{recipients_digest}", path.len());
    match keying {
        Keying::Master(k) => k.seed(&format!("{}/{tail}", k.derivation.prefix())),
        Keying::Placeholder => hkdf32(b"stackc/placeholder", &[0u8; 32], &format!("stackc/placeholder/{tail}")),
    }
}

/// The project's recipients, as SOPS and age need them.
pub struct Sealing {
    texts: Vec<String>,
    keys: Vec<[u8; 32]>,
    digest: String,
}

impl Sealing {
    pub fn new(list: &[recipients::Recipient]) -> Result<Sealing, String> {
        let texts: Vec<String> = list.iter().map(|r| r.text.clone()).collect();
        let keys = texts
            .iter()
            .map(|t| age_det::recipient_key(t).ok_or_else(|| format!("`{t}` is not an X25519 recipient")))
            .collect::<Result<Vec<_>, _>>()?;
        if keys.is_empty() {
            return Err("no recipient".into());
        }
        let digest = crate::load::hex(&Sha256::digest(texts.join("\n").as_bytes()));
        Ok(Sealing { texts, keys, digest })
    }
}

/// What encrypts the values of one file.
struct Cipher {
    data_key: [u8; 32],
    iv_key: [u8; 32],
}

impl Cipher {
    /// `ENC[…]` of `plain` at additional data `ad`. The IV is a PRF of the
    /// value, its type and its path: equal values at equal paths give equal
    /// text, and no two different ones share an IV.
    fn enc(&self, domain: &str, plain: &str, kind: &str, ad: &str) -> String {
        let mut prf = <Hmac<Sha256> as Mac>::new_from_slice(&self.iv_key).expect("HMAC takes any key length");
        for part in [domain, ad, kind, plain] {
            prf.update(&(part.len() as u64).to_be_bytes());
            prf.update(part.as_bytes());
        }
        let iv = prf.finalize().into_bytes();
        let sealed = Aes256Gcm32::new(&self.data_key.into())
            .encrypt(
                &iv,
                Payload {
                    msg: plain.as_bytes(),
                    aad: ad.as_bytes(),
                },
            )
            .expect("AES-GCM encrypts any value of a manifest");
        let (data, tag) = sealed.split_at(sealed.len() - 16);
        format!(
            "ENC[AES256_GCM,data:{},iv:{},tag:{},type:{kind}]",
            STANDARD.encode(data),
            STANDARD.encode(iv),
            STANDARD.encode(tag)
        )
    }
}

/// Encrypts the values under `data`/`stringData` in place and feeds every
/// value, in document order, to the MAC, as SOPS walks a tree.
fn walk(
    v: &mut Value,
    path: &mut Vec<String>,
    encrypted: bool,
    re: &regex::Regex,
    c: &Cipher,
    mac: &mut Sha512,
) -> Result<(), String> {
    let ad = |path: &[String]| format!("{}:", path.join(":"));
    let (text, kind) = match v {
        Value::Object(map) => {
            for (k, child) in map.iter_mut() {
                path.push(k.clone());
                let r = walk(child, path, encrypted || re.is_match(k), re, c, mac);
                path.pop();
                r?;
            }
            return Ok(());
        }
        Value::Array(items) => {
            for child in items {
                walk(child, path, encrypted, re, c, mac)?;
            }
            return Ok(());
        }
        Value::Null => return Ok(()),
        Value::String(s) => (s.clone(), "str"),
        // As SOPS writes them (Python's spelling, kept by the Go version).
        Value::Bool(b) => ((if *b { "True" } else { "False" }).to_owned(), "bool"),
        Value::Number(n) if n.is_i64() => (n.to_string(), "int"),
        Value::Number(_) => {
            return Err(format!(
                "`{}` is a number SOPS would not read back as it is: write it as a string",
                ad(path)
            ));
        }
    };
    mac.update(text.as_bytes());
    if encrypted && !text.is_empty() {
        *v = Value::String(c.enc("value", &text, kind, &ad(path)));
    }
    Ok(())
}

/// A Secret manifest as a SOPS file: its rendered bytes in, the SOPS YAML out.
pub fn sops_manifest(rendered: &[u8], seed: &[u8; 32], r: &Sealing) -> Result<String, String> {
    let mut doc: Value = yaml_serde::from_slice(rendered).map_err(|_| "the manifest cannot be read back".to_owned())?;
    let Some(obj) = doc.as_object() else {
        return Err("the manifest is not a mapping".into());
    };
    if obj.get("kind").and_then(Value::as_str) != Some("Secret") {
        return Err(format!(
            "it holds a secret value but is a {}, not a Secret: with SOPS only a Secret's `data`/`stringData` are encrypted",
            obj.get("kind")
                .and_then(Value::as_str)
                .unwrap_or("manifest without a kind")
        ));
    }
    if obj.contains_key("sops") {
        return Err("it already has a `sops` key".into());
    }
    let data_key = hkdf32(b"stackc/sops", seed, "data-key");
    let cipher = Cipher {
        data_key,
        iv_key: hkdf32(b"stackc/sops", seed, "iv"),
    };
    let re = regex::Regex::new(ENCRYPTED_REGEX).expect("a valid regex");
    let mut mac = Sha512::new();
    walk(&mut doc, &mut Vec::new(), false, &re, &cipher, &mut mac)?;
    let mac_hex: String = mac.finalize().iter().map(|b| format!("{b:02X}")).collect();
    let age_seed = hkdf32(b"stackc/sops", seed, "age");
    let mut age = Vec::new();
    for (text, key) in r.texts.iter().zip(&r.keys) {
        // One age file per recipient, as SOPS writes them.
        let enc = age_det::encrypt(&age_seed, std::slice::from_ref(key), &data_key)?;
        age.push(serde_json::json!({ "recipient": text, "enc": enc }));
    }
    let meta = serde_json::json!({
        "sops": {
            "age": age,
            "lastmodified": LASTMODIFIED,
            "mac": cipher.enc("mac", &mac_hex, "str", LASTMODIFIED),
            "encrypted_regex": ENCRYPTED_REGEX,
            "version": VERSION,
        }
    });
    let body = crate::render::yaml(&doc).map_err(|_| "the manifest cannot be written back".to_owned())?;
    let meta = yaml_serde::to_string(&meta).map_err(|_| "the SOPS metadata cannot be written".to_owned())?;
    // Quoted, as SOPS writes it: a YAML 1.1 reader would see a timestamp.
    let meta = meta.replacen(
        &format!("lastmodified: {LASTMODIFIED}\n"),
        &format!("lastmodified: '{LASTMODIFIED}'\n"),
        1,
    );
    Ok(format!("{body}{meta}"))
}

/// Encrypts the secret files of every machine in SOPS mode, after every
/// check has read them in plain text: Secret manifests become SOPS files,
/// other secret files `<path>.age`; all become plain (0644) files. Returns
/// the recipients list it read (project path → bytes), a build input.
pub fn seal(
    stack: &Stack,
    files: &mut Rendered,
    keying: &Keying,
    ext: &Externals,
    pos: &Positions,
) -> Result<BTreeMap<String, Vec<u8>>, Vec<Diagnostic>> {
    let option = |m: &str| pos.at(&format!("/machines/{}/secret_manifests", pointer_escape(m)));
    let sealed: Vec<&String> = stack
        .machines
        .iter()
        .filter(|(_, m)| m.secret_manifests.as_deref() == Some(SOPS))
        .map(|(name, _)| name)
        .collect();
    if sealed.is_empty() {
        return Ok(BTreeMap::new());
    }
    // Where each machine asked for SOPS; one label per place (machines
    // often share one `kubernetes` record).
    let mut places: Vec<(crate::diag::Span, Vec<&str>)> = Vec::new();
    for m in &sealed {
        let Some(span) = option(m) else { continue };
        match places
            .iter_mut()
            .find(|(s, _)| s.file.name == span.file.name && s.range == span.range)
        {
            Some((_, names)) => names.push(m),
            None => places.push((span, vec![m])),
        }
    }
    let with_options = |mut d: Diagnostic| {
        for (span, names) in &places {
            let names: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
            d = d.with_label(
                Some(span.clone()),
                format!(
                    "SOPS mode: {} encrypt{} their secrets to the project's recipients",
                    names.join(", "),
                    if names.len() == 1 { "s" } else { "" }
                ),
            );
        }
        d
    };
    let list = recipients::load(&ext.dir, &ext.shown_dir).map_err(|d| vec![with_options(d)])?;
    let mut inputs = BTreeMap::new();
    if let Ok(bytes) = super::external::read_project_bytes(&ext.dir.join(recipients::FILE)) {
        let shown = format!("{}/{}", ext.shown_dir.trim_end_matches('/'), recipients::FILE);
        inputs.insert(shown, bytes);
    }
    let r = Sealing::new(&list).map_err(|why| {
        vec![with_options(Diagnostic::error(
            Code::RecipientsMalformed,
            format!("the recipients list cannot be used: {why}"),
        ))]
    })?;
    let mut diags = Vec::new();
    for &mname in &sealed {
        let m = &stack.machines[mname];
        let prefix = format!("{mname}/");
        let secret: Vec<String> = files
            .iter()
            .filter(|(p, f)| f.secret && p.starts_with(&prefix))
            .map(|(p, _)| p.clone())
            .collect();
        for path in secret {
            let rel = &path[prefix.len()..];
            let at = || pos.at(&crate::eval::file_ptr(mname, rel));
            let file = files.remove(&path).expect("listed above");
            let manifest = m.files.get(rel).is_some_and(|f| f.format == Format::Kubernetes);
            let (out_path, bytes) = if manifest {
                let seed = file_seed(keying, "sops", &path, &r.digest);
                match sops_manifest(&file.bytes, &seed, &r) {
                    Ok(text) => (path.clone(), text.into_bytes()),
                    Err(why) => {
                        diags.push(
                            Diagnostic::error(Code::BadContent, format!("`{path}` cannot be written with SOPS: {why}"))
                                .with_label(at(), "this manifest")
                                .with_help("pass secret values to pods through a Secret (a secret file mount or `secret_environment`)"),
                        );
                        continue;
                    }
                }
            } else {
                let seed = file_seed(keying, "age-file", &path, &r.digest);
                match age_det::encrypt(&seed, &r.keys, &file.bytes) {
                    Ok(text) => (format!("{path}.age"), text.into_bytes()),
                    Err(why) => {
                        diags.push(with_options(Diagnostic::error(
                            Code::RecipientsMalformed,
                            format!("`{path}` cannot be encrypted: {why}"),
                        )));
                        continue;
                    }
                }
            };
            if files.contains_key(&out_path) {
                diags.push(
                    Diagnostic::error(
                        Code::UnsafePath,
                        format!("`{out_path}` is both a file of the stack and the encrypted `{path}`"),
                    )
                    .with_label(at(), "this file")
                    .with_help("rename one of the two files"),
                );
                continue;
            }
            files.insert(
                out_path,
                RenderedFile {
                    bytes,
                    mode: MODE_FILE,
                    secret: false,
                    owner: file.owner,
                },
            );
        }
    }
    if diags.is_empty() { Ok(inputs) } else { Err(diags) }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RECIPIENT: &str = "age1l50vvsrmz2q6tq2vfh30l7e6969hx8lat78uz9dx7k7mxe8ej4fsrcggux";

    fn sealing() -> Sealing {
        let list = recipients::parse("r", &format!("{RECIPIENT}\n")).unwrap();
        Sealing::new(&list).unwrap()
    }

    const SECRET: &str = "# Generated by stackc. Do not edit: change the stack and rebuild.\napiVersion: v1\nkind: Secret\nmetadata:\n  name: db\n  namespace: matrix\nstringData:\n  PASSWORD: hunter2hunter2\n  EMPTY: ''\ntype: Opaque\n";

    /// Reads a SOPS file back as SOPS does: data key from the age stanza,
    /// each value by its path, the MAC over all values in order.
    fn open(text: &str) -> Value {
        use std::io::Read;
        use std::str::FromStr;
        let mut doc: Value = yaml_serde::from_str(text).unwrap();
        let meta = doc.as_object_mut().unwrap().remove("sops").unwrap();
        let id = age::x25519::Identity::from_str(
            "AGE-SECRET-KEY-1TARXAR6EH7HY78KGY3S483ZG8RDT5MAYEAY06Z8GTVWWZZ28QCDSLE7MU0",
        )
        .unwrap();
        let enc = meta["age"][0]["enc"].as_str().unwrap();
        let d = age::Decryptor::new(age::armor::ArmoredReader::new(enc.as_bytes())).unwrap();
        let mut key = Vec::new();
        d.decrypt(std::iter::once(&id as &dyn age::Identity))
            .unwrap()
            .read_to_end(&mut key)
            .unwrap();
        let open_one = |s: &str, ad: &str| -> String {
            let inner = s.strip_prefix("ENC[AES256_GCM,").unwrap().strip_suffix("]").unwrap();
            let f: BTreeMap<&str, &str> = inner.split(',').map(|p| p.split_once(':').unwrap()).collect();
            let mut ct = STANDARD.decode(f["data"]).unwrap();
            ct.extend(STANDARD.decode(f["tag"]).unwrap());
            let iv = STANDARD.decode(f["iv"]).unwrap();
            let plain = Aes256Gcm32::new_from_slice(&key)
                .unwrap()
                .decrypt(
                    aes_gcm::Nonce::<U32>::from_slice(&iv),
                    Payload {
                        msg: &ct,
                        aad: ad.as_bytes(),
                    },
                )
                .unwrap();
            String::from_utf8(plain).unwrap()
        };
        let mut mac = Sha512::new();
        fn visit(v: &mut Value, path: &mut Vec<String>, f: &mut dyn FnMut(&mut Value, &str)) {
            match v {
                Value::Object(m) => {
                    for (k, c) in m.iter_mut() {
                        path.push(k.clone());
                        visit(c, path, f);
                        path.pop();
                    }
                }
                Value::Array(a) => a.iter_mut().for_each(|c| visit(c, path, f)),
                Value::Null => {}
                _ => f(v, &format!("{}:", path.join(":"))),
            }
        }
        visit(&mut doc, &mut Vec::new(), &mut |v, ad| {
            if let Some(s) = v.as_str()
                && s.starts_with("ENC[")
            {
                *v = Value::String(open_one(s, ad));
            }
            mac.update(v.as_str().unwrap().as_bytes());
        });
        let want: String = mac.finalize().iter().map(|b| format!("{b:02X}")).collect();
        assert_eq!(open_one(meta["mac"].as_str().unwrap(), LASTMODIFIED), want, "MAC");
        doc
    }

    #[test]
    fn a_secret_round_trips_and_its_mac_verifies() {
        let sealed = sops_manifest(SECRET.as_bytes(), &[4u8; 32], &sealing()).unwrap();
        assert!(!sealed.contains("hunter2"));
        assert!(sealed.contains("EMPTY: ''"), "empty values stay empty:\n{sealed}");
        assert!(sealed.contains("encrypted_regex: ^(data|stringData)$"), "{sealed}");
        assert!(sealed.contains("lastmodified: '1970-01-01T00:00:00Z'\n"), "{sealed}");
        let plain: Value = yaml_serde::from_str(SECRET).unwrap();
        assert_eq!(open(&sealed), plain);
        // Metadata stays readable.
        assert!(sealed.contains("  name: db\n"));
    }

    #[test]
    fn deterministic_and_local() {
        let r = sealing();
        let a = sops_manifest(SECRET.as_bytes(), &[4u8; 32], &r).unwrap();
        assert_eq!(a, sops_manifest(SECRET.as_bytes(), &[4u8; 32], &r).unwrap());
        // Another value: that value's line and the MAC change, the data
        // key's stanza does not.
        let b = sops_manifest(SECRET.replace("hunter2hunter2", "other").as_bytes(), &[4u8; 32], &r).unwrap();
        let changed: Vec<(&str, &str)> = a.lines().zip(b.lines()).filter(|(x, y)| x != y).collect();
        assert_eq!(changed.len(), 2, "{changed:?}");
        assert!(changed[0].0.contains("PASSWORD: ENC[") && changed[1].0.contains("mac: ENC["));
        // Another seed (another path, key or recipients list): all new.
        let c = sops_manifest(SECRET.as_bytes(), &[5u8; 32], &r).unwrap();
        assert_ne!(
            a.lines().find(|l| l.contains("PASSWORD")),
            c.lines().find(|l| l.contains("PASSWORD"))
        );
    }

    #[test]
    fn only_secrets_are_sealed() {
        let cm = SECRET.replace("kind: Secret", "kind: ConfigMap");
        let err = sops_manifest(cm.as_bytes(), &[4u8; 32], &sealing()).unwrap_err();
        assert!(err.contains("ConfigMap"), "{err}");
    }
}
