/* Map capacities, set at load (dataplane --map-size NAME=ENTRIES, -D here); each map is declared
 * by the header that owns it (reads and writes it; others go through its functions).
 * The defaults hold 64k services of up to 6 ports*backends each (marker + head + slots per port),
 * and (the loader's default, CT_MAP_SIZE) kube-proxy's conntrack capacity at two entries a flow.
 * services and backends allocate entries on demand (no prealloc): a lab with three services costs
 * what three services cost. LRU maps are always preallocated. */
#ifndef DP_MAP_SIZES_H
#define DP_MAP_SIZES_H

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
/* Frontend and endpoint addresses (the pod hooks' fast path): every distinct one is a frontend,
 * which takes at least two services entries (a head and a marker or slot), or a backend; sized from
 * those two, so --map-size services=... or backends=... makes room here too. */
#ifndef ADDRESSES_MAP_SIZE
#define ADDRESSES_MAP_SIZE (SVC_MAP_SIZE / 2 + BACKEND_MAP_SIZE)
#endif

/* The addresses map's summary for the fast path (lib/lb.h, address_filter): 2 bits (frontend,
 * endpoint) in each of 32 slots per word, 2^21 slots in all (512 KiB). Fixed: an address's slot
 * is a hash of it masked by the slot count, which user space computes too (it reads the count from
 * the map). Full capacity (524,288 addresses) would leave about a fifth of other addresses in a
 * set slot; those take the exact lookup, not the wrong path. */
#define ADDRESS_FILTER_WORDS 65536
_Static_assert((ADDRESS_FILTER_WORDS & (ADDRESS_FILTER_WORDS - 1)) == 0,
	       "the address filter's slot is a hash masked by the slot count: a power of two");

/* Fixed: the loader writes at most this many (ip-masq-agent CIDRs; LoadBalancer source ranges). */
#define NONMASQ_MAP_SIZE     64
#define LB_SOURCES_MAP_SIZE  16384

#endif
