//! The architecture of a Glow model, as stored in a model folder's `config.json`.
use super::error::{ModelError, Result};
use serde::{Deserialize, Serialize};

/// Bumped whenever the meaning of a weight or config field changes; loaders refuse other versions.
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CouplingKind {
    /// `y_b = (x_b + t) * sigmoid(h + 2)`: what the paper uses for its best likelihoods.
    Affine,
    /// `y_b = x_b + t`, volume preserving: cheaper, what the paper's CelebA-HQ model used.
    Additive,
}

/// How zero-initialised convolutions (coupling output, priors) pad their input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ZeroConvPadding {
    /// Ordinary zero padding (glowd's default).
    Zeros,
    /// Pad with the value 1, as the common PyTorch port (rosinality/glow-pytorch) does, so its checkpoints import
    /// unchanged.
    Ones,
}

/// Where a pixel's value lands inside its quantisation bin when fed to the flow without noise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PixelConvention {
    /// `(v + 0.5)/n_bins - 0.5`: the expectation of the training noise; decoding with `floor` never flips a pixel.
    Centre,
    /// `v/n_bins - 0.5`: the bin edge, as the common PyTorch port feeds at test time.
    Edge,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlowConfig {
    pub format_version: u32,
    /// Image side in pixels (square images); divisible by 2^levels.
    pub image_size: i64,
    /// 1 (grey) or 3 (RGB).
    pub channels: i64,
    /// Number of multi-scale levels L.
    pub levels: i64,
    /// Flow steps per level K.
    pub steps: i64,
    /// Width of the coupling networks' hidden layers.
    pub hidden: i64,
    pub coupling: CouplingKind,
    /// Invertible 1x1 convolution in LU form (O(C) log-determinant); otherwise a plain matrix with slogdet.
    pub lu: bool,
    /// Bits per colour channel the model sees (1..=8).
    pub n_bits: u32,
    #[serde(default = "default_padding")]
    pub zero_conv_padding: ZeroConvPadding,
    #[serde(default = "default_convention")]
    pub pixel_convention: PixelConvention,
    /// Overrides `lu` for the last level only. The common PyTorch port always builds its last level's 1x1 convs in
    /// LU form, even when told not to use LU, so its `conv_lu=False` checkpoints import as `lu: false` with this
    /// set to true. Absent (the default): every level follows `lu`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lu_last_level: Option<bool>,
}

fn default_padding() -> ZeroConvPadding {
    ZeroConvPadding::Zeros
}
fn default_convention() -> PixelConvention {
    PixelConvention::Centre
}

/// Shape of one level's latent for a single image: (channels, height, width).
pub type LatentShape = (i64, i64, i64);

impl GlowConfig {
    pub fn preset(name: &str) -> Result<GlowConfig> {
        let (image_size, levels, steps, hidden, coupling) = match name {
            "tiny" => (32, 3, 4, 32, CouplingKind::Affine),
            "demo" => (32, 3, 8, 128, CouplingKind::Affine),
            "glow-64" => (64, 4, 32, 512, CouplingKind::Affine),
            "celeba-hq-256" => (256, 6, 32, 512, CouplingKind::Additive),
            other => {
                return Err(ModelError::Config(format!(
                    "unknown preset `{other}` (expected tiny, demo, glow-64 or celeba-hq-256)"
                )))
            }
        };
        let n_bits = if name == "celeba-hq-256" { 5 } else { 8 };
        Ok(GlowConfig {
            format_version: FORMAT_VERSION,
            image_size,
            channels: 3,
            levels,
            steps,
            hidden,
            coupling,
            lu: true,
            n_bits,
            zero_conv_padding: ZeroConvPadding::Zeros,
            pixel_convention: PixelConvention::Centre,
            lu_last_level: None,
        })
    }

    /// Applies a `key=value` override (the CLI's `--set`).
    pub fn set(&mut self, assignment: &str) -> Result<()> {
        let (key, value) = assignment
            .split_once('=')
            .ok_or_else(|| ModelError::Config(format!("`{assignment}` is not key=value")))?;
        let mut json = serde_json::to_value(&*self).map_err(|e| ModelError::Config(e.to_string()))?;
        let obj = json.as_object_mut().expect("config serialises to an object");
        let current = obj
            .get(key)
            .ok_or_else(|| ModelError::Config(format!("unknown config key `{key}`")))?;
        let parsed = match current {
            serde_json::Value::String(_) => serde_json::Value::String(value.to_string()),
            _ => serde_json::from_str(value)
                .map_err(|e| ModelError::Config(format!("`{key}`: cannot parse `{value}`: {e}")))?,
        };
        obj.insert(key.to_string(), parsed);
        *self = serde_json::from_value(json).map_err(|e| ModelError::Config(format!("`{key}`: {e}")))?;
        self.validate()
    }

    pub fn validate(&self) -> Result<()> {
        let fail = |m: String| Err(ModelError::Config(m));
        if self.format_version != FORMAT_VERSION {
            return fail(format!(
                "format_version {} is not supported (this glowd reads {FORMAT_VERSION})",
                self.format_version
            ));
        }
        if self.channels != 1 && self.channels != 3 {
            return fail(format!("channels must be 1 or 3, got {}", self.channels));
        }
        if self.levels < 1 || self.steps < 1 || self.hidden < 1 {
            return fail(format!(
                "levels, steps and hidden must be >= 1, got {}, {}, {}",
                self.levels, self.steps, self.hidden
            ));
        }
        if self.levels > 16 || self.image_size < 2 || self.image_size % (1 << self.levels) != 0 {
            return fail(format!(
                "image_size {} must be divisible by 2^levels = {}",
                self.image_size,
                1i64 << self.levels.min(16)
            ));
        }
        if !(1..=8).contains(&self.n_bits) {
            return fail(format!("n_bits must be in 1..=8, got {}", self.n_bits));
        }
        Ok(())
    }

    /// Whether level `i`'s 1x1 convs are in LU form (`lu`, or `lu_last_level` at the last level when set).
    pub fn level_lu(&self, level: i64) -> bool {
        match self.lu_last_level {
            Some(lu) if level + 1 == self.levels => lu,
            _ => self.lu,
        }
    }

    pub fn n_bins(&self) -> f64 {
        (1u32 << self.n_bits) as f64
    }

    /// Dimensions D = C·H·W of one image.
    pub fn dims(&self) -> i64 {
        self.channels * self.image_size * self.image_size
    }

    /// Channels entering level `i` before its squeeze.
    pub fn level_in_channels(&self, level: i64) -> i64 {
        self.channels << level
    }

    /// Channels the flow steps of level `i` see (after the squeeze).
    pub fn level_flow_channels(&self, level: i64) -> i64 {
        self.level_in_channels(level) * 4
    }

    /// Spatial side of level `i`'s flow steps (after the squeeze).
    pub fn level_side(&self, level: i64) -> i64 {
        self.image_size >> (level + 1)
    }

    /// Per-image shape of every level's latent, finest level first.
    pub fn latent_shapes(&self) -> Vec<LatentShape> {
        (0..self.levels)
            .map(|i| {
                let c = self.level_flow_channels(i);
                let c = if i + 1 == self.levels { c } else { c / 2 };
                let s = self.level_side(i);
                (c, s, s)
            })
            .collect()
    }

    /// Multiply-accumulate count of one image's encode (or decode), for GFLOP/s figures. Counts convolutions only:
    /// they are all but a rounding error of the work.
    pub fn macs_per_image(&self) -> f64 {
        let mut macs = 0f64;
        for i in 0..self.levels {
            let c = self.level_flow_channels(i) as f64;
            let s = self.level_side(i) as f64;
            let px = s * s;
            let h = self.hidden as f64;
            let out = match self.coupling {
                CouplingKind::Affine => c,
                CouplingKind::Additive => c / 2.0,
            };
            let step = c * c + (c / 2.0) * 9.0 * h + h * h + h * 9.0 * out;
            macs += self.steps as f64 * step * px;
            let prior_in = if i + 1 == self.levels { c } else { c / 2.0 };
            macs += prior_in * 9.0 * (2.0 * prior_in) * px;
        }
        macs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latent_shapes_cover_every_dimension() {
        for preset in ["tiny", "demo", "glow-64", "celeba-hq-256"] {
            let cfg = GlowConfig::preset(preset).unwrap();
            cfg.validate().unwrap();
            let total: i64 = cfg.latent_shapes().iter().map(|(c, h, w)| c * h * w).sum();
            assert_eq!(total, cfg.dims(), "{preset}");
        }
    }

    #[test]
    fn set_overrides_and_rejects_unknown_keys() {
        let mut cfg = GlowConfig::preset("tiny").unwrap();
        cfg.set("steps=2").unwrap();
        cfg.set("coupling=additive").unwrap();
        assert_eq!(cfg.steps, 2);
        assert_eq!(cfg.coupling, CouplingKind::Additive);
        assert!(cfg.set("nope=1").unwrap_err().to_string().contains("nope"));
        assert!(cfg.set("image_size=33").unwrap_err().to_string().contains("divisible"));
        assert!(cfg.set("n_bits=9").is_err());
    }
}
