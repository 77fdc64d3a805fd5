/* Every map, with its purpose and the header that owns it (the one that reads and writes it; others
 * go through that header's functions). Declared here, once, because bcc generates the types user
 * space reads from these declarations, and the sizes come from the loader. Sizes are set at load (dataplane --map-size NAME=ENTRIES, -D here);
 * the defaults hold 64k services of up to 6 ports*backends each (marker + head + slots per port),
 * and (the loader's default, CT_MAP_SIZE) kube-proxy's conntrack capacity at two entries a flow.
 * services and backends allocate entries on demand (no prealloc): a lab with three services costs
 * what three services cost. LRU maps are always preallocated. */
#ifndef DP_MAPS_H
#define DP_MAPS_H

#include "types.h"
#include "consts.h"

#ifndef SVC_MAP_SIZE
#define SVC_MAP_SIZE      524288
#endif
#ifndef BACKEND_MAP_SIZE
#define BACKEND_MAP_SIZE  262144
#endif
#ifndef CT_MAP_SIZE
#define CT_MAP_SIZE       262144
#endif
#ifndef AFFINITY_MAP_SIZE
#define AFFINITY_MAP_SIZE 65536
#endif
#ifndef NOSNAT_MAP_SIZE
#define NOSNAT_MAP_SIZE   65536
#endif
#ifndef SOCK_REVNAT_MAP_SIZE
#define SOCK_REVNAT_MAP_SIZE 65536
#endif
#ifndef FRAG_MAP_SIZE
#define FRAG_MAP_SIZE     8192
#endif

/* (VIP, port, proto, slot) -> service port or backend slot. Owner: lb.h */
BPF_F_TABLE("hash", struct svc_key, struct svc_value, services, SVC_MAP_SIZE, BPF_F_NO_PREALLOC);
/* backend id -> address and port. Owner: lb.h */
BPF_F_TABLE("hash", __u32, struct backend, backends, BACKEND_MAP_SIZE, BPF_F_NO_PREALLOC);
/* flows: (5-tuple, direction) -> translation; LRU so a full table evicts the oldest. Owner:
 * conntrack.h; snat.h claims and heals the node-IP mappings, newflow.h stores new flows */
BPF_TABLE("lru_hash", struct ct_key, struct ct_entry, conntrack, CT_MAP_SIZE);
/* (client, service port) -> backend, for sessionAffinity: ClientIP. Owner: lb.h */
BPF_TABLE("lru_hash", struct affinity_key, struct affinity_value, affinity, AFFINITY_MAP_SIZE);
/* (service port, backend) -> 1 for every eligible backend of a service port with affinity. Owner: lb.h */
BPF_F_TABLE("hash", struct affinity_match_key, __u8, affinity_match, SVC_MAP_SIZE, BPF_F_NO_PREALLOC);
/* UDP answers a pod owes to remotes that reached it: never masqueraded (no entry in conntrack).
 * Owner: snat.h */
BPF_TABLE("lru_hash", struct ct_key, struct nosnat_value, nosnat, NOSNAT_MAP_SIZE);
/* fragmented datagrams in flight: (source, destination, IP id, proto) -> ports of the first
 * fragment. Owner: parse.h */
BPF_TABLE("lru_hash", struct frag_key, struct frag_ports, frags, FRAG_MAP_SIZE);
/* the frontends node processes asked for, by socket and backend (socket-level load balancing).
 * Owner: socklb.h */
BPF_TABLE("lru_hash", struct sock_revnat_key, struct sock_revnat_value, sock_revnat, SOCK_REVNAT_MAP_SIZE);
/* per-CPU packet counters, indexed by enum metric. Owner: metrics.h */
BPF_TABLE("percpu_array", __u32, __u64, metrics, M_MAX);
/* index 0: struct dp_config. Read by parse.h (pkt4_begin) and socklb.h */
BPF_TABLE("array", __u32, struct dp_config, config, 1);
/* destinations pods reach without masquerade (ip-masq-agent's nonMasqueradeCIDRs). Owner: snat.h */
BPF_F_TABLE("lpm_trie", struct lpm_v4_key, __u8, nonmasq, 64, BPF_F_NO_PREALLOC);
/* loadBalancerSourceRanges: which clients each LoadBalancer frontend admits. Owner: lb.h */
BPF_F_TABLE("lpm_trie", struct lb_source_key, __u8, lb_sources, 16384, BPF_F_NO_PREALLOC);

#endif
