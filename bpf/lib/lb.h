/* Load balancing: service lookup and backend choice. Which endpoints are eligible (ready,
 * terminating fallback, internalTrafficPolicy) was decided in user space for this node; here the
 * choice among them is a seeded hash of the flow, so a run can be replayed, and session affinity. */
#ifndef DP_LB_H
#define DP_LB_H

static __always_inline struct svc_value *svc_lookup_in(__u8 scope, __be32 vip, __be16 port, __u8 proto,
						       __u16 slot)
{
	struct svc_key k = {};
	k.vip = vip;
	k.port = port;
	k.proto = proto;
	k.scope = scope;
	k.slot = slot;
	return services.lookup(&k);
}

static __always_inline struct svc_value *svc_lookup(__be32 vip, __be16 port, __u8 proto, __u16 slot)
{
	return svc_lookup_in(SCOPE_EXTERNAL, vip, port, proto, slot);
}

static __always_inline int is_vip(__be32 addr)
{
	return svc_lookup(addr, 0, 0, 0) != NULL;
}

/* murmur3's finalizer: every input bit moves every output bit. */
static __always_inline __u32 mix32(__u32 h)
{
	h ^= h >> 16;
	h *= 0x85ebca6b;
	h ^= h >> 13;
	h *= 0xc2b2ae35;
	h ^= h >> 16;
	return h;
}

/* Hash of the flow's tuple as its bytes sit in the packet (read as little-endian words). */
static __always_inline __u32 flow_hash(const struct pkt *p, __u32 seed)
{
	__u32 h = mix32(seed ^ p->saddr);
	h = mix32(h ^ p->daddr);
	h = mix32(h ^ ((__u32)p->sport | ((__u32)p->dport << 16)));
	return mix32(h ^ p->proto);
}

/* Is this backend one of the service port's eligible backends now? */
static __always_inline int affinity_eligible(__u32 svc_id, __u32 backend_id)
{
	struct affinity_match_key mk = {};
	mk.svc_id = svc_id;
	mk.backend_id = backend_id;
	return affinity_match.lookup(&mk) != NULL;
}

/* Choose a backend for a service port: with affinity, the client's remembered backend if it was
 * used within the timeout and is still eligible here, else (and always without affinity) the
 * slot `hash` picks; with affinity the choice is remembered. Returns the backend id, 0 if none.
 * For packets (select_backend) and sockets (socklb.h) alike. */
static __always_inline __u32 lb_choose(const struct svc_value *svc, __be32 client, __u32 hash, __be32 vip,
					__be16 port, __u8 proto, __u64 now)
{
	__u32 id = 0;
	struct affinity_key ak = {};
	struct affinity_value *av = NULL;

	if (svc->flags & SVC_F_AFFINITY) {
		ak.client = client;
		ak.svc_id = svc->svc_id;
		av = affinity.lookup(&ak);
		if (av && now - av->last_used <= (__u64)svc->affinity_timeout * NS_PER_SEC &&
		    affinity_eligible(svc->svc_id, av->backend_id)) {
			id = av->backend_id;
			count(M_AFFINITY_HIT);
		}
	}
	if (!id) {
		__u16 slot = (hash % svc->count) + 1;
		__u8 scope = (svc->flags & SVC_F_POD_SCOPE) ? SCOPE_POD : SCOPE_EXTERNAL;
		struct svc_value *s = svc_lookup_in(scope, vip, port, proto, slot);
		if (!s)
			return 0;
		id = s->backend_id;
	}
	if (svc->flags & SVC_F_AFFINITY) {
		struct affinity_value nv = {};
		nv.last_used = now;
		nv.backend_id = id;
		affinity.update(&ak, &nv);
	}
	return id;
}

/* A new flow's backend: the flow hash of its packet chooses, the client's address is remembered. */
static __always_inline __u32 select_backend(const struct pkt *p, const struct svc_value *svc,
					    __u32 seed, __u64 now)
{
	return lb_choose(svc, p->saddr, flow_hash(p, seed), p->daddr, p->dport, p->proto, now);
}

#endif
