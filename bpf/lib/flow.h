/* A packet of a known flow, at any hook: the one sequence every translated packet goes through,
 * whichever entry found it. Check the packet can be translated, update the flow's conntrack
 * state (both entries), rewrite it, count the outcome, forward it (a hairpin flow's packets
 * straight back to the pod they came from). The hooks differ only in which entry they look up
 * and what it rewrites (XLATE_*); see pod.c and node.c. */
#ifndef DP_FLOW_H
#define DP_FLOW_H

#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>

#include "consts.h"
#include "metrics.h"
#include "verdict.h"
#include "parse.h"
#include "conntrack.h"
#include "nat.h"
#include "snat.h"
#include "l2.h"
#include "trace.h"

/* What a known flow's packet gets, by the entry that found it. */
#define XLATE_DNAT    0   /* CT_SERVICE: to the backend (hairpin: from the node IP:port too) */
#define XLATE_REVNAT  1   /* CT_REPLY, hairpin CT_SNAT_IN: from the frontend (hairpin: to the client) */
#define XLATE_SNAT    2   /* CT_SNAT_OUT: from the node IP:port of its mapping */
#define XLATE_UNSNAT  3   /* CT_SNAT_IN: to the pod or client behind the mapping */

/* Where a hook is: only a pod veth can send a hairpin packet back to its pod. */
#define AT_UPLINK     0
#define AT_POD        1

static __always_inline int __lb4_xlate(struct __sk_buff *skb, const struct pkt *p, const struct ct_entry *e,
				       int xlate)
{
	if (xlate == XLATE_DNAT)
		return nat4_dnat(skb, p, e);
	if (xlate == XLATE_REVNAT)
		return nat4_rev_nat(skb, p, e);
	if (xlate == XLATE_SNAT)
		return nat4_set_src(skb, p, e->nat_addr, e->nat_port);
	return nat4_set_dst(skb, p, e->nat_addr, e->nat_port);
}

static __always_inline __u32 __lb4_xlate_metric(int xlate)
{
	if (xlate == XLATE_DNAT)
		return M_DNAT;
	if (xlate == XLATE_REVNAT)
		return M_REVNAT;
	return xlate == XLATE_SNAT ? M_SNAT : M_UNSNAT;
}

/* After a translation: at a pod veth, hairpin packets go straight back to the pod; all others
 * to routing. */
static __always_inline int lb4_forward(struct __sk_buff *skb, const struct ct_entry *e, int where)
{
	if (where == AT_POD && (e->flags & CT_F_HAIRPIN))
		return l2_bounce(skb, DROP_NAT_FAILED);
	return TC_ACT_OK;
}

/* The known-flow sequence (above), for the entry `e` found at key `k`. A stage's end. */
static __always_inline int lb4_known_flow(struct __sk_buff *skb, struct pkt *p, const struct dp_config *cfg,
					  __u64 now, struct ct_key *k, struct ct_entry *e, int xlate, int where)
{
	int ret = pkt4_check_options(p);
	if (IS_DROP(ret))
		return ret;
	ct4_update(k, e, p, cfg, now);
	trace4_note_flow(p, k, e, now);
	if (xlate == XLATE_DNAT)
		snat4_heal(p, e);       /* a masqueraded flow's mapping, should the table have lost it */
	ret = __lb4_xlate(skb, p, e, xlate);
	if (IS_DROP(ret))
		return ret;
	trace4_count(p, __lb4_xlate_metric(xlate));
	return lb4_forward(skb, e, where);
}

#endif
