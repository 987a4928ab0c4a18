/*
 * runtime.c -- thread count and SIMD path of the C kernels.
 *
 * Both are process-wide settings read at the start of every kernel call.
 * Set them between calls, not while kernels run on other threads.
 */
#define _GNU_SOURCE   /* syscall() under -std=c11 */
#include <omp.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#ifdef __linux__
#include <linux/futex.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>
#else
#include <sched.h>
#endif
#include "fastnn.h"
#include "internal.h"

static int g_threads = 0;       /* 0: not yet set -> omp_get_max_threads() */
static _Thread_local int tl_serial = 0;  /* see fastnn_run_serial (internal.h) */
/* The calling thread's team of fastnn_team_epoch (internal.h), or NULL;
   tl_in_job: it runs a job's share (the helpers always). */
static _Thread_local struct fastnn_team *tl_team = NULL;
static _Thread_local int tl_in_job = 0;
static int g_simd = -1;         /* -1: not yet chosen -> fastnn_simd_best() */

void fastnn_set_num_threads(int n)
{
    /* n < 1 restores the default (OMP_NUM_THREADS or the core count). */
    g_threads = n > 0 ? n : 0;
}

int fastnn_get_num_threads(void)
{
    /* A kernel called by one thread of a team (the threaded training epoch
       splits a batch over threads) runs serially on that thread. */
    if (tl_serial || omp_in_parallel())
        return 1;
    if (g_threads > 0)
        return g_threads;
    int n = omp_get_max_threads();
    return n > 0 ? n : 1;
}

/* The team a kernel may share its work with: fastnn_team_epoch's outside a
   job (its helpers wait at its barrier), else fastnn_get_num_threads()'s. */
int fastnn_team_size(void)
{
    if (tl_team && !tl_serial)
        return tl_in_job ? 1 : tl_team->n;
    return fastnn_get_num_threads();
}

/* ---- the team's spin window (internal.h) ----------------------------------------- */

static _Atomic int64_t g_rest_ns = 0;    /* when the last region ended, CLOCK_MONOTONIC */
static _Atomic int64_t g_window_ns = -1; /* how long the workers spin after it; -1: not read */
static _Atomic int g_cold = FASTNN_COLD_FACTOR;

int fastnn_set_cold_factor(int factor)
{
    const int before = atomic_load_explicit(&g_cold, memory_order_relaxed);
    if (factor >= 1)
        atomic_store_explicit(&g_cold, factor, memory_order_relaxed);
    return before;
}

static int64_t now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

/* libgomp's spin from its environment, at ~10 ns an iteration (measured:
   1000 iterations kept the workers awake over a 10 us gap, not over 20 us,
   on an Intel Xeon VM; bench/NOTES.md entry 53): OMP_WAIT_POLICY=active
   or GOMP_SPINCOUNT=infinite never sleep, passive at once, unset ~3 ms
   (libgomp's 300,000). */
static int64_t spin_window(void)
{
    const char *policy = getenv("OMP_WAIT_POLICY"), *count = getenv("GOMP_SPINCOUNT");
    if (count && (!strcmp(count, "infinite") || !strcmp(count, "infinity")))
        return INT64_MAX;
    if (count) {
        char *end;
        double spins = strtod(count, &end);
        if (end != count && spins >= 0.0) {
            /* libgomp's suffixes: k, M, G, T */
            const char *units = "kMGT";
            for (int u = 0; units[u]; u++)
                if (*end == units[u] || (u == 0 && *end == 'K'))
                    for (int p = 0; p <= u; p++)
                        spins *= 1000.0;
            return spins >= 1e15 ? INT64_MAX : (int64_t)(10.0 * spins);
        }
    }
    if (policy && (policy[0] == 'a' || policy[0] == 'A'))
        return INT64_MAX;
    if (policy && (policy[0] == 'p' || policy[0] == 'P'))
        return 0;
    return 3000000;
}

/* spin_window(), read from the environment once. */
static int64_t libgomp_window(void)
{
    int64_t window = atomic_load_explicit(&g_window_ns, memory_order_relaxed);
    if (window < 0) {
        window = spin_window();
        atomic_store_explicit(&g_window_ns, window, memory_order_relaxed);
    }
    return window;
}

void fastnn_team_rest(void)
{
    atomic_store_explicit(&g_rest_ns, now_ns(), memory_order_relaxed);
}

static int64_t barrier_spin_ns(void);
static int64_t team_window(const struct fastnn_team *t);
#define TEAM_RETRY_NS 50000000

int64_t fastnn_team_factor(void)
{
    if (tl_team && !tl_in_job && !tl_serial) {
        /* fastnn_team_epoch's helpers spin at its barrier, then sleep; on
           cores shared with other work (the barrier's preemption rule) the
           kernels stay on the calling thread for the rest of the epoch: a
           team then waits for its slowest thread's turn at every job
           (LeNet-like, 2 threads beside a busy process: ~10k samples/s on
           the team, ~17k on one thread; bench/NOTES.md 61) */
        struct fastnn_team *t = tl_team;
        if (atomic_load_explicit(&t->bar.busy, memory_order_relaxed))
            return (int64_t)1 << 16;
        const int64_t window = team_window(t);
        const int64_t cold = atomic_load_explicit(&g_cold, memory_order_relaxed);
        if (cold == 1)
            return 1;
        /* slow helpers (team_account) */
        if (t->slow == 2 && now_ns() - t->slow_since > TEAM_RETRY_NS)
            t->slow = 1;
        if (t->slow)
            return t->slow == 2 ? (int64_t)1 << 16 : cold;
        if (window == INT64_MAX)
            return 1;
        const int64_t rest = atomic_load_explicit(&t->rest_ns, memory_order_relaxed);
        return now_ns() - rest <= window ? 1 : cold;
    }
    if (fastnn_get_num_threads() < 2)
        return 1;   /* no team: no clock read on the one-thread path */
    const int64_t window = libgomp_window();
    const int64_t cold = atomic_load_explicit(&g_cold, memory_order_relaxed);
    if (window == INT64_MAX || cold == 1)
        return 1;
    const int64_t rest = atomic_load_explicit(&g_rest_ns, memory_order_relaxed);
    return rest > 0 && now_ns() - rest <= window ? 1 : cold;
}

/* ---- the epoch's barrier (internal.h) ---------------------------------------------- */

#define BARRIER_DEFAULT_NS 50000      /* 50 us (bench/NOTES.md entry 60) */
static _Atomic int64_t g_barrier_ns = -1;   /* -1: the default */
static _Atomic int g_procs = 0;              /* omp_get_num_procs(), once; 0: not read */

int64_t fastnn_set_barrier_spin(int64_t us)
{
    const int64_t ns = us >= 0 ? (us >= INT64_MAX / 1000 ? INT64_MAX : us * 1000) : -1;
    const int64_t before = us >= -1 ? atomic_exchange(&g_barrier_ns, ns)
                                    : atomic_load(&g_barrier_ns);
    return before < 0 ? -1 : before == INT64_MAX ? INT64_MAX : before / 1000;
}

/* How long a waiter spins: the setting, or the default from libgomp's. */
static int64_t barrier_spin_ns(void)
{
    const int64_t set = atomic_load_explicit(&g_barrier_ns, memory_order_relaxed);
    if (set >= 0)
        return set;
    const int64_t window = libgomp_window();
    if (window == 0 || window == INT64_MAX)   /* passive; active or infinite */
        return window;
    return window > BARRIER_DEFAULT_NS ? window : BARRIER_DEFAULT_NS;
}

static void barrier_sleep(_Atomic int *word, int value)
{
#ifdef __linux__
    /* returns at once if *word != value: no wake-up is lost */
    syscall(SYS_futex, (int *)word, FUTEX_WAIT_PRIVATE, value, NULL, NULL, 0);
#else
    (void)word; (void)value;
    sched_yield();
#endif
}

static void barrier_wake(_Atomic int *word)
{
#ifdef __linux__
    syscall(SYS_futex, (int *)word, FUTEX_WAKE_PRIVATE, INT32_MAX, NULL, NULL, 0);
#else
    (void)word;
#endif
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* The spin of a team found sharing its cores: libgomp's at fastnn's
   GOMP_SPINCOUNT=1000 (~10 us). */
#define BARRIER_BUSY_NS 10000

/* The involuntary context switches of the calling thread in the region of
   barrier b (started at t0) since it last looked; it looks at every 8th
   call (getrusage, ~0.5 us), and its first look in a region only takes
   the count (what came before, e.g. between two epochs, is not the
   region's). */
static long preemptions(const struct fastnn_barrier *b, int64_t t0)
{
#ifdef __linux__
    static _Thread_local const struct fastnn_barrier *seen_b = NULL;
    static _Thread_local int64_t seen_t0 = 0;
    static _Thread_local long last = 0;
    static _Thread_local unsigned calls = 0;
    const int fresh = b != seen_b || t0 != seen_t0;
    if (!fresh && calls++ % 8)
        return 0;
    struct rusage u;
    if (getrusage(RUSAGE_THREAD, &u))
        return 0;
    const long moved = !fresh && u.ru_nivcsw > last ? u.ru_nivcsw - last : 0;
    last = u.ru_nivcsw;
    if (fresh) {
        seen_b = b;
        seen_t0 = t0;
        calls = 1;
    }
    return moved;
#else
    (void)b; (void)t0;
    return 0;
#endif
}

/* Whether the team shares its cores with other work: more than 100
   preemptions a second of the region (at least 3).  Measured on a 2-core
   VM, 2 threads: ~10 a second on an idle machine, 500-1,000 beside one
   busy process (bench/NOTES.md 60). */
static int team_busy(struct fastnn_barrier *b, int64_t now)
{
    if (atomic_load_explicit(&b->busy, memory_order_relaxed))
        return 1;
    int64_t t0 = atomic_load_explicit(&b->t0, memory_order_relaxed);
    if (t0 == 0) {
        atomic_compare_exchange_strong(&b->t0, &t0, now);
        t0 = atomic_load_explicit(&b->t0, memory_order_relaxed);
    }
    const long moved = preemptions(b, t0);
    if (moved == 0)
        return 0;
    const int total = atomic_fetch_add_explicit(&b->preempted, (int)moved, memory_order_relaxed)
                      + (int)moved;
    if (total >= 3 && (double)total * 1e9 > 100.0 * (double)(now - t0 + 1)) {
        atomic_store_explicit(&b->busy, 1, memory_order_relaxed);
        return 1;
    }
    return 0;
}

/* A generation barrier.  A thread reads the generation g before it
   arrives; the barrier it waits for cannot complete before it arrives, so
   g is that barrier's.  The last to arrive resets the count and moves the
   generation on (its increment of `arrived` read every earlier arrival's,
   all acq_rel: what each thread wrote before arriving happens before the
   release); the others wait for the generation to move and acquire it.
   The seq_cst pair sleepers++ / generation load against generation++ /
   sleepers load: either the waker sees a sleeper and wakes it, or the
   sleeper sees the new generation (and the futex refuses to sleep on a
   word that has moved). */
void fastnn_barrier_wait(struct fastnn_barrier *b, int n)
{
    if (n <= 1)
        return;
    const int g = atomic_load_explicit(&b->generation, memory_order_acquire);
    if (atomic_fetch_add_explicit(&b->arrived, 1, memory_order_acq_rel) == n - 1) {
        atomic_store_explicit(&b->arrived, 0, memory_order_relaxed);
        atomic_fetch_add(&b->generation, 1);          /* seq_cst: release */
        if (atomic_load(&b->sleepers) > 0)
            barrier_wake(&b->generation);
        return;
    }
    /* More threads than processors: the one a waiter waits for may need
       its core, so it sleeps at once (libgomp throttles its spin too). */
    int procs = atomic_load_explicit(&g_procs, memory_order_relaxed);
    if (procs == 0) {
        procs = omp_get_num_procs();
        atomic_store_explicit(&g_procs, procs, memory_order_relaxed);
    }
    int64_t budget = n > procs ? 0 : barrier_spin_ns();
    if (budget > 0 && budget != INT64_MAX && b->spin_ns > budget
        && atomic_load_explicit(&g_barrier_ns, memory_order_relaxed) < 0)
        budget = b->spin_ns;   /* a longer default of this barrier's (fastnn_team_epoch) */
    /* The default spin shrinks to libgomp's short one for the rest of the
       region once the team's threads are preempted often (team_busy): they
       then share the cores with other work, and a spinning waiter keeps a
       core from the thread it waits for or from that work. */
    const int64_t start = budget > 0 ? now_ns() : 0;
    if (budget > BARRIER_BUSY_NS && budget != INT64_MAX
        && atomic_load_explicit(&g_barrier_ns, memory_order_relaxed) < 0) {
        if (team_busy(b, start))
            budget = BARRIER_BUSY_NS;
    }
    if (budget > 0) {
        for (unsigned spins = 1;; spins++) {
            if (atomic_load_explicit(&b->generation, memory_order_acquire) != g)
                return;
            cpu_relax();
            if (spins % 64 == 0 && budget != INT64_MAX && now_ns() - start > budget)
                break;
        }
    }
    atomic_fetch_add(&b->sleepers, 1);
    while (atomic_load(&b->generation) == g)
        barrier_sleep(&b->generation, g);
    atomic_fetch_sub(&b->sleepers, 1);
}

/* ---- a team for a whole epoch (internal.h) ------------------------------------------- */

/* How long the helpers of fastnn_team_epoch wait for the next job before
   they sleep, by default: the kernels between two jobs of a batch (those
   not written as jobs, run by the calling thread) can take a while, and a
   helper that sleeps makes every small kernel after it run alone (the
   cold factor) or pay a wake.  On a machine whose cores are shared the
   barrier's preemption rule shortens it to ~10 us. */
#define TEAM_SPIN_NS 2000000

/* How long the helpers of t spin at its barrier before they sleep: the
   barrier's spin, libgomp's short one once the team is found sharing its
   cores (team_busy). */
static int64_t team_window(const struct fastnn_team *t)
{
    int64_t spin = barrier_spin_ns();
    if (spin == 0 || spin == INT64_MAX
        || atomic_load_explicit(&g_barrier_ns, memory_order_relaxed) >= 0)
        return spin;
    if (t->bar.spin_ns > spin)
        spin = t->bar.spin_ns;
    return atomic_load_explicit(&t->bar.busy, memory_order_relaxed) && spin > BARRIER_BUSY_NS
               ? BARRIER_BUSY_NS : spin;
}

static _Atomic int g_epoch_team = 1;

int fastnn_set_epoch_team(int on)
{
    return on < 0 ? atomic_load(&g_epoch_team) : atomic_exchange(&g_epoch_team, on != 0);
}

int fastnn_team_epoch(int threads, int (*body)(void *), void *arg)
{
    if (threads < 2 || tl_team || tl_serial || omp_in_parallel())
        return body(arg);
    struct fastnn_team team;
    memset(&team, 0, sizeof team);
    team.bar.spin_ns = TEAM_SPIN_NS;
    int rc = FASTNN_OK;
#pragma omp parallel num_threads(threads)
    {
        const int nt = omp_get_num_threads(), tid = omp_get_thread_num();
        if (tid == 0) {
            team.n = nt;
            atomic_store_explicit(&team.rest_ns, now_ns(), memory_order_relaxed);
        }
        /* (team.n is read after this barrier; an OpenMP barrier here, as
           the team's own counts team.n arrivals) */
#pragma omp barrier
        if (tid == 0) {
            tl_team = nt > 1 ? &team : NULL;
            rc = body(arg);
            tl_team = NULL;
            team.fn = NULL;            /* the helpers leave */
            fastnn_barrier_wait(&team.bar, nt);
        } else {
            tl_team = &team;
            tl_in_job = 1;
            for (;;) {
                fastnn_barrier_wait(&team.bar, nt);   /* a job, or the end */
                if (!team.fn)
                    break;
                if (tid < team.job_n)
                    team.fn(team.arg, tid, team.job_n);
                fastnn_barrier_wait(&team.bar, nt);   /* the job done */
            }
            tl_team = NULL;
            tl_in_job = 0;
        }
    }
    fastnn_team_rest();
    return rc;
}

/* Jobs per look at the team's balance. */
#define TEAM_WINDOW 32
/* TEAM_RETRY_NS (above): how long the team stays off (slow = 2) before it
   tries again. */

/* The leader's account of its jobs: its own share's time and its wait for
   the others'.  A job of n threads gains over one thread only while the
   wait stays below (n - 1) times the share (equal shares: the others
   would take n times longer alone); a window of jobs above that, a helper
   is slow -- its core is taken by the hypervisor or by other work the
   preemption count does not see -- and the team goes cold (slow = 1: only
   kernels above the cold thresholds have helpers), then off (2: every
   kernel on the leader, for TEAM_RETRY_NS, then cold again); a window
   below a quarter of that, a step back. */
static void team_account(struct fastnn_team *t, int64_t mine, int64_t wait, int n, int64_t now)
{
    t->own_ns += mine * (n - 1);
    t->wait_ns += wait;
    if (++t->window_jobs < TEAM_WINDOW)
        return;
    if (t->wait_ns > t->own_ns) {
        if (t->slow < 2)
            t->slow++;
        t->slow_since = now;
    } else if (4 * t->wait_ns < t->own_ns && t->slow > 0) {
        t->slow--;
    }
    t->own_ns = t->wait_ns = 0;
    t->window_jobs = 0;
}

void fastnn_team_run(int threads, fastnn_job fn, void *arg)
{
    struct fastnn_team *t = tl_team;
    if (t && !tl_in_job && !tl_serial) {
        const int n = threads < t->n ? threads : t->n;
        if (n < 2) {
            fn(arg, 0, 1);
            return;
        }
        t->fn = fn;
        t->arg = arg;
        t->job_n = n;
        fastnn_barrier_wait(&t->bar, t->n);   /* what the job reads, published */
        const int64_t start = now_ns();
        tl_in_job = 1;
        fn(arg, 0, n);
        tl_in_job = 0;
        const int64_t mine = now_ns();
        fastnn_barrier_wait(&t->bar, t->n);   /* every share written */
        const int64_t end = now_ns();
        atomic_store_explicit(&t->rest_ns, end, memory_order_relaxed);
        team_account(t, mine - start, end - mine, n, end);
        return;
    }
    if (threads < 2) {
        fn(arg, 0, 1);
        return;
    }
#pragma omp parallel num_threads(threads)
    fn(arg, omp_get_thread_num(), omp_get_num_threads());
    fastnn_team_rest();
}

struct for_job {
    void (*row)(const void *, int64_t);
    const void *ctx;
    int64_t count;
};

static void for_share(void *arg, int tid, int n)
{
    const struct for_job *j = arg;
    for (int64_t i = tid * j->count / n; i < (tid + 1) * j->count / n; i++)
        j->row(j->ctx, i);
}

void fastnn_team_for(int threads, int64_t count, void (*row)(const void *, int64_t),
                     const void *ctx)
{
    const struct for_job j = {row, ctx, count};
    fastnn_team_run(threads, for_share, (void *)&j);
}

int fastnn_team_leader(void)
{
    return tl_team && !tl_in_job && !tl_serial;
}

struct slices {
    fastnn_slice_fn fn;
    const void *ctx;
    int64_t lo, n, span;
    int rc;
};

static void slices_share(void *arg, int tid, int nt)
{
    struct slices *s = arg;
    const int64_t spans = s->n / s->span + (s->n % s->span != 0);
    const int64_t a = tid * spans / nt * s->span;
    int64_t b = (tid + 1) * spans / nt * s->span;
    if (b > s->n)
        b = s->n;
    if (b > a) {
        const int rc = s->fn(s->ctx, s->lo + a, s->lo + b);
        if (rc) {
#pragma omp atomic write
            s->rc = rc;
        }
    }
}

int fastnn_team_slices(int64_t lo, int64_t n, int64_t span, int wide, fastnn_slice_fn fn,
                       const void *ctx, int *rc)
{
    if (!wide || n < 2 * span || !fastnn_team_leader())
        return 0;
    struct slices s = {fn, ctx, lo, n, span, FASTNN_OK};
    fastnn_team_run(tl_team->n, slices_share, &s);
    *rc = s.rc;
    return 1;
}

void fastnn_job_barrier(int n)
{
    if (tl_team)
        fastnn_barrier_wait(&tl_team->job_bar, n);
    else if (n > 1) {
#pragma omp barrier
    }
}

int fastnn_flush_denormals(int on)
{
    /* MXCSR FTZ + DAZ (0x8040) on the calling thread and, when the kernels
       run threaded, on every thread of their OpenMP team, which keeps it
       for later parallel regions (threads created later inherit the
       creator's).  Single-threaded, no team is woken (on a busy machine
       that waits for a core). */
#if defined(__x86_64__) || defined(__i386__)
    const unsigned bits = 0x8040u;
    const int before = (_mm_getcsr() & bits) == bits;
    const int team = fastnn_get_num_threads();
    if (team > 1) {
#pragma omp parallel num_threads(team)
        {
            const unsigned csr = _mm_getcsr();
            _mm_setcsr(on ? (csr | bits) : (csr & ~bits));
        }
        fastnn_team_rest();
    }
    const unsigned csr = _mm_getcsr();
    _mm_setcsr(on ? (csr | bits) : (csr & ~bits));
    return before;
#else
    (void)on;
    return 0;
#endif
}

int fastnn_run_serial(int on)
{
    const int before = tl_serial;
    tl_serial = on;
    return before;
}

static int simd_supported(int path)
{
    if (path == FASTNN_SIMD_GENERIC)
        return 1;
#if defined(__x86_64__) && defined(__GNUC__)
    /* libgcc also checks that the OS saves the wider registers (XGETBV). */
    __builtin_cpu_init();
    if (path == FASTNN_SIMD_AVX2)
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (path == FASTNN_SIMD_AVX512)
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma");
#endif
    return 0;
}

int fastnn_simd_best(void)
{
    for (int path = FASTNN_SIMD_AVX512; path > FASTNN_SIMD_GENERIC; path--)
        if (simd_supported(path))
            return path;
    return FASTNN_SIMD_GENERIC;
}

int fastnn_simd_path(void)
{
    if (g_simd < 0)
        g_simd = fastnn_simd_best();
    return g_simd;
}

int fastnn_set_simd_path(int path)
{
    if (path < FASTNN_SIMD_GENERIC || path > FASTNN_SIMD_AVX512 || !simd_supported(path))
        return FASTNN_EINVAL;
    g_simd = path;
    return FASTNN_OK;
}
