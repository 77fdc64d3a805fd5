/* Checksum arithmetic (RFC 1071 folding, RFC 1624 incremental updates), for the fields the kernel's
 * csum helpers cannot reach: a truncated ICMP quote, a rejection built from scratch. */
#ifndef DP_CSUM_H
#define DP_CSUM_H

#include <uapi/linux/bpf.h>

static __always_inline __u16 csum_fold(__u32 csum)
{
	csum = (csum & 0xffff) + (csum >> 16);
	csum = (csum & 0xffff) + (csum >> 16);
	return (__u16)~csum;
}

/* RFC 1624 eqn. 3 on raw (network-order) 16-bit words: HC' = ~(~HC + ~m + m'). For fields that
 * cannot be summed in full (a truncated quote). */
static __always_inline __u16 csum_update(__u16 check, __u32 sum_old_new)
{
	__u32 sum = (__u16)~check + sum_old_new;
	return csum_fold(sum);
}

static __always_inline __u32 csum_delta4(__u32 from, __u32 to)
{
	return (__u16)~(from & 0xffff) + (__u16)~(from >> 16) + (to & 0xffff) + (to >> 16);
}

static __always_inline __u32 csum_delta2(__u16 from, __u16 to)
{
	return (__u16)~from + to;
}

#endif
