//! Import of checkpoints of the common PyTorch port of Glow, rosinality/glow-pytorch: the `state_dict` of its
//! `Glow(in_channel, n_flow, n_block, affine, conv_lu)` as `torch.save` writes it.
//!
//! The port's conventions (squeeze order, ActNorm `scale·(x + loc)`, coupling halves and `sigmoid(h + 2)`, split,
//! priors) are glowd's, so every tensor maps one to one onto a glowd name. Where the port differs, the model config
//! says so rather than the importer working around it: its zero convs pad with ones (`zero_conv_padding: ones`), it
//! feeds the bin edge `v/n_bins − 0.5` (`pixel_convention: edge`), and its last block always uses LU-form 1x1 convs
//! even with `conv_lu=False` (`lu_last_level`). The port's coupling width is not a constructor argument: it is read
//! from `blocks.0.flows.0.coupling.net.0.weight`.
use super::config::{CouplingKind, GlowConfig, PixelConvention, ZeroConvPadding, FORMAT_VERSION};
use super::error::{ModelError, Result};
use super::glow::Glow;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// Named tensors of a checkpoint, as read from the file.
pub type StateDict = BTreeMap<String, Tensor>;

/// The port's constructor arguments plus what its `train.py` takes on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RosinalityOptions {
    /// K: flow steps per block.
    pub n_flow: i64,
    /// L: blocks (levels).
    pub n_block: i64,
    /// Affine coupling (the port's `--affine`); otherwise additive.
    pub affine: bool,
    /// LU-form 1x1 convs (the port's default; `--no_lu` makes it false, except in the last block).
    pub lu: bool,
    pub image_size: i64,
    pub n_bits: u32,
    /// `in_channel`: 3 for the port's RGB training.
    pub channels: i64,
}

/// The port's Python helper, used when libtorch cannot read a checkpoint itself (files in the pre-1.6 torch.save
/// format). Embedded so the binary needs no source tree.
const PT2SAFETENSORS: &str = include_str!("../../scripts/pt2safetensors.py");

/// The port's weight of the flow-step tensor `suffix` → glowd's name, and how the values are carried over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transform {
    Same,
    /// The 0-dim uint8 ActNorm flag, to glowd's float flag; must be set.
    Flag,
    /// `(C, C, 1, 1)` → `(C, C)`.
    Matrix,
    /// The port stores `w_l` in full and multiplies by `l_mask` (strictly lower); glowd stores the strict part.
    StrictLower,
    /// Likewise `w_u` with `u_mask` (strictly upper).
    StrictUpper,
}

/// (port suffix, glowd suffix, transform) under `blocks.{b}.flows.{f}.` ↔ `levels.{b}.steps.{f}.`.
const STEP_TABLE: &[(&str, &str, Transform)] = &[
    ("actnorm.loc", "actnorm.loc", Transform::Same),
    ("actnorm.scale", "actnorm.scale", Transform::Same),
    ("actnorm.initialized", "actnorm.initialized", Transform::Flag),
    ("invconv.w_p", "invconv.perm", Transform::Same),
    ("invconv.w_l", "invconv.lower", Transform::StrictLower),
    ("invconv.w_u", "invconv.upper", Transform::StrictUpper),
    ("invconv.w_s", "invconv.log_abs_s", Transform::Same),
    ("invconv.s_sign", "invconv.sign_s", Transform::Same),
    ("invconv.weight", "invconv.weight", Transform::Matrix),
    ("coupling.net.0.weight", "coupling.net.0.weight", Transform::Same),
    ("coupling.net.0.bias", "coupling.net.0.bias", Transform::Same),
    ("coupling.net.2.weight", "coupling.net.2.weight", Transform::Same),
    ("coupling.net.2.bias", "coupling.net.2.bias", Transform::Same),
    ("coupling.net.4.scale", "coupling.net.4.logscale", Transform::Same),
    ("coupling.net.4.conv.weight", "coupling.net.4.weight", Transform::Same),
    ("coupling.net.4.conv.bias", "coupling.net.4.bias", Transform::Same),
];

/// (port suffix, glowd suffix) under `blocks.{b}.` ↔ `levels.{b}.`.
const PRIOR_TABLE: &[(&str, &str)] =
    &[("prior.scale", "prior.logscale"), ("prior.conv.weight", "prior.weight"), ("prior.conv.bias", "prior.bias")];

/// The port's fixed LU buffers: not weights, but checked to be what the port's formula assumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Constant {
    LowerMask,
    UpperMask,
    Eye,
}

const CONSTANT_TABLE: &[(&str, Constant)] = &[
    ("invconv.l_mask", Constant::LowerMask),
    ("invconv.u_mask", Constant::UpperMask),
    ("invconv.l_eye", Constant::Eye),
];

enum Mapping {
    /// Carried to the glowd tensor of this name.
    To(String, Transform),
    /// A fixed buffer of the LU step whose glowd `invconv.perm` is named here.
    Constant(String, Constant),
}

fn parse_index(s: &str) -> Option<(i64, &str)> {
    let (index, rest) = s.split_once('.')?;
    if index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((index.parse().ok()?, rest))
}

/// Where a port tensor goes, by name alone (whether that glowd tensor exists is checked by the caller).
fn map_name(name: &str) -> Option<Mapping> {
    let (b, rest) = parse_index(name.strip_prefix("blocks.")?)?;
    if let Some(step) = rest.strip_prefix("flows.") {
        let (f, suffix) = parse_index(step)?;
        let base = format!("levels.{b}.steps.{f}.");
        if let Some((_, g, t)) = STEP_TABLE.iter().find(|(p, _, _)| *p == suffix) {
            return Some(Mapping::To(format!("{base}{g}"), *t));
        }
        let (_, c) = CONSTANT_TABLE.iter().find(|(p, _)| *p == suffix)?;
        return Some(Mapping::Constant(format!("{base}invconv.perm"), *c));
    }
    let (_, g) = PRIOR_TABLE.iter().find(|(p, _)| *p == rest)?;
    Some(Mapping::To(format!("levels.{b}.{g}"), Transform::Same))
}

/// The port's name of a glowd tensor (for messages about missing tensors).
fn port_name(glowd: &str) -> String {
    let Some((i, rest)) = glowd.strip_prefix("levels.").and_then(parse_index) else { return glowd.to_string() };
    if let Some((k, suffix)) = rest.strip_prefix("steps.").and_then(parse_index) {
        if let Some((p, _, _)) = STEP_TABLE.iter().find(|(_, g, _)| *g == suffix) {
            return format!("blocks.{i}.flows.{k}.{p}");
        }
    }
    if let Some((p, _)) = PRIOR_TABLE.iter().find(|(_, g)| *g == rest) {
        return format!("blocks.{i}.{p}");
    }
    glowd.to_string()
}

fn import_error(message: impl Into<String>) -> ModelError {
    ModelError::Import(message.into())
}

impl RosinalityOptions {
    /// The glowd config of such a port model whose couplings are `hidden` wide.
    pub fn config(&self, hidden: i64) -> GlowConfig {
        GlowConfig {
            format_version: FORMAT_VERSION,
            image_size: self.image_size,
            channels: self.channels,
            levels: self.n_block,
            steps: self.n_flow,
            hidden,
            coupling: if self.affine { CouplingKind::Affine } else { CouplingKind::Additive },
            lu: self.lu,
            n_bits: self.n_bits,
            zero_conv_padding: ZeroConvPadding::Ones,
            pixel_convention: PixelConvention::Edge,
            // The port's last block ignores `conv_lu` (always LU).
            lu_last_level: if self.lu { None } else { Some(true) },
        }
    }
}

/// Whether a port state_dict has affine couplings: the last coupling conv has C outputs (affine) or C/2.
pub fn guess_affine(state_dict: &StateDict, channels: i64) -> Option<bool> {
    let out = state_dict.get("blocks.0.flows.0.coupling.net.4.conv.weight")?.size().first().copied()?;
    match out / channels {
        4 => Some(true),
        2 => Some(false),
        _ => None,
    }
}

/// Maps a port state_dict onto a new glowd model (on the CPU, inference form prepared). Every tensor of the
/// checkpoint must map onto a tensor of this architecture, and every glowd tensor must come from one: the error
/// names those that do not (and both shapes on a shape mismatch).
pub fn import_rosinality(state_dict: &StateDict, options: &RosinalityOptions) -> Result<Glow> {
    const FIRST_CONV: &str = "blocks.0.flows.0.coupling.net.0.weight";
    let hidden = state_dict.get(FIRST_CONV).map(|t| t.size()).ok_or_else(|| {
        import_error(format!(
            "no tensor `{FIRST_CONV}`, so the coupling width is unknown: not a rosinality/glow-pytorch state_dict? \
             (its first names: {})",
            state_dict.keys().take(5).cloned().collect::<Vec<_>>().join(", ")
        ))
    })?;
    if hidden.len() != 4 {
        return Err(import_error(format!("`{FIRST_CONV}` has shape {hidden:?}, expected (hidden, C/2, 3, 3)")));
    }
    let config = options.config(hidden[0]);
    let mut glow = Glow::new(config, Device::Cpu, 0)?;
    let targets = glow.named_tensors();

    let mut mapped: BTreeMap<String, Tensor> = BTreeMap::new();
    let mut unmappable = Vec::new();
    let mut mismatched = Vec::new();
    let mut mismatched_targets = BTreeSet::new();
    for (name, tensor) in state_dict {
        let Some(mapping) = map_name(name) else {
            unmappable.push(name.clone());
            continue;
        };
        match mapping {
            Mapping::Constant(lu_witness, constant) => match targets.get(&lu_witness) {
                Some(perm) => check_constant(name, tensor, constant, perm.size()[0])?,
                None => unmappable.push(name.clone()),
            },
            Mapping::To(target_name, transform) => {
                let Some(target) = targets.get(&target_name) else {
                    unmappable.push(name.clone());
                    continue;
                };
                let value = convert(name, tensor, transform)?;
                if value.size() != target.size() {
                    mismatched.push(format!(
                        "`{name}` has shape {:?}, glowd's `{target_name}` needs {:?}",
                        tensor.size(),
                        target.size()
                    ));
                    mismatched_targets.insert(target_name);
                    continue;
                }
                mapped.insert(target_name, value);
            }
        }
    }
    let missing: Vec<String> = targets
        .keys()
        .filter(|k| !mapped.contains_key(*k) && !mismatched_targets.contains(*k))
        .map(|k| format!("{} (glowd `{k}`)", port_name(k)))
        .collect();
    if !unmappable.is_empty() || !missing.is_empty() || !mismatched.is_empty() {
        let mut parts = Vec::new();
        if !unmappable.is_empty() {
            parts.push(format!("cannot map {} tensor(s): [{}]", unmappable.len(), unmappable.join(", ")));
        }
        if !missing.is_empty() {
            parts.push(format!("missing {} tensor(s): [{}]", missing.len(), missing.join(", ")));
        }
        if !mismatched.is_empty() {
            parts.push(format!("{} shape mismatch(es): [{}]", mismatched.len(), mismatched.join("; ")));
        }
        return Err(import_error(format!(
            "{} for n_flow={}, n_block={}, {}, {}, hidden {} (check --n-flow, --n-block, --affine/--additive, \
             --no-lu and --channels)",
            parts.join("; "),
            options.n_flow,
            options.n_block,
            if options.affine { "affine" } else { "additive" },
            if options.lu { "LU" } else { "no LU" },
            hidden[0],
        )));
    }
    tch::no_grad(|| {
        for (target_name, value) in &mapped {
            let mut var = targets[target_name].shallow_clone();
            var.copy_(&value.to_kind(var.kind()).to_device(var.device()));
        }
    });
    glow.prepare_inference();
    Ok(glow)
}

fn convert(name: &str, tensor: &Tensor, transform: Transform) -> Result<Tensor> {
    let t = tensor.detach().to_device(Device::Cpu);
    if transform == Transform::Flag {
        if t.numel() != 1 {
            return Err(import_error(format!("tensor `{name}` has shape {:?}, expected a 0-dim flag", t.size())));
        }
        if t.to_kind(Kind::Double).double_value(&[]) == 0.0 {
            return Err(import_error(format!(
                "tensor `{name}` is 0: this ActNorm was never initialised, and the port would initialise it from \
                 the first batch it sees, which glowd cannot reproduce"
            )));
        }
        return Ok(Tensor::ones([], (Kind::Float, Device::Cpu)));
    }
    if !t.is_floating_point() {
        return Err(import_error(format!("tensor `{name}` has dtype {:?}, expected a float type", t.kind())));
    }
    let t = t.to_kind(Kind::Float);
    let square = |t: &Tensor| t.dim() == 2 && t.size()[0] == t.size()[1];
    Ok(match transform {
        Transform::Same | Transform::Flag => t,
        Transform::Matrix => {
            let s = t.size();
            if s.len() != 4 || s[2] != 1 || s[3] != 1 {
                return Err(import_error(format!("tensor `{name}` has shape {s:?}, expected (C, C, 1, 1)")));
            }
            t.view([s[0], s[1]])
        }
        Transform::StrictLower if square(&t) => t.tril(-1),
        Transform::StrictUpper if square(&t) => t.triu(1),
        Transform::StrictLower | Transform::StrictUpper => {
            return Err(import_error(format!("tensor `{name}` has shape {:?}, expected (C, C)", t.size())))
        }
    })
}

/// The port multiplies `w_l`, `w_u` by these buffers and adds `l_eye`; glowd's formula assumes exactly the
/// strict triangles and the identity, so anything else cannot be carried over.
fn check_constant(name: &str, tensor: &Tensor, constant: Constant, channels: i64) -> Result<()> {
    let ones = Tensor::ones([channels, channels], (Kind::Double, Device::Cpu));
    let expected = match constant {
        Constant::LowerMask => ones.tril(-1),
        Constant::UpperMask => ones.triu(1),
        Constant::Eye => Tensor::eye(channels, (Kind::Double, Device::Cpu)),
    };
    if tensor.size() != expected.size() {
        return Err(import_error(format!(
            "tensor `{name}` has shape {:?}, expected {:?}",
            tensor.size(),
            expected.size()
        )));
    }
    let t = tensor.detach().to_device(Device::Cpu).to_kind(Kind::Double);
    if !t.equal(&expected) {
        return Err(import_error(format!(
            "tensor `{name}` is not the port's fixed {} (glowd's LU form assumes it)",
            match constant {
                Constant::LowerMask => "strictly-lower mask",
                Constant::UpperMask => "strictly-upper mask",
                Constant::Eye => "identity",
            }
        )));
    }
    Ok(())
}

/// Reads a checkpoint's named tensors: a `.safetensors` state_dict, or a `torch.save`d one (libtorch reads the
/// zip format of torch ≥ 1.6; older files go through the project's Python helper in the venv `GLOWD_VENV`,
/// default `~/.cache/glowd/venv`). The `module.` prefix of `nn.DataParallel` checkpoints is removed.
pub fn read_state_dict(path: &Path) -> Result<StateDict> {
    if !path.is_file() {
        return Err(ModelError::file(path, "no such file"));
    }
    let is_safetensors = path.extension().and_then(|e| e.to_str()) == Some("safetensors");
    let named = if is_safetensors {
        Tensor::read_safetensors(path).map_err(|e| ModelError::file(path, e))?
    } else {
        match Tensor::loadz_multi(path) {
            Ok(named) => named,
            Err(libtorch) => read_with_python(path).map_err(|python| {
                ModelError::file(
                    path,
                    format!(
                        "cannot read the checkpoint: libtorch says: {}; the Python helper says: {python}",
                        libtorch.to_string().lines().next().unwrap_or("").trim()
                    ),
                )
            })?,
        }
    };
    let mut out = StateDict::new();
    for (name, tensor) in named {
        let key = name.strip_prefix("module.").unwrap_or(&name).to_string();
        if out.insert(key.clone(), tensor).is_some() {
            return Err(ModelError::file(path, format!("tensor `{key}` appears twice (with and without `module.`)")));
        }
    }
    if out.is_empty() {
        return Err(ModelError::file(path, "the checkpoint holds no tensors"));
    }
    Ok(out)
}

fn venv_python() -> PathBuf {
    let venv = std::env::var_os("GLOWD_VENV").map(PathBuf::from).unwrap_or_else(|| {
        let cache = std::env::var_os("GLOWD_CACHE").map(PathBuf::from).unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache").join("glowd")
        });
        cache.join("venv")
    });
    venv.join("bin").join("python")
}

/// Converts with `torch.load(weights_only=True)` in the venv's Python into a temporary safetensors file.
fn read_with_python(path: &Path) -> std::result::Result<Vec<(String, Tensor)>, String> {
    let python = venv_python();
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let tmp = std::env::temp_dir().join(format!("glowd-import-{}-{nanos}.safetensors", std::process::id()));
    let output = std::process::Command::new(&python)
        .arg("-c")
        .arg(PT2SAFETENSORS)
        .arg(path)
        .arg(&tmp)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
    let result = if output.status.success() {
        Tensor::read_safetensors(&tmp).map_err(|e| e.to_string())
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        Err(stderr.trim().lines().last().unwrap_or("failed").to_string())
    };
    let _ = std::fs::remove_file(&tmp);
    result
}
