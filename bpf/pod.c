/* Entry points on the node side of each pod's veth (TC, in the node's namespace).
 *
 *   from_pod  ingress: what the pod sends. Services: DNAT of new and known flows, rejection,
 *             hairpin masquerade; replies of local backends: reverse NAT.
 *   to_pod    egress: what the pod receives. Replies from backends on any node: reverse NAT.
 *
 * Each is a sequence of stages (lib/verdict.h): the first that decides gives the verdict. Both
 * then let the kernel route the packet (TC_ACT_OK), or send a hairpin packet back (redirect). */
#include <uapi/linux/bpf.h>
#include <uapi/linux/in.h>

#include "types.h"
#include "consts.h"
#include "verdict.h"
#include "parse.h"
#include "conntrack.h"
#include "lb.h"
#include "icmp.h"
#include "snat.h"
#include "flow.h"
#include "newflow.h"
#include "trace.h"

/* What pod hooks do not translate: ICMP (but errors about our flows), other protocols, and later
 * fragments whose first fragment was not seen here. Addressed to a VIP from a pod, nothing could
 * answer them: dropped. Otherwise passed. DP_CONTINUE for TCP/UDP with known ports. */
static __always_inline int pod_untranslated(struct __sk_buff *skb, const struct pkt *p, __u64 now, int egress)
{
	__u32 reason = DROP_UNKNOWN_L4;
	if (p->proto == IPPROTO_ICMP && icmp4_is_error(p->icmp_type)) {
		int ret = icmp4_error_at_pod(skb, p, now, egress);
		if (ret != DP_CONTINUE)
			return ret;
	}
	if (p->proto == IPPROTO_TCP || p->proto == IPPROTO_UDP) {
		if (p->has_l4)
			return DP_CONTINUE;
		reason = DROP_FRAGMENT;
	}
	if (!egress && lb4_is_vip(p->daddr))
		return -reason;
	return dp_pass();
}

/* The fast path of what a pod sends: traffic that no flow of ours can hold and no frontend serves
 * (pod to pod, pod to the outside, where neither end is a service's), passed after two reads of
 * the address filter and before the clock is read. Every entry a later stage of from_pod could
 * find is keyed by a frontend (CT_SERVICE, a new flow), by the node's address (CT_SNAT_IN,
 * snat4_orphan), or by an endpoint: the source of a reply (CT_REPLY), the destination of a bare
 * SYN reusing a closed flow's reply tuple (ct4_release_reused). ICMP and fragments take the full
 * path. The filter holds every endpoint and frontend of the table, and a sync removes one only
 * when no conntrack entry names it any more (lib/lb.h). (to_pod has no fast path: the egress
 * masquerade's CT_SNAT_OUT entries are keyed by a pod and an outside host, which the filter does
 * not know.) */
static __always_inline int pod4_fast_pass(const struct pkt *p, const struct dp_config *cfg)
{
	if (!p->has_l4 || p->fragment || (p->proto != IPPROTO_TCP && p->proto != IPPROTO_UDP) ||
	    p->daddr == cfg->node_ip)
		return 0;
	__u32 dst = lb4_address_maybe(p->daddr);
	if ((dst & ADDR_F_FRONTEND) || ((dst & ADDR_F_ENDPOINT) && pkt4_bare_syn(p)))
		return 0;
	return !(lb4_address_maybe(p->saddr) & ADDR_F_ENDPOINT);
}

/* A packet to a frontend no flow of ours holds: a new flow (lib/newflow.h), or, not to a
 * frontend at all, passed (first releasing a closed flow's reply tuple a new connection reuses). */
static __always_inline int pod_new_flow(struct __sk_buff *skb, struct pkt *p, struct dp_config *cfg, __u64 now)
{
	struct svc_value *svc = lb4_lookup_service_for_pod(p->daddr, p->dport, p->proto);
	if (!svc && !lb4_is_vip(p->daddr)) {
		ct4_release_reused(p, now);
		return dp_pass();
	}
	return lb4_new_flow(skb, p, svc, cfg, now, AT_POD);
}

static __always_inline int __from_pod(struct __sk_buff *skb, struct pkt *p)
{
	struct ct_key k = {};
	struct ct_entry *e;
	struct dp_config *cfg;
	__u64 now;
	int ret = pkt4_parse_config(skb, p, &cfg);
	if (ret != DP_CONTINUE)
		return ret;
	if (pod4_fast_pass(p, cfg))
		return dp_pass();
	now = pkt4_clock(p, cfg);
	ret = pod_untranslated(skb, p, now, HOOK_INGRESS);
	if (ret != DP_CONTINUE)
		return ret;
	/* replies of local backends, except those of flows whose frontend is the node's own address:
	 * that source only an egress hook may write (to_pod, on the client's veth) */
	e = ct4_lookup_reply(&k, p, CT_REPLY, now);
	if (e && !(e->flags & CT_F_EGRESS))
		return lb4_known_flow(skb, p, cfg, now, &k, e, XLATE_REVNAT, AT_POD);
	/* replies to the node's address: a hairpin flow's (back to the client, from the frontend),
	 * or a flow's masqueraded to this backend, whose SNAT happened on the way to the pod
	 * (lib/newflow.h) and is undone here */
	e = ct4_lookup_reply(&k, p, CT_SNAT_IN, now);
	if (e)
		return lb4_known_flow(skb, p, cfg, now, &k, e,
				      (e->flags & CT_F_HAIRPIN) ? XLATE_REVNAT : XLATE_UNSNAT, AT_POD);
	if (snat4_orphan(skb, p, cfg))
		return -DROP_CT_LOST;
	e = ct4_lookup_flow(&k, p, CT_SERVICE, now);
	if (e)
		return lb4_known_flow(skb, p, cfg, now, &k, e, XLATE_DNAT, AT_POD);
	return pod_new_flow(skb, p, cfg, now);
}

static __always_inline int __to_pod(struct __sk_buff *skb, struct pkt *p)
{
	struct ct_key k = {};
	struct ct_entry *e;
	struct dp_config *cfg;
	__u64 now;
	int ret = pkt4_begin(skb, p, &cfg, &now);
	if (ret != DP_CONTINUE)
		return ret;
	ret = pod_untranslated(skb, p, now, HOOK_EGRESS);
	if (ret != DP_CONTINUE)
		return ret;
	/* replies from backends on any node */
	e = ct4_lookup_reply(&k, p, CT_REPLY, now);
	if (e)
		return lb4_known_flow(skb, p, cfg, now, &k, e, XLATE_REVNAT, AT_POD);
	/* a flow masqueraded to this (backend) pod: its source becomes the node IP:port here */
	e = ct4_lookup_flow(&k, p, CT_SNAT_OUT, now);
	if (e)
		return lb4_known_flow(skb, p, cfg, now, &k, e,
				      (e->flags & CT_F_HAIRPIN) ? XLATE_REVNAT : XLATE_SNAT, AT_POD);
	return dp_pass();
}

int from_pod(struct __sk_buff *skb)
{
	struct pkt p = {};
	trace4_begin(&p, TRACE_HOOK_FROM_POD);
	int ret = __from_pod(skb, &p);
	trace4_end(skb, &p, ret);
	return dp_verdict(ret);
}

int to_pod(struct __sk_buff *skb)
{
	struct pkt p = {};
	trace4_begin(&p, TRACE_HOOK_TO_POD);
	int ret = __to_pod(skb, &p);
	trace4_end(skb, &p, ret);
	return dp_verdict(ret);
}
