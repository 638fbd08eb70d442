//! Numeric primitives shared by the encoder and the engine: vector kernels compiled for the
//! CPU's widest extension ([`vector`]), the detected instruction set as an unforgeable token
//! ([`isa`]), the packed GEMM it selects kernels for ([`gemm`]), and the team of threads that
//! share a layer or a batch ([`team`]).

pub mod gemm;
pub mod isa;
pub mod team;
pub mod vector;
