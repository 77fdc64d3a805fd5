/* Sending a packet straight back out the veth it arrived on, to the same pod: used for
 * rejections and for hairpin flows. Routing cannot do the latter: the masqueraded source is the
 * node's own address, which the kernel refuses on input as a martian. */
#ifndef DP_L2_H
#define DP_L2_H

static __always_inline int bounce(struct __sk_buff *skb)
{
	__u8 macs[2 * ETH_ALEN], swapped[2 * ETH_ALEN];
	if (bpf_skb_load_bytes(skb, 0, macs, sizeof(macs)) < 0)
		return -1;
	__builtin_memcpy(swapped, macs + ETH_ALEN, ETH_ALEN);
	__builtin_memcpy(swapped + ETH_ALEN, macs, ETH_ALEN);
	if (bpf_skb_store_bytes(skb, 0, swapped, sizeof(swapped), 0) < 0)
		return -1;
	return bpf_redirect(skb->ifindex, 0);
}

#endif
