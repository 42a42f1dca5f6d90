//! Test scaffolding for the rds-csi node plugin (never a dependency of the product binary):
//! a whole plugin on the emulated fabric driven over its real unix socket as kubelet drives
//! it ([`harness`]), and the resilience scenarios the demo prints and the tests run
//! ([`scenarios`]); the real-kernel tier in a VM ([`vm`]).

pub mod harness;
pub mod scenarios;
pub mod vm;
