/* Rewriting addresses and ports with their checksums kept valid, on scapy-built packets (full
 * checksums) and on real veth traffic (CHECKSUM_PARTIAL: the L4 field holds only the pseudo-header
 * sum, which BPF_F_PSEUDO_HDR updates and port changes must leave alone — the kernel helpers do). */
#ifndef DP_CSUM_H
#define DP_CSUM_H

static __always_inline __u32 l4_csum_off(__u8 proto, __u32 l4_off)
{
	if (proto == IPPROTO_TCP)
		return l4_off + offsetof(struct tcphdr, check);
	if (proto == IPPROTO_UDP)
		return l4_off + offsetof(struct udphdr, check);
	return 0;
}

/* UDP checksum 0 means "none": leave it 0, and never produce a 0 by accident. */
static __always_inline __u64 l4_flags(__u8 proto)
{
	return proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;
}

/* Replace the IPv4 address at `off` (source or destination) and fix the IP and L4 checksums. */
static __always_inline int rewrite_addr(struct __sk_buff *skb, __u8 proto, __u32 l4_off, __u32 off,
					__be32 old, __be32 new)
{
	if (old == new)
		return 0;
	__u32 coff = l4_csum_off(proto, l4_off);
	if (coff && bpf_l4_csum_replace(skb, coff, old, new, BPF_F_PSEUDO_HDR | l4_flags(proto) | 4) < 0)
		return -1;
	if (bpf_l3_csum_replace(skb, IP_CSUM_OFF, old, new, 4) < 0)
		return -1;
	return bpf_skb_store_bytes(skb, off, &new, 4, 0);
}

/* Replace the port at `off` (relative to the packet) and fix the L4 checksum. */
static __always_inline int rewrite_port(struct __sk_buff *skb, __u8 proto, __u32 l4_off, __u32 off,
					__be16 old, __be16 new)
{
	if (old == new)
		return 0;
	__u32 coff = l4_csum_off(proto, l4_off);
	if (coff && bpf_l4_csum_replace(skb, coff, old, new, l4_flags(proto) | 2) < 0)
		return -1;
	return bpf_skb_store_bytes(skb, off, &new, 2, 0);
}

static __always_inline __u16 csum_fold(__u32 csum)
{
	csum = (csum & 0xffff) + (csum >> 16);
	csum = (csum & 0xffff) + (csum >> 16);
	return (__u16)~csum;
}

/* RFC 1624 eqn. 3 on raw (network-order) 16-bit words: HC' = ~(~HC + ~m + m'). For fields that
 * cannot be summed in full (a truncated quote). */
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

#endif
