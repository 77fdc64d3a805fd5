/* Entry points on the node side of each pod's veth (TC, in the node's namespace).
 *
 *   from_pod  ingress: what the pod sends. Services: DNAT of new and known flows, rejection,
 *             hairpin masquerade; replies of local backends: reverse NAT.
 *   to_pod    egress: what the pod receives. Replies from backends on any node: reverse NAT.
 *
 * Both then let the kernel route the packet (TC_ACT_OK). */
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/tcp.h>
#include <uapi/linux/udp.h>
#include <uapi/linux/icmp.h>
#include <uapi/linux/pkt_cls.h>
#include <linux/stddef.h>

#include "maps.h"
#include "metrics.h"
#include "parse.h"
#include "csum.h"
#include "conntrack.h"
#include "lb.h"
#include "nat.h"
#include "l2.h"
#include "icmp.h"
#include "reject.h"
#include "flow.h"
#include "snat.h"

/* After a translation: hairpin packets go straight back to the pod, all others to routing. */
static __always_inline int bounce_or_drop(struct __sk_buff *skb)
{
	int verdict = bounce(skb);
	return verdict < 0 ? drop(DROP_REJECT_FAILED) : verdict;
}

static __always_inline int forward(struct __sk_buff *skb, const struct ct_entry *e)
{
	return (e->flags & CT_F_HAIRPIN) ? bounce_or_drop(skb) : TC_ACT_OK;
}

static __always_inline int new_flow(struct __sk_buff *skb, struct pkt *p, struct svc_value *svc,
				    struct dp_config *cfg, __u64 now)
{
	__u32 id;
	struct backend *be;
	int verdict = flow_backend(skb, p, svc, cfg, now, &id, &be);
	if (verdict >= 0)
		return verdict;

	struct ct_entry fwd = {}, rev = {};
	flow_entries(p, svc, cfg, now, id, be, &fwd, &rev);
	if (be->addr == p->saddr) {
		/* Hairpin: the pod would drop a packet from itself; masquerade it as the node, with a
		 * port from the allocator. The reply entry is the claimed SNAT_IN entry itself
		 * (backend -> node IP:port), restoring the frontend as source and the client as
		 * destination. */
		struct pkt after = *p;
		__be16 port;
		after.daddr = be->addr;
		after.dport = be->port;
		fwd.flags = rev.flags = CT_F_HAIRPIN;
		rev.snat_addr = p->saddr;
		rev.snat_port = p->sport;
		if (snat_claim(skb, &after, cfg, now, p->sport, &rev, &port) < 0)
			return drop(DROP_SNAT_EXHAUSTED);
		fwd.snat_addr = cfg->node_ip;
		fwd.snat_port = port;
		if (flow_store(p, be, &fwd, NULL) < 0) {
			struct ct_key pk = {};
			ct_peer_key(&pk, &(struct ct_key){.saddr = p->saddr, .daddr = p->daddr, .sport = p->sport,
							  .dport = p->dport, .proto = p->proto, .dir = CT_SERVICE}, &fwd);
			conntrack.delete(&pk);
			return drop(DROP_CT_FULL);
		}
		count(M_HAIRPIN);
	} else {
		if (svc->flags & SVC_F_MASQ) {
			/* An external frontend with externalTrafficPolicy Cluster, reached by a pod:
			 * masqueraded to the node IP as kube-proxy's KUBE-EXT chain marks whoever the
			 * client is. */
			__be16 port;
			if (snat_map_after_dnat(skb, p, be, cfg, now, &port) < 0)
				return drop(DROP_SNAT_EXHAUSTED);
			fwd.flags = rev.flags = CT_F_EGRESS;
			fwd.snat_addr = cfg->node_ip;
			fwd.snat_port = port;
		} else if (p->daddr == cfg->node_ip) {
			/* this node's own node port: the replies' new source is the node's address, which
			 * only an egress hook may write (to_pod, on the client's veth) */
			fwd.flags = rev.flags = CT_F_EGRESS;
		}
		if (flow_store(p, be, &fwd, &rev) < 0) {
			if (svc->flags & SVC_F_MASQ)
				snat_unmap_after_dnat(p, be);
			return drop(DROP_CT_FULL);
		}
	}
	if (dnat(skb, p, &fwd) < 0)
		return drop(DROP_REJECT_FAILED);
	count(M_DNAT_NEW);
	return forward(skb, &fwd);
}

static __always_inline int handle(struct __sk_buff *skb, int service_hook)
{
	struct pkt p = {};
	struct dp_config *cfg;
	__u64 now;
	int r = begin(skb, &p, &cfg, &now);
	if (r >= 0)
		return r;

	if (p.proto == IPPROTO_ICMP) {
		if (is_icmp_error(p.icmp_type)) {
			int t = icmp_error(skb, &p, now, !service_hook);
			if (t < 0)
				return drop(DROP_REJECT_FAILED);
			if (t > 0) {
				count(M_ICMP_REVNAT);
				/* a hairpin's error goes back out the veth it came in by; on egress it is on
				 * its way to the pod already */
				return t == 2 && service_hook ? bounce_or_drop(skb) : TC_ACT_OK;
			}
		}
		if (service_hook && is_vip(p.daddr))
			return drop(DROP_UNKNOWN_L4);
		return pass();
	}
	if (p.proto != IPPROTO_TCP && p.proto != IPPROTO_UDP) {
		if (service_hook && is_vip(p.daddr))
			return drop(DROP_UNKNOWN_L4);
		return pass();
	}
	if (!p.has_l4) {   /* a later fragment whose first fragment was not seen here */
		if (service_hook && is_vip(p.daddr))
			return drop(DROP_FRAGMENT);
		return pass();
	}

	struct ct_key k = {};
	struct ct_entry *e = ct_reply(&k, &p, CT_REPLY, now);
	if (e && !(service_hook && (e->flags & CT_F_EGRESS))) {
		if ((r = unsupported(&p)))
			return drop(r);
		ct_update(&k, e, &p, cfg, now);
		if (revnat(skb, &p, e) < 0)
			return drop(DROP_REJECT_FAILED);
		count(M_REVNAT);
		return forward(skb, e);
	}
	/* Replies to the node's address from a pod: a hairpin flow's (back to the client, from the
	 * frontend), or a NodePort flow's masqueraded to a backend on this node, whose SNAT happened
	 * on the way to the pod (see nodeport.h) and is undone here. */
	e = service_hook ? ct_reply(&k, &p, CT_SNAT_IN, now) : ct_flow(&k, &p, CT_SNAT_OUT, now);
	if (e) {
		if ((r = unsupported(&p)))
			return drop(r);
		ct_update(&k, e, &p, cfg, now);
		if (e->flags & CT_F_HAIRPIN) {
			if (revnat(skb, &p, e) < 0)
				return drop(DROP_REJECT_FAILED);
			count(M_REVNAT);
			return bounce_or_drop(skb);
		}
		r = service_hook ? set_dst(skb, &p, e->nat_addr, e->nat_port)
				 : set_src(skb, &p, e->nat_addr, e->nat_port);
		if (r < 0)
			return drop(DROP_REJECT_FAILED);
		count(service_hook ? M_UNSNAT : M_SNAT);
		return TC_ACT_OK;
	}
	if (!service_hook)
		return pass();
	if (snat_orphan(skb, &p, cfg))
		return drop(DROP_CT_LOST);

	e = ct_flow(&k, &p, CT_SERVICE, now);
	if (e) {
		if ((r = unsupported(&p)))
			return drop(r);
		ct_update(&k, e, &p, cfg, now);
		snat_heal(&p, e);
		if (dnat(skb, &p, e) < 0)
			return drop(DROP_REJECT_FAILED);
		count(M_DNAT);
		return forward(skb, e);
	}

	/* a pod's entry for an external frontend first (externalTrafficPolicy Local), then the one
	 * everybody uses */
	struct svc_value *svc = svc_lookup_in(SCOPE_POD, p.daddr, p.dport, p.proto, 0);
	if (!svc)
		svc = svc_lookup(p.daddr, p.dport, p.proto, 0);
	if (!svc) {
		if (!is_vip(p.daddr)) {
			ct_release_reused(&p, now);
			return pass();
		}
		if ((r = unsupported(&p)))
			return drop(r);
		if (p.later)
			return drop(DROP_FRAGMENT);
		return reject(skb, &p, REJECT_PORT_UNSERVED);
	}
	if ((r = unsupported(&p)))
		return drop(r);
	if (p.later)                 /* a later fragment never starts a flow: it has no L4 header */
		return drop(DROP_FRAGMENT);
	return new_flow(skb, &p, svc, cfg, now);
}

int from_pod(struct __sk_buff *skb)
{
	return handle(skb, 1);
}

int to_pod(struct __sk_buff *skb)
{
	return handle(skb, 0);
}
