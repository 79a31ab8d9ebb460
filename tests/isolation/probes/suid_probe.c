/* suid_probe: installed setuid root; says by its exit status whether the setuid bit made it root.
 *
 *   exit 42  a caller that was not root runs with effective uid 0 (privileges raised)
 *   exit 43  the effective uid is the caller's (the bit had no effect)
 *   exit 44  setup failed (see stderr)
 *
 * Started by root (the host backend runs tasks as the worker's user), it first drops to nobody and
 * executes itself again, so that the answer is about the bit and never about the caller.
 */
#define _GNU_SOURCE
#include <grp.h>
#include <stdio.h>
#include <unistd.h>

int main(int argc, char **argv) {
    (void)argc;
    if (getuid() == 0) {
        if (setgroups(0, NULL) != 0 || setresgid(65534, 65534, 65534) != 0 || setresuid(65534, 65534, 65534) != 0) {
            perror("suid_probe: dropping to nobody");
            return 44;
        }
        execv("/proc/self/exe", argv);
        perror("suid_probe: executing itself again");
        return 44;
    }
    fprintf(stderr, "suid_probe: uid=%d euid=%d\n", (int)getuid(), (int)geteuid());
    return geteuid() == 0 ? 42 : 43;
}
