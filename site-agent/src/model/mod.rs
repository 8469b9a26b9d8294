//! The segmentation model: the U-Net in burn, its loss, its parameters by name, which of them
//! train, and safetensors files.

pub mod loss;
pub mod norm;
pub mod params;
/// safetensors files live in the wire-protocol crate: the coordinator reads them too.
pub use fedseg_proto::safetensors;
pub mod trainable;
pub mod unet;

pub use params::{NamedTensor, ParamsError};
pub use trainable::TrainableSet;
pub use unet::{UNet, UNetConfig};
