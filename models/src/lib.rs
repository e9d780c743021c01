//! Pure-compute model code for moshid: the Mimi codec, the Moshi language model and the
//! wake-word detector.
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
pub mod wake;
