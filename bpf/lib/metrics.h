/* Counting outcomes and drop reasons. */
#ifndef DP_METRICS_H
#define DP_METRICS_H

static __always_inline void count(__u32 reason)
{
	__u64 *v = metrics.lookup(&reason);
	if (v)
		*v += 1;   /* per-CPU: no atomics needed */
}

static __always_inline int drop(__u32 reason)
{
	count(reason);
	return TC_ACT_SHOT;
}

static __always_inline int pass(void)
{
	count(M_PASS);
	return TC_ACT_OK;
}

#endif
