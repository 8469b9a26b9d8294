//! Figures as PNG without a plotting stack: an RGB canvas with a built-in 5×7 font, and the
//! two chart shapes fedseg draws (bars with error bars, lines with error bars). Used by the
//! site agent's domain-shift montage and the coordinator's reports; depends only on `png`.

pub mod canvas;
pub mod chart;
pub mod font;

pub use canvas::{Canvas, Rgb};
