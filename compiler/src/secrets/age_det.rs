//! Deterministic age encryption: the age v1 format (c2sp.org/age) for X25519
//! recipients, ASCII-armoured, with every value the format would draw from a
//! random source — the file key, each stanza's ephemeral secret, the payload
//! nonce — derived instead from a secret `seed` and the plaintext.
//!
//! The age crate draws its own randomness, and a bundle must be the same
//! bytes on every build (docs/ARCHITECTURE.md, "Deterministic"), so stackc
//! writes the format itself. What that costs: equal (seed, recipients,
//! plaintext) give equal bytes, so equality of plaintexts under one seed is
//! visible; a different plaintext gives a different file key, ephemeral
//! secrets and nonce, so no key or nonce is ever reused across plaintexts.
//! The seed must be secret (derived from the master key): anyone who knows
//! it and guesses the plaintext can confirm the guess.
//!
//! Decryption is the age crate's (and any age implementation's): this file
//! only encrypts. Tests decrypt its output with the age crate here and with
//! Debian's `age` CLI in tests/sops.rs.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use chacha20poly1305::ChaCha20Poly1305;
use chacha20poly1305::aead::{Aead, KeyInit};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// Plaintext bytes per payload chunk.
const CHUNK: usize = 64 * 1024;
const X25519_INFO: &[u8] = b"age-encryption.org/v1/X25519";
/// Domain of every value this module derives from a seed.
const DOMAIN: &str = "stackc/age-det/v1";

/// HKDF-SHA-256 with 32 bytes out, as the age format uses it.
fn hkdf(ikm: &[u8], salt: &[u8], info: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    Hkdf::<Sha256>::new(Some(salt), ikm)
        .expand(info, &mut out)
        .expect("32 bytes is a valid HKDF-SHA-256 length");
    out
}

/// The X25519 public key of an `age1…` recipient.
pub fn recipient_key(text: &str) -> Option<[u8; 32]> {
    let (hrp, data) = bech32::decode(text).ok()?;
    if !hrp.to_string().eq_ignore_ascii_case("age") {
        return None;
    }
    data.try_into().ok()
}

/// Base64 without padding, wrapped at 64 columns, the last line shorter
/// than 64 (empty if need be): a stanza body.
fn wrapped_body(bytes: &[u8]) -> String {
    let text = STANDARD_NO_PAD.encode(bytes);
    let mut out = String::new();
    let mut rest = text.as_str();
    while rest.len() >= 64 {
        out.push_str(&rest[..64]);
        out.push('\n');
        rest = &rest[64..];
    }
    out.push_str(rest);
    out.push('\n');
    out
}

/// Strict PEM (RFC 7468) with the label `AGE ENCRYPTED FILE`: padded
/// base64 in lines of 64 characters.
fn armor(bytes: &[u8]) -> String {
    let text = STANDARD.encode(bytes);
    let mut out = String::from("-----BEGIN AGE ENCRYPTED FILE-----\n");
    for line in text.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str("-----END AGE ENCRYPTED FILE-----\n");
    out
}

/// Encrypts `plaintext` to every recipient (X25519 public keys), armoured.
/// `seed` must be secret and should be scoped to what is encrypted (stackc
/// derives it from the master key, the file's path and the recipients).
/// Fails only for a recipient key that gives an all-zero shared secret (a
/// low-order point, which no real recipient is).
pub fn encrypt(seed: &[u8; 32], recipients: &[[u8; 32]], plaintext: &[u8]) -> Result<String, String> {
    if recipients.is_empty() {
        return Err("no recipient".into());
    }
    // Everything below depends on the plaintext through this digest: a new
    // plaintext is a new file key, new ephemeral secrets and a new nonce.
    let salt = Sha256::new()
        .chain_update(b"stackc age-det plaintext\0")
        .chain_update(plaintext)
        .finalize();
    let derive = |what: &str| hkdf(seed, &salt, format!("{DOMAIN}/{what}").as_bytes());

    let file_key: [u8; 16] = derive("file-key")[..16].try_into().expect("16 bytes");
    let mut header = String::from("age-encryption.org/v1\n");
    for r in recipients {
        let ephemeral = derive(&format!("ephemeral/{}", crate::load::hex(r)));
        let share = x25519_dalek::x25519(ephemeral, x25519_dalek::X25519_BASEPOINT_BYTES);
        let shared = x25519_dalek::x25519(ephemeral, *r);
        if shared == [0u8; 32] {
            return Err("a recipient key is a low-order point".into());
        }
        let mut wrap_salt = [0u8; 64];
        wrap_salt[..32].copy_from_slice(&share);
        wrap_salt[32..].copy_from_slice(r);
        let wrap_key = hkdf(&shared, &wrap_salt, X25519_INFO);
        let body = ChaCha20Poly1305::new(&wrap_key.into())
            .encrypt(&[0u8; 12].into(), file_key.as_slice())
            .expect("ChaCha20-Poly1305 encrypts 16 bytes");
        header.push_str("-> X25519 ");
        header.push_str(&STANDARD_NO_PAD.encode(share));
        header.push('\n');
        header.push_str(&wrapped_body(&body));
    }
    header.push_str("---");
    let mac_key = hkdf(&file_key, &[], b"header");
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&mac_key).expect("HMAC takes any key length");
    mac.update(header.as_bytes());
    header.push(' ');
    header.push_str(&STANDARD_NO_PAD.encode(mac.finalize().into_bytes()));
    header.push('\n');

    let nonce: [u8; 16] = derive("payload-nonce")[..16].try_into().expect("16 bytes");
    let payload_key = hkdf(&file_key, &nonce, b"payload");
    let aead = ChaCha20Poly1305::new(&payload_key.into());
    let mut out = header.into_bytes();
    out.extend_from_slice(&nonce);
    // STREAM: 64 KiB chunks, an 11-byte big-endian counter and a last-chunk
    // flag as nonce; the final chunk is empty only for an empty plaintext.
    let chunks: Vec<&[u8]> = if plaintext.is_empty() {
        vec![&[]]
    } else {
        plaintext.chunks(CHUNK).collect()
    };
    for (i, chunk) in chunks.iter().enumerate() {
        let mut n = [0u8; 12];
        n[3..11].copy_from_slice(&(i as u64).to_be_bytes());
        n[11] = u8::from(i + 1 == chunks.len());
        out.extend(aead.encrypt(&n.into(), *chunk).expect("a chunk encrypts"));
    }
    Ok(armor(&out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::str::FromStr;

    /// tests/keys/TEST-ONLY-age-identity.txt: a committed test identity.
    const IDENTITY: &str = "AGE-SECRET-KEY-1TARXAR6EH7HY78KGY3S483ZG8RDT5MAYEAY06Z8GTVWWZZ28QCDSLE7MU0";
    const RECIPIENT: &str = "age1l50vvsrmz2q6tq2vfh30l7e6969hx8lat78uz9dx7k7mxe8ej4fsrcggux";

    fn decrypt(armored: &str, identity: &str) -> Vec<u8> {
        let id = age::x25519::Identity::from_str(identity).unwrap();
        let reader = age::armor::ArmoredReader::new(armored.as_bytes());
        let d = age::Decryptor::new(reader).unwrap();
        let mut r = d.decrypt(std::iter::once(&id as &dyn age::Identity)).unwrap();
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        out
    }

    #[test]
    fn the_age_crate_decrypts_it() {
        let r = recipient_key(RECIPIENT).unwrap();
        // Empty, short, exactly one chunk, and more than one chunk.
        for len in [0usize, 1, 32, CHUNK, CHUNK + 1, 2 * CHUNK + 7] {
            let plain: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let armored = encrypt(&[9u8; 32], &[r], &plain).unwrap();
            assert_eq!(decrypt(&armored, IDENTITY), plain, "length {len}");
        }
    }

    #[test]
    fn several_recipients_each_decrypt() {
        let other = age::x25519::Identity::generate();
        let keys = [
            recipient_key(RECIPIENT).unwrap(),
            recipient_key(&other.to_public().to_string()).unwrap(),
        ];
        let armored = encrypt(&[1u8; 32], &keys, b"data key").unwrap();
        assert_eq!(decrypt(&armored, IDENTITY), b"data key");
        use age::secrecy::ExposeSecret;
        assert_eq!(decrypt(&armored, other.to_string().expose_secret()), b"data key");
    }

    #[test]
    fn deterministic_and_separated() {
        let r = [recipient_key(RECIPIENT).unwrap()];
        let a = encrypt(&[2u8; 32], &r, b"one").unwrap();
        assert_eq!(a, encrypt(&[2u8; 32], &r, b"one").unwrap());
        let b = encrypt(&[2u8; 32], &r, b"two").unwrap();
        let c = encrypt(&[3u8; 32], &r, b"one").unwrap();
        // Another plaintext or seed: another ephemeral share, nonce, MAC.
        let lines = |s: &str| s.lines().map(str::to_owned).collect::<Vec<_>>();
        assert_ne!(lines(&a)[1], lines(&b)[1]);
        assert_ne!(lines(&a)[1], lines(&c)[1]);
        assert!(a.starts_with("-----BEGIN AGE ENCRYPTED FILE-----\n"));
        assert!(a.ends_with("-----END AGE ENCRYPTED FILE-----\n"));
        assert!(a.lines().all(|l| l.len() <= 64));
    }

    #[test]
    fn stanza_bodies_wrap_at_64_columns() {
        assert_eq!(wrapped_body(&[0u8; 32]).len(), 44);
        // 48 bytes are 64 characters: a full line, then an empty one.
        assert_eq!(wrapped_body(&[0u8; 48]), format!("{}\n\n", "A".repeat(64)));
    }

    #[test]
    fn recipient_keys() {
        assert!(recipient_key(RECIPIENT).is_some());
        assert!(recipient_key("age1qqqq").is_none());
        assert!(recipient_key(IDENTITY).is_none());
    }
}
