#define _GNU_SOURCE
#include "CProcess.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#ifndef RENAME_NOREPLACE
#define RENAME_NOREPLACE (1 << 0)
#endif
#ifndef RENAME_EXCHANGE
#define RENAME_EXCHANGE (1 << 1)
#endif

// Fixed tables read by signal handlers: slots are claimed and released with atomic exchanges. A
// released string is not freed at once (a handler on another thread may be reading it): it waits
// in its slot's `retired` place until that slot is released again.
#define TEMPORARY_SLOTS 4096
#define MAPPING_SLOTS 4096

// A temporary's kind is its string's first byte, so one atomic pointer carries both.
static _Atomic(char *) temporaries[TEMPORARY_SLOTS];
static _Atomic(char *) retired_temporaries[TEMPORARY_SLOTS];

typedef struct {
    _Atomic(uintptr_t) base;
    _Atomic(size_t) length;
    _Atomic(char *) message;
} mapping_slot;
static mapping_slot mappings[MAPPING_SLOTS];
static _Atomic(char *) retired_messages[MAPPING_SLOTS];

// Set once a termination signal is being handled: a thread that registers a new temporary after
// that removes it at once and waits for the end (the handler may already have swept its folder).
static atomic_int terminating;

int qtool_temporary_register(const char *path, int kind) {
    if (atomic_load(&terminating)) {
        if (kind == QTOOL_TEMPORARY_FILE) unlink(path); else rmdir(path);
        for (;;) pause();
    }
    size_t length = strlen(path);
    char *entry = malloc(length + 2);
    if (!entry) return -1;
    entry[0] = (char)kind;
    memcpy(entry + 1, path, length + 1);
    for (int i = 0; i < TEMPORARY_SLOTS; i++) {
        char *expected = NULL;
        if (atomic_compare_exchange_strong(&temporaries[i], &expected, entry)) return i;
    }
    free(entry);
    return -1;
}

void qtool_temporary_unregister(int slot) {
    if (slot < 0 || slot >= TEMPORARY_SLOTS) return;
    char *entry = atomic_exchange(&temporaries[slot], NULL);
    free(atomic_exchange(&retired_temporaries[slot], entry));
}

struct linux_dirent64 {
    uint64_t d_ino;
    int64_t d_off;
    unsigned short d_reclen;
    unsigned char d_type;
    char d_name[];
};

// Unlinks the files directly inside `path`, then removes it (it stays when it holds folders).
// Raw syscalls only: this runs inside signal handlers. Another thread may be adding a file as it
// runs, so it sweeps again until the folder is gone (or a few times, when it holds folders).
static void remove_folder(const char *path) {
    for (int attempt = 0; attempt < 50; attempt++) {
        int fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0) return;
        char buffer[4096] __attribute__((aligned(8)));
        for (;;) {
            long n = syscall(SYS_getdents64, fd, buffer, sizeof buffer);
            if (n <= 0) break;
            for (long offset = 0; offset < n;) {
                struct linux_dirent64 *entry = (struct linux_dirent64 *)(buffer + offset);
                offset += entry->d_reclen;
                const char *name = entry->d_name;
                if (name[0] == '.' && (name[1] == 0 || (name[1] == '.' && name[2] == 0))) continue;
                if (entry->d_type != DT_DIR) unlinkat(fd, name, 0);
            }
        }
        close(fd);
        if (rmdir(path) == 0 || errno == ENOENT) return;
        struct timespec pause_time = {0, 1000000};
        nanosleep(&pause_time, NULL);
    }
}

void qtool_temporary_remove_all(void) {
    // Files first: a registered folder may hold registered files.
    for (int pass = 0; pass < 2; pass++) {
        for (int i = 0; i < TEMPORARY_SLOTS; i++) {
            char *entry = atomic_load(&temporaries[i]);
            if (!entry) continue;
            if (pass == 0 && entry[0] == QTOOL_TEMPORARY_FILE) unlink(entry + 1);
            if (pass == 1 && entry[0] == QTOOL_TEMPORARY_FOLDER) remove_folder(entry + 1);
        }
    }
}

int qtool_mapping_register(const void *base, size_t length, const char *message) {
    char *copy = strdup(message);
    if (!copy) return -1;
    for (int i = 0; i < MAPPING_SLOTS; i++) {
        char *expected = NULL;
        if (atomic_compare_exchange_strong(&mappings[i].message, &expected, copy)) {
            atomic_store(&mappings[i].base, (uintptr_t)base);
            atomic_store(&mappings[i].length, length);
            return i;
        }
    }
    free(copy);
    return -1;
}

void qtool_mapping_unregister(int slot) {
    if (slot < 0 || slot >= MAPPING_SLOTS) return;
    atomic_store(&mappings[slot].length, 0);
    atomic_store(&mappings[slot].base, 0);
    char *message = atomic_exchange(&mappings[slot].message, NULL);
    free(atomic_exchange(&retired_messages[slot], message));
}

static void write_all(int fd, const char *text) {
    size_t length = strlen(text);
    while (length > 0) {
        ssize_t n = write(fd, text, length);
        if (n <= 0) {
            if (n < 0 && errno == EINTR) continue;
            return;
        }
        text += n;
        length -= (size_t)n;
    }
}

// A long job (fine-tuning) asks for the first SIGINT/SIGTERM to be recorded rather than fatal, so
// that it can save a checkpoint at the end of its step; a second one ends the process as usual.
static atomic_int deferring = 0;
static atomic_int requested = 0;

void qtool_defer_termination(int on) { atomic_store(&deferring, on); }

int qtool_termination_requested(void) { return atomic_load(&requested); }

static void on_termination(int signal_number) {
    int saved = errno;
    if (atomic_load(&deferring) && signal_number != SIGHUP) {
        int none = 0;
        if (atomic_compare_exchange_strong(&requested, &none, signal_number)) {
            errno = saved;
            return;
        }
    }
    atomic_store(&terminating, 1);
    qtool_temporary_remove_all();
    // Die of the same signal, so the parent sees how the process ended.
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = SIG_DFL;
    sigaction(signal_number, &action, NULL);
    errno = saved;
    raise(signal_number);
}

static void on_bus_error(int signal_number, siginfo_t *info, void *context) {
    (void)context;
    uintptr_t address = (uintptr_t)info->si_addr;
    for (int i = 0; i < MAPPING_SLOTS; i++) {
        char *message = atomic_load(&mappings[i].message);
        if (!message) continue;
        uintptr_t base = atomic_load(&mappings[i].base);
        size_t length = atomic_load(&mappings[i].length);
        if (address >= base && address - base < length) {
            write_all(2, message);
            qtool_temporary_remove_all();
            _exit(2);
        }
    }
    // Not one of qtool's input mappings: a real fault.
    qtool_temporary_remove_all();
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = SIG_DFL;
    sigaction(signal_number, &action, NULL);
    raise(signal_number);
}

void qtool_install_signal_handlers(void) {
    struct sigaction action, previous;
    memset(&action, 0, sizeof action);
    sigemptyset(&action.sa_mask);
    action.sa_handler = on_termination;
    int terminating[] = {SIGINT, SIGTERM, SIGHUP};
    sigset_t unblock;
    sigemptyset(&unblock);
    for (int i = 0; i < 3; i++) {
        // A signal the parent chose to ignore (nohup's SIGHUP) stays ignored.
        if (sigaction(terminating[i], NULL, &previous) == 0 && previous.sa_handler == SIG_IGN) continue;
        sigaction(terminating[i], &action, NULL);
        // A mask inherited from a parent's thread (posix_spawn keeps it) must not keep them out.
        sigaddset(&unblock, terminating[i]);
    }
    sigaddset(&unblock, SIGBUS);
    pthread_sigmask(SIG_UNBLOCK, &unblock, NULL);

    memset(&action, 0, sizeof action);
    sigemptyset(&action.sa_mask);
    action.sa_sigaction = on_bus_error;
    action.sa_flags = SA_SIGINFO;
    sigaction(SIGBUS, &action, NULL);
}

int qtool_rename_exchange(const char *a, const char *b) {
    return (int)syscall(SYS_renameat2, AT_FDCWD, a, AT_FDCWD, b, RENAME_EXCHANGE);
}

int qtool_rename_noreplace(const char *from, const char *to) {
    return (int)syscall(SYS_renameat2, AT_FDCWD, from, AT_FDCWD, to, RENAME_NOREPLACE);
}

int qtool_make_temporary(char *template_path) { return mkostemp(template_path, O_CLOEXEC); }

int qtool_try_lock(int fd) { return flock(fd, LOCK_EX | LOCK_NB); }

void qtool_die_with_parent(void) { prctl(PR_SET_PDEATHSIG, SIGKILL); }
