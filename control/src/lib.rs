//! rapax control plane.
