/* Where maps live. A live node's programs are built with DP_PIN_DIR (its directory in bpffs): each
 * map is then pinned there when first created and reused from there by every later build, so a
 * reload or an upgrade replaces the programs and keeps conntrack, affinity, SNAT state and the
 * counters (bcc opens "type:path" maps with bpf_obj_get). bcc reuses a pin without comparing its
 * layout with the declaration, so the loader compares the stamp in `layout` first
 * (dataplane/backends/ebpf/layout.py) and refuses a pin of another layout.
 * Without DP_PIN_DIR (BPF_PROG_TEST_RUN, the fuzzers) maps are private to the build. */
#ifndef DP_PINNING_H
#define DP_PINNING_H

#ifdef DP_PIN_DIR
#define DP_TABLE(_type, _key, _leaf, _name, _size, _flags) \
	BPF_F_TABLE(_type ":" DP_PIN_DIR "/" #_name, _key, _leaf, _name, _size, _flags)
#else
#define DP_TABLE(_type, _key, _leaf, _name, _size, _flags) \
	BPF_F_TABLE(_type, _key, _leaf, _name, _size, _flags)
#endif

/* index 0: the layout stamp of the maps beside it (a hash of every map's type, size, flags and
 * key/value layout), written by the loader when it creates them. Its own layout never changes. */
DP_TABLE("array", __u32, __u64, layout, 1, 0);

#endif
