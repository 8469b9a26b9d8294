//! CPU training run from inside rayon's thread pool.
//!
//! The CPU backend splits each tensor operation across rayon's threads. Called from a thread
//! outside the pool, every operation is handed to the pool while the calling thread sleeps
//! until it ends: a sleep and a wake-up per operation, thousands per training step. From one
//! of the pool's own threads, an operation starts at once on that thread and the others take
//! pieces of it. Measured with `cargo bench -p site-agent --bench train_step` (12 steps, 2
//! cores): context switches 22.4 K → 4.5 K, CPU time 8.1–8.3 → 6.9–7.4 s.

use super::DeviceKind;

/// `f()` on one of rayon's threads when training on the CPU, on this thread otherwise (a GPU
/// backend queues its work instead of splitting it across rayon's threads).
pub fn on_compute_threads<R: Send>(device: DeviceKind, f: impl FnOnce() -> R + Send) -> R {
    match device {
        DeviceKind::Cpu => rayon::scope(|_| f()),
        DeviceKind::Cuda => f(),
    }
}
