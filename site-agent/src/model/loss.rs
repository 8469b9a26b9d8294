//! Paper §2.6.4: cross-entropy + soft Dice over the foreground classes (blood pool,
//! myocardium), summed over the output and deep-supervision heads with halving weights.

use burn::tensor::Tensor;
use burn::tensor::activation::{log_softmax, softmax};

const DICE_SMOOTH: f32 = 1e-5;

/// Weights of the output head and each deep-supervision head: 1, ½, ¼, … normalised to 1.
pub fn head_weights(heads: usize) -> Vec<f32> {
    let raw: Vec<f32> = (0..heads).map(|i| 0.5f32.powi(i as i32)).collect();
    let sum: f32 = raw.iter().sum();
    raw.into_iter().map(|w| w / sum).collect()
}

/// CE + (1 − mean soft Dice over classes 1..C) for one head. `target` is one-hot
/// `[B, C, H, W]`. Dice is computed over the whole batch (as nnU-Net does), which keeps
/// slices without foreground from dominating.
pub fn head_loss(logits: Tensor<4>, target: Tensor<4>) -> Tensor<1> {
    let [b, c, h, w] = logits.dims();
    let ce = (log_softmax(logits.clone(), 1) * target.clone())
        .sum()
        .mul_scalar(-1.0 / (b * h * w) as f32);
    let p = softmax(logits, 1);
    let inter = (p.clone() * target.clone())
        .sum_dim(0)
        .sum_dim(2)
        .sum_dim(3);
    let denom = p.sum_dim(0).sum_dim(2).sum_dim(3) + target.sum_dim(0).sum_dim(2).sum_dim(3);
    let dice = (inter.mul_scalar(2.0).add_scalar(DICE_SMOOTH)) / denom.add_scalar(DICE_SMOOTH);
    let fg = dice.slice([0..1, 1..c, 0..1, 0..1]).mean();
    ce + fg.neg().add_scalar(1.0)
}

/// The deep-supervision loss: weighted sum over heads (outputs and targets in the same order).
pub fn deep_supervision_loss(outputs: Vec<Tensor<4>>, targets: Vec<Tensor<4>>) -> Tensor<1> {
    let weights = head_weights(outputs.len());
    let mut total: Option<Tensor<1>> = None;
    for ((o, t), w) in outputs.into_iter().zip(targets).zip(weights) {
        let l = head_loss(o, t).mul_scalar(w);
        total = Some(match total {
            Some(acc) => acc + l,
            None => l,
        });
    }
    total.expect("the U-Net has at least one output head")
}
