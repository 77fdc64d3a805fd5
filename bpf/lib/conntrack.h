/* Conntrack: two entries per flow, one per direction, each keyed by the tuple its packets carry
 * at the hook (CT_SERVICE: client -> VIP as sent; CT_REPLY: backend -> client as received). */
#ifndef DP_CONNTRACK_H
#define DP_CONNTRACK_H

static __always_inline void ct_key_of(struct ct_key *k, const struct pkt *p, __u8 dir)
{
	k->saddr = p->saddr;
	k->daddr = p->daddr;
	k->sport = p->sport;
	k->dport = p->dport;
	k->proto = p->proto;
	k->dir = dir;
	k->pad0 = 0;
}

/* How long an entry lives after this packet: a TCP flow still opening (a bare SYN) gets a
 * short lifetime, any other TCP packet the established one. */
static __always_inline __u64 ct_lifetime(__u8 proto, __u8 tcp_flags)
{
	if (proto != IPPROTO_TCP)
		return CT_LIFETIME_UDP;
	if ((tcp_flags & TCP_FLAG_SYN) && !(tcp_flags & TCP_FLAG_ACK))
		return CT_LIFETIME_SYN;
	return CT_LIFETIME_TCP;
}

/* The live entry for a key, or NULL; an expired entry is removed and not returned. */
static __always_inline struct ct_entry *ct_lookup(struct ct_key *k, __u64 now)
{
	struct ct_entry *e = conntrack.lookup(k);
	if (!e)
		return NULL;
	if (e->expires <= now) {
		conntrack.delete(k);
		return NULL;
	}
	return e;
}

static __always_inline void ct_refresh(struct ct_entry *e, const struct pkt *p, __u64 now)
{
	e->expires = now + ct_lifetime(p->proto, p->tcp_flags);
}

#endif
