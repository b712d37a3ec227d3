//! The tensor kinds of a [`Precision`] (defined in `crate::precision`, below every room).
pub use crate::precision::Precision;
use tch::Kind;

/// The tensor kind the coupling networks compute in.
pub fn network_kind(precision: Precision) -> Kind {
    match precision {
        Precision::Fp32 => Kind::Float,
        Precision::Bf16 => Kind::BFloat16,
    }
}
