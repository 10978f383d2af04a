//! The `rapax` operator's tool: the deterministic simulator and the linearizability checker.

pub mod cluster;
pub mod drill;
pub mod floor;
pub mod lincheck;
pub mod netlab;
pub mod preflight;
pub mod report;
pub mod sim;

/// Prints a line on standard output; a closed pipe (`rapax sim ... | head`) ends the process
/// quietly instead of panicking.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout().lock(), $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
            panic!("writing to standard output: {e}");
        }
    }};
}
