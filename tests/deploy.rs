//! The manifests in `deploy/`, as `kubectl kustomize` renders them for each overlay, hold what
//! contract §5 promises: the DaemonSet's mounts and security context, least-privilege RBAC,
//! the probes, and a config file that the real binary accepts (`ringtail check-config`).
//!
//! Needs `kubectl` (it bundles kustomize). Without it these tests fail: run
//! `scripts/ensure-deps`.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use serde_yaml::Value;

mod support;
use support::monitoring::render_overlay;

const OVERLAYS: [&str; 2] = ["dev", "prod"];
const NAMESPACE: &str = "ringtail";
const CONFIG_PATH: &str = "/etc/ringtail/ringtail.yaml";

/// The host paths and whether the container may write them (contract §5), and the node's
/// /etc/localtime, for kubelet.log's klog times.
const HOST_MOUNTS: [(&str, bool); 7] = [
    ("/etc/localtime", false),
    ("/var/log/pods", false),
    ("/var/log/journal", false),
    ("/run/log/journal", false),
    ("/var/lib/rancher/rke2/agent/logs", false),
    ("/var/lib/rancher/rke2/agent/containerd", false),
    ("/var/lib/ringtail", true),
];

/// `kubectl kustomize deploy/overlays/<overlay>`, parsed into one value per document. Rendered
/// once per overlay for the whole test binary.
fn rendered(overlay: &str) -> &'static [Value] {
    static DEV: OnceLock<Vec<Value>> = OnceLock::new();
    static PROD: OnceLock<Vec<Value>> = OnceLock::new();
    let cell = match overlay {
        "dev" => &DEV,
        "prod" => &PROD,
        other => panic!("no overlay {other:?} in this test"),
    };
    cell.get_or_init(|| render(overlay))
}

fn render(overlay: &str) -> Vec<Value> {
    let docs = render_overlay(overlay);
    assert!(!docs.is_empty(), "{overlay}: kustomize rendered nothing");
    docs
}

// ---------------------------------------------------------------- small YAML helpers

/// The value at a dotted path (`spec.template.spec`); `Null` when any step is missing.
fn at<'a>(v: &'a Value, path: &str) -> &'a Value {
    static NULL: Value = Value::Null;
    path.split('.')
        .try_fold(v, |v, key| v.get(key))
        .unwrap_or(&NULL)
}

fn str_at<'a>(v: &'a Value, path: &str) -> &'a str {
    at(v, path)
        .as_str()
        .unwrap_or_else(|| panic!("{path} is not a string: {:?}", at(v, path)))
}

fn seq_at<'a>(v: &'a Value, path: &str) -> &'a [Value] {
    at(v, path)
        .as_sequence()
        .map(Vec::as_slice)
        .unwrap_or_else(|| panic!("{path} is not a list: {:?}", at(v, path)))
}

fn strings(v: &Value, path: &str) -> Vec<String> {
    seq_at(v, path)
        .iter()
        .map(|s| {
            s.as_str()
                .unwrap_or_else(|| panic!("{path}: {s:?} is not a string"))
                .to_string()
        })
        .collect()
}

fn all_of<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter()
        .filter(|d| d.get("kind").and_then(Value::as_str) == Some(kind))
        .collect()
}

fn one_of<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found = all_of(docs, kind);
    assert_eq!(
        found.len(),
        1,
        "expected exactly one {kind}, found {}",
        found.len()
    );
    found[0]
}

fn daemonset(docs: &[Value]) -> &Value {
    one_of(docs, "DaemonSet")
}

fn pod_spec(ds: &Value) -> &Value {
    at(ds, "spec.template.spec")
}

fn container(ds: &Value) -> &Value {
    let containers = seq_at(pod_spec(ds), "containers");
    assert_eq!(containers.len(), 1, "one container, ringtail");
    &containers[0]
}

/// Resolves a probe's or Service's port (a number, or the name of a container port).
fn port_number(c: &Value, port: &Value) -> u64 {
    if let Some(n) = port.as_u64() {
        return n;
    }
    let name = port.as_str().expect("a port is a number or a name");
    seq_at(c, "ports")
        .iter()
        .find(|p| p.get("name").and_then(Value::as_str) == Some(name))
        .and_then(|p| p.get("containerPort").and_then(Value::as_u64))
        .unwrap_or_else(|| panic!("no container port named {name:?}"))
}

// ---------------------------------------------------------------- the DaemonSet

#[test]
fn daemonset_mounts_are_the_contract_ones_and_only_positions_are_writable() {
    for overlay in OVERLAYS {
        let ds = daemonset(rendered(overlay));
        let spec = pod_spec(ds);
        let c = container(ds);

        let volumes: BTreeMap<&str, &Value> = seq_at(spec, "volumes")
            .iter()
            .map(|v| (str_at(v, "name"), v))
            .collect();
        // mount path -> (volume, readOnly)
        let mounts: BTreeMap<&str, (&Value, bool)> = seq_at(c, "volumeMounts")
            .iter()
            .map(|m| {
                let vol = volumes
                    .get(str_at(m, "name"))
                    .unwrap_or_else(|| panic!("{overlay}: mount {m:?} has no volume"));
                let ro = at(m, "readOnly").as_bool().unwrap_or(false);
                (str_at(m, "mountPath"), (*vol, ro))
            })
            .collect();

        let mut expected: Vec<&str> = HOST_MOUNTS.iter().map(|(p, _)| *p).collect();
        expected.push("/etc/ringtail");
        expected.push("/tmp");
        expected.sort_unstable();
        assert_eq!(
            mounts.keys().copied().collect::<Vec<_>>(),
            expected,
            "{overlay}: the container mounts exactly the contract's paths and the config"
        );
        assert_eq!(
            volumes.len(),
            expected.len(),
            "{overlay}: no unused volumes"
        );

        // /tmp (the root filesystem is read-only) is a small in-memory scratch, for `ringtail
        // tap --config`'s throwaway positions; never a host path.
        let (tmp, tmp_ro) = mounts["/tmp"];
        assert!(!tmp_ro, "{overlay}: /tmp is writable");
        assert_eq!(str_at(tmp, "emptyDir.medium"), "Memory", "{overlay}");
        assert_eq!(str_at(tmp, "emptyDir.sizeLimit"), "16Mi", "{overlay}");

        for (path, writable) in HOST_MOUNTS {
            let (vol, ro) = mounts[path];
            // Mounted at the node's own path, so the config's paths read the same.
            assert_eq!(str_at(vol, "hostPath.path"), path, "{overlay}: {path}");
            assert_eq!(
                ro, !writable,
                "{overlay}: {path} readOnly must be {}",
                !writable
            );
            let ty = at(vol, "hostPath.type").as_str().unwrap_or("");
            if writable {
                assert_eq!(ty, "DirectoryOrCreate", "{overlay}: {path}");
            } else {
                // Never ask the kubelet to create a directory that is only read.
                assert!(!ty.ends_with("OrCreate"), "{overlay}: {path} has type {ty}");
            }
        }
        assert_eq!(
            at(volumes["state"], "hostPath.path").as_str(),
            Some("/var/lib/ringtail")
        );
        // Directory for the path every kubelet node has; no check for the optional ones.
        let ty = |p: &str| at(mounts[p].0, "hostPath.type").as_str().unwrap_or("");
        assert_eq!(ty("/var/log/pods"), "Directory", "{overlay}");
        for p in [
            "/etc/localtime",
            "/var/log/journal",
            "/var/lib/rancher/rke2/agent/logs",
            "/var/lib/rancher/rke2/agent/containerd",
        ] {
            assert_eq!(ty(p), "", "{overlay}: {p} may be missing on a node");
        }

        let (config_vol, config_ro) = mounts["/etc/ringtail"];
        assert!(config_ro, "{overlay}: the config mount is read-only");
        assert!(
            !str_at(config_vol, "configMap.name").is_empty(),
            "{overlay}: /etc/ringtail is a ConfigMap"
        );
    }
}

#[test]
fn daemonset_security_context_is_the_contract_one() {
    for overlay in OVERLAYS {
        let ds = daemonset(rendered(overlay));
        let spec = pod_spec(ds);
        let sc = at(container(ds), "securityContext");

        assert_eq!(
            at(spec, "securityContext.fsGroup").as_u64(),
            Some(999),
            "{overlay}"
        );
        let groups: Vec<u64> = seq_at(spec, "securityContext.supplementalGroups")
            .iter()
            .map(|g| g.as_u64().expect("a GID"))
            .collect();
        assert_eq!(groups, [999, 4], "{overlay}: systemd-journal and adm");
        assert_eq!(
            str_at(spec, "securityContext.seccompProfile.type"),
            "RuntimeDefault",
            "{overlay}"
        );
        assert!(
            at(spec, "hostNetwork").is_null() && at(spec, "hostPID").is_null(),
            "{overlay}: no host namespaces"
        );

        assert_eq!(
            at(sc, "readOnlyRootFilesystem").as_bool(),
            Some(true),
            "{overlay}"
        );
        assert_eq!(
            at(sc, "allowPrivilegeEscalation").as_bool(),
            Some(false),
            "{overlay}"
        );
        assert_ne!(at(sc, "privileged").as_bool(), Some(true), "{overlay}");
        assert_eq!(strings(sc, "capabilities.drop"), ["ALL"], "{overlay}");
        assert_eq!(
            strings(sc, "capabilities.add"),
            ["DAC_READ_SEARCH"],
            "{overlay}"
        );
        // An added capability reaches the process only as uid 0 (see daemonset.yaml).
        assert_eq!(at(sc, "runAsUser").as_u64(), Some(0), "{overlay}");
        assert_eq!(at(sc, "runAsNonRoot").as_bool(), Some(false), "{overlay}");
        // A container-level seccomp profile would override the pod's.
        assert!(at(sc, "seccompProfile").is_null(), "{overlay}");
    }
}

#[test]
fn daemonset_runs_the_contract_command_with_probes_env_and_scheduling() {
    for overlay in OVERLAYS {
        let ds = daemonset(rendered(overlay));
        let spec = pod_spec(ds);
        let c = container(ds);

        assert_eq!(at(ds, "metadata.namespace").as_str(), Some(NAMESPACE));
        assert_eq!(
            strings(c, "args"),
            ["run", "--config", CONFIG_PATH],
            "{overlay}"
        );

        // The downward API: NODE_NAME (node_name), POD_NAMESPACE (the events Lease's namespace)
        // and POD_NAME (its holder identity).
        let env: BTreeMap<&str, &Value> = seq_at(c, "env")
            .iter()
            .map(|e| (str_at(e, "name"), e))
            .collect();
        assert_eq!(
            str_at(env["NODE_NAME"], "valueFrom.fieldRef.fieldPath"),
            "spec.nodeName",
            "{overlay}"
        );
        assert_eq!(
            str_at(env["POD_NAMESPACE"], "valueFrom.fieldRef.fieldPath"),
            "metadata.namespace",
            "{overlay}"
        );
        assert_eq!(
            str_at(env["POD_NAME"], "valueFrom.fieldRef.fieldPath"),
            "metadata.name",
            "{overlay}"
        );

        // The metrics port, and the probes on it.
        let metrics = seq_at(c, "ports")
            .iter()
            .find(|p| p.get("name").and_then(Value::as_str) == Some("http-metrics"))
            .unwrap_or_else(|| panic!("{overlay}: no http-metrics port"));
        assert_eq!(at(metrics, "containerPort").as_u64(), Some(9080));
        for (probe, path) in [("readinessProbe", "/ready"), ("livenessProbe", "/healthy")] {
            let get = at(c, &format!("{probe}.httpGet"));
            assert_eq!(str_at(get, "path"), path, "{overlay}: {probe}");
            assert_eq!(port_number(c, at(get, "port")), 9080, "{overlay}: {probe}");
            assert!(
                at(c, &format!("{probe}.periodSeconds")).as_u64().is_some(),
                "{overlay}: {probe} sets its period"
            );
        }

        let tolerations = seq_at(spec, "tolerations");
        for key in [
            "node-role.kubernetes.io/control-plane",
            "node-role.kubernetes.io/master",
        ] {
            assert!(
                tolerations.iter().any(|t| {
                    t.get("key").and_then(Value::as_str) == Some(key)
                        && t.get("operator").and_then(Value::as_str) == Some("Exists")
                        && t.get("effect").and_then(Value::as_str) == Some("NoSchedule")
                }),
                "{overlay}: tolerates {key}:NoSchedule"
            );
        }
        assert_eq!(
            str_at(spec, "priorityClassName"),
            "system-node-critical",
            "{overlay}"
        );
        assert_eq!(
            at(spec, "terminationGracePeriodSeconds").as_u64(),
            Some(30),
            "{overlay}: ringtail exits within 10 s of SIGTERM"
        );
        assert_eq!(str_at(spec, "serviceAccountName"), "ringtail", "{overlay}");
        assert_eq!(str_at(ds, "spec.updateStrategy.type"), "RollingUpdate");
        assert_eq!(
            str_at(ds, "spec.updateStrategy.rollingUpdate.maxUnavailable"),
            "10%",
            "{overlay}"
        );
        // Two pods on one node would share the positions file.
        assert_eq!(
            at(ds, "spec.updateStrategy.rollingUpdate.maxSurge").as_u64(),
            Some(0),
            "{overlay}"
        );

        // The label the Service (and later the ServiceMonitor) selects the pods by.
        let labels = at(ds, "spec.template.metadata.labels");
        assert_eq!(
            labels.get("app.kubernetes.io/name").and_then(Value::as_str),
            Some("ringtail"),
            "{overlay}"
        );
    }
}

#[test]
fn service_exposes_http_metrics_and_selects_the_daemonset_pods() {
    for overlay in OVERLAYS {
        let docs = rendered(overlay);
        let ds = daemonset(docs);
        let svc = one_of(docs, "Service");
        assert_eq!(at(svc, "metadata.namespace").as_str(), Some(NAMESPACE));
        let pod_labels = at(ds, "spec.template.metadata.labels")
            .as_mapping()
            .expect("pod labels");
        let selector = at(svc, "spec.selector").as_mapping().expect("a selector");
        assert!(!selector.is_empty());
        for (k, v) in selector {
            assert_eq!(pod_labels.get(k), Some(v), "{overlay}: selector {k:?}");
        }
        let ports = seq_at(svc, "spec.ports");
        assert_eq!(ports.len(), 1, "{overlay}");
        assert_eq!(str_at(&ports[0], "name"), "http-metrics");
        assert_eq!(at(&ports[0], "port").as_u64(), Some(9080));
        assert_eq!(
            port_number(container(ds), at(&ports[0], "targetPort")),
            9080
        );
        // The label the ServiceMonitor and the alerts select on.
        for obj in [ds, svc] {
            assert_eq!(
                label(obj, "app.kubernetes.io/name"),
                Some("ringtail"),
                "{overlay}: {}",
                str_at(obj, "kind")
            );
        }
    }
}

fn label<'a>(obj: &'a Value, key: &str) -> Option<&'a str> {
    at(obj, "metadata.labels").get(key).and_then(Value::as_str)
}

#[test]
fn resources_are_set_per_overlay_without_a_cpu_limit() {
    let expected = [
        ("dev", "50m", "64Mi", "256Mi"),
        ("prod", "200m", "128Mi", "512Mi"),
    ];
    for (overlay, cpu, mem, mem_limit) in expected {
        let r = at(container(daemonset(rendered(overlay))), "resources");
        assert_eq!(str_at(r, "requests.cpu"), cpu, "{overlay}");
        assert_eq!(str_at(r, "requests.memory"), mem, "{overlay}");
        assert_eq!(str_at(r, "limits.memory"), mem_limit, "{overlay}");
        // Throttling a log shipper during a burst only grows its backlog.
        assert!(at(r, "limits.cpu").is_null(), "{overlay}: no CPU limit");
    }
}

#[test]
fn each_overlay_sets_its_image() {
    let expected = [
        ("dev", "localhost:5000/ringtail:dev"),
        ("prod", "registry.example.com/platform/ringtail:0.1.0"),
    ];
    for (overlay, image) in expected {
        let c = container(daemonset(rendered(overlay)));
        assert_eq!(str_at(c, "image"), image, "{overlay}");
    }
}

// ---------------------------------------------------------------- RBAC

/// A rule as (apiGroups, resources, verbs), each sorted, and without resourceNames.
fn rules(role: &Value) -> Vec<(Vec<String>, Vec<String>, Vec<String>)> {
    seq_at(role, "rules")
        .iter()
        .map(|r| {
            assert!(
                at(r, "resourceNames").is_null() && at(r, "nonResourceURLs").is_null(),
                "unexpected rule shape: {r:?}"
            );
            let sorted = |path: &str| {
                let mut v = strings(r, path);
                v.sort();
                v
            };
            (sorted("apiGroups"), sorted("resources"), sorted("verbs"))
        })
        .collect()
}

fn owned(items: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = items.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

#[test]
fn cluster_role_is_pods_get_list_watch_and_events_list_watch_only() {
    for overlay in OVERLAYS {
        let docs = rendered(overlay);
        let role = one_of(docs, "ClusterRole");
        let mut got = rules(role);
        got.sort();
        let mut want = vec![
            (
                owned(&[""]),
                owned(&["pods"]),
                owned(&["get", "list", "watch"]),
            ),
            (owned(&[""]), owned(&["events"]), owned(&["list", "watch"])),
        ];
        want.sort();
        assert_eq!(got, want, "{overlay}: ClusterRole rules");

        let binding = one_of(docs, "ClusterRoleBinding");
        assert_eq!(str_at(binding, "roleRef.kind"), "ClusterRole");
        assert_eq!(
            str_at(binding, "roleRef.name"),
            str_at(role, "metadata.name")
        );
        assert_binds_the_service_account(binding, overlay);
    }
}

#[test]
fn role_is_leases_get_create_update_in_the_ringtail_namespace() {
    for overlay in OVERLAYS {
        let docs = rendered(overlay);
        let role = one_of(docs, "Role");
        assert_eq!(at(role, "metadata.namespace").as_str(), Some(NAMESPACE));
        assert_eq!(
            rules(role),
            vec![(
                owned(&["coordination.k8s.io"]),
                owned(&["leases"]),
                owned(&["get", "create", "update"]),
            )],
            "{overlay}: Role rules"
        );
        let binding = one_of(docs, "RoleBinding");
        assert_eq!(at(binding, "metadata.namespace").as_str(), Some(NAMESPACE));
        assert_eq!(str_at(binding, "roleRef.kind"), "Role");
        assert_eq!(
            str_at(binding, "roleRef.name"),
            str_at(role, "metadata.name")
        );
        assert_binds_the_service_account(binding, overlay);
    }
}

fn assert_binds_the_service_account(binding: &Value, overlay: &str) {
    let docs = rendered(overlay);
    let sa = one_of(docs, "ServiceAccount");
    assert_eq!(at(sa, "metadata.namespace").as_str(), Some(NAMESPACE));
    let subjects = seq_at(binding, "subjects");
    assert_eq!(subjects.len(), 1, "{overlay}: one subject");
    assert_eq!(str_at(&subjects[0], "kind"), "ServiceAccount");
    assert_eq!(str_at(&subjects[0], "name"), str_at(sa, "metadata.name"));
    assert_eq!(str_at(&subjects[0], "namespace"), NAMESPACE, "{overlay}");
    assert_eq!(
        str_at(pod_spec(daemonset(docs)), "serviceAccountName"),
        str_at(sa, "metadata.name")
    );
}

#[test]
fn everything_namespaced_is_in_the_ringtail_namespace() {
    for overlay in OVERLAYS {
        let docs = rendered(overlay);
        assert_eq!(
            str_at(one_of(docs, "Namespace"), "metadata.name"),
            NAMESPACE
        );
        for d in docs {
            let kind = str_at(d, "kind");
            if matches!(kind, "Namespace" | "ClusterRole" | "ClusterRoleBinding") {
                assert!(at(d, "metadata.namespace").is_null(), "{overlay}: {kind}");
            } else {
                assert_eq!(
                    at(d, "metadata.namespace").as_str(),
                    Some(NAMESPACE),
                    "{overlay}: {kind}"
                );
            }
        }
    }
}

// ---------------------------------------------------------------- the shipped config

/// The config file the DaemonSet's `--config` reads, from the ConfigMap its volume names.
fn shipped_config(overlay: &str) -> String {
    let docs = rendered(overlay);
    let ds = daemonset(docs);
    let (dir, file) = CONFIG_PATH.rsplit_once('/').expect("an absolute path");
    let mount = seq_at(container(ds), "volumeMounts")
        .iter()
        .find(|m| str_at(m, "mountPath") == dir)
        .unwrap_or_else(|| panic!("{overlay}: nothing mounted at {dir}"));
    let vol = seq_at(pod_spec(ds), "volumes")
        .iter()
        .find(|v| str_at(v, "name") == str_at(mount, "name"))
        .expect("the config volume");
    let cm_name = str_at(vol, "configMap.name");
    let cm = all_of(docs, "ConfigMap")
        .into_iter()
        .find(|cm| str_at(cm, "metadata.name") == cm_name)
        .unwrap_or_else(|| panic!("{overlay}: no ConfigMap {cm_name}"));
    // Not `at`: the key has a dot in it.
    at(cm, "data")
        .get(file)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{overlay}: ConfigMap {cm_name} has no {file}"))
        .to_string()
}

/// `ringtail check-config` on the file; returns the effective config it prints.
fn check_config(overlay: &str, text: &str) -> Value {
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("ringtail.yaml");
    std::fs::write(&path, text).expect("write the config");
    let out = Command::new(env!("CARGO_BIN_EXE_ringtail"))
        .arg("check-config")
        .arg(&path)
        .env("NODE_NAME", "node-1")
        .env("POD_NAMESPACE", NAMESPACE)
        .output()
        .expect("run ringtail check-config");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{overlay}: ringtail check-config rejects the shipped config:\n{}\n--- the file:\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_yaml::from_slice(&out.stdout).expect("check-config prints YAML")
}

#[test]
fn shipped_config_is_accepted_by_check_config_and_fits_the_daemonset() {
    for overlay in OVERLAYS {
        let text = shipped_config(overlay);
        let raw: Value = serde_yaml::from_str(&text).expect("the config is YAML");
        // dev ships the platform file in the seed's shape; prod ringtail's own schema.
        let seed_shaped = raw.get("alloy").is_some();
        assert_eq!(seed_shaped, overlay == "dev", "{overlay}: config shape");

        let cfg = check_config(overlay, &text);
        assert_eq!(
            str_at(&cfg, "loki.url"),
            "http://loki.loki.svc.cluster.local:3100/loki/api/v1/push",
            "{overlay}"
        );
        // Every source is on, as in the seed.
        for (source, on) in [
            ("pods", true),
            ("events", true),
            ("journal", true),
            ("rke2", true),
        ] {
            assert_eq!(
                at(&cfg, &format!("logs.{source}.enabled")).as_bool(),
                Some(on),
                "{overlay}: logs.{source}.enabled"
            );
        }
        if !seed_shaped {
            // One tailer per core (0) would outgrow the memory limit on a many-core node.
            let threads = at(&cfg, "tail.threads").as_u64();
            assert!(
                matches!(threads, Some(1..=4)),
                "{overlay}: tail.threads is pinned, got {threads:?}"
            );
        }
        assert_eq!(
            str_at(&cfg, "node_name"),
            "node-1",
            "{overlay}: from $NODE_NAME"
        );
        assert_eq!(str_at(&cfg, "logs.events.lease_namespace"), NAMESPACE);

        // The config and the DaemonSet agree: the probes' port, and every path ringtail
        // reads is under a mount, read-only, while data_dir is the writable one.
        let ds = daemonset(rendered(overlay));
        let c = container(ds);
        let listen = str_at(&cfg, "server.listen");
        assert_eq!(listen, "0.0.0.0:9080", "{overlay}");
        let port: u64 = listen.rsplit(':').next().unwrap().parse().unwrap();
        let metrics = Value::String("http-metrics".into());
        assert_eq!(
            port_number(c, &metrics),
            port,
            "{overlay}: the probes' port"
        );
        let mounts: Vec<(&str, bool)> = seq_at(c, "volumeMounts")
            .iter()
            .map(|m| {
                (
                    str_at(m, "mountPath"),
                    at(m, "readOnly").as_bool().unwrap_or(false),
                )
            })
            .collect();
        let mount_of = |p: &str| {
            mounts
                .iter()
                .filter(|(m, _)| Path::new(p).starts_with(m))
                .max_by_key(|(m, _)| m.len())
                .copied()
                .unwrap_or_else(|| panic!("{overlay}: {p} is not under any mount"))
        };
        assert_eq!(str_at(&cfg, "data_dir"), "/var/lib/ringtail", "{overlay}");
        assert!(
            !mount_of("/var/lib/ringtail").1,
            "{overlay}: data_dir writable"
        );
        for key in [
            "logs.pods.path",
            "logs.journal.path",
            "logs.rke2.kubelet_log",
            "logs.rke2.containerd_log",
        ] {
            let p = str_at(&cfg, key);
            assert!(mount_of(p).1, "{overlay}: {key} = {p} is read-only");
        }
    }
}
