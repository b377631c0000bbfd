/* Figures for README: what lu_acquire costs a C program on loopback, and what held seats cost
   while idle. Asserts nothing about speed. Usage: measure SERIAL SERVER ROUNDS HELD IDLE_SECONDS
   (the license needs HELD seats free). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <lic_udp.h>

static double now_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e6 + (double)t.tv_nsec / 1e3;
}

static double cpu_ms(void) {
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return (double)(u.ru_utime.tv_sec + u.ru_stime.tv_sec) * 1e3
        + (double)(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e3;
}

static long rss_kib(void) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kib = -1;
    while (f != NULL && fgets(line, sizeof line, f) != NULL)
        if (strncmp(line, "VmRSS:", 6) == 0)
            kib = strtol(line + 6, NULL, 10);
    if (f != NULL)
        fclose(f);
    return kib;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: measure SERIAL SERVER ROUNDS HELD IDLE_SECONDS\n");
        return 64;
    }
    const char *serial = argv[1], *server = argv[2];
    int rounds = atoi(argv[3]), held = atoi(argv[4]), idle = atoi(argv[5]);
    lu_seat *seat;

    long rss_before_library = rss_kib();
    /* The first acquisition starts the library's threads and derives the keys: not counted. */
    if (lu_acquire(serial, server, 10000, &seat) != LU_OK) {
        fprintf(stderr, "measure: %s\n", lu_last_error());
        return 1;
    }
    lu_release(seat);
    double *us = calloc((size_t)rounds, sizeof *us);
    if (us == NULL)
        return 1;
    for (int i = 0; i < rounds; i++) {
        double t0 = now_us();
        int rc = lu_acquire(serial, server, 10000, &seat);
        us[i] = now_us() - t0;
        if (rc != LU_OK) {
            fprintf(stderr, "measure: %s\n", lu_last_error());
            return 1;
        }
        lu_release(seat);
    }
    qsort(us, (size_t)rounds, sizeof *us, cmp);
    printf("lu_acquire on loopback over %d rounds: min %.0f us, median %.0f us, p90 %.0f us, max %.0f us\n",
           rounds, us[0], us[rounds / 2], us[rounds * 9 / 10], us[rounds - 1]);
    free(us);

    lu_seat **seats = calloc((size_t)held, sizeof *seats);
    if (seats == NULL)
        return 1;
    long rss0 = rss_kib();
    for (int i = 0; i < held; i++)
        if (lu_acquire(serial, server, 10000, &seats[i]) != LU_OK) {
            fprintf(stderr, "measure: seat %d: %s\n", i, lu_last_error());
            return 1;
        }
    long rss1 = rss_kib();
    double cpu0 = cpu_ms(), t0 = now_us();
    sleep((unsigned)idle);
    double cpu1 = cpu_ms(), secs = (now_us() - t0) / 1e6;
    printf("library started: RSS +%ld KiB; %d held seats: RSS +%ld KiB (%.1f KiB a seat)\n",
           rss0 - rss_before_library, held, rss1 - rss0, (double)(rss1 - rss0) / held);
    printf("idle with %d held seats: %.1f ms CPU in %.1f s (%.3f%% of a core, %.3f ms/s a seat)\n", held,
           cpu1 - cpu0, secs, (cpu1 - cpu0) / (secs * 10.0), (cpu1 - cpu0) / secs / held);
    for (int i = 0; i < held; i++)
        lu_release(seats[i]);
    free(seats);
    return 0;
}
