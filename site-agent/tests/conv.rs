//! Convolutions against a direct sum, on the kernels this CPU picks (AVX-512 where it has it).

mod common;
mod conv_cases;

#[test]
fn stride_one_convolutions_match_a_direct_sum() {
    conv_cases::stride_one();
}

#[test]
fn other_convolutions_match_too() {
    conv_cases::others();
}

#[test]
fn transposed_convolutions_match_a_direct_sum() {
    conv_cases::transposed();
}
