/* Counting outcomes and drop reasons: one per-CPU counter each, indexed by enum metric. */
#ifndef DP_METRICS_H
#define DP_METRICS_H

#include "types.h"
#include "pinning.h"
#include "consts.h"

/* per-CPU packet counters, indexed by enum metric */
DP_TABLE("percpu_array", __u32, __u64, metrics, M_MAX, 0);

static __always_inline void metrics_count(__u32 reason)
{
	__u64 *v = metrics.lookup(&reason);
	if (v)
		*v += 1;   /* per-CPU: no atomics needed */
}

#endif
