/* A new flow to a service frontend (cluster IP, node port, LoadBalancer or external IP): the
 * rules before a backend is chosen, the choice, and the flow's conntrack pair. */
#ifndef DP_FLOW_H
#define DP_FLOW_H

/* The verdict that ends a new flow here, or -1 with *id and *be set to its backend. */
static __always_inline int flow_backend(struct __sk_buff *skb, struct pkt *p, struct svc_value *svc,
					struct dp_config *cfg, __u64 now, __u32 *id, struct backend **be)
{
	if (p->proto == IPPROTO_TCP && !is_bare_syn(p))
		return drop(DROP_CT_LOST);
	if (svc->flags & SVC_F_SRC_RANGES) {
		struct lb_source_key sk = {};
		sk.prefixlen = 64;
		sk.svc_id = svc->svc_id;
		sk.addr = p->saddr;
		if (!lb_sources.lookup(&sk))
			return drop(DROP_SOURCE_RANGE);
	}
	if (svc->count == 0) {
		if (svc->flags & SVC_F_LOCAL_ONLY)
			return drop(DROP_NO_LOCAL_ENDPOINT);
		return reject(skb, p, REJECT_NO_ENDPOINTS);
	}
	*id = select_backend(p, svc, cfg->seed, now);
	*be = *id ? backends.lookup(id) : NULL;
	if (!*be)
		return drop(DROP_NO_BACKEND);
	return -1;
}

/* The entries of a new flow, filled with what they share: `fwd` (SERVICE) translates to the
 * backend, `rev` (the reply's) back to the frontend. */
static __always_inline void flow_entries(const struct pkt *p, const struct svc_value *svc,
					 const struct dp_config *cfg, __u64 now, __u32 id,
					 const struct backend *be, struct ct_entry *fwd, struct ct_entry *rev)
{
	fwd->expires = rev->expires = now + ct_lifetime(cfg, p->proto, 0);
	fwd->nat_addr = be->addr;
	fwd->nat_port = be->port;
	fwd->backend_id = rev->backend_id = id;
	fwd->svc_id = rev->svc_id = svc->svc_id;
	rev->nat_addr = p->daddr;
	rev->nat_port = p->dport;
}

/* Store a new flow: `fwd` keyed by the packet as sent, and (rev not NULL) `rev` keyed by the
 * backend's reply to the client. 0, or -1 if the table refused them. */
static __always_inline int flow_store(const struct pkt *p, const struct backend *be, struct ct_entry *fwd,
				      struct ct_entry *rev)
{
	struct ct_key fk = {}, rk = {};
	ct_key_of(&fk, p, CT_SERVICE);
	if (conntrack.update(&fk, fwd) < 0)
		return -1;
	if (!rev)
		return 0;
	rk.saddr = be->addr;
	rk.sport = be->port;
	rk.daddr = p->saddr;
	rk.dport = p->sport;
	rk.proto = p->proto;
	rk.dir = CT_REPLY;
	if (conntrack.update(&rk, rev) < 0) {
		conntrack.delete(&fk);
		return -1;
	}
	return 0;
}

#endif
