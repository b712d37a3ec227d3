//! A run's progress from its result records: what `glowd status` prints and the studio's Runs tab shows. Pure:
//! the records come from the results topic (read in `tools::ops`), the image count from the run record.
use crate::job::{JobId, JobResult, JobStatus};
use serde::Serialize;
use std::collections::BTreeMap;

/// Examples kept per dead-letter reason, and finished outputs kept for thumbnails.
const EXAMPLES: usize = 3;
const THUMBNAILS: usize = 8;

/// The latest status of each job of one run (a redelivered job reports again; `done` wins over an earlier failure),
/// the dead letters by reason, and the image outputs of a few finished jobs.
#[derive(Debug, Default, Clone)]
pub struct RunTally {
    latest: BTreeMap<JobId, JobStatus>,
    /// Per error kind (`schema`, `non_finite_output`, …): each dead-lettered job's message, latest report wins.
    dead: BTreeMap<JobId, (String, String)>,
    /// Image output keys of the latest finished jobs (bucket-relative), newest last.
    thumbnails: Vec<String>,
}

/// Dead letters of one reason.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeadLetterGroup {
    pub kind: String,
    pub count: usize,
    /// A few `(job id, message)` pairs.
    pub examples: Vec<(String, String)>,
}

/// `glowd status`'s line.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunSummary {
    pub run: String,
    pub images: usize,
    pub done: usize,
    pub dead_lettered: usize,
    pub skipped: usize,
    pub pending: usize,
}

impl RunTally {
    /// Counts one result record (of this run: the caller filters by `run`).
    pub fn add(&mut self, r: &JobResult) {
        let Some(job) = r.job.clone() else { return };
        let status = *self
            .latest
            .entry(job.clone())
            .and_modify(|s| {
                if *s != JobStatus::Done {
                    *s = r.status;
                }
            })
            .or_insert(r.status);
        match status {
            JobStatus::DeadLettered => {
                if let Some(e) = &r.error {
                    self.dead.insert(job, (e.kind.as_str().to_string(), e.message.clone()));
                }
            }
            _ => {
                self.dead.remove(&job);
            }
        }
        if r.status == JobStatus::Done {
            if let Some(key) = r.outputs.iter().find(|k| [".png", ".webp"].iter().any(|x| k.ends_with(x))) {
                self.thumbnails.retain(|k| k != key);
                self.thumbnails.push(key.clone());
                if self.thumbnails.len() > THUMBNAILS {
                    self.thumbnails.remove(0);
                }
            }
        }
    }

    /// Jobs that reported at least once.
    pub fn reported(&self) -> usize {
        self.latest.len()
    }

    pub fn count(&self, status: JobStatus) -> usize {
        self.latest.values().filter(|v| **v == status).count()
    }

    /// The counts for a run of `images` images.
    pub fn summary(&self, run: &str, images: usize) -> RunSummary {
        RunSummary {
            run: run.to_string(),
            images,
            done: self.count(JobStatus::Done),
            dead_lettered: self.count(JobStatus::DeadLettered),
            skipped: self.count(JobStatus::Skipped),
            pending: images.saturating_sub(self.latest.len()),
        }
    }

    /// Dead letters grouped by reason, the largest group first.
    pub fn dead_letters(&self) -> Vec<DeadLetterGroup> {
        let mut groups: BTreeMap<&str, DeadLetterGroup> = BTreeMap::new();
        for (job, (kind, message)) in &self.dead {
            let g = groups.entry(kind).or_insert_with(|| DeadLetterGroup { kind: kind.clone(), count: 0, examples: vec![] });
            g.count += 1;
            if g.examples.len() < EXAMPLES {
                g.examples.push((job.to_string(), message.clone()));
            }
        }
        let mut out: Vec<DeadLetterGroup> = groups.into_values().collect();
        out.sort_by(|a, b| b.count.cmp(&a.count).then(a.kind.cmp(&b.kind)));
        out
    }

    /// Image outputs of recently finished jobs (bucket-relative keys), newest last.
    pub fn thumbnails(&self) -> &[String] {
        &self.thumbnails
    }
}

/// Tallies per run, fed with every record of the results topic.
#[derive(Debug, Default, Clone)]
pub struct Tallies {
    pub runs: BTreeMap<String, RunTally>,
}

impl Tallies {
    /// Counts one results-topic payload; records of other versions or shapes, or without a run, are not counted.
    pub fn add_payload(&mut self, payload: &[u8]) {
        let Ok(r) = serde_json::from_slice::<JobResult>(payload) else { return };
        let Some(run) = r.run.as_ref().map(|r| r.as_str().to_string()) else { return };
        self.runs.entry(run).or_default().add(&r);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{ErrorKind, JobFailure, Stage, Timings};

    fn result(job: &str, status: JobStatus, kind: Option<ErrorKind>, outputs: &[&str]) -> JobResult {
        let value = serde_json::json!({
            "version": 1, "job": job, "run": "r1", "status": status, "outputs": outputs, "bits_per_dim": [],
            "timings": Timings::default(),
        });
        let mut r: JobResult = serde_json::from_value(value).unwrap();
        r.error = kind.map(|k| JobFailure::new(k, &format!("{job} failed"), Stage::Decode));
        r
    }

    #[test]
    fn done_wins_and_dead_letters_group_by_reason() {
        let mut t = Tallies::default();
        let dead = |j: &str, k| result(j, JobStatus::DeadLettered, Some(k), &[]);
        for r in [
            dead("a", ErrorKind::CorruptImage),
            result("a", JobStatus::Done, None, &["edits/a/edited.png", "edits/a/manifest.json"]),
            dead("a", ErrorKind::CorruptImage),
            dead("b", ErrorKind::CorruptImage),
            dead("c", ErrorKind::CorruptImage),
            dead("d", ErrorKind::NonFiniteOutput),
            result("e", JobStatus::Skipped, None, &[]),
        ] {
            t.add_payload(serde_json::to_vec(&r).unwrap().as_slice());
        }
        t.add_payload(b"not json");
        let run = &t.runs["r1"];
        assert_eq!(
            run.summary("r1", 8),
            RunSummary { run: "r1".into(), images: 8, done: 1, dead_lettered: 3, skipped: 1, pending: 3 }
        );
        let groups = run.dead_letters();
        assert_eq!(groups.iter().map(|g| (g.kind.as_str(), g.count)).collect::<Vec<_>>(), [("corrupt_image", 2), ("non_finite_output", 1)]);
        assert_eq!(groups[0].examples[0], ("b".to_string(), "b failed".to_string()));
        assert_eq!(run.thumbnails(), ["edits/a/edited.png"]);
    }
}
