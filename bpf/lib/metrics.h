/* Counting outcomes and drop reasons: one per-CPU counter each, indexed by enum metric. */
#ifndef DP_METRICS_H
#define DP_METRICS_H

#include "maps.h"

static __always_inline void metrics_count(__u32 reason)
{
	__u64 *v = metrics.lookup(&reason);
	if (v)
		*v += 1;   /* per-CPU: no atomics needed */
}

#endif
