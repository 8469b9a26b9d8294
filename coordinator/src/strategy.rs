//! Aggregation strategies behind one small trait, after Flower's `Strategy`: `configure`
//! says what sites receive with a training task, `aggregate` combines the accepted updates
//! into the next global model. Built-ins: FedAvg (weighted by training-sample count),
//! FedProx (FedAvg plus a proximal weight sent to sites), FedAdam and FedYogi (a server-side
//! optimiser over the averaged update, Reddi et al. 2021). All stream tensor by tensor.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fedseg_proto::pb::TrainSpec;
use fedseg_proto::safetensors::{SafetensorsHeader, read_header_of};

use crate::held::HeldBytes;
use crate::plan::{Stage, StrategyKind};
use crate::tensors::{STREAM_ELEMENTS, StreamWriter, WrittenFile};

/// One update to aggregate.
pub struct UpdateInput {
    pub site: String,
    pub path: PathBuf,
    pub weight: f64,
    /// The file already open, for an update read before it is stored under `path`'s name
    /// (an early aggregation); None opens `path`.
    pub open: Option<Arc<File>>,
    /// The same bytes in memory (held.rs), read instead of the file when present.
    pub held: Option<Arc<HeldBytes>>,
}

pub struct AggregateContext<'a> {
    /// Sorted by site, so summation order (and the result, bit for bit) never depends on
    /// arrival order.
    pub updates: &'a [UpdateInput],
    /// The global model the round started from, if any.
    pub previous: Option<&'a Path>,
    /// Server optimiser moments from the previous round (first, second), if any.
    pub moments: Option<(&'a Path, &'a Path)>,
    /// Where to write new files.
    pub out_dir: &'a Path,
    pub metadata: BTreeMap<String, String>,
}

/// An aggregation with everything it needs owned, to run now or on another thread.
pub struct Aggregation {
    pub strategy: Box<dyn Strategy>,
    pub updates: Vec<UpdateInput>,
    pub previous: Option<PathBuf>,
    pub moments: Option<(PathBuf, PathBuf)>,
    pub out_dir: PathBuf,
    pub metadata: BTreeMap<String, String>,
}

impl Aggregation {
    pub fn run(&self) -> Result<AggregateOutcome, String> {
        self.strategy.aggregate(&AggregateContext {
            updates: &self.updates,
            previous: self.previous.as_deref(),
            moments: self
                .moments
                .as_ref()
                .map(|(m, v)| (m.as_path(), v.as_path())),
            out_dir: &self.out_dir,
            metadata: self.metadata.clone(),
        })
    }
}

/// Files written by `aggregate`: the model, and the optimiser moments for FedOpt.
pub struct AggregateOutcome {
    pub model: WrittenFile,
    /// First and second moments.
    pub moments: Option<(WrittenFile, WrittenFile)>,
}

pub trait Strategy: Send + Sync {
    fn name(&self) -> &'static str;
    fn configure(&self, _spec: &mut TrainSpec) {}
    fn aggregate(&self, ctx: &AggregateContext<'_>) -> Result<AggregateOutcome, String>;
}

pub fn for_stage(stage: &Stage) -> Box<dyn Strategy> {
    match stage.strategy {
        StrategyKind::Fedavg => Box::new(FedAvg),
        StrategyKind::Fedprox => Box::new(FedProx { mu: stage.mu }),
        StrategyKind::Fedadam | StrategyKind::Fedyogi => Box::new(FedOpt {
            yogi: stage.strategy == StrategyKind::Fedyogi,
            lr: stage.server_lr,
            beta1: stage.beta1,
            beta2: stage.beta2,
            tau: stage.tau,
        }),
    }
}

pub struct FedAvg;
pub struct FedProx {
    pub mu: f64,
}
pub struct FedOpt {
    pub yogi: bool,
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub tau: f64,
}

impl Strategy for FedAvg {
    fn name(&self) -> &'static str {
        "fedavg"
    }
    fn aggregate(&self, ctx: &AggregateContext<'_>) -> Result<AggregateOutcome, String> {
        stream_mean(ctx, None)
    }
}

impl Strategy for FedProx {
    fn name(&self) -> &'static str {
        "fedprox"
    }
    fn configure(&self, spec: &mut TrainSpec) {
        spec.prox_mu = self.mu;
    }
    fn aggregate(&self, ctx: &AggregateContext<'_>) -> Result<AggregateOutcome, String> {
        stream_mean(ctx, None)
    }
}

impl Strategy for FedOpt {
    fn name(&self) -> &'static str {
        if self.yogi { "fedyogi" } else { "fedadam" }
    }
    fn aggregate(&self, ctx: &AggregateContext<'_>) -> Result<AggregateOutcome, String> {
        stream_mean(ctx, Some(self))
    }
}

/// A model file read in small blocks at known offsets: from memory if its bytes are held
/// there, else from the file.
struct Source {
    file: Arc<File>,
    held: Option<Arc<HeldBytes>>,
    header: SafetensorsHeader,
    path: PathBuf,
}

impl Source {
    fn open(path: &Path) -> Result<Self, String> {
        let file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::of(Arc::new(file), path)
    }

    fn of(file: Arc<File>, path: &Path) -> Result<Self, String> {
        let header = read_header_of(&file, path).map_err(|e| e.to_string())?;
        Ok(Self {
            file,
            held: None,
            header,
            path: path.to_path_buf(),
        })
    }

    fn of_update(u: &UpdateInput) -> Result<Self, String> {
        let mut src = match &u.open {
            Some(file) => Self::of(Arc::clone(file), &u.path),
            None => Self::open(&u.path),
        }?;
        // The header was read from the file: the memory copy must be the same bytes.
        src.held = u
            .held
            .clone()
            .filter(|h| Some(h.size()) == src.file.metadata().ok().map(|m| m.len()));
        Ok(src)
    }

    /// Byte offset of element `start` of tensor `name`.
    fn offset(&self, name: &str, start: usize) -> Result<u64, String> {
        let entry = self
            .header
            .tensors
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| format!("{}: no tensor {name}", self.path.display()))?;
        Ok(self.header.data_start + entry.begin + start as u64 * 4)
    }

    /// Fills `buf` with the file's bytes from `offset` on.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), String> {
        if let Some(held) = &self.held {
            return held
                .read_at(offset, buf)
                .map_err(|e| format!("{} (held in memory): {e}", self.path.display()));
        }
        self.file
            .read_exact_at(buf, offset)
            .map_err(|e| format!("{}: reading at byte {offset}: {e}", self.path.display()))
    }

    fn read(
        &self,
        name: &str,
        start: usize,
        n: usize,
        out: &mut Vec<f32>,
        bytes: &mut Vec<u8>,
    ) -> Result<(), String> {
        bytes.resize(n * 4, 0);
        self.read_at(self.offset(name, start)?, bytes)?;
        out.clear();
        out.extend(bytes.chunks_exact(4).map(le_f32));
        Ok(())
    }
}

/// An f32 from its 4 little-endian bytes, as safetensors stores them.
fn le_f32(c: &[u8]) -> f32 {
    f32::from_le_bytes([c[0], c[1], c[2], c[3]])
}

fn writer(
    path: PathBuf,
    schema: &[(String, Vec<usize>)],
    meta: &BTreeMap<String, String>,
) -> Result<StreamWriter, String> {
    StreamWriter::create(&path, schema, meta).map_err(|e| format!("{}: {e}", path.display()))
}

/// Below this many values a chunk is summed on the calling thread alone.
const PARALLEL_MIN: usize = 1 << 16;

/// Values summed at a time: the f64 partial sums and each source's block stay in the L1/L2
/// caches while every source is added in. (Reading 4 MiB per source and summing into an f64
/// array of 1 M values, larger than the caches, took 0.45-0.5 s for 4 updates of 35 M values.)
const BLOCK: usize = 8192;

/// `out` = the weighted mean of elements `start..start + out.len()` of tensor `name`. The
/// range is split across threads; each element is still summed over the sites in the same
/// order, so the result does not depend on the thread count.
fn weighted_mean(
    sources: &[Source],
    updates: &[UpdateInput],
    total: f64,
    name: &str,
    start: usize,
    out: &mut [f32],
    threads: usize,
) -> Result<(), String> {
    let parts = if out.len() < PARALLEL_MIN {
        1
    } else {
        threads.max(1)
    };
    let per = out.len().div_ceil(parts).max(1);
    let part = |first: usize, out: &mut [f32]| -> Result<(), String> {
        let offsets: Vec<u64> = sources
            .iter()
            .map(|src| src.offset(name, first))
            .collect::<Result<_, String>>()?;
        let mut acc = vec![0.0f64; BLOCK];
        let mut bytes = vec![0u8; BLOCK * 4];
        for (b, out) in out.chunks_mut(BLOCK).enumerate() {
            let acc = &mut acc[..out.len()];
            let bytes = &mut bytes[..out.len() * 4];
            acc.fill(0.0);
            for ((src, offset), u) in sources.iter().zip(&offsets).zip(updates) {
                src.read_at(offset + (b * BLOCK * 4) as u64, bytes)?;
                for (a, c) in acc.iter_mut().zip(bytes.chunks_exact(4)) {
                    *a += u.weight * f64::from(le_f32(c));
                }
            }
            for (o, a) in out.iter_mut().zip(acc.iter()) {
                *o = (a / total) as f32;
            }
        }
        Ok(())
    };
    if parts == 1 {
        return part(start, out);
    }
    std::thread::scope(|scope| {
        let handles: Vec<_> = out
            .chunks_mut(per)
            .enumerate()
            .map(|(i, o)| scope.spawn(move || part(start + i * per, o)))
            .collect();
        handles.into_iter().try_for_each(|h| {
            h.join()
                .unwrap_or_else(|_| Err("aggregation thread panicked".into()))
        })
    })
}

/// The weighted mean of the updates, optionally followed by a server optimiser step from the
/// previous global model; one pass over all files, `STREAM_ELEMENTS` values at a time.
fn stream_mean(
    ctx: &AggregateContext<'_>,
    opt: Option<&FedOpt>,
) -> Result<AggregateOutcome, String> {
    let first = ctx.updates.first().ok_or("no updates to aggregate")?;
    let total: f64 = ctx.updates.iter().map(|u| u.weight).sum();
    if total.is_nan() || total <= 0.0 {
        return Err("updates carry no training samples".into());
    }
    let sources: Vec<Source> = ctx
        .updates
        .iter()
        .map(Source::of_update)
        .collect::<Result<_, _>>()?;
    let schema: Vec<(String, Vec<usize>)> = sources[0]
        .header
        .tensors
        .iter()
        .map(|t| (t.name.clone(), t.shape.clone()))
        .collect();
    static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tag = format!("{}-{run}-{}", std::process::id(), first.site);
    // Keep what the sites recorded about the architecture (fedseg.unet, fedseg.preprocess), so
    // the aggregate loads like any trained file; drop per-site keys (epoch, val_dice, site).
    let mut metadata: BTreeMap<String, String> = sources[0]
        .header
        .metadata
        .iter()
        .filter(|(k, _)| k.starts_with("fedseg."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    metadata.extend(ctx.metadata.clone());
    let mut model = writer(ctx.out_dir.join(format!(".agg-{tag}")), &schema, &metadata)?;
    // FedOpt needs the previous model; without one (a first round from scratch) the mean is
    // the model and the moments start at zero.
    let previous = match (opt, ctx.previous) {
        (Some(_), Some(p)) => Some(Source::open(p)?),
        _ => None,
    };
    let moments_in = match (opt, ctx.moments) {
        (Some(_), Some((m, v))) => Some((Source::open(m)?, Source::open(v)?)),
        _ => None,
    };
    let empty = BTreeMap::new();
    let mut moments_out = match opt {
        Some(_) => Some((
            writer(ctx.out_dir.join(format!(".m-{tag}")), &schema, &empty)?,
            writer(ctx.out_dir.join(format!(".v-{tag}")), &schema, &empty)?,
        )),
        None => None,
    };
    let (mut prev, mut m, mut v, mut bytes) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
    let mut out: Vec<f32> = Vec::with_capacity(STREAM_ELEMENTS);
    for (name, shape) in &schema {
        let len: usize = shape.iter().product();
        let mut start = 0;
        while start < len {
            let n = STREAM_ELEMENTS.min(len - start);
            out.clear();
            out.resize(n, 0.0);
            weighted_mean(&sources, ctx.updates, total, name, start, &mut out, threads)?;
            if let (Some(o), Some((mw, vw))) = (opt, moments_out.as_mut()) {
                if let Some(p) = &previous {
                    p.read(name, start, n, &mut prev, &mut bytes)?;
                } else {
                    prev.clear();
                    prev.extend_from_slice(&out);
                }
                if let Some((ms, vs)) = &moments_in {
                    ms.read(name, start, n, &mut m, &mut bytes)?;
                    vs.read(name, start, n, &mut v, &mut bytes)?;
                } else {
                    m.clear();
                    m.resize(n, 0.0);
                    v.clear();
                    v.resize(n, 0.0);
                }
                for i in 0..n {
                    let delta = f64::from(out[i]) - f64::from(prev[i]);
                    let mi = o.beta1 * f64::from(m[i]) + (1.0 - o.beta1) * delta;
                    let d2 = delta * delta;
                    let vi = if o.yogi {
                        let vp = f64::from(v[i]);
                        vp - (1.0 - o.beta2) * d2 * (vp - d2).signum()
                    } else {
                        o.beta2 * f64::from(v[i]) + (1.0 - o.beta2) * d2
                    };
                    m[i] = mi as f32;
                    v[i] = vi as f32;
                    out[i] = (f64::from(prev[i]) + o.lr * mi / (vi.max(0.0).sqrt() + o.tau)) as f32;
                }
                mw.write_f32s(&m).map_err(|e| e.to_string())?;
                vw.write_f32s(&v).map_err(|e| e.to_string())?;
            }
            model.write_f32s(&out).map_err(|e| e.to_string())?;
            start += n;
        }
    }
    let model = model.finish().map_err(|e| e.to_string())?;
    let moments = match moments_out {
        Some((mw, vw)) => Some((
            mw.finish().map_err(|e| e.to_string())?,
            vw.finish().map_err(|e| e.to_string())?,
        )),
        None => None,
    };
    Ok(AggregateOutcome { model, moments })
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedseg_proto::safetensors::{NamedTensor, read_safetensors, write_safetensors};

    fn file(dir: &Path, name: &str, a: &[f32]) -> PathBuf {
        let p = dir.join(name);
        let t = vec![NamedTensor {
            name: "w".into(),
            shape: vec![a.len()],
            data: a.to_vec(),
        }];
        write_safetensors(&p, &t, &BTreeMap::new()).expect("write");
        p
    }

    fn values(p: &Path) -> Vec<f32> {
        read_safetensors(p).expect("read").tensors[0].data.clone()
    }

    fn ctx<'a>(
        dir: &'a Path,
        updates: &'a [UpdateInput],
        previous: Option<&'a Path>,
        moments: Option<(&'a Path, &'a Path)>,
    ) -> AggregateContext<'a> {
        AggregateContext {
            updates,
            previous,
            moments,
            out_dir: dir,
            metadata: BTreeMap::new(),
        }
    }

    fn input(site: &str, path: PathBuf, weight: f64) -> UpdateInput {
        UpdateInput {
            site: site.into(),
            path,
            weight,
            open: None,
            held: None,
        }
    }

    #[test]
    fn fedavg_weights_by_sample_count() {
        let d = tempfile::tempdir().expect("tempdir");
        let ups = [
            input("a", file(d.path(), "a", &[1.0, 10.0]), 1.0),
            input("b", file(d.path(), "b", &[4.0, 40.0]), 3.0),
        ];
        let out = FedAvg
            .aggregate(&ctx(d.path(), &ups, None, None))
            .expect("aggregate");
        assert_eq!(values(&out.model.path), [3.25, 32.5]);
        assert!(out.moments.is_none());
    }

    #[test]
    fn an_update_is_read_through_its_open_handle_after_its_file_moved() {
        let d = tempfile::tempdir().expect("tempdir");
        let b = file(d.path(), "b", &[4.0, 40.0]);
        let handle = Arc::new(File::open(&b).expect("open"));
        std::fs::rename(&b, d.path().join("elsewhere")).expect("rename");
        let ups = [
            input("a", file(d.path(), "a", &[1.0, 10.0]), 1.0),
            UpdateInput {
                open: Some(handle),
                ..input("b", b, 3.0)
            },
        ];
        let out = FedAvg
            .aggregate(&ctx(d.path(), &ups, None, None))
            .expect("aggregate");
        assert_eq!(values(&out.model.path), [3.25, 32.5]);
    }

    #[test]
    fn an_update_held_in_memory_is_read_from_there_if_it_matches_the_file_size() {
        let d = tempfile::tempdir().expect("tempdir");
        let hold = |values: &[f32]| {
            let bytes = std::fs::read(file(d.path(), "tmp", values)).expect("read");
            let held = crate::held::HeldUpdates::new(1 << 20);
            let mut h = held.reserve(bytes.len() as u64).expect("room");
            h.push(&bytes);
            h.keep("x");
            held.get("x")
        };
        // Same size as b's file, other values: the memory copy is what gets aggregated.
        let ups = [
            input("a", file(d.path(), "a", &[1.0, 10.0]), 1.0),
            UpdateInput {
                held: hold(&[8.0, 80.0]),
                ..input("b", file(d.path(), "b", &[4.0, 40.0]), 3.0)
            },
        ];
        let out = FedAvg
            .aggregate(&ctx(d.path(), &ups, None, None))
            .expect("aggregate");
        assert_eq!(values(&out.model.path), [6.25, 62.5]);
        // A copy that does not match the file's size is not trusted: the file is read.
        let ups = [
            input("a", file(d.path(), "a", &[1.0, 10.0]), 1.0),
            UpdateInput {
                held: hold(&[8.0, 80.0, 800.0]),
                ..input("b", file(d.path(), "b", &[4.0, 40.0]), 3.0)
            },
        ];
        let out = FedAvg
            .aggregate(&ctx(d.path(), &ups, None, None))
            .expect("aggregate");
        assert_eq!(values(&out.model.path), [3.25, 32.5]);
    }

    #[test]
    fn fedadam_and_fedyogi_step_from_the_previous_model() {
        let d = tempfile::tempdir().expect("tempdir");
        let prev = file(d.path(), "prev", &[1.0, 1.0]);
        let ups = [UpdateInput {
            site: "a".into(),
            path: file(d.path(), "a", &[2.0, 0.0]),
            weight: 1.0,
            open: None,
            held: None,
        }];
        let (lr, b1, b2, tau) = (0.1, 0.9, 0.99, 1e-3);
        for yogi in [false, true] {
            let opt = FedOpt {
                yogi,
                lr,
                beta1: b1,
                beta2: b2,
                tau,
            };
            let out = opt
                .aggregate(&ctx(d.path(), &ups, Some(&prev), None))
                .expect("aggregate");
            // Δ = ±1 from zero moments: m = 0.1·Δ, v = 0.01 (Adam) or 0.01·sign(0 − 1)·(−1) (Yogi).
            let m = (1.0 - b1) * 1.0f64;
            let v = (1.0 - b2) * 1.0f64;
            let step = (lr * m / (v.sqrt() + tau)) as f32;
            let got = values(&out.model.path);
            assert!((got[0] - (1.0 + step)).abs() < 1e-6, "{yogi}: {got:?}");
            assert!((got[1] - (1.0 - step)).abs() < 1e-6, "{yogi}: {got:?}");
            let (mf, vf) = out.moments.expect("moments");
            assert_eq!(values(&mf.path), [m as f32, -m as f32]);
            assert_eq!(values(&vf.path), [v as f32, v as f32]);
            // A second round reads the stored moments: Yogi's v moves less than Adam's when
            // v is already large relative to Δ².
            let out2 = opt
                .aggregate(&ctx(
                    d.path(),
                    &ups,
                    Some(&prev),
                    Some((&mf.path, &vf.path)),
                ))
                .expect("second round");
            let v2 = values(&out2.moments.expect("moments").1.path)[0] as f64;
            let expect = if yogi {
                v + (1.0 - b2)
            } else {
                b2 * v + (1.0 - b2)
            };
            assert!((v2 - expect).abs() < 1e-6, "{yogi}: {v2} vs {expect}");
        }
    }

    #[test]
    fn fedprox_sends_mu_and_averages_like_fedavg() {
        let mut spec = TrainSpec::default();
        FedProx { mu: 0.05 }.configure(&mut spec);
        assert_eq!(spec.prox_mu, 0.05);
        let d = tempfile::tempdir().expect("tempdir");
        let ups = [UpdateInput {
            site: "a".into(),
            path: file(d.path(), "a", &[2.0]),
            weight: 5.0,
            open: None,
            held: None,
        }];
        let out = FedProx { mu: 0.05 }
            .aggregate(&ctx(d.path(), &ups, None, None))
            .expect("agg");
        assert_eq!(values(&out.model.path), [2.0]);
    }
}
