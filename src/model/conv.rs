//! How the layers run their convolutions: the memory layout of activations and the exact (deterministic, no
//! TF32) convolution call every layer goes through.
/// Memory layout of activations and weights in the inference form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// PyTorch's default NCHW.
    Contiguous,
    /// NHWC strides (PyTorch's `channels_last`): oneDNN's convolutions run without reordering on every call, which
    /// is several times faster on CPU for Glow's wide 1x1 and thin 3x3 convolutions.
    ChannelsLast,
}

impl Layout {
    /// Channels-last on the CPU (1.5x there), NCHW on CUDA, where cuDNN ran glow-64 13% faster in NCHW on an
    /// H200 (README, GPU table). `GLOWD_LAYOUT=nchw|channels-last` overrides both.
    pub fn default_for(device: tch::Device) -> Layout {
        match std::env::var("GLOWD_LAYOUT").as_deref() {
            Ok("nchw") => Layout::Contiguous,
            Ok("channels-last") => Layout::ChannelsLast,
            _ if device.is_cuda() => Layout::Contiguous,
            _ => Layout::ChannelsLast,
        }
    }

    /// The same values in this layout (a no-op when already so).
    pub fn apply(self, t: &tch::Tensor) -> tch::Tensor {
        match self {
            Layout::Contiguous => t.contiguous(),
            Layout::ChannelsLast if t.dim() == 4 => t.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2]),
            Layout::ChannelsLast => t.shallow_clone(),
        }
    }
}

/// Every convolution of the model goes through `conv`, so that on CUDA cuDNN computes in full float32 and picks
/// deterministic algorithms. libtorch lets cuDNN use TF32 by default, which rounds inputs to 10 mantissa bits: W
/// and W⁻¹ would then no longer cancel, and decode(encode(x)) would drift from x by whole pixel levels over a
/// deep flow; and a redelivered job must rewrite the same bytes, which autotuned (benchmark) algorithms do not
/// promise. On the CPU these flags are ignored and this is exactly the call `conv2d` makes.
pub(crate) trait ExactConv {
    fn conv(&self, weight: &tch::Tensor, bias: Option<&tch::Tensor>, padding: i64) -> tch::Tensor;
}

impl ExactConv for tch::Tensor {
    fn conv(&self, weight: &tch::Tensor, bias: Option<&tch::Tensor>, padding: i64) -> tch::Tensor {
        let (benchmark, deterministic, cudnn_enabled, allow_tf32) = (false, true, true, false);
        self.internal_convolution(
            weight,
            bias,
            [1, 1],
            [padding, padding],
            [1, 1],
            false,
            [0, 0],
            1,
            benchmark,
            deterministic,
            cudnn_enabled,
            allow_tf32,
        )
    }
}
