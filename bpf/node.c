/* Entry points on each node's uplink (eth0, in the node's namespace).
 *
 *   to_netdev    egress: packets leaving the node. Egress masquerade: pod -> outside becomes
 *                node IP -> outside, with a port mapping per flow; replies of flows that came in
 *                through a node port leave with the frontend as source.
 *   from_netdev  ingress: packets arriving from the network. Replies to masqueraded flows (and
 *                ICMP errors about them) go back to their pod; NodePort, LoadBalancer and
 *                external IP frontends (and cluster IPs, for clients outside the cluster whose
 *                network routes them to a node) are DNATed like a pod's ClusterIP flow
 *                (lib/newflow.h).
 *
 * Destinations are rewritten on ingress and sources on egress, as netfilter does (DNAT/un-SNAT
 * in PREROUTING, SNAT in POSTROUTING): routing in between never sees the node's own address as
 * a source arriving from outside. Each hook is a sequence of stages (lib/verdict.h). */
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

/* What the uplink does not translate: ICMP errors go through icmp.h, other ICMP, protocols
 * other than TCP/UDP and later fragments whose first was not seen here pass. DP_CONTINUE for
 * TCP/UDP with known ports. */
static __always_inline int uplink_untranslated(struct __sk_buff *skb, const struct pkt *p, __u64 now, int egress)
{
	if (p->proto == IPPROTO_ICMP && icmp4_is_error(p->icmp_type))
		return icmp4_error_at_uplink(skb, p, now, egress);
	if ((p->proto != IPPROTO_TCP && p->proto != IPPROTO_UDP) || !p->has_l4)
		return dp_pass();
	return DP_CONTINUE;
}

/* A node process's packet to a cluster IP its socket hook left alone: kube-proxy drops what has
 * no local endpoint (internalTrafficPolicy Local). */
static __always_inline int uplink_no_local_endpoint(const struct pkt *p, const struct dp_config *cfg)
{
	if (p->saddr != cfg->node_ip || !lb4_is_vip(p->daddr))
		return 0;
	struct svc_value *svc = lb4_lookup_service(p->daddr, p->dport, p->proto, 0);
	return svc && svc->count == 0 && (svc->flags & SVC_F_LOCAL_ONLY);
}

static __always_inline int __to_netdev(struct __sk_buff *skb, struct pkt *p)
{
	struct ct_key k = {};
	struct ct_entry *e;
	struct dp_config *cfg;
	__u64 now;
	int ret = pkt4_begin(skb, p, &cfg, &now);
	if (ret != DP_CONTINUE)
		return ret;
	/* errors the node itself sends about translated flows, and error sources that are the node's
	 * own address now */
	ret = uplink_untranslated(skb, p, now, HOOK_EGRESS);
	if (ret != DP_CONTINUE)
		return ret;
	/* replies of NodePort flows leave with the frontend as source */
	e = ct4_lookup_reply(&k, p, CT_REPLY, now);
	if (e && (e->flags & CT_F_EGRESS))
		return lb4_known_flow(skb, p, cfg, now, &k, e, XLATE_REVNAT, AT_UPLINK);
	e = ct4_lookup_flow(&k, p, CT_SNAT_OUT, now);
	if (e)
		return lb4_known_flow(skb, p, cfg, now, &k, e, XLATE_SNAT, AT_UPLINK);
	if (uplink_no_local_endpoint(p, cfg))
		return -DROP_NO_LOCAL_ENDPOINT;
	if (!snat4_should_masquerade(cfg, p, now))
		return dp_pass();
	ret = pkt4_check_options(p);
	if (IS_DROP(ret))
		return ret;
	if (p->later)                 /* its first fragment found no mapping either */
		return -DROP_FRAGMENT;
	return snat4_new_flow(skb, p, cfg, now);
}

static __always_inline int __from_netdev(struct __sk_buff *skb, struct pkt *p)
{
	struct ct_key k = {};
	struct ct_entry *e;
	struct dp_config *cfg;
	__u64 now;
	int ret = pkt4_begin(skb, p, &cfg, &now);
	if (ret != DP_CONTINUE)
		return ret;
	ret = uplink_untranslated(skb, p, now, HOOK_INGRESS);
	if (ret != DP_CONTINUE)
		return ret;
	e = ct4_lookup_reply(&k, p, CT_SNAT_IN, now);
	if (e)
		return lb4_known_flow(skb, p, cfg, now, &k, e, XLATE_UNSNAT, AT_UPLINK);
	/* NodePort, LoadBalancer and external IPs */
	e = ct4_lookup_flow(&k, p, CT_SERVICE, now);
	if (e)
		return lb4_known_flow(skb, p, cfg, now, &k, e, XLATE_DNAT, AT_UPLINK);
	struct svc_value *svc = lb4_lookup_service(p->daddr, p->dport, p->proto, 0);
	if (svc || lb4_is_vip(p->daddr))
		return lb4_new_flow(skb, p, svc, cfg, now, AT_UPLINK);
	if (snat4_orphan(skb, p, cfg))
		return -DROP_CT_LOST;
	/* a remote's own flow to a pod (or the node): its answers are replies, never masqueraded */
	snat4_note_inbound(cfg, p, now);
	ct4_release_reused(p, now);
	return dp_pass();
}

int to_netdev(struct __sk_buff *skb)
{
	struct pkt p = {};
	trace4_begin(&p, TRACE_HOOK_TO_NETDEV);
	int ret = __to_netdev(skb, &p);
	trace4_end(skb, &p, ret);
	return dp_verdict(ret);
}

int from_netdev(struct __sk_buff *skb)
{
	struct pkt p = {};
	trace4_begin(&p, TRACE_HOOK_FROM_NETDEV);
	int ret = __from_netdev(skb, &p);
	trace4_end(skb, &p, ret);
	return dp_verdict(ret);
}
