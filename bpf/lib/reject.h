/* Rejection, as kube-proxy's REJECT: answer the client with an ICMP port unreachable from the
 * address it sent to (the VIP), quoting its packet, and send it straight back out the veth it
 * came from. TCP connect() and UDP both see ECONNREFUSED at once, instead of a time-out. */
#ifndef DP_REJECT_H
#define DP_REJECT_H

#define REJECT_LEN (ETH_HLEN + 20 + 8 + QUOTE_LEN)

static __always_inline int reject(struct __sk_buff *skb, const struct pkt *p, __u32 reason)
{
	__u32 msg_words[(8 + QUOTE_LEN) / 4] = {};    /* ICMP header + quote */
	__u8 *msg = (__u8 *)msg_words;
	struct iphdr ip = {};

	if (p->options || bpf_skb_load_bytes(skb, IP_OFF, msg + 8, QUOTE_LEN) < 0)
		return drop(DROP_REJECT_FAILED);

	msg[0] = ICMP_DEST_UNREACH;
	msg[1] = ICMP_PORT_UNREACH;
	__u16 icsum = csum_fold(bpf_csum_diff(0, 0, msg_words, sizeof(msg_words), 0));
	__builtin_memcpy(msg + 2, &icsum, 2);

	ip.version = 4;
	ip.ihl = 5;
	ip.tot_len = bpf_htons(20 + 8 + QUOTE_LEN);
	ip.ttl = 64;
	ip.protocol = IPPROTO_ICMP;
	ip.saddr = p->daddr;
	ip.daddr = p->saddr;
	ip.check = csum_fold(bpf_csum_diff(0, 0, (__u32 *)&ip, sizeof(ip), 0));

	if (bpf_skb_change_tail(skb, REJECT_LEN, 0) < 0 ||
	    bpf_skb_store_bytes(skb, IP_OFF, &ip, sizeof(ip), 0) < 0 ||
	    bpf_skb_store_bytes(skb, L4_OFF, msg_words, sizeof(msg_words), 0) < 0)
		return drop(DROP_REJECT_FAILED);
	int verdict = bounce(skb);
	if (verdict < 0)
		return drop(DROP_REJECT_FAILED);
	count(reason);
	return verdict;
}

#endif
