/*
 * iscsi_loadgen: a small load generator on libiscsi's async API.
 *
 * One session, one connection, QD commands in flight (READ(16) or WRITE(16)),
 * sequential or random offsets aligned to the block size, for a fixed time
 * after a ramp.  Prints one JSON line on stdout:
 *
 *   {"ios":N,"bytes":N,"seconds":S,"iops":X,"mib_s":X,"lat_mean_us":X,
 *    "lat_p99_us":X,"errors":N}
 *
 * Build (benchmarks/iscsi_side_by_side.py does this in a temp dir):
 *   gcc -O2 -Wall -o iscsi_loadgen iscsi_loadgen.c -liscsi
 * Run:
 *   iscsi_loadgen -r read|write -p seq|rand -b 4096 -q 32 -t 10 -R 1 iscsi://H:P/IQN/LUN
 *
 * Reads land in a buffer of our own per slot (scsi_task_set_iov_in, as
 * QEMU does), so libiscsi does not allocate per command; writes send one
 * shared buffer of random bytes.  Latency is per command, from submission
 * to completion callback, in a log2 histogram (the p99 is the upper bound
 * of its bucket, so it is coarse: factor-of-two resolution).
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <iscsi/iscsi.h>
#include <iscsi/scsi-lowlevel.h>

struct slot {
	struct loadgen *lg;
	unsigned char *buf;
	struct scsi_iovec iov;
	double started;
};

struct loadgen {
	struct iscsi_context *iscsi;
	int lun;
	int write;
	int random;
	uint32_t bs;          /* bytes per command */
	uint32_t block;       /* logical block size */
	uint64_t nblocks;     /* commands that fit in the LUN */
	uint64_t next;        /* next sequential command index */
	uint64_t rng;
	unsigned char *wbuf;
	double ramp_end, end;
	int inflight, stopping;
	uint64_t ios, bytes, errors;
	double lat_sum;
	uint64_t hist[64];
	const char *first_error;
};

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static uint64_t xorshift(uint64_t *s)
{
	uint64_t x = *s;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return *s = x;
}

static void submit(struct slot *s);

static void done(struct iscsi_context *iscsi, int status, void *command_data, void *private)
{
	struct slot *s = private;
	struct loadgen *lg = s->lg;
	struct scsi_task *task = command_data;
	double t = now();

	(void)iscsi;
	lg->inflight--;
	if (status != SCSI_STATUS_GOOD) {
		lg->errors++;
		if (!lg->first_error)
			lg->first_error = iscsi_get_error(lg->iscsi);
	} else if (s->started >= lg->ramp_end && t <= lg->end) {
		double us = (t - s->started) * 1e6;
		int b = 0;
		while (b < 63 && (1ULL << b) < (uint64_t)us)
			b++;
		lg->hist[b]++;
		lg->lat_sum += us;
		lg->ios++;
		lg->bytes += lg->bs;
	}
	if (task)
		scsi_free_scsi_task(task);
	if (!lg->stopping && t < lg->end && lg->errors < 100)
		submit(s);
}

static void submit(struct slot *s)
{
	struct loadgen *lg = s->lg;
	uint64_t idx, lba;
	struct scsi_task *task;
	uint32_t per = lg->bs / lg->block;

	if (lg->random)
		idx = xorshift(&lg->rng) % lg->nblocks;
	else
		idx = lg->next++ % lg->nblocks;
	lba = idx * per;
	s->started = now();
	if (lg->write) {
		task = iscsi_write16_task(lg->iscsi, lg->lun, lba, lg->wbuf, lg->bs, lg->block,
					  0, 0, 0, 0, 0, done, s);
	} else {
		task = iscsi_read16_task(lg->iscsi, lg->lun, lba, lg->bs, lg->block,
					 0, 0, 0, 0, 0, done, s);
		if (task)
			scsi_task_set_iov_in(task, &s->iov, 1);
	}
	if (!task) {
		fprintf(stderr, "cannot queue a command: %s\n", iscsi_get_error(lg->iscsi));
		exit(2);
	}
	lg->inflight++;
}

static double percentile(struct loadgen *lg, double p)
{
	uint64_t want = (uint64_t)(lg->ios * p), seen = 0;
	for (int b = 0; b < 64; b++) {
		seen += lg->hist[b];
		if (seen > want)
			return (double)(1ULL << b);
	}
	return 0;
}

static void usage(void)
{
	fprintf(stderr, "usage: iscsi_loadgen [-r read|write] [-p seq|rand] [-b BYTES] [-q DEPTH]"
		" [-t SECONDS] [-R RAMP_SECONDS] [-i INITIATOR_IQN] iscsi://HOST:PORT/IQN/LUN\n");
	exit(1);
}

int main(int argc, char **argv)
{
	struct loadgen lg = {.bs = 4096, .rng = 0x9E3779B97F4A7C15ULL};
	const char *initiator = "iqn.2026-11.org.blockyard.bench:loadgen";
	double runtime = 10, ramp = 1;
	int depth = 1, c;

	while ((c = getopt(argc, argv, "r:p:b:q:t:R:i:s:")) != -1) {
		switch (c) {
		case 'r': lg.write = !strcmp(optarg, "write"); break;
		case 'p': lg.random = !strcmp(optarg, "rand"); break;
		case 'b': lg.bs = strtoul(optarg, NULL, 0); break;
		case 'q': depth = atoi(optarg); break;
		case 't': runtime = atof(optarg); break;
		case 'R': ramp = atof(optarg); break;
		case 'i': initiator = optarg; break;
		case 's': lg.rng ^= strtoull(optarg, NULL, 0) * 0x2545F4914F6CDD1DULL; break;
		default: usage();
		}
	}
	if (optind != argc - 1 || depth < 1 || lg.bs == 0)
		usage();

	lg.iscsi = iscsi_create_context(initiator);
	struct iscsi_url *url = iscsi_parse_full_url(lg.iscsi, argv[optind]);
	if (!url) {
		fprintf(stderr, "bad URL: %s\n", iscsi_get_error(lg.iscsi));
		return 1;
	}
	iscsi_set_targetname(lg.iscsi, url->target);
	iscsi_set_session_type(lg.iscsi, ISCSI_SESSION_NORMAL);
	iscsi_set_header_digest(lg.iscsi, ISCSI_HEADER_DIGEST_NONE);
	lg.lun = url->lun;
	if (iscsi_full_connect_sync(lg.iscsi, url->portal, url->lun) != 0) {
		fprintf(stderr, "login failed: %s\n", iscsi_get_error(lg.iscsi));
		return 1;
	}
	struct scsi_task *cap = iscsi_readcapacity16_sync(lg.iscsi, lg.lun);
	struct scsi_readcapacity16 *rc16 = cap ? scsi_datain_unmarshall(cap) : NULL;
	if (!rc16) {
		fprintf(stderr, "READ CAPACITY(16) failed: %s\n", iscsi_get_error(lg.iscsi));
		return 1;
	}
	lg.block = rc16->block_length;
	if (lg.bs % lg.block) {
		fprintf(stderr, "-b %u is not a multiple of the block size %u\n", lg.bs, lg.block);
		return 1;
	}
	lg.nblocks = (rc16->returned_lba + 1) / (lg.bs / lg.block);
	scsi_free_scsi_task(cap);

	lg.wbuf = malloc(lg.bs);
	for (uint32_t i = 0; i < lg.bs; i++)
		lg.wbuf[i] = (unsigned char)xorshift(&lg.rng);
	struct slot *slots = calloc(depth, sizeof *slots);
	double start = now();
	lg.ramp_end = start + ramp;
	lg.end = lg.ramp_end + runtime;
	for (int i = 0; i < depth; i++) {
		slots[i].lg = &lg;
		slots[i].buf = malloc(lg.bs);
		memset(slots[i].buf, 0, lg.bs);
		slots[i].iov.iov_base = slots[i].buf;
		slots[i].iov.iov_len = lg.bs;
		submit(&slots[i]);
	}
	while (lg.inflight > 0) {
		struct pollfd pfd = {.fd = iscsi_get_fd(lg.iscsi), .events = iscsi_which_events(lg.iscsi)};
		int n = poll(&pfd, 1, 1000);
		if (n < 0 && errno != EINTR) {
			perror("poll");
			return 1;
		}
		if (iscsi_service(lg.iscsi, n > 0 ? pfd.revents : 0) < 0) {
			fprintf(stderr, "iscsi_service: %s\n", iscsi_get_error(lg.iscsi));
			return 1;
		}
		if (now() > lg.end + 30) {
			fprintf(stderr, "commands still in flight 30 s after the end\n");
			return 1;
		}
	}
	double secs = runtime;
	iscsi_logout_sync(lg.iscsi);
	iscsi_destroy_context(lg.iscsi);
	printf("{\"ios\":%" PRIu64 ",\"bytes\":%" PRIu64 ",\"seconds\":%.3f,\"iops\":%.1f,"
	       "\"mib_s\":%.2f,\"lat_mean_us\":%.1f,\"lat_p99_us\":%.0f,\"errors\":%" PRIu64
	       ",\"block_size\":%u,\"depth\":%d}\n",
	       lg.ios, lg.bytes, secs, lg.ios / secs, lg.bytes / secs / 1048576.0,
	       lg.ios ? lg.lat_sum / lg.ios : 0.0, percentile(&lg, 0.99), lg.errors, lg.block,
	       depth);
	if (lg.errors)
		fprintf(stderr, "%" PRIu64 " commands failed; first: %s\n", lg.errors,
			lg.first_error ? lg.first_error : "?");
	return lg.errors ? 3 : 0;
}
