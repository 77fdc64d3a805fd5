/* Constants: drop/reject reasons (one counter each), flags, timeouts. Mirrored by name in
 * dataplane/contract/consts.py (the metrics map's size, M_MAX, is checked against it). */
#ifndef DP_CONSTS_H
#define DP_CONSTS_H

/* Counters (metrics map index). Forwarding outcomes first, then every reason a packet is
 * dropped or rejected. */
enum metric {
	M_PASS = 0,            /* not service traffic: passed untouched */
	M_DNAT_NEW,            /* new flow to a service: backend chosen, DNATed */
	M_DNAT,                /* packet of a known flow DNATed */
	M_REVNAT,              /* reply translated back to the VIP */
	M_ICMP_REVNAT,         /* ICMP error about a NATed flow translated */
	M_HAIRPIN,             /* new flow whose backend is its own client: masqueraded */
	M_AFFINITY_HIT,        /* backend chosen by session affinity */
	REJECT_NO_ENDPOINTS,   /* service has no eligible endpoint: ICMP port unreachable */
	REJECT_PORT_UNSERVED,  /* VIP on a port/protocol it does not serve: ICMP port unreachable */
	DROP_UNKNOWN_L4,       /* VIP with a protocol other than TCP/UDP */
	DROP_BAD_IHL,          /* IPv4 header length < 20 or beyond the packet */
	DROP_BAD_LEN,          /* IPv4 total length shorter than its header or longer than the frame */
	DROP_TRUNCATED_L4,     /* TCP/UDP header cut short */
	DROP_IP_OPTIONS,       /* service traffic with IPv4 options (not supported, as in Katran) */
	DROP_FRAGMENT,         /* a later fragment to a frontend whose first fragment was not seen here,
	                        * or that would have to start a flow: its flow cannot be known */
	DROP_CT_LOST,          /* TCP to a frontend that is not a SYN and has no flow: a lost flow, whose
	                        * entries expired, were evicted from a full table or flushed with their
	                        * endpoint (nobody else sends mid-connection segments to a frontend) */
	DROP_CT_FULL,          /* conntrack entry could not be created (an LRU map refuses an insert only
	                        * when it finds nothing to evict; evictions are silent: see
	                        * DROP_CT_LOST and M_CT_RESTORED) */
	DROP_NO_BACKEND,       /* slot or backend entry missing (table mid-update) */
	DROP_NO_LOCAL_ENDPOINT,/* internalTrafficPolicy Local, no endpoint on this node (kube-proxy drops) */
	DROP_REJECT_FAILED,    /* could not build or send back the ICMP rejection */
	DROP_NAT_FAILED,       /* could not rewrite a translated packet (addresses, ports, checksums, an
	                        * ICMP error's quote) or send a hairpin packet back to its pod */
	M_SNAT_NEW,            /* new masqueraded flow: source port mapped on the node IP */
	M_SNAT,                /* packet of a masqueraded flow */
	M_UNSNAT,              /* reply to a masqueraded flow, back to its pod */
	M_SNAT_PORT_MOVED,     /* the flow's own port was in the NAT range but taken: another allocated */
	DROP_SNAT_EXHAUSTED,   /* no free port on the node IP for this destination */
	DROP_SOURCE_RANGE,     /* LoadBalancer IP from a client outside loadBalancerSourceRanges */
	M_CT_RESTORED,         /* one entry of a live flow was gone (evicted from a full table) and was
	                        * written again from its other half */
	M_SOCK_LB,             /* a node process's socket sent to a backend instead of a frontend */
	M_SOCK_REVNAT,         /* a backend's address shown to a node process as the frontend */
	M_TRACE_LOST,          /* a trace event the ring buffer had no room for (its reader fell behind): the
	                        * event is lost, never the packet */
	M_MAX,
};

#define SVC_F_AFFINITY   0x1
#define SVC_F_LOCAL_ONLY 0x2   /* count 0 because no endpoint is local: drop, not reject */
#define SVC_F_MASQ       0x4   /* external frontend with externalTrafficPolicy Cluster: new flows
                                * are masqueraded to the node IP on their way to the backend */
#define SVC_F_SRC_RANGES 0x8   /* LoadBalancer frontend: only clients in its source ranges */
#define SVC_F_POD_SCOPE  0x10  /* a SCOPE_POD entry: its slots are SCOPE_POD entries too */

#define ADDR_F_FRONTEND  0x1   /* addresses map: a frontend address */
#define ADDR_F_ENDPOINT  0x2   /* addresses map: an endpoint address */

#define SCOPE_EXTERNAL   0
#define SCOPE_POD        1

#define CT_SERVICE       1
#define CT_REPLY         2
#define CT_SNAT_OUT      3
#define CT_SNAT_IN       4
#define CT_NO_SNAT       5   /* (nosnat map) reply tuple of a UDP flow that came in: never masqueraded */

#define SNAT_RETRIES     32      /* random ports tried after the source port itself */
#define LINK_LOCAL_NET   0x0000fea9  /* 169.254.0.0 as read from the packet (little-endian) */
#define LINK_LOCAL_MASK  0x0000ffff

/* Flow state, shared by both entries of a flow. TCP closing is tracked per direction (as
 * Cilium's rx/tx closing, netfilter's FIN_WAIT/CLOSE_WAIT): a half-closed connection still
 * carries data the other way. */
#define CT_F_HAIRPIN     0x1
#define CT_F_SEEN_REPLY  0x2   /* TCP: a packet in the reply direction was seen (established) */
#define CT_F_FIN_ORIG    0x4   /* TCP: the original direction (client, or masqueraded pod) sent FIN */
#define CT_F_EGRESS      0x8   /* reverse NAT to the node's own address: only on egress hooks */
#define CT_F_FIN_REPLY   0x10  /* TCP: the reply direction (backend, or remote) sent FIN */
#define CT_F_RST         0x20  /* TCP: a RST was seen in either direction */
#define CT_F_CLOSED_BOTH (CT_F_FIN_ORIG | CT_F_FIN_REPLY)

/* Where a trace event was made (struct trace_event's hook). */
#define TRACE_HOOK_FROM_POD     1
#define TRACE_HOOK_TO_POD       2
#define TRACE_HOOK_FROM_NETDEV  3
#define TRACE_HOOK_TO_NETDEV    4
#define TRACE_HOOK_SOCK_CONNECT 5
#define TRACE_HOOK_SOCK_SENDMSG 6

#define NS_PER_SEC       1000000000ULL
/* Default conntrack lifetimes in seconds (config map; `--ct-timeout` sets them). Every packet of
 * a flow renews both of its entries. The TCP defaults are the ones kube-proxy writes into the
 * node's netfilter (conntrack.tcpEstablishedTimeout 24 h, tcpCloseWaitTimeout 1 h). */
#define CT_DEFAULT_SYN        60      /* TCP before any reply */
#define CT_DEFAULT_TCP        86400   /* established TCP: 24 h */
#define CT_DEFAULT_CLOSE_WAIT 3600    /* established TCP closed in one direction only: 1 h */
#define CT_DEFAULT_CLOSE      10      /* TCP closed both ways, or reset */
#define CT_DEFAULT_UDP        60

#endif
