//! `lower`: the compiler's half of lowering, for what is the same function
//! of the checked options for every stack. The stdlib checks the options
//! against their contracts and gives the facts the checks read; here:
//!
//! - the files of every native service (its unit, timer, environment file,
//!   sysusers.d and tmpfiles.d entries), from its options (`native`);
//! - the handlers of every proxy site whose module leaves them to the
//!   compiler, read from the site's block in the config the stdlib wrote,
//!   for the router (`site_handlers`).
//!
//! Nickel's interpreter spends microseconds on every operation; building
//! these for each service of a large stack was a share of its evaluation
//! (bench/NOTES.md). Whatever is written here gets the source positions of
//! what it comes from (`Locs` aliases): a diagnostic about a unit points at
//! the option in the user's file, one about a route at its directive.

use serde_json::{Map, Value, json};

use crate::diag::{Code, Diagnostic};
use crate::eval::{Locs, pointer_escape};
use crate::model::{FileSpec, Format, NativeService, Stack, Then};

/// Both halves, in order.
pub fn lower(stack: &mut Stack, locs: &mut Locs) -> Result<(), Vec<Diagnostic>> {
    native(stack, locs)?;
    site_handlers(stack, locs);
    Ok(())
}

/// Writes every machine's native services into its `files`. A file that
/// another part of the machine writes too is SC0215, once per service,
/// naming both.
pub fn native(stack: &mut Stack, locs: &mut Locs) -> Result<(), Vec<Diagnostic>> {
    let mut out = Vec::new();
    for (mname, m) in &mut stack.machines {
        let mp = format!("/machines/{}", pointer_escape(mname));
        let user = std::mem::take(&mut m.native);
        let modules = std::mem::take(&mut m.module_native);
        // Who wrote each file lowered here: (path, service, its pointer).
        let mut written: Vec<(String, String, String)> = Vec::new();
        for (field, services) in [("native", user), ("module_native", modules)] {
            for (sname, svc) in services {
                let src = format!("{mp}/{field}/{}", pointer_escape(&sname));
                let files = files_of(&sname, &svc, &m.deploy_root);
                if let Some((path, ..)) = files.iter().find(|(p, ..)| m.files.contains_key(p)) {
                    let first = written.iter().find(|(p, ..)| p == path);
                    out.push(clash(mname, path, (&sname, &src), first, locs));
                    continue;
                }
                for (path, file, aliases) in files {
                    let dst = format!("{mp}/files/{}", pointer_escape(&path));
                    // The file itself points at the service, not at the options below it.
                    if let Some(loc) = locs.get(&src).cloned() {
                        locs.insert(format!("{dst}/content"), loc.clone());
                        locs.insert(dst.clone(), loc);
                    }
                    for (from, to) in aliases {
                        alias(locs, &format!("{src}{from}"), &format!("{dst}/content{to}"));
                    }
                    m.files.insert(path.clone(), file);
                    written.push((path, sname.clone(), src.clone()));
                }
            }
        }
    }
    if out.is_empty() { Ok(()) } else { Err(out) }
}

/// SC0215: native service `sname` would write `path`, which `first` (a
/// native service lowered before it: the user's, when `sname` is one a
/// module runs) or the stdlib's lowering (the machine's `files`, a
/// module's units) already wrote.
fn clash(
    mname: &str,
    path: &str,
    (sname, src): (&str, &str),
    first: Option<&(String, String, String)>,
    locs: &Locs,
) -> Diagnostic {
    let pos = crate::check::Positions(locs);
    match first {
        Some((_, other, other_src)) => Diagnostic::error(
            Code::FileClash,
            format!("machine `{mname}` runs two native services named `{sname}`: yours and one a module runs for it (`{path}`)"),
        )
        .with_label(pos.at(other_src), "your service")
        // Inside the stdlib the module's service is noise: the path names it.
        .with_label(pos.at(src).filter(crate::diag::Span::in_user), "the module's service")
        .with_help(format!("rename your native service `{other}`: its files are named after it")),
        None => Diagnostic::error(
            Code::FileClash,
            format!("machine `{mname}` gets `{path}` twice: from native service `{sname}` and from another part of the machine"),
        )
        .with_label(pos.at(src), "this service")
        .with_label(
            pos.at(&format!("/machines/{}/files/{}", pointer_escape(mname), pointer_escape(path))),
            "also written here",
        )
        .with_help("rename the service or the other file: a native service's files are named after it"),
    }
}

/// Copies the positions of the value at `from` and everything below it to
/// `to`: the file written from an option points where the option was written.
fn alias(locs: &mut Locs, from: &str, to: &str) {
    let copies: Vec<(String, crate::eval::Loc)> = locs
        .range::<str, _>((std::ops::Bound::Included(from), std::ops::Bound::Unbounded))
        .take_while(|(k, _)| k.starts_with(from))
        .filter(|(k, _)| k.len() == from.len() || k.as_bytes()[from.len()] == b'/')
        .map(|(k, l)| (format!("{to}{}", &k[from.len()..]), l.clone()))
        .collect();
    locs.extend(copies);
}

/// One file and where its values come from: (option pointer below the
/// service, content pointer) pairs.
type Lowered = (String, FileSpec, Vec<(String, String)>);

/// The files of native service `sname` (see `modules/native.ncl` for the
/// options).
fn files_of(sname: &str, svc: &NativeService, deploy_root: &str) -> Vec<Lowered> {
    let user = svc.user.as_deref().unwrap_or(sname);
    let group = svc.group.as_deref().unwrap_or(user);
    let description = svc.description.as_deref().unwrap_or(sname);
    let secret_env_path = format!("secrets/{sname}.env");
    let has_secrets = !svc.secret_environment.is_empty();
    let strict = svc.hardening == "strict";
    let job = svc.schedule.is_some();
    let mut caps: Vec<Value> = svc.capabilities.iter().map(|c| json!(c)).collect();
    if svc.ports.values().any(|p| p.port < 1024) && !svc.capabilities.iter().any(|c| c == "CAP_NET_BIND_SERVICE") {
        caps.push(json!("CAP_NET_BIND_SERVICE"));
    }
    let mut rw_paths: Vec<Value> = svc.state_directory.iter().map(|d| json!(d)).collect();
    rw_paths.extend(svc.read_write_paths.iter().cloned());

    let mut aliases: Vec<(String, String)> = vec![("/command".into(), "/Service/ExecStart".into())];
    let mut unit_sec = Map::new();
    unit_sec.insert("Description".into(), json!(description));
    unit_sec.insert("After".into(), json!("network-online.target"));
    unit_sec.insert("Wants".into(), json!("network-online.target"));
    if svc.description.is_some() {
        aliases.push(("/description".into(), "/Unit/Description".into()));
    }
    if !svc.documentation.is_empty() {
        unit_sec.insert("Documentation".into(), Value::Array(svc.documentation.clone()));
        aliases.push(("/documentation".into(), "/Unit/Documentation".into()));
    }
    let mut service = Map::new();
    service.insert("Type".into(), json!(if job { "oneshot" } else { "simple" }));
    service.insert("User".into(), json!(user));
    service.insert("Group".into(), json!(group));
    service.insert("ExecStart".into(), svc.command.clone());
    for (option, key) in [("user", "User"), ("group", "Group")] {
        aliases.push((format!("/{option}"), format!("/Service/{key}")));
    }
    // A oneshot job may only restart on failure (systemd refuses `always`).
    if !job || svc.restart == "on_failure" {
        service.insert("Restart".into(), json!(svc.restart.replace('_', "-")));
        service.insert("RestartSec".into(), svc.restart_sec.clone());
        aliases.push(("/restart".into(), "/Service/Restart".into()));
        aliases.push(("/restart_sec".into(), "/Service/RestartSec".into()));
    }
    if !svc.environment.is_empty() {
        service.insert("Environment".into(), Value::Object(svc.environment.clone()));
        aliases.push(("/environment".into(), "/Service/Environment".into()));
    }
    if has_secrets {
        service.insert(
            "EnvironmentFile".into(),
            json!(format!("{deploy_root}/{secret_env_path}")),
        );
    }
    if let Some(dir) = &svc.working_directory {
        service.insert("WorkingDirectory".into(), dir.clone());
        aliases.push(("/working_directory".into(), "/Service/WorkingDirectory".into()));
    }
    if !caps.is_empty() {
        for key in ["AmbientCapabilities", "CapabilityBoundingSet"] {
            service.insert(key.into(), Value::Array(caps.clone()));
            for i in 0..svc.capabilities.len() {
                aliases.push((format!("/capabilities/{i}"), format!("/Service/{key}/{i}")));
            }
        }
    }
    if strict {
        service.insert("NoNewPrivileges".into(), json!(true));
        service.insert("ProtectSystem".into(), json!("strict"));
        service.insert("ProtectHome".into(), json!(true));
        service.insert("PrivateTmp".into(), json!(true));
        if !rw_paths.is_empty() {
            service.insert("ReadWritePaths".into(), Value::Array(rw_paths));
            let state = usize::from(svc.state_directory.is_some());
            if state == 1 {
                aliases.push(("/state_directory".into(), "/Service/ReadWritePaths/0".into()));
            }
            for i in 0..svc.read_write_paths.len() {
                aliases.push((
                    format!("/read_write_paths/{i}"),
                    format!("/Service/ReadWritePaths/{}", i + state),
                ));
            }
        }
    }
    let mut unit = Map::new();
    unit.insert("Unit".into(), Value::Object(unit_sec));
    unit.insert("Service".into(), Value::Object(service));
    if !job {
        unit.insert("Install".into(), json!({ "WantedBy": "multi-user.target" }));
    }
    update(&mut unit, &svc.unit);
    // The user's overrides last: they win over what the options computed.
    for section in svc.unit.keys() {
        let s = pointer_escape(section);
        aliases.push((format!("/unit/{s}"), format!("/{s}")));
    }

    let mut files = vec![(
        format!("systemd/{sname}.service"),
        file(Format::Systemd, Value::Object(unit)),
        aliases,
    )];
    let mut sysusers = vec![
        json!(format!("# System user for {sname} (systemd-sysusers)")),
        json!(format!(
            "u {user} - \"{description}\" {}",
            svc.state_directory.as_deref().unwrap_or("-")
        )),
    ];
    if group != user {
        sysusers.push(json!(format!("g {group} -")));
        sysusers.push(json!(format!("m {user} {group}")));
    }
    files.push((
        format!("sysusers.d/{sname}.conf"),
        file(Format::Lines, Value::Array(sysusers)),
        vec![],
    ));
    if let Some(schedule) = &svc.schedule {
        let timer = json!({
            "Unit": { "Description": format!("{description}, on schedule") },
            "Timer": { "OnCalendar": schedule, "Persistent": true },
            "Install": { "WantedBy": "timers.target" },
        });
        let aliases = vec![("/schedule".into(), "/Timer/OnCalendar".into())];
        files.push((format!("systemd/{sname}.timer"), file(Format::Systemd, timer), aliases));
    }
    if let Some(dir) = &svc.state_directory {
        let lines = json!([
            format!("# State directory of {sname} (systemd-tmpfiles)"),
            format!("d {dir} 0750 {user} {group} -"),
        ]);
        files.push((format!("tmpfiles.d/{sname}.conf"), file(Format::Lines, lines), vec![]));
    }
    if has_secrets {
        let mut env = file(Format::Env, Value::Object(svc.secret_environment.clone()));
        env.secret = true;
        files.push((
            secret_env_path,
            env,
            vec![("/secret_environment".into(), String::new())],
        ));
    }
    files
}

fn file(format: Format, content: Value) -> FileSpec {
    FileSpec {
        format,
        content,
        secret: false,
        schema: None,
    }
}

/// `overrides` wins, leaf by leaf, recursing into records (`lib.update`).
fn update(base: &mut Map<String, Value>, overrides: &Map<String, Value>) {
    for (key, new) in overrides {
        match (base.get_mut(key), new) {
            (Some(Value::Object(old)), Value::Object(new)) => update(old, new),
            _ => {
                base.insert(key.clone(), new.clone());
            }
        }
    }
}

/// Reads the handlers of every proxy site whose module left them to the
/// compiler (`block`): from the site's block in the config it wrote, as the
/// format's writer understands it (`render::site_handlers`), each pointing
/// where its directive was written.
pub fn site_handlers(stack: &mut Stack, locs: &mut Locs) {
    for (mname, m) in &mut stack.machines {
        let mp = format!("/machines/{}", pointer_escape(mname));
        for (k, routes) in m.site_routes.iter_mut().enumerate() {
            let Some(from) = routes.block.take() else { continue };
            let Some(file) = m.files.get(&from.file) else { continue };
            let block = file
                .content
                .get("sites")
                .and_then(|s| s.get(&routes.site))
                .unwrap_or(&Value::Null);
            let Some(handlers) = crate::render::site_handlers(file.format, block, &from.targets) else {
                continue;
            };
            let block_ptr = format!(
                "{mp}/files/{}/content/sites/{}",
                pointer_escape(&from.file),
                pointer_escape(&routes.site)
            );
            let here = format!("{mp}/site_routes/{k}/handlers");
            for (i, (handler, at)) in handlers.into_iter().enumerate() {
                let h = format!("{here}/{i}");
                copy_loc(locs, &format!("{block_ptr}{}", at.directive), &h);
                copy_loc(locs, &format!("{block_ptr}{}", at.then), &format!("{h}/then"));
                for (p, path) in at.paths.iter().enumerate() {
                    copy_loc(locs, &format!("{block_ptr}{path}"), &format!("{h}/match/paths/{p}"));
                }
                if let Some(arg) = &at.arg {
                    let leaf = match handler.then {
                        Then::Respond { .. } => "respond/body",
                        _ => "proxy/upstream",
                    };
                    copy_loc(locs, &format!("{block_ptr}{arg}"), &format!("{h}/then/{leaf}"));
                }
                routes.handlers.push(handler);
            }
        }
    }
}

fn copy_loc(locs: &mut Locs, from: &str, to: &str) {
    if let Some(loc) = locs.get(from).cloned() {
        locs.insert(to.to_owned(), loc);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::eval::Loc;

    fn options(given: Value) -> Value {
        let mut full = json!({
            "documentation": [], "environment": {}, "secret_environment": {}, "ports": {},
            "restart": "always", "restart_sec": 5, "hardening": "strict",
            "read_write_paths": [], "capabilities": [], "unit": {},
            "command": "/usr/bin/app --serve",
        });
        full.as_object_mut().unwrap().extend(given.as_object().unwrap().clone());
        full
    }

    fn service(given: Value) -> NativeService {
        serde_json::from_value(options(given)).unwrap()
    }

    fn content<'a>(files: &'a [Lowered], path: &str) -> &'a Value {
        &files
            .iter()
            .find(|(p, ..)| p == path)
            .unwrap_or_else(|| panic!("no {path}"))
            .1
            .content
    }

    #[test]
    fn a_daemon_gets_a_hardened_unit_and_its_user() {
        let svc = service(json!({
            "state_directory": "/var/lib/app", "read_write_paths": ["/srv/app"],
            "ports": { "http": { "port": 80, "protocol": "tcp", "bind": "0.0.0.0", "public": true } },
            "secret_environment": { "TOKEN": { "$stackc_secret": { "name": "t" } } },
            "unit": { "Service": { "LimitNOFILE": 4096, "ProtectHome": false } },
        }));
        let files = files_of("app", &svc, "/etc/stackc");
        let paths: Vec<&str> = files.iter().map(|(p, ..)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "systemd/app.service",
                "sysusers.d/app.conf",
                "tmpfiles.d/app.conf",
                "secrets/app.env"
            ]
        );
        let unit = content(&files, "systemd/app.service");
        assert_eq!(unit["Service"]["Type"], "simple");
        assert_eq!(unit["Service"]["User"], "app");
        assert_eq!(unit["Service"]["Restart"], "always");
        // A port below 1024 needs the capability; state first, then the paths given.
        assert_eq!(unit["Service"]["AmbientCapabilities"], json!(["CAP_NET_BIND_SERVICE"]));
        assert_eq!(unit["Service"]["ReadWritePaths"], json!(["/var/lib/app", "/srv/app"]));
        assert_eq!(unit["Service"]["EnvironmentFile"], "/etc/stackc/secrets/app.env");
        // The user's raw settings win, leaf by leaf.
        assert_eq!(unit["Service"]["ProtectHome"], false);
        assert_eq!(unit["Service"]["LimitNOFILE"], 4096);
        assert_eq!(unit["Service"]["PrivateTmp"], true);
        assert_eq!(unit["Install"]["WantedBy"], "multi-user.target");
        assert_eq!(
            content(&files, "sysusers.d/app.conf"),
            &json!([
                "# System user for app (systemd-sysusers)",
                "u app - \"app\" /var/lib/app"
            ])
        );
        let env = files.iter().find(|(p, ..)| p == "secrets/app.env").unwrap();
        assert!(env.1.secret, "the environment file holds secrets");
    }

    #[test]
    fn a_job_gets_a_timer_and_restarts_only_on_failure() {
        let svc = service(json!({ "schedule": "daily", "user": "svc", "group": "staff", "hardening": "none" }));
        let files = files_of("backup", &svc, "/etc/stackc");
        let unit = content(&files, "systemd/backup.service");
        assert_eq!(unit["Service"]["Type"], "oneshot");
        assert!(
            unit["Service"].get("Restart").is_none(),
            "systemd refuses Restart=always for a oneshot"
        );
        assert!(unit.get("Install").is_none(), "the timer is enabled, not the job");
        assert!(unit["Service"].get("NoNewPrivileges").is_none());
        assert_eq!(content(&files, "systemd/backup.timer")["Timer"]["OnCalendar"], "daily");
        let sysusers = content(&files, "sysusers.d/backup.conf");
        assert_eq!(sysusers[2], "g staff -");
        assert_eq!(sysusers[3], "m svc staff");
        let on_failure = service(json!({ "schedule": "daily", "restart": "on_failure" }));
        let unit = content(&files_of("backup", &on_failure, "/r"), "systemd/backup.service").clone();
        assert_eq!(unit["Service"]["Restart"], "on-failure");
    }

    #[test]
    fn written_files_point_where_their_options_were_written() {
        let file = std::sync::Arc::new(crate::diag::SourceFile {
            name: "prod.ncl".into(),
            text: "x".repeat(100).into(),
        });
        let span = |start: usize| {
            Some(crate::diag::Span {
                file: file.clone(),
                range: start..start + 1,
            })
        };
        let mut locs = Locs::new();
        locs.insert(
            "/machines/m/native/app".into(),
            Loc {
                key: span(1),
                value: span(2),
            },
        );
        locs.insert(
            "/machines/m/native/app/command".into(),
            Loc {
                key: span(3),
                value: span(4),
            },
        );
        locs.insert(
            "/machines/m/native/app/environment/A".into(),
            Loc {
                key: span(5),
                value: span(6),
            },
        );
        let mut stack: Stack = serde_json::from_value(json!({
            "stackc": { "output_version": 1 }, "name": "s",
            "secrets": { "scheme": "v2", "scope": "s", "external": [], "dir": "secrets" },
            "machines": { "m": { "address": "10.0.0.1", "deploy_root": "/etc/stackc", "files": {},
                "native": { "app": options(json!({ "environment": { "A": "1" } })) } } },
        }))
        .unwrap();
        native(&mut stack, &mut locs).unwrap();
        let at = |p: &str| locs.get(p).and_then(|l| l.value.clone()).map(|s| s.range.start);
        assert_eq!(
            at("/machines/m/files/systemd~1app.service/content/Service/ExecStart"),
            Some(4)
        );
        assert_eq!(
            at("/machines/m/files/systemd~1app.service/content/Service/Environment/A"),
            Some(6)
        );
        assert_eq!(at("/machines/m/files/systemd~1app.service"), Some(2));
        assert!(stack.machines["m"].native.is_empty(), "lowered once");
    }
}
