/* Rejection, as kube-proxy's REJECT: answer the client with an ICMP port unreachable from the
 * address it sent to (the VIP), quoting its packet, and send it straight back out the veth it
 * came from. TCP connect() and UDP both see ECONNREFUSED at once, instead of a time-out. */
#ifndef DP_REJECT_H
#define DP_REJECT_H

#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/icmp.h>
#include <linux/stddef.h>

#include "metrics.h"
#include "verdict.h"
#include "parse.h"
#include "csum.h"
#include "l2.h"
#include "icmp.h"
#include "trace.h"

#define REJECT_IP_LEN  (IPV4_HLEN + ICMP_HLEN + QUOTE_LEN)
#define REJECT_LEN     (ETH_HLEN + REJECT_IP_LEN)
#define REJECT_TTL     64

/* The rejection replaces the packet: counted under `reason` (REJECT_*) and redirected, or
 * -DROP_REJECT_FAILED. A stage's end. */
static __always_inline int lb4_reject(struct __sk_buff *skb, const struct pkt *p, __u32 reason)
{
	__u32 msg_words[(ICMP_HLEN + QUOTE_LEN) / 4] = {};    /* ICMP header + quote */
	__u8 *msg = (__u8 *)msg_words;
	struct iphdr ip = {};

	if (p->options || bpf_skb_load_bytes(skb, IP_OFF, msg + ICMP_HLEN, QUOTE_LEN) < 0)
		return -DROP_REJECT_FAILED;

	msg[0] = ICMP_DEST_UNREACH;
	msg[1] = ICMP_PORT_UNREACH;
	__u16 icsum = csum_fold(bpf_csum_diff(0, 0, msg_words, sizeof(msg_words), 0));
	__builtin_memcpy(msg + offsetof(struct icmphdr, checksum), &icsum, 2);

	ip.version = 4;
	ip.ihl = IPV4_HLEN / 4;
	ip.tot_len = bpf_htons(REJECT_IP_LEN);
	ip.ttl = REJECT_TTL;
	ip.protocol = IPPROTO_ICMP;
	ip.saddr = p->daddr;
	ip.daddr = p->saddr;
	ip.check = csum_fold(bpf_csum_diff(0, 0, (__u32 *)&ip, sizeof(ip), 0));

	if (bpf_skb_change_tail(skb, REJECT_LEN, 0) < 0 ||
	    bpf_skb_store_bytes(skb, IP_OFF, &ip, sizeof(ip), 0) < 0 ||
	    bpf_skb_store_bytes(skb, L4_OFF, msg_words, sizeof(msg_words), 0) < 0)
		return -DROP_REJECT_FAILED;
	int verdict = l2_bounce(skb, DROP_REJECT_FAILED);
	if (!IS_DROP(verdict))
		trace4_count(p, reason);
	return verdict;
}

#endif
