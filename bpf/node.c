/* Entry points on each node's uplink (eth0, in the node's namespace).
 *
 *   to_netdev    egress: packets leaving the node. Egress masquerade: pod -> outside becomes
 *                node IP -> outside, with a port mapping per flow.
 *   from_netdev  ingress: packets arriving from the network. Replies to masqueraded flows (and
 *                ICMP errors about them) go back to their pod.
 *
 * Destinations are rewritten on ingress and sources on egress, as netfilter does (DNAT/un-SNAT
 * in PREROUTING, SNAT in POSTROUTING): routing in between never sees the node's own address as
 * a source arriving from outside. */
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
#include "nodeport.h"

int to_netdev(struct __sk_buff *skb)
{
	struct pkt p = {};
	struct dp_config *cfg;
	__u64 now;
	int r = begin(skb, &p, &cfg, &now);
	if (r >= 0)
		return r;
	/* errors the node itself sends about translated flows, and error sources that are the node's
	 * own address now */
	if (p.proto == IPPROTO_ICMP && is_icmp_error(p.icmp_type))
		return icmp_error_on_uplink(skb, &p, now, 1);
	if ((p.proto != IPPROTO_TCP && p.proto != IPPROTO_UDP) || !p.has_l4)
		return pass();

	/* replies of NodePort flows leave with the frontend as source */
	struct ct_key k = {};
	struct ct_entry *e = ct_reply(&k, &p, CT_REPLY, now);
	if (e && (e->flags & CT_F_EGRESS)) {
		if ((r = unsupported(&p)))
			return drop(r);
		ct_update(&k, e, &p, cfg, now);
		if (revnat(skb, &p, e) < 0)
			return drop(DROP_REJECT_FAILED);
		count(M_REVNAT);
		return TC_ACT_OK;
	}

	e = ct_flow(&k, &p, CT_SNAT_OUT, now);
	if (e) {
		if ((r = unsupported(&p)))
			return drop(r);
		ct_update(&k, e, &p, cfg, now);
		if (set_src(skb, &p, e->nat_addr, e->nat_port) < 0)
			return drop(DROP_REJECT_FAILED);
		count(M_SNAT);
		return TC_ACT_OK;
	}
	if (p.saddr == cfg->node_ip && is_vip(p.daddr)) {
		/* a node process's packet to a cluster IP its socket hook left alone: kube-proxy
		 * drops what has no local endpoint (internalTrafficPolicy Local) */
		struct svc_value *svc = svc_lookup(p.daddr, p.dport, p.proto, 0);
		if (svc && svc->count == 0 && (svc->flags & SVC_F_LOCAL_ONLY))
			return drop(DROP_NO_LOCAL_ENDPOINT);
	}
	if (!should_masquerade(cfg, &p, now))
		return pass();
	if ((r = unsupported(&p)))
		return drop(r);
	if (p.later)                 /* its first fragment found no mapping either */
		return drop(DROP_FRAGMENT);
	return snat_new(skb, &p, cfg, now);
}

int from_netdev(struct __sk_buff *skb)
{
	struct pkt p = {};
	struct dp_config *cfg;
	__u64 now;
	int r = begin(skb, &p, &cfg, &now);
	if (r >= 0)
		return r;

	if (p.proto == IPPROTO_ICMP && is_icmp_error(p.icmp_type))
		return icmp_error_on_uplink(skb, &p, now, 0);
	if ((p.proto != IPPROTO_TCP && p.proto != IPPROTO_UDP) || !p.has_l4)
		return pass();
	struct ct_key k = {};
	struct ct_entry *e = ct_reply(&k, &p, CT_SNAT_IN, now);
	if (e) {
		if ((r = unsupported(&p)))
			return drop(r);
		ct_update(&k, e, &p, cfg, now);
		if (set_dst(skb, &p, e->nat_addr, e->nat_port) < 0)
			return drop(DROP_REJECT_FAILED);
		count(M_UNSNAT);
		return TC_ACT_OK;
	}

	/* NodePort, LoadBalancer and external IPs */
	e = ct_flow(&k, &p, CT_SERVICE, now);
	if (e) {
		if ((r = unsupported(&p)))
			return drop(r);
		ct_update(&k, e, &p, cfg, now);
		snat_heal(&p, e);
		if (dnat(skb, &p, e) < 0)
			return drop(DROP_REJECT_FAILED);
		count(M_DNAT);
		return TC_ACT_OK;
	}
	struct svc_value *svc = svc_lookup(p.daddr, p.dport, p.proto, 0);
	if (svc || is_vip(p.daddr)) {
		if ((r = unsupported(&p)))
			return drop(r);
		if (p.later)
			return drop(DROP_FRAGMENT);
		if (!svc)
			return reject(skb, &p, REJECT_PORT_UNSERVED);
		return nodeport_new_flow(skb, &p, svc, cfg, now);
	}
	if (snat_orphan(skb, &p, cfg))
		return drop(DROP_CT_LOST);
	snat_note_inbound(cfg, &p, now);
	ct_release_reused(&p, now);
	return pass();
}
