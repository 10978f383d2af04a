//! rapax control plane.
//!
//! The control plane's protocol (pull-score election, permission handover, the view change and
//! the amnesia probe) is part of the node core in `rapax_dataplane::protocol`, so the whole
//! protocol reads in one place and the simulator drives it exactly as the daemons will. This
//! crate holds the `rapax-control` process around it: its agents, its fabric endpoints on the
//! control mesh and its side of the shared-memory channel to the data plane.

pub use rapax_dataplane::protocol::election;
pub use rapax_dataplane::protocol::node::{Node, NodeConfig, RoleKind};
