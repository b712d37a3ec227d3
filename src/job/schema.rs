//! The embedded JSON Schemas (job, result, manifest) and validation against them.
use super::*;
use serde_json::Value;
use std::sync::OnceLock;

/// The three embedded schemas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemaName {
    Job,
    Result,
    Manifest,
}

impl SchemaName {
    pub fn text(self) -> &'static str {
        match self {
            SchemaName::Job => JOB_SCHEMA,
            SchemaName::Result => RESULT_SCHEMA,
            SchemaName::Manifest => MANIFEST_SCHEMA,
        }
    }

    fn file(self) -> &'static str {
        match self {
            SchemaName::Job => "job.v1.json",
            SchemaName::Result => "result.v1.json",
            SchemaName::Manifest => "manifest.v1.json",
        }
    }
}

/// Compiles an embedded schema (draft 2020-12, offline: the job schema is registered so the others can `$ref`
/// it, and nothing is fetched).
pub(super) fn compile(name: SchemaName) -> Result<jsonschema::Validator, JobConfigError> {
    let err = |message: String| JobConfigError::Schema { name: name.file(), message };
    let parse = |text: &str| serde_json::from_str::<Value>(text).map_err(|e| err(e.to_string()));
    let job = parse(JOB_SCHEMA)?;
    let registry = jsonschema::Registry::new()
        .add(JOB_SCHEMA_ID, job)
        .and_then(|r| r.prepare())
        .map_err(|e| err(e.to_string()))?;
    jsonschema::draft202012::options()
        .with_registry(&registry)
        .build(&parse(name.text())?)
        .map_err(|e| err(e.to_string()))
}

/// The schema's complaints, as one readable line: up to [`MAX_SCHEMA_ERRORS_LISTED`], each with where in the
/// document, instance values masked so caller data is not echoed into headers.
pub(super) fn schema_errors(validator: &jsonschema::Validator, value: &Value) -> Result<(), String> {
    let errors: Vec<String> = validator
        .iter_errors(value)
        .map(|e| {
            let at = e.instance_path().to_string();
            let at = if at.is_empty() { "/".to_string() } else { at };
            format!("at {at}: {}", e.masked())
        })
        .collect();
    if errors.is_empty() {
        return Ok(());
    }
    let mut line = errors.iter().take(MAX_SCHEMA_ERRORS_LISTED).cloned().collect::<Vec<_>>().join("; ");
    if errors.len() > MAX_SCHEMA_ERRORS_LISTED {
        line.push_str(&format!("; and {} more", errors.len() - MAX_SCHEMA_ERRORS_LISTED));
    }
    Err(line)
}

/// Validates any document against one of the embedded schemas; the error lists the violations. For the daemon's
/// self-checks of what it writes and for tests.
pub fn validate(name: SchemaName, value: &Value) -> Result<(), String> {
    static COMPILED: OnceLock<[jsonschema::Validator; 3]> = OnceLock::new();
    let all = COMPILED.get_or_init(|| {
        [SchemaName::Job, SchemaName::Result, SchemaName::Manifest]
            .map(|n| compile(n).unwrap_or_else(|e| panic!("embedded schema: {e}")))
    });
    let v = match name {
        SchemaName::Job => &all[0],
        SchemaName::Result => &all[1],
        SchemaName::Manifest => &all[2],
    };
    schema_errors(v, value)
}
