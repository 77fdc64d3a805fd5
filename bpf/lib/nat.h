/* Rewriting a packet's addresses and ports with its checksums kept valid, on scapy-built packets
 * (full checksums) and on real veth traffic (CHECKSUM_PARTIAL: the L4 field holds only the
 * pseudo-header sum, which BPF_F_PSEUDO_HDR updates and port changes must leave alone: the kernel
 * helpers do). DNAT to a backend (with hairpin masquerade) and reverse NAT of replies are built
 * from them. Only packets without IPv4 options get here, so the L4 header is at L4_OFF. (ICMP
 * errors about translated flows: icmp.h.) Every rewrite returns 0 or -DROP_NAT_FAILED. */
#ifndef DP_NAT_H
#define DP_NAT_H

#include <uapi/linux/bpf.h>
#include <uapi/linux/in.h>
#include <uapi/linux/tcp.h>
#include <uapi/linux/udp.h>
#include <linux/stddef.h>

#include "types.h"
#include "consts.h"
#include "verdict.h"
#include "parse.h"

#define SPORT_OFF (L4_OFF + offsetof(struct tcphdr, source))   /* the same in a UDP header */
#define DPORT_OFF (L4_OFF + offsetof(struct tcphdr, dest))

static __always_inline __u32 __nat4_l4_csum_off(__u8 proto)
{
	if (proto == IPPROTO_TCP)
		return L4_OFF + offsetof(struct tcphdr, check);
	if (proto == IPPROTO_UDP)
		return L4_OFF + offsetof(struct udphdr, check);
	return 0;
}

/* UDP checksum 0 means "none": leave it 0, and never produce a 0 by accident. */
static __always_inline __u64 __nat4_l4_csum_flags(__u8 proto)
{
	return proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;
}

/* Replace the IPv4 address at `off` (source or destination) and fix the IP and L4 checksums
 * (proto 0: no L4 header to fix, a later fragment's). */
static __always_inline int __nat4_store_addr(struct __sk_buff *skb, __u8 proto, __u32 off, __be32 old,
					     __be32 new)
{
	if (old == new)
		return 0;
	__u32 coff = __nat4_l4_csum_off(proto);
	__u64 flags = BPF_F_PSEUDO_HDR | __nat4_l4_csum_flags(proto) | sizeof(new);
	if (coff && bpf_l4_csum_replace(skb, coff, old, new, flags) < 0)
		return -DROP_NAT_FAILED;
	if (bpf_l3_csum_replace(skb, IP_CSUM_OFF, old, new, sizeof(new)) < 0 ||
	    bpf_skb_store_bytes(skb, off, &new, sizeof(new), 0) < 0)
		return -DROP_NAT_FAILED;
	return 0;
}

/* Replace the port at `off` (relative to the packet) and fix the L4 checksum. */
static __always_inline int __nat4_store_port(struct __sk_buff *skb, __u8 proto, __u32 off, __be16 old,
					     __be16 new)
{
	if (old == new)
		return 0;
	__u32 coff = __nat4_l4_csum_off(proto);
	if (coff && bpf_l4_csum_replace(skb, coff, old, new, __nat4_l4_csum_flags(proto) | sizeof(new)) < 0)
		return -DROP_NAT_FAILED;
	if (bpf_skb_store_bytes(skb, off, &new, sizeof(new), 0) < 0)
		return -DROP_NAT_FAILED;
	return 0;
}

/* The packet's source becomes addr:port (checksums follow). A later fragment has no L4 header:
 * only its address changes (its first fragment carried the port and the L4 checksum). */
static __always_inline int nat4_set_src(struct __sk_buff *skb, const struct pkt *p, __be32 addr, __be16 port)
{
	if (p->later)
		return __nat4_store_addr(skb, 0, IP_SRC_OFF, p->saddr, addr);
	int ret = __nat4_store_addr(skb, p->proto, IP_SRC_OFF, p->saddr, addr);
	if (IS_DROP(ret))
		return ret;
	return __nat4_store_port(skb, p->proto, SPORT_OFF, p->sport, port);
}

/* The packet's destination becomes addr:port (checksums follow; a later fragment: see
 * nat4_set_src). */
static __always_inline int nat4_set_dst(struct __sk_buff *skb, const struct pkt *p, __be32 addr, __be16 port)
{
	if (p->later)
		return __nat4_store_addr(skb, 0, IP_DST_OFF, p->daddr, addr);
	int ret = __nat4_store_addr(skb, p->proto, IP_DST_OFF, p->daddr, addr);
	if (IS_DROP(ret))
		return ret;
	return __nat4_store_port(skb, p->proto, DPORT_OFF, p->dport, port);
}

/* client -> VIP:port  becomes  client (or node IP, hairpin) -> backend:port */
static __always_inline int nat4_dnat(struct __sk_buff *skb, const struct pkt *p, const struct ct_entry *e)
{
	int ret = nat4_set_dst(skb, p, e->nat_addr, e->nat_port);
	if (IS_DROP(ret) || !(e->flags & CT_F_HAIRPIN))
		return ret;
	return nat4_set_src(skb, p, e->snat_addr, e->snat_port);
}

/* backend:port -> client  becomes  VIP:port -> client (the client's own address, hairpin) */
static __always_inline int nat4_rev_nat(struct __sk_buff *skb, const struct pkt *p, const struct ct_entry *e)
{
	int ret = nat4_set_src(skb, p, e->nat_addr, e->nat_port);
	if (IS_DROP(ret) || !(e->flags & CT_F_HAIRPIN))
		return ret;
	return nat4_set_dst(skb, p, e->snat_addr, e->snat_port);
}

#endif
