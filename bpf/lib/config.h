/* The node's configuration (struct dp_config at index 0): clock offset, seed, node IP, conntrack
 * lifetimes, masquerade settings. Written by the loader, read by every hook. */
#ifndef DP_CONFIG_H
#define DP_CONFIG_H

#include "types.h"
#include "pinning.h"

/* index 0: struct dp_config. Read by parse.h (pkt4_begin) and socklb.h */
DP_TABLE("array", __u32, struct dp_config, config, 1, 0);

/* The node's configuration, or NULL before the loader wrote it. */
static __always_inline struct dp_config *config_get(void)
{
	__u32 zero = 0;
	return config.lookup(&zero);
}

#endif
