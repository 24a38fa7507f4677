//! Turning derived bytes into each kind of secret, and secrets into digests.
//!
//! Everything here is a pure function of its inputs. Kinds that need an RNG
//! (RSA, EC) get a ChaCha20 RNG seeded with 32 derived bytes: the same seed
//! gives the same key, for the pinned crate versions.

use base64::Engine as _;
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::SeedableRng;

/// RFC 4648 base64, standard alphabet, with padding.
pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Standard alphabet without padding (Synapse keys, PHC strings).
pub fn b64_unpadded(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD_NO_PAD.encode(bytes)
}

/// Passlib's "adapted base64" used in Authelia's pbkdf2 digests: standard
/// alphabet with `+` as `.`, no padding.
pub fn ab64(bytes: &[u8]) -> String {
    b64_unpadded(bytes).replace('+', ".")
}

/// `len` characters from `alphabet`, by rejection sampling over `stream`
/// (so every character is equally likely). `None` if the stream ran out.
pub fn from_alphabet(stream: &[u8], alphabet: &[u8], len: usize) -> Option<String> {
    let limit = 256 - (256 % alphabet.len());
    let s: String = stream
        .iter()
        .filter(|b| (**b as usize) < limit)
        .take(len)
        .map(|b| alphabet[*b as usize % alphabet.len()] as char)
        .collect();
    (s.len() == len).then_some(s)
}

/// RSA private key, PKCS#8 PEM. Generation from a seeded RNG is only
/// reproducible for one `rsa` version: the crate is pinned with `=` in
/// compiler/Cargo.toml, and a known-answer test catches any drift.
pub fn rsa_pem(seed: [u8; 32], bits: usize) -> String {
    use rsa::pkcs8::{EncodePrivateKey, LineEnding};
    let mut rng = ChaCha20Rng::from_seed(seed);
    let key = rsa::RsaPrivateKey::new(&mut rng, bits).expect("RSA generation with a valid size cannot fail");
    key.to_pkcs8_pem(LineEnding::LF)
        .expect("encoding an RSA key cannot fail")
        .to_string()
}

/// EC P-256 private key, PKCS#8 PEM.
pub fn p256_pem(seed: [u8; 32]) -> String {
    use p256::pkcs8::{EncodePrivateKey, LineEnding};
    let mut rng = ChaCha20Rng::from_seed(seed);
    let key = p256::SecretKey::random(&mut rng);
    key.to_pkcs8_pem(LineEnding::LF)
        .expect("encoding an EC key cannot fail")
        .to_string()
}

/// Synapse's signing key line: `ed25519 <version> <unpadded base64 seed>`.
/// An ed25519 private key is its 32-byte seed, so no RNG is involved.
pub fn ed25519_key_line(seed: [u8; 32], version: &str) -> String {
    format!("ed25519 {version} {}\n", b64_unpadded(&seed))
}

/// A ULID from 16 bytes: 128 bits in Crockford base32 (26 characters, the
/// first at most `7`). MAS validates ids with this alphabet.
pub fn ulid(bytes: [u8; 16]) -> String {
    const CROCKFORD: &[u8] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let n = u128::from_be_bytes(bytes);
    (0..26)
        .rev()
        .map(|i| CROCKFORD[((n >> (i * 5)) & 31) as usize] as char)
        .collect()
}

/// Authelia's `$pbkdf2-sha512$<iter>$<ab64 salt>$<ab64 dk>` (64-byte key).
pub fn pbkdf2_sha512(secret: &[u8], salt: &[u8], iterations: u32) -> String {
    let mut dk = [0u8; 64];
    pbkdf2::pbkdf2_hmac::<sha2::Sha512>(secret, salt, iterations, &mut dk);
    format!("$pbkdf2-sha512${iterations}${}${}", ab64(salt), ab64(&dk))
}

/// Whether an Authelia `$pbkdf2-sha512$…` digest verifies `secret`;
/// `None` when the string is not such a digest.
pub fn pbkdf2_sha512_verifies(digest: &str, secret: &[u8]) -> Option<bool> {
    let rest = digest.strip_prefix("$pbkdf2-sha512$")?;
    let mut parts = rest.split('$');
    // Bounded as for digests stackc writes: a typed digest must not hang a check.
    let iterations: u32 = parts.next()?.parse().ok().filter(|i| (1..=10_000_000).contains(i))?;
    let unab64 = |s: &str| {
        base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(s.replace('.', "+"))
            .ok()
    };
    let salt = unab64(parts.next()?)?;
    let want = unab64(parts.next()?)?;
    if parts.next().is_some() || want.is_empty() {
        return None;
    }
    let mut got = vec![0u8; want.len()];
    pbkdf2::pbkdf2_hmac::<sha2::Sha512>(secret, &salt, iterations, &mut got);
    Some(got == want)
}

/// PHC argon2id string: `$argon2id$v=19$m=…,t=…,p=…$<salt>$<hash>` (32-byte
/// hash, unpadded base64), as Authelia writes and reads it.
pub fn argon2id(secret: &[u8], salt: &[u8], m_kib: u32, t: u32, p: u32) -> Result<String, String> {
    use argon2::{Algorithm, Argon2, Params, Version};
    let params = Params::new(m_kib, t, p, Some(32)).map_err(|e| format!("invalid argon2 parameters: {e}"))?;
    let mut out = [0u8; 32];
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_into(secret, salt, &mut out)
        .map_err(|e| format!("argon2 failed: {e}"))?;
    Ok(format!(
        "$argon2id$v=19$m={m_kib},t={t},p={p}${}${}",
        b64_unpadded(salt),
        b64_unpadded(&out)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authelia_documented_pbkdf2_digest() {
        // "The digest of 'insecure_secret'" in Authelia's OIDC client docs.
        let salt = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode("c8p78n7pUMln0jzvd4aK4Q")
            .unwrap();
        assert_eq!(
            pbkdf2_sha512(b"insecure_secret", &salt, 310000),
            "$pbkdf2-sha512$310000$c8p78n7pUMln0jzvd4aK4Q$JNRBzwAo0ek5qKn50cFzzvE9RXV88h1wJn5KGiHrD0YKtZaR/nCb2CJPOsKaPK0hjf.9yHxzQGZziziccp6Yng"
        );
    }

    #[test]
    fn pbkdf2_digest_verifies_its_secret_only() {
        let d = pbkdf2_sha512(b"insecure_secret", b"0123456789abcdef", 1000);
        assert_eq!(pbkdf2_sha512_verifies(&d, b"insecure_secret"), Some(true));
        assert_eq!(pbkdf2_sha512_verifies(&d, b"insecure_secreT"), Some(false));
        assert_eq!(pbkdf2_sha512_verifies("$plaintext$x", b"x"), None);
        assert_eq!(
            pbkdf2_sha512_verifies("$pbkdf2-sha512$placeholder$n$not-a-digest", b"x"),
            None
        );
    }

    #[test]
    fn argon2id_rfc9106_shape() {
        let s = argon2id(b"password", b"somesaltsomesalt", 64, 1, 1).unwrap();
        assert!(
            s.starts_with("$argon2id$v=19$m=64,t=1,p=1$c29tZXNhbHRzb21lc2FsdA$"),
            "{s}"
        );
    }

    #[test]
    fn ulids_are_crockford() {
        assert_eq!(ulid([0; 16]), "00000000000000000000000000");
        assert_eq!(ulid([0xff; 16]), "7ZZZZZZZZZZZZZZZZZZZZZZZZZ");
    }

    #[test]
    fn rsa_and_ec_are_reproducible_pkcs8() {
        let a = rsa_pem([1; 32], 2048);
        assert_eq!(a, rsa_pem([1; 32], 2048));
        assert!(a.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        assert_ne!(a, rsa_pem([2; 32], 2048));
        let e = p256_pem([1; 32]);
        assert_eq!(e, p256_pem([1; 32]));
        assert!(e.starts_with("-----BEGIN PRIVATE KEY-----\n"));
    }
}
