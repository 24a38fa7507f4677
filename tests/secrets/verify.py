"""Checks the secrets of a built tests/secrets bundle with the readers the
consuming programs use. Usage: verify.py MACHINE_DIR. Prints one line per
check; exits 1 on the first failure."""
import base64, hashlib, re, subprocess, sys

import argon2
import signedjson.key

d = sys.argv[1]
unit = open(f"{d}/systemd/app.service").read()
env = dict(re.findall(r'^Environment="([A-Z0-9_]+)=(.*)"$', unit, re.M))
def env_value(v):
    """systemd EnvironmentFile= quoting: bare, or double-quoted with \\-escapes."""
    if v.startswith('"') and v.endswith('"'):
        return re.sub(r"\\(.)", r"\1", v[1:-1])
    return v


secret_env = {
    k: env_value(v)
    for k, v in (l.split("=", 1) for l in open(f"{d}/secrets/app.env").read().splitlines() if "=" in l and not l.startswith("#"))
}
plain = open(f"{d}/secrets/oidc-client").read()


def ok(what):
    print("ok", what)


for name, bits in (("rsa-2048", 2048), ("rsa-3072", 3072), ("rsa-4096", 4096)):
    path = f"{d}/secrets/{name}"
    assert open(path).read().startswith("-----BEGIN PRIVATE KEY-----\n"), "PKCS#8 PEM"
    subprocess.run(["openssl", "pkey", "-in", path, "-check", "-noout"], check=True, capture_output=True)
    text = subprocess.run(["openssl", "pkey", "-in", path, "-text", "-noout"], check=True, capture_output=True, text=True).stdout
    assert f"({bits} bit" in text, text.splitlines()[0]
    ok(f"{name}: openssl pkey -check, {bits} bits, PKCS#8")
path = f"{d}/secrets/ec-p256"
text = subprocess.run(["openssl", "pkey", "-in", path, "-check", "-text", "-noout"], check=True, capture_output=True, text=True).stdout
assert "prime256v1" in text or "P-256" in text, text
ok("ec-p256: openssl pkey -check, prime256v1")

keys = signedjson.key.read_signing_keys(open(f"{d}/secrets/signing-key"))
assert len(keys) == 1 and keys[0].alg == "ed25519" and re.fullmatch(r"a_[A-Za-z]{4}", keys[0].version), keys
ok(f"signing-key: signedjson reads ed25519:{keys[0].version}")

assert secret_env["OIDC"] == plain and env["OIDC_FILE"].endswith("/secrets/oidc-client")
assert len(plain) == 72 and re.fullmatch(r"[A-Za-z0-9._~-]+", plain)
ok("oidc-client: one secret as plaintext, file and env, RFC 3986 unreserved")
_, alg, iterations, salt, dk = env["OIDC_PBKDF2"].split("$")
ab64 = lambda s: base64.b64decode(s.replace(".", "+") + "=" * (-len(s) % 4))
assert alg == "pbkdf2-sha512" and iterations == "310000"
assert hashlib.pbkdf2_hmac("sha512", plain.encode(), ab64(salt), int(iterations), 64) == ab64(dk)
ok("oidc-client: pbkdf2-sha512 digest verifies the plaintext")
assert argon2.PasswordHasher().verify(env["OIDC_ARGON2"], plain)
ok("oidc-client: argon2id digest verifies the plaintext")
assert re.fullmatch(r"[0-7][0-9A-HJKMNP-TV-Z]{25}", env["PROVIDER_ID"])
ok("provider: ULID")
assert re.fullmatch(r"[0-9a-f]{64}", secret_env["HEX"]) and len(base64.b64decode(secret_env["B64"])) == 48
assert re.fullmatch(r"[A-Za-z0-9]{40}", secret_env["ALNUM"])
ok("hex, base64, password")
