#![forbid(unsafe_code)]

/// mimalloc rather than glibc's malloc: at 100,000 domains allocation was a third of the CPU
/// and glibc kept freed memory in its arenas (docs/BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    mxguard::cli::main()
}
