/* Socket-level load balancing for a node's own processes (host-network clients), as Cilium's
 * socket LB: a connect() (or an unconnected UDP sendmsg()) to a service frontend is pointed at a
 * backend before any packet exists, so the kernel sends straight to it, from the node's address;
 * the frontend is remembered per socket (cookie) and given back where the process looks:
 * recvmsg() source addresses of UDP answers and getpeername(). Attached only to the cgroups the
 * lab made for its nodes. A socket whose backend leaves its service is closed by the ebpf
 * backend at the next sync (as Cilium terminates them): it cannot be moved, its peer was fixed at connect().
 *
 * The same service entries as for pods (the POD scope first, as pods reach external frontends),
 * the same affinity (the client is the node's address). A frontend without endpoints, or a
 * cluster IP on a port it does not serve, refuses the connect() with ECONNREFUSED, as kube-proxy's
 * REJECT does; what kube-proxy drops (no local endpoint, a client outside the source ranges) is
 * left untranslated, and the packet goes where the node routes it. */
#ifndef DP_SOCKLB_H
#define DP_SOCKLB_H

#include <uapi/linux/bpf.h>
#include <uapi/linux/in.h>

#include "types.h"
#include "pinning.h"
#include "consts.h"
#include "map_sizes.h"
#include "config.h"
#include "metrics.h"
#include "hash.h"
#include "lb.h"
#include "trace.h"

/* the frontends node processes asked for, by socket and backend (socket-level load balancing).
 * */
DP_TABLE("lru_hash", struct sock_revnat_key, struct sock_revnat_value, sock_revnat, SOCK_REVNAT_MAP_SIZE, 0);

#ifndef ECONNREFUSED
#define ECONNREFUSED 111
#endif

/* bcc declares the cookie helper 32 bits wide: the cookie is 64. */
static __u64 (*dp_socket_cookie)(void *ctx) = (void *)BPF_FUNC_get_socket_cookie;

/* Refuse the call with ECONNREFUSED, counted under `reason`. */
static __always_inline int __sock4_refuse(const struct dp_config *cfg, __u8 hook, __u8 proto, __be32 daddr,
					  __be16 dport, __u32 reason)
{
	metrics_count(reason);
	if (cfg && trace4_enabled())
		trace4_sock(cfg, hook, proto, daddr, dport, reason, 0, 0, 0, 0, daddr, dport, 0);
	bpf_set_retval(-ECONNREFUSED);
	return 0;
}

/* A new socket's hash: the seed, its cookie and the frontend (there is no source port yet). */
static __always_inline __u32 __sock4_hash(__u32 seed, __u64 cookie, __be32 daddr, __be16 dport, __u8 proto)
{
	__u32 h = hash_mix32(seed ^ (__u32)cookie);
	h = hash_mix32(h ^ (__u32)(cookie >> 32));
	h = hash_mix32(h ^ daddr);
	return hash_mix32(h ^ ((__u32)dport | ((__u32)proto << 16)));
}

/* connect() / sendmsg() to a frontend, at socket hook `hook` (TRACE_HOOK_SOCK_*): the socket goes
 * to a backend. 1 to let the call go on, 0 to refuse it. */
static __always_inline int sock4_translate(struct bpf_sock_addr *ctx, __u8 hook)
{
	__be32 daddr = ctx->user_ip4;
	__be16 dport = (__be16)ctx->user_port;
	__u8 proto = ctx->protocol;
	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return 1;
	struct dp_config *cfg = config_get();
	struct svc_value *svc = lb4_lookup_service_for_pod(daddr, dport, proto);
	if (!svc)
		return lb4_is_vip(daddr) ? __sock4_refuse(cfg, hook, proto, daddr, dport, REJECT_PORT_UNSERVED) : 1;
	if (!cfg)
		return 1;
	if (svc->count == 0 && !(svc->flags & SVC_F_LOCAL_ONLY))     /* before source ranges, as in newflow.h */
		return __sock4_refuse(cfg, hook, proto, daddr, dport, REJECT_NO_ENDPOINTS);
	if (!lb4_source_allowed(svc, cfg->node_ip) || svc->count == 0)
		return 1;
	__u64 now = bpf_ktime_get_ns() + cfg->clock_offset;
	__u64 cookie = dp_socket_cookie(ctx);
	__u32 hash = __sock4_hash(cfg->seed, cookie, daddr, dport, proto);
	__u16 slot;
	__u32 id = lb4_choose_backend(svc, cfg->node_ip, hash, daddr, dport, proto, now, &slot);
	struct backend *be = lb4_lookup_backend(id);
	if (!be)
		return 1;
	struct sock_revnat_key rk = {};
	struct sock_revnat_value rv = {};
	rk.cookie = cookie;
	rk.addr = be->addr;
	rk.port = be->port;
	rv.addr = daddr;
	rv.port = dport;
	rv.proto = proto;
	sock_revnat.update(&rk, &rv);
	ctx->user_ip4 = be->addr;
	ctx->user_port = (__u32)be->port;
	metrics_count(M_SOCK_LB);
	if (trace4_enabled())
		trace4_sock(cfg, hook, proto, daddr, dport, M_SOCK_LB, svc->svc_id, id, hash, slot, be->addr,
			    be->port, 1);
	return 1;
}

/* recvmsg() / getpeername(): a backend's address, seen by a socket translated above, becomes the
 * frontend it asked for. */
static __always_inline int sock4_restore(struct bpf_sock_addr *ctx)
{
	struct sock_revnat_key rk = {};
	rk.cookie = dp_socket_cookie(ctx);
	rk.addr = ctx->user_ip4;
	rk.port = (__be16)ctx->user_port;
	struct sock_revnat_value *rv = sock_revnat.lookup(&rk);
	if (rv) {
		ctx->user_ip4 = rv->addr;
		ctx->user_port = (__u32)rv->port;
		metrics_count(M_SOCK_REVNAT);
	}
	return 1;
}

#endif
