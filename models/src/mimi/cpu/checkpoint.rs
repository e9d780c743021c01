//! The checkpoint as the CPU engine reads it: tensors by name, each with the shape the
//! configuration implies, checked and loaded by the recording [`Vars`] getter.
//!
//! The tensor list and its shapes come from [`expected_tensors`] (the candle build's
//! requests), so the file is checked against the same list whichever engine runs, and the
//! engine's code only names the tensors it reads.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};

use candle_core::Tensor;

use crate::mimi::load::Vars;
use crate::mimi::{expected_tensors, MimiConfig, MimiError};

/// A name -> shape view of a `cfg` checkpoint file.
pub(crate) struct Checkpoint<'v> {
    vars: &'v Vars<'static>,
    list: Vec<(String, Vec<usize>)>,
    index: HashMap<String, usize>,
    read: RefCell<HashSet<String>>,
}

impl<'v> Checkpoint<'v> {
    /// The tensor list of `cfg`, read through `vars` (a checkpoint file).
    pub(crate) fn new(vars: &'v Vars<'static>, cfg: &MimiConfig) -> Result<Self, MimiError> {
        let list = expected_tensors(cfg)?;
        let index = list
            .iter()
            .enumerate()
            .map(|(i, (n, _))| (n.clone(), i))
            .collect();
        Ok(Checkpoint {
            vars,
            list,
            index,
            read: RefCell::new(HashSet::new()),
        })
    }

    /// Tensor `name` (full name) as f32, of the shape the configuration implies.
    pub(crate) fn get(&self, name: &str) -> Result<Tensor, MimiError> {
        let Some(&i) = self.index.get(name) else {
            return Err(MimiError::Config(format!(
                "internal: the CPU engine asked for `{name}`, which is not a tensor of this config"
            )));
        };
        self.read.borrow_mut().insert(name.to_string());
        self.vars.get(name, &self.list[i].1)
    }

    /// Declares every tensor of the list the engine did not read (`_initialized`, codebook
    /// levels beyond the active ones): they must still be in the file, with their shapes.
    pub(crate) fn declare_unread(&self) -> Result<(), MimiError> {
        let read = self.read.borrow();
        for (name, shape) in self.list.iter().filter(|(n, _)| !read.contains(n)) {
            self.vars.declare(name, shape)?;
        }
        Ok(())
    }
}
