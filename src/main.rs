//! The operator binary: `run` the controller, print the `crd`, log in (`authorize`), or
//! show `status`.
#![deny(unsafe_code)]

use clap::Parser;

/// Allocations from 128 KiB up (a list page, a tenant's padded object in transit) are
/// mapped on their own and given back to the system when freed. glibc would otherwise
/// raise this threshold to the largest block freed so far, serve later blocks of that size
/// from its heap and keep them there: 60 padded credentials left the RSS 9 MiB higher for
/// good (docs/security.md, "Memory").
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn return_large_blocks() {
    // SAFETY: mallopt only sets an allocator parameter; called before any thread starts.
    #[allow(unsafe_code)]
    let set = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024) };
    debug_assert_eq!(set, 1);
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn return_large_blocks() {}

fn main() -> std::process::ExitCode {
    return_large_blocks();
    run()
}

#[tokio::main]
async fn run() -> std::process::ExitCode {
    let cli = eagle_eye_operator::cli::Cli::parse();
    match eagle_eye_operator::cli::run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
