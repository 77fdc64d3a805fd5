/* Entry points on the cgroup of each lab node (cgroup v2, made by the lab for the node's own
 * processes): service translation at the socket for host-network clients (lib/socklb.h).
 *
 *   sock_connect4      connect(): TCP, and connected UDP
 *   sock_sendmsg4      sendmsg()/sendto() on an unconnected UDP socket
 *   sock_recvmsg4      recvmsg(): the source of an answer back to the frontend
 *   sock_getpeername4  getpeername(): the frontend, not the backend */
#include <uapi/linux/bpf.h>
#include <uapi/linux/in.h>
#include <linux/stddef.h>

#include "types.h"
#include "consts.h"
#include "metrics.h"
#include "parse.h"
#include "lb.h"
#include "socklb.h"

int sock_connect4(struct bpf_sock_addr *ctx)
{
	return sock4_translate(ctx, TRACE_HOOK_SOCK_CONNECT);
}

int sock_sendmsg4(struct bpf_sock_addr *ctx)
{
	return sock4_translate(ctx, TRACE_HOOK_SOCK_SENDMSG);
}

int sock_recvmsg4(struct bpf_sock_addr *ctx)
{
	return sock4_restore(ctx);
}

int sock_getpeername4(struct bpf_sock_addr *ctx)
{
	return sock4_restore(ctx);
}
