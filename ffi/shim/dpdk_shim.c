/* Hand-written shim for the parts of DPDK that bindgen cannot bind: rte_errno is a per-lcore
 * thread-local behind a macro, rte_pktmbuf_mtod is a macro. */
#include "dpdk.h"

int rapax_rte_errno(void)
{
	return rte_errno;
}

void rapax_rte_errno_set(int value)
{
	rte_errno = value;
}

void *rapax_rte_pktmbuf_mtod(struct rte_mbuf *m)
{
	return rte_pktmbuf_mtod(m, void *);
}

void *rapax_rte_pktmbuf_mtod_offset(struct rte_mbuf *m, uint32_t off)
{
	return rte_pktmbuf_mtod_offset(m, void *, off);
}
