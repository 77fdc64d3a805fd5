/* Parsing: Ethernet + IPv4 + the first bytes of TCP/UDP/ICMP into struct pkt. Everything is read
 * with bpf_skb_load_bytes, so non-linear skbs work and offsets stay simple for the verifier. */
#ifndef DP_PARSE_H
#define DP_PARSE_H

#define IP_OFF        ETH_HLEN
#define IP_CSUM_OFF   (IP_OFF + offsetof(struct iphdr, check))
#define IP_SRC_OFF    (IP_OFF + offsetof(struct iphdr, saddr))
#define IP_DST_OFF    (IP_OFF + offsetof(struct iphdr, daddr))
#define L4_OFF        (IP_OFF + sizeof(struct iphdr))   /* only packets without options are translated */
#define IP_MF         0x2000
#define IP_OFFMASK    0x1fff

enum parse_result {
	PARSE_OK = 0,
	PARSE_NOT_IPV4,      /* pass: not ours */
	PARSE_MALFORMED,     /* drop with pkt.reason */
};

struct pkt {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;        /* ICMP echo: the id; ICMP error: 0 */
	__be16 dport;
	__u8   proto;
	__u8   tcp_flags;    /* byte 13 of the TCP header */
	__u8   has_l4;       /* ports known: parsed, or (a later fragment) its first fragment's */
	__u8   options;      /* IHL > 5 */
	__u8   fragment;     /* MF set or offset != 0 */
	__u8   icmp_type;
	__u8   icmp_code;
	__u8   later;        /* a later fragment (offset != 0): no L4 header in this packet */
	__u32  reason;       /* with PARSE_MALFORMED */
	__u32  l4_off;
	__be16 ip_id;        /* the IPv4 identification: ties fragments together */
	__u16  pad;
};

#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_RST 0x04
#define TCP_FLAG_ACK 0x10

static __always_inline int parse(struct __sk_buff *skb, struct pkt *p)
{
	struct ethhdr eth;
	struct iphdr ip;

	if (bpf_skb_load_bytes(skb, 0, &eth, sizeof(eth)) < 0)
		return PARSE_NOT_IPV4;
	if (eth.h_proto != bpf_htons(ETH_P_IP))
		return PARSE_NOT_IPV4;
	if (bpf_skb_load_bytes(skb, IP_OFF, &ip, sizeof(ip)) < 0) {
		p->reason = DROP_BAD_IHL;
		return PARSE_MALFORMED;
	}
	if (ip.version != 4 || ip.ihl < 5) {
		p->reason = DROP_BAD_IHL;
		return PARSE_MALFORMED;
	}
	__u32 hlen = ip.ihl * 4;
	__u32 tot = bpf_ntohs(ip.tot_len);
	if (tot < hlen || IP_OFF + tot > skb->len) {
		p->reason = hlen + IP_OFF > skb->len ? DROP_BAD_IHL : DROP_BAD_LEN;
		return PARSE_MALFORMED;
	}
	p->saddr = ip.saddr;
	p->daddr = ip.daddr;
	p->proto = ip.protocol;
	p->options = hlen > sizeof(struct iphdr);
	p->fragment = (bpf_ntohs(ip.frag_off) & (IP_MF | IP_OFFMASK)) != 0;
	p->later = (bpf_ntohs(ip.frag_off) & IP_OFFMASK) != 0;
	p->ip_id = ip.id;
	p->l4_off = IP_OFF + hlen;
	p->has_l4 = 0;
	p->sport = p->dport = 0;
	p->tcp_flags = 0;
	if (p->later)
		return PARSE_OK;   /* later fragments carry no L4 header (frag.h finds their ports) */

	__u32 l4len = tot - hlen;
	if (ip.protocol == IPPROTO_TCP) {
		__u8 tcp[14];
		if (l4len < sizeof(struct tcphdr) || bpf_skb_load_bytes(skb, p->l4_off, tcp, sizeof(tcp)) < 0) {
			p->reason = DROP_TRUNCATED_L4;
			return PARSE_MALFORMED;
		}
		__builtin_memcpy(&p->sport, &tcp[0], 2);
		__builtin_memcpy(&p->dport, &tcp[2], 2);
		p->tcp_flags = tcp[13];
		p->has_l4 = 1;
	} else if (ip.protocol == IPPROTO_UDP) {
		__u8 udp[4];
		if (l4len < sizeof(struct udphdr) || bpf_skb_load_bytes(skb, p->l4_off, udp, sizeof(udp)) < 0) {
			p->reason = DROP_TRUNCATED_L4;
			return PARSE_MALFORMED;
		}
		__builtin_memcpy(&p->sport, &udp[0], 2);
		__builtin_memcpy(&p->dport, &udp[2], 2);
		p->has_l4 = 1;
	} else if (ip.protocol == IPPROTO_ICMP) {
		__u8 icmp[8];
		if (l4len < 8 || bpf_skb_load_bytes(skb, p->l4_off, icmp, sizeof(icmp)) < 0) {
			p->reason = DROP_TRUNCATED_L4;
			return PARSE_MALFORMED;
		}
		p->icmp_type = icmp[0];
		p->icmp_code = icmp[1];
	}
	return PARSE_OK;
}

/* Fragments of TCP/UDP datagrams, as Cilium's fragment map: the first fragment carries the
 * ports, and is remembered by (source, destination, IP id, protocol) as seen at this hook, so that
 * the later fragments, which carry no L4 header, find their flow and get the same address
 * translation (the first fragment's rewrite already fixed the L4 checksum, which covers the whole
 * datagram). A later fragment whose first was not seen here keeps has_l4 0. */
static __always_inline void frag_ports(struct pkt *p)
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

/* Every entry point starts here: parse, then the config and the dataplane clock. -1 to go on
 * (with *cfg and *now set), or the verdict: pass for what is not IPv4, drop for the malformed. */
static __always_inline int begin(struct __sk_buff *skb, struct pkt *p, struct dp_config **cfg, __u64 *now)
{
	__u32 zero = 0;
	int r = parse(skb, p);
	if (r == PARSE_NOT_IPV4)
		return pass();
	if (r == PARSE_MALFORMED)
		return drop(p->reason);
	*cfg = config.lookup(&zero);
	if (!*cfg)
		return pass();
	*now = bpf_ktime_get_ns() + (*cfg)->clock_offset;
	frag_ports(p);
	return -1;
}

/* IPv4 options on a packet that needs translation: not supported; the drop reason. */
static __always_inline int unsupported(const struct pkt *p)
{
	if (p->options)
		return DROP_IP_OPTIONS;
	return 0;
}

#endif
