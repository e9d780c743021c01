//! One module per subcommand.

pub mod audio;
pub mod bench;
pub mod bench_lm;
pub mod check_config;
pub mod codec;
pub mod demo;
pub mod fetch;
pub mod infer;
pub mod quantize;
pub mod run;
