#![forbid(unsafe_code)]
pub mod index;
pub use index::{IndexError, KvIndex, Overlap};
