//! The model as named f32 tensors: collect them, load them back (checking names and shapes),
//! and choose which are trainable. Names follow the module tree (`enc.0.conv1.weight`), with
//! instance-norm `gamma`/`beta` called `weight`/`bias` as in PyTorch.

use std::collections::BTreeMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::tensor::{Tensor, TensorData};

use super::trainable::TrainableSet;
use super::unet::UNet;
use crate::data::split::fnv1a;

pub use fedseg_proto::safetensors::NamedTensor;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ParamsError {
    #[error("weights do not fit this model: {}", .0.join("; "))]
    Mismatch(Vec<String>),
}

fn public_name(path: &[String]) -> String {
    let mut parts: Vec<&str> = path.iter().map(String::as_str).collect();
    if let Some(last) = parts.last_mut() {
        *last = match *last {
            "gamma" => "weight",
            "beta" => "bias",
            other => other,
        };
    }
    parts.join(".")
}

#[derive(Default)]
struct PathTracker {
    path: Vec<String>,
}

impl PathTracker {
    fn enter(&mut self, name: &str) {
        self.path.push(name.to_string());
    }
    fn exit(&mut self) {
        self.path.pop();
    }
}

struct Collector {
    at: PathTracker,
    out: Vec<NamedTensor>,
    with_data: bool,
}

impl ModuleVisitor for Collector {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.at.enter(name);
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.at.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let tensor = param.val();
        let shape = tensor.shape().to_vec();
        let data = if self.with_data {
            tensor
                .into_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        self.out.push(NamedTensor {
            name: public_name(&self.at.path),
            shape,
            data,
        });
    }
}

/// Every parameter with its values, in module order.
pub fn named_tensors(model: &UNet) -> Vec<NamedTensor> {
    let mut c = Collector {
        at: PathTracker::default(),
        out: Vec::new(),
        with_data: true,
    };
    model.visit(&mut c);
    c.out
}

/// Every parameter's name and shape (no data copied).
pub fn param_shapes(model: &UNet) -> Vec<(String, Vec<usize>)> {
    let mut c = Collector {
        at: PathTracker::default(),
        out: Vec::new(),
        with_data: false,
    };
    model.visit(&mut c);
    c.out.into_iter().map(|t| (t.name, t.shape)).collect()
}

pub fn param_count(model: &UNet) -> usize {
    param_shapes(model)
        .iter()
        .map(|(_, s)| s.iter().product::<usize>())
        .sum()
}

struct Loader<'a> {
    at: PathTracker,
    tensors: &'a BTreeMap<String, NamedTensor>,
}

impl ModuleMapper for Loader<'_> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.at.enter(name);
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.at.exit();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let name = public_name(&self.at.path);
        // Names and shapes were checked before mapping; a missing entry keeps the old value.
        let Some(t) = self.tensors.get(&name) else {
            return param;
        };
        param.map(|old| {
            let require_grad = old.is_require_grad();
            let device = old.device();
            let new =
                Tensor::<D>::from_data(TensorData::new(t.data.clone(), t.shape.clone()), &device);
            if require_grad {
                new.require_grad()
            } else {
                new
            }
        })
    }
}

/// Loads named tensors into the model. Missing, extra and wrong-shaped tensors are all
/// reported, each by name, and the model is left untouched.
pub fn load_named(model: UNet, tensors: &[NamedTensor]) -> Result<UNet, ParamsError> {
    let by_name: BTreeMap<String, NamedTensor> = tensors
        .iter()
        .map(|t| (t.name.clone(), t.clone()))
        .collect();
    let expected = param_shapes(&model);
    let mut problems = Vec::new();
    for (name, shape) in &expected {
        match by_name.get(name) {
            None => problems.push(format!("missing tensor {name} {shape:?}")),
            Some(t) if &t.shape != shape => problems.push(format!(
                "tensor {name} has shape {:?}, the model expects {shape:?}",
                t.shape
            )),
            Some(t) if t.data.len() != shape.iter().product::<usize>() => problems.push(format!(
                "tensor {name}: {} values for shape {shape:?}",
                t.data.len()
            )),
            Some(_) => {}
        }
    }
    for name in by_name.keys() {
        if !expected.iter().any(|(n, _)| n == name) {
            problems.push(format!("unexpected tensor {name}"));
        }
    }
    if !problems.is_empty() {
        return Err(ParamsError::Mismatch(problems));
    }
    let mut loader = Loader {
        at: PathTracker::default(),
        tensors: &by_name,
    };
    Ok(model.map(&mut loader))
}

struct Freezer<'a> {
    at: PathTracker,
    set: &'a TrainableSet,
}

impl ModuleMapper for Freezer<'_> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.at.enter(name);
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.at.exit();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let trainable = self.set.contains(&public_name(&self.at.path));
        param.set_require_grad(trainable)
    }
}

/// Marks parameters outside the set as frozen: they get no gradient, so the optimiser keeps no
/// state for them and never changes them.
pub fn apply_trainable(model: UNet, set: &TrainableSet) -> UNet {
    let mut f = Freezer {
        at: PathTracker::default(),
        set,
    };
    model.map(&mut f)
}

struct StableIds {
    at: PathTracker,
}

impl ModuleMapper for StableIds {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.at.enter(name);
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.at.exit();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (_, value, mapper) = param.consume();
        // Same id in every process: saved optimiser state finds its parameter after a restart.
        let id = ParamId::from(fnv1a(public_name(&self.at.path).as_bytes()));
        Param::from_mapped_value(id, value, mapper)
    }
}

/// Gives every parameter an id derived from its name.
pub fn with_stable_ids(model: UNet) -> UNet {
    model.map(&mut StableIds {
        at: PathTracker::default(),
    })
}

/// Splits tensors into those that may leave the site and those the site keeps to itself
/// (FedBN-style local parameters, e.g. the `norm` set).
pub fn partition_local(
    tensors: Vec<NamedTensor>,
    local: &TrainableSet,
) -> (Vec<NamedTensor>, Vec<NamedTensor>) {
    tensors.into_iter().partition(|t| !local.contains(&t.name))
}

/// A full set of tensors from shared ones (e.g. a federated aggregate) and the site's own local
/// ones; a local tensor replaces a shared one of the same name.
pub fn merge_local(shared: Vec<NamedTensor>, local: &[NamedTensor]) -> Vec<NamedTensor> {
    let mut out: Vec<NamedTensor> = shared
        .into_iter()
        .filter(|t| !local.iter().any(|l| l.name == t.name))
        .collect();
    out.extend(local.iter().cloned());
    out
}

struct Proximal<'a> {
    at: PathTracker,
    anchor: &'a BTreeMap<String, NamedTensor>,
    sum: Option<Tensor<1>>,
}

impl ModuleVisitor for Proximal<'_> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.at.enter(name);
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.at.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let Some(anchor) = self.anchor.get(&public_name(&self.at.path)) else {
            return;
        };
        let value = param.val();
        if !value.is_require_grad() {
            return;
        }
        let device = value.device();
        let anchor = Tensor::<D>::from_data(
            TensorData::new(anchor.data.clone(), anchor.shape.clone()),
            &device,
        );
        let d = (value - anchor).powi_scalar(2).sum();
        self.sum = Some(match self.sum.take() {
            Some(s) => s + d,
            None => d,
        });
    }
}

/// FedProx's proximal term ‖w − w_global‖² over the trainable parameters that `anchor`
/// names, as a differentiable scalar; `None` when nothing matches.
pub fn proximal_term(model: &UNet, anchor: &BTreeMap<String, NamedTensor>) -> Option<Tensor<1>> {
    let mut p = Proximal {
        at: PathTracker::default(),
        anchor,
        sum: None,
    };
    model.visit(&mut p);
    p.sum
}
