//! The training objective, bits per dimension, and its gradient: either ordinary backprop through the whole flow,
//! or per-flow-step recomputation that keeps only each step's input alive (memory then grows with the step inputs,
//! not with every coupling network's hidden activations).
use crate::model::glow::{gaussian_log_p, squeeze, unsqueeze};
use crate::model::Glow;
use tch::{Kind, Tensor};

/// Per-image bits/dim of a float input batch (differentiable).
pub fn bits_per_dim(glow: &Glow, x: &Tensor) -> Tensor {
    let latents = glow.forward_flow(x, false);
    let d = glow.config.dims() as f64;
    ((latents.log_p_z + latents.logdet) * -1.0 + d * glow.config.n_bins().ln()) / (d * std::f64::consts::LN_2)
}

/// Computes the mean bits/dim of `x` and accumulates its gradient into the parameters; returns the per-image
/// bits/dim (detached).
pub fn backward(glow: &Glow, x: &Tensor, checkpoint_grads: bool) -> Tensor {
    if !checkpoint_grads {
        let bpd = bits_per_dim(glow, x);
        bpd.mean(Kind::Float).backward();
        return bpd.detach();
    }
    let n = x.size()[0] as f64;
    let d = glow.config.dims() as f64;
    // d(mean bpd)/d(log p) for every image.
    let norm = 1.0 / (n * d * std::f64::consts::LN_2);

    // Forward without a graph, keeping each step's input and each level's output.
    let mut step_inputs: Vec<Vec<Tensor>> = Vec::new();
    let mut level_outputs: Vec<Tensor> = Vec::new();
    let mut log_p = Tensor::zeros([x.size()[0]], (Kind::Float, x.device()));
    tch::no_grad(|| {
        let mut h = x.shallow_clone();
        for level in &glow.levels {
            h = squeeze(&h);
            let mut inputs = Vec::with_capacity(level.steps.len());
            for step in &level.steps {
                inputs.push(h.shallow_clone());
                let (y, ld) = step.forward(&h, false);
                log_p += ld;
                h = y;
            }
            step_inputs.push(inputs);
            level_outputs.push(h.shallow_clone());
            if level.last {
                let out = level.prior.forward(&h.zeros_like());
                let parts = out.chunk(2, 1);
                log_p += gaussian_log_p(&h, &parts[0], &parts[1]);
            } else {
                let parts = h.chunk(2, 1);
                let prior = level.prior.forward(&parts[0]).chunk(2, 1);
                log_p += gaussian_log_p(&parts[1], &prior[0], &prior[1]);
                h = parts[0].shallow_clone();
            }
        }
    });

    // Backward level by level, step by step, recomputing each piece with a graph just long enough to differentiate.
    let mut grad_next_input: Option<Tensor> = None;
    for (i, level) in glow.levels.iter().enumerate().rev() {
        let h = level_outputs[i].detach().set_requires_grad(true);
        let objective = if level.last {
            let out = level.prior.forward(&h.detach().zeros_like());
            let parts = out.chunk(2, 1);
            gaussian_log_p(&h, &parts[0], &parts[1]).sum(Kind::Float) * -norm
        } else {
            let parts = h.chunk(2, 1);
            let prior = level.prior.forward(&parts[0]).chunk(2, 1);
            let lp = gaussian_log_p(&parts[1], &prior[0], &prior[1]).sum(Kind::Float) * -norm;
            let upstream = grad_next_input.take().expect("a deeper level ran first");
            lp + (&parts[0] * upstream).sum(Kind::Float)
        };
        objective.backward();
        let mut grad = h.grad().detach();
        for (step, input) in level.steps.iter().zip(&step_inputs[i]).rev() {
            let input = input.detach().set_requires_grad(true);
            let (y, ld) = step.forward(&input, false);
            let objective = (&y * &grad).sum(Kind::Float) - ld.sum(Kind::Float) * norm;
            objective.backward();
            grad = input.grad().detach();
        }
        grad_next_input = Some(unsqueeze(&grad));
    }
    (log_p * -1.0 + d * glow.config.n_bins().ln()) / (d * std::f64::consts::LN_2)
}
