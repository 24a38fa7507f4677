//! Bundles that work where they are deployed: every layout of the Matrix
//! stack builds and its containerised proxy never sends to loopback, one
//! machine's output is cut after the whole stack is checked, and a ruleset
//! that fails to load leaves the machine closed but for SSH.

mod common;

use std::process::Command;

use common::{TempDir, repo, stackc, text};

/// The Matrix stack with `proxy`, `auth` and `matrix` on the machines given.
fn matrix_stack(proxy: &str, auth: &str, matrix: &str, mode: &str) -> String {
    let mut machines: Vec<&str> = vec![proxy, auth, matrix];
    machines.sort();
    machines.dedup();
    let addresses: Vec<String> = machines
        .iter()
        .enumerate()
        .map(|(i, m)| format!("{m}.address = \"192.0.2.{}\"", 10 + i))
        .collect();
    format!(
        r#"let stackc = import "stackc.ncl" in
let matrix = stackc.matrix {{
  server_name = "example.org",
  hosts = {{ matrix = "matrix.example.org", element = "chat.example.org", mas = "account.example.org", auth = "login.example.org" }},
  machines = {{ proxy = "{proxy}", auth = "{auth}", matrix = "{matrix}" }},
  proxy = '{mode},
  acme_email = "ops@example.org",
  users.bob = {{ displayname = "Bob", email = "bob@example.org" }},
}}
in
stackc.stack {{ name = "layout", machines = matrix.machines & {{ {} }} }}
"#,
        addresses.join(", ")
    )
}

#[test]
fn every_layout_of_the_matrix_stack_builds_and_its_proxy_never_sends_to_loopback() {
    let layouts = [
        ("one", "one", "one"),
        ("edge", "edge", "matrix"),
        ("edge", "auth", "auth"),
        ("edge", "auth", "edge"),
        ("edge", "auth", "matrix"),
    ];
    for (proxy, auth, matrix) in layouts {
        for mode in ["container", "native"] {
            let what = format!("layout {proxy}/{auth}/{matrix}, {mode} Caddy");
            let t = TempDir::new("layout");
            std::fs::write(t.path().join("prod.ncl"), matrix_stack(proxy, auth, matrix, mode)).unwrap();
            let o = stackc()
                .args(["build", "prod.ncl", "--placeholder-secrets", "-o", "out", "-q"])
                .current_dir(t.path())
                .output()
                .unwrap();
            assert_eq!(o.status.code(), Some(0), "{what}: {:?}", text(&o));
            let machine = t.path().join("out").join(proxy);
            let caddyfile = std::fs::read_to_string(machine.join("caddy/Caddyfile")).unwrap();
            let upstreams: Vec<&str> = caddyfile
                .lines()
                .filter_map(|l| l.trim().strip_prefix("reverse_proxy "))
                .map(|l| l.trim_end_matches(" {"))
                .collect();
            assert!(!upstreams.is_empty(), "{caddyfile}");
            let loopback = |up: &&str| up.starts_with("127.") || up.starts_with("[::1]") || up.starts_with("localhost");
            if mode == "container" {
                // In its container, loopback is Caddy itself: a service of
                // its own machine is a compose service name.
                assert!(!upstreams.iter().any(loopback), "{what}: {upstreams:?}");
                if auth == proxy {
                    assert!(upstreams.contains(&"authelia:9091"), "{what}: {upstreams:?}");
                }
                if matrix == proxy {
                    assert!(upstreams.contains(&"synapse:8008"), "{what}: {upstreams:?}");
                }
            } else {
                // Native Caddy has a unit that starts it, and reaches its own
                // machine's published ports on loopback, others never.
                assert!(
                    machine.join("systemd/caddy.service").exists(),
                    "{what}: no caddy.service"
                );
                // Authelia's site has one upstream, the Matrix hosts five.
                let expected = usize::from(auth == proxy) + 5 * usize::from(matrix == proxy);
                let on_loopback = upstreams.iter().filter(|u| loopback(u)).count();
                assert_eq!(on_loopback, expected, "{what}: {upstreams:?}");
            }
        }
    }
}

#[test]
fn one_machine_is_cut_from_the_whole_stack_after_every_check() {
    let entry = repo().join("examples/matrix-3-machine/prod.ncl");
    let t = TempDir::new("machine");
    let out = t.path().join("matrix.json");
    let o = stackc()
        .args([
            "build",
            "--placeholder-secrets",
            "--machine",
            "matrix",
            "--format",
            "json",
            "-o",
        ])
        .arg(&out)
        .arg(&entry)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));
    let bundle: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let paths: Vec<&str> = bundle["files"]
        .as_array()
        .expect("files")
        .iter()
        .filter_map(|f| f["path"].as_str())
        .collect();
    assert!(paths.contains(&"synapse/homeserver.yaml"), "{paths:?}");
    assert!(
        !paths.iter().any(|k| k.contains("Caddyfile")),
        "another machine's file: {paths:?}"
    );
}

#[test]
fn a_ruleset_that_fails_to_load_leaves_only_ssh_open() {
    let Some(unshare) = common::require_tool(common::on_path("unshare"), "unshare (util-linux)") else {
        return;
    };
    let Some(nft) = common::require_tool(common::on_path("nft"), "nft (nftables)") else {
        return;
    };
    let t = TempDir::new("fallback");
    let o = stackc()
        .args(["build", "--placeholder-secrets", "-q", "-o"])
        .arg(t.path().join("out"))
        .arg(repo().join("examples/lair-chat/prod.ncl"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));
    let chat = t.path().join("out/chat");
    // The unit's own command, pointed at the bundle, with a broken ruleset.
    let unit = std::fs::read_to_string(chat.join("systemd/stackc-firewall.service")).unwrap();
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart=/bin/sh -c "))
        .expect("the firewall unit starts through sh")
        .trim_matches('"')
        .replace("/etc/stackc/", &format!("{}/", chat.display()))
        .replace("/usr/sbin/nft", &nft.to_string_lossy());
    std::fs::write(
        chat.join("firewall/rules.nft"),
        "table inet stackc { this is not nft }\n",
    )
    .unwrap();
    let script = format!(
        // A subshell: the command ends with `exit 1` when it falls back.
        "( {exec} )\nstatus=$?\n{} list table inet stackc\nexit $status",
        nft.display()
    );
    let o = Command::new(&unshare)
        .args(["--net", "sh", "-c", &script])
        .output()
        .unwrap();
    let (out, err) = text(&o);
    assert_eq!(
        o.status.code(),
        Some(1),
        "the unit must fail when rules.nft does not load: {out}{err}"
    );
    assert!(out.contains("policy drop"), "the fallback is loaded: {out}{err}");
    assert!(out.contains("tcp dport 22 accept"), "SSH stays open: {out}");
    assert!(
        !out.contains("8080") && !out.contains("443"),
        "nothing else is open: {out}"
    );
}

#[test]
fn owners_travel_with_the_tar_and_unpack_as_recorded() {
    let t = TempDir::new("owners");
    let out = t.path().join("matrix.tar");
    let o = stackc()
        .args([
            "build",
            "--placeholder-secrets",
            "--machine",
            "matrix",
            "--format",
            "tar",
            "-o",
        ])
        .arg(&out)
        .arg(repo().join("examples/matrix-3-machine/prod.ncl"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));
    // GNU tar as root, as docs/deploy.md says, applies the numeric owners.
    let dest = t.path().join("etc-stackc");
    std::fs::create_dir_all(&dest).unwrap();
    let o = Command::new("tar")
        .args(["-xpf"])
        .arg(&out)
        .args(["--same-owner", "-C"])
        .arg(&dest)
        .output()
        .unwrap();
    assert!(o.status.success(), "{:?}", text(&o));
    use std::os::unix::fs::MetadataExt;
    let owner = |p: &str| {
        let m = std::fs::metadata(dest.join(p)).unwrap();
        (m.uid(), m.gid(), m.mode() & 0o777)
    };
    if running_as_root() {
        assert_eq!(owner("synapse/signing.key"), (991, 991, 0o600), "Synapse reads its key");
        assert_eq!(
            owner("mas/secrets/mas-encryption"),
            (65532, 65532, 0o600),
            "MAS reads its secrets"
        );
        assert_eq!(owner("bridges/instagram/config.yaml"), (1337, 1337, 0o600));
        assert_eq!(owner("compose.yaml"), (0, 0, 0o644));
        // And the container's user really reads it, through the folders
        // (a 0700 root folder would stop it at the door).
        for (uid, file) in [
            ("991", "synapse/secrets/pgpass"),
            ("65532", "mas/secrets/mas-encryption"),
        ] {
            let o = Command::new("setpriv")
                .args(["--reuid", uid, "--regid", uid, "--clear-groups", "cat"])
                .arg(dest.join(file))
                .output()
                .unwrap();
            assert!(o.status.success(), "uid {uid} cannot read {file}: {:?}", text(&o));
        }
    } else {
        eprintln!("not root: tar cannot apply owners; checked the modes only");
        assert_eq!(owner("synapse/signing.key").2, 0o600);
    }
}

/// Whether this process runs as root (reads `/proc/self/status`).
fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// A database on a backend used by an app on the edge: the app declares the
/// connection (`roles.db_clients` with its target), the backend's firewall
/// opens the port to the edge's private address only, and the check pairs
/// the app's credentials with what the server creates. Without the declared
/// port, nothing opens it, and the check says so.
#[test]
fn a_declared_connection_to_another_machine_opens_its_port_there() {
    let stack = |target_port: &str| {
        format!(
            r#"let stackc = import "stackc.ncl" in
let pw = stackc.secret.password {{ name = "app-db", length = 32 }} in
let pg = stackc.modules.postgres.lower "postgres" {{
  superuser_password = stackc.secret.password {{ name = "pg-super", length = 32 }},
  databases.app = {{ owner = "app", password = pw }},
}} in
stackc.stack {{
  name = "app-and-db",
  networks = {{ internet = {{ cidr = "203.0.113.0/24", public = true }}, lan = {{ cidr = "10.0.7.0/24" }} }},
  machines = {{
    edge = {{
      addresses = {{ internet = "203.0.113.70", lan = "10.0.7.1" }},
      containers.app = {{
        image = "example/app:2.1.0",
        environment = {{ PGHOST = "10.0.7.2", PGUSER = "app", PGDATABASE = "app" }},
        secret_environment.PGPASSWORD = pw,
        roles.db_clients.main = {{
          host.env = "PGHOST",
          user.env = "PGUSER",
          database.env = "PGDATABASE",
          password.env = "PGPASSWORD",
          target = "postgres",
          target_machine = "db",
          {target_port}
        }},
      }},
    }},
    db = {{
      addresses.lan = "10.0.7.2",
      containers = pg.containers & {{ postgres.ports.pg = {{ port = 5432, bind = "10.0.7.2" }} }},
      files = pg.files,
    }},
  }},
}}
"#
        )
    };
    let t = TempDir::new("connection");
    let entry = t.path().join("prod.ncl");
    std::fs::write(&entry, stack(r#"target_port = "pg","#)).unwrap();
    let out = t.path().join("out");
    let o = stackc()
        .args(["build", "--placeholder-secrets", "-o"])
        .arg(&out)
        .arg(&entry)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));
    let rules = std::fs::read_to_string(out.join("db/firewall/rules.nft")).unwrap();
    assert!(rules.contains("ip saddr 10.0.7.1 tcp dport 5432 accept"), "{rules}");
    assert!(!rules.contains("203.0.113.70"), "only the private address: {rules}");

    std::fs::write(&entry, stack("")).unwrap();
    let o = stackc().args(["check"]).arg(&entry).output().unwrap();
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("SC0505") && err.contains("does not open port 5432"),
        "{err}"
    );
}

/// One port, two sockets: `stats` holds 9180 on loopback and Caddy's metrics
/// listener holds it on the private address. The scrape lands on Caddy's
/// socket (the destination address picks it), so the stack checks; it was
/// SC0531 when the first socket on the port was taken for the one reached.
/// (`scrape-bound-elsewhere` in tests/bad is the converse: no socket where
/// the scrape goes.)
#[test]
fn a_connection_lands_on_the_socket_bound_where_it_goes() {
    let t = TempDir::new("same-port");
    let entry = t.path().join("prod.ncl");
    std::fs::write(
        &entry,
        r#"let stackc = import "stackc.ncl" in
stackc.stack {
  name = "same-port",
  networks.lan = { cidr = "10.1.0.0/24" },
  monitoring.machine = "ops",
  machines = {
    app = {
      addresses.lan = "10.1.0.2",
      native.stats = { command = "/usr/bin/stats", ports.http = { port = 9180, bind = "127.0.0.1" } },
      proxy.sites."app.example.org".upstream = { service = "stats", port = "http" },
    },
    ops.addresses.lan = "10.1.0.9",
  },
}
"#,
    )
    .unwrap();
    let o = stackc().args(["check", "--no-cache"]).arg(&entry).output().unwrap();
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
}
