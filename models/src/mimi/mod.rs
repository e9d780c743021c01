//! The Mimi neural audio codec.
