//! Pure-compute model code for moshid: the Mimi codec and the Moshi language model.
//!
//! Nothing here touches audio devices or the network; the only I/O is loading weights.

pub mod device;
pub mod lm;
pub mod mimi;
pub mod tokenizer;
