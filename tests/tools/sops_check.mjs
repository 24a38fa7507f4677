// Checks a SOPS file the way its consumers read it, with implementations
// independent of stackc's (tests/sops.rs runs it):
//
//   node sops_check.mjs IDENTITY_FILE DATA_KEY_HEX FILE
//
// - the values are decrypted by `sops-age` (npm, a JavaScript SOPS
//   decrypter: its own age, its own AES-GCM); it does not check the MAC, so
// - the MAC is checked here, as SOPS does: the data key (DATA_KEY_HEX, which
//   the test got from the real `age` CLI) opens `sops.mac` with AES-256-GCM
//   (@noble/ciphers), the additional data being `sops.lastmodified`, and it
//   must equal the upper-case hex SHA-512 (@noble/hashes) of every value of
//   the document in order, decrypted ones as plaintext (nulls skipped).
//
// Prints `{"doc": <decrypted document without sops>}` and exits 0, or
// prints why on stderr and exits 1.
import { readFileSync } from "node:fs";
import { decryptSops } from "sops-age";
import { parseDocument, isMap, isSeq, isScalar } from "yaml";
import { gcm } from "@noble/ciphers/aes";
import { sha512 } from "@noble/hashes/sha2";

const [identityFile, dataKeyHex, file] = process.argv.slice(2);
const fail = (why) => {
  process.stderr.write(`${file}: ${why}\n`);
  process.exit(1);
};

const secretKey = readFileSync(identityFile, "utf8")
  .split("\n")
  .map((l) => l.trim())
  .find((l) => l.startsWith("AGE-SECRET-KEY-"));
const text = readFileSync(file, "utf8");

let doc;
try {
  doc = await decryptSops(text, { secretKey, fileType: "yaml" });
} catch (e) {
  fail(`sops-age: ${e.message}`);
}

const fromB64 = (s) => Uint8Array.from(Buffer.from(s, "base64"));
const ast = parseDocument(text);
const meta = ast.toJS().sops;
const m = /^ENC\[AES256_GCM,data:(.+),iv:(.+),tag:(.+),type:str\]$/.exec(meta.mac);
if (!m) fail("sops.mac is not an encrypted string");
const key = Uint8Array.from(Buffer.from(dataKeyHex, "hex"));
const sealed = new Uint8Array([...fromB64(m[1]), ...fromB64(m[3])]);
let macText;
try {
  const aad = new TextEncoder().encode(meta.lastmodified);
  macText = new TextDecoder().decode(gcm(key, fromB64(m[2]), aad).decrypt(sealed));
} catch (e) {
  fail(`the MAC does not open with the data key: ${e.message}`);
}

// Every value in document order (the AST keeps it), read from the
// decrypted document by its path.
const hash = sha512.create();
const at = (path) => path.reduce((v, k) => v[k], doc);
const visit = (node, path) => {
  if (isMap(node)) {
    for (const pair of node.items) {
      const k = isScalar(pair.key) ? pair.key.value : pair.key;
      if (path.length === 0 && k === "sops") continue;
      visit(pair.value, [...path, k]);
    }
  } else if (isSeq(node)) {
    node.items.forEach((item, i) => visit(item, [...path, i]));
  } else if (isScalar(node)) {
    const v = at(path);
    if (v === null || v === undefined) return;
    const bytes = typeof v === "boolean" ? (v ? "True" : "False") : String(v);
    hash.update(new TextEncoder().encode(bytes));
  }
};
visit(ast.contents, []);
const want = Buffer.from(hash.digest()).toString("hex").toUpperCase();
if (macText !== want) fail(`MAC mismatch: the file says ${macText}, the values give ${want}`);
process.stdout.write(JSON.stringify({ doc }) + "\n");
