//! deploy/Dockerfile and deploy/Dockerfile.cuda, checked against the repository and the code they build: a
//! multi-stage, locked build from the pinned torch wheel, every COPY source present and let through .dockerignore,
//! every file the crate compiles in copied, and a runtime stage that runs unprivileged, serves and health-checks the
//! pipelines' port and runs what compose runs. And `glowd validate` on every shipped pipeline as its container reads
//! it. Each check collects every problem it finds and names the file and field; the `*_catches_*` test feeds the
//! same check a broken copy and expects a complaint, so a check that silently passes everything would fail there.
//!
//! Not checked here, for lack of the tools where these tests run: no Docker engine, so the images are not built.
mod common;
use common::bin::glowd;
use common::deploy::*;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path};

/// The version scripts/setup installs (tch needs exactly this libtorch).
fn torch_version() -> String {
    read("scripts/setup")
        .lines()
        .find_map(|l| l.strip_prefix("TORCH_VERSION="))
        .expect("scripts/setup sets TORCH_VERSION")
        .trim()
        .to_string()
}

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

/// `glowd validate` on every shipped pipeline, as its container would read it (the models from the repository's
/// models/, which the compose mount and the S3 models/ prefix hold): tables, model loading, [submit] template.
#[test]
fn glowd_validate_accepts_the_shipped_pipelines() {
    let tmp = tempfile::tempdir().unwrap();
    let models = repo().join("models");
    let validate = |name: &str, value: toml::Table, env: &BTreeMap<String, String>| {
        let path = tmp.path().join(name);
        std::fs::write(&path, toml::to_string(&value).unwrap()).unwrap();
        let out = glowd()
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
