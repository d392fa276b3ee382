fn main() {
    apunet::keep_freed_memory();
    cpu_default_device();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "apunet=info,warn".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = apunet::cli::parse_from(std::env::args_os()).unwrap_or_else(|e| {
        // Under mpirun or srun every rank parses the same flags: one error message is enough.
        if e.use_stderr() && launcher_rank().is_some_and(|r| r > 0) {
            std::process::exit(e.exit_code());
        }
        e.exit()
    });
    if let Err(e) = apunet::cli::run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// apunet names every device it uses (--device). burn alone falls back to its default device,
/// when it loads an optimizer's state (moved to the parameters' device at the next step): with
/// the wgpu feature built in, that default was the GPU, and a CPU resume started a Vulkan
/// instance that printed "XDG_RUNTIME_DIR is invalid" four times. The CPU is the default here.
fn cpu_default_device() {
    // SAFETY: no other thread exists yet, so nothing reads the environment concurrently.
    unsafe { std::env::set_var("BURN_DEVICE", "flex") };
}

/// This process's rank when an MPI launcher or SLURM started it.
fn launcher_rank() -> Option<u64> {
    ["OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "SLURM_PROCID"].iter().find_map(|k| std::env::var(k).ok()?.parse().ok())
}
