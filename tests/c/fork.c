/* fork() with a seat held (README "Embedding"): the child does not own the parent's seat (its
   lu_release only forgets the handle) and can acquire one of its own; the parent keeps its
   seat, heartbeats and all. Usage: fork SERIAL SERVER; prints "parent holds LEASE" and waits
   for a line on stdin before releasing. */
#include <inttypes.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <lic_udp.h>

int main(int argc, char **argv) {
    if (argc != 3)
        return 64;
    lu_seat *seat;
    lu_grant g;
    if (lu_acquire(argv[1], argv[2], 10000, &seat) != LU_OK || lu_seat_grant(seat, &g) != LU_OK) {
        fprintf(stderr, "fork: %s\n", lu_last_error());
        return 10;
    }
    pid_t pid = fork();
    if (pid == 0) {
        if (lu_seat_state(seat) != LU_STATE_HELD)
            _exit(11);
        lu_release(seat);
        if (lu_seat_state(seat) != LU_BAD_ARGUMENT)
            _exit(12);
        lu_seat *mine;
        lu_grant g2;
        if (lu_acquire(argv[1], argv[2], 10000, &mine) != LU_OK || lu_seat_grant(mine, &g2) != LU_OK) {
            fprintf(stderr, "fork: child: %s\n", lu_last_error());
            _exit(13);
        }
        if (g2.lease_id == g.lease_id)
            _exit(14);
        lu_release(mine);
        _exit(0);
    }
    int status = 0;
    if (pid < 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "fork: the child failed (status %d)\n", WEXITSTATUS(status));
        return 20;
    }
    /* A few heartbeats later, the parent's seat is still its own. */
    sleep(2);
    if (lu_seat_state(seat) != LU_STATE_HELD)
        return 21;
    printf("parent holds %016" PRIx64 "\n", g.lease_id);
    fflush(stdout);
    char line[8];
    if (fgets(line, sizeof line, stdin) == NULL)
        line[0] = 0;
    lu_release(seat);
    return 0;
}
