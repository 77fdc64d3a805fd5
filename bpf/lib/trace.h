/* Tracing: one event per decision about a packet, for `dataplane trace` (as Cilium's trace and
 * drop notifications): the hook, the packet before and after, what was counted (the outcome, a
 * drop's reason, the extras: affinity, hairpin, a moved or restored port), and why: the service
 * port met, the backend chosen with the hash and slot that chose it, the conntrack entry that
 * held a known flow, the port taken on the node's address.
 *
 * Off unless a reader is attached (trace_control, written by run/trace/bpf.py alone: a map of
 * its own, so that no writer of the node's config ever races it): each entry point reads the flag
 * into the packet's struct pkt, and a note then costs a byte test. On, the notes of one packet gather in a per-CPU scratch event that
 * the entry point completes and sends (trace4_end), then clears, so that the next packet starts
 * from an empty one: every packet with the flag reaches its entry point's end, and a TC program
 * is never interrupted by another on the same CPU (softirq, or bottom halves disabled on egress).
 * The socket hooks run in process context, which a softirq may interrupt: they build their event
 * on the stack instead (trace4_sock). Packets the dataplane leaves alone (not service traffic)
 * make no event. A full ring buffer loses events, never packets. */
#ifndef DP_TRACE_H
#define DP_TRACE_H

#include <uapi/linux/bpf.h>
#include <uapi/linux/in.h>
#include <linux/stddef.h>

#include "types.h"
#include "pinning.h"
#include "consts.h"
#include "metrics.h"
#include "verdict.h"
#include "parse.h"

_Static_assert(M_MAX <= 32, "trace_event.counted holds one bit per counter");

/* Is this packet traced? A build with DP_TRACE_COMPILED_OUT has no tracing at all (every note
 * folds away): `bench kernel` times it beside the normal build to measure what the notes cost
 * while no trace is attached. */
#ifdef DP_TRACE_COMPILED_OUT
#define __trace4_on(p) 0
#else
#define __trace4_on(p) ((p)->trace)
#endif


/* The events, to user space: 1 MiB per node (about 11,000 events before a reader that stopped
 * reading loses any). bcc has no pinned form of BPF_RINGBUF_OUTPUT: this is it, with the pin. */
struct trace_events_table_t {
	int key;
	__u32 leaf;
	int (*ringbuf_output)(void *, __u64, __u64);
	void *(*ringbuf_reserve)(__u64);
	void (*ringbuf_discard)(void *, __u64);
	void (*ringbuf_submit)(void *, __u64);
	__u32 max_entries;
};
#ifdef DP_PIN_DIR
__attribute__((section("maps/ringbuf:" DP_PIN_DIR "/trace_events")))
#else
__attribute__((section("maps/ringbuf")))
#endif
struct trace_events_table_t trace_events = { .max_entries = 1 << 20 };

/* The event being gathered for the packet at hand, per CPU (see above). */
DP_TABLE("percpu_array", __u32, struct trace_event, trace_scratch, 1, 0);

/* index 0: 1 while `dataplane trace` reads this node's events, else 0. */
DP_TABLE("array", __u32, __u32, trace_control, 1, 0);

/* Is a reader attached? (An inlined array read.) */
static __always_inline int trace4_enabled(void)
{
#ifdef DP_TRACE_COMPILED_OUT
	return 0;
#else
	__u32 zero = 0;
	__u32 *on = trace_control.lookup(&zero);
	return on && *on;
#endif
}

/* An entry point's first step: whether its packet is traced, and where it is. */
static __always_inline void trace4_begin(struct pkt *p, __u8 hook)
{
	p->trace = trace4_enabled();
	p->hook = hook;
}

static __always_inline struct trace_event *__trace4_scratch(void)
{
	__u32 zero = 0;
	return trace_scratch.lookup(&zero);
}

/* Note in the packet's event a counter moved elsewhere (where the packet was not at hand). */
static __always_inline void trace4_note_counted(const struct pkt *p, __u32 m)
{
	if (!__trace4_on(p))
		return;
	struct trace_event *te = __trace4_scratch();
	if (te)
		te->counted |= 1U << m;
}

/* Count an outcome (metrics_count), and note it in the packet's event when tracing. */
static __always_inline void trace4_count(const struct pkt *p, __u32 m)
{
	metrics_count(m);
	if (!__trace4_on(p))
		return;
	struct trace_event *te = __trace4_scratch();
	if (te)
		te->counted |= 1U << m;
}

/* The service port a new flow met. */
static __always_inline void trace4_note_service(const struct pkt *p, const struct svc_value *svc)
{
	if (!__trace4_on(p))
		return;
	struct trace_event *te = __trace4_scratch();
	if (!te)
		return;
	te->svc_id = svc->svc_id;
	te->count = svc->count;
}

/* A new flow's backend, and what chose it: the hash and its slot, or (slot 0) affinity. */
static __always_inline void trace4_note_choice(const struct pkt *p, __u32 id, __u32 hash, __u16 slot)
{
	if (!__trace4_on(p))
		return;
	struct trace_event *te = __trace4_scratch();
	if (!te)
		return;
	te->backend_id = id;
	te->hash = hash;
	te->slot = slot;
}

/* A known flow: the entry that held it, its state after this packet and how long it lives. */
static __always_inline void trace4_note_flow(const struct pkt *p, const struct ct_key *k,
					     const struct ct_entry *e, __u64 now)
{
	if (!__trace4_on(p))
		return;
	struct trace_event *te = __trace4_scratch();
	if (!te)
		return;
	te->ct_dir = k->dir;
	te->ct_flags = e->flags;
	te->svc_id = e->svc_id;
	te->backend_id = e->backend_id;
	te->ct_remaining = e->expires > now ? (__u32)((e->expires - now) / NS_PER_SEC) : 0;
}

/* A port taken on the node's address, after `tries` others. */
static __always_inline void trace4_note_snat(const struct pkt *p, __be16 port, __u32 tries)
{
	if (!__trace4_on(p))
		return;
	struct trace_event *te = __trace4_scratch();
	if (!te)
		return;
	te->snat_port = port;
	te->snat_tries = tries > 255 ? 255 : tries;
}

/* The packet's addresses and ports as it leaves the hook (read back from the packet: whatever
 * rewrote it, this is what the next hop gets). */
static __always_inline void __trace4_after(struct __sk_buff *skb, struct trace_event *te, const struct pkt *p)
{
	struct iphdr ip;
	if (bpf_skb_load_bytes(skb, IP_OFF, &ip, sizeof(ip)) < 0)
		return;
	te->new_saddr = ip.saddr;
	te->new_daddr = ip.daddr;
	te->new_proto = ip.protocol;
	if (ip.protocol == p->proto && p->has_l4 && !p->later && !p->options) {
		__be16 ports[2];
		if (bpf_skb_load_bytes(skb, L4_OFF, ports, sizeof(ports)) == 0) {
			te->new_sport = ports[0];
			te->new_dport = ports[1];
		}
	}
}

/* The end of an entry point: a decision's event completed and sent, the scratch cleared. `ret`
 * is the stages' result (lib/verdict.h). Nothing is sent for a packet left alone: passed with
 * nothing counted but M_PASS. */
static __always_inline void trace4_end(struct __sk_buff *skb, const struct pkt *p, int ret)
{
	if (!__trace4_on(p))
		return;
	struct trace_event *te = __trace4_scratch();
	if (!te)
		return;
	if (IS_DROP(ret))
		te->drop = -ret;
	if (te->drop || (te->counted & ~(1U << M_PASS))) {
		te->time = bpf_ktime_get_ns();
		te->ifindex = skb->ifindex;
		te->verdict = IS_DROP(ret) ? TC_ACT_SHOT : ret;
		te->hook = p->hook;
		te->proto = p->proto;
		te->tcp_flags = p->tcp_flags;
		te->saddr = p->saddr;
		te->daddr = p->daddr;
		te->sport = p->sport;
		te->dport = p->dport;
		if (!IS_DROP(ret))
			__trace4_after(skb, te, p);
		if (trace_events.ringbuf_output(te, sizeof(*te), 0) < 0)
			metrics_count(M_TRACE_LOST);
	}
	__builtin_memset(te, 0, sizeof(*te));
}

/* A socket hook's event (no packet yet: the frontend asked for, the backend given, or the
 * refusal's reason), built on the stack. The caller checked trace4_enabled(). */
static __always_inline void trace4_sock(const struct dp_config *cfg, __u8 hook, __u8 proto, __be32 daddr,
					__be16 dport, __u32 counted_metric, __u32 svc_id, __u32 backend_id,
					__u32 hash, __u16 slot, __be32 new_daddr, __be16 new_dport, int verdict)
{
	struct trace_event te = {};
	te.time = bpf_ktime_get_ns();
	te.hook = hook;
	te.proto = te.new_proto = proto;
	te.saddr = te.new_saddr = cfg->node_ip;
	te.daddr = daddr;
	te.dport = dport;
	te.new_daddr = new_daddr;
	te.new_dport = new_dport;
	te.counted = 1U << counted_metric;
	te.svc_id = svc_id;
	te.backend_id = backend_id;
	te.hash = hash;
	te.slot = slot;
	te.verdict = verdict;
	if (trace_events.ringbuf_output(&te, sizeof(te), 0) < 0)
		metrics_count(M_TRACE_LOST);
}

#endif
