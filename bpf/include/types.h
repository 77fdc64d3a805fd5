/* Structs shared with user space. Python never copies these: it uses the Key/Leaf ctypes that bcc
 * generates from them, and tests/bpf/test_layout.py pins their layout. Padding is explicit. */
#ifndef DP_TYPES_H
#define DP_TYPES_H

/* services: one entry per (VIP, port, protocol, slot).
 *   slot 0             the service port itself: backend count, flags, affinity timeout, id
 *   slot 1..count      the eligible backends, by backend id
 * A "VIP marker" (port 0, proto 0, slot 0) says the address is a service VIP at all, so that a
 * VIP on a port it does not serve is rejected instead of passed. An external frontend with
 * externalTrafficPolicy Local also has SCOPE_POD entries: pods reaching it are not held to this
 * node's endpoints but use every endpoint (kube-proxy's "pod traffic for ... external
 * destinations" short-circuit). */
struct svc_key {
	__be32 vip;
	__be16 port;
	__u8   proto;
	__u8   scope;            /* SCOPE_EXTERNAL, or SCOPE_POD: the entry pods use for this frontend */
	__u16  slot;
	__u16  pad1;
};

struct svc_value {
	__u32 backend_id;        /* slot > 0 */
	__u16 count;             /* slot 0: eligible backends; 0 = reject (no endpoints) */
	__u16 flags;             /* slot 0: SVC_F_* */
	__u32 affinity_timeout;  /* slot 0: seconds, with SVC_F_AFFINITY */
	__u32 svc_id;            /* slot 0: the service port's id (affinity key) */
};

/* backends: id -> where to send. */
struct backend {
	__be32 addr;
	__be16 port;
	__u16  pad0;
};

/* conntrack key: a packet's 5-tuple as seen at the hook, and which table it belongs to. */
struct ct_key {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8   proto;
	__u8   dir;              /* CT_SERVICE: client -> VIP; CT_REPLY: backend -> client;
	                          * CT_SNAT_OUT: pod -> remote as sent; CT_SNAT_IN: remote -> node IP;
	                          * CT_NO_SNAT (nosnat map): pod -> remote answers of a flow the
	                          * remote began */
	__u16  pad0;
};

/* conntrack entry.
 *   CT_SERVICE:  nat_addr:nat_port = the backend; with CT_F_HAIRPIN, snat_addr:snat_port = the
 *                source the client was masqueraded to (the node IP, an allocated port).
 *   CT_REPLY:    nat_addr:nat_port = the VIP to restore as source.
 *   CT_SNAT_OUT: nat_addr:nat_port = the node IP:port the source becomes.
 *   CT_SNAT_IN:  nat_addr:nat_port = the pod/client the destination returns to; with
 *                CT_F_HAIRPIN, nat_addr:nat_port = the VIP to restore as source and
 *                snat_addr:snat_port = the client's own address to restore as destination. */
struct ct_entry {
	__u64  expires;          /* ns, on the dataplane clock (ktime + config clock offset) */
	__be32 nat_addr;
	__be16 nat_port;
	__u16  flags;            /* CT_F_* */
	__be32 snat_addr;
	__be16 snat_port;
	__u16  pad0;
	__u32  backend_id;       /* so that removing a backend can flush its flows */
	__u32  svc_id;
};

/* sock_revnat: what a node process's socket really talks to, for its answers and getpeername():
 * (socket cookie, backend address, port) -> the frontend it asked for. */
struct sock_revnat_key {
	__u64  cookie;
	__be32 addr;
	__be16 port;
	__u16  pad0;
};

struct sock_revnat_value {
	__be32 addr;
	__be16 port;
	__u8   proto;
	__u8   pad0;
};

/* frags: the ports of a fragmented datagram, found by its first fragment, for the later ones. */
struct frag_key {
	__be32 saddr;
	__be32 daddr;
	__be16 id;               /* IPv4 identification */
	__u8   proto;
	__u8   pad0;
};

struct frag_ports {
	__be16 sport;
	__be16 dport;
};

/* nosnat: the reply tuple of a UDP datagram that came in from outside to a pod (key dir
 * CT_NO_SNAT): the pod's answers are replies, never masqueraded, until it expires. */
struct nosnat_value {
	__u64 expires;           /* ns, dataplane clock */
};

/* session affinity: (client, service port) -> backend, until last use + timeout. */
struct affinity_key {
	__be32 client;
	__u32  svc_id;
};

struct affinity_value {
	__u64 last_used;         /* ns, dataplane clock */
	__u32 backend_id;
	__u32 pad0;
};

/* affinity_match: which backends are eligible for a service port now. A remembered backend counts
 * only if its pair is here (as Cilium's affinity match map): one that left the service port, or
 * became unready or terminating for it, is not chosen again just because it still backs another
 * service. */
struct affinity_match_key {
	__u32 svc_id;
	__u32 backend_id;
};

/* config: one entry, written at load. */
struct dp_config {
	__u64  clock_offset;     /* ns added to bpf_ktime_get_ns(): lets tests move time forward */
	__u32  seed;             /* backend selection hash seed: same seed, same choices */
	__be32 node_ip;          /* source for hairpin masquerade */
	__u32  ct_syn;           /* conntrack lifetimes, seconds: TCP before any reply */
	__u32  ct_tcp;           /*   TCP once the reply direction was seen */
	__u32  ct_close;         /*   TCP closed both ways, or reset */
	__u32  ct_udp;           /*   UDP (and any other protocol) */
	__u32  ct_close_wait;    /*   TCP established and closed in one direction */
	__be32 cluster_net;      /* the cluster CIDR: sources that egress masquerade applies to */
	__be32 cluster_mask;
	__u16  snat_lo;          /* masquerade port range, when the source port is taken */
	__u16  snat_hi;
	__u8   masquerade;       /* egress masquerade on (ip-masq-agent semantics) */
	__u8   masq_link_local;  /* masquerade to 169.254.0.0/16 too */
	__u16  pad0;
	__u32  pad1;
};

/* lb_sources: (frontend id, client CIDR): prefixlen counts the 32 bits of svc_id, then the CIDR's. */
struct lb_source_key {
	__u32  prefixlen;
	__u32  svc_id;
	__be32 addr;
};

/* nonmasq: destinations pods reach with their own address (ip-masq-agent's nonMasqueradeCIDRs). */
struct lpm_v4_key {
	__u32  prefixlen;
	__be32 addr;
};

/* trace_events: one decision of a hook about one packet, sent while `dataplane trace` runs
 * (lib/trace.h). "Before" is the packet as the hook met it, "after" as it left the hook (the same
 * when nothing was rewritten; an ICMP rejection for a rejected one). */
struct trace_event {
	__u64  time;             /* ns, CLOCK_MONOTONIC (bpf_ktime_get_ns, without the clock offset) */
	__u32  ifindex;          /* the TC hook's interface; 0 at a socket hook */
	__u32  counted;          /* 1 << M_*: every counter the packet added to (outcome, extras) */
	__s32  verdict;          /* the TC verdict (TC_ACT_*); a socket hook: 1 go on, 0 refused */
	__u8   hook;             /* TRACE_HOOK_* */
	__u8   drop;             /* the drop reason (enum metric), 0 if not dropped */
	__u8   proto;
	__u8   tcp_flags;
	__be32 saddr;            /* before */
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__be32 new_saddr;        /* after */
	__be32 new_daddr;
	__be16 new_sport;
	__be16 new_dport;
	__u8   new_proto;
	__u8   ct_dir;           /* a known flow: the conntrack entry that held it (CT_*) */
	__u16  ct_flags;         /* a known flow: its CT_F_* after this packet */
	__u32  svc_id;           /* the service port met (new flow) or the flow's (known flow) */
	__u32  backend_id;       /* the backend chosen (new flow) or the flow's */
	__u32  hash;             /* new flow: its flow hash */
	__u16  slot;             /* new flow: the slot the hash picked (1..count); 0: by affinity */
	__u16  count;            /* new flow: the service port's eligible backends */
	__be16 snat_port;        /* a port taken on the node's address (masquerade, hairpin) */
	__u8   snat_tries;       /* ports tried before it (0: the flow's own port) */
	__u8   pad0;
	__u32  ct_remaining;     /* a known flow: seconds its entries live after this packet */
	__u32  pad1;
};

/* kernel_drops.c's event for `dataplane trace --drops`: one packet the kernel dropped in a lab
 * namespace (skb:kfree_skb), read with bcc's type of it (run/trace/drops.py). */
struct drop_event {
	__u64  time;             /* bpf_ktime_get_ns: CLOCK_MONOTONIC */
	__u64  location;         /* the kernel address that dropped it */
	__u32  netns;            /* inode of the network namespace */
	__u32  reason;           /* enum skb_drop_reason */
	__be32 saddr;            /* with ipv4 */
	__be32 daddr;
	__u16  ethertype;        /* host order (the tracepoint's ntohs(skb->protocol)) */
	__be16 sport;            /* TCP and UDP, not a later fragment */
	__be16 dport;
	__u8   ipproto;
	__u8   ipv4;             /* the IPv4 fields were read */
};

#endif
