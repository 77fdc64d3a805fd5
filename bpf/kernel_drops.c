/* skb:kfree_skb, for `dataplane trace --drops` (dataplane/run/trace/drops.py): the kernel's drops
 * of packets in the lab's network namespaces, with the kernel's own reason. Loaded only while a
 * reader runs; not part of a node's dataplane (dataplane.c).
 *
 * bcc compiles against whatever kernel headers the machine has, so no kernel struct type is used
 * here: every kernel field is read at an offset the reader found in the running kernel's BTF and
 * passed as a -D define (SKB_SK, SKB_DEV, SKB_HEAD, SKB_NETWORK_HEADER, DEV_NET, SK_NET, NET_INUM),
 * with REASON_CONSUMED, ETH_P_IP and HAVE_RX_SK (the tracepoint has rx_sk). */
#include "types.h"

/* The format file types `reason` as enum skb_drop_reason, which bcc's generated args struct names
   but bcc's headers (Debian 6.1) do not define: a complete 4-byte enum of the same name lets it
   compile. Only its size matters; the values come from BTF, in user space. */
enum skb_drop_reason { DP_DROP_REASON_LOW = 0, DP_DROP_REASON_HIGH = 0xffffffff };

BPF_HASH(netns, u32, u8, 1024);
BPF_RINGBUF_OUTPUT(drops, 64);
BPF_ARRAY(lost, u64, 1);
/* The event being built, per CPU (a tracepoint program never nests on one CPU: the kernel skips a
 * nested run); its type, bcc's Leaf, is what the reader decodes the ring buffer's events with. */
BPF_PERCPU_ARRAY(drop_scratch, struct drop_event, 1);

static __always_inline void *read_ptr(void *base, int offset) {
    void *p = 0;
    if (base)
        bpf_probe_read_kernel(&p, sizeof(p), base + offset);
    return p;
}

/* The namespace's inode if it is one of ours, else 0. */
static __always_inline u32 watched(void *net) {
    u32 inum = 0;
    if (!net || bpf_probe_read_kernel(&inum, sizeof(inum), net + NET_INUM))
        return 0;
    return netns.lookup(&inum) ? inum : 0;
}

static __always_inline void read_ipv4(void *skb, struct drop_event *e) {
    unsigned char *head = read_ptr(skb, SKB_HEAD);
    u16 nh = 0xffff;
    u8 ip[20];
    bpf_probe_read_kernel(&nh, sizeof(nh), skb + SKB_NETWORK_HEADER);
    if (!head || nh == 0xffff || bpf_probe_read_kernel(ip, sizeof(ip), head + nh))
        return;
    if ((ip[0] >> 4) != 4 || (ip[0] & 0xf) < 5)
        return;
    e->ipv4 = 1;
    e->ipproto = ip[9];
    __builtin_memcpy(&e->saddr, &ip[12], 4);
    __builtin_memcpy(&e->daddr, &ip[16], 4);
    if ((((u16)ip[6] << 8 | ip[7]) & 0x1fff) || (ip[9] != 6 && ip[9] != 17))
        return;             /* a later fragment carries no ports */
    /* Ports follow the IP header by its IHL, not at skb->transport_header: that one is reset to
       the network header on receive and moved past it only in ip_rcv_core, so a drop before
       (tc, PREROUTING's early hooks, IP_INHDR) would read the IP header as ports. */
    u16 ports[2] = {};
    if (bpf_probe_read_kernel(ports, sizeof(ports), head + nh + (ip[0] & 0xf) * 4))
        return;
    e->sport = ports[0];
    e->dport = ports[1];
}

TRACEPOINT_PROBE(skb, kfree_skb) {
    u32 reason = args->reason;
    if (reason == REASON_CONSUMED)
        return 0;           /* freed after use, not dropped (consume_skb has its own tracepoint) */
    void *skb = args->skbaddr;
    /* The owning socket first: on a socket's queue UDP reuses skb->dev's storage (dev_scratch),
       so dev is trusted only for skbs without one. */
    void *sk = read_ptr(skb, SKB_SK);
#ifdef HAVE_RX_SK
    if (!sk)
        sk = args->rx_sk;
#endif
    u32 inum = watched(read_ptr(sk, SK_NET));
    if (!inum)
        inum = watched(read_ptr(read_ptr(skb, SKB_DEV), DEV_NET));
    if (!inum)
        return 0;
    int zero = 0;
    struct drop_event *e = drop_scratch.lookup(&zero);
    if (!e)
        return 0;
    __builtin_memset(e, 0, sizeof(*e));
    e->time = bpf_ktime_get_ns();
    e->location = (u64)args->location;
    e->netns = inum;
    e->reason = reason;
    e->ethertype = args->protocol;
    if (args->protocol == ETH_P_IP)
        read_ipv4(skb, e);
    if (drops.ringbuf_output(e, sizeof(*e), 0) < 0) {
        u64 *n = lost.lookup(&zero);
        if (n)
            __sync_fetch_and_add(n, 1);
    }
    return 0;
}
