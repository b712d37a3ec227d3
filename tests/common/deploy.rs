//! What the deployment tests (`tests/deploy_compose.rs`, `tests/deploy_docker.rs`, `tests/deploy_k8s.rs`) share:
//! reading the artefacts (YAML, TOML, JSON), collecting and reporting problems, the facts of the code they deploy
//! (the daemon's HTTP routes, `glowd`'s subcommands and flags, what scripts/dev-stack sets up), the compose file,
//! and the Kubernetes base as kustomize would assemble it, down to the pipeline the daemon's container reads.
use super::bin;
use glowd::settings::PipelineFile;
use serde::Deserialize;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

// ----------------------------------------------------------------------------------------------------- reading files

pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Every document of a YAML stream (`---` separated), as JSON values; empty documents are dropped.
pub fn yaml_documents(text: &str, what: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{what}: {e}")))
        .filter(|v| !v.is_null())
        .collect()
}

pub fn yaml_file(rel: &str) -> Value {
    let mut docs = yaml_documents(&read(rel), rel);
    assert_eq!(docs.len(), 1, "{rel}: expected one YAML document");
    docs.remove(0)
}

pub fn assert_no_problems(what: &str, problems: Vec<String>) {
    assert!(problems.is_empty(), "{what}:\n  {}", problems.join("\n  "));
}

pub fn assert_complains(what: &str, problems: &[String], needle: &str) {
    assert!(
        problems.iter().any(|p| p.contains(needle)),
        "{what}: expected a problem mentioning `{needle}`, got:\n  {}",
        problems.join("\n  ")
    );
}

pub fn str_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

pub fn strings(v: &Value) -> Vec<String> {
    v.as_array().map(|a| a.iter().map(str_of).collect()).unwrap_or_default()
}

// -------------------------------------------------------------------------------------------------- the code's facts

/// The routes `src/daemon/http.rs` serves.
pub fn http_routes() -> BTreeSet<String> {
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

pub fn glowd_output(args: &[&str]) -> String {
    let out = bin::glowd().args(args).output().expect("glowd runs");
    assert!(out.status.success(), "glowd {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// The subcommands `glowd --help` lists.
pub fn glowd_subcommands() -> BTreeSet<String> {
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
pub fn glowd_flags(subcommand: &str) -> BTreeSet<String> {
    glowd_output(&[subcommand, "--help"])
        .split(|c: char| c.is_whitespace() || "[],=<>".contains(c))
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(str::to_string)
        .collect()
}

/// Problems with running `glowd ARGS`: ARGS[0] must be a subcommand that `glowd --help` lists, and each `--flag`
/// one that the subcommand's help lists.
pub fn cli_problems(what: &str, args: &[String]) -> Vec<String> {
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
pub fn flag_value(args: &[String], flag: &str) -> Option<String> {
    args.iter().enumerate().find_map(|(i, a)| {
        if a == flag {
            args.get(i + 1).cloned()
        } else {
            a.strip_prefix(&format!("{flag}=")).map(str::to_string)
        }
    })
}

/// What scripts/dev-stack sets up, read from the script itself so that the two cannot drift apart unnoticed.
pub struct DevStack {
    pub access_key: String,
    pub secret_key: String,
    pub region: String,
    pub bucket: String,
    /// (topic, partitions), in the script's order.
    pub topics: Vec<(String, u32)>,
    /// The variables `dev-stack env` exports (what pipelines/local.toml's ${NAME}s ask for).
    pub exported: Vec<String>,
    /// The Kafka release scripts/devstack/pom.xml gathers.
    pub kafka_version: String,
}

pub fn dev_stack() -> DevStack {
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
pub fn parse_topics(list: &str) -> Vec<(String, u32)> {
    list.split_whitespace()
        .map(|t| {
            let (name, partitions) = t.split_once(':').unwrap_or((t, "1"));
            (name.to_string(), partitions.parse().unwrap_or_else(|e| panic!("topic `{t}`: {e}")))
        })
        .collect()
}

/// The port of a `host:port` listen address.
pub fn port_of(listen: &str) -> u16 {
    listen.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("no port in `{listen}`"))
}

/// (host, port, path) of an `http://host:port/path` inside a command line.
pub fn http_url(text: &str) -> Option<(String, u16, String)> {
    let rest = &text[text.find("http://")? + "http://".len()..];
    let url: String = rest.chars().take_while(|c| !c.is_whitespace() && !"\"'".contains(*c)).collect();
    let (authority, path) = url.split_once('/').map(|(a, p)| (a, format!("/{p}"))).unwrap_or((&url, "/".into()));
    let (host, port) = authority.rsplit_once(':')?;
    Some((host.to_string(), port.parse().ok()?, path))
}

/// Parses a pipeline file's text as the daemon does: `GLOWD__<TABLE>__<KEY>` overrides from `env`, then `${NAME}`
/// from `env` (an unset one is an error).
pub fn parse_pipeline(text: &str, base: &Path, env: &BTreeMap<String, String>) -> Result<PipelineFile, String> {
    let mut value: toml::Value = toml::from_str(text).map_err(|e| e.to_string())?;
    glowd::settings::override_from_env(&mut value, env.iter().map(|(k, v)| (k.clone(), v.clone())))?;
    let text = toml::to_string(&value).map_err(|e| e.to_string())?;
    PipelineFile::parse(&text, base, &|k| env.get(k).cloned())
}

pub fn toml_value(text: &str, what: &str) -> toml::Table {
    toml::from_str(text).unwrap_or_else(|e| panic!("{what}: {e}"))
}

// ---------------------------------------------------------------------------------------------------- docker compose

pub fn compose() -> Value {
    yaml_file("docker-compose.yml")
}

/// A service's `environment`, in either of its forms (map, or list of NAME=value).
pub fn compose_env(service: &Value) -> BTreeMap<String, String> {
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

// -------------------------------------------------------------------------------------------------------- Kubernetes

pub const BASE: &str = "deploy/k8s/base";

/// The base as kustomize would assemble it: the objects its kustomization lists, its generated ConfigMaps
/// (name -> key -> value), and the Secrets that secret.example.yaml promises (name -> keys).
pub struct Base {
    pub objects: Vec<Value>,
    pub config_maps: BTreeMap<String, BTreeMap<String, String>>,
    pub secrets: BTreeMap<String, BTreeSet<String>>,
}

impl Base {
    pub fn load() -> Base {
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

    pub fn one(&self, kind: &str) -> &Value {
        let mut of_kind = self.objects.iter().filter(|o| o["kind"] == kind);
        let first = of_kind.next().unwrap_or_else(|| panic!("the base has no {kind}"));
        assert!(of_kind.next().is_none(), "the base has several of kind {kind}");
        first
    }

    pub fn one_mut(&mut self, kind: &str) -> &mut Value {
        self.objects.iter_mut().find(|o| o["kind"] == kind).unwrap_or_else(|| panic!("the base has no {kind}"))
    }
}

pub fn pod_spec(workload: &Value) -> &Value {
    match workload["kind"].as_str() {
        Some("CronJob") => &workload["spec"]["jobTemplate"]["spec"]["template"]["spec"],
        _ => &workload["spec"]["template"]["spec"],
    }
}

/// The main container: the one whose arguments start with a glowd subcommand.
pub fn glowd_container(workload: &Value) -> &Value {
    let spec = pod_spec(workload);
    let mut c = spec["containers"].as_array().into_iter().flatten().filter(|c| c["command"].is_null());
    let first = c.next().expect("a container that runs the image's entrypoint (glowd)");
    assert!(c.next().is_none(), "several glowd containers");
    first
}

/// A container's environment as the process would see it: literal values, ConfigMap values, `dummy-<name>` for
/// Secret values (their keys are checked separately), `fieldref-<name>` for the downward API.
pub fn container_env(
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

/// The text of the file a container reads at `path`: a ConfigMap key mounted at its folder.
pub fn mounted_file(
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
pub fn daemon_pipeline_of(
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

pub fn k8s_daemon_pipeline() -> PipelineFile {
    let base = Base::load();
    daemon_pipeline_of(base.one("Deployment"), &base.config_maps).unwrap_or_else(|e| panic!("{e}")).0
}
