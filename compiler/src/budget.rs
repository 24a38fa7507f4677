//! The budget of one evaluation: how much memory its thread may hold and how
//! long it may run. Nickel has no hook to interrupt it, so the bound sits in
//! the global allocator: every allocation on an evaluation thread is charged
//! to that evaluation's [`Slot`], and once the slot is over its memory or
//! its time is up, the thread stops inside its next allocation — before the
//! memory is taken — and sleeps until the process ends. The waiting thread
//! reports a finding; nothing else is touched by the stopped thread.
//!
//! The native stack is the third bound: Nickel recurses over deep values
//! (a list nested 30 000 times by a fold overflows 256 MiB), and a stack
//! overflow aborts the process. A `SIGSEGV` handler recognises a fault in
//! the guard page of an evaluation thread's stack and stops that thread the
//! same way, on its alternate signal stack; any other fault goes to the
//! handler installed before (Rust's, which reports other threads' overflows).
//!
//! Threads without a slot (everything but evaluation) allocate as usual.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// The system allocator, charging evaluation threads to their slot.
pub struct Counting;

// SAFETY: every method forwards to `System` with the caller's arguments; the
// bookkeeping around it neither allocates nor touches the returned memory.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        charge(layout.size() as isize);
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        charge(layout.size() as isize);
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        charge(-(layout.size() as isize));
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        charge(new_size as isize - layout.size() as isize);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

thread_local! {
    // Const-initialised and without destructor: safe to read from inside
    // the allocator and the signal handler, at any point of a thread's life.
    static SLOT: Cell<Option<&'static Slot>> = const { Cell::new(None) };
    // Lowest usable address of this thread's stack, if it evaluates.
    static STACK_BOTTOM: Cell<usize> = const { Cell::new(0) };
    // The slot of a finished evaluation whose thread is still freeing its
    // heap (`Slot::free_after_finish`).
    static FREEING: Cell<Option<&'static Slot>> = const { Cell::new(None) };
}

fn charge(bytes: isize) {
    let Some(slot) = SLOT.with(Cell::get) else { return };
    let used = slot.used.fetch_add(bytes, Ordering::Relaxed) + bytes;
    if bytes > 0 && (used > slot.limit || slot.stop.load(Ordering::Relaxed)) {
        slot.halt();
    }
}

/// How an evaluation ended, as seen by the thread that waits for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Running,
    /// The evaluation thread finished (with a value, an error or a panic).
    Done,
    OverMemory,
    OverTime,
    /// The evaluation recursed past the end of its thread's stack.
    OverStack,
}

/// One evaluation's account. Leaked on purpose: a halted thread keeps a
/// reference to it for as long as the process lives.
pub struct Slot {
    used: AtomicIsize,
    limit: isize,
    stop: AtomicBool,
    overflowed: AtomicBool,
    outcome: Mutex<Outcome>,
    changed: Condvar,
}

impl Slot {
    pub fn new(memory: usize) -> &'static Slot {
        Box::leak(Box::new(Slot {
            used: AtomicIsize::new(0),
            limit: isize::try_from(memory).unwrap_or(isize::MAX),
            stop: AtomicBool::new(false),
            overflowed: AtomicBool::new(false),
            outcome: Mutex::new(Outcome::Running),
            changed: Condvar::new(),
        }))
    }

    /// Charges the calling thread's allocations to this slot from now on,
    /// and watches its stack.
    pub fn enter(&'static self) {
        guard_stack();
        SLOT.with(|s| s.set(Some(self)));
    }

    /// Called by the evaluation thread when it is done, whatever the result
    /// (also while unwinding from a panic).
    pub fn finish(&self) {
        SLOT.with(|s| s.set(None));
        self.set(Outcome::Done);
    }

    /// Runs `free` (dropping what the evaluation left) on the evaluation
    /// thread after `finish`, when the waiting thread already has its
    /// result. Nickel frees nested values recursively: a stack overflow
    /// here stops this thread (and sets `overflowed`, read by no one) as it
    /// would during the evaluation, instead of aborting the process.
    pub fn free_after_finish(&'static self, free: impl FnOnce()) {
        FREEING.with(|s| s.set(Some(self)));
        free();
        FREEING.with(|s| s.set(None));
    }

    /// Waits until the evaluation is done, over its memory or stack, or
    /// `time` has passed; in the last case the thread is told to stop.
    pub fn wait(&self, time: Duration) -> Outcome {
        // The signal handler cannot take the lock: it raises a flag, which
        // this loop looks at between short waits.
        const TICK: Duration = Duration::from_millis(25);
        let mut left = time;
        let mut guard = self.outcome.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if *guard != Outcome::Running {
                return *guard;
            }
            if self.overflowed.load(Ordering::Relaxed) {
                *guard = Outcome::OverStack;
                return *guard;
            }
            if left.is_zero() {
                *guard = Outcome::OverTime;
                self.stop.store(true, Ordering::Relaxed);
                return *guard;
            }
            let step = left.min(TICK);
            left -= step;
            guard = self
                .changed
                .wait_timeout(guard, step)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn set(&self, outcome: Outcome) {
        // Locking a `Mutex` and notifying a `Condvar` do not allocate.
        let mut guard = self.outcome.lock().unwrap_or_else(|e| e.into_inner());
        if *guard == Outcome::Running {
            *guard = outcome;
        }
        drop(guard);
        self.changed.notify_all();
    }

    /// Stops the calling (evaluation) thread for good, before the allocation
    /// that would pass the budget happens.
    fn halt(&self) -> ! {
        SLOT.with(|s| s.set(None));
        self.set(Outcome::OverMemory);
        loop {
            // SAFETY: `pause` only suspends the thread until a signal arrives.
            unsafe {
                libc::pause();
            }
        }
    }
}

static PREVIOUS: std::sync::OnceLock<libc::sigaction> = std::sync::OnceLock::new();

/// Records the calling thread's stack bounds and installs the `SIGSEGV`
/// handler (once per process).
fn guard_stack() {
    // SAFETY: plain libc calls on a zeroed attribute object that is
    // destroyed after use; the handler is installed once, after Rust's.
    unsafe {
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        if libc::pthread_getattr_np(libc::pthread_self(), &mut attr) == 0 {
            let mut addr: *mut libc::c_void = std::ptr::null_mut();
            let mut size: libc::size_t = 0;
            if libc::pthread_attr_getstack(&attr, &mut addr, &mut size) == 0 {
                STACK_BOTTOM.with(|b| b.set(addr as usize));
            }
            libc::pthread_attr_destroy(&mut attr);
        }
        PREVIOUS.get_or_init(|| {
            let mut new: libc::sigaction = std::mem::zeroed();
            new.sa_sigaction = on_segv as *const () as usize;
            new.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigemptyset(&mut new.sa_mask);
            let mut old: libc::sigaction = std::mem::zeroed();
            libc::sigaction(libc::SIGSEGV, &new, &mut old);
            old
        });
    }
}

/// A fault within 1 MiB below or one page above the bottom of an
/// evaluation thread's stack is that thread running out of stack: flag it
/// and stop the thread. Runs on the thread's alternate signal stack; touches
/// only atomics and thread-locals without destructors.
extern "C" fn on_segv(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid `siginfo_t` for SA_SIGINFO handlers.
    let addr = unsafe { (*info).si_addr() } as usize;
    let bottom = STACK_BOTTOM.with(Cell::get);
    if let Some(slot) = SLOT.with(Cell::get).or_else(|| FREEING.with(Cell::get))
        && bottom != 0
        && addr < bottom + 4096
        && addr + (1 << 20) >= bottom
    {
        slot.overflowed.store(true, Ordering::Relaxed);
        loop {
            // SAFETY: async-signal-safe; suspends this thread for good.
            unsafe {
                libc::pause();
            }
        }
    }
    // Not ours: hand the fault to the handler that was there before.
    let Some(prev) = PREVIOUS.get() else { return };
    // SAFETY: calling or restoring the previously installed action, as the
    // kernel would have.
    unsafe {
        if prev.sa_flags & libc::SA_SIGINFO != 0
            && prev.sa_sigaction != libc::SIG_IGN
            && prev.sa_sigaction != libc::SIG_DFL
        {
            let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                std::mem::transmute(prev.sa_sigaction);
            f(sig, info, ctx);
        } else {
            // The default action (also for an ignored SIGSEGV, which would
            // fault forever): the fault happens again on return, and kills.
            let mut dfl: libc::sigaction = std::mem::zeroed();
            dfl.sa_sigaction = libc::SIG_DFL;
            libc::sigaction(libc::SIGSEGV, &dfl, std::ptr::null_mut());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_allocation_past_the_budget_halts_its_thread_and_is_reported() {
        let slot = Slot::new(64 << 20);
        std::thread::spawn(move || {
            slot.enter();
            let mut keep = Vec::new();
            loop {
                keep.push(vec![1u8; 1 << 20]);
            }
        });
        assert_eq!(slot.wait(Duration::from_secs(60)), Outcome::OverMemory);
    }

    #[test]
    fn a_thread_past_its_time_is_stopped_at_its_next_allocation() {
        let slot = Slot::new(usize::MAX);
        std::thread::spawn(move || {
            slot.enter();
            loop {
                std::hint::black_box(vec![0u8; 16]);
            }
        });
        assert_eq!(slot.wait(Duration::from_millis(50)), Outcome::OverTime);
    }

    /// Recursion that runs out of any stack.
    fn down(n: u64) -> u64 {
        let pad = std::hint::black_box([n; 64]);
        if n == 0 { 0 } else { down(n - 1) + pad[3] }
    }

    /// `work` on a thread with a small stack, as an evaluation of `slot`.
    fn on_small_stack(slot: &'static Slot, work: impl FnOnce() + Send + 'static) {
        std::thread::Builder::new()
            .stack_size(256 << 10)
            .spawn(move || {
                slot.enter();
                work();
            })
            .unwrap();
    }

    #[test]
    fn a_thread_out_of_stack_is_stopped_and_reported() {
        let slot = Slot::new(usize::MAX);
        on_small_stack(slot, || {
            std::hint::black_box(down(u64::MAX));
        });
        assert_eq!(slot.wait(Duration::from_secs(60)), Outcome::OverStack);
    }

    #[test]
    fn a_thread_out_of_stack_while_freeing_after_finishing_is_stopped() {
        let slot = Slot::new(usize::MAX);
        on_small_stack(slot, move || {
            slot.finish();
            slot.free_after_finish(|| {
                std::hint::black_box(down(u64::MAX));
            });
        });
        assert_eq!(slot.wait(Duration::from_secs(60)), Outcome::Done);
        // The process is still here; the thread was stopped, not the process.
        let start = std::time::Instant::now();
        while !slot.overflowed.load(Ordering::Relaxed) {
            assert!(start.elapsed() < Duration::from_secs(60), "the overflow was not caught");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_finished_evaluation_is_done() {
        let slot = Slot::new(1 << 30);
        std::thread::spawn(move || {
            slot.enter();
            std::hint::black_box(vec![0u8; 1 << 20]);
            slot.finish();
        });
        assert_eq!(slot.wait(Duration::from_secs(60)), Outcome::Done);
    }
}
