/* A new flow to a service frontend (cluster IP, node port, LoadBalancer or external IP), at a pod
 * veth (from_pod) or on the uplink (from_netdev): the rules before a backend is chosen, the
 * choice, the flow's conntrack pair, its masquerade if it needs one, and its first packet DNATed.
 *
 * The two hooks differ in three things only. A pod may be its own backend (hairpin, at the pod
 * veth only). An external frontend with externalTrafficPolicy Cluster (SVC_F_MASQ) is
 * masqueraded to the node IP on its way to the backend, as kube-proxy's KUBE-EXT chain marks
 * whoever the client is, and on the uplink so is a client outside the cluster CIDR reaching a
 * cluster IP (`! -s clusterCIDR` in KUBE-SVC): the backend's replies must come back through this
 * node. And a flow whose replies get the node's own address as their new source (every flow
 * arriving on the uplink, a pod's flow to this node's node port, a masqueraded one) is
 * reverse-translated on egress only (CT_F_EGRESS): on ingress the node's address would be a
 * martian. The masquerade's SNAT entries rewrite on egress (to_netdev for a remote backend,
 * to_pod for a local one) and undo it on ingress. */
#ifndef DP_NEWFLOW_H
#define DP_NEWFLOW_H

#include <uapi/linux/bpf.h>
#include <uapi/linux/in.h>

#include "types.h"
#include "consts.h"
#include "metrics.h"
#include "verdict.h"
#include "parse.h"
#include "conntrack.h"
#include "lb.h"
#include "nat.h"
#include "snat.h"
#include "reject.h"
#include "flow.h"
#include "trace.h"

/* The backend of a new flow: DP_CONTINUE with *id and *be set, or the verdict that ends the flow
 * here (a drop, or a rejection). */
static __always_inline int __lb4_new_flow_backend(struct __sk_buff *skb, struct pkt *p,
						  struct svc_value *svc, struct dp_config *cfg, __u64 now,
						  __u32 *id, struct backend **be)
{
	trace4_note_service(p, svc);
	if (p->proto == IPPROTO_TCP && !pkt4_bare_syn(p))
		return -DROP_CT_LOST;
	/* No endpoint anywhere: every client is rejected, source ranges or not (kube-proxy writes
	 * the loadBalancerSourceRanges firewall only for a service with endpoints). */
	if (svc->count == 0 && !(svc->flags & SVC_F_LOCAL_ONLY))
		return lb4_reject(skb, p, REJECT_NO_ENDPOINTS);
	if (!lb4_source_allowed(svc, p->saddr))
		return -DROP_SOURCE_RANGE;
	if (svc->count == 0)
		return -DROP_NO_LOCAL_ENDPOINT;
	*id = lb4_select_backend(p, svc, cfg->seed, now);
	*be = lb4_lookup_backend(*id);
	if (!*be)
		return -DROP_NO_BACKEND;
	return DP_CONTINUE;
}

/* The entries of a new flow, filled with what they share: `fwd` (SERVICE) translates to the
 * backend, `rev` (the reply's) back to the frontend. */
static __always_inline void __lb4_new_flow_entries(const struct pkt *p, const struct svc_value *svc,
						   const struct dp_config *cfg, __u64 now, __u32 id,
						   const struct backend *be, struct ct_entry *fwd, struct ct_entry *rev)
{
	fwd->expires = rev->expires = now + ct4_lifetime(cfg, p->proto, 0);
	fwd->nat_addr = be->addr;
	fwd->nat_port = be->port;
	fwd->backend_id = rev->backend_id = id;
	fwd->svc_id = rev->svc_id = svc->svc_id;
	rev->nat_addr = p->daddr;
	rev->nat_port = p->dport;
}

/* Store a new flow: `fwd` keyed by the packet as sent, and (rev not NULL) `rev` keyed by the
 * backend's reply to the client. 0, or -DROP_CT_FULL if the table refused them. */
static __always_inline int __lb4_flow_store(const struct pkt *p, const struct backend *be, struct ct_entry *fwd,
					  struct ct_entry *rev)
{
	struct ct_key fk = {}, rk = {};
	ct4_key_of(&fk, p, CT_SERVICE);
	if (ct4_store(&fk, fwd) < 0)
		return -DROP_CT_FULL;
	if (!rev)
		return 0;
	rk.saddr = be->addr;
	rk.sport = be->port;
	rk.daddr = p->saddr;
	rk.dport = p->sport;
	rk.proto = p->proto;
	rk.dir = CT_REPLY;
	if (ct4_store(&rk, rev) < 0) {
		ct4_remove(&fk);
		return -DROP_CT_FULL;
	}
	return 0;
}

/* Hairpin: the pod would drop a packet from itself; masquerade it as the node, with a port from
 * the allocator. The reply entry is the claimed SNAT_IN entry itself (backend -> node IP:port),
 * restoring the frontend as source and the client as destination. 0, or the reason to drop. */
static __always_inline int __lb4_new_hairpin(struct __sk_buff *skb, const struct pkt *p,
					     const struct dp_config *cfg, __u64 now, const struct backend *be,
					     struct ct_entry *fwd, struct ct_entry *rev)
{
	struct pkt after;
	__be16 port;
	snat4_after_dnat(&after, p, be);
	fwd->flags = rev->flags = CT_F_HAIRPIN;
	rev->snat_addr = p->saddr;
	rev->snat_port = p->sport;
	int ret = snat4_claim(skb, &after, cfg, now, p->sport, rev, &port);
	if (IS_DROP(ret))
		return ret;
	fwd->snat_addr = cfg->node_ip;
	fwd->snat_port = port;
	ret = __lb4_flow_store(p, be, fwd, NULL);
	if (IS_DROP(ret)) {
		struct ct_key fk = {}, pk = {};
		ct4_key_of(&fk, p, CT_SERVICE);
		ct4_peer_key(&pk, &fk, fwd);
		ct4_remove(&pk);             /* the mapping claimed above goes with it */
		return ret;
	}
	trace4_count(p, M_HAIRPIN);
	return 0;
}

/* Is a new flow masqueraded to the node on its way to the backend? (See above.) */
static __always_inline int __lb4_new_flow_masq(const struct dp_config *cfg, const struct pkt *p,
					       const struct svc_value *svc, int where)
{
	if (svc->flags & SVC_F_MASQ)
		return 1;
	return where == AT_UPLINK && (p->saddr & cfg->cluster_mask) != cfg->cluster_net && lb4_is_vip(p->daddr);
}

/* Every other new flow: DNAT, with a masquerade if it needs one (see above); its entries stored.
 * 0, or the reason to drop. */
static __always_inline int __lb4_new_nat(struct __sk_buff *skb, const struct pkt *p, const struct svc_value *svc,
					 const struct dp_config *cfg, __u64 now, const struct backend *be,
					 struct ct_entry *fwd, struct ct_entry *rev, int where)
{
	int masq = __lb4_new_flow_masq(cfg, p, svc, where);
	if (where == AT_UPLINK || masq || p->daddr == cfg->node_ip)
		fwd->flags = rev->flags = CT_F_EGRESS;
	if (masq) {
		__be16 port;
		int ret = snat4_map_after_dnat(skb, p, be, cfg, now, &port);
		if (IS_DROP(ret))
			return ret;
		fwd->snat_addr = cfg->node_ip;   /* the mapping, to heal it should the table lose it */
		fwd->snat_port = port;
	}
	int ret = __lb4_flow_store(p, be, fwd, rev);
	if (IS_DROP(ret) && masq)
		snat4_unmap_after_dnat(p, be);
	return ret;
}

/* A packet to a frontend that no flow of ours holds: `svc` is the frontend's service port, NULL
 * for a VIP on a port it does not serve (rejected). A new flow: its backend chosen, its entries
 * stored, its first packet DNATed. A stage's end. */
static __always_inline int lb4_new_flow(struct __sk_buff *skb, struct pkt *p, struct svc_value *svc,
					struct dp_config *cfg, __u64 now, int where)
{
	struct ct_entry fwd = {}, rev = {};
	struct backend *be;
	__u32 id;
	int ret = pkt4_check_options(p);
	if (IS_DROP(ret))
		return ret;
	if (p->later)                 /* a later fragment never starts a flow: it has no L4 header */
		return -DROP_FRAGMENT;
	if (!svc)
		return lb4_reject(skb, p, REJECT_PORT_UNSERVED);
	ret = __lb4_new_flow_backend(skb, p, svc, cfg, now, &id, &be);
	if (ret != DP_CONTINUE)
		return ret;
	__lb4_new_flow_entries(p, svc, cfg, now, id, be, &fwd, &rev);
	if (where == AT_POD && be->addr == p->saddr)
		ret = __lb4_new_hairpin(skb, p, cfg, now, be, &fwd, &rev);
	else
		ret = __lb4_new_nat(skb, p, svc, cfg, now, be, &fwd, &rev, where);
	if (IS_DROP(ret))
		return ret;
	ret = nat4_dnat(skb, p, &fwd);
	if (IS_DROP(ret))
		return ret;
	trace4_count(p, M_DNAT_NEW);
	return lb4_forward(skb, &fwd, where);
}

#endif
