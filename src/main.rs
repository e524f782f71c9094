//! The operator binary: `run` the controller, print the `crd`, log in (`authorize`), or
//! show `status`.
#![deny(unsafe_code)]

use clap::Parser;

/// jemalloc rather than glibc's allocator, told to give freed pages back to the system at
/// once: a tenant's padded objects in transit (60 credentials of 300 KiB each) raised the
/// RSS by 4 to 5 MiB, against 8 to 10 MiB with glibc (docs/security.md, "Memory"), and at 1,000
/// credentials the peak RSS was lower at the cold start and through steady refreshes
/// (docs/scale.md, fourth round).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read once when it starts (`_rjem_` is the crate's symbol prefix; the
/// environment variable `_RJEM_MALLOC_CONF` overrides them): two arenas whatever the number
/// of cores (the operator waits on the network, and every arena keeps free memory of its
/// own); freed pages returned at once rather than over the next seconds (a burst of large
/// objects would otherwise stay in the RSS for that long); and small per-thread caches (8
/// objects per small size, 2 per large, against up to 200 and 20), which held about 0.8 MiB
/// at a 1,000-credential cold start for no CPU time that run could tell (docs/scale.md,
/// ninth round).
#[allow(unsafe_code)]
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: MallocConf = MallocConf(
    c"narenas:2,dirty_decay_ms:0,muzzy_decay_ms:0,tcache_nslots_small_max:8,tcache_nslots_large:2"
        .as_ptr(),
);

/// A C string pointer, as jemalloc reads `malloc_conf`.
#[repr(transparent)]
struct MallocConf(*const std::ffi::c_char);

// SAFETY: it points at a static string that nothing writes.
#[allow(unsafe_code)]
unsafe impl Sync for MallocConf {}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = eagle_eye_operator::cli::Cli::parse();
    match eagle_eye_operator::cli::run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
