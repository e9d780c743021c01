//! Pure-compute model code for moshid: the Mimi codec and the Moshi language model.
//!
//! Nothing here touches audio devices or the network; the only I/O is loading weights.

pub mod device;
mod finite;
#[doc(hidden)]
pub mod fuzz;
pub mod lm;
pub mod mimi;
pub mod parity;
mod replace;
pub mod tokenizer;
