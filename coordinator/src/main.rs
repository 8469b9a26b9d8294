//! `coordinator`: the federation operator's program (gRPC server, job plans, aggregation,
//! sled store, admin CLI, `simulate`). It sees models only as named f32 tensors and never
//! depends on burn.
//!
//! Not built yet: the federation lands with issue 3 and `simulate` with issue 4. Until then this
//! binary says so and exits non-zero, so no script mistakes it for a working coordinator.

fn main() {
    eprintln!(
        "coordinator: not built yet — the federation (serve, pki, job, sites, model, simulate) \
         is the next milestone. Meanwhile `site-agent synth|inspect|show` work on their own."
    );
    std::process::exit(2);
}
