//! OpenID Connect pairs: a relying party (MAS upstream provider, Synapse
//! `oidc_providers`) and its client at Authelia. F1, F3, F4, F7, F9.

use serde_json::Value;

use super::{Conf, Index, Kind, list};
use crate::diag::{Code, Diagnostic};
use crate::secrets::derive::pbkdf2_sha512_verifies;

/// One relying party's view of its provider.
struct Rp<'c, 'a> {
    conf: &'c Conf<'a>,
    /// Pointer to the provider entry.
    ptr: String,
    what: &'static str,
    client_id: String,
    issuer: Option<String>,
    /// The callback URL it sends, and the pointer of the base it is made from.
    callback: String,
    callback_from: &'static str,
    method: String,
    method_ptr: String,
    secret: Option<(String, String)>,
    /// Claims it requires from the ID token: (claim, pointer of the template).
    required_claims: Vec<(String, String)>,
}

/// Where a kind of relying party keeps what the checks read.
struct Keys {
    what: &'static str,
    method: &'static str,
    /// The method when the key is absent (`None`: the key is required).
    method_default: Option<&'static str>,
    secret_file: &'static str,
    /// The setting the callback URL is made from.
    callback_from: &'static str,
}

const MAS: Keys = Keys {
    what: "MAS upstream provider",
    method: "token_endpoint_auth_method",
    method_default: None,
    secret_file: "client_secret_file",
    callback_from: "/http/public_base",
};

const SYNAPSE: Keys = Keys {
    what: "Synapse OIDC provider",
    method: "client_auth_method",
    method_default: Some("client_secret_basic"),
    secret_file: "client_secret_path",
    callback_from: "/public_baseurl",
};

impl<'c, 'a> Rp<'c, 'a> {
    /// A provider entry at `ptr` of `conf`; claims are the caller's to add.
    fn read(ix: &Index, conf: &'c Conf<'a>, ptr: String, keys: &Keys, callback: String) -> Self {
        let s = |k: &str| conf.str(&format!("{ptr}/{k}"));
        Rp {
            conf,
            what: keys.what,
            client_id: s("client_id").unwrap_or_default().to_owned(),
            issuer: s("issuer").map(str::to_owned),
            callback,
            callback_from: keys.callback_from,
            method: s(keys.method).or(keys.method_default).unwrap_or_default().to_owned(),
            method_ptr: format!("{ptr}/{}", keys.method),
            secret: ix.secret_of(
                conf,
                &format!("{ptr}/client_secret"),
                &format!("{ptr}/{}", keys.secret_file),
            ),
            required_claims: Vec::new(),
            ptr,
        }
    }
}

pub(super) fn check(ix: &Index, out: &mut Vec<Diagnostic>) {
    let mut rps = Vec::new();
    for c in ix.of(Kind::Mas) {
        let base = c.str("/http/public_base").unwrap_or_default();
        let providers = c.get("/upstream_oauth2/providers").and_then(Value::as_array);
        for (i, p) in providers.into_iter().flatten().enumerate() {
            let id = p.get("id").and_then(Value::as_str).unwrap_or_default();
            let callback = join_url(base, &format!("upstream/callback/{id}"));
            let mut rp = Rp::read(ix, c, format!("/upstream_oauth2/providers/{i}"), &MAS, callback);
            if !p.get("fetch_userinfo").and_then(Value::as_bool).unwrap_or(false) {
                let imports = p.get("claims_imports").and_then(Value::as_object);
                for (attr, imp) in imports.into_iter().flatten() {
                    if imp.get("action").and_then(Value::as_str) != Some("require") {
                        continue;
                    }
                    let template = imp.get("template").and_then(Value::as_str).unwrap_or_default();
                    for claim in template_claims(template) {
                        let at = format!("{}/claims_imports/{attr}/template", rp.ptr);
                        rp.required_claims.push((claim, at));
                    }
                }
            }
            rps.push(rp);
        }
    }
    for c in ix.of(Kind::Synapse) {
        // Synapse adds a missing `/` and concatenates (no URL join); unset, it
        // is `https://<server_name>/`.
        let base = match (c.str("/public_baseurl"), c.str("/server_name")) {
            (Some(b), _) => format!("{}/", b.trim_end_matches('/')),
            (None, Some(sn)) => format!("https://{sn}/"),
            (None, None) => String::new(),
        };
        let n = c.get("/oidc_providers").and_then(Value::as_array).map_or(0, Vec::len);
        for i in 0..n {
            let callback = format!("{base}_synapse/client/oidc/callback");
            rps.push(Rp::read(ix, c, format!("/oidc_providers/{i}"), &SYNAPSE, callback));
        }
    }
    for rp in &rps {
        for op in ix.of(Kind::Authelia) {
            let clients = op.get("/identity_providers/oidc/clients").and_then(Value::as_array);
            for (j, client) in clients.into_iter().flatten().enumerate() {
                if client.get("client_id").and_then(Value::as_str) == Some(rp.client_id.as_str()) {
                    pair(
                        ix,
                        rp,
                        op,
                        &format!("/identity_providers/oidc/clients/{j}"),
                        client,
                        out,
                    );
                }
            }
        }
    }
}

fn pair(ix: &Index, rp: &Rp, op: &Conf, cp: &str, client: &Value, out: &mut Vec<Diagnostic>) {
    let cid = &rp.client_id;
    let party = format!("{} (client `{cid}`, {})", rp.what, rp.conf.who());
    let op_client = format!("Authelia client `{cid}` ({})", op.who());

    // F1: the callback the RP sends must be registered exactly.
    let uris: Vec<&str> = client
        .get("redirect_uris")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if !uris.contains(&rp.callback.as_str()) {
        out.push(ix.pair(
            Code::OidcRedirect,
            format!(
                "{op_client} does not allow the callback `{}` that the {party} sends; its redirect_uris: {}",
                rp.callback,
                list(uris.iter().copied())
            ),
            (op, &format!("{cp}/redirect_uris"), "redirect URIs without the callback"),
            (rp.conf, rp.callback_from, "the callback is made from this base"),
            format!("add `{}` to the client's redirect_uris, or set the relying party's base URL to the one the client expects", rp.callback),
        ));
    }

    // F3: both sides must use one token endpoint authentication method.
    let op_method = client
        .get("token_endpoint_auth_method")
        .and_then(Value::as_str)
        .unwrap_or("client_secret_basic");
    if op_method != rp.method {
        out.push(ix.pair(
            Code::OidcAuthMethod,
            format!(
                "{party} authenticates with `{}`, but {op_client} expects `{op_method}`",
                rp.method
            ),
            (rp.conf, &rp.method_ptr, format!("`{}`", rp.method).as_str()),
            (
                op,
                &format!("{cp}/token_endpoint_auth_method"),
                format!("`{op_method}`").as_str(),
            ),
            "write one method to both sides (the matrix module's `client_auth_method` does)",
        ));
    }

    // F4: the digest Authelia holds must verify the plaintext the RP sends.
    let digest = client.get("client_secret").and_then(Value::as_str);
    let uses_secret = matches!(rp.method.as_str(), "client_secret_basic" | "client_secret_post");
    if let (Some(digest), Some((plain, plain_ptr)), true) = (digest, &rp.secret, uses_secret)
        && let Some(why) = digest_mismatch(ix, digest, plain)
    {
        out.push(ix.pair(
                Code::OidcSecret,
                format!("{op_client} holds a digest of another secret than the {party} sends: {why}"),
                (op, &format!("{cp}/client_secret"), "this digest"),
                (rp.conf, plain_ptr, "the secret sent"),
                "derive both from one secret: its digest (`stackc.secret.pbkdf2_sha512`) for Authelia, its value or file for the relying party",
            ));
    }

    // F9: the issuer the RP expects must be the one Authelia answers with.
    let served = authelia_issuers(ix, op);
    if let Some(issuer) = &rp.issuer
        && !served.is_empty()
        && !served.contains(issuer)
    {
        let slash = served.iter().any(|s| super::same_base(s, issuer));
        out.push(ix.pair(
                Code::IssuerMismatch,
                format!(
                    "the {party} expects issuer `{issuer}`, but Authelia on `{}` answers as {}{}",
                    op.machine,
                    list(served.iter().map(String::as_str)),
                    if slash { " (the trailing slash differs)" } else { "" }
                ),
                (rp.conf, &format!("{}/issuer", rp.ptr), "the expected issuer"),
                (op, "/session/cookies/0/authelia_url", "Authelia's own URL"),
                "issuers are compared as exact strings: write the URL of the proxy site that serves Authelia, without a trailing slash",
            ));
    }

    // F7: claims the RP requires must be in the ID token (Authelia 4.39
    // sends the standard ones only from userinfo unless a policy adds them).
    if !rp.required_claims.is_empty() {
        let policy = client.get("claims_policy").and_then(Value::as_str);
        let in_token: Vec<&str> = policy
            .and_then(|p| {
                op.get(&format!(
                    "/identity_providers/oidc/claims_policies/{}/id_token",
                    crate::eval::pointer_escape(p)
                ))
            })
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        for (claim, tptr) in &rp.required_claims {
            if ALWAYS_IN_ID_TOKEN.contains(&claim.as_str()) || in_token.contains(&claim.as_str()) {
                continue;
            }
            let at = match policy {
                Some(p) => format!(
                    "/identity_providers/oidc/claims_policies/{}/id_token",
                    crate::eval::pointer_escape(p)
                ),
                None => cp.to_owned(),
            };
            out.push(ix.pair(
                Code::MissingClaim,
                format!(
                    "the {party} requires claim `{claim}` from the ID token, but {op_client} does not put it there (ID token claims: {})",
                    list(in_token.iter().copied())
                ),
                (op, &at, "ID token claims"),
                (rp.conf, tptr, format!("requires `{claim}`").as_str()),
                format!("add `{claim}` to the client's claims policy `id_token` list, or set `fetch_userinfo: true` on the provider"),
            ));
        }
    }
}

/// Claims every ID token carries.
const ALWAYS_IN_ID_TOKEN: &[&str] = &[
    "sub",
    "iss",
    "aud",
    "exp",
    "iat",
    "auth_time",
    "nonce",
    "amr",
    "azp",
    "acr",
];

/// Why a digest does not verify a plaintext; `None` if it does, or if the
/// digest is of a kind stackc cannot check (said in the docs).
fn digest_mismatch(ix: &Index, digest: &str, plain: &str) -> Option<String> {
    let plain_name = || ix.secret_label(plain);
    // A digest stackc wrote: it digests the secret of that name.
    if let Some(name) = ix.secrets.digests.get(digest) {
        let ok = ix.secrets.values.get(name).is_some_and(|v| v == plain);
        return (!ok).then(|| {
            format!(
                "the digest is of secret `{name}`, the relying party sends {}",
                plain_name()
            )
        });
    }
    if let Some(p) = digest.strip_prefix("$plaintext$") {
        return (p != plain).then(|| format!("`$plaintext$` value differs from {}", plain_name()));
    }
    match pbkdf2_sha512_verifies(digest, plain.as_bytes()) {
        Some(false) => Some(format!("the pbkdf2-sha512 digest does not verify {}", plain_name())),
        Some(true) => None,
        // A bare string is a plaintext secret (deprecated by Authelia).
        None if !digest.starts_with('$') => {
            (digest != plain).then(|| format!("the plaintext value differs from {}", plain_name()))
        }
        None => None,
    }
}

/// The issuer URLs Authelia answers with: it derives them from the request,
/// so they are `https://<site>` for every proxy site forwarding to it, plus
/// the path of its `server.address`.
fn authelia_issuers(ix: &Index, op: &Conf) -> Vec<String> {
    let Some(service) = &op.service else { return Vec::new() };
    // `tcp://:9091/authelia`: the path after the authority, if any.
    let path = op
        .str("/server/address")
        .and_then(|a| a.split_once("://"))
        .and_then(|(_, rest)| rest.find('/').map(|i| rest[i..].trim_end_matches('/').to_owned()))
        .unwrap_or_default();
    let mut out = Vec::new();
    for (pname, p) in &ix.stack.machines {
        for site in &p.sites {
            let reached = ix.route(pname, site, &format!("{path}/"));
            if reached.is_ok_and(|r| r.machine == op.machine && &r.service == service) {
                let (host, port) = crate::check::split_site(site);
                let port = port
                    .filter(|p| *p != "443")
                    .map(|p| format!(":{p}"))
                    .unwrap_or_default();
                out.push(format!("https://{host}{port}{path}"));
            }
        }
    }
    out
}

/// `claims` a MAS template reads: `{{ user.preferred_username }}` → `preferred_username`.
fn template_claims(template: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(i) = rest.find("user.") {
        let after = &rest[i + 5..];
        let end = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        let before_ok = i == 0 || !rest.as_bytes()[i - 1].is_ascii_alphanumeric();
        if before_ok && end > 0 {
            out.push(after[..end].to_owned());
        }
        rest = &after[end..];
    }
    out.sort();
    out.dedup();
    out
}

/// `Url::join` for a relative path: a base without a trailing slash loses
/// its last segment (which is why MAS's `public_base` must end with `/`).
pub(super) fn join_url(base: &str, rel: &str) -> String {
    let start = base.find("://").map_or(0, |i| i + 3);
    match base[start..].find('/') {
        None => format!("{base}/{rel}"),
        Some(_) => {
            let i = base.rfind('/').unwrap_or(base.len() - 1);
            format!("{}{rel}", &base[..=i])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_like_a_url() {
        assert_eq!(
            join_url("https://m.example/", "upstream/callback/X"),
            "https://m.example/upstream/callback/X"
        );
        assert_eq!(
            join_url("https://m.example", "upstream/callback/X"),
            "https://m.example/upstream/callback/X"
        );
        assert_eq!(join_url("https://e.org/mas/", "a"), "https://e.org/mas/a");
        assert_eq!(join_url("https://e.org/mas", "a"), "https://e.org/a");
    }

    #[test]
    fn claims_of_templates() {
        assert_eq!(template_claims("{{ user.preferred_username }}"), ["preferred_username"]);
        assert_eq!(
            template_claims("{{ user.given_name }} {{ user.family_name }}"),
            ["family_name", "given_name"]
        );
        assert!(template_claims("{{ xuser.name }}").is_empty());
    }
}
