//! Instance normalisation as one fused operation.
//!
//! `burn::nn::InstanceNorm` computes it from about ten tensor operations (a group norm), each
//! a pass over the activations that autodiff records and replays. The same function is a batch
//! norm of the `[1, N·C, H, W]` view with the affine parameters repeated per image, which burn
//! differentiates as one operation and the CPU backend computes per channel in one task each
//! way (vendor/burn-flex `batch_norm.rs`). The module itself (and so its parameter names) stays
//! `InstanceNorm`.

use burn::module::Param;
use burn::nn::InstanceNorm;
use burn::tensor::Tensor;
use burn::tensor::module::batch_norm_train;

/// `norm.forward(x)` for `x` of shape `[N, C, H, W]`: per image and channel, biased variance,
/// ε inside the square root, then `γ·x̂ + β`.
pub fn instance_norm(norm: &InstanceNorm, x: Tensor<4>) -> Tensor<4> {
    let [n, c, h, w] = x.dims();
    let device = x.device();
    let per_image = |p: Option<&Param<Tensor<1>>>, fill: f32| match p.filter(|_| norm.affine) {
        Some(p) => p
            .val()
            .unsqueeze_dim::<2>(0)
            .repeat_dim(0, n)
            .reshape([n * c]),
        None => Tensor::full([n * c], fill, &device),
    };
    let gamma = per_image(norm.gamma.as_ref(), 1.0);
    let beta = per_image(norm.beta.as_ref(), 0.0);
    batch_norm_train(x.reshape([1, n * c, h, w]), gamma, beta, norm.epsilon)
        .output
        .reshape([n, c, h, w])
}

#[cfg(test)]
mod tests {
    use burn::module::Param;
    use burn::nn::InstanceNormConfig;
    use burn::tensor::{Distribution, Tensor};

    use super::instance_norm;
    use crate::train::{DeviceKind, device_for};

    fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .expect("f32 data")
    }

    fn assert_close<const D: usize>(what: &str, a: Tensor<D>, b: Tensor<D>, tol: f32) {
        let (a, b) = (values(a), values(b));
        assert_eq!(a.len(), b.len(), "{what}: length");
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert!((x - y).abs() <= tol, "{what}[{i}]: {x} vs {y}");
        }
    }

    /// Output and the gradients of input, γ and β match burn's `InstanceNorm`.
    #[test]
    fn matches_burns_instance_norm_and_its_gradients() {
        let device = device_for(DeviceKind::Cpu).unwrap().autodiff();
        let mut norm = InstanceNormConfig::new(5).init(&device);
        // γ and β away from 1 and 0, so a mix-up between channels or images shows.
        norm.gamma = Some(Param::from_tensor(Tensor::random(
            [5],
            Distribution::Uniform(0.5, 1.5),
            &device,
        )));
        norm.beta = Some(Param::from_tensor(Tensor::random(
            [5],
            Distribution::Uniform(-1.0, 1.0),
            &device,
        )));
        let x: Tensor<4> =
            Tensor::random([3, 5, 7, 9], Distribution::Normal(2.0, 3.0), &device).require_grad();
        let up: Tensor<4> = Tensor::random([3, 5, 7, 9], Distribution::Normal(0.0, 1.0), &device);

        let ours = instance_norm(&norm, x.clone());
        let theirs = norm.forward(x.clone());
        assert_close("output", ours.clone(), theirs.clone(), 1e-5);

        let g_ours = (ours * up.clone()).sum().backward();
        let g_theirs = (theirs * up).sum().backward();
        let dx = |g| x.grad(g).expect("x gradient");
        assert_close("dx", dx(&g_ours), dx(&g_theirs), 1e-4);
        for (what, p) in [("dγ", &norm.gamma), ("dβ", &norm.beta)] {
            let p = p.as_ref().expect("affine").val();
            let grad = |g| p.grad(g).expect("parameter gradient");
            assert_close(what, grad(&g_ours), grad(&g_theirs), 1e-3);
        }
    }
}
