//! The Kustomize tree under deploy/k8s and deploy/s3-policy.json, checked against each other and against the code
//! they deploy: well-formed objects and kustomizations, the Deployment's probes, shutdown, security and references,
//! the nightly CronJob, the KEDA ScaledObject, the Service and PodDisruptionBudget, the gpu overlay, and an S3 policy
//! that grants only what glowd uses. Each check collects every problem it finds and names the file and field; the
//! `*_catches_*` tests feed the same checks a broken copy and expect a complaint, so a check that silently passes
//! everything would fail there.
//!
//! Not checked here, for lack of the tools where these tests run: no Kubernetes API server and no offline OpenAPI
//! schemas (kubeconform), so the manifests are checked by shape and against each other, not by the API's types; no
//! KEDA. `kubectl kustomize` renders the overlays when kubectl is on PATH; without it that test says so and checks
//! the overlay files by hand.
mod common;
use common::deploy::*;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

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

/// Whether every label of `selector` is among `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    selector.as_object().is_some_and(|s| !s.is_empty() && s.iter().all(|(k, v)| labels[k] == *v))
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
        let code = read("src/kafka/source.rs");
        let at = code.find("(\"auto.offset.reset\", \"").expect("src/kafka/source.rs defaults auto.offset.reset");
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
