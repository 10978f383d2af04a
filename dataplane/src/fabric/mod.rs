//! The fabric contract and its backends.
