fn main() {
    keep_freed_memory();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "apunet=info,warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = apunet::cli::parse_from(std::env::args_os()).unwrap_or_else(|e| e.exit());
    if let Err(e) = apunet::cli::run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// glibc hands a freed buffer above a moving threshold (at most 32 MiB) back to the kernel, so
/// each sampling step faulted its large tensors in afresh, zeroed page by page: keeping them
/// in the heap measured 1.4x-1.9x the sampled masks/s (docs/benchmarks.md). Set before any thread
/// starts; memory then stays with the process until it exits.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes malloc's parameters; no other thread exists yet.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}
