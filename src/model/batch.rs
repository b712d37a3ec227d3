//! Plain pixel planes ↔ tensors: the only place images cross into tch.
use crate::codec::image::Pixels;
use tch::{Device, Kind, Tensor};

/// Stacks images of one size into a `(N, C, S, S)` u8 tensor.
pub fn pixels_to_tensor(images: &[Pixels]) -> Tensor {
    let first = images.first().expect("at least one image");
    let (c, s) = (first.channels as i64, first.size as i64);
    let data: Vec<u8> = images.iter().flat_map(|p| p.data.iter().copied()).collect();
    Tensor::from_slice(&data).view([images.len() as i64, c, s, s])
}

/// Splits a `(N, C, S, S)` u8 tensor into images.
pub fn tensor_to_pixels(t: &Tensor) -> Vec<Pixels> {
    let t = t.to_device(Device::Cpu).to_kind(Kind::Uint8).contiguous();
    let (n, c, s, _) = t.size4().expect("4-d pixels");
    let all = Vec::<u8>::try_from(t.view([-1])).expect("u8 tensor");
    let per = (c * s * s) as usize;
    (0..n as usize)
        .map(|i| Pixels { channels: c as u8, size: s as u32, data: all[i * per..(i + 1) * per].to_vec() })
        .collect()
}
