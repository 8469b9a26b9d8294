//! Convolutions against a direct sum on the kernels a CPU with AVX2 but without AVX-512 picks
//! (Winograd with AVX2, the portable GEMM path for the rest), so that CPUs with AVX-512 test
//! them too. A test binary of its own: the setting below is process-wide.

mod common;
mod conv_cases;

#[test]
fn convolutions_match_a_direct_sum_on_the_avx2_kernels() {
    // SAFETY: the only test in this process, set before any thread reads the environment.
    unsafe { std::env::set_var("BURN_FLEX_CONV_KERNEL", "avx2") };
    conv_cases::stride_one();
    conv_cases::others();
    conv_cases::transposed();
}
