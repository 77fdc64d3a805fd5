/* Address translation of a flow's packets: DNAT to the backend (with hairpin masquerade), reverse
 * NAT of replies, and reverse NAT of ICMP errors that quote a translated packet. Only packets
 * without IPv4 options get here, so the L4 header is at L4_OFF. */
#ifndef DP_NAT_H
#define DP_NAT_H

#define SPORT_OFF (L4_OFF + 0)
#define DPORT_OFF (L4_OFF + 2)

/* The packet's source becomes addr:port (checksums follow). 0, or -1 on failure. */
static __always_inline int set_src(struct __sk_buff *skb, const struct pkt *p, __be32 addr, __be16 port)
{
	if (rewrite_addr(skb, p->proto, L4_OFF, IP_SRC_OFF, p->saddr, addr) < 0 ||
	    rewrite_port(skb, p->proto, L4_OFF, SPORT_OFF, p->sport, port) < 0)
		return -1;
	return 0;
}

/* The packet's destination becomes addr:port (checksums follow). 0, or -1 on failure. */
static __always_inline int set_dst(struct __sk_buff *skb, const struct pkt *p, __be32 addr, __be16 port)
{
	if (rewrite_addr(skb, p->proto, L4_OFF, IP_DST_OFF, p->daddr, addr) < 0 ||
	    rewrite_port(skb, p->proto, L4_OFF, DPORT_OFF, p->dport, port) < 0)
		return -1;
	return 0;
}

/* client -> VIP:port  becomes  client (or node IP, hairpin) -> backend:port */
static __always_inline int dnat(struct __sk_buff *skb, const struct pkt *p, const struct ct_entry *e)
{
	if (set_dst(skb, p, e->nat_addr, e->nat_port) < 0)
		return -1;
	if ((e->flags & CT_F_HAIRPIN) && set_src(skb, p, e->snat_addr, e->snat_port) < 0)
		return -1;
	return 0;
}

/* backend:port -> client  becomes  VIP:port -> client (the client's own address, hairpin) */
static __always_inline int revnat(struct __sk_buff *skb, const struct pkt *p, const struct ct_entry *e)
{
	if (set_src(skb, p, e->nat_addr, e->nat_port) < 0)
		return -1;
	if ((e->flags & CT_F_HAIRPIN) && set_dst(skb, p, e->snat_addr, e->snat_port) < 0)
		return -1;
	return 0;
}

/* RFC 1624 eqn. 3 on raw (network-order) 16-bit words: HC' = ~(~HC + ~m + m'). */
static __always_inline __u16 csum_update(__u16 check, __u32 sum_old_new)
{
	__u32 sum = (__u16)~check + sum_old_new;
	return csum_fold(sum);
}

static __always_inline __u32 csum_delta4(__u32 from, __u32 to)
{
	return (__u16)~(from & 0xffff) + (__u16)~(from >> 16) + (to & 0xffff) + (to >> 16);
}

static __always_inline __u32 csum_delta2(__u16 from, __u16 to)
{
	return (__u16)~from + to;
}

static __always_inline int is_icmp_error(__u8 type)
{
	return type == ICMP_DEST_UNREACH || type == ICMP_TIME_EXCEEDED || type == ICMP_PARAMETERPROB ||
	       type == ICMP_SOURCE_QUENCH;
}

#define ICMP_CSUM_OFF  (L4_OFF + 2)
#define INNER_IP_OFF   (L4_OFF + 8)
#define QUOTE_LEN      28   /* inner IPv4 header (no options) + the 8 bytes of L4 RFC 792 requires */

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

/* An ICMP error quoting a packet the client sent to a backend (client -> backend:port) is made
 * to quote what the client really sent (client -> VIP:port): inner destination and port, inner
 * IP checksum, inner UDP checksum, ICMP checksum; and if the backend itself sent the error, the
 * outer source becomes the VIP. Returns 1 if translated, 2 if translated and to be bounced back
 * to the pod it came from (hairpin), 0 if the error is not about a flow of ours, -1 on failure. */
static __always_inline int icmp_error_revnat(struct __sk_buff *skb, const struct pkt *p, __u64 now)
{
	__u32 quote_words[QUOTE_LEN / 4];
	__u32 new_words[QUOTE_LEN / 4];
	__u8 *q = (__u8 *)quote_words;
	__u8 *n = (__u8 *)new_words;
	struct iphdr *inner = (struct iphdr *)n;

	if (p->options)
		return 0;
	if (bpf_skb_load_bytes(skb, INNER_IP_OFF, quote_words, QUOTE_LEN) < 0)
		return 0;   /* quote shorter than header + 8: not ours to translate */
	__builtin_memcpy(new_words, quote_words, QUOTE_LEN);
	if (inner->version != 4 || inner->ihl != 5 ||
	    (inner->protocol != IPPROTO_TCP && inner->protocol != IPPROTO_UDP))
		return 0;

	struct pkt ip = {};
	ip.saddr = inner->daddr;       /* the reply direction of the quoted packet */
	ip.daddr = inner->saddr;
	__builtin_memcpy(&ip.sport, n + 22, 2);
	__builtin_memcpy(&ip.dport, n + 20, 2);
	ip.proto = inner->protocol;
	struct ct_key k = {};
	ct_key_of(&k, &ip, CT_REPLY);
	struct ct_entry *e = ct_lookup(&k, now);
	if (!e) {
		/* a hairpin flow's reply entry is its mapping's SNAT_IN entry */
		k.dir = CT_SNAT_IN;
		e = ct_lookup(&k, now);
		if (!e || !(e->flags & CT_F_HAIRPIN))
			return 0;
	}

	__be32 backend = inner->daddr;
	__be16 old_dport, old_sport, vport = e->nat_port;
	__builtin_memcpy(&old_sport, n + 20, 2);
	__builtin_memcpy(&old_dport, n + 22, 2);
	__u32 l4delta = csum_delta4(inner->daddr, e->nat_addr) + csum_delta2(old_dport, vport);
	inner->daddr = e->nat_addr;
	__builtin_memcpy(n + 22, &vport, 2);
	if (e->flags & CT_F_HAIRPIN) {
		__be16 cport = e->snat_port;
		l4delta += csum_delta4(inner->saddr, e->snat_addr) + csum_delta2(old_sport, cport);
		inner->saddr = e->snat_addr;
		__builtin_memcpy(n + 20, &cport, 2);
	}
	if (icmp_quote_commit(skb, quote_words, new_words, l4delta) < 0)
		return -1;

	/* outer header: no pseudo-header in ICMP, so only the IP checksum follows */
	if (p->saddr == backend) {
		if (bpf_l3_csum_replace(skb, IP_CSUM_OFF, p->saddr, e->nat_addr, 4) < 0 ||
		    bpf_skb_store_bytes(skb, IP_SRC_OFF, &e->nat_addr, 4, 0) < 0)
			return -1;
	}
	if (e->flags & CT_F_HAIRPIN) {
		/* sent to the masquerade address (the node): deliver to the client itself */
		if (bpf_l3_csum_replace(skb, IP_CSUM_OFF, p->daddr, e->snat_addr, 4) < 0 ||
		    bpf_skb_store_bytes(skb, IP_DST_OFF, &e->snat_addr, 4, 0) < 0)
			return -1;
		return 2;
	}
	return 1;
}

#endif
