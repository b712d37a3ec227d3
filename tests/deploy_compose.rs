//! docker-compose.yml, checked against the Compose Specification, against scripts/dev-stack (the same Kafka release,
//! topics, bucket and credentials) and against the code it runs (services wired together, the mounted pipeline, the
//! daemon's routes and drain time). Each check collects every problem it finds and names the file and field; the
//! `*_catches_*` tests feed the same checks a broken copy and expect a complaint, so a check that silently passes
//! everything would fail there.
//!
//! `tests/fixtures/compose-spec.json` is `schema/compose-spec.json` of the Go module
//! github.com/compose-spec/compose-go/v2 v2.16.2 (published 2026-10-21), the schema `docker compose` itself
//! validates with; Apache License 2.0, Copyright 2020 The Compose Specification Authors. Fetched with
//! `go mod download -json github.com/compose-spec/compose-go/v2@latest` from the Go module proxy and copied
//! unchanged (sha256 f266dcbb043229405d7cedd5aec918f9102c2b3d5e3850808fdd8edd564a43ff). It declares JSON Schema
//! draft 2020-12 (no longer draft-07) and refers only to itself, so jsonschema validates against it offline.
//!
//! Not checked here, for lack of the tools where these tests run: no Docker engine, so `docker compose config`
//! (compose-go's loader: interpolation and semantic checks beyond the schema) is not run; no Prometheus.
mod common;
use common::deploy::*;
use serde_json::{json, Value};
use std::collections::BTreeSet;

fn compose_schema_errors(instance: &Value) -> Vec<String> {
    let schema: Value = serde_json::from_str(&read("tests/fixtures/compose-spec.json")).unwrap();
    let validator = jsonschema::validator_for(&schema).expect("the Compose schema compiles");
    validator.iter_errors(instance).map(|e| format!("{}: {e}", e.instance_path())).collect()
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
