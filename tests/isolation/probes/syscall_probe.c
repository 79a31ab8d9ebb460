/* syscall_probe GROUP: make the system calls of one attack group and say, by the exit status, what the
 * kernel answered.  Static, no library beyond libc, so it runs in a busybox image and in a bare sandbox.
 *
 *   exit 0   every call of the group worked (the attack is open)
 *   exit 10  every call failed with EPERM        exit 11  every call failed with ENOSYS
 *   exit 12  every call failed, other errnos     exit 20  some worked, some failed
 *   exit 2   usage
 * One line per call on stderr says which call got which answer.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/io_uring.h>
#include <linux/perf_event.h>
#include <linux/sched.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/personality.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY 1
#endif
#define KEY_SPEC_PROCESS_KEYRING -2

static int worked, denied_eperm, denied_enosys, denied_other;

static void answer(const char *call, long rc) {
    if (rc >= 0) {
        worked++;
        fprintf(stderr, "%s: ok\n", call);
        return;
    }
    int err = errno;
    if (err == EPERM) denied_eperm++;
    else if (err == ENOSYS) denied_enosys++;
    else denied_other++;
    fprintf(stderr, "%s: %s (errno %d)\n", call, strerror(err), err);
}

/* A child that exits at once; the parent reaps it. rc < 0 with errno when the clone itself failed. */
static long reap(long pid) {
    if (pid == 0) _exit(0);
    if (pid > 0) waitpid((pid_t)pid, NULL, __WALL);
    return pid;
}

static void userns(void) { answer("unshare(CLONE_NEWUSER)", unshare(CLONE_NEWUSER)); }

static void clone_newuser(void) {
    answer("clone(CLONE_NEWUSER)", reap(syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0)));
}

static void mount_in_userns(void) {
    if (unshare(CLONE_NEWUSER | CLONE_NEWNS) != 0) {
        answer("unshare(CLONE_NEWUSER|CLONE_NEWNS)", -1);
        return;
    }
    answer("mount tmpfs on /tmp in a user namespace", mount("none", "/tmp", "tmpfs", 0, NULL));
}

static void clone3(void) {
    struct clone_args args;
    memset(&args, 0, sizeof args);
    args.exit_signal = SIGCHLD;
    answer("clone3", reap(syscall(SYS_clone3, &args, sizeof args)));
}

static void io_uring(void) {
    struct io_uring_params params;
    memset(&params, 0, sizeof params);
    answer("io_uring_setup", syscall(SYS_io_uring_setup, 4, &params));
}

static void keyring(void) {
    answer("add_key", syscall(SYS_add_key, "user", "expbuild-probe", "x", 1, KEY_SPEC_PROCESS_KEYRING));
    answer("keyctl(GET_KEYRING_ID)", syscall(SYS_keyctl, 0 /* KEYCTL_GET_KEYRING_ID */, KEY_SPEC_PROCESS_KEYRING, 1));
}

static void ptrace_peek(void) {
    pid_t child = fork();
    if (child == 0) { pause(); _exit(0); }
    answer("ptrace(PTRACE_ATTACH, child)", ptrace(PTRACE_ATTACH, child, 0, 0));
    kill(child, SIGKILL);
    waitpid(child, NULL, 0);
    char here[8] = "abcdefg", there[8];
    struct iovec local = {there, sizeof there}, remote = {here, sizeof here};
    answer("process_vm_readv(self)", syscall(SYS_process_vm_readv, getpid(), &local, 1, &remote, 1, 0));
}

static void personality_flags(void) {
    answer("personality(ADDR_NO_RANDOMIZE)", personality(ADDR_NO_RANDOMIZE));
    answer("personality(READ_IMPLIES_EXEC)", personality(READ_IMPLIES_EXEC));
}

static void userfaultfd(void) {
    answer("userfaultfd(UFFD_USER_MODE_ONLY)", syscall(SYS_userfaultfd, O_CLOEXEC | UFFD_USER_MODE_ONLY));
}

static void perf(void) {
    struct perf_event_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.size = sizeof attr;
    attr.type = PERF_TYPE_SOFTWARE;
    attr.config = PERF_COUNT_SW_TASK_CLOCK;
    attr.exclude_kernel = 1;
    attr.exclude_hv = 1;
    answer("perf_event_open(own task clock)", syscall(SYS_perf_event_open, &attr, 0, -1, -1, 0));
}

static const struct { const char *name; void (*run)(void); } GROUPS[] = {
    {"userns", userns}, {"clone-newuser", clone_newuser}, {"mount-in-userns", mount_in_userns},
    {"clone3", clone3}, {"io_uring", io_uring}, {"keyring", keyring}, {"ptrace", ptrace_peek},
    {"personality", personality_flags}, {"userfaultfd", userfaultfd}, {"perf", perf},
};

int main(int argc, char **argv) {
    for (size_t i = 0; argc == 2 && i < sizeof GROUPS / sizeof GROUPS[0]; i++) {
        if (strcmp(argv[1], GROUPS[i].name) != 0) continue;
        GROUPS[i].run();
        int denied = denied_eperm + denied_enosys + denied_other;
        if (denied == 0) return 0;
        if (worked) return 20;
        if (denied_eperm == denied) return 10;
        if (denied_enosys == denied) return 11;
        return 12;
    }
    fprintf(stderr, "usage: syscall_probe GROUP (");
    for (size_t i = 0; i < sizeof GROUPS / sizeof GROUPS[0]; i++) fprintf(stderr, " %s", GROUPS[i].name);
    fprintf(stderr, " )\n");
    return 2;
}
