/* Address translation of a flow's packets: DNAT to the backend (with hairpin masquerade) and
 * reverse NAT of replies. Only packets without IPv4 options get here, so the L4 header is at
 * L4_OFF. (ICMP errors about translated flows: icmp.h.) */
#ifndef DP_NAT_H
#define DP_NAT_H

#define SPORT_OFF (L4_OFF + 0)
#define DPORT_OFF (L4_OFF + 2)

/* The packet's source becomes addr:port (checksums follow). A later fragment has no L4 header:
 * only its address changes (its first fragment carried the port and the L4 checksum). 0, or -1
 * on failure. */
static __always_inline int set_src(struct __sk_buff *skb, const struct pkt *p, __be32 addr, __be16 port)
{
	if (p->later)
		return rewrite_addr(skb, 0, L4_OFF, IP_SRC_OFF, p->saddr, addr);
	if (rewrite_addr(skb, p->proto, L4_OFF, IP_SRC_OFF, p->saddr, addr) < 0 ||
	    rewrite_port(skb, p->proto, L4_OFF, SPORT_OFF, p->sport, port) < 0)
		return -1;
	return 0;
}

/* The packet's destination becomes addr:port (checksums follow; a later fragment: see set_src).
 * 0, or -1 on failure. */
static __always_inline int set_dst(struct __sk_buff *skb, const struct pkt *p, __be32 addr, __be16 port)
{
	if (p->later)
		return rewrite_addr(skb, 0, L4_OFF, IP_DST_OFF, p->daddr, addr);
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

#endif
