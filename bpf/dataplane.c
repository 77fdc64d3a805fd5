/* One BPF object per node: the entry points of the pod veths (pod.c) and of the uplink (node.c)
 * share their maps, as the two halves of a node's dataplane must (a flow DNATed on one hook is
 * reverse-translated on another). */
#include "pod.c"
#include "node.c"
