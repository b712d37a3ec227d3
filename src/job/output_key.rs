//! Where a job's outputs go: deterministic keys derived from the job id.
use super::*;

/// Where a job's outputs go: `<root>/<job id>/` (or `<job id>/` when the root is empty). Deterministic, so a
/// redelivered job writes the same keys. `root` comes from the pipeline file and is checked there with
/// [`check_key`]; a trailing `/` on it is ignored.
pub fn output_prefix(root: &str, job: &Job) -> String {
    format!("{}/", join_key(root, job.id.as_str()))
}

/// `rest` under the key prefix `root` (`root/rest`, or `rest` when the root is empty; a trailing `/` on the root
/// is ignored). The one way keys are joined: job outputs, run records and datasets all go through it.
pub fn join_key(root: &str, rest: &str) -> String {
    let root = root.trim_end_matches('/');
    if root.is_empty() {
        rest.to_string()
    } else {
        format!("{root}/{rest}")
    }
}

/// Every key the job writes, in order, then the manifest's last (it is written after the rest are durable).
pub fn output_keys(root: &str, job: &Job) -> Vec<String> {
    let prefix = output_prefix(root, job);
    let mut keys: Vec<String> = job.output_names().iter().map(|n| format!("{prefix}{n}")).collect();
    keys.push(format!("{prefix}{MANIFEST_NAME}"));
    keys
}
