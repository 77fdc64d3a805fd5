/* NodePort, LoadBalancer and external IPs: external frontends, dispatched on the node uplink
 * (and cluster IPs, for clients outside the cluster whose network routes them to a node).
 * A new flow to node IP:nodePort (or an LB/external IP:port) is DNATed on ingress like a ClusterIP
 * flow; its reverse NAT (source back to the frontend, the node's own address) happens on egress
 * only (CT_F_EGRESS), since on ingress it would be a martian. With externalTrafficPolicy Cluster
 * (SVC_F_MASQ) the flow is also masqueraded to the node IP, with a port claimed as for egress
 * masquerade, so that replies come back through this node; the SNAT entries do it on egress
 * (to_netdev for a remote backend, to_pod for a local one) and undo it on ingress. */
#ifndef DP_NODEPORT_H
#define DP_NODEPORT_H

/* Is a new flow arriving on the uplink masqueraded to the node on its way to the backend? As
 * kube-proxy marks them: for an external frontend with externalTrafficPolicy Cluster (KUBE-EXT),
 * and for a client outside the cluster CIDR reaching a cluster IP (`! -s clusterCIDR` in
 * KUBE-SVC), whose backend's replies must come back through this node. */
static __always_inline int nodeport_masquerade(const struct dp_config *cfg, const struct pkt *p,
					       const struct svc_value *svc)
{
	if (svc->flags & SVC_F_MASQ)
		return 1;
	return (p->saddr & cfg->cluster_mask) != cfg->cluster_net && is_vip(p->daddr);
}

static __always_inline int nodeport_new_flow(struct __sk_buff *skb, struct pkt *p, struct svc_value *svc,
					     struct dp_config *cfg, __u64 now)
{
	__u32 id;
	struct backend *be;
	int verdict = flow_backend(skb, p, svc, cfg, now, &id, &be);
	if (verdict >= 0)
		return verdict;
	struct ct_entry fwd = {}, rev = {};
	flow_entries(p, svc, cfg, now, id, be, &fwd, &rev);
	fwd.flags = rev.flags = CT_F_EGRESS;
	int masq = nodeport_masquerade(cfg, p, svc);
	if (masq) {
		__be16 port;
		if (snat_map_after_dnat(skb, p, be, cfg, now, &port) < 0)
			return drop(DROP_SNAT_EXHAUSTED);
		fwd.snat_addr = cfg->node_ip;    /* the mapping, to heal it should the table lose it */
		fwd.snat_port = port;
	}
	if (flow_store(p, be, &fwd, &rev) < 0) {
		if (masq)
			snat_unmap_after_dnat(p, be);
		return drop(DROP_CT_FULL);
	}
	if (dnat(skb, p, &fwd) < 0)
		return drop(DROP_REJECT_FAILED);
	count(M_DNAT_NEW);
	return TC_ACT_OK;
}

#endif
