//! The multi-scale Glow: L levels of (squeeze, K flow steps, split with a learned prior).
use super::config::{GlowConfig, PixelConvention};
use super::error::{ModelError, Result};
use super::flow_step::{FlowStep, FoldedStep};
use super::zero_conv::{FoldedConv, ZeroConv};
use super::conv::Layout;
use super::precision::Precision;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use tch::{nn, Device, Kind, Tensor};

const LN_2PI: f64 = 1.837_877_066_409_345_3;

pub struct Level {
    pub steps: Vec<FlowStep>,
    /// Split prior (mean, log-sd of the leaving half from the staying half), or the top prior at the last level.
    pub prior: ZeroConv,
    pub last: bool,
}

struct FoldedLevel {
    steps: Vec<FoldedStep>,
    prior: FoldedConv,
}

struct Folded {
    levels: Vec<FoldedLevel>,
    layout: Layout,
}

/// Every level's latent plus the likelihood terms, for a batch of N images.
pub struct Latents {
    /// One tensor per level, finest first: `z[i]` has shape `(N, c_i, h_i, w_i)`.
    pub z: Vec<Tensor>,
    /// log p_Z(z) under the (learned) priors, per image.
    pub log_p_z: Tensor,
    /// log|det ∂f/∂x|, per image.
    pub logdet: Tensor,
}

impl Latents {
    pub fn batch_size(&self) -> i64 {
        self.z[0].size()[0]
    }

    /// Continuous log-density of the (scaled) input, per image: log p_Z(f(x)) + log|det|.
    pub fn log_px(&self) -> Vec<f64> {
        Vec::<f64>::try_from((&self.log_p_z + &self.logdet).to_kind(Kind::Double).to_device(Device::Cpu))
            .expect("1-d tensor")
    }

    /// Bits per dimension of the discrete image, per image: (−log p(x) + D·ln n_bins) / (D·ln 2).
    pub fn bits_per_dim(&self, config: &GlowConfig) -> Vec<f64> {
        let d = config.dims() as f64;
        self.log_px()
            .into_iter()
            .map(|lp| (-lp + d * config.n_bins().ln()) / (d * std::f64::consts::LN_2))
            .collect()
    }

    /// Row `i` of the batch as a batch of one.
    pub fn select(&self, i: i64) -> Latents {
        Latents {
            z: self.z.iter().map(|z| z.narrow(0, i, 1)).collect(),
            log_p_z: self.log_p_z.narrow(0, i, 1),
            logdet: self.logdet.narrow(0, i, 1),
        }
    }
}

pub struct Glow {
    pub config: GlowConfig,
    pub vs: nn::VarStore,
    pub levels: Vec<Level>,
    folded: Option<Folded>,
    precision: Precision,
}

pub fn squeeze(x: &Tensor) -> Tensor {
    let (n, c, h, w) = x.size4().expect("4-d input");
    x.reshape([n, c, h / 2, 2, w / 2, 2]).permute([0, 1, 3, 5, 2, 4]).reshape([n, c * 4, h / 2, w / 2])
}

pub fn unsqueeze(x: &Tensor) -> Tensor {
    let (n, c, h, w) = x.size4().expect("4-d input");
    x.reshape([n, c / 4, 2, 2, h, w]).permute([0, 1, 4, 2, 5, 3]).reshape([n, c / 4, h * 2, w * 2])
}

pub fn gaussian_log_p(x: &Tensor, mean: &Tensor, log_sd: &Tensor) -> Tensor {
    let lp = (x - mean).square() * (log_sd * -2.0).exp() * -0.5 - log_sd - 0.5 * LN_2PI;
    lp.sum_dim_intlist([1i64, 2, 3].as_slice(), false, Kind::Float)
}

/// Standard normal noise from a seeded ChaCha stream: the same seed gives the same numbers on every device and
/// every libtorch version (torch's own generators differ between CPU and CUDA).
pub fn seeded_normal(rng: &mut ChaCha8Rng, shape: &[i64], device: Device) -> Tensor {
    let n: i64 = shape.iter().product();
    let data: Vec<f32> = (0..n).map(|_| StandardNormal.sample(rng)).collect();
    Tensor::from_slice(&data).view(shape).to_device(device)
}

/// Prior of a level: the folded conv at inference, the trainable one otherwise.
enum PriorRef<'a> {
    Train(&'a ZeroConv),
    Folded(&'a FoldedConv),
}

impl PriorRef<'_> {
    /// Mean and log-sd in float32 (the priors score and draw latents; they take no part in inverting the flow).
    fn mean_log_sd(&self, input: &Tensor) -> (Tensor, Tensor) {
        let input = if input.kind() == Kind::Float { input.shallow_clone() } else { input.to_kind(Kind::Float) };
        let out = match self {
            PriorRef::Train(p) => p.forward(&input),
            PriorRef::Folded(p) => p.forward(&input),
        };
        let parts = out.chunk(2, 1);
        (parts[0].shallow_clone(), parts[1].shallow_clone())
    }
}

impl Glow {
    /// A freshly initialised model (ActNorm not yet initialised: see [`Glow::initialize_actnorm`]).
    pub fn new(config: GlowConfig, device: Device, seed: u64) -> Result<Glow> {
        config.validate()?;
        tch::manual_seed(seed as i64);
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let mut levels = Vec::new();
        for i in 0..config.levels {
            let lp = &root / "levels" / i;
            let c = config.level_flow_channels(i);
            let steps = (0..config.steps)
                .map(|k| {
                    let step_seed = seed.wrapping_mul(1_000_003).wrapping_add((i * 10_000 + k) as u64);
                    FlowStep::with_lu(&lp / "steps" / k, &config, c, config.level_lu(i), step_seed)
                })
                .collect();
            let last = i + 1 == config.levels;
            let prior_in = if last { c } else { c / 2 };
            let prior = ZeroConv::new(&lp / "prior", prior_in, prior_in * 2, config.zero_conv_padding);
            levels.push(Level { steps, prior, last });
        }
        Ok(Glow { config, vs, levels, folded: None, precision: Precision::Fp32 })
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// What the coupling networks compute in (float32 unless [`Glow::set_precision`] said otherwise).
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Sets the coupling networks' precision for training and inference; a prepared inference form is rebuilt.
    pub fn set_precision(&mut self, precision: Precision) {
        for level in &mut self.levels {
            for step in &mut level.steps {
                step.coupling.compute = precision;
            }
        }
        self.precision = precision;
        if let Some(layout) = self.folded.as_ref().map(|f| f.layout) {
            self.prepare_inference_with(layout);
        }
    }

    /// [`Glow::set_precision`], by value.
    pub fn with_precision(mut self, precision: Precision) -> Glow {
        self.set_precision(precision);
        self
    }

    pub fn actnorm_initialized(&self) -> bool {
        self.levels.iter().all(|l| l.steps.iter().all(|s| s.actnorm.is_initialized()))
    }

    /// Data-dependent ActNorm initialisation on a batch of u8 images; a no-op for layers already initialised.
    pub fn initialize_actnorm(&mut self, pixels: &Tensor) -> Result<()> {
        let x = self.pixels_to_input(pixels, None)?;
        tch::no_grad(|| self.forward_flow(&x, true));
        self.folded = None;
        Ok(())
    }

    /// Builds the inference form (folded ActNorm/1x1 conv, cached W⁻¹, folded output scales). Call again after
    /// the weights change; training code calls [`Glow::invalidate_inference_cache`] instead.
    pub fn prepare_inference(&mut self) {
        self.prepare_inference_with(Layout::default_for(self.device()));
    }

    /// [`Glow::prepare_inference`] with an explicit memory layout (benchmarks compare them).
    pub fn prepare_inference_with(&mut self, layout: Layout) {
        let levels = self
            .levels
            .iter()
            .map(|l| FoldedLevel {
                steps: l.steps.iter().map(|s| s.folded(layout)).collect(),
                prior: l.prior.folded(layout),
            })
            .collect();
        self.folded = Some(Folded { levels, layout });
    }

    pub fn invalidate_inference_cache(&mut self) {
        self.folded = None;
    }

    fn check_pixels(&self, pixels: &Tensor) -> Result<()> {
        let size = pixels.size();
        let c = &self.config;
        if size.len() != 4 || size[1] != c.channels || size[2] != c.image_size || size[3] != c.image_size {
            return Err(ModelError::Input(format!(
                "images of shape {:?} given, the model expects (N, {}, {}, {})",
                size, c.channels, c.image_size, c.image_size
            )));
        }
        if pixels.kind() != Kind::Uint8 {
            return Err(ModelError::Input(format!("pixels must be uint8, got {:?}", pixels.kind())));
        }
        Ok(())
    }

    /// u8 pixels → flow input in [-0.5, 0.5). With `noise`, uniform dequantisation noise (training); without, the
    /// deterministic convention of the config.
    pub fn pixels_to_input(&self, pixels: &Tensor, noise: Option<&Tensor>) -> Result<Tensor> {
        self.check_pixels(pixels)?;
        let n_bins = self.config.n_bins();
        let shift = (1u32 << (8 - self.config.n_bits)) as f64;
        let v = (pixels.to_device(self.device()).to_kind(Kind::Float) / shift).floor();
        Ok(match (noise, self.config.pixel_convention) {
            (Some(u), _) => (v + u.to_device(self.device())) / n_bins - 0.5,
            (None, PixelConvention::Centre) => (v + 0.5) / n_bins - 0.5,
            (None, PixelConvention::Edge) => v / n_bins - 0.5,
        })
    }

    /// Flow output → u8 pixels (on the CPU).
    /// Which images of a float model output are finite everywhere. Far enough off the data (a strong edit), the
    /// inverse flow overflows; quantising would turn NaN into black pixels without a word.
    pub fn finite_rows(x: &Tensor) -> Vec<bool> {
        Vec::<bool>::try_from(x.isfinite().flatten(1, -1).all_dim(1, false).to_device(Device::Cpu))
            .expect("1-d bool tensor")
    }

    /// [`Glow::decode`], with which images came out finite.
    pub fn decode_checked(&self, z: &[Tensor]) -> Result<(Tensor, Vec<bool>)> {
        let x = self.reverse_all(z)?;
        Ok((self.output_to_pixels(&x), Self::finite_rows(&x)))
    }

    pub fn output_to_pixels(&self, x: &Tensor) -> Tensor {
        let n_bins = self.config.n_bins();
        let shift = (1u32 << (8 - self.config.n_bits)) as f64;
        let scaled = (x + 0.5) * n_bins;
        let v = match self.config.pixel_convention {
            PixelConvention::Centre => scaled.floor(),
            PixelConvention::Edge => scaled.round(),
        };
        (v.clamp(0.0, n_bins - 1.0) * shift).to_kind(Kind::Uint8).to_device(Device::Cpu)
    }

    /// Differentiable encode of a float input: every level's z, the prior log-density and the log-determinant.
    pub fn forward_flow(&self, x: &Tensor, init_actnorm: bool) -> Latents {
        let n = x.size()[0];
        let mut logdet = Tensor::zeros([n], (Kind::Float, x.device()));
        let mut log_p_z = Tensor::zeros([n], (Kind::Float, x.device()));
        let mut z_out = Vec::with_capacity(self.levels.len());
        let mut h = x.shallow_clone();
        for level in &self.levels {
            h = squeeze(&h);
            for step in &level.steps {
                let (y, ld) = step.forward(&h, init_actnorm);
                h = y;
                logdet = logdet + ld;
            }
            let (z, next, lp) = split_forward(&h, level.last, &PriorRef::Train(&level.prior));
            log_p_z = log_p_z + lp;
            z_out.push(z);
            h = next;
        }
        Latents { z: z_out, log_p_z, logdet }
    }

    /// Exact encode of u8 images `(N, C, H, W)`: deterministic, under no-grad.
    pub fn encode(&self, pixels: &Tensor) -> Result<Latents> {
        let x = self.pixels_to_input(pixels, None)?;
        Ok(tch::no_grad(|| self.encode_input(&x)))
    }

    /// Encode of an already scaled float input, through the inference form when it is prepared.
    pub fn encode_input(&self, x: &Tensor) -> Latents {
        let Some(folded) = &self.folded else { return tch::no_grad(|| self.forward_flow(x, false)) };
        tch::no_grad(|| {
            let x = x.to_kind(self.state_kind());
            let n = x.size()[0];
            let mut logdet = Tensor::zeros([n], (Kind::Float, x.device()));
            let mut log_p_z = Tensor::zeros([n], (Kind::Float, x.device()));
            let mut z_out = Vec::with_capacity(folded.levels.len());
            let mut h = x.shallow_clone();
            for (level, fl) in self.levels.iter().zip(&folded.levels) {
                h = folded.layout.apply(&squeeze(&h));
                for step in &fl.steps {
                    let (y, ld) = step.forward(&h);
                    h = y;
                    logdet += ld;
                }
                let (z, next, lp) = split_forward(&h, level.last, &PriorRef::Folded(&fl.prior));
                log_p_z += lp;
                z_out.push(z);
                h = next;
            }
            Latents { z: z_out, log_p_z, logdet }
        })
    }

    /// The kind of the flow's state and latents at inference (see [`flow_step::state_kind`]).
    pub fn state_kind(&self) -> Kind {
        if self.folded.is_some() { super::flow_step::state_kind(self.precision) } else { Kind::Float }
    }

    fn check_latents(&self, z: &[Option<Tensor>], n: i64) -> Result<()> {
        let shapes = self.config.latent_shapes();
        if z.len() != shapes.len() {
            return Err(ModelError::Input(format!(
                "{} latent levels given, the model has {}",
                z.len(),
                shapes.len()
            )));
        }
        for (i, (zi, (c, h, w))) in z.iter().zip(shapes).enumerate() {
            if let Some(zi) = zi {
                if zi.size() != [n, c, h, w] {
                    return Err(ModelError::Input(format!(
                        "latent level {i} has shape {:?}, expected [{n}, {c}, {h}, {w}]",
                        zi.size()
                    )));
                }
            }
        }
        Ok(())
    }

    /// Reverse of the flow. Missing levels (None) are drawn from their priors at that level's temperature, from
    /// a ChaCha stream seeded by `seed` (coarsest level first).
    pub fn reverse_flow(&self, z: &[Option<Tensor>], n: i64, temperatures: &[f64], seed: u64) -> Result<Tensor> {
        self.check_latents(z, n)?;
        self.check_temperatures(temperatures)?;
        let given: Vec<bool> = z.iter().map(Option::is_some).collect();
        let noise = self.prior_noise(&given, n, seed);
        self.reverse_flow_noised(z, &noise, n, temperatures)
    }

    /// The standard normal noise [`Glow::reverse_flow`] draws from `seed` for the levels not given (`given[i]`
    /// false): `n` rows per level, on the CPU, drawn in the same order (coarsest level first). Drawn ahead, it lets
    /// a caller decode the rows in chunks of any size and get the images of one pass over all of them.
    pub fn prior_noise(&self, given: &[bool], n: i64, seed: u64) -> Vec<Option<Tensor>> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let shapes = self.config.latent_shapes();
        let mut noise: Vec<Option<Tensor>> = (0..shapes.len()).map(|_| None).collect();
        for i in (0..shapes.len()).rev() {
            if !given.get(i).copied().unwrap_or(false) {
                let (c, h, w) = shapes[i];
                noise[i] = Some(seeded_normal(&mut rng, &[n, c, h, w], Device::Cpu));
            }
        }
        noise
    }

    fn check_temperatures(&self, temperatures: &[f64]) -> Result<()> {
        if temperatures.len() != self.levels.len() {
            return Err(ModelError::Input(format!(
                "{} temperatures given, the model has {} levels",
                temperatures.len(),
                self.levels.len()
            )));
        }
        Ok(())
    }

    /// [`Glow::reverse_flow`] with its noise given ([`Glow::prior_noise`]'s rows, or a slice of them): every
    /// level is either given in `z` or has its noise in `noise`.
    pub fn reverse_flow_noised(
        &self,
        z: &[Option<Tensor>],
        noise: &[Option<Tensor>],
        n: i64,
        temperatures: &[f64],
    ) -> Result<Tensor> {
        self.check_latents(z, n)?;
        self.check_temperatures(temperatures)?;
        if noise.len() != self.levels.len() {
            return Err(ModelError::Input(format!("noise for {} levels, the model has {}", noise.len(), self.levels.len())));
        }
        let device = self.device();
        let shapes = self.config.latent_shapes();
        let folded = self.folded.as_ref();
        let state = self.state_kind();
        let no_grad = tch::no_grad_guard();
        let mut h: Option<Tensor> = None;
        for i in (0..self.levels.len()).rev() {
            let level = &self.levels[i];
            let prior = match folded {
                Some(f) => PriorRef::Folded(&f.levels[i].prior),
                None => PriorRef::Train(&level.prior),
            };
            let (c, hh, ww) = shapes[i];
            let given = z[i].as_ref().map(|t| t.to_device(device).to_kind(state));
            let stay = h.take();
            let prior_input = match &stay {
                Some(s) => s.shallow_clone(),
                None => Tensor::zeros([n, c, hh, ww], (Kind::Float, device)),
            };
            let zi = match given {
                Some(t) => t,
                None => {
                    let eps = match &noise[i] {
                        Some(e) if e.size() == [n, c, hh, ww] => e.to_device(device),
                        Some(e) => {
                            return Err(ModelError::Input(format!(
                                "noise of level {i} has shape {:?}, expected [{n}, {c}, {hh}, {ww}]",
                                e.size()
                            )))
                        }
                        None => return Err(ModelError::Input(format!("level {i} is neither given nor has noise"))),
                    };
                    let (mean, log_sd) = prior.mean_log_sd(&prior_input);
                    (mean + log_sd.exp() * eps * temperatures[i]).to_kind(state)
                }
            };
            let mut x = match stay {
                Some(s) => Tensor::cat(&[&s, &zi], 1),
                None => zi,
            };
            match folded {
                Some(f) => {
                    x = f.layout.apply(&x);
                    for step in f.levels[i].steps.iter().rev() {
                        x = step.reverse(&x);
                    }
                }
                None => {
                    for step in level.steps.iter().rev() {
                        x = step.reverse(&x);
                    }
                }
            }
            h = Some(unsqueeze(&x));
        }
        drop(no_grad);
        Ok(h.expect("at least one level"))
    }

    /// Exact decode of every level's latent to u8 pixels.
    pub fn decode(&self, z: &[Tensor]) -> Result<Tensor> {
        Ok(self.output_to_pixels(&self.reverse_all(z)?))
    }

    /// Decode with some levels given and the others drawn at the given per-level temperatures.
    pub fn decode_partial(&self, z: &[Option<Tensor>], temperatures: &[f64], seed: u64) -> Result<Tensor> {
        Ok(self.output_to_pixels(&self.reverse_partial(z, temperatures, seed)?))
    }

    /// [`Glow::decode_partial`], with which images came out finite.
    pub fn decode_partial_checked(
        &self,
        z: &[Option<Tensor>],
        temperatures: &[f64],
        seed: u64,
    ) -> Result<(Tensor, Vec<bool>)> {
        let x = self.reverse_partial(z, temperatures, seed)?;
        Ok((self.output_to_pixels(&x), Self::finite_rows(&x)))
    }

    /// The float output of decoding every level's latent.
    fn reverse_all(&self, z: &[Tensor]) -> Result<Tensor> {
        let n = z.first().map(|t| t.size()[0]).unwrap_or(0);
        let given: Vec<Option<Tensor>> = z.iter().map(|t| Some(t.shallow_clone())).collect();
        self.reverse_flow(&given, n, &vec![1.0; self.levels.len()], 0)
    }

    /// The float output of decoding the given levels, the others drawn.
    fn reverse_partial(&self, z: &[Option<Tensor>], temperatures: &[f64], seed: u64) -> Result<Tensor> {
        let n = z
            .iter()
            .flatten()
            .next()
            .map(|t| t.size()[0])
            .ok_or_else(|| ModelError::Input("decode_partial needs at least one given level".into()))?;
        self.reverse_flow(z, n, temperatures, seed)
    }

    /// [`Glow::decode_partial_checked`] with the noise of the levels not given drawn ahead ([`Glow::prior_noise`]).
    pub fn decode_noised_checked(
        &self,
        z: &[Option<Tensor>],
        noise: &[Option<Tensor>],
        n: i64,
        temperatures: &[f64],
    ) -> Result<(Tensor, Vec<bool>)> {
        let x = self.reverse_flow_noised(z, noise, n, temperatures)?;
        Ok((self.output_to_pixels(&x), Self::finite_rows(&x)))
    }

    /// `n` samples with a temperature per level (finest first).
    pub fn sample(&self, n: i64, temperatures: &[f64], seed: u64) -> Result<Tensor> {
        let none: Vec<Option<Tensor>> = (0..self.levels.len()).map(|_| None).collect();
        let x = self.reverse_flow(&none, n, temperatures, seed)?;
        Ok(self.output_to_pixels(&x))
    }
}

/// Splits a level's output: the second half of the channels leaves as z and is scored under the prior computed
/// from the first half (which goes on to the next level). At the last level everything leaves, scored under the
/// top prior (a zero conv of zeros).
fn split_forward(h: &Tensor, last: bool, prior: &PriorRef) -> (Tensor, Tensor, Tensor) {
    if last {
        let (mean, log_sd) = prior.mean_log_sd(&Tensor::zeros_like(h));
        let lp = gaussian_log_p(h, &mean, &log_sd);
        (h.shallow_clone(), Tensor::new(), lp)
    } else {
        let parts = h.chunk(2, 1);
        let (stay, z) = (&parts[0], &parts[1]);
        let (mean, log_sd) = prior.mean_log_sd(stay);
        let lp = gaussian_log_p(z, &mean, &log_sd);
        (z.shallow_clone(), stay.shallow_clone(), lp)
    }
}
