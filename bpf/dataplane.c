/* One BPF object per node: the entry points of the pod veths (pod.c), of the uplink (node.c) and
 * of the node's own sockets (sock.c) share their maps, as the parts of a node's dataplane must (a
 * flow DNATed on one hook is reverse-translated on another). */
#include "pod.c"
#include "node.c"
#include "sock.c"
