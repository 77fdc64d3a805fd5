/* The node's address, lent to flows: egress masquerade (pods reaching outside), the masquerade of
 * external frontends with externalTrafficPolicy Cluster, and hairpin flows. Every tuple the node's
 * IP takes on a flow's behalf comes from one allocator, snat4_claim, and is the key of one
 * CT_SNAT_IN entry (remote:port -> node IP:port): claimed with BPF_NOEXIST, so two flows never
 * share one, and never one a socket of the node's own holds (a kubelet probe, a host-network
 * process: checked with a socket lookup in the node's namespace), with ports only from the
 * configured range, which lies outside the node's ip_local_port_range so that the kernel never
 * hands a node process a port a flow already uses (as netfilter's unique-tuple check and
 * Cilium's NAT range keep them apart). The flow's own port is kept when it is in the range and
 * free; otherwise up to SNAT_RETRIES ports of the range are tried, chosen by a seeded hash of the
 * flow and the attempt (replayable, predictable by the oracle). When every try fails the packet
 * is dropped and counted (DROP_SNAT_EXHAUSTED).
 *
 * Egress masquerade follows ip-masq-agent: a packet from a pod (source in the cluster CIDR) to a
 * destination outside the non-masquerade CIDRs (and outside 169.254.0.0/16 unless configured)
 * leaves with the node's IP. */
#ifndef DP_SNAT_H
#define DP_SNAT_H

#include <uapi/linux/bpf.h>
#include <uapi/linux/in.h>
#include <uapi/linux/pkt_cls.h>

#include "types.h"
#include "pinning.h"
#include "consts.h"
#include "map_sizes.h"
#include "metrics.h"
#include "verdict.h"
#include "parse.h"
#include "hash.h"
#include "conntrack.h"
#include "nat.h"
#include "trace.h"

/* UDP answers a pod owes to remotes that reached it: never masqueraded (no entry in conntrack).
 * */
DP_TABLE("lru_hash", struct ct_key, struct nosnat_value, nosnat, NOSNAT_MAP_SIZE, 0);

/* destinations pods reach without masquerade (ip-masq-agent's nonMasqueradeCIDRs) */
DP_TABLE("lpm_trie", struct lpm_v4_key, __u8, nonmasq, NONMASQ_MAP_SIZE, BPF_F_NO_PREALLOC);

#define LPM_V4_HOST_BITS 32          /* an lpm_v4_key that matches one address */

/* Would traffic from `pod` to `remote` be masqueraded? */
static __always_inline int __snat4_masq_pair(const struct dp_config *cfg, __be32 pod, __be32 remote)
{
	if (!cfg->masquerade || (pod & cfg->cluster_mask) != cfg->cluster_net)
		return 0;
	if (!cfg->masq_link_local && (remote & LINK_LOCAL_MASK) == LINK_LOCAL_NET)
		return 0;
	struct lpm_v4_key k = {};
	k.prefixlen = LPM_V4_HOST_BITS;
	k.addr = remote;
	return nonmasq.lookup(&k) == NULL;
}

/* A live answer marker (nosnat) for this tuple: the pod's UDP datagram answers one that came in. */
static __always_inline int __snat4_answers_inbound(const struct pkt *p, __u64 now)
{
	struct ct_key k = {};
	ct4_key_of(&k, p, CT_NO_SNAT);
	struct nosnat_value *v = nosnat.lookup(&k);
	if (!v)
		return 0;
	if (v->expires <= now) {     /* an expired marker is no marker */
		nosnat.delete(&k);
		return 0;
	}
	return 1;
}

/* Masquerade starts connections, as netfilter's nat table sees only a connection's first packet:
 * a TCP flow only with its SYN (so the replies of a connection someone else opened to a pod pass
 * untouched), a UDP flow with any datagram unless it answers one that came in. */
static __always_inline int snat4_should_masquerade(const struct dp_config *cfg, const struct pkt *p, __u64 now)
{
	if (!__snat4_masq_pair(cfg, p->saddr, p->daddr))
		return 0;
	if (p->proto == IPPROTO_TCP)
		return pkt4_bare_syn(p);
	return !__snat4_answers_inbound(p, now);
}

/* A UDP datagram from outside to a pod: remember, for the UDP lifetime, that the pod's answers
 * are replies. The markers live in a table of their own (nosnat), so that traffic needing no
 * translation can never take room from, or evict, the flows in conntrack. */
static __always_inline void snat4_note_inbound(const struct dp_config *cfg, const struct pkt *p, __u64 now)
{
	if (p->proto != IPPROTO_UDP || !__snat4_masq_pair(cfg, p->daddr, p->saddr))
		return;
	struct ct_key k = {};
	struct nosnat_value v = {};
	k.saddr = p->daddr;
	k.daddr = p->saddr;
	k.sport = p->dport;
	k.dport = p->sport;
	k.proto = p->proto;
	k.dir = CT_NO_SNAT;
	v.expires = now + ct4_lifetime(cfg, p->proto, 0);
	nosnat.update(&k, &v);
}

/* Does a socket of the node's own hold the tuple remote:rport <-> node IP:port (a connection, or
 * a listener on the port)? Looked up as the kernel would deliver remote -> node IP:port. */
static __always_inline int __snat4_socket_holds(struct __sk_buff *skb, __u8 proto, __be32 remote, __be16 rport,
						__be32 node_ip, __be16 port)
{
	struct bpf_sock_tuple t = {};
	struct bpf_sock *sk;
	t.ipv4.saddr = remote;
	t.ipv4.daddr = node_ip;
	t.ipv4.sport = rport;
	t.ipv4.dport = port;
	if (proto == IPPROTO_TCP)
		sk = (struct bpf_sock *)bpf_skc_lookup_tcp(skb, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
	else
		sk = bpf_sk_lookup_udp(skb, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return 0;
	bpf_sk_release(sk);
	return 1;
}

/* The port tried at `attempt`: 0 is the flow's own port `keep`, if it lies in the range (else no
 * port: 0); then hashed ports of the range. */
static __always_inline __be16 __snat4_candidate(const struct pkt *p, const struct dp_config *cfg, __u32 attempt,
						__be16 keep)
{
	if (attempt == 0) {
		__u16 k = bpf_ntohs(keep);
		return k >= cfg->snat_lo && k <= cfg->snat_hi ? keep : 0;
	}
	__u32 span = (__u32)cfg->snat_hi - cfg->snat_lo + 1;
	__u32 h = hash_mix32(hash_flow4(p, cfg->seed) ^ attempt);
	return bpf_htons(cfg->snat_lo + h % span);
}

/* The CT_SNAT_IN key of flow p's mapping to node_ip:port: the answer remote -> node IP:port. */
static __always_inline void __snat4_in_key(struct ct_key *ki, const struct pkt *p, __be32 node_ip, __be16 port)
{
	ki->saddr = p->daddr;
	ki->sport = p->dport;
	ki->daddr = node_ip;
	ki->dport = port;
	ki->proto = p->proto;
	ki->dir = CT_SNAT_IN;
	ki->pad0 = 0;
}

/* Claim node IP:port for flow p (source -> remote, as it leaves the node), whose replies come
 * from remote:rport (p's destination): insert `in` as its CT_SNAT_IN entry. `keep` is the port to
 * keep if it can be. 0 and *port_out on success; -DROP_SNAT_EXHAUSTED when no port is free. */
static __always_inline int snat4_claim(struct __sk_buff *skb, const struct pkt *p, const struct dp_config *cfg,
				       __u64 now, __be16 keep, struct ct_entry *in, __be16 *port_out)
{
	struct ct_key ki = {};
	__be16 port = 0;

	for (__u32 attempt = 0; attempt <= SNAT_RETRIES; attempt++) {
		port = __snat4_candidate(p, cfg, attempt, keep);
		if (!port)
			continue;
		__snat4_in_key(&ki, p, cfg->node_ip, port);
		struct ct_entry *held = ct4_get(&ki);
		if (held && held->expires <= now)
			ct4_remove(&ki);       /* a dead flow's mapping is free again */
		else if (held)
			continue;
		if (__snat4_socket_holds(skb, p->proto, p->daddr, p->dport, cfg->node_ip, port))
			continue;
		if (ct4_claim(&ki, in) == 0) {
			/* attempt 0 is a candidate only when the flow's own port is in the range */
			int own = __snat4_candidate(p, cfg, 0, keep) != 0;
			if (attempt && own)
				/* the flow's own port was in range, but taken */
				trace4_count(p, M_SNAT_PORT_MOVED);
			/* candidates tried before this one (no counter in the loop: the verifier could not
			 * merge its iterations' states) */
			trace4_note_snat(p, port, attempt - !own);
			*port_out = port;
			return 0;
		}
	}
	return -DROP_SNAT_EXHAUSTED;
}

/* A masquerade mapping for flow p (source -> remote as it leaves): its SNAT_IN entry, claimed,
 * and its SNAT_OUT entry (source -> remote -> node IP:port). 0 and *port_out, or
 * -DROP_SNAT_EXHAUSTED: no port free, or (counted the same) the SNAT_OUT entry refused. */
static __always_inline int __snat4_map(struct __sk_buff *skb, const struct pkt *p, const struct dp_config *cfg,
				     __u64 now, __be16 *port_out)
{
	struct ct_entry out = {}, in = {};
	struct ct_key ko = {};
	__be16 port;
	int ret;

	/* a mapping an earlier flow on this tuple left (closed, or flushed with its DNAT pair) goes
	 * first, with its own SNAT_IN: never two mappings for one flow, never a leftover that
	 * answers for the new one */
	ct4_key_of(&ko, p, CT_SNAT_OUT);
	struct ct_entry *old = ct4_get(&ko);
	if (old)
		ct4_delete(&ko, old);
	out.expires = in.expires = now + ct4_lifetime(cfg, p->proto, 0);
	in.nat_addr = p->saddr;
	in.nat_port = p->sport;
	ret = snat4_claim(skb, p, cfg, now, p->sport, &in, &port);
	if (IS_DROP(ret))
		return ret;
	out.nat_addr = cfg->node_ip;
	out.nat_port = port;
	ct4_key_of(&ko, p, CT_SNAT_OUT);
	if (ct4_store(&ko, &out) < 0) {
		struct ct_key ki = {};
		__snat4_in_key(&ki, p, cfg->node_ip, port);
		ct4_remove(&ki);
		return -DROP_SNAT_EXHAUSTED;
	}
	*port_out = port;
	return 0;
}

/* Flow p as it will look after DNAT to `be` (client -> backend): what a masquerade maps. */
static __always_inline void snat4_after_dnat(struct pkt *after, const struct pkt *p, const struct backend *be)
{
	*after = *p;
	after->daddr = be->addr;
	after->dport = be->port;
}

/* externalTrafficPolicy Cluster (SVC_F_MASQ), and off-cluster clients of a cluster IP: claim the
 * masquerade mapping of a new flow to a frontend as it will look after DNAT (client -> backend),
 * so that the backend's replies come back through this node. The SNAT entries rewrite on egress
 * (to_netdev for a remote backend, to_pod for a local one) and undo it on ingress. 0, or
 * -DROP_SNAT_EXHAUSTED. */
static __always_inline int snat4_map_after_dnat(struct __sk_buff *skb, const struct pkt *p,
						const struct backend *be, const struct dp_config *cfg, __u64 now,
						__be16 *port_out)
{
	struct pkt after;
	snat4_after_dnat(&after, p, be);
	return __snat4_map(skb, &after, cfg, now, port_out);
}

/* Undo snat4_map_after_dnat (the flow could not be stored after all). */
static __always_inline void snat4_unmap_after_dnat(const struct pkt *p, const struct backend *be)
{
	struct pkt after;
	struct ct_key ko = {};
	snat4_after_dnat(&after, p, be);
	ct4_key_of(&ko, &after, CT_SNAT_OUT);
	struct ct_entry *out = ct4_get(&ko);
	if (out)
		ct4_delete(&ko, out);
}

/* A packet of a flow masqueraded on its way (its SERVICE entry `e` holds the node IP:port in
 * snat_addr:snat_port): if the LRU table evicted the mapping's SNAT_OUT half, write the mapping
 * again, so that the flow keeps leaving as the node (its SNAT_IN half, if present, heals the
 * other way round in ct4_update). The SNAT_IN is only rewritten if its key is still free. */
static __always_inline void snat4_heal(const struct pkt *p, const struct ct_entry *e)
{
	if (!(e->flags & CT_F_EGRESS) || (e->flags & CT_F_HAIRPIN) || !e->snat_port)
		return;
	struct pkt after = *p;                       /* the flow as it leaves: to the backend */
	struct ct_key ko = {}, ki = {};
	after.daddr = e->nat_addr;
	after.dport = e->nat_port;
	ct4_key_of(&ko, &after, CT_SNAT_OUT);
	if (ct4_get(&ko))
		return;
	struct ct_entry out = {}, in = {};
	out.expires = in.expires = e->expires;
	out.flags = in.flags = e->flags & (CT_F_SEEN_REPLY | CT_F_FIN_ORIG | CT_F_FIN_REPLY | CT_F_RST);
	out.nat_addr = e->snat_addr;
	out.nat_port = e->snat_port;
	in.nat_addr = p->saddr;
	in.nat_port = p->sport;
	__snat4_in_key(&ki, &after, e->snat_addr, e->snat_port);
	struct ct_entry *held = ct4_get(&ki);
	if (held) {
		if (!ct4_peer_is_ours(&ko, &ki, held))
			return;                      /* the port went to another flow meanwhile */
	} else if (ct4_claim(&ki, &in) != 0) {
		return;
	}
	if (ct4_store(&ko, &out) == 0)
		trace4_count(p, M_CT_RESTORED);
}

/* A packet to the node's address on a NAT port that no mapping and no node socket holds: an
 * answer for a mapping the table lost. Dropped (DROP_CT_LOST) rather than given to the node's
 * stack, which would reset the sender's connection. */
static __always_inline int snat4_orphan(struct __sk_buff *skb, const struct pkt *p, const struct dp_config *cfg)
{
	if (p->daddr != cfg->node_ip || (p->proto != IPPROTO_TCP && p->proto != IPPROTO_UDP))
		return 0;
	__u16 port = bpf_ntohs(p->dport);
	if (port < cfg->snat_lo || port > cfg->snat_hi)
		return 0;
	return !__snat4_socket_holds(skb, p->proto, p->saddr, p->sport, cfg->node_ip, p->dport);
}

/* A new masqueraded flow: claim its mapping and translate its first packet. A stage. */
static __always_inline int snat4_new_flow(struct __sk_buff *skb, struct pkt *p, const struct dp_config *cfg,
					  __u64 now)
{
	__be16 port;
	int ret = __snat4_map(skb, p, cfg, now, &port);
	if (IS_DROP(ret))
		return ret;
	ret = nat4_set_src(skb, p, cfg->node_ip, port);
	if (IS_DROP(ret))
		return ret;
	trace4_count(p, M_SNAT_NEW);
	return TC_ACT_OK;
}

#endif
