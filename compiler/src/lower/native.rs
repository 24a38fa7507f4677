//! The files of a native service — its unit, timer, environment file,
//! sysusers.d and tmpfiles.d entries — from the options its contract
//! checked (`NativeService` in `modules/native.ncl`).

use serde_json::{Map, Value, json};

use super::Lowered;
use crate::eval::{Loc, Locs, pointer_escape};
use crate::model::{FileSpec, Format, Hardening, Listen, Machine, NativeService, Restart};

/// The facts of machine `mname`'s own native services: a listen per port
/// and their units, before the machine's other facts (as the stdlib's part
/// for them was). A listen points where its port was written, its service
/// and unit where the service was named.
pub(super) fn facts(mname: &str, m: &mut Machine, locs: &mut Locs) {
    let mp = format!("/machines/{}", pointer_escape(mname));
    let ports: usize = m.native.values().map(|s| s.ports.len()).sum();
    let units: usize = m.native.values().map(|s| 1 + usize::from(s.schedule.is_some())).sum();
    super::shift(locs, &format!("{mp}/listens/"), ports, m.listens.len());
    super::shift(locs, &format!("{mp}/units/"), units, m.units.len());
    let mut listens = Vec::with_capacity(ports + m.listens.len());
    let mut unit_names = Vec::with_capacity(units + m.units.len());
    for (sname, svc) in &m.native {
        let sp = format!("{mp}/native/{}", pointer_escape(sname));
        // The service's name in the user's file, not its whole record.
        let named = locs.get(&sp).map(|l| Loc {
            key: l.key.clone(),
            value: None,
        });
        for (pname, p) in &svc.ports {
            let at = format!("{mp}/listens/{}", listens.len());
            super::alias(locs, &format!("{sp}/ports/{}", pointer_escape(pname)), &at);
            if let Some(named) = &named {
                locs.insert(format!("{at}/service"), named.clone());
            }
            listens.push(Listen {
                service: sname.clone(),
                name: pname.clone(),
                port: p.port,
                protocol: p.protocol,
                bind: p.bind.clone(),
                public: p.public,
                published: false,
                to: p.to,
                container_port: None,
            });
        }
        let kinds: &[&str] = if svc.schedule.is_some() {
            &["service", "timer"]
        } else {
            &["service"]
        };
        for kind in kinds {
            if let Some(named) = &named {
                locs.insert(format!("{mp}/units/{}", unit_names.len()), named.clone());
            }
            unit_names.push(format!("{sname}.{kind}"));
        }
    }
    listens.append(&mut m.listens);
    m.listens = listens;
    unit_names.append(&mut m.units);
    m.units = unit_names;
}

/// The files of native service `sname` (see `modules/native.ncl` for the
/// options).
pub(super) fn files_of(sname: &str, svc: &NativeService, deploy_root: &str) -> Vec<Lowered> {
    let user = svc.user.as_deref().unwrap_or(sname);
    let group = svc.group.as_deref().unwrap_or(user);
    let description = svc.description.as_deref().unwrap_or(sname);
    let secret_env_path = format!("secrets/{sname}.env");
    let has_secrets = !svc.secret_environment.is_empty();
    let strict = svc.hardening == Hardening::Strict;
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
    if !job || svc.restart == Restart::OnFailure {
        let restart = match svc.restart {
            Restart::Always => "always",
            Restart::OnFailure => "on-failure",
            Restart::No => "no",
        };
        service.insert("Restart".into(), json!(restart));
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
    super::update(&mut unit, &svc.unit);
    // The user's overrides last: they win over what the options computed.
    for section in svc.unit.keys() {
        let s = pointer_escape(section);
        aliases.push((format!("/unit/{s}"), format!("/{s}")));
    }

    let mut files = vec![(
        format!("systemd/{sname}.service"),
        FileSpec::new(Format::Systemd, Value::Object(unit)),
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
        FileSpec::new(Format::Lines, Value::Array(sysusers)),
        vec![],
    ));
    if let Some(schedule) = &svc.schedule {
        let timer = json!({
            "Unit": { "Description": format!("{description}, on schedule") },
            "Timer": { "OnCalendar": schedule, "Persistent": true },
            "Install": { "WantedBy": "timers.target" },
        });
        let aliases = vec![("/schedule".into(), "/Timer/OnCalendar".into())];
        files.push((
            format!("systemd/{sname}.timer"),
            FileSpec::new(Format::Systemd, timer),
            aliases,
        ));
    }
    if let Some(dir) = &svc.state_directory {
        let lines = json!([
            format!("# State directory of {sname} (systemd-tmpfiles)"),
            format!("d {dir} 0750 {user} {group} -"),
        ]);
        files.push((
            format!("tmpfiles.d/{sname}.conf"),
            FileSpec::new(Format::Lines, lines),
            vec![],
        ));
    }
    if has_secrets {
        let mut env = FileSpec::new(Format::Env, Value::Object(svc.secret_environment.clone()));
        env.secret = true;
        files.push((
            secret_env_path,
            env,
            vec![("/secret_environment".into(), String::new())],
        ));
    }
    files
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::eval::{Loc, Locs};
    use crate::model::Stack;

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
        super::super::lower(&mut stack, &mut locs).unwrap();
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
