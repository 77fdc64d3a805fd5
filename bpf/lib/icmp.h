/* ICMP errors about translated flows, as netfilter treats RELATED packets: the error quotes a
 * packet as it was after our translation; it must reach the one who sent that packet, quoting
 * what that one really sent. One routine serves every flow kind (ClusterIP, NodePort,
 * LoadBalancer and external IPs, masquerade, hairpin) in both directions:
 *
 *   forward  the quote is a packet toward a backend or a remote (client -> backend, node IP:port
 *            -> remote): a port unreachable from the backend, a fragmentation-needed from a
 *            router on the way. Found by the quote's reply tuple: CT_SNAT_IN (the masquerade is
 *            undone: source back to the client, who is also the new outer destination), then
 *            CT_REPLY (the DNAT is undone: destination back to the frontend).
 *   reverse  the quote is a translated reply toward a client (frontend -> client, remote -> pod):
 *            path MTU errors for a backend's answers, say. Found by the quote's own reversed
 *            tuple in the original direction: CT_SERVICE (source back to the backend, who is the
 *            new outer destination; with a masquerade, CT_SNAT_OUT gives the node IP:port the
 *            backend really sent to), or CT_SNAT_OUT (destination back to node IP:port).
 *
 * The quote (inner IPv4 header without options + 8 bytes of TCP/UDP) gets its addresses, ports,
 * inner IP checksum, inner UDP checksum (0 stays 0) and the ICMP checksum fixed. The outer
 * destination follows the quote at any hook, so the error is routed to its real recipient. The
 * outer source becomes the frontend when the error came from the backend itself; when that
 * source is the node's own address (node ports, masquerade: a martian on ingress) it is written
 * on egress, by icmp_error_source. An error that quotes nothing of ours passes untouched. */
#ifndef DP_ICMP_H
#define DP_ICMP_H

#define ICMP_CSUM_OFF  (L4_OFF + 2)
#define INNER_IP_OFF   (L4_OFF + 8)
#define QUOTE_LEN      28   /* inner IPv4 header (no options) + the 8 bytes of L4 RFC 792 requires */

static __always_inline int is_icmp_error(__u8 type)
{
	return type == ICMP_DEST_UNREACH || type == ICMP_TIME_EXCEEDED || type == ICMP_PARAMETERPROB ||
	       type == ICMP_SOURCE_QUENCH;
}

/* The quoted packet's addresses and ports (network order), as read or as they become. */
struct quote {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8   proto;
};

/* Write back a rewritten ICMP quote: `new_words` is `quote_words` with addresses and ports
 * changed, `l4delta` the RFC 1624 sum of those changes. Recomputes the inner IP checksum,
 * updates the inner UDP checksum (0, "none", stays 0), and the ICMP checksum over both. */
static __always_inline int icmp_quote_commit(struct __sk_buff *skb, __u32 *quote_words, __u32 *new_words,
					     __u32 l4delta)
{
	__u8 *n = (__u8 *)new_words;
	struct iphdr *inner = (struct iphdr *)n;
	inner->check = 0;
	inner->check = csum_fold(bpf_csum_diff(0, 0, new_words, 20, 0));
	if (inner->protocol == IPPROTO_UDP) {
		__u16 uc;
		__builtin_memcpy(&uc, n + 26, 2);
		if (uc) {
			uc = csum_update(uc, l4delta);
			if (!uc)
				uc = 0xffff;
			__builtin_memcpy(n + 26, &uc, 2);
		}
	}
	__s64 diff = bpf_csum_diff(quote_words, QUOTE_LEN, new_words, QUOTE_LEN, 0);
	if (diff < 0 || bpf_l4_csum_replace(skb, ICMP_CSUM_OFF, 0, diff, 0) < 0 ||
	    bpf_skb_store_bytes(skb, INNER_IP_OFF, new_words, QUOTE_LEN, 0) < 0)
		return -1;
	return 0;
}

/* Read the quote of an ICMP error: 0 with q filled and the raw words, -1 if it is not one we can
 * translate (options outside or inside, not TCP/UDP, shorter than header + 8). */
static __always_inline int icmp_quote_read(struct __sk_buff *skb, const struct pkt *p, __u32 *words,
					   struct quote *q)
{
	__u8 *b = (__u8 *)words;
	struct iphdr *inner = (struct iphdr *)b;
	if (p->options || bpf_skb_load_bytes(skb, INNER_IP_OFF, words, QUOTE_LEN) < 0)
		return -1;
	if (inner->version != 4 || inner->ihl != 5 ||
	    (inner->protocol != IPPROTO_TCP && inner->protocol != IPPROTO_UDP))
		return -1;
	if (bpf_ntohs(inner->frag_off) & IP_OFFMASK)
		return -1;                  /* a later fragment quoted: no ports in its first 8 bytes */
	q->saddr = inner->saddr;
	q->daddr = inner->daddr;
	__builtin_memcpy(&q->sport, b + 20, 2);
	__builtin_memcpy(&q->dport, b + 22, 2);
	q->proto = inner->protocol;
	return 0;
}

/* The live entry keyed by the quote's own tuple (reversed 0) or by its reply's (reversed 1), in
 * table `dir`. */
static __always_inline struct ct_entry *icmp_lookup(const struct quote *q, int reversed, __u8 dir, __u64 now)
{
	struct ct_key k = {};
	k.saddr = reversed ? q->daddr : q->saddr;
	k.daddr = reversed ? q->saddr : q->daddr;
	k.sport = reversed ? q->dport : q->sport;
	k.dport = reversed ? q->sport : q->dport;
	k.proto = q->proto;
	k.dir = dir;
	return ct_lookup(&k, now);
}

/* Replace the outer source or destination (IP checksum only: ICMP has no pseudo-header). */
static __always_inline int icmp_set_outer(struct __sk_buff *skb, __u32 off, __be32 old, __be32 new)
{
	if (old == new)
		return 0;
	if (bpf_l3_csum_replace(skb, IP_CSUM_OFF, old, new, 4) < 0 ||
	    bpf_skb_store_bytes(skb, off, &new, 4, 0) < 0)
		return -1;
	return 0;
}

/* Translate an ICMP error about one of our flows (see above). 1 if translated, 2 if translated
 * and to be bounced back to the pod it came from (a hairpin flow's), 0 if not ours, -1 on
 * failure. */
static __always_inline int icmp_error_translate(struct __sk_buff *skb, const struct pkt *p, __u64 now)
{
	__u32 quote_words[QUOTE_LEN / 4];
	__u32 new_words[QUOTE_LEN / 4];
	struct quote q = {}, n = {};
	struct ct_entry *e;
	__be32 osrc = p->saddr, odst = p->daddr;
	int found = 0, bounce = 0;

	if (icmp_quote_read(skb, p, quote_words, &q) < 0)
		return 0;
	n = q;
	/* forward: the masquerade of the quoted packet, then its DNAT */
	e = icmp_lookup(&n, 1, CT_SNAT_IN, now);
	if (e && (e->flags & CT_F_HAIRPIN)) {
		/* node IP:port -> the client pod itself: the client -> VIP:port it sent */
		if (osrc == n.daddr)
			osrc = e->nat_addr;
		n.saddr = e->snat_addr;
		n.sport = e->snat_port;
		n.daddr = e->nat_addr;
		n.dport = e->nat_port;
		odst = e->snat_addr;
		found = bounce = 1;
	} else if (e) {
		n.saddr = e->nat_addr;
		n.sport = e->nat_port;
		odst = e->nat_addr;
		found = 1;
	}
	if (!bounce) {
		e = icmp_lookup(&n, 1, CT_REPLY, now);
		if (e) {
			if (osrc == n.daddr && !(e->flags & CT_F_EGRESS))
				osrc = e->nat_addr;     /* from the backend itself: from the frontend */
			n.daddr = e->nat_addr;
			n.dport = e->nat_port;
			found = 1;
		}
	}
	/* reverse: a translated reply, back to what its sender sent */
	if (!found) {
		e = icmp_lookup(&n, 1, CT_SERVICE, now);
		if (e && !(e->flags & CT_F_HAIRPIN)) {
			struct quote m = {};
			m.saddr = n.daddr;          /* the flow's masquerade: client -> backend */
			m.sport = n.dport;
			m.daddr = e->nat_addr;
			m.dport = e->nat_port;
			m.proto = n.proto;
			n.saddr = e->nat_addr;
			n.sport = e->nat_port;
			odst = e->nat_addr;
			found = 1;
			struct ct_entry *o = icmp_lookup(&m, 0, CT_SNAT_OUT, now);
			if (o) {
				n.daddr = o->nat_addr;
				n.dport = o->nat_port;
			}
		} else {
			e = icmp_lookup(&n, 1, CT_SNAT_OUT, now);
			if (e) {
				n.daddr = e->nat_addr;
				n.dport = e->nat_port;
				found = 1;
			}
		}
	}
	if (!found)
		return 0;

	__u8 *b = (__u8 *)new_words;
	struct iphdr *inner = (struct iphdr *)b;
	__builtin_memcpy(new_words, quote_words, QUOTE_LEN);
	__u32 l4delta = csum_delta4(q.saddr, n.saddr) + csum_delta4(q.daddr, n.daddr) +
			csum_delta2(q.sport, n.sport) + csum_delta2(q.dport, n.dport);
	inner->saddr = n.saddr;
	inner->daddr = n.daddr;
	__builtin_memcpy(b + 20, &n.sport, 2);
	__builtin_memcpy(b + 22, &n.dport, 2);
	if (icmp_quote_commit(skb, quote_words, new_words, l4delta) < 0 ||
	    icmp_set_outer(skb, IP_SRC_OFF, p->saddr, osrc) < 0 ||
	    icmp_set_outer(skb, IP_DST_OFF, p->daddr, odst) < 0)
		return -1;
	return bounce ? 2 : 1;
}

/* On egress hooks, after icmp_error_translate: the outer source of an error about a flow whose
 * frontend (or masquerade address) is the node's own address, when the error came from the
 * translated end itself — written here, where the node's address is no martian. The quote is
 * as the error's recipient sent it: client -> frontend (the error came from the backend), or
 * remote -> node IP:port (it came from the pod or client behind the mapping). 1 if rewritten,
 * 0 if not, -1 on failure. */
static __always_inline int icmp_error_source(struct __sk_buff *skb, const struct pkt *p, __u64 now)
{
	__u32 quote_words[QUOTE_LEN / 4];
	struct quote q = {};
	if (icmp_quote_read(skb, p, quote_words, &q) < 0)
		return 0;
	__be32 osrc;
	if (bpf_skb_load_bytes(skb, IP_SRC_OFF, &osrc, 4) < 0)
		return 0;
	struct ct_entry *e = icmp_lookup(&q, 0, CT_SERVICE, now);
	if (!e || (e->flags & CT_F_HAIRPIN)) {
		e = icmp_lookup(&q, 0, CT_SNAT_IN, now);
		if (e && (e->flags & CT_F_HAIRPIN))
			e = NULL;
	}
	if (!e || osrc != e->nat_addr)
		return 0;
	return icmp_set_outer(skb, IP_SRC_OFF, osrc, q.daddr) < 0 ? -1 : 1;
}

/* An ICMP error at a hook: translated if it is about one of our flows (and, on egress hooks, its
 * source). 0 not ours, 1 translated, 2 translated and to be bounced back to its pod, -1 on
 * failure. */
static __always_inline int icmp_error(struct __sk_buff *skb, const struct pkt *p, __u64 now, int egress)
{
	int t = icmp_error_translate(skb, p, now);
	if (t < 0 || t == 2 || !egress)
		return t;
	int s = icmp_error_source(skb, p, now);
	if (s < 0)
		return -1;
	return t || s;
}

/* The verdict for an ICMP error on the node uplink: translated, or passed as not ours. */
static __always_inline int icmp_error_on_uplink(struct __sk_buff *skb, const struct pkt *p, __u64 now, int egress)
{
	int t = icmp_error(skb, p, now, egress);
	if (t < 0)
		return drop(DROP_REJECT_FAILED);
	if (t > 0) {
		count(M_ICMP_REVNAT);
		return TC_ACT_OK;
	}
	return pass();
}

#endif
