//! Database clients ↔ the database servers of the stack, as their modules
//! declare them (`db_server` and `db_client` roles): each client reaches a
//! server that creates the database and the role it connects with, with
//! the password it sends.

use std::collections::BTreeMap;

use super::roles::{At, Got, Who, shown_url};
use super::{Index, Url, list};
use crate::diag::{Code, Diagnostic};
use crate::model::{Ref, Role};

/// A server: what it creates, read through its role.
struct Server<'a> {
    who: Who<'a>,
    /// Database → owner.
    dbs: BTreeMap<String, String>,
    /// Login role → its password, when known, and where it is written.
    logins: BTreeMap<String, Option<Got>>,
    at: Option<At>,
}

/// What a client connects with, and where each part is written.
struct Client<'a> {
    who: Who<'a>,
    what: &'a str,
    host: String,
    port: u16,
    db: String,
    user: String,
    password: Option<String>,
    host_at: Option<At>,
    db_at: Option<At>,
    user_at: Option<At>,
    password_at: Option<At>,
}

pub(super) fn check(ix: &Index, out: &mut Vec<Diagnostic>) {
    let servers: Vec<Server> = ix
        .roles()
        .filter_map(|(machine, r)| match r {
            Role::DbServer {
                service,
                databases,
                logins,
                at: label,
                ..
            } => {
                let who = Who { machine, service };
                let text = |r: &Ref| ix.eval(who, r).and_then(|g| g.text());
                let mut at = label.as_ref().and_then(|l| ix.eval(who, l)).and_then(|g| g.at);
                let dbs = databases
                    .iter()
                    .filter_map(|d| {
                        let name = ix.eval(who, &d.name)?;
                        at = at.take().or(name.at.clone());
                        Some((name.text()?, text(&d.owner)?))
                    })
                    .collect();
                let logins = logins
                    .iter()
                    .filter_map(|l| Some((text(&l.name)?, l.password.as_ref().and_then(|p| ix.eval(who, p)))))
                    .collect();
                Some(Server { who, dbs, logins, at })
            }
            _ => None,
        })
        .collect();
    for (machine, r) in ix.roles() {
        let Role::DbClient {
            service,
            what,
            target,
            target_machine,
            url,
            host,
            port,
            database,
            user,
            password,
            ..
        } = r
        else {
            continue;
        };
        let who = Who { machine, service };
        let Some(c) = client(ix, who, what, [url, host, port, database, user, password]) else {
            continue;
        };
        let declared = target
            .as_deref()
            .map(|t| (target_machine.as_deref().unwrap_or(machine), t));
        connect(ix, &servers, &c, declared, out);
    }
}

/// A client's connection: a URL's parts, overridden by separate settings.
fn client<'a>(ix: &Index, who: Who<'a>, what: &'a str, refs: [&Option<Ref>; 6]) -> Option<Client<'a>> {
    let [url, host, port, database, user, password] = refs.map(|r| r.as_ref().and_then(|r| ix.eval(who, r)));
    let mut c = Client {
        who,
        what,
        host: "localhost".into(),
        port: 5432,
        db: String::new(),
        user: String::new(),
        password: None,
        host_at: None,
        db_at: None,
        user_at: None,
        password_at: None,
    };
    if let Some(u) = &url {
        let (h, p, usr, pw, db) = from_uri(u.str()?)?;
        c.host = h;
        c.port = p.unwrap_or(5432);
        c.user = usr;
        c.password = pw;
        c.db = db;
        (c.host_at, c.db_at, c.user_at, c.password_at) = (u.at.clone(), u.at.clone(), u.at.clone(), u.at.clone());
    }
    let set = |g: &Option<Got>, field: &mut String, at: &mut Option<At>| {
        if let Some(g) = g
            && let Some(v) = g.text()
        {
            *field = v;
            *at = g.at.clone();
        }
    };
    set(&host, &mut c.host, &mut c.host_at);
    set(&database, &mut c.db, &mut c.db_at);
    set(&user, &mut c.user, &mut c.user_at);
    if let Some(p) = port.as_ref().and_then(Got::text) {
        c.port = p.parse().ok()?;
    }
    if let Some(g) = &password {
        c.password = g.text();
        c.password_at = g.at.clone();
    }
    // libpq: the database defaults to the user's name.
    if c.db.is_empty() {
        c.db = c.user.clone();
    }
    Some(c)
}

/// Host, port, user, password and database of a connection URL.
type UriParts = (String, Option<u16>, String, Option<String>, String);

/// `postgres://user:password@host:port/db?…` (or `tcp://host:port`):
/// host, port, user, password, database. `None` when the user info is
/// ambiguous (an unencoded `/`, `?` or `#` in it): its parts could be
/// password fragments, which must not reach a message.
fn from_uri(uri: &str) -> Option<UriParts> {
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
    let port = (u.port != 0).then_some(u.port);
    Some((u.host.to_owned(), port, user, password, db))
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

fn connect(ix: &Index, servers: &[Server], c: &Client, declared: Option<(&str, &str)>, out: &mut Vec<Diagnostic>) {
    let who = format!("{} ({})", c.what, c.who.show());
    let shown = shown_url(&format!("{}:{}", c.host, c.port));
    let url = format!("tcp://{}:{}/", c.host, c.port);
    let reached = Url::parse(&url)
        .ok_or_else(|| format!("`{}` is not a host", c.host))
        .and_then(|u| ix.reach_as(c.who, &u))
        .and_then(|r| match declared {
            Some((m, t)) if r.machine != m || r.service != t => Err(format!(
                "it reaches `{}` on `{}`, not `{t}` on `{m}`",
                r.service, r.machine
            )),
            _ => Ok(r),
        })
        .and_then(|r| ix.listener_admits(c.who, &r, &[]).map(|()| r));
    let server = match reached {
        Err(why) => {
            out.push(
                ix.pair_at(
                    Code::Unreachable,
                    format!("{who} cannot reach its database at `{shown}`: {why}"),
                    (&c.host_at, "this host"),
                    (&None, ""),
                    "name the database server's compose service on the same machine, or its machine's address on a shared network with a port it publishes and opens to this machine (`firewall.allow`)",
                ),
            );
            return;
        }
        Ok(r) => match servers
            .iter()
            .find(|s| s.who.machine == r.machine && s.who.service == r.service)
        {
            Some(s) => s,
            None => {
                out.push(
                    Diagnostic::warning(
                        Code::Unpaired,
                        format!(
                            "{who} connects to `{}` on `{}`, which declares no database server role: its database, role and password are not checked",
                            r.service, r.machine
                        ),
                    )
                    .with_label(ix.span_at(&c.host_at), "this host")
                    .with_help("use a database module for the server, or declare its `roles.db_server` (docs/checks.md)"),
                );
                return;
            }
        },
    };
    let on = server.who.show();
    let mut problem = |at: &Option<At>, msg: String, label: &str, help: &str, theirs: Option<&Option<At>>| {
        let (theirs, their_label) = match theirs {
            Some(t) => (t, "the password it sets"),
            None => (&server.at, "what the server creates"),
        };
        out.push(ix.pair_at(Code::DatabaseMismatch, msg, (at, label), (theirs, their_label), help));
    };
    if !server.dbs.contains_key(&c.db) {
        problem(
            &c.db_at,
            format!(
                "{who} connects to database `{}`, which {on} does not create (it creates {})",
                c.db,
                list(server.dbs.keys().map(String::as_str))
            ),
            "this database",
            "name a database of the server, or add it to the server's `databases`",
            None,
        );
    }
    match server.logins.get(&c.user) {
        None => problem(
            &c.user_at,
            format!(
                "{who} connects as role `{}`, which {on} does not create (it creates {})",
                c.user,
                list(server.logins.keys().map(String::as_str))
            ),
            "this role",
            "connect as the owner of the database, or add the role to the server",
            None,
        ),
        Some(Some(want)) if c.password.as_ref().is_some_and(|p| Some(p.as_str()) != want.str()) => problem(
            &c.password_at,
            format!("{who} sends another password for role `{}` than {on} sets", c.user),
            "this password",
            "derive both from one `stackc.secret.password` (a database module's connection record does)",
            Some(&want.at),
        ),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_uris() {
        let (host, port, user, password, db) = from_uri("postgres://u%40x:p%2Fw@db:5433/name?sslmode=disable").unwrap();
        assert_eq!(
            (user.as_str(), password.as_deref(), host.as_str(), port, db.as_str()),
            ("u@x", Some("p/w"), "db", Some(5433), "name")
        );
        // An unencoded `/` in the password: nothing of it may be read as host or database.
        assert!(from_uri("postgres://u:12/34@db/name").is_none());
        let (host, port, ..) = from_uri("tcp://authelia-postgres:5432").unwrap();
        assert_eq!((host.as_str(), port), ("authelia-postgres", Some(5432)));
    }
}
