//! rapax bindings to rdma-core and DPDK (none yet).
