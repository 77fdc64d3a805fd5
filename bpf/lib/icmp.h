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
 * on egress, by __icmp4_error_source. An error that quotes nothing of ours passes untouched. */
#ifndef DP_ICMP_H
#define DP_ICMP_H

#include <uapi/linux/bpf.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/udp.h>
#include <uapi/linux/icmp.h>
#include <uapi/linux/pkt_cls.h>
#include <linux/stddef.h>

#include "metrics.h"
#include "verdict.h"
#include "parse.h"
#include "csum.h"
#include "conntrack.h"
#include "l2.h"
#include "trace.h"

/* Where things sit in an ICMP error about an IPv4 packet without options: */
#define ICMP_CSUM_OFF       (L4_OFF + offsetof(struct icmphdr, checksum))
#define INNER_IP_OFF        (L4_OFF + ICMP_HLEN)   /* the quote: the packet the error is about */
#define QUOTE_L4_LEN        8                      /* the 8 bytes of L4 RFC 792 requires */
#define QUOTE_LEN           (IPV4_HLEN + QUOTE_L4_LEN)
#define QUOTE_SPORT_OFF     IPV4_HLEN              /* offsets inside the quote */
#define QUOTE_DPORT_OFF     (IPV4_HLEN + 2)
#define QUOTE_UDP_CSUM_OFF  (IPV4_HLEN + offsetof(struct udphdr, check))

/* What an ICMP error is to us (__icmp4_error_translate, __icmp4_error). */
#define ICMP4_NOT_OURS    0   /* about nothing of ours: passed untouched */
#define ICMP4_TRANSLATED  1
#define ICMP4_BOUNCE      2   /* translated, and to go back out the veth it came in by (a hairpin
			       * flow's: its client is on the same pod veth) */

static __always_inline int icmp4_is_error(__u8 type)
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
 * updates the inner UDP checksum (0, "none", stays 0), and the ICMP checksum over both. 0, or
 * -DROP_NAT_FAILED. */
static __always_inline int __icmp4_quote_commit(struct __sk_buff *skb, __u32 *quote_words, __u32 *new_words,
						__u32 l4delta)
{
	__u8 *n = (__u8 *)new_words;
	struct iphdr *inner = (struct iphdr *)n;
	inner->check = 0;
	inner->check = csum_fold(bpf_csum_diff(0, 0, new_words, IPV4_HLEN, 0));
	if (inner->protocol == IPPROTO_UDP) {
		__u16 uc;
		__builtin_memcpy(&uc, n + QUOTE_UDP_CSUM_OFF, 2);
		if (uc) {
			uc = csum_update(uc, l4delta);
			if (!uc)
				uc = 0xffff;
			__builtin_memcpy(n + QUOTE_UDP_CSUM_OFF, &uc, 2);
		}
	}
	__s64 diff = bpf_csum_diff(quote_words, QUOTE_LEN, new_words, QUOTE_LEN, 0);
	if (diff < 0 || bpf_l4_csum_replace(skb, ICMP_CSUM_OFF, 0, diff, 0) < 0 ||
	    bpf_skb_store_bytes(skb, INNER_IP_OFF, new_words, QUOTE_LEN, 0) < 0)
		return -DROP_NAT_FAILED;
	return 0;
}

/* Read the quote of an ICMP error: 1 with q filled and the raw words, 0 if it is not one we can
 * translate (options outside or inside, not TCP/UDP, shorter than header + 8). */
static __always_inline int __icmp4_quote_read(struct __sk_buff *skb, const struct pkt *p, __u32 *words,
					    struct quote *q)
{
	__u8 *b = (__u8 *)words;
	struct iphdr *inner = (struct iphdr *)b;
	if (p->options || bpf_skb_load_bytes(skb, INNER_IP_OFF, words, QUOTE_LEN) < 0)
		return 0;
	if (inner->version != 4 || inner->ihl != IPV4_IHL_MIN ||
	    (inner->protocol != IPPROTO_TCP && inner->protocol != IPPROTO_UDP))
		return 0;
	if (bpf_ntohs(inner->frag_off) & IP_OFFMASK)
		return 0;                   /* a later fragment quoted: no ports in its first 8 bytes */
	q->saddr = inner->saddr;
	q->daddr = inner->daddr;
	__builtin_memcpy(&q->sport, b + QUOTE_SPORT_OFF, 2);
	__builtin_memcpy(&q->dport, b + QUOTE_DPORT_OFF, 2);
	q->proto = inner->protocol;
	return 1;
}

/* The live entry keyed by the quote's own tuple (reversed 0) or by its reply's (reversed 1), in
 * table `dir`. */
static __always_inline struct ct_entry *__icmp4_lookup(const struct quote *q, int reversed, __u8 dir, __u64 now)
{
	struct ct_key k = {};
	k.saddr = reversed ? q->daddr : q->saddr;
	k.daddr = reversed ? q->saddr : q->daddr;
	k.sport = reversed ? q->dport : q->sport;
	k.dport = reversed ? q->sport : q->dport;
	k.proto = q->proto;
	k.dir = dir;
	return ct4_lookup(&k, now);
}

/* Replace the outer source or destination (IP checksum only: ICMP has no pseudo-header). 0, or
 * -DROP_NAT_FAILED. */
static __always_inline int __icmp4_set_outer(struct __sk_buff *skb, __u32 off, __be32 old, __be32 new)
{
	if (old == new)
		return 0;
	if (bpf_l3_csum_replace(skb, IP_CSUM_OFF, old, new, sizeof(new)) < 0 ||
	    bpf_skb_store_bytes(skb, off, &new, sizeof(new), 0) < 0)
		return -DROP_NAT_FAILED;
	return 0;
}

/* forward: the quote `n` is a packet toward a backend or a remote. Its masquerade undone
 * (CT_SNAT_IN: the source back to the client, who is the new outer destination), then its DNAT
 * (CT_REPLY: the destination back to the frontend; from the backend itself, the error comes
 * from the frontend). ICMP4_NOT_OURS, ICMP4_TRANSLATED or ICMP4_BOUNCE. */
static __always_inline int __icmp4_forward(struct quote *n, __be32 *osrc, __be32 *odst, __u64 now)
{
	int found = ICMP4_NOT_OURS;
	struct ct_entry *e = __icmp4_lookup(n, 1, CT_SNAT_IN, now);
	if (e && (e->flags & CT_F_HAIRPIN)) {
		/* node IP:port -> the client pod itself: the client -> VIP:port it sent */
		if (*osrc == n->daddr)
			*osrc = e->nat_addr;
		n->saddr = e->snat_addr;
		n->sport = e->snat_port;
		n->daddr = e->nat_addr;
		n->dport = e->nat_port;
		*odst = e->snat_addr;
		return ICMP4_BOUNCE;
	}
	if (e) {
		n->saddr = e->nat_addr;
		n->sport = e->nat_port;
		*odst = e->nat_addr;
		found = ICMP4_TRANSLATED;
	}
	e = __icmp4_lookup(n, 1, CT_REPLY, now);
	if (e) {
		if (*osrc == n->daddr && !(e->flags & CT_F_EGRESS))
			*osrc = e->nat_addr;        /* from the backend itself: from the frontend */
		n->daddr = e->nat_addr;
		n->dport = e->nat_port;
		found = ICMP4_TRANSLATED;
	}
	return found;
}

/* reverse: the quote `n` is a translated reply toward a client, back to what its sender sent:
 * CT_SERVICE (the source back to the backend, the new outer destination; with a masquerade,
 * CT_SNAT_OUT gives the node IP:port the backend really sent to), or CT_SNAT_OUT (the destination
 * back to node IP:port). ICMP4_NOT_OURS or ICMP4_TRANSLATED. */
static __always_inline int __icmp4_reverse(struct quote *n, __be32 *odst, __u64 now)
{
	struct ct_entry *e = __icmp4_lookup(n, 1, CT_SERVICE, now);
	if (e && !(e->flags & CT_F_HAIRPIN)) {
		struct quote m = {};
		m.saddr = n->daddr;                 /* the flow's masquerade: client -> backend */
		m.sport = n->dport;
		m.daddr = e->nat_addr;
		m.dport = e->nat_port;
		m.proto = n->proto;
		n->saddr = e->nat_addr;
		n->sport = e->nat_port;
		*odst = e->nat_addr;
		struct ct_entry *o = __icmp4_lookup(&m, 0, CT_SNAT_OUT, now);
		if (o) {
			n->daddr = o->nat_addr;
			n->dport = o->nat_port;
		}
		return ICMP4_TRANSLATED;
	}
	e = __icmp4_lookup(n, 1, CT_SNAT_OUT, now);
	if (!e)
		return ICMP4_NOT_OURS;
	n->daddr = e->nat_addr;
	n->dport = e->nat_port;
	return ICMP4_TRANSLATED;
}

/* Write the translated quote `n` (read as `q`, raw `quote_words`) and the outer addresses. 0,
 * or -DROP_NAT_FAILED. */
static __always_inline int __icmp4_rewrite(struct __sk_buff *skb, const struct pkt *p, __u32 *quote_words,
					   const struct quote *q, const struct quote *n, __be32 osrc, __be32 odst)
{
	__u32 new_words[QUOTE_LEN / 4];
	__u8 *b = (__u8 *)new_words;
	struct iphdr *inner = (struct iphdr *)b;
	__builtin_memcpy(new_words, quote_words, QUOTE_LEN);
	__u32 l4delta = csum_delta4(q->saddr, n->saddr) + csum_delta4(q->daddr, n->daddr) +
			csum_delta2(q->sport, n->sport) + csum_delta2(q->dport, n->dport);
	inner->saddr = n->saddr;
	inner->daddr = n->daddr;
	__builtin_memcpy(b + QUOTE_SPORT_OFF, &n->sport, 2);
	__builtin_memcpy(b + QUOTE_DPORT_OFF, &n->dport, 2);
	int ret = __icmp4_quote_commit(skb, quote_words, new_words, l4delta);
	if (!IS_DROP(ret))
		ret = __icmp4_set_outer(skb, IP_SRC_OFF, p->saddr, osrc);
	if (!IS_DROP(ret))
		ret = __icmp4_set_outer(skb, IP_DST_OFF, p->daddr, odst);
	return ret;
}

/* Translate an ICMP error about one of our flows (see above): ICMP4_NOT_OURS, ICMP4_TRANSLATED,
 * ICMP4_BOUNCE, or -DROP_NAT_FAILED. */
static __always_inline int __icmp4_error_translate(struct __sk_buff *skb, const struct pkt *p, __u64 now)
{
	__u32 quote_words[QUOTE_LEN / 4];
	struct quote q = {}, n = {};
	__be32 osrc = p->saddr, odst = p->daddr;

	if (!__icmp4_quote_read(skb, p, quote_words, &q))
		return ICMP4_NOT_OURS;
	n = q;
	int found = __icmp4_forward(&n, &osrc, &odst, now);
	if (found == ICMP4_NOT_OURS)
		found = __icmp4_reverse(&n, &odst, now);
	if (found == ICMP4_NOT_OURS)
		return found;
	int ret = __icmp4_rewrite(skb, p, quote_words, &q, &n, osrc, odst);
	return IS_DROP(ret) ? ret : found;
}

/* On egress hooks, after __icmp4_error_translate: the outer source of an error about a flow whose
 * frontend (or masquerade address) is the node's own address, when the error came from the
 * translated end itself — written here, where the node's address is no martian. The quote is
 * as the error's recipient sent it: client -> frontend (the error came from the backend), or
 * remote -> node IP:port (it came from the pod or client behind the mapping). ICMP4_TRANSLATED
 * if rewritten, ICMP4_NOT_OURS if not, or -DROP_NAT_FAILED. */
static __always_inline int __icmp4_error_source(struct __sk_buff *skb, const struct pkt *p, __u64 now)
{
	__u32 quote_words[QUOTE_LEN / 4];
	struct quote q = {};
	if (!__icmp4_quote_read(skb, p, quote_words, &q))
		return ICMP4_NOT_OURS;
	__be32 osrc;
	if (bpf_skb_load_bytes(skb, IP_SRC_OFF, &osrc, sizeof(osrc)) < 0)
		return ICMP4_NOT_OURS;
	struct ct_entry *e = __icmp4_lookup(&q, 0, CT_SERVICE, now);
	if (!e || (e->flags & CT_F_HAIRPIN)) {
		e = __icmp4_lookup(&q, 0, CT_SNAT_IN, now);
		if (e && (e->flags & CT_F_HAIRPIN))
			e = NULL;
	}
	if (!e || osrc != e->nat_addr)
		return ICMP4_NOT_OURS;
	int ret = __icmp4_set_outer(skb, IP_SRC_OFF, osrc, q.daddr);
	return IS_DROP(ret) ? ret : ICMP4_TRANSLATED;
}

/* An ICMP error at a hook: translated if it is about one of our flows (and, on egress hooks, its
 * source). ICMP4_NOT_OURS, ICMP4_TRANSLATED, ICMP4_BOUNCE, or -DROP_NAT_FAILED. */
static __always_inline int __icmp4_error(struct __sk_buff *skb, const struct pkt *p, __u64 now, int egress)
{
	int t = __icmp4_error_translate(skb, p, now);
	if (IS_DROP(t) || t == ICMP4_BOUNCE || !egress)
		return t;
	int s = __icmp4_error_source(skb, p, now);
	if (IS_DROP(s))
		return s;
	return (t || s) ? ICMP4_TRANSLATED : ICMP4_NOT_OURS;
}

/* The stage for an ICMP error at a pod veth: DP_CONTINUE if it is not about a flow of ours. A
 * hairpin flow's error goes back out the veth it came in by, on ingress; on egress it is on its
 * way to the pod already. */
static __always_inline int icmp4_error_at_pod(struct __sk_buff *skb, const struct pkt *p, __u64 now, int egress)
{
	int ret = __icmp4_error(skb, p, now, egress);
	if (IS_DROP(ret))
		return ret;
	if (ret == ICMP4_NOT_OURS)
		return DP_CONTINUE;
	trace4_count(p, M_ICMP_REVNAT);
	return ret == ICMP4_BOUNCE && !egress ? l2_bounce(skb, DROP_NAT_FAILED) : TC_ACT_OK;
}

/* The verdict for an ICMP error on the node uplink: translated, or passed as not ours. */
static __always_inline int icmp4_error_at_uplink(struct __sk_buff *skb, const struct pkt *p, __u64 now, int egress)
{
	int ret = __icmp4_error(skb, p, now, egress);
	if (IS_DROP(ret))
		return ret;
	if (ret == ICMP4_NOT_OURS)
		return dp_pass();
	trace4_count(p, M_ICMP_REVNAT);
	return TC_ACT_OK;
}

#endif
