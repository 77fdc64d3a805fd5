/* Load balancing: service lookup and backend choice. Which endpoints are eligible (ready,
 * terminating fallback, internalTrafficPolicy) was decided in user space for this node; here the
 * choice among them is a seeded hash of the flow, so a run can be replayed, and session affinity. */
#ifndef DP_LB_H
#define DP_LB_H

#include "types.h"
#include "pinning.h"
#include "consts.h"
#include "map_sizes.h"
#include "metrics.h"
#include "parse.h"
#include "hash.h"
#include "trace.h"

/* (VIP, port, proto, slot) -> service port or backend slot */
DP_TABLE("hash", struct svc_key, struct svc_value, services, SVC_MAP_SIZE, BPF_F_NO_PREALLOC);

/* backend id -> address and port */
DP_TABLE("hash", __u32, struct backend, backends, BACKEND_MAP_SIZE, BPF_F_NO_PREALLOC);

/* (client, service port) -> backend, for sessionAffinity: ClientIP */
DP_TABLE("lru_hash", struct affinity_key, struct affinity_value, affinity, AFFINITY_MAP_SIZE, 0);

/* (service port, backend) -> 1 for every eligible backend of a service port with affinity */
DP_TABLE("hash", struct affinity_match_key, __u8, affinity_match, SVC_MAP_SIZE, BPF_F_NO_PREALLOC);

/* loadBalancerSourceRanges: which clients each LoadBalancer frontend admits */
DP_TABLE("lpm_trie", struct lb_source_key, __u8, lb_sources, LB_SOURCES_MAP_SIZE, BPF_F_NO_PREALLOC);

/* address -> ADDR_F_*: every frontend address (cluster, external and load-balancer IPs, the
 * node's address with node ports) and every endpoint address in the table, in any state, and
 * those a live flow still names. The exact record, kept by user space (the sync adds and removes
 * entries, an adopting agent reads them back); the programs read its summary, address_filter. */
DP_TABLE("hash", __be32, __u32, addresses, ADDRESSES_MAP_SIZE, BPF_F_NO_PREALLOC);

/* The addresses map summarized for the fast path (pod.c): slot lb4_address_slot(a) holds, in 2
 * bits, the OR of the ADDR_F_* of every address of the map that falls in that slot (32 slots per
 * word). A clear bit is a definite no: what has neither bit at either end is nobody's service
 * traffic and leaves after these two reads. A set bit is a maybe, and the packet takes the full
 * path, which is right for every packet (a few percent of other addresses share a slot with one
 * of the table's at 65,536 services). An array lookup the verifier inlines: no helper call, where
 * the hash lookups it replaced cost about 25 ns each (`dataplane bench profile not-service`).
 * Written by user space with the addresses map (backends/ebpf/address_filter.py). */
DP_TABLE("array", __u32, __u64, address_filter, ADDRESS_FILTER_WORDS, 0);

#define LB_SOURCE_KEY_BITS 64   /* lb_sources: the 32 bits of svc_id, then a full IPv4 address */

static __always_inline struct svc_value *__lb4_lookup_service_scope(__u8 scope, __be32 vip, __be16 port,
								  __u8 proto, __u16 slot)
{
	struct svc_key k = {};
	k.vip = vip;
	k.port = port;
	k.proto = proto;
	k.scope = scope;
	k.slot = slot;
	return services.lookup(&k);
}

/* A backend's address and port by id, or NULL (mid-update). */
static __always_inline struct backend *lb4_lookup_backend(__u32 id)
{
	return id ? backends.lookup(&id) : NULL;
}

static __always_inline struct svc_value *lb4_lookup_service(__be32 vip, __be16 port, __u8 proto, __u16 slot)
{
	return __lb4_lookup_service_scope(SCOPE_EXTERNAL, vip, port, proto, slot);
}

/* The entry a pod (or a node process) uses for a frontend: its own for an external frontend with
 * externalTrafficPolicy Local (every endpoint, kube-proxy's short-circuit), else everybody's. */
static __always_inline struct svc_value *lb4_lookup_service_for_pod(__be32 vip, __be16 port, __u8 proto)
{
	struct svc_value *svc = __lb4_lookup_service_scope(SCOPE_POD, vip, port, proto, 0);
	return svc ? svc : lb4_lookup_service(vip, port, proto, 0);
}

#define ADDRESS_FILTER_SLOTS (ADDRESS_FILTER_WORDS * 32)

/* An address's slot in address_filter: murmur3's 32-bit finalizer of the address in host order
 * (pod and service addresses differ in their low bits, which it spreads over all of them). */
static __always_inline __u32 lb4_address_slot(__be32 addr)
{
	__u32 h = bpf_ntohl(addr);
	h ^= h >> 16;
	h *= 0x85ebca6b;
	h ^= h >> 13;
	h *= 0xc2b2ae35;
	h ^= h >> 16;
	return h & (ADDRESS_FILTER_SLOTS - 1);
}

/* What an address may be to the services: the ADDR_F_* bits its slot of address_filter holds
 * (a superset of its own: those of the other addresses in the slot too). */
static __always_inline __u32 lb4_address_maybe(__be32 addr)
{
	__u32 slot = lb4_address_slot(addr);
	__u32 word = slot / 32;
	__u64 *bits = address_filter.lookup(&word);
	return bits ? (*bits >> ((slot % 32) * 2)) & (ADDR_F_FRONTEND | ADDR_F_ENDPOINT)
		    : ADDR_F_FRONTEND | ADDR_F_ENDPOINT;
}

/* Is the address a service frontend at all (its VIP marker)? */
static __always_inline int lb4_is_vip(__be32 addr)
{
	return lb4_lookup_service(addr, 0, 0, 0) != NULL;
}

/* Does a LoadBalancer frontend with source ranges admit this client? (1 for every other.) */
static __always_inline int lb4_source_allowed(const struct svc_value *svc, __be32 client)
{
	if (!(svc->flags & SVC_F_SRC_RANGES))
		return 1;
	struct lb_source_key sk = {};
	sk.prefixlen = LB_SOURCE_KEY_BITS;
	sk.svc_id = svc->svc_id;
	sk.addr = client;
	return lb_sources.lookup(&sk) != NULL;
}

/* Is this backend one of the service port's eligible backends now? */
static __always_inline int __lb4_affinity_eligible(__u32 svc_id, __u32 backend_id)
{
	struct affinity_match_key mk = {};
	mk.svc_id = svc_id;
	mk.backend_id = backend_id;
	return affinity_match.lookup(&mk) != NULL;
}

/* Choose a backend for a service port: with affinity, the client's remembered backend if it was
 * used within the timeout and is still eligible here, else (and always without affinity) the
 * slot `hash` picks; with affinity the choice is remembered. Returns the backend id, 0 if none,
 * and in *slot_out the slot that chose it (0: affinity, for a trace). For packets
 * (lb4_select_backend) and sockets (socklb.h) alike. */
static __always_inline __u32 lb4_choose_backend(const struct svc_value *svc, __be32 client, __u32 hash,
						__be32 vip, __be16 port, __u8 proto, __u64 now,
						__u16 *slot_out)
{
	__u32 id = 0;
	*slot_out = 0;
	struct affinity_key ak = {};
	struct affinity_value *av = NULL;

	if (svc->flags & SVC_F_AFFINITY) {
		ak.client = client;
		ak.svc_id = svc->svc_id;
		av = affinity.lookup(&ak);
		if (av && now - av->last_used <= (__u64)svc->affinity_timeout * NS_PER_SEC &&
		    __lb4_affinity_eligible(svc->svc_id, av->backend_id)) {
			id = av->backend_id;
			metrics_count(M_AFFINITY_HIT);
		}
	}
	if (!id) {
		__u16 slot = (hash % svc->count) + 1;
		__u8 scope = (svc->flags & SVC_F_POD_SCOPE) ? SCOPE_POD : SCOPE_EXTERNAL;
		struct svc_value *s = __lb4_lookup_service_scope(scope, vip, port, proto, slot);
		if (!s)
			return 0;
		id = s->backend_id;
		*slot_out = slot;
	}
	if (svc->flags & SVC_F_AFFINITY) {
		struct affinity_value nv = {};
		nv.last_used = now;
		nv.backend_id = id;
		affinity.update(&ak, &nv);
	}
	return id;
}

/* A new flow's backend: the flow hash of its packet chooses, the client's address is remembered. */
static __always_inline __u32 lb4_select_backend(const struct pkt *p, const struct svc_value *svc,
						__u32 seed, __u64 now)
{
	__u32 hash = hash_flow4(p, seed);
	__u16 slot;
	__u32 id = lb4_choose_backend(svc, p->saddr, hash, p->daddr, p->dport, p->proto, now, &slot);
	trace4_note_choice(p, id, hash, slot);
	if (id && !slot)
		trace4_note_counted(p, M_AFFINITY_HIT);    /* counted in lb4_choose_backend */
	return id;
}

#endif
