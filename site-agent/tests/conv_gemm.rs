//! Stride-1 convolutions against a direct sum on the portable GEMM path, the one CPUs without
//! AVX-512 or AVX2 take. A test binary of its own: the setting below is process-wide.

mod common;
mod conv_cases;

#[test]
fn convolutions_match_a_direct_sum_on_the_gemm_path() {
    // SAFETY: the only test in this process, set before any thread reads the environment.
    unsafe { std::env::set_var("BURN_FLEX_CONV_KERNEL", "gemm") };
    conv_cases::stride_one();
    conv_cases::others();
    conv_cases::transposed();
}
