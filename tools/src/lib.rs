//! The `rapax` operator's tool: the deterministic simulator and the linearizability checker.

pub mod lincheck;
pub mod sim;
