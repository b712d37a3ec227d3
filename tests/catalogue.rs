//! The error catalogue is the one list of kinds: the result schema's enum and the README's table must name exactly
//! the kinds of `glowd::job::ErrorKind`, and every kind the parser or the device can give is in it.
use glowd::job::{ErrorKind, JobError, Stage};
use std::collections::BTreeSet;

fn catalogue() -> BTreeSet<String> {
    ErrorKind::ALL.iter().map(|k| k.as_str().to_string()).collect()
}

#[test]
fn the_result_schema_lists_exactly_the_catalogue() {
    let schema: serde_json::Value = serde_json::from_str(glowd::job::RESULT_SCHEMA).unwrap();
    let kinds: BTreeSet<String> = schema["properties"]["error"]["properties"]["kind"]["enum"]
        .as_array()
        .expect("error.kind is an enum")
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(kinds, catalogue());
    let stages: BTreeSet<String> = schema["properties"]["error"]["properties"]["stage"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(stages, Stage::ALL.iter().map(|s| s.as_str().to_string()).collect());
}

#[test]
fn the_readme_table_lists_exactly_the_catalogue_with_its_meanings() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme.split("### Error kinds").nth(1).expect("README has an Error kinds section");
    let section = section.split("\n## ").next().unwrap();
    let rows: Vec<(String, String)> = section
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .map(|l| {
            let (kind, rest) = l.split_once("` | ").unwrap();
            (kind.to_string(), rest.trim_end_matches(" |").to_string())
        })
        .collect();
    assert_eq!(rows.iter().map(|(k, _)| k.clone()).collect::<BTreeSet<_>>(), catalogue());
    for (kind, meaning) in &rows {
        assert_eq!(ErrorKind::from_name(kind).unwrap().meaning(), meaning, "README row of {kind}");
    }
}

#[test]
fn names_are_unique_and_round_trip() {
    assert_eq!(catalogue().len(), ErrorKind::ALL.len());
    for k in ErrorKind::ALL {
        assert_eq!(ErrorKind::from_name(k.as_str()), Some(*k));
        let json = serde_json::to_string(k).unwrap();
        assert_eq!(serde_json::from_str::<ErrorKind>(&json).unwrap(), *k);
    }
    assert!(serde_json::from_str::<ErrorKind>("\"abandoned\"").is_err());
}

#[test]
fn every_parse_gate_kind_is_in_the_catalogue() {
    for k in JobError::KINDS {
        assert!(catalogue().contains(k.as_str()), "{k}");
    }
}
