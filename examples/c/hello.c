/* Takes a seat of a license, works while holding it, and gives it back.

   Build (after installing the library, README "Embedding"):
       cc hello.c $(pkg-config --cflags --libs licudp) -o hello
   Run:
       ./hello [SERIAL|-] [SERVERS] [TIMEOUT_MS]
   "-" or no SERIAL uses the activation file; no SERVERS uses the CLI's default. It holds the
   seat until an empty line (or end of file) arrives on stdin, printing the state for any other
   line. It exits with lu_acquire's code, the CLI's exit code (1 all seats in use, 2 unknown
   license, 3 no server, 64 bad argument). */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lic_udp.h>

static const char *state_name(int state) {
    switch (state) {
    case LU_STATE_HELD: return "held";
    case LU_STATE_LOST: return "lost";
    case LU_STATE_ENDED: return "ended";
    case LU_STATE_RELEASED: return "released";
    default: return "?";
    }
}

/* Runs on the library's callback thread: keep it short. */
static void on_change(const lu_seat *seat, int state, void *user_data) {
    (void)seat;
    (void)user_data;
    printf("state: %s\n", state_name(state));
    fflush(stdout);
}

int main(int argc, char **argv) {
    const char *serial = argc > 1 && strcmp(argv[1], "-") != 0 ? argv[1] : NULL;
    const char *servers = argc > 2 ? argv[2] : NULL;
    uint32_t timeout_ms = argc > 3 ? (uint32_t)strtoul(argv[3], NULL, 10) : 0;

    lu_seat *seat = NULL;
    int rc = lu_acquire(serial, servers, timeout_ms, &seat);
    if (rc != LU_OK) {
        fprintf(stderr, "hello: %s (%s)\n", lu_last_error(), lu_strerror(rc));
        return rc;
    }
    lu_grant info;
    lu_seat_grant(seat, &info);
    printf("granted: lease %016" PRIx64 ", %u of %u seats in use\n", info.lease_id, info.used, info.seats);
    fflush(stdout);
    lu_seat_on_change(seat, on_change, NULL);

    /* The licensed work goes here; heartbeats run on the library's thread meanwhile. */
    char line[64];
    while (fgets(line, sizeof line, stdin) != NULL && strcmp(line, "\n") != 0) {
        printf("now: %s\n", state_name(lu_seat_state(seat)));
        fflush(stdout);
    }

    lu_release(seat);
    printf("released\n");
    return 0;
}
