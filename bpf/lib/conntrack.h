/* Conntrack: two entries per flow, one per direction, each keyed by the tuple its packets carry
 * at the hook (CT_SERVICE: client -> VIP as sent; CT_REPLY: backend -> client as received;
 * CT_SNAT_OUT / CT_SNAT_IN: the two sides of a node-IP mapping, see snat.h; a hairpin flow pairs
 * CT_SERVICE with the CT_SNAT_IN entry of its mapping). Both entries share the flow's state and
 * lifetime: every packet updates both. */
#ifndef DP_CONNTRACK_H
#define DP_CONNTRACK_H

#include <uapi/linux/in.h>

#include "types.h"
#include "pinning.h"
#include "consts.h"
#include "map_sizes.h"
#include "metrics.h"
#include "parse.h"
#include "trace.h"

/* flows: (5-tuple, direction) -> translation; LRU so a full table evicts the oldest */
DP_TABLE("lru_hash", struct ct_key, struct ct_entry, conntrack, CT_MAP_SIZE, 0);

/* The map's operations, for the headers that store flows (newflow.h) and node-IP mappings
 * (snat.h): an entry or NULL; 0 or the map's negative error (ct4_claim: only if the key is free,
 * BPF_NOEXIST). */
static __always_inline struct ct_entry *ct4_get(struct ct_key *k)
{
	return conntrack.lookup(k);
}

static __always_inline int ct4_store(struct ct_key *k, struct ct_entry *e)
{
	return conntrack.update(k, e);
}

static __always_inline int ct4_claim(struct ct_key *k, struct ct_entry *e)
{
	return conntrack.insert(k, e);
}

static __always_inline void ct4_remove(struct ct_key *k)
{
	conntrack.delete(k);
}

static __always_inline void ct4_key_of(struct ct_key *k, const struct pkt *p, __u8 dir)
{
	k->saddr = p->saddr;
	k->daddr = p->daddr;
	k->sport = p->sport;
	k->dport = p->dport;
	k->proto = p->proto;
	k->dir = dir;
	k->pad0 = 0;
}

/* The other direction's key, from an entry and its own key. */
static __always_inline void ct4_peer_key(struct ct_key *peer, const struct ct_key *k, const struct ct_entry *e)
{
	peer->proto = k->proto;
	peer->pad0 = 0;
	if (k->dir == CT_SERVICE && (e->flags & CT_F_HAIRPIN)) {
		/* client -> VIP; peer: backend (the client itself) -> node IP:port, its mapping */
		peer->saddr = e->nat_addr;
		peer->sport = e->nat_port;
		peer->daddr = e->snat_addr;
		peer->dport = e->snat_port;
		peer->dir = CT_SNAT_IN;
	} else if (k->dir == CT_SNAT_IN && (e->flags & CT_F_HAIRPIN)) {
		/* backend -> node IP:port; peer: the client -> VIP it holds */
		peer->saddr = e->snat_addr;
		peer->sport = e->snat_port;
		peer->daddr = e->nat_addr;
		peer->dport = e->nat_port;
		peer->dir = CT_SERVICE;
	} else if (k->dir == CT_SNAT_OUT || k->dir == CT_SNAT_IN) {
		/* OUT pod -> remote holds the node IP:port; IN remote -> node IP:port holds the pod */
		peer->saddr = k->daddr;
		peer->sport = k->dport;
		peer->daddr = e->nat_addr;
		peer->dport = e->nat_port;
		peer->dir = k->dir == CT_SNAT_OUT ? CT_SNAT_IN : CT_SNAT_OUT;
		if (k->dir == CT_SNAT_IN) {   /* OUT's key is pod -> remote */
			peer->saddr = e->nat_addr;
			peer->sport = e->nat_port;
			peer->daddr = k->saddr;
			peer->dport = k->sport;
		}
	} else if (k->dir == CT_SERVICE) {          /* client -> VIP; peer: backend -> client */
		peer->saddr = e->nat_addr;
		peer->sport = e->nat_port;
		peer->daddr = k->saddr;
		peer->dport = k->sport;
		peer->dir = CT_REPLY;
	} else {                             /* backend -> client; peer: client -> VIP */
		peer->saddr = k->daddr;
		peer->sport = k->dport;
		peer->daddr = e->nat_addr;
		peer->dport = e->nat_port;
		peer->dir = CT_SERVICE;
	}
}

/* CT_REPLY and CT_SNAT_IN entries are keyed by what the far end of a flow sends back. */
static __always_inline int __ct4_is_reply_dir(__u8 dir)
{
	return dir == CT_REPLY || dir == CT_SNAT_IN;
}

/* A TCP flow is over once both directions sent their FIN, or either sent a RST. */
static __always_inline int __ct4_closed(__u16 flags)
{
	return (flags & CT_F_RST) || (flags & CT_F_CLOSED_BOTH) == CT_F_CLOSED_BOTH;
}

/* The flow's state after this packet, travelling in direction `dir`. */
static __always_inline __u16 __ct4_next_flags(__u16 flags, const struct pkt *p, __u8 dir)
{
	if (p->proto != IPPROTO_TCP)
		return flags;
	int reply = __ct4_is_reply_dir(dir);
	if (p->tcp_flags & TCP_FLAG_RST)
		return flags | CT_F_RST;
	if (reply)
		flags |= CT_F_SEEN_REPLY;
	if (p->tcp_flags & TCP_FLAG_FIN)
		flags |= reply ? CT_F_FIN_REPLY : CT_F_FIN_ORIG;
	return flags;
}

/* Closed: the close lifetime. Never answered: the SYN lifetime. Half-closed (one FIN): the
 * close-wait lifetime, as long as the other side may still be sending. Else established. */
static __always_inline __u64 ct4_lifetime(const struct dp_config *cfg, __u8 proto, __u16 flags)
{
	__u32 s;
	if (proto != IPPROTO_TCP)
		s = cfg->ct_udp;
	else if (__ct4_closed(flags))
		s = cfg->ct_close;
	else if (!(flags & CT_F_SEEN_REPLY))
		s = cfg->ct_syn;
	else if (flags & CT_F_CLOSED_BOTH)
		s = cfg->ct_close_wait;
	else
		s = cfg->ct_tcp;
	return (__u64)s * NS_PER_SEC;
}

/* The live entry for a key, or NULL; an expired entry is removed and not returned. */
static __always_inline struct ct_entry *ct4_lookup(struct ct_key *k, __u64 now)
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

/* The other direction's entry, rebuilt from an entry and its own key: every field of a pair is
 * known to either half (see struct ct_entry). */
static __always_inline void __ct4_peer_entry(struct ct_entry *pe, const struct ct_key *k, const struct ct_entry *e)
{
	pe->expires = e->expires;
	pe->flags = e->flags;
	pe->backend_id = e->backend_id;
	pe->svc_id = e->svc_id;
	if (k->dir == CT_SERVICE || (k->dir == CT_SNAT_IN && !(e->flags & CT_F_HAIRPIN))) {
		/* -> REPLY (the frontend to restore), hairpin SNAT_IN (+ the client), or SNAT_OUT (the
		 * node IP:port): what this key's destination was */
		pe->nat_addr = k->daddr;
		pe->nat_port = k->dport;
		if (e->flags & CT_F_HAIRPIN) {
			pe->snat_addr = k->saddr;
			pe->snat_port = k->sport;
		}
	} else {
		/* REPLY, hairpin SNAT_IN -> SERVICE (the backend; hairpin: + the node IP:port), or
		 * SNAT_OUT -> SNAT_IN (the pod): what this key's source was */
		pe->nat_addr = k->saddr;
		pe->nat_port = k->sport;
		if (e->flags & CT_F_HAIRPIN) {
			pe->snat_addr = k->daddr;
			pe->snat_port = k->dport;
		}
	}
}

/* Is the entry found at the peer key really this flow's other half: does its own peer key lead
 * back here? (Not when the key was reused: an old flow's leftover half, or a tuple a newer flow
 * took after this one's half was evicted.) */
static __always_inline int ct4_peer_is_ours(const struct ct_key *k, const struct ct_key *pk,
					    const struct ct_entry *peer)
{
	struct ct_key back = {};
	ct4_peer_key(&back, pk, peer);
	return back.saddr == k->saddr && back.daddr == k->daddr && back.sport == k->sport &&
	       back.dport == k->dport && back.dir == k->dir;
}

/* A packet of the flow passed in direction k->dir: advance the state of both entries. A missing
 * other half (the LRU table evicted it under pressure) is written again, so that a flow a full
 * table split in two heals on its next packet instead of leaking untranslated packets; only if
 * its key is still free, so that a healed half never takes a tuple another flow holds now. */
static __always_inline void ct4_update(struct ct_key *k, struct ct_entry *e, const struct pkt *p,
				       const struct dp_config *cfg, __u64 now)
{
	struct ct_key pk = {};
	__u16 flags = __ct4_next_flags(e->flags, p, k->dir);
	__u64 expires = now + ct4_lifetime(cfg, p->proto, flags);

	e->flags = flags;
	e->expires = expires;
	ct4_peer_key(&pk, k, e);
	struct ct_entry *peer = conntrack.lookup(&pk);
	if (peer) {
		if (ct4_peer_is_ours(k, &pk, peer)) {
			peer->flags = flags;
			peer->expires = expires;
		}
		return;
	}
	struct ct_entry pe = {};
	__ct4_peer_entry(&pe, k, e);
	if (conntrack.insert(&pk, &pe) == 0)
		trace4_count(p, M_CT_RESTORED);
}

/* Forget a flow: this entry and its other half (if it is this flow's). */
static __always_inline void ct4_delete(struct ct_key *k, struct ct_entry *e)
{
	struct ct_key pk = {};
	ct4_peer_key(&pk, k, e);
	struct ct_entry *peer = conntrack.lookup(&pk);
	if (peer && ct4_peer_is_ours(k, &pk, peer))
		conntrack.delete(&pk);
	conntrack.delete(k);
}

/* The live entry of the flow this packet starts or continues in direction `dir` (a flow's
 * original direction: CT_SERVICE or CT_SNAT_OUT), or NULL. A bare SYN on the tuple of a closed
 * flow ends that flow: a new connection gets a fresh backend or mapping (netfilter reopens a
 * connection in TIME_WAIT or CLOSE the same way). */
static __always_inline struct ct_entry *ct4_lookup_flow(struct ct_key *k, const struct pkt *p, __u8 dir,
							__u64 now)
{
	ct4_key_of(k, p, dir);
	struct ct_entry *e = ct4_lookup(k, now);
	if (e && __ct4_closed(e->flags) && pkt4_bare_syn(p)) {
		ct4_delete(k, e);
		return NULL;
	}
	return e;
}

/* The live entry of the flow this packet answers, in reply direction `dir` (CT_REPLY or
 * CT_SNAT_IN), or NULL. A reply never opens a connection, so a bare SYN matches no reply entry;
 * and a SYN-ACK on the tuple of a closed flow answers a new connection that reuses the tuple
 * (the same client port, now straight to the backend): the old flow is forgotten, and the new
 * connection is not translated by another flow's entry. */
static __always_inline struct ct_entry *ct4_lookup_reply(struct ct_key *k, const struct pkt *p, __u8 dir,
							 __u64 now)
{
	ct4_key_of(k, p, dir);
	if (pkt4_bare_syn(p))
		return NULL;
	struct ct_entry *e = ct4_lookup(k, now);
	if (e && __ct4_closed(e->flags) && pkt4_syn_ack(p)) {
		ct4_delete(k, e);
		return NULL;
	}
	return e;
}

/* A bare SYN that no flow of ours handles (a connection straight to a pod or host) whose reply
 * tuple is still held by the CT_REPLY entry of a closed flow (the client reuses a port it last
 * used toward a frontend): forget that flow, so that its entry cannot rewrite the new
 * connection's answers. */
static __always_inline void ct4_release_reused(const struct pkt *p, __u64 now)
{
	if (!pkt4_bare_syn(p))
		return;
	struct ct_key k = {};
	k.saddr = p->daddr;
	k.daddr = p->saddr;
	k.sport = p->dport;
	k.dport = p->sport;
	k.proto = p->proto;
	k.dir = CT_REPLY;
	struct ct_entry *e = ct4_lookup(&k, now);
	if (e && __ct4_closed(e->flags))
		ct4_delete(&k, e);
}

#endif
