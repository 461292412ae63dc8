//! vfork, clone and _Fork: the calls after which another process may run in our memory,
//! or in a copy of it that no fork handler told of its new pid, and enter our hooks (a
//! vfork child until it execs or exits; a clone(CLONE_VM) child for its whole life; a
//! _Fork child). Such a child must not write its fd changes into our table.
//!
//! Hooks that change the table ask [`crate::state::foreign`], which costs a getpid(2)
//! only once such a call has been made through these symbols: most programs never make
//! one, and those that do pay what every program paid before (ARCHITECTURE.md §8).
//! posix_spawn and system() clone inside glibc without these symbols, and their child
//! runs only glibc's own code until it execs (no hook of ours is reached).
//!
//! The hooks cannot be Rust functions that call libc's: a vfork child returns from
//! vfork on its parent's stack, and returning through a frame of ours would overwrite
//! the return address the parent still needs. So each hook is two instructions: note
//! the call, then jump to libc's function, which returns straight to the caller.
#![allow(unsafe_code)]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Set for good by the first vfork or clone made through our symbols.
pub static BORROWED: AtomicBool = AtomicBool::new(false);

/// libc's vfork, clone and _Fork (0 until resolved).
static REAL_VFORK: AtomicUsize = AtomicUsize::new(0);
static REAL_CLONE: AtomicUsize = AtomicUsize::new(0);
static REAL_FORK_NO_HANDLERS: AtomicUsize = AtomicUsize::new(0);

/// Resolve libc's definitions (before main, from the library's constructor).
pub fn resolve() {
    for (name, slot) in [(c"vfork", &REAL_VFORK), (c"clone", &REAL_CLONE), (c"_Fork", &REAL_FORK_NO_HANDLERS)] {
        // SAFETY: a NUL-terminated name; dlsym has no other precondition.
        let p = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) };
        slot.store(p as usize, Ordering::Relaxed);
    }
}

/// Has a vfork or clone been made through our symbols?
pub fn borrowed() -> bool {
    // An architecture without the jump hooks below: assume so, always.
    !cfg!(target_arch = "x86_64") || BORROWED.load(Ordering::Relaxed)
}

/// Called (as a jump target) if vfork is called before our constructor resolved
/// libc's: fork has every guarantee vfork has.
extern "C" fn fork_instead() -> libc::pid_t {
    // SAFETY: plain fork; the caller's frame is intact (we were jumped to, not called
    // on a borrowed stack).
    unsafe { libc::fork() }
}

/// Each hook: note the call, then jump to libc's definition (`$real`), or to
/// `$fallback` if it is not resolved yet. Only `rax` is touched, so every argument,
/// variadic ones included, reaches libc as the caller passed it.
macro_rules! jump_hooks {
    ($( $(#[$doc:meta])* fn $name:ident() -> $ret:ty = $real:ident, $fallback:ident; )*) => {$(
        $(#[$doc])*
        #[cfg(target_arch = "x86_64")]
        #[unsafe(naked)]
        #[no_mangle]
        pub unsafe extern "C" fn $name() -> $ret {
            std::arch::naked_asm!(
                "mov byte ptr [rip + {flag}], 1",
                "mov rax, qword ptr [rip + {real}]",
                "test rax, rax",
                "jz {fallback}",
                "jmp rax",
                flag = sym BORROWED,
                real = sym $real,
                fallback = sym $fallback,
            )
        }
    )*};
}

jump_hooks! {
    /// As libc's vfork, after noting that a child may borrow our memory.
    fn vfork() -> libc::pid_t = REAL_VFORK, fork_instead;
    /// As libc's clone (all arguments untouched), after noting that a child may share
    /// our memory.
    fn clone() -> libc::c_int = REAL_CLONE, clone_unresolved;
    /// As libc's _Fork (a fork that runs no atfork handler, so the child never learns
    /// its new pid from us), after noting that the memory may not be the caller's.
    fn _Fork() -> libc::pid_t = REAL_FORK_NO_HANDLERS, clone_unresolved;
}

/// Jumped to if clone or _Fork is called before our constructor resolved libc's.
extern "C" fn clone_unresolved() -> libc::c_int {
    // SAFETY: errno is thread-local.
    unsafe { *libc::__errno_location() = libc::ENOSYS };
    -1
}
