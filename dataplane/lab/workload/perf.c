/* dpperf: the benchmarks' native traffic, so that no figure measures a Python client.
 *
 * Built on first use by dataplane/lab/workload/perf.py (gcc -O2); every client prints one JSON
 * object on stdout. Times are CLOCK_MONOTONIC around the system calls, in nanoseconds.
 *
 *   dpperf serve PORT                          TCP: accept (backlog SOMAXCONN) and echo, epoll, one
 *                                              thread; prints "ready" once listening
 *   dpperf connect PORT COUNT                  COUNT connect() calls, each to the next address read
 *                                              from stdin (round robin), each closed with a reset
 *                                              (SO_LINGER 0: no TIME_WAIT, so ports never run out);
 *                                              {"ns": [...], "errors": {...}}
 *   dpperf rr IP PORT COUNT SIZE               one connection, COUNT round trips of SIZE bytes
 *                                              (TCP_NODELAY); {"ns": [...], "errors": {...}}
 *   dpperf crr PORT SECONDS PROCS              PROCS processes, each: connect, 1 byte each way,
 *                                              reset, again, for SECONDS; addresses from stdin;
 *                                              {"connections": N, "seconds": S, "errors": E}
 *   dpperf udp-sink PORT SECONDS WAIT          prints "ready", waits up to WAIT s for a first
 *                                              datagram, then counts for SECONDS;
 *                                              {"packets": N, "bytes": B, "seconds": S}
 *   dpperf udp-flood IP PORT SECONDS SIZE FLOWS   datagrams of SIZE bytes as fast as the sender
 *                                              can, over FLOWS sockets (source ports) in turn;
 *                                              {"sent": N, "errors": E, "seconds": S}
 *
 * A client's socket times out after 2 s (SO_SNDTIMEO / SO_RCVTIMEO): a lost SYN costs its
 * retransmission (1 s) and shows in the tail, a dead path ends as an error, never a hang.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_TARGETS 200000
#define MAX_FLOWS 4096

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

static void die(const char *what)
{
	fprintf(stderr, "dpperf: %s: %s\n", what, strerror(errno));
	exit(2);
}

static long arg(const char *s, long lo, long hi, const char *name)
{
	char *end;
	long v = strtol(s, &end, 10);
	if (*s == 0 || *end != 0 || v < lo || v > hi) {
		fprintf(stderr, "dpperf: %s: expected %ld to %ld, got '%s'\n", name, lo, hi, s);
		exit(2);
	}
	return v;
}

static struct sockaddr_in addr_of(const char *ip, int port)
{
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
	if (inet_pton(AF_INET, ip, &a.sin_addr) != 1) {
		fprintf(stderr, "dpperf: not an IPv4 address: '%s'\n", ip);
		exit(2);
	}
	return a;
}

/* the addresses to connect to, one per line on stdin */
static struct sockaddr_in *targets;
static int ntargets;

static void read_targets(int port)
{
	char line[64];
	targets = calloc(MAX_TARGETS, sizeof(*targets));
	while (ntargets < MAX_TARGETS && fgets(line, sizeof(line), stdin)) {
		line[strcspn(line, " \r\n")] = 0;
		if (line[0])
			targets[ntargets++] = addr_of(line, port);
	}
	if (!ntargets) {
		fprintf(stderr, "dpperf: no addresses on stdin\n");
		exit(2);
	}
}

static void timeouts(int fd)
{
	struct timeval tv = {.tv_sec = 2};
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
}

static void close_with_reset(int fd)
{
	struct linger l = {.l_onoff = 1, .l_linger = 0};
	setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
	close(fd);
}

/* errors by name, for the JSON */
static const int known[] = {ECONNREFUSED, ETIMEDOUT, EAGAIN, EHOSTUNREACH, ENETUNREACH, ECONNRESET,
			    EADDRNOTAVAIL, EPIPE};
static const char *known_names[] = {"refused", "timeout", "timeout", "unreachable", "unreachable", "reset",
				    "no-port", "reset"};
static long errs[sizeof(known) / sizeof(known[0]) + 1];

static void count_error(int e)
{
	size_t i;
	for (i = 0; i < sizeof(known) / sizeof(known[0]); i++)
		if (known[i] == e)
			break;
	errs[i]++;
}

static void print_samples(uint64_t *ns, long n)
{
	size_t i;
	int first = 1;
	printf("{\"ns\": [");
	for (long k = 0; k < n; k++)
		printf(k ? ",%llu" : "%llu", (unsigned long long)ns[k]);
	printf("], \"errors\": {");
	for (i = 0; i <= sizeof(known) / sizeof(known[0]); i++) {
		if (!errs[i])
			continue;
		printf("%s\"%s\": %ld", first ? "" : ", ", i < sizeof(known) / sizeof(known[0]) ? known_names[i] : "other",
		       errs[i]);
		first = 0;
	}
	printf("}}\n");
}

/* Echo all of buf on a non-blocking socket: what the send buffer cannot take now is written as
 * room appears (a client reads its echo only after sending the whole request, so waiting here
 * for at most 2 s cannot deadlock it). 0, or -1 when the peer is gone or stalled. */
static int write_all(int fd, const char *buf, size_t len)
{
	while (len) {
		ssize_t n = write(fd, buf, len);
		if (n > 0) {
			buf += n;
			len -= n;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN) {
			struct pollfd p = {.fd = fd, .events = POLLOUT};
			if (poll(&p, 1, 2000) == 1)
				continue;
		}
		return -1;
	}
	return 0;
}

static int serve(int port)
{
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
	struct epoll_event ev, events[256];
	char buf[65536];
	int one = 1, lfd, ep;

	signal(SIGPIPE, SIG_IGN);
	lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
	if (lfd < 0)
		die("socket");
	setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(lfd, (struct sockaddr *)&a, sizeof(a)) < 0)
		die("bind");
	if (listen(lfd, SOMAXCONN) < 0)	/* as agnhost: the system's maximum (net.core.somaxconn) */
		die("listen");
	ep = epoll_create1(0);
	ev.events = EPOLLIN;
	ev.data.fd = lfd;
	epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
	printf("ready\n");
	fflush(stdout);
	for (;;) {
		int n = epoll_wait(ep, events, 256, -1);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			die("epoll_wait");
		for (int i = 0; i < n; i++) {
			int fd = events[i].data.fd;
			if (fd == lfd) {
				int c;
				while ((c = accept4(lfd, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
					setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
					ev.events = EPOLLIN;
					ev.data.fd = c;
					epoll_ctl(ep, EPOLL_CTL_ADD, c, &ev);
				}
				if (errno == EMFILE || errno == ENFILE)
					usleep(10000);	/* out of descriptors: let connections close */
				continue;
			}
			ssize_t r = read(fd, buf, sizeof(buf));
			if (r > 0) {
				if (write_all(fd, buf, r) < 0)
					close(fd);
			} else if (r == 0 || errno != EAGAIN) {
				close(fd);	/* closing removes it from the epoll set */
			}
		}
	}
	return 0;	/* not reached: the server runs until it is killed */
}

static int connect_timed(const struct sockaddr_in *to, uint64_t *took)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	if (fd < 0)
		die("socket");
	timeouts(fd);
	uint64_t t0 = now_ns();
	int r = connect(fd, (const struct sockaddr *)to, sizeof(*to));
	*took = now_ns() - t0;
	if (r < 0) {
		count_error(errno == EINPROGRESS ? ETIMEDOUT : errno);
		close(fd);
		return -1;
	}
	return fd;
}

static int cmd_connect(int port, long count)
{
	uint64_t *ns = calloc(count, sizeof(*ns));
	long n = 0;
	read_targets(port);
	for (long i = 0; i < count; i++) {
		uint64_t took;
		int fd = connect_timed(&targets[i % ntargets], &took);
		if (fd < 0)
			continue;
		ns[n++] = took;
		close_with_reset(fd);
	}
	print_samples(ns, n);
	return 0;
}

static int cmd_rr(const char *ip, int port, long count, long size)
{
	struct sockaddr_in to = addr_of(ip, port);
	uint64_t *ns = calloc(count, sizeof(*ns)), took;
	char *buf = calloc(1, size);
	int one = 1;
	long n = 0;
	int fd = connect_timed(&to, &took);
	if (fd < 0) {
		print_samples(ns, 0);
		return 0;
	}
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	for (long i = 0; i < count; i++) {
		uint64_t t0 = now_ns();
		long got = 0;
		if (write(fd, buf, size) != size) {
			count_error(errno);
			break;
		}
		while (got < size) {
			ssize_t r = read(fd, buf + got, size - got);
			if (r <= 0) {
				count_error(r == 0 ? ECONNRESET : errno);
				goto out;
			}
			got += r;
		}
		ns[n++] = now_ns() - t0;
	}
out:
	close_with_reset(fd);
	print_samples(ns, n);
	return 0;
}

static long crr_loop(double seconds, long *errors)
{
	uint64_t end = now_ns() + (uint64_t)(seconds * 1e9), took;
	/* (every process runs to the same deadline: the parent reports the time they took) */
	long done = 0, i = getpid();
	char c = 'x';
	while (now_ns() < end) {
		int fd = connect_timed(&targets[i++ % ntargets], &took);
		if (fd < 0) {
			(*errors)++;
			continue;
		}
		if (write(fd, &c, 1) == 1 && read(fd, &c, 1) == 1)
			done++;
		else
			(*errors)++;
		close_with_reset(fd);
	}
	return done;
}

static int cmd_crr(int port, double seconds, int procs)
{
	int pipes[64][2];
	long total = 0, errors = 0;
	read_targets(port);
	uint64_t t0 = now_ns();
	for (int p = 0; p < procs; p++) {
		if (pipe(pipes[p]) < 0)
			die("pipe");
		pid_t pid = fork();
		if (pid < 0)
			die("fork");
		if (pid == 0) {
			long res[2] = {0, 0};
			res[0] = crr_loop(seconds, &res[1]);
			if (write(pipes[p][1], res, sizeof(res)) != sizeof(res))
				_exit(1);
			_exit(0);
		}
		close(pipes[p][1]);
	}
	for (int p = 0; p < procs; p++) {
		long res[2] = {0, 0};
		if (read(pipes[p][0], res, sizeof(res)) == sizeof(res)) {
			total += res[0];
			errors += res[1];
		} else {
			errors++;
		}
	}
	while (wait(NULL) > 0)
		;
	printf("{\"connections\": %ld, \"seconds\": %g, \"errors\": %ld, \"processes\": %d}\n", total,
	       (now_ns() - t0) / 1e9, errors, procs);
	return 0;
}

static int cmd_udp_sink(int port, double seconds, double wait_s)
{
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
	char buf[65536];
	long packets = 0, bytes = 0;
	int fd = socket(AF_INET, SOCK_DGRAM, 0), size = 32 << 20;
	if (fd < 0)
		die("socket");
	setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof(size));
	if (bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0)
		die("bind");
	printf("ready\n");
	fflush(stdout);
	struct timeval tv = {.tv_sec = (long)wait_s, .tv_usec = (long)((wait_s - (long)wait_s) * 1e6)};
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	ssize_t r = recv(fd, buf, sizeof(buf), 0);
	if (r < 0) {
		printf("{\"packets\": 0, \"bytes\": 0, \"seconds\": 0, \"error\": \"nothing arrived in %g s\"}\n", wait_s);
		return 0;
	}
	/* the window starts with the first datagram, which is not counted: N datagrams after it
	 * arrived in the window's length */
	uint64_t t0 = now_ns(), end = t0 + (uint64_t)(seconds * 1e9);
	struct timeval poll = {.tv_usec = 100000};
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &poll, sizeof(poll));
	while (now_ns() < end) {
		r = recv(fd, buf, sizeof(buf), 0);
		if (r >= 0) {
			packets++;
			bytes += r;
		}
	}
	printf("{\"packets\": %ld, \"bytes\": %ld, \"seconds\": %g}\n", packets, bytes, (now_ns() - t0) / 1e9);
	return 0;
}

static int cmd_udp_flood(const char *ip, int port, double seconds, long size, int flows)
{
	struct sockaddr_in to = addr_of(ip, port);
	static int fds[MAX_FLOWS];
	char *buf = calloc(1, size ? size : 1);
	long sent = 0, errors = 0;
	for (int f = 0; f < flows; f++) {
		fds[f] = socket(AF_INET, SOCK_DGRAM, 0);
		if (fds[f] < 0)
			die("socket");
		if (connect(fds[f], (struct sockaddr *)&to, sizeof(to)) < 0)
			die("connect");
	}
	uint64_t t0 = now_ns(), end = t0 + (uint64_t)(seconds * 1e9);
	for (long i = 0;; i++) {
		if ((i & 255) == 0 && now_ns() >= end)
			break;
		if (send(fds[i % flows], buf, size, 0) == size)
			sent++;
		else
			errors++;
	}
	printf("{\"sent\": %ld, \"errors\": %ld, \"seconds\": %g, \"flows\": %d}\n", sent, errors, (now_ns() - t0) / 1e9,
	       flows);
	return 0;
}

static void usage(void)
{
	fprintf(stderr, "usage: dpperf serve PORT | connect PORT COUNT | rr IP PORT COUNT SIZE | "
			"crr PORT SECONDS PROCS | udp-sink PORT SECONDS WAIT | udp-flood IP PORT SECONDS SIZE FLOWS\n"
			"(connect and crr read their addresses from stdin, one per line)\n");
	exit(2);
}

int main(int argc, char **argv)
{
	if (argc < 2)
		usage();
	const char *cmd = argv[1];
	if (!strcmp(cmd, "serve") && argc == 3)
		return serve(arg(argv[2], 1, 65535, "PORT"));
	if (!strcmp(cmd, "connect") && argc == 4)
		return cmd_connect(arg(argv[2], 1, 65535, "PORT"), arg(argv[3], 1, 10000000, "COUNT"));
	if (!strcmp(cmd, "rr") && argc == 6)
		return cmd_rr(argv[2], arg(argv[3], 1, 65535, "PORT"), arg(argv[4], 1, 10000000, "COUNT"),
			      arg(argv[5], 1, 65536, "SIZE"));
	if (!strcmp(cmd, "crr") && argc == 5)
		return cmd_crr(arg(argv[2], 1, 65535, "PORT"), arg(argv[3], 1, 600, "SECONDS"),
			       arg(argv[4], 1, 64, "PROCS"));
	if (!strcmp(cmd, "udp-sink") && argc == 5)
		return cmd_udp_sink(arg(argv[2], 1, 65535, "PORT"), arg(argv[3], 1, 600, "SECONDS"),
				    arg(argv[4], 1, 600, "WAIT"));
	if (!strcmp(cmd, "udp-flood") && argc == 7)
		return cmd_udp_flood(argv[2], arg(argv[3], 1, 65535, "PORT"), arg(argv[4], 1, 600, "SECONDS"),
				     arg(argv[5], 0, 65507, "SIZE"), arg(argv[6], 1, MAX_FLOWS, "FLOWS"));
	usage();
	return 2;
}
