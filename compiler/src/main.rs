fn main() -> std::process::ExitCode {
    // Evaluation allocates on a thread of its own. glibc makes a thread's
    // heap writable as it grows, an `mprotect` per step: hundreds of system
    // calls, a few percent of a small stack's check (bench/NOTES.md). With
    // M_TOP_PAD at 16 MiB a new heap starts writable over 16 MiB: address
    // space, not memory used until touched. Setting it also fixes glibc's
    // mmap threshold at its default (128 KiB); measured no slower up to
    // 10 000 services.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a tunable of the allocator; no allocation
    // has a dependency on its value, and nothing else runs yet.
    unsafe {
        libc::mallopt(libc::M_TOP_PAD, 16 << 20);
    }
    stackc::cli::main()
}
