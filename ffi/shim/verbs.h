/* The rdma-core headers rapax binds (libibverbs and librdmacm), plus the shim's declarations. */
#ifndef RAPAX_FFI_VERBS_H
#define RAPAX_FFI_VERBS_H

#include <infiniband/verbs.h>
#include <rdma/rdma_cma.h>

#endif
