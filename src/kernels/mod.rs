//! Numeric primitives shared by the encoder and the engine: vector kernels compiled for the
//! CPU's widest extension ([`vector`]), the packed GEMM with its unforgeable instruction-set
//! token ([`gemm`]), and the helper thread that splits a layer in two ([`team`]).

pub mod gemm;
pub mod team;
pub mod vector;
