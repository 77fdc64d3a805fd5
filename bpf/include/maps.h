/* Every map, with its purpose. Sizes can be set at compile time (-D...); defaults hold 64k
 * services with several backends each. */
#ifndef DP_MAPS_H
#define DP_MAPS_H

#include "types.h"
#include "consts.h"

#ifndef SVC_MAP_SIZE
#define SVC_MAP_SIZE      262144
#endif
#ifndef BACKEND_MAP_SIZE
#define BACKEND_MAP_SIZE  65536
#endif
#ifndef CT_MAP_SIZE
#define CT_MAP_SIZE       262144
#endif
#ifndef AFFINITY_MAP_SIZE
#define AFFINITY_MAP_SIZE 65536
#endif

/* (VIP, port, proto, slot) -> service port or backend slot */
BPF_TABLE("hash", struct svc_key, struct svc_value, services, SVC_MAP_SIZE);
/* backend id -> address and port */
BPF_TABLE("hash", __u32, struct backend, backends, BACKEND_MAP_SIZE);
/* flows: (5-tuple, direction) -> translation; LRU so a full table evicts the oldest */
BPF_TABLE("lru_hash", struct ct_key, struct ct_entry, conntrack, CT_MAP_SIZE);
/* (client, service port) -> backend, for sessionAffinity: ClientIP */
BPF_TABLE("lru_hash", struct affinity_key, struct affinity_value, affinity, AFFINITY_MAP_SIZE);
/* per-CPU packet counters, indexed by enum metric */
BPF_TABLE("percpu_array", __u32, __u64, metrics, M_MAX);
/* index 0: struct dp_config */
BPF_TABLE("array", __u32, struct dp_config, config, 1);

#endif
