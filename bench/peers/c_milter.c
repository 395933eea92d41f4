/* c_milter.c - the benchmark's reference milter on Sendmail's libmilter: the best a milter can
 * do on this machine.
 *
 *   c_milter -p inet:PORT@127.0.0.1|unix:/path [-m pass|exec] [-P pidfile] [-T tmpdir]
 *            [-c /bin/true] [-L latency-file]
 *
 * pass: asks for every stage and answers every one (no SMFIP_NO* / SMFIP_NR_* bits, as
 *       milter-agent does), CONTINUE everywhere and ACCEPT at end of message.
 * exec: the same, plus per message: headers and body written to a mkstemp() file as they
 *       arrive; at end of message posix_spawn(cmd) with stdin = that file, waitpid(), unlink.
 * -L:   on exit, write one line per message: microseconds from CONNECT (first message of a
 *       connection) or MAIL (later ones) to the end-of-message verdict, as milter-agent logs,
 *       and microseconds spent inside the callbacks for it (what the milter adds; libmilter's
 *       own reading and writing is not in it). Kept in memory meanwhile: no system call.
 * Build: cc -O2 -Wall -o c_milter c_milter.c -lmilter -pthread   (Debian libmilter-dev)
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <libmilter/mfapi.h>

extern char **environ;
static int exec_mode = 0;
static const char *tmpdir = "/tmp", *cmd = "/bin/true";

#define MAX_SAMPLES (1 << 20)
static unsigned (*samples)[2];
static size_t nsamples;
static pthread_mutex_t samples_lock = PTHREAD_MUTEX_INITIALIZER;

struct priv { int fd; char path[256]; struct timespec start, entered; long busy_ns; };

static void now(struct timespec *t) { clock_gettime(CLOCK_MONOTONIC, t); }
static long ns_since(const struct timespec *a) {
    struct timespec t; now(&t);
    return (t.tv_sec - a->tv_sec) * 1000000000L + (t.tv_nsec - a->tv_nsec);
}
/* every callback: IN at its start, OUT(v) to return v, counting the time in between */
#define IN(ctx) struct priv *p = smfi_getpriv(ctx); if (p) now(&p->entered)
#define OUT(v) do { if (p) p->busy_ns += ns_since(&p->entered); return (v); } while (0)

static void record(struct priv *p) {
    long span = ns_since(&p->start) / 1000;
    p->busy_ns += ns_since(&p->entered);
    pthread_mutex_lock(&samples_lock);
    if (samples && nsamples < MAX_SAMPLES) {
        samples[nsamples][0] = (unsigned)span;
        samples[nsamples][1] = (unsigned)(p->busy_ns / 1000);
        nsamples++;
    }
    pthread_mutex_unlock(&samples_lock);
    p->busy_ns = 0;
}
static void cleanup_file(struct priv *p) {
    if (p && p->fd >= 0) { close(p->fd); unlink(p->path); p->fd = -1; }
}
static sfsistat x_negotiate(SMFICTX *ctx, unsigned long f0, unsigned long f1,
                            unsigned long f2, unsigned long f3, unsigned long *pf0,
                            unsigned long *pf1, unsigned long *pf2, unsigned long *pf3) {
    *pf0 = f0 & SMFIF_ADDHDRS;
    *pf1 = 0;                    /* every stage sent, every stage answered */
    *pf2 = *pf3 = 0;
    return SMFIS_CONTINUE;
}
static sfsistat x_connect(SMFICTX *ctx, char *h, _SOCK_ADDR *a) {
    struct timespec t; now(&t);
    struct priv *p = calloc(1, sizeof *p);
    if (!p) return SMFIS_TEMPFAIL;
    p->fd = -1; p->start = p->entered = t;
    smfi_setpriv(ctx, p);
    OUT(SMFIS_CONTINUE);
}
static sfsistat x_helo(SMFICTX *ctx, char *h) { IN(ctx); OUT(SMFIS_CONTINUE); }
static sfsistat x_envfrom(SMFICTX *ctx, char **argv) {
    IN(ctx);
    if (!p) return SMFIS_TEMPFAIL;
    if (p->start.tv_sec == 0 && p->start.tv_nsec == 0) p->start = p->entered;  /* a later one */
    if (!exec_mode) OUT(SMFIS_CONTINUE);
    cleanup_file(p);
    snprintf(p->path, sizeof p->path, "%s/cm-XXXXXX", tmpdir);
    if ((p->fd = mkstemp(p->path)) < 0) OUT(SMFIS_TEMPFAIL);
    OUT(SMFIS_CONTINUE);
}
static sfsistat x_envrcpt(SMFICTX *ctx, char **argv) { IN(ctx); OUT(SMFIS_CONTINUE); }
static sfsistat x_data(SMFICTX *ctx) { IN(ctx); OUT(SMFIS_CONTINUE); }
static sfsistat x_unknown(SMFICTX *ctx, const char *c) { IN(ctx); OUT(SMFIS_CONTINUE); }
static int wr(struct priv *p, const void *b, size_t n) {
    return (p && p->fd >= 0 && write(p->fd, b, n) != (ssize_t)n) ? -1 : 0;
}
static sfsistat x_header(SMFICTX *ctx, char *n, char *v) {
    IN(ctx);
    if (exec_mode && (wr(p, n, strlen(n)) || wr(p, ": ", 2) || wr(p, v, strlen(v)) || wr(p, "\r\n", 2)))
        OUT(SMFIS_TEMPFAIL);
    OUT(SMFIS_CONTINUE);
}
static sfsistat x_eoh(SMFICTX *ctx) {
    IN(ctx);
    OUT((exec_mode && wr(p, "\r\n", 2)) ? SMFIS_TEMPFAIL : SMFIS_CONTINUE);
}
static sfsistat x_body(SMFICTX *ctx, unsigned char *b, size_t n) {
    IN(ctx);
    OUT((exec_mode && wr(p, b, n)) ? SMFIS_TEMPFAIL : SMFIS_CONTINUE);
}
static sfsistat verdict(struct priv *p, sfsistat v) {
    record(p);
    memset(&p->start, 0, sizeof p->start);
    return v;
}
static sfsistat x_eom(SMFICTX *ctx) {
    IN(ctx);
    if (!p) return SMFIS_TEMPFAIL;
    if (!exec_mode) return verdict(p, SMFIS_ACCEPT);
    if (p->fd < 0) return verdict(p, SMFIS_TEMPFAIL);
    posix_spawn_file_actions_t fa; pid_t pid; int st = -1;
    char *av[] = { (char *)cmd, p->path, NULL };
    lseek(p->fd, 0, SEEK_SET);
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, p->fd, 0);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    int rc = posix_spawn(&pid, cmd, &fa, NULL, av, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc == 0) while (waitpid(pid, &st, 0) < 0 && errno == EINTR) ;
    cleanup_file(p);
    return verdict(p, (rc == 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0) ? SMFIS_ACCEPT : SMFIS_TEMPFAIL);
}
static sfsistat x_abort(SMFICTX *ctx) { cleanup_file(smfi_getpriv(ctx)); return SMFIS_CONTINUE; }
static sfsistat x_close(SMFICTX *ctx) {
    struct priv *p = smfi_getpriv(ctx);
    cleanup_file(p);
    free(p); smfi_setpriv(ctx, NULL);
    return SMFIS_CONTINUE;
}

static struct smfiDesc desc = {
    "c_milter", SMFI_VERSION, SMFIF_ADDHDRS,
    x_connect, x_helo, x_envfrom, x_envrcpt, x_header, x_eoh, x_body, x_eom,
    x_abort, x_close, x_unknown, x_data, x_negotiate
};

int main(int argc, char **argv) {
    const char *sock = "inet:9910@127.0.0.1", *pidfile = NULL, *latfile = NULL; int c;
    while ((c = getopt(argc, argv, "p:m:P:T:c:L:")) != -1) switch (c) {
        case 'p': sock = optarg; break;
        case 'm': exec_mode = strcmp(optarg, "exec") == 0; break;
        case 'P': pidfile = optarg; break;
        case 'T': tmpdir = optarg; break;
        case 'c': cmd = optarg; break;
        case 'L': latfile = optarg; break;
        default:
            fprintf(stderr, "usage: %s -p SOCK [-m pass|exec] [-P pidfile] [-T tmpdir] [-c cmd] [-L file]\n", argv[0]);
            return 2;
    }
    if (latfile && !(samples = malloc(MAX_SAMPLES * sizeof *samples))) return 1;
    umask(0111);   /* the unix socket must be connectable by smtpd (user postfix) */
    if (smfi_setconn((char *)sock) == MI_FAILURE || smfi_register(desc) == MI_FAILURE) return 1;
    if (smfi_opensocket(1) == MI_FAILURE) { fprintf(stderr, "cannot open %s\n", sock); return 1; }
    umask(077);
    if (pidfile) { FILE *f = fopen(pidfile, "w"); if (f) { fprintf(f, "%d\n", getpid()); fclose(f); } }
    fprintf(stderr, "c_milter %s listening on %s pid %d\n", exec_mode ? "exec" : "pass", sock, getpid());
    int rc = smfi_main() == MI_SUCCESS ? 0 : 1;
    if (latfile) {
        FILE *f = fopen(latfile, "w");
        if (!f) return 1;
        pthread_mutex_lock(&samples_lock);
        for (size_t i = 0; i < nsamples; i++) fprintf(f, "%u %u\n", samples[i][0], samples[i][1]);
        pthread_mutex_unlock(&samples_lock);
        fclose(f);
    }
    return rc;
}
