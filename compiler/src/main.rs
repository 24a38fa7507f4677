fn main() -> std::process::ExitCode {
    // Evaluation allocates on a thread of its own, whose glibc heap grows by
    // `mprotect` in steps of M_TOP_PAD (128 KiB by default): hundreds of
    // system calls for a small stack, a few percent of its check
    // (bench/NOTES.md). Address space reserved this way is not memory used
    // until it is touched.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a tunable of the allocator; no allocation
    // has a dependency on its value, and nothing else runs yet.
    unsafe {
        libc::mallopt(libc::M_TOP_PAD, 16 << 20);
    }
    stackc::cli::main()
}
