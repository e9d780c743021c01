//! One module per subcommand.

pub mod audio;
pub mod bench;
pub mod bench_lm;
pub mod bench_web;
pub mod check_config;
pub mod client;
pub mod codec;
pub mod demo;
pub mod demo_web;
pub mod fetch;
pub mod infer;
pub mod quantize;
pub mod run;
