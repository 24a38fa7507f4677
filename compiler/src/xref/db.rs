//! Database clients ↔ the PostgreSQL servers of the stack: each client
//! reaches a server whose first-start scripts create the database and the
//! role it connects with, with the password it sends.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{Conf, Index, Kind, Url, list};
use crate::diag::{Code, Diagnostic};
use crate::eval::pointer_escape;

/// A PostgreSQL container and what its environment and init scripts create.
struct Server<'a> {
    machine: &'a str,
    service: String,
    /// Database → owner.
    dbs: BTreeMap<String, String>,
    /// Role → password, when known.
    roles: BTreeMap<String, Option<String>>,
    /// Bundle path of the init script folder (for labels).
    init: Option<String>,
}

/// What a client connects with, and where each part is written.
struct Client<'c, 'a> {
    conf: &'c Conf<'a>,
    what: &'static str,
    host: String,
    port: u16,
    db: String,
    user: String,
    password: Option<String>,
    host_ptr: String,
    db_ptr: String,
    user_ptr: String,
    password_ptr: String,
}

pub(super) fn check(ix: &Index, out: &mut Vec<Diagnostic>) {
    let servers = servers(ix);
    for c in clients(ix) {
        connect(ix, &servers, &c, out);
    }
}

fn servers<'a>(ix: &Index<'a>) -> Vec<Server<'a>> {
    let mut out = Vec::new();
    for (machine, compose) in &ix.compose {
        let Some(services) = compose.get("services").and_then(Value::as_object) else {
            continue;
        };
        for (name, svc) in services {
            let image = svc.get("image").and_then(Value::as_str).unwrap_or_default();
            let base = image.rsplit('/').next().unwrap_or_default();
            let base = base.split([':', '@']).next().unwrap_or_default();
            if !["postgres", "postgis", "pgvector"].iter().any(|p| base.contains(p)) {
                continue;
            }
            let mut env: BTreeMap<String, String> = BTreeMap::new();
            // `env_file`: a path, or a list of paths or `{ path }` records.
            let env_files: Vec<&str> = match svc.get("env_file") {
                Some(Value::String(f)) => vec![f.as_str()],
                Some(Value::Array(a)) => a
                    .iter()
                    .filter_map(|f| f.as_str().or_else(|| f.get("path")?.as_str()))
                    .collect(),
                _ => Vec::new(),
            };
            for f in env_files {
                let Some(text) = ix.text(&format!("{machine}/{}", f.trim_start_matches("./"))) else {
                    continue;
                };
                for line in text.lines().filter(|l| !l.starts_with('#')) {
                    if let Some((k, v)) = line.split_once('=') {
                        env.insert(k.trim().to_owned(), env_value(v));
                    }
                }
            }
            // `environment`: a map, or a list of `KEY=value`. Read back from
            // the compose bytes: `$$` is compose's `$`.
            match svc.get("environment") {
                Some(Value::Object(m)) => {
                    for (k, v) in m {
                        if let Some(v) = v.as_str() {
                            env.insert(k.clone(), v.replace("$$", "$"));
                        }
                    }
                }
                Some(Value::Array(a)) => {
                    for (k, v) in a.iter().filter_map(Value::as_str).filter_map(|e| e.split_once('=')) {
                        env.insert(k.to_owned(), v.replace("$$", "$"));
                    }
                }
                _ => {}
            }
            let su = env.get("POSTGRES_USER").cloned().unwrap_or_else(|| "postgres".into());
            let mut s = Server {
                machine,
                service: name.clone(),
                dbs: BTreeMap::from([(
                    env.get("POSTGRES_DB").cloned().unwrap_or_else(|| su.clone()),
                    su.clone(),
                )]),
                roles: BTreeMap::from([(su, env.get("POSTGRES_PASSWORD").cloned())]),
                init: None,
            };
            for (src, dst) in ix.volumes(machine, name) {
                let (Some(src), "/docker-entrypoint-initdb.d") = (src.strip_prefix("./"), dst.trim_end_matches('/'))
                else {
                    continue;
                };
                let dir = format!("{machine}/{}/", src.trim_end_matches('/'));
                s.init = Some(dir.clone());
                for (path, f) in ix.files.range(dir.clone()..) {
                    if !path.starts_with(&dir) {
                        break;
                    }
                    if let Ok(text) = std::str::from_utf8(&f.bytes) {
                        read_init(text, &env, &mut s);
                    }
                }
            }
            out.push(s);
        }
    }
    out
}

/// A value of a compose `env_file` line: single quotes are literal,
/// double quotes are stripped, bare values end at ` #`.
fn env_value(v: &str) -> String {
    let v = v.trim();
    if let Some(inner) = v.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')) {
        return inner.to_owned();
    }
    if let Some(inner) = v.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
        return inner.replace("\\\"", "\"");
    }
    v.split(" #").next().unwrap_or(v).to_owned()
}

/// Reads `CREATE ROLE` / `CREATE DATABASE` statements of an init script;
/// passwords given as psql variables (`-v x="$ENV"`, `PASSWORD :'x'`) are
/// looked up in the container's environment.
fn read_init(text: &str, env: &BTreeMap<String, String>, s: &mut Server) {
    let mut vars: BTreeMap<&str, &str> = BTreeMap::new();
    for part in text.split("-v ").skip(1) {
        let Some((name, rest)) = part.split_once('=') else {
            continue;
        };
        let value = rest
            .trim_start_matches('"')
            .split(['"', ' ', '\n'])
            .next()
            .unwrap_or_default();
        if let Some(e) = value.strip_prefix('$') {
            vars.insert(name.trim(), e.trim_matches(['{', '}']));
        }
    }
    for stmt in text.split(';') {
        let words: Vec<&str> = stmt.split_whitespace().collect();
        let upper: Vec<String> = words.iter().map(|w| w.to_ascii_uppercase()).collect();
        let Some(i) = upper.iter().position(|w| w == "CREATE") else {
            continue;
        };
        // Unquoted identifiers fold to lower case; quoted ones keep theirs.
        let ident = |w: &str| match w.strip_prefix('"').and_then(|w| w.strip_suffix('"')) {
            Some(q) => q.to_owned(),
            None => w.to_ascii_lowercase(),
        };
        match (upper.get(i + 1).map(String::as_str), words.get(i + 2)) {
            (Some("ROLE" | "USER"), Some(role)) => {
                let pw = upper
                    .iter()
                    .position(|w| w == "PASSWORD")
                    .and_then(|j| words.get(j + 1))
                    .and_then(|p| match p.strip_prefix(":'").and_then(|v| v.strip_suffix('\'')) {
                        Some(var) => vars.get(var).and_then(|e| env.get(*e)).cloned(),
                        // A pre-hashed password cannot be compared with a plaintext.
                        None => p
                            .strip_prefix('\'')
                            .and_then(|v| v.strip_suffix('\''))
                            .filter(|v| !(v.starts_with("SCRAM-SHA-256$") || (v.len() == 35 && v.starts_with("md5"))))
                            .map(str::to_owned),
                    });
                s.roles.insert(ident(role), pw);
            }
            (Some("DATABASE"), Some(db)) => {
                let owner = upper
                    .iter()
                    .position(|w| w == "OWNER")
                    .and_then(|j| words.get(j + 1))
                    .map_or_else(|| s.roles.keys().next().cloned().unwrap_or_default(), |o| ident(o));
                s.dbs.insert(ident(db), owner);
            }
            _ => {}
        }
    }
}

fn clients<'c, 'a>(ix: &'c Index<'a>) -> Vec<Client<'c, 'a>> {
    let mut out = Vec::new();
    for c in &ix.confs {
        let client = match c.kind {
            Kind::Synapse if c.str("/database/name") == Some("psycopg2") => {
                let a = "/database/args";
                let db_ptr = if c.get(&format!("{a}/dbname")).is_some() {
                    "dbname"
                } else {
                    "database"
                };
                let mut cl = Client {
                    conf: c,
                    what: "Synapse",
                    host: c.str(&format!("{a}/host")).unwrap_or("localhost").to_owned(),
                    port: port(c.get(&format!("{a}/port"))),
                    db: c.str(&format!("{a}/{db_ptr}")).unwrap_or_default().to_owned(),
                    user: c.str(&format!("{a}/user")).unwrap_or_default().to_owned(),
                    password: c.str(&format!("{a}/password")).map(str::to_owned),
                    host_ptr: format!("{a}/host"),
                    db_ptr: format!("{a}/{db_ptr}"),
                    user_ptr: format!("{a}/user"),
                    password_ptr: format!("{a}/password"),
                };
                if cl.password.is_none()
                    && let Some(text) = c.str(&format!("{a}/passfile")).and_then(|p| ix.read(c, p))
                {
                    cl.password = pgpass(text, &cl);
                    cl.password_ptr = format!("{a}/passfile");
                }
                cl
            }
            Kind::Mas if c.get("/database").is_some() => {
                if let Some(uri) = c.str("/database/uri") {
                    match from_uri(c, "MAS", uri, "/database/uri") {
                        Some(cl) => cl,
                        None => continue,
                    }
                } else {
                    let (password, password_ptr) = ix
                        .secret_of(c, "/database/password", "/database/password_file")
                        .map_or((None, "/database/password".to_owned()), |(v, p)| (Some(v), p));
                    Client {
                        conf: c,
                        what: "MAS",
                        host: c.str("/database/host").unwrap_or("localhost").to_owned(),
                        port: port(c.get("/database/port")),
                        db: c.str("/database/database").unwrap_or_default().to_owned(),
                        user: c.str("/database/username").unwrap_or_default().to_owned(),
                        password,
                        host_ptr: "/database/host".into(),
                        db_ptr: "/database/database".into(),
                        user_ptr: "/database/username".into(),
                        password_ptr,
                    }
                }
            }
            Kind::Authelia if c.get("/storage/postgres").is_some() => {
                let p = "/storage/postgres";
                let address = c.str(&format!("{p}/address")).unwrap_or_default();
                let Some(u) = Url::parse(address) else { continue };
                Client {
                    conf: c,
                    what: "Authelia",
                    host: u.host.to_owned(),
                    port: if u.port == 0 { 5432 } else { u.port },
                    db: c.str(&format!("{p}/database")).unwrap_or_default().to_owned(),
                    user: c.str(&format!("{p}/username")).unwrap_or_default().to_owned(),
                    password: c.str(&format!("{p}/password")).map(str::to_owned),
                    host_ptr: format!("{p}/address"),
                    db_ptr: format!("{p}/database"),
                    user_ptr: format!("{p}/username"),
                    password_ptr: format!("{p}/password"),
                }
            }
            Kind::Bridge if c.str("/database/type") == Some("postgres") => {
                match c
                    .str("/database/uri")
                    .and_then(|u| from_uri(c, "the bridge", u, "/database/uri"))
                {
                    Some(cl) => cl,
                    None => continue,
                }
            }
            _ => continue,
        };
        let mut client = client;
        // libpq: the database defaults to the user's name.
        if client.db.is_empty() {
            client.db = client.user.clone();
        }
        out.push(client);
    }
    out
}

fn port(v: Option<&Value>) -> u16 {
    v.and_then(Value::as_u64)
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or(5432)
}

/// `postgres://user:password@host:port/db?…`. `None` when the user info is
/// ambiguous (an unencoded `/`, `?` or `#` in it): its parts could be
/// password fragments, which must not reach a message.
fn from_uri<'c, 'a>(c: &'c Conf<'a>, what: &'static str, uri: &str, ptr: &str) -> Option<Client<'c, 'a>> {
    let (scheme, rest) = uri.split_once("://")?;
    let (userinfo, hostpart) = match rest.rsplit_once('@') {
        Some((ui, _)) if ui.contains(['/', '?', '#']) => return None,
        Some((ui, h)) => (Some(ui), h),
        None => (None, rest),
    };
    let target = format!("{scheme}://{hostpart}");
    let u = Url::parse(&target)?;
    let (user, password) = match userinfo.map(|ui| ui.split_once(':').unwrap_or((ui, ""))) {
        Some((name, p)) => (
            percent_decode(name)?,
            (!p.is_empty()).then(|| percent_decode(p)).flatten(),
        ),
        None => (String::new(), None),
    };
    let db = percent_decode(u.path.trim_start_matches('/'))?;
    Some(Client {
        conf: c,
        what,
        host: u.host.to_owned(),
        port: u.port,
        db,
        user,
        password,
        host_ptr: ptr.into(),
        db_ptr: ptr.into(),
        user_ptr: ptr.into(),
        password_ptr: ptr.into(),
    })
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The password a libpq passfile gives for a connection.
fn pgpass(text: &str, c: &Client) -> Option<String> {
    let port = c.port.to_string();
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let f: Vec<&str> = l.splitn(5, ':').collect();
        let ok = |i: usize, want: &str| f.get(i).is_some_and(|v| *v == "*" || *v == want);
        (f.len() == 5 && ok(0, &c.host) && ok(1, &port) && ok(2, &c.db) && ok(3, &c.user)).then(|| f[4].to_owned())
    })
}

fn connect(ix: &Index, servers: &[Server], c: &Client, out: &mut Vec<Diagnostic>) {
    let who = format!("{} ({})", c.what, c.conf.who());
    let url = format!("postgres://{}:{}/", c.host, c.port);
    let reached = Url::parse(&url)
        .ok_or_else(|| format!("`{}` is not a host", c.host))
        .and_then(|u| ix.reach(c.conf, &u));
    let server = match reached {
        Err(why) => {
            out.push(ix.one(
                Code::Unreachable,
                format!("{who} cannot reach its database at `{}:{}`: {why}", c.host, c.port),
                (c.conf, &c.host_ptr, "this host"),
                "name the PostgreSQL compose service of the same machine, or a machine address whose firewall lets this one in",
            ));
            return;
        }
        Ok(r) => match servers
            .iter()
            .find(|s| s.machine == r.machine && s.service == r.service)
        {
            Some(s) => s,
            // An image stackc does not know may well be a PostgreSQL server:
            // only a service whose config stackc read is known not to be one.
            None if !ix
                .confs
                .iter()
                .any(|k| k.machine == r.machine && k.service.as_deref() == Some(r.service.as_str())) =>
            {
                return;
            }
            None => {
                out.push(ix.one(
                    Code::Unreachable,
                    format!(
                        "{who} connects to its database at `{}:{}`, which is `{}` on `{}`, not a PostgreSQL server of the stack",
                        c.host, c.port, r.service, r.machine
                    ),
                    (c.conf, &c.host_ptr, "this host"),
                    "name the PostgreSQL compose service",
                ));
                return;
            }
        },
    };
    let init_span = server.init.as_ref().and_then(|dir| {
        let m = &ix.stack.machines[server.machine];
        let rel = dir.strip_prefix(&format!("{}/", server.machine))?;
        let (path, _) = m
            .files
            .range(rel.to_owned()..)
            .next()
            .filter(|(p, _)| p.starts_with(rel))?;
        ix.pos.at(&format!(
            "/machines/{}/files/{}",
            pointer_escape(server.machine),
            pointer_escape(path)
        ))
    });
    let on = format!("`{}` on `{}`", server.service, server.machine);
    let mut problem = |ptr: &str, msg: String, label: &str, help: String| {
        out.push(
            ix.one(Code::DatabaseMismatch, msg, (c.conf, ptr, label), help)
                .with_secondary(init_span.clone(), "what the server creates"),
        );
    };
    if !server.dbs.contains_key(&c.db) {
        problem(
            &c.db_ptr,
            format!(
                "{who} connects to database `{}`, which {on} does not create (it creates {})",
                c.db,
                list(server.dbs.keys().map(String::as_str))
            ),
            "this database",
            "name a database of the server, or add it to the server's `databases`".into(),
        );
    }
    match server.roles.get(&c.user) {
        None => problem(
            &c.user_ptr,
            format!(
                "{who} connects as role `{}`, which {on} does not create (it creates {})",
                c.user,
                list(server.roles.keys().map(String::as_str))
            ),
            "this role",
            "connect as the owner of the database, or add the role to the server".into(),
        ),
        Some(Some(want)) if c.password.as_ref().is_some_and(|p| p != want) => problem(
            &c.password_ptr,
            format!("{who} sends another password for role `{}` than {on} sets", c.user),
            "this password",
            "derive both from one `stackc.secret.password` (the postgres module's `Connection` does)".into(),
        ),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf() -> Conf<'static> {
        Conf {
            machine: "m",
            path: "b/config.yaml",
            kind: Kind::Bridge,
            value: Value::Null,
            service: None,
        }
    }

    #[test]
    fn database_uris() {
        let c = conf();
        let cl = from_uri(
            &c,
            "x",
            "postgres://u%40x:p%2Fw@db:5433/name?sslmode=disable",
            "/database/uri",
        )
        .unwrap();
        assert_eq!(
            (
                cl.user.as_str(),
                cl.password.as_deref(),
                cl.host.as_str(),
                cl.port,
                cl.db.as_str()
            ),
            ("u@x", Some("p/w"), "db", 5433, "name")
        );
        // An unencoded `/` in the password: nothing of it may be read as host or database.
        assert!(from_uri(&c, "x", "postgres://u:12/34@db/name", "/database/uri").is_none());
    }

    #[test]
    fn reads_init_scripts() {
        let mut s = Server {
            machine: "m",
            service: "postgres".into(),
            dbs: BTreeMap::new(),
            roles: BTreeMap::new(),
            init: None,
        };
        let env = BTreeMap::from([("STACKC_PASSWORD_MAS".to_owned(), "pw".to_owned())]);
        read_init(
            "psql -v ON_ERROR_STOP=1 \\\n  -v mas_password=\"$STACKC_PASSWORD_MAS\" \\\n  <<'SQL'\nCREATE ROLE mas LOGIN PASSWORD :'mas_password';\nCREATE DATABASE mas OWNER mas ENCODING 'UTF8';\nCREATE ROLE x LOGIN PASSWORD 'lit';\nSQL\n",
            &env,
            &mut s,
        );
        assert_eq!(s.roles.get("mas"), Some(&Some("pw".to_owned())));
        assert_eq!(s.roles.get("x"), Some(&Some("lit".to_owned())));
        assert_eq!(s.dbs.get("mas").map(String::as_str), Some("mas"));
        read_init(
            "CREATE ROLE Big LOGIN PASSWORD 'SCRAM-SHA-256$4096:x$y:z';\nCREATE ROLE \"Q\";",
            &env,
            &mut s,
        );
        assert_eq!(s.roles.get("big"), Some(&None), "folded, and a hash is no plaintext");
        assert!(s.roles.contains_key("Q"));
    }
}
