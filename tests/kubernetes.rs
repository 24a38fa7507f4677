//! Kubernetes in production, on a stack of our own (`tests/kubernetes/shop.ncl`,
//! not an example): a web front, an API on PostgreSQL, a worker on Redis and
//! PostgreSQL, a TCP gateway behind a load balancer. The NetworkPolicies must
//! let through exactly what the stack implies; every manifest must pass
//! `kubernetes-validate --strict` (the tool and version tests/conformance.rs
//! uses for the goldens).

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Value, json};

const K8S_VERSION: &str = "1.37.0";

fn build_shop(out: &Path) {
    let src = common::TempDir::new("k8s-shop-src");
    std::fs::copy(
        common::repo().join("tests/kubernetes/shop.ncl"),
        src.path().join("prod.ncl"),
    )
    .unwrap();
    let o = common::stackc()
        .current_dir(src.path())
        .args(["build", "prod.ncl", "--placeholder-secrets", "-o"])
        .arg(out)
        .output()
        .unwrap();
    let (stdout, stderr) = common::text(&o);
    assert!(o.status.success(), "build failed:\n{stdout}\n{stderr}");
}

/// Every manifest under `k8s/`, parsed, by its path below it.
fn manifests(root: &Path) -> BTreeMap<String, Value> {
    common::tree(&root.join("cluster/k8s"))
        .into_iter()
        .filter(|(path, _)| !path.ends_with('/'))
        .map(|(path, (bytes, _))| {
            let v: Value = yaml_serde::from_str(std::str::from_utf8(&bytes).unwrap()).unwrap();
            (path, v)
        })
        .collect()
}

/// Who may connect to `workload`'s pods, on which ports: one entry per
/// rule, peers as `ingress-controller`, a workload's name, or `anyone`.
fn admitted(all: &BTreeMap<String, Value>, workload: &str) -> Vec<(Vec<String>, Vec<String>)> {
    let Some(p) = all.get(&format!("{workload}/networkpolicy.yaml")) else {
        return Vec::new();
    };
    assert_eq!(
        p["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/name"],
        workload
    );
    assert_eq!(p["spec"]["policyTypes"], json!(["Ingress"]));
    p["spec"]["ingress"]
        .as_array()
        .unwrap()
        .iter()
        .map(|rule| {
            let peers = match rule.get("from") {
                None => vec!["anyone".to_string()],
                Some(from) => from
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|peer| {
                        if peer.get("namespaceSelector").is_some() {
                            assert_eq!(
                                peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
                                "ingress-nginx"
                            );
                            assert_eq!(
                                peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"],
                                "ingress-nginx"
                            );
                            "ingress-controller".to_string()
                        } else {
                            peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"]
                                .as_str()
                                .unwrap()
                                .to_string()
                        }
                    })
                    .collect(),
            };
            let ports = rule["ports"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| format!("{}/{}", p["port"].as_str().unwrap(), p["protocol"].as_str().unwrap()))
                .collect();
            (peers, ports)
        })
        .collect()
}

fn rule(peers: &[&str], ports: &[&str]) -> (Vec<String>, Vec<String>) {
    (
        peers.iter().map(|s| s.to_string()).collect(),
        ports.iter().map(|s| s.to_string()).collect(),
    )
}

#[test]
fn network_policies_admit_exactly_what_the_stack_implies() {
    let out = common::TempDir::new("k8s-shop");
    build_shop(&out.path().join("bundle"));
    let all = manifests(&out.path().join("bundle"));

    // Every pod of the namespace refuses connections by default.
    let deny = &all["01-default-deny.yaml"];
    assert_eq!(deny["spec"]["podSelector"], json!({}));
    assert_eq!(deny["spec"]["policyTypes"], json!(["Ingress"]));
    assert!(deny["spec"].get("ingress").is_none());

    // Sites: the ingress controller, on the routed port only.
    assert_eq!(
        admitted(&all, "web"),
        vec![rule(&["ingress-controller"], &["http/TCP"])]
    );
    assert_eq!(
        admitted(&all, "api"),
        vec![rule(&["ingress-controller"], &["http/TCP"])]
    );
    // The API's and the worker's DATABASE_URL (joined around the password)
    // name `postgres`; the worker's REDIS_URL names `redis`.
    assert_eq!(
        admitted(&all, "postgres"),
        vec![rule(&["api", "worker"], &["postgres/TCP"])]
    );
    assert_eq!(admitted(&all, "redis"), vec![rule(&["worker"], &["redis/TCP"])]);
    // A load balancer's Service is public.
    assert_eq!(admitted(&all, "gateway"), vec![rule(&["anyone"], &["tcp/TCP"])]);
    // The worker serves nothing: the default denies all.
    assert!(!all.contains_key("worker/networkpolicy.yaml"));
}

#[test]
fn production_objects_of_the_shop() {
    let out = common::TempDir::new("k8s-shop-objects");
    build_shop(&out.path().join("bundle"));
    let all = manifests(&out.path().join("bundle"));

    // Replicated workloads get a disruption budget; single ones none.
    for (w, replicated) in [("api", true), ("web", true), ("redis", false), ("worker", false)] {
        let pdb = all.get(&format!("{w}/pdb.yaml"));
        assert_eq!(pdb.is_some(), replicated, "{w}: PodDisruptionBudget");
        if let Some(pdb) = pdb {
            assert_eq!(pdb["spec"]["maxUnavailable"], 1);
            assert_eq!(pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"], w);
        }
    }

    // The StatefulSet's governing Service is headless; clients keep the
    // ClusterIP one.
    let sts = &all["postgres/statefulset.yaml"];
    assert_eq!(sts["spec"]["serviceName"], "postgres-headless");
    assert_eq!(all["postgres/service-headless.yaml"]["spec"]["clusterIP"], "None");
    assert!(all["postgres/service.yaml"]["spec"].get("clusterIP").is_none());

    // Pod and container security: non-root as the numeric user, nothing
    // else allowed.
    let api = &all["api/deployment.yaml"]["spec"]["template"]["spec"];
    assert_eq!(
        api["securityContext"],
        json!({"runAsNonRoot": true, "runAsUser": 10001, "runAsGroup": 10001, "seccompProfile": {"type": "RuntimeDefault"}})
    );
    let c = &api["containers"][0];
    assert_eq!(
        c["securityContext"],
        json!({"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}, "readOnlyRootFilesystem": true, "runAsNonRoot": true})
    );
    // A read-only root keeps /tmp writable.
    assert!(
        c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["mountPath"] == "/tmp")
    );
    // The start-up allowance: 60 × 10 s before liveness may kill it.
    assert_eq!(c["startupProbe"]["failureThreshold"], 60);
    assert_eq!(c["startupProbe"]["httpGet"], c["livenessProbe"]["httpGet"]);
    // PostgreSQL (module) runs as the Alpine image's postgres user.
    assert_eq!(sts["spec"]["template"]["spec"]["securityContext"]["runAsUser"], 70);

    // The API accepts 20M bodies: the Ingress lets them through.
    let ing = &all["ingress/shop-example-com.yaml"];
    assert_eq!(
        ing["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"],
        "20m"
    );
}

#[test]
fn the_shop_passes_kubernetes_validate_strict() {
    let Some(tool) = common::require_tool(
        common::tools_prefix().join("bin/kubernetes-validate"),
        "kubernetes-validate",
    ) else {
        return;
    };
    let out = common::TempDir::new("k8s-shop-validate");
    let bundle = out.path().join("bundle");
    build_shop(&bundle);
    let files: Vec<String> = common::tree(&bundle.join("cluster/k8s"))
        .into_keys()
        .filter(|p| !p.ends_with('/'))
        .collect();
    assert!(files.len() > 20, "{files:?}");
    for f in files {
        let o = std::process::Command::new(&tool)
            .env("HOME", out.path())
            .env("XDG_CACHE_HOME", out.path().join("cache"))
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .args(["--strict", "-k", K8S_VERSION, &f])
            .current_dir(bundle.join("cluster/k8s"))
            .output()
            .unwrap();
        let (stdout, stderr) = common::text(&o);
        let all = format!("{stdout}{stderr}");
        assert!(
            o.status.success()
                && !all.contains("ERROR")
                && !all.contains("WARN")
                && all.contains(" passed for resource "),
            "{f}: {all}"
        );
    }
}
