//! External secrets: values stackc does not derive (an SMTP password, an
//! existing server's signing key), kept in the project as age-encrypted
//! files `<secrets dir>/<name>.age`, decrypted at build time with an
//! identity the operator holds — the agenix / sops-nix model.
//!
//! Files are read like the stack's own sources: regular files only, no
//! symlink followed, size-capped. A value is checked for the shape of its
//! kind and normalised (PEM keys re-encoded as PKCS#8, one trailing newline
//! dropped), so an adopted value reaches its service exactly as a derived
//! one would, and a malformed one is a finding, never a crash in the service.

use std::io::{Read, Write};
use std::path::Path;

use super::{Kind, Spec};

/// Largest external secret file read (an RSA 4096 key in armour is ~5 KiB).
const MAX_BYTES: u64 = 1 << 20;

/// Reads a file of the project without following a symlink, refusing
/// anything but a regular file.
pub fn read_project_file(path: &Path) -> std::io::Result<String> {
    let bytes = read_project_bytes(path)?;
    String::from_utf8(bytes).map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text"))
}

pub fn read_project_bytes(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "it is a symbolic link")
            } else {
                e
            }
        })?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let mut bytes = Vec::new();
    file.take(MAX_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "larger than 1 MiB",
        ));
    }
    Ok(bytes)
}

/// The identities `build` decrypts with (an age identity file's keys).
pub struct Identities(Vec<Box<dyn age::Identity + Send + Sync>>);

impl std::fmt::Debug for Identities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identities(<{} redacted>)", self.0.len())
    }
}

impl Identities {
    /// Parses an age identity file (`AGE-SECRET-KEY-1…` lines, `#` comments).
    pub fn parse(text: &str) -> Result<Identities, String> {
        let file = age::IdentityFile::from_buffer(text.as_bytes())
            .map_err(|_| "it is not an age identity file (`AGE-SECRET-KEY-1…` lines)".to_owned())?;
        let ids = file
            .into_identities()
            .map_err(|_| "it holds an identity stackc cannot use".to_owned())?;
        if ids.is_empty() {
            return Err("it holds no identity".into());
        }
        Ok(Identities(ids))
    }
}

/// Whether `bytes` look like an age file (binary or armoured): what `check`
/// can tell without an identity. The header is parsed, not just sniffed.
pub fn is_age(bytes: &[u8]) -> bool {
    age::Decryptor::new_buffered(age::armor::ArmoredReader::new(bytes)).is_ok()
}

/// Why a file did not decrypt, in words for a diagnostic.
pub fn decrypt(bytes: &[u8], ids: &Identities) -> Result<Vec<u8>, String> {
    let decryptor = age::Decryptor::new_buffered(age::armor::ArmoredReader::new(bytes))
        .map_err(|_| "it is not an age-encrypted file".to_owned())?;
    if decryptor.is_scrypt() {
        return Err("it is encrypted with a passphrase; stackc decrypts with identities only".into());
    }
    let mut reader = decryptor
        .decrypt(ids.0.iter().map(|i| i.as_ref() as &dyn age::Identity))
        .map_err(|e| match e {
            age::DecryptError::NoMatchingKeys => "it is not encrypted to the identity given".to_owned(),
            _ => "it is damaged: its header or payload does not verify".to_owned(),
        })?;
    let mut out = Vec::new();
    reader
        .by_ref()
        .take(MAX_BYTES + 1)
        .read_to_end(&mut out)
        .map_err(|_| "it is damaged: its payload does not verify".to_owned())?;
    Ok(out)
}

/// Encrypts `plaintext` to the recipients, ASCII-armoured (reviewable in
/// git, like a PEM file). age draws a fresh file key: the project's
/// encrypted files are inputs, not build output, so they need not be
/// reproducible.
pub fn encrypt(plaintext: &[u8], recipients: &[super::recipients::Recipient]) -> Vec<u8> {
    let encryptor = age::Encryptor::with_recipients(recipients.iter().map(|r| &r.key as &dyn age::Recipient))
        .expect("X25519 recipients can always be combined");
    let mut out = Vec::new();
    let armor =
        age::armor::ArmoredWriter::wrap_output(&mut out, age::armor::Format::AsciiArmor).expect("writing to memory");
    let mut w = encryptor.wrap_output(armor).expect("writing to memory");
    w.write_all(plaintext).expect("writing to memory");
    w.finish().and_then(|a| a.finish()).expect("writing to memory");
    out
}

/// Checks a value against the shape its kind needs and returns it as the
/// service should see it. `Err` says what is wrong without quoting it.
pub fn shape(spec: &Spec, raw: &[u8]) -> Result<String, String> {
    let text = std::str::from_utf8(raw).map_err(|_| "it is not UTF-8 text".to_owned())?;
    // One trailing newline is what `echo` and editors add, not the value.
    let text = text.strip_suffix('\n').unwrap_or(text);
    let text = text.strip_suffix('\r').unwrap_or(text);
    let one_line = |what: &str| -> Result<(), String> {
        if text.is_empty() {
            return Err(format!("it is empty; a {what} is expected"));
        }
        if text.chars().any(char::is_control) {
            return Err(format!(
                "it holds a line break or control character; a {what} is one line"
            ));
        }
        Ok(())
    };
    let want_bytes = spec.bytes.unwrap_or(32) as usize;
    match spec.kind {
        Kind::Password => {
            one_line("password")?;
            Ok(text.to_owned())
        }
        Kind::Base64 => {
            one_line("base64 value")?;
            use base64::Engine as _;
            let n = base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|_| "it is not standard base64 (with padding)".to_owned())?
                .len();
            if n != want_bytes {
                return Err(format!("it decodes to {n} bytes; its consumer takes {want_bytes}"));
            }
            Ok(text.to_owned())
        }
        Kind::Hex => {
            one_line("hex value")?;
            if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err("it is not hexadecimal".into());
            }
            if text.len() % 2 != 0 {
                return Err(format!(
                    "it is {} hex digits, an odd number; its consumer takes {want_bytes} bytes ({} digits)",
                    text.len(),
                    want_bytes * 2
                ));
            }
            if text.len() != want_bytes * 2 {
                return Err(format!(
                    "it is {} bytes of hex; its consumer takes {want_bytes} ({} hex digits)",
                    text.len() / 2,
                    want_bytes * 2
                ));
            }
            Ok(text.to_ascii_lowercase())
        }
        Kind::Rsa => {
            use rsa::pkcs1::DecodeRsaPrivateKey;
            use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey};
            use rsa::traits::PublicKeyParts;
            let key = rsa::RsaPrivateKey::from_pkcs8_pem(text)
                .or_else(|_| rsa::RsaPrivateKey::from_pkcs1_pem(text))
                .map_err(|_| "it is not an RSA private key in PEM (PKCS#8 or PKCS#1)".to_owned())?;
            let bits = key.n().bits();
            if bits < 2048 {
                return Err(format!("it is a {bits}-bit RSA key; at least 2048 bits are needed"));
            }
            key.validate()
                .map_err(|_| "it is not a consistent RSA private key".to_owned())?;
            Ok(key
                .to_pkcs8_pem(rsa::pkcs8::LineEnding::LF)
                .expect("a valid key encodes")
                .to_string())
        }
        Kind::EcP256 => {
            use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey};
            let key = p256::SecretKey::from_pkcs8_pem(text)
                .or_else(|_| p256::SecretKey::from_sec1_pem(text))
                .map_err(|_| "it is not a P-256 private key in PEM (PKCS#8 or SEC1)".to_owned())?;
            Ok(key
                .to_pkcs8_pem(p256::pkcs8::LineEnding::LF)
                .expect("a valid key encodes")
                .to_string())
        }
        Kind::Ed25519 => {
            // Synapse's signing key file: `ed25519 <version> <unpadded base64 seed>`.
            let parts: Vec<&str> = text.split(' ').collect();
            let shape_err = || "it is not an ed25519 signing key line (`ed25519 a_XXXX <base64 seed>`)".to_owned();
            let [alg, version, seed] = parts[..] else {
                return Err(shape_err());
            };
            if alg != "ed25519"
                || version.is_empty()
                || !version.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            {
                return Err(shape_err());
            }
            use base64::Engine as _;
            let n = base64::engine::general_purpose::STANDARD_NO_PAD
                .decode(seed.trim_end_matches('='))
                .map_err(|_| shape_err())?
                .len();
            if n != 32 {
                return Err(format!("its seed is {n} bytes; an ed25519 seed is 32"));
            }
            Ok(format!("{text}\n"))
        }
        Kind::Ulid => {
            const CROCKFORD: &[u8] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
            if text.len() != 26 || !text.bytes().all(|b| CROCKFORD.contains(&b.to_ascii_uppercase())) {
                return Err("it is not a ULID (26 Crockford base32 characters)".into());
            }
            Ok(text.to_ascii_uppercase())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kind: Kind, bytes: Option<u32>) -> Spec {
        Spec {
            name: "x".into(),
            kind,
            bytes,
            length: None,
            charset: None,
            bits: None,
            generation: 1,
            external: true,
        }
    }

    #[test]
    fn shapes_accept_what_the_consumer_reads_and_nothing_else() {
        let ok = |k, b, v: &str| shape(&spec(k, b), v.as_bytes());
        assert_eq!(ok(Kind::Password, None, "pass word\n").unwrap(), "pass word");
        assert!(ok(Kind::Password, None, "two\nlines").is_err());
        assert!(ok(Kind::Password, None, "\n").is_err());
        let b64 = "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE="; // 32 bytes
        assert_eq!(ok(Kind::Base64, None, b64).unwrap(), b64);
        assert!(ok(Kind::Base64, Some(16), b64).unwrap_err().contains("32 bytes"));
        assert!(ok(Kind::Base64, None, "not base64!").is_err());
        assert_eq!(ok(Kind::Hex, Some(2), "ABcd").unwrap(), "abcd");
        assert!(ok(Kind::Hex, Some(2), "abc").is_err());
        assert!(ok(Kind::Hex, Some(3), "abcd").is_err());
        let line = "ed25519 a_AbCd MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY";
        assert_eq!(ok(Kind::Ed25519, None, line).unwrap(), format!("{line}\n"));
        assert!(
            ok(Kind::Ed25519, None, "ed25519 a_AbCd c2hvcnQ")
                .unwrap_err()
                .contains("32")
        );
        assert!(ok(Kind::Ed25519, None, "-----BEGIN PRIVATE KEY-----").is_err());
        assert!(
            ok(
                Kind::Rsa,
                None,
                "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n"
            )
            .is_err()
        );
        assert_eq!(
            ok(Kind::Ulid, None, "01arz3ndektsv4rrffq69g5fav").unwrap(),
            "01ARZ3NDEKTSV4RRFFQ69G5FAV"
        );
        assert!(ok(Kind::Ulid, None, "01ARZ3NDEKTSV4RRFFQ69G5FAU!").is_err());
        assert!(shape(&spec(Kind::Password, None), &[0xff, 0xfe]).is_err());
    }

    #[test]
    fn encrypted_values_decrypt_with_the_identity_only() {
        let id = "AGE-SECRET-KEY-1TARXAR6EH7HY78KGY3S483ZG8RDT5MAYEAY06Z8GTVWWZZ28QCDSLE7MU0";
        let ids = Identities::parse(&format!("# TEST identity\n{id}\n")).unwrap();
        let r =
            super::super::recipients::parse("r", "age1l50vvsrmz2q6tq2vfh30l7e6969hx8lat78uz9dx7k7mxe8ej4fsrcggux\n")
                .unwrap();
        let sealed = encrypt(b"value", &r);
        assert!(is_age(&sealed) && !is_age(b"value"));
        assert_eq!(decrypt(&sealed, &ids).unwrap(), b"value");
        // Another throwaway TEST identity.
        let other =
            Identities::parse("AGE-SECRET-KEY-1JTRJY73X5Y0NQTHDQT749766JGCD8PKJEDFFX0T7253U98A63SFQCA8E09").unwrap();
        assert!(decrypt(&sealed, &other).unwrap_err().contains("not encrypted to"));
        let mut damaged = sealed.clone();
        let n = damaged.len();
        damaged[n / 2] ^= 1;
        assert!(decrypt(&damaged, &ids).is_err());
        assert!(Identities::parse("not an identity").is_err());
    }
}
