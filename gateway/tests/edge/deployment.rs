//! The deployment files, checked without a Docker engine or a cluster (none runs here): the compose
//! stack's shape, its environment file, the gateway configs it mounts (`gateway validate`), the
//! Dockerfiles, and the Kubernetes manifests against the API's schemas (PyPI `kubernetes-validate`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_yaml::Value;

fn compose_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../compose")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn yaml(path: &Path) -> Value {
    serde_yaml::from_str(&read(path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `KEY=value` lines of compose/.env.example.
fn env_example() -> BTreeMap<String, String> {
    read(&compose_dir().join(".env.example"))
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// `${NAME}`, `${NAME:-default}`, `${NAME:?message}` references (not `$${…}`, which the container's shell
/// expands), with the default when one is given.
fn references(text: &str) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("${") {
        let start = i + at;
        i = start + 2;
        if start > 0 && bytes[start - 1] == b'$' {
            continue;
        }
        let Some(end) = text[start..].find('}') else {
            break;
        };
        let inner = &text[start + 2..start + end];
        let name: String = inner
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let default = inner
            .strip_prefix(&name)
            .and_then(|r| r.strip_prefix(":-"))
            .map(str::to_string);
        out.push((name, default));
    }
    out
}

/// `text` with `${…}` replaced by .env.example's values (or the default).
fn interpolate(text: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = text.to_string();
    for (name, default) in references(text) {
        let value = env.get(&name).cloned().or(default).unwrap_or_default();
        for form in [
            format!("${{{name}}}"),
            format!("${{{name}:-{}}}", references_default(text, &name)),
        ] {
            out = out.replace(&form, &value);
        }
        while let Some(s) = out.find(&format!("${{{name}:?")) {
            let e = out[s..].find('}').map_or(out.len(), |e| s + e + 1);
            out.replace_range(s..e, &value);
        }
    }
    out
}

fn references_default(text: &str, name: &str) -> String {
    references(text)
        .into_iter()
        .find(|(n, d)| n == name && d.is_some())
        .and_then(|(_, d)| d)
        .unwrap_or_default()
}

fn compose() -> (String, Value) {
    let text = read(&compose_dir().join("docker-compose.yml"));
    let doc: Value = serde_yaml::from_str(&text).expect("docker-compose.yml parses");
    (text, doc)
}

fn services(doc: &Value) -> &serde_yaml::Mapping {
    doc["services"].as_mapping().expect("services")
}

fn name(k: &Value) -> &str {
    k.as_str().expect("a name")
}

/// A one-shot service: runs to completion, is waited for as such.
fn one_shot(svc: &Value) -> bool {
    svc["restart"].as_str() == Some("no")
}

/// An image reference pinned to a version: a tag with a digit (not `latest`), or a digest.
fn pinned(image: &str) -> bool {
    if image.contains("@sha256:") {
        return true;
    }
    let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or("");
    !tag.is_empty()
        && !tag.contains('/')
        && tag != "latest"
        && tag.chars().any(|c| c.is_ascii_digit())
}

#[test]
fn the_compose_stack_has_every_service_healthy_before_its_dependents() {
    let (_, doc) = compose();
    let svcs = services(&doc);
    for want in [
        "gateway",
        "backend",
        "migrate",
        "postgres",
        "postgres-replica",
        "redis",
        "minio",
        "minio-init",
        "prometheus",
        "grafana",
        "pebble",
    ] {
        assert!(
            svcs.contains_key(want),
            "service `{want}` missing from docker-compose.yml"
        );
    }
    for (k, svc) in svcs {
        let n = name(k);
        let image = svc["image"].as_str();
        assert!(
            image.is_some() || svc.get("build").is_some(),
            "{n}: neither image nor build"
        );
        if let Some(image) = image {
            // Our own images carry a version variable; third-party ones a pinned tag.
            assert!(
                image.contains("${") || pinned(image),
                "{n}: image `{image}` is not pinned to a version"
            );
        }
        if one_shot(svc) {
            assert!(
                svc.get("healthcheck").is_none(),
                "{n}: a one-shot service is waited for until it completes, not by a health check"
            );
        } else {
            let test = &svc["healthcheck"]["test"];
            assert!(
                test.as_sequence().is_some_and(|s| s.len() >= 2),
                "{n}: no health check"
            );
            assert_ne!(
                svc["restart"].as_str(),
                None,
                "{n}: a long-running service needs a restart policy"
            );
        }
        if let Some(deps) = svc.get("depends_on") {
            let deps = deps
                .as_mapping()
                .unwrap_or_else(|| panic!("{n}: depends_on must give conditions"));
            for (d, cond) in deps {
                let d = name(d);
                let target = svcs
                    .get(d)
                    .unwrap_or_else(|| panic!("{n} depends on unknown `{d}`"));
                let want = if one_shot(target) {
                    "service_completed_successfully"
                } else {
                    "service_healthy"
                };
                assert_eq!(
                    cond["condition"].as_str(),
                    Some(want),
                    "{n} → {d}: condition"
                );
            }
        }
    }

    // The gateway publishes 80 and 443 and nothing else; its admin listener stays on the stack's network.
    let gw = &svcs["gateway"];
    let ports: Vec<String> = gw["ports"]
        .as_sequence()
        .expect("gateway ports")
        .iter()
        .filter_map(Value::as_str)
        .map(|p| interpolate(p, &env_example()))
        .collect();
    assert_eq!(ports, vec!["80:80", "443:443"]);
    assert_eq!(gw["cap_drop"].as_sequence().map(Vec::len), Some(1));
    assert_eq!(gw["cap_drop"][0].as_str(), Some("ALL"));
    assert_eq!(
        gw["cap_add"].as_sequence().expect("cap_add").clone(),
        vec![Value::from("NET_BIND_SERVICE")],
        "the gateway gets only CAP_NET_BIND_SERVICE"
    );
    // Other published ports are bound to the host's loopback (consoles for ops through a tunnel).
    for (k, svc) in svcs {
        if name(k) == "gateway" {
            continue;
        }
        for p in svc["ports"].as_sequence().into_iter().flatten() {
            let p = interpolate(p.as_str().unwrap_or_default(), &env_example());
            assert!(
                p.starts_with("127.0.0.1:"),
                "{}: port `{p}` published beyond loopback",
                name(k)
            );
        }
    }

    let env = env_example();
    let backend = &svcs["backend"];
    let replicas = interpolate(backend["deploy"]["replicas"].as_str().unwrap_or("0"), &env);
    assert!(
        replicas.parse::<u32>().is_ok_and(|r| r >= 2),
        "backend replicas: {replicas}"
    );
    // The migrations run as the owner; the app connects as a role of its own.
    let migrate = &svcs["migrate"]["environment"];
    assert!(migrate["DATABASE_OWNER_URL"]
        .as_str()
        .is_some_and(|u| u.contains("aggios_owner")));
    assert!(backend["environment"]["DATABASE_URL"]
        .as_str()
        .is_some_and(|u| u.starts_with("postgres://aggios_app:${")));
    // ... so `backend serve` must not migrate at start as the app role (it has no CREATE on the schema:
    // every replica would crash-loop, as the offline run found).
    assert_eq!(
        backend["environment"]["MIGRATE_ON_START"].as_str(),
        Some("0")
    );
    assert!(backend["environment"]["DATABASE_READ_URL"]
        .as_str()
        .is_some_and(|u| u.contains("@postgres-replica:")));
    // Redis with a password; MinIO's bucket made with versioning and encryption.
    let redis_cmd = serde_yaml::to_string(&svcs["redis"]["command"]).expect("yaml");
    assert!(
        redis_cmd.contains("--requirepass") && redis_cmd.contains("--appendonly"),
        "{redis_cmd}"
    );
    let init = read(&compose_dir().join("minio/init.sh"));
    assert!(init.contains("mc version enable") && init.contains("mc encrypt set sse-s3"));
    assert_eq!(svcs["pebble"]["profiles"][0].as_str(), Some("acme-staging"));
}

#[test]
fn secrets_come_from_the_env_file_and_every_variable_is_in_it() {
    let (text, doc) = compose();
    let env = env_example();
    let missing: BTreeSet<String> = references(&text)
        .into_iter()
        .map(|(n, _)| n)
        .filter(|n| !env.contains_key(n))
        .collect();
    assert!(
        missing.is_empty(),
        "referenced in docker-compose.yml but not in .env.example: {missing:?}"
    );
    // No secret written in the YAML: every secret-looking variable takes its value from the env file.
    for (k, svc) in services(&doc) {
        let Some(vars) = svc["environment"].as_mapping() else {
            continue;
        };
        for (var, value) in vars {
            let var = name(var);
            let value = value.as_str().unwrap_or_default();
            let secret = ["PASSWORD", "SECRET", "TOKEN", "_KEY", "URL"]
                .iter()
                .any(|s| var.contains(s));
            let literal_credential = value.contains('@') && !value.contains("${");
            assert!(
                !secret || value.contains("${") || !literal_credential && value.starts_with("http"),
                "{}: {var} is written in the YAML ({value}); it must come from compose/.env",
                name(k)
            );
        }
    }
    // Secrets handed to services as files come from the env file too.
    for (name, secret) in doc["secrets"].as_mapping().into_iter().flatten() {
        let var = secret["environment"].as_str().unwrap_or_default();
        assert!(
            env.contains_key(var),
            "secret {name:?} reads {var}, not in .env.example"
        );
    }
    // The gateway's admin listener wants its token: Prometheus scrapes it with the token from a secret,
    // under a name the listener answers.
    let gw_config = read(&compose_dir().join("gateway/gateway.toml"));
    if gw_config.contains("token_env") {
        let prom = read(&compose_dir().join("prometheus/prometheus.yml"));
        assert!(
            prom.contains("credentials_file: /run/prometheus/gateway_admin_token")
                && prom.contains("\"gateway:9000\""),
            "Prometheus would be refused by the admin listener: {prom}"
        );
        assert!(gw_config.contains("names = [\"gateway\"]"));
        // The file is written at start from the same variable the gateway reads, into a tmpfs.
        let svc = &services(&doc)["prometheus"];
        let entrypoint = serde_yaml::to_string(&svc["entrypoint"]).expect("yaml");
        assert!(
            entrypoint.contains("\"$$GATEWAY_ADMIN_TOKEN\" > /run/prometheus/gateway_admin_token")
                && entrypoint.contains("exec /bin/prometheus"),
            "{entrypoint}"
        );
        assert_eq!(
            svc["environment"]["GATEWAY_ADMIN_TOKEN"].as_str(),
            Some("${GATEWAY_ADMIN_TOKEN}")
        );
        assert_eq!(svc["tmpfs"][0].as_str(), Some("/run/prometheus:mode=1777"));
    }
    // Bind-mounted files exist.
    for (k, svc) in services(&doc) {
        for v in svc["volumes"].as_sequence().into_iter().flatten() {
            let v = v.as_str().unwrap_or_default();
            if let Some(src) = v.strip_prefix("./") {
                let src = interpolate(src, &env);
                let src = src.split(':').next().unwrap_or_default();
                assert!(
                    compose_dir().join(src).exists(),
                    "{}: mounts missing ./{src}",
                    name(k)
                );
            }
        }
    }
}

/// `gateway validate` on `config` with the environment of .env.example, paths inside the container
/// rewritten to where the files are here (`mounts`: container path prefix → host path).
fn validate(config: &Path, mounts: &[(&str, PathBuf)], extra_env: &[(&str, String)]) {
    let env = env_example();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut text = read(config);
    for (inside, outside) in mounts {
        text = text.replace(inside, &outside.display().to_string());
    }
    let copy = dir.path().join(config.file_name().expect("file name"));
    std::fs::write(&copy, text).expect("write config copy");
    let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["validate", "--config"])
        .arg(&copy)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env(
            "REDIS_URL",
            format!("redis://:{}@redis:6379", env["REDIS_PASSWORD"]),
        )
        .envs(extra_env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("gateway validate");
    assert!(
        out.status.success(),
        "{} does not validate:\n{}",
        config.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_gateway_configs_that_compose_and_kubernetes_mount_pass_gateway_validate() {
    // The acme-staging config trusts pebble's CA from the shared volume: stand one in.
    let volume = tempfile::tempdir().expect("tempdir");
    let ca = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["certs", "dev", "--domain", "pebble", "--out"])
        .arg(volume.path())
        .output()
        .expect("gateway certs dev");
    assert!(
        ca.status.success(),
        "{}",
        String::from_utf8_lossy(&ca.stderr)
    );
    let ca_file = std::fs::read_dir(volume.path())
        .expect("dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().contains("ca.crt"))
        })
        .expect("a CA certificate");
    std::fs::copy(&ca_file, volume.path().join("pebble.minica.pem")).expect("copy CA");
    let (_, doc) = compose();
    let mounts = services(&doc)["gateway"]["volumes"]
        .as_sequence()
        .expect("gateway volumes")
        .clone();
    assert!(
        mounts
            .iter()
            .any(|m| m.as_str() == Some("pebble-ca:/etc/aggios-edge/pebble:ro")),
        "{mounts:?}"
    );
    let pebble = [("/etc/aggios-edge/pebble", volume.path().to_path_buf())];
    validate(&compose_dir().join("gateway/gateway.toml"), &[], &[]);
    validate(
        &compose_dir().join("gateway/gateway.acme-staging.toml"),
        &pebble,
        &[],
    );
    validate(&compose_dir().join("kubernetes/gateway.toml"), &[], &[]);
}

#[test]
fn dockerfiles_build_in_stages_on_pinned_bases_and_run_as_a_non_root_user() {
    for (file, bins) in [
        ("gateway.Dockerfile", "gateway"),
        ("backend.Dockerfile", "backend"),
        ("pebble/Dockerfile", ""),
    ] {
        let text = read(&compose_dir().join(file));
        let args: BTreeMap<String, String> = text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("ARG "))
            .filter_map(|a| a.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        let froms: Vec<String> = text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("FROM "))
            .map(|f| f.split_whitespace().next().unwrap_or_default().to_string())
            .collect();
        assert!(!froms.is_empty(), "{file}: no FROM");
        let stages: BTreeSet<String> = text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("FROM "))
            .filter_map(|f| f.split(" AS ").nth(1))
            .map(|s| s.trim().to_string())
            .collect();
        for from in &froms {
            // `${ARG}` anywhere in the name takes the ARG's default (`binaries-${BINARIES}` is a stage).
            let mut image = from.clone();
            while let Some(s) = image.find("${") {
                let e = image[s..].find('}').map_or(image.len(), |e| s + e + 1);
                let arg = image[s + 2..e - 1].to_string();
                let value = args
                    .get(&arg)
                    .cloned()
                    .unwrap_or_else(|| panic!("{file}: ARG {arg} has no default"));
                image.replace_range(s..e, &value);
            }
            assert!(
                stages.contains(&image) || pinned(&image),
                "{file}: base `{image}` is not pinned"
            );
        }
        // The runtime (last) stage runs as a user that is not root.
        let last = text.rsplit("\nFROM ").next().expect("a last stage");
        let user = last
            .lines()
            .filter_map(|l| l.trim().strip_prefix("USER "))
            .next_back()
            .unwrap_or_else(|| panic!("{file}: the runtime stage sets no USER"));
        let uid = user.split(':').next().unwrap_or_default();
        assert!(uid != "root" && uid != "0", "{file}: runs as `{user}`");
        if !bins.is_empty() {
            assert!(
                text.contains("cargo chef cook") && text.contains("cargo chef prepare"),
                "{file}: dependency layers are not cached (cargo-chef)"
            );
            assert!(
                text.contains(&format!("--bin {bins}")),
                "{file}: builds something else than {bins}"
            );
            assert!(last.contains("HEALTHCHECK"), "{file}: no HEALTHCHECK");
        }
    }
    let gw = read(&compose_dir().join("gateway.Dockerfile"));
    assert!(gw.contains("setcap cap_net_bind_service=+ep /usr/local/bin/gateway"));
    // The WAL archive's mount point belongs to postgres in the image: a volume mounted where the image
    // has no directory is root's, and archive_command (run as postgres) could not write to it.
    let pg = read(&compose_dir().join("postgres/Dockerfile"));
    assert!(
        pg.contains("FROM ${POSTGRES_IMAGE}") && pg.contains("ARG POSTGRES_IMAGE=postgres:16.6")
    );
    assert!(pg.contains("install -d -o postgres -g postgres -m 0700 /archive"));
    let (_, doc) = compose();
    let pg_volumes = serde_yaml::to_string(&services(&doc)["postgres"]["volumes"]).expect("yaml");
    assert!(
        pg_volumes.contains("pg-wal-archive:/archive"),
        "{pg_volumes}"
    );
    assert!(!read(&compose_dir().join("backend.Dockerfile")).contains("setcap"));
    let ignore = read(&compose_dir().join("../.dockerignore"));
    assert!(
        ignore.lines().any(|l| l.trim() == "target/"),
        "the build context would carry target/"
    );
}

fn kubernetes_validate() -> String {
    std::env::var("KUBERNETES_VALIDATE").unwrap_or_else(|_| {
        let home = std::env::var("HOME").unwrap_or_default();
        format!("{home}/.cache/aggios-edge/tools/bin/kubernetes-validate")
    })
}

#[test]
fn kubernetes_manifests_pass_schema_validation_and_reference_only_declared_secrets() {
    let dir = compose_dir().join("kubernetes");
    let kustomization = yaml(&dir.join("kustomization.yaml"));
    let resources: Vec<PathBuf> = kustomization["resources"]
        .as_sequence()
        .expect("resources")
        .iter()
        .map(|r| dir.join(r.as_str().expect("a path")))
        .collect();
    let bin = kubernetes_validate();
    let out = Command::new(&bin)
        .args(["--strict", "--kubernetes-version", "1.32.0"])
        .args(&resources)
        .arg(dir.join("secret.example.yaml"))
        .output()
        .unwrap_or_else(|e| {
            panic!("{bin}: {e} (scripts/test.sh installs kubernetes-validate from PyPI)")
        });
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{report}");
    assert!(
        !report.contains("ERROR") && !report.contains("failed"),
        "{report}"
    );

    // Every object, by kind and name.
    let mut objects: Vec<Value> = Vec::new();
    for r in &resources {
        for doc in serde_yaml::Deserializer::from_str(&read(r)) {
            objects.push(Value::deserialize(doc).expect("yaml document"));
        }
    }
    let find = |kind: &str, name: &str| {
        objects
            .iter()
            .find(|o| {
                o["kind"].as_str() == Some(kind) && o["metadata"]["name"].as_str() == Some(name)
            })
            .unwrap_or_else(|| panic!("no {kind} {name}"))
            .clone()
    };
    let gw = find("Deployment", "gateway");
    let container = &gw["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        container["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/readyz")
    );
    assert!(
        container["lifecycle"]["preStop"].is_mapping(),
        "no preStop drain"
    );
    assert_eq!(
        gw["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"].as_i64(),
        Some(0)
    );
    assert_eq!(
        find("Service", "gateway")["spec"]["type"].as_str(),
        Some("LoadBalancer")
    );
    find("PodDisruptionBudget", "gateway");
    assert_eq!(
        find("HorizontalPodAutoscaler", "gateway")["spec"]["scaleTargetRef"]["name"].as_str(),
        Some("gateway")
    );
    let pods = &find("Deployment", "backend")["spec"]["template"]["spec"];
    let serve = serde_yaml::to_string(&pods["containers"][0]["env"]).expect("yaml");
    assert!(
        pods["initContainers"][0]["args"][0].as_str() == Some("migrate")
            && serve.contains("name: MIGRATE_ON_START\n  value: '0'"),
        "the backend pods would migrate at start as the app role: {serve}"
    );
    assert_eq!(
        find("Service", "backend-headless")["spec"]["clusterIP"].as_str(),
        Some("None"),
        "the gateway discovers backend pods through a headless Service"
    );
    for external in ["postgres", "postgres-replica", "redis", "minio"] {
        assert_eq!(
            find("Service", external)["spec"]["type"].as_str(),
            Some("ExternalName")
        );
    }
    // Secrets only by reference, each key declared in secret.example.yaml.
    let secret = yaml(&dir.join("secret.example.yaml"));
    let declared: BTreeSet<String> = secret["stringData"]
        .as_mapping()
        .expect("stringData")
        .keys()
        .map(|k| name(k).to_string())
        .collect();
    let text: String = resources.iter().map(|r| read(r)).collect();
    let mut used = BTreeSet::new();
    for obj in &objects {
        collect_secret_refs(obj, &mut used);
    }
    assert!(!used.is_empty());
    let undeclared: Vec<&String> = used.difference(&declared).collect();
    assert!(
        undeclared.is_empty(),
        "secret keys used but not declared: {undeclared:?}"
    );
    assert!(
        !text.contains("kind: Secret"),
        "a Secret with values sits in the applied manifests"
    );
    // The replicas share limits and certificates through Redis, and the manifests say so.
    assert!(read(&dir.join("gateway.yaml")).contains("share rate limits"));
    let gw_toml = read(&dir.join("gateway.toml"));
    assert!(gw_toml.contains("storage = \"redis\"") && gw_toml.contains("scope = \"global\""));
}

use serde::Deserialize;

fn collect_secret_refs(v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::Mapping(m) => {
            if let Some(r) = m.get("secretKeyRef") {
                if let Some(k) = r["key"].as_str() {
                    out.insert(k.to_string());
                }
            }
            for (_, x) in m {
                collect_secret_refs(x, out);
            }
        }
        Value::Sequence(s) => s.iter().for_each(|x| collect_secret_refs(x, out)),
        _ => {}
    }
}

#[test]
fn env_references_are_found_and_interpolated() {
    let text = "a: ${A}\nb: ${B:-2}\nc: ${C:?need C}\nd: $${NOT}\n";
    let refs = references(text);
    assert_eq!(
        refs,
        vec![
            ("A".to_string(), None),
            ("B".to_string(), Some("2".to_string())),
            ("C".to_string(), None)
        ]
    );
    let env: BTreeMap<String, String> = [
        ("A".to_string(), "x".to_string()),
        ("C".to_string(), "z".to_string()),
    ]
    .into();
    assert_eq!(interpolate(text, &env), "a: x\nb: 2\nc: z\nd: $${NOT}\n");
    assert!(pinned("postgres:16.6-bookworm") && pinned("x@sha256:ab"));
    assert!(!pinned("postgres") && !pinned("redis:latest") && !pinned("debian:bookworm-slim"));
}

/// Debian's docker-compose (1.29, the compose the offline run drives podman with) accepts the file and
/// the offline override, with .env.example's values: a key only newer Compose knows (a top-level `name`,
/// environment-sourced secrets) is refused here before an operator's `up` meets it.
#[test]
fn docker_compose_v1_accepts_the_file_and_the_offline_override() {
    let Ok(out) = Command::new("docker-compose").arg("version").output() else {
        panic!("docker-compose is not installed (scripts/test.sh installs Debian's)");
    };
    assert!(out.status.success());
    let dir = compose_dir();
    let out = Command::new("docker-compose")
        .current_dir(&dir)
        .args(["--env-file", ".env.example", "-f", "docker-compose.yml"])
        .args([
            "-f",
            "docker-compose.offline.yml",
            "--profile",
            "acme-staging",
        ])
        .args(["config", "--services"])
        .env_remove("DOCKER_HOST")
        .output()
        .expect("docker-compose runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "docker-compose config: {}{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: BTreeSet<&str> = stdout.lines().collect();
    for s in [
        "gateway",
        "backend",
        "migrate",
        "postgres",
        "postgres-replica",
        "redis",
    ] {
        assert!(listed.contains(s), "{s} missing: {listed:?}");
    }
    assert!(
        listed.contains("pebble"),
        "the acme-staging profile: {listed:?}"
    );
    // The override changes images only.
    let (_, base) = compose();
    let over: Value = serde_yaml::from_str(&read(&dir.join("docker-compose.offline.yml")))
        .expect("docker-compose.offline.yml parses");
    for (k, svc) in services(&over) {
        let keys: Vec<&str> = svc
            .as_mapping()
            .expect("a service")
            .keys()
            .map(name)
            .collect();
        assert_eq!(
            keys,
            vec!["image"],
            "{}: the override changes more than the image",
            name(k)
        );
        assert!(
            services(&base).contains_key(k),
            "{}: not a service of the stack",
            name(k)
        );
    }
    // Beside images, only the IPAM option podman reports, on the same subnet.
    let keys: Vec<&str> = over.as_mapping().expect("a map").keys().map(name).collect();
    assert_eq!(keys, vec!["services", "networks"]);
    let ipam = &over["networks"]["edge"]["ipam"];
    assert_eq!(ipam["options"]["driver"].as_str(), Some("host-local"));
    assert_eq!(
        ipam["config"], base["networks"]["edge"]["ipam"]["config"],
        "the override moves the stack's subnet"
    );
}

/// Two gateways behind one port (compose/docker-compose.ha.yml): docker-compose 1.29 accepts the file
/// with the stack's; `gateway-2` runs exactly the gateway's settings (environment, mounts, capabilities,
/// read-only root, health check; only its address differs), and edge-lb's HAProxy balances over the
/// two addresses compose gives them, checking each one's admin `/readyz`.
#[test]
fn the_second_gateway_runs_the_firsts_settings_behind_edge_lb() {
    let dir = compose_dir();
    let out = Command::new("docker-compose")
        .current_dir(&dir)
        .args(["--env-file", ".env.example", "-f", "docker-compose.yml"])
        .args(["-f", "docker-compose.ha.yml", "config", "--services"])
        .env_remove("DOCKER_HOST")
        .output()
        .expect("docker-compose runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "docker-compose config: {}{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.lines().any(|l| l == "gateway-2") && stdout.lines().any(|l| l == "edge-lb"));
    let (_, base) = compose();
    let ha: Value = serde_yaml::from_str(&read(&dir.join("docker-compose.ha.yml")))
        .expect("docker-compose.ha.yml parses");
    let (one, two) = (&services(&base)["gateway"], &services(&ha)["gateway-2"]);
    for key in [
        "image",
        "restart",
        "environment",
        "volumes",
        "cap_drop",
        "cap_add",
        "read_only",
        "tmpfs",
        "stop_signal",
        "stop_grace_period",
        "healthcheck",
        "depends_on",
    ] {
        assert_eq!(
            one[key], two[key],
            "gateway-2's {key} differs from the gateway's"
        );
    }
    assert!(
        two.get("ports").is_none(),
        "gateway-2 publishes a port of its own"
    );
    let cfg = read(&dir.join("edge-lb/haproxy.cfg"));
    for svc in [one, two] {
        let ip = svc["networks"]["edge"]["ipv4_address"]
            .as_str()
            .expect("a fixed address");
        for port in [80, 443] {
            assert!(
                cfg.contains(&format!("{ip}:{port}")),
                "edge-lb does not balance to {ip}:{port}"
            );
        }
    }
    assert!(cfg.contains("uri /readyz") && cfg.contains("check port 9000"));
    // HAProxy itself accepts the file (a broken one only shows when edge-lb starts and exits).
    let check = Command::new("haproxy")
        .arg("-c")
        .arg("-f")
        .arg(dir.join("edge-lb/haproxy.cfg"))
        .output()
        .expect("run haproxy -c (Debian haproxy; scripts/test.sh installs it)");
    assert!(
        check.status.success(),
        "haproxy refuses edge-lb/haproxy.cfg: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    // edge-lb names the client in a PROXY v2 header on every gateway connection, and each gateway
    // config believes it from edge-lb's address (and from nobody else).
    let lb_ip = services(&ha)["edge-lb"]["networks"]["edge"]["ipv4_address"]
        .as_str()
        .expect("edge-lb's fixed address");
    for line in cfg
        .lines()
        .filter(|l| l.trim_start().starts_with("server "))
    {
        assert!(line.contains("send-proxy-v2"), "no PROXY header: {line}");
    }
    for config in ["gateway.toml", "gateway.acme-staging.toml"] {
        let text = read(&dir.join("gateway").join(config));
        assert!(
            text.contains(&format!("proxy_protocol = {{ from = [\"{lb_ip}\"] }}")),
            "{config} does not take edge-lb's ({lb_ip}) PROXY headers"
        );
    }
    // The admin listener refuses a Host it does not know: the check names one the configs allow.
    assert!(cfg.contains("hdr Host gateway"));
    for config in ["gateway.toml", "gateway.acme-staging.toml"] {
        let text = read(&dir.join("gateway").join(config));
        assert!(
            text.contains("names = [\"gateway\"]"),
            "{config}: edge-lb's health check would be refused"
        );
    }
    assert!(
        cfg.contains("option redispatch"),
        "a refused connection is not tried elsewhere"
    );
}
