//! `ringchatd`: one node of a ringchat cluster. See `ringchatd --help`.
//!
//! Exit status: 0 after a graceful stop (SIGTERM/SIGINT), 1 on a runtime error, 2 on an
//! invalid flag or configuration file.

use std::process::ExitCode;

use clap::CommandFactory;
use log::{error, info};

use ringchat::driver::{self, DaemonArgs, DaemonConfig};

fn main() -> ExitCode {
    // Exits 2 with a usage message on a bad flag or value (0 after --help).
    let matches = DaemonArgs::command().get_matches();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let config = match DaemonConfig::from_matches(&matches) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ringchatd: {e}");
            eprintln!("Run 'ringchatd --help' for the flags and the config file format.");
            return ExitCode::from(2);
        }
    };
    let id = config.id;
    info!(
        "node {id}: ringchatd {} starting (data dir {})",
        env!("CARGO_PKG_VERSION"),
        config.data_dir.display()
    );
    // A file size limit (ulimit -f) must fail the write, like a full disk (the node then
    // refuses writes until it can store again), rather than kill the process.
    let xfsz = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    if let Err(e) = signal_hook::flag::register(signal_hook::consts::SIGXFSZ, xfsz) {
        error!("node {id}: cannot handle SIGXFSZ: {e}");
    }
    match driver::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("node {id}: {e}");
            ExitCode::from(1)
        }
    }
}
