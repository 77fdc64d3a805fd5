/* NodePort, LoadBalancer and external IPs: external frontends, dispatched on the node uplink.
 * A new flow to node IP:nodePort (or an LB/external IP:port) is DNATed on ingress like a ClusterIP
 * flow; its reverse NAT (source back to the frontend, the node's own address) happens on egress
 * only (CT_F_EGRESS), since on ingress it would be a martian. With externalTrafficPolicy Cluster
 * (SVC_F_MASQ) the flow is also masqueraded to the node IP, with a port claimed as for egress
 * masquerade, so that replies come back through this node; the SNAT entries do it on egress
 * (to_netdev for a remote backend, to_pod for a local one) and undo it on ingress. */
#ifndef DP_NODEPORT_H
#define DP_NODEPORT_H

static __always_inline int nodeport_new_flow(struct __sk_buff *skb, struct pkt *p, struct svc_value *svc,
					     struct dp_config *cfg, __u64 now)
{
	if (svc->flags & SVC_F_SRC_RANGES) {
		struct lb_source_key sk = {};
		sk.prefixlen = 64;
		sk.svc_id = svc->svc_id;
		sk.addr = p->saddr;
		if (!lb_sources.lookup(&sk))
			return drop(DROP_SOURCE_RANGE);
	}
	if (p->proto == IPPROTO_TCP && !is_bare_syn(p))
		return drop(DROP_CT_INVALID);
	if (svc->count == 0) {
		if (svc->flags & SVC_F_LOCAL_ONLY)
			return drop(DROP_NO_LOCAL_ENDPOINT);
		return reject(skb, p, REJECT_NO_ENDPOINTS);
	}
	__u32 id = select_backend(p, svc, cfg->seed, now);
	struct backend *be = id ? backends.lookup(&id) : NULL;
	if (!be)
		return drop(DROP_NO_BACKEND);

	struct ct_entry fwd = {}, rev = {};
	struct ct_key fk = {}, rk = {};
	fwd.expires = rev.expires = now + ct_lifetime(cfg, p->proto, 0);
	fwd.nat_addr = be->addr;
	fwd.nat_port = be->port;
	fwd.flags = rev.flags = CT_F_EGRESS;
	fwd.backend_id = rev.backend_id = id;
	fwd.svc_id = rev.svc_id = svc->svc_id;
	rev.nat_addr = p->daddr;
	rev.nat_port = p->dport;
	ct_key_of(&fk, p, CT_SERVICE);
	rk.saddr = be->addr;
	rk.sport = be->port;
	rk.daddr = p->saddr;
	rk.dport = p->sport;
	rk.proto = p->proto;
	rk.dir = CT_REPLY;
	if (svc->flags & SVC_F_MASQ) {
		/* masquerade the flow as it will look after DNAT: client -> backend */
		struct pkt after = *p;
		after.daddr = be->addr;
		after.dport = be->port;
		__be16 port;
		if (snat_claim(&after, cfg, now, &port) < 0)
			return drop(DROP_SNAT_EXHAUSTED);
	}
	if (conntrack.update(&fk, &fwd) < 0 || conntrack.update(&rk, &rev) < 0) {
		conntrack.delete(&fk);
		return drop(DROP_CT_FULL);
	}
	if (dnat(skb, p, &fwd) < 0)
		return drop(DROP_REJECT_FAILED);
	count(M_DNAT_NEW);
	return TC_ACT_OK;
}

#endif
