//! The deployment artefacts, checked against each other and against the code they deploy: docker-compose.yml
//! (against the Compose Specification and scripts/dev-stack), deploy/Dockerfile and deploy/Dockerfile.cuda, the
//! Kustomize tree under deploy/k8s, and deploy/s3-policy.json. Each check collects every problem it finds and
//! names the file and field; the `*_catches_*` tests feed the same checks a broken copy and expect a complaint, so
//! a check that silently passes everything would fail there.
//!
//! `tests/fixtures/compose-spec.json` is `schema/compose-spec.json` of the Go module
//! github.com/compose-spec/compose-go/v2 v2.16.2 (published 2026-10-21), the schema `docker compose` itself
//! validates with; Apache License 2.0, Copyright 2020 The Compose Specification Authors. Fetched with
//! `go mod download -json github.com/compose-spec/compose-go/v2@latest` from the Go module proxy and copied
//! unchanged (sha256 f266dcbb043229405d7cedd5aec918f9102c2b3d5e3850808fdd8edd564a43ff). It declares JSON Schema
//! draft 2020-12 (no longer draft-07) and refers only to itself, so jsonschema validates against it offline.
//!
//! Not checked here, for lack of the tools where these tests run: no Docker engine, so the images are not built
//! and `docker compose config` (compose-go's loader: interpolation and semantic checks beyond the schema) is not
//! run; no Kubernetes API server and no offline OpenAPI schemas (kubeconform), so the manifests are checked by
//! shape and against each other, not by the API's types; no KEDA or Prometheus. `kubectl kustomize` renders the
//! overlays when kubectl is on PATH; without it that test says so and checks the overlay files by hand.
use glowd::daemon::config::PipelineFile;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};
use std::process::Command;

// ------------------------------------------------------------------------------------------------ reading files

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Every document of a YAML stream (`---` separated), as JSON values; empty documents are dropped.
fn yaml_documents(text: &str, what: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{what}: {e}")))
        .filter(|v| !v.is_null())
        .collect()
}

fn yaml_file(rel: &str) -> Value {
    let mut docs = yaml_documents(&read(rel), rel);
    assert_eq!(docs.len(), 1, "{rel}: expected one YAML document");
    docs.remove(0)
}

fn assert_no_problems(what: &str, problems: Vec<String>) {
    assert!(problems.is_empty(), "{what}:\n  {}", problems.join("\n  "));
}

fn assert_complains(what: &str, problems: &[String], needle: &str) {
    assert!(
        problems.iter().any(|p| p.contains(needle)),
        "{what}: expected a problem mentioning `{needle}`, got:\n  {}",
        problems.join("\n  ")
    );
}

fn str_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().map(|a| a.iter().map(str_of).collect()).unwrap_or_default()
}

// ------------------------------------------------------------------------------------------------ the code's facts

/// The routes `src/daemon/http.rs` serves.
fn http_routes() -> BTreeSet<String> {
    let text = read("src/daemon/http.rs");
    let routes: BTreeSet<String> = text
        .match_indices(".route(\"")
        .map(|(i, m)| {
            let rest = &text[i + m.len()..];
            rest[..rest.find('"').unwrap()].to_string()
        })
        .collect();
    assert!(routes.contains("/metrics"), "no routes found in src/daemon/http.rs: {routes:?}");
    routes
}

fn glowd_output(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_glowd")).args(args).output().expect("glowd runs");
    assert!(out.status.success(), "glowd {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// The subcommands `glowd --help` lists.
fn glowd_subcommands() -> BTreeSet<String> {
    let help = glowd_output(&["--help"]);
    let section = help.split("Commands:").nth(1).expect("`glowd --help` has a Commands: section");
    section
        .lines()
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .filter(|c| c != "help")
        .collect()
}

/// The `--flags` that `glowd <subcommand> --help` lists (its own and the global ones).
fn glowd_flags(subcommand: &str) -> BTreeSet<String> {
    glowd_output(&[subcommand, "--help"])
        .split(|c: char| c.is_whitespace() || "[],=<>".contains(c))
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(str::to_string)
        .collect()
}

/// Problems with running `glowd ARGS`: ARGS[0] must be a subcommand that `glowd --help` lists, and each `--flag`
/// one that the subcommand's help lists.
fn cli_problems(what: &str, args: &[String]) -> Vec<String> {
    let Some(sub) = args.first() else { return vec![format!("{what}: no glowd subcommand")] };
    let subcommands = glowd_subcommands();
    if !subcommands.contains(sub) {
        return vec![format!("{what}: `glowd {sub}` is not a subcommand (glowd --help lists {subcommands:?})")];
    }
    let flags = glowd_flags(sub);
    args.iter()
        .filter(|a| a.starts_with("--"))
        .map(|a| a.split('=').next().unwrap().to_string())
        .filter(|f| !flags.contains(f))
        .map(|f| format!("{what}: `glowd {sub}` has no {f} (its --help lists {flags:?})"))
        .collect()
}

/// The value after `--flag` (or of `--flag=value`) in an argument list.
fn flag_value(args: &[String], flag: &str) -> Option<String> {
    args.iter().enumerate().find_map(|(i, a)| {
        if a == flag {
            args.get(i + 1).cloned()
        } else {
            a.strip_prefix(&format!("{flag}=")).map(str::to_string)
        }
    })
}

/// What scripts/dev-stack sets up, read from the script itself so that the two cannot drift apart unnoticed.
struct DevStack {
    access_key: String,
    secret_key: String,
    region: String,
    bucket: String,
    /// (topic, partitions), in the script's order.
    topics: Vec<(String, u32)>,
    /// The variables `dev-stack env` exports (what pipelines/local.toml's ${NAME}s ask for).
    exported: Vec<String>,
    /// The Kafka release scripts/devstack/pom.xml gathers.
    kafka_version: String,
}

fn dev_stack() -> DevStack {
    let text = read("scripts/dev-stack");
    let var = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .map(|v| v.trim().trim_matches('"').to_string())
            .unwrap_or_else(|| panic!("scripts/dev-stack sets no {name}"))
    };
    let topics = parse_topics(var("TOPICS").trim_start_matches('(').trim_end_matches(')'));
    // What `dev-stack env` prints: the exports of `print_env` (not `print_secure_env`'s, whose broker is for the
    // TLS/SASL tests only and has no place in the compose stack).
    let print_env = text.split("print_env() {").nth(1).and_then(|t| t.split("\n}").next()).expect("dev-stack has print_env");
    let exported = print_env
        .lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(name, _)| name.to_string())
        .collect();
    let pom = read("scripts/devstack/pom.xml");
    let kafka_version = pom
        .split("<kafka.version>")
        .nth(1)
        .and_then(|s| s.split("</kafka.version>").next())
        .expect("scripts/devstack/pom.xml names kafka.version")
        .trim()
        .to_string();
    DevStack {
        access_key: var("S3_ACCESS_KEY"),
        secret_key: var("S3_SECRET_KEY"),
        region: var("S3_REGION"),
        bucket: var("S3_BUCKET"),
        topics,
        exported,
        kafka_version,
    }
}

/// `name:partitions name:partitions ...` (dev-stack's TOPICS syntax).
fn parse_topics(list: &str) -> Vec<(String, u32)> {
    list.split_whitespace()
        .map(|t| {
            let (name, partitions) = t.split_once(':').unwrap_or((t, "1"));
            (name.to_string(), partitions.parse().unwrap_or_else(|e| panic!("topic `{t}`: {e}")))
        })
        .collect()
}

/// The version scripts/setup installs (tch needs exactly this libtorch).
fn torch_version() -> String {
    read("scripts/setup")
        .lines()
        .find_map(|l| l.strip_prefix("TORCH_VERSION="))
        .expect("scripts/setup sets TORCH_VERSION")
        .trim()
        .to_string()
}

/// The port of a `host:port` listen address.
fn port_of(listen: &str) -> u16 {
    listen.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("no port in `{listen}`"))
}

/// (host, port, path) of an `http://host:port/path` inside a command line.
fn http_url(text: &str) -> Option<(String, u16, String)> {
    let rest = &text[text.find("http://")? + "http://".len()..];
    let url: String = rest.chars().take_while(|c| !c.is_whitespace() && !"\"'".contains(*c)).collect();
    let (authority, path) = url.split_once('/').map(|(a, p)| (a, format!("/{p}"))).unwrap_or((&url, "/".into()));
    let (host, port) = authority.rsplit_once(':')?;
    Some((host.to_string(), port.parse().ok()?, path))
}

/// Parses a pipeline file's text as the daemon does: `GLOWD__<TABLE>__<KEY>` overrides from `env`, then `${NAME}`
/// from `env` (an unset one is an error).
fn parse_pipeline(text: &str, base: &Path, env: &BTreeMap<String, String>) -> Result<PipelineFile, String> {
    let mut value: toml::Value = toml::from_str(text).map_err(|e| e.to_string())?;
    glowd::daemon::config::override_from_env(&mut value, env.iter().map(|(k, v)| (k.clone(), v.clone())))?;
    let text = toml::to_string(&value).map_err(|e| e.to_string())?;
    PipelineFile::parse(&text, base, &|k| env.get(k).cloned())
}

fn toml_value(text: &str, what: &str) -> toml::Table {
    toml::from_str(text).unwrap_or_else(|e| panic!("{what}: {e}"))
}

// ------------------------------------------------------------------------------------------------ docker compose

fn compose() -> Value {
    yaml_file("docker-compose.yml")
}

fn compose_schema_errors(instance: &Value) -> Vec<String> {
    let schema: Value = serde_json::from_str(&read("tests/fixtures/compose-spec.json")).unwrap();
    let validator = jsonschema::validator_for(&schema).expect("the Compose schema compiles");
    validator.iter_errors(instance).map(|e| format!("{}: {e}", e.instance_path())).collect()
}

/// A service's `environment`, in either of its forms (map, or list of NAME=value).
fn compose_env(service: &Value) -> BTreeMap<String, String> {
    match &service["environment"] {
        Value::Object(m) => m.iter().map(|(k, v)| (k.clone(), str_of(v))).collect(),
        Value::Array(a) => a
            .iter()
            .map(|e| {
                let e = str_of(e);
                let (k, v) = e.split_once('=').unwrap_or((&e, ""));
                (k.to_string(), v.to_string())
            })
            .collect(),
        _ => BTreeMap::new(),
    }
}

/// A service's `command` or `entrypoint` as one string (for looking into shell scripts).
fn compose_text(v: &Value) -> String {
    match v {
        Value::Array(a) => a.iter().map(str_of).collect::<Vec<_>>().join(" "),
        other => str_of(other),
    }
}

/// Short-syntax volume `source:target[:mode]` whose target is `target`: its source.
fn compose_volume_source(service: &Value, target: &str) -> Option<String> {
    service["volumes"].as_array()?.iter().find_map(|v| {
        let parts: Vec<&str> = v.as_str()?.split(':').collect();
        (parts.get(1) == Some(&target)).then(|| parts[0].to_string())
    })
}

/// Container-side ports a service publishes (`host:container` short syntax).
fn compose_container_ports(service: &Value) -> BTreeSet<u16> {
    strings(&service["ports"]).iter().filter_map(|p| p.rsplit(':').next()?.split('/').next()?.parse().ok()).collect()
}

/// Seconds of a compose duration (`40s`, `1m30s`, `500ms`).
fn compose_seconds(d: &str) -> f64 {
    let (mut total, mut number) = (0.0, String::new());
    let mut chars = d.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            number.push(c);
            continue;
        }
        let n: f64 = number.parse().unwrap_or_else(|_| panic!("duration `{d}`"));
        number.clear();
        total += match c {
            'h' => n * 3600.0,
            'm' if chars.peek() == Some(&'s') => {
                chars.next();
                n / 1000.0
            }
            'm' => n * 60.0,
            's' => n,
            _ => panic!("duration `{d}`: unit `{c}`"),
        };
    }
    assert!(number.is_empty(), "duration `{d}` has no unit");
    total
}

/// docker-compose.yml against scripts/dev-stack: the same Kafka release, topics and partitions, bucket, region and
/// credentials, and every variable `dev-stack env` exports given to the daemon.
fn compose_dev_stack_problems(c: &Value, ds: &DevStack) -> Vec<String> {
    let mut p = Vec::new();
    let services = &c["services"];
    let kafka_image = format!("apache/kafka:{}", ds.kafka_version);
    for name in ["kafka", "init-topics"] {
        if services[name]["image"] != json!(kafka_image) {
            p.push(format!("services.{name}.image: {} (dev-stack runs Kafka {kafka_image})", services[name]["image"]));
        }
    }
    let minio = compose_env(&services["minio"]);
    for (key, want) in
        [("MINIO_ROOT_USER", &ds.access_key), ("MINIO_ROOT_PASSWORD", &ds.secret_key), ("MINIO_REGION", &ds.region)]
    {
        if minio.get(key) != Some(want) {
            p.push(format!("services.minio.environment.{key}: {:?}, dev-stack uses {want:?}", minio.get(key)));
        }
    }
    let topics_env = compose_env(&services["init-topics"]);
    let topics = parse_topics(topics_env.get("GLOWD_TOPICS").map(String::as_str).unwrap_or(""));
    if topics != ds.topics {
        p.push(format!("services.init-topics.environment.GLOWD_TOPICS: {topics:?}, dev-stack creates {:?}", ds.topics));
    }
    let script = compose_text(&services["init-topics"]["command"]);
    if !(script.contains("$$GLOWD_TOPICS") && script.contains("--partitions") && script.contains("kafka-topics.sh")) {
        p.push("services.init-topics.command: does not create $GLOWD_TOPICS with kafka-topics.sh --partitions".into());
    }
    let bucket_env = compose_env(&services["init-bucket"]);
    for (key, want) in [("S3_ACCESS_KEY", &ds.access_key), ("S3_SECRET_KEY", &ds.secret_key), ("S3_BUCKET", &ds.bucket)]
    {
        if bucket_env.get(key) != Some(want) {
            p.push(format!(
                "services.init-bucket.environment.{key}: {:?}, dev-stack uses {want:?}",
                bucket_env.get(key)
            ));
        }
    }
    if !compose_text(&services["init-bucket"]["command"]).contains("mc mb --ignore-existing \"dev/$$S3_BUCKET\"") {
        p.push("services.init-bucket.command: does not create the bucket $S3_BUCKET".into());
    }
    let glowd = compose_env(&services["glowd"]);
    for name in &ds.exported {
        if !glowd.contains_key(name) {
            p.push(format!("services.glowd.environment: no {name} (`dev-stack env` exports it)"));
        }
    }
    for (key, want) in [
        ("AWS_ACCESS_KEY_ID", &ds.access_key),
        ("AWS_SECRET_ACCESS_KEY", &ds.secret_key),
        ("AWS_REGION", &ds.region),
        ("S3_BUCKET", &ds.bucket),
    ] {
        if glowd.get(key) != Some(want) {
            p.push(format!("services.glowd.environment.{key}: {:?}, dev-stack uses {want:?}", glowd.get(key)));
        }
    }
    p
}

/// How the compose services find each other and start in order, and what the daemon runs.
fn compose_wiring_problems(c: &Value, routes: &BTreeSet<String>) -> Vec<String> {
    let mut p = Vec::new();
    let services = c["services"].as_object().expect("services");
    for (name, s) in services {
        for (dep, spec) in s["depends_on"].as_object().into_iter().flatten() {
            let Some(target) = services.get(dep) else {
                p.push(format!("services.{name}.depends_on: no service {dep}"));
                continue;
            };
            match spec["condition"].as_str() {
                Some("service_healthy") if target["healthcheck"]["test"].is_null() => {
                    p.push(format!("services.{name}.depends_on.{dep}: service_healthy, but {dep} has no healthcheck"))
                }
                Some("service_completed_successfully") if !matches!(target["restart"].as_str(), None | Some("no")) => {
                    p.push(format!("services.{name}.depends_on.{dep}: waits for it to exit, but it restarts"))
                }
                Some(_) => {}
                None => {
                    p.push(format!("services.{name}.depends_on.{dep}: no condition (it would only wait for the start)"))
                }
            }
        }
        let test = compose_text(&s["healthcheck"]["test"]);
        if let Some((_, _, path)) = http_url(&test) {
            if !routes.contains(&path) {
                p.push(format!("services.{name}.healthcheck: {path} is not a route of src/daemon/http.rs {routes:?}"));
            }
        }
    }
    let glowd = &c["services"]["glowd"];
    for (dep, condition) in [
        ("kafka", "service_healthy"),
        ("minio", "service_healthy"),
        ("init-topics", "service_completed_successfully"),
        ("init-bucket", "service_completed_successfully"),
    ] {
        if glowd["depends_on"][dep]["condition"] != json!(condition) {
            p.push(format!("services.glowd.depends_on.{dep}: want condition {condition}"));
        }
    }
    if glowd["build"]["dockerfile"] != json!("deploy/Dockerfile") {
        p.push("services.glowd.build.dockerfile: not deploy/Dockerfile".into());
    }
    let command = strings(&glowd["command"]);
    p.extend(cli_problems("services.glowd.command", &command));
    let env = compose_env(glowd);

    // The brokers and the S3 endpoint the daemon is given are compose services, on ports they listen on.
    let brokers = env.get("KAFKA_BROKERS").cloned().unwrap_or_default();
    let broker_host = brokers.split(':').next().unwrap_or_default();
    let advertised =
        compose_env(&c["services"][broker_host]).get("KAFKA_ADVERTISED_LISTENERS").cloned().unwrap_or_default();
    if !advertised.split(',').any(|l| l.ends_with(&format!("//{brokers}"))) {
        p.push(format!("services.glowd KAFKA_BROKERS={brokers}: not among service {broker_host}'s advertised listeners ({advertised})"));
    }
    if compose_env(&c["services"]["init-topics"]).get("KAFKA_BOOTSTRAP") != Some(&brokers) {
        p.push("services.init-topics KAFKA_BOOTSTRAP: not the daemon's KAFKA_BROKERS".into());
    }
    let endpoint = env.get("S3_ENDPOINT").cloned().unwrap_or_default();
    match http_url(&endpoint) {
        Some((host, port, _)) if compose_container_ports(&c["services"][&host]).contains(&port) => {}
        _ => p.push(format!("services.glowd S3_ENDPOINT={endpoint}: not a port a compose service listens on")),
    }
    if compose_env(&c["services"]["init-bucket"]).get("S3_ENDPOINT") != Some(&endpoint) {
        p.push("services.init-bucket S3_ENDPOINT: not the daemon's S3_ENDPOINT".into());
    }

    // The pipeline file the daemon runs: mounted, complete for the environment it gets, serving on the published
    // port, and draining within the stop grace period.
    let Some(config) = flag_value(&command, "--config") else {
        p.push("services.glowd.command: no --config".into());
        return p;
    };
    let Some(source) = compose_volume_source(glowd, &config) else {
        p.push(format!("services.glowd.volumes: nothing mounted at {config}"));
        return p;
    };
    let source = repo().join(&source);
    let text = std::fs::read_to_string(&source).unwrap_or_else(|e| panic!("{}: {e}", source.display()));
    let mut value = toml_value(&text, "the compose pipeline");
    let models_dir = value.get("models_dir").and_then(|v| v.as_str()).unwrap_or_default().to_string();
    match compose_volume_source(glowd, &models_dir) {
        // The pipeline names the container path; the models are the mount's source on this side.
        Some(models) => {
            value.insert("models_dir".into(), toml::Value::String(repo().join(models).display().to_string()));
        }
        None => p.push(format!("services.glowd.volumes: nothing mounted at the pipeline's models_dir `{models_dir}`")),
    }
    let file = match parse_pipeline(&toml::to_string(&value).unwrap(), repo(), &env) {
        Ok(f) => f,
        Err(e) => {
            p.push(format!("{}: with services.glowd.environment: {e}", source.display()));
            return p;
        }
    };
    if file.models.is_empty() {
        p.push(format!("{}: no models in the mounted models folder", source.display()));
    }
    let port = port_of(&file.http.listen);
    if !file.http.listen.starts_with("0.0.0.0:") {
        p.push(format!(
            "{}: http.listen {} is not reachable through a published port",
            source.display(),
            file.http.listen
        ));
    }
    if !compose_container_ports(glowd).contains(&port) {
        p.push(format!("services.glowd.ports: {port} (http.listen) is not published"));
    }
    match http_url(&compose_text(&glowd["healthcheck"]["test"])) {
        Some((_, hport, _)) if hport == port => {}
        other => p.push(format!("services.glowd.healthcheck: {other:?} is not http.listen's port {port}")),
    }
    let grace = glowd["stop_grace_period"].as_str().map(compose_seconds).unwrap_or(10.0);
    let drain = file.pipeline.limits.drain_timeout_seconds;
    if grace <= drain {
        p.push(format!("services.glowd.stop_grace_period: {grace} s is not longer than drain_timeout_seconds {drain}"));
    }

    // Prometheus (profile `metrics`) scrapes that port.
    let prom = &c["services"]["prometheus"];
    if !strings(&prom["profiles"]).contains(&"metrics".to_string()) {
        p.push("services.prometheus: not under the `metrics` profile".into());
    }
    match compose_volume_source(prom, "/etc/prometheus/prometheus.yml") {
        Some(src) => {
            let cfg = yaml_file(src.trim_start_matches("./"));
            let jobs = cfg["scrape_configs"].as_array().cloned().unwrap_or_default();
            let scrapes = jobs.iter().any(|j| {
                let path = j["metrics_path"].as_str().unwrap_or("/metrics");
                routes.contains(path)
                    && j["static_configs"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|s| strings(&s["targets"]).contains(&format!("glowd:{port}")))
            });
            if !scrapes {
                p.push(format!("{src}: no scrape job for glowd:{port} on a route of src/daemon/http.rs"));
            }
        }
        None => p.push("services.prometheus.volumes: no /etc/prometheus/prometheus.yml".into()),
    }
    p
}

#[test]
fn compose_file_is_valid_against_the_compose_specification() {
    assert_no_problems(
        "docker-compose.yml against tests/fixtures/compose-spec.json",
        compose_schema_errors(&compose()),
    );
}

#[test]
fn compose_schema_check_catches_a_misspelt_key_and_a_wrong_condition() {
    let mut c = compose();
    c["services"]["glowd"]["healtcheck"] = json!({"test": ["CMD", "true"]});
    c["services"]["glowd"]["depends_on"]["kafka"]["condition"] = json!("service_ready");
    let errors = compose_schema_errors(&c);
    assert_complains("misspelt key", &errors, "healtcheck");
    assert_complains("unknown condition", &errors, "/services/glowd/depends_on");
}

#[test]
fn compose_matches_the_dev_stack() {
    assert_no_problems("docker-compose.yml vs scripts/dev-stack", compose_dev_stack_problems(&compose(), &dev_stack()));
}

#[test]
fn compose_dev_stack_check_catches_drift() {
    let ds = dev_stack();
    let mut c = compose();
    c["services"]["init-topics"]["environment"]["GLOWD_TOPICS"] =
        json!("glowd.jobs:3 glowd.results:1 glowd.jobs.dlq:1");
    c["services"]["glowd"]["environment"]["AWS_SECRET_ACCESS_KEY"] = json!("something-else");
    let problems = compose_dev_stack_problems(&c, &ds);
    assert_complains("partitions", &problems, "GLOWD_TOPICS");
    assert_complains("credentials", &problems, "AWS_SECRET_ACCESS_KEY");
}

#[test]
fn compose_services_are_wired_together_and_run_the_mounted_pipeline() {
    assert_no_problems("docker-compose.yml wiring", compose_wiring_problems(&compose(), &http_routes()));
}

#[test]
fn compose_wiring_check_catches_a_wrong_healthcheck_and_a_short_grace_period() {
    let mut c = compose();
    c["services"]["glowd"]["healthcheck"]["test"] = json!(["CMD", "curl", "-fsS", "http://127.0.0.1:9464/ready"]);
    c["services"]["glowd"]["stop_grace_period"] = json!("5s");
    c["services"]["glowd"]["environment"]["KAFKA_BROKERS"] = json!("kafka:9092");
    let problems = compose_wiring_problems(&c, &http_routes());
    assert_complains("probe path", &problems, "/ready is not a route");
    assert_complains("grace period", &problems, "stop_grace_period");
    assert_complains("broker listener", &problems, "KAFKA_BROKERS=kafka:9092");
}

/// The compose pipeline is pipelines/local.toml, except where containers need otherwise.
#[test]
fn compose_pipeline_mirrors_pipelines_local_toml() {
    let strip = |text: &str, what: &str| {
        let mut t = toml_value(text, what);
        t.remove("models_dir");
        t.remove("http");
        t
    };
    let local = strip(&read("pipelines/local.toml"), "pipelines/local.toml");
    let compose = strip(&read("deploy/compose/pipeline.toml"), "deploy/compose/pipeline.toml");
    for table in local.keys().chain(compose.keys()).collect::<BTreeSet<_>>() {
        assert_eq!(
            local.get(table),
            compose.get(table),
            "deploy/compose/pipeline.toml differs from pipelines/local.toml in `{table}` (only models_dir and [http] may)"
        );
    }
}

// ------------------------------------------------------------------------------------------------ Dockerfiles

struct Instruction {
    op: String,
    args: String,
}

struct Stage {
    name: Option<String>,
    instructions: Vec<Instruction>,
}

impl Stage {
    fn all<'a>(&'a self, op: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.instructions.iter().filter(move |i| i.op == op).map(|i| i.args.as_str())
    }
    fn last(&self, op: &str) -> Option<&str> {
        self.instructions.iter().rev().find(|i| i.op == op).map(|i| i.args.as_str())
    }
}

/// Stages of a Dockerfile (instructions before the first FROM are dropped); continuation lines are joined and
/// comment lines skipped, as Docker does.
fn dockerfile_stages(text: &str) -> Vec<Stage> {
    let mut logical = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                logical.push(std::mem::take(&mut current));
            }
        }
    }
    let mut stages: Vec<Stage> = Vec::new();
    for l in logical.iter().filter(|l| !l.trim().is_empty()) {
        let (op, args) = l.trim().split_once(char::is_whitespace).unwrap_or((l, ""));
        let (op, args) = (op.to_ascii_uppercase(), args.trim().to_string());
        if op == "FROM" {
            let words: Vec<&str> = args.split_whitespace().collect();
            let name = words.iter().position(|w| w.eq_ignore_ascii_case("AS")).and_then(|i| words.get(i + 1));
            stages.push(Stage { name: name.map(|s| s.to_string()), instructions: Vec::new() });
        } else if let Some(stage) = stages.last_mut() {
            stage.instructions.push(Instruction { op, args });
        }
    }
    stages
}

/// The source paths of a COPY (flags dropped, destination dropped); JSON form too.
fn copy_sources(args: &str) -> (Option<String>, Vec<String>) {
    let mut words: Vec<String> = if args.trim_start().starts_with('[') {
        serde_json::from_str(args).unwrap_or_default()
    } else {
        args.split_whitespace().map(str::to_string).collect()
    };
    let from = words.iter().find_map(|w| w.strip_prefix("--from=").map(str::to_string));
    words.retain(|w| !w.starts_with("--"));
    words.pop();
    (from, words)
}

/// Whether `.dockerignore` lets `path` (relative to the context) through. Only the patterns it uses are
/// understood (`*`, and plain paths, negated or not): anything else is refused so that this check is not fooled.
fn docker_context_includes(dockerignore: &str, path: &str) -> bool {
    let mut included = true;
    for line in dockerignore.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let (negated, pattern) = match line.strip_prefix('!') {
            Some(p) => (true, p.trim_end_matches('/')),
            None => (false, line.trim_end_matches('/')),
        };
        assert!(
            pattern == "*" || !pattern.contains(['*', '?', '[']),
            ".dockerignore pattern `{line}`: teach docker_context_includes its globbing first"
        );
        if pattern == "*" || path == pattern || path.starts_with(&format!("{pattern}/")) {
            included = negated;
        }
    }
    included
}

/// Files the crate compiles in (`include_str!`, `include_bytes!`), relative to the repository.
fn compiled_in_files() -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for entry in walkdir::WalkDir::new(repo().join("src")).into_iter().filter_map(Result::ok) {
        if entry.path().extension().and_then(|e| e.to_str()) != Some("rs") {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).unwrap();
        for mac in ["include_str!(\"", "include_bytes!(\""] {
            for (i, m) in text.match_indices(mac) {
                let rest = &text[i + m.len()..];
                let target = entry.path().parent().unwrap().join(&rest[..rest.find('"').unwrap()]);
                found.insert(normalised(target.strip_prefix(repo()).unwrap()));
            }
        }
    }
    found
}

/// `a/b/../c` -> `a/c`, with `/` separators.
fn normalised(p: &Path) -> String {
    let mut parts: Vec<String> = Vec::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                parts.pop();
            }
            Component::Normal(s) => parts.push(s.to_string_lossy().into_owned()),
            _ => {}
        }
    }
    parts.join("/")
}

enum Variant {
    Cpu,
    Cuda,
}

fn dockerfile_problems(rel: &str, text: &str, variant: Variant, routes: &BTreeSet<String>) -> Vec<String> {
    let mut p = Vec::new();
    let stages = dockerfile_stages(text);
    if stages.len() < 2 {
        p.push(format!("{rel}: {} stage(s); the toolchain must stay out of the runtime image", stages.len()));
        return p;
    }
    let dockerignore = read(".dockerignore");
    let mut copied = Vec::new();
    for (i, stage) in stages.iter().enumerate() {
        for args in stage.all("COPY") {
            let (from, sources) = copy_sources(args);
            match from {
                Some(f) if !stages[..i].iter().any(|s| s.name.as_deref() == Some(f.as_str())) => {
                    p.push(format!("{rel}: COPY --from={f}: no earlier stage of that name"))
                }
                Some(_) => {}
                None => {
                    for s in sources {
                        let s = s.trim_start_matches("./").trim_end_matches('/').to_string();
                        if !repo().join(&s).exists() {
                            p.push(format!("{rel}: COPY {s}: no such path in the repository"));
                        }
                        if !docker_context_includes(&dockerignore, &s) {
                            p.push(format!("{rel}: COPY {s}: .dockerignore keeps it out of the build context"));
                        }
                        copied.push(s);
                    }
                }
            }
        }
    }
    for file in compiled_in_files() {
        if !copied.iter().any(|c| file == *c || file.starts_with(&format!("{c}/"))) {
            p.push(format!("{rel}: src compiles in {file}, which no COPY brings into the build"));
        }
    }
    if copied.iter().any(|c| c == "deploy/stage-libtorch.sh") {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(repo().join("deploy/stage-libtorch.sh")).unwrap().permissions().mode();
        if mode & 0o111 == 0 {
            p.push("deploy/stage-libtorch.sh: not executable, but run directly".into());
        }
    }

    // The builder: libtorch from the pinned torch wheel, the locked build.
    let Some(builder) = stages.iter().find(|s| s.all("RUN").any(|r| r.contains("cargo build"))) else {
        p.push(format!("{rel}: no stage runs cargo build"));
        return p;
    };
    if !builder.all("RUN").any(|r| r.contains("cargo build") && r.contains("--release") && r.contains("--locked")) {
        p.push(format!("{rel}: cargo build without --release --locked"));
    }
    if !builder.all("ENV").any(|e| e.split_whitespace().any(|w| w == "LIBTORCH_USE_PYTORCH=1")) {
        p.push(format!("{rel}: the builder does not set LIBTORCH_USE_PYTORCH=1"));
    }
    let torch = format!("torch=={}", torch_version());
    let pip: Vec<&str> = builder.all("RUN").filter(|r| r.contains("pip install")).collect();
    let pinned = pip.iter().flat_map(|r| r.split_whitespace()).find(|w| w.starts_with("torch=="));
    let cpu_index = pip.iter().any(|r| r.contains("--index-url https://download.pytorch.org/whl/cpu"));
    match variant {
        Variant::Cpu => {
            if pinned != Some(format!("{torch}+cpu").as_str()) || !cpu_index {
                p.push(format!("{rel}: want {torch}+cpu from https://download.pytorch.org/whl/cpu, got {pinned:?}"));
            }
        }
        Variant::Cuda => {
            if pinned != Some(torch.as_str()) || cpu_index {
                p.push(format!("{rel}: want PyPI's (CUDA) {torch}, got {pinned:?} (CPU index: {cpu_index})"));
            }
        }
    }

    // The runtime stage: unprivileged, health-checked, serving the pipeline's port, running what compose runs.
    let runtime = stages.last().unwrap();
    if runtime.all("RUN").any(|r| r.contains("cargo")) {
        p.push(format!("{rel}: the last stage builds; it should only copy the build's output"));
    }
    match runtime.last("USER").map(|u| u.split(':').map(|x| x.parse::<u32>()).collect::<Vec<_>>()) {
        Some(ids) if !ids.is_empty() && ids.iter().all(|id| matches!(id, Ok(n) if *n != 0)) => {}
        other => p.push(format!("{rel}: USER must be a numeric non-root uid[:gid], got {other:?}")),
    }
    let k8s_port = port_of(&k8s_daemon_pipeline().http.listen);
    let exposed: Vec<u16> = runtime
        .all("EXPOSE")
        .flat_map(|e| e.split_whitespace())
        .filter_map(|x| x.split('/').next()?.parse().ok())
        .collect();
    if exposed != vec![k8s_port] {
        p.push(format!("{rel}: EXPOSE {exposed:?}, the pipelines listen on {k8s_port}"));
    }
    match runtime.last("HEALTHCHECK").and_then(http_url) {
        Some((_, port, path)) if port == k8s_port && path == "/healthz" && routes.contains(&path) => {}
        other => p.push(format!("{rel}: HEALTHCHECK must fetch /healthz on {k8s_port}, got {other:?}")),
    }
    let json_array = |op: &str| runtime.last(op).and_then(|a| serde_json::from_str::<Vec<String>>(a).ok());
    if json_array("ENTRYPOINT") != Some(vec!["glowd".to_string()]) {
        p.push(format!("{rel}: ENTRYPOINT must be [\"glowd\"] (exec form, so SIGTERM reaches the daemon)"));
    }
    match json_array("CMD") {
        Some(cmd) => {
            p.extend(cli_problems(&format!("{rel}: CMD"), &cmd));
            let compose_cmd = strings(&compose()["services"]["glowd"]["command"]);
            if cmd != compose_cmd {
                p.push(format!("{rel}: CMD {cmd:?} is not what compose runs ({compose_cmd:?})"));
            }
        }
        None => p.push(format!("{rel}: no exec-form CMD")),
    }
    p
}

#[test]
fn dockerfiles_build_locked_and_run_unprivileged() {
    let routes = http_routes();
    for (rel, variant) in [("deploy/Dockerfile", Variant::Cpu), ("deploy/Dockerfile.cuda", Variant::Cuda)] {
        assert_no_problems(rel, dockerfile_problems(rel, &read(rel), variant, &routes));
    }
}

#[test]
fn dockerfile_check_catches_root_an_unlocked_build_and_a_wrong_healthcheck() {
    let text = read("deploy/Dockerfile")
        .replace("USER 10001:10001", "USER root")
        .replace("cargo build --release --locked", "cargo build --release")
        .replace("127.0.0.1:9464/healthz", "127.0.0.1:9464/health");
    let problems = dockerfile_problems("broken Dockerfile", &text, Variant::Cpu, &http_routes());
    assert_complains("user", &problems, "USER");
    assert_complains("locked", &problems, "--locked");
    assert_complains("healthcheck", &problems, "HEALTHCHECK");
}

// ------------------------------------------------------------------------------------------------ Kubernetes

const BASE: &str = "deploy/k8s/base";

/// Every YAML document under deploy/k8s, with its file.
fn k8s_documents() -> Vec<(PathBuf, Value)> {
    let mut docs = Vec::new();
    for entry in walkdir::WalkDir::new(repo().join("deploy/k8s")).sort_by_file_name().into_iter().filter_map(Result::ok)
    {
        let path = entry.path();
        if matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
            let text = std::fs::read_to_string(path).unwrap();
            for doc in yaml_documents(&text, &path.display().to_string()) {
                docs.push((path.strip_prefix(repo()).unwrap().to_path_buf(), doc));
            }
        }
    }
    docs
}

fn is_kustomization(path: &Path) -> bool {
    path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("kustomization."))
}

/// The base as kustomize would assemble it: the objects its kustomization lists, its generated ConfigMaps
/// (name -> key -> value), and the Secrets that secret.example.yaml promises (name -> keys).
struct Base {
    objects: Vec<Value>,
    config_maps: BTreeMap<String, BTreeMap<String, String>>,
    secrets: BTreeMap<String, BTreeSet<String>>,
}

impl Base {
    fn load() -> Base {
        let kustomization = yaml_file(&format!("{BASE}/kustomization.yaml"));
        let mut objects = Vec::new();
        for r in strings(&kustomization["resources"]) {
            objects.extend(yaml_documents(&read(&format!("{BASE}/{r}")), &r));
        }
        let mut config_maps = BTreeMap::new();
        for g in kustomization["configMapGenerator"].as_array().into_iter().flatten() {
            let mut data = BTreeMap::new();
            for f in strings(&g["files"]) {
                let (key, file) = f.split_once('=').unwrap_or((f.rsplit('/').next().unwrap(), f.as_str()));
                data.insert(key.to_string(), read(&format!("{BASE}/{file}")));
            }
            for l in strings(&g["literals"]) {
                let (k, v) = l.split_once('=').unwrap_or_else(|| panic!("literal `{l}`"));
                data.insert(k.to_string(), v.to_string());
            }
            config_maps.insert(str_of(&g["name"]), data);
        }
        for cm in objects.iter().filter(|o| o["kind"] == "ConfigMap") {
            let data = cm["data"].as_object().into_iter().flatten().map(|(k, v)| (k.clone(), str_of(v))).collect();
            config_maps.insert(str_of(&cm["metadata"]["name"]), data);
        }
        let secrets = yaml_documents(&read(&format!("{BASE}/secret.example.yaml")), "secret.example.yaml")
            .into_iter()
            .filter(|s| s["kind"] == "Secret")
            .map(|s| {
                let keys = ["stringData", "data"]
                    .iter()
                    .flat_map(|f| s[*f].as_object().into_iter().flatten().map(|(k, _)| k.clone()))
                    .collect();
                (str_of(&s["metadata"]["name"]), keys)
            })
            .collect();
        Base { objects, config_maps, secrets }
    }

    fn one(&self, kind: &str) -> &Value {
        let mut of_kind = self.objects.iter().filter(|o| o["kind"] == kind);
        let first = of_kind.next().unwrap_or_else(|| panic!("the base has no {kind}"));
        assert!(of_kind.next().is_none(), "the base has several of kind {kind}");
        first
    }

    fn one_mut(&mut self, kind: &str) -> &mut Value {
        self.objects.iter_mut().find(|o| o["kind"] == kind).unwrap_or_else(|| panic!("the base has no {kind}"))
    }
}

fn pod_spec(workload: &Value) -> &Value {
    match workload["kind"].as_str() {
        Some("CronJob") => &workload["spec"]["jobTemplate"]["spec"]["template"]["spec"],
        _ => &workload["spec"]["template"]["spec"],
    }
}

fn pod_labels(workload: &Value) -> &Value {
    match workload["kind"].as_str() {
        Some("CronJob") => &workload["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"],
        _ => &workload["spec"]["template"]["metadata"]["labels"],
    }
}

fn containers(workload: &Value) -> Vec<&Value> {
    let spec = pod_spec(workload);
    ["initContainers", "containers"].iter().flat_map(|f| spec[*f].as_array().into_iter().flatten()).collect()
}

/// The main container: the one whose arguments start with a glowd subcommand.
fn glowd_container(workload: &Value) -> &Value {
    let spec = pod_spec(workload);
    let mut c = spec["containers"].as_array().into_iter().flatten().filter(|c| c["command"].is_null());
    let first = c.next().expect("a container that runs the image's entrypoint (glowd)");
    assert!(c.next().is_none(), "several glowd containers");
    first
}

/// Whether every label of `selector` is among `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    selector.as_object().is_some_and(|s| !s.is_empty() && s.iter().all(|(k, v)| labels[k] == *v))
}

/// A container's environment as the process would see it: literal values, ConfigMap values, `dummy-<name>` for
/// Secret values (their keys are checked separately), `fieldref-<name>` for the downward API.
fn container_env(
    container: &Value,
    config_maps: &BTreeMap<String, BTreeMap<String, String>>,
) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for e in container["env"].as_array().into_iter().flatten() {
        let name = str_of(&e["name"]);
        let from = &e["valueFrom"];
        let value = if !from["configMapKeyRef"].is_null() {
            let r = &from["configMapKeyRef"];
            config_maps.get(&str_of(&r["name"])).and_then(|m| m.get(&str_of(&r["key"]))).cloned()
        } else if !from["secretKeyRef"].is_null() {
            Some(format!("dummy-{name}"))
        } else if !from["fieldRef"].is_null() {
            Some(format!("fieldref-{name}"))
        } else {
            Some(str_of(&e["value"]))
        };
        if let Some(v) = value {
            env.insert(name, v);
        }
    }
    env
}

/// `$(NAME)` references of a command line, as Kubernetes expands them.
fn k8s_references(arg: &str) -> Vec<String> {
    arg.match_indices("$(").filter_map(|(i, _)| arg[i + 2..].split_once(')').map(|(n, _)| n.to_string())).collect()
}

fn k8s_expand(arg: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = arg.to_string();
    for name in k8s_references(arg) {
        if let Some(v) = env.get(&name) {
            out = out.replace(&format!("$({name})"), v);
        }
    }
    out
}

/// The text of the file a container reads at `path`: a ConfigMap key mounted at its folder.
fn mounted_file(
    workload: &Value,
    container: &Value,
    path: &str,
    config_maps: &BTreeMap<String, BTreeMap<String, String>>,
) -> Result<String, String> {
    let (dir, file) = path.rsplit_once('/').ok_or_else(|| format!("`{path}` is not absolute"))?;
    let mount = container["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["mountPath"] == dir)
        .ok_or_else(|| format!("nothing is mounted at {dir}"))?;
    let volume = pod_spec(workload)["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == mount["name"])
        .ok_or_else(|| format!("no volume {}", mount["name"]))?;
    let cm = str_of(&volume["configMap"]["name"]);
    config_maps
        .get(&cm)
        .and_then(|data| data.get(file))
        .cloned()
        .ok_or_else(|| format!("{dir} is volume {}, whose ConfigMap `{cm}` has no key {file}", mount["name"]))
}

/// The daemon's pipeline as the Deployment's glowd container reads it.
fn daemon_pipeline_of(
    deployment: &Value,
    config_maps: &BTreeMap<String, BTreeMap<String, String>>,
) -> Result<(PipelineFile, String), String> {
    let container = glowd_container(deployment);
    let args = strings(&container["args"]);
    let path = flag_value(&args, "--config").ok_or("the glowd container has no --config")?;
    let text = mounted_file(deployment, container, &path, config_maps)?;
    let file = parse_pipeline(&text, Path::new("/"), &container_env(container, config_maps))
        .map_err(|e| format!("{path} with the container's environment: {e}"))?;
    Ok((file, text))
}

fn k8s_daemon_pipeline() -> PipelineFile {
    let base = Base::load();
    daemon_pipeline_of(base.one("Deployment"), &base.config_maps).unwrap_or_else(|e| panic!("{e}")).0
}

/// CPU quantity in cores (`500m`, `2`).
fn cores(q: &Value) -> Option<f64> {
    let s = str_of(q);
    match s.strip_suffix('m') {
        Some(milli) => milli.parse::<f64>().ok().map(|m| m / 1000.0),
        None => s.parse().ok(),
    }
}

/// Every YAML file: parseable, and each object names its apiVersion, kind and name; every kustomization's
/// resources, patches and generator files exist; the example Secrets are never applied.
fn k8s_shape_problems(docs: &[(PathBuf, Value)]) -> Vec<String> {
    let mut p = Vec::new();
    for (path, doc) in docs {
        let at = path.display();
        if is_kustomization(path) {
            let dir = repo().join(path.parent().unwrap());
            let mut listed: Vec<String> = strings(&doc["resources"]);
            listed.extend(
                doc["patches"].as_array().into_iter().flatten().filter_map(|x| x["path"].as_str().map(str::to_string)),
            );
            for g in doc["configMapGenerator"].as_array().into_iter().flatten() {
                listed.extend(
                    strings(&g["files"]).iter().map(|f| f.split_once('=').map_or(f.as_str(), |x| x.1).to_string()),
                );
            }
            for r in listed {
                let target = dir.join(&r);
                let ok = target.is_file() || target.join("kustomization.yaml").is_file();
                if !ok {
                    p.push(format!("{at}: `{r}` does not exist"));
                }
                if r.contains("secret.example") {
                    p.push(format!("{at}: lists {r}; the example Secrets must not be applied"));
                }
            }
            continue;
        }
        for field in ["apiVersion", "kind"] {
            if !doc[field].as_str().is_some_and(|s| !s.is_empty()) {
                p.push(format!("{at}: an object without {field}"));
            }
        }
        if !doc["metadata"]["name"].as_str().is_some_and(|s| !s.is_empty()) {
            p.push(format!("{at}: a {} without metadata.name", doc["kind"]));
        }
        if path.parent() == Some(Path::new(BASE)) && doc["metadata"]["namespace"].is_string() {
            p.push(format!("{at}: {} sets a namespace; the base is namespace-agnostic", doc["metadata"]["name"]));
        }
    }
    p
}

/// The Deployment: selector, probes on real routes and the pipeline's port, a grace period longer than the drain,
/// hardened security contexts, JSON logs, resources, and every reference it makes resolving.
fn deployment_problems(base: &Base, routes: &BTreeSet<String>) -> Vec<String> {
    let mut p = Vec::new();
    let d = base.one("Deployment");
    if !selects(&d["spec"]["selector"]["matchLabels"], pod_labels(d)) {
        p.push("Deployment: spec.selector.matchLabels does not match the pod template's labels".into());
    }
    if !d["spec"]["replicas"].is_null() {
        p.push("Deployment: sets replicas, which the ScaledObject owns".into());
    }
    let (file, _) = match daemon_pipeline_of(d, &base.config_maps) {
        Ok(f) => f,
        Err(e) => return vec![format!("Deployment: {e}")],
    };
    let port = port_of(&file.http.listen);
    let container = glowd_container(d);
    p.extend(cli_problems("Deployment glowd args", &strings(&container["args"])));
    if strings(&container["args"]).first().map(String::as_str) != Some("serve") {
        p.push("Deployment: the glowd container does not run `glowd serve`".into());
    }
    let ports: BTreeMap<String, u16> = container["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|x| (str_of(&x["name"]), x["containerPort"].as_u64().unwrap_or(0) as u16))
        .collect();
    if !ports.values().any(|&x| x == port) {
        p.push(format!("Deployment: no containerPort {port} (the pipeline's http.listen)"));
    }
    let resolve = |v: &Value| v.as_u64().map(|n| n as u16).or_else(|| ports.get(&str_of(v)).copied());
    for (probe, want) in
        [("startupProbe", None), ("readinessProbe", Some("/readyz")), ("livenessProbe", Some("/healthz"))]
    {
        let get = &container[probe]["httpGet"];
        let path = str_of(&get["path"]);
        if get.is_null() {
            p.push(format!("Deployment: no {probe} httpGet"));
            continue;
        }
        if !routes.contains(&path) {
            p.push(format!("Deployment: {probe} path {path} is not a route of src/daemon/http.rs {routes:?}"));
        }
        if want.is_some_and(|w| w != path) {
            p.push(format!("Deployment: {probe} on {path}, want {}", want.unwrap()));
        }
        if resolve(&get["port"]) != Some(port) {
            p.push(format!("Deployment: {probe} port {} is not http.listen's {port}", get["port"]));
        }
    }
    let spec = pod_spec(d);
    let drain = file.pipeline.limits.drain_timeout_seconds;
    match spec["terminationGracePeriodSeconds"].as_f64() {
        Some(grace) if grace > drain => {}
        other => p.push(format!(
            "Deployment: terminationGracePeriodSeconds {other:?} is not above drain_timeout_seconds {drain}"
        )),
    }
    let env = container_env(container, &base.config_maps);
    if env.get("GLOWD_LOG_FORMAT").map(String::as_str) != Some("json") {
        p.push("Deployment: GLOWD_LOG_FORMAT is not json".into());
    }
    let limits = &container["resources"]["limits"];
    for kind in ["cpu", "memory"] {
        if container["resources"]["requests"][kind].is_null() || limits[kind].is_null() {
            p.push(format!("Deployment: the glowd container has no {kind} request and limit"));
        }
    }
    if let Some(cpu) = cores(&limits["cpu"]) {
        let threads = file.pipeline.batching.threads;
        if threads <= 0 || f64::from(threads) > cpu {
            p.push(format!(
                "Deployment: batching.threads {threads} with a {cpu}-core limit (torch would oversubscribe)"
            ));
        }
    }
    if !limits["nvidia.com/gpu"].is_null() {
        p.push("Deployment: the base asks for a GPU (that is the gpu overlay's)".into());
    }
    // The models the pipeline names live in a folder an init container fills, and exist in the repository.
    for m in &file.models {
        let path = m.path.display().to_string();
        let mount = container["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| path.starts_with(&format!("{}/", str_of(&v["mountPath"]))));
        let filled = mount.is_some_and(|mnt| {
            spec["initContainers"].as_array().into_iter().flatten().any(|ic| {
                ic["volumeMounts"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|v| v["name"] == mnt["name"] && v["readOnly"] != true)
            })
        });
        if !filled {
            p.push(format!("Deployment: model path {path} is not in a volume an init container writes"));
        }
        let name = m.path.file_name().unwrap().to_string_lossy();
        if !repo().join("models").join(&*name).join("config.json").is_file() {
            p.push(format!("Deployment: model {name} is not a folder of the repository's models/"));
        }
    }
    p.extend(workload_problems(d, base));
    p
}

/// What every pod of ours must do: non-root, read-only root, no capabilities, and references that resolve.
fn workload_problems(w: &Value, base: &Base) -> Vec<String> {
    let mut p = Vec::new();
    let kind = str_of(&w["kind"]);
    let spec = pod_spec(w);
    if spec["securityContext"]["runAsNonRoot"] != true {
        p.push(format!("{kind}: securityContext.runAsNonRoot is not true"));
    }
    if spec["securityContext"]["runAsUser"].as_u64().is_none_or(|u| u == 0) {
        p.push(format!("{kind}: securityContext.runAsUser is not a non-root uid"));
    }
    let sa = str_of(&spec["serviceAccountName"]);
    if !sa.is_empty()
        && !base.objects.iter().any(|o| o["kind"] == "ServiceAccount" && o["metadata"]["name"] == json!(sa))
    {
        p.push(format!("{kind}: serviceAccountName {sa} is not defined in the base"));
    }
    let volumes: BTreeSet<String> =
        spec["volumes"].as_array().into_iter().flatten().map(|v| str_of(&v["name"])).collect();
    for v in spec["volumes"].as_array().into_iter().flatten() {
        let cm = &v["configMap"]["name"];
        if !cm.is_null() && !base.config_maps.contains_key(&str_of(cm)) {
            p.push(format!("{kind}: volume {} mounts ConfigMap {cm}, which the base does not define", v["name"]));
        }
    }
    for c in containers(w) {
        let name = str_of(&c["name"]);
        let sc = &c["securityContext"];
        if sc["readOnlyRootFilesystem"] != true || sc["allowPrivilegeEscalation"] != false {
            p.push(format!(
                "{kind} container {name}: wants readOnlyRootFilesystem: true, allowPrivilegeEscalation: false"
            ));
        }
        if !strings(&sc["capabilities"]["drop"]).contains(&"ALL".to_string()) {
            p.push(format!("{kind} container {name}: capabilities.drop is not [ALL]"));
        }
        for m in c["volumeMounts"].as_array().into_iter().flatten() {
            if !volumes.contains(&str_of(&m["name"])) {
                p.push(format!("{kind} container {name}: mounts undefined volume {}", m["name"]));
            }
        }
        for e in c["env"].as_array().into_iter().flatten() {
            let from = &e["valueFrom"];
            if let Some(r) = from["secretKeyRef"].as_object() {
                let (s, k) = (str_of(&r["name"]), str_of(&r["key"]));
                if !base.secrets.get(&s).is_some_and(|keys| keys.contains(&k)) {
                    p.push(format!(
                        "{kind} container {name}: env {} reads Secret {s} key {k}, not in secret.example.yaml",
                        e["name"]
                    ));
                }
            }
            if let Some(r) = from["configMapKeyRef"].as_object() {
                let (m, k) = (str_of(&r["name"]), str_of(&r["key"]));
                if !base.config_maps.get(&m).is_some_and(|data| data.contains_key(&k)) {
                    p.push(format!(
                        "{kind} container {name}: env {} reads ConfigMap {m} key {k}, which the base does not define",
                        e["name"]
                    ));
                }
            }
        }
        for r in c["envFrom"].as_array().into_iter().flatten() {
            let (cm, secret) = (str_of(&r["configMapRef"]["name"]), str_of(&r["secretRef"]["name"]));
            if !cm.is_empty() && !base.config_maps.contains_key(&cm) {
                p.push(format!("{kind} container {name}: envFrom ConfigMap {cm} is not defined"));
            }
            if !secret.is_empty() && !base.secrets.contains_key(&secret) {
                p.push(format!("{kind} container {name}: envFrom Secret {secret} is not in secret.example.yaml"));
            }
        }
        let defined: BTreeSet<String> = c["env"].as_array().into_iter().flatten().map(|e| str_of(&e["name"])).collect();
        for arg in strings(&c["command"]).iter().chain(strings(&c["args"]).iter()) {
            for r in k8s_references(arg) {
                if !defined.contains(&r) {
                    p.push(format!("{kind} container {name}: `{arg}` refers to $({r}), which its env does not define"));
                }
            }
        }
    }
    p
}

/// The nightly CronJob: glowd submit with the nightly pipeline, one run at a time, into the daemon's jobs topic and
/// output prefix, reading inputs from where the daemon may read them.
fn cronjob_problems(base: &Base) -> Vec<String> {
    let mut p = Vec::new();
    let cj = base.one("CronJob");
    if cj["spec"]["concurrencyPolicy"] != "Forbid" {
        p.push("CronJob: concurrencyPolicy is not Forbid".into());
    }
    if !matches!(pod_spec(cj)["restartPolicy"].as_str(), Some("Never" | "OnFailure")) {
        p.push("CronJob: restartPolicy must be Never or OnFailure".into());
    }
    let d = base.one("Deployment");
    if selects(&d["spec"]["selector"]["matchLabels"], pod_labels(cj)) {
        p.push("CronJob: its pods carry the daemon's selector labels (the Service and PDB would pick them)".into());
    }
    let container = glowd_container(cj);
    let args = strings(&container["args"]);
    p.extend(cli_problems("CronJob args", &args));
    if args.first().map(String::as_str) != Some("submit") {
        p.push("CronJob: does not run `glowd submit`".into());
    }
    let env = container_env(container, &base.config_maps);
    let Some(path) = flag_value(&args, "--pipeline") else {
        p.push("CronJob: no --pipeline".into());
        return p;
    };
    let text = match mounted_file(cj, container, &path, &base.config_maps) {
        Ok(t) => t,
        Err(e) => {
            p.push(format!("CronJob --pipeline {path}: {e}"));
            return p;
        }
    };
    let nightly = match parse_pipeline(&text, Path::new("/"), &env) {
        Ok(f) => f,
        Err(e) => {
            p.push(format!("CronJob --pipeline {path} with the container's environment: {e}"));
            return p;
        }
    };
    if nightly.submit.is_none() {
        p.push(format!("CronJob --pipeline {path}: no [submit] table"));
    }
    let (daemon, daemon_text) = match daemon_pipeline_of(d, &base.config_maps) {
        Ok(x) => x,
        Err(e) => return vec![format!("Deployment: {e}")],
    };
    // The daemon does these jobs: they must reach its topic, and --resume must look where it writes.
    let (nightly_t, daemon_t) = (toml_value(&text, &path), toml_value(&daemon_text, "the daemon's pipeline"));
    for table in ["kafka", "s3", "output", "models"] {
        if nightly_t.get(table) != daemon_t.get(table) {
            p.push(format!("CronJob --pipeline {path}: [{table}] differs from the Deployment's pipeline"));
        }
    }
    if let Ok(repo_nightly) = std::fs::read_to_string(repo().join("pipelines/nightly-augment.toml")) {
        let repo_t = toml_value(&repo_nightly, "pipelines/nightly-augment.toml");
        if nightly_t.get("submit") != repo_t.get("submit") {
            p.push(format!("CronJob --pipeline {path}: [submit] differs from pipelines/nightly-augment.toml's"));
        }
    }
    match flag_value(&args, "--prefix").map(|x| k8s_expand(&x, &env)) {
        Some(prefix) => {
            let allowed = daemon.allowed_inputs();
            let inside = prefix.strip_prefix("s3://").and_then(|r| r.split_once('/')).is_some_and(|(bucket, key)| {
                daemon.s3.iter().flat_map(|s| &s.allowed_inputs).any(|a| {
                    a.bucket == bucket
                        && (a.prefix.is_empty() || key.starts_with(&format!("{}/", a.prefix.trim_end_matches('/'))))
                })
            });
            if !inside {
                p.push(format!(
                    "CronJob --prefix {prefix}: outside the daemon's s3.allowed_inputs ({} prefixes)",
                    allowed.len()
                ));
            }
        }
        None => p.push("CronJob: no --prefix".into()),
    }
    p.extend(workload_problems(cj, base));
    p
}

/// The ScaledObject scales the Deployment on the lag of the daemon's own group and topic, up to one pod per
/// partition, and logs in the way the daemon does.
fn scaled_object_problems(base: &Base, topics: &[(String, u32)]) -> Vec<String> {
    let mut p = Vec::new();
    let so = base.one("ScaledObject");
    let d = base.one("Deployment");
    let (file, _) = match daemon_pipeline_of(d, &base.config_maps) {
        Ok(f) => f,
        Err(e) => return vec![format!("Deployment: {e}")],
    };
    let kafka = file.kafka.expect("the daemon's pipeline has [kafka]");
    if so["apiVersion"] != "keda.sh/v1alpha1" {
        p.push(format!("ScaledObject: apiVersion {}", so["apiVersion"]));
    }
    let target = &so["spec"]["scaleTargetRef"];
    if target["name"] != d["metadata"]["name"] || !matches!(target["kind"].as_str(), None | Some("Deployment")) {
        p.push(format!("ScaledObject: scaleTargetRef {target} is not the Deployment {}", d["metadata"]["name"]));
    }
    let triggers: Vec<&Value> =
        so["spec"]["triggers"].as_array().into_iter().flatten().filter(|t| t["type"] == "kafka").collect();
    let [trigger] = triggers.as_slice() else {
        p.push(format!("ScaledObject: {} kafka triggers, want one", triggers.len()));
        return p;
    };
    let meta = &trigger["metadata"];
    if meta["consumerGroup"] != json!(kafka.group) {
        p.push(format!(
            "ScaledObject: consumerGroup {} is not the pipeline's kafka.group {}",
            meta["consumerGroup"], kafka.group
        ));
    }
    if meta["topic"] != json!(kafka.jobs_topic) {
        p.push(format!(
            "ScaledObject: topic {} is not the pipeline's kafka.jobs_topic {}",
            meta["topic"], kafka.jobs_topic
        ));
    }
    let partitions = topics.iter().find(|(t, _)| *t == kafka.jobs_topic).map(|(_, n)| u64::from(*n));
    let max = so["spec"]["maxReplicaCount"].as_u64();
    match (max, partitions) {
        (Some(m), Some(n)) if m >= 1 && m <= n => {}
        _ => p.push(format!(
            "ScaledObject: maxReplicaCount {max:?} must be within the topic's {partitions:?} partitions"
        )),
    }
    if so["spec"]["minReplicaCount"].as_u64().is_none_or(|m| m < 1) {
        p.push("ScaledObject: minReplicaCount below 1 (a cold start loads the models before it consumes)".into());
    }
    if !str_of(&meta["lagThreshold"]).parse::<u64>().is_ok_and(|l| l > 0) {
        p.push(format!("ScaledObject: lagThreshold {} is not a positive integer", meta["lagThreshold"]));
    }
    let container = glowd_container(d);
    let env = container_env(container, &base.config_maps);
    match meta["bootstrapServersFromEnv"].as_str() {
        Some(var) if env.get(var) == Some(&kafka.brokers) => {}
        Some(var) => p.push(format!("ScaledObject: bootstrapServersFromEnv {var} is not the daemon's kafka.brokers")),
        None if meta["bootstrapServers"] == json!(kafka.brokers) => {}
        None => p.push("ScaledObject: bootstrapServers is not the daemon's kafka.brokers".into()),
    }
    let prop = |k: &str| kafka.properties.get(k).map(|v| v.to_ascii_uppercase());
    let tls = matches!(prop("security.protocol").as_deref(), Some("SSL" | "SASL_SSL"));
    if (meta["tls"] == "enable") != tls {
        p.push(format!(
            "ScaledObject: tls {} while the daemon's security.protocol is {:?}",
            meta["tls"],
            prop("security.protocol")
        ));
    }
    let sasl = match prop("sasl.mechanism").as_deref() {
        Some("SCRAM-SHA-512") => Some("scram_sha512"),
        Some("SCRAM-SHA-256") => Some("scram_sha256"),
        Some("PLAIN") => Some("plaintext"),
        _ => None,
    };
    if meta["sasl"].as_str() != sasl {
        p.push(format!(
            "ScaledObject: sasl {} while the daemon's sasl.mechanism is {:?}",
            meta["sasl"],
            prop("sasl.mechanism")
        ));
    }
    // KEDA's idea of lag for a group without commits must be the daemon's auto.offset.reset.
    let reset = kafka.properties.get("auto.offset.reset").cloned().unwrap_or_else(|| {
        let code = read("src/daemon/kafka.rs");
        let at = code.find("(\"auto.offset.reset\", \"").expect("src/daemon/kafka.rs defaults auto.offset.reset");
        code[at..].split('"').nth(3).unwrap().to_string()
    });
    if str_of(&meta["offsetResetPolicy"]) != reset {
        p.push(format!(
            "ScaledObject: offsetResetPolicy {} while the daemon resets to {reset}",
            meta["offsetResetPolicy"]
        ));
    }
    if sasl.is_some() {
        let auth = str_of(&trigger["authenticationRef"]["name"]);
        match base.objects.iter().find(|o| o["kind"] == "TriggerAuthentication" && o["metadata"]["name"] == json!(auth))
        {
            Some(ta) => {
                let refs = ta["spec"]["secretTargetRef"].as_array().cloned().unwrap_or_default();
                for param in ["username", "password"] {
                    if !refs.iter().any(|r| r["parameter"] == param) {
                        p.push(format!("TriggerAuthentication {auth}: no {param}"));
                    }
                }
                for r in &refs {
                    let (s, k) = (str_of(&r["name"]), str_of(&r["key"]));
                    if !base.secrets.get(&s).is_some_and(|keys| keys.contains(&k)) {
                        p.push(format!(
                            "TriggerAuthentication {auth}: Secret {s} key {k} is not in secret.example.yaml"
                        ));
                    }
                }
            }
            None => {
                p.push(format!("ScaledObject: authenticationRef {auth} is not a TriggerAuthentication of the base"))
            }
        }
    }
    p
}

/// The Service and the PodDisruptionBudget select the daemon's pods and nothing else.
fn selector_problems(base: &Base) -> Vec<String> {
    let mut p = Vec::new();
    let (d, cj) = (base.one("Deployment"), base.one("CronJob"));
    let labels = pod_labels(d);
    for (kind, selector) in [
        ("Service", &base.one("Service")["spec"]["selector"]),
        ("PodDisruptionBudget", &base.one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"]),
    ] {
        if !selects(selector, labels) {
            p.push(format!("{kind}: selector {selector} does not select the Deployment's pods"));
        }
        if selects(selector, pod_labels(cj)) {
            p.push(format!("{kind}: selector {selector} also selects the CronJob's pods"));
        }
    }
    let container = glowd_container(d);
    for port in base.one("Service")["spec"]["ports"].as_array().into_iter().flatten() {
        let target = &port["targetPort"];
        let resolves = container["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|cp| cp["name"] == *target || cp["containerPort"] == *target);
        if !resolves {
            p.push(format!("Service: targetPort {target} is no port of the glowd container"));
        }
    }
    p
}

/// The gpu overlay's patch: the base Deployment's glowd container, with a GPU and the pipeline's worker on cuda.
fn gpu_patch_problems(base: &Base) -> Vec<String> {
    let mut p = Vec::new();
    let overlay = yaml_file("deploy/k8s/overlays/gpu/kustomization.yaml");
    if !overlay["images"].as_array().into_iter().flatten().any(|i| i["name"] == "glowd" && i["newTag"] == "cuda") {
        p.push("overlays/gpu: does not set the glowd image to the cuda tag".into());
    }
    let d = base.one("Deployment");
    for patch in overlay["patches"].as_array().into_iter().flatten() {
        let patch = yaml_file(&format!("deploy/k8s/overlays/gpu/{}", str_of(&patch["path"])));
        if patch["kind"] != "Deployment" || patch["metadata"]["name"] != d["metadata"]["name"] {
            continue;
        }
        let mut patched = d.clone();
        let container = glowd_container(d);
        let pc = patch["spec"]["template"]["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["name"] == container["name"]);
        let Some(pc) = pc else {
            p.push("overlays/gpu: the patch names no container of the base Deployment".into());
            return p;
        };
        if pc["resources"]["limits"]["nvidia.com/gpu"].as_u64() != Some(1) {
            p.push("overlays/gpu: the glowd container's limits do not ask for nvidia.com/gpu: 1".into());
        }
        if patch["spec"]["template"]["spec"]["tolerations"].as_array().is_none_or(|t| t.is_empty()) {
            p.push("overlays/gpu: no tolerations (GPU nodes are usually tainted)".into());
        }
        // Merge the env the way a strategic merge patch does (by name), then read the pipeline with it.
        let containers = patched["spec"]["template"]["spec"]["containers"].as_array_mut().unwrap();
        let c = containers.iter_mut().find(|c| c["name"] == pc["name"]).unwrap();
        for e in pc["env"].as_array().into_iter().flatten() {
            let env = c["env"].as_array_mut().unwrap();
            env.retain(|x| x["name"] != e["name"]);
            env.push(e.clone());
        }
        match daemon_pipeline_of(&patched, &base.config_maps) {
            Ok((f, _)) if f.pipeline.batching.devices == ["cuda"] => {}
            Ok((f, _)) => p.push(format!(
                "overlays/gpu: the pipeline's devices are {:?}, want [\"cuda\"]",
                f.pipeline.batching.devices
            )),
            Err(e) => p.push(format!("overlays/gpu: {e}")),
        }
        return p;
    }
    p.push("overlays/gpu: no patch of the base Deployment".into());
    p
}

/// deploy/s3-policy.json: only the actions glowd uses, only on the prefixes the pipeline and the init container
/// name, in the bucket the manifests give.
fn policy_problems(policy: &Value, base: &Base) -> Vec<String> {
    let mut p = Vec::new();
    let d = base.one("Deployment");
    let (file, _) = match daemon_pipeline_of(d, &base.config_maps) {
        Ok(f) => f,
        Err(e) => return vec![format!("Deployment: {e}")],
    };
    let bucket = file.pipeline.output.bucket.clone();
    let inputs: BTreeSet<String> = file
        .s3
        .iter()
        .flat_map(|s| &s.allowed_inputs)
        .filter(|a| a.bucket == bucket)
        .map(|a| a.prefix.trim_end_matches('/').to_string())
        .collect();
    let output = file.pipeline.output.prefix.trim_end_matches('/').to_string();
    // The init container's `s3://$(S3_BUCKET)/<models>/`.
    let env = container_env(&pod_spec(d)["initContainers"][0], &base.config_maps);
    let models: BTreeSet<String> = strings(&pod_spec(d)["initContainers"][0]["command"])
        .iter()
        .filter_map(|a| {
            k8s_expand(a, &env).strip_prefix(&format!("s3://{bucket}/")).map(|k| k.trim_end_matches('/').to_string())
        })
        .collect();
    if policy["Version"] != "2012-10-17" {
        p.push("s3-policy.json: Version is not 2012-10-17".into());
    }
    let mut granted: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let object_arn = format!("arn:aws:s3:::{bucket}/");
    let bucket_arn = format!("arn:aws:s3:::{bucket}");
    for s in policy["Statement"].as_array().into_iter().flatten() {
        let sid = str_of(&s["Sid"]);
        if s["Effect"] != "Allow" {
            continue;
        }
        let actions = if s["Action"].is_string() { vec![str_of(&s["Action"])] } else { strings(&s["Action"]) };
        let resources = if s["Resource"].is_string() { vec![str_of(&s["Resource"])] } else { strings(&s["Resource"]) };
        for action in &actions {
            if !["s3:GetObject", "s3:PutObject", "s3:ListBucket"].contains(&action.as_str()) {
                p.push(format!("s3-policy.json {sid}: {action} is more than glowd needs"));
            }
        }
        for r in &resources {
            if let Some(key) = r.strip_prefix(&object_arn) {
                match key.strip_suffix("/*") {
                    Some(prefix) if !prefix.is_empty() && !prefix.contains('*') => {
                        for a in &actions {
                            granted.entry(a.clone()).or_default().insert(prefix.to_string());
                        }
                    }
                    _ => p.push(format!("s3-policy.json {sid}: resource {r} is not one prefix of the bucket")),
                }
            } else if *r == bucket_arn {
                if actions != ["s3:ListBucket"] {
                    p.push(format!("s3-policy.json {sid}: bucket-level resource for {actions:?}"));
                }
                let listed = strings(&s["Condition"]["StringLike"]["s3:prefix"]);
                if listed.is_empty() {
                    p.push(format!("s3-policy.json {sid}: ListBucket without an s3:prefix condition"));
                }
                for l in &listed {
                    let ok = inputs
                        .iter()
                        .chain(&models)
                        .chain(std::iter::once(&output))
                        .any(|x| l == &format!("{x}/") || l == &format!("{x}/*"));
                    if !ok {
                        p.push(format!("s3-policy.json {sid}: lists `{l}`, not a prefix glowd reads or writes"));
                    }
                    granted
                        .entry("s3:ListBucket".into())
                        .or_default()
                        .insert(l.trim_end_matches('*').trim_end_matches('/').to_string());
                }
            } else {
                p.push(format!("s3-policy.json {sid}: resource {r} is not in bucket {bucket} (glowd-env S3_BUCKET)"));
            }
        }
    }
    let get = |a: &str| granted.get(a).cloned().unwrap_or_default();
    let want_get: BTreeSet<String> =
        inputs.iter().chain(&models).cloned().chain(std::iter::once(output.clone())).collect();
    if get("s3:GetObject") != want_get {
        p.push(format!("s3-policy.json: GetObject on {:?}, want exactly {want_get:?}", get("s3:GetObject")));
    }
    if get("s3:PutObject") != BTreeSet::from([output.clone()]) {
        p.push(format!("s3-policy.json: PutObject on {:?}, want exactly [{output:?}]", get("s3:PutObject")));
    }
    // Listing: glowd submit lists inputs, `aws s3 sync` lists models; and with ListBucket a missing key is a 404
    // (dead-lettered as not found) rather than a 403.
    for must in inputs.iter().chain(&models) {
        if !get("s3:ListBucket").contains(must) {
            p.push(format!("s3-policy.json: ListBucket does not cover {must}/"));
        }
    }
    p
}

#[test]
fn k8s_manifests_are_well_formed() {
    let docs = k8s_documents();
    assert!(docs.len() >= 10, "only {} YAML documents under deploy/k8s", docs.len());
    assert_no_problems("deploy/k8s", k8s_shape_problems(&docs));
    // Names are unique per kind within the base.
    let base = Base::load();
    let mut seen = BTreeSet::new();
    for o in &base.objects {
        assert!(
            seen.insert((str_of(&o["kind"]), str_of(&o["metadata"]["name"]))),
            "duplicate {} {}",
            o["kind"],
            o["metadata"]["name"]
        );
    }
}

#[test]
fn k8s_deployment_probes_shutdown_security_and_references() {
    assert_no_problems("Deployment", deployment_problems(&Base::load(), &http_routes()));
}

#[test]
fn k8s_deployment_check_catches_a_wrong_probe_a_short_grace_period_and_a_missing_secret() {
    let mut base = Base::load();
    let d = base.one_mut("Deployment");
    d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = json!(10);
    let c = &mut d["spec"]["template"]["spec"]["containers"][0];
    c["readinessProbe"]["httpGet"]["path"] = json!("/ready");
    c["env"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "X", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k"}}}));
    c["securityContext"]["readOnlyRootFilesystem"] = json!(false);
    let problems = deployment_problems(&base, &http_routes());
    assert_complains("probe", &problems, "/ready is not a route");
    assert_complains("grace", &problems, "terminationGracePeriodSeconds");
    assert_complains("secret", &problems, "Secret nope");
    assert_complains("security", &problems, "readOnlyRootFilesystem");
    // A ${NAME} of the pipeline that the container does not set.
    let mut base = Base::load();
    let env = base.one_mut("Deployment")["spec"]["template"]["spec"]["containers"][0]["env"].as_array_mut().unwrap();
    env.retain(|e| e["name"] != "KAFKA_PASSWORD");
    assert_complains("unset ${NAME}", &deployment_problems(&base, &http_routes()), "KAFKA_PASSWORD");
}

#[test]
fn k8s_cronjob_submits_the_nightly_pipeline_into_the_daemons_topic() {
    assert_no_problems("CronJob", cronjob_problems(&Base::load()));
}

#[test]
fn k8s_cronjob_check_catches_an_unknown_subcommand_and_concurrent_runs() {
    let mut base = Base::load();
    let cj = base.one_mut("CronJob");
    cj["spec"]["concurrencyPolicy"] = json!("Allow");
    cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"][0] = json!("enqueue");
    let problems = cronjob_problems(&base);
    assert_complains("policy", &problems, "Forbid");
    assert_complains("subcommand", &problems, "`glowd enqueue` is not a subcommand");
}

#[test]
fn k8s_scaled_object_follows_the_daemons_group_topic_and_partitions() {
    assert_no_problems("ScaledObject", scaled_object_problems(&Base::load(), &dev_stack().topics));
}

#[test]
fn k8s_scaled_object_check_catches_another_group_and_too_many_replicas() {
    let mut base = Base::load();
    let so = base.one_mut("ScaledObject");
    so["spec"]["triggers"][0]["metadata"]["consumerGroup"] = json!("glowd-local");
    so["spec"]["maxReplicaCount"] = json!(12);
    so["spec"]["scaleTargetRef"]["name"] = json!("glowd-daemon");
    let problems = scaled_object_problems(&base, &dev_stack().topics);
    assert_complains("group", &problems, "consumerGroup");
    assert_complains("replicas", &problems, "maxReplicaCount");
    assert_complains("target", &problems, "scaleTargetRef");
}

#[test]
fn k8s_service_and_pdb_select_only_the_daemon() {
    assert_no_problems("Service and PodDisruptionBudget", selector_problems(&Base::load()));
}

#[test]
fn k8s_gpu_overlay_adds_a_gpu_and_moves_the_worker_to_cuda() {
    assert_no_problems("overlays/gpu", gpu_patch_problems(&Base::load()));
}

#[test]
fn s3_policy_grants_only_what_glowd_uses() {
    let policy: Value = serde_json::from_str(&read("deploy/s3-policy.json")).unwrap();
    assert_no_problems("deploy/s3-policy.json", policy_problems(&policy, &Base::load()));
}

#[test]
fn s3_policy_check_catches_wildcards() {
    let mut policy: Value = serde_json::from_str(&read("deploy/s3-policy.json")).unwrap();
    policy["Statement"][2]["Action"] = json!(["s3:*"]);
    policy["Statement"][0]["Resource"] = json!(["arn:aws:s3:::glowd-images/*"]);
    let problems = policy_problems(&policy, &Base::load());
    assert_complains("action", &problems, "s3:* is more than glowd needs");
    assert_complains("resource", &problems, "is not one prefix");
}

/// The overlays as kustomize renders them (kubectl's built-in kustomize). Without kubectl this says so and
/// returns: the other k8s tests check the same files by hand.
#[test]
fn k8s_overlays_render_with_kustomize() {
    if Command::new("kubectl").args(["version", "--client"]).output().map(|o| !o.status.success()).unwrap_or(true) {
        eprintln!(
            "k8s_overlays_render_with_kustomize: kubectl not found; overlays not rendered (checked by hand instead)"
        );
        return;
    }
    let render = |dir: &str| {
        let out =
            Command::new("kubectl").args(["kustomize", &repo().join(dir).display().to_string()]).output().unwrap();
        assert!(out.status.success(), "kubectl kustomize {dir}: {}", String::from_utf8_lossy(&out.stderr));
        yaml_documents(&String::from_utf8(out.stdout).unwrap(), dir)
    };
    for (dir, tag, gpu) in [("deploy/k8s/overlays/cpu", "cpu", false), ("deploy/k8s/overlays/gpu", "cuda", true)] {
        let objects = render(dir);
        assert!(!objects.iter().any(|o| o["kind"] == "Secret"), "{dir}: renders a Secret");
        let config_maps: BTreeMap<String, BTreeMap<String, String>> = objects
            .iter()
            .filter(|o| o["kind"] == "ConfigMap")
            .map(|o| {
                let data = o["data"].as_object().into_iter().flatten().map(|(k, v)| (k.clone(), str_of(v))).collect();
                (str_of(&o["metadata"]["name"]), data)
            })
            .collect();
        let d = objects.iter().find(|o| o["kind"] == "Deployment").expect("a Deployment");
        let cj = objects.iter().find(|o| o["kind"] == "CronJob").expect("a CronJob");
        for w in [d, cj] {
            assert_eq!(str_of(&glowd_container(w)["image"]), format!("glowd:{tag}"), "{dir}: {} image", w["kind"]);
        }
        // Generated names carry a hash; the references follow it, so the pipeline still reads.
        let (file, _) = daemon_pipeline_of(d, &config_maps).unwrap_or_else(|e| panic!("{dir}: {e}"));
        let want: &[&str] = if gpu { &["cuda"] } else { &["cpu"] };
        assert_eq!(file.pipeline.batching.devices, want, "{dir}: devices");
        let limits = &glowd_container(d)["resources"]["limits"];
        assert_eq!(!limits["nvidia.com/gpu"].is_null(), gpu, "{dir}: nvidia.com/gpu limit");
        assert!(!cj.to_string().contains("nvidia.com/gpu"), "{dir}: the CronJob asks for a GPU");
        let base = Base::load();
        let base_limits = &glowd_container(base.one("Deployment"))["resources"]["limits"];
        assert_eq!(limits["cpu"], base_limits["cpu"], "{dir}: the overlay must keep the base's CPU limit");
    }
}

/// `glowd validate` on every shipped pipeline, as its container would read it (the models from the repository's
/// models/, which the compose mount and the S3 models/ prefix hold): tables, model loading, [submit] template.
#[test]
fn glowd_validate_accepts_the_shipped_pipelines() {
    let tmp = tempfile::tempdir().unwrap();
    let models = repo().join("models");
    let validate = |name: &str, value: toml::Table, env: &BTreeMap<String, String>| {
        let path = tmp.path().join(name);
        std::fs::write(&path, toml::to_string(&value).unwrap()).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_glowd"))
            .arg("validate")
            .arg(&path)
            .env_clear()
            .envs(env)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("ok:"),
            "glowd validate {name}:\n{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // Compose: models_dir is where ./models is mounted.
    let c = compose();
    let mut compose_pipeline = toml_value(&read("deploy/compose/pipeline.toml"), "compose pipeline");
    compose_pipeline.insert("models_dir".into(), toml::Value::String(models.display().to_string()));
    validate("compose.toml", compose_pipeline, &compose_env(&c["services"]["glowd"]));
    // Kubernetes: [[models]] under /models, which the init container fills from S3 models/ (= the repo's models/).
    let base = Base::load();
    for (kind, flag) in [("Deployment", "--config"), ("CronJob", "--pipeline")] {
        let w = base.one(kind);
        let container = glowd_container(w);
        let path = flag_value(&strings(&container["args"]), flag).unwrap();
        let mut value = toml_value(&mounted_file(w, container, &path, &base.config_maps).unwrap(), &path);
        for m in value.get_mut("models").and_then(|m| m.as_array_mut()).into_iter().flatten() {
            let t = m.as_table_mut().unwrap();
            let p = t["path"].as_str().unwrap().strip_prefix("/models/").expect("a model under /models").to_string();
            t.insert("path".into(), toml::Value::String(models.join(p).display().to_string()));
        }
        validate(&format!("{kind}.toml"), value, &container_env(container, &base.config_maps));
    }
}
