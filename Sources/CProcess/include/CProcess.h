#ifndef QTOOL_CPROCESS_H
#define QTOOL_CPROCESS_H
#include <stddef.h>

// Process-level C that Swift cannot express safely: async-signal-safe cleanup of temporary
// files on SIGINT/SIGTERM/SIGHUP, a clear error instead of a crash when a memory-mapped input is
// truncated under qtool (SIGBUS), and the few Linux calls Swift's Glibc module does not import.

/// What a registered temporary is: a file (unlinked) or a folder (its files unlinked, then the
/// folder removed).
enum { QTOOL_TEMPORARY_FILE = 0, QTOOL_TEMPORARY_FOLDER = 1 };

/// Registers a path to remove if the process is interrupted; returns a slot, or -1 when full.
int qtool_temporary_register(const char *path, int kind);
/// Forgets a slot (the path has been committed or removed).
void qtool_temporary_unregister(int slot);
/// Removes every registered temporary now (what the signal handlers do).
void qtool_temporary_remove_all(void);

/// Registers a mapped range: a SIGBUS inside it prints `message` to stderr, removes the
/// temporaries and exits with status 2. Returns a slot, or -1 when full.
int qtool_mapping_register(const void *base, size_t length, const char *message);
void qtool_mapping_unregister(int slot);

/// Installs the handlers for SIGINT, SIGTERM, SIGHUP (remove temporaries, then die of the same
/// signal) and SIGBUS (see above).
void qtool_install_signal_handlers(void);

/// With `on`, the first SIGINT or SIGTERM is only recorded (a second one acts as usual).
void qtool_defer_termination(int on);
/// The signal recorded while deferring, or 0.
int qtool_termination_requested(void);

/// renameat2(RENAME_EXCHANGE): swaps two paths atomically. 0, or -1 with errno.
int qtool_rename_exchange(const char *a, const char *b);
/// renameat2(RENAME_NOREPLACE): fails with EEXIST when `to` exists. 0, or -1 with errno.
int qtool_rename_noreplace(const char *from, const char *to);

/// mkostemp(template, O_CLOEXEC): a new file, not inherited by child processes.
int qtool_make_temporary(char *template_path);

/// flock(LOCK_EX | LOCK_NB): 0 when the lock was taken, -1 when another holds it.
int qtool_try_lock(int fd);

/// prctl(PR_SET_PDEATHSIG, SIGKILL): a child dies with its parent.
void qtool_die_with_parent(void);

#endif
