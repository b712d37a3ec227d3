//! Loading a model folder checks every tensor and fails with a message naming it; corrupt files never panic.
mod common;
use common::model::*;
use glowd::model::weights::{read_safetensors, write_safetensors, WEIGHTS_FILE};
use glowd::model::{Glow, ModelError};
use std::collections::BTreeMap;
use tch::{Device, Kind, Tensor};

fn saved_model() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    ready_model(tiny(&["steps=1"]), 1).save(dir.path()).unwrap();
    dir
}

fn rewrite(dir: &std::path::Path, edit: impl FnOnce(&mut BTreeMap<String, Tensor>)) {
    let path = dir.join(WEIGHTS_FILE);
    let (file, _) = read_safetensors(&path).unwrap();
    let mut tensors: BTreeMap<String, Tensor> =
        file.into_iter().map(|(k, (shape, v))| (k, Tensor::from_slice(&v).view(shape.as_slice()))).collect();
    edit(&mut tensors);
    write_safetensors(&path, &tensors, None).unwrap();
}

#[test]
fn a_wrong_shape_names_the_tensor_and_both_shapes() {
    let dir = saved_model();
    rewrite(dir.path(), |t| {
        t.insert("levels.1.prior.bias".into(), Tensor::zeros([5], (Kind::Float, Device::Cpu)));
    });
    let err = Glow::load(dir.path(), Device::Cpu).err().expect("must fail");
    let msg = err.to_string();
    assert!(matches!(err, ModelError::ShapeMismatch { .. }), "{msg}");
    assert!(msg.contains("levels.1.prior.bias") && msg.contains("[5]") && msg.contains("[24]"), "{msg}");
}

#[test]
fn missing_and_unexpected_tensors_are_listed() {
    let dir = saved_model();
    rewrite(dir.path(), |t| {
        t.remove("levels.0.steps.0.actnorm.loc");
        t.remove("levels.2.prior.weight");
        t.insert("levels.9.extra".into(), Tensor::zeros([1], (Kind::Float, Device::Cpu)));
    });
    let msg = Glow::load(dir.path(), Device::Cpu).err().expect("must fail").to_string();
    assert!(msg.contains("levels.0.steps.0.actnorm.loc") && msg.contains("levels.2.prior.weight"), "{msg}");
    assert!(msg.contains("unexpected [levels.9.extra]"), "{msg}");
}

#[test]
fn truncated_or_garbage_weights_give_an_error_naming_the_file() {
    let dir = saved_model();
    let path = dir.path().join(WEIGHTS_FILE);
    let bytes = std::fs::read(&path).unwrap();
    for broken in [bytes[..bytes.len() / 2].to_vec(), bytes[..5].to_vec(), b"not a model at all".to_vec(), vec![]] {
        std::fs::write(&path, &broken).unwrap();
        let msg = Glow::load(dir.path(), Device::Cpu).err().expect("must fail").to_string();
        assert!(msg.contains(WEIGHTS_FILE), "{msg}");
    }
}

#[test]
fn a_bad_config_names_the_file_and_the_problem() {
    let dir = saved_model();
    let path = dir.path().join("config.json");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("\"levels\": 3", "\"levels\": 3, \"colour\": 1")).unwrap();
    let msg = Glow::load(dir.path(), Device::Cpu).err().unwrap().to_string();
    assert!(msg.contains("config.json") && msg.contains("colour"), "{msg}");
    std::fs::write(&path, text.replace("\"format_version\": 1", "\"format_version\": 99")).unwrap();
    let msg = Glow::load(dir.path(), Device::Cpu).err().unwrap().to_string();
    assert!(msg.contains("format_version 99"), "{msg}");
    std::fs::remove_file(&path).unwrap();
    let msg = Glow::load(dir.path(), Device::Cpu).err().unwrap().to_string();
    assert!(msg.contains("config.json"), "{msg}");
}
