//! fedseg's site agent: everything that touches a hospital's images stays in this crate.

pub mod augment;
pub mod data;
pub mod eval;
pub mod federation;
pub mod histogram;
pub mod inspect;
pub mod model;
pub mod montage;
pub mod nifti_io;
pub mod preprocess;
pub mod synth;
pub mod train;
