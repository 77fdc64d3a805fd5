/* The seeded hashes behind every choice the dataplane makes (a backend, a NAT port): the same
 * seed makes the same choices, so a run can be replayed and the oracle predicts them. */
#ifndef DP_HASH_H
#define DP_HASH_H

#include "parse.h"

/* murmur3's finalizer: every input bit moves every output bit. */
static __always_inline __u32 hash_mix32(__u32 h)
{
	h ^= h >> 16;
	h *= 0x85ebca6b;
	h ^= h >> 13;
	h *= 0xc2b2ae35;
	h ^= h >> 16;
	return h;
}

/* Hash of the flow's tuple as its bytes sit in the packet (read as little-endian words). */
static __always_inline __u32 hash_flow4(const struct pkt *p, __u32 seed)
{
	__u32 h = hash_mix32(seed ^ p->saddr);
	h = hash_mix32(h ^ p->daddr);
	h = hash_mix32(h ^ ((__u32)p->sport | ((__u32)p->dport << 16)));
	return hash_mix32(h ^ p->proto);
}

#endif
