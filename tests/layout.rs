//! The layout's rules, checked on the source files: no import circle between files, and each room names only the
//! rooms below it (the model no tokio/Kafka/S3 type, the pipeline no tch type, the job contract neither).
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every source file under src/, by module path (`crate::pipeline::batcher`).
fn modules() -> BTreeMap<String, String> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    // GLOWD_LAYOUT_ROOT measures another checkout (`circles_report` on an older commit).
    let root = std::env::var("GLOWD_LAYOUT_ROOT").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string());
    let src = Path::new(&root).join("src");
    let mut files = Vec::new();
    walk(&src, &mut files);
    files
        .into_iter()
        .filter(|f| !f.ends_with("main.rs"))
        .map(|f| {
            let rel = f.strip_prefix(&src).unwrap().with_extension("");
            let mut parts: Vec<String> = rel.iter().map(|c| c.to_string_lossy().into_owned()).collect();
            if parts.last().is_some_and(|l| l == "mod" || l == "lib") {
                parts.pop();
            }
            let name = std::iter::once("crate".to_string()).chain(parts).collect::<Vec<_>>().join("::");
            (name, std::fs::read_to_string(&f).unwrap())
        })
        .collect()
}

/// The code of a file without its unit tests (`#[cfg(test)] mod …` to the end) and without comments.
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod ") {
        Some(i) => &text[..i],
        None => text,
    };
    text.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n")
}

/// Items a file defines at its top level (functions, types, constants, traits, macros).
fn defined(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in code(text).lines() {
        let mut l = line;
        for prefix in ["pub(crate) ", "pub(super) ", "pub ", "async ", "unsafe "] {
            l = l.strip_prefix(prefix).unwrap_or(l);
        }
        for kw in ["fn ", "struct ", "enum ", "const ", "type ", "trait ", "static ", "macro_rules! "] {
            if let Some(rest) = l.strip_prefix(kw) {
                let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                out.insert(name);
            }
        }
    }
    out
}

/// The files a file refers to: every `crate::a::b`, `super::…` and `self::…` path, and the paths through a
/// module's own children (`edit::run` in `cli/mod.rs`). A name a module only re-exports is followed to the child
/// file that defines it, so a facade `mod.rs` (`pub use source::*`) does not tie its children in a circle; a glob
/// import of a parent (`use super::*`) is not followed.
fn edges(modules: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    let defs: BTreeMap<&str, BTreeSet<String>> = modules.iter().map(|(n, t)| (n.as_str(), defined(t))).collect();
    let children = |m: &str| -> Vec<String> {
        modules.keys().filter(|k| k.strip_prefix(&format!("{m}::")).is_some_and(|r| !r.contains("::"))).cloned().collect()
    };
    let resolve = |from: &str, path: &str| -> Option<String> {
        // Longest module path that prefixes the referenced path, then the item's defining child if the module only
        // re-exports it.
        let parts: Vec<&str> = path.split("::").collect();
        for n in (1..=parts.len()).rev() {
            let candidate = parts[..n].join("::");
            if !modules.contains_key(&candidate) {
                continue;
            }
            let mut target = candidate.clone();
            if let Some(item) = parts.get(n) {
                if !defs[candidate.as_str()].contains(*item) {
                    if let Some(child) = children(&candidate).into_iter().find(|c| defs[c.as_str()].contains(*item)) {
                        target = child;
                    }
                }
            }
            return (target != from).then_some(target);
        }
        None
    };
    let mut out = BTreeMap::new();
    for (name, text) in modules {
        let code = code(text);
        let mut to = BTreeSet::new();
        let parent = name.rsplit_once("::").map(|x| x.0).unwrap_or("crate");
        let own_children: Vec<(String, String)> = children(name)
            .into_iter()
            .map(|c| (format!("{}::", c.rsplit("::").next().unwrap()), c.clone()))
            .collect();
        let mut bases: Vec<(String, String)> =
            vec![("crate::".into(), "crate".into()), ("super::".into(), parent.into()), ("self::".into(), name.clone())];
        for (prefix, child) in &own_children {
            bases.push((prefix.clone(), child.clone()));
        }
        let bytes = code.as_bytes();
        for (prefix, base) in &bases {
            let mut at = 0;
            while let Some(i) = code[at..].find(prefix.as_str()) {
                let start = at + i;
                at = start + prefix.len();
                if start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_' || bytes[start - 1] == b':') {
                    continue;
                }
                // `use crate::{a, b::c}` groups: each item of the group.
                let rest = &code[at..];
                if rest.starts_with('*') {
                    continue;
                }
                let items: Vec<String> = if let Some(group) = rest.strip_prefix('{') {
                    let end = group.find('}').unwrap_or(0);
                    group[..end].split(',').map(|s| s.trim().to_string()).collect()
                } else {
                    let end = rest.find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':')).unwrap_or(rest.len());
                    vec![rest[..end].trim_end_matches(':').to_string()]
                };
                for item in items {
                    let item = item.split(['{', ' ']).next().unwrap_or("").trim_end_matches(':');
                    if item == "*" {
                        continue;
                    }
                    let full = if item.is_empty() || item == "self" { base.clone() } else { format!("{base}::{item}") };
                    if let Some(target) = resolve(name, &full) {
                        to.insert(target);
                    }
                }
            }
        }
        out.insert(name.clone(), to);
    }
    out
}

/// Strongly connected components with more than one file (Tarjan).
fn circles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct T<'a> {
        g: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        next: usize,
        out: Vec<Vec<String>>,
    }
    impl<'a> T<'a> {
        fn visit(&mut self, v: &'a str) {
            self.index.insert(v, self.next);
            self.low.insert(v, self.next);
            self.next += 1;
            self.stack.push(v);
            self.on.insert(v);
            for w in self.g.get(v).into_iter().flatten() {
                let w = w.as_str();
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let lw = self.low[w];
                    let lv = self.low.get_mut(v).unwrap();
                    *lv = (*lv).min(lw);
                } else if self.on.contains(w) {
                    let iw = self.index[w];
                    let lv = self.low.get_mut(v).unwrap();
                    *lv = (*lv).min(iw);
                }
            }
            if self.low[v] == self.index[v] {
                let mut scc = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on.remove(w);
                    scc.push(w.to_string());
                    if w == v {
                        break;
                    }
                }
                if scc.len() > 1 {
                    scc.sort();
                    self.out.push(scc);
                }
            }
        }
    }
    let mut t = T { g: graph, index: BTreeMap::new(), low: BTreeMap::new(), stack: vec![], on: BTreeSet::new(), next: 0, out: vec![] };
    for v in graph.keys() {
        if !t.index.contains_key(v.as_str()) {
            t.visit(v);
        }
    }
    t.out
}

#[test]
fn no_import_circle_between_files() {
    let m = modules();
    let g = edges(&m);
    assert!(g.len() > 50, "the scan found only {} files", g.len());
    assert!(g.values().map(BTreeSet::len).sum::<usize>() > 100, "the scan found almost no references");
    let found = circles(&g);
    assert!(found.is_empty(), "import circles: {found:#?}");
}

#[test]
fn the_circle_check_can_fail() {
    let g: BTreeMap<String, BTreeSet<String>> = [
        ("a".to_string(), BTreeSet::from(["b".to_string()])),
        ("b".to_string(), BTreeSet::from(["c".to_string()])),
        ("c".to_string(), BTreeSet::from(["a".to_string()])),
        ("d".to_string(), BTreeSet::from(["a".to_string()])),
    ]
    .into();
    assert_eq!(circles(&g), vec![vec!["a".to_string(), "b".to_string(), "c".to_string()]]);
}

/// Rooms whose code may not name these crates (checked on `use` lines and paths, tests excluded).
const FORBIDDEN: [(&str, &[&str]); 6] = [
    ("crate::model", &["tokio", "rdkafka", "aws_sdk_s3", "aws_config", "axum"]),
    ("crate::job", &["tch", "tokio", "rdkafka", "aws_sdk_s3", "axum"]),
    ("crate::codec", &["tch", "tokio", "rdkafka", "aws_sdk_s3", "axum"]),
    ("crate::settings", &["tch", "tokio", "rdkafka", "aws_sdk_s3", "axum"]),
    ("crate::pipeline", &["tch", "rdkafka", "aws_sdk_s3", "aws_config"]),
    ("crate::kafka", &["tch", "aws_sdk_s3"]),
];

/// Rooms a room may not refer to. `studio` and `daemon` are the top rooms beside `cli` (which starts them): the
/// studio may use the model and the pipeline's tools but neither the daemon nor the command line.
const BELOW: [(&str, &[&str]); 10] = [
    ("crate::model", &["crate::pipeline", "crate::kafka", "crate::s3", "crate::daemon", "crate::cli", "crate::tools", "crate::worker", "crate::job", "crate::studio"]),
    ("crate::job", &["crate::model", "crate::pipeline", "crate::kafka", "crate::s3", "crate::daemon", "crate::cli", "crate::worker", "crate::studio"]),
    ("crate::codec", &["crate::model", "crate::pipeline", "crate::kafka", "crate::s3", "crate::daemon", "crate::cli", "crate::worker", "crate::job", "crate::studio"]),
    ("crate::worker", &["crate::pipeline", "crate::kafka", "crate::s3", "crate::daemon", "crate::cli", "crate::tools", "crate::studio"]),
    ("crate::pipeline", &["crate::model", "crate::kafka", "crate::s3", "crate::daemon", "crate::cli", "crate::tools", "crate::studio"]),
    ("crate::kafka", &["crate::model", "crate::s3", "crate::daemon", "crate::cli", "crate::worker", "crate::studio"]),
    ("crate::s3", &["crate::model", "crate::kafka", "crate::daemon", "crate::cli", "crate::worker", "crate::studio"]),
    ("crate::tools", &["crate::daemon", "crate::cli", "crate::studio"]),
    ("crate::studio", &["crate::daemon", "crate::cli"]),
    ("crate::daemon", &["crate::studio", "crate::cli"]),
];

fn in_room(module: &str, room: &str) -> bool {
    module == room || module.starts_with(&format!("{room}::"))
}

#[test]
fn each_room_names_only_what_is_below_it() {
    let m = modules();
    let g = edges(&m);
    let mut broken = Vec::new();
    for (name, text) in &m {
        let code = code(text);
        for (room, crates) in FORBIDDEN {
            if in_room(name, room) {
                for c in crates {
                    let hit = code.lines().any(|l| {
                        let l = l.trim_start();
                        l.starts_with(&format!("use {c}::")) || l.contains(&format!(" {c}::")) || l.contains(&format!("({c}::"))
                            || l.contains(&format!("<{c}::")) || l.contains(&format!("&{c}::"))
                    });
                    if hit {
                        broken.push(format!("{name} names {c}"));
                    }
                }
            }
        }
        for (room, rooms) in BELOW {
            if in_room(name, room) {
                for to in &g[name] {
                    if rooms.iter().any(|r| in_room(to, r)) {
                        broken.push(format!("{name} refers to {to}"));
                    }
                }
            }
        }
    }
    assert!(broken.is_empty(), "layering broken:\n{}", broken.join("\n"));
}

/// Prints the files, references and circles found (the redesign's before/after figure):
/// `GLOWD_LAYOUT_ROOT=<checkout> cargo test --release --test layout -- --ignored --nocapture circles_report`.
#[test]
#[ignore]
fn circles_report() {
    let m = modules();
    let g = edges(&m);
    let found = circles(&g);
    println!(
        "layout: {} files, {} references, {} import circles",
        g.len(),
        g.values().map(BTreeSet::len).sum::<usize>(),
        found.len()
    );
    for c in &found {
        println!("  circle of {} files: {}", c.len(), c.join(", "));
    }
}
