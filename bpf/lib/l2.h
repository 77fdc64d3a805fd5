/* Sending a packet straight back out the veth it arrived on, to the same pod: used for
 * rejections and for hairpin flows. Routing cannot do the latter: the masqueraded source is the
 * node's own address, which the kernel refuses on input as a martian. */
#ifndef DP_L2_H
#define DP_L2_H

#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/pkt_cls.h>

#include "verdict.h"

/* The redirect verdict, or -reason if the frame could not be rewritten (the caller's reason: a
 * rejection's, or a translated packet's). */
static __always_inline int l2_bounce(struct __sk_buff *skb, __u32 reason)
{
	__u8 macs[2 * ETH_ALEN], swapped[2 * ETH_ALEN];
	if (bpf_skb_load_bytes(skb, 0, macs, sizeof(macs)) < 0)
		return -(int)reason;
	__builtin_memcpy(swapped, macs + ETH_ALEN, ETH_ALEN);
	__builtin_memcpy(swapped + ETH_ALEN, macs, ETH_ALEN);
	if (bpf_skb_store_bytes(skb, 0, swapped, sizeof(swapped), 0) < 0)
		return -(int)reason;
	/* Without flags bpf_redirect cannot fail: its verdict is TC_ACT_REDIRECT. Said here, so that
	 * the verifier, which only knows "a number", can tell the verdict from DP_CONTINUE. */
	return bpf_redirect(skb->ifindex, 0) == TC_ACT_REDIRECT ? TC_ACT_REDIRECT : -(int)reason;
}

#endif
