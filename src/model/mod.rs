//! The Glow model (Kingma & Dhariwal 2018) on tch: layers, the multi-scale flow, configs and weight files.
//! Names no tokio, Kafka or S3 type: the daemon talks to it through plain data.
pub mod actnorm;
pub mod batch;
pub mod config;
pub mod conv;
pub mod coupling;
pub mod device;
pub mod directions;
pub mod error;
pub mod flow_step;
pub mod glow;
pub mod import;
pub mod invconv;
pub mod latents_file;
pub mod precision;
pub mod weights;
pub mod zero_conv;

pub use config::{CouplingKind, GlowConfig, PixelConvention, ZeroConvPadding};
pub use conv::Layout;
pub use crate::disposition::Disposition;
pub use error::ModelError;
pub use glow::{Glow, Latents};
pub use precision::Precision;
