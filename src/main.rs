fn main() {
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
