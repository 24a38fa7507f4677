//! `secrets`: the master key, and every secret derived from it.
//!
//! A secret is `HKDF-SHA256(ikm = master key, salt = SALT, info =
//! "stackc/v1/secret/<name>/<generation>")`, encoded as its kind asks. Same
//! key and same stack give the same bytes on any machine; bumping a
//! secret's generation rotates it alone. The scheme's name is recorded in
//! the manifest, so a future scheme cannot be confused with this one.

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine as _;
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

use crate::check::Positions;
use crate::diag::{Code, Diagnostic};
use crate::eval::pointer_escape;
use crate::model::Stack;

/// Name of the derivation scheme, recorded in the manifest.
pub const SCHEME: &str = "stackc-hkdf-sha256-v1";
const SALT: &[u8] = b"stackc/v1";
/// The key under which Nickel marks a secret reference.
pub const MARKER: &str = "$stackc_secret";
pub const KEY_LEN: usize = 32;

pub struct MasterKey([u8; KEY_LEN]);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

/// Where secret values come from.
#[derive(Debug)]
pub enum Keying {
    Master(MasterKey),
    /// Obvious, invalid placeholders: for review and CI without a key.
    Placeholder,
}

impl MasterKey {
    /// Reads a key file: base64 of 32 bytes, not readable by group or others
    /// (checked like ssh checks private keys).
    pub fn load(path: &Path) -> Result<MasterKey, Diagnostic> {
        let shown = path.display();
        let meta = std::fs::metadata(path).map_err(|e| {
            Diagnostic::error(
                Code::KeyUnreadable,
                format!("cannot read the master key `{shown}`: {e}"),
            )
            .with_help("create one with `stackc secrets init KEYFILE`, or pass --placeholder-secrets")
        })?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(Diagnostic::error(
                    Code::KeyPermissions,
                    format!("the master key `{shown}` has mode {mode:04o}: it is readable by other users"),
                )
                .with_help(format!(
                    "run `chmod 600 {shown}`: every secret of the stack is derived from this key"
                )));
            }
        }
        if !meta.is_file() {
            return Err(Diagnostic::error(
                Code::KeyMalformed,
                format!("the master key `{shown}` is not a file"),
            ));
        }
        let text = std::fs::read_to_string(path).map_err(|e| {
            Diagnostic::error(
                Code::KeyUnreadable,
                format!("cannot read the master key `{shown}`: {e}"),
            )
        })?;
        let malformed = || {
            Diagnostic::error(Code::KeyMalformed, format!("`{shown}` is not a stackc master key"))
                .with_help(format!("a key file holds {KEY_LEN} random bytes in base64 on one line"))
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|_| malformed())?;
        let key: [u8; KEY_LEN] = bytes.try_into().map_err(|_| malformed())?;
        Ok(MasterKey(key))
    }

    fn okm(&self, info: &str, len: usize) -> Vec<u8> {
        let hk = Hkdf::<Sha256>::new(Some(SALT), &self.0);
        let mut out = vec![0u8; len];
        hk.expand(info.as_bytes(), &mut out)
            .expect("secret lengths are bounded by the contract check");
        out
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Base64,
    Hex,
    Password,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Charset {
    Alphanumeric,
    Unreserved,
}

impl Charset {
    fn alphabet(self) -> &'static [u8] {
        match self {
            Charset::Alphanumeric => b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
            Charset::Unreserved => b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~",
        }
    }
}

/// A secret reference as Nickel writes it (`stackc.secret.*`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    pub name: String,
    pub kind: Kind,
    pub bytes: Option<u32>,
    pub length: Option<u32>,
    pub charset: Option<Charset>,
    pub generation: u32,
}

/// Longest secret we derive: HKDF-SHA256 can expand 255 blocks; passwords
/// need headroom for rejection sampling.
const MAX_LEN: u32 = 1024;

impl Spec {
    fn info(&self) -> String {
        format!("stackc/v1/secret/{}/{}", self.name, self.generation)
    }

    fn value(&self, keying: &Keying) -> String {
        let key = match keying {
            Keying::Placeholder => return format!("stackc-placeholder-{}-not-a-secret", self.name),
            Keying::Master(k) => k,
        };
        match self.kind {
            Kind::Base64 => base64::engine::general_purpose::STANDARD
                .encode(key.okm(&self.info(), self.bytes.unwrap_or(32) as usize)),
            Kind::Hex => crate::load::hex(&key.okm(&self.info(), self.bytes.unwrap_or(32) as usize)),
            Kind::Password => {
                let alphabet = self.charset.unwrap_or(Charset::Alphanumeric).alphabet();
                let len = self.length.unwrap_or(32) as usize;
                // Rejection sampling keeps every character equally likely.
                let limit = 256 - (256 % alphabet.len());
                let stream = key.okm(&self.info(), len * 4);
                let pw: String = stream
                    .iter()
                    .filter(|b| (**b as usize) < limit)
                    .take(len)
                    .map(|b| alphabet[*b as usize % alphabet.len()] as char)
                    .collect();
                assert_eq!(pw.len(), len, "rejection sampling ran out of bytes");
                pw
            }
        }
    }

    /// "hex, 32 bytes, generation 1": how diagnostics name a definition.
    pub fn describe(&self) -> String {
        let size = match self.kind {
            Kind::Password => format!(
                "{} characters, {}",
                self.length.unwrap_or(32),
                match self.charset.unwrap_or(Charset::Alphanumeric) {
                    Charset::Alphanumeric => "alphanumeric",
                    Charset::Unreserved => "unreserved",
                }
            ),
            _ => format!("{} bytes", self.bytes.unwrap_or(32)),
        };
        let kind = match self.kind {
            Kind::Base64 => "base64",
            Kind::Hex => "hex",
            Kind::Password => "password",
        };
        format!("{kind}, {size}, generation {}", self.generation)
    }

    fn check_len(&self) -> Result<(), String> {
        let n = match self.kind {
            Kind::Password => self.length.unwrap_or(32),
            Kind::Base64 | Kind::Hex => self.bytes.unwrap_or(32),
        };
        if n == 0 || n > MAX_LEN {
            return Err(format!(
                "secret `{}` asks for {n} bytes or characters; the limit is {MAX_LEN}",
                self.name
            ));
        }
        Ok(())
    }
}

/// The secrets a build resolved: every value, for leak tests and redaction.
#[derive(Debug, Default)]
pub struct Resolved {
    pub values: BTreeMap<String, String>,
}

/// Replaces every secret reference in every file with its value, marks the
/// files that hold one as secret, and checks that a name means one secret.
pub fn resolve(stack: &mut Stack, keying: &Keying, pos: &Positions) -> Result<Resolved, Vec<Diagnostic>> {
    let mut specs: BTreeMap<String, (Spec, String)> = BTreeMap::new();
    let mut diags = Vec::new();
    let mut resolved = Resolved::default();
    for (mname, m) in stack.machines.iter_mut() {
        for (path, file) in m.files.iter_mut() {
            let base = format!(
                "/machines/{}/files/{}/content",
                pointer_escape(mname),
                pointer_escape(path)
            );
            let mut found = false;
            walk(&mut file.content, &mut base.clone(), &mut |value, ptr| {
                let spec = match Spec::deserialize(&value[MARKER]) {
                    Ok(s) => s,
                    Err(e) => {
                        diags.push(
                            Diagnostic::error(Code::NotAStack, format!("malformed secret reference: {e}"))
                                .with_label(pos.at(ptr), "this secret")
                                .with_help("build secret references with `stackc.secret.*`"),
                        );
                        return;
                    }
                };
                if let Err(msg) = spec.check_len() {
                    diags.push(Diagnostic::error(Code::Contract, msg).with_label(pos.at(ptr), "this secret"));
                    return;
                }
                match specs.get(&spec.name) {
                    Some((first, first_ptr)) if *first != spec => {
                        diags.push(
                            Diagnostic::error(
                                Code::SecretConflict,
                                format!(
                                    "secret `{}` is defined twice, differently: {} and {}",
                                    spec.name,
                                    first.describe(),
                                    spec.describe()
                                ),
                            )
                            .with_label(pos.at(ptr), spec.describe())
                            .with_secondary(pos.at(first_ptr), first.describe())
                            .with_help("use one definition (kind, size, generation) per name, or give the secrets different names"),
                        );
                        return;
                    }
                    Some(_) => {}
                    None => {
                        specs.insert(spec.name.clone(), (spec.clone(), ptr.to_owned()));
                    }
                }
                let v = spec.value(keying);
                resolved.values.insert(spec.name.clone(), v.clone());
                *value = serde_json::Value::String(v);
                found = true;
            });
            file.secret |= found;
        }
    }
    if diags.is_empty() { Ok(resolved) } else { Err(diags) }
}

fn walk(v: &mut serde_json::Value, ptr: &mut String, f: &mut dyn FnMut(&mut serde_json::Value, &str)) {
    match v {
        serde_json::Value::Object(map) if map.len() == 1 && map.contains_key(MARKER) => f(v, ptr),
        serde_json::Value::Object(map) => {
            for (k, child) in map.iter_mut() {
                let len = ptr.len();
                ptr.push('/');
                ptr.push_str(&pointer_escape(k));
                walk(child, ptr, f);
                ptr.truncate(len);
            }
        }
        serde_json::Value::Array(items) => {
            for (i, child) in items.iter_mut().enumerate() {
                let len = ptr.len();
                ptr.push_str(&format!("/{i}"));
                walk(child, ptr, f);
                ptr.truncate(len);
            }
        }
        _ => {}
    }
}

/// Digest of a secret file for the manifest: keyed (HMAC with a key derived
/// from the master key), so the world-readable manifest is no brute-force
/// oracle for low-entropy secrets. Placeholders are not secret: plain hash.
pub fn secret_file_digest(keying: &Keying, bytes: &[u8]) -> (String, String) {
    match keying {
        Keying::Master(k) => {
            let mac_key = k.okm("stackc/v1/manifest-digest", 32);
            let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&mac_key).expect("HMAC takes any key length");
            mac.update(bytes);
            ("hmac_sha256".into(), crate::load::hex(&mac.finalize().into_bytes()))
        }
        Keying::Placeholder => {
            use sha2::Digest;
            ("sha256".into(), crate::load::hex(&Sha256::digest(bytes)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Keying {
        Keying::Master(MasterKey([7u8; 32]))
    }

    fn spec(kind: Kind) -> Spec {
        Spec {
            name: "jwt".into(),
            kind,
            bytes: Some(32),
            length: Some(40),
            charset: None,
            generation: 1,
        }
    }

    #[test]
    fn derivation_is_deterministic_and_separated() {
        let a = spec(Kind::Base64).value(&key());
        assert_eq!(a, spec(Kind::Base64).value(&key()));
        let mut other = spec(Kind::Base64);
        other.name = "other".into();
        assert_ne!(a, other.value(&key()));
        let mut rotated = spec(Kind::Base64);
        rotated.generation = 2;
        assert_ne!(a, rotated.value(&key()));
        assert_eq!(base64::engine::general_purpose::STANDARD.decode(&a).unwrap().len(), 32);
    }

    #[test]
    fn encodings() {
        let hex = spec(Kind::Hex).value(&key());
        assert_eq!(hex.len(), 64);
        assert!(hex.bytes().all(|b| b.is_ascii_hexdigit()));
        let pw = spec(Kind::Password).value(&key());
        assert_eq!(pw.len(), 40);
        assert!(pw.bytes().all(|b| b.is_ascii_alphanumeric()));
    }

    #[test]
    fn known_answer() {
        // Pins the scheme: changing the derivation changes every deployed
        // secret, which must be a deliberate, versioned decision.
        assert_eq!(spec(Kind::Hex).value(&key()), KNOWN_HEX);
    }
    // Computed independently with Python's hmac module (RFC 5869 by hand).
    const KNOWN_HEX: &str = "530320e49d0050e81d2ec67a8330d76ba80ac75e1b96556c2bfb406f7a198168";
}
