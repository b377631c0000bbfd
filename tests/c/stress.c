/* Many threads acquire and release one license's seats at once, and misuse the API on the
   side: no crash, every call returns a documented code, and (checked by tests/embed_c.rs)
   no seat is left held. Usage: stress SERIAL SERVER THREADS ROUNDS */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#include <lic_udp.h>

static const char *serial, *server;
static int rounds;
static int granted, full, failed;
static pthread_mutex_t counts = PTHREAD_MUTEX_INITIALIZER;

static void count(int *which) {
    pthread_mutex_lock(&counts);
    (*which)++;
    pthread_mutex_unlock(&counts);
}

static void on_change(const lu_seat *seat, int state, void *user_data) {
    (void)seat;
    (void)state;
    (void)user_data;
}

static void *worker(void *arg) {
    (void)arg;
    for (int i = 0; i < rounds; i++) {
        lu_seat *seat = NULL;
        int rc = lu_acquire(serial, server, 10000, &seat);
        if (rc == LU_OK) {
            count(&granted);
            lu_grant info;
            if (lu_seat_state(seat) > LU_STATE_RELEASED || lu_seat_grant(seat, &info) != LU_OK || info.seats == 0) {
                fprintf(stderr, "stress: a granted seat answers badly\n");
                count(&failed);
            }
            lu_seat_on_change(seat, on_change, NULL);
            lu_release(seat);
            /* Stale now: must be refused, not crash or touch freed memory. */
            if (lu_seat_state(seat) != LU_BAD_ARGUMENT) {
                fprintf(stderr, "stress: a released handle was accepted\n");
                count(&failed);
            }
            lu_release(seat);
        } else if (rc == LU_FULL) {
            count(&full);
        } else {
            fprintf(stderr, "stress: lu_acquire returned %d: %s\n", rc, lu_last_error());
            count(&failed);
        }
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: stress SERIAL SERVER THREADS ROUNDS\n");
        return 64;
    }
    serial = argv[1];
    server = argv[2];
    int threads = atoi(argv[3]);
    rounds = atoi(argv[4]);

    /* Bad arguments get 64, never a crash. */
    lu_seat *seat = NULL;
    const char not_utf8[] = {'\xff', '\xfe', 0};
    int bad = lu_acquire(serial, server, 0, NULL) == LU_BAD_ARGUMENT
        && lu_acquire(not_utf8, server, 0, &seat) == LU_BAD_ARGUMENT && seat == NULL
        && lu_acquire(serial, not_utf8, 0, &seat) == LU_BAD_ARGUMENT
        && lu_acquire("12345", server, 0, &seat) == LU_BAD_ARGUMENT
        && lu_seat_state(NULL) == LU_BAD_ARGUMENT
        && lu_seat_state((lu_seat *)0x1234) == LU_BAD_ARGUMENT
        && lu_seat_on_change(NULL, on_change, NULL) == LU_BAD_ARGUMENT;
    lu_release(NULL);
    lu_release((lu_seat *)0x1234);
    if (!bad) {
        fprintf(stderr, "stress: a bad argument was not refused with 64\n");
        return 1;
    }

    pthread_t *ids = calloc((size_t)threads, sizeof *ids);
    if (ids == NULL)
        return 1;
    for (int t = 0; t < threads; t++)
        pthread_create(&ids[t], NULL, worker, NULL);
    for (int t = 0; t < threads; t++)
        pthread_join(ids[t], NULL);
    free(ids);
    printf("granted %d, full %d, failed %d\n", granted, full, failed);
    return failed == 0 && granted > 0 ? 0 : 1;
}
