/* Parsing: Ethernet + IPv4 + the first bytes of TCP/UDP/ICMP into struct pkt. Each header is
 * read in place when the skb's linear area holds it (direct packet access: no helper call, where
 * a bpf_skb_load_bytes with its copy cost about 30 ns each, `dataplane bench profile`), else
 * copied with bpf_skb_load_bytes, as Cilium reads ports and TCP flags with ctx_load_bytes. Never
 * pulled: bpf_skb_pull_data makes a cloned skb's head private (an allocation and a copy), and
 * TCP sends clones; a pod's segment often has its payload in fragments and its headers linear. */
#ifndef DP_PARSE_H
#define DP_PARSE_H

#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/tcp.h>
#include <uapi/linux/udp.h>
#include <linux/stddef.h>

#include "types.h"
#include "pinning.h"
#include "consts.h"
#include "map_sizes.h"
#include "config.h"
#include "verdict.h"

/* fragmented datagrams in flight: (source, destination, IP id, proto) -> ports of the first
 * fragment */
DP_TABLE("lru_hash", struct frag_key, struct frag_ports, frags, FRAG_MAP_SIZE, 0);

#define IP_OFF        ETH_HLEN
#define IPV4_HLEN     sizeof(struct iphdr)              /* without options */
#define IPV4_IHL_MIN  (IPV4_HLEN / 4)                   /* ihl counts 32-bit words */
#define IPV4_IHL_UNIT 4
#define IP_CSUM_OFF   (IP_OFF + offsetof(struct iphdr, check))
#define IP_SRC_OFF    (IP_OFF + offsetof(struct iphdr, saddr))
#define IP_DST_OFF    (IP_OFF + offsetof(struct iphdr, daddr))
#define L4_OFF        (IP_OFF + IPV4_HLEN)   /* only packets without options are translated */
#define IP_MF         0x2000
#define IP_OFFMASK    0x1fff
#define ICMP_HLEN     8                      /* type, code, checksum, 4 bytes of the rest */
#define TCP_FLAGS_OFF 13                     /* the byte of FIN, SYN, RST, ACK in a TCP header */

#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_RST 0x04
#define TCP_FLAG_ACK 0x10

/* Which way a hook sees its packets go (the `egress` argument of the helpers that care). */
#define HOOK_INGRESS  0
#define HOOK_EGRESS   1

/* What __pkt4_parse found that is not a malformed packet (those are -DROP_* reasons). */
#define PKT4_IPV4      0
#define PKT4_NOT_IPV4  1   /* passed: not ours */

struct pkt {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;        /* ICMP echo: the id; ICMP error: 0 */
	__be16 dport;
	__u8   proto;
	__u8   tcp_flags;    /* byte TCP_FLAGS_OFF of the TCP header */
	__u8   has_l4;       /* ports known: parsed, or (a later fragment) its first fragment's */
	__u8   options;      /* IHL > 5 */
	__u8   fragment;     /* MF set or offset != 0 */
	__u8   icmp_type;
	__u8   icmp_code;
	__u8   later;        /* a later fragment (offset != 0): no L4 header in this packet */
	__u32  l4_off;
	__be16 ip_id;        /* the IPv4 identification: ties fragments together */
	__u8   trace;        /* a trace reader is attached: notes go to the packet's event (trace.h) */
	__u8   hook;         /* TRACE_HOOK_*: which entry point met it (for its trace event) */
};

/* A TCP segment that opens a connection: SYN without ACK. */
static __always_inline int pkt4_bare_syn(const struct pkt *p)
{
	return p->proto == IPPROTO_TCP && (p->tcp_flags & TCP_FLAG_SYN) && !(p->tcp_flags & TCP_FLAG_ACK);
}

/* The answer to one: SYN and ACK. */
static __always_inline int pkt4_syn_ack(const struct pkt *p)
{
	return p->proto == IPPROTO_TCP && (p->tcp_flags & TCP_FLAG_SYN) && (p->tcp_flags & TCP_FLAG_ACK);
}

/* LEN bytes of the packet at OFF: in place when the linear area holds them, else copied into
 * BUF; NULL when the packet is shorter. (OFF is bounded by the callers: at most IP_OFF + 60.) */
static __always_inline const __u8 *__pkt4_bytes(struct __sk_buff *skb, __u32 off, __u32 len, void *buf)
{
	const __u8 *data = (const __u8 *)(long)skb->data;
	const __u8 *at = data + off;
	if (at + len <= (const __u8 *)(long)skb->data_end)
		return at;
	return bpf_skb_load_bytes(skb, off, buf, len) < 0 ? NULL : (const __u8 *)buf;
}

/* The first bytes of a first fragment's (or whole packet's) L4 header: ports, TCP flags, ICMP
 * type. 0, or -DROP_TRUNCATED_L4. */
static __always_inline int __pkt4_parse_l4(struct __sk_buff *skb, struct pkt *p, __u32 l4len)
{
	__u8 buf[TCP_FLAGS_OFF + 1];
	const __u8 *l4;
	if (p->proto == IPPROTO_TCP) {
		if (l4len < sizeof(struct tcphdr) || !(l4 = __pkt4_bytes(skb, p->l4_off, TCP_FLAGS_OFF + 1, buf)))
			return -DROP_TRUNCATED_L4;
		__builtin_memcpy(&p->sport, l4 + offsetof(struct tcphdr, source), sizeof(p->sport));
		__builtin_memcpy(&p->dport, l4 + offsetof(struct tcphdr, dest), sizeof(p->dport));
		p->tcp_flags = l4[TCP_FLAGS_OFF];
		p->has_l4 = 1;
	} else if (p->proto == IPPROTO_UDP) {
		/* the ports */
		if (l4len < sizeof(struct udphdr) || !(l4 = __pkt4_bytes(skb, p->l4_off, offsetof(struct udphdr, len), buf)))
			return -DROP_TRUNCATED_L4;
		__builtin_memcpy(&p->sport, l4 + offsetof(struct udphdr, source), sizeof(p->sport));
		__builtin_memcpy(&p->dport, l4 + offsetof(struct udphdr, dest), sizeof(p->dport));
		p->has_l4 = 1;
	} else if (p->proto == IPPROTO_ICMP) {
		if (l4len < ICMP_HLEN || !(l4 = __pkt4_bytes(skb, p->l4_off, ICMP_HLEN, buf)))
			return -DROP_TRUNCATED_L4;
		p->icmp_type = l4[0];
		p->icmp_code = l4[1];
	}
	return 0;
}

/* PKT4_IPV4 with p filled, PKT4_NOT_IPV4, or the reason a malformed packet is dropped. */
static __always_inline int __pkt4_parse(struct __sk_buff *skb, struct pkt *p)
{
	struct ethhdr eth_buf;
	struct iphdr ip_buf;
	const struct ethhdr *eth = (const struct ethhdr *)__pkt4_bytes(skb, 0, sizeof(eth_buf), &eth_buf);
	if (!eth || eth->h_proto != bpf_htons(ETH_P_IP))
		return PKT4_NOT_IPV4;
	const struct iphdr *ip = (const struct iphdr *)__pkt4_bytes(skb, IP_OFF, sizeof(ip_buf), &ip_buf);
	if (!ip || ip->version != 4 || ip->ihl < IPV4_IHL_MIN)
		return -DROP_BAD_IHL;
	__u32 hlen = ip->ihl * IPV4_IHL_UNIT;
	__u32 tot = bpf_ntohs(ip->tot_len);
	if (tot < hlen || IP_OFF + tot > skb->len)
		return hlen + IP_OFF > skb->len ? -DROP_BAD_IHL : -DROP_BAD_LEN;
	p->saddr = ip->saddr;
	p->daddr = ip->daddr;
	p->proto = ip->protocol;
	p->options = hlen > IPV4_HLEN;
	p->fragment = (bpf_ntohs(ip->frag_off) & (IP_MF | IP_OFFMASK)) != 0;
	p->later = (bpf_ntohs(ip->frag_off) & IP_OFFMASK) != 0;
	p->ip_id = ip->id;
	p->l4_off = IP_OFF + hlen;
	p->has_l4 = 0;
	p->sport = p->dport = 0;
	p->tcp_flags = 0;
	if (p->later)
		return PKT4_IPV4;   /* later fragments carry no L4 header (__pkt4_frag_ports finds their ports) */
	int ret = __pkt4_parse_l4(skb, p, tot - hlen);
	return IS_DROP(ret) ? ret : PKT4_IPV4;
}

/* Fragments of TCP/UDP datagrams, as Cilium's fragment map: the first fragment carries the
 * ports, and is remembered by (source, destination, IP id, protocol) as seen at this hook, so that
 * the later fragments, which carry no L4 header, find their flow and get the same address
 * translation (the first fragment's rewrite already fixed the L4 checksum, which covers the whole
 * datagram). A later fragment whose first was not seen here keeps has_l4 0. */
static __always_inline void __pkt4_frag_ports(struct pkt *p)
{
	if (!p->fragment || (p->proto != IPPROTO_TCP && p->proto != IPPROTO_UDP))
		return;
	struct frag_key k = {};
	k.saddr = p->saddr;
	k.daddr = p->daddr;
	k.id = p->ip_id;
	k.proto = p->proto;
	if (!p->later) {
		struct frag_ports v = {};
		v.sport = p->sport;
		v.dport = p->dport;
		frags.update(&k, &v);
		return;
	}
	struct frag_ports *v = frags.lookup(&k);
	if (!v)
		return;
	p->sport = v->sport;
	p->dport = v->dport;
	p->has_l4 = 1;
}

/* pkt4_begin in two halves, so that a fast path can leave between them (pod.c): the packet
 * parsed and the node's config found ... */
static __always_inline int pkt4_parse_config(struct __sk_buff *skb, struct pkt *p, struct dp_config **cfg)
{
	int ret = __pkt4_parse(skb, p);
	if (IS_DROP(ret))
		return ret;
	if (ret == PKT4_NOT_IPV4)
		return dp_pass();
	*cfg = config_get();
	if (!*cfg)
		return dp_pass();
	return DP_CONTINUE;
}

/* ... then the clock read and a fragment's ports found (or, for a first fragment, remembered). */
static __always_inline __u64 pkt4_clock(struct pkt *p, const struct dp_config *cfg)
{
	__pkt4_frag_ports(p);
	return bpf_ktime_get_ns() + cfg->clock_offset;
}

/* The first stage of every hook: DP_CONTINUE with the packet parsed, the node's config and the
 * clock, or the verdict for a packet that is not ours to look at. */
static __always_inline int pkt4_begin(struct __sk_buff *skb, struct pkt *p, struct dp_config **cfg, __u64 *now)
{
	int ret = pkt4_parse_config(skb, p, cfg);
	if (ret != DP_CONTINUE)
		return ret;
	*now = pkt4_clock(p, *cfg);
	return DP_CONTINUE;
}

/* A packet that needs translation: 0, or -DROP_IP_OPTIONS (IPv4 options are not supported, as
 * in Katran: the L4 header would not be at L4_OFF). */
static __always_inline int pkt4_check_options(const struct pkt *p)
{
	return p->options ? -DROP_IP_OPTIONS : 0;
}

#endif
