//! Any bytes as a job message: parsing and every gate after it (JSON, version, kind, schema, limits, keys) must
//! answer Ok or a JobError with a DLQ kind, never panic, and an accepted job must serialise and parse back equal.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match glowd::job::parse_job(data) {
        Ok(job) => {
            let text = serde_json::to_vec(&job).expect("an accepted job serialises");
            let again = glowd::job::parse_job(&text).expect("an accepted job parses again");
            assert_eq!(again.id, job.id);
        }
        Err(e) => {
            assert!(!e.kind().is_empty());
        }
    }
    // The id peek used for dead letters of unparseable messages must not panic either.
    let _ = glowd::job::peek_id(data, 1 << 20);
});
