/* One return convention for every helper on a packet's way through a hook, as Cilium's negative
 * DROP_* codes, so that a caller checks a result one way only:
 *
 *   stages (a step that may finish the packet: a known flow, a new flow, an ICMP error)
 *     DP_CONTINUE    not decided here: the caller goes on to its next stage
 *     >= 0           a TC verdict (TC_ACT_OK, TC_ACT_REDIRECT); its outcome is counted already
 *     < 0            a drop: the negated reason (-DROP_*)
 *     checked with   if (ret != DP_CONTINUE) return ret;
 *   operations (a rewrite, a store, a claim: they succeed or fail)
 *     0              done
 *     < 0            failed: the negated drop reason that says what failed
 *     checked with   if (IS_DROP(ret)) return ret;
 *   classifiers (what kind of packet is this: __pkt4_parse, the icmp4_error* family)
 *     >= 0           a code of their own (PKT4_*, ICMP4_*), < 0 a drop reason as above
 *   predicates (is_..., ..._holds, __icmp4_quote_read, ...): 1 or 0, never a reason.
 *
 * A drop reason is its counter's index (enum metric), so that a drop is counted once, by the
 * entry point that returns it (dp_verdict), wherever it was decided. */
#ifndef DP_VERDICT_H
#define DP_VERDICT_H

#include <uapi/linux/pkt_cls.h>

#include "consts.h"
#include "metrics.h"

#define DP_CONTINUE  0x10000    /* above every TC verdict, and not negative: no drop reason */
#define IS_DROP(ret) ((ret) < 0)  /* (not IS_ERR: the kernel headers bcc includes have one) */

/* Not ours: the packet goes on untouched. */
static __always_inline int dp_pass(void)
{
	metrics_count(M_PASS);
	return TC_ACT_OK;
}

/* What an entry point returns for the result of its stages: a drop is counted under its reason. */
static __always_inline int dp_verdict(int ret)
{
	if (IS_DROP(ret)) {
		metrics_count(-ret);
		return TC_ACT_SHOT;
	}
	if (ret == DP_CONTINUE)     /* no stage decided: never leaves as a verdict of its own */
		return dp_pass();
	return ret;
}

#endif
