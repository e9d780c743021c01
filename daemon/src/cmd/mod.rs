//! One module per subcommand.

pub mod bench;
pub mod check_config;
pub mod codec;
pub mod demo;
pub mod fetch;
pub mod run;
