//! 2D U-Net after the paper §2.6.3 (Fig. 5): per level two 3×3 convolutions, each followed by
//! instance normalisation and LeakyReLU; max-pooling down, transposed convolution up, skip
//! connections by concatenation; deep-supervision heads in the decoder.
//!
//! Parameter names are block-structured and stable: `enc.{i}.conv1.weight`,
//! `dec.{i}.up.weight`, `dec.{i}.block.conv1.weight`, `ds.{i}.weight`, `head.weight`.
//! `enc.i` and `dec.i` work at resolution level i (0 = full resolution), so "decoder blocks
//! 0..k" are the k+1 blocks closest to the output.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig, ConvTranspose2d, ConvTranspose2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{InstanceNorm, InstanceNormConfig, PaddingConfig2d};
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::norm::instance_norm;

/// The architecture: everything needed to rebuild the same network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UNetConfig {
    /// Resolution levels, bottleneck included.
    pub levels: usize,
    /// Feature maps at level 0; doubled per level up to `max_channels`.
    pub base_channels: usize,
    pub max_channels: usize,
    #[serde(default = "one")]
    pub in_channels: usize,
    #[serde(default = "three")]
    pub classes: usize,
    /// Deep-supervision heads below the output head (decoder levels 1..=n).
    #[serde(default = "two")]
    pub deep_supervision: usize,
}

fn one() -> usize {
    1
}
fn two() -> usize {
    2
}
fn three() -> usize {
    3
}

impl UNetConfig {
    /// Paper size: 6 levels growing to 1024 feature maps (for 256×256 inputs on a GPU).
    pub fn paper() -> Self {
        Self {
            levels: 6,
            base_channels: 32,
            max_channels: 1024,
            in_channels: 1,
            classes: 3,
            deep_supervision: 3,
        }
    }

    /// CPU size: 16 feature maps doubling to a 256-map bottleneck (4 poolings, 128×128
    /// inputs) — the network measured in shared/notes/burn-backends.md.
    pub fn cpu() -> Self {
        Self {
            levels: 5,
            base_channels: 16,
            max_channels: 256,
            in_channels: 1,
            classes: 3,
            deep_supervision: 2,
        }
    }

    /// Test size: 3 levels from 8 feature maps (64×64 inputs), trains in seconds.
    pub fn tiny() -> Self {
        Self {
            levels: 3,
            base_channels: 8,
            max_channels: 32,
            in_channels: 1,
            classes: 3,
            deep_supervision: 1,
        }
    }

    pub fn by_name(name: &str) -> Option<Self> {
        match name {
            "paper" => Some(Self::paper()),
            "cpu" => Some(Self::cpu()),
            "tiny" => Some(Self::tiny()),
            _ => None,
        }
    }

    pub fn channels(&self, level: usize) -> usize {
        (self.base_channels << level.min(20)).min(self.max_channels)
    }

    /// Checks the architecture against an input size before anything is built.
    pub fn validate(&self, input_size: usize) -> Result<(), String> {
        if self.levels < 2 {
            return Err(format!(
                "levels = {}: a U-Net needs at least 2",
                self.levels
            ));
        }
        if self.base_channels == 0 || self.max_channels < self.base_channels {
            return Err(format!(
                "channels: base {} and max {} must satisfy 0 < base ≤ max",
                self.base_channels, self.max_channels
            ));
        }
        if self.in_channels == 0 || self.classes < 2 {
            return Err("in_channels must be ≥ 1 and classes ≥ 2".into());
        }
        if self.deep_supervision > self.levels - 2 {
            return Err(format!(
                "deep_supervision = {} but only {} decoder levels below the output exist",
                self.deep_supervision,
                self.levels - 2
            ));
        }
        let factor = 1usize << (self.levels - 1);
        if input_size < factor || !input_size.is_multiple_of(factor) {
            return Err(format!(
                "input {input_size}×{input_size} px with {} levels: the bottleneck would be {:.2} px; \
                 the size must be a multiple of {factor}",
                self.levels,
                input_size as f64 / factor as f64
            ));
        }
        Ok(())
    }

    pub fn init(&self, device: &Device) -> UNet {
        let enc = (0..self.levels)
            .map(|i| {
                let cin = if i == 0 {
                    self.in_channels
                } else {
                    self.channels(i - 1)
                };
                ConvBlock::new(cin, self.channels(i), device)
            })
            .collect();
        let dec = (0..self.levels - 1)
            .map(|i| DecoderBlock {
                up: ConvTranspose2dConfig::new([self.channels(i + 1), self.channels(i)], [2, 2])
                    .with_stride([2, 2])
                    .init(device),
                block: ConvBlock::new(2 * self.channels(i), self.channels(i), device),
            })
            .collect();
        let head_conv = |c: usize| Conv2dConfig::new([c, self.classes], [1, 1]).init(device);
        UNet {
            enc,
            dec,
            ds: (1..=self.deep_supervision)
                .map(|i| head_conv(self.channels(i)))
                .collect(),
            head: head_conv(self.channels(0)),
            pool: MaxPool2dConfig::new([2, 2]).init(),
        }
    }
}

/// conv3×3 → instance norm → LeakyReLU, twice.
#[derive(Module, Debug)]
pub struct ConvBlock {
    pub conv1: Conv2d,
    pub norm1: InstanceNorm,
    pub conv2: Conv2d,
    pub norm2: InstanceNorm,
}

impl ConvBlock {
    fn new(cin: usize, cout: usize, device: &Device) -> Self {
        let conv = |a, b| {
            Conv2dConfig::new([a, b], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(device)
        };
        Self {
            conv1: conv(cin, cout),
            norm1: InstanceNormConfig::new(cout).init(device),
            conv2: conv(cout, cout),
            norm2: InstanceNormConfig::new(cout).init(device),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let x = leaky_relu(instance_norm(&self.norm1, self.conv1.forward(x)));
        leaky_relu(instance_norm(&self.norm2, self.conv2.forward(x)))
    }
}

/// LeakyReLU with nnU-Net's slope of 0.01 (the paper follows nnU-Net's changes): one pass
/// forward, one op recorded for autodiff (vendor/burn-autodiff).
fn leaky_relu(x: Tensor<4>) -> Tensor<4> {
    burn::tensor::activation::leaky_relu(x, 0.01)
}

#[derive(Module, Debug)]
pub struct DecoderBlock {
    pub up: ConvTranspose2d,
    pub block: ConvBlock,
}

#[derive(Module, Debug)]
pub struct UNet {
    pub enc: Vec<ConvBlock>,
    pub dec: Vec<DecoderBlock>,
    pub ds: Vec<Conv2d>,
    pub head: Conv2d,
    pool: MaxPool2d,
}

impl UNet {
    /// Logits: the output head first (full resolution), then each deep-supervision head
    /// (½, ¼, … resolution).
    pub fn forward(&self, x: Tensor<4>) -> Vec<Tensor<4>> {
        let mut skips = Vec::with_capacity(self.enc.len());
        let mut x = x;
        for (i, block) in self.enc.iter().enumerate() {
            if i > 0 {
                x = self.pool.forward(x);
            }
            x = block.forward(x);
            skips.push(x.clone());
        }
        let mut x = skips.pop().unwrap_or(x);
        let mut ds_out = Vec::new();
        for i in (0..self.dec.len()).rev() {
            let d = &self.dec[i];
            let up = d.up.forward(x);
            let skip = skips.pop().unwrap_or_else(|| up.clone());
            x = d.block.forward(Tensor::cat(vec![up, skip], 1));
            if i >= 1 && i <= self.ds.len() {
                ds_out.push((i, self.ds[i - 1].forward(x.clone())));
            }
        }
        let mut out = vec![self.head.forward(x)];
        ds_out.sort_by_key(|(i, _)| *i);
        out.extend(ds_out.into_iter().map(|(_, t)| t));
        out
    }

    /// Logits of the output head only (inference).
    pub fn predict(&self, x: Tensor<4>) -> Tensor<4> {
        self.forward(x).swap_remove(0)
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Tensor, TensorData};

    use super::leaky_relu;
    use crate::train::{DeviceKind, device_for};

    /// The fused LeakyReLU (vendor/burn-autodiff, burn-flex): output and input gradient as
    /// PyTorch defines them (slope where x ≤ 0), on a small tensor and on one large enough to
    /// be split across threads.
    #[test]
    fn leaky_relu_and_its_gradient() {
        let device = device_for(DeviceKind::Cpu).unwrap().autodiff();
        for n in [7, 3 * 65_536 + 5] {
            let xs: Vec<f32> = (0..n).map(|i| ((i * 37) % 11) as f32 - 5.0).collect();
            let ups: Vec<f32> = (0..n).map(|i| ((i * 13) % 7) as f32 - 2.5).collect();
            let x: Tensor<4> =
                Tensor::from_data(TensorData::new(xs.clone(), [1, 1, 1, n]), &device)
                    .require_grad();
            let up: Tensor<4> =
                Tensor::from_data(TensorData::new(ups.clone(), [1, 1, 1, n]), &device);
            let y = leaky_relu(x.clone());
            let grads = (y.clone() * up).sum().backward();
            let y = y.into_data().try_into_vec::<f32>().expect("f32 output");
            let dx = x
                .grad(&grads)
                .expect("input gradient")
                .into_data()
                .try_into_vec::<f32>()
                .expect("f32 gradient");
            for i in 0..n {
                let (x, u) = (xs[i], ups[i]);
                let (want_y, want_dx) = if x > 0.0 {
                    (x, u)
                } else {
                    (0.01 * x, 0.01 * u)
                };
                assert_eq!(y[i], want_y, "output[{i}] of {x}");
                assert_eq!(dx[i], want_dx, "gradient[{i}] at {x}");
            }
        }
    }
}
