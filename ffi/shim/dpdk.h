/* The DPDK headers rapax binds, plus the declarations of the hand-written shim (dpdk_shim.c)
 * for what bindgen cannot bind: macros and thread-local variables. */
#ifndef RAPAX_FFI_DPDK_H
#define RAPAX_FFI_DPDK_H

#include <rte_config.h>
#include <rte_eal.h>
#include <rte_alarm.h>
#include <rte_errno.h>
#include <rte_lcore.h>
#include <rte_ethdev.h>
#include <rte_ether.h>
#include <rte_mbuf.h>
#include <rte_mempool.h>
#include <rte_ring.h>
#include <rte_eth_ring.h>

/* The calling thread's rte_errno (a per-lcore thread-local behind a macro). */
int rapax_rte_errno(void);
/* Sets the calling thread's rte_errno. */
void rapax_rte_errno_set(int value);
/* rte_pktmbuf_mtod(m, void *): the start of the data in the first segment. */
void *rapax_rte_pktmbuf_mtod(struct rte_mbuf *m);
/* rte_pktmbuf_mtod_offset(m, void *, off). */
void *rapax_rte_pktmbuf_mtod_offset(struct rte_mbuf *m, uint32_t off);

#endif
